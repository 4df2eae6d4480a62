//! The admin API's own tables in the ledger database (migration 0004): tokens, customers
//! and API keys, grant details, approvals, voids, idempotency records, alerts and webhook
//! deliveries, reached through the ledger's one database layer.
//!
//! Each statement is written once with `$n` placeholders, its values bound as the ledger's
//! [`Bind`] and its rows read back as [`AdminRow`]s, by one function generic over the
//! backend. It opens its own small pool on the ledger's database, after the ledger ran the
//! migrations. It never touches ledger entries, and holds no admin logic (the admin API
//! does).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Column, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row};
use sqlx::{Transaction, Type};

use super::common::RowsAffected;
use super::sql::{Bind, bind_all};
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

/// One value of a row read from the admin tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminValue {
    /// Null, of any column type.
    Null,
    /// A `BIGINT` (or `INTEGER`) value.
    Int(i64),
    /// A `TEXT` value.
    Text(String),
}

/// One row read from the admin tables, the same whichever backend read it: its columns by
/// name, each `BIGINT`, `TEXT` or null.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminRow {
    columns: Vec<(String, AdminValue)>,
}

/// A Rust value an [`AdminRow`] column decodes to.
pub trait FromAdminValue: Sized {
    /// The Rust value, or why `value` is not one.
    fn from_value(value: &AdminValue) -> Result<Self, String>;
}

impl FromAdminValue for i64 {
    fn from_value(value: &AdminValue) -> Result<Self, String> {
        match value {
            AdminValue::Int(v) => Ok(*v),
            other => Err(format!("expected BIGINT, found {other:?}")),
        }
    }
}

impl FromAdminValue for String {
    fn from_value(value: &AdminValue) -> Result<Self, String> {
        match value {
            AdminValue::Text(v) => Ok(v.clone()),
            other => Err(format!("expected TEXT, found {other:?}")),
        }
    }
}

impl<T: FromAdminValue> FromAdminValue for Option<T> {
    fn from_value(value: &AdminValue) -> Result<Self, String> {
        match value {
            AdminValue::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl AdminRow {
    /// The value of `column`, like `sqlx::Row::try_get`: `i64`, `String` or their
    /// `Option`s (null). The second type parameter only keeps sqlx's call shape.
    pub fn try_get<T: FromAdminValue, I: AsRef<str>>(&self, column: I) -> Result<T, sqlx::Error> {
        let name = column.as_ref();
        let index = self
            .columns
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(name.to_string()))?;
        T::from_value(&self.columns[index].1).map_err(|e| sqlx::Error::ColumnDecode {
            index: name.to_string(),
            source: e.into(),
        })
    }

    /// Reads every column of a backend's row: `BIGINT` (or `INTEGER`) first, else `TEXT`.
    fn read<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
        Option<i32>: Decode<'r, R::Database> + Type<R::Database>,
        Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let mut columns = Vec::with_capacity(row.columns().len());
        for (i, column) in row.columns().iter().enumerate() {
            let cell = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                v.map_or(AdminValue::Null, AdminValue::Int)
            } else if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
                v.map_or(AdminValue::Null, |v| AdminValue::Int(i64::from(v)))
            } else {
                row.try_get::<Option<String>, _>(i)?
                    .map_or(AdminValue::Null, AdminValue::Text)
            };
            columns.push((column.name().to_string(), cell));
        }
        Ok(Self { columns })
    }
}

/// Runs one statement on `pool`; the number of rows it changed.
async fn execute_on<DB>(pool: &Pool<DB>, sql: &str, binds: &[Bind]) -> Result<u64, sqlx::Error>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
{
    let done = bind_all(sqlx::query(sql), binds).execute(pool).await?;
    Ok(done.rows_affected())
}

/// Runs one query on `pool`; its rows.
async fn fetch_on<DB>(
    pool: &Pool<DB>,
    sql: &str,
    binds: &[Bind],
) -> Result<Vec<AdminRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<i32>: Decode<'q, DB>,
    i32: Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let rows = bind_all(sqlx::query(sql), binds).fetch_all(pool).await?;
    rows.iter().map(AdminRow::read).collect()
}

/// A transaction holding a Postgres advisory lock until it ends; nothing on SQLite, where
/// one sidecar owns the ledger file and its in-process locks suffice.
pub enum AdvisoryLock {
    /// The transaction holding the lock.
    Postgres(Transaction<'static, Postgres>),
    /// No database lock (SQLite).
    Local,
}

impl AdvisoryLock {
    /// Releases the lock (the transaction wrote nothing; committing it only ends it).
    pub async fn release(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Local => Ok(()),
        }
    }
}

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

    /// Runs one statement (`$n` placeholders bound to `binds` in order); the number of
    /// rows it changed.
    pub async fn execute(&self, sql: &str, binds: &[Bind]) -> Result<u64, sqlx::Error> {
        match self {
            Self::Sqlite(pool) => execute_on(pool, sql, binds).await,
            Self::Postgres(pool) => execute_on(pool, sql, binds).await,
        }
    }

    /// Runs one query (`$n` placeholders bound to `binds` in order) and maps each row.
    pub async fn fetch<T>(
        &self,
        sql: &str,
        binds: &[Bind],
        map: impl Fn(&AdminRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, sqlx::Error> {
        let rows = match self {
            Self::Sqlite(pool) => fetch_on(pool, sql, binds).await?,
            Self::Postgres(pool) => fetch_on(pool, sql, binds).await?,
        };
        rows.iter().map(map).collect()
    }

    /// Waits for the advisory lock named `key` (Postgres: a transaction-level lock, so
    /// sidecars sharing the database take turns; SQLite: none).
    pub async fn advisory_lock(&self, key: &str) -> Result<AdvisoryLock, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                Ok(AdvisoryLock::Postgres(tx))
            }
            Self::Sqlite(_) => Ok(AdvisoryLock::Local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_like_sqlx() {
        let row = AdminRow {
            columns: vec![
                ("n".into(), AdminValue::Int(3)),
                ("name".into(), AdminValue::Text("ops".into())),
                ("revoked_at_ms".into(), AdminValue::Null),
            ],
        };
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 3);
        assert_eq!(row.try_get::<String, _>("name").unwrap(), "ops");
        assert_eq!(
            row.try_get::<Option<i64>, _>("revoked_at_ms").unwrap(),
            None
        );
        assert_eq!(
            row.try_get::<Option<String>, _>("name").unwrap().as_deref(),
            Some("ops")
        );
        assert!(row.try_get::<i64, _>("name").is_err());
        assert!(row.try_get::<i64, _>("revoked_at_ms").is_err());
        assert!(matches!(
            row.try_get::<i64, _>("missing"),
            Err(sqlx::Error::ColumnNotFound(_))
        ));
    }
}
