//! What the ledger can do, one trait per role: the schema and Redis generation markers
//! ([`LedgerAdmin`]), the hash-chained entries and the queries folded from them
//! ([`LedgerEntries`]), the grant registry and its delivery outbox ([`LedgerGrants`]), the
//! copy of fleet control changes ([`LedgerControlAudit`]), the published pricing versions
//! ([`LedgerPricingVersions`]) and the received usage events ([`LedgerUsageEvents`]).
//! [`Ledger`] is all of them, for code that holds the whole ledger.
//!
//! A caller names the roles it uses, so a job's signature says what it reads and writes.
//! Only declarations and the queries derived from other methods live here: no SQL.

use std::collections::BTreeMap;

use async_trait::async_trait;
use creditgate_protocol::control::AuditEntry;

use super::chain::{ChainHead, VerifyReport, verify_customer};
use super::config_versions::ConfigVersionRecord;
use super::dead_letters::{DeadLetter, DeadLetterActionRecord, NewDeadLetter};
use super::entry::{EntryKind, LedgerEntry, NewEntry};
use super::fold::{CustomerFold, LedgerBalance, Revenue, UsageRow, fold_revenue, fold_usage};
use super::grants::{GrantRecord, OutboxState, RecordGrantOutcome};
use super::rebuilds::RebuildRecord;
use super::revenue::{GrantBefore, GrantMonth, is_whole_months, revenue_of_months};
use super::usage_events::UsageEventRecord;
use super::{AppendOutcome, CustomerTotal, EntryQuery, LedgerResult};

/// Most entries one read of a customer's history returns: queries that fold a whole
/// history (a balance, a rebuild) read it page by page, so memory stays at one page
/// (about 1 to 2 MiB decoded) whatever the history's length.
pub const ENTRY_PAGE: u64 = 1_000;

/// The whole durable ledger: every role. Object-safe: the sidecar holds an
/// `Arc<dyn Ledger>`. Implemented for every type that has all the roles.
///
/// Amounts are credit units of the entry's credit type; times are ms since the Unix
/// epoch; money is currency micro-units.
pub trait Ledger:
    LedgerAdmin
    + LedgerEntries
    + LedgerGrants
    + LedgerControlAudit
    + LedgerPricingVersions
    + LedgerUsageEvents
    + LedgerDeadLetters
    + LedgerRebuilds
{
}

impl<T> Ledger for T where
    T: LedgerAdmin
        + LedgerEntries
        + LedgerGrants
        + LedgerControlAudit
        + LedgerPricingVersions
        + LedgerUsageEvents
        + LedgerDeadLetters
        + LedgerRebuilds
        + ?Sized
{
}

/// The database itself: which backend, its migrations, and the generation markers the
/// sidecars set in Redis shards.
#[async_trait]
pub trait LedgerAdmin: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Applies the migrations not applied yet, in version order, recording each in
    /// `schema_migrations`; returns the versions applied now (empty when up to date).
    async fn migrate(&self) -> LedgerResult<Vec<i64>>;

    /// Versions recorded in `schema_migrations`, ascending.
    async fn applied_migrations(&self) -> LedgerResult<Vec<i64>>;

    /// The generation marker this ledger's sidecars set in a Redis shard, if any.
    async fn redis_generation(&self, shard: u32) -> LedgerResult<Option<String>>;

    /// Records the generation marker set in a Redis shard.
    async fn set_redis_generation(&self, shard: u32, generation: &str) -> LedgerResult<()>;

    /// The stream ids of the newest `limit` entries recorded from a shard's stream, newest
    /// first: the positions the rollback check compares with Redis.
    async fn shard_stream_ids(&self, shard: u32, limit: u32) -> LedgerResult<Vec<String>>;
}

/// The append-only, hash-chained entries, and what finance, support and the reconciler
/// read from them.
#[async_trait]
pub trait LedgerEntries: Send + Sync {
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

    /// The customer's chain head.
    async fn chain_head(&self, customer: &str) -> LedgerResult<Option<ChainHead>>;

