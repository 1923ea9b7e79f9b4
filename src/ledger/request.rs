//! Parsing and validation of engine requests (the JSON items of a batch).
//!
//! Pure Rust: nothing here touches the database, so every rule is unit-tested.

use crate::errors::{Code, LedgerError, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub type Id = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Signed postings (negative = debit) that sum to zero per asset.
    Transfer {
        postings: Vec<(Id, i64)>,
        kind: String,
        effective_at: Option<String>,
    },
    HoldCreate {
        debit: Id,
        credit: Id,
        amount: i64,
        expires_at: Option<String>,
        /// Alternative to `expires_at`: milliseconds from the moment of creation.
        timeout_ms: Option<i64>,
    },
    HoldPost {
        hold: Id,
        amount: Option<i64>,
        effective_at: Option<String>,
    },
    HoldVoid {
        hold: Id,
    },
    HoldExpire {
        hold: Id,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub op: Op,
    pub key: Option<String>,
    /// sha256 of the canonical request, present when `key` is.
    pub hash: Option<Vec<u8>>,
    pub metadata: String,
    /// The module the item moves money for (None: the generic API), which
    /// may move the accounts it manages. Never read from the request.
    pub module: Option<String>,
}

impl Item {
    /// Whether the idempotency key of this item names a journal (else a hold).
    pub fn key_is_journal(&self) -> bool {
        !matches!(self.op, Op::HoldCreate { .. })
    }
}

pub const MAX_POSTINGS: usize = 10_000;
pub const MAX_KEY_LEN: usize = 255;

fn malformed(msg: impl Into<String>) -> LedgerError {
    LedgerError::new(Code::Malformed, msg)
}

/// A bad value quoted in an error message, cut short: input may be huge.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

pub fn parse_uuid(v: &Value, field: &str) -> Result<Id> {
    let s = v
        .as_str()
        .ok_or_else(|| malformed(format!("\"{field}\" must be a uuid string")))?;
    uuid::Uuid::parse_str(s)
        .map(|u| *u.as_bytes())
        .map_err(|_| malformed(format!("\"{field}\" is not a valid uuid: {}", quoted(s))))
}

/// An amount: a JSON integer or a string of digits (for clients without 64-bit numbers).
pub fn parse_amount(v: &Value, field: &str) -> Result<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| {
        LedgerError::new(
            Code::InvalidAmount,
            format!("\"{field}\" must be an integer number of minor units"),
        )
    })
}

pub fn positive(amount: i64, field: &str) -> Result<i64> {
    if amount > 0 {
        Ok(amount)
    } else {
        Err(LedgerError::new(
            Code::InvalidAmount,
            format!("\"{field}\" must be positive, got {amount}"),
        ))
    }
}

/// An RFC 3339 time, normalised to UTC so that equal instants hash equally.
pub fn parse_time(v: &Value, field: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| {
                Some(
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::Micros, true),
                )
            })
            .map_err(|_| {
                malformed(format!(
                    "\"{field}\" is not an RFC 3339 time: {}",
                    quoted(s)
                ))
            }),
        _ => Err(malformed(format!("\"{field}\" must be an RFC 3339 string"))),
    }
}

const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// An RFC 3339 time as a PostgreSQL timestamptz (microseconds since 2000-01-01 UTC).
pub fn pg_micros(t: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
}

/// A PostgreSQL timestamptz (microseconds since 2000-01-01 UTC) as RFC 3339 UTC.
pub fn rfc3339(t: impl Into<i64>) -> String {
    DateTime::from_timestamp_micros(t.into() + PG_EPOCH_UNIX_MICROS)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| "infinity".into())
}

pub fn uuid_str(id: &Id) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> &'a Value {
    obj.get(name).unwrap_or(&Value::Null)
}

fn required<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(malformed(format!("\"{name}\" is required"))),
        Some(v) => Ok(v),
    }
}

