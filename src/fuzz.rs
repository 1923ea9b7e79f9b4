//! Fuzzing the parsers that take outside input: BOLT11 invoices, Nostr
//! events and zap receipts, ledger batch items and provider webhooks. Seeded
//! random and mutated inputs (the spec vectors and fixtures as seeds), many
//! thousands per parser and run; each must come back as Ok or Err, never
//! panic. `cargo test fuzz` (FUZZ_CASES=n for more; FUZZ_SEED=n for others).

use crate::bolt11;
use crate::ledger::request;
use crate::nostr::{event, zap};
use crate::provider::{adapters::Kind, webhook};
use serde_json::{json, Map, Value};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn cases() -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

const ALPHABET: &[char] = &[
    'q', 'p', 'z', 'r', 'y', '9', 'x', '8', 'g', 'f', '2', 't', 'v', 'd', 'w', '0', 's', '3', 'j',
    'n', '5', '4', 'k', 'h', 'c', 'e', '6', 'm', 'u', 'a', '7', 'l', '1', 'b', 'i', 'o', 'L', 'N',
    '"', '{', '}', '[', ']', ':', ',', '\\', '\0', 'é', '🙂', '-', '+', '.', 'E',
];

/// A string changed at random: characters flipped, inserted or deleted,
/// spans cut or repeated.
fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(6) {
            0 if at < s.len() => s[at] = *rng.pick(ALPHABET),
            1 => s.insert(at.min(s.len()), *rng.pick(ALPHABET)),
            2 if at < s.len() => {
                s.remove(at);
            }
            3 => s.truncate(at),
            4 if !s.is_empty() => {
                let from = rng.below(s.len());
                let span: Vec<char> = s[from..(from + rng.below(40)).min(s.len())].to_vec();
                s.splice(at.min(s.len())..at.min(s.len()), span);
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

/// A random JSON value, up to `depth` levels deep, with keys from `keys`.
fn value(rng: &mut Rng, depth: usize, keys: &[&str]) -> Value {
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(*rng.pick(&[0i64, 1, -1, i64::MAX, i64::MIN, 1000, 21_000_000])),
        3 => json!(*rng.pick(&[0.5f64, -0.0, 1e300, f64::MIN_POSITIVE])),
        4 => json!(*rng.pick(&[
            "",
            "x",
            "00000000-0000-0000-0000-000000000000",
            "2026-11-22T00:00:00Z",
            "lnbc1",
            "🙂"
        ])),
        5 => json!("a".repeat(rng.below(5000))),
        6 => Value::Array(
            (0..rng.below(5))
                .map(|_| value(rng, depth - 1, keys))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(8) {
                m.insert(rng.pick(keys).to_string(), value(rng, depth - 1, keys));
            }
            Value::Object(m)
        }
    }
}

fn fixture_events() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nostr");
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|v| v.to_string());
    assert!(!out.is_empty(), "no Nostr fixtures in {dir}");
    out
}

#[test]
fn fuzz_bolt11() {
    let seeds: Vec<String> = include_str!("../tests/fixtures/bolt11_spec_vectors.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    let mut rng = Rng::new();
    let mut decoded = 0;
    for _ in 0..cases() {
        let seed = rng.pick(&seeds).clone();
        let s = mutate(&mut rng, &seed);
        decoded += bolt11::decode(&s).is_ok() as usize;
        let _ = bolt11::terms(&s);
    }
    // (some inputs must get deep: a mutation that leaves the invoice valid)
    assert!(decoded > 0, "no mutated invoice decoded");
}

#[test]
fn fuzz_nostr_events_and_zaps() {
    let seeds = fixture_events();
    let keys = [
        "id",
        "pubkey",
        "created_at",
        "kind",
        "tags",
        "content",
        "sig",
        "bolt11",
        "description",
        "p",
        "e",
    ];
    let mut rng = Rng::new();
    let mut parsed = 0;
    for i in 0..cases() {
        let v = match i % 3 {
            // a fixture with its text mutated (when still JSON)
            0 => {
                let seed = rng.pick(&seeds).to_string();
                serde_json::from_str(&mutate(&mut rng, &seed)).unwrap_or(Value::Null)
            }
            // a fixture with one field replaced by anything
            1 => {
                let mut v = rng.pick(&seeds).clone();
                if let Some(o) = v.as_object_mut() {
                    o.insert(rng.pick(&keys).to_string(), value(&mut rng, 3, &keys));
                }
                v
            }
            _ => value(&mut rng, 4, &keys),
        };
        if let Ok(e) = event::parse(&v) {
            parsed += 1;
            let _ = event::check(&e);
            let _ = event::compute_id(&e);
        }
        let _ = zap::verify(&v, &"a".repeat(64), Some(&"b".repeat(64)), Some(1000), None);
        let _ = event::sign(&v, &[7u8; 32], 1_700_000_000);
    }
    assert!(parsed > 0, "no fuzzed event parsed");
}

#[test]
fn fuzz_ledger_items() {
    let keys = [
        "op",
        "from",
        "to",
        "amount",
        "postings",
        "account",
        "kind",
        "idempotency_key",
        "metadata",
        "effective_at",
        "expires_at",
        "timeout_ms",
        "hold",
    ];
    let mut rng = Rng::new();
    let mut parsed = 0;
    for _ in 0..cases() {
        let mut v = value(&mut rng, 3, &keys);
        if rng.below(2) == 0 {
            // mostly well-formed: a real op name and uuids where they go
            let op = *rng.pick(&["transfer", "hold", "post_hold", "void_hold", "expire_hold"]);
            v = json!({"op": op, "from": "00000000-0000-0000-0000-000000000001",
                       "to": "00000000-0000-0000-0000-000000000002", "hold": "00000000-0000-0000-0000-000000000003",
                       "amount": value(&mut rng, 0, &keys), "effective_at": value(&mut rng, 0, &keys),
                       "postings": value(&mut rng, 2, &keys)});
        }
        parsed += request::parse_item(&v).is_ok() as usize;
    }
    assert!(parsed > 0, "no fuzzed item parsed");
}

#[test]
fn fuzz_webhooks() {
    let keys = [
        "BTCPay-Sig",
        "Stripe-Signature",
        "type",
        "invoiceId",
        "data",
        "object",
        "id",
        "status",
    ];
    let mut rng = Rng::new();
    for _ in 0..cases() {
        let kind = *rng.pick(&[
            Kind::Btcpay,
            Kind::Stripe,
            Kind::Lnbits,
            Kind::LndRest,
            Kind::ClnRest,
        ]);
        let mut headers = value(&mut rng, 2, &keys);
        if rng.below(2) == 0 {
            headers = json!({"BTCPay-Sig": mutate(&mut rng, "sha256=00ff"),
                             "Stripe-Signature": mutate(&mut rng, "t=1700000000,v1=00ff")});
        }
        let body = if rng.below(2) == 0 {
            value(&mut rng, 3, &keys).to_string()
        } else {
            mutate(
                &mut rng,
                r#"{"type":"InvoiceSettled","invoiceId":"x","data":{"object":{"id":"pi_1","status":"succeeded"}}}"#,
            )
        };
        let _ = webhook::verify(
            kind,
            rng.pick(&[None, Some("whsec")]).as_deref(),
            &headers,
            &body,
            1_700_000_000,
        );
    }
}
