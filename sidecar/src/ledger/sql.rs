//! SQL text and row decoding shared by the SQLite and Postgres backends.
//!
//! Both backends take `$N` placeholders, the same column names and the same column types
//! (`TEXT` and `BIGINT`, bound at run time as [`Bind`]); the only difference is how JSON
//! columns are written (`$N::jsonb`) and read (`col::text`) on Postgres. Nothing
//! here runs a statement, and no statement here updates or deletes an entry.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};

use super::entry::{EntryKind, LedgerEntry, NewEntry};
use super::grants::GrantRecord;
use super::{AppendOutcome, EntryQuery, LedgerError, LedgerResult};

/// A value bound to a `$n` placeholder of a statement built at run time: the column types
/// the ledger database uses (`TEXT`, `BIGINT`), each nullable. A null keeps its type,
/// because Postgres needs one for every parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// A `TEXT` value.
    Text(String),
    /// A `BIGINT` value.
    Int(i64),
    /// A `TEXT` null.
    NullText,
    /// A `BIGINT` null.
    NullInt,
}

impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Bind::Text(v.to_string())
    }
}

impl From<&String> for Bind {
    fn from(v: &String) -> Self {
        Bind::Text(v.clone())
    }
}

impl From<String> for Bind {
    fn from(v: String) -> Self {
        Bind::Text(v)
    }
}

impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Bind::Int(v)
    }
}

impl From<Option<&str>> for Bind {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Bind::NullText, Bind::from)
    }
}

impl From<Option<String>> for Bind {
    fn from(v: Option<String>) -> Self {
        v.map_or(Bind::NullText, Bind::Text)
    }
}

impl From<Option<i64>> for Bind {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Bind::NullInt, Bind::Int)
    }
}

/// Binds `binds` to `q`, in order.
pub(crate) fn bind_all<'q, DB>(
    mut q: Query<'q, DB, DB::Arguments<'q>>,
    binds: &[Bind],
) -> Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB>,
    Option<i64>: Encode<'q, DB>,
{
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.clone()),
            Bind::Int(i) => q.bind(*i),
            Bind::NullText => q.bind(None::<String>),
            Bind::NullInt => q.bind(None::<i64>),
        };
    }
    q
}

/// Which dialect a statement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn json_out(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_string(),
            Dialect::Postgres => format!("{column}::text AS {column}"),
        }
    }

    fn json_in(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("${n}"),
            Dialect::Postgres => format!("${n}::jsonb"),
        }
    }
}

/// The column list of an entry, with table alias `e`.
pub(crate) fn entry_columns(d: Dialect) -> String {
    format!(
        "e.seq, e.event_id, e.kind, e.customer, e.credit_type, e.amount, e.grant_id, \
         e.hold_id, e.request_id, e.route, e.feature, {}, e.event_at_ms, \
         e.recorded_at_ms, e.actor, e.reason, e.pricing_version, {}, e.shard, \
         e.stream_id, e.prev_hash, e.hash",
        d.json_out("e.grants").replace("AS e.grants", "AS grants"),
        d.json_out("e.details")
            .replace("AS e.details", "AS details"),
    )
}

/// Selects the entry with event id `$1`.
pub(crate) fn select_by_event_id(d: Dialect) -> String {
    format!(
        "SELECT {} FROM ledger_entries e WHERE e.event_id = $1",
        entry_columns(d)
    )
}

/// Selects the entries whose event id is one of `$1` … `$n` (`n` at least 1).
pub(crate) fn select_by_event_ids(d: Dialect, n: usize) -> String {
    format!(
        "SELECT {} FROM ledger_entries e WHERE e.event_id IN ({})",
        entry_columns(d),
        params(d, 1, n)
    )
}

/// `$first, $first+1, …` (`n` of them).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` placeholders of a statement whose binds all come in order, numbered from `first`:
/// `$first, …` on Postgres, plain `?` on SQLite. sqlx-sqlite looks up the name of every
/// `$N` parameter with `sqlite3_bind_parameter_name`, a scan of the statement's names, so
/// binding a statement of `n` named parameters costs `n²` (a sixth of the writer's CPU with
/// 945-bind inserts); positional `?` parameters bind in linear time.
pub(crate) fn params(d: Dialect, first: usize, n: usize) -> String {
    match d {
        Dialect::Sqlite => vec!["?"; n].join(", "),
        Dialect::Postgres => placeholders(first, n),
    }
}

