//! The sidecar between a real Redis and a real ledger, with the test's own handles on both:
//! the protocol store on the same Redis and the sidecar's ledger library on the same file or
//! database. It reads back what the sidecar wrote (entries, totals, stream progress) and
//! waits for it to catch up.
//!
//! It drives the sidecar only from outside (Redis, HTTP, the CLI); it never calls the
//! sidecar's jobs itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, Keyspace, RedisStore, RedisTarget, ReserveOutcome,
    ReserveRequest,
};
use creditgate_sidecar::ledger::{EntryKind, EntryQuery, Ledger, LedgerEntry};
use serde_json::Value;
use tempfile::TempDir;

use crate::backend::{Backend, open_ledger};
use crate::fixtures::{PREFIX, SHARDS};
use crate::poll::now_ms;
use crate::{LedgerTarget, Postgres, RedisServer, Sidecar, SidecarOptions, sidecar_command};

/// The consumer group the sidecar reads the streams with.
pub const GROUP: &str = "creditgate-ledger";

/// Per-call timeout of the test's own store calls on a healthy local Redis.
const STORE_TIMEOUT_MS: u64 = 5_000;

/// How long the sidecar gets to catch up with everything written to the streams.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(40);

/// A Redis, a ledger, the sidecar binary on both, and the test's own handles on each.
/// Fields drop in order: the sidecar first, the servers last.
pub struct LedgerHarness {
    /// The sidecar under test; `None` never happens while a test runs (the option lets the
    /// field drop first).
    sidecar: Option<Sidecar>,
    /// The test's own handle on the ledger the sidecar writes.
    pub ledger: Arc<dyn Ledger>,
    /// The test's own protocol store on the sidecar's Redis.
    pub store: Arc<RedisStore>,
    /// The runtime the store and ledger calls run on (tests call them from plain threads).
    pub rt: tokio::runtime::Runtime,
    /// The ledger the sidecar writes, for the CLI's `--sqlite`/`--postgres` options.
    pub target: LedgerTarget,
    /// The Redis both use.
    pub redis: RedisServer,
    _pg: Option<Arc<Postgres>>,
    /// The test's temp dir (the SQLite file lives here), where CLI commands run.
    pub dir: TempDir,
}

impl LedgerHarness {
    /// Starts Redis, the ledger's server (Postgres) and the sidecar, and opens the test's
    /// own handles on Redis and on the ledger.
    pub fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start().expect("redis starts");
        let (target, pg) = backend.fresh_ledger(dir.path(), "sidecar");
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

    /// The running sidecar.
    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("the sidecar handle")
    }

    /// The running sidecar, to stop, kill or restart it.
    pub fn sidecar_mut(&mut self) -> &mut Sidecar {
        self.sidecar.as_mut().expect("the sidecar handle")
    }

    /// The sidecar's log tail, for failure messages.
    pub fn log(&self) -> String {
        self.sidecar
            .as_ref()
            .map_or_else(String::new, |s| s.log_tail(25))
    }

    /// Every ledger entry, by event time then seq.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.rt
            .block_on(self.ledger.entries(&EntryQuery::default()))
            .expect("ledger entries")
    }

    /// Every ledger entry of `customer`.
    pub fn entries_of(&self, customer: &str) -> Vec<LedgerEntry> {
        self.rt
            .block_on(self.ledger.entries(&EntryQuery {
                customer: Some(customer.to_string()),
                ..EntryQuery::default()
            }))
            .expect("ledger entries")
    }

    /// (customer, type) → (total, held) from the ledger.
    pub fn ledger_totals(&self) -> BTreeMap<(String, String), (i64, i64)> {
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
    pub fn assert_totals_match(&self, customers: &BTreeSet<String>) {
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
    pub fn stream_counts(&self) -> (u64, u64) {
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
    /// have no stream event of their own (each must sit beside its posted entry). A stream
    /// entry the writer recorded as a dead letter (and did not replay) counts as done.
    pub fn wait_caught_up(&self) -> Vec<LedgerEntry> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let (added, pending) = self.stream_counts();
            let entries = self.entries();
            let dead = self
                .rt
                .block_on(self.ledger.dead_letters(false, 10_000))
                .expect("dead letters")
                .iter()
                .filter(|d| d.state() != "replayed")
                .count() as u64;
            let from_events = dead
                + entries
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
    pub fn wait_swept(&self, until_ms: u64) {
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
    pub fn assert_chain_verifies(&self) {
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
    pub fn get_json(&self, path: &str) -> Value {
        let body = self.sidecar().get_ok(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// Applies a grant through the test's store.
    pub fn grant(&self, req: &GrantRequest) -> GrantOutcome {
        self.rt.block_on(self.store.grant(req)).expect("grant")
    }

    /// Places a hold through the test's store.
    pub fn reserve(&self, req: &ReserveRequest) -> ReserveOutcome {
        self.rt.block_on(self.store.reserve(req)).expect("reserve")
    }

    /// `(available, held)` of `credit_type` for `customer` in Redis; `(0, 0)` if none.
    pub fn redis_available_held(&self, customer: &str, credit_type: &str) -> (i64, i64) {
        let b = self
            .rt
            .block_on(self.store.balance(customer))
            .expect("balance");
        b.of(credit_type).map_or((0, 0), |t| (t.available, t.held))
    }
}
