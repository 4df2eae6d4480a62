//! One pass of the sweeper: expires pending holds past their deadline and grants past their
//! expiry, through the scripts, so their events reach the ledger like any other.
//!
//! Works on any [`CreditStore`], in bounded batches per shard. The caller's clock only picks
//! candidates; each script checks the deadline again against the store's own clock, so a
//! skewed caller can never expire anything early.

use crate::keys::Keyspace;
use crate::store::{CreditStore, StoreError};
use crate::types::{GrantExpiryOutcome, GrantRef, HoldRef, ResolveOutcome};

/// Most holds and most grants expired per shard in one pass: bounds the time one pass
/// takes; a backlog drains over the next passes.
pub const SWEEP_BATCH_MAX: usize = 500;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Holds expired (their credits returned).
    pub holds_expired: u64,
    /// Credits those holds returned.
    pub credits_returned: u64,
    /// Grants expired.
    pub grants_expired: u64,
    /// Credits those grants lost (breakage).
    pub credits_expired: u64,
}

/// Expires, on every shard, up to `batch_max` holds whose deadline is at or before
/// `now_ms` and up to `batch_max` grants whose expiry is.
pub async fn sweep_once(
    store: &dyn CreditStore,
    keyspace: &Keyspace,
    now_ms: u64,
    batch_max: usize,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    for shard in keyspace.all_shards() {
        for due in store.due_holds(shard, now_ms, batch_max).await? {
            let hold = HoldRef {
                customer: due.customer,
                hold_id: due.id,
            };
            if let ResolveOutcome::Expired { returned, .. } = store.expire_hold(&hold).await? {
                report.holds_expired += 1;
                report.credits_returned += returned;
            }
        }
        for due in store.due_grants(shard, now_ms, batch_max).await? {
            let grant = GrantRef {
                customer: due.customer,
                grant_id: due.id,
            };
            if let GrantExpiryOutcome::Expired { amount, .. } = store.expire_grant(&grant).await? {
                report.grants_expired += 1;
                report.credits_expired += amount;
            }
        }
    }
    Ok(report)
}
