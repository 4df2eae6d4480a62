//! Redis rebuilds owed to customers (`redis_rebuilds`, migration 10): a change booked in
//! the ledger alone (a grant void) needs the customer's Redis state rebuilt from the ledger;
//! the row is recorded before the rebuild is tried and marked done once Redis holds the
//! ledger's state, so a rebuild that cannot run now is retried until it is done.
//!
//! This module holds the record and the SQL; when to retry is the rebuild job's decision
//! (`jobs::rebuilds`). A row is updated only to count an attempt or to mark it done.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::LedgerResult;
use super::common::{RowsAffected, Shared};

/// One rebuild owed to a customer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildRecord {
    /// Unique per cause: `void-<grant id>` for a grant void.
    pub rebuild_id: String,
    /// The customer to rebuild.
    pub customer: String,
    /// Why, for a person (`void of grant g-1`).
    pub reason: String,
    /// When it was recorded, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Attempts that did not finish it.
    pub attempts: u64,
    /// Why the last attempt did not finish it.
    pub last_error: Option<String>,
    /// When the job tries next, ms since the Unix epoch.
    pub next_attempt_at_ms: u64,
    /// When Redis was rebuilt, ms since the Unix epoch; `None` while it is owed.
    pub done_at_ms: Option<u64>,
}

impl RebuildRecord {
    /// A rebuild owed from `at_ms`, due at once.
    pub fn owed(rebuild_id: &str, customer: &str, reason: &str, at_ms: u64) -> Self {
        Self {
            rebuild_id: rebuild_id.to_string(),
            customer: customer.to_string(),
            reason: reason.to_string(),
            created_at_ms: at_ms,
            attempts: 0,
            last_error: None,
            next_attempt_at_ms: at_ms,
            done_at_ms: None,
        }
    }

    /// `"done"` or `"pending"`, as the admin API answers it.
    pub fn state(&self) -> &'static str {
        if self.done_at_ms.is_some() {
            "done"
        } else {
            "pending"
        }
    }
}

const INSERT: &str = "INSERT INTO redis_rebuilds (rebuild_id, customer, reason, created_at_ms, \
     next_attempt_at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rebuild_id) DO NOTHING";

const SELECT: &str = "SELECT rebuild_id, customer, reason, created_at_ms, attempts, last_error, \
     next_attempt_at_ms, done_at_ms FROM redis_rebuilds";

const MARK_DONE: &str = "UPDATE redis_rebuilds SET done_at_ms = $2 \
     WHERE rebuild_id = $1 AND done_at_ms IS NULL";

const MARK_RETRY: &str = "UPDATE redis_rebuilds SET attempts = attempts + 1, last_error = $2, \
     next_attempt_at_ms = $3 WHERE rebuild_id = $1 AND done_at_ms IS NULL";

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl<DB> Shared<'_, DB>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    /// Records a rebuild owed; false when its id was recorded before (the first stays).
    pub(crate) async fn record_rebuild(&self, rebuild: &RebuildRecord) -> LedgerResult<bool> {
        let done = sqlx::query(INSERT)
            .bind(rebuild.rebuild_id.as_str())
            .bind(rebuild.customer.as_str())
            .bind(rebuild.reason.as_str())
            .bind(int(rebuild.created_at_ms))
            .bind(int(rebuild.next_attempt_at_ms))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The rebuild recorded under `rebuild_id`.
    pub(crate) async fn rebuild(&self, rebuild_id: &str) -> LedgerResult<Option<RebuildRecord>> {
        let row = sqlx::query(&format!("{SELECT} WHERE rebuild_id = $1"))
            .bind(rebuild_id)
            .fetch_optional(self.readers)
            .await?;
        row.as_ref().map(rebuild_from_row::<DB>).transpose()
    }

    /// Rebuilds not done yet, the soonest due first, at most `limit`.
    pub(crate) async fn owed_rebuilds(&self, limit: u32) -> LedgerResult<Vec<RebuildRecord>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE done_at_ms IS NULL ORDER BY next_attempt_at_ms, rebuild_id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.readers)
        .await?;
        rows.iter().map(rebuild_from_row::<DB>).collect()
    }

    /// Marks a rebuild done at `at_ms`; false when unknown or done before.
    pub(crate) async fn mark_rebuild_done(
        &self,
        rebuild_id: &str,
        at_ms: u64,
    ) -> LedgerResult<bool> {
        let done = sqlx::query(MARK_DONE)
            .bind(rebuild_id)
            .bind(int(at_ms))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts a failed attempt, keeps its error and sets the next attempt; false when
    /// unknown or done.
    pub(crate) async fn mark_rebuild_retry(
        &self,
        rebuild_id: &str,
        error: &str,
        next_attempt_at_ms: u64,
    ) -> LedgerResult<bool> {
        let done = sqlx::query(MARK_RETRY)
            .bind(rebuild_id)
            .bind(error)
            .bind(int(next_attempt_at_ms))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A row of [`SELECT`].
fn rebuild_from_row<DB>(row: &DB::Row) -> LedgerResult<RebuildRecord>
where
    DB: Database,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    Ok(RebuildRecord {
        rebuild_id: row.try_get("rebuild_id")?,
        customer: row.try_get("customer")?,
        reason: row.try_get("reason")?,
        created_at_ms: uint(row.try_get("created_at_ms")?),
        attempts: uint(row.try_get("attempts")?),
        last_error: row.try_get("last_error")?,
        next_attempt_at_ms: uint(row.try_get("next_attempt_at_ms")?),
        done_at_ms: row.try_get::<Option<i64>, _>("done_at_ms")?.map(uint),
    })
}
