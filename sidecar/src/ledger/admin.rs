//! The admin API's own tables in the ledger database (migration 0004): tokens, customers
//! and API keys, grant details, approvals, voids and idempotency records.
//!
//! One handle over either backend; each statement is written once with `$n` parameters,
//! which both SQLite and Postgres accept. It opens its own small pool on the ledger's
//! database, after the ledger ran the migrations. It never touches ledger entries.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::settings::{DEFAULT_SQLITE_PATH, LedgerArgs};

/// Connections of the admin pool: admin calls are few; two keep a slow call from
/// blocking every other one.
pub const ADMIN_POOL_CONNECTIONS: u32 = 2;

/// How long an SQLite statement waits for the ledger writer's lock, in seconds.
const SQLITE_BUSY_TIMEOUT_S: u64 = 10;

/// The admin tables' database.
#[derive(Clone, Debug)]
pub enum AdminDb {
    /// The SQLite ledger file.
    Sqlite(SqlitePool),
    /// The Postgres ledger database.
    Postgres(PgPool),
}

/// Runs one statement on either backend and returns the rows it changed.
macro_rules! exec {
    ($db:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $db {
            $crate::api::admin::db::AdminDb::Sqlite(p) => sqlx::query($sql)$(.bind($arg))*
                .execute(p).await.map(|r| r.rows_affected()),
            $crate::api::admin::db::AdminDb::Postgres(p) => sqlx::query($sql)$(.bind($arg))*
                .execute(p).await.map(|r| r.rows_affected()),
        }
    };
}

/// Runs one query on either backend and maps each row with `$map` (an expression using
/// `$row` that returns `Result<T, sqlx::Error>`).
macro_rules! fetch {
    ($db:expr, $sql:expr, [$($arg:expr),* $(,)?], |$row:ident| $map:expr) => {
        match $db {
            $crate::api::admin::db::AdminDb::Sqlite(p) => sqlx::query($sql)$(.bind($arg))*
                .fetch_all(p).await.and_then(|rows| rows.iter().map(|$row| {
                    use sqlx::Row as _;
                    $map
                }).collect::<Result<Vec<_>, sqlx::Error>>()),
            $crate::api::admin::db::AdminDb::Postgres(p) => sqlx::query($sql)$(.bind($arg))*
                .fetch_all(p).await.and_then(|rows| rows.iter().map(|$row| {
                    use sqlx::Row as _;
                    $map
                }).collect::<Result<Vec<_>, sqlx::Error>>()),
        }
    };
}

pub(crate) use {exec, fetch};

impl AdminDb {
    /// Opens a pool on the ledger database the arguments name.
    pub async fn open(args: &LedgerArgs) -> Result<Self, sqlx::Error> {
        match (&args.sqlite, &args.postgres) {
            (_, Some(url)) => {
                let pool = PgPoolOptions::new()
                    .max_connections(ADMIN_POOL_CONNECTIONS)
                    .connect_with(PgConnectOptions::from_str(url)?)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            (path, None) => {
                let path = path.clone().unwrap_or_else(|| DEFAULT_SQLITE_PATH.into());
                let options = SqliteConnectOptions::from_str("sqlite://")?
                    .filename(&path)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(SQLITE_BUSY_TIMEOUT_S));
                let pool = SqlitePoolOptions::new()
                    .max_connections(ADMIN_POOL_CONNECTIONS)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
        }
    }
}
