//! Events: the outbox (`outbox.sql`: rows written in the transaction that
//! makes a change, announced by NOTIFY shortly after) and settle hooks
//! (`hooks.sql`: the application's functions, run once when a pay-in
//! settles, fails or is cancelled, through the pay-in lifecycle), and the
//! outbox's delivery to the operator's HTTP endpoints (`delivery.sql`,
//! `delivery.rs`: Standard Webhooks). Below the providers, above pay-ins.

pub mod delivery;

use pgrx::prelude::*;

extension_sql_file!(
    "schema.sql",
    name = "events_schema",
    requires = ["payin_api"]
);
extension_sql_file!(
    "outbox.sql",
    name = "events_outbox",
    requires = ["events_schema"]
);
extension_sql_file!(
    "hooks.sql",
    name = "events_hooks",
    requires = ["events_outbox"]
);
extension_sql_file!(
    "delivery.sql",
    name = "events_delivery",
    requires = ["events_hooks", webhook_send]
);
