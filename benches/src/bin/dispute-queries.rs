//! The dispute queries at scale: a generated ledger of `--entries` entries (10 million by
//! default) over `--customers` customers and a year of history, in SQLite and in Postgres,
//! and the time each question support and finance ask takes on it through the sidecar's
//! own ledger code: a request id's trail, one customer's usage by day and feature over 90
//! days, a customer's balance at a past instant, and revenue (recognized, breakage,
//! deferred) for a month.
//!
//! **The generator** writes straight into the tables with bulk SQL (SQLite: multi-row
//! inserts in one transaction per day with `synchronous=OFF`; Postgres: `COPY`, the table
//! set to compress rows over 128 bytes so the data fits a shared disk), not through the
//! append path, so 10 million entries take minutes, not hours. The entries are
//! real: each comes from a protocol [`Event`] through [`NewEntry::from_event`], each
//! customer's hash chain is computed with [`entry_hash`] (the bench verifies sampled chains
//! with the ledger's own check), the chain heads and the revenue rollup are written
//! beside them. Each customer gets a grant on its own day of every 30-day cycle (500
//! credits for $5, expiring when the next arrives, its rest broken) and requests spread
//! uniformly over the year (hold placed, then posted a second later, or 1 in 25 voided),
//! each with a feature among four. The data lives in a temp dir (SQLite) or a throw-away
//! Postgres, both removed on exit.
//!
//! ```text
//! cargo build --release -p creditgate-benches --bin dispute-queries
//! target/release/dispute-queries --entries 10000000 --backend both
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use creditgate_protocol::types::{Draw, GrantSource};
use creditgate_protocol::{Event, EventBody, Release, RequestContext};
use creditgate_sidecar::ledger::{
    GENESIS_HASH, GrantMonth, Ledger, LedgerAdmin, NewEntry, PostgresLedger, SqliteLedger,
    canonical_json, entry_hash, month_deltas, utc_month_start,
};
use creditgate_testkit::Postgres;
use sqlx::Connection;

/// 2025-01-01T00:00:00Z: the generated year starts here.
const YEAR_START_MS: u64 = 1_735_689_600_000;
const DAY_MS: u64 = 86_400_000;
/// Credits and price of each cycle's grant.
const GRANT_CREDITS: u64 = 500;
const GRANT_COST_MICROS: u64 = 5_000_000;
/// Credits held per request.
const HOLD: u64 = 10;
const FEATURES: [&str; 4] = ["chat", "embed", "image", "search"];
/// Rows per SQLite insert statement: 21 binds each, 21,000 binds.
const SQLITE_ROWS: usize = 1_000;
/// Times each query is asked (different customers, requests or months).
const ASKS: usize = 12;

/// Command line of `dispute-queries`.
#[derive(Debug, Parser)]
#[command(
    name = "dispute-queries",
    about = "Generates a large ledger and times the dispute queries on it."
)]
struct Cli {
    /// Ledger entries to generate (about: whole requests and grants).
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Customers.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Which ledger backends to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Seed of the generator.
    #[arg(long, default_value_t = 14)]
    seed: u64,
}

/// Backends to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    Both,
}

/// A small deterministic generator (SplitMix64): the same ledger for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One customer's state while generating: its open grant and its chain head.
struct CustomerState {
    grant: Option<(String, u64)>,
    cycle: u64,
    requests: u64,
    last_hash: String,
    last_seq: i64,
}

/// An entry ready to store: the entry, its chain links and its seq.
struct Row {
    seq: i64,
    entry: NewEntry,
    recorded_at_ms: u64,
    prev_hash: String,
    hash: String,
}

fn customer(i: u64) -> String {
    format!("cust-{i:05}")
}

fn context(c: u64, n: u64, feature: &str) -> RequestContext {
    RequestContext {
        request_id: format!("req-{c}-{n}"),
        route: format!("/v1/{feature}"),
        feature: feature.to_string(),
        pricing_version: "v1".to_string(),
    }
}

fn event(c: u64, at_ms: u64, event_id: String, body: EventBody) -> Event {
    Event {
        event_id,
        at_ms,
        customer: customer(c),
        credit_type: "api".to_string(),
        body,
    }
}

