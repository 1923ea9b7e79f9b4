//! The double-entry core: assets, accounts, journals, entries and holds.
//!
//! `schema.sql` holds the tables and their guards, `engine` applies batches of
//! transfers and hold operations, `api.sql` wraps the engine in the SQL API.

mod engine;
mod request;

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

extension_sql_file!("schema.sql", name = "ledger_schema", bootstrap);
extension_sql_file!(
    "api.sql",
    name = "ledger_api",
    requires = ["ledger_schema", transfer_batch, new_id]
);

/// Apply many transfers and hold operations in one call. Each item succeeds or
/// fails on its own; the result has one row per item, in input order.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(payledger, pg_catalog, pg_temp)]
fn transfer_batch(
    items: Option<JsonB>,
) -> TableIterator<
    'static,
    (
        name!(item, i32),
        name!(status, &'static str),
        name!(journal_id, Option<Uuid>),
        name!(hold_id, Option<Uuid>),
        name!(sqlstate, Option<&'static str>),
        name!(message, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    let max = crate::gucs::MAX_BATCH_SIZE.get().max(1) as usize;
    let Some(items) = items else {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "argument \"items\" must not be null"
        );
    };
    let outcomes = engine::apply_json(&items.0, max);
    TableIterator::new(outcomes.into_iter().enumerate().map(|(i, o)| {
        let (code, message, detail) = match o.error {
            Some(e) => (Some(e.code.sqlstate()), Some(e.message), e.detail),
            None => (None, None, None),
        };
        (
            i as i32 + 1,
            o.status,
            o.journal_id.map(Uuid::from_bytes),
            o.hold_id.map(Uuid::from_bytes),
            code,
            message,
            detail,
        )
    }))
}

/// A time-ordered (version 7) uuid, used for every payledger id.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn new_id() -> Uuid {
    Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}
