//! The background worker: registered when payledger is in
//! `shared_preload_libraries` and `payledger.worker_database` is set. Each
//! tick it runs the same three steps as `CALL payledger.run_tick()`:
//!
//! 1. a short transaction that opens invoices for pay-ins waiting for one,
//!    claims due invoices (`FOR UPDATE SKIP LOCKED` plus a lease) and reads
//!    their providers' credentials, then commits;
//! 2. the provider calls, with no transaction open (`provider::call_all`);
//! 3. a short transaction per result, through `payledger.worker_apply`
//!    (guarded transitions, idempotent), then one for the providers' health;
//!
//! then the housekeeping (deadlines, holds, credit expiry, hook retries,
//! renewals, seals), a transaction per call (`payledger.housekeeping_plan`),
//! and the periodic runs that are due (credits' metering), shared out over
//! helper processes (`payledger.worker_runs`). The modules register both in
//! their own files; this one names none of them. An ERROR ends the process
//! and the postmaster starts it again after 5 s; a claim left by a crash
//! comes back when its lease runs out.
//!
//! `worker.sql` is the SQL half: the claim, the recording of results, the
//! status row, the registry of periodic runs and `run_tick`.

use crate::gucs;
use crate::provider::{call_all, load_secrets, CallSettings};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

extension_sql_file!("worker.sql", name = "worker", requires = ["p2p_forwards"]);

pub fn register() {
    // SAFETY: a plain read of a flag set by the postmaster.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("payledger worker")
        .set_type("payledger worker")
        .set_library("payledger")
        .set_function("payledger_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn shutting_down() -> bool {
    // SAFETY: a volatile read of the flag the SIGTERM handler sets.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn payledger_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(db) = gucs::WORKER_DATABASE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|d| !d.is_empty())
    else {
        // exit code 0: the postmaster does not start it again
        log!("payledger worker: payledger.worker_database is not set; not starting");
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    BackgroundWorker::transaction(|| {
        Spi::run("SELECT pg_catalog.set_config('application_name', 'payledger worker', false)")
            .unwrap_or_else(|e| pgrx::error!("{e}"));
    });
    log!("payledger worker: started on database {db}");
    // ticks every worker_interval; between them, wakes every
    // worker_notify_interval to announce new events
    let mut next_tick = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way to reload settings in a background worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            log!("payledger worker: settings reloaded");
            next_tick = Instant::now();
        }
        if Instant::now() >= next_tick {
            tick();
            next_tick =
                Instant::now() + Duration::from_secs(gucs::WORKER_INTERVAL.get().max(1) as u64);
        }
        announce();
        let nap = Duration::from_millis(gucs::WORKER_NOTIFY_INTERVAL.get().max(10) as u64)
            .min(next_tick.saturating_duration_since(Instant::now()));
        if shutting_down() || !BackgroundWorker::wait_latch(Some(nap)) {
            break;
        }
    }
    // exit code 1, not 0: a worker that exits with 0 is never started again,
    // and a SIGTERM also comes from pg_terminate_backend or DROP DATABASE …
    // WITH (FORCE). At server shutdown the postmaster restarts nothing anyway.
    log!("payledger worker: stopped");
    // SAFETY: ends the process the documented way.
    unsafe { pg_sys::proc_exit(1) };
}

/// Whether the extension is installed (remembered once it is: if it is
/// dropped later, the next call fails and the restarted worker checks again).
fn ready() -> bool {
    static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if READY.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    let ready = BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>(
            "SELECT pg_catalog.to_regprocedure('payledger.worker_claim(integer,timestamp with time zone)') IS NOT NULL",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    });
    READY.store(ready, std::sync::atomic::Ordering::Relaxed);
    ready
}

/// One NOTIFY for the events written since the last (a transaction only when
/// the extension is installed).
fn announce() {
    if !ready() {
        return;
    }
    BackgroundWorker::transaction(|| {
        Spi::run("SELECT payledger.announce_events()")
            .unwrap_or_else(|e| pgrx::error!("announcing events: {e}"));
    });
}

