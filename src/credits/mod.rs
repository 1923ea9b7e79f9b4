//! Prepaid credits: grants (lots) with their own ledger accounts, one burn
//! order, consumption with undo, expiry and voids as journals, gift codes,
//! packages bought with pay-ins, plans, metering and per-metric blocking
//! (`schema.sql`, `api.sql`; docs/credits.md). All of it is SQL over the
//! ledger and pay-in engines.

use pgrx::prelude::*;

extension_sql_file!(
    "schema.sql",
    name = "credits_schema",
    requires = ["provider_api"]
);
extension_sql_file!(
    "api.sql",
    name = "credits_api",
    requires = ["credits_schema"]
);
