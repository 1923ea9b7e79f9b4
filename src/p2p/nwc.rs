//! Nostr Wallet Connect (NIP-47): the connection URI a wallet service gives
//! its user, `nostr+walletconnect://<wallet service pubkey>?relay=<url>&secret=<hex>`.
//! The secret is the client's private key: payledger signs its requests with
//! it and encrypts them to the wallet service's key.

use secp256k1::{Keypair, SecretKey, SECP256K1};

/// A parsed connection URI.
#[derive(Debug, PartialEq, Eq)]
pub struct Connection {
    pub wallet_pubkey: String,
    pub relays: Vec<String>,
    /// the client's private key (hex): a secret
    pub secret: String,
    /// the client's public key (x-only, hex), derived from the secret
    pub client_pubkey: String,
    pub lud16: Option<String>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex::decode_to_slice(s, &mut out).ok())
        .flatten()
        .map(|_| out)
}

/// Parse and check a connection URI; the error says what is wrong, never the secret.
pub fn parse(uri: &str) -> Result<Connection, String> {
    const SCHEME: &str = "nostr+walletconnect://";
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or("an NWC connection URI starts with nostr+walletconnect://")?;
    let (pubkey, query) = rest
        .split_once('?')
        .ok_or("the NWC URI has no relay and secret")?;
    let wallet = hex32(pubkey)
        .filter(|k| secp256k1::XOnlyPublicKey::from_byte_array(*k).is_ok())
        .ok_or("the NWC URI's wallet service key is not a 32-byte hex public key")?;
    let (mut relays, mut secret, mut lud16) = (Vec::new(), None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "relay" => {
                let ok = url::Url::parse(&v)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "ws" | "wss") && u.host().is_some());
                if ok.is_none() {
                    return Err("an NWC relay must be a ws:// or wss:// URL".into());
                }
                relays.push(v.into_owned());
            }
            "secret" => secret = Some(v.into_owned()),
            "lud16" => lud16 = Some(v.into_owned()),
            _ => {}
        }
    }
    if relays.is_empty() {
        return Err("the NWC URI names no relay".into());
    }
    let secret = secret.ok_or("the NWC URI has no secret")?;
    let key = hex32(&secret)
        .and_then(|k| SecretKey::from_byte_array(k).ok())
        .ok_or("the NWC URI's secret is not a valid 32-byte hex private key")?;
    let (client, _) = Keypair::from_secret_key(SECP256K1, &key).x_only_public_key();
    Ok(Connection {
        wallet_pubkey: hex::encode(wallet),
        relays,
        secret: secret.to_ascii_lowercase(),
        client_pubkey: hex::encode(client.serialize()),
        lud16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALLET: &str = "b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4";
    const SECRET: &str = "71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c";

    #[test]
    fn parses_nip47_example() {
        // NIP-47's example URI
        let uri = format!(
            "nostr+walletconnect://{WALLET}?relay=wss%3A%2F%2Frelay.damus.io&secret={SECRET}"
        );
        let c = parse(&uri).unwrap();
        assert_eq!(c.wallet_pubkey, WALLET);
        assert_eq!(c.relays, vec!["wss://relay.damus.io".to_string()]);
        assert_eq!(c.secret, SECRET);
        assert_eq!(c.client_pubkey.len(), 64);
        assert_eq!(c.lud16, None);
    }

    #[test]
    fn refuses_bad_uris() {
        let good =
            format!("nostr+walletconnect://{WALLET}?relay=ws://127.0.0.1:7447&secret={SECRET}");
        assert!(parse(&good).is_ok());
        for bad in [
            format!("nostrwalletconnect://{WALLET}?relay=ws://x&secret={SECRET}"),
            format!("nostr+walletconnect://{WALLET}?secret={SECRET}"),
            format!("nostr+walletconnect://{WALLET}?relay=https://x&secret={SECRET}"),
            format!("nostr+walletconnect://{WALLET}?relay=ws://x"),
            format!("nostr+walletconnect://{WALLET}?relay=ws://x&secret=00"),
            format!(
                "nostr+walletconnect://{}?relay=ws://x&secret={SECRET}",
                "0".repeat(64)
            ),
            format!(
                "nostr+walletconnect://{WALLET}?relay=ws://x&secret={}",
                "0".repeat(64)
            ),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(!e.contains(SECRET), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// The client: one request, one response, over the wallet service's relay
// ---------------------------------------------------------------------------

use super::relay::Relay;
use crate::provider::adapters::Failure;
use ::nostr::event::{Event, Kind};
use ::nostr::nips::nip47::{
    MakeInvoiceRequest, Method, Nip47Ciphers, NostrWalletConnectUri, Request, Response,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An invoice the wallet service made or found.
#[derive(Debug)]
pub struct Invoice {
    pub bolt11: String,
}

fn refused(m: impl std::fmt::Display) -> Failure {
    Failure::Refused(m.to_string())
}

/// Which encryption the wallet service speaks: its info event (kind 13194)
/// lists `nip44_v2` in an `encryption` tag when it speaks NIP-44; without
/// the tag it speaks NIP-04 only (NIP-47).
fn ciphers(relay: &mut Relay, wallet: &str) -> Result<Nip47Ciphers, Failure> {
    relay.send(&json!(["REQ", "info", {"kinds": [13194], "authors": [wallet], "limit": 1}]))?;
    let mut found = None;
    loop {
        let m = relay.next()?;
        match (
            m.first().and_then(Value::as_str),
            m.get(1).and_then(Value::as_str),
        ) {
            (Some("EVENT"), Some("info")) => {
                let Some(ev) = m.get(2).and_then(|e| Event::from_json(e.to_string()).ok()) else {
                    continue;
                };
                if ev.kind == Kind::WalletConnectInfo
                    && ev.pubkey.to_hex() == wallet
                    && ev.verify().is_ok()
                {
                    found = Some(ev);
                }
            }
            (Some("EOSE"), Some("info")) => break,
            (Some("CLOSED"), Some("info")) => break,
            _ => {}
        }
    }
    relay.send(&json!(["CLOSE", "info"]))?;
    let nip44 = found.is_some_and(|ev| {
        ev.tags.iter().any(|t| {
            let v = t.as_slice();
            v.first().map(String::as_str) == Some("encryption")
                && v.get(1)
                    .is_some_and(|s| s.split_whitespace().any(|c| c == "nip44_v2"))
        })
    });
    Ok(if nip44 {
        Nip47Ciphers::NIP44V2
    } else {
        Nip47Ciphers::NIP04
    })
}

/// Send one request and wait for its response (kind 23195 from the wallet
/// service, tagged with the request's id), trying the URI's relays in turn.
fn call(uri: &str, request: Request, timeout: Duration) -> Result<Response, Failure> {
    let uri = NostrWalletConnectUri::parse(uri)
        .map_err(|_| refused("the NWC connection URI is not valid"))?;
    let deadline = Instant::now() + timeout;
    let wallet = uri.public_key.to_hex();
    let mut last = refused("the NWC URI names no relay");
    for relay_url in &uri.relays {
        let mut relay = match Relay::connect(relay_url.as_str(), deadline) {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let result = (|| {
            let cipher = ciphers(&mut relay, &wallet)?;
            let event = request
                .clone()
                .to_event(&uri, cipher)
                .map_err(|e| refused(format!("building the NWC request: {e}")))?;
            let id = event.id.to_hex();
            // (subscribed before publishing: the answer may come at once)
            relay.send(
                &json!(["REQ", "answer", {"kinds": [23195], "authors": [wallet], "#e": [id]}]),
            )?;
            let event_json: Value =
                serde_json::from_str(&event.as_json()).expect("an event is JSON");
            relay.publish(&event_json)?;
            loop {
                let m = relay.next()?;
                if m.first().and_then(Value::as_str) != Some("EVENT")
                    || m.get(1).and_then(Value::as_str) != Some("answer")
                {
                    continue;
                }
                let Some(ev) = m.get(2).and_then(|e| Event::from_json(e.to_string()).ok()) else {
                    continue;
                };
                // (the relay filters; the signature and the tag are checked here)
                let answers = ev.tags.iter().any(|t| {
                    let v = t.as_slice();
                    v.first().map(String::as_str) == Some("e") && v.get(1) == Some(&id)
                });
                if !answers || ev.verify().is_err() {
                    continue;
                }
                let ev_cipher = if ev.content.contains("?iv=") {
                    Nip47Ciphers::NIP04
                } else {
                    cipher
                };
                return Response::from_event(&uri, &ev, ev_cipher).map_err(|e| {
                    refused(format!("the wallet service's answer cannot be read: {e}"))
                });
            }
        })();
        relay.close();
        match result {
            Ok(r) => return Ok(r),
            Err(e @ Failure::Refused(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn answer(r: Response, want: Method) -> Result<Value, Failure> {
    if let Some(e) = r.error {
        return Err(refused(format!(
            "the wallet service refused: {} ({:?})",
            e.message, e.code
        )));
    }
    if r.result_type != want {
        return Err(refused(format!(
            "the wallet service answered {} to {}",
            r.result_type, want
        )));
    }
    let v = serde_json::to_value(&r.result).unwrap_or(Value::Null);
    Ok(v)
}

/// NIP-47 `make_invoice`: an invoice of the receiver's wallet.
pub fn make_invoice(
    uri: &str,
    amount_msat: u64,
    description: &str,
    expiry_secs: u64,
    timeout: Duration,
) -> Result<Invoice, Failure> {
    let req = Request::make_invoice(MakeInvoiceRequest {
        amount: amount_msat,
        description: Some(description.to_owned()),
        description_hash: None,
        expiry: Some(expiry_secs),
    });
    let r = answer(call(uri, req, timeout)?, Method::MakeInvoice)?;
    let bolt11 = r
        .get("invoice")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("the wallet service answered make_invoice without an invoice"))?;
    Ok(Invoice {
        bolt11: bolt11.to_owned(),
    })
}
