//! The lock that makes a role's per-day grant limit hold across sidecars sharing a ledger.
//!
//! On Postgres, the check (what the actor granted today) and the record of the grant run
//! while a transaction holds `pg_advisory_xact_lock` keyed by actor and UTC day, so
//! sidecars sharing the database take turns per actor and day. The transaction writes
//! nothing: it only holds the lock, and ending it (commit, or rollback when dropped)
//! releases it. On SQLite one sidecar owns the ledger file, so the caller's in-process
//! mutex already serialises the check.

use sqlx::{Postgres, Transaction};

use super::db::AdminDb;

/// The lock key's text: one lock per actor and UTC day (`day` = days since the epoch).
pub fn lock_key(actor: &str, day: u64) -> String {
    format!("creditgate:grant-limit:{day}:{actor}")
}

/// A held per-actor-per-day lock; [`release`](Self::release) ends it.
pub enum DayLock {
    /// The Postgres transaction holding the advisory lock.
    Postgres(Transaction<'static, Postgres>),
    /// Nothing beyond the caller's in-process mutex (SQLite).
    Local,
}

impl DayLock {
    /// Waits for the lock of `actor` on `day`.
    pub async fn acquire(db: &AdminDb, actor: &str, day: u64) -> Result<Self, sqlx::Error> {
        match db {
            AdminDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(lock_key(actor, day))
                    .execute(&mut *tx)
                    .await?;
                Ok(Self::Postgres(tx))
            }
            AdminDb::Sqlite(_) => Ok(Self::Local),
        }
    }

    /// Releases the lock (the transaction wrote nothing; committing it only ends it).
    pub async fn release(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Local => Ok(()),
        }
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
