//! Peer-to-peer payments (Stacker News' zaps to an attached wallet): the
//! wallets users attach to receive (`schema.sql`, `wallets.sql`); asking
//! one for an invoice (`receive`), through Nostr Wallet Connect (`nwc`, over
//! a relay: `relay`), LNbits, LND or a Lightning Address; wrapping it in a
//! hold invoice at the operator's node (`forwards.sql`).

pub mod nwc;
pub mod receive;
mod relay;

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
    requires = ["p2p_schema", nwc_connection, receiver_wallet_ask]
);
extension_sql_file!(
    "forwards.sql",
    name = "p2p_forwards",
    requires = ["p2p_wallets"]
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

/// Ask a receiver wallet for an invoice of `amount_msat` (the call of
/// `test_receiver_wallet`): `{"ok": true, "bolt11"}`, or `{"ok": false,
/// "retryable", "error"}`. It reads the wallet's credentials itself (they
/// never pass through SQL values) and holds no lock while it calls.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
#[search_path(pg_catalog, pg_temp)]
fn receiver_wallet_ask(
    wallet: pgrx::Uuid,
    amount_msat: i64,
    memo: &str,
    expiry_secs: i32,
) -> JsonB {
    let row = Spi::connect(|client| {
        client
            .select(
                "SELECT w.kind::text, w.config, s.credentials FROM payledger.receiver_wallets w
                   JOIN payledger.receiver_wallet_secrets s ON s.wallet_id = w.id WHERE w.id = $1",
                None,
                &[wallet.into()],
            )
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<JsonB>(2)
                        .ok()
                        .flatten()
                        .map(|j| j.0)
                        .unwrap_or_default(),
                    r.get::<JsonB>(3)
                        .ok()
                        .flatten()
                        .map(|j| j.0)
                        .unwrap_or_default(),
                )
            })
    });
    let Some((kind, config, credentials)) = row else {
        return JsonB(
            json!({"ok": false, "retryable": false, "error": "the wallet has no credentials"}),
        );
    };
    let settings = crate::provider::CallSettings::from_gucs();
    match receive::invoice(
        &kind,
        &config,
        &credentials,
        amount_msat,
        memo,
        expiry_secs as i64,
        &settings,
    ) {
        Ok(bolt11) => JsonB(json!({"ok": true, "bolt11": bolt11})),
        Err(f) => JsonB(json!({"ok": false, "retryable": f.retryable(), "error": f.message()})),
    }
}
