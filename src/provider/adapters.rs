//! Provider adapters: one kind per payment API, two calls each (create an
//! invoice, look one up). They are plain HTTP exchanges with no database
//! access, so the worker runs them outside any transaction and on several
//! threads at once. Credentials go into request headers only: no URL, log
//! line or error message carries them.
//!
//! A card rail (Stripe, Zaprite) fits the same two calls: its "invoice" is a
//! payment intent or an order, found again by its id instead of a payment
//! hash.

use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

/// Answers larger than this are refused (a status is a few hundred bytes).
const MAX_BODY: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lnbits,
    LndRest,
    ClnRest,
    Btcpay,
    Stripe,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "lnbits" => Kind::Lnbits,
            "lnd_rest" => Kind::LndRest,
            "cln_rest" => Kind::ClnRest,
            "btcpay" => Kind::Btcpay,
            "stripe" => Kind::Stripe,
            _ => return None,
        })
    }

    /// Lightning providers count in msat; card rails in the asset's minor unit.
    fn lightning(self) -> bool {
        !matches!(self, Kind::Stripe)
    }
}

/// Where and how to reach one provider.
pub struct Endpoint {
    pub kind: Kind,
    pub base_url: String,
    pub credentials: Value,
    pub config: Value,
}

impl Endpoint {
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    pub(super) fn secret(&self, field: &str) -> Result<String, Failure> {
        self.credentials
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Failure::Refused(format!("the provider's credentials have no \"{field}\""))
            })
    }

    fn setting(&self, field: &str) -> Result<String, Failure> {
        self.config
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Failure::Refused(format!("the provider's config has no \"{field}\"")))
    }

    /// An HTTP client for this provider: bounded time, statuses returned
    /// rather than raised, and the provider's own certificate pinned when its
    /// config carries one (LND and Core Lightning sign their own).
    pub fn agent(&self, timeout: Duration, connections: usize) -> Result<Agent, Failure> {
        let mut b = Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(connections.max(1))
            .user_agent("payledger");
        if let Some(pem) = self.config.get("tls_cert_pem").and_then(Value::as_str) {
            let cert = Certificate::from_pem(pem.as_bytes())
                .map_err(|e| Failure::Refused(format!("tls_cert_pem: {e}")))?;
            b = b.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
                    .build(),
            );
        }
        Ok(b.build().into())
    }
}

pub struct NewInvoice<'a> {
    pub invoice_id: &'a str,
    /// msat for Lightning providers, the asset's minor unit for card rails
    pub amount: i64,
    pub asset: &'a str,
    pub memo: &'a str,
    pub expiry_secs: i64,
    /// a hold invoice (LND only): for a payment hash whose preimage payledger
    /// does not know; a payment to it is held until settled or cancelled
    pub hold: Option<Hold<'a>>,
}

pub struct Hold<'a> {
    pub payment_hash: &'a str,
    /// the final CLTV delta the invoice asks for
    pub cltv_expiry: i64,
}

#[derive(Debug, Default)]
pub struct Created {
    pub external_id: String,
    pub payment_hash: Option<String>,
    /// what the payer needs: a BOLT11 invoice, a checkout link, a client secret
    pub payment_request: Option<String>,
    pub expires_at: Option<i64>,
    /// the provider's own end of monitoring (BTCPay's monitoringExpiration)
    pub monitor_until: Option<i64>,
}

#[derive(Debug, PartialEq)]
pub enum Status {
    Pending,
    /// `received`: what arrived, when the provider says (else the amount asked)
    Paid {
        received: Option<i64>,
        preimage: Option<String>,
    },
    /// past its expiry unpaid; `note` names money that arrived in part
    Expired {
        note: Option<String>,
    },
    Invalid(String),
    NotFound,
    /// a hold invoice's payment held by the node (LND's ACCEPTED): how much,
    /// the earliest held HTLC's timeout, and the node's block height now
    Held {
        amount: i64,
        expiry_height: i64,
        block_height: i64,
    },
}

#[derive(Debug, PartialEq)]
pub enum Failure {
    /// no answer, a timeout, 5xx, 408 or 429: try again later
    Unreachable(String),
    /// the provider answered with a refusal, or the setup is wrong
    Refused(String),
}

