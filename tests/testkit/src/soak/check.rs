//! The soak run's end checks and the samples they need: once the load has stopped and the
//! sidecar has had a bounded time to catch up, the ledger equals Redis for every customer,
//! no entry is pending and no hold is past its deadline, the streams are trimmed, dead
//! letters are accounted for, nobody burned more than was granted, usage events and grants
//! are in the ledger exactly once, and the processes' memory is flat.
//!
//! It reads only (Redis, the ledger, `/proc`, `/metrics`, the CLI); it repairs nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{CreditStore, Keyspace, RedisStore};
use creditgate_sidecar::ledger::{EntryKind, EntryQuery};

use super::load::LoadCounts;
use super::stack::{EVENTS_CUSTOMER, HOLD_TTL_MS, SoakStack};
use crate::fixtures::{PREFIX, SHARDS};
use crate::ledger_harness::GROUP;
use crate::metrics::metric_value;
use crate::poll::now_ms;
use crate::{SIDECAR_BIN, sidecar_command, try_cargo_bin};

/// How long the sidecar gets, after the load stops, to bring the ledger level with Redis,
/// expire what is due and trim the streams (one claim-and-trim period is 10 s). A bound,
/// not a speed check: a settled state ends the wait at once, and a debug build on two busy
/// cores may need more than the few seconds a quiet machine does.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A hold still pending this long after its deadline counts as stuck (the sweeper promises
/// deadline + 2 s).
const OVERDUE_GRACE_MS: u64 = 3_000;

/// Most entries one shard's stream may keep once everything is acknowledged and trimmed.
const STREAM_BOUND: u64 = 1_000;

/// Fewest memory samples of one process for a verdict on its growth.
const RSS_MIN_SAMPLES: usize = 12;

/// Memory may grow between the middle and the last third of a process's life by this
/// factor plus [`RSS_SLACK_KB`] (allocator warm-up, caches filling) and still count as flat.
const RSS_GROWTH: f64 = 1.3;
const RSS_SLACK_KB: u64 = 16 * 1024;

/// Sidecar counters of events the writer could not apply.
const DEAD_LETTER_METRICS: [&str; 3] = [
    "creditgate_ledger_conflicts_total",
    "creditgate_ledger_malformed_total",
    "creditgate_dead_letters_total",
];

/// Resident memory of every process the run saw, and the sidecar's dead-letter counters,
/// per process.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    rss_kb: BTreeMap<(&'static str, u32), Vec<u64>>,
    counters: BTreeMap<u32, [f64; 3]>,
}

impl Samples {
    /// Samples VmRSS of the sidecar and the gateways, and the sidecar's counters.
    pub fn take(&mut self, stack: &SoakStack) {
        let mut procs: Vec<(&'static str, Option<u32>)> = vec![("sidecar", stack.sidecar.pid())];
        procs.extend(stack.gateways.iter().map(|g| ("gateway", g.pid())));
        for (role, pid) in procs {
            if let Some(pid) = pid
                && let Some(kb) = vm_rss_kb(pid)
            {
                self.rss_kb.entry((role, pid)).or_default().push(kb);
            }
        }
        if let (Some(pid), Ok(r)) = (stack.sidecar.pid(), stack.sidecar.http_get("/metrics"))
            && r.status == 200
        {
            let read = |name| metric_value(&r.body, name, &[]).unwrap_or(0.0);
            self.counters.insert(pid, DEAD_LETTER_METRICS.map(read));
        }
    }

    /// Per metric of [`DEAD_LETTER_METRICS`], the sum over every sidecar process of its
    /// last value (counters start at 0 in each process).
    fn dead_letter_counts(&self) -> [f64; 3] {
        let mut sum = [0.0; 3];
        for values in self.counters.values() {
            for (s, v) in sum.iter_mut().zip(values) {
                *s += v;
            }
        }
        sum
    }
}

/// `VmRSS` of `pid` in KiB, from `/proc/<pid>/status`.
fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the end checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Seconds from the end of the load until everything below held, if it did.
    pub converged_after: Option<f64>,
    /// The last state seen while waiting.
    pub state: State,
    /// `creditgate-sidecar reconcile` (no repair), its first line.
    pub reconcile: String,
    /// The dead-letter counters and, where the command exists, its listing.
    pub dead_letters: String,
    /// Per customer: granted, burned and the ledger's total.
    pub money: Vec<String>,
    /// Usage events: ledger burns against keys accepted.
    pub events: String,
    /// Grants: ledger grants against grants answered 2xx.
    pub grants: String,
    /// Requests the upstream served against the gateway customers' burns in the ledger.
    pub served_vs_burned: String,
    /// Memory, first and last third, per role.
    pub rss: Vec<String>,
    /// Every check that failed, one line each.
    pub failures: Vec<String>,
    /// The tail of the (last) sidecar's log when a check failed.
    pub sidecar_log: String,
}

