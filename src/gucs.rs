//! Settings (GUCs), plain integers (no units, so that SQL reads them with
//! current_setting). Registered in `_PG_init`, so they exist as soon as the
//! library is loaded (by `shared_preload_libraries` or the first call). The
//! worker's settings reload on SIGHUP; its database only at server start.
//! The SQL side reads them through `payledger.setting_int(name)`, so that
//! each default is written once, here.

use pgrx::prelude::*;
use pgrx::search_path;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Largest number of items one `transfer_batch` call accepts.
pub static MAX_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub static WORKER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static WORKER_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static WORKER_MAX_INVOICE_AGE: GucSetting<i32> = GucSetting::<i32>::new(72 * 3600);
pub static WORKER_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
pub static WORKER_HTTP_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static WORKER_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static WORKER_CREATE_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static WORKER_MAX_BACKOFF: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static WORKER_NOTIFY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(250);
pub static METERING_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(21_600);
pub static METERING_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static WEBHOOK_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static LNURL_HTTP_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static P2P_MAX_CLTV_DELTA: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static P2P_SETTLE_CLTV_MARGIN: GucSetting<i32> = GucSetting::<i32>::new(80);
pub static P2P_ROUTE_CLTV: GucSetting<i32> = GucSetting::<i32>::new(144);
pub static P2P_EXPIRY_BUFFER: GucSetting<i32> = GucSetting::<i32>::new(120);
pub static P2P_MAX_HOLD_EXPIRY: GucSetting<i32> = GucSetting::<i32>::new(900);
pub static P2P_WALLET_MAX_FAILURES: GucSetting<i32> = GucSetting::<i32>::new(3);
pub static P2P_WALLET_COOLDOWN: GucSetting<i32> = GucSetting::<i32>::new(3600);

