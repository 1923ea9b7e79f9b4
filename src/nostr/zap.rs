//! NIP-57 zap receipts (kind 9735), checked against what the verifier
//! expects: the recipient's LNURL server key, the amount, the zapped event.
//!
//! Hard checks (docs/nostr.md, H1-H7) reject the receipt; each failure is
//! named. The description-hash binding, the preimage, the lnurl and the
//! timing are recorded as flags, not required: real wallets issue `d`-field
//! invoices that are not bound to the request.

use super::event::{self, Event};
use crate::bolt11;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub amount_msat: Option<i64>,
    pub payer_pubkey: Option<String>,
    pub payment_hash: Option<String>,
    pub receipt_id: Option<String>,
    pub request_id: Option<String>,
    /// The invoice carries `h`, so it can be bound to the request.
    pub description_hash_present: bool,
    /// sha256(raw description tag) == the invoice's `h` (None without `h`).
    pub description_hash_matches: Option<bool>,
    /// sha256(preimage) == payment_hash (None without a preimage tag).
    pub preimage_matches: Option<bool>,
    /// The request's `lnurl` tag, for the caller to compare.
    pub request_lnurl: Option<String>,
    /// request.created_at <= invoice timestamp <= receipt.created_at
    pub timing_ok: Option<bool>,
}

impl Verdict {
    pub fn valid(&self) -> bool {
        self.failures.is_empty()
    }
    fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }
}

/// The values of the tags named `name` (their second element).
fn tag_values<'a>(tags: &'a [Value], name: &str) -> Vec<&'a str> {
    tags.iter()
        .filter_map(Value::as_array)
        .filter(|t| t.first().and_then(Value::as_str) == Some(name))
        .map(|t| t.get(1).and_then(Value::as_str).unwrap_or(""))
        .collect()
}

/// `lnurl_pubkey`: the `nostrPubkey` of the recipient's LNURL server (who
/// signs receipts); `recipient`: the zapped pubkey (the request's `p`), when
/// the caller knows it.
pub fn verify(
    receipt: &Value,
    lnurl_pubkey: &str,
    recipient: Option<&str>,
    expected_amount_msat: Option<i64>,
    expected_event: Option<&str>,
) -> Result<Verdict, String> {
    let r = event::parse(receipt)?;
    let mut v = Verdict::default();
    let checked = event::check(&r);
    v.receipt_id = Some(hex::encode(checked.computed_id));

    // H1: a receipt, with its own id and signature
    if r.kind != 9735 {
        v.fail(format!("receipt kind is {}, not 9735", r.kind));
    }
    if !checked.id_ok {
        v.fail("receipt id does not match its content");
    }
    if !checked.sig_ok {
        v.fail("receipt signature does not verify");
    }
    // H2: signed by the recipient's LNURL server, the only authentication
    if !r.pubkey.eq_ignore_ascii_case(lnurl_pubkey) {
        v.fail("receipt is not signed by the expected LNURL server key");
    }
    // H3: one bolt11 that parses and has an amount, one description
    let bolt11s = tag_values(r.tags, "bolt11");
    let descriptions = tag_values(r.tags, "description");
    let invoice = match bolt11s.as_slice() {
        [b] => match bolt11::terms(b) {
            Ok(d) => Some(d),
            Err(e) => {
                v.fail(format!("bolt11 does not parse: {e}"));
                None
            }
        },
        other => {
            v.fail(format!("receipt has {} bolt11 tags, not 1", other.len()));
            None
        }
    };
    if let Some(inv) = &invoice {
        v.payment_hash = Some(hex::encode(inv.payment_hash));
        match inv.amount_msat {
            Some(a) if a <= i64::MAX as u64 => v.amount_msat = Some(a as i64),
            _ => v.fail("bolt11 has no amount"),
        }
    }
    let description = match descriptions.as_slice() {
        [d] => Some(*d),
        other => {
            v.fail(format!(
                "receipt has {} description tags, not 1",
                other.len()
            ));
            None
        }
    };

    // H4: the description is a zap request with its own id and signature
    let request_json: Option<Value> = description.and_then(|d| match serde_json::from_str(d) {
        Ok(j) => Some(j),
        Err(_) => {
            v.fail("description is not JSON");
            None
        }
    });
    let request: Option<Event<'_>> = request_json.as_ref().and_then(|j| match event::parse(j) {
        Ok(e) => Some(e),
        Err(e) => {
            v.fail(format!("description is not an event: {e}"));
            None
        }
    });
    if let Some(q) = &request {
        let qc = event::check(q);
        v.request_id = Some(hex::encode(qc.computed_id));
        v.payer_pubkey = Some(q.pubkey.to_string());
        if q.kind != 9734 {
            v.fail(format!("zap request kind is {}, not 9734", q.kind));
        }
        if !qc.id_ok {
            v.fail("zap request id does not match its content");
        }
        if !qc.sig_ok {
            v.fail("zap request signature does not verify");
        }
        // H5: one recipient, the expected one, on request and receipt alike
        let qp = tag_values(q.tags, "p");
        let rp = tag_values(r.tags, "p");
        if qp.len() != 1 {
            v.fail(format!("zap request has {} p tags, not 1", qp.len()));
        } else if rp.len() != 1 || rp[0] != qp[0] {
            v.fail("receipt's p tag differs from the zap request's");
        } else if recipient.is_some_and(|want| !want.eq_ignore_ascii_case(qp[0])) {
            v.fail("zap is not for the expected recipient");
        }
        let qe = tag_values(q.tags, "e");
        if qe.len() > 1 {
            v.fail(format!("zap request has {} e tags, at most 1", qe.len()));
        }
        if let Some(want) = expected_event {
            let re = tag_values(r.tags, "e");
            if qe != [want] || re != [want] {
                v.fail("zap is not for the expected event");
            }
        }
        // H6: the amount asked for is the amount invoiced, as exact integers
        let amounts = tag_values(q.tags, "amount");
        if let (Some(a), Some(inv)) = (amounts.first(), &invoice) {
            if a.parse::<u64>().ok() != inv.amount_msat {
                v.fail(format!(
                    "bolt11 amount {} msat differs from the zap request's amount {a}",
                    inv.amount_msat.map_or("none".into(), |m| m.to_string())
                ));
            }
        }
        // H7: the receipt's P, if any, is the payer
        let big_p = tag_values(r.tags, "P");
        if big_p.iter().any(|p| *p != q.pubkey) {
            v.fail("receipt's P tag is not the zap request's author");
        }
        v.request_lnurl = tag_values(q.tags, "lnurl").first().map(|s| s.to_string());
        if let Some(inv) = &invoice {
            v.timing_ok = Some(q.created_at <= inv.timestamp && inv.timestamp <= r.created_at);
        }
    }
    if let Some(want) = expected_amount_msat {
        if v.amount_msat.is_some_and(|a| a != want) {
            v.fail(format!(
                "amount {} msat is not the expected {want}",
                v.amount_msat.unwrap_or_default()
            ));
        }
    }

    // Flags
    if let (Some(inv), Some(d)) = (&invoice, description) {
        if let Some(h) = inv.description_hash {
            v.description_hash_present = true;
            let got: [u8; 32] = Sha256::digest(d.as_bytes()).into();
            v.description_hash_matches = Some(got == h);
        }
    }
    if let (Some(inv), Some(pre)) = (&invoice, tag_values(r.tags, "preimage").first()) {
        v.preimage_matches = Some(
            hex::decode(pre)
                .map(|p| <[u8; 32]>::from(Sha256::digest(&p)) == inv.payment_hash)
                .unwrap_or(false),
        );
    }
    Ok(v)
}