fn add_counts(total: &mut serde_json::Map<String, Value>, step: &Value) {
    if let Some(o) = step.as_object() {
        for (k, v) in o {
            let n = total.get(k).and_then(Value::as_i64).unwrap_or(0) + v.as_i64().unwrap_or(0);
            total.insert(k.clone(), json!(n));
        }
    }
}

/// Claim rounds in one tick, at most: a tick claims until nothing is due
/// (the next step of a pay-in, due at once, is taken in the same tick: a
/// held p2p payment is seen, forwarded and settled in one), and yields to
/// the webhooks and the housekeeping after this many rounds under a steady
/// stream of new work. Nothing loops: what is due is what was due when the
/// tick started, or a step that follows one just done.
const MAX_CLAIM_ROUNDS: usize = 50;

fn tick() {
    if !ready() {
        return;
    }
    let batch = gucs::WORKER_BATCH_SIZE.get().max(1);
    let settings = CallSettings::from_gucs();
    let started = BackgroundWorker::transaction(|| {
        Spi::get_one::<String>("SELECT pg_catalog.clock_timestamp()::text")
            .unwrap_or_else(|e| pgrx::error!("{e}"))
            .unwrap_or_default()
    });
    let mut counts = serde_json::Map::new();
    let mut rounds = 0;
    loop {
        let (claims, secrets) = BackgroundWorker::transaction(|| {
            let claims = Spi::get_one_with_args::<JsonB>(
                "SELECT payledger.worker_claim($1, $2::timestamptz)",
                &[batch.into(), started.clone().into()],
            )
            .unwrap_or_else(|e| pgrx::error!("claiming invoices: {e}"))
            .map(|j| j.0)
            .unwrap_or(Value::Null);
            let claims = match claims {
                Value::Array(a) => a,
                _ => Vec::new(),
            };
            let secrets = load_secrets(&claims);
            (claims, secrets)
        });
        if claims.is_empty() {
            break;
        }
        // no transaction is open here
        let results = call_all(&claims, &secrets, &settings);
        drop(secrets);
        // one result per transaction (see payledger.worker_apply)
        for result in &results {
            let outcome = BackgroundWorker::transaction(|| {
                Spi::get_one_with_args::<String>(
                    "SELECT payledger.worker_apply($1)",
                    &[JsonB(result.clone()).into()],
                )
                .unwrap_or_else(|e| pgrx::error!("recording a result: {e}"))
                .unwrap_or_default()
            });
            add_counts(&mut counts, &json!({ outcome: 1 }));
        }
        BackgroundWorker::transaction(|| {
            Spi::run_with_args(
                "SELECT payledger.worker_provider_health($1)",
                &[JsonB(Value::Array(results)).into()],
            )
            .unwrap_or_else(|e| pgrx::error!("recording providers' health: {e}"));
        });
        rounds += 1;
        if rounds >= MAX_CLAIM_ROUNDS || shutting_down() {
            break;
        }
    }
    deliver_webhooks(batch, &settings, &mut counts);
    housekeeping(batch, &mut counts);
    periodic_runs(&mut counts);
    let counts = Value::Object(counts);
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT payledger.worker_note_tick($1, pg_catalog.pg_backend_pid())",
            &[JsonB(counts.clone()).into()],
        )
        .unwrap_or_else(|e| pgrx::error!("{e}"));
    });
    // say what happened, and only when something did
    let done: serde_json::Map<String, Value> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_i64() != Some(0))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !done.is_empty() {
        log!("payledger worker: {}", Value::Object(done));
    }
}

