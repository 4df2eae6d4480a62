//! The sidecar end to end: the real `creditgate-sidecar run` binary between a real Redis and
//! a real ledger (an SQLite file, or a Postgres server), with credit traffic driven straight
//! through the protocol library (or through the real gateway binary).
//!
//! Every scenario runs once per ledger backend (`<scenario>::sqlite`,
//! `<scenario>::postgres`). The tests read the ledger back through the sidecar's library on
//! the same file or database, through the sidecar's HTTP API and through its CLI.
//!
//! Needs `redis-server`, PostgreSQL and the built binaries:
//! `cargo build -p creditgate-sidecar -p creditgate-gateway`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use creditgate_e2e::{ALICE, ALICE_KEY, http_client, sha256_hex};
use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, HoldRef, Keyspace, RedisStore,
    RedisTarget, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::{
    EntryKind, EntryQuery, Ledger, LedgerEntry, PostgresLedger, SqliteLedger,
};
use creditgate_testkit::{
    Gateway, GatewayOptions, LedgerTarget, Postgres, RedisServer, Sidecar, SidecarOptions,
    Upstream, sidecar_command,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tempfile::TempDir;

/// Key prefix and shard count of every test (the defaults of the sidecar and gateway).
const PREFIX: &str = "cg";
const SHARDS: u32 = 16;

/// The consumer group the sidecar reads the streams with.
const GROUP: &str = "creditgate-ledger";

/// The two credit types of the generated traffic.
const TYPES: [&str; 2] = ["api", "tokens"];

/// Per-call timeout of the test's own store calls on a healthy local Redis.
const STORE_TIMEOUT_MS: u64 = 5_000;

/// How long the sidecar gets to catch up with everything written to the streams.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(40);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Backends and the per-test harness

/// Which ledger a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One Postgres server shared by the tests of this binary that overlap in time (each test
/// gets its own database); it stops when the last test holding it ends.
static SHARED_PG: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
static DB_SEQ: AtomicU64 = AtomicU64::new(0);

fn postgres_database() -> (Arc<Postgres>, String) {
    let pg = {
        let mut shared = SHARED_PG.lock().unwrap_or_else(|e| e.into_inner());
        match shared.upgrade() {
            Some(pg) => pg,
            None => {
                let pg = Arc::new(Postgres::start().expect("postgres starts"));
                *shared = Arc::downgrade(&pg);
                pg
            }
        }
    };
    let name = format!("sidecar_{}", DB_SEQ.fetch_add(1, Ordering::SeqCst));
    pg.create_database(&name).expect("create database");
    let url = pg.url_for(&name);
    (pg, url)
}

/// Runs each scenario once per backend, as `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn sqlite() {
                super::$scenario(super::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                super::$scenario(super::Backend::Postgres);
            }
        }
    )*};
}

on_both_backends!(
    every_event_lands_exactly_once_under_load,
    kill_9_at_random_points_loses_and_duplicates_nothing,
    holds_of_a_killed_gateway_expire_and_return_their_credits,
    flushall_is_detected_and_rebuilt_from_the_ledger,
    balance_at_past_instants_and_the_revenue_identity,
    a_ledger_first_grant_survives_a_redis_outage_and_applies_once,
);

/// A Redis, a ledger, the sidecar binary on both, and the test's own handles on each.
/// Fields drop in order: the sidecar first, the servers last.
struct Harness {
    sidecar: Option<Sidecar>,
    ledger: Arc<dyn Ledger>,
    store: Arc<RedisStore>,
    rt: tokio::runtime::Runtime,
    target: LedgerTarget,
    redis: RedisServer,
    _pg: Option<Arc<Postgres>>,
    dir: TempDir,
}

impl Harness {
    /// Starts Redis, the ledger's server (Postgres) and the sidecar, and opens the test's
    /// own handles on Redis and on the ledger.
    fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start().expect("redis starts");
        let (pg, target) = match backend {
            Backend::Sqlite => (None, LedgerTarget::Sqlite(dir.path().join("ledger.sqlite"))),
            Backend::Postgres => {
                let (pg, url) = postgres_database();
                (Some(pg), LedgerTarget::Postgres(url))
            }
        };
        let sidecar = Sidecar::start(SidecarOptions::new(redis.url(), target.clone()))
            .expect("sidecar starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt
            .block_on(RedisStore::connect(
                &RedisTarget::Single(redis.url()),
                Keyspace::new(PREFIX, SHARDS),
                STORE_TIMEOUT_MS,
            ))
            .expect("protocol store connects");
        let ledger = rt.block_on(open_ledger(&target));
        Self {
            sidecar: Some(sidecar),
            ledger,
            store: Arc::new(store),
            rt,
            target,
            redis,
            _pg: pg,
            dir,
        }
    }

    fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("the sidecar handle")
    }

    fn sidecar_mut(&mut self) -> &mut Sidecar {
        self.sidecar.as_mut().expect("the sidecar handle")
    }

    /// The sidecar's log tail, for failure messages.
    fn log(&self) -> String {
        self.sidecar
            .as_ref()
            .map_or_else(String::new, |s| s.log_tail(25))
    }

    /// Every ledger entry, by event time then seq.
    fn entries(&self) -> Vec<LedgerEntry> {
        self.rt
            .block_on(self.ledger.entries(&EntryQuery::default()))
            .expect("ledger entries")
    }

    /// Every ledger entry of `customer`.
    fn entries_of(&self, customer: &str) -> Vec<LedgerEntry> {
        self.rt
            .block_on(self.ledger.entries(&EntryQuery {
                customer: Some(customer.to_string()),
                ..EntryQuery::default()
            }))
            .expect("ledger entries")
    }

    /// (customer, type) → (total, held) from the ledger.
    fn ledger_totals(&self) -> BTreeMap<(String, String), (i64, i64)> {
        self.rt
            .block_on(self.ledger.customer_totals())
            .expect("customer totals")
            .into_iter()
            .map(|t| ((t.customer, t.credit_type), (t.total, t.held)))
            .collect()
    }

    /// (customer, type) → (book_available + held, held) from Redis, for `customers`.
    fn redis_totals<'a>(
        &self,
        customers: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<(String, String), (i64, i64)> {
        let mut out = BTreeMap::new();
        for c in customers {
            let balance = self.rt.block_on(self.store.balance(c)).expect("balance");
            for t in balance.types {
                out.insert(
                    (c.clone(), t.credit_type.clone()),
                    (t.book_available + t.held, t.held),
                );
            }
        }
        out
    }

    /// Asserts the ledger's total and held equal Redis's for every customer either knows
    /// of (a pair missing on one side counts as (0, 0)).
    fn assert_totals_match(&self, customers: &BTreeSet<String>) {
        let ledger = self.ledger_totals();
        let redis = self.redis_totals(customers);
        let keys: BTreeSet<_> = ledger.keys().chain(redis.keys()).cloned().collect();
        let mut diffs = Vec::new();
        for k in &keys {
            let l = ledger.get(k).copied().unwrap_or((0, 0));
            let r = redis.get(k).copied().unwrap_or((0, 0));
            if l != r {
                diffs.push(format!("{k:?}: ledger {l:?}, redis {r:?}"));
            }
        }
        assert!(
            diffs.is_empty(),
            "{} of {} customer/type pairs differ (total, held):\n{}\nsidecar log:\n{}",
            diffs.len(),
            keys.len(),
            diffs.join("\n"),
            self.log()
        );
    }

    /// Σ over shards of `entries-added` (every entry ever added to the stream, trimmed
    /// or not) and of the group's pending count.
    fn stream_counts(&self) -> (u64, u64) {
        self.rt.block_on(async {
            let client = redis::Client::open(self.redis.url()).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection");
            let keyspace = Keyspace::new(PREFIX, SHARDS);
            let (mut added, mut pending) = (0u64, 0u64);
            for shard in keyspace.all_shards() {
                let key = keyspace.events(shard);
                let info: Result<HashMap<String, redis::Value>, _> = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await;
                let Ok(info) = info else { continue }; // no stream yet
                added += info
                    .get("entries-added")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
                    .unwrap_or(0u64);
                let summary: Result<(u64, redis::Value, redis::Value, redis::Value), _> =
                    redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(GROUP)
                        .query_async(&mut conn)
                        .await;
                if let Ok((n, ..)) = summary {
                    pending += n;
                }
            }
            (added, pending)
        })
    }

    /// Waits until the ledger holds one entry for every event the streams ever received and
    /// the group has nothing pending; returns the entries. `overage` entries are not counted:
    /// the writer derives them from a `hold_posted` event that reports a shortfall, so they
    /// have no stream event of their own (each must sit beside its posted entry).
    fn wait_caught_up(&self) -> Vec<LedgerEntry> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let (added, pending) = self.stream_counts();
            let entries = self.entries();
            let from_events = entries
                .iter()
                .filter(|e| e.entry.kind != EntryKind::Overage)
                .count() as u64;
            if from_events == added && pending == 0 {
                for overage in entries
                    .iter()
                    .filter(|e| e.entry.kind == EntryKind::Overage)
                {
                    let hold = overage.entry.hold_id.as_deref();
                    assert!(
                        entries.iter().any(|e| e.entry.kind == EntryKind::HoldPosted
                            && e.entry.hold_id.as_deref() == hold),
                        "an overage entry without its posted hold: {overage:?}"
                    );
                }
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "not caught up after {CATCH_UP_TIMEOUT:?}: ledger has {from_events} entries from \
                 events, the streams received {added}, {pending} pending\nsidecar log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until no hold and no grant of any shard is due at `until_ms` or before: the
    /// sweeper has expired everything the run left to expire.
    fn wait_swept(&self, until_ms: u64) {
        let wait = Duration::from_millis(until_ms.saturating_sub(now_ms()));
        thread::sleep(wait);
        let deadline = Instant::now() + Duration::from_secs(15);
        let keyspace = Keyspace::new(PREFIX, SHARDS);
        loop {
            let due: usize = self.rt.block_on(async {
                let mut due = 0;
                for shard in keyspace.all_shards() {
                    due += self
                        .store
                        .due_holds(shard, until_ms, 100)
                        .await
                        .unwrap()
                        .len();
                    due += self
                        .store
                        .due_grants(shard, until_ms, 100)
                        .await
                        .unwrap()
                        .len();
                }
                due
            });
            if due == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{due} holds/grants still due long after their deadline: the sweeper did not \
                 run\nsidecar log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `creditgate-sidecar ledger verify` on this ledger must exit 0.
    fn assert_chain_verifies(&self) {
        let mut args = vec!["ledger".to_string(), "verify".to_string()];
        args.extend(self.target.args());
        let out = sidecar_command(&args, self.dir.path()).expect("ledger verify runs");
        assert!(
            out.status.success(),
            "ledger verify failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET path` on the sidecar as JSON (must answer 200).
    fn get_json(&self, path: &str) -> Value {
        let body = self.sidecar().get_ok(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    fn grant(&self, req: &GrantRequest) -> GrantOutcome {
        self.rt.block_on(self.store.grant(req)).expect("grant")
    }

    fn reserve(&self, req: &ReserveRequest) -> ReserveOutcome {
        self.rt.block_on(self.store.reserve(req)).expect("reserve")
    }

    fn redis_available_held(&self, customer: &str, credit_type: &str) -> (i64, i64) {
        let b = self
            .rt
            .block_on(self.store.balance(customer))
            .expect("balance");
        b.of(credit_type).map_or((0, 0), |t| (t.available, t.held))
    }
}

async fn open_ledger(target: &LedgerTarget) -> Arc<dyn Ledger> {
    match target {
        LedgerTarget::Sqlite(path) => Arc::new(SqliteLedger::open(path).await.expect("sqlite")),
        LedgerTarget::Postgres(url) => {
            Arc::new(PostgresLedger::connect(url).await.expect("postgres"))
        }
    }
}

/// Polls `check` every 50 ms until it returns true, for at most `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\nsidecar log:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn grant_request(
    customer: &str,
    grant_id: &str,
    credit_type: &str,
    amount: u64,
    expires_at_ms: Option<u64>,
    cost_basis: u64,
) -> GrantRequest {
    GrantRequest {
        customer: customer.to_string(),
        grant_id: grant_id.to_string(),
        credit_type: credit_type.to_string(),
        amount,
        priority: 100,
        expires_at_ms,
        cost_basis,
        source: if cost_basis > 0 {
            GrantSource::Purchase
        } else {
            GrantSource::Promotion
        },
        actor: "sidecar-e2e".to_string(),
        reason: "test traffic".to_string(),
    }
}

fn reserve_request(
    customer: &str,
    hold_id: &str,
    credit_type: &str,
    amount: u64,
    ttl_ms: u64,
) -> ReserveRequest {
    ReserveRequest {
        customer: customer.to_string(),
        hold_id: hold_id.to_string(),
        credit_type: credit_type.to_string(),
        amount,
        ttl_ms,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "generated".to_string(),
        feature: "generated".to_string(),
        retain_ms: DEFAULT_RETAIN_MS,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}

// ---------------------------------------------------------------------------------------
// Generated traffic

/// What a run of generated traffic produced, from the outcomes the store answered.
#[derive(Debug, Default)]
struct Produced {
    /// Event ids that must be in the ledger exactly once.
    expected: BTreeSet<String>,
    /// `grant:<id>:expired` ids that may be in the ledger (the sweeper expires a grant
    /// with an expiry only when something of it is left).
    may_expire: BTreeSet<String>,
    /// Every customer the run touched.
    customers: BTreeSet<String>,
    /// Operations sent.
    ops: u64,
    /// The latest deadline or expiry the run set: after it, the sweeper has work no more.
    last_due_ms: u64,
    /// Σ posted per (customer, type).
    posted: BTreeMap<(String, String), u64>,
    /// Σ cost basis of the grants applied.
    cost_basis: u64,
    /// Balance snapshots: (customer, Redis store time, per type (available, held, debt,
    /// book_available)).
    snapshots: Vec<Snapshot>,
}

/// A customer's Redis balance at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    customer: String,
    at_ms: u64,
    types: BTreeMap<String, (i64, i64, i64, i64)>,
}

impl Produced {
    fn merge(&mut self, other: Produced) {
        self.expected.extend(other.expected);
        self.may_expire.extend(other.may_expire);
        self.customers.extend(other.customers);
        self.ops += other.ops;
        self.last_due_ms = self.last_due_ms.max(other.last_due_ms);
        for (k, v) in other.posted {
            *self.posted.entry(k).or_default() += v;
        }
        self.cost_basis += other.cost_basis;
        self.snapshots.extend(other.snapshots);
    }
}

/// How one worker generates traffic.
#[derive(Clone, Debug)]
struct Traffic {
    /// Distinguishes ids of different workers.
    worker: usize,
    customers: Vec<String>,
    seed: u64,
    /// Stop after this many operations (the final resolutions not counted)...
    max_ops: u64,
    /// ...or when this turns true.
    stop: Arc<AtomicBool>,
    /// Pause between operations.
    pause: Duration,
    /// Take a balance snapshot of every customer every this many operations (0: never).
    snapshot_every: u64,
    /// Grants carry a cost basis (money) when true.
    paid: bool,
}

struct OpenHold {
    hold_id: String,
    customer: String,
    credit_type: String,
    amount: u64,
}

/// Drives grants, reserves, settles below and above the held amount (with a little
/// overdraft), voids, short-TTL holds left to expire and grants that expire, over the
/// worker's customers; at the end settles or voids every hold it did not leave to expire.
async fn drive(store: Arc<RedisStore>, t: Traffic) -> Produced {
    let mut rng = StdRng::seed_from_u64(t.seed);
    let mut p = Produced::default();
    let mut open: Vec<OpenHold> = Vec::new();
    let mut granted: HashMap<(String, String), bool> = HashMap::new();
    let mut n = 0u64;
    while p.ops < t.max_ops && !t.stop.load(Ordering::Relaxed) {
        n += 1;
        let customer = t.customers[rng.random_range(0..t.customers.len())].clone();
        let credit_type = TYPES[rng.random_range(0..TYPES.len())].to_string();
        p.customers.insert(customer.clone());
        let has_grant = granted.contains_key(&(customer.clone(), credit_type.clone()));
        let roll: f64 = rng.random();
        if !has_grant || roll < 0.12 {
            let grant_id = format!("g-{}-{n}", t.worker);
            let amount = rng.random_range(100..1_000);
            let expires = rng
                .random_bool(0.25)
                .then(|| now_ms() + rng.random_range(400..2_500));
            let cost_basis = if t.paid || rng.random_bool(0.5) {
                amount * rng.random_range(1_000..20_000)
            } else {
                0
            };
            let req = grant_request(
                &customer,
                &grant_id,
                &credit_type,
                amount,
                expires,
                cost_basis,
            );
            match store.grant(&req).await.expect("grant") {
                GrantOutcome::Granted { .. } => {
                    p.expected.insert(format!("grant:{grant_id}:added"));
                    p.cost_basis += cost_basis;
                    if let Some(at) = expires {
                        p.may_expire.insert(format!("grant:{grant_id}:expired"));
                        p.last_due_ms = p.last_due_ms.max(at);
                    }
                    granted.insert((customer, credit_type), true);
                }
                other => panic!("grant {grant_id}: {other:?}"),
            }
        } else if open.is_empty() || roll < 0.55 {
            let hold_id = format!("h-{}-{n}", t.worker);
            let amount = rng.random_range(1..40);
            let short = rng.random_bool(0.08);
            let ttl_ms = if short {
                rng.random_range(300..1_000)
            } else {
                120_000
            };
            let mut req = reserve_request(&customer, &hold_id, &credit_type, amount, ttl_ms);
            req.overdraft_limit = if rng.random_bool(0.2) { 25 } else { 0 };
            match store.reserve(&req).await.expect("reserve") {
                ReserveOutcome::Placed { hold, .. } => {
                    p.expected.insert(format!("hold:{hold_id}:placed"));
                    if short {
                        p.expected.insert(format!("hold:{hold_id}:expired"));
                        p.last_due_ms = p.last_due_ms.max(hold.deadline_ms);
                    } else {
                        open.push(OpenHold {
                            hold_id,
                            customer,
                            credit_type,
                            amount,
                        });
                    }
                }
                ReserveOutcome::Insufficient { .. } => {}
                other => panic!("reserve {hold_id}: {other:?}"),
            }
        } else {
            let i = rng.random_range(0..open.len());
            let hold = open.swap_remove(i);
            let settle = rng.random_bool(0.75);
            let actual = hold.amount * rng.random_range(0..=160) / 100;
            let overdraft = if rng.random_bool(0.3) { 25 } else { 0 };
            resolve(&store, &mut p, &hold, settle, actual, overdraft).await;
        }
        p.ops += 1;
        if t.snapshot_every > 0 && p.ops % t.snapshot_every == 0 {
            for c in &t.customers {
                p.snapshots.push(snapshot(&store, c).await);
            }
        }
        if !t.pause.is_zero() {
            tokio::time::sleep(t.pause).await;
        }
    }
    for hold in std::mem::take(&mut open) {
        let settle = rng.random_bool(0.5);
        let actual = hold.amount * rng.random_range(0..=150) / 100;
        resolve(&store, &mut p, &hold, settle, actual, 0).await;
    }
    p
}

async fn resolve(
    store: &RedisStore,
    p: &mut Produced,
    hold: &OpenHold,
    settle: bool,
    actual: u64,
    overdraft_limit: u64,
) {
    let outcome = if settle {
        store
            .settle(&SettleRequest {
                customer: hold.customer.clone(),
                hold_id: hold.hold_id.clone(),
                actual,
                overdraft_limit,
            })
            .await
            .expect("settle")
    } else {
        store
            .void(&HoldRef {
                customer: hold.customer.clone(),
                hold_id: hold.hold_id.clone(),
            })
            .await
            .expect("void")
    };
    let id = &hold.hold_id;
    match outcome {
        ResolveOutcome::Posted { posted, .. } => {
            p.expected.insert(format!("hold:{id}:posted"));
            *p.posted
                .entry((hold.customer.clone(), hold.credit_type.clone()))
                .or_default() += posted;
        }
        ResolveOutcome::Voided { .. } => {
            p.expected.insert(format!("hold:{id}:voided"));
        }
        ResolveOutcome::AlreadyExpired { .. } => {
            p.expected.insert(format!("hold:{id}:expired"));
        }
        other => panic!("resolving {id}: {other:?}"),
    }
}

/// Reads a customer's Redis balance twice, 3 ms apart, until both reads agree: then no
/// event in the same millisecond as the first read can have changed it after the read, so
/// the ledger's balance at that instant must be exactly this.
async fn snapshot(store: &RedisStore, customer: &str) -> Snapshot {
    let read = |b: creditgate_protocol::Balance| Snapshot {
        customer: customer.to_string(),
        at_ms: b.at_ms,
        types: b
            .types
            .into_iter()
            .map(|t| {
                (
                    t.credit_type,
                    (t.available, t.held, t.debt, t.book_available),
                )
            })
            .collect(),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let first = read(store.balance(customer).await.expect("balance"));
        tokio::time::sleep(Duration::from_millis(3)).await;
        let second = read(store.balance(customer).await.expect("balance"));
        if first.types == second.types {
            return first;
        }
    }
}

/// Traffic generators running on the harness runtime.
struct TrafficRun {
    /// Shared by every generator: stops them all.
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<Produced>>,
}

/// Runs `workers` traffic generators, each on its own share of `customers` customers.
fn spawn_traffic(
    h: &Harness,
    workers: usize,
    customers: usize,
    configure: impl Fn(&mut Traffic),
) -> TrafficRun {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..workers)
        .map(|w| {
            let mut t = Traffic {
                worker: w,
                customers: (0..customers)
                    .filter(|c| c % workers == w)
                    .map(|c| format!("cust-{c:03}"))
                    .collect(),
                seed: 0x5eed_0000 + w as u64,
                max_ops: u64::MAX,
                stop: stop.clone(),
                pause: Duration::ZERO,
                snapshot_every: 0,
                paid: false,
            };
            configure(&mut t);
            h.rt.spawn(drive(h.store.clone(), t))
        })
        .collect();
    TrafficRun { stop, handles }
}

/// Waits for the generators to finish (or stops them first) and merges what they did.
fn join_traffic(h: &Harness, run: TrafficRun, stop: bool) -> Produced {
    if stop {
        run.stop.store(true, Ordering::Relaxed);
    }
    let mut all = Produced::default();
    for handle in run.handles {
        all.merge(h.rt.block_on(handle).expect("traffic task"));
    }
    all
}

/// After the traffic: everything swept, everything in the ledger once, balances equal.
fn assert_exactly_once(h: &Harness, p: &Produced) {
    h.wait_swept(p.last_due_ms + 1);
    let entries = h.wait_caught_up();
    let ids: Vec<&str> = entries.iter().map(|e| e.entry.event_id.as_str()).collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "an event id is in the ledger twice"
    );
    let missing: Vec<&String> = p
        .expected
        .iter()
        .filter(|id| !distinct.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} produced events missing from the ledger, e.g. {:?}\nsidecar log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        h.log()
    );
    let unexpected: Vec<&str> = distinct
        .iter()
        .copied()
        .filter(|id| !p.expected.contains(*id) && !p.may_expire.contains(*id))
        // An overage entry is derived from a posted hold that fell short, not produced by
        // an operation of its own (`wait_caught_up` checks it sits beside its posted hold).
        .filter(|id| !id.ends_with(":overage"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} ledger entries no operation produced, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    h.assert_totals_match(&p.customers);
    let held: i64 = h.ledger_totals().values().map(|(_, held)| held).sum();
    assert_eq!(held, 0, "every hold was resolved");
    h.assert_chain_verifies();
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// 10,000 mixed operations over 50 customers and 2 credit types with the sidecar running:
/// the ledger ends with exactly one entry per stream event and the same balances as Redis.
fn every_event_lands_exactly_once_under_load(backend: Backend) {
    let h = Harness::start(backend);
    let started = Instant::now();
    let run = spawn_traffic(&h, 4, 50, |t| t.max_ops = 2_500);
    let p = join_traffic(&h, run, false);
    let driven = started.elapsed();
    assert_eq!(p.ops, 10_000);
    assert_exactly_once(&h, &p);
    let (added, _) = h.stream_counts();
    eprintln!(
        "{backend:?}: {} ops ({added} events) driven in {driven:?}, all in the ledger after {:?}",
        p.ops,
        started.elapsed()
    );
    assert!(
        h.sidecar().metric("creditgate_ledger_conflicts_total", &[]) == 0.0
            && h.sidecar().metric("creditgate_ledger_malformed_total", &[]) == 0.0,
        "no conflicts, nothing malformed"
    );
}

/// The sidecar is killed with SIGKILL 20 times at random points (every 150–400 ms) while
/// traffic flows, and restarted each time: afterwards no event is missing or duplicated
/// and nothing is left pending in the group.
fn kill_9_at_random_points_loses_and_duplicates_nothing(backend: Backend) {
    let mut h = Harness::start(backend);
    let run = spawn_traffic(&h, 3, 30, |t| t.pause = Duration::from_millis(1));
    let mut rng = StdRng::seed_from_u64(0x6b11);
    let mut restarts = Vec::new();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(rng.random_range(150..400)));
        h.sidecar_mut().kill9();
        let t = Instant::now();
        h.sidecar_mut().restart().expect("sidecar restarts");
        restarts.push(t.elapsed());
    }
    let p = join_traffic(&h, run, true);
    assert!(
        p.ops > 1_000,
        "traffic flowed during the kills: {} ops",
        p.ops
    );
    assert_eq!(h.sidecar().starts(), 21);
    assert_exactly_once(&h, &p);
    let (added, pending) = h.stream_counts();
    assert_eq!(pending, 0);
    // How many restarts found entries read but not acknowledged by the killed process.
    let log = std::fs::read_to_string(h.sidecar().log_path()).unwrap_or_default();
    let recoveries = log.matches("recovered pending stream entries").count();
    eprintln!(
        "{backend:?}: {} ops, {added} events through 20 SIGKILLs; restarts took up to {:?}; \
         {recoveries} restarts re-read entries the killed process had not acknowledged",
        p.ops,
        restarts.iter().max().copied().unwrap_or_default(),
    );
}

/// A gateway killed with SIGKILL while its requests wait on a slow upstream leaves pending
/// holds; once their deadline (`hold_ttl_ms` = 1 s) passes the sidecar's sweeper expires
/// them: credits back, nothing held, one `hold_expired` entry per hold.
fn holds_of_a_killed_gateway_expire_and_return_their_credits(backend: Backend) {
    const COST: i64 = 7;
    const REQUESTS: usize = 3;
    const GRANTED: u64 = 100;
    let h = Harness::start(backend);
    let upstream = Upstream::start().expect("upstream");
    upstream.set_delay(Duration::from_secs(3));
    let mut gateway = Gateway::start(GatewayOptions {
        config_toml: short_hold_config(upstream.addr(), COST),
        redis_url: Some(h.redis.url()),
        ..GatewayOptions::default()
    })
    .expect("gateway starts");
    let g = h.grant(&grant_request(ALICE, "g-alice", "api", GRANTED, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");

    let url = format!("{}/search", gateway.proxy_url());
    let clients: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                // The gateway dies under this request: a transport error is the expected end.
                let _ = http_client().get(&url).bearer_auth(ALICE_KEY).send();
            })
        })
        .collect();
    let held = REQUESTS as i64 * COST;
    wait_for(
        "the gateway's holds are placed",
        Duration::from_secs(5),
        || h.redis_available_held(ALICE, "api").1 == held,
        || gateway.log_tail(30),
    );
    let killed_at = now_ms();
    gateway.kill();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(
        h.redis_available_held(ALICE, "api"),
        (GRANTED as i64 - held, held),
        "the holds stay pending after the crash"
    );

    wait_for(
        "the sweeper returns the held credits",
        Duration::from_secs(10),
        || h.redis_available_held(ALICE, "api") == (GRANTED as i64, 0),
        || h.log(),
    );
    let back_after = now_ms() - killed_at;
    wait_for(
        "the expiries reach the ledger",
        Duration::from_secs(10),
        || {
            h.entries_of(ALICE)
                .iter()
                .filter(|e| e.entry.kind == EntryKind::HoldExpired)
                .count()
                == REQUESTS
        },
        || h.log(),
    );
    let entries = h.entries_of(ALICE);
    let holds = |kind: EntryKind| -> BTreeMap<String, u64> {
        entries
            .iter()
            .filter(|e| e.entry.kind == kind)
            .map(|e| {
                (
                    e.entry.hold_id.clone().expect("hold id"),
                    e.entry.event_at_ms,
                )
            })
            .collect()
    };
    let placed = holds(EntryKind::HoldPlaced);
    let expired = holds(EntryKind::HoldExpired);
    assert_eq!(placed.len(), REQUESTS, "{entries:#?}");
    assert_eq!(
        placed.keys().collect::<Vec<_>>(),
        expired.keys().collect::<Vec<_>>(),
        "exactly one hold_expired per hold"
    );
    let resolved_otherwise = entries
        .iter()
        .filter(|e| matches!(e.entry.kind, EntryKind::HoldPosted | EntryKind::HoldVoided))
        .count();
    assert_eq!(resolved_otherwise, 0, "nothing posted or voided");
    for (hold, placed_at) in &placed {
        assert!(
            expired[hold] >= placed_at + 1_000,
            "hold {hold} expired at {} before its deadline {}",
            expired[hold],
            placed_at + 1_000
        );
    }
    assert_eq!(
        entries.iter().map(|e| e.entry.amount).sum::<i64>(),
        GRANTED as i64,
        "nothing burned, nothing broken"
    );
    h.assert_totals_match(&BTreeSet::from([ALICE.to_string()]));
    eprintln!("{backend:?}: credits back {back_after} ms after the gateway died");
}

