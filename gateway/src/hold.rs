//! The life of a request's hold, in one place: [`Holds::reserve_for_request`] places it
//! (the idempotent reserve loop) and [`Holds::settle_or_void`] ends it in the background,
//! off the request path, retrying while the store fails. In between, the renewal task
//! (`renewal`) keeps it alive however long the request runs; a settle that still finds it
//! expired burns it late, so a long request is never free.
//!
//! Pending → posted (settled) or voided; a hold neither settles nor voids only when the
//! store stays down past the last retry, and then it expires at its deadline and returns its
//! credits: a store outage can under-charge, never double-charge. Admission
//! ([`crate::admission`]) decides what to reserve; this module must not decide prices.

use std::sync::Arc;
use std::time::Duration;

use creditgate_config::UpstreamErrorPolicy;
use creditgate_protocol::{
    HoldRef, IdempotencyClaim, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};
use tracing::{debug, warn};

use crate::admission::{ReservePlan, store_failure_decision};
use crate::in_flight::InFlight;
use crate::metrics::{Metrics, Outcome};
use crate::responses::{Charge, Refusal};
use crate::store_client::{StoreClient, StoreFailure};

mod keyed;
mod renewal;

pub use renewal::{
    MAX_RENEWAL_MS, MAX_RENEWED_HOLDS, RENEW_AFTER_TTL_DIVISOR, RENEWAL_TICK_MS,
    RENEWALS_PER_TICK_MAX, RETRY_AFTER_TTL_DIVISOR,
};
use renewal::{RenewalGuard, Renewals};

/// How many holds one `Idempotency-Key` may use: a retry after a voided or expired attempt
/// is charged anew under the next hold id, up to this many attempts.
pub const MAX_IDEMPOTENT_ATTEMPTS: u32 = 5;

/// How many times a retry finding its first attempt's hold still pending waits for it to
/// settle before answering 409, and how long each wait is, in milliseconds: settles run
/// right after the response, so a client retrying at once usually finds it done in a few.
pub const IDEMPOTENT_PENDING_WAITS: u32 = 4;
/// See [`IDEMPOTENT_PENDING_WAITS`].
pub const IDEMPOTENT_PENDING_WAIT_MS: u64 = 25;

/// Delays before retrying a settle or void that failed, in milliseconds. After the last one
/// the hold is left to expire at its deadline, which returns its credits: a store outage
/// can under-charge, never double-charge.
pub const SETTLE_RETRY_DELAYS_MS: [u64; 4] = [100, 500, 2_000, 5_000];

/// A hold placed for one request, to settle or void once the response is known. (The
/// protocol's `PlacedHold` is what the store answers; this is the gateway's record of it.)
#[derive(Debug, Clone)]
pub struct RequestHold {
    hold_id: String,
    customer: String,
    credit_type: String,
    amount: u64,
    overdraft_limit: u64,
    settle_timeout_ms: u64,
    on_upstream_error: UpstreamErrorPolicy,
    /// The amount to settle when it differs from `amount`: read from the response for
    /// routes priced from it. `None` settles `amount`.
    actual: Option<u64>,
    /// Set when the reserve timed out: the hold may or may not exist (a late run of the
    /// script places it). Kept so that settling can place it if it never arrived: the
    /// request is then metered exactly once, by hold id.
    tentative: Option<ReserveRequest>,
    /// The request's `Idempotency-Key` record, so that a tentative hold placed late goes
    /// into the record like any other (a retry then finds it).
    claim: Option<IdempotencyClaim>,
    /// Keeps the hold alive while the request is in flight; dropping the last copy of
    /// this record (the request ended without a settle) stops the renewals.
    renewal: Option<Arc<RenewalGuard>>,
}

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// Burn the credits used (posted).
    Settle,
    /// Return every credit held (voided).
    Void,
}

impl HoldEnd {
    /// The store operation, as metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Settle => "settle",
            Self::Void => "void",
        }
    }
}

