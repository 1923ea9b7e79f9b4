//! Money out at a provider: pay a BOLT11 (LNbits, LND's router, Core
//! Lightning's pay) or refund a card payment (Stripe), and look an outgoing
//! payment up. Plain HTTP like the invoice adapters (no database, no
//! transaction), run by the worker's call step.
//!
//! What a pay call says is trusted only when it is definite: paid, or
//! refused before any payment was made (a 4xx, LNbits' `"status":
//! "failed"`, LND's InvalidArgument, Core Lightning's "no route" family).
//! Anything else (a timeout, a dropped connection, another 5xx) leaves the
//! outcome unknown, and only a lookup settles it: a payment is never sent
//! twice.

use super::adapters::{
    exchange, first_of_stream, int_field, known, raw_exchange, refused, success, transient, Body,
    Endpoint, Failure, Kind,
};
use base64::Engine;
use serde_json::{json, Value};
use ureq::Agent;

/// What became of an outgoing payment.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// paid, with the routing fee (msat) and the preimage
    Succeeded {
        fee: i64,
        preimage: Option<String>,
    },
    Pending,
    /// not paid, and it will not be
    Failed(String),
    /// the provider has no payment with this hash
    NotFound,
}

/// One payment to make: a BOLT11 (Lightning), or a refund of a card payment
/// (Stripe: `destination` is the PaymentIntent).
pub struct Payment<'a> {
    pub withdrawal_id: &'a str,
    pub destination: &'a str,
    pub payment_hash: &'a str,
    /// msat, or the card currency's minor unit
    pub amount: i64,
    /// the routing fee budget, msat
    pub max_fee: i64,
    /// the most blocks the route may lock the payment for (LND's
    /// `cltv_limit`): a p2p forward's, so that it ends before the payer's
    /// held HTLC does
    pub cltv_limit: Option<i64>,
}

fn unsupported(ep: &Endpoint) -> Failure {
    Failure::Refused(format!("{:?} providers do not pay out", ep.kind))
}

/// An LNbits payment row (the `details` of a lookup, or a pay answer).
fn lnbits_outcome(p: &Value, paid: bool) -> Outcome {
    let status =
        p.get("status")
            .and_then(Value::as_str)
            .unwrap_or(if paid { "success" } else { "pending" });
    match status {
        "success" => Outcome::Succeeded {
            fee: p.get("fee").and_then(Value::as_i64).unwrap_or(0).abs(),
            // (LNbits' FakeWallet reports 64 zeros when it has no preimage:
            // none, not a preimage)
            preimage: preimage(p.get("preimage")),
        },
        "failed" => Outcome::Failed("the provider failed the payment".into()),
        _ => Outcome::Pending,
    }
}

fn preimage(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.chars().any(|c| c != '0'))
        .map(str::to_owned)
}

/// One message of LND's router streams (SendPaymentV2, TrackPaymentV2), or
/// the gRPC error in its place. A payment LND refused as already known
/// (AlreadyExists: "invoice is already paid", "payment is in transition")
/// is pending here: only a lookup says which. An Unknown error may come
/// after the payment started: not known either.
fn lnd_outcome(status: u16, answer: &Value) -> Result<Outcome, Failure> {
    if let Some(p) = answer.get("result") {
        return Ok(
            match p.get("status").and_then(Value::as_str).unwrap_or("") {
                "SUCCEEDED" => Outcome::Succeeded {
                    fee: int_field(p, "fee_msat").unwrap_or(0),
                    preimage: preimage(p.get("payment_preimage")),
                },
                "FAILED" => Outcome::Failed(format!(
                    "LND: {}",
                    p.get("failure_reason")
                        .and_then(Value::as_str)
                        .unwrap_or("FAILURE_REASON_ERROR")
                )),
                // INITIATED, IN_FLIGHT (UNKNOWN is deprecated)
                _ => Outcome::Pending,
            },
        );
    }
    let e = answer.get("error").unwrap_or(answer);
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    match int_field(e, "code") {
        Some(6) => Ok(Outcome::Pending),
        Some(5) => Ok(Outcome::NotFound),
        // InvalidArgument, Unauthenticated, PermissionDenied: refused before
        // anything was sent
        Some(3) | Some(7) | Some(16) => Ok(Outcome::Failed(format!("LND: {message}"))),
        _ => Err(Failure::Unreachable(format!(
            "HTTP {status}: {}",
            message.chars().take(200).collect::<String>()
        ))),
    }
}

