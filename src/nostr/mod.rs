//! Nostr: NIP-01 event ids and BIP-340 signatures (`event`), NIP-57 zap
//! receipts checked against what the verifier expects (`zap`), and NIP-90
//! paid jobs (`jobs.sql`), paid by zap or invoice through pay-ins.

pub(crate) mod event;
pub(crate) mod zap;

use crate::errors::JsonArg;
use pgrx::prelude::*;
use pgrx::JsonB;

extension_sql_file!(
    "jobs.sql",
    name = "nostr_jobs",
    // (a job's invoice is a provider invoice; its deadline a housekeeping step)
    requires = ["worker", nostr_verify_event, verify_zap_receipt]
);

fn invalid(message: String) -> ! {
    crate::errors::raise_malformed(&message)
}

/// The NIP-01 id of an event (lower-case hex), from its content; a malformed
/// event is SQLSTATE 22023.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn nostr_event_id(event: JsonArg) -> String {
    let e = event::parse(&event.0).unwrap_or_else(|m| invalid(format!("invalid event: {m}")));
    hex::encode(event::compute_id(&e))
}

/// Whether an event's id matches its content and its signature verifies.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn nostr_verify_event(event: JsonArg) -> bool {
    let e = event::parse(&event.0).unwrap_or_else(|m| invalid(format!("invalid event: {m}")));
    let c = event::check(&e);
    c.id_ok && c.sig_ok
}

/// Sign an event with a secret key (for tests, demos, and providers that
/// choose to sign in the database: the key passes through SQL). Granted to
/// the admin role only.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn nostr_sign_event(event: JsonArg, secret_key: &[u8]) -> JsonB {
    // SAFETY: reads the current transaction's start time.
    let now =
        unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() } / 1_000_000 + 946_684_800;
    JsonB(
        event::sign(&event.0, secret_key, now.max(0) as u64)
            .unwrap_or_else(|m| invalid(format!("cannot sign: {m}"))),
    )
}

/// BIP-340 Schnorr verification of a message of any length.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn bip340_verify(pubkey: &[u8], message: &[u8], signature: &[u8]) -> bool {
    event::schnorr_verify(pubkey, message, signature).unwrap_or_else(|m| invalid(m))
}

/// Check a kind 9735 zap receipt (see docs/nostr.md): `valid` when every
/// required check passes, else `failures` names each one that failed. Flags
/// record what is checked but not required.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn verify_zap_receipt(
    receipt: Option<JsonArg>,
    lnurl_pubkey: Option<&str>,
    recipient: default!(Option<&str>, "NULL"),
    expected_amount_msat: default!(Option<i64>, "NULL"),
    expected_event: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(valid, bool),
        name!(failures, Vec<String>),
        name!(amount_msat, Option<i64>),
        name!(payer_pubkey, Option<String>),
        name!(payment_hash, Option<String>),
        name!(receipt_id, Option<String>),
        name!(request_id, Option<String>),
        name!(description_hash_present, bool),
        name!(description_hash_matches, Option<bool>),
        name!(preimage_matches, Option<bool>),
        name!(request_lnurl, Option<String>),
        name!(timing_ok, Option<bool>),
    ),
> {
    let receipt = receipt.unwrap_or_else(|| crate::errors::raise_null("receipt"));
    let lnurl_pubkey = lnurl_pubkey.unwrap_or_else(|| crate::errors::raise_null("lnurl_pubkey"));
    let v = zap::verify(
        &receipt.0,
        lnurl_pubkey,
        recipient,
        expected_amount_msat,
        expected_event,
    )
    .unwrap_or_else(|m| invalid(format!("invalid zap receipt: {m}")));
    TableIterator::once((
        v.valid(),
        v.failures.clone(),
        v.amount_msat,
        v.payer_pubkey,
        v.payment_hash,
        v.receipt_id,
        v.request_id,
        v.description_hash_present,
        v.description_hash_matches,
        v.preimage_matches,
        v.request_lnurl,
        v.timing_ok,
    ))
}

// Who may call it (the operators may call all of the API: src/security.sql).
extension_sql!(
    "GRANT EXECUTE ON FUNCTION payledger.nostr_event_id(jsonb), payledger.nostr_verify_event(jsonb), payledger.bip340_verify(bytea, bytea, bytea), payledger.verify_zap_receipt(jsonb, text, text, bigint, text) TO payledger_app;",
    name = "nostr_grants",
    requires = [nostr_event_id, nostr_verify_event, bip340_verify, verify_zap_receipt]
);