impl RequestHold {
    fn new(plan: &ReservePlan, hold_id: String, tentative: Option<ReserveRequest>) -> Self {
        Self {
            hold_id,
            customer: plan.customer.clone(),
            credit_type: plan.credit_type.clone(),
            amount: plan.amount,
            overdraft_limit: plan.overdraft_limit,
            settle_timeout_ms: plan.settle_timeout_ms,
            on_upstream_error: plan.on_upstream_error,
            actual: None,
            tentative,
            claim: plan.idempotency.clone(),
            renewal: None,
        }
    }

    /// The hold's id in the store.
    pub fn hold_id(&self) -> &str {
        &self.hold_id
    }

    /// Settles `amount` instead of the amount held (read from the response).
    pub fn settle_amount(&mut self, amount: u64) {
        self.actual = Some(amount);
    }

    /// Whether the hold settles or voids, given the upstream's last status (`None`: the
    /// upstream never answered, a connect error or timeout, so there is nothing to bill).
    /// A `101 Switching Protocols` settles: the tunnel is the upstream's work. Only an
    /// interim answer (`100`, `103`) voids: the upstream never gave its answer.
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

/// What reserving decided for a request that goes on to the upstream.
#[derive(Debug, Default)]
pub struct Reserved {
    /// The hold to settle or void in `logging`; `None` when nothing is held (an idempotent
    /// replay, or the store failed and the route fails open).
    pub hold: Option<RequestHold>,
    /// The response's charge headers; `None` when the charge is not known.
    pub charge: Option<Charge>,
    /// Which uncharged replay of an already charged request this is (from 1), for the
    /// `x-creditgate-replay` header; `None` for every other request.
    pub replay: Option<u32>,
}

/// Where ending a hold stands after one try.
#[derive(Debug, PartialEq, Eq)]
enum Resolution {
    /// Settled, voided, or found resolved already: nothing more to do.
    Done,
    /// A tentative hold to void is not in the store (yet): its late reserve may still come.
    NotPlacedYet,
}

/// The store, metrics and in-flight count a hold's life needs; cheap to clone into a
/// background settle.
#[derive(Clone)]
pub struct Holds {
    store: Arc<StoreClient>,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    renewals: Arc<Renewals>,
}

impl Holds {
    /// Holds kept in `store`, counted in `metrics`; background settles count in
    /// `in_flight`.
    pub fn new(store: Arc<StoreClient>, metrics: Arc<Metrics>, in_flight: InFlight) -> Self {
        Self {
            renewals: Renewals::new(store.clone(), metrics.clone()),
            store,
            metrics,
            in_flight,
        }
    }

    /// Keeps `hold` alive while its request is in flight: renewed a third of the hold TTL
    /// after it was placed and after every renewal, until it is settled or voided.
    fn keep_alive(&self, plan: &ReservePlan, mut hold: RequestHold) -> RequestHold {
        self.renewals.start(
            &plan.customer,
            &hold.hold_id,
            plan.hold_ttl_ms,
            plan.settle_timeout_ms,
            hold.tentative.is_some(),
        );
        hold.renewal = Some(Arc::new(RenewalGuard::new(&self.renewals, &hold.hold_id)));
        hold
    }

    /// How many holds this gateway keeps alive now.
    pub fn kept_alive(&self) -> usize {
        self.renewals.len()
    }