/// Core Lightning's `pay` errors that say nothing was paid and nothing is
/// under way: already paid with other details (201), a permanent failure at
/// the destination (203), no route (205), the fee budget (206), expired
/// (207), every attempt over (210), bad parameters, refused runes.
const CLN_NOT_PAID: [i64; 9] = [201, 203, 205, 206, 207, 210, -32602, 1501, 1502];

/// Core Lightning's payments of one hash (listpays): paid if one part of
/// them is, pending while one is, else failed.
fn cln_outcome(pays: &[Value]) -> Outcome {
    fn status(p: &Value) -> &str {
        p.get("status").and_then(Value::as_str).unwrap_or("")
    }
    if let Some(p) = pays.iter().find(|p| status(p) == "complete") {
        let sent = int_field(p, "amount_sent_msat").unwrap_or(0);
        let amount = int_field(p, "amount_msat").unwrap_or(sent);
        return Outcome::Succeeded {
            fee: (sent - amount).max(0),
            preimage: preimage(p.get("preimage").or_else(|| p.get("payment_preimage"))),
        };
    }
    if pays.is_empty() {
        Outcome::NotFound
    } else if pays.iter().any(|p| status(p) == "pending") {
        Outcome::Pending
    } else {
        Outcome::Failed("Core Lightning failed the payment".into())
    }
}

/// A Stripe refund (its status).
fn refund_outcome(r: &Value) -> Outcome {
    match r.get("status").and_then(Value::as_str).unwrap_or("") {
        "succeeded" => Outcome::Succeeded {
            fee: 0,
            preimage: None,
        },
        "failed" | "canceled" => Outcome::Failed(format!(
            "Stripe: the refund {}",
            r.get("failure_reason")
                .and_then(Value::as_str)
                .unwrap_or("failed")
        )),
        // pending, requires_action
        _ => Outcome::Pending,
    }
}

fn stripe_auth(ep: &Endpoint) -> Result<(&'static str, String), Failure> {
    Ok((
        "Authorization",
        format!("Bearer {}", ep.secret("secret_key")?),
    ))
}

