//! The production ledger backend: Postgres, shared by several sidecars at once.
//!
//! Appends are safe concurrently: a batch locks the chain heads of its customers
//! (one upsert whose no-op update takes each row lock, in sorted order so two batches
//! never deadlock) before it reads
//! a head or inserts, so each customer's chain grows one entry at a time whatever the
//! number of writers. Migrations take a transaction-level advisory lock. It must never
//! update or delete an entry.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Row, Transaction};

use super::chain::ChainHead;
use super::common::{Shared, SqlBackend, forward_ledger_roles};
use super::entry::{GENESIS_HASH, NewEntry};
use super::migrations::{CREATE_SCHEMA_MIGRATIONS, POSTGRES};
use super::sql::{self, Dialect, Heads};
use super::{LedgerError, LedgerResult};

/// Connections per sidecar when the caller does not say: one writer batch, the outbox and
/// a few queries at a time, without crowding a shared server's `max_connections`.
pub const DEFAULT_PG_MAX_CONNECTIONS: u32 = 8;

/// How long to wait for a pooled connection before failing the call.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of the advisory lock that serialises migrations across sidecars ("cgledger").
const MIGRATION_LOCK_KEY: i64 = 0x6367_6c65_6467_6572;

/// The ledger in a Postgres database.
#[derive(Clone, Debug)]
pub struct PostgresLedger {
    pool: PgPool,
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user@host:port/db`) with
    /// [`DEFAULT_PG_MAX_CONNECTIONS`] connections. Call
    /// [`LedgerAdmin::migrate`](super::LedgerAdmin::migrate) before use.
    pub async fn connect(url: &str) -> LedgerResult<Self> {
        Self::connect_with(url, DEFAULT_PG_MAX_CONNECTIONS).await
    }

    /// Connects to `url` with at most `max_connections` connections (at least 1).
    pub async fn connect_with(url: &str, max_connections: u32) -> LedgerResult<Self> {
        // Plan each statement with its parameters and the table's size now: a generic plan
        // cached while the ledger was nearly empty kept scanning the whole table for a
        // batch's event ids (`IN ($1 … $500)`, 0.4–1.5 s each once it held 60,000 rows).
        let options =
            PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl SqlBackend for PostgresLedger {
    type Db = Postgres;

    const NAME: &'static str = "postgres";

    /// One pool reads and writes.
    fn shared(&self) -> Shared<'_, Postgres> {
        Shared {
            dialect: Dialect::Postgres,
            readers: &self.pool,
            writer: &self.pool,
        }
    }

    async fn migrate_schema(&self) -> LedgerResult<Vec<i64>> {
        let mut applied = Vec::new();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        sqlx::Executor::execute(&mut *tx, CREATE_SCHEMA_MIGRATIONS).await?;
        tx.commit().await?;
        for m in POSTGRES {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            if self.shared().apply_migration(tx, m).await? {
                applied.push(m.version);
            }
        }
        Ok(applied)
    }

    async fn begin_write(&self) -> LedgerResult<Transaction<'_, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Creates the batch's missing heads and locks every head of the batch in one
    /// statement: an upsert whose no-op update takes the row lock `FOR UPDATE` would,
    /// row by row in sorted customer order, so two batches never wait on each other in a
    /// cycle. One round trip instead of two per customer.
    async fn begin_append(
        &self,
        entries: &[NewEntry],
    ) -> LedgerResult<(Transaction<'_, Postgres>, Heads)> {
        let mut tx = self.begin_write().await?;
        let customers = sql::batch_customers(entries);
        let rows = sqlx::query(LOCK_HEADS)
            .bind(&customers)
            .bind(GENESIS_HASH)
            .fetch_all(&mut *tx)
            .await?;
        let mut heads = Heads::with_capacity(rows.len());
        for row in rows {
            let head = ChainHead {
                last_seq: row.try_get("last_seq")?,
                last_hash: row.try_get("last_hash")?,
            };
            heads.insert(row.try_get("customer")?, head);
        }
        if heads.len() != customers.len() {
            return Err(LedgerError::Corrupt(format!(
                "locked {} chain heads for the batch's {} customers",
                heads.len(),
                customers.len()
            )));
        }
        Ok((tx, heads))
    }
}

/// Creates the missing chain heads of customers `$1` (sorted, distinct) at the genesis hash
/// `$2` and locks every one of them, in the array's order, returning each head.
const LOCK_HEADS: &str = "INSERT INTO chain_heads AS h (customer, last_seq, last_hash) \
     SELECT u.c, 0, $2 FROM unnest($1::text[]) WITH ORDINALITY AS u(c, n) ORDER BY u.n \
     ON CONFLICT (customer) DO UPDATE SET last_seq = h.last_seq \
     RETURNING customer, last_seq, last_hash";

forward_ledger_roles!(PostgresLedger);