/// The config of the killed-gateway scenario: 1 s holds (the minimum), an upstream timeout
/// within them, `GET /search` costing `cost`.
fn short_hold_config(upstream: SocketAddr, cost: i64) -> String {
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 500
unmatched = "not_found"
hold_ttl_ms = 1000

[billing]
top_up_url = "https://billing.example.test/top-up"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"
connect_timeout_ms = 200
read_timeout_ms = 800

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = {cost} }}

[[api_keys]]
customer = "{ALICE}"
sha256 = "{key}"

[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#,
        key = sha256_hex(ALICE_KEY),
    )
}

/// `FLUSHALL` under a running sidecar: it notices the lost generation markers, rebuilds
/// every customer from the ledger within a few seconds, voids the hold Redis lost (its
/// credits come back) and goes on recording new traffic.
fn flushall_is_detected_and_rebuilt_from_the_ledger(backend: Backend) {
    let h = Harness::start(backend);
    let customers: BTreeSet<String> = ["acme", "globex", "initech"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    for (i, c) in customers.iter().enumerate() {
        for t in TYPES {
            let g = h.grant(&grant_request(
                c,
                &format!("g-{c}-{t}"),
                t,
                500,
                None,
                1_000_000,
            ));
            assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
            let hold = format!("h-{c}-{t}-done");
            let r = h.reserve(&reserve_request(c, &hold, t, 40, 120_000));
            assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
            let s =
                h.rt.block_on(h.store.settle(&SettleRequest {
                    customer: c.clone(),
                    hold_id: hold,
                    actual: 30 + i as u64,
                    overdraft_limit: 0,
                }))
                .expect("settle");
            assert!(matches!(s, ResolveOutcome::Posted { .. }), "{s:?}");
        }
    }
    // A hold in flight when Redis loses its data.
    let lost = reserve_request("acme", "h-acme-lost", "api", 70, 120_000);
    assert!(matches!(h.reserve(&lost), ReserveOutcome::Placed { .. }));
    let before: BTreeMap<_, _> = customers
        .iter()
        .flat_map(|c| TYPES.map(|t| ((c.clone(), t), h.redis_available_held(c, t))))
        .collect();
    assert_eq!(before[&("acme".to_string(), "api")], (500 - 30 - 70, 70));
    h.wait_caught_up();
    h.assert_totals_match(&customers);
    wait_for(
        "the generation markers are set",
        Duration::from_secs(5),
        || {
            h.redis
                .cli(&["GET", "cg:{s0}:generation"])
                .unwrap_or_default()
                != ""
        },
        || h.log(),
    );

    h.redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
    let flushed = Instant::now();
    wait_for(
        "Redis is rebuilt from the ledger",
        Duration::from_secs(8),
        || h.redis_available_held("acme", "api") == (500 - 30, 0),
        || h.log(),
    );
    let rebuilt_after = flushed.elapsed();
    for c in &customers {
        for t in TYPES {
            let (available, held) = before[&(c.clone(), t)];
            let expected = if (c.as_str(), t) == ("acme", "api") {
                (available + 70, 0)
            } else {
                (available, held)
            };
            assert_eq!(
                h.redis_available_held(c, t),
                expected,
                "{c} {t} after the rebuild"
            );
        }
    }
    let voided =
        h.rt.block_on(h.ledger.entry("hold:h-acme-lost:voided"))
            .expect("entry");
    assert!(voided.is_some(), "the lost hold is voided in the ledger");
    h.assert_totals_match(&customers);
    assert!(
        h.sidecar()
            .metric("creditgate_reconcile_shards_rebuilt_total", &[])
            >= 1.0
    );

    // New traffic after the rebuild is recorded as before.
    let next = reserve_request("globex", "h-globex-after", "tokens", 5, 120_000);
    assert!(matches!(h.reserve(&next), ReserveOutcome::Placed { .. }));
    wait_for(
        "an event written after the rebuild reaches the ledger",
        Duration::from_secs(5),
        || {
            h.rt.block_on(h.ledger.entry("hold:h-globex-after:placed"))
                .expect("entry")
                .is_some()
        },
        || h.log(),
    );
    h.assert_totals_match(&customers);
    h.assert_chain_verifies();
    eprintln!("{backend:?}: rebuilt {rebuilt_after:?} after FLUSHALL");
}

/// Balances recorded in Redis at chosen instants during a run equal the ledger's balance at
/// those instants afterwards; and over a window covering every grant, the money sold
/// equals recognized + breakage + deferred, with each part as the per-grant figures say.
fn balance_at_past_instants_and_the_revenue_identity(backend: Backend) {
    let h = Harness::start(backend);
    let from_ms = now_ms() - 1_000;
    let run = spawn_traffic(&h, 2, 6, |t| {
        t.max_ops = 400;
        t.snapshot_every = 40;
        t.paid = true;
        t.pause = Duration::from_millis(1);
    });
    let p = join_traffic(&h, run, false);
    assert!(p.snapshots.len() >= 20, "{} snapshots", p.snapshots.len());
    assert_exactly_once(&h, &p);

    let mut compared = 0;
    for s in &p.snapshots {
        let b = h.get_json(&format!(
            "/v1/customers/{}/balance?at_ms={}",
            s.customer, s.at_ms
        ));
        let ledger: BTreeMap<String, (i64, i64, i64, i64)> = b["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| {
                let n = |f: &str| t[f].as_i64().unwrap_or_else(|| panic!("{f} in {t}"));
                assert_eq!(n("total"), n("book_available") + n("held"), "{t}");
                (
                    t["credit_type"].as_str().expect("type").to_string(),
                    (n("available"), n("held"), n("debt"), n("book_available")),
                )
            })
            .filter(|(_, v)| *v != (0, 0, 0, 0))
            .collect();
        let redis: BTreeMap<_, _> = s
            .types
            .iter()
            .filter(|(_, v)| **v != (0, 0, 0, 0))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            ledger, redis,
            "{} at {}: ledger (available, held, debt, book_available) vs Redis then",
            s.customer, s.at_ms
        );
        compared += 1;
    }

    // Revenue over a window covering every grant, against the per-grant figures.
    let to_ms = now_ms() + 1_000;
    let r = h.get_json(&format!("/v1/revenue?from_ms={from_ms}&to_ms={to_ms}"));
    let money = |f: &str| -> i128 {
        r["revenue"][f]
            .as_i64()
            .unwrap_or_else(|| panic!("{f} in {r}")) as i128
    };
    let (recognized, breakage, deferred) = (
        money("recognized_micros"),
        money("breakage_micros"),
        money("deferred_micros_at_end"),
    );
    assert_eq!(
        recognized + breakage + deferred,
        p.cost_basis as i128,
        "sold = recognized + breakage + deferred: {r}"
    );
    let (mut want_recognized, mut want_breakage, mut posted) = (0i128, 0i128, BTreeMap::new());
    let cost_basis: HashMap<String, (i128, i128)> = h
        .entries()
        .iter()
        .filter(|e| e.entry.kind == EntryKind::GrantAdded)
        .map(|e| {
            let d = &e.entry.details;
            let n = |f: &str| {
                d[f].as_str()
                    .and_then(|s| s.parse::<i128>().ok())
                    .unwrap_or(0)
            };
            (
                e.entry.grant_id.clone().unwrap(),
                (n("cost_basis"), n("amount")),
            )
        })
        .collect();
    for c in &p.customers {
        let b = h.get_json(&format!("/v1/customers/{c}/balance"));
        for g in b["grants"].as_array().expect("grants") {
            let id = g["grant_id"].as_str().unwrap();
            let (cb, amount) = cost_basis[id];
            let burned = g["burned"].as_i64().unwrap() as i128;
            let expired = g["expired"].as_i64().unwrap() as i128;
            let value = |n: i128| cb * n.min(amount) / amount;
            want_recognized += value(burned);
            want_breakage += value(burned + expired) - value(burned);
            *posted
                .entry((c.clone(), g["credit_type"].as_str().unwrap().to_string()))
                .or_insert(0u64) += burned as u64;
        }
    }
    assert_eq!(recognized, want_recognized, "recognized: {r}");
    assert_eq!(breakage, want_breakage, "breakage: {r}");
    assert!(breakage > 0 && recognized > 0 && deferred > 0, "{r}");
    // Burns charged to grants equal what the settles posted (the overdraft part, repaid by
    // a later grant, is burned from that grant as debt repaid, so compare only when the
    // run left no debt behind).
    let debts: i64 = p
        .customers
        .iter()
        .map(|c| {
            h.rt.block_on(h.store.balance(c))
                .unwrap()
                .types
                .iter()
                .map(|t| t.debt)
                .sum::<i64>()
        })
        .sum();
    if debts == 0 {
        let posted_total: u64 = p.posted.values().sum();
        let burned_total: u64 = posted.values().sum();
        assert!(
            burned_total <= posted_total,
            "burned {burned_total} > posted {posted_total}"
        );
    }
    eprintln!(
        "{backend:?}: {compared} balance snapshots equal; revenue {recognized} + {breakage} + \
         {deferred} = {}",
        p.cost_basis
    );
}

