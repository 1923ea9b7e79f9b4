//! Payment providers: the tables (`schema.sql`); merchant profiles,
//! providers and their secrets, routes (`profiles.sql`); invoices pinned to
//! the provider that issued them (`invoices.sql`); webhooks
//! (`webhooks.sql`); subscriptions (`subscriptions.sql`); withdrawals, money
//! out (`withdrawals.sql`), and auto-withdrawal above a threshold
//! (`auto_withdrawals.sql`); a deadline for every waiting state of a pay-in
//! (`deadlines.sql`); the HTTP adapters for invoices (`adapters`) and
//! outgoing payments (`outgoing`), LNURL-pay resolution (`lnurl`), and
//! webhook signatures (`webhook`).
//!
//! The worker's middle step, calling the providers, is `call_all`: it runs
//! with no transaction and no database access, on up to
//! `payledger.worker_concurrency` threads.

pub mod adapters;
pub mod lnurl;
pub mod outgoing;
pub mod webhook;

use crate::errors::{Code, JsonArg};
use adapters::{Endpoint, Failure, Kind, NewInvoice, Status};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

// In dependency order: each file uses only what the ones before it define.
extension_sql_file!(
    "schema.sql",
    name = "provider_schema",
    requires = ["events_delivery"]
);
extension_sql_file!(
    "profiles.sql",
    name = "provider_profiles",
    requires = ["provider_schema", json_readable]
);
extension_sql_file!(
    "invoices.sql",
    name = "provider_invoices",
    requires = ["provider_profiles"]
);
extension_sql_file!(
    "webhooks.sql",
    name = "provider_webhooks",
    requires = ["provider_invoices", webhook_verify_core]
);
extension_sql_file!(
    "subscriptions.sql",
    name = "provider_subscriptions",
    requires = ["provider_webhooks"]
);
extension_sql_file!(
    "withdrawals.sql",
    name = "provider_withdrawals",
    requires = ["provider_subscriptions", bolt11_decode, lnurl_target]
);
extension_sql_file!(
    "auto_withdrawals.sql",
    name = "provider_auto_withdrawals",
    requires = ["provider_withdrawals"]
);
extension_sql_file!(
    "deadlines.sql",
    name = "provider_deadlines",
    requires = ["provider_auto_withdrawals"]
);

/// Credentials by provider id, read by the caller (the worker in its claim
/// transaction, or `provider_call`).
pub type Secrets = HashMap<String, Value>;

pub struct CallSettings {
    pub timeout: Duration,
    pub concurrency: usize,
    /// read here, on the thread that may read settings
    pub lnurl_http_hosts: Vec<String>,
}

impl CallSettings {
    pub fn from_gucs() -> Self {
        CallSettings {
            timeout: Duration::from_millis(crate::gucs::WORKER_HTTP_TIMEOUT.get().max(1) as u64),
            concurrency: crate::gucs::WORKER_CONCURRENCY.get().max(1) as usize,
            lnurl_http_hosts: crate::gucs::lnurl_http_hosts(),
        }
    }
}

/// HTTP clients by provider, kept across ticks for their idle connections.
fn agent_for(ep: &Endpoint, provider: &str, s: &CallSettings) -> Result<ureq::Agent, Failure> {
    static AGENTS: OnceLock<Mutex<HashMap<String, (String, ureq::Agent)>>> = OnceLock::new();
    let key = format!(
        "{}|{}|{:?}|{}",
        ep.base_url, ep.config, s.timeout, s.concurrency
    );
    let agents = AGENTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = agents.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, a)) = map.get(provider) {
        if *k == key {
            return Ok(a.clone());
        }
    }
    let agent = ep.agent(s.timeout, s.concurrency)?;
    map.insert(provider.to_owned(), (key, agent.clone()));
    Ok(agent)
}

/// What a result carries of its claim: the invoice or withdrawal, the
/// provider and the operation.
fn claim_base(claim: &Value) -> serde_json::Map<String, Value> {
    let mut base = serde_json::Map::new();
    for k in [
        "invoice_id",
        "withdrawal_id",
        "forward_id",
        "provider_id",
        "op",
    ] {
        if let Some(v) = claim.get(k) {
            base.insert(k.into(), v.clone());
        }
    }
    base
}