    /// Reserves the plan's credits: one hold per request. A request with an
    /// `Idempotency-Key` goes through the key's record (`Holds::reserve_keyed`): a retry
    /// of it finds the first attempt's hold and is not charged twice. `Err` is the answer
    /// to the client: not enough credits (402), an idempotency refusal (409, 422), or the
    /// store failing on a route that fails closed (503).
    pub async fn reserve_for_request(&self, plan: &ReservePlan) -> Result<Reserved, Refusal> {
        if let Some(claim) = &plan.idempotency {
            return self.reserve_keyed(plan, claim).await;
        }
        let request = plan.reserve_request(1);
        let outcome = self
            .store
            .call(
                "reserve",
                plan.store_timeout_ms,
                self.store.store().reserve(&request),
            )
            .await;
        match outcome {
            Ok(ReserveOutcome::Placed {
                hold,
                available_after,
                ..
            }) => Ok(self.placed(plan, request.hold_id, hold.over_limit, available_after)),
            // A hold id of this request's own id exists only if another request chose it.
            Ok(ReserveOutcome::Replay { .. } | ReserveOutcome::Conflict { .. }) => {
                self.metrics
                    .decision(&plan.route, Outcome::IdempotencyRejected);
                Err(Refusal::idempotency_conflict())
            }
            Ok(ReserveOutcome::Insufficient { available, .. }) => {
                Err(self.insufficient(plan, available))
            }
            Err(failure) => self.reserve_failed(plan, request, &failure),
        }
    }

    /// The hold is placed (in shadow mode possibly over the limit): proxy, settle later.
    fn placed(
        &self,
        plan: &ReservePlan,
        hold_id: String,
        over_limit: bool,
        available_after: i64,
    ) -> Reserved {
        let decision = if over_limit {
            Outcome::WouldBlock
        } else {
            Outcome::Allowed
        };
        self.metrics.decision(&plan.route, decision);
        self.metrics.reserved(&plan.credit_type, plan.amount);
        self.metrics.holds_in_flight(1);
        debug!(request_id = %plan.request_id, customer = %plan.customer, route = %plan.route,
            hold_id = %hold_id, amount = plan.amount, available_after, decision = decision.as_str(), "reserved");
        Reserved {
            replay: None,
            hold: Some(self.keep_alive(plan, RequestHold::new(plan, hold_id, None))),
            charge: Some(Charge {
                credit_type: plan.credit_type.clone(),
                charged: plan.amount,
                remaining: Some(available_after),
            }),
        }
    }

    /// Not enough credits in enforce mode: the 402 answer.
    fn insufficient(&self, plan: &ReservePlan, available: i64) -> Refusal {
        self.metrics.decision(&plan.route, Outcome::Blocked);
        debug!(request_id = %plan.request_id, customer = %plan.customer, route = %plan.route,
            amount = plan.amount, available, "blocked: insufficient credits");
        Refusal::insufficient(
            &plan.credit_type,
            plan.amount,
            available,
            plan.top_up_url.as_deref(),
        )
    }

    /// The reserve call failed: the route's failure policy decides. A reserve that timed
    /// out may still run once the store catches up and place the hold: it is settled after
    /// the response if the request goes through (metering what was admitted), voided now
    /// if it does not.
    fn reserve_failed(
        &self,
        plan: &ReservePlan,
        request: ReserveRequest,
        failure: &StoreFailure,
    ) -> Result<Reserved, Refusal> {
        let decision = self.apply_failure_policy(plan, "reserve", failure);
        if !failure.may_have_run() {
            return decision.map(|()| Reserved::default());
        }
        let hold_id = request.hold_id.clone();
        let tentative = ReserveRequest {
            force: true,
            ..request
        };
        let hold = self.keep_alive(plan, RequestHold::new(plan, hold_id, Some(tentative)));
        self.metrics.holds_in_flight(1);
        match decision {
            Ok(()) => Ok(Reserved {
                hold: Some(hold),
                charge: None,
                replay: None,
            }),
            Err(refusal) => {
                self.settle_or_void(hold, HoldEnd::Void, &plan.request_id);
                Err(refusal)
            }
        }
    }

    /// Logs a failed store call and counts the route's decision; `Ok` to fail open.
    fn apply_failure_policy(
        &self,
        plan: &ReservePlan,
        op: &str,
        failure: &StoreFailure,
    ) -> Result<(), Refusal> {
        warn!(route = %plan.route, op, error = %failure, policy = plan.failure_policy.as_str(), "credit store call failed");
        let (outcome, decision) = store_failure_decision(plan.failure_policy, failure);
        self.metrics.decision(&plan.route, outcome);
        decision
    }