impl Failure {
    pub fn retryable(&self) -> bool {
        matches!(self, Failure::Unreachable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Refused(m) => m,
        }
    }
}

pub(super) enum Body {
    None,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// One exchange: the status and the JSON answer (`Null` when the answer is
/// not JSON). Statuses that mean "try later" become `Unreachable`.
pub(super) fn exchange(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Body,
) -> Result<(u16, Value), Failure> {
    let (status, answer) = raw_exchange(agent, method, url, headers, body)?;
    if transient(status) {
        return Err(Failure::Unreachable(format!("HTTP {status}")));
    }
    Ok((status, answer))
}

pub(super) fn transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// `exchange` without the status check.
pub(super) fn raw_exchange(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Body,
) -> Result<(u16, Value), Failure> {
    let mut resp = send(agent, method, url, headers, body)?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| Failure::Unreachable(transport_error(&e)))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The first JSON object of an answer that may be a stream of them, one a
/// line (grpc-gateway's server streams: LND's router). The rest is not
/// waited for: the connection is dropped.
pub(super) fn first_of_stream(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Body,
) -> Result<(u16, Value), Failure> {
    use std::io::{BufRead, BufReader, Read};
    let mut resp = send(agent, method, url, headers, body)?;
    let status = resp.status().as_u16();
    let mut line = String::new();
    BufReader::new(resp.body_mut().as_reader().take(MAX_BODY))
        .read_line(&mut line)
        .map_err(|e| Failure::Unreachable(format!("connection: {}", e.kind())))?;
    Ok((status, serde_json::from_str(&line).unwrap_or(Value::Null)))
}

fn send(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Body,
) -> Result<ureq::http::Response<ureq::Body>, Failure> {
    let result = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            match body {
                Body::Json(v) => r.send_json(&v),
                Body::Form(f) => r.send_form(f.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                Body::None => r.send_empty(),
            }
        }
    };
    result.map_err(|e| Failure::Unreachable(transport_error(&e)))
}

/// A transport error in words that name no URL, header or body.
fn transport_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timeout ({t})"),
        ureq::Error::Io(io) => format!("connection: {}", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BodyExceedsLimit(_) => "answer too large".into(),
        ureq::Error::Tls(m) => format!("tls: {m}"),
        ureq::Error::Rustls(r) => format!("tls: {r}"),
        _ => "protocol error".into(),
    }
}

pub(super) fn refused(status: u16, answer: &Value) -> Failure {
    let detail = ["detail", "message", "error"]
        .iter()
        .find_map(|k| answer.get(k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let detail: String = detail.chars().take(200).collect();
    Failure::Refused(
        format!("HTTP {status}: {detail}")
            .trim_end_matches(": ")
            .to_owned(),
    )
}

/// A 2xx answer, or the provider's refusal.
pub(super) fn success((status, answer): (u16, Value)) -> Result<Value, Failure> {
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        Err(refused(status, &answer))
    }
}

/// A lookup's answer; None when the provider does not know the id (404).
pub(super) fn known((status, answer): (u16, Value)) -> Result<Option<Value>, Failure> {
    if status == 404 {
        return Ok(None);
    }
    success((status, answer)).map(Some)
}

pub(super) fn str_field(v: &Value, field: &str) -> Result<String, Failure> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Failure::Unreachable(format!("the answer has no \"{field}\"")))
}