/// The most binds a batched lookup statement takes (SQLite's limit is 999 in old builds).
pub(crate) const LOOKUP_CHUNK: usize = 500;

/// The binds of one entry in [`insert_entry`] and [`insert_entries`].
pub(crate) const ENTRY_BINDS: usize = 21;

/// The most entries one [`insert_entries`] statement inserts: 4,200 binds, under SQLite's
/// limit of 32,766 (the bundled SQLite is 3.46; the old 999 went in 3.32) and Postgres's
/// 65,535. A writer batch of 256 entries takes two statements instead of six, each a round
/// trip to sqlx's SQLite worker thread.
pub(crate) const INSERT_CHUNK: usize = 200;

/// Inserts one entry unless its event id exists; returns its seq when inserted. The
/// binds, in order: event_id, kind, customer, credit_type, amount, grant_id, hold_id,
/// request_id, route, feature, grants, event_at_ms, recorded_at_ms, actor, reason,
/// pricing_version, details, shard, stream_id, prev_hash, hash.
pub(crate) fn insert_entry(d: Dialect) -> String {
    format!(
        "INSERT INTO ledger_entries (event_id, kind, customer, credit_type, amount, \
         grant_id, hold_id, request_id, route, feature, grants, event_at_ms, \
         recorded_at_ms, actor, reason, pricing_version, details, shard, stream_id, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {}, $12, $13, \
         $14, $15, $16, {}, $18, $19, $20, $21) \
         ON CONFLICT (event_id) DO NOTHING RETURNING seq",
        d.json_in(11),
        d.json_in(17)
    )
}

/// Inserts `n` entries (at least 1), each unless its event id exists; returns `seq` and
/// `event_id` of each row inserted. Each row takes the 21 binds of [`insert_entry`], in
/// order, row after row.
pub(crate) fn insert_entries(d: Dialect, n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|r| {
            let b = r * ENTRY_BINDS;
            if d == Dialect::Sqlite {
                return format!("({})", params(d, b + 1, ENTRY_BINDS));
            }
            format!(
                "({}, {}, {}, {})",
                placeholders(b + 1, 10),
                d.json_in(b + 11),
                placeholders(b + 12, 5),
                format_args!("{}, {}", d.json_in(b + 17), placeholders(b + 18, 4))
            )
        })
        .collect();
    format!(
        "INSERT INTO ledger_entries (event_id, kind, customer, credit_type, amount, \
         grant_id, hold_id, request_id, route, feature, grants, event_at_ms, \
         recorded_at_ms, actor, reason, pricing_version, details, shard, stream_id, \
         prev_hash, hash) VALUES {} \
         ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id",
        rows.join(", ")
    )
}

/// Binds the 21 values of [`insert_entry`] to a query, in order; `$json` is the entry's
/// JSON columns in canonical text (`CanonicalColumns`).
macro_rules! bind_entry {
    ($query:expr, $entry:expr, $json:expr, $recorded_at_ms:expr, $prev_hash:expr, $hash:expr) => {{
        let e: &$crate::ledger::NewEntry = $entry;
        $query
            .bind(e.event_id.as_str())
            .bind(e.kind.as_str())
            .bind(e.customer.as_str())
            .bind(e.credit_type.as_str())
            .bind(e.amount)
            .bind(e.grant_id.as_deref())
            .bind(e.hold_id.as_deref())
            .bind(e.request_id.as_deref())
            .bind(e.route.as_deref())
            .bind(e.feature.as_deref())
            .bind($json.grants.as_str())
            .bind(e.event_at_ms as i64)
            .bind($recorded_at_ms as i64)
            .bind(e.actor.as_deref())
            .bind(e.reason.as_deref())
            .bind(e.pricing_version.as_deref())
            .bind($json.details.as_str())
            .bind(i64::from(e.shard))
            .bind(e.stream_id.as_deref())
            .bind($prev_hash)
            .bind($hash)
    }};
}
pub(crate) use bind_entry;