/// Parse one item of a batch. The accepted shapes are documented in docs/api.md.
pub fn parse_item(v: &Value) -> Result<Item> {
    let obj = v
        .as_object()
        .ok_or_else(|| malformed("each item must be a JSON object"))?;
    let op_name = match field(obj, "op") {
        Value::Null => "transfer",
        Value::String(s) => s.as_str(),
        _ => return Err(malformed("\"op\" must be a string")),
    };
    let op = match op_name {
        "transfer" => parse_transfer(obj)?,
        "hold" => {
            let debit = parse_uuid(required(obj, "from")?, "from")?;
            let credit = parse_uuid(required(obj, "to")?, "to")?;
            let amount = positive(parse_amount(required(obj, "amount")?, "amount")?, "amount")?;
            if debit == credit {
                return Err(malformed("a hold needs two different accounts"));
            }
            let expires_at = parse_time(field(obj, "expires_at"), "expires_at")?;
            let timeout_ms = match field(obj, "timeout_ms") {
                Value::Null => None,
                t => Some(
                    t.as_i64()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| malformed("\"timeout_ms\" must be a positive integer"))?,
                ),
            };
            if expires_at.is_some() && timeout_ms.is_some() {
                return Err(malformed("give \"expires_at\" or \"timeout_ms\", not both"));
            }
            Op::HoldCreate {
                debit,
                credit,
                amount,
                expires_at,
                timeout_ms,
            }
        }
        "post_hold" => {
            let amount = match field(obj, "amount") {
                Value::Null => None,
                a => {
                    let a = parse_amount(a, "amount")?;
                    Some(positive(a, "amount")?)
                }
            };
            Op::HoldPost {
                hold: parse_uuid(required(obj, "hold")?, "hold")?,
                amount,
                effective_at: parse_time(field(obj, "effective_at"), "effective_at")?,
            }
        }
        "void_hold" => Op::HoldVoid {
            hold: parse_uuid(required(obj, "hold")?, "hold")?,
        },
        "expire_hold" => Op::HoldExpire {
            hold: parse_uuid(required(obj, "hold")?, "hold")?,
        },
        other => return Err(malformed(format!("unknown op {}", quoted(other)))),
    };
    let key = match field(obj, "idempotency_key") {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return Err(key_error()),
    };
    let metadata = match field(obj, "metadata") {
        Value::Null => None,
        m => Some(m.clone()),
    };
    finish(op, key, metadata)
}

/// The two-leg transfer of `payledger.transfer`, from its typed arguments:
/// the checks of the JSON shorthand `{"from", "to", "amount", …}`, in the
/// same order, without building JSON to parse it back.
pub fn transfer_item(
    from: Id,
    to: Id,
    amount: i64,
    key: Option<String>,
    metadata: Option<Value>,
    effective_at: Option<String>,
    kind: Option<String>,
) -> Result<Item> {
    let kind = kind_name(kind.as_deref())?;
    let effective_at = match effective_at {
        None => None,
        Some(t) => parse_time(&Value::String(t), "effective_at")?,
    };
    let op = Op::Transfer {
        postings: two_legs(from, to, amount)?,
        kind,
        effective_at,
    };
    finish(op, key, metadata)
}

fn key_error() -> LedgerError {
    malformed(format!(
        "\"idempotency_key\" must be a non-empty string of at most {MAX_KEY_LEN} bytes"
    ))
}

/// An item from its operation, idempotency key and metadata (checked here,
/// whichever way the request came).
fn finish(op: Op, key: Option<String>, metadata: Option<Value>) -> Result<Item> {
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
    {
        return Err(key_error());
    }
    if key.is_some() && matches!(op, Op::HoldVoid { .. } | Op::HoldExpire { .. }) {
        return Err(malformed(
            "voiding or expiring a hold takes no idempotency key",
        ));
    }
    let metadata = match metadata {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(malformed("\"metadata\" must be a JSON object")),
    };
    let hash = key.as_ref().map(|_| request_hash(&op, &metadata));
    Ok(Item {
        op,
        key,
        hash,
        metadata: metadata.to_string(),
        module: None,
    })
}

/// A journal's kind: "transfer" unless named.
fn kind_name(kind: Option<&str>) -> Result<String> {
    match kind {
        None => Ok("transfer".to_string()),
        Some(s) if !s.is_empty() && s.len() <= 63 => Ok(s.to_string()),
        Some(_) => Err(malformed("\"kind\" must be a short non-empty string")),
    }
}

