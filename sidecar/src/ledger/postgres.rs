//! The production ledger backend: Postgres, shared by several sidecars at once.
//!
//! Appends are safe concurrently: a batch locks the chain heads of its customers
//! (`SELECT … FOR UPDATE`, in sorted order so two batches never deadlock) before it reads
//! a head or inserts, so each customer's chain grows one entry at a time whatever the
//! number of writers. Migrations take a transaction-level advisory lock. It must never
//! update or delete an entry.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};

use super::chain::ChainHead;
use super::common::{self, Shared};
use super::entry::{GENESIS_HASH, LedgerEntry, NewEntry};
use super::grants::{GrantRecord, OutboxState, RecordGrantOutcome};
use super::migrations::{CREATE_SCHEMA_MIGRATIONS, POSTGRES};
use super::sql::{self, Dialect, Heads};
use super::usage_events::UsageEventRecord;
use super::{AppendOutcome, EntryQuery, Ledger, LedgerResult};

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
    /// [`DEFAULT_PG_MAX_CONNECTIONS`] connections. Call [`Ledger::migrate`] before use.
    pub async fn connect(url: &str) -> LedgerResult<Self> {
        Self::connect_with(url, DEFAULT_PG_MAX_CONNECTIONS).await
    }

    /// Connects to `url` with at most `max_connections` connections (at least 1).
    pub async fn connect_with(url: &str, max_connections: u32) -> LedgerResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
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

    /// The shared ledger logic on this database: one pool reads and writes.
    fn shared(&self) -> Shared<'_, Postgres> {
        Shared {
            dialect: Dialect::Postgres,
            readers: &self.pool,
            writer: &self.pool,
        }
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> LedgerResult<Vec<i64>> {
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

    async fn applied_migrations(&self) -> LedgerResult<Vec<i64>> {
        self.shared().applied_migrations().await
    }

    async fn append_batch(&self, entries: &[NewEntry]) -> LedgerResult<Vec<AppendOutcome>> {
        let Some(recorded_at_ms) = common::start_batch(entries)? else {
            return Ok(Vec::new());
        };
        let mut tx = self.pool.begin().await?;
        let mut heads = Heads::new();
        for customer in sql::batch_customers(entries) {
            sqlx::query(
                "INSERT INTO chain_heads (customer, last_seq, last_hash) VALUES ($1, 0, $2) \
                 ON CONFLICT (customer) DO NOTHING",
            )
            .bind(&customer)
            .bind(GENESIS_HASH)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(
                "SELECT last_seq, last_hash FROM chain_heads WHERE customer = $1 FOR UPDATE",
            )
            .bind(&customer)
            .fetch_one(&mut *tx)
            .await?;
            let head = ChainHead {
                last_seq: row.try_get("last_seq")?,
                last_hash: row.try_get("last_hash")?,
            };
            heads.insert(customer, head);
        }
        self.shared()
            .append_in(tx, entries, heads, recorded_at_ms)
            .await
    }

    async fn entry(&self, event_id: &str) -> LedgerResult<Option<LedgerEntry>> {
        self.shared().entry(event_id).await
    }

    async fn entries(&self, query: &EntryQuery) -> LedgerResult<Vec<LedgerEntry>> {
        self.shared().entries(query).await
    }

    async fn redis_generation(&self, shard: u32) -> LedgerResult<Option<String>> {
        self.shared().redis_generation(shard).await
    }

    async fn set_redis_generation(&self, shard: u32, generation: &str) -> LedgerResult<()> {
        self.shared().set_redis_generation(shard, generation).await
    }

    async fn record_control_audit(
        &self,
        entries: &[creditgate_protocol::control::AuditEntry],
    ) -> LedgerResult<u64> {
        self.shared().record_control_audit(entries).await
    }

    async fn control_audit(
        &self,
        limit: u32,
    ) -> LedgerResult<Vec<creditgate_protocol::control::AuditEntry>> {
        self.shared().control_audit(limit).await
    }

    async fn customers(&self) -> LedgerResult<Vec<String>> {
        self.shared().customers().await
    }

    async fn chain_head(&self, customer: &str) -> LedgerResult<Option<ChainHead>> {
        self.shared().chain_head(customer).await
    }

    async fn amount_sums(&self) -> LedgerResult<Vec<(String, String, i64)>> {
        self.shared().amount_sums().await
    }

    async fn record_grant(&self, grant: &GrantRecord) -> LedgerResult<RecordGrantOutcome> {
        grant.validate()?;
        let tx = self.pool.begin().await?;
        self.shared().record_grant_in(tx, grant).await
    }

    async fn pending_grants(&self, limit: u32) -> LedgerResult<Vec<GrantRecord>> {
        self.shared().pending_grants(limit).await
    }

    async fn record_usage_event(&self, event: &UsageEventRecord) -> LedgerResult<bool> {
        self.shared().record_usage_event(event).await
    }

    async fn record_config_version(
        &self,
        record: &super::ConfigVersionRecord,
    ) -> LedgerResult<bool> {
        self.shared().record_config_version(record).await
    }

    async fn config_versions_after(
        &self,
        after: u64,
    ) -> LedgerResult<Vec<super::ConfigVersionRecord>> {
        self.shared().config_versions_after(after).await
    }

    async fn mark_grant_applied(&self, grant_id: &str, at_ms: u64) -> LedgerResult<bool> {
        self.shared().mark_grant_applied(grant_id, at_ms).await
    }

    async fn mark_grant_attempt_failed(&self, grant_id: &str, error: &str) -> LedgerResult<bool> {
        self.shared()
            .mark_grant_attempt_failed(grant_id, error)
            .await
    }

    async fn outbox_state(&self, grant_id: &str) -> LedgerResult<Option<OutboxState>> {
        self.shared().outbox_state(grant_id).await
    }

    async fn grants_of(&self, customer: &str) -> LedgerResult<Vec<GrantRecord>> {
        self.shared().grants_of(customer).await
    }
}