    /// Settles or voids `hold` in the background, off the request path, so the client's
    /// next request on the connection does not wait for the store. It counts as in flight
    /// until done, so a graceful shutdown waits for it.
    pub fn settle_or_void(&self, hold: RequestHold, end: HoldEnd, request_id: &str) {
        // The request is over: its hold needs no more renewals. Should the settle find it
        // expired all the same (a store outage outlasted the hold), it burns late.
        self.renewals.stop(&hold.hold_id);
        self.in_flight.enter();
        let holds = self.clone();
        let request_id = request_id.to_string();
        tokio::spawn(async move {
            holds
                .settle_or_void_with_retries(&hold, end, &request_id)
                .await;
            holds.in_flight.leave();
        });
    }

    /// Tries at once, then after each retry delay while the store fails (or, voiding a
    /// tentative hold, while it is not there yet). After the last try a hold left pending
    /// expires at its deadline and returns its credits.
    async fn settle_or_void_with_retries(
        &self,
        hold: &RequestHold,
        end: HoldEnd,
        request_id: &str,
    ) {
        let delays = std::iter::once(0).chain(SETTLE_RETRY_DELAYS_MS);
        for delay in delays {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            match self.settle_or_void_once(hold, end, request_id).await {
                Ok(Resolution::Done) => return,
                Ok(Resolution::NotPlacedYet) => {}
                Err(failure) => {
                    warn!(request_id, hold_id = %hold.hold_id, error = %failure, "resolving hold failed")
                }
            }
        }
        if hold.tentative.is_none() {
            warn!(request_id, hold_id = %hold.hold_id, customer = %hold.customer,
                "giving up resolving hold; it expires at its deadline and returns its credits");
        }
        self.metrics.holds_in_flight(-1);
    }

    /// Settles or voids `hold` once; `Err` when a store call failed.
    async fn settle_or_void_once(
        &self,
        hold: &RequestHold,
        end: HoldEnd,
        request_id: &str,
    ) -> Result<Resolution, StoreFailure> {
        let store = &self.store;
        let timeout = hold.settle_timeout_ms;
        let settle = SettleRequest {
            customer: hold.customer.clone(),
            hold_id: hold.hold_id.clone(),
            actual: hold.actual.unwrap_or(hold.amount),
            overdraft_limit: hold.overdraft_limit,
        };
        let mut outcome = match end {
            HoldEnd::Settle => {
                store
                    .call("settle", timeout, store.store().settle(&settle))
                    .await?
            }
            HoldEnd::Void => {
                let hold_ref = HoldRef {
                    customer: hold.customer.clone(),
                    hold_id: hold.hold_id.clone(),
                };
                store
                    .call("void", timeout, store.store().void(&hold_ref))
                    .await?
            }
        };
        if let (ResolveOutcome::Unknown { .. }, Some(reserve)) = (&outcome, &hold.tentative) {
            if end == HoldEnd::Void {
                return Ok(Resolution::NotPlacedYet);
            }
            // The timed-out reserve never arrived: place the hold now and settle it, so the
            // request admitted while failing open is metered. Should the late reserve still
            // arrive, it finds this hold and changes nothing.
            match &hold.claim {
                Some(claim) => {
                    let on = store.store();
                    let keyed = on.reserve_keyed(reserve, claim);
                    store.call("reserve", timeout, keyed).await?;
                }
                None => {
                    store
                        .call("reserve", timeout, store.store().reserve(reserve))
                        .await?;
                }
            }
            outcome = store
                .call("settle", timeout, store.store().settle(&settle))
                .await?;
        }
        self.record_resolution(hold, end, &outcome, request_id);
        Ok(Resolution::Done)
    }

