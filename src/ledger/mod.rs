//! The double-entry core: assets, accounts, journals, entries and holds.
//!
//! `schema.sql` holds the tables and their guards (`guard` those written in
//! Rust: the entries' balance and the accounts' floor), `engine` applies
//! batches of transfers and hold operations, `api.sql` wraps the engine in
//! the SQL API, `seal.sql` seals entries into hash-chained blocks (tamper
//! evidence).

pub(crate) mod engine;
mod guard;
mod prepared;
pub(crate) mod request;

use crate::errors::JsonArg;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

extension_sql_file!("schema.sql", name = "ledger_schema", bootstrap);
extension_sql_file!(
    "housekeeping.sql",
    name = "ledger_housekeeping",
    requires = ["ledger_schema", setting_int]
);
extension_sql_file!(
    "api.sql",
    name = "ledger_api",
    requires = [
        "ledger_housekeeping",
        engine_batch,
        transfer_journal,
        engine_failure,
        new_id
    ]
);
extension_sql_file!("seal.sql", name = "ledger_seal", requires = ["ledger_api"]);

/// The engine behind `payledger.transfer_batch` (one row per item, in input
/// order). Internal: granted to no one, and without SET clauses, because a
/// value-per-call SRF would apply them again for every row it returns; the
/// PL/pgSQL wrapper sets them once.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out here
fn engine_batch(
    items: Option<JsonArg>,
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
    batch_rows(items, None)
}

/// One row of `engine_batch`: item, status, journal, hold, sqlstate, message, detail.
type BatchRow = (
    i32,
    &'static str,
    Option<Uuid>,
    Option<Uuid>,
    Option<&'static str>,
    Option<String>,
    Option<String>,
);

