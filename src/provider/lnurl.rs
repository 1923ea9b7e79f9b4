//! LNURL-pay (LUD-06) and Lightning Addresses (LUD-16): a withdrawal to a
//! destination with no invoice of its own. The worker resolves it, with no
//! transaction open, into a BOLT11 for the amount asked, and checks that
//! invoice against what the LNURL server said before anything is paid: its
//! amount, its description hash (sha256 of the server's metadata), its
//! network, its expiry. Nothing is paid before that, so a resolution that
//! fails only fails the withdrawal.
//!
//! The destination's host is called from the database server: https only,
//! no redirects, except hosts an operator lists in
//! `payledger.lnurl_http_hosts` (tests on loopback).

use super::adapters::{raw_exchange, refused, transient, Body, Failure};
use crate::bolt11;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::Bech32;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use ureq::Agent;

/// The URL a destination is resolved at: a Lightning Address
/// (`user@host[:port]`, LUD-16) or an LNURL (bech32 `lnurl1…`, LUD-01),
/// with or without `lightning:`. `None`: not one of those (a BOLT11, say).
pub fn target(destination: &str) -> Option<String> {
    let d = destination.trim();
    let d = match d.get(..10) {
        Some(p) if p.eq_ignore_ascii_case("lightning:") => &d[10..],
        _ => d,
    };
    if d.len() > 2000 {
        return None;
    }
    if let Some((user, host)) = d.split_once('@') {
        let user_ok = !user.is_empty()
            && user.len() <= 64
            && user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.+".contains(&b));
        let host = host.to_ascii_lowercase();
        let (name, port) = match host.split_once(':') {
            Some((n, p)) => (n.to_owned(), Some(p.to_owned())),
            None => (host.clone(), None),
        };
        let host_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            && !name.starts_with(['.', '-'])
            && port.as_deref().is_none_or(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            });
        return (user_ok && host_ok).then(|| format!("https://{host}/.well-known/lnurlp/{user}"));
    }
    if !d.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("lnurl1")) {
        return None;
    }
    let lower = d.to_ascii_lowercase();
    let checked = CheckedHrpstring::new::<Bech32>(&lower).ok()?;
    if checked.hrp().as_str() != "lnurl" {
        return None;
    }
    let url = String::from_utf8(checked.byte_iter().collect()).ok()?;
    (url.starts_with("https://") || url.starts_with("http://")).then_some(url)
}

/// The host of an http(s) URL, and whether it is https.
fn host_of(url: &str) -> Option<(bool, &str)> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((
        https,
        authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    ))
}

/// A URL payledger may call: https, or http to a host the operator allows.
fn allowed(url: &str, http_hosts: &[String]) -> Result<(), Failure> {
    match host_of(url) {
        Some((true, _)) => Ok(()),
        Some((false, h)) if http_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)) => Ok(()),
        Some((false, h)) => Err(Failure::Refused(format!(
            "LNURL: {h} is not https (payledger.lnurl_http_hosts lists the hosts allowed over http)"
        ))),
        None => Err(Failure::Refused("LNURL: not an http(s) URL".into())),
    }
}

/// One GET to an LNURL server: its JSON, or why not. LUD-06 errors
/// (`{"status": "ERROR", "reason"}`) are refusals.
fn get(agent: &Agent, url: &str) -> Result<Value, Failure> {
    let (status, answer) = raw_exchange(agent, "GET", url, &[], Body::None)?;
    if transient(status) {
        return Err(Failure::Unreachable(format!("LNURL: HTTP {status}")));
    }
    if answer.get("status").and_then(Value::as_str) == Some("ERROR") {
        let reason: String = answer
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(Failure::Refused(format!("LNURL: {reason}")));
    }
    if !(200..300).contains(&status) {
        return Err(Failure::Refused(format!(
            "LNURL: {}",
            refused(status, &answer).message()
        )));
    }
    Ok(answer)
}

pub struct Resolved {
    pub bolt11: String,
    pub payment_hash: String,
}

/// An HTTP client for LNURL servers: the system's usual trust roots (not a
/// provider's pinned certificate), no redirects, bounded time.
pub fn agent(timeout: Duration) -> Agent {
    Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("payledger")
        .build()
        .into()
}