/// An integer that may come as a JSON number or a string (LND's int64s).
pub(super) fn int_field(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn whole_sats(msat: i64) -> Result<i64, Failure> {
    if msat % 1000 != 0 {
        return Err(Failure::Refused(format!(
            "{msat} msat is not a whole number of satoshis (round with \"unit\": 1000)"
        )));
    }
    Ok(msat / 1000)
}

pub(super) fn b64_to_hex(s: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .map(hex::encode)
}

/// What LND holds for an ACCEPTED invoice: the ACCEPTED HTLCs (lnrpc
/// InvoiceHTLC: `amt_msat`, `expiry_height`, `state`), and its block height
/// (`GET /v1/getinfo`), so that the forward knows how many blocks it has.
fn held(agent: &Agent, ep: &Endpoint, invoice: &Value) -> Result<Status, Failure> {
    let htlcs: Vec<&Value> = invoice
        .get("htlcs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|h| h.get("state").and_then(Value::as_str) == Some("ACCEPTED"))
                .collect()
        })
        .unwrap_or_default();
    let amount: i64 = htlcs.iter().filter_map(|h| int_field(h, "amt_msat")).sum();
    let expiry = htlcs
        .iter()
        .filter_map(|h| int_field(h, "expiry_height"))
        .min();
    let (Some(expiry_height), true) = (expiry, amount > 0) else {
        return Err(Failure::Unreachable(
            "an ACCEPTED invoice without held HTLCs".into(),
        ));
    };
    Ok(Status::Held {
        amount,
        expiry_height,
        block_height: block_height(agent, ep)?,
    })
}

/// An LND node's block height (`GET /v1/getinfo`).
pub fn block_height(agent: &Agent, ep: &Endpoint) -> Result<i64, Failure> {
    let info = success(exchange(
        agent,
        "GET",
        &ep.url("/v1/getinfo"),
        &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
        Body::None,
    )?)?;
    int_field(&info, "block_height")
        .ok_or_else(|| Failure::Unreachable("getinfo without block_height".into()))
}

/// What came of settling a hold invoice.
#[derive(Debug, PartialEq)]
pub enum Settled {
    /// settled now, or before (a repeat after a lost answer)
    Done,
    /// the node cancelled it: the payer's payment went back
    Cancelled,
    /// the node has no such invoice
    Gone,
}

/// Settle a hold invoice with its preimage (bytes, base64): invoicesrpc
/// SettleInvoice, `POST /v2/invoices/settle`. LND answers a repeat, and
/// every refusal, with gRPC's Unknown code and the reason in words.
pub fn settle_hold(agent: &Agent, ep: &Endpoint, preimage: &str) -> Result<Settled, Failure> {
    if ep.kind != Kind::LndRest {
        return Err(Failure::Refused(
            "hold invoices need an lnd_rest provider".into(),
        ));
    }
    let bytes = hex::decode(preimage)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| Failure::Refused("a preimage is 32 bytes".into()))?;
    let (status, a) = raw_exchange(
        agent,
        "POST",
        &ep.url("/v2/invoices/settle"),
        &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
        Body::Json(json!({"preimage": base64::engine::general_purpose::STANDARD.encode(bytes)})),
    )?;
    if (200..300).contains(&status) {
        return Ok(Settled::Done);
    }
    let message = a.get("message").and_then(Value::as_str).unwrap_or("");
    if message.contains("already settled") {
        Ok(Settled::Done)
    } else if message.contains("already canceled") {
        Ok(Settled::Cancelled)
    } else if message.contains("unable to locate invoice") {
        Ok(Settled::Gone)
    } else {
        Err(refused_or_unreachable(status, &a))
    }
}

/// A hold invoice at LND: `POST /v2/invoices/hodl` (invoicesrpc
/// AddHoldInvoice) with the payment hash (bytes, base64), the amount, the
/// expiry and the final CLTV delta. Its id is the payment hash.
fn create_hold(
    agent: &Agent,
    ep: &Endpoint,
    inv: &NewInvoice,
    h: &Hold,
) -> Result<Created, Failure> {
    if ep.kind != Kind::LndRest {
        return Err(Failure::Refused(
            "hold invoices need an lnd_rest provider".into(),
        ));
    }
    let hash = hex::decode(h.payment_hash)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| Failure::Refused("a hold invoice needs a 32-byte payment hash".into()))?;
    let body = json!({"hash": base64::engine::general_purpose::STANDARD.encode(hash),
                      "value_msat": inv.amount.to_string(), "memo": inv.memo,
                      "expiry": inv.expiry_secs.to_string(), "cltv_expiry": h.cltv_expiry.to_string()});
    let a = success(exchange(
        agent,
        "POST",
        &ep.url("/v2/invoices/hodl"),
        &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
        Body::Json(body),
    )?)?;
    Ok(Created {
        external_id: h.payment_hash.to_owned(),
        payment_hash: Some(h.payment_hash.to_owned()),
        payment_request: Some(str_field(&a, "payment_request")?),
        expires_at: Some(now() + inv.expiry_secs),
        monitor_until: None,
    })
}