fn failure(claim: &Value, f: &Failure) -> Value {
    let mut v = claim_base(claim);
    v.insert("ok".into(), false.into());
    v.insert("retryable".into(), f.retryable().into());
    v.insert("error".into(), f.message().into());
    Value::Object(v)
}

/// One claimed item: create an invoice or look it up, pay a withdrawal or
/// look its payment up, and say what came of it in the shape
/// `payledger.invoice_apply` (`withdrawal_apply`) reads.
fn call_one(claim: &Value, secrets: &Secrets, s: &CallSettings) -> Value {
    if claim["op"] == "fail" || claim["op"] == "fallback" {
        // a p2p item for the apply step alone (src/p2p/forwards.sql): no call
        return claim.clone();
    }
    if claim["op"] == "receiver_invoice" {
        // a p2p pay-in's receiver's wallet (src/p2p/), not a provider
        let wallet = claim["wallet_id"].as_str().unwrap_or_default();
        let Some(credentials) = secrets.get(&format!("wallet:{wallet}")) else {
            return failure(
                claim,
                &Failure::Refused("the wallet has no credentials".into()),
            );
        };
        return match crate::p2p::receive::invoice(
            claim["wallet_kind"].as_str().unwrap_or_default(),
            &claim["wallet_config"],
            credentials,
            claim["amount"].as_i64().unwrap_or(0),
            claim["memo"].as_str().unwrap_or_default(),
            claim["expiry_secs"].as_i64().unwrap_or(3600),
            s,
        ) {
            Ok(bolt11) => {
                let mut v = claim_base(claim);
                v.insert("ok".into(), true.into());
                v.insert("bolt11".into(), bolt11.into());
                Value::Object(v)
            }
            Err(f) => failure(claim, &f),
        };
    }
    let provider = claim["provider_id"].as_str().unwrap_or_default();
    let Some(kind) = claim["kind"].as_str().and_then(Kind::parse) else {
        return failure(claim, &Failure::Refused("unknown provider kind".into()));
    };
    let Some(credentials) = secrets.get(provider) else {
        return failure(
            claim,
            &Failure::Refused("the provider has no credentials".into()),
        );
    };
    let ep = Endpoint {
        kind,
        base_url: claim["base_url"].as_str().unwrap_or_default().to_owned(),
        credentials: credentials.clone(),
        config: claim["config"].clone(),
    };
    let agent = match agent_for(&ep, provider, s) {
        Ok(a) => a,
        Err(f) => return failure(claim, &f),
    };
    let merge = |extra: Value| {
        let mut v = claim_base(claim);
        if let Value::Object(e) = extra {
            v.extend(e);
        }
        Value::Object(v)
    };
    if claim["op"] == "resolve" {
        // (not the provider's client: the LNURL server is somebody else)
        return match lnurl::resolve(
            &lnurl::agent(s.timeout),
            claim["destination"].as_str().unwrap_or_default(),
            claim["amount"].as_i64().unwrap_or(0),
            claim["network"].as_str().unwrap_or("bitcoin"),
            &s.lnurl_http_hosts,
        ) {
            Ok(r) => merge(json!({"status": "resolved", "bolt11": r.bolt11,
                                  "payment_hash": r.payment_hash})),
            Err(f) => failure(claim, &f),
        };
    }
    if claim["op"] == "pay" || claim["op"] == "lookup" {
        let mut payment = outgoing::Payment {
            withdrawal_id: claim["withdrawal_id"]
                .as_str()
                .or(claim["forward_id"].as_str())
                .unwrap_or_default(),
            destination: claim["destination"].as_str().unwrap_or_default(),
            payment_hash: claim["payment_hash"].as_str().unwrap_or_default(),
            amount: claim["amount"].as_i64().unwrap_or(0),
            max_fee: claim["max_fee"].as_i64().unwrap_or(0),
            cltv_limit: None,
        };
        if let (Some(expiry), "pay") = (
            claim["htlc_expiry_height"].as_i64(),
            claim["op"].as_str().unwrap_or_default(),
        ) {
            // a p2p forward: its route must end the margin before the
            // payer's held HTLC, counted from the node's height now
            let height = match adapters::block_height(&agent, &ep) {
                Ok(h) => h,
                Err(f) => {
                    return merge(
                        json!({"status": "failed", "error": format!("not sent: {}", f.message())}),
                    )
                }
            };
            let limit = expiry - height - claim["settle_margin"].as_i64().unwrap_or(0);
            let needed = claim["final_cltv"].as_i64().unwrap_or(0);
            if limit < needed {
                return merge(
                    json!({"status": "failed", "reason": "INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW",
                                    "cltv_limit": limit,
                                    "error": format!("not sent: {limit} blocks left to forward, the receiver's invoice needs {needed}")}),
                );
            }
            payment.cltv_limit = Some(limit);
        }
        let outcome = if claim["op"] == "pay" {
            outgoing::pay(&agent, &ep, &payment)
        } else {
            outgoing::lookup(&agent, &ep, &payment)
        };
        return match outcome {
            Ok(o) => {
                let mut v = merge(outgoing::to_json(&o));
                if let Some(limit) = payment.cltv_limit {
                    v["cltv_limit"] = limit.into();
                }
                v
            }
            Err(f) => failure(claim, &f),
        };
    }
    if claim["op"] == "settle" {
        // a p2p pay-in's hold invoice, with the preimage its forward learnt
        return match adapters::settle_hold(
            &agent,
            &ep,
            claim["preimage"].as_str().unwrap_or_default(),
        ) {
            Ok(r) => merge(json!({"settle": match r {
                adapters::Settled::Done => "settled",
                adapters::Settled::Cancelled => "cancelled",
                adapters::Settled::Gone => "gone",
            }})),
            Err(f) => failure(claim, &f),
        };
    }
    if claim["op"] == "cancel" {
        let invoice_id = claim["invoice_id"].as_str().unwrap_or_default();
        let external_id = claim["external_id"].as_str().unwrap_or_default();
        return match adapters::cancel(&agent, &ep, invoice_id, external_id) {
            Ok(c) => merge(json!({"cancel": match c {
                adapters::Cancelled::Done => "cancelled",
                adapters::Cancelled::TooLate => "too_late",
                adapters::Cancelled::Gone => "gone",
            }})),
            Err(f) => failure(claim, &f),
        };
    }
    if claim["op"] == "create" {
        let inv = NewInvoice {
            invoice_id: claim["invoice_id"].as_str().unwrap_or_default(),
            amount: claim["amount"].as_i64().unwrap_or(0),
            asset: claim["asset"].as_str().unwrap_or_default(),
            memo: claim["memo"].as_str().unwrap_or_default(),
            expiry_secs: claim["expiry_secs"].as_i64().unwrap_or(3600),
            hold: (claim["hold"] == true).then(|| adapters::Hold {
                payment_hash: claim["payment_hash"].as_str().unwrap_or_default(),
                cltv_expiry: claim["cltv_expiry"].as_i64().unwrap_or(0),
            }),
        };
        return match adapters::create(&agent, &ep, &inv) {
            Ok(c) => merge(
                json!({"ok": true, "external_id": c.external_id, "payment_hash": c.payment_hash,
                                  "payment_request": c.payment_request, "expires_at": c.expires_at,
                                  "monitor_until": c.monitor_until}),
            ),
            Err(f) => failure(claim, &f),
        };
    }
    if claim["op"] != "check" {
        return failure(
            claim,
            &Failure::Refused(format!("unknown operation {}", claim["op"])),
        );
    }
    let external_id = claim["external_id"].as_str().unwrap_or_default();
    match adapters::status(&agent, &ep, external_id) {
        Ok(Status::Pending) => merge(json!({"status": "pending"})),
        Ok(Status::Paid { received, preimage }) => {
            merge(json!({"status": "paid", "received": received, "preimage": preimage}))
        }
        Ok(Status::Expired { note }) => merge(json!({"status": "expired", "note": note})),
        Ok(Status::Invalid(m)) => merge(json!({"status": "invalid", "error": m})),
        Ok(Status::NotFound) => merge(json!({"status": "not_found"})),
        Ok(Status::Held {
            amount,
            expiry_height,
            block_height,
        }) => merge(
            json!({"status": "held", "held_amount": amount, "htlc_expiry_height": expiry_height,
                   "block_height": block_height}),
        ),
        Err(f) => failure(claim, &f),
    }
}