/// Resolve `destination` into a BOLT11 of `amount_msat` on `network`.
pub fn resolve(
    agent: &Agent,
    destination: &str,
    amount_msat: i64,
    network: &str,
    http_hosts: &[String],
) -> Result<Resolved, Failure> {
    let mut url = target(destination)
        .ok_or_else(|| Failure::Refused("not a Lightning Address or LNURL".into()))?;
    // an address on a host the operator allows over http is asked over http
    if destination.contains('@') {
        if let Some((_, h)) = host_of(&url) {
            if http_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)) {
                url = url.replacen("https://", "http://", 1);
            }
        }
    }
    allowed(&url, http_hosts)?;
    let pay = get(agent, &url)?;
    if pay.get("tag").and_then(Value::as_str) != Some("payRequest") {
        return Err(Failure::Refused("LNURL: not a payRequest".into()));
    }
    let callback = pay
        .get("callback")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Refused("LNURL: no callback".into()))?;
    let metadata = pay
        .get("metadata")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Refused("LNURL: no metadata".into()))?;
    let min = pay.get("minSendable").and_then(Value::as_i64).unwrap_or(0);
    let max = pay.get("maxSendable").and_then(Value::as_i64).unwrap_or(0);
    if amount_msat < min || amount_msat > max {
        return Err(Failure::Refused(format!(
            "LNURL: {amount_msat} msat is outside what it takes ({min} to {max})"
        )));
    }
    allowed(callback, http_hosts)?;
    let sep = if callback.contains('?') { '&' } else { '?' };
    let answer = get(agent, &format!("{callback}{sep}amount={amount_msat}"))?;
    let pr = answer
        .get("pr")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Refused("LNURL: the callback gave no invoice".into()))?;
    let inv =
        bolt11::decode(pr).map_err(|e| Failure::Refused(format!("LNURL: its invoice: {e}")))?;
    // LUD-06: the invoice is for the amount asked, and commits to the metadata
    if inv.amount_msat != Some(amount_msat as u64) {
        return Err(Failure::Refused(format!(
            "LNURL: its invoice is for {:?} msat, not {amount_msat}",
            inv.amount_msat
        )));
    }
    let want: [u8; 32] = Sha256::digest(metadata.as_bytes()).into();
    if inv.description_hash != Some(want) {
        return Err(Failure::Refused(
            "LNURL: its invoice's description hash is not the metadata's".into(),
        ));
    }
    if inv.network != network {
        return Err(Failure::Refused(format!(
            "LNURL: its invoice is for {}, the provider pays on {network}",
            inv.network
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if inv.timestamp + inv.expiry_seconds <= now {
        return Err(Failure::Refused("LNURL: its invoice has expired".into()));
    }
    Ok(Resolved {
        bolt11: pr.to_owned(),
        payment_hash: hex::encode(inv.payment_hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_lnurls() {
        assert_eq!(
            target("satoshi@example.com").as_deref(),
            Some("https://example.com/.well-known/lnurlp/satoshi")
        );
        assert_eq!(
            target("lightning:ann@127.0.0.1:8080").as_deref(),
            Some("https://127.0.0.1:8080/.well-known/lnurlp/ann")
        );
        // LUD-01's example
        let lnurl = "LNURL1DP68GURN8GHJ7UM9WFMXJCM99E3K7MF0V9CXJ0M385EKVCENXC6R2C35XVUKXEFCV5MKVV34X5EKZD3EV56NYD3HXQURZEPEXEJXXEPNXSCRVWFNV9NXZCN9XQ6XYEFHVGCXXCMYXYMNSERXFQ5FNS";
        assert_eq!(
            target(lnurl).as_deref(),
            Some("https://service.com/api?q=3fc3645b439ce8e7f2553a69e5267081d96dcd340693afabe04be7b0ccd178df")
        );
        for bad in [
            "lnbc1…",
            "Ann@example.com",
            "ann@exa mple.com",
            "ann@",
            "@example.com",
            "ann@host:port",
            "lnurl1notbech32",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_only_where_allowed() {
        let hosts = vec!["127.0.0.1".to_owned()];
        assert!(allowed("https://example.com/x", &[]).is_ok());
        assert!(allowed("http://127.0.0.1:9/x", &hosts).is_ok());
        assert!(allowed("http://example.com/x", &hosts).is_err());
        assert!(allowed("http://user@127.0.0.1/x", &hosts).is_err());
        assert!(allowed("ftp://127.0.0.1/x", &hosts).is_err());
    }
}
