//! The durable ledger: an append-only, hash-chained record of every credit mutation, the
//! ledger-first grant registry with its delivery outbox, and the queries finance, support
//! and the reconciler read.
//!
//! One trait, [`Ledger`], with two backends: [`SqliteLedger`] (embedded, one sidecar) and
//! [`PostgresLedger`] (production, several sidecars at once). Entries are only ever
//! inserted: no code path here updates or deletes one, and the schema's triggers refuse
//! it. This module stores and reads; it must not talk to Redis, read streams or decide
//! when to retry a delivery (the writer, outbox and reconciler do). See `docs/ledger.md`.

mod chain;
mod common;
mod config_versions;
mod entry;
mod fold;
mod grants;
mod migrations;
mod postgres;
mod sql;
mod sqlite;
mod usage_events;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use creditgate_protocol::control::AuditEntry;

pub use chain::{BreakKind, BrokenLink, ChainHead, VerifyReport, verify_customer};
pub use config_versions::ConfigVersionRecord;
pub use entry::{
    ADJUSTMENT_EVENT_PREFIX, Adjustment, EntryKind, GENESIS_HASH, LedgerEntry, NewEntry,
    canonical_encoding, canonical_json, entry_hash, event_from_details,
};
pub use fold::{
    LedgerBalance, LedgerGrantBalance, LedgerTypeBalance, Revenue, UsageRow, fold_balance,
    fold_revenue, fold_usage, utc_day,
};
pub use grants::{GrantRecord, OutboxState, RecordGrantOutcome};
pub use migrations::Migration;
pub use postgres::{DEFAULT_PG_MAX_CONNECTIONS, PostgresLedger};
pub use sqlite::{DEFAULT_SQLITE_READERS, SqliteLedger};
pub use usage_events::UsageEventRecord;

/// A ledger failure.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed or refused a statement (connection lost, constraint, trigger).
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An entry or grant that cannot be stored (bad id, text too long, out of range).
    #[error("invalid ledger input: {0}")]
    InvalidEntry(String),
    /// A stored row that cannot be read back (unknown kind, bad JSON, bad event fields).
    #[error("corrupt ledger row: {0}")]
    Corrupt(String),
    /// A migration failed.
    #[error("ledger migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// Why.
        source: sqlx::Error,
    },
}

/// Result of a ledger call.
pub type LedgerResult<T> = Result<T, LedgerError>;

/// What appending one entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Inserted with this seq.
    Inserted {
        /// The entry's seq.
        seq: i64,
    },
    /// An entry with this event id and the same fields exists; skipped (a redelivery).
    Duplicate {
        /// The existing entry's seq.
        seq: i64,
    },
    /// An entry with this event id but other fields exists; NOT inserted. The caller must
    /// raise an alert: two different mutations claim one id.
    Conflict {
        /// The event id.
        event_id: String,
        /// The entry kept under it.
        existing: Box<LedgerEntry>,
    },
}

/// Which entries to load; every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryQuery {
    /// Only this customer's entries.
    pub customer: Option<String>,
    /// Only entries of this request id.
    pub request_id: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EntryKind>,
    /// Only entries with `event_at_ms >= from_ms`.
    pub from_ms: Option<u64>,
    /// Only entries with `event_at_ms < until_ms`.
    pub until_ms: Option<u64>,
    /// Only `hold_placed` entries whose hold has no resolution entry yet.
    pub pending_holds_only: bool,
    /// Order by seq alone (chain order) instead of event time, then seq.
    pub seq_order: bool,
    /// At most this many entries (none: all).
    pub limit: Option<u64>,
}

/// One customer's figures for one credit type, for the reconciler (credit units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerTotal {
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Σ entry amounts: must equal Redis `book_available + held`.
    pub total: i64,
    /// Credits in pending holds: must equal Redis `held`.
    pub held: i64,
}

