//! Keeps the holds of in-flight requests alive: one background task per gateway renews
//! every registered hold (the `extend` script) when a third of its TTL has passed, so a long
//! stream or a slow reader never outlives its hold. The hold TTL then only bounds what a
//! crashed gateway leaves behind: nothing renews its holds, and the sidecar's sweeper
//! expires them at their deadline.
//!
//! A renewal that fails is logged, counted and tried again sooner; one that finds the hold
//! expired stops (the settle then burns it late, see `settle.lua`). This module must not
//! settle, void or price anything: [`super::Holds`] registers a hold when it is placed and
//! stops renewing it when the hold is settled or voided (or its request is dropped).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use creditgate_protocol::{ExtendOutcome, ExtendRequest, ResolveOutcome};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::store_client::{StoreClient, StoreFailure};

/// A hold is renewed when `ttl / RENEW_AFTER_TTL_DIVISOR` has passed since it was placed or
/// last renewed: a third leaves two thirds of the TTL for renewals that fail to be retried.
pub const RENEW_AFTER_TTL_DIVISOR: u64 = 3;

/// After a failed renewal the next try comes `ttl / RETRY_AFTER_TTL_DIVISOR` later: four
/// more tries before the deadline a third of the TTL away from the last success.
pub const RETRY_AFTER_TTL_DIVISOR: u64 = 6;

/// How often the renewal task looks for due holds, in milliseconds. The shortest TTL the
/// config allows is 1 000 ms, renewed after 333 ms: a tick of 100 ms keeps it well ahead.
pub const RENEWAL_TICK_MS: u64 = 100;

/// Most holds one gateway keeps alive at once. Past it a new hold is not renewed (logged
/// and counted as `not_tracked`): it may expire, and its settle then burns it late.
pub const MAX_RENEWED_HOLDS: usize = 100_000;

/// Most renewals sent in one tick; the rest wait for the next tick. Bounds the store calls
/// in flight at once when many holds fall due together.
pub const RENEWALS_PER_TICK_MAX: usize = 1_000;

/// Longest time a hold is kept alive, in milliseconds (24 hours): a request that never
/// ends (or a hold whose request was lost without being dropped) cannot pin credits for
/// ever. Past it the hold expires, and a settle that still comes burns late.
pub const MAX_RENEWAL_MS: u64 = 24 * 3_600_000;

/// One hold kept alive.
#[derive(Debug, Clone)]
struct Entry {
    customer: String,
    ttl_ms: u64,
    timeout_ms: u64,
    /// A reserve that timed out: the hold may not exist yet, so `unknown` keeps renewing.
    tentative: bool,
    due: Instant,
    until: Instant,
}

/// Every hold kept alive, by hold id, and the same ordered by when each falls due.
#[derive(Debug, Default)]
struct Schedule {
    entries: HashMap<String, Entry>,
    due: BTreeSet<(Instant, String)>,
}

impl Schedule {
    fn remove(&mut self, hold_id: &str) -> Option<Entry> {
        let entry = self.entries.remove(hold_id)?;
        self.due.remove(&(entry.due, hold_id.to_string()));
        Some(entry)
    }

    /// Sets when a hold still kept alive falls due next.
    fn reschedule(&mut self, hold_id: &str, due: Instant) {
        if let Some(entry) = self.entries.get_mut(hold_id) {
            self.due.remove(&(entry.due, hold_id.to_string()));
            entry.due = due;
            self.due.insert((due, hold_id.to_string()));
        }
    }

    /// Up to `max` holds due at `now`, taken off the due order (kept in `entries`) so two
    /// ticks never renew one hold at once.
    fn take_due(&mut self, now: Instant, max: usize) -> Vec<(String, Entry)> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some((due, hold_id)) = self.due.first().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            self.due.pop_first();
            if let Some(entry) = self.entries.get(&hold_id) {
                batch.push((hold_id, entry.clone()));
            }
        }
        batch
    }
}

/// Stops renewing a hold when the last copy of its request's record is dropped, so a
/// request that ends without a settle (it should not happen; `logging` runs for every
/// request) never keeps its hold alive for ever.
#[derive(Debug)]
pub(crate) struct RenewalGuard {
    renewals: Weak<Renewals>,
    hold_id: String,
}