/// The outbox to the operator's webhook endpoints: claim (with the
/// secrets) in one transaction, send with none open, record each result in
/// its own, until nothing is due.
fn deliver_webhooks(
    batch: i32,
    settings: &CallSettings,
    counts: &mut serde_json::Map<String, Value>,
) {
    loop {
        let (claims, secrets) = BackgroundWorker::transaction(|| {
            let claims = Spi::get_one_with_args::<JsonB>(
                "SELECT payledger.webhook_claim($1)",
                &[batch.into()],
            )
            .unwrap_or_else(|e| pgrx::error!("claiming webhook deliveries: {e}"))
            .map(|j| j.0)
            .unwrap_or(Value::Null);
            let claims = match claims {
                Value::Array(a) => a,
                _ => Vec::new(),
            };
            let secrets = crate::events::delivery::load_secrets(&claims);
            (claims, secrets)
        });
        if claims.is_empty() {
            return;
        }
        let results = crate::events::delivery::send_all(
            &claims,
            &secrets,
            settings.timeout,
            settings.concurrency,
        );
        drop(secrets);
        for result in &results {
            let outcome = BackgroundWorker::transaction(|| {
                Spi::get_one_with_args::<String>(
                    "SELECT payledger.webhook_apply($1)",
                    &[JsonB(result.clone()).into()],
                )
                .unwrap_or_else(|e| pgrx::error!("recording a webhook delivery: {e}"))
                .unwrap_or_default()
            });
            add_counts(counts, &json!({ outcome: 1 }));
        }
        if (claims.len() as i32) < batch || shutting_down() {
            return;
        }
    }
}

/// The housekeeping, step by step as `payledger.housekeeping_plan` says: each
/// call of a step is its own transaction.
fn housekeeping(batch: i32, counts: &mut serde_json::Map<String, Value>) {
    let plan: Vec<(String, i32, i32, f64)> = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT step, per_call, max_calls, coalesce(extract(epoch FROM budget), 1e9)::float8 \
                   FROM payledger.housekeeping_plan($1)",
                None,
                &[batch.into()],
            )
            .unwrap_or_else(|e| pgrx::error!("housekeeping plan: {e}"))
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i32>(2).ok().flatten().unwrap_or(1),
                    r.get::<i32>(3).ok().flatten().unwrap_or(1),
                    r.get::<f64>(4).ok().flatten().unwrap_or(0.0),
                )
            })
            .collect()
        })
    });
    for (step, per_call, max_calls, budget) in plan {
        let started = Instant::now();
        let mut took = 0i64;
        for _ in 0..max_calls {
            let got = BackgroundWorker::transaction(|| {
                Spi::get_one_with_args::<i64>(
                    "SELECT payledger.housekeeping_step($1, $2)",
                    &[step.as_str().into(), per_call.into()],
                )
                .unwrap_or_else(|e| pgrx::error!("housekeeping ({step}): {e}"))
                .unwrap_or(0)
            });
            took += got;
            if got < i64::from(per_call)
                || started.elapsed().as_secs_f64() > budget
                || shutting_down()
            {
                break;
            }
        }
        add_counts(counts, &json!({ step: took }));
    }
}

/// Subjects per step of a periodic run (a transaction; for metering, as
/// many advisory locks).
const RUN_STEP: i32 = 1000;

/// The periodic runs the modules registered (`payledger.worker_runs`) that
/// are due, one after the other: the tick counts each run's subjects done
/// (under the key the module chose), `<run>_failed` and `<run>_ms`.
fn periodic_runs(counts: &mut serde_json::Map<String, Value>) {
    let due: Vec<(String, i32, String)> = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT name, parts, counts_as FROM payledger.worker_runs_due()",
                None,
                &[],
            )
            .unwrap_or_else(|e| pgrx::error!("periodic runs: {e}"))
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i32>(2).ok().flatten().unwrap_or(1),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
        })
    });
    for (name, parts, counts_as) in due {
        if shutting_down() {
            return;
        }
        let started = Instant::now();
        let (done, failed) = periodic_run(&name, parts, RUN_STEP);
        counts.insert(counts_as, done.into());
        counts.insert(format!("{name}_failed"), failed.into());
        counts.insert(
            format!("{name}_ms"),
            (started.elapsed().as_millis() as i64).into(),
        );
    }
}

