//! Owed Redis rebuilds: a change booked in the ledger alone (a grant void) records a
//! rebuild of the customer (`redis_rebuilds`) before it is tried; this job tries each owed
//! rebuild when it is due until Redis holds the ledger's state, so a voided grant never
//! stays spendable because its first rebuild could not run.
//!
//! A rebuild that cannot run yet (holds pending in Redis, a restore refused because Redis
//! has burns the ledger has not recorded, Redis or the ledger down) is "not yet": its next
//! attempt waits a bounded, doubling backoff. The job decides when; the rebuild itself is
//! the reconciler's ([`rebuild_customer`]); the rows are the ledger's.

use async_trait::async_trait;
use tracing::{info, warn};

use crate::jobs::reconcile::{RebuildStore, Rebuilt, ReconcileError, rebuild_customer};
use crate::ledger::{LedgerEntries, LedgerRebuilds, LedgerResult, RebuildRecord};

/// What rebuilds one customer: [`FromLedger`] in the sidecar; tests script the answers.
#[async_trait]
pub trait RebuildCustomer: Send + Sync {
    /// Rebuilds `customer`'s Redis state from the ledger, or says why not yet.
    async fn rebuild(&self, customer: &str) -> Result<Rebuilt, ReconcileError>;
}

/// The reconciler's [`rebuild_customer`] on a ledger and a store.
pub struct FromLedger<'a> {
    /// The ledger the state is read from.
    pub ledger: &'a dyn LedgerEntries,
    /// The store rebuilt.
    pub store: &'a dyn RebuildStore,
}

#[async_trait]
impl RebuildCustomer for FromLedger<'_> {
    async fn rebuild(&self, customer: &str) -> Result<Rebuilt, ReconcileError> {
        rebuild_customer(self.ledger, self.store, customer).await
    }
}

/// Most owed rebuilds read per pass: bounds one pass; more wait for the next.
pub const REBUILD_BATCH_MAX: u32 = 100;

/// Wait before the second attempt, in milliseconds: 1 s, about the time a gateway takes
/// to settle the holds that made the first attempt busy.
pub const REBUILD_RETRY_FIRST_MS: u64 = 1_000;

/// Longest wait between attempts, in milliseconds: 30 s, so a customer whose holds never
/// pause is still retried twice a minute while the voided credits stay spendable.
pub const REBUILD_RETRY_MAX_MS: u64 = 30_000;

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Redis now holds the ledger's state; the row is marked done.
    Done,
    /// Not yet: why, and when the next attempt is due (ms since the Unix epoch).
    Retry {
        /// Why it could not run.
        error: String,
        /// When the job tries next.
        next_attempt_at_ms: u64,
    },
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildPassReport {
    /// Rebuilds finished this pass.
    pub done: u64,
    /// Rebuilds tried and still owed.
    pub retried: u64,
    /// Rebuilds owed after the pass (within the batch read).
    pub owed: u64,
}

/// The wait after `attempts` failed attempts: doubling from [`REBUILD_RETRY_FIRST_MS`],
/// capped at [`REBUILD_RETRY_MAX_MS`].
pub fn retry_delay_ms(attempts: u64) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16) as u32;
    REBUILD_RETRY_FIRST_MS
        .saturating_mul(1 << doublings)
        .min(REBUILD_RETRY_MAX_MS)
}

/// Tries the rebuild `owed` once at `now_ms` and records the result in its row.
pub async fn attempt_rebuild(
    ledger: &dyn LedgerRebuilds,
    rebuilder: &dyn RebuildCustomer,
    owed: &RebuildRecord,
    now_ms: u64,
) -> LedgerResult<Attempt> {
    let error = match rebuilder.rebuild(&owed.customer).await {
        Ok(Rebuilt::Restored { grants, voided }) => {
            ledger.mark_rebuild_done(&owed.rebuild_id, now_ms).await?;
            info!(rebuild = %owed.rebuild_id, customer = %owed.customer, grants, voided,
                "owed Redis rebuild done");
            return Ok(Attempt::Done);
        }
        Ok(Rebuilt::Busy { pending_holds }) => {
            format!("{pending_holds} holds pending in Redis; retried when they are resolved")
        }
        // Any other answer (a restore refused while Redis has burns the ledger has not
        // recorded: `Behind`) is "not yet" too.
        Ok(other) => format!("not restored yet: {other:?}"),
        Err(e) => e.to_string(),
    };
    let next_attempt_at_ms = now_ms.saturating_add(retry_delay_ms(owed.attempts + 1));
    ledger
        .mark_rebuild_retry(&owed.rebuild_id, &error, next_attempt_at_ms)
        .await?;
    warn!(rebuild = %owed.rebuild_id, customer = %owed.customer, %error,
        attempts = owed.attempts + 1, "owed Redis rebuild not done yet; retried later");
    Ok(Attempt::Retry {
        error,
        next_attempt_at_ms,
    })
}

