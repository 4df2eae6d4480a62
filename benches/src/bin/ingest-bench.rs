//! The sidecar's ingest bench: how fast the real `creditgate-sidecar` binary moves events
//! from the Redis Streams into the ledger, and how far behind the burns its entries are at
//! a steady rate.
//!
//! For each ledger backend (SQLite file, Postgres) it starts a fresh `redis-server` (and a
//! throw-away Postgres), preloads `--events` events into the shard streams through the
//! protocol library (a grant per customer, then reserve + settle pairs, over `--customers`
//! customers), then starts the sidecar and measures:
//!
//! 1. **Backlog throughput**: events per second from the sidecar's start (and from its
//!    first commit) until every preloaded event is a committed ledger row, read from
//!    `creditgate_ledger_entries_written_total` on `/metrics`; the ledger row count and the
//!    group's pending count are checked afterwards.
//! 2. **Lag at a steady rate**: `--steady-rate` events per second (5,000 by default) for
//!    `--steady-secs` seconds (reserve + settle pairs, paced every 10 ms), then the lag
//!    from each event's store time (`at`) to its ledger row (`recorded_at_ms`) over the
//!    rows of that window (p50, p99, max), and the p99 bucket of
//!    `creditgate_ledger_lag_seconds` (event time to commit) over the same window.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo build --release \
//!     -p creditgate-sidecar -p creditgate-benches --bin ingest-bench
//! target-bench/release/ingest-bench --events 200000 --backend both
//! ```
//!
//! The sidecar binary is looked up next to this one (or in `$CREDITGATE_BIN_DIR`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, RedisStore, RedisTarget,
    ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::{EntryQuery, Ledger, PostgresLedger, SqliteLedger};
use creditgate_testkit::{
    LedgerTarget, Postgres, RedisServer, Sidecar, SidecarOptions, metric_value, parse_samples,
};

/// Timeout of each Redis call of the load generator, in milliseconds: long, because on a
/// shared machine Redis can stall for seconds, and a timed-out call fails the whole run.
const REDIS_TIMEOUT_MS: u64 = 30_000;

/// The keyspace the sidecar runs with by default.
const PREFIX: &str = "cg";
const SHARDS: u32 = 16;

/// Command line of `ingest-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "ingest-bench",
    about = "Measures the sidecar's stream-to-ledger throughput and lag."
)]
struct Cli {
    /// Events preloaded into the streams before the sidecar starts.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Customers the events are spread over.
    #[arg(long, default_value_t = 2_000)]
    customers: u64,
    /// Which ledger backends to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Events per second of the steady phase (the goal: lag p99 under 1 s at 5,000).
    #[arg(long, default_value_t = 5_000)]
    steady_rate: u64,
    /// Length of the steady phase, in seconds.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    /// Concurrent store calls while preloading.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
}

/// Backends to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    /// The SQLite file ledger.
    Sqlite,
    /// The Postgres ledger.
    Postgres,
    /// Both, SQLite first.
    Both,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn customer(i: u64) -> String {
    format!("bench-{i:05}")
}

/// A grant big enough for every hold the bench places on one customer.
async fn grant(store: &RedisStore, customer: &str) -> anyhow::Result<()> {
    let outcome = store
        .grant(&GrantRequest {
            customer: customer.to_string(),
            grant_id: format!("g-{customer}"),
            credit_type: "api".to_string(),
            amount: 1_000_000_000,
            priority: 100,
            expires_at_ms: None,
            cost_basis: 1_000_000,
            source: GrantSource::Purchase,
            actor: "ingest-bench".to_string(),
            reason: "bench".to_string(),
        })
        .await?;
    match outcome {
        GrantOutcome::Granted { .. } | GrantOutcome::Duplicate { .. } => Ok(()),
        other => bail!("grant to {customer}: {other:?}"),
    }
}

/// One reserve + settle pair: two events.
async fn burn(store: &RedisStore, customer: &str, hold_id: String) -> anyhow::Result<()> {
    let reserve = ReserveRequest {
        customer: customer.to_string(),
        hold_id: hold_id.clone(),
        credit_type: "api".to_string(),
        amount: 3,
        ttl_ms: 300_000,
        overdraft_limit: 0,
        force: false,
        request_id: format!("r-{hold_id}"),
        route: "bench".to_string(),
        feature: "bench".to_string(),
        retain_ms: DEFAULT_RETAIN_MS,
        pricing_version: String::new(),
        occurred_at_ms: None,
    };
    match store.reserve(&reserve).await? {
        ReserveOutcome::Placed { .. } => {}
        other => bail!("reserve {hold_id}: {other:?}"),
    }
    let settle = SettleRequest {
        customer: customer.to_string(),
        hold_id: hold_id.clone(),
        actual: 2,
        overdraft_limit: 0,
    };
    match store.settle(&settle).await? {
        ResolveOutcome::Posted { .. } => Ok(()),
        other => bail!("settle {hold_id}: {other:?}"),
    }
}