/// One periodic run over `parts` sessions: the subjects are shared out by
/// the run's step (`part` of `parts`); this process does share 0, and
/// dynamic background workers the others (a share whose worker cannot start
/// is done here too). Each step is its own transaction. Returns the
/// subjects done and failed by this process; the helpers log theirs. The
/// run is recorded as done once every share is.
fn periodic_run(name: &str, parts: i32, batch: i32) -> (i64, i64) {
    let db = gucs::WORKER_DATABASE
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    let mut helpers = Vec::new();
    let mut mine = vec![0];
    for part in 1..parts {
        let helper =
            BackgroundWorkerBuilder::new(&format!("payledger {name} {}/{parts}", part + 1))
                .set_type(&format!("payledger {name}"))
                .set_library("payledger")
                .set_function("payledger_run_helper_main")
                .set_extra(&format!("{part} {parts} {batch} {name} {db}"))
                .enable_spi_access()
                // SAFETY: reads this process's pid.
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic();
        match helper {
            Ok(h) => helpers.push(h),
            Err(_) => mine.push(part),
        }
    }
    let (mut done, mut failed) = (0, 0);
    for part in mine {
        let (d, f) = run_share(name, batch, part, parts);
        done += d;
        failed += f;
    }
    for h in helpers {
        // (an error here: the helper is gone already)
        let _ = h.wait_for_shutdown();
    }
    if !shutting_down() {
        BackgroundWorker::transaction(|| {
            Spi::run_with_args("SELECT payledger.worker_run_done($1)", &[name.into()])
                .unwrap_or_else(|e| pgrx::error!("{name}: {e}"));
        });
    }
    (done, failed)
}

/// One share of a run, step by step (a transaction each): the subjects
/// done, and those of steps that failed (logged by the step, tried again
/// next run).
fn run_share(name: &str, batch: i32, part: i32, parts: i32) -> (i64, i64) {
    let mut after: Option<String> = None;
    let (mut done, mut failed) = (0i64, 0i64);
    loop {
        let (n, f, last) = BackgroundWorker::transaction(|| {
            Spi::get_three_with_args::<i32, i32, String>(
                "SELECT done, failed, last FROM payledger.worker_run_step($1, $2, $3, $4, $5)",
                &[
                    name.into(),
                    batch.into(),
                    after.clone().into(),
                    part.into(),
                    parts.into(),
                ],
            )
            .unwrap_or_else(|e| pgrx::error!("{name}: {e}"))
        });
        done += i64::from(n.unwrap_or(0));
        failed += i64::from(f.unwrap_or(0));
        after = last;
        if after.is_none() || shutting_down() {
            return (done, failed);
        }
    }
}

/// A helper of a periodic run (started by periodic_run): does its share and
/// exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn payledger_run_helper_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut f = extra.splitn(5, ' ');
    let mut num = || f.next().and_then(|v| v.parse::<i32>().ok());
    let (Some(part), Some(parts), Some(batch)) = (num(), num(), num()) else {
        log!("payledger run helper: bad arguments {extra:?}");
        return;
    };
    let name = f.next().unwrap_or_default().to_string();
    let db = f.next().unwrap_or_default();
    BackgroundWorker::connect_worker_to_spi(Some(db), None);
    BackgroundWorker::transaction(|| {
        Spi::run(&format!(
            "SELECT pg_catalog.set_config('application_name', 'payledger {name} {}/{parts}', false)",
            part + 1
        ))
        .unwrap_or_else(|e| pgrx::error!("{e}"));
    });
    let (done, failed) = run_share(&name, batch, part, parts);
    log!(
        "payledger {name} {}/{parts}: {done} done, {failed} failed",
        part + 1
    );
}
