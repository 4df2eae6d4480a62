//! Local credit leases (`enforcement = "lease"`): for a busy (customer, credit type) the
//! gateway holds a block of credits as ONE real hold in Redis and admits requests from it
//! with an atomic counter, no store round trip on the request path.
//!
//! Every request still reaches the ledger as its own burn: a background flush moves the
//! finished requests out of the lease in one Redis transaction
//! ([`RedisStore::transfer_lease`]: void the lease, reserve and settle each request's own
//! hold, under the hold id hold mode would use, reserve the rest anew), so the request-id
//! trail and the usage queries are as in hold mode. The re-placed lease gets a fresh TTL:
//! a lease in use is renewed; a crashed gateway's lease expires like any hold (what it
//! admitted and had not flushed is then not charged, as a store outage under-charges in
//! hold mode). A lease is never more than [`LEASE_SHARE_PERCENT`] of the available balance;
//! below [`LEASE_MIN_REQUESTS`] requests' worth it is not taken and requests are held one
//! by one, so near zero the gateway is as exact as hold mode. Unused credits go back when a
//! lease retires (idle, replaced, or graceful shutdown).
//!
//! This module must not price or decide refusals: a request it cannot admit goes to the
//! hold path ([`crate::hold`]). Only Redis stores lease; the embedded store holds per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use creditgate_config::UpstreamErrorPolicy;
use creditgate_protocol::{
    CreditStore, HoldRef, LEASE_TRANSFER_BURNS_MAX, LeaseBurn, LeaseTransfer, RedisStore,
    ReserveOutcome, ReserveRequest, SettleRequest,
};
use pingora::server::ExecutionPhase;
use tracing::{debug, warn};

use crate::admission::ReservePlan;
use crate::hold::HoldEnd;
use crate::in_flight::InFlight;
use crate::responses::Charge;
use crate::store_client::StoreClient;

/// Most of the available balance one lease takes, in percent: half, so a second gateway
/// (or a second lease) still finds credits, and the block shrinks geometrically toward
/// zero instead of one gateway sitting on the last credits.
pub const LEASE_SHARE_PERCENT: u64 = 50;
/// A lease smaller than this many requests' worth is not taken: the request is held on its
/// own (hold mode), which is exact at a low balance.
pub const LEASE_MIN_REQUESTS: u64 = 4;
/// Largest lease, in requests' worth: bounds what a crash can leave unbilled.
pub const LEASE_MAX_REQUESTS: u64 = 10_000;
/// The first lease of a key, in requests' worth, before a burn rate is known.
pub const LEASE_FIRST_REQUESTS: u64 = 16;
/// A lease is sized to last about this long at the burn rate seen on the last one, in ms.
pub const LEASE_HORIZON_MS: u64 = 1_000;
/// The lease hold's TTL in the store, in milliseconds; it is re-placed (renewed) at least
/// every third of it while it holds credits.
pub const LEASE_TTL_MS: u64 = 30_000;
/// A lease not admitted from for this long is retired and its unused credits returned, ms.
pub const LEASE_IDLE_MS: u64 = 2_000;
/// How often finished requests are flushed from leases to the store, in milliseconds.
pub const LEASE_FLUSH_MS: u64 = 10;
/// Timeout of one lease transfer, in milliseconds (it is retried unchanged after one).
pub const LEASE_STORE_TIMEOUT_MS: u64 = 2_000;

/// (customer, credit type).
type Key = (String, String);

/// The leases of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<StoreClient>,
    in_flight: InFlight,
    current: Mutex<HashMap<Key, Arc<Lease>>>,
    /// Every lease not finished yet (current and retired), for the flush.
    all: Mutex<Vec<Arc<Lease>>>,
    /// One opening per key at a time.
    opening: tokio::sync::Mutex<()>,
    /// Burn rate seen per key: credits per second of the last lease.
    rates: Mutex<HashMap<Key, u64>>,
}

/// One lease: one hold in the store.
struct Lease {
    key: Key,
    /// Credits free to admit from.
    remaining: AtomicU64,
    /// Last admission, ms since `opened`.
    last_used_ms: AtomicU64,
    opened: Instant,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    hold_id: String,
    /// Credits the hold has in the store now.
    held: u64,
    generation: u64,
    renewed: Instant,
    retired: bool,
    /// Finished requests not flushed yet.
    burns: Vec<LeaseBurn>,
    /// A transfer sent that failed: retried unchanged (same ids) before anything new.
    unsent: Option<(LeaseTransfer, u64, u64)>,
    /// The template of the lease hold's reserve (route, feature, overdraft).
    template: ReserveRequest,
}