impl RenewalGuard {
    pub(crate) fn new(renewals: &Arc<Renewals>, hold_id: &str) -> Self {
        Self {
            renewals: Arc::downgrade(renewals),
            hold_id: hold_id.to_string(),
        }
    }
}

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        if let Some(renewals) = self.renewals.upgrade() {
            renewals.stop(&self.hold_id);
        }
    }
}

/// What one renewal found, the `outcome` label of `creditgate_hold_renewals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewed {
    /// The deadline moved.
    Extended,
    /// The store call failed; try again sooner.
    Failed,
    /// The hold expired before it could be renewed.
    Expired,
    /// Already settled or voided.
    Resolved,
    /// Not in the store.
    Unknown,
}

impl Renewed {
    fn as_str(self) -> &'static str {
        match self {
            Self::Extended => "extended",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Resolved => "resolved",
            Self::Unknown => "unknown",
        }
    }

    fn of(outcome: &ExtendOutcome) -> Self {
        match outcome {
            ExtendOutcome::Extended { .. } => Self::Extended,
            ExtendOutcome::NotPending(ResolveOutcome::AlreadyExpired { .. }) => Self::Expired,
            ExtendOutcome::NotPending(ResolveOutcome::Unknown { .. }) => Self::Unknown,
            ExtendOutcome::NotPending(_) => Self::Resolved,
        }
    }
}

/// The holds this gateway keeps alive, and the one task that renews them.
pub(crate) struct Renewals {
    schedule: Mutex<Schedule>,
    store: Arc<StoreClient>,
    metrics: Arc<Metrics>,
    task_started: AtomicBool,
}

