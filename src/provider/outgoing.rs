//! Money out at a provider: pay a BOLT11, and look an outgoing payment up by
//! its payment hash. Plain HTTP like the invoice adapters (no database, no
//! transaction), run by the worker's call step.
//!
//! What a pay call says is trusted only when it is definite: paid, or
//! refused before any payment was made (a 4xx, or LNbits' `"status":
//! "failed"`). Anything else (a timeout, a dropped connection, another 5xx)
//! leaves the outcome unknown, and only a lookup settles it: a payment is
//! never sent twice.

use super::adapters::{
    exchange, known, raw_exchange, refused, transient, Body, Endpoint, Failure, Kind,
};
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

fn unsupported(ep: &Endpoint) -> Failure {
    Failure::Refused(format!(
        "{:?} providers do not pay withdrawals yet",
        ep.kind
    ))
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
            preimage: p
                .get("preimage")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.chars().any(|c| c != '0'))
                .map(str::to_owned),
        },
        "failed" => Outcome::Failed("the provider failed the payment".into()),
        _ => Outcome::Pending,
    }
}

/// Pay `bolt11`. `Err` means the outcome is not known.
pub fn pay(
    agent: &Agent,
    ep: &Endpoint,
    withdrawal_id: &str,
    bolt11: &str,
) -> Result<Outcome, Failure> {
    match ep.kind {
        Kind::Lnbits => {
            let (status, answer) = raw_exchange(
                agent,
                "POST",
                &ep.url("/api/v1/payments"),
                &[("X-Api-Key", ep.secret("admin_key")?)],
                Body::Json(json!({"out": true, "bolt11": bolt11,
                                  "extra": {"payledger_withdrawal": withdrawal_id}})),
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
        _ => Err(unsupported(ep)),
    }
}

/// Look an outgoing payment up by its payment hash.
pub fn lookup(agent: &Agent, ep: &Endpoint, payment_hash: &str) -> Result<Outcome, Failure> {
    match ep.kind {
        Kind::Lnbits => {
            let answer = known(exchange(
                agent,
                "GET",
                &ep.url(&format!("/api/v1/payments/{payment_hash}")),
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
                    preimage: a.get("preimage").and_then(Value::as_str).map(str::to_owned),
                }),
                None if a.get("status").and_then(Value::as_str) == Some("failed") => {
                    Ok(Outcome::Failed("the provider failed the payment".into()))
                }
                None => Ok(Outcome::Pending),
            }
        }
        _ => Err(unsupported(ep)),
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
        // 64 zeros (FakeWallet without a preimage): none
        let zeros = json!({"status": "success", "fee": 0, "preimage": "0".repeat(64)});
        assert_eq!(
            lnbits_outcome(&zeros, true),
            Outcome::Succeeded {
                fee: 0,
                preimage: None
            }
        );
    }
}
