//! payledger: a double-entry payments ledger inside PostgreSQL.
//!
//! The ledger core lives in `ledger` (schema, posting engine, SQL API); pay-ins
//! and pay-outs on top of it in `payin`; invoices at payment providers in
//! `provider`, driven by the background `worker`; prepaid credits in
//! `credits`; Nostr in `nostr`; settings
//! in `gucs`; error codes in `errors`. `check_invariants()` gathers every module's checks; roles and
//! grants are applied last, from `src/security.sql`.

use pgrx::prelude::*;

mod bolt11;
mod credits;
mod errors;
mod events;
#[cfg(test)]
mod fuzz;
mod gucs;
mod ledger;
mod nostr;
mod p2p;
mod payin;
mod pool;
mod provider;
mod secrets;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// The schema of what the API uses inside (created first, by
/// `src/ledger/schema.sql`): declared here for the Rust functions that live
/// there (`#[pg_extern(schema = "payledger_internal")]`).
#[pg_schema]
mod payledger_internal {}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    worker::register();
}

extension_sql_file!(
    "invariants.sql",
    name = "invariants",
    requires = [
        "ledger_api",
        "payin_api",
        "events_hooks",
        "provider_withdrawals",
        "nostr_jobs",
        "credits_history",
        "p2p_forwards"
    ]
);
extension_sql_file!("security.sql", name = "security", finalize);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