/// The postings of a two-leg transfer.
fn two_legs(from: Id, to: Id, amount: i64) -> Result<Vec<(Id, i64)>> {
    let amount = positive(amount, "amount")?;
    if from == to {
        return Err(malformed("\"from\" and \"to\" must be different accounts"));
    }
    Ok(vec![(from, -amount), (to, amount)])
}

fn parse_transfer(obj: &Map<String, Value>) -> Result<Op> {
    let kind = match field(obj, "kind") {
        Value::Null => kind_name(None)?,
        Value::String(s) => kind_name(Some(s))?,
        _ => return Err(malformed("\"kind\" must be a short non-empty string")),
    };
    let effective_at = parse_time(field(obj, "effective_at"), "effective_at")?;
    let postings = match field(obj, "postings") {
        Value::Null => {
            // The two-leg shorthand: {"from", "to", "amount"}.
            let from = parse_uuid(required(obj, "from")?, "from")?;
            let to = parse_uuid(required(obj, "to")?, "to")?;
            two_legs(from, to, parse_amount(required(obj, "amount")?, "amount")?)?
        }
        Value::Array(legs) => {
            if legs.len() < 2 || legs.len() > MAX_POSTINGS {
                return Err(malformed(format!(
                    "\"postings\" must hold between 2 and {MAX_POSTINGS} legs"
                )));
            }
            let mut out = Vec::with_capacity(legs.len());
            for leg in legs {
                let l = leg
                    .as_object()
                    .ok_or_else(|| malformed("each posting must be an object"))?;
                let account = parse_uuid(required(l, "account")?, "account")?;
                let amount = parse_amount(required(l, "amount")?, "amount")?;
                if amount == 0 || amount == i64::MIN {
                    return Err(LedgerError::new(
                        Code::InvalidAmount,
                        format!("a posting amount must be non-zero, got {amount}"),
                    ));
                }
                out.push((account, amount));
            }
            out
        }
        _ => return Err(malformed("\"postings\" must be an array")),
    };
    Ok(Op::Transfer {
        postings,
        kind,
        effective_at,
    })
}

/// The canonical form of a request: serde_json objects keep their keys sorted.
fn request_hash(op: &Op, metadata: &Value) -> Vec<u8> {
    let body = match op {
        Op::Transfer {
            postings,
            kind,
            effective_at,
        } => json!({
            "op": "transfer",
            "postings": postings.iter().map(|(a, n)| json!([uuid_str(a), n])).collect::<Vec<_>>(),
            "kind": kind,
            "effective_at": effective_at,
            "metadata": metadata,
        }),
        Op::HoldCreate {
            debit,
            credit,
            amount,
            expires_at,
            timeout_ms,
        } => json!({
            "op": "hold",
            "from": uuid_str(debit),
            "to": uuid_str(credit),
            "amount": amount,
            "expires_at": expires_at,
            "timeout_ms": timeout_ms,
            "metadata": metadata,
        }),
        Op::HoldPost {
            hold,
            amount,
            effective_at,
        } => json!({
            "op": "post_hold",
            "hold": uuid_str(hold),
            "amount": amount,
            "effective_at": effective_at,
            "metadata": metadata,
        }),
        Op::HoldVoid { hold } | Op::HoldExpire { hold } => json!({ "hold": uuid_str(hold) }),
    };
    Sha256::digest(body.to_string().as_bytes()).to_vec()
}