pub fn create(agent: &Agent, ep: &Endpoint, inv: &NewInvoice) -> Result<Created, Failure> {
    if ep.kind.lightning() && inv.amount <= 0 {
        return Err(Failure::Refused("the amount must be positive".into()));
    }
    if let Some(h) = &inv.hold {
        return create_hold(agent, ep, inv, h);
    }
    match ep.kind {
        Kind::Lnbits => {
            let body = json!({"out": false, "amount": whole_sats(inv.amount)?, "unit": "sat",
                              "memo": inv.memo, "expiry": inv.expiry_secs,
                              "extra": {"payledger_invoice": inv.invoice_id}});
            let key = ep.secret("invoice_key")?;
            let a = success(exchange(
                agent,
                "POST",
                &ep.url("/api/v1/payments"),
                &[("X-Api-Key", key)],
                Body::Json(body),
            )?)?;
            let hash = str_field(&a, "payment_hash")?;
            let bolt11 = str_field(&a, "bolt11").or_else(|_| str_field(&a, "payment_request"))?;
            Ok(Created {
                external_id: hash.clone(),
                payment_hash: Some(hash),
                payment_request: Some(bolt11),
                expires_at: Some(now() + inv.expiry_secs),
                monitor_until: None,
            })
        }
        Kind::LndRest => {
            let body = json!({"value_msat": inv.amount.to_string(), "memo": inv.memo,
                              "expiry": inv.expiry_secs.to_string()});
            let a = success(exchange(
                agent,
                "POST",
                &ep.url("/v1/invoices"),
                &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
                Body::Json(body),
            )?)?;
            let hash = b64_to_hex(&str_field(&a, "r_hash")?)
                .filter(|h| h.len() == 64)
                .ok_or_else(|| {
                    Failure::Unreachable("r_hash is not a 32-byte base64 value".into())
                })?;
            Ok(Created {
                external_id: hash.clone(),
                payment_hash: Some(hash),
                payment_request: Some(str_field(&a, "payment_request")?),
                expires_at: Some(now() + inv.expiry_secs),
                monitor_until: None,
            })
        }
        Kind::ClnRest => {
            // the label is the invoice id: Core Lightning refuses a second
            // invoice with it, so a creation repeated after a crash cannot
            // leave two payable invoices
            let body = json!({"amount_msat": inv.amount, "label": inv.invoice_id,
                              "description": inv.memo, "expiry": inv.expiry_secs});
            let rune = ep.secret("rune")?;
            let (status, mut a) = raw_exchange(
                agent,
                "POST",
                &ep.url("/v1/invoice"),
                &[("Rune", rune.clone())],
                Body::Json(body),
            )?;
            if a.get("code").and_then(Value::as_i64) == Some(900) {
                // "Duplicate label": an earlier try created it and its answer
                // was lost; that invoice is the one
                let (st, found) = exchange(
                    agent,
                    "POST",
                    &ep.url("/v1/listinvoices"),
                    &[("Rune", rune)],
                    Body::Json(json!({"label": inv.invoice_id})),
                )?;
                a = found
                    .get("invoices")
                    .and_then(Value::as_array)
                    .and_then(|l| l.first())
                    .cloned()
                    .ok_or_else(|| refused(st, &found))?;
            } else if transient(status) {
                return Err(Failure::Unreachable(format!("HTTP {status}")));
            } else if !(200..300).contains(&status) {
                return Err(refused(status, &a));
            }
            let hash = str_field(&a, "payment_hash")?;
            Ok(Created {
                external_id: hash.clone(),
                payment_hash: Some(hash),
                payment_request: Some(str_field(&a, "bolt11")?),
                expires_at: int_field(&a, "expires_at").or(Some(now() + inv.expiry_secs)),
                monitor_until: None,
            })
        }
        Kind::Btcpay => {
            let store = ep.setting("store_id")?;
            let minutes = (inv.expiry_secs + 59) / 60;
            let body = json!({"amount": whole_sats(inv.amount)?.to_string(), "currency": "SATS",
                              "metadata": {"orderId": inv.invoice_id, "itemDesc": inv.memo},
                              "checkout": {"expirationMinutes": minutes}});
            let a = success(exchange(
                agent,
                "POST",
                &ep.url(&format!("/api/v1/stores/{store}/invoices")),
                &[("Authorization", format!("token {}", ep.secret("api_key")?))],
                Body::Json(body),
            )?)?;
            Ok(Created {
                external_id: str_field(&a, "id")?,
                payment_hash: None,
                payment_request: a
                    .get("checkoutLink")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                expires_at: int_field(&a, "expirationTime").or(Some(now() + inv.expiry_secs)),
                monitor_until: int_field(&a, "monitoringExpiration"),
            })
        }
        Kind::Stripe => {
            let form = vec![
                ("amount".to_owned(), inv.amount.to_string()),
                ("currency".to_owned(), inv.asset.to_ascii_lowercase()),
                ("description".to_owned(), inv.memo.to_owned()),
                (
                    "metadata[payledger_invoice]".to_owned(),
                    inv.invoice_id.to_owned(),
                ),
                (
                    "automatic_payment_methods[enabled]".to_owned(),
                    "true".to_owned(),
                ),
            ];
            let a = success(exchange(
                agent,
                "POST",
                &ep.url("/v1/payment_intents"),
                &[
                    (
                        "Authorization",
                        format!("Bearer {}", ep.secret("secret_key")?),
                    ),
                    // a creation repeated after a crash returns the same intent
                    ("Idempotency-Key", format!("payledger-{}", inv.invoice_id)),
                ],
                Body::Form(form),
            )?)?;
            Ok(Created {
                external_id: str_field(&a, "id")?,
                payment_hash: None,
                payment_request: a
                    .get("client_secret")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                expires_at: Some(now() + inv.expiry_secs),
                monitor_until: None,
            })
        }
    }
}

