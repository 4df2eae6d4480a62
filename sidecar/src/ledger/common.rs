//! The ledger logic both backends share, written once and generic over the sqlx database.
//!
//! A backend hands out a [`Shared`] view of itself: its [`Dialect`], the pool queries read
//! from and the pool single write statements go through (SQLite: its reader pool and its
//! one-connection writer pool; Postgres: its one pool for both). [`forward_ledger_roles!`]
//! implements every role trait for a backend once, delegating here. What differs is the
//! backend's [`SqlBackend`] implementation in its own file: connecting, the migration loop
//! and its locking, and how a write transaction begins (SQLite: `BEGIN IMMEDIATE` on the
//! writer; Postgres: a plain `BEGIN`, then the batch's chain heads are locked `FOR UPDATE`
//! in sorted order). The forwarding begins the transaction and passes it to
//! [`Shared::append_in`] or [`Shared::record_grant_in`], which run the common statements in
//! it and commit. Like the backends, nothing here updates or deletes an entry.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type,
};

use creditgate_protocol::control::AuditEntry;

use super::chain::ChainHead;
use super::entry::{CanonicalColumns, GENESIS_HASH, LedgerEntry, NewEntry, entry_hash_with};
use super::grants::{GrantRecord, OutboxState, RecordGrantOutcome};
use super::migrations::Migration;
use super::revenue::{self, GrantBefore, GrantMonth};
use super::sql::{self, Dialect, Heads, bind_entry, bind_grant};
use super::{AppendOutcome, EntryQuery, LedgerError, LedgerResult, now_ms};

/// The number of rows a statement changed. sqlx has it only as an inherent method of each
/// backend's query result, so generic code needs this trait.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// An entry of a batch waiting to be inserted: its place in the batch and its chain links.
struct Pending<'e> {
    index: usize,
    entry: &'e NewEntry,
    /// Its JSON columns as canonical text: hashed and stored, computed once.
    json: CanonicalColumns,
    prev_hash: String,
    hash: String,
}

/// A batch being appended: the chain heads as its entries move them, the entries queued
/// for the next insert statement, and each entry's outcome once known.
struct Append<'e> {
    /// The sidecar clock stamped on every entry of the batch.
    recorded_at_ms: u64,
    /// Each customer's head, moved past the entries queued or inserted so far.
    heads: Heads,
    /// The heads the queued entries' customers had before the first of them.
    saved: HashMap<String, ChainHead>,
    /// Entries chained but not inserted yet, at most [`sql::INSERT_CHUNK`].
    pending: Vec<Pending<'e>>,
    /// Event ids queued so far (inserted or pending): a repeat is answered from the store.
    queued: HashSet<&'e str>,
    /// Customers whose head moved: written back before the commit.
    dirty: BTreeSet<String>,
    /// The outcome of each entry, by its place in the batch.
    out: Vec<Option<AppendOutcome>>,
}

impl<'e> Append<'e> {
    fn new(len: usize, heads: Heads, recorded_at_ms: u64) -> Self {
        Self {
            recorded_at_ms,
            heads,
            saved: HashMap::new(),
            pending: Vec::with_capacity(sql::INSERT_CHUNK),
            queued: HashSet::new(),
            dirty: BTreeSet::new(),
            out: vec![None; len],
        }
    }

    /// Chains `e` after its customer's head and queues it for the next insert statement.
    fn queue(&mut self, index: usize, e: &'e NewEntry) -> LedgerResult<()> {
        let head = self.heads.get_mut(&e.customer).ok_or_else(|| {
            LedgerError::Corrupt(format!("no chain head loaded for {}", e.customer))
        })?;
        if !self.saved.contains_key(&e.customer) {
            self.saved.insert(e.customer.clone(), head.clone());
        }
        let prev_hash = head.last_hash.clone();
        let json = CanonicalColumns::of(e);
        let hash = entry_hash_with(&prev_hash, e, self.recorded_at_ms, &json)?;
        head.last_hash = hash.clone();
        self.queued.insert(e.event_id.as_str());
        self.pending.push(Pending {
            index,
            entry: e,
            json,
            prev_hash,
            hash,
        });
        Ok(())
    }

