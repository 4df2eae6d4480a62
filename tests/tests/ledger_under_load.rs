//! The sidecar's housekeeping and catch-up under sustained load: the real
//! `creditgate-sidecar run` binary between a real Redis and an SQLite ledger, with credit
//! traffic driven straight through the protocol library's `RedisStore` on loopback.
//!
//! - Holds nobody settles are expired within their deadline + 2 s while about 2,000
//!   events/s flow into the streams (ingest never finds the streams empty, and the sweeper
//!   must not wait for it).
//! - A backlog built while the ledger refuses writes (a trigger aborts every insert) is in
//!   the ledger within seconds of the ledger coming back: the failed batches are retried by
//!   the sidecar that read them, not taken over after 30 s idle.
//!
//! Each test prints its figures (events/s, expiry lateness, catch-up time) for
//! docs/RELIABILITY.md. Needs `redis-server`, `sqlite3` and the built binaries:
//! `cargo build -p creditgate-sidecar -p creditgate-gateway`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{
    CreditStore, GrantOutcome, ReserveOutcome, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::{EntryKind, LedgerEntry};
use creditgate_testkit::{
    Backend, LedgerHarness, LedgerTarget, grant_request, require, reserve_request,
};

/// Events per second the load driver aims at (a reserve and a settle are two events).
const TARGET_EVENTS_PER_S: u64 = 2_000;

/// Concurrent driver tasks: enough that one slow store call does not stall the rate.
const DRIVER_TASKS: u64 = 16;

/// How long the load runs in the expiry test.
const LOAD: Duration = Duration::from_secs(15);

/// Lifetime of the holds nobody settles, ms: short, so many deadlines pass under load.
const SHORT_HOLD_TTL_MS: u64 = 500;

/// The promise under test: a hold is expired by its deadline plus this, ms.
const EXPIRY_SLACK_MS: u64 = 2_000;

/// How long the ledger refuses writes.
const OUTAGE: Duration = Duration::from_secs(10);

/// Events per second driven while the ledger is down.
const OUTAGE_EVENTS_PER_S: u64 = 500;

/// How soon after the ledger is back the backlog must be in it: retries back off to 2 s
/// at most, then the backlog drains at full batches.
const CATCH_UP_MAX: Duration = Duration::from_secs(8);

/// Drives reserve-and-settle pairs at `events_per_s` from [`DRIVER_TASKS`] tasks until
/// `stop`; returns the counter of events driven.
fn spawn_load(
    h: &LedgerHarness,
    events_per_s: u64,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let driven = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..DRIVER_TASKS {
        let customer = format!("load-{task}");
        let g = h.grant(&grant_request(
            &customer,
            &format!("g-{customer}"),
            "api",
            1 << 40,
            None,
            0,
        ));
        assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
        let (store, stop, driven) = (h.store.clone(), stop.clone(), driven.clone());
        // Each task places one pair (two events) per tick.
        let period = Duration::from_micros(2 * DRIVER_TASKS * 1_000_000 / events_per_s);
        tasks.push(h.rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let hold = format!("{customer}-{n}");
                let placed = store
                    .reserve(&reserve_request(&customer, &hold, "api", 2, 60_000))
                    .await;
                match placed {
                    Ok(ReserveOutcome::Placed { .. }) => {}
                    // A call that timed out on a loaded machine: the load goes on (a hold
                    // it may have placed expires after a minute, past the test).
                    Err(e) if e.is_retryable() => continue,
                    other => panic!("{other:?}"),
                }
                let settled = store
                    .settle(&SettleRequest {
                        customer: customer.clone(),
                        hold_id: hold,
                        actual: 1,
                        overdraft_limit: 0,
                    })
                    .await;
                assert!(
                    matches!(settled, Ok(ResolveOutcome::Posted { .. }))
                        || settled.as_ref().is_err_and(|e| e.is_retryable()),
                    "{settled:?}"
                );
                driven.fetch_add(2, Ordering::Relaxed);
            }
        }));
    }
    (driven, tasks)
}

/// Stops the load and waits for its tasks.
fn join_load(h: &LedgerHarness, stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        h.rt.block_on(task).expect("a load task failed");
    }
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[i64], q: f64) -> i64 {
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i]
}