/// Redis against the ledger at one moment.
#[derive(Debug, Default)]
pub struct State {
    /// `customer type: ledger (total, held), redis (total, held)` for each pair that differs.
    pub drift: Vec<String>,
    /// Stream entries read but not acknowledged, over every shard.
    pub pending_entries: u64,
    /// Holds pending past their deadline + grace.
    pub overdue_holds: usize,
    /// Entries kept in the streams: total and the largest shard.
    pub stream_len: (u64, u64),
}

impl State {
    fn settled(&self) -> bool {
        self.drift.is_empty()
            && self.pending_entries == 0
            && self.overdue_holds == 0
            && self.stream_len.1 <= STREAM_BOUND
    }
}

/// Runs every end check.
pub(crate) fn check(stack: &SoakStack, load: &LoadCounts, samples: &Samples) -> Findings {
    let mut f = Findings::default();
    converge(stack, &mut f);
    f.reconcile = reconcile(stack);
    if !f.reconcile.contains(", 0 drifted") {
        f.failures
            .push(format!("reconcile reports drift: {}", f.reconcile));
    }
    dead_letters(stack, samples, &mut f);
    money(stack, load, &mut f);
    rss(samples, &mut f);
    if !f.failures.is_empty() {
        f.sidecar_log = stack.sidecar.log_tail(LOG_LINES);
    }
    f
}

/// Lines of the sidecar's log a failed run's report carries.
const LOG_LINES: usize = 40;

