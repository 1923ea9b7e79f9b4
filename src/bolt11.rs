//! BOLT11 invoices, with LDK's `lightning-invoice`: decoding (checksum, known
//! currency, exactly one payment hash and payment secret, a valid signature,
//! no unknown required feature), the terms a zap receipt needs, and creating
//! signed invoices for tests.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use lightning_invoice::{
    Bolt11Invoice, Bolt11SemanticError, Currency, InvoiceBuilder, PaymentSecret,
    SignedRawBolt11Invoice, TaggedField,
};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::str::FromStr;
use std::time::Duration;

/// Longer inputs are refused before parsing (BOLT11 has no length limit, but
/// real invoices are a few hundred characters; this bounds the work).
pub const MAX_LEN: usize = 7089;

pub struct Decoded {
    pub network: &'static str,
    pub amount_msat: Option<u64>,
    pub payment_hash: [u8; 32],
    pub description: Option<String>,
    pub description_hash: Option<[u8; 32]>,
    pub timestamp: u64,
    pub expiry_seconds: u64,
    pub payee: String,
    pub min_final_cltv_expiry: u64,
}

/// The invoice text without a `lightning:` prefix, bounded in length.
fn bare(invoice: &str) -> Result<&str, String> {
    if invoice.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} characters"));
    }
    let s = invoice.trim();
    Ok(match s.get(..10) {
        Some(p) if p.eq_ignore_ascii_case("lightning:") => &s[10..],
        _ => s,
    })
}

/// What a zap receipt needs from its invoice, without checking the invoice's
/// signature (NIP-57 does not require it, and it costs two curve operations):
/// the bech32 checksum, the currency and amount, the payment hash, the
/// description hash and the time.
pub struct Terms {
    pub amount_msat: Option<u64>,
    pub payment_hash: [u8; 32],
    pub description_hash: Option<[u8; 32]>,
    pub timestamp: u64,
}

pub fn terms(invoice: &str) -> Result<Terms, String> {
    let signed = SignedRawBolt11Invoice::from_str(bare(invoice)?).map_err(|e| e.to_string())?;
    let raw = signed.raw_invoice();
    let amount_msat = match raw.amount_pico_btc() {
        Some(p) if p % 10 != 0 => {
            return Err("The invoice's amount was not a whole number of millisatoshis".into())
        }
        p => p.map(|p| p / 10),
    };
    let payment_hash = raw
        .payment_hash()
        .map(|h| *h.0.as_ref())
        .ok_or("the invoice has no payment hash")?;
    Ok(Terms {
        amount_msat,
        payment_hash,
        description_hash: raw.description_hash().map(|h| *h.0.as_ref()),
        timestamp: raw.data.timestamp.as_unix_timestamp(),
    })
}

pub fn decode(invoice: &str) -> Result<Decoded, String> {
    let signed = SignedRawBolt11Invoice::from_str(bare(invoice)?).map_err(|e| e.to_string())?;
    let raw = signed.raw_invoice();
    if let Err(e) = Bolt11Invoice::from_signed(signed.clone()) {
        // LDK also requires a features field with the payment-secret bit, which
        // invoices from simpler issuers (LNbits' FakeWallet, older nodes) lack.
        // Accept those when every other rule holds; unknown required feature
        // bits still fail.
        let lenient = e == Bolt11SemanticError::InvalidFeatures
            && raw.features().is_none_or(|f| !f.requires_unknown_bits());
        if !lenient {
            return Err(e.to_string());
        }
        check_without_features(&signed)?;
    }
    Ok(Decoded {
        network: match raw.currency() {
            Currency::Bitcoin => "bitcoin",
            Currency::BitcoinTestnet => "testnet",
            Currency::Regtest => "regtest",
            Currency::Simnet => "simnet",
            Currency::Signet => "signet",
        },
        amount_msat: raw.amount_pico_btc().map(|p| p / 10),
        payment_hash: raw
            .payment_hash()
            .map(|h| *h.0.as_ref())
            .ok_or("the invoice has no payment hash")?,
        description: raw.description().map(|d| d.to_string()),
        description_hash: raw.description_hash().map(|h| *h.0.as_ref()),
        timestamp: raw.data.timestamp.as_unix_timestamp(),
        expiry_seconds: raw.expiry_time().map_or(3600, |e| e.as_seconds()),
        payee: match raw.payee_pub_key() {
            Some(p) => p.0.to_string(),
            None => signed
                .recover_payee_pub_key()
                .map_err(|e| format!("cannot recover the payee's key: {e}"))?
                .0
                .to_string(),
        },
        min_final_cltv_expiry: raw.min_final_cltv_expiry_delta().map_or(18, |d| d.0),
    })
}

