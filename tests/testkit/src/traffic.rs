//! Generated credit traffic straight through the protocol store: seeded workers that grant,
//! reserve, settle below and above the hold, void, and leave short holds and grants to
//! expire, recording every ledger event their outcomes promise ([`Produced`]).
//!
//! It only produces traffic and its expectations; the tests assert on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use creditgate_protocol::{
    CreditStore, GrantOutcome, HoldRef, RedisStore, ReserveOutcome, ResolveOutcome, SettleRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ledger_harness::LedgerHarness;
use crate::poll::now_ms;
use crate::requests::{grant_request, reserve_request};

/// The two credit types of the generated traffic.
pub const TYPES: [&str; 2] = ["api", "tokens"];

/// An event id without its hold placement nonce: `hold:<id>:<nonce>:<what>` becomes
/// `hold:<id>:<what>`, the form [`Produced::expected`] holds (the client never learns the
/// nonce, the Redis time of the placement); any other id is returned as it is.
pub fn without_nonce(event_id: &str) -> String {
    let parts: Vec<&str> = event_id.split(':').collect();
    match parts.as_slice() {
        ["hold", hold_id, _nonce, what] => format!("hold:{hold_id}:{what}"),
        _ => event_id.to_string(),
    }
}

/// What a run of generated traffic produced, from the outcomes the store answered.
#[derive(Debug, Default)]
pub struct Produced {
    /// Event ids that must be in the ledger exactly once, hold events' without their
    /// placement nonce ([`without_nonce`]).
    pub expected: BTreeSet<String>,
    /// `grant:<id>:expired` ids that may be in the ledger (the sweeper expires a grant
    /// with an expiry only when something of it is left).
    pub may_expire: BTreeSet<String>,
    /// Every customer the run touched.
    pub customers: BTreeSet<String>,
    /// Operations sent.
    pub ops: u64,
    /// The latest deadline or expiry the run set: after it, the sweeper has work no more.
    pub last_due_ms: u64,
    /// Σ posted per (customer, type).
    pub posted: BTreeMap<(String, String), u64>,
    /// Σ cost basis of the grants applied.
    pub cost_basis: u64,
    /// Balance snapshots: (customer, Redis store time, per type (available, held, debt,
    /// book_available)).
    pub snapshots: Vec<Snapshot>,
}

/// A customer's Redis balance at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Whose balance.
    pub customer: String,
    /// Redis's clock when it was read, ms since the epoch.
    pub at_ms: u64,
    /// Per credit type: (available, held, debt, book_available).
    pub types: BTreeMap<String, (i64, i64, i64, i64)>,
}

impl Produced {
    /// Adds what another worker produced.
    pub fn merge(&mut self, other: Produced) {
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
pub struct Traffic {
    /// Distinguishes ids of different workers.
    pub worker: usize,
    /// The customers this worker touches (no other worker touches them).
    pub customers: Vec<String>,
    /// Seeds the worker's random choices, so a failing run can be replayed.
    pub seed: u64,
    /// Stop after this many operations (the final resolutions not counted)...
    pub max_ops: u64,
    /// ...or when this turns true.
    pub stop: Arc<AtomicBool>,
    /// Pause between operations.
    pub pause: Duration,
    /// Take a balance snapshot of every customer every this many operations (0: never).
    pub snapshot_every: u64,
    /// Grants carry a cost basis (money) when true.
    pub paid: bool,
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
        // Expired before its settle: the settle burns it late, after the expiry's event.
        ResolveOutcome::PostedLate { posted, .. } => {
            p.expected.insert(format!("hold:{id}:expired"));
            p.expected.insert(format!("hold:{id}:posted"));
            *p.posted
                .entry((hold.customer.clone(), hold.credit_type.clone()))
                .or_default() += posted;
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
pub struct TrafficRun {
    /// Shared by every generator: stops them all.
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<Produced>>,
}

/// Runs `workers` traffic generators, each on its own share of `customers` customers.
pub fn spawn_traffic(
    h: &LedgerHarness,
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
pub fn join_traffic(h: &LedgerHarness, run: TrafficRun, stop: bool) -> Produced {
    if stop {
        run.stop.store(true, Ordering::Relaxed);
    }
    let mut all = Produced::default();
    for handle in run.handles {
        all.merge(h.rt.block_on(handle).expect("traffic task"));
    }
    all
}
