//! The reserve of a request with an `Idempotency-Key`, through the key's record in the
//! store: the first request is charged; the identical request again is served uncharged
//! while the route's replay allowance lasts (`x-creditgate-replay`), then refused (409,
//! naming the charged request); another request under the key is refused (422); an
//! attempt that ended uncharged (voided, expired) is superseded by a new hold.
//!
//! The store decides atomically (the record, its fingerprint and its replay count live in
//! the same script call as the hold); this loop only follows its answers, a bounded
//! number of times. It must not count replays itself.

use std::time::Duration;

use creditgate_protocol::{HoldState, IdempotencyClaim, KeyedReserveOutcome, ReserveOutcome};
use tracing::debug;

use super::{
    Holds, IDEMPOTENT_PENDING_WAIT_MS, IDEMPOTENT_PENDING_WAITS, MAX_IDEMPOTENT_ATTEMPTS, Reserved,
};
use crate::admission::ReservePlan;
use crate::metrics::Outcome;
use crate::responses::{Charge, Refusal};

/// Most store calls one keyed reserve makes: each attempt may first be pointed at the
/// record's hold and then supersede it, and a pending hold is waited for a few times.
const MAX_KEYED_CALLS: u32 = 2 * MAX_IDEMPOTENT_ATTEMPTS + IDEMPOTENT_PENDING_WAITS + 2;

/// What to do after one keyed reserve call.
enum Next {
    /// The answer for the client (boxed: it is far larger than the other variants).
    Done(Box<Result<Reserved, Refusal>>),
    /// Ask again about this hold id: the record's.
    AskAbout(String),
    /// The record's hold is pending (the first request is in flight or settling): wait a
    /// moment and ask again.
    Wait,
    /// The record's hold (this id) ended without a charge, or is gone: place a new one in
    /// its stead.
    Supersede(String),
}

impl Holds {
    /// Reserves for a request with an `Idempotency-Key` (`claim`, its fingerprint bound).
    pub(super) async fn reserve_keyed(
        &self,
        plan: &ReservePlan,
        claim: &IdempotencyClaim,
    ) -> Result<Reserved, Refusal> {
        let mut claim = claim.clone();
        let mut attempt = 1;
        let mut hold_id = plan.hold_id(attempt);
        let mut pending_waits = 0;
        for _ in 0..MAX_KEYED_CALLS {
            let mut request = plan.reserve_request(attempt);
            request.hold_id = hold_id.clone();
            let outcome = self
                .store
                .call(
                    "reserve",
                    plan.store_timeout_ms,
                    self.store.store().reserve_keyed(&request, &claim),
                )
                .await;
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(failure) => return self.reserve_failed(plan, request, &failure),
            };
            match self.after_keyed(plan, &hold_id, outcome, pending_waits) {
                Next::Done(answer) => return *answer,
                Next::AskAbout(record_hold) => {
                    hold_id = record_hold;
                    claim.supersedes = None;
                }
                Next::Wait => {
                    pending_waits += 1;
                    tokio::time::sleep(Duration::from_millis(IDEMPOTENT_PENDING_WAIT_MS)).await;
                }
                Next::Supersede(ended) => {
                    attempt += 1;
                    if attempt > MAX_IDEMPOTENT_ATTEMPTS {
                        break;
                    }
                    claim.supersedes = Some(ended);
                    hold_id = plan.hold_id(attempt);
                }
            }
        }
        self.metrics
            .decision(&plan.route, Outcome::IdempotencyRejected);
        Err(Refusal::idempotency_in_progress(
            "this Idempotency-Key was retried too many times",
        ))
    }

    /// What one keyed reserve's outcome (asked about `hold_id`) means for the request.
    fn after_keyed(
        &self,
        plan: &ReservePlan,
        hold_id: &str,
        outcome: KeyedReserveOutcome,
        pending_waits: u32,
    ) -> Next {
        let refused = |refusal: Refusal| {
            self.metrics
                .decision(&plan.route, Outcome::IdempotencyRejected);
            Next::Done(Box::new(Err(refusal)))
        };
        match outcome {
            KeyedReserveOutcome::Reserve(ReserveOutcome::Placed {
                hold,
                available_after,
                ..
            }) => Next::Done(Box::new(Ok(self.placed(
                plan,
                hold_id.to_string(),
                hold.over_limit,
                available_after,
            )))),
            KeyedReserveOutcome::Reserve(ReserveOutcome::Insufficient { available, .. }) => {
                Next::Done(Box::new(Err(self.insufficient(plan, available))))
            }
            KeyedReserveOutcome::KeyReused {
                first_request_id, ..
            } => refused(Refusal::idempotency_key_reused(Some(&first_request_id))),
            // The same request priced differently (the pricing changed in between).
            KeyedReserveOutcome::Reserve(ReserveOutcome::Conflict { .. }) => {
                refused(Refusal::idempotency_key_reused(None))
            }
            KeyedReserveOutcome::Moved { hold_id, .. } => Next::AskAbout(hold_id),
            KeyedReserveOutcome::Reserve(ReserveOutcome::Replay { state, .. }) => match state {
                HoldState::Pending if pending_waits < IDEMPOTENT_PENDING_WAITS => Next::Wait,
                HoldState::Pending => refused(Refusal::idempotency_in_progress(
                    "a request with this Idempotency-Key is still in progress",
                )),
                HoldState::Voided | HoldState::Expired => Next::Supersede(hold_id.to_string()),
                // A posted hold outside its record (the record expired a moment ago): it
                // was charged, and no replay can be counted for it any more.
                HoldState::Posted => refused(Refusal::idempotency_in_progress(
                    "the request with this Idempotency-Key was charged already",
                )),
            },
            KeyedReserveOutcome::Gone { .. } => Next::Supersede(hold_id.to_string()),
            KeyedReserveOutcome::Replayed {
                replay,
                first_request_id,
                ..
            } => {
                self.metrics.decision(&plan.route, Outcome::Replayed);
                debug!(request_id = %plan.request_id, customer = %plan.customer, hold_id,
                    replay, first_request_id, "idempotent replay, not charged again");
                Next::Done(Box::new(Ok(Reserved {
                    hold: None,
                    charge: Some(Charge::nothing(&plan.credit_type)),
                    replay: Some(replay),
                })))
            }
            KeyedReserveOutcome::ReplaysExhausted {
                first_request_id,
                replays,
                ..
            } => refused(Refusal::idempotency_replays_exhausted(
                &first_request_id,
                replays,
            )),
        }
    }
}