/// Look an invoice up at its provider, by payment hash (Lightning nodes,
/// LNbits) or by the provider's id (BTCPay, Stripe).
pub fn status(agent: &Agent, ep: &Endpoint, external_id: &str) -> Result<Status, Failure> {
    // ids go into URL paths: allow only what real ids are made of
    if external_id.is_empty()
        || !external_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Failure::Refused(
            "the invoice's external id is malformed".into(),
        ));
    }
    match ep.kind {
        Kind::Lnbits => {
            let Some(a) = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/api/v1/payments/{external_id}")),
                &[("X-Api-Key", ep.secret("invoice_key")?)],
                Body::None,
            )?)?
            else {
                return Ok(Status::NotFound);
            };
            let details = a.get("details").unwrap_or(&Value::Null);
            if a.get("paid").and_then(Value::as_bool) == Some(true) {
                return Ok(Status::Paid {
                    received: int_field(details, "amount").map(i64::abs),
                    preimage: a.get("preimage").and_then(Value::as_str).map(str::to_owned),
                });
            }
            let st = a.get("status").and_then(Value::as_str).unwrap_or("");
            Ok(match st {
                "pending" => Status::Pending,
                "failed" => {
                    let expired = details
                        .get("labels")
                        .and_then(Value::as_array)
                        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some("expired")));
                    if expired || details.get("status").and_then(Value::as_str) == Some("failed") {
                        Status::Expired { note: None }
                    } else {
                        Status::Invalid("failed at LNbits".into())
                    }
                }
                other => {
                    return Err(Failure::Unreachable(format!(
                        "unknown LNbits status {other:?}"
                    )))
                }
            })
        }
        Kind::LndRest => {
            let Some(a) = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/v1/invoice/{external_id}")),
                &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
                Body::None,
            )?)?
            else {
                return Ok(Status::NotFound);
            };
            Ok(match a.get("state").and_then(Value::as_str).unwrap_or("") {
                "SETTLED" => Status::Paid {
                    received: int_field(&a, "amt_paid_msat"),
                    preimage: a
                        .get("r_preimage")
                        .and_then(Value::as_str)
                        .and_then(b64_to_hex),
                },
                // ACCEPTED: HTLCs held for a hold invoice, not money yet
                "ACCEPTED" => held(agent, ep, &a)?,
                "OPEN" => Status::Pending,
                "CANCELED" => Status::Expired { note: None },
                other => return Err(Failure::Unreachable(format!("unknown LND state {other:?}"))),
            })
        }
        Kind::ClnRest => {
            let a = success(exchange(
                agent,
                "POST",
                &ep.url("/v1/listinvoices"),
                &[("Rune", ep.secret("rune")?)],
                Body::Json(json!({"payment_hash": external_id})),
            )?)?;
            let Some(inv) = a
                .get("invoices")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
            else {
                return Ok(Status::NotFound);
            };
            Ok(
                match inv.get("status").and_then(Value::as_str).unwrap_or("") {
                    "paid" => Status::Paid {
                        received: int_field(inv, "amount_received_msat"),
                        preimage: inv
                            .get("payment_preimage")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    },
                    "unpaid" => Status::Pending,
                    "expired" => Status::Expired { note: None },
                    other => {
                        return Err(Failure::Unreachable(format!(
                            "unknown Core Lightning status {other:?}"
                        )))
                    }
                },
            )
        }
        Kind::Btcpay => {
            let store = ep.setting("store_id")?;
            let Some(a) = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/api/v1/stores/{store}/invoices/{external_id}")),
                &[("Authorization", format!("token {}", ep.secret("api_key")?))],
                Body::None,
            )?)?
            else {
                return Ok(Status::NotFound);
            };
            let extra = a
                .get("additionalStatus")
                .and_then(Value::as_str)
                .unwrap_or("None");
            Ok(
                match a.get("status").and_then(Value::as_str).unwrap_or("") {
                    // Lightning goes New → Processing → Settled at once; on-chain
                    // waits in Processing for confirmations
                    "Settled" => Status::Paid {
                        received: None,
                        preimage: None,
                    },
                    "New" | "Processing" => Status::Pending,
                    // an Expired invoice paid in full later says PaidLate, and the
                    // money is there (Keysat's mistake 2 is to stop looking)
                    "Expired" if extra == "PaidLate" => Status::Paid {
                        received: None,
                        preimage: None,
                    },
                    "Expired" if extra == "PaidPartial" => Status::Expired {
                        note: Some("paid in part after expiry (PaidPartial)".into()),
                    },
                    "Expired" => Status::Expired { note: None },
                    "Invalid" => Status::Invalid(format!("Invalid at BTCPay ({extra})")),
                    other => {
                        return Err(Failure::Unreachable(format!(
                            "unknown BTCPay status {other:?}"
                        )))
                    }
                },
            )
        }
        Kind::Stripe => {
            let Some(a) = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/v1/payment_intents/{external_id}")),
                &[(
                    "Authorization",
                    format!("Bearer {}", ep.secret("secret_key")?),
                )],
                Body::None,
            )?)?
            else {
                return Ok(Status::NotFound);
            };
            Ok(
                match a.get("status").and_then(Value::as_str).unwrap_or("") {
                    "succeeded" => Status::Paid {
                        received: int_field(&a, "amount_received"),
                        preimage: None,
                    },
                    "canceled" => Status::Invalid("canceled at Stripe".into()),
                    "requires_payment_method"
                    | "requires_confirmation"
                    | "requires_action"
                    | "processing"
                    | "requires_capture" => Status::Pending,
                    other => {
                        return Err(Failure::Unreachable(format!(
                            "unknown Stripe status {other:?}"
                        )))
                    }
                },
            )
        }
    }
}