/// Call the providers for all claims, `concurrency` at a time. Touches no
/// PostgreSQL state: safe on threads, and run with no transaction open.
pub fn call_all(claims: &[Value], secrets: &Secrets, s: &CallSettings) -> Vec<Value> {
    crate::pool::map(
        claims,
        s.concurrency,
        |c| call_one(c, secrets, s),
        |c| failure(c, &Failure::Unreachable("the call panicked".into())),
    )
}

/// The credentials of the providers named in the claims, and of the
/// receiver wallets (keyed `wallet:<id>`) (SPI; run inside a transaction,
/// before any call).
pub fn load_secrets(claims: &[Value]) -> Secrets {
    let providers: HashMap<String, JsonB> = crate::secrets::of_claims(
        claims,
        "provider_id",
        "SELECT provider_id::text, credentials FROM payledger.provider_secrets WHERE provider_id = ANY ($1::uuid[])",
    );
    let wallets: HashMap<String, JsonB> = crate::secrets::of_claims(
        claims,
        "wallet_id",
        "SELECT wallet_id::text, credentials FROM payledger.receiver_wallet_secrets WHERE wallet_id = ANY ($1::uuid[])",
    );
    providers
        .into_iter()
        .map(|(id, JsonB(c))| (id, c))
        .chain(
            wallets
                .into_iter()
                .map(|(id, JsonB(c))| (format!("wallet:{id}"), c)),
        )
        .collect()
}