pub fn init() {
    GucRegistry::define_int_guc(
        c"payledger.max_batch_size",
        c"Largest number of items one payledger.transfer_batch call accepts.",
        c"Bounds the memory and lock footprint of one call; larger batches fail with SQLSTATE 54000.",
        &MAX_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the server starts
    // (loading it later is FATAL); only the worker reads it.
    // SAFETY: a plain read of a flag set by the postmaster.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_worker_database();
    }
    GucRegistry::define_int_guc(
        c"payledger.worker_interval",
        c"Seconds between the worker's ticks.",
        c"Each tick creates invoices, polls pending ones and runs the housekeeping.",
        &WORKER_INTERVAL,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_max_invoice_age",
        c"Seconds after its creation an invoice is no longer polled.",
        c"Keysat's 72 hours by default; an invoice still unpaid then is expired.",
        &WORKER_MAX_INVOICE_AGE,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_batch_size",
        c"Invoices the worker claims at a time.",
        c"A tick claims batches until nothing is due.",
        &WORKER_BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_http_timeout",
        c"Milliseconds a provider call may take, connection included.",
        c"A call that times out counts as the provider being unreachable.",
        &WORKER_HTTP_TIMEOUT,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_concurrency",
        c"Provider calls the worker makes at once.",
        c"Calls run on this many threads; no database work happens on them.",
        &WORKER_CONCURRENCY,
        1,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_create_attempts",
        c"Tries to create an invoice before its pay-in fails.",
        c"The pay-in then fails with INVOICE_CREATION_FAILED.",
        &WORKER_CREATE_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_max_backoff",
        c"Longest wait, in seconds, after repeated failures of a provider, an invoice or a hook.",
        c"Waits double from 2 seconds up to this.",
        &WORKER_MAX_BACKOFF,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.worker_notify_interval",
        c"Milliseconds between the worker's checks for new events to announce.",
        c"New rows in payledger.events are announced with one NOTIFY payledger_events per check.",
        &WORKER_NOTIFY_INTERVAL,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.metering_interval",
        c"Seconds between the worker's credit metering runs.",
        c"Four times a day by default; CALL payledger.meter_all() runs one on demand.",
        &METERING_INTERVAL,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.metering_workers",
        c"Sessions the worker's metering run uses at once.",
        c"The worker meters one share of the organisations and starts dynamic background workers for the others (each takes a max_worker_processes slot).",
        &METERING_WORKERS,
        1,
        16,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.webhook_max_attempts",
        c"Sends of an event to a webhook endpoint before its delivery is dead.",
        c"Failures are retried after a backoff; payledger.retry_webhook_delivery sends a dead one again.",
        &WEBHOOK_MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_max_cltv_delta",
        c"Largest CLTV delta (blocks) a p2p forward may need: the receiver's route and final hop.",
        c"A receiver invoice whose predicted route needs more fails with INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY.",
        &P2P_MAX_CLTV_DELTA,
        1,
        10000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_settle_cltv_margin",
        c"Blocks a held p2p payment must keep beyond the forward's route to be settled in time.",
        c"Part of the hold invoice's final CLTV delta; a held HTLC leaving fewer blocks than it plus the receiver's final delta fails with INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW.",
        &P2P_SETTLE_CLTV_MARGIN,
        0,
        10000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_route_cltv",
        c"Blocks a p2p forward's route may add to the receiver's final CLTV delta.",
        c"Added to the hold invoice's final CLTV delta, with the settle margin.",
        &P2P_ROUTE_CLTV,
        0,
        10000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_expiry_buffer",
        c"Seconds the hold invoice expires before the receiver's invoice.",
        c"A receiver invoice expiring sooner than this fails with INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY.",
        &P2P_EXPIRY_BUFFER,
        0,
        86400,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_max_hold_expiry",
        c"Longest expiry, in seconds, of a p2p pay-in's hold invoice.",
        c"The hold invoice expires at the earliest of this and the receiver's invoice's expiry less the buffer.",
        &P2P_MAX_HOLD_EXPIRY,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_wallet_max_failures",
        c"Failures in a row after which a receiver wallet is skipped for a while.",
        c"Skipped for payledger.p2p_wallet_cooldown seconds after its last failure.",
        &P2P_WALLET_MAX_FAILURES,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"payledger.p2p_wallet_cooldown",
        c"Seconds a failing receiver wallet is skipped.",
        c"After payledger.p2p_wallet_max_failures failures in a row.",
        &P2P_WALLET_COOLDOWN,
        0,
        2592000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"payledger.lnurl_http_hosts",
        c"Hosts whose LNURL servers may be called over plain http (a comma list).",
        c"Lightning Addresses and LNURLs are resolved over https only; list loopback test servers here, never public hosts.",
        &LNURL_HTTP_HOSTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The hosts LNURL servers may be reached at over plain http (a comma list).
pub fn lnurl_http_hosts() -> Vec<String> {
    LNURL_HTTP_HOSTS
        .get()
        .and_then(|c| c.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

fn define_worker_database() {
    GucRegistry::define_string_guc(
        c"payledger.worker_database",
        c"The database the payledger background worker connects to.",
        c"The worker starts only when payledger is in shared_preload_libraries and this is set.",
        &WORKER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The integer settings by name (without the `payledger.` prefix).
fn int_setting(name: &str) -> Option<&'static GucSetting<i32>> {
    Some(match name {
        "max_batch_size" => &MAX_BATCH_SIZE,
        "worker_interval" => &WORKER_INTERVAL,
        "worker_max_invoice_age" => &WORKER_MAX_INVOICE_AGE,
        "worker_batch_size" => &WORKER_BATCH_SIZE,
        "worker_http_timeout" => &WORKER_HTTP_TIMEOUT,
        "worker_concurrency" => &WORKER_CONCURRENCY,
        "worker_create_attempts" => &WORKER_CREATE_ATTEMPTS,
        "worker_max_backoff" => &WORKER_MAX_BACKOFF,
        "worker_notify_interval" => &WORKER_NOTIFY_INTERVAL,
        "metering_interval" => &METERING_INTERVAL,
        "metering_workers" => &METERING_WORKERS,
        "webhook_max_attempts" => &WEBHOOK_MAX_ATTEMPTS,
        "p2p_max_cltv_delta" => &P2P_MAX_CLTV_DELTA,
        "p2p_settle_cltv_margin" => &P2P_SETTLE_CLTV_MARGIN,
        "p2p_route_cltv" => &P2P_ROUTE_CLTV,
        "p2p_expiry_buffer" => &P2P_EXPIRY_BUFFER,
        "p2p_max_hold_expiry" => &P2P_MAX_HOLD_EXPIRY,
        "p2p_wallet_max_failures" => &P2P_WALLET_MAX_FAILURES,
        "p2p_wallet_cooldown" => &P2P_WALLET_COOLDOWN,
        _ => return None,
    })
}

/// A setting's value in this session (its default unless set). Calling it
/// loads the library, which defines the settings: a session that has not
/// loaded it yet still gets the defaults. An unknown name is 22023.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn setting_int(name: &str) -> i32 {
    match int_setting(name) {
        Some(s) => s.get(),
        None => {
            crate::errors::raise_malformed(&format!("payledger has no integer setting {name:?}"))
        }
    }
}