/// What came of cancelling an open invoice.
#[derive(Debug, PartialEq)]
pub enum Cancelled {
    /// cancelled (or already): it can no longer be paid
    Done,
    /// paid before the cancel: the money is there, a check will find it
    TooLate,
    /// the provider has no such invoice
    Gone,
}

/// Cancel an open invoice where the provider can: LND (CancelInvoice),
/// Core Lightning (delinvoice of an unpaid one: the node then refuses its
/// payments) and Stripe (cancel the PaymentIntent). LNbits and BTCPay
/// cannot: the worker goes on watching those for late money.
pub fn cancel(
    agent: &Agent,
    ep: &Endpoint,
    invoice_id: &str,
    external_id: &str,
) -> Result<Cancelled, Failure> {
    match ep.kind {
        Kind::LndRest => {
            let hash = hex::decode(external_id)
                .map_err(|_| Failure::Refused("a malformed payment hash".into()))?;
            let (status, a) = raw_exchange(
                agent,
                "POST",
                &ep.url("/v2/invoices/cancel"),
                &[("Grpc-Metadata-macaroon", ep.secret("macaroon")?)],
                Body::Json(
                    json!({"payment_hash": base64::engine::general_purpose::STANDARD.encode(hash)}),
                ),
            )?;
            if (200..300).contains(&status) {
                return Ok(Cancelled::Done);
            }
            // (LND says these in words, with gRPC's Unknown code)
            let message = a.get("message").and_then(Value::as_str).unwrap_or("");
            if message.contains("already settled") {
                Ok(Cancelled::TooLate)
            } else if message.contains("unable to locate invoice") {
                Ok(Cancelled::Gone)
            } else {
                Err(refused_or_unreachable(status, &a))
            }
        }
        Kind::ClnRest => {
            let (status, a) = raw_exchange(
                agent,
                "POST",
                &ep.url("/v1/delinvoice"),
                &[("Rune", ep.secret("rune")?)],
                Body::Json(json!({"label": invoice_id, "status": "unpaid"})),
            )?;
            if (200..300).contains(&status) {
                return Ok(Cancelled::Done);
            }
            match int_field(&a, "code") {
                Some(905) => Ok(Cancelled::Gone),
                // the status is not "unpaid" any more
                Some(906) => match a["data"]["current_status"].as_str() {
                    Some("paid") => Ok(Cancelled::TooLate),
                    Some("expired") => Ok(Cancelled::Done),
                    _ => Err(refused(status, &a)),
                },
                _ => Err(refused_or_unreachable(status, &a)),
            }
        }
        Kind::Stripe => {
            let (status, a) = raw_exchange(
                agent,
                "POST",
                &ep.url(&format!("/v1/payment_intents/{external_id}/cancel")),
                &[(
                    "Authorization",
                    format!("Bearer {}", ep.secret("secret_key")?),
                )],
                Body::Form(vec![("cancellation_reason".into(), "abandoned".into())]),
            )?;
            if (200..300).contains(&status) {
                return Ok(Cancelled::Done);
            }
            if status == 404 {
                return Ok(Cancelled::Gone);
            }
            match a["error"]["payment_intent"]["status"].as_str() {
                Some("canceled") => Ok(Cancelled::Done),
                Some("succeeded") => Ok(Cancelled::TooLate),
                _ => Err(refused_or_unreachable(status, &a)),
            }
        }
        Kind::Lnbits | Kind::Btcpay => Err(Failure::Refused(format!(
            "{:?} invoices cannot be cancelled",
            ep.kind
        ))),
    }
}

fn refused_or_unreachable(status: u16, answer: &Value) -> Failure {
    if transient(status) {
        Failure::Unreachable(format!("HTTP {status}"))
    } else {
        refused(status, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sats_must_be_whole() {
        assert_eq!(whole_sats(21_000), Ok(21));
        assert!(whole_sats(21_500).is_err());
    }

    #[test]
    fn lnd_hashes_are_base64() {
        let h = base64::engine::general_purpose::STANDARD.encode([0xab; 32]);
        assert_eq!(b64_to_hex(&h).unwrap(), "ab".repeat(32));
        assert_eq!(b64_to_hex("***"), None);
    }

    #[test]
    fn refusals_name_the_detail_only() {
        let f = refused(400, &json!({"detail": "Amount too small"}));
        assert_eq!(f, Failure::Refused("HTTP 400: Amount too small".into()));
        assert_eq!(
            refused(403, &Value::Null),
            Failure::Refused("HTTP 403".into())
        );
    }
}
