//! NIP-01 events: the id (sha256 of the canonical array form) and the BIP-340
//! signature over it, with libsecp256k1.

use secp256k1::{schnorr, Keypair, XOnlyPublicKey, SECP256K1};
use serde_json::Map;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An event's fields, checked for shape (a malformed event is an error, a
/// wrong id or signature is a verdict).
pub struct Event<'a> {
    pub id: &'a str,
    pub pubkey: &'a str,
    pub created_at: u64,
    pub kind: u64,
    pub tags: &'a Vec<Value>,
    pub content: &'a str,
    pub sig: &'a str,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn parse(ev: &Value) -> Result<Event<'_>, String> {
    let obj = ev.as_object().ok_or("an event must be a JSON object")?;
    let text = |k: &str| obj.get(k).and_then(Value::as_str);
    let pubkey = text("pubkey")
        .filter(|p| is_hex(p, 64))
        .ok_or("\"pubkey\" must be 64 lower-case hex characters")?;
    let created_at = obj
        .get("created_at")
        .and_then(Value::as_u64)
        .ok_or("\"created_at\" must be a non-negative integer")?;
    let kind = obj
        .get("kind")
        .and_then(Value::as_u64)
        .filter(|k| *k <= 65535)
        .ok_or("\"kind\" must be an integer between 0 and 65535")?;
    let tags = obj
        .get("tags")
        .and_then(Value::as_array)
        .filter(|t| {
            t.iter().all(|tag| {
                tag.as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string))
            })
        })
        .ok_or("\"tags\" must be an array of arrays of strings")?;
    let content = text("content").ok_or("\"content\" must be a string")?;
    Ok(Event {
        id: text("id").unwrap_or(""),
        pubkey,
        created_at,
        kind,
        tags,
        content,
        sig: text("sig").unwrap_or(""),
    })
}

/// sha256 of `[0, pubkey, created_at, kind, tags, content]` serialized as
/// NIP-01 says (serde_json escapes exactly as required: \n \" \\ \r \t \b \f,
/// other control characters as \u00XX, everything else verbatim).
pub fn compute_id(e: &Event<'_>) -> [u8; 32] {
    // A tuple serializes as a JSON array, without copying the tags.
    let canonical = serde_json::to_vec(&(0, e.pubkey, e.created_at, e.kind, e.tags, e.content))
        .expect("strings and numbers serialize");
    Sha256::digest(&canonical).into()
}

/// BIP-340: a 32-byte x-only key, a message of any length, a 64-byte signature.
pub fn schnorr_verify(pubkey: &[u8], msg: &[u8], sig: &[u8]) -> Result<bool, String> {
    let pk: [u8; 32] = pubkey
        .try_into()
        .map_err(|_| format!("a public key has 32 bytes, got {}", pubkey.len()))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| format!("a signature has 64 bytes, got {}", sig.len()))?;
    // A key that is not on the curve cannot have signed anything.
    let Ok(pk) = XOnlyPublicKey::from_byte_array(pk) else {
        return Ok(false);
    };
    let sig = schnorr::Signature::from_byte_array(sig);
    Ok(SECP256K1.verify_schnorr(&sig, msg, &pk).is_ok())
}

/// What checking an event found: the id it should have, and whether its
/// stated id and its signature are right.
pub struct Checked {
    pub computed_id: [u8; 32],
    pub id_ok: bool,
    pub sig_ok: bool,
}

pub fn check(e: &Event<'_>) -> Checked {
    let computed_id = compute_id(e);
    let id_ok = e.id == hex::encode(computed_id);
    let sig_ok = match (hex::decode(e.pubkey), hex::decode(e.sig)) {
        (Ok(pk), Ok(sig)) if sig.len() == 64 => {
            schnorr_verify(&pk, &computed_id, &sig).unwrap_or(false)
        }
        _ => false,
    };
    Checked {
        computed_id,
        id_ok,
        sig_ok,
    }
}

/// Sign an event with a secret key: sets `pubkey`, `id` and `sig` (and
/// `tags`, `content` and `created_at` when missing). The nonce's auxiliary
/// randomness is derived from the key and the id, so signing is repeatable.
pub fn sign(event: &Value, secret_key: &[u8], now: u64) -> Result<Value, String> {
    let sk: [u8; 32] = secret_key
        .try_into()
        .map_err(|_| format!("a secret key has 32 bytes, got {}", secret_key.len()))?;
    let kp = Keypair::from_seckey_byte_array(SECP256K1, sk).map_err(|e| e.to_string())?;
    let mut obj: Map<String, Value> = event
        .as_object()
        .cloned()
        .ok_or("an event must be a JSON object")?;
    obj.insert(
        "pubkey".into(),
        hex::encode(kp.x_only_public_key().0.serialize()).into(),
    );
    obj.entry("created_at").or_insert(now.into());
    obj.entry("tags").or_insert(Value::Array(vec![]));
    obj.entry("content").or_insert("".into());
    obj.remove("id");
    obj.remove("sig");
    let unsigned = Value::Object(obj);
    let id = compute_id(&parse(&unsigned)?);
    let aux: [u8; 32] = Sha256::digest([&sk[..], &id[..]].concat()).into();
    let sig = SECP256K1.sign_schnorr_with_aux_rand(&id, &kp, &aux);
    let mut obj = match unsigned {
        Value::Object(o) => o,
        _ => unreachable!("built as an object"),
    };
    obj.insert("id".into(), hex::encode(id).into());
    obj.insert("sig".into(), hex::encode(sig.to_byte_array()).into());
    Ok(Value::Object(obj))
}