/// Pay. `Err` means the outcome is not known.
pub fn pay(agent: &Agent, ep: &Endpoint, p: &Payment) -> Result<Outcome, Failure> {
    match ep.kind {
        Kind::Lnbits => {
            let (status, answer) = raw_exchange(
                agent,
                "POST",
                &ep.url("/api/v1/payments"),
                &[("X-Api-Key", ep.secret("admin_key")?)],
                Body::Json(json!({"out": true, "bolt11": p.destination,
                                  "extra": {"payledger_withdrawal": p.withdrawal_id}})),
            )?;
            if (200..300).contains(&status) {
                return Ok(lnbits_outcome(&answer, false));
            }
            // LNbits answers a payment error with 520 and "status": "failed"
            // (refused before paying, or failed at the funding source)
            if answer.get("status").and_then(Value::as_str) == Some("failed")
                || (400..500).contains(&status) && !transient(status)
            {
                return Ok(Outcome::Failed(
                    refused(status, &answer).message().to_owned(),
                ));
            }
            Err(Failure::Unreachable(format!("HTTP {status}")))
        }
        Kind::LndRest => {
            // the first message of the stream: the payment as it starts (or
            // its end, when that is at once); LND goes on paying after the
            // stream is dropped
            let mut body = json!({"payment_request": p.destination,
                                  "fee_limit_msat": p.max_fee.to_string(),
                                  "timeout_seconds": 60, "no_inflight_updates": false});
            if let Some(limit) = p.cltv_limit {
                body["cltv_limit"] = limit.into();
            }
            let (status, answer) = first_of_stream(
                agent,
                "POST",
                &ep.url("/v2/router/send"),
                &[("Grpc-Metadata-macaroon", ep.secret("admin_macaroon")?)],
                Body::Json(body),
            )?;
            lnd_outcome(status, &answer)
        }
        Kind::ClnRest => {
            // pay answers when the payment is over; a worker timeout first
            // leaves it unknown, and listpays tells
            let (status, answer) = raw_exchange(
                agent,
                "POST",
                &ep.url("/v1/pay"),
                &[("Rune", ep.secret("pay_rune")?)],
                Body::Json(json!({"bolt11": p.destination, "maxfee": p.max_fee,
                                  "retry_for": 60})),
            )?;
            if (200..300).contains(&status) {
                return Ok(cln_outcome(std::slice::from_ref(&answer)));
            }
            match int_field(&answer, "code") {
                Some(200) => Ok(Outcome::Pending), // "Already in progress"
                Some(c) if CLN_NOT_PAID.contains(&c) => Ok(Outcome::Failed(
                    refused(status, &answer).message().to_owned(),
                )),
                _ => Err(Failure::Unreachable(format!("HTTP {status}"))),
            }
        }
        Kind::Stripe => {
            // the idempotency key makes a repeat within 24 hours return the
            // same refund; after a lost answer the lookup finds it by its
            // metadata
            let (status, answer) = raw_exchange(
                agent,
                "POST",
                &ep.url("/v1/refunds"),
                &[
                    stripe_auth(ep)?,
                    ("Idempotency-Key", format!("payledger-{}", p.withdrawal_id)),
                ],
                Body::Form(vec![
                    ("payment_intent".into(), p.destination.to_owned()),
                    ("amount".into(), p.amount.to_string()),
                    (
                        "metadata[payledger_withdrawal]".into(),
                        p.withdrawal_id.to_owned(),
                    ),
                ]),
            )?;
            if (200..300).contains(&status) {
                return Ok(refund_outcome(&answer));
            }
            if (400..500).contains(&status) && !transient(status) {
                return Ok(Outcome::Failed(
                    refused(status, &answer).message().to_owned(),
                ));
            }
            Err(Failure::Unreachable(format!("HTTP {status}")))
        }
        Kind::Btcpay => Err(unsupported(ep)),
    }
}

/// Look an outgoing payment up: by its payment hash, or (a Stripe refund)
/// by the withdrawal it was made for.
pub fn lookup(agent: &Agent, ep: &Endpoint, p: &Payment) -> Result<Outcome, Failure> {
    match ep.kind {
        Kind::Lnbits => {
            let answer = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/api/v1/payments/{}", p.payment_hash)),
                &[("X-Api-Key", ep.secret("admin_key")?)],
                Body::None,
            )?)?;
            let Some(a) = answer else {
                return Ok(Outcome::NotFound);
            };
            let paid = a.get("paid").and_then(Value::as_bool).unwrap_or(false);
            match a.get("details") {
                // the payer's own row: never the receiving side of the same hash
                Some(d) if d.get("amount").and_then(Value::as_i64).unwrap_or(0) <= 0 => {
                    Ok(lnbits_outcome(d, paid))
                }
                Some(_) => Ok(Outcome::NotFound),
                None if paid => Ok(Outcome::Succeeded {
                    fee: 0,
                    preimage: preimage(a.get("preimage")),
                }),
                None if a.get("status").and_then(Value::as_str) == Some("failed") => {
                    Ok(Outcome::Failed("the provider failed the payment".into()))
                }
                None => Ok(Outcome::Pending),
            }
        }
        Kind::LndRest => {
            let hash = hex::decode(p.payment_hash)
                .map_err(|_| Failure::Refused("a malformed payment hash".into()))?;
            let (status, answer) = first_of_stream(
                agent,
                "GET",
                &ep.url(&format!(
                    "/v2/router/track/{}?no_inflight_updates=false",
                    base64::engine::general_purpose::URL_SAFE.encode(hash)
                )),
                &[("Grpc-Metadata-macaroon", ep.secret("admin_macaroon")?)],
                Body::None,
            )?;
            lnd_outcome(status, &answer)
        }
        Kind::ClnRest => {
            let a = success(exchange(
                agent,
                "POST",
                &ep.url("/v1/listpays"),
                &[("Rune", ep.secret("pay_rune")?)],
                Body::Json(json!({"payment_hash": p.payment_hash})),
            )?)?;
            let pays = a
                .get("pays")
                .and_then(Value::as_array)
                .ok_or_else(|| Failure::Unreachable("listpays answered no \"pays\"".into()))?;
            Ok(cln_outcome(pays))
        }
        Kind::Stripe => {
            let a = success(exchange(
                agent,
                "GET",
                &ep.url(&format!(
                    "/v1/refunds?payment_intent={}&limit=100",
                    p.destination
                )),
                &[stripe_auth(ep)?],
                Body::None,
            )?)?;
            let mine = a
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r["metadata"]["payledger_withdrawal"].as_str() == Some(p.withdrawal_id));
            Ok(mine.map_or(Outcome::NotFound, refund_outcome))
        }
        Kind::Btcpay => Err(unsupported(ep)),
    }
}

