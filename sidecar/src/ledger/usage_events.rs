//! The record of usage events the product reported (`usage_events`, migration 5): what was
//! received and how it was priced, written before the event is burned so nothing reported
//! is lost. Append-only; a duplicate (same customer and idempotency key) is not recorded
//! twice.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::LedgerResult;
use super::common::{RowsAffected, Shared};

/// One usage event as received and priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEventRecord {
    /// The customer.
    pub customer: String,
    /// The product's key for the event, unique per customer.
    pub idempotency_key: String,
    /// The feature used.
    pub feature: String,
    /// Units used.
    pub quantity: u64,
    /// When the usage happened, ms since the Unix epoch.
    pub occurred_at_ms: u64,
    /// When the sidecar received it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The credit type burned.
    pub credit_type: String,
    /// The price, in the credit type's smallest unit.
    pub amount: u64,
    /// The hold that burns it (its ledger entries carry the burn).
    pub hold_id: String,
    /// The label of the pricing version that priced it (the one in force at
    /// `occurred_at_ms`, from `config_versions`).
    pub pricing_version: String,
    /// The event's metadata object as JSON text, if any.
    pub metadata: Option<String>,
}

/// Inserts `$1..$11` in the column order of [`UsageEventRecord`]; a duplicate key does
/// nothing.
const INSERT_USAGE_EVENT: &str = "INSERT INTO usage_events (customer, \
     idempotency_key, feature, quantity, occurred_at_ms, received_at_ms, credit_type, amount, \
     hold_id, pricing_version, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (customer, idempotency_key) DO NOTHING";

/// Usage events of customer `$1` after key `$2` (in key order, at most `$3`) whose burn the
/// ledger has not recorded: no `hold_posted` entry of the customer under the event's request
/// id `usage-event:<key>`. Found through the primary key and the `request_id` index.
const SELECT_UNBURNED: &str = "SELECT customer, idempotency_key, feature, quantity, \
     occurred_at_ms, received_at_ms, credit_type, amount, hold_id, pricing_version, metadata \
     FROM usage_events u WHERE u.customer = $1 AND u.idempotency_key > $2 AND NOT EXISTS \
     (SELECT 1 FROM ledger_entries e WHERE e.request_id = 'usage-event:' || u.idempotency_key \
     AND e.customer = u.customer AND e.kind = 'hold_posted') \
     ORDER BY u.idempotency_key LIMIT $3";

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
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    /// Records a usage event as received; false when its key was recorded before.
    pub(crate) async fn record_usage_event(&self, event: &UsageEventRecord) -> LedgerResult<bool> {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let done = sqlx::query(INSERT_USAGE_EVENT)
            .bind(event.customer.as_str())
            .bind(event.idempotency_key.as_str())
            .bind(event.feature.as_str())
            .bind(int(event.quantity))
            .bind(int(event.occurred_at_ms))
            .bind(int(event.received_at_ms))
            .bind(event.credit_type.as_str())
            .bind(int(event.amount))
            .bind(event.hold_id.as_str())
            .bind(event.pricing_version.as_str())
            .bind(event.metadata.as_deref())
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` usage events of `customer` with keys after `after_key` ("" for the
    /// first page), in key order, whose burn is not in the ledger.
    pub(crate) async fn unburned_usage_events(
        &self,
        customer: &str,
        after_key: &str,
        limit: u32,
    ) -> LedgerResult<Vec<UsageEventRecord>> {
        let rows = sqlx::query(SELECT_UNBURNED)
            .bind(customer)
            .bind(after_key)
            .bind(i64::from(limit))
            .fetch_all(self.readers)
            .await?;
        rows.iter().map(usage_event_from_row::<DB>).collect()
    }
}

/// A row of [`SELECT_UNBURNED`].
fn usage_event_from_row<DB>(row: &DB::Row) -> LedgerResult<UsageEventRecord>
where
    DB: Database,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    Ok(UsageEventRecord {
        customer: row.try_get("customer")?,
        idempotency_key: row.try_get("idempotency_key")?,
        feature: row.try_get("feature")?,
        quantity: uint(row.try_get("quantity")?),
        occurred_at_ms: uint(row.try_get("occurred_at_ms")?),
        received_at_ms: uint(row.try_get("received_at_ms")?),
        credit_type: row.try_get("credit_type")?,
        amount: uint(row.try_get("amount")?),
        hold_id: row.try_get("hold_id")?,
        pricing_version: row.try_get("pricing_version")?,
        metadata: row.try_get("metadata")?,
    })
}
