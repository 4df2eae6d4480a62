//! The embedded ledger backend: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! One writer connection serialises every write (SQLite allows one writer at a time and
//! this keeps the chain heads consistent without locks); a small pool of reader
//! connections serves queries concurrently. For one sidecar process only: several
//! sidecars share a Postgres ledger instead. It must never update or delete an entry.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::chain::ChainHead;
use super::common::{self, Shared};
use super::entry::{LedgerEntry, NewEntry};
use super::grants::{GrantRecord, OutboxState, RecordGrantOutcome};
use super::migrations::{CREATE_SCHEMA_MIGRATIONS, SQLITE};
use super::sql::{Dialect, Heads};
use super::usage_events::UsageEventRecord;
use super::{AppendOutcome, EntryQuery, Ledger, LedgerResult};

/// Reader connections when the caller does not say: queries are short folds, and two
/// cores gain nothing from more.
pub const DEFAULT_SQLITE_READERS: u32 = 4;

/// How long a statement waits for a lock held by another connection before failing:
/// long enough to ride out a checkpoint, short enough to surface a stuck writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The ledger in a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteLedger {
    /// Opens (creating if missing) the ledger file at `path` with
    /// [`DEFAULT_SQLITE_READERS`] readers. Call [`Ledger::migrate`] before use.
    pub async fn open(path: impl AsRef<Path>) -> LedgerResult<Self> {
        Self::open_with(path, DEFAULT_SQLITE_READERS).await
    }

    /// Opens the ledger file at `path` with `readers` reader connections (at least 1).
    pub async fn open_with(path: impl AsRef<Path>, readers: u32) -> LedgerResult<Self> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.create_if_missing(false))
            .await?;
        Ok(Self {
            path,
            writer,
            readers,
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// The shared ledger logic on this file: queries on the readers, writes on the writer.
    fn shared(&self) -> Shared<'_, Sqlite> {
        Shared {
            dialect: Dialect::Sqlite,
            readers: &self.readers,
            writer: &self.writer,
        }
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> LedgerResult<Vec<i64>> {
        let mut applied = Vec::new();
        let mut conn = self.writer.acquire().await?;
        sqlx::Executor::execute(&mut *conn, CREATE_SCHEMA_MIGRATIONS).await?;
        drop(conn);
        for m in SQLITE {
            let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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
        // The one writer connection serialises appends: no head needs locking.
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        self.shared()
            .append_in(tx, entries, Heads::new(), recorded_at_ms)
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
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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
