//! Grants are ledger-first: a grant is recorded in the ledger (registry and outbox, one
//! transaction), then applied to the credit store with the idempotent `grant` script, and
//! the outbox row is marked delivered only when the store confirmed.
//!
//! A crash between the two steps loses nothing (the outbox still lists the grant) and
//! applies nothing twice (the script is idempotent by grant id). This module decides what
//! to deliver and records the result; it neither stores entries nor reads streams.

use creditgate_protocol::{CreditStore, GrantOutcome};
use tracing::{error, info, warn};

use crate::ledger::{GrantRecord, Ledger, LedgerError, RecordGrantOutcome, now_ms};

/// Most outbox rows delivered per pass: bounds one pass; a backlog drains over the next.
pub const OUTBOX_BATCH_MAX: u32 = 200;

/// Why issuing or delivering a grant failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The ledger refused or failed; nothing was recorded.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The grant id was recorded before with other fields; nothing was recorded.
    #[error("grant {0} was recorded before with other fields")]
    Conflict(String),
}

/// What issuing a grant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// Recorded in the ledger and applied to the store.
    Applied {
        /// The grant's outcome in the store.
        outcome: GrantOutcome,
    },
    /// Recorded in the ledger; the store could not be reached. The outbox delivers it later.
    Recorded {
        /// Why delivery failed.
        error: String,
    },
    /// The same grant was recorded before (a retry); it was (re)delivered.
    AlreadyRecorded,
}

/// What one delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Grants the store confirmed (applied now or before).
    pub delivered: u64,
    /// Grants whose delivery failed this pass and stay in the outbox.
    pub failed: u64,
}

/// Records a grant in the ledger, then applies it to the store once.
pub async fn issue_grant(
    ledger: &dyn Ledger,
    store: &dyn CreditStore,
    grant: &GrantRecord,
) -> Result<Issued, OutboxError> {
    match ledger.record_grant(grant).await? {
        RecordGrantOutcome::Conflict { .. } => {
            return Err(OutboxError::Conflict(grant.grant_id.clone()));
        }
        RecordGrantOutcome::AlreadyRecorded => {
            // A retry of the same grant: deliver again (idempotent); a failure stays in the
            // outbox for the next pass.
            let _delivery = deliver(ledger, store, grant).await?;
            return Ok(Issued::AlreadyRecorded);
        }
        RecordGrantOutcome::Recorded => {}
    }
    match deliver(ledger, store, grant).await? {
        Ok(outcome) => Ok(Issued::Applied { outcome }),
        Err(error) => Ok(Issued::Recorded { error }),
    }
}

/// Applies one recorded grant to the store and records the result in the outbox. The
/// inner `Err` is a delivery failure (kept for a retry), the outer one a ledger failure.
async fn deliver(
    ledger: &dyn Ledger,
    store: &dyn CreditStore,
    grant: &GrantRecord,
) -> Result<Result<GrantOutcome, String>, OutboxError> {
    // The ledger has the grant's `grant_added`: Redis applied it before. Applying it again
    // would give it twice when Redis has since lost its applied-grant ids (a FLUSHALL, a
    // promoted replica) and not yet been rebuilt; the rebuild restores it from the ledger.
    let added = format!("grant:{}:added", grant.grant_id);
    if ledger.entry(&added).await?.is_some() {
        ledger.mark_grant_applied(&grant.grant_id, now_ms()).await?;
        return Ok(Ok(GrantOutcome::Duplicate { at_ms: now_ms() }));
    }
    match store.grant(&grant.to_request()).await {
        Ok(outcome @ (GrantOutcome::Granted { .. } | GrantOutcome::Duplicate { .. })) => {
            ledger.mark_grant_applied(&grant.grant_id, now_ms()).await?;
            Ok(Ok(outcome))
        }
        Ok(outcome @ GrantOutcome::AlreadyExpired { .. }) => {
            // It expired before it reached the store: there is nothing left to apply. The
            // registry keeps it; the ledger has no entry for it, so it counts nowhere.
            warn!(grant_id = %grant.grant_id, "grant expired before it reached the store");
            ledger.mark_grant_applied(&grant.grant_id, now_ms()).await?;
            Ok(Ok(outcome))
        }
        Ok(GrantOutcome::Conflict {
            first_credit_type,
            first_amount,
            ..
        }) => {
            let message = format!(
                "the store holds grant id {} as {first_amount} {first_credit_type}",
                grant.grant_id
            );
            error!(grant_id = %grant.grant_id, "ALERT: {message}");
            ledger
                .mark_grant_attempt_failed(&grant.grant_id, &message)
                .await?;
            Ok(Err(message))
        }
        Err(e) => {
            let message = e.to_string();
            ledger
                .mark_grant_attempt_failed(&grant.grant_id, &message)
                .await?;
            Ok(Err(message))
        }
    }
}

