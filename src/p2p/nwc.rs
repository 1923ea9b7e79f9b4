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
