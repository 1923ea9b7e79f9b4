//! Peer-to-peer payments (Stacker News' zaps to an attached wallet): the
//! wallets users attach to receive (`schema.sql`, `wallets.sql`), and
//! Nostr Wallet Connect (`nwc`).

pub mod nwc;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

extension_sql_file!(
    "schema.sql",
    name = "p2p_schema",
    requires = ["provider_deadlines"]
);
extension_sql_file!(
    "wallets.sql",
    name = "p2p_wallets",
    requires = ["p2p_schema", nwc_connection]
);

/// An NWC connection URI, parsed and checked (22023 with what is wrong,
/// never the secret): the wallet service's key, the relays, the client's
/// secret and public key.
#[pg_extern(immutable, parallel_safe, schema = "payledger_internal")]
#[search_path(pg_catalog, pg_temp)]
fn nwc_connection(uri: &str) -> JsonB {
    match nwc::parse(uri) {
        Ok(c) => {
            let mut v = json!({"wallet_pubkey": c.wallet_pubkey, "relays": c.relays,
                               "secret": c.secret, "client_pubkey": c.client_pubkey});
            if let Some(l) = c.lud16 {
                v["lud16"] = l.into();
            }
            JsonB(v)
        }
        Err(e) => crate::errors::raise_malformed(&e),
    }
}