/// Writes `events` events (a grant per customer, then reserve + settle pairs) with
/// `concurrency` tasks; returns how many were written.
async fn preload(
    store: Arc<RedisStore>,
    events: u64,
    customers: u64,
    concurrency: u64,
) -> anyhow::Result<u64> {
    let customers = customers.min(events).max(1);
    let pairs = events.saturating_sub(customers) / 2;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let store = store.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= customers + pairs {
                    return anyhow::Ok(());
                }
                if i < customers {
                    grant(&store, &customer(i)).await?;
                } else {
                    let c = customer(i % customers);
                    burn(&store, &c, format!("p-{i}")).await?;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(customers + pairs * 2)
}

/// `events_per_s` events per second for `secs` seconds (reserve + settle pairs started
/// every 10 ms); returns the events sent, the time it took and the pairs whose store call
/// failed (a load generator starved of CPU times out: that is counted, not fatal).
async fn steady(
    store: Arc<RedisStore>,
    customers: u64,
    events_per_s: u64,
    secs: u64,
) -> anyhow::Result<(u64, Duration, u64)> {
    let started = Instant::now();
    let mut failed = 0u64;
    let ticks = secs * 100;
    let mut owed = 0.0f64;
    let per_tick = events_per_s as f64 / 2.0 / 100.0;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut pairs = 0u64;
    let mut running = Vec::new();
    for tick in 0..ticks {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let store = store.clone();
            let c = customer(pairs % customers);
            let id = format!("s-{tick}-{pairs}");
            pairs += 1;
            running.push(tokio::spawn(async move { burn(&store, &c, id).await }));
        }
        if running.len() > 1_000 {
            for t in running.drain(..) {
                failed += u64::from(t.await?.is_err());
            }
        }
    }
    for t in running {
        failed += u64::from(t.await?.is_err());
    }
    Ok((pairs * 2, started.elapsed(), failed))
}

/// `entries-added` summed over the shard streams, and the group's pending entries.
async fn stream_counts(url: &str) -> anyhow::Result<(u64, u64)> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keyspace = Keyspace::new(PREFIX, SHARDS);
    let (mut added, mut pending) = (0, 0);
    for shard in keyspace.all_shards() {
        let key = keyspace.events(shard);
        let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        added += info
            .get("entries-added")
            .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
            .unwrap_or(0u64);
        let summary: Result<(u64, redis::Value, redis::Value, redis::Value), _> =
            redis::cmd("XPENDING")
                .arg(&key)
                .arg("creditgate-ledger")
                .query_async(&mut conn)
                .await;
        if let Ok((n, ..)) = summary {
            pending += n;
        }
    }
    Ok((added, pending))
}

fn written(sidecar: &Sidecar) -> u64 {
    sidecar
        .http_get("/metrics")
        .ok()
        .and_then(|r| metric_value(&r.body, "creditgate_ledger_entries_written_total", &[]))
        .unwrap_or(0.0) as u64
}

