//! The durable ledger: an append-only, hash-chained record of every credit mutation, the
//! ledger-first grant registry with its delivery outbox, and the queries finance, support
//! and the reconciler read.
//!
//! It is the sidecar's one database layer: the admin API's own tables go through it too
//! ([`AdminDb`], in `admin.rs`), with the same `$n` placeholders, [`Bind`] values and
//! transactions.
//!
//! One trait per role (see `roles.rs`), and [`Ledger`], which is all of them, with two
//! backends: [`SqliteLedger`] (embedded, one sidecar) and [`PostgresLedger`] (production,
//! several sidecars at once), whose shared logic and forwarding live in `common.rs`.
//! Entries are only ever inserted: no code path here updates or deletes one, and the
//! schema's triggers refuse it. This module stores and reads; it must not talk to Redis,
//! read streams or decide when to retry a delivery (the writer, outbox and reconciler
//! do). See `docs/ledger.md`.

mod admin;
mod chain;
mod common;
mod config_versions;
mod dead_letters;
mod entry;
mod fold;
mod grants;
mod migrations;
mod postgres;
mod rebuilds;
mod revenue;
mod roles;
mod sql;
mod sqlite;
mod usage_events;

use std::time::{SystemTime, UNIX_EPOCH};

pub use admin::{
    ADMIN_POOL_CONNECTIONS, AdminDb, AdminRow, AdminValue, AdvisoryLock, FromAdminValue,
};
pub use chain::{BreakKind, BrokenLink, ChainHead, VerifyReport, verify_customer};
pub use config_versions::ConfigVersionRecord;
pub use dead_letters::{
    DeadLetter, DeadLetterAction, DeadLetterActionRecord, DeadLetterReason, NewDeadLetter,
};
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
pub use rebuilds::RebuildRecord;
pub use revenue::{
    GrantBefore, GrantMonth, is_whole_months, month_deltas, revenue_of_months, utc_month_start,
};
pub use roles::{
    ENTRY_PAGE, Ledger, LedgerAdmin, LedgerControlAudit, LedgerDeadLetters, LedgerEntries,
    LedgerGrants, LedgerPricingVersions, LedgerRebuilds, LedgerUsageEvents,
};
pub use sql::Bind;
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
    /// Only entries of this hold id (found through the `(hold_id, customer)` index).
    pub hold_id: Option<String>,
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
    /// Only entries after this `(event_at_ms, seq)` in the query's order (after `seq`
    /// alone with `seq_order`): the last entry of the previous page, so a long history is
    /// read page by page instead of all at once.
    pub after: Option<(u64, i64)>,
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
