//! The lock that makes a role's per-day grant limit hold across sidecars sharing a ledger.
//!
//! On Postgres, the check (what the actor granted today) and the record of the grant run
//! while a transaction holds `pg_advisory_xact_lock` keyed by actor and UTC day, so
//! sidecars sharing the database take turns per actor and day. The transaction writes
//! nothing: it only holds the lock, and ending it (commit, or rollback when dropped)
//! releases it. On SQLite one sidecar owns the ledger file, so the caller's in-process
//! mutex already serialises the check.

use crate::ledger::{AdminDb, AdvisoryLock};

/// The lock key's text: one lock per actor and UTC day (`day` = days since the epoch).
pub fn lock_key(actor: &str, day: u64) -> String {
    format!("creditgate:grant-limit:{day}:{actor}")
}

/// A held per-actor-per-day lock; [`release`](Self::release) ends it.
pub struct DayLock(AdvisoryLock);

impl DayLock {
    /// Waits for the lock of `actor` on `day`.
    pub async fn acquire(db: &AdminDb, actor: &str, day: u64) -> Result<Self, sqlx::Error> {
        db.advisory_lock(&lock_key(actor, day)).await.map(Self)
    }

    /// Releases the lock (the transaction wrote nothing; committing it only ends it).
    pub async fn release(self) -> Result<(), sqlx::Error> {
        self.0.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_actor_and_day() {
        assert_eq!(lock_key("support", 3), lock_key("support", 3));
        assert_ne!(lock_key("support", 3), lock_key("support", 4));
        assert_ne!(lock_key("support", 3), lock_key("sales", 3));
    }
}