/// A 64-bit advisory-lock key for an idempotency key, so that two sessions
/// using the same key run one after the other.
pub fn key_lock(key: &str) -> i64 {
    let d = Sha256::digest(format!("payledger/idempotency/{key}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-7000-8000-000000000001";
    const B: &str = "00000000-0000-7000-8000-000000000002";

    /// `transfer()`'s typed path gives what the JSON shorthand gives: the
    /// same item (and request hash, which idempotent replays compare), or
    /// the same error.
    #[test]
    fn typed_transfer_is_the_json_shorthand() {
        let id = |s: &str| *uuid::Uuid::parse_str(s).unwrap().as_bytes();
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        let cases: Vec<(i64, Option<&str>, Value, Option<&str>, Option<&str>, &str)> = vec![
            (5, None, Value::Null, None, None, B),
            (
                5,
                Some("key-1"),
                json!({"note": "x"}),
                Some("2026-01-02T03:04:05.123456Z"),
                Some("fee"),
                B,
            ),
            (5, Some("key-1"), json!({"note": "y"}), None, None, B),
            (0, None, Value::Null, None, None, B),
            (-3, None, Value::Null, None, None, B),
            (5, None, Value::Null, None, None, A),
            (5, Some(""), Value::Null, None, None, B),
            (5, Some(&long_key), Value::Null, None, None, B),
            (5, None, json!([1]), None, None, B),
            (5, None, Value::Null, Some("infinity"), None, B),
            (5, None, Value::Null, None, Some(""), B),
        ];
        for (amount, key, metadata, at, kind, to) in cases {
            let mut obj = json!({"from": A, "to": to, "amount": amount});
            let o = obj.as_object_mut().unwrap();
            if let Some(k) = key {
                o.insert("idempotency_key".into(), json!(k));
            }
            o.insert("metadata".into(), metadata.clone());
            if let Some(t) = at {
                o.insert("effective_at".into(), json!(t));
            }
            if let Some(k) = kind {
                o.insert("kind".into(), json!(k));
            }
            let typed = transfer_item(
                id(A),
                id(to),
                amount,
                key.map(String::from),
                Some(metadata),
                at.map(String::from),
                kind.map(String::from),
            );
            assert_eq!(typed, parse_item(&obj), "{obj}");
        }
    }

    #[test]
    fn shorthand_transfer_becomes_two_postings() {
        let item = parse_item(&json!({"from": A, "to": B, "amount": 5})).unwrap();
        match item.op {
            Op::Transfer { postings, .. } => {
                assert_eq!(postings.len(), 2);
                assert_eq!(postings[0].1, -5);
                assert_eq!(postings[1].1, 5);
            }
            _ => panic!("not a transfer"),
        }
    }

    #[test]
    fn amounts_are_validated() {
        for bad in [json!(0), json!(-3), json!(1.5), json!("x"), json!(null)] {
            let err = parse_item(&json!({"from": A, "to": B, "amount": bad})).unwrap_err();
            assert!(
                matches!(err.code, Code::InvalidAmount | Code::Malformed),
                "{err:?}"
            );
        }
        let ok = parse_item(&json!({"from": A, "to": B, "amount": "9000000000000000000"}));
        assert!(ok.is_ok());
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        assert_eq!(parse_item(&json!([1])).unwrap_err().code, Code::Malformed);
        assert_eq!(
            parse_item(&json!({"op": "nope"})).unwrap_err().code,
            Code::Malformed
        );
        assert_eq!(
            parse_item(&json!({"from": "x", "to": B, "amount": 1}))
                .unwrap_err()
                .code,
            Code::Malformed
        );
        assert_eq!(
            parse_item(&json!({"postings": [{"account": A, "amount": 1}]}))
                .unwrap_err()
                .code,
            Code::Malformed
        );
        assert_eq!(
            parse_item(&json!({"from": A, "to": B, "amount": 1, "effective_at": "yesterday"}))
                .unwrap_err()
                .code,
            Code::Malformed
        );
    }

    #[test]
    fn hash_ignores_time_zone_and_key_order_but_not_amount() {
        let a = parse_item(
            &json!({"from": A, "to": B, "amount": 5, "idempotency_key": "k",
            "effective_at": "2026-01-01T01:00:00+01:00", "metadata": {"x": 1, "y": 2}}),
        )
        .unwrap();
        let b = parse_item(
            &json!({"metadata": {"y": 2, "x": 1}, "idempotency_key": "k",
            "effective_at": "2026-01-01T00:00:00Z", "amount": "5", "to": B, "from": A}),
        )
        .unwrap();
        let c = parse_item(
            &json!({"from": A, "to": B, "amount": 6, "idempotency_key": "k",
            "effective_at": "2026-01-01T00:00:00Z", "metadata": {"x": 1, "y": 2}}),
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }
}