/// An outcome in the shape `payledger_internal.withdrawal_apply` reads.
pub fn to_json(o: &Outcome) -> Value {
    match o {
        Outcome::Succeeded { fee, preimage } => {
            json!({"status": "succeeded", "fee": fee, "preimage": preimage})
        }
        Outcome::Pending => json!({"status": "pending"}),
        Outcome::Failed(e) => json!({"status": "failed", "error": e}),
        Outcome::NotFound => json!({"status": "not_found"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnbits_rows() {
        let paid = json!({"status": "success", "fee": -1000, "preimage": "ab"});
        assert_eq!(
            lnbits_outcome(&paid, true),
            Outcome::Succeeded {
                fee: 1000,
                preimage: Some("ab".into())
            }
        );
        assert_eq!(
            lnbits_outcome(&json!({"status": "pending"}), false),
            Outcome::Pending
        );
        assert!(matches!(
            lnbits_outcome(&json!({"status": "failed"}), false),
            Outcome::Failed(_)
        ));
        // 64 zeros (FakeWallet without a preimage, LND in flight): none
        let zeros = json!({"status": "success", "fee": 0, "preimage": "0".repeat(64)});
        assert_eq!(
            lnbits_outcome(&zeros, true),
            Outcome::Succeeded {
                fee: 0,
                preimage: None
            }
        );
    }

    #[test]
    fn lnd_messages() {
        let ok = json!({"result": {"status": "SUCCEEDED", "fee_msat": "1050",
                                   "payment_preimage": "ab".repeat(32)}});
        assert_eq!(
            lnd_outcome(200, &ok),
            Ok(Outcome::Succeeded {
                fee: 1050,
                preimage: Some("ab".repeat(32))
            })
        );
        let flight = json!({"result": {"status": "IN_FLIGHT", "payment_preimage": "0".repeat(64)}});
        assert_eq!(lnd_outcome(200, &flight), Ok(Outcome::Pending));
        let failed =
            json!({"result": {"status": "FAILED", "failure_reason": "FAILURE_REASON_NO_ROUTE"}});
        assert_eq!(
            lnd_outcome(200, &failed),
            Ok(Outcome::Failed("LND: FAILURE_REASON_NO_ROUTE".into()))
        );
        // AlreadyExists: paid or under way, a lookup says which
        let exists = json!({"code": 6, "message": "payment is in transition"});
        assert_eq!(lnd_outcome(409, &exists), Ok(Outcome::Pending));
        // in a stream, after the headers
        let gone = json!({"error": {"code": 5, "message": "payment isn't initiated"}});
        assert_eq!(lnd_outcome(200, &gone), Ok(Outcome::NotFound));
        let unknown = json!({"code": 2, "message": "invoice expired"});
        assert!(lnd_outcome(500, &unknown).is_err());
    }

    #[test]
    fn cln_pays() {
        let done = json!({"status": "complete", "amount_msat": 70000, "amount_sent_msat": 71070,
                          "preimage": "cd".repeat(32)});
        let failed = json!({"status": "failed", "amount_msat": 70000});
        assert_eq!(
            cln_outcome(&[failed.clone(), done]),
            Outcome::Succeeded {
                fee: 1070,
                preimage: Some("cd".repeat(32))
            }
        );
        assert_eq!(
            cln_outcome(&[failed.clone(), json!({"status": "pending"})]),
            Outcome::Pending
        );
        assert!(matches!(cln_outcome(&[failed]), Outcome::Failed(_)));
        assert_eq!(cln_outcome(&[]), Outcome::NotFound);
    }
}