/// Waits up to [`CONVERGE_TIMEOUT`] for a settled state; records the last one seen and a
/// failure per unmet condition.
fn converge(stack: &SoakStack, f: &mut Findings) {
    let started = Instant::now();
    let store = stack.store().expect("store on the current Redis");
    loop {
        f.state = observe(stack, &store);
        if f.state.settled() {
            f.converged_after = Some(started.elapsed().as_secs_f64());
            return;
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let s = &f.state;
    let bounded = CONVERGE_TIMEOUT;
    if !s.drift.is_empty() {
        f.failures.push(format!(
            "ledger differs from Redis {bounded:?} after the load: {}",
            s.drift.join("; ")
        ));
    }
    if s.pending_entries > 0 {
        f.failures.push(format!(
            "{} stream entries still pending",
            s.pending_entries
        ));
    }
    if s.overdue_holds > 0 {
        f.failures.push(format!(
            "{} holds pending past their deadline",
            s.overdue_holds
        ));
    }
    if s.stream_len.1 > STREAM_BOUND {
        f.failures.push(format!(
            "a stream keeps {} entries (bound {STREAM_BOUND})",
            s.stream_len.1
        ));
    }
}

/// Reads the state once.
fn observe(stack: &SoakStack, store: &RedisStore) -> State {
    // The ledger's sums by customer (one GROUP BY), not `customer_totals`, whose held
    // figure runs the pending-hold query: that one takes minutes on a ledger this size.
    // Held credits are checked on the Redis side (nothing held once the load stopped and
    // the TTL passed) and by `reconcile`.
    let sums = stack
        .rt
        .block_on(stack.ledger.amount_sums())
        .expect("ledger sums");
    let mut drift = Vec::new();
    for (customer, _) in SoakStack::customers() {
        let balance = stack.rt.block_on(store.balance(customer));
        // A customer with nothing left may have no Redis record at all after a rebuild:
        // (0, 0), as in the ledger.
        let redis = balance.map(|b| {
            b.of("api")
                .map_or((0, 0), |t| (t.book_available + t.held, t.held))
        });
        let ledger = sums
            .iter()
            .find(|(c, t, _)| c == customer && t == "api")
            .map_or(0, |(_, _, total)| *total);
        if redis.as_ref().ok() != Some(&(ledger, 0)) {
            drift.push(format!(
                "{customer} api: ledger total {ledger}, redis (total, held) {redis:?}"
            ));
        }
    }
    let (pending_entries, stream_len) = stack.rt.block_on(streams(&stack.redis.url()));
    State {
        drift,
        pending_entries,
        overdue_holds: overdue_holds(stack, store),
        stream_len,
    }
}

/// Holds of every shard whose deadline passed more than [`OVERDUE_GRACE_MS`] ago.
fn overdue_holds(stack: &SoakStack, store: &RedisStore) -> usize {
    let until = now_ms().saturating_sub(OVERDUE_GRACE_MS);
    Keyspace::new(PREFIX, SHARDS)
        .all_shards()
        .map(|shard| {
            stack
                .rt
                .block_on(store.due_holds(shard, until, 100))
                .map_or(0, |h| h.len())
        })
        .sum()
}

/// Pending entries of the writer's group over every shard, and the streams' lengths
/// (total, largest).
async fn streams(url: &str) -> (u64, (u64, u64)) {
    let Ok(client) = redis::Client::open(url) else {
        return (u64::MAX, (u64::MAX, u64::MAX));
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return (u64::MAX, (u64::MAX, u64::MAX));
    };
    let keyspace = Keyspace::new(PREFIX, SHARDS);
    let (mut pending, mut total, mut largest) = (0u64, 0u64, 0u64);
    for shard in keyspace.all_shards() {
        let key = keyspace.events(shard);
        let len: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        total += len;
        largest = largest.max(len);
        let summary: Result<(u64, redis::Value, redis::Value, redis::Value), _> =
            redis::cmd("XPENDING")
                .arg(&key)
                .arg(GROUP)
                .query_async(&mut conn)
                .await;
        pending += summary.map_or(0, |s| s.0);
    }
    (pending, (total, largest))
}

/// How long `creditgate-sidecar reconcile` may take at the end of the run: a bound for a
/// debug build on a loaded machine, not a speed check.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(90);

/// `creditgate-sidecar reconcile` without `--repair`: its first line, or why there is none
/// (it is killed after [`RECONCILE_TIMEOUT`]).
fn reconcile(stack: &SoakStack) -> String {
    let binary = match try_cargo_bin(SIDECAR_BIN) {
        Ok(b) => b,
        Err(e) => return format!("did not run: {e:#}"),
    };
    let mut cmd = Command::new(binary);
    cmd.args(["reconcile", "--redis", &stack.redis.url()])
        .args(stack.target.args())
        .current_dir(stack.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Ok(mut child) = cmd.spawn() else {
        return "did not start".into();
    };
    let started = Instant::now();
    while matches!(child.try_wait(), Ok(None)) {
        if started.elapsed() > RECONCILE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return format!("did not finish within {RECONCILE_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    match child.wait_with_output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(out) => format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("did not run: {e}"),
    }
}

/// The writer's conflict and malformed counters (summed over every sidecar process) and the
/// `dead-letters list` command's output where it exists. Events the writer could not apply
/// and that are not in a dead-letter list stay unexplained: a failure.
fn dead_letters(stack: &SoakStack, samples: &Samples, f: &mut Findings) {
    let [conflicts, malformed, dead] = samples.dead_letter_counts();
    let mut args = vec!["dead-letters".to_string(), "list".into()];
    args.extend(stack.target.args());
    let listing = match sidecar_command(&args, stack.dir.path()) {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => None,
    };
    f.dead_letters = format!(
        "conflicts {conflicts}, malformed {malformed}, dead letters {dead}; listing: {}",
        listing
            .as_deref()
            .map_or("no `dead-letters list` command".into(), |l| {
                format!("{} lines\n{}", l.lines().count(), l.trim_end())
            })
    );
    if conflicts + malformed > 0.0 && listing.is_none() {
        f.failures.push(format!(
            "{conflicts} conflicting and {malformed} malformed events, and no dead-letter \
             list to explain them"
        ));
    }
}

/// Σ of `kind` entries' amounts of `customer` (absolute values) and their number.
fn ledger_sum(stack: &SoakStack, customer: &str, kind: EntryKind) -> (i64, usize) {
    let entries = stack
        .rt
        .block_on(stack.ledger.entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![kind],
            ..EntryQuery::default()
        }))
        .expect("ledger entries");
    (
        entries.iter().map(|e| e.entry.amount.abs()).sum(),
        entries.len(),
    )
}

/// Nobody burned more than was granted (no overdraft is configured); usage events burned
/// once per accepted key; grants in the ledger once per grant answered 2xx.
fn money(stack: &SoakStack, load: &LoadCounts, f: &mut Findings) {
    let mut gateway_burns = 0;
    for (customer, _) in SoakStack::customers() {
        let (granted, grants) = ledger_sum(stack, customer, EntryKind::GrantAdded);
        let (burned, burns) = ledger_sum(stack, customer, EntryKind::HoldPosted);
        if customer != EVENTS_CUSTOMER.0 {
            gateway_burns += burns;
        }
        f.money.push(format!(
            "{customer}: granted {granted} in {grants} grants, burned {burned} in {burns} burns"
        ));
        if burned > granted {
            f.failures.push(format!(
                "{customer} overspent: burned {burned} > granted {granted}"
            ));
        }
        let (ok, _) = load.grants_ok.get(customer).copied().unwrap_or_default();
        let expected = ok as usize + 1;
        if grants < expected || grants > expected + load.grants_given_up as usize {
            f.failures.push(format!(
                "{customer}: {grants} grants in the ledger, {expected} answered 2xx (opening \
                 grant included)"
            ));
        }
        f.grants
            .push_str(&format!("{customer} {grants}/{expected} "));
        if customer == EVENTS_CUSTOMER.0 {
            let (accepted, gave_up) = (load.events_accepted.len(), load.events_given_up.len());
            f.events = format!(
                "{burns} burns in the ledger for {accepted} accepted event keys ({gave_up} given up)"
            );
            if burns < accepted || burns > accepted + gave_up {
                f.failures.push(format!(
                    "usage events not burned exactly once: {}",
                    f.events
                ));
            }
        }
    }
    // Reported, not asserted: a request whose burn Redis lost (FLUSHALL, a crash, a lagging
    // replica) before the sidecar read it is served and never charged.
    f.served_vs_burned = format!(
        "upstream served {}, ledger burns of gateway customers {gateway_burns}",
        load.upstream_requests
    );
}

/// For the sidecar and the gateways: the longest-lived process's mean VmRSS over the first,
/// middle and last third of its samples; growth from the middle to the last third past the
/// margin is a failure.
fn rss(samples: &Samples, f: &mut Findings) {
    for role in ["sidecar", "gateway"] {
        let longest = samples
            .rss_kb
            .iter()
            .filter(|((r, _), _)| *r == role)
            .max_by_key(|(_, v)| v.len());
        let Some(((_, pid), values)) = longest else {
            f.failures.push(format!("no memory samples of the {role}"));
            continue;
        };
        let n = values.len();
        if n < RSS_MIN_SAMPLES {
            f.rss
                .push(format!("{role} pid {pid}: only {n} samples, no verdict"));
            continue;
        }
        let mean = |s: &[u64]| s.iter().sum::<u64>() / s.len() as u64;
        // The first third is warm-up (connection pools, SQLite page caches, allocator
        // arenas filling); growth is judged from the middle third to the last.
        let (first, middle, last) = (
            mean(&values[..n / 3]),
            mean(&values[n / 3..n - n / 3]),
            mean(&values[n - n / 3..]),
        );
        let line = format!(
            "{role} pid {pid}: {n} samples, VmRSS thirds {:.1} / {:.1} / {:.1} MiB",
            first as f64 / 1024.0,
            middle as f64 / 1024.0,
            last as f64 / 1024.0
        );
        if last as f64 > middle as f64 * RSS_GROWTH + RSS_SLACK_KB as f64 {
            f.failures.push(format!("memory grew: {line}"));
        }
        f.rss.push(line);
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.state;
        match self.converged_after {
            Some(secs) => writeln!(f, "caught up {secs:.1} s after the load stopped")?,
            None => writeln!(f, "NOT caught up within {CONVERGE_TIMEOUT:?}")?,
        }
        writeln!(f, "drift: {} pairs {:?}", s.drift.len(), s.drift)?;
        writeln!(f, "reconcile: {}", self.reconcile)?;
        writeln!(
            f,
            "pending entries {}, holds past deadline {}, hold TTL {HOLD_TTL_MS} ms",
            s.pending_entries, s.overdue_holds
        )?;
        writeln!(
            f,
            "stream lengths: total {}, largest shard {}",
            s.stream_len.0, s.stream_len.1
        )?;
        writeln!(f, "dead letters: {}", self.dead_letters)?;
        for line in &self.money {
            writeln!(f, "money: {line}")?;
        }
        writeln!(f, "usage events: {}", self.events)?;
        writeln!(f, "grants (ledger/answered): {}", self.grants)?;
        writeln!(f, "gateway requests: {}", self.served_vs_burned)?;
        for line in &self.rss {
            writeln!(f, "memory: {line}")?;
        }
        writeln!(f, "failures: {}", self.failures.len())?;
        for line in &self.failures {
            writeln!(f, "  FAIL {line}")?;
        }
        if !self.sidecar_log.is_empty() {
            writeln!(f, "sidecar log tail:\n{}", self.sidecar_log)?;
        }
        Ok(())
    }
}