    /// Records that a queued entry was inserted with `seq`.
    fn inserted(&mut self, p: &Pending<'_>, seq: i64) {
        if let Some(head) = self.heads.get_mut(&p.entry.customer) {
            head.last_seq = seq;
        }
        self.dirty.insert(p.entry.customer.clone());
        self.out[p.index] = Some(AppendOutcome::Inserted { seq });
    }

    /// Puts back the heads the queued entries' customers had before them.
    fn restore_heads(&mut self) {
        for (customer, head) in self.saved.drain() {
            self.heads.insert(customer, head);
        }
    }

    /// Every entry's outcome, in batch order.
    fn outcomes(self) -> LedgerResult<Vec<AppendOutcome>> {
        self.out
            .into_iter()
            .map(|o| o.ok_or_else(|| LedgerError::Corrupt("an entry got no outcome".into())))
            .collect()
    }
}

/// A backend as the shared code sees it.
pub(crate) struct Shared<'a, DB: Database> {
    /// How JSON columns are written and read.
    pub(crate) dialect: Dialect,
    /// Where queries read.
    pub(crate) readers: &'a Pool<DB>,
    /// Where single write statements (outside `append_in`/`record_grant_in`) run.
    pub(crate) writer: &'a Pool<DB>,
}

/// A time or bound as the ledger's `BIGINT` columns hold it: past `i64::MAX` is no bound.
fn clamp(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Checks every entry of a batch; `None` when the batch is empty (nothing to do), else the
/// `recorded_at_ms` to stamp its entries with (read before the transaction begins).
pub(crate) fn start_batch(entries: &[NewEntry]) -> LedgerResult<Option<u64>> {
    for e in entries {
        e.validate()?;
    }
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some(now_ms()))
}

/// What differs between the backends. Everything else is written once: the statements in
/// [`Shared`], and the role traits' forwarding in [`forward_ledger_roles!`].
#[async_trait::async_trait]
pub(crate) trait SqlBackend: Send + Sync {
    /// The sqlx database.
    type Db: Database;

    /// The backend's name, as [`LedgerAdmin::backend`](super::LedgerAdmin::backend) says it.
    const NAME: &'static str;

    /// The shared ledger logic on this backend's pools.
    fn shared(&self) -> Shared<'_, Self::Db>;

    /// Applies the migrations not applied yet, under the backend's own locking.
    async fn migrate_schema(&self) -> LedgerResult<Vec<i64>>;

    /// Begins the transaction of an append or a grant (SQLite: `BEGIN IMMEDIATE` on the
    /// one writer; Postgres: a plain `BEGIN`).
    async fn begin_write(&self) -> LedgerResult<Transaction<'_, Self::Db>>;

    /// Begins an append's transaction and locks in it the chain heads of the batch's
    /// customers when concurrent writers need that (Postgres overrides this); by default
    /// no head is locked, for a backend that serialises its writers (SQLite).
    async fn begin_append(
        &self,
        entries: &[NewEntry],
    ) -> LedgerResult<(Transaction<'_, Self::Db>, Heads)> {
        let _ = entries;
        Ok((self.begin_write().await?, Heads::new()))
    }
}