/// The rules of BOLT11 that LDK's check would have applied after the
/// features: the signature, one payment hash, one payment secret, one
/// description or description hash, a whole number of msat.
fn check_without_features(signed: &SignedRawBolt11Invoice) -> Result<(), String> {
    let raw = signed.raw_invoice();
    let count = |f: fn(&TaggedField) -> bool| raw.known_tagged_fields().filter(|t| f(t)).count();
    if count(|t| matches!(t, TaggedField::PaymentHash(_))) != 1 {
        return Err("the invoice must have exactly one payment hash".into());
    }
    if count(|t| matches!(t, TaggedField::PaymentSecret(_))) != 1 {
        return Err("the invoice must have exactly one payment secret".into());
    }
    if count(|t| {
        matches!(
            t,
            TaggedField::Description(_) | TaggedField::DescriptionHash(_)
        )
    }) != 1
    {
        return Err("the invoice must have exactly one description or description hash".into());
    }
    if raw.amount_pico_btc().is_some_and(|p| p % 10 != 0) {
        return Err("The invoice's amount was not a whole number of millisatoshis".into());
    }
    if !signed.check_signature() {
        return Err("The invoice's signature is invalid".into());
    }
    Ok(())
}

/// Decode a BOLT11 invoice (a `lightning:` prefix is accepted); an invalid
/// one is SQLSTATE 22023 with the reason.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn bolt11_decode(
    invoice: &str,
) -> TableIterator<
    'static,
    (
        name!(network, &'static str),
        name!(amount_msat, Option<i64>),
        name!(payment_hash, String),
        name!(description, Option<String>),
        name!(description_hash, Option<String>),
        name!(created_at, TimestampWithTimeZone),
        name!(expiry_seconds, i64),
        name!(expires_at, TimestampWithTimeZone),
        name!(payee, String),
        name!(min_final_cltv_expiry, i64),
    ),
> {
    let d = decode(invoice).unwrap_or_else(|e| {
        crate::errors::raise_malformed(&format!("invalid bolt11 invoice: {e}"))
    });
    // PostgreSQL counts microseconds from 2000-01-01.
    let at = |secs: u64| {
        let micros = (secs.min(1 << 40) as i64 - 946_684_800) * 1_000_000;
        TimestampWithTimeZone::try_from(micros)
            .unwrap_or_else(|_| pgrx::error!("payledger: invoice time out of range"))
    };
    TableIterator::once((
        d.network,
        d.amount_msat.map(|a| a.min(i64::MAX as u64) as i64),
        hex::encode(d.payment_hash),
        d.description,
        d.description_hash.map(hex::encode),
        at(d.timestamp),
        d.expiry_seconds.min(i64::MAX as u64) as i64,
        at(d.timestamp.saturating_add(d.expiry_seconds)),
        d.payee,
        d.min_final_cltv_expiry.min(i64::MAX as u64) as i64,
    ))
}

// Who may call it (the operators may call all of the API: src/security.sql).
extension_sql!(
    "GRANT EXECUTE ON FUNCTION payledger.bolt11_decode(text) TO payledger_app;",
    name = "bolt11_grants",
    requires = [bolt11_decode]
);

/// Create and sign an invoice (for tests, demos and fake providers: the
/// payee's secret key passes through SQL).
pub struct NewInvoice<'a> {
    pub secret_key: &'a [u8],
    pub network: &'a str,
    pub amount_msat: Option<u64>,
    pub payment_hash: &'a [u8],
    pub description: Option<String>,
    pub description_hash: Option<&'a [u8]>,
    pub expiry_seconds: u64,
    pub timestamp: u64,
}