    /// Counts and logs how a hold ended.
    fn record_resolution(
        &self,
        hold: &RequestHold,
        end: HoldEnd,
        outcome: &ResolveOutcome,
        request_id: &str,
    ) {
        match outcome {
            ResolveOutcome::Posted {
                posted,
                returned,
                shortfall,
                ..
            } => {
                self.metrics.resolved(&hold.credit_type, *posted, *returned);
                if *shortfall > 0 {
                    // The ledger keeps it too: the sidecar's writer records an `overage`
                    // entry with this request id, so finance can bill or write it off.
                    self.metrics.shortfall(&hold.credit_type, *shortfall);
                    warn!(request_id, hold_id = %hold.hold_id, customer = %hold.customer,
                        shortfall, posted, "settled above what the balance and overdraft allow; shortfall recorded as overage");
                }
            }
            ResolveOutcome::PostedLate {
                posted, shortfall, ..
            } => {
                // The hold had expired (renewals failed for its whole TTL, or the request
                // outlived `MAX_RENEWAL_MS`): the request is charged all the same, and the
                // ledger flags the burn as late.
                self.metrics.resolved(&hold.credit_type, *posted, 0);
                self.metrics.late_burn(&hold.credit_type);
                if *shortfall > 0 {
                    self.metrics.shortfall(&hold.credit_type, *shortfall);
                }
                warn!(request_id, hold_id = %hold.hold_id, customer = %hold.customer,
                    posted, shortfall, "hold had expired before its settle; burned late");
            }
            ResolveOutcome::Voided { returned, .. } => {
                self.metrics.resolved(&hold.credit_type, 0, *returned)
            }
            other => {
                warn!(request_id, hold_id = %hold.hold_id, outcome = ?other, "hold was already resolved")
            }
        }
        debug!(request_id, hold_id = %hold.hold_id, customer = %hold.customer, op = end.as_str(), outcome = ?outcome, "hold resolved");
        self.metrics.holds_in_flight(-1);
    }
}

#[cfg(test)]
mod tests {
    use creditgate_config::FailurePolicy;
    use creditgate_protocol::{
        CreditStore, GrantRequest, GrantSource, HoldRef, IdempotencyClaim, Keyspace, MemoryStore,
    };

    use super::*;

    /// A plan; an idempotent one uses `hold_id` as its key's record id and holds under
    /// `<record>.<request id>`, as admission derives them.
    fn plan(hold_id: &str, amount: u64, idempotent: bool) -> ReservePlan {
        let claim = IdempotencyClaim {
            record_id: hold_id.into(),
            fingerprint: "fp1".into(),
            supersedes: None,
            replay_max: 3,
            replay_window_ms: 600_000,
        };
        ReservePlan {
            customer: "demo".into(),
            base_hold_id: match idempotent {
                true => format!("{hold_id}.r1"),
                false => hold_id.into(),
            },
            idempotent,
            idempotency: idempotent.then_some(claim),
            credit_type: "api".into(),
            amount,
            overdraft_limit: 0,
            shadow: false,
            hold_ttl_ms: 60_000,
            request_id: "r1".into(),
            route: "GET /search".into(),
            feature: "search".into(),
            pricing_version: "0-test".into(),
            store_timeout_ms: 1_000,
            settle_timeout_ms: 1_000,
            failure_policy: FailurePolicy::FailClosed,
            on_upstream_error: UpstreamErrorPolicy::Void,
            top_up_url: None,
        }
    }

    async fn holds_with(amount: u64) -> (Holds, Arc<MemoryStore>) {
        let memory = Arc::new(MemoryStore::new(Keyspace::new("cg", 4)));
        memory
            .grant(&GrantRequest {
                customer: "demo".into(),
                grant_id: "g1".into(),
                credit_type: "api".into(),
                amount,
                priority: 0,
                expires_at_ms: None,
                cost_basis: 0,
                source: GrantSource::Adjustment,
                actor: "test".into(),
                reason: "test".into(),
            })
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(StoreClient::embedded(memory.clone(), metrics.clone()));
        (Holds::new(store, metrics, InFlight::default()), memory)
    }