#[test]
fn holds_past_their_deadline_expire_within_two_seconds_under_2000_events_per_second() {
    let h = LedgerHarness::start(Backend::Sqlite);
    let stop = Arc::new(AtomicBool::new(false));
    let (added_before, _) = h.stream_counts();
    let started = Instant::now();
    let (driven, tasks) = spawn_load(&h, TARGET_EVENTS_PER_S, stop.clone());

    // Holds with short deadlines, placed through the load and never settled.
    let mut deadlines: Vec<(String, u64)> = Vec::new();
    let g = h.grant(&grant_request("idle", "g-idle", "api", 1 << 40, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
    while started.elapsed() < LOAD {
        let hold = format!("idle-{}", deadlines.len());
        let request = reserve_request("idle", &hold, "api", 5, SHORT_HOLD_TTL_MS);
        match h.rt.block_on(h.store.reserve(&request)) {
            Ok(ReserveOutcome::Placed { hold: placed, .. }) => {
                deadlines.push((hold, placed.deadline_ms));
            }
            // Timed out on a loaded machine: its deadline is unknown; not measured.
            Err(e) if e.is_retryable() => {}
            other => panic!("{other:?}"),
        }
        thread::sleep(Duration::from_millis(100));
    }
    join_load(&h, &stop, tasks);
    let driven_for = started.elapsed();
    let (added_after, _) = h.stream_counts();
    let events_per_s = (added_after - added_before) as f64 / driven_for.as_secs_f64();

    let entries = h.wait_caught_up();
    let expired_at = |hold: &str| -> Option<u64> {
        entries
            .iter()
            .find(|e: &&LedgerEntry| {
                e.entry.kind == EntryKind::HoldExpired && e.entry.hold_id.as_deref() == Some(hold)
            })
            .map(|e| e.entry.event_at_ms)
    };
    let mut lateness_ms: Vec<i64> = Vec::new();
    for (hold, deadline_ms) in &deadlines {
        let at =
            expired_at(hold).unwrap_or_else(|| panic!("hold {hold} never expired\n{}", h.log()));
        lateness_ms.push(at as i64 - *deadline_ms as i64);
    }
    lateness_ms.sort_unstable();
    let (p50, p99, max) = (
        quantile(&lateness_ms, 0.5),
        quantile(&lateness_ms, 0.99),
        quantile(&lateness_ms, 1.0),
    );
    eprintln!(
        "load: {} events driven in {driven_for:?} ({events_per_s:.0} events/s into the streams); \
         {} short holds, expiry lateness p50 {p50} ms, p99 {p99} ms, max {max} ms",
        driven.load(Ordering::Relaxed),
        deadlines.len()
    );
    assert!(
        lateness_ms[0] >= 0,
        "a hold expired before its deadline: {lateness_ms:?}"
    );
    assert!(
        max <= EXPIRY_SLACK_MS as i64,
        "a hold expired {max} ms after its deadline (goal: {EXPIRY_SLACK_MS} ms)\n{}",
        h.log()
    );
    assert!(
        events_per_s >= 0.75 * TARGET_EVENTS_PER_S as f64,
        "the driver reached only {events_per_s:.0} events/s; the test did not load the sidecar"
    );
    h.assert_chain_verifies();
}

/// Makes the SQLite ledger refuse every new entry until dropped: a trigger, added with the
/// `sqlite3` tool while the sidecar runs, aborts each insert, so every batch the writer
/// tries fails as it would with a full disk or a broken database.
struct LedgerRefusesWrites(PathBuf);

impl LedgerRefusesWrites {
    fn start(target: &LedgerTarget) -> Self {
        let LedgerTarget::Sqlite(path) = target else {
            panic!("an SQLite ledger")
        };
        sqlite3(
            path,
            "CREATE TRIGGER test_outage BEFORE INSERT ON ledger_entries \
             BEGIN SELECT RAISE(ABORT, 'the ledger is unavailable (test)'); END;",
        );
        Self(path.clone())
    }
}

impl Drop for LedgerRefusesWrites {
    fn drop(&mut self) {
        sqlite3(&self.0, "DROP TRIGGER test_outage;");
    }
}

/// Runs one statement on the SQLite file with the `sqlite3` tool, waiting for the lock.
fn sqlite3(path: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 20000")
        .arg(path)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backlog_built_while_the_ledger_refused_writes_is_written_within_seconds() {
    require("sqlite3", "apt-get install sqlite3").expect("sqlite3");
    let h = LedgerHarness::start(Backend::Sqlite);
    let g = h.grant(&grant_request("warm", "g-warm", "api", 10, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
    h.wait_caught_up();

    let outage = LedgerRefusesWrites::start(&h.target);
    let stop = Arc::new(AtomicBool::new(false));
    let (driven, tasks) = spawn_load(&h, OUTAGE_EVENTS_PER_S, stop.clone());
    thread::sleep(OUTAGE);
    join_load(&h, &stop, tasks);
    let (added, pending) = h.stream_counts();
    let in_ledger = h.entries().len() as u64;
    assert!(
        h.sidecar().metric(
            "creditgate_sidecar_task_errors_total",
            &[("task", "writer")]
        ) > 0.0,
        "the ledger refused the writer's batches during the outage\n{}",
        h.log()
    );
    drop(outage);
    let restored = Instant::now();

    h.wait_caught_up();
    let caught_up = restored.elapsed();
    let backlog = added - in_ledger.min(added);
    eprintln!(
        "outage: {} events driven during {OUTAGE:?} with the ledger refusing writes, \
         {pending} pending at the end; a backlog of {backlog} events written {caught_up:?} after \
         the ledger came back ({:.0} events/s)",
        driven.load(Ordering::Relaxed),
        backlog as f64 / caught_up.as_secs_f64()
    );
    assert!(backlog > 1_000, "a backlog built up: {backlog} events");
    assert!(
        caught_up <= CATCH_UP_MAX,
        "the backlog took {caught_up:?} to reach the ledger (goal: {CATCH_UP_MAX:?})\n{}",
        h.log()
    );
    h.assert_chain_verifies();
}
