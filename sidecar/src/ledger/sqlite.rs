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

use sqlx::Transaction;

use super::LedgerResult;
use super::common::{Shared, SqlBackend, forward_ledger_roles};
use super::migrations::{CREATE_SCHEMA_MIGRATIONS, SQLITE};
use super::sql::Dialect;

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
    /// [`DEFAULT_SQLITE_READERS`] readers. Call
    /// [`LedgerAdmin::migrate`](super::LedgerAdmin::migrate) before use.
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
}

#[async_trait]
impl SqlBackend for SqliteLedger {
    type Db = Sqlite;

    const NAME: &'static str = "sqlite";

    /// Queries on the readers, writes on the writer.
    fn shared(&self) -> Shared<'_, Sqlite> {
        Shared {
            dialect: Dialect::Sqlite,
            readers: &self.readers,
            writer: &self.writer,
        }
    }

    async fn migrate_schema(&self) -> LedgerResult<Vec<i64>> {
        let mut applied = Vec::new();
        let mut conn = self.writer.acquire().await?;
        sqlx::Executor::execute(&mut *conn, CREATE_SCHEMA_MIGRATIONS).await?;
        drop(conn);
        for m in SQLITE {
            let tx = self.begin_write().await?;
            if self.shared().apply_migration(tx, m).await? {
                applied.push(m.version);
            }
        }
        Ok(applied)
    }

    /// The one writer connection serialises appends, so no chain head needs locking.
    async fn begin_write(&self) -> LedgerResult<Transaction<'_, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

forward_ledger_roles!(SqliteLedger);
