//! Asking a receiver's wallet for an invoice: the call side (HTTP or a
//! Nostr relay, no database access), for the worker's threads and for
//! `test_receiver_wallet`.

use super::nwc;
use crate::provider::adapters::{self, Endpoint, Failure, Kind, NewInvoice};
use crate::provider::{lnurl, CallSettings};
use serde_json::{json, Value};

/// A BOLT11 of `amount_msat` from the wallet (checked by the caller, in SQL).
pub fn invoice(
    kind: &str,
    config: &Value,
    credentials: &Value,
    amount_msat: i64,
    memo: &str,
    expiry_secs: i64,
    s: &CallSettings,
) -> Result<String, Failure> {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match kind {
        "nwc" => {
            let relays: Vec<String> = config["relays"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|r| {
                            format!(
                                "relay={}",
                                url::form_urlencoded::byte_serialize(r.as_bytes())
                                    .collect::<String>()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let uri = format!(
                "nostr+walletconnect://{}?{}&secret={}",
                text(config, "wallet_pubkey"),
                relays.join("&"),
                text(credentials, "secret")
            );
            nwc::make_invoice(
                &uri,
                amount_msat.max(0) as u64,
                memo,
                expiry_secs.max(1) as u64,
                s.timeout,
            )
            .map(|i| i.bolt11)
        }
        "lnbits" | "lnd_rest" => {
            let (k, creds) = if kind == "lnbits" {
                (
                    Kind::Lnbits,
                    json!({"invoice_key": credentials["invoice_key"]}),
                )
            } else {
                (
                    Kind::LndRest,
                    json!({"macaroon": credentials["invoice_macaroon"]}),
                )
            };
            let ep = Endpoint {
                kind: k,
                base_url: text(config, "url"),
                credentials: creds,
                config: config.clone(),
            };
            let agent = ep.agent(s.timeout, 1)?;
            let created = adapters::create(
                &agent,
                &ep,
                &NewInvoice {
                    invoice_id: "receiver",
                    amount: amount_msat,
                    asset: "msat",
                    memo,
                    expiry_secs,
                    hold: None,
                },
            )?;
            created
                .payment_request
                .ok_or_else(|| Failure::Refused("no invoice".into()))
        }
        "lightning_address" => lnurl::resolve(
            &lnurl::agent(s.timeout),
            &text(config, "address"),
            amount_msat,
            "bitcoin",
            &s.lnurl_http_hosts,
        )
        .map(|r| r.bolt11),
        _ => Err(Failure::Refused(format!(
            "unknown receiver wallet kind {kind}"
        ))),
    }
}