/// The most chain heads one [`upsert_heads`] statement writes (3 binds each, 900 binds,
/// under 999): a batch's heads cost one statement per 300 customers, not one each.
pub(crate) const HEAD_CHUNK: usize = 300;

/// Writes the chain heads of `n` customers (at least 1), inserting or replacing each, one
/// row per customer: `$3k+1` customer, `$3k+2` last_seq, `$3k+3` last_hash.
pub(crate) fn upsert_heads(d: Dialect, n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|r| format!("({})", params(d, r * 3 + 1, 3)))
        .collect();
    format!(
        "INSERT INTO chain_heads (customer, last_seq, last_hash) VALUES {} \
         ON CONFLICT (customer) DO UPDATE \
         SET last_seq = excluded.last_seq, last_hash = excluded.last_hash",
        rows.join(", ")
    )
}

/// Selects a customer's chain head (`$1`).
pub(crate) const SELECT_HEAD: &str =
    "SELECT last_seq, last_hash FROM chain_heads WHERE customer = $1";

/// Selects the chain heads of customers `$1` … `$n` (`n` at least 1).
pub(crate) fn select_heads(d: Dialect, n: usize) -> String {
    format!(
        "SELECT customer, last_seq, last_hash FROM chain_heads WHERE customer IN ({})",
        params(d, 1, n)
    )
}

/// Every customer with a chain head or an entry.
pub(crate) const SELECT_CUSTOMERS: &str =
    "SELECT customer FROM chain_heads UNION SELECT customer FROM ledger_entries";

/// Σ amount per customer and credit type.
pub(crate) const SELECT_AMOUNT_SUMS: &str = "SELECT customer, credit_type, \
     CAST(SUM(amount) AS BIGINT) AS total FROM ledger_entries \
     GROUP BY customer, credit_type ORDER BY customer, credit_type";

/// The columns of a grant record.
pub(crate) const GRANT_COLUMNS: &str = "g.grant_id, g.customer, g.credit_type, g.amount, \
     g.priority, g.expires_at_ms, g.cost_basis, g.source, g.actor, g.reason, g.created_at_ms";

/// Inserts a grant unless its id exists; returns the id when inserted.
pub(crate) const INSERT_GRANT: &str = "INSERT INTO grants (grant_id, customer, credit_type, \
     amount, priority, expires_at_ms, cost_basis, source, actor, reason, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (grant_id) DO NOTHING RETURNING grant_id";

/// Binds the 11 values of [`INSERT_GRANT`].
macro_rules! bind_grant {
    ($query:expr, $grant:expr) => {{
        let g: &$crate::ledger::GrantRecord = $grant;
        $query
            .bind(g.grant_id.as_str())
            .bind(g.customer.as_str())
            .bind(g.credit_type.as_str())
            .bind(g.amount as i64)
            .bind(i64::from(g.priority))
            .bind(g.expires_at_ms.map(|v| v as i64))
            .bind(g.cost_basis as i64)
            .bind(g.source.as_str())
            .bind(g.actor.as_str())
            .bind(g.reason.as_str())
            .bind(g.created_at_ms as i64)
    }};
}
pub(crate) use bind_grant;

/// Inserts a grant's outbox row: `$1` grant_id, `$2` created_at_ms.
pub(crate) const INSERT_OUTBOX: &str =
    "INSERT INTO grant_outbox (grant_id, created_at_ms, attempts) VALUES ($1, $2, 0)";

/// Selects one grant by id (`$1`).
pub(crate) fn select_grant() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants g WHERE g.grant_id = $1")
}

/// Selects a customer's grants (`$1`), oldest first.
pub(crate) fn select_grants_of() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants g WHERE g.customer = $1 \
         ORDER BY g.created_at_ms, g.grant_id"
    )
}

/// Selects up to `$1` pending grants, oldest first.
pub(crate) fn select_pending_grants() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grant_outbox o JOIN grants g ON g.grant_id = o.grant_id \
         WHERE o.applied_at_ms IS NULL ORDER BY o.created_at_ms, o.grant_id LIMIT $1"
    )
}

/// Marks `$1` applied at `$2` if it is not yet.
pub(crate) const MARK_APPLIED: &str = "UPDATE grant_outbox SET applied_at_ms = $2 \
     WHERE grant_id = $1 AND applied_at_ms IS NULL";