/// Milliseconds since the Unix epoch on the sidecar clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The durable ledger. Object-safe: the sidecar holds an `Arc<dyn Ledger>`.
///
/// Amounts are credit units of the entry's credit type; times are ms since the Unix
/// epoch; money is currency micro-units.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Applies the migrations not applied yet, in version order, recording each in
    /// `schema_migrations`; returns the versions applied now (empty when up to date).
    async fn migrate(&self) -> LedgerResult<Vec<i64>>;

    /// Versions recorded in `schema_migrations`, ascending.
    async fn applied_migrations(&self) -> LedgerResult<Vec<i64>>;

    /// Appends a batch in ONE transaction, in order: each entry is inserted, skipped as a
    /// duplicate, or reported as a conflict (not inserted; the rest still commits). Each
    /// inserted entry joins its customer's hash chain. On error nothing is committed.
    async fn append_batch(&self, entries: &[NewEntry]) -> LedgerResult<Vec<AppendOutcome>>;

    /// The entry with this event id.
    async fn entry(&self, event_id: &str) -> LedgerResult<Option<LedgerEntry>>;

    /// Entries matching `query`, by event time then seq (or by seq alone).
    async fn entries(&self, query: &EntryQuery) -> LedgerResult<Vec<LedgerEntry>>;

    /// Every customer with entries or a chain head, in byte order.
    async fn customers(&self) -> LedgerResult<Vec<String>>;

    /// The generation marker this ledger's sidecars set in a Redis shard, if any.
    async fn redis_generation(&self, shard: u32) -> LedgerResult<Option<String>>;

    /// Records the generation marker set in a Redis shard.
    async fn set_redis_generation(&self, shard: u32, generation: &str) -> LedgerResult<()>;

    /// Copies audit entries of fleet control changes; an entry already recorded (same id)
    /// is skipped. Returns how many were new.
    async fn record_control_audit(&self, entries: &[AuditEntry]) -> LedgerResult<u64>;

    /// The newest recorded control changes, newest first, at most `limit`.
    async fn control_audit(&self, limit: u32) -> LedgerResult<Vec<AuditEntry>>;

    /// The customer's chain head.
    async fn chain_head(&self, customer: &str) -> LedgerResult<Option<ChainHead>>;

    /// Σ amount per customer and credit type (the ledger total), in key order.
    async fn amount_sums(&self) -> LedgerResult<Vec<(String, String, i64)>>;

    /// Records a grant and its outbox row in one transaction; idempotent by grant id.
    async fn record_grant(&self, grant: &GrantRecord) -> LedgerResult<RecordGrantOutcome>;

    /// Grants whose outbox row is not applied yet, oldest first, at most `limit`.
    async fn pending_grants(&self, limit: u32) -> LedgerResult<Vec<GrantRecord>>;

    /// Marks a grant delivered to Redis at `at_ms`; false when it is unknown or was
    /// marked before (the first mark stays).
    async fn mark_grant_applied(&self, grant_id: &str, at_ms: u64) -> LedgerResult<bool>;

    /// Records a usage event as received and priced, before it is burned; false when the
    /// customer's idempotency key was recorded before (the first record stays).
    async fn record_usage_event(&self, event: &UsageEventRecord) -> LedgerResult<bool>;

    /// Records a published pricing config version; false when its number was recorded
    /// before (the first record stays).
    async fn record_config_version(&self, record: &ConfigVersionRecord) -> LedgerResult<bool>;

    /// The recorded config versions numbered above `after`, oldest first (0: all).
    async fn config_versions_after(&self, after: u64) -> LedgerResult<Vec<ConfigVersionRecord>>;

    /// Counts a failed delivery attempt and keeps its error; false when the grant is
    /// unknown or already applied.
    async fn mark_grant_attempt_failed(&self, grant_id: &str, error: &str) -> LedgerResult<bool>;

    /// The delivery state of a grant's outbox row.
    async fn outbox_state(&self, grant_id: &str) -> LedgerResult<Option<OutboxState>>;

    /// The registry's grants of a customer, oldest first (for rebuilding Redis).
    async fn grants_of(&self, customer: &str) -> LedgerResult<Vec<GrantRecord>>;

    /// Checks the hash chain of one customer, or of every customer in byte order, and
    /// reports the first broken link.
    async fn verify_chain(&self, customer: Option<&str>) -> LedgerResult<VerifyReport> {
        let customers = match customer {
            Some(c) => vec![c.to_string()],
            None => self.customers().await?,
        };
        let mut report = VerifyReport::default();
        for c in customers {
            let entries = self
                .entries(&EntryQuery {
                    customer: Some(c.clone()),
                    seq_order: true,
                    ..EntryQuery::default()
                })
                .await?;
            let head = self.chain_head(&c).await?;
            let (checked, broken) = verify_customer(&c, &entries, head.as_ref());
            report.customers_checked += 1;
            report.entries_checked += checked;
            if broken.is_some() {
                report.first_broken = broken;
                break;
            }
        }
        Ok(report)
    }

    /// The customer's balance at `at_ms`: entries with `event_at_ms <= at_ms`, folded
    /// in event time, then seq order.
    async fn balance_at(&self, customer: &str, at_ms: u64) -> LedgerResult<LedgerBalance> {
        let entries = self
            .entries(&EntryQuery {
                customer: Some(customer.to_string()),
                until_ms: Some(at_ms.saturating_add(1)),
                ..EntryQuery::default()
            })
            .await?;
        fold_balance(customer, at_ms, &entries)
    }

    /// Posted holds in `[from_ms, to_ms)` by UTC day, feature and credit type, of one
    /// customer or all, with the unbilled overage of those days.
    async fn usage(
        &self,
        customer: Option<&str>,
        from_ms: u64,
        to_ms: u64,
    ) -> LedgerResult<Vec<UsageRow>> {
        let entries = self
            .entries(&EntryQuery {
                customer: customer.map(str::to_string),
                kinds: vec![EntryKind::HoldPosted, EntryKind::Overage],
                from_ms: Some(from_ms),
                until_ms: Some(to_ms),
                ..EntryQuery::default()
            })
            .await?;
        fold_usage(&entries)
    }

    /// The hold entries of a request (placed, then posted, voided or expired, and the
    /// overage of a settle that could not take everything), in seq order, with the grants
    /// drawn, burned and returned in each entry's `grants`.
    async fn trail(&self, request_id: &str) -> LedgerResult<Vec<LedgerEntry>> {
        self.entries(&EntryQuery {
            request_id: Some(request_id.to_string()),
            kinds: vec![
                EntryKind::HoldPlaced,
                EntryKind::HoldPosted,
                EntryKind::HoldVoided,
                EntryKind::HoldExpired,
                EntryKind::Overage,
            ],
            seq_order: true,
            ..EntryQuery::default()
        })
        .await
    }

    /// Revenue of `[from_ms, to_ms)`, currency micro-units (see [`fold_revenue`]).
    async fn revenue(&self, from_ms: u64, to_ms: u64) -> LedgerResult<Revenue> {
        let entries = self
            .entries(&EntryQuery {
                kinds: vec![
                    EntryKind::GrantAdded,
                    EntryKind::HoldPosted,
                    EntryKind::HoldVoided,
                    EntryKind::HoldExpired,
                    EntryKind::GrantExpired,
                    EntryKind::Overage,
                ],
                until_ms: Some(to_ms),
                ..EntryQuery::default()
            })
            .await?;
        fold_revenue(from_ms, to_ms, &entries)
    }

    /// Every customer's total and held per credit type, in key order, for the reconciler.
    async fn customer_totals(&self) -> LedgerResult<Vec<CustomerTotal>> {
        let mut out: BTreeMap<(String, String), CustomerTotal> = BTreeMap::new();
        for (customer, credit_type, total) in self.amount_sums().await? {
            out.insert(
                (customer.clone(), credit_type.clone()),
                CustomerTotal {
                    customer,
                    credit_type,
                    total,
                    held: 0,
                },
            );
        }
        let pending = self
            .entries(&EntryQuery {
                pending_holds_only: true,
                ..EntryQuery::default()
            })
            .await?;
        for entry in pending {
            let Some(event) = entry.event() else { continue };
            if let creditgate_protocol::EventBody::HoldPlaced { amount, .. } = event?.body {
                let e = entry.entry;
                out.entry((e.customer.clone(), e.credit_type.clone()))
                    .or_insert_with(|| CustomerTotal {
                        customer: e.customer,
                        credit_type: e.credit_type,
                        total: 0,
                        held: 0,
                    })
                    .held += amount as i64;
            }
        }
        Ok(out.into_values().collect())
    }
}