/// The worker's middle step as a function, for `CALL payledger.run_tick()`:
/// the claims from `worker_claim` in, the results for `worker_apply` out.
/// It reads the credentials itself (they never pass through SQL values) and
/// holds no row lock while it calls. Admin only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn provider_call(claims: JsonArg) -> JsonB {
    let Value::Array(claims) = claims.0 else {
        crate::errors::raise_malformed("claims must be a JSON array")
    };
    let secrets = load_secrets(&claims);
    JsonB(Value::Array(call_all(
        &claims,
        &secrets,
        &CallSettings::from_gucs(),
    )))
}

/// The webhook's signature and meaning, as data for `provider_webhook`.
#[pg_extern(stable, parallel_safe, schema = "payledger_internal")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn webhook_verify_core(
    kind: &str,
    secret: Option<&str>,
    headers: JsonArg,
    body: &str,
) -> TableIterator<
    'static,
    (
        name!(sqlstate, Option<String>),
        name!(message, Option<String>),
        name!(reference, Option<String>),
        name!(event, Option<String>),
        name!(signed, Option<bool>),
        name!(action, Option<String>),
        name!(received, Option<i64>),
        name!(note, Option<String>),
    ),
> {
    let kind = Kind::parse(kind)
        .unwrap_or_else(|| crate::errors::raise_malformed("unknown provider kind"));
    // SAFETY: reads the current statement's start time.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() } / 1_000_000 + 946_684_800;
    let row = match webhook::verify(kind, secret, &headers.0, body, now) {
        Err((signature, m)) => {
            let code = if signature {
                Code::InvalidSignature
            } else {
                Code::Malformed
            };
            (
                Some(code.sqlstate().into()),
                Some(m),
                None,
                None,
                None,
                None,
                None,
                None,
            )
        }
        Ok(v) => {
            let (action, received, note) = match v.action {
                webhook::Action::Paid { received } => ("paid", received, None),
                webhook::Action::Invalid(n) => ("invalid", None, Some(n)),
                webhook::Action::Recheck => ("recheck", None, None),
            };
            (
                None,
                None,
                Some(v.reference),
                Some(v.event),
                Some(v.signed),
                Some(action.to_owned()),
                received,
                note,
            )
        }
    };
    TableIterator::once(row)
}

/// The URL a withdrawal's destination is resolved at, when it is a
/// Lightning Address or an LNURL (NULL otherwise): for `withdraw`'s checks.
#[pg_extern(immutable, parallel_safe, schema = "payledger_internal")]
#[search_path(pg_catalog, pg_temp)]
fn lnurl_target(destination: &str) -> Option<String> {
    lnurl::target(destination)
}

/// Whether a jsonb value is one payledger's Rust code can read (22023 when
/// not): checked where JSON is stored that the worker reads back later
/// (provider credentials and config), so that a stored value cannot stop it.
#[pg_extern(immutable, parallel_safe, schema = "payledger_internal")]
#[search_path(pg_catalog, pg_temp)]
fn json_readable(value: JsonArg) -> bool {
    let _ = value;
    true
}
