//! Incoming webhooks, verified over the raw body as the provider sent it, and
//! read into one of three actions the SQL side applies like the reconciler.
//!
//! - BTCPay: `BTCPay-Sig: sha256=<hex HMAC-SHA256(secret, body)>`.
//! - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`, HMAC of
//!   `t + "." + body`, within a tolerance of the current time.
//! - LNbits, LND, Core Lightning: no signature exists; the body is only a
//!   hint that makes the invoice due for a status check now.

use super::adapters::Kind;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Stripe's default tolerance between the signature's time and ours.
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq)]
pub enum Action {
    /// settled, from a signed event: apply as the reconciler would
    Paid { received: Option<i64> },
    /// a signed terminal failure
    Invalid(String),
    /// anything else, or an unsigned hint: check the invoice at its provider now
    Recheck,
}

#[derive(Debug, PartialEq)]
pub struct Verdict {
    /// the provider's id for the invoice, or its payment hash
    pub reference: String,
    pub event: String,
    pub signed: bool,
    pub action: Action,
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn hmac_ok(secret: &str, message: &[&[u8]], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    for part in message {
        mac.update(part);
    }
    // constant-time comparison
    mac.verify_slice(&sig).is_ok()
}

/// Check the signature (for kinds that sign) and read the event.
/// Errors are messages for SQLSTATE PL026 (signature) or 22023 (body).
pub fn verify(
    kind: Kind,
    secret: Option<&str>,
    headers: &Value,
    body: &str,
    now: i64,
) -> Result<Verdict, (bool, String)> {
    let sig_err = |m: &str| (true, m.to_owned());
    let body_err = |m: String| (false, m);
    match kind {
        Kind::Btcpay => {
            let secret = secret.ok_or_else(|| sig_err("the provider has no webhook secret"))?;
            let sig =
                header(headers, "BTCPay-Sig").ok_or_else(|| sig_err("no BTCPay-Sig header"))?;
            let hex_sig = sig
                .strip_prefix("sha256=")
                .ok_or_else(|| sig_err("BTCPay-Sig is not sha256=<hex>"))?;
            if !hmac_ok(secret, &[body.as_bytes()], hex_sig) {
                return Err(sig_err("the BTCPay-Sig signature does not match the body"));
            }
            let v: Value =
                serde_json::from_str(body).map_err(|e| body_err(format!("body: {e}")))?;
            let event = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let reference = v
                .get("invoiceId")
                .and_then(Value::as_str)
                .ok_or_else(|| body_err("the event has no invoiceId".into()))?
                .to_owned();
            // InvoicePaymentSettled is one payment, not the invoice: recheck
            let action = match event.as_str() {
                "InvoiceSettled" => Action::Paid { received: None },
                "InvoiceInvalid" => Action::Invalid("Invalid at BTCPay (webhook)".into()),
                _ => Action::Recheck,
            };
            Ok(Verdict {
                reference,
                event,
                signed: true,
                action,
            })
        }
        Kind::Stripe => {
            let secret = secret.ok_or_else(|| sig_err("the provider has no webhook secret"))?;
            let sig = header(headers, "Stripe-Signature")
                .ok_or_else(|| sig_err("no Stripe-Signature header"))?;
            let mut t: Option<&str> = None;
            let mut v1 = Vec::new();
            for part in sig.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", x)) => t = Some(x),
                    Some(("v1", x)) => v1.push(x),
                    _ => {}
                }
            }
            let t = t.ok_or_else(|| sig_err("Stripe-Signature has no t="))?;
            let ts: i64 = t
                .parse()
                .map_err(|_| sig_err("Stripe-Signature's t= is not a time"))?;
            if (now - ts).abs() > STRIPE_TOLERANCE_SECS {
                return Err(sig_err(
                    "Stripe-Signature's time is outside the 300 s tolerance",
                ));
            }
            if !v1
                .iter()
                .any(|s| hmac_ok(secret, &[t.as_bytes(), b".", body.as_bytes()], s))
            {
                return Err(sig_err(
                    "no v1 signature in Stripe-Signature matches the body",
                ));
            }
            let v: Value =
                serde_json::from_str(body).map_err(|e| body_err(format!("body: {e}")))?;
            let event = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let object = v.pointer("/data/object").unwrap_or(&Value::Null);
            let reference = object
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| body_err("the event has no data.object.id".into()))?
                .to_owned();
            let action = match event.as_str() {
                "payment_intent.succeeded" => Action::Paid {
                    received: object.get("amount_received").and_then(Value::as_i64),
                },
                "payment_intent.canceled" => Action::Invalid("canceled at Stripe (webhook)".into()),
                _ => Action::Recheck,
            };
            Ok(Verdict {
                reference,
                event,
                signed: true,
                action,
            })
        }
        Kind::Lnbits | Kind::LndRest | Kind::ClnRest => {
            // LNbits sends the payment as a JSON string inside JSON
            let mut v: Value =
                serde_json::from_str(body).map_err(|e| body_err(format!("body: {e}")))?;
            if let Value::String(inner) = &v {
                v = serde_json::from_str(inner).map_err(|e| body_err(format!("body: {e}")))?;
            }
            let reference = v
                .get("payment_hash")
                .and_then(Value::as_str)
                .ok_or_else(|| body_err("the body has no payment_hash".into()))?
                .to_owned();
            Ok(Verdict {
                reference,
                event: "payment".into(),
                signed: false,
                action: Action::Recheck,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sign(secret: &str, parts: &[&[u8]]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        for p in parts {
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn btcpay_signature() {
        let body = r#"{"type":"InvoiceSettled","invoiceId":"Abc123"}"#;
        let good = json!({"btcpay-sig": format!("sha256={}", sign("s3", &[body.as_bytes()]))});
        let v = verify(Kind::Btcpay, Some("s3"), &good, body, 0).unwrap();
        assert_eq!(v.action, Action::Paid { received: None });
        assert_eq!(v.reference, "Abc123");
        assert!(
            verify(Kind::Btcpay, Some("other"), &good, body, 0)
                .unwrap_err()
                .0
        );
        let tampered = body.replace("Abc", "Xbc");
        assert!(verify(Kind::Btcpay, Some("s3"), &good, &tampered, 0).is_err());
    }

    #[test]
    fn stripe_signature_and_tolerance() {
        let body = r#"{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","amount_received":500}}}"#;
        let s = sign("whsec", &[b"1000", b".", body.as_bytes()]);
        let h = json!({"Stripe-Signature": format!("t=1000,v1=deadbeef,v1={s}")});
        let v = verify(Kind::Stripe, Some("whsec"), &h, body, 1100).unwrap();
        assert_eq!(
            v.action,
            Action::Paid {
                received: Some(500)
            }
        );
        assert!(verify(Kind::Stripe, Some("whsec"), &h, body, 1400).is_err());
    }

    #[test]
    fn lnbits_double_encoded_hint() {
        let body =
            serde_json::to_string(&json!({"payment_hash": "ab", "amount": 1000}).to_string())
                .unwrap();
        let v = verify(Kind::Lnbits, None, &json!({}), &body, 0).unwrap();
        assert_eq!(
            (v.reference.as_str(), v.signed, v.action),
            ("ab", false, Action::Recheck)
        );
    }
}