    /// Σ amount per customer and credit type (the ledger total), in key order.
    async fn amount_sums(&self) -> LedgerResult<Vec<(String, String, i64)>>;

    /// The revenue rollup of the whole UTC months `[from_ms, to_ms)`: every grant with
    /// credits left at `to_ms` or consumed in the window, and the window's rows; `None`
    /// from a ledger that keeps no rollup, whose revenue folds the entries instead.
    async fn revenue_months(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> LedgerResult<Option<(Vec<GrantBefore>, Vec<GrantMonth>)>> {
        let _ = (from_ms, to_ms);
        Ok(None)
    }

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
    /// in event time, then seq order, [`ENTRY_PAGE`] entries at a time (a customer's
    /// history can be millions of entries; only the fold's state is kept).
    async fn balance_at(&self, customer: &str, at_ms: u64) -> LedgerResult<LedgerBalance> {
        let mut fold = CustomerFold::default();
        let mut query = EntryQuery {
            customer: Some(customer.to_string()),
            until_ms: Some(at_ms.saturating_add(1)),
            limit: Some(ENTRY_PAGE),
            ..EntryQuery::default()
        };
        loop {
            let page = self.entries(&query).await?;
            for entry in &page {
                fold.apply(entry)?;
            }
            match page.last() {
                Some(last) if page.len() as u64 == ENTRY_PAGE => {
                    query.after = Some((last.entry.event_at_ms, last.seq));
                }
                _ => return Ok(fold.balance(customer, at_ms)),
            }
        }
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

    /// Revenue of `[from_ms, to_ms)`, currency micro-units (see [`fold_revenue`]). A window
    /// of whole UTC months is read from the revenue rollup (a few rows per grant, see
    /// [`revenue_of_months`]) and the window's overage entries; any other window folds
    /// every entry before `to_ms`.
    async fn revenue(&self, from_ms: u64, to_ms: u64) -> LedgerResult<Revenue> {
        if is_whole_months(from_ms, to_ms)
            && let Some((grants, window)) = self.revenue_months(from_ms, to_ms).await?
        {
            let overages = self
                .entries(&EntryQuery {
                    kinds: vec![EntryKind::Overage],
                    from_ms: Some(from_ms),
                    until_ms: Some(to_ms),
                    ..EntryQuery::default()
                })
                .await?;
            let mut out = fold_revenue(from_ms, to_ms, &overages)?;
            let (recognized, breakage, deferred) = revenue_of_months(&grants, &window);
            out.recognized_micros = recognized;
            out.breakage_micros = breakage;
            out.deferred_micros_at_end = deferred;
            return Ok(out);
        }
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

/// The ledger-first grant registry and its delivery outbox: a grant is recorded here
/// before it is applied to Redis, and the outbox tracks its delivery.
#[async_trait]
pub trait LedgerGrants: Send + Sync {
    /// Records a grant and its outbox row in one transaction; idempotent by grant id.
    async fn record_grant(&self, grant: &GrantRecord) -> LedgerResult<RecordGrantOutcome>;

    /// Grants whose outbox row is not applied yet, oldest first, at most `limit`.
    async fn pending_grants(&self, limit: u32) -> LedgerResult<Vec<GrantRecord>>;

    /// Marks a grant delivered to Redis at `at_ms`; false when it is unknown or was
    /// marked before (the first mark stays).
    async fn mark_grant_applied(&self, grant_id: &str, at_ms: u64) -> LedgerResult<bool>;

    /// Counts a failed delivery attempt and keeps its error; false when the grant is
    /// unknown or already applied.
    async fn mark_grant_attempt_failed(&self, grant_id: &str, error: &str) -> LedgerResult<bool>;

    /// The delivery state of a grant's outbox row.
    async fn outbox_state(&self, grant_id: &str) -> LedgerResult<Option<OutboxState>>;

    /// The registry's grants of a customer, oldest first (for rebuilding Redis).
    async fn grants_of(&self, customer: &str) -> LedgerResult<Vec<GrantRecord>>;
}

/// The durable copy of fleet control changes (modes, kill switches) mirrored from Redis.
#[async_trait]
pub trait LedgerControlAudit: Send + Sync {
    /// Copies audit entries of fleet control changes; an entry already recorded (same id)
    /// is skipped. Returns how many were new.
    async fn record_control_audit(&self, entries: &[AuditEntry]) -> LedgerResult<u64>;

    /// The newest recorded control changes, newest first, at most `limit`.
    async fn control_audit(&self, limit: u32) -> LedgerResult<Vec<AuditEntry>>;
}

/// Every pricing config version the sidecars published to the fleet.
#[async_trait]
pub trait LedgerPricingVersions: Send + Sync {
    /// Records a published pricing config version; false when its number was recorded
    /// before (the first record stays).
    async fn record_config_version(&self, record: &ConfigVersionRecord) -> LedgerResult<bool>;

    /// The recorded config versions numbered above `after`, oldest first (0: all).
    async fn config_versions_after(&self, after: u64) -> LedgerResult<Vec<ConfigVersionRecord>>;
}

/// Usage events received over HTTP, recorded before they are burned.
#[async_trait]
pub trait LedgerUsageEvents: Send + Sync {
    /// Records a usage event as received and priced, before it is burned; false when the
    /// customer's idempotency key was recorded before (the first record stays).
    async fn record_usage_event(&self, event: &UsageEventRecord) -> LedgerResult<bool>;

    /// Up to `limit` of `customer`'s recorded usage events whose burn the ledger has not
    /// recorded (no `hold_posted` under request id `usage-event:<key>`), with keys after
    /// `after_key` ("" for the first page), in key order.
    async fn unburned_usage_events(
        &self,
        customer: &str,
        after_key: &str,
        limit: u32,
    ) -> LedgerResult<Vec<UsageEventRecord>>;
}

/// Stream entries the writer could not apply, and what operators did about them. A
/// replayed letter goes through the entries role, hence the supertrait: the writer holds
/// one `Arc<dyn LedgerDeadLetters>` for both.
#[async_trait]
pub trait LedgerDeadLetters: LedgerEntries {
    /// Records an entry the writer could not apply; false when this stream entry (same
    /// shard, stream id and fields) was recorded before, as after a redelivery.
    async fn record_dead_letter(&self, letter: &NewDeadLetter) -> LedgerResult<bool>;

    /// Up to `limit` dead letters, newest first; only unresolved ones when `open_only`.
    async fn dead_letters(&self, open_only: bool, limit: u32) -> LedgerResult<Vec<DeadLetter>>;

    /// The dead letter numbered `id`, with its actions.
    async fn dead_letter(&self, id: i64) -> LedgerResult<Option<DeadLetter>>;

    /// Records what was done about dead letter `id` and by whom.
    async fn record_dead_letter_action(
        &self,
        id: i64,
        action: &DeadLetterActionRecord,
    ) -> LedgerResult<()>;
}

/// Redis rebuilds owed to customers after changes booked in the ledger alone (a grant
/// void): recorded before they are tried, retried by the sidecar until done.
#[async_trait]
pub trait LedgerRebuilds: Send + Sync {
    /// Records a rebuild owed; false when its id was recorded before (the first stays).
    async fn record_rebuild(&self, rebuild: &RebuildRecord) -> LedgerResult<bool>;

    /// The rebuild recorded under `rebuild_id`.
    async fn rebuild(&self, rebuild_id: &str) -> LedgerResult<Option<RebuildRecord>>;

    /// Rebuilds not done yet, the soonest due first, at most `limit`.
    async fn owed_rebuilds(&self, limit: u32) -> LedgerResult<Vec<RebuildRecord>>;

    /// Marks a rebuild done at `at_ms` (ms since the Unix epoch); false when unknown or
    /// done before.
    async fn mark_rebuild_done(&self, rebuild_id: &str, at_ms: u64) -> LedgerResult<bool>;

    /// Counts a failed attempt with its `error` and sets when the next one is due (ms
    /// since the Unix epoch); false when unknown or done.
    async fn mark_rebuild_retry(
        &self,
        rebuild_id: &str,
        error: &str,
        next_attempt_at_ms: u64,
    ) -> LedgerResult<bool>;
}