/// A request admitted from a lease, to end in `logging`.
#[derive(Debug)]
pub struct LeaseTicket {
    lease: Arc<LeaseHandle>,
    plan_reserve: ReserveRequest,
    overdraft_limit: u64,
    on_upstream_error: UpstreamErrorPolicy,
}

/// The ticket's lease (a newtype so the ticket is `Debug`).
struct LeaseHandle(Arc<Lease>);

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl LeaseTicket {
    /// Whether the request's burn is posted or its credits go back to the lease, given the
    /// upstream's last status: the same rule as a hold of its own
    /// ([`crate::hold::RequestHold::end_for`]).
    pub fn end_for(&self, upstream_status: Option<u16>) -> HoldEnd {
        match upstream_status {
            None => HoldEnd::Void,
            Some(101) => HoldEnd::Settle,
            Some(s) if s < 200 => HoldEnd::Void,
            Some(s) if s >= 500 && self.on_upstream_error == UpstreamErrorPolicy::Void => {
                HoldEnd::Void
            }
            Some(_) => HoldEnd::Settle,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Lease {
    fn take(&self, amount: u64) -> bool {
        let taken = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                r.checked_sub(amount)
            })
            .is_ok();
        if taken {
            let since = self.opened.elapsed().as_millis() as u64;
            self.last_used_ms.store(since, Ordering::Relaxed);
        }
        taken
    }
}

impl Leases {
    /// Leases kept in `store` (Redis only); a live lease counts in `in_flight`, so a
    /// graceful shutdown waits for its credits to be returned.
    pub fn new(store: Arc<StoreClient>, in_flight: InFlight) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                in_flight,
                current: Mutex::default(),
                all: Mutex::default(),
                opening: tokio::sync::Mutex::new(()),
                rates: Mutex::default(),
            }),
        }
    }

    /// Admits the planned request from a lease of its (customer, credit type), taking one
    /// if there is none and the balance allows; `None`: hold it on its own instead.
    pub async fn admit(&self, plan: &ReservePlan) -> Option<(LeaseTicket, Charge)> {
        if plan.idempotency.is_some() || plan.shadow || plan.amount == 0 {
            return None;
        }
        let key = (plan.customer.clone(), plan.credit_type.clone());
        if let Some(ticket) = self.take_from_current(&key, plan) {
            return Some(ticket);
        }
        let _one = self.inner.opening.lock().await;
        if let Some(ticket) = self.take_from_current(&key, plan) {
            return Some(ticket);
        }
        let lease = self.open(&key, plan).await?;
        lease.take(plan.amount).then(|| self.ticket(&lease, plan))
    }

    fn take_from_current(&self, key: &Key, plan: &ReservePlan) -> Option<(LeaseTicket, Charge)> {
        let lease = self.inner.current.lock().ok()?.get(key).cloned()?;
        lease.take(plan.amount).then(|| self.ticket(&lease, plan))
    }

    fn ticket(&self, lease: &Arc<Lease>, plan: &ReservePlan) -> (LeaseTicket, Charge) {
        let reserve = ReserveRequest {
            customer: plan.customer.clone(),
            hold_id: plan.base_hold_id.clone(),
            credit_type: plan.credit_type.clone(),
            amount: plan.amount,
            ttl_ms: plan.hold_ttl_ms,
            overdraft_limit: plan.overdraft_limit,
            // Served already when it reaches the store: never refused there.
            force: true,
            request_id: plan.request_id.clone(),
            route: plan.route.clone(),
            feature: plan.feature.clone(),
            retain_ms: plan.hold_ttl_ms,
            pricing_version: plan.pricing_version.clone(),
            occurred_at_ms: Some(now_ms()),
        };
        let charge = Charge {
            credit_type: plan.credit_type.clone(),
            charged: plan.amount,
            remaining: None,
        };
        let ticket = LeaseTicket {
            lease: Arc::new(LeaseHandle(lease.clone())),
            plan_reserve: reserve,
            overdraft_limit: plan.overdraft_limit,
            on_upstream_error: plan.on_upstream_error,
        };
        (ticket, charge)
    }

    /// How big the next lease of `key` is, in credits, before the balance caps it.
    fn target(&self, key: &Key, amount: u64) -> u64 {
        let rate = self
            .inner
            .rates
            .lock()
            .ok()
            .and_then(|r| r.get(key).copied());
        let wanted = match rate {
            Some(per_s) => per_s.saturating_mul(LEASE_HORIZON_MS) / 1_000,
            None => amount.saturating_mul(LEASE_FIRST_REQUESTS),
        };
        wanted.clamp(
            amount.saturating_mul(LEASE_MIN_REQUESTS),
            amount.saturating_mul(LEASE_MAX_REQUESTS),
        )
    }

    /// Takes a lease for `key`: the balance first (the lease is capped at a share of it),
    /// then one reserve. `None` when the balance is too low or the store fails.
    async fn open(&self, key: &Key, plan: &ReservePlan) -> Option<Arc<Lease>> {
        let redis = self.inner.store.redis_store()?;
        let balance = redis.balance(&plan.customer).await.ok()?;
        let available = balance.of(&plan.credit_type).map_or(0, |t| t.available);
        let cap = u64::try_from(available).unwrap_or(0) * LEASE_SHARE_PERCENT / 100;
        let size = self.target(key, plan.amount).min(cap);
        if size < plan.amount.saturating_mul(LEASE_MIN_REQUESTS) {
            return None;
        }
        let hold_id = format!("lease-{}", uuid::Uuid::new_v4().simple());
        let template = ReserveRequest {
            customer: plan.customer.clone(),
            hold_id: hold_id.clone(),
            credit_type: plan.credit_type.clone(),
            amount: size,
            ttl_ms: LEASE_TTL_MS,
            overdraft_limit: 0,
            force: false,
            request_id: hold_id.clone(),
            route: plan.route.clone(),
            feature: plan.feature.clone(),
            retain_ms: LEASE_TTL_MS,
            pricing_version: plan.pricing_version.clone(),
            occurred_at_ms: None,
        };
        match redis.reserve(&template).await {
            Ok(ReserveOutcome::Placed { .. }) => {}
            other => {
                debug!(customer = %plan.customer, outcome = ?other, "no lease taken");
                return None;
            }
        }
        let lease = Arc::new(Lease {
            key: key.clone(),
            remaining: AtomicU64::new(size),
            last_used_ms: AtomicU64::new(0),
            opened: Instant::now(),
            state: Mutex::new(LeaseState {
                hold_id,
                held: size,
                generation: 0,
                renewed: Instant::now(),
                retired: false,
                burns: Vec::new(),
                unsent: None,
                template: ReserveRequest {
                    force: true,
                    ..template
                },
            }),
        });
        self.inner.in_flight.enter();
        if let Ok(mut all) = self.inner.all.lock() {
            all.push(lease.clone());
        }
        if let Ok(mut current) = self.inner.current.lock()
            && let Some(old) = current.insert(key.clone(), lease.clone())
        {
            self.retire(&old);
        }
        debug!(customer = %plan.customer, credits = size, "lease taken");
        Some(lease)
    }

    fn retire(&self, lease: &Lease) {
        if let Ok(mut s) = lease.state.lock() {
            s.retired = true;
        }
        let lifetime_ms = (lease.opened.elapsed().as_millis() as u64).max(1);
        let held = lease.state.lock().map(|s| s.held).unwrap_or(0);
        let used = held.saturating_sub(lease.remaining.load(Ordering::Acquire));
        if let Ok(mut rates) = self.inner.rates.lock() {
            rates.insert(lease.key.clone(), used.saturating_mul(1_000) / lifetime_ms);
        }
    }

    /// A request admitted from a lease ended: its burn is queued for the next flush, or
    /// its credits go back to the lease (`Void`).
    pub fn finish(&self, ticket: LeaseTicket, end: HoldEnd, actual: Option<u64>) {
        let lease = &ticket.lease.0;
        let reserve = ticket.plan_reserve;
        if end == HoldEnd::Void {
            lease.remaining.fetch_add(reserve.amount, Ordering::AcqRel);
            return;
        }
        let settle = SettleRequest {
            customer: reserve.customer.clone(),
            hold_id: reserve.hold_id.clone(),
            actual: actual.unwrap_or(reserve.amount),
            overdraft_limit: ticket.overdraft_limit,
        };
        if let Ok(mut s) = lease.state.lock() {
            s.burns.push(LeaseBurn { reserve, settle });
        }
    }

    /// Flushes every lease every [`LEASE_FLUSH_MS`]; once a graceful shutdown's grace
    /// period begins (the listeners are closed, no request can take a lease any more),
    /// retires every lease so its unused credits go back, while the requests still in
    /// flight end (a live lease counts in flight, so the process waits for the return).
    pub async fn run(self, mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) {
        let mut tick = tokio::time::interval(Duration::from_millis(LEASE_FLUSH_MS));
        let mut stopping = false;
        loop {
            tick.tick().await;
            while let Ok(phase) = phases.try_recv() {
                stopping |= matches!(phase, ExecutionPhase::ShutdownGracePeriod);
            }
            if stopping {
                self.retire_all();
            }
            self.retire_idle();
            self.flush_all().await;
        }
    }

    fn retire_all(&self) {
        let leases: Vec<Arc<Lease>> = match self.inner.current.lock() {
            Ok(mut current) => current.drain().map(|(_, l)| l).collect(),
            Err(_) => return,
        };
        for lease in leases {
            self.retire(&lease);
        }
    }

    fn retire_idle(&self) {
        let idle: Vec<Arc<Lease>> = match self.inner.current.lock() {
            Ok(mut current) => {
                let idle_keys: Vec<Key> = current
                    .iter()
                    .filter(|(_, l)| {
                        let age = l.opened.elapsed().as_millis() as u64;
                        age.saturating_sub(l.last_used_ms.load(Ordering::Relaxed)) > LEASE_IDLE_MS
                            || l.remaining.load(Ordering::Acquire) == 0
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                idle_keys.iter().filter_map(|k| current.remove(k)).collect()
            }
            Err(_) => return,
        };
        for lease in idle {
            self.retire(&lease);
        }
    }

    async fn flush_all(&self) {
        let leases: Vec<Arc<Lease>> = match self.inner.all.lock() {
            Ok(all) => all.clone(),
            Err(_) => return,
        };
        let Some(redis) = self.inner.store.redis_store() else {
            return;
        };
        for lease in leases {
            if flush(&redis, &lease).await {
                self.inner.in_flight.leave();
                if let Ok(mut all) = self.inner.all.lock() {
                    all.retain(|l| !Arc::ptr_eq(l, &lease));
                }
            }
        }
    }
}

/// What one flush of a lease sends: `None` when there is nothing to do.
fn next_transfer(lease: &Lease, s: &mut LeaseState) -> Option<(LeaseTransfer, u64, u64)> {
    if let Some(unsent) = &s.unsent {
        return Some(unsent.clone());
    }
    let renew_due = s.renewed.elapsed() > Duration::from_millis(LEASE_TTL_MS / 3);
    if s.burns.is_empty() && !s.retired && !renew_due {
        return None;
    }
    let n = s.burns.len().min(LEASE_TRANSFER_BURNS_MAX);
    let burns: Vec<LeaseBurn> = s.burns.drain(..n).collect();
    let burned: u64 = burns.iter().map(|b| b.reserve.amount).sum();
    // A retired lease admits no more: its unused credits go back now.
    let returned = if s.retired {
        lease.remaining.swap(0, Ordering::AcqRel)
    } else {
        0
    };
    let rest = s.held.saturating_sub(burned).saturating_sub(returned);
    let generation = s.generation + 1;
    let next = (rest > 0).then(|| ReserveRequest {
        hold_id: format!("{}.{generation}", lease_base(&s.template.hold_id)),
        amount: rest,
        ..s.template.clone()
    });
    let transfer = LeaseTransfer {
        lease: HoldRef {
            customer: s.template.customer.clone(),
            hold_id: s.hold_id.clone(),
        },
        burns,
        next,
    };
    Some((transfer, rest, generation))
}

fn lease_base(hold_id: &str) -> &str {
    hold_id.split('.').next().unwrap_or(hold_id)
}

/// Flushes one lease; `true` when it is finished (retired, nothing held, nothing queued).
async fn flush(redis: &RedisStore, lease: &Lease) -> bool {
    let Some((transfer, rest, generation)) = lease
        .state
        .lock()
        .ok()
        .and_then(|mut s| next_transfer(lease, &mut s))
    else {
        return false;
    };
    let sent = tokio::time::timeout(
        Duration::from_millis(LEASE_STORE_TIMEOUT_MS),
        redis.transfer_lease(&transfer),
    )
    .await;
    let Ok(mut s) = lease.state.lock() else {
        return false;
    };
    match sent {
        Ok(Ok(outcome)) => {
            debug!(lease = %transfer.lease.hold_id, burns = transfer.burns.len(), rest, ?outcome.next, "lease flushed");
            s.unsent = None;
            s.held = rest;
            s.generation = generation;
            s.renewed = Instant::now();
            if let Some(next) = &transfer.next {
                s.hold_id = next.hold_id.clone();
            }
            s.retired && rest == 0 && s.burns.is_empty()
        }
        Ok(Err(e)) => {
            warn!(lease = %transfer.lease.hold_id, error = %e, "lease flush failed; retried unchanged");
            s.unsent = Some((transfer, rest, generation));
            false
        }
        Err(_) => {
            warn!(lease = %transfer.lease.hold_id, "lease flush timed out; retried unchanged");
            s.unsent = Some((transfer, rest, generation));
            false
        }
    }
}