    async fn available(memory: &MemoryStore) -> i64 {
        memory
            .balance("demo")
            .await
            .unwrap()
            .of("api")
            .unwrap()
            .available
    }

    #[tokio::test]
    async fn a_reserved_hold_settles_what_was_used() {
        let (holds, memory) = holds_with(10).await;
        let reserved = holds
            .reserve_for_request(&plan("h-r1", 4, false))
            .await
            .unwrap();
        assert_eq!(reserved.charge.as_ref().unwrap().remaining, Some(6));
        let mut hold = reserved.hold.expect("held");
        assert_eq!(hold.end_for(Some(200)), HoldEnd::Settle);
        hold.settle_amount(3);
        holds
            .settle_or_void_with_retries(&hold, HoldEnd::Settle, "r1")
            .await;
        assert_eq!(available(&memory).await, 7);
    }

    #[tokio::test]
    async fn an_idempotent_retry_of_a_posted_request_is_replayed_uncharged_three_times_then_409() {
        let (holds, memory) = holds_with(10).await;
        let plan = plan("idem-x", 4, true);
        let hold = holds
            .reserve_for_request(&plan)
            .await
            .unwrap()
            .hold
            .unwrap();
        holds
            .settle_or_void_with_retries(&hold, HoldEnd::Settle, "r1")
            .await;
        for n in 1..=3 {
            let replay = holds
                .reserve_for_request(&retry(&plan, &format!("r{}", n + 1)))
                .await
                .unwrap();
            assert!(replay.hold.is_none());
            assert_eq!(replay.charge, Some(Charge::nothing("api")));
            assert_eq!(replay.replay, Some(n));
        }
        let refusal = holds
            .reserve_for_request(&retry(&plan, "r5"))
            .await
            .unwrap_err();
        assert_eq!(refusal.status, 409);
        assert_eq!(refusal.body["error"], "idempotency_replays_exhausted");
        assert_eq!(refusal.body["original_request_id"], "r1");
        assert_eq!(available(&memory).await, 6);
    }

    /// The same plan as a later request (another request id) would make it.
    fn retry(plan: &ReservePlan, request_id: &str) -> ReservePlan {
        let record = &plan.idempotency.as_ref().expect("keyed").record_id;
        ReservePlan {
            request_id: request_id.into(),
            base_hold_id: format!("{record}.{request_id}"),
            ..plan.clone()
        }
    }