impl Renewals {
    /// No hold kept alive yet; the renewal task starts with the first hold.
    pub(crate) fn new(store: Arc<StoreClient>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            schedule: Mutex::new(Schedule::default()),
            store,
            metrics,
            task_started: AtomicBool::new(false),
        })
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // A panic while holding the lock leaves the schedule consistent (each change is
        // one insert or remove), so a poisoned lock is still usable.
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `hold_id` alive from now on: renewed every `ttl_ms / 3` with calls of at most
    /// `timeout_ms`, until [`Self::stop`].
    pub(crate) fn start(
        self: &Arc<Self>,
        customer: &str,
        hold_id: &str,
        ttl_ms: u64,
        timeout_ms: u64,
        tentative: bool,
    ) {
        let now = Instant::now();
        let entry = Entry {
            customer: customer.to_string(),
            ttl_ms,
            timeout_ms,
            tentative,
            due: now + Duration::from_millis(ttl_ms / RENEW_AFTER_TTL_DIVISOR),
            until: now + Duration::from_millis(MAX_RENEWAL_MS),
        };
        {
            let mut s = self.schedule();
            if s.entries.len() >= MAX_RENEWED_HOLDS {
                drop(s);
                self.metrics.hold_renewal("not_tracked");
                warn!(
                    hold_id,
                    customer, "too many holds kept alive; this one may expire and then burns late"
                );
                return;
            }
            s.remove(hold_id);
            s.due.insert((entry.due, hold_id.to_string()));
            s.entries.insert(hold_id.to_string(), entry);
        }
        self.ensure_task();
    }

    /// Stops keeping `hold_id` alive (it is being settled or voided, or its request ended).
    pub(crate) fn stop(&self, hold_id: &str) {
        self.schedule().remove(hold_id);
    }

    /// How many holds are kept alive.
    pub(crate) fn len(&self) -> usize {
        self.schedule().entries.len()
    }

    /// Starts the renewal task once, on the runtime of the first request that holds
    /// credits (the gateway's runtimes exist only once it serves). It ends when the last
    /// reference to these renewals is dropped.
    fn ensure_task(self: &Arc<Self>) {
        if self.task_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.task_started.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(RENEWAL_TICK_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(renewals) = weak.upgrade() else {
                    return;
                };
                renewals.renew_due().await;
            }
        });
    }

    /// Renews every hold due now (at most [`RENEWALS_PER_TICK_MAX`]), concurrently.
    pub(crate) async fn renew_due(&self) {
        let now = Instant::now();
        let batch = self.schedule().take_due(now, RENEWALS_PER_TICK_MAX);
        let calls = batch.into_iter().map(|(hold_id, entry)| async move {
            let outcome = if now >= entry.until {
                None
            } else {
                Some(self.extend(&hold_id, &entry).await)
            };
            (hold_id, entry, outcome)
        });
        for (hold_id, entry, outcome) in futures_util::future::join_all(calls).await {
            match outcome {
                Some(outcome) => self.record(&hold_id, &entry, outcome),
                None => {
                    warn!(hold_id, customer = %entry.customer, "kept alive for the longest time allowed; left to expire");
                    self.stop(&hold_id);
                }
            }
        }
    }

    async fn extend(&self, hold_id: &str, entry: &Entry) -> Result<ExtendOutcome, StoreFailure> {
        let req = ExtendRequest {
            customer: entry.customer.clone(),
            hold_id: hold_id.to_string(),
            ttl_ms: entry.ttl_ms,
        };
        let store = self.store.store();
        self.store
            .call("extend", entry.timeout_ms, store.extend(&req))
            .await
    }

    /// Counts one renewal and decides whether and when the hold is renewed next.
    fn record(&self, hold_id: &str, entry: &Entry, outcome: Result<ExtendOutcome, StoreFailure>) {
        let renewed = match &outcome {
            Ok(o) => Renewed::of(o),
            Err(_) => Renewed::Failed,
        };
        self.metrics.hold_renewal(renewed.as_str());
        let after_ms = match renewed {
            Renewed::Extended => entry.ttl_ms / RENEW_AFTER_TTL_DIVISOR,
            Renewed::Failed => {
                if let Err(failure) = &outcome {
                    warn!(hold_id, customer = %entry.customer, error = %failure,
                        "renewing an in-flight hold failed; trying again sooner");
                }
                entry.ttl_ms / RETRY_AFTER_TTL_DIVISOR
            }
            Renewed::Unknown if entry.tentative => entry.ttl_ms / RETRY_AFTER_TTL_DIVISOR,
            Renewed::Expired => {
                warn!(hold_id, customer = %entry.customer,
                    "an in-flight hold expired before it could be renewed; its settle burns late");
                self.stop(hold_id);
                return;
            }
            Renewed::Resolved | Renewed::Unknown => {
                debug!(hold_id, outcome = ?outcome, "hold no longer pending; renewals stop");
                self.stop(hold_id);
                return;
            }
        };
        let due = Instant::now() + Duration::from_millis(after_ms.max(1));
        self.schedule().reschedule(hold_id, due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(due: Instant) -> Entry {
        Entry {
            customer: "acme".into(),
            ttl_ms: 3_000,
            timeout_ms: 50,
            tentative: false,
            due,
            until: due + Duration::from_secs(60),
        }
    }

    #[test]
    fn the_schedule_hands_out_due_holds_once_in_deadline_order() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        for (id, ms) in [("late", 300), ("early", 100), ("later", 5_000)] {
            let e = entry(t0 + Duration::from_millis(ms));
            s.due.insert((e.due, id.to_string()));
            s.entries.insert(id.to_string(), e);
        }
        let batch = s.take_due(t0 + Duration::from_millis(400), 10);
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["early", "late"]);
        // Taken holds are not handed out again until rescheduled.
        assert!(s.take_due(t0 + Duration::from_millis(400), 10).is_empty());
        s.reschedule("early", t0 + Duration::from_millis(450));
        assert_eq!(s.take_due(t0 + Duration::from_millis(500), 10).len(), 1);
        // A stopped hold is never rescheduled.
        assert!(s.remove("late").is_some());
        s.reschedule("late", t0);
        assert!(s.take_due(t0 + Duration::from_millis(500), 10).is_empty());
        assert_eq!(s.entries.len(), 2);
    }

    #[test]
    fn a_batch_is_bounded() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        for i in 0..5 {
            let e = entry(t0);
            s.due.insert((e.due, format!("h{i}")));
            s.entries.insert(format!("h{i}"), e);
        }
        assert_eq!(s.take_due(t0, 3).len(), 3);
        assert_eq!(s.take_due(t0, 3).len(), 2);
    }
}