/// The events of one cycle day of customer `c` at `at_ms`: the old grant's expiry (its
/// rest broken) and the new grant.
fn grant_events(c: u64, at_ms: u64, s: &mut CustomerState) -> Vec<Event> {
    let mut out = Vec::new();
    if let Some((grant_id, left)) = s.grant.take() {
        let body = EventBody::GrantExpired {
            grant_id: grant_id.clone(),
            amount: left,
            held: 0,
        };
        out.push(event(c, at_ms, format!("grant:{grant_id}:expired"), body));
    }
    s.cycle += 1;
    let grant_id = format!("g-{c}-{}", s.cycle);
    let body = EventBody::GrantAdded {
        grant_id: grant_id.clone(),
        amount: GRANT_CREDITS,
        debt_repaid: 0,
        priority: 100,
        expires_at_ms: Some(at_ms + 30 * DAY_MS),
        cost_basis: GRANT_COST_MICROS,
        source: GrantSource::Purchase,
        actor: "billing".to_string(),
        reason: "monthly plan".to_string(),
    };
    out.push(event(c, at_ms + 1, format!("grant:{grant_id}:added"), body));
    s.grant = Some((grant_id, GRANT_CREDITS));
    out
}

/// The events of one request of customer `c` at `at_ms`: placed, then posted (or voided)
/// a second later. None when its grant has too little left.
fn request_events(c: u64, at_ms: u64, s: &mut CustomerState, rng: &mut Rng) -> Vec<Event> {
    let Some((grant_id, left)) = s.grant.as_mut() else {
        return Vec::new();
    };
    if *left < HOLD {
        return Vec::new();
    }
    s.requests += 1;
    let (n, gid) = (s.requests, grant_id.clone());
    let feature = FEATURES[rng.below(4) as usize];
    let ctx = context(c, n, feature);
    let hold_id = format!("h-{c}-{n}");
    let id = |what: &str| format!("hold:{hold_id}:{at_ms}:{what}");
    let draw = |amount| {
        vec![Draw {
            grant_id: gid.clone(),
            amount,
        }]
    };
    let placed = EventBody::HoldPlaced {
        hold_id: hold_id.clone(),
        amount: HOLD,
        draws: draw(HOLD),
        overdraft: 0,
        deadline_ms: at_ms + 60_000,
        over_limit: false,
        context: ctx.clone(),
    };
    let mut out = vec![event(c, at_ms, id("placed"), placed)];
    if rng.below(25) == 0 {
        let release = Release {
            hold_id: hold_id.clone(),
            held: HOLD,
            returned: draw(HOLD),
            returned_overdraft: 0,
            breakage: Vec::new(),
            context: ctx,
        };
        out.push(event(
            c,
            at_ms + 1_000,
            id("voided"),
            EventBody::HoldVoided(release),
        ));
        return out;
    }
    let posted = 1 + rng.below(HOLD);
    *left -= posted;
    let body = EventBody::HoldPosted {
        hold_id: hold_id.clone(),
        held: HOLD,
        requested: posted,
        posted,
        burns: draw(posted),
        overdraft: 0,
        returned: if posted < HOLD {
            draw(HOLD - posted)
        } else {
            Vec::new()
        },
        returned_overdraft: 0,
        breakage: Vec::new(),
        shortfall: 0,
        context: ctx,
        late: false,
    };
    out.push(event(c, at_ms + 1_000, id("posted"), body));
    out
}

