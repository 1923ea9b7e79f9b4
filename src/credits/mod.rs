//! Prepaid credits: grants (lots) with their own ledger accounts, one burn
//! order, consumption with undo, expiry and voids as journals, gift codes,
//! packages bought with pay-ins, plans, metering and per-metric blocking
//! (docs/credits.md). All of it is SQL over the ledger and pay-in engines,
//! a file per concept: `schema.sql` (the tables), `accounts.sql` (settings,
//! system accounts, how credits move), `registries.sql` (metrics, prices,
//! plans, organisations), `grants.sql`, `consumption.sql` (burning, undo,
//! balances), `gifts.sql`, `packages.sql`, `metering.sql` (usage, the
//! worker's periodic run, access), `views.sql` (end users),
//! `invariants.sql`, `thresholds.sql` (threshold events), `history.sql`.

use pgrx::prelude::*;

// In dependency order: each file uses only what the ones before it define.
extension_sql_file!("schema.sql", name = "credits_schema", requires = ["worker"]);
extension_sql_file!(
    "accounts.sql",
    name = "credits_accounts",
    requires = ["credits_schema"]
);
extension_sql_file!(
    "registries.sql",
    name = "credits_registries",
    requires = ["credits_accounts"]
);
extension_sql_file!(
    "grants.sql",
    name = "credits_grants",
    requires = ["credits_registries"]
);
extension_sql_file!(
    "consumption.sql",
    name = "credits_consumption",
    requires = ["credits_grants"]
);
extension_sql_file!(
    "gifts.sql",
    name = "credits_gifts",
    requires = ["credits_consumption"]
);
extension_sql_file!(
    "packages.sql",
    name = "credits_packages",
    requires = ["credits_gifts"]
);
extension_sql_file!(
    "metering.sql",
    name = "credits_metering",
    requires = ["credits_packages"]
);
extension_sql_file!(
    "views.sql",
    name = "credits_views",
    requires = ["credits_metering"]
);
extension_sql_file!(
    "invariants.sql",
    name = "credits_invariants",
    requires = ["credits_views"]
);
extension_sql_file!(
    "thresholds.sql",
    name = "credits_thresholds",
    requires = ["credits_invariants"]
);
extension_sql_file!(
    "history.sql",
    name = "credits_history",
    requires = ["credits_thresholds"]
);