/// `(upper bound, cumulative count)` of the lag histogram's buckets.
fn lag_buckets(sidecar: &Sidecar) -> Vec<(f64, f64)> {
    let text = sidecar.metrics();
    parse_samples(&text)
        .into_iter()
        .filter(|s| s.name == "creditgate_ledger_lag_seconds_bucket")
        .filter_map(|s| {
            let le = s.label("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, s.value))
        })
        .collect()
}

/// The smallest bucket bound at or below which `q` of the observations between two
/// histogram readings fall.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let total = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    for (i, (bound, count)) in after.iter().enumerate() {
        let delta = count - before.get(i).map_or(0.0, |b| b.1);
        if total > 0.0 && delta >= q * total {
            return *bound;
        }
    }
    f64::INFINITY
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn bench(cli: &Cli, which: Which) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start()?;
    let pg = match which {
        Which::Postgres => Some(Postgres::start()?),
        _ => None,
    };
    let target = match &pg {
        Some(pg) => LedgerTarget::Postgres(pg.url()),
        None => LedgerTarget::Sqlite(dir.path().join("ledger.sqlite")),
    };
    let store = Arc::new(
        RedisStore::connect(
            &RedisTarget::Single(redis.url()),
            Keyspace::new(PREFIX, SHARDS),
            REDIS_TIMEOUT_MS,
        )
        .await?,
    );
    println!("[{}] load average before: {}", target.backend(), loadavg());
    let t = Instant::now();
    let preloaded = preload(store.clone(), cli.events, cli.customers, cli.concurrency).await?;
    let (added, _) = stream_counts(&redis.url()).await?;
    println!(
        "[{}] preloaded {preloaded} events ({added} in the streams) in {:.1} s",
        target.backend(),
        t.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let mut options = SidecarOptions::new(redis.url(), target.clone());
    options.consumer = "bench".to_string();
    options.env.push(("RUST_LOG".into(), "warn".into()));
    let sidecar = tokio::task::block_in_place(|| Sidecar::start(options))?;
    let ready = t0.elapsed();
    let mut first_commit = None;
    loop {
        let n = written(&sidecar);
        if n > 0 && first_commit.is_none() {
            first_commit = Some(t0.elapsed());
        }
        if n >= added {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("only {n} of {added} events written after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = t0.elapsed();
    let cpu_s = sidecar.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let first = first_commit.unwrap_or(done);
    let ledger: Arc<dyn Ledger> = match &target {
        LedgerTarget::Sqlite(path) => Arc::new(SqliteLedger::open(path).await?),
        LedgerTarget::Postgres(url) => Arc::new(PostgresLedger::connect(url).await?),
    };
    let rows = ledger
        .entries(&EntryQuery::default())
        .await
        .context("counting the ledger rows")?
        .len();
    let (_, pending) = stream_counts(&redis.url()).await?;
    println!(
        "[{}] backlog: {added} events committed in {:.2} s from process start ({:.0} events/s), \
         {:.2} s from the first commit ({:.0} events/s); ready after {:.0} ms; {} rows in the \
         ledger; {pending} pending",
        target.backend(),
        done.as_secs_f64(),
        added as f64 / done.as_secs_f64(),
        (done - first).as_secs_f64(),
        added as f64 / (done - first).as_secs_f64().max(1e-9),
        ready.as_secs_f64() * 1_000.0,
        rows
    );
    // CPU time is what a loaded machine cannot hide: events per CPU-second of the sidecar
    // is what one free core would ingest if the ledger's disk kept up.
    println!(
        "[{}] backlog: the sidecar used {cpu_s:.2} CPU-s: {:.0} µs per event, {:.0} events \
         per CPU-second",
        target.backend(),
        cpu_s * 1e6 / added as f64,
        added as f64 / cpu_s.max(1e-9)
    );

    // Steady phase.
    let before = lag_buckets(&sidecar);
    let steady_from = now_ms();
    let (events, took, failed) = steady(
        store.clone(),
        cli.customers,
        cli.steady_rate,
        cli.steady_secs,
    )
    .await?;
    // What reached the streams, whatever the load generator's failures.
    let (expected, _) = stream_counts(&redis.url()).await?;
    let t = Instant::now();
    while written(&sidecar) < expected {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("steady phase not drained after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = lag_buckets(&sidecar);
    let entries = ledger
        .entries(&EntryQuery {
            from_ms: Some(steady_from),
            ..EntryQuery::default()
        })
        .await?;
    let mut lags: Vec<u64> = entries
        .iter()
        .map(|e| e.recorded_at_ms.saturating_sub(e.entry.event_at_ms))
        .collect();
    lags.sort_unstable();
    println!(
        "[{}] steady: {events} events in {:.1} s ({:.0} events/s; {failed} pairs failed in the \
         load generator); {} rows of the window: lag \
         event→row p50 {} ms, p99 {} ms, max {} ms; histogram (event→commit) p99 ≤ {} s",
        target.backend(),
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        bucket_quantile(&before, &after, 0.99)
    );
    println!("[{}] load average after: {}", target.backend(), loadavg());
    drop(sidecar);
    Ok(())
}

/// User + system CPU seconds process `pid` has used (`/proc/<pid>/stat`, 100 ticks/s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The machine's load average (1, 5 and 15 minutes), printed beside every figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let backends: &[Which] = match cli.backend {
        Which::Both => &[Which::Sqlite, Which::Postgres],
        Which::Sqlite => &[Which::Sqlite],
        Which::Postgres => &[Which::Postgres],
    };
    for which in backends {
        bench(&cli, *which).await?;
    }
    Ok(())
}