/// Implements every ledger role for a [`SqlBackend`] by forwarding to its [`Shared`] view:
/// the one place the role methods meet the backends.
macro_rules! forward_ledger_roles {
    ($backend:ty) => {
        #[async_trait::async_trait]
        impl $crate::ledger::LedgerAdmin for $backend {
            fn backend(&self) -> &'static str {
                <Self as $crate::ledger::common::SqlBackend>::NAME
            }

            async fn migrate(&self) -> $crate::ledger::LedgerResult<Vec<i64>> {
                $crate::ledger::common::SqlBackend::migrate_schema(self).await
            }

            async fn applied_migrations(&self) -> $crate::ledger::LedgerResult<Vec<i64>> {
                self.shared().applied_migrations().await
            }

            async fn redis_generation(
                &self,
                shard: u32,
            ) -> $crate::ledger::LedgerResult<Option<String>> {
                self.shared().redis_generation(shard).await
            }

            async fn set_redis_generation(
                &self,
                shard: u32,
                generation: &str,
            ) -> $crate::ledger::LedgerResult<()> {
                self.shared().set_redis_generation(shard, generation).await
            }

            async fn shard_stream_ids(
                &self,
                shard: u32,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<String>> {
                self.shared().shard_stream_ids(shard, limit).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerEntries for $backend {
            async fn append_batch(
                &self,
                entries: &[$crate::ledger::NewEntry],
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::AppendOutcome>> {
                let Some(recorded_at_ms) = $crate::ledger::common::start_batch(entries)? else {
                    return Ok(Vec::new());
                };
                let (tx, heads) = self.begin_append(entries).await?;
                self.shared()
                    .append_in(tx, entries, heads, recorded_at_ms)
                    .await
            }

            async fn entry(
                &self,
                event_id: &str,
            ) -> $crate::ledger::LedgerResult<Option<$crate::ledger::LedgerEntry>> {
                self.shared().entry(event_id).await
            }

            async fn entries(
                &self,
                query: &$crate::ledger::EntryQuery,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::LedgerEntry>> {
                self.shared().entries(query).await
            }

            async fn customers(&self) -> $crate::ledger::LedgerResult<Vec<String>> {
                self.shared().customers().await
            }

            async fn chain_head(
                &self,
                customer: &str,
            ) -> $crate::ledger::LedgerResult<Option<$crate::ledger::ChainHead>> {
                self.shared().chain_head(customer).await
            }

            async fn amount_sums(
                &self,
            ) -> $crate::ledger::LedgerResult<Vec<(String, String, i64)>> {
                self.shared().amount_sums().await
            }

            async fn revenue_months(
                &self,
                from_ms: u64,
                to_ms: u64,
            ) -> $crate::ledger::LedgerResult<
                Option<(
                    Vec<$crate::ledger::GrantBefore>,
                    Vec<$crate::ledger::GrantMonth>,
                )>,
            > {
                Ok(Some(self.shared().revenue_months(from_ms, to_ms).await?))
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerGrants for $backend {
            async fn record_grant(
                &self,
                grant: &$crate::ledger::GrantRecord,
            ) -> $crate::ledger::LedgerResult<$crate::ledger::RecordGrantOutcome> {
                grant.validate()?;
                let tx = self.begin_write().await?;
                self.shared().record_grant_in(tx, grant).await
            }

            async fn pending_grants(
                &self,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::GrantRecord>> {
                self.shared().pending_grants(limit).await
            }

            async fn mark_grant_applied(
                &self,
                grant_id: &str,
                at_ms: u64,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().mark_grant_applied(grant_id, at_ms).await
            }

            async fn mark_grant_attempt_failed(
                &self,
                grant_id: &str,
                error: &str,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared()
                    .mark_grant_attempt_failed(grant_id, error)
                    .await
            }

            async fn outbox_state(
                &self,
                grant_id: &str,
            ) -> $crate::ledger::LedgerResult<Option<$crate::ledger::OutboxState>> {
                self.shared().outbox_state(grant_id).await
            }

            async fn grants_of(
                &self,
                customer: &str,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::GrantRecord>> {
                self.shared().grants_of(customer).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerControlAudit for $backend {
            async fn record_control_audit(
                &self,
                entries: &[creditgate_protocol::control::AuditEntry],
            ) -> $crate::ledger::LedgerResult<u64> {
                self.shared().record_control_audit(entries).await
            }

            async fn control_audit(
                &self,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<creditgate_protocol::control::AuditEntry>> {
                self.shared().control_audit(limit).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerPricingVersions for $backend {
            async fn record_config_version(
                &self,
                record: &$crate::ledger::ConfigVersionRecord,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().record_config_version(record).await
            }

            async fn config_versions_after(
                &self,
                after: u64,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::ConfigVersionRecord>> {
                self.shared().config_versions_after(after).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerUsageEvents for $backend {
            async fn record_usage_event(
                &self,
                event: &$crate::ledger::UsageEventRecord,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().record_usage_event(event).await
            }

            async fn unburned_usage_events(
                &self,
                customer: &str,
                after_key: &str,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::UsageEventRecord>> {
                self.shared()
                    .unburned_usage_events(customer, after_key, limit)
                    .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerDeadLetters for $backend {
            async fn record_dead_letter(
                &self,
                letter: &$crate::ledger::NewDeadLetter,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().record_dead_letter(letter).await
            }

            async fn dead_letters(
                &self,
                open_only: bool,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::DeadLetter>> {
                self.shared().dead_letters(open_only, limit).await
            }

            async fn dead_letter(
                &self,
                id: i64,
            ) -> $crate::ledger::LedgerResult<Option<$crate::ledger::DeadLetter>> {
                self.shared().dead_letter(id).await
            }

            async fn record_dead_letter_action(
                &self,
                id: i64,
                action: &$crate::ledger::DeadLetterActionRecord,
            ) -> $crate::ledger::LedgerResult<()> {
                self.shared().record_dead_letter_action(id, action).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ledger::LedgerRebuilds for $backend {
            async fn record_rebuild(
                &self,
                rebuild: &$crate::ledger::RebuildRecord,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().record_rebuild(rebuild).await
            }

            async fn rebuild(
                &self,
                rebuild_id: &str,
            ) -> $crate::ledger::LedgerResult<Option<$crate::ledger::RebuildRecord>> {
                self.shared().rebuild(rebuild_id).await
            }

            async fn owed_rebuilds(
                &self,
                limit: u32,
            ) -> $crate::ledger::LedgerResult<Vec<$crate::ledger::RebuildRecord>> {
                self.shared().owed_rebuilds(limit).await
            }

            async fn mark_rebuild_done(
                &self,
                rebuild_id: &str,
                at_ms: u64,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared().mark_rebuild_done(rebuild_id, at_ms).await
            }

            async fn mark_rebuild_retry(
                &self,
                rebuild_id: &str,
                error: &str,
                next_attempt_at_ms: u64,
            ) -> $crate::ledger::LedgerResult<bool> {
                self.shared()
                    .mark_rebuild_retry(rebuild_id, error, next_attempt_at_ms)
                    .await
            }
        }
    };
}
pub(crate) use forward_ledger_roles;

/// The bounds say what the ledger binds and reads: text, `BIGINT` and their nullable forms,
/// columns by name or position, and statements run on a connection, a transaction or a
/// pool. `Sqlite` and `Postgres` meet them.
impl<DB> Shared<'_, DB>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    &'static str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    /// The entry with this event id, read on `conn`.
    async fn find_entry(
        &self,
        conn: &mut DB::Connection,
        event_id: &str,
    ) -> LedgerResult<Option<LedgerEntry>> {
        let row = sqlx::query(&sql::select_by_event_id(self.dialect))
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(sql::entry_from_row).transpose()
    }

    /// The grant with this id, read on `conn`.
    async fn find_grant(
        &self,
        conn: &mut DB::Connection,
        grant_id: &str,
    ) -> LedgerResult<Option<GrantRecord>> {
        let row = sqlx::query(&sql::select_grant())
            .bind(grant_id)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(sql::grant_from_row).transpose()
    }

    /// The customer's chain head, read on `conn`.
    async fn head_of(
        &self,
        conn: &mut DB::Connection,
        customer: &str,
    ) -> LedgerResult<Option<ChainHead>> {
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

    /// Applies one migration and records it in `tx`, then commits; false (and `tx` rolled
    /// back) when it is recorded already. The caller began `tx` and took its locks.
    pub(crate) async fn apply_migration(
        &self,
        mut tx: Transaction<'_, DB>,
        m: &Migration,
    ) -> LedgerResult<bool> {
        let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            return Ok(false);
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
        Ok(true)
    }

    pub(crate) async fn applied_migrations(&self) -> LedgerResult<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(self.readers)
            .await?;
        rows.iter()
            .map(|r| r.try_get("version").map_err(LedgerError::from))
            .collect()
    }

    /// The stored entries among `event_ids`, by event id, read on `conn` in statements of
    /// at most [`sql::LOOKUP_CHUNK`] ids.
    async fn find_entries(
        &self,
        conn: &mut DB::Connection,
        event_ids: &[&str],
    ) -> LedgerResult<HashMap<String, LedgerEntry>> {
        let mut found = HashMap::new();
        for chunk in event_ids.chunks(sql::LOOKUP_CHUNK) {
            let text = sql::select_by_event_ids(self.dialect, chunk.len());
            let mut q = sqlx::query(&text);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let entry = sql::entry_from_row(&row)?;
                found.insert(entry.entry.event_id.clone(), entry);
            }
        }
        Ok(found)
    }

    /// Adds to `heads` the chain head of each of `customers` (genesis when it has none),
    /// read on `conn` in statements of at most [`sql::LOOKUP_CHUNK`] customers.
    async fn load_heads(
        &self,
        conn: &mut DB::Connection,
        customers: &[&str],
        heads: &mut Heads,
    ) -> LedgerResult<()> {
        for chunk in customers.chunks(sql::LOOKUP_CHUNK) {
            let text = sql::select_heads(self.dialect, chunk.len());
            let mut q = sqlx::query(&text);
            for c in chunk {
                q = q.bind(*c);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let customer: String = row.try_get("customer")?;
                let head = ChainHead {
                    last_seq: row.try_get("last_seq")?,
                    last_hash: row.try_get("last_hash")?,
                };
                heads.insert(customer, head);
            }
        }
        for c in customers {
            if !heads.contains_key(*c) {
                heads.insert(
                    (*c).to_string(),
                    ChainHead {
                        last_seq: 0,
                        last_hash: GENESIS_HASH.to_string(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Inserts `e` after the batch's head of its customer, or reports the entry stored
    /// under its event id (another writer inserted it since the batch looked).
    async fn insert_one(
        &self,
        conn: &mut DB::Connection,
        e: &NewEntry,
        batch: &mut Append<'_>,
    ) -> LedgerResult<AppendOutcome> {
        let prev_hash = batch.heads[&e.customer].last_hash.clone();
        let json = CanonicalColumns::of(e);
        let hash = entry_hash_with(&prev_hash, e, batch.recorded_at_ms, &json)?;
        let insert = sql::insert_entry(self.dialect);
        let row = bind_entry!(
            sqlx::query(&insert),
            e,
            json,
            batch.recorded_at_ms,
            prev_hash.as_str(),
            hash.as_str()
        )
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => {
                let seq: i64 = row.try_get("seq")?;
                let head = ChainHead {
                    last_seq: seq,
                    last_hash: hash,
                };
                batch.heads.insert(e.customer.clone(), head);
                batch.dirty.insert(e.customer.clone());
                Ok(AppendOutcome::Inserted { seq })
            }
            None => self.stored_outcome(conn, e).await,
        }
    }

    /// The outcome for `e` from the entry stored under its event id, read on `conn`.
    async fn stored_outcome(
        &self,
        conn: &mut DB::Connection,
        e: &NewEntry,
    ) -> LedgerResult<AppendOutcome> {
        let existing = self.find_entry(conn, &e.event_id).await?.ok_or_else(|| {
            LedgerError::Corrupt(format!("{} neither inserted nor found", e.event_id))
        })?;
        Ok(sql::existing_outcome(existing, e))
    }

    /// Inserts the batch's queued entries with one statement, inside a savepoint. Each
    /// queued entry carries the prev_hash and hash computed when it was queued. When
    /// another writer inserted one of the event ids meanwhile (the statement skips it), the
    /// chain computed for the rest no longer holds: roll back to the savepoint, restore the
    /// heads and insert the entries one by one instead.
    async fn flush(&self, conn: &mut DB::Connection, batch: &mut Append<'_>) -> LedgerResult<()> {
        if batch.pending.is_empty() {
            return Ok(());
        }
        sqlx::Executor::execute(&mut *conn, "SAVEPOINT ledger_append").await?;
        let text = sql::insert_entries(self.dialect, batch.pending.len());
        let mut q = sqlx::query(&text);
        for p in &batch.pending {
            let (prev, hash) = (p.prev_hash.as_str(), p.hash.as_str());
            q = bind_entry!(q, p.entry, p.json, batch.recorded_at_ms, prev, hash);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let mut seqs: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            seqs.insert(row.try_get("event_id")?, row.try_get("seq")?);
        }
        let pending = std::mem::take(&mut batch.pending);
        let all_in = rows.len() == pending.len()
            && pending.iter().all(|p| seqs.contains_key(&p.entry.event_id));
        if all_in {
            for p in &pending {
                batch.inserted(p, seqs[&p.entry.event_id]);
            }
        } else {
            sqlx::Executor::execute(&mut *conn, "ROLLBACK TO SAVEPOINT ledger_append").await?;
            batch.restore_heads();
            for p in &pending {
                let outcome = self.insert_one(conn, p.entry, batch).await?;
                batch.out[p.index] = Some(outcome);
            }
        }
        batch.saved.clear();
        Ok(())
    }

    /// The body of `append_batch` once the backend has begun `tx` (and, on Postgres,
    /// locked and loaded the batch's chain heads into `heads`): inserts, skips or reports
    /// each entry in order, writes the chain heads that moved, and commits.
    ///
    /// The batch's event ids already stored are looked up at once, and so are the chain
    /// heads not in `heads`; the new entries are then chained in Rust, in input order, and
    /// inserted [`sql::INSERT_CHUNK`] at a time. An event id repeated within the batch is
    /// answered from the entry stored for its first occurrence, as if appended alone.
    pub(crate) async fn append_in(
        &self,
        mut tx: Transaction<'_, DB>,
        entries: &[NewEntry],
        mut heads: Heads,
        recorded_at_ms: u64,
    ) -> LedgerResult<Vec<AppendOutcome>> {
        let mut ids: Vec<&str> = entries.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let existing = self.find_entries(&mut tx, &ids).await?;
        let mut missing: Vec<&str> = entries
            .iter()
            .filter(|e| !existing.contains_key(&e.event_id) && !heads.contains_key(&e.customer))
            .map(|e| e.customer.as_str())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            self.load_heads(&mut tx, &missing, &mut heads).await?;
        }
        let mut batch = Append::new(entries.len(), heads, recorded_at_ms);
        for (index, e) in entries.iter().enumerate() {
            if batch.queued.contains(e.event_id.as_str()) {
                self.flush(&mut tx, &mut batch).await?;
                batch.out[index] = Some(self.stored_outcome(&mut tx, e).await?);
            } else if let Some(stored) = existing.get(&e.event_id) {
                batch.out[index] = Some(sql::existing_outcome(stored.clone(), e));
            } else {
                batch.queue(index, e)?;
                if batch.pending.len() == sql::INSERT_CHUNK {
                    self.flush(&mut tx, &mut batch).await?;
                }
            }
        }
        self.flush(&mut tx, &mut batch).await?;
        self.write_heads(&mut tx, &batch).await?;
        let inserted = entries
            .iter()
            .zip(&batch.out)
            .filter(|(_, o)| matches!(o, Some(AppendOutcome::Inserted { .. })))
            .map(|(e, _)| e);
        self.add_revenue_months(&mut tx, &revenue::month_deltas(inserted))
            .await?;
        tx.commit().await?;
        batch.outcomes()
    }

    /// Writes the chain heads the batch moved, [`sql::HEAD_CHUNK`] per statement.
    async fn write_heads(&self, conn: &mut DB::Connection, batch: &Append<'_>) -> LedgerResult<()> {
        let dirty: Vec<&String> = batch.dirty.iter().collect();
        for chunk in dirty.chunks(sql::HEAD_CHUNK) {
            let text = sql::upsert_heads(self.dialect, chunk.len());
            let mut q = sqlx::query(&text);
            for customer in chunk {
                let head = &batch.heads[*customer];
                q = q
                    .bind(customer.as_str())
                    .bind(head.last_seq)
                    .bind(head.last_hash.as_str());
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Adds the revenue rollup's rows of the entries an append inserted, in its
    /// transaction, [`revenue::UPSERT_CHUNK`] per statement.
    async fn add_revenue_months(
        &self,
        conn: &mut DB::Connection,
        rows: &[GrantMonth],
    ) -> LedgerResult<()> {
        for chunk in rows.chunks(revenue::UPSERT_CHUNK) {
            let text = revenue::upsert_months(self.dialect, chunk.len());
            let mut q = sqlx::query(&text);
            for r in chunk {
                q = q
                    .bind(r.customer.as_str())
                    .bind(r.grant_id.as_str())
                    .bind(r.month_ms)
                    .bind(r.granted)
                    .bind(r.cost_basis)
                    .bind(r.recognized)
                    .bind(r.breakage);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The revenue rollup of the whole months `[from_ms, to_ms)`: every grant with credits
    /// left at `to_ms` or consumed in the window, and the window's rows.
    pub(crate) async fn revenue_months(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> LedgerResult<(Vec<GrantBefore>, Vec<GrantMonth>)> {
        let (from, to) = (clamp(from_ms), clamp(to_ms));
        let rows = sqlx::query(revenue::SELECT_GRANTS_BEFORE)
            .bind(from)
            .bind(to)
            .fetch_all(self.readers)
            .await?;
        let mut grants = Vec::with_capacity(rows.len());
        for row in rows {
            grants.push(GrantBefore {
                customer: row.try_get("customer")?,
                grant_id: row.try_get("grant_id")?,
                granted: row.try_get("granted")?,
                cost_basis: row.try_get("cost_basis")?,
                consumed_before: row.try_get("consumed_before")?,
            });
        }
        let rows = sqlx::query(revenue::SELECT_WINDOW)
            .bind(from)
            .bind(to)
            .fetch_all(self.readers)
            .await?;
        let mut window = Vec::with_capacity(rows.len());
        for row in rows {
            window.push(GrantMonth {
                customer: row.try_get("customer")?,
                grant_id: row.try_get("grant_id")?,
                month_ms: row.try_get("month_ms")?,
                granted: row.try_get("granted")?,
                cost_basis: row.try_get("cost_basis")?,
                recognized: row.try_get("recognized")?,
                breakage: row.try_get("breakage")?,
            });
        }
        Ok((grants, window))
    }

    pub(crate) async fn entry(&self, event_id: &str) -> LedgerResult<Option<LedgerEntry>> {
        let mut conn = self.readers.acquire().await?;
        self.find_entry(&mut conn, event_id).await
    }

    pub(crate) async fn entries(&self, query: &EntryQuery) -> LedgerResult<Vec<LedgerEntry>> {
        let (text, binds) = sql::select_entries(self.dialect, query);
        let rows = sql::bind_all(sqlx::query(&text), &binds)
            .fetch_all(self.readers)
            .await?;
        rows.iter().map(sql::entry_from_row).collect()
    }

    pub(crate) async fn redis_generation(&self, shard: u32) -> LedgerResult<Option<String>> {
        let row = sqlx::query("SELECT generation FROM redis_generations WHERE shard = $1")
            .bind(i64::from(shard))
            .fetch_optional(self.readers)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>(0)?),
            None => None,
        })
    }

    pub(crate) async fn shard_stream_ids(
        &self,
        shard: u32,
        limit: u32,
    ) -> LedgerResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT stream_id FROM ledger_entries WHERE shard = $1 AND stream_id IS NOT NULL \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(i64::from(shard))
        .bind(i64::from(limit))
        .fetch_all(self.readers)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    pub(crate) async fn set_redis_generation(
        &self,
        shard: u32,
        generation: &str,
    ) -> LedgerResult<()> {
        sqlx::query(
            "INSERT INTO redis_generations (shard, generation, set_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (shard) DO UPDATE SET generation = excluded.generation, set_at_ms = excluded.set_at_ms",
        )
        .bind(i64::from(shard))
        .bind(generation)
        .bind(now_ms() as i64)
        .execute(self.writer)
        .await?;
        Ok(())
    }

    pub(crate) async fn record_control_audit(&self, entries: &[AuditEntry]) -> LedgerResult<u64> {
        let mut tx = self.writer.begin().await?;
        let mut new = 0;
        for e in entries {
            let done = sqlx::query(
                "INSERT INTO control_audit (audit_id, at_ms, actor, reason, change, version, \
                 recorded_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (audit_id) DO NOTHING",
            )
            .bind(&e.id)
            .bind(e.at_ms as i64)
            .bind(&e.actor)
            .bind(&e.reason)
            .bind(&e.change)
            .bind(e.version as i64)
            .bind(now_ms() as i64)
            .execute(&mut *tx)
            .await?;
            new += done.rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    pub(crate) async fn control_audit(&self, limit: u32) -> LedgerResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT audit_id, at_ms, actor, reason, change, version FROM control_audit \
             ORDER BY at_ms DESC, audit_id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at_ms: r.try_get::<i64, _>(1)?.max(0) as u64,
                    actor: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    change: r.try_get(4)?,
                    version: r.try_get::<i64, _>(5)?.max(0) as u64,
                })
            })
            .collect()
    }

    pub(crate) async fn customers(&self) -> LedgerResult<Vec<String>> {
        let rows = sqlx::query(sql::SELECT_CUSTOMERS)
            .fetch_all(self.readers)
            .await?;
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub(crate) async fn chain_head(&self, customer: &str) -> LedgerResult<Option<ChainHead>> {
        let mut conn = self.readers.acquire().await?;
        self.head_of(&mut conn, customer).await
    }

    pub(crate) async fn amount_sums(&self) -> LedgerResult<Vec<(String, String, i64)>> {
        let rows = sqlx::query(sql::SELECT_AMOUNT_SUMS)
            .fetch_all(self.readers)
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

    /// The body of `record_grant` once the grant is validated and the backend has begun
    /// `tx`: inserts the grant and its outbox row and commits, or rolls back and reports
    /// the grant already stored under its id.
    pub(crate) async fn record_grant_in(
        &self,
        mut tx: Transaction<'_, DB>,
        grant: &GrantRecord,
    ) -> LedgerResult<RecordGrantOutcome> {
        let inserted = bind_grant!(sqlx::query(sql::INSERT_GRANT), grant)
            .fetch_optional(&mut *tx)
            .await?;
        if inserted.is_none() {
            let existing = self
                .find_grant(&mut tx, &grant.grant_id)
                .await?
                .ok_or_else(|| {
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
            .bind(grant.grant_id.as_str())
            .bind(grant.created_at_ms as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RecordGrantOutcome::Recorded)
    }

    pub(crate) async fn pending_grants(&self, limit: u32) -> LedgerResult<Vec<GrantRecord>> {
        let rows = sqlx::query(&sql::select_pending_grants())
            .bind(i64::from(limit))
            .fetch_all(self.readers)
            .await?;
        rows.iter().map(sql::grant_from_row).collect()
    }

    pub(crate) async fn mark_grant_applied(
        &self,
        grant_id: &str,
        at_ms: u64,
    ) -> LedgerResult<bool> {
        let done = sqlx::query(sql::MARK_APPLIED)
            .bind(grant_id)
            .bind(i64::try_from(at_ms).unwrap_or(i64::MAX))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a published config version; false when its number was recorded before.
    pub(crate) async fn record_config_version(
        &self,
        record: &super::ConfigVersionRecord,
    ) -> LedgerResult<bool> {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let done = sqlx::query(super::config_versions::INSERT_CONFIG_VERSION)
            .bind(int(record.version))
            .bind(record.version_label.as_str())
            .bind(record.content_hash.as_str())
            .bind(int(record.published_at_ms))
            .bind(record.file.as_str())
            .bind(record.toml.as_str())
            .bind(int(now_ms()))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The config versions numbered above `after`, oldest first.
    pub(crate) async fn config_versions_after(
        &self,
        after: u64,
    ) -> LedgerResult<Vec<super::ConfigVersionRecord>> {
        let rows = sqlx::query(super::config_versions::SELECT_CONFIG_VERSIONS_AFTER)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .fetch_all(self.readers)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::ConfigVersionRecord {
                    version: r.try_get::<i64, _>(0)?.max(0) as u64,
                    version_label: r.try_get(1)?,
                    content_hash: r.try_get(2)?,
                    published_at_ms: r.try_get::<i64, _>(3)?.max(0) as u64,
                    file: r.try_get(4)?,
                    toml: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub(crate) async fn mark_grant_attempt_failed(
        &self,
        grant_id: &str,
        error: &str,
    ) -> LedgerResult<bool> {
        let done = sqlx::query(sql::MARK_FAILED)
            .bind(grant_id)
            .bind(error.replace('\0', ""))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn outbox_state(&self, grant_id: &str) -> LedgerResult<Option<OutboxState>> {
        let row = sqlx::query(sql::SELECT_OUTBOX)
            .bind(grant_id)
            .fetch_optional(self.readers)
            .await?;
        row.as_ref().map(sql::outbox_from_row).transpose()
    }

    pub(crate) async fn grants_of(&self, customer: &str) -> LedgerResult<Vec<GrantRecord>> {
        let rows = sqlx::query(&sql::select_grants_of())
            .bind(customer)
            .fetch_all(self.readers)
            .await?;
        rows.iter().map(sql::grant_from_row).collect()
    }
}