/// Generates one day's events of every customer, in time order.
fn day_events(
    day: u64,
    requests: u64,
    customers: &mut [CustomerState],
    rng: &mut Rng,
) -> Vec<Event> {
    let day_ms = YEAR_START_MS + day * DAY_MS;
    let mut events = Vec::new();
    for (c, s) in customers.iter_mut().enumerate() {
        if day % 30 == c as u64 % 30 {
            events.extend(grant_events(c as u64, day_ms, s));
        }
    }
    let n = customers.len() as u64;
    // Requests between 00:00:10 and 23:59:00, so none straddles a grant's change.
    let mut times: Vec<(u64, u64)> = (0..requests)
        .map(|_| (day_ms + 10_000 + rng.below(DAY_MS - 70_000), rng.below(n)))
        .collect();
    times.sort_unstable();
    for (at_ms, c) in times {
        events.extend(request_events(c, at_ms, &mut customers[c as usize], rng));
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Chains one day's events into rows, numbering them from `next_seq`.
fn chain(
    events: &[Event],
    customers: &mut [CustomerState],
    next_seq: &mut i64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let c: usize = ev.customer["cust-".len()..].parse()?;
        let shard = (c % 16) as u32;
        let stream_id = format!("{}-{i}", ev.at_ms);
        let entry = NewEntry::from_event(ev, shard, Some(stream_id))?;
        let recorded_at_ms = ev.at_ms + 40;
        let s = &mut customers[c];
        let prev_hash = std::mem::take(&mut s.last_hash);
        let hash = entry_hash(&prev_hash, &entry, recorded_at_ms)?;
        s.last_hash = hash.clone();
        s.last_seq = *next_seq;
        rows.push(Row {
            seq: *next_seq,
            entry,
            recorded_at_ms,
            prev_hash,
            hash,
        });
        *next_seq += 1;
    }
    Ok(rows)
}

/// Where the generated rows go.
enum Sink {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// The 21 columns of an entry after `seq`, in the ledger's insert order.
const COLUMNS: &str = "seq, event_id, kind, customer, credit_type, amount, grant_id, hold_id, \
     request_id, route, feature, grants, event_at_ms, recorded_at_ms, actor, reason, \
     pricing_version, details, shard, stream_id, prev_hash, hash";

impl Sink {
    async fn write_day(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        match self {
            Sink::Sqlite(conn) => sqlite_insert(conn, rows).await,
            Sink::Postgres(conn) => pg_copy(conn, rows).await,
        }
    }
}

async fn sqlite_insert(conn: &mut sqlx::SqliteConnection, rows: &[Row]) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    for chunk in rows.chunks(SQLITE_ROWS) {
        let one = format!("({})", vec!["?"; 22].join(", "));
        let text = format!(
            "INSERT INTO ledger_entries ({COLUMNS}) VALUES {}",
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let mut q = sqlx::query(&text);
        for r in chunk {
            let e = &r.entry;
            q = q
                .bind(r.seq)
                .bind(e.event_id.as_str())
                .bind(e.kind.as_str())
                .bind(e.customer.as_str())
                .bind(e.credit_type.as_str())
                .bind(e.amount)
                .bind(e.grant_id.as_deref())
                .bind(e.hold_id.as_deref())
                .bind(e.request_id.as_deref())
                .bind(e.route.as_deref())
                .bind(e.feature.as_deref())
                .bind(canonical_json(&e.grants))
                .bind(e.event_at_ms as i64)
                .bind(r.recorded_at_ms as i64)
                .bind(e.actor.as_deref())
                .bind(e.reason.as_deref())
                .bind(e.pricing_version.as_deref())
                .bind(canonical_json(&e.details))
                .bind(i64::from(e.shard))
                .bind(e.stream_id.as_deref())
                .bind(r.prev_hash.as_str())
                .bind(r.hash.as_str());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A CSV field: quoted text, or empty (NULL).
fn csv(out: &mut String, v: Option<&str>) {
    if let Some(v) = v {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    }
    out.push(',');
}

async fn pg_copy(conn: &mut sqlx::PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    let mut buf = String::with_capacity(rows.len() * 900);
    for r in rows {
        let e = &r.entry;
        buf.push_str(&format!("{},", r.seq));
        csv(&mut buf, Some(&e.event_id));
        csv(&mut buf, Some(e.kind.as_str()));
        csv(&mut buf, Some(&e.customer));
        csv(&mut buf, Some(&e.credit_type));
        buf.push_str(&format!("{},", e.amount));
        for v in [&e.grant_id, &e.hold_id, &e.request_id, &e.route, &e.feature] {
            csv(&mut buf, v.as_deref());
        }
        csv(&mut buf, Some(&canonical_json(&e.grants)));
        buf.push_str(&format!("{},{},", e.event_at_ms, r.recorded_at_ms));
        for v in [&e.actor, &e.reason, &e.pricing_version] {
            csv(&mut buf, v.as_deref());
        }
        csv(&mut buf, Some(&canonical_json(&e.details)));
        buf.push_str(&format!("{},", e.shard));
        csv(&mut buf, e.stream_id.as_deref());
        csv(&mut buf, Some(&r.prev_hash));
        buf.push_str(&format!("\"{}\"\n", r.hash));
    }
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY ledger_entries ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
        ))
        .await?;
    copy.send(buf.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// Writes the chain heads and the revenue rollup once every entry is in.
async fn finish_sink(
    sink: &mut Sink,
    customers: &[CustomerState],
    rollup: &HashMap<(String, String, i64), GrantMonth>,
) -> anyhow::Result<()> {
    let heads: Vec<String> = customers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.last_seq > 0)
        .map(|(c, s)| {
            format!(
                "('{}', {}, '{}')",
                customer(c as u64),
                s.last_seq,
                s.last_hash
            )
        })
        .collect();
    let months: Vec<String> = rollup
        .values()
        .map(|m| {
            format!(
                "('{}', '{}', {}, {}, {}, {}, {})",
                m.customer,
                m.grant_id,
                m.month_ms,
                m.granted,
                m.cost_basis,
                m.recognized,
                m.breakage
            )
        })
        .collect();
    let mut statements = Vec::new();
    for chunk in heads.chunks(5_000) {
        statements.push(format!(
            "INSERT INTO chain_heads (customer, last_seq, last_hash) VALUES {}",
            chunk.join(", ")
        ));
    }
    for chunk in months.chunks(5_000) {
        statements.push(format!(
            "INSERT INTO revenue_grant_months (customer, grant_id, month_ms, granted, \
             cost_basis, recognized, breakage) VALUES {}",
            chunk.join(", ")
        ));
    }
    for text in statements {
        match sink {
            Sink::Sqlite(conn) => {
                sqlx::query(&text).execute(&mut *conn).await?;
            }
            Sink::Postgres(conn) => {
                sqlx::query(&text).execute(&mut *conn).await?;
            }
        }
    }
    if let Sink::Postgres(conn) = sink {
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('ledger_entries', 'seq'), \
             (SELECT max(seq) FROM ledger_entries))",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("ANALYZE").execute(&mut *conn).await?;
    }
    Ok(())
}

/// What the generator made: entries, a sample of request ids and the time it took.
struct Generated {
    entries: u64,
    request_ids: Vec<String>,
    took: Duration,
}

/// Generates the ledger into `sink`, day by day.
async fn generate(cli: &Cli, sink: &mut Sink) -> anyhow::Result<Generated> {
    let started = Instant::now();
    let mut rng = Rng(cli.seed);
    let mut customers: Vec<CustomerState> = (0..cli.customers)
        .map(|_| CustomerState {
            grant: None,
            cycle: 0,
            requests: 0,
            last_hash: GENESIS_HASH.to_string(),
            last_seq: 0,
        })
        .collect();
    // 13 grant entries per customer-year (12 expiries), the rest two per request.
    let grant_entries = cli.customers * 25;
    let requests_per_day = cli.entries.saturating_sub(grant_entries) / 2 / 365;
    let (mut next_seq, mut entries) = (1i64, 0u64);
    let mut rollup: HashMap<(String, String, i64), GrantMonth> = HashMap::new();
    let mut request_ids = Vec::new();
    for day in 0..365 {
        let events = day_events(day, requests_per_day, &mut customers, &mut rng);
        let rows = chain(&events, &mut customers, &mut next_seq)?;
        for m in month_deltas(rows.iter().map(|r| &r.entry)) {
            let key = (m.customer.clone(), m.grant_id.clone(), m.month_ms);
            let e = rollup.entry(key).or_insert_with(|| GrantMonth {
                customer: m.customer.clone(),
                grant_id: m.grant_id.clone(),
                month_ms: m.month_ms,
                ..GrantMonth::default()
            });
            e.granted += m.granted;
            e.cost_basis += m.cost_basis;
            e.recognized += m.recognized;
            e.breakage += m.breakage;
        }
        if let Some(r) = rows
            .get(rows.len() / 2)
            .and_then(|r| r.entry.request_id.clone())
        {
            request_ids.push(r);
        }
        sink.write_day(&rows).await?;
        entries += rows.len() as u64;
        if day % 30 == 29 {
            eprintln!(
                "  day {day}: {entries} entries in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    finish_sink(sink, &customers, &rollup).await?;
    Ok(Generated {
        entries,
        request_ids,
        took: started.elapsed(),
    })
}

/// Median and max of timings, in ms.
fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    let max = ms.last().copied().unwrap_or(0.0);
    format!(
        "median {median:.1} ms, max {max:.1} ms over {} asks",
        ms.len()
    )
}

async fn time<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<(T, f64)> {
    let t = Instant::now();
    let out = f.await?;
    Ok((out, t.elapsed().as_secs_f64() * 1_000.0))
}

/// Asks each question [`ASKS`] times and prints the timings.
async fn ask(label: &str, ledger: &dyn Ledger, g: &Generated, cli: &Cli) -> anyhow::Result<()> {
    let mut rng = Rng(cli.seed ^ 0xd15);
    let year_end = YEAR_START_MS + 365 * DAY_MS;
    let (mut trail, mut usage, mut balance, mut revenue) = (vec![], vec![], vec![], vec![]);
    for i in 0..ASKS {
        let request = &g.request_ids[rng.below(g.request_ids.len() as u64) as usize];
        let (entries, ms) = time(async { Ok(ledger.trail(request).await?) }).await?;
        anyhow::ensure!(
            entries.len() == 2,
            "trail of {request}: {} entries",
            entries.len()
        );
        trail.push(ms);
        let c = customer(rng.below(cli.customers));
        let from = year_end - 90 * DAY_MS;
        let (rows, ms) = time(async { Ok(ledger.usage(Some(&c), from, year_end).await?) }).await?;
        anyhow::ensure!(!rows.is_empty(), "no usage for {c}");
        usage.push(ms);
        let at = YEAR_START_MS + rng.below(365 * DAY_MS);
        let (b, ms) = time(async { Ok(ledger.balance_at(&c, at).await?) }).await?;
        anyhow::ensure!(b.at_ms == at, "balance of {c}");
        balance.push(ms);
        let month = utc_month_start(YEAR_START_MS + (i as u64 % 12) * 31 * DAY_MS);
        let next = utc_month_start(month + 32 * DAY_MS);
        let (r, ms) = time(async { Ok(ledger.revenue(month, next).await?) }).await?;
        anyhow::ensure!(r.recognized_micros > 0, "no revenue in month {month}");
        revenue.push(ms);
    }
    let sample = customer(rng.below(cli.customers));
    let report = ledger.verify_chain(Some(&sample)).await?;
    anyhow::ensure!(report.is_intact(), "{sample}'s chain is broken: {report:?}");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("[{label}] load average {}", load.trim());
    println!(
        "[{label}] trail of a request id:            {}",
        summary(trail)
    );
    println!(
        "[{label}] usage by day and feature, 90 d:  {}",
        summary(usage)
    );
    println!(
        "[{label}] balance at a past instant:       {}",
        summary(balance)
    );
    println!(
        "[{label}] revenue of a month:              {}",
        summary(revenue)
    );
    Ok(())
}

async fn bench_sqlite(cli: &Cli) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ledger.sqlite");
    let ledger = SqliteLedger::open(&path).await?;
    ledger.migrate().await?;
    ledger.close().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Off)
        .pragma("cache_size", "-1000000");
    let mut sink = Sink::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?);
    let g = generate(cli, &mut sink)
        .await
        .context("generating into SQLite")?;
    if let Sink::Sqlite(conn) = sink {
        conn.close().await?;
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "[sqlite] generated {} entries in {:.0} s ({:.0}/s), file {:.1} GB",
        g.entries,
        g.took.as_secs_f64(),
        g.entries as f64 / g.took.as_secs_f64(),
        size as f64 / 1e9
    );
    let ledger = SqliteLedger::open(&path).await?;
    ask("sqlite", &ledger, &g, cli).await
}

async fn bench_postgres(cli: &Cli) -> anyhow::Result<()> {
    let pg = tokio::task::block_in_place(Postgres::start)?;
    let ledger = PostgresLedger::connect(&pg.url()).await?;
    ledger.migrate().await?;
    ledger.close().await;
    let mut conn = sqlx::PgConnection::connect(&pg.url()).await?;
    // Compress rows over 128 bytes (the `details` JSON) in place, so 10 million entries
    // fit the disk of a shared machine (about half the size); a storage setting of this
    // bench's table, not of the ledger's schema.
    sqlx::query("ALTER TABLE ledger_entries SET (toast_tuple_target = 128)")
        .execute(&mut conn)
        .await?;
    let mut sink = Sink::Postgres(conn);
    let g = generate(cli, &mut sink)
        .await
        .context("generating into Postgres")?;
    println!(
        "[postgres] generated {} entries in {:.0} s ({:.0}/s)",
        g.entries,
        g.took.as_secs_f64(),
        g.entries as f64 / g.took.as_secs_f64()
    );
    let ledger = PostgresLedger::connect(&pg.url()).await?;
    ask("postgres", &ledger, &g, cli).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.backend, Which::Sqlite | Which::Both) {
        bench_sqlite(&cli).await?;
    }
    if matches!(cli.backend, Which::Postgres | Which::Both) {
        bench_postgres(&cli).await?;
    }
    Ok(())
}
