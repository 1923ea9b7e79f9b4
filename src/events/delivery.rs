//! Sending the outbox to the operator's HTTP endpoints (`delivery.sql` claims
//! and records): Standard Webhooks signatures, on several threads, with no
//! database access and no transaction open.

use crate::errors::JsonArg;
use base64::Engine;
use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">`, the key being the
/// bytes the `whsec_` secret encodes.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .ok_or("the secret is not whsec_…")?,
        )
        .map_err(|_| "the secret is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

fn send_one(agent: &ureq::Agent, claim: &Value, secrets: &HashMap<String, String>) -> Value {
    let id = claim["delivery_id"].clone();
    let result = |ok: bool, status: Option<u16>, error: Option<String>| json!({"delivery_id": id, "ok": ok, "status": status, "error": error});
    let Some(secret) = claim["endpoint_id"].as_str().and_then(|e| secrets.get(e)) else {
        return result(false, None, Some("the endpoint has no secret".into()));
    };
    let msg_id = claim["msg_id"].as_str().unwrap_or_default();
    let body = claim["body"].as_str().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = match sign(secret, msg_id, now, body) {
        Ok(s) => s,
        Err(e) => return result(false, None, Some(e)),
    };
    let sent = agent
        .post(claim["url"].as_str().unwrap_or_default())
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .send(body);
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ok = (200..300).contains(&status);
            result(ok, Some(status), (!ok).then(|| format!("HTTP {status}")))
        }
        // (the error's kind only: no URL, header or body in the message)
        Err(ureq::Error::Timeout(_)) => result(false, None, Some("timeout".into())),
        Err(ureq::Error::Io(e)) => result(false, None, Some(format!("connection: {}", e.kind()))),
        Err(_) => result(false, None, Some("could not send".into())),
    }
}

/// Send every claim, `concurrency` at a time; the results for `webhook_apply`.
pub fn send_all(
    claims: &[Value],
    secrets: &HashMap<String, String>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("payledger")
        .build()
        .into();
    crate::pool::map(
        claims,
        concurrency,
        |c| send_one(&agent, c, secrets),
        |c| json!({"delivery_id": c["delivery_id"], "ok": false, "error": "the send panicked"}),
    )
}

/// The endpoints' secrets named in the claims (SPI, in the claim's transaction).
pub fn load_secrets(claims: &[Value]) -> HashMap<String, String> {
    crate::secrets::of_claims(
        claims,
        "endpoint_id",
        "SELECT endpoint_id::text, secret FROM payledger.webhook_endpoint_secrets
          WHERE endpoint_id = ANY ($1::uuid[])",
    )
}

/// The worker's send step as a function, for `CALL payledger.run_tick()`:
/// the claims from `webhook_claim` in, the results for `webhook_apply` out.
/// It reads the secrets itself. Admin only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn webhook_send(claims: JsonArg) -> JsonB {
    let Value::Array(claims) = claims.0 else {
        crate::errors::raise_malformed("claims must be a JSON array")
    };
    let secrets = load_secrets(&claims);
    JsonB(Value::Array(send_all(
        &claims,
        &secrets,
        Duration::from_millis(crate::gucs::WORKER_HTTP_TIMEOUT.get().max(1) as u64),
        crate::gucs::WORKER_CONCURRENCY.get().max(1) as usize,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature() {
        // the specification's scheme, cross-checked with Python's hmac:
        // base64(hmac.new(b64decode(key), b"msg_id.ts.body", sha256))
        let body = r#"{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52-5198-4599-803e-771906343485","type":"healthcare"}}"#;
        assert_eq!(
            sign(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_loFOjxBNrRLzqYUf",
                1731705121,
                body
            )
            .unwrap(),
            "v1,a4pms4s1i+IB6912qG1YsfxFGn5BfMMvOC3FHTXzh7k="
        );
        assert!(sign("nope", "m", 1, "b").is_err());
    }
}