    #[tokio::test]
    async fn a_retry_after_a_voided_attempt_is_charged_under_a_new_hold_id() {
        let (holds, memory) = holds_with(10).await;
        let plan = plan("idem-y", 4, true);
        let first = holds
            .reserve_for_request(&plan)
            .await
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(first.end_for(None), HoldEnd::Void);
        holds
            .settle_or_void_with_retries(&first, HoldEnd::Void, "r1")
            .await;
        let second = holds
            .reserve_for_request(&retry(&plan, "r2"))
            .await
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(second.hold_id(), "idem-y.r2.2");
        assert_eq!(available(&memory).await, 6);
        let outcome = memory
            .void(&HoldRef {
                customer: "demo".into(),
                hold_id: "idem-y.r2.2".into(),
            })
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            ResolveOutcome::Voided { returned: 4, .. }
        ));
    }

    #[tokio::test]
    async fn too_few_credits_is_a_402_and_a_conflicting_key_a_422() {
        let (holds, _) = holds_with(3).await;
        let refusal = holds
            .reserve_for_request(&plan("h-r1", 4, false))
            .await
            .unwrap_err();
        assert_eq!(refusal.status, 402);
        let first = plan("idem-z", 2, true);
        holds.reserve_for_request(&first).await.unwrap();
        let refusal = holds
            .reserve_for_request(&retry(&plan("idem-z", 1, true), "r2"))
            .await
            .unwrap_err();
        assert_eq!(refusal.status, 422);
        let mut other = retry(&first, "r3");
        other.idempotency.as_mut().unwrap().fingerprint = "fp2".into();
        let refusal = holds.reserve_for_request(&other).await.unwrap_err();
        assert_eq!(refusal.status, 422);
        assert_eq!(refusal.body["error"], "idempotency_key_reused");
        assert_eq!(refusal.body["original_request_id"], "r1");
    }

    fn hold_ref(hold: &RequestHold) -> HoldRef {
        HoldRef {
            customer: "demo".into(),
            hold_id: hold.hold_id().into(),
        }
    }

    #[tokio::test]
    async fn an_in_flight_hold_is_kept_alive_past_its_ttl_and_settles_as_usual() {
        let (holds, memory) = holds_with(10).await;
        let mut plan = plan("long-1", 4, false);
        plan.hold_ttl_ms = 1_000;
        let hold = holds
            .reserve_for_request(&plan)
            .await
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(holds.kept_alive(), 1);
        // The request runs well past its hold's TTL; the sweeper keeps finding it not due.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let swept = memory.expire_hold(&hold_ref(&hold)).await.unwrap();
            assert!(matches!(swept, ResolveOutcome::NotDue { .. }), "{swept:?}");
        }
        holds.settle_or_void(hold.clone(), HoldEnd::Settle, "r1");
        assert_eq!(holds.kept_alive(), 0);
        for _ in 0..100 {
            if holds.in_flight.count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(available(&memory).await, 6);
        let metrics = String::from_utf8(holds.metrics.render()).unwrap();
        assert!(metrics.contains("creditgate_hold_renewals_total{outcome=\"extended\"}"));
        assert!(
            !metrics.contains("creditgate_late_burns_total{"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_settle_that_finds_its_hold_expired_burns_late_exactly_once() {
        let (holds, memory) = holds_with(10).await;
        let mut plan = plan("long-2", 4, false);
        plan.hold_ttl_ms = 1_000;
        let hold = holds
            .reserve_for_request(&plan)
            .await
            .unwrap()
            .hold
            .unwrap();
        // Renewals stop (as in a store outage longer than the TTL) and the sweeper
        // expires the hold, returning its credits.
        holds.renewals.stop(hold.hold_id());
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        let swept = memory.expire_hold(&hold_ref(&hold)).await.unwrap();
        assert!(matches!(swept, ResolveOutcome::Expired { .. }), "{swept:?}");
        assert_eq!(available(&memory).await, 10);
        // The request still ends with a settle: charged all the same, and only once.
        holds
            .settle_or_void_with_retries(&hold, HoldEnd::Settle, "r1")
            .await;
        holds
            .settle_or_void_with_retries(&hold, HoldEnd::Settle, "r1")
            .await;
        assert_eq!(available(&memory).await, 6);
        let metrics = String::from_utf8(holds.metrics.render()).unwrap();
        assert!(
            metrics.contains("creditgate_late_burns_total{credit_type=\"api\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn upstream_errors_void_or_settle_as_the_route_says() {
        let mut hold = RequestHold::new(&plan("h", 1, false), "h".into(), None);
        assert_eq!(hold.end_for(Some(503)), HoldEnd::Void);
        assert_eq!(hold.end_for(Some(404)), HoldEnd::Settle);
        hold.on_upstream_error = UpstreamErrorPolicy::Settle;
        assert_eq!(hold.end_for(Some(503)), HoldEnd::Settle);
        assert_eq!(hold.end_for(None), HoldEnd::Void);
    }

    #[test]
    fn an_upgrade_settles_and_an_interim_answer_alone_voids() {
        let hold = RequestHold::new(&plan("h", 1, false), "h".into(), None);
        assert_eq!(hold.end_for(Some(101)), HoldEnd::Settle);
        assert_eq!(hold.end_for(Some(100)), HoldEnd::Void);
        assert_eq!(hold.end_for(Some(103)), HoldEnd::Void);
        assert_eq!(hold.end_for(Some(200)), HoldEnd::Settle);
    }
}