pub fn create(n: NewInvoice<'_>) -> Result<String, String> {
    let sk = SecretKey::from_slice(n.secret_key).map_err(|e| format!("secret key: {e}"))?;
    let hash: [u8; 32] = n
        .payment_hash
        .try_into()
        .map_err(|_| "a payment hash has 32 bytes")?;
    let currency = match n.network {
        "bitcoin" => Currency::Bitcoin,
        "testnet" => Currency::BitcoinTestnet,
        "regtest" => Currency::Regtest,
        "signet" => Currency::Signet,
        "simnet" => Currency::Simnet,
        other => return Err(format!("unknown network {other:?}")),
    };
    // The payment secret only has to be unpredictable to others.
    let secret = sha256::Hash::hash(&[n.secret_key, &hash[..]].concat()).to_byte_array();
    let builder = InvoiceBuilder::new(currency);
    let builder = match (n.description, n.description_hash) {
        (Some(d), None) => builder.description(d),
        (None, Some(h)) => builder.description_hash(
            sha256::Hash::from_slice(h).map_err(|_| "a description hash has 32 bytes")?,
        ),
        _ => return Err("give a description or a description hash".into()),
    };
    let mut builder = builder
        .payment_hash(sha256::Hash::from_byte_array(hash))
        .payment_secret(PaymentSecret(secret))
        .duration_since_epoch(Duration::from_secs(n.timestamp))
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(n.expiry_seconds));
    if let Some(a) = n.amount_msat {
        builder = builder.amount_milli_satoshis(a);
    }
    let secp = Secp256k1::signing_only();
    builder
        .build_signed(|msg| secp.sign_ecdsa_recoverable(msg, &sk))
        .map(|i| i.to_string())
        .map_err(|e| e.to_string())
}

/// Create a signed BOLT11 invoice. For tests, demos and fake providers; the
/// secret key passes through SQL. Granted to the admin role only.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn bolt11_create(
    secret_key: Option<&[u8]>,
    amount_msat: Option<i64>,
    payment_hash: Option<&[u8]>,
    description: default!(Option<String>, "NULL"),
    description_hash: default!(Option<&[u8]>, "NULL"),
    expiry_seconds: default!(Option<i64>, 3600),
    network: default!(Option<&str>, "'bitcoin'"),
    created_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> String {
    let timestamp = match created_at {
        Some(t) => (i64::from(t) / 1_000_000 + 946_684_800).max(0) as u64,
        // SAFETY: reads the current transaction's start time.
        None => {
            (unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() } / 1_000_000
                + 946_684_800) as u64
        }
    };
    let secret_key = secret_key.unwrap_or_else(|| crate::errors::raise_null("secret_key"));
    let payment_hash = payment_hash.unwrap_or_else(|| crate::errors::raise_null("payment_hash"));
    let expiry_seconds =
        expiry_seconds.unwrap_or_else(|| crate::errors::raise_null("expiry_seconds"));
    let network = network.unwrap_or_else(|| crate::errors::raise_null("network"));
    if amount_msat.is_some_and(|a| a <= 0) || expiry_seconds < 0 {
        crate::errors::raise_malformed("amount_msat must be positive and expiry_seconds >= 0");
    }
    create(NewInvoice {
        secret_key,
        network,
        amount_msat: amount_msat.map(|a| a as u64),
        payment_hash,
        description,
        description_hash,
        expiry_seconds: expiry_seconds as u64,
        timestamp,
    })
    .unwrap_or_else(|e| crate::errors::raise_malformed(&format!("cannot create the invoice: {e}")))
}