/// One pass: tries every owed rebuild due at `now_ms` (at most [`REBUILD_BATCH_MAX`] read).
pub async fn retry_owed_rebuilds(
    ledger: &dyn LedgerRebuilds,
    rebuilder: &dyn RebuildCustomer,
    now_ms: u64,
) -> LedgerResult<RebuildPassReport> {
    let owed = ledger.owed_rebuilds(REBUILD_BATCH_MAX).await?;
    let mut report = RebuildPassReport {
        owed: owed.len() as u64,
        ..RebuildPassReport::default()
    };
    // Soonest due first: the first one not due ends the pass.
    for rebuild in owed.iter().take_while(|r| r.next_attempt_at_ms <= now_ms) {
        match attempt_rebuild(ledger, rebuilder, rebuild, now_ms).await? {
            Attempt::Done => {
                report.done += 1;
                report.owed -= 1;
            }
            Attempt::Retry { .. } => report.retried += 1,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::jobs::fixtures::temp_ledger;

    #[test]
    fn the_backoff_doubles_and_is_bounded() {
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(3), 4_000);
        assert_eq!(retry_delay_ms(6), 30_000);
        assert_eq!(retry_delay_ms(u64::MAX), 30_000);
    }

    /// Answers the rebuilds it is given, in order, and records whom it rebuilt.
    struct Scripted {
        answers: Mutex<Vec<Rebuilt>>,
        rebuilt: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl RebuildCustomer for Scripted {
        async fn rebuild(&self, customer: &str) -> Result<Rebuilt, ReconcileError> {
            let answer = self.answers.lock().expect("lock").remove(0);
            if matches!(answer, Rebuilt::Restored { .. }) {
                self.rebuilt.lock().expect("lock").push(customer.into());
            }
            Ok(answer)
        }
    }

    #[tokio::test]
    async fn a_busy_rebuild_is_retried_after_its_backoff_until_done() {
        let t = temp_ledger().await;
        let rebuilder = Scripted {
            answers: Mutex::new(vec![
                Rebuilt::Busy { pending_holds: 1 },
                Rebuilt::Restored {
                    grants: 1,
                    voided: 0,
                },
            ]),
            rebuilt: Mutex::default(),
        };
        let owed = RebuildRecord::owed("void-g1", "acme", "void of grant g1", 1_000);
        assert!(t.ledger.record_rebuild(&owed).await.expect("record"));
        assert!(!t.ledger.record_rebuild(&owed).await.expect("again"));

        // Busy: a hold is pending. Retried after the backoff, not before.
        let first = retry_owed_rebuilds(t.ledger.as_ref(), &rebuilder, 1_000).await;
        let expected = RebuildPassReport {
            done: 0,
            retried: 1,
            owed: 1,
        };
        assert_eq!(first.expect("pass"), expected);
        let row = t.ledger.rebuild("void-g1").await.expect("read");
        let row = row.expect("recorded");
        assert_eq!((row.attempts, row.next_attempt_at_ms), (1, 2_000));
        assert!(row.last_error.expect("error").contains("holds pending"));
        let early = retry_owed_rebuilds(t.ledger.as_ref(), &rebuilder, 1_999).await;
        assert_eq!(early.expect("pass").retried, 0);

        let done = retry_owed_rebuilds(t.ledger.as_ref(), &rebuilder, 2_000).await;
        let expected = RebuildPassReport {
            done: 1,
            retried: 0,
            owed: 0,
        };
        assert_eq!(done.expect("pass"), expected);
        let row = t.ledger.rebuild("void-g1").await.expect("read");
        assert_eq!(row.expect("recorded").done_at_ms, Some(2_000));
        assert_eq!(*rebuilder.rebuilt.lock().expect("lock"), vec!["acme"]);
        assert!(t.ledger.owed_rebuilds(10).await.expect("owed").is_empty());
    }
}