/// `creditgate-sidecar grant` with Redis down records the grant in the ledger and exits 0,
/// saying the outbox will deliver it; once Redis is back, the running sidecar applies it
/// exactly once (a repeated command changes nothing).
fn a_ledger_first_grant_survives_a_redis_outage_and_applies_once(backend: Backend) {
    let mut h = Harness::start(backend);
    let grant_args = |h: &Harness| -> Vec<String> {
        let mut a: Vec<String> = [
            "grant",
            "--redis",
            &h.redis.url(),
            "--customer",
            "umbrella",
            "--credit-type",
            "api",
            "--amount",
            "250",
            "--grant-id",
            "g-umbrella-outage",
            "--cost-basis",
            "5000000",
            "--source",
            "purchase",
            "--actor",
            "ops@example.test",
            "--reason",
            "bought during an outage",
            "--timeout-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(h.target.args());
        a
    };
    h.redis.stop();
    let started = Instant::now();
    let out = sidecar_command(&grant_args(&h), h.dir.path()).expect("grant runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "grant with Redis down must record and exit 0; got {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("outbox delivers it"),
        "says the outbox delivers it: {stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not hang"
    );
    let state =
        h.rt.block_on(h.ledger.outbox_state("g-umbrella-outage"))
            .expect("outbox state")
            .expect("recorded in the outbox");
    assert_eq!(state.applied_at_ms, None);
    // The break-glass path records who ran it.
    let recorded =
        h.rt.block_on(h.ledger.grants_of("umbrella"))
            .expect("grants");
    assert!(
        recorded[0]
            .actor
            .starts_with("break-glass:ops@example.test"),
        "{:?}",
        recorded[0]
    );

    h.redis.restart().expect("redis restarts");
    wait_for(
        "the outbox delivers the grant",
        Duration::from_secs(10),
        || {
            h.rt.block_on(h.store.balance("umbrella"))
                .ok()
                .and_then(|b| b.of("api").map(|t| (t.available, t.held)))
                == Some((250, 0))
        },
        || h.log(),
    );
    wait_for(
        "the grant reaches the ledger",
        Duration::from_secs(10),
        || {
            h.rt.block_on(h.ledger.entry("grant:g-umbrella-outage:added"))
                .expect("entry")
                .is_some()
        },
        || h.log(),
    );
    let state =
        h.rt.block_on(h.ledger.outbox_state("g-umbrella-outage"))
            .unwrap()
            .unwrap();
    assert!(state.applied_at_ms.is_some(), "{state:?}");

    // The same command again: recorded before, delivered again, applied nothing twice.
    let again = sidecar_command(&grant_args(&h), h.dir.path()).expect("grant runs");
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("recorded before"),
        "{again:?}"
    );
    h.sidecar_mut().restart().expect("sidecar restarts");
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(h.redis_available_held("umbrella", "api"), (250, 0));
    let entries = h.entries_of("umbrella");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.entry.event_id.as_str())
            .collect::<Vec<_>>(),
        vec!["grant:g-umbrella-outage:added"],
        "one ledger entry for the grant"
    );
    assert_eq!(entries[0].entry.amount, 250);
    h.assert_totals_match(&BTreeSet::from(["umbrella".to_string()]));
}

/// A sidecar given an invalid pricing config refuses to start and names the file, line and
/// field, before it touches the ledger or Redis.
#[test]
fn sidecar_refuses_to_start_on_an_invalid_pricing_config() {
    let dir = TempDir::new().expect("temp dir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures/invalid/amount_overflow.toml");
    let ledger = dir.path().join("ledger.sqlite");
    let args = [
        "run".to_string(),
        "--redis".to_string(),
        "redis://127.0.0.1:1/".to_string(),
        "--sqlite".to_string(),
        ledger.display().to_string(),
        "--config".to_string(),
        fixture.display().to_string(),
    ];
    let out = sidecar_command(&args, dir.path()).expect("sidecar runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on an invalid config");
    assert!(
        stderr.contains("amount_overflow.toml:"),
        "the error names the file: {stderr}"
    );
    assert!(
        !ledger.exists(),
        "the ledger was opened before the config was checked"
    );
}