/// Counts a failed attempt of `$1` with error `$2` while it is pending.
pub(crate) const MARK_FAILED: &str = "UPDATE grant_outbox SET attempts = attempts + 1, \
     last_error = $2 WHERE grant_id = $1 AND applied_at_ms IS NULL";

/// Selects the outbox row of `$1`.
pub(crate) const SELECT_OUTBOX: &str = "SELECT grant_id, created_at_ms, applied_at_ms, \
     attempts, last_error FROM grant_outbox WHERE grant_id = $1";

/// Builds the SELECT for an [`EntryQuery`] and its binds.
pub(crate) fn select_entries(d: Dialect, q: &EntryQuery) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {} FROM ledger_entries e", entry_columns(d));
    let mut binds = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let bind = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    if let Some(c) = &q.customer {
        let p = bind(Bind::Text(c.clone()), &mut binds);
        conds.push(format!("e.customer = {p}"));
    }
    if let Some(r) = &q.request_id {
        let p = bind(Bind::Text(r.clone()), &mut binds);
        conds.push(format!("e.request_id = {p}"));
    }
    if let Some(h) = &q.hold_id {
        let p = bind(Bind::Text(h.clone()), &mut binds);
        conds.push(format!("e.hold_id = {p}"));
    }
    if let Some((at_ms, seq)) = q.after {
        let s = bind(Bind::Int(seq), &mut binds);
        conds.push(if q.seq_order {
            format!("e.seq > {s}")
        } else {
            let t = bind(Bind::Int(clamp_ms(at_ms)), &mut binds);
            format!("(e.event_at_ms > {t} OR (e.event_at_ms = {t} AND e.seq > {s}))")
        });
    }
    if !q.kinds.is_empty() {
        let ps: Vec<String> = q
            .kinds
            .iter()
            .map(|k| bind(Bind::Text(k.as_str().to_string()), &mut binds))
            .collect();
        conds.push(format!("e.kind IN ({})", ps.join(", ")));
    }
    if let Some(from) = q.from_ms {
        let p = bind(Bind::Int(clamp_ms(from)), &mut binds);
        conds.push(format!("e.event_at_ms >= {p}"));
    }
    if let Some(until) = q.until_ms {
        let p = bind(Bind::Int(clamp_ms(until)), &mut binds);
        conds.push(format!("e.event_at_ms < {p}"));
    }
    if q.pending_holds_only {
        conds.push(
            // A resolution of this placement: the same event id with another ending (hold
            // ids never contain ':'), so a hold placed again under an old id is pending
            // even though the old placement was resolved. The hold id term lets the
            // (hold_id, customer) index find the few entries of this hold, instead of a
            // scan of the customer's whole history per placed hold.
            "e.kind = 'hold_placed' AND NOT EXISTS (SELECT 1 FROM ledger_entries r \
             WHERE r.hold_id = e.hold_id AND r.customer = e.customer AND r.event_id IN \
             (replace(e.event_id, ':placed', ':posted'), replace(e.event_id, ':placed', ':voided'), \
             replace(e.event_id, ':placed', ':expired')))"
                .to_string(),
        );
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(if q.seq_order {
        " ORDER BY e.seq"
    } else {
        " ORDER BY e.event_at_ms, e.seq"
    });
    if let Some(limit) = q.limit {
        let p = bind(Bind::Int(clamp_ms(limit)), &mut binds);
        sql.push_str(&format!(" LIMIT {p}"));
    }
    (sql, binds)
}

/// Times and limits past `i64::MAX` mean "no bound"; the columns are `BIGINT`.
fn clamp_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get<'r, R, T>(row: &'r R, column: &'static str) -> LedgerResult<T>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column)
        .map_err(|e| LedgerError::Corrupt(format!("column {column}: {e}")))
}

fn unsigned(column: &str, v: i64) -> LedgerResult<u64> {
    u64::try_from(v).map_err(|_| LedgerError::Corrupt(format!("column {column} is negative: {v}")))
}

fn json(column: &str, text: &str) -> LedgerResult<Value> {
    serde_json::from_str(text)
        .map_err(|e| LedgerError::Corrupt(format!("column {column} is not JSON: {e}")))
}