/// Delivers the outbox's pending grants, oldest first, at most [`OUTBOX_BATCH_MAX`].
pub async fn deliver_pending(
    ledger: &dyn Ledger,
    store: &dyn CreditStore,
) -> Result<DeliveryReport, OutboxError> {
    let mut report = DeliveryReport::default();
    for grant in ledger.pending_grants(OUTBOX_BATCH_MAX).await? {
        match deliver(ledger, store, &grant).await? {
            Ok(_) => report.delivered += 1,
            Err(_) => report.failed += 1,
        }
    }
    if report != DeliveryReport::default() {
        info!(?report, "outbox delivery pass");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use creditgate_protocol::{GrantSource, MemoryStore};

    use super::*;
    use crate::jobs::fixtures::{CREDITS, grant, keyspace, temp_ledger};

    fn record(grant_id: &str, amount: u64) -> GrantRecord {
        GrantRecord {
            grant_id: grant_id.into(),
            customer: "acme".into(),
            credit_type: CREDITS.into(),
            amount,
            priority: 10,
            expires_at_ms: None,
            cost_basis: 0,
            source: GrantSource::Promotion,
            actor: "test".into(),
            reason: "outbox test".into(),
            created_at_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn a_grant_is_recorded_then_applied_once_on_the_model() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        let g1 = record("g1", 100);

        let first = issue_grant(t.ledger.as_ref(), &store, &g1)
            .await
            .expect("issue");
        let retry = issue_grant(t.ledger.as_ref(), &store, &g1)
            .await
            .expect("retry");
        let other = issue_grant(t.ledger.as_ref(), &store, &record("g1", 5)).await;

        assert!(
            matches!(
                first,
                Issued::Applied {
                    outcome: GrantOutcome::Granted { .. }
                }
            ),
            "{first:?}"
        );
        assert_eq!(retry, Issued::AlreadyRecorded);
        assert!(matches!(other, Err(OutboxError::Conflict(id)) if id == "g1"));
        let balance = store.balance("acme").await.expect("balance");
        assert_eq!(balance.of(CREDITS).expect("credits").available, 100);
        let pending = deliver_pending(t.ledger.as_ref(), &store)
            .await
            .expect("pass");
        assert_eq!(pending, DeliveryReport::default());
    }

    #[tokio::test]
    async fn a_grant_the_store_refuses_stays_in_the_outbox() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        // The store already holds the id with another amount.
        grant(&store, "acme", "g1", 50).await;

        let issued = issue_grant(t.ledger.as_ref(), &store, &record("g1", 100))
            .await
            .expect("recorded");

        assert_eq!(
            issued,
            Issued::Recorded {
                error: "the store holds grant id g1 as 50 credits".into()
            }
        );
        let pass = deliver_pending(t.ledger.as_ref(), &store)
            .await
            .expect("pass");
        assert_eq!(
            pass,
            DeliveryReport {
                delivered: 0,
                failed: 1
            }
        );
    }

    #[tokio::test]
    async fn a_grant_the_ledger_has_added_is_not_applied_again_to_a_store_that_lost_it() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        let g1 = record("g1", 100);
        issue_grant(t.ledger.as_ref(), &store, &g1)
            .await
            .expect("issue");
        crate::jobs::fixtures::record_model_events(t.ledger.as_ref(), &store, &keyspace()).await;
        // Redis lost everything (FLUSHALL) and is not rebuilt yet; the call is retried.
        let empty = MemoryStore::new(keyspace());
        let retry = issue_grant(t.ledger.as_ref(), &empty, &g1).await;
        assert_eq!(retry.expect("retry"), Issued::AlreadyRecorded);
        let pass = deliver_pending(t.ledger.as_ref(), &empty).await;
        assert_eq!(pass.expect("pass").delivered, 0);
        let balance = empty.balance("acme").await.expect("balance");
        assert_eq!(balance.of(CREDITS).map(|b| b.available), None);
    }
}
