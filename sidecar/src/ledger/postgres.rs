//! The production ledger backend: Postgres, shared by several sidecars at once.
//!
//! Appends are safe concurrently: a batch locks the chain heads of its customers
//! (`SELECT … FOR UPDATE`, in sorted order so two batches never deadlock) before it reads
//! a head or inserts, so each customer's chain grows one entry at a time whatever the
//! number of writers. Migrations take a transaction-level advisory lock. It must never
//! update or delete an entry.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};

use super::chain::ChainHead;
use super::entry::{GENESIS_HASH, LedgerEntry, NewEntry, entry_hash};
use super::grants::{GrantRecord, OutboxState, RecordGrantOutcome};
use super::migrations::{CREATE_SCHEMA_MIGRATIONS, POSTGRES};
use super::sql::{self, Bind, Dialect, Heads, bind_entry, bind_grant};
use super::{AppendOutcome, EntryQuery, Ledger, LedgerError, LedgerResult, now_ms};

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
}

async fn find_entry(conn: &mut PgConnection, event_id: &str) -> LedgerResult<Option<LedgerEntry>> {
    let row = sqlx::query(&sql::select_by_event_id(Dialect::Postgres))
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(sql::entry_from_row).transpose()
}

async fn find_grant(conn: &mut PgConnection, grant_id: &str) -> LedgerResult<Option<GrantRecord>> {
    let row = sqlx::query(&sql::select_grant())
        .bind(grant_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(sql::grant_from_row).transpose()
}

async fn head_of(conn: &mut PgConnection, customer: &str) -> LedgerResult<Option<ChainHead>> {
    let row = sqlx::query(sql::SELECT_HEAD)
        .bind(customer)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => Some(ChainHead {
            last_seq: r.try_get("last_seq")?,
            last_hash: r.try_get("last_hash")?,
        }),
        None => None,
    })
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
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            let fail = |source: sqlx::Error| LedgerError::Migration {
                version: m.version,
                name: m.name,
                source,
            };
            // A plain string runs unprepared, so one migration may hold many statements.
            sqlx::Executor::execute(&mut *tx, m.sql)
                .await
                .map_err(fail)?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms() as i64)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            applied.push(m.version);
        }
        Ok(applied)
    }

    async fn applied_migrations(&self) -> LedgerResult<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("version").map_err(LedgerError::from))
            .collect()
    }

    async fn append_batch(&self, entries: &[NewEntry]) -> LedgerResult<Vec<AppendOutcome>> {
        for e in entries {
            e.validate()?;
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let recorded_at_ms = now_ms();
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
        let mut dirty = BTreeSet::new();
        let mut out = Vec::with_capacity(entries.len());
        let insert = sql::insert_entry(Dialect::Postgres);
        for e in entries {
            if let Some(existing) = find_entry(&mut tx, &e.event_id).await? {
                out.push(sql::existing_outcome(existing, e));
                continue;
            }
            if !heads.contains_key(&e.customer) {
                let head = head_of(&mut tx, &e.customer).await?.unwrap_or(ChainHead {
                    last_seq: 0,
                    last_hash: GENESIS_HASH.to_string(),
                });
                heads.insert(e.customer.clone(), head);
            }
            let prev_hash = heads[&e.customer].last_hash.clone();
            let hash = entry_hash(&prev_hash, e, recorded_at_ms)?;
            let row = bind_entry!(
                sqlx::query(&insert),
                e,
                recorded_at_ms,
                prev_hash.as_str(),
                hash.as_str()
            )
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => {
                    let seq: i64 = row.try_get("seq")?;
                    heads.insert(
                        e.customer.clone(),
                        ChainHead {
                            last_seq: seq,
                            last_hash: hash,
                        },
                    );
                    dirty.insert(e.customer.clone());
                    out.push(AppendOutcome::Inserted { seq });
                }
                None => {
                    let existing = find_entry(&mut tx, &e.event_id).await?.ok_or_else(|| {
                        LedgerError::Corrupt(format!("{} neither inserted nor found", e.event_id))
                    })?;
                    out.push(sql::existing_outcome(existing, e));
                }
            }
        }
        for customer in dirty {
            let head = &heads[&customer];
            sqlx::query(sql::UPSERT_HEAD)
                .bind(&customer)
                .bind(head.last_seq)
                .bind(&head.last_hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn entry(&self, event_id: &str) -> LedgerResult<Option<LedgerEntry>> {
        let mut conn = self.pool.acquire().await?;
        find_entry(&mut conn, event_id).await
    }

    async fn entries(&self, query: &EntryQuery) -> LedgerResult<Vec<LedgerEntry>> {
        let (text, binds) = sql::select_entries(Dialect::Postgres, query);
        let mut q = sqlx::query(&text);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(sql::entry_from_row).collect()
    }

    async fn redis_generation(&self, shard: u32) -> LedgerResult<Option<String>> {
        let row = sqlx::query("SELECT generation FROM redis_generations WHERE shard = $1")
            .bind(i64::from(shard))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>(0)?),
            None => None,
        })
    }

    async fn set_redis_generation(&self, shard: u32, generation: &str) -> LedgerResult<()> {
        sqlx::query(
            "INSERT INTO redis_generations (shard, generation, set_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (shard) DO UPDATE SET generation = excluded.generation, set_at_ms = excluded.set_at_ms",
        )
        .bind(i64::from(shard))
        .bind(generation)
        .bind(now_ms() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn customers(&self) -> LedgerResult<Vec<String>> {
        let rows = sqlx::query(sql::SELECT_CUSTOMERS)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn chain_head(&self, customer: &str) -> LedgerResult<Option<ChainHead>> {
        let mut conn = self.pool.acquire().await?;
        head_of(&mut conn, customer).await
    }

    async fn amount_sums(&self) -> LedgerResult<Vec<(String, String, i64)>> {
        let rows = sqlx::query(sql::SELECT_AMOUNT_SUMS)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("customer")?,
                    r.try_get("credit_type")?,
                    r.try_get("total")?,
                ))
            })
            .collect()
    }

    async fn record_grant(&self, grant: &GrantRecord) -> LedgerResult<RecordGrantOutcome> {
        grant.validate()?;
        let mut tx = self.pool.begin().await?;
        let inserted = bind_grant!(sqlx::query(sql::INSERT_GRANT), grant)
            .fetch_optional(&mut *tx)
            .await?;
        if inserted.is_none() {
            let existing = find_grant(&mut tx, &grant.grant_id).await?.ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "grant {} neither inserted nor found",
                    grant.grant_id
                ))
            })?;
            tx.rollback().await?;
            return Ok(if existing.same_grant(grant) {
                RecordGrantOutcome::AlreadyRecorded
            } else {
                RecordGrantOutcome::Conflict {
                    existing: Box::new(existing),
                }
            });
        }
        sqlx::query(sql::INSERT_OUTBOX)
            .bind(&grant.grant_id)
            .bind(grant.created_at_ms as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RecordGrantOutcome::Recorded)
    }

    async fn pending_grants(&self, limit: u32) -> LedgerResult<Vec<GrantRecord>> {
        let rows = sqlx::query(&sql::select_pending_grants())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::grant_from_row).collect()
    }

    async fn mark_grant_applied(&self, grant_id: &str, at_ms: u64) -> LedgerResult<bool> {
        let done = sqlx::query(sql::MARK_APPLIED)
            .bind(grant_id)
            .bind(i64::try_from(at_ms).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_grant_attempt_failed(&self, grant_id: &str, error: &str) -> LedgerResult<bool> {
        let done = sqlx::query(sql::MARK_FAILED)
            .bind(grant_id)
            .bind(error.replace('\0', ""))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_state(&self, grant_id: &str) -> LedgerResult<Option<OutboxState>> {
        let row = sqlx::query(sql::SELECT_OUTBOX)
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::outbox_from_row).transpose()
    }

    async fn grants_of(&self, customer: &str) -> LedgerResult<Vec<GrantRecord>> {
        let rows = sqlx::query(&sql::select_grants_of())
            .bind(customer)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::grant_from_row).collect()
    }
}