/// Decodes an entry row selected with [`entry_columns`].
pub(crate) fn entry_from_row<'r, R>(row: &'r R) -> LedgerResult<LedgerEntry>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = get(row, "kind")?;
    let grants: String = get(row, "grants")?;
    let details: String = get(row, "details")?;
    let shard: i64 = get(row, "shard")?;
    Ok(LedgerEntry {
        seq: get(row, "seq")?,
        entry: NewEntry {
            event_id: get(row, "event_id")?,
            kind: kind.parse::<EntryKind>().map_err(LedgerError::Corrupt)?,
            customer: get(row, "customer")?,
            credit_type: get(row, "credit_type")?,
            amount: get(row, "amount")?,
            grant_id: get(row, "grant_id")?,
            hold_id: get(row, "hold_id")?,
            request_id: get(row, "request_id")?,
            route: get(row, "route")?,
            feature: get(row, "feature")?,
            grants: json("grants", &grants)?,
            event_at_ms: unsigned("event_at_ms", get(row, "event_at_ms")?)?,
            actor: get(row, "actor")?,
            reason: get(row, "reason")?,
            pricing_version: get(row, "pricing_version")?,
            details: json("details", &details)?,
            shard: u32::try_from(shard)
                .map_err(|_| LedgerError::Corrupt(format!("shard {shard} out of range")))?,
            stream_id: get(row, "stream_id")?,
        },
        recorded_at_ms: unsigned("recorded_at_ms", get(row, "recorded_at_ms")?)?,
        prev_hash: get(row, "prev_hash")?,
        hash: get(row, "hash")?,
    })
}

/// Decodes a grant row selected with [`GRANT_COLUMNS`].
pub(crate) fn grant_from_row<'r, R>(row: &'r R) -> LedgerResult<GrantRecord>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let source: String = get(row, "source")?;
    let priority: i64 = get(row, "priority")?;
    let expires: Option<i64> = get(row, "expires_at_ms")?;
    Ok(GrantRecord {
        grant_id: get(row, "grant_id")?,
        customer: get(row, "customer")?,
        credit_type: get(row, "credit_type")?,
        amount: unsigned("amount", get(row, "amount")?)?,
        priority: u32::try_from(priority)
            .map_err(|_| LedgerError::Corrupt(format!("priority {priority} out of range")))?,
        expires_at_ms: expires.map(|e| unsigned("expires_at_ms", e)).transpose()?,
        cost_basis: unsigned("cost_basis", get(row, "cost_basis")?)?,
        source: source.parse().map_err(LedgerError::Corrupt)?,
        actor: get(row, "actor")?,
        reason: get(row, "reason")?,
        created_at_ms: unsigned("created_at_ms", get(row, "created_at_ms")?)?,
    })
}

/// Decodes an outbox row selected with [`SELECT_OUTBOX`].
pub(crate) fn outbox_from_row<'r, R>(row: &'r R) -> LedgerResult<super::OutboxState>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    let applied: Option<i64> = get(row, "applied_at_ms")?;
    let attempts: i64 = get(row, "attempts")?;
    Ok(super::OutboxState {
        grant_id: get(row, "grant_id")?,
        created_at_ms: unsigned("created_at_ms", get(row, "created_at_ms")?)?,
        applied_at_ms: applied.map(|a| unsigned("applied_at_ms", a)).transpose()?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: get(row, "last_error")?,
    })
}

/// The outcome for an entry whose event id is already stored.
pub(crate) fn existing_outcome(existing: LedgerEntry, new: &NewEntry) -> AppendOutcome {
    if existing.entry.same_mutation(new) {
        AppendOutcome::Duplicate { seq: existing.seq }
    } else {
        AppendOutcome::Conflict {
            event_id: new.event_id.clone(),
            existing: Box::new(existing),
        }
    }
}

/// The customers of a batch, sorted and deduplicated: the order in which their chain
/// heads are locked, so two batches never wait on each other in a cycle.
pub(crate) fn batch_customers(entries: &[NewEntry]) -> Vec<String> {
    let mut customers: Vec<String> = entries.iter().map(|e| e.customer.clone()).collect();
    customers.sort();
    customers.dedup();
    customers
}

/// Chain heads touched by a batch, by customer.
pub(crate) type Heads = HashMap<String, super::ChainHead>;