fn batch_rows(items: Option<JsonArg>, module: Option<String>) -> TableIterator<'static, BatchRow> {
    let max = crate::gucs::MAX_BATCH_SIZE.get().max(1) as usize;
    let Some(items) = items else {
        crate::errors::raise_null("items");
    };
    let outcomes = engine::apply_json(&items.0, max, module);
    TableIterator::new(outcomes.into_iter().enumerate().map(|(i, o)| {
        let (code, message, detail) = o.error.map_or((None, None, None), |e| e.into_row());
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

/// `engine_batch` for a module (see `payledger_internal.apply_as`): its items may
/// move the accounts that module manages. Internal: granted to no one.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
#[allow(clippy::type_complexity)]
fn engine_batch_as(
    module: Option<String>,
    items: Option<JsonArg>,
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
    let Some(module) = module else {
        crate::errors::raise_null("module");
    };
    batch_rows(items, Some(module))
}

thread_local! {
    // The failure of the last transfer_journal() call, until engine_failure() takes it.
    static FAILURE: std::cell::RefCell<Option<crate::errors::LedgerError>> =
        const { std::cell::RefCell::new(None) };
}

/// One two-leg transfer, the engine behind `payledger.transfer`: the journal
/// id, or NULL when it failed, the failure then kept for `engine_failure()`.
/// A scalar, so that the PL/pgSQL wrapper (which sets the search_path and
/// raises the failure) evaluates the call as a simple
/// expression rather than running a query over a set-returning function.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
#[allow(clippy::too_many_arguments)]
fn transfer_journal(
    from_account: Option<Uuid>,
    to_account: Option<Uuid>,
    amount: Option<i64>,
    idempotency_key: Option<String>,
    metadata: Option<JsonArg>,
    effective_at: Option<TimestampWithTimeZone>,
    kind: Option<String>,
) -> Option<Uuid> {
    FAILURE.with(|f| f.borrow_mut().take());
    // (the wrapper refuses NULLs first, with 22004)
    let parsed = match (from_account, to_account, amount) {
        (Some(from), Some(to), Some(amount)) => request::transfer_item(
            *from.as_bytes(),
            *to.as_bytes(),
            amount,
            idempotency_key,
            metadata.map(|m| m.0),
            effective_at.map(request::rfc3339),
            kind,
        ),
        _ => crate::errors::raise_null("from_account, to_account and amount"),
    };
    let o = engine::apply_items(vec![parsed])
        .pop()
        .expect("one outcome");
    match o.error {
        Some(e) => {
            FAILURE.with(|f| *f.borrow_mut() = Some(e));
            None
        }
        None => o.journal_id.map(Uuid::from_bytes),
    }
}

/// The failure of the last `transfer_journal()` call of this session, once.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
fn engine_failure() -> TableIterator<
    'static,
    (
        name!(sqlstate, Option<&'static str>),
        name!(message, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    let row = FAILURE.with(|f| f.borrow_mut().take()).map_or_else(
        || {
            (
                Some("XX000"),
                Some("payledger: no engine failure to report".to_string()),
                None,
            )
        },
        |e| e.into_row(),
    );
    TableIterator::once(row)
}

/// 0.1.0's engine call behind `transfer()`, replaced by `transfer_journal()`
/// in 0.2.0: kept as a symbol only (no SQL), so that a 0.1.0 database loads
/// this library until its upgrade drops the function.
#[pg_extern(sql = false)]
fn transfer_one() -> Option<Uuid> {
    pgrx::error!(
        "payledger: transfer_one() was replaced in 0.2.0; run ALTER EXTENSION payledger UPDATE"
    )
}

/// A time-ordered (version 7) uuid, used for every payledger id.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn new_id() -> Uuid {
    Uuid::from_bytes(engine::new_id())
}

// Who may call it (the operators may call all of the API: src/security.sql).
extension_sql!(
    "GRANT EXECUTE ON FUNCTION payledger.new_id() TO payledger_app;",
    name = "ledger_new_id_grants",
    requires = [new_id]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "SELECT payledger.create_asset('msat', 3);
             CREATE TEMP TABLE t AS SELECT payledger.open_account('w', 'msat', 'external', 'main', true) AS w,
                                           payledger.open_account('a', 'msat') AS a,
                                           payledger.open_account('b', 'msat') AS b;",
        )
        .unwrap();
    }

    fn one<T: IntoDatum + FromDatum>(q: &str) -> T {
        Spi::get_one::<T>(q).unwrap().expect("a non-null result")
    }

    #[pg_test]
    fn ids_are_time_ordered() {
        let ordered: bool = one(
            "SELECT bool_and(x < y) FROM (SELECT payledger.new_id() AS x, payledger.new_id() AS y
                                            FROM generate_series(1, 100)) s",
        );
        assert!(ordered);
    }

    #[pg_test]
    fn a_transfer_writes_balanced_entries_with_running_balances() {
        setup();
        Spi::run("SELECT payledger.transfer(w, a, 500) FROM t").unwrap();
        Spi::run("SELECT payledger.transfer(a, b, 200) FROM t").unwrap();
        let a: i64 = one("SELECT payledger.balance(a) FROM t");
        let b: i64 = one("SELECT payledger.balance(b) FROM t");
        assert_eq!((a, b), (300, 200));
        let chain: String = one(
            "SELECT string_agg(amount || '>' || balance_after, ',' ORDER BY seq)
               FROM payledger.entries, t WHERE account_id = t.a",
        );
        assert_eq!(chain, "500>500,-200>300");
        let violations: i64 = one("SELECT count(*) FROM payledger.check_invariants()");
        assert_eq!(violations, 0);
    }

    #[pg_test]
    fn batch_items_fail_alone_and_replays_report_exists() {
        setup();
        Spi::run("SELECT payledger.transfer(w, a, 100) FROM t").unwrap();
        let statuses: String = one(
            "SELECT string_agg(status || coalesce(':' || sqlstate, ''), ',' ORDER BY item)
               FROM t, payledger.transfer_batch(jsonb_build_array(
                 jsonb_build_object('from', t.a, 'to', t.b, 'amount', 60, 'idempotency_key', 'k'),
                 jsonb_build_object('from', t.a, 'to', t.b, 'amount', 60),
                 jsonb_build_object('from', t.a, 'to', t.b, 'amount', 60, 'idempotency_key', 'k'),
                 jsonb_build_object('from', t.a, 'to', t.b, 'amount', 40)))",
        );
        assert_eq!(statuses, "ok,error:PL006,exists,ok");
        let b: i64 = one("SELECT payledger.balance(b) FROM t");
        assert_eq!(b, 100);
    }

    #[pg_test]
    fn hold_timeout_sets_the_expiry() {
        setup();
        Spi::run("SELECT payledger.transfer(w, a, 100) FROM t").unwrap();
        // The hold is read in a later statement: a statement does not see its own function's writes.
        Spi::run("CREATE TEMP TABLE h AS SELECT payledger.create_hold(a, b, 10, timeout => '10 seconds') AS id FROM t")
            .unwrap();
        let ok: bool = one(
            "SELECT expires_at BETWEEN clock_timestamp() + interval '9 seconds' AND clock_timestamp() + interval '11 seconds'
               FROM payledger.holds WHERE id = (SELECT id FROM h)",
        );
        assert!(ok);
        let available: i64 = one("SELECT payledger.available_balance(a) FROM t");
        assert_eq!(available, 90);
    }

    #[pg_test]
    fn overdraft_raises_pl006_and_changes_nothing() {
        setup();
        Spi::run(
            "DO $$ BEGIN
                 PERFORM payledger.transfer(a, b, 1) FROM t;
                 RAISE EXCEPTION 'the overdraft was accepted';
             EXCEPTION WHEN SQLSTATE 'PL006' THEN NULL;
             END $$",
        )
        .unwrap();
        let entries: i64 = one("SELECT count(*) FROM payledger.entries");
        assert_eq!(entries, 0);
    }
}
