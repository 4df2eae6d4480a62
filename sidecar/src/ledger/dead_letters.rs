//! Dead letters (`dead_letters` and `dead_letter_actions`, migration 8): stream entries the
//! ledger writer could not apply, kept with their raw fields so the writer can acknowledge
//! them and move on, and what operators did about each (replay, discard) with who did it.
//!
//! Both tables are append-only: a dead letter is never edited or deleted; its state is
//! derived from its actions. This module holds the records and the SQL; it decides nothing
//! about what is applicable (the writer does).

use sha2::{Digest, Sha256};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::common::{RowsAffected, Shared};
use super::{LedgerError, LedgerResult};

/// Why the writer could not apply an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The ledger holds the entry's event id with other fields.
    Conflict,
    /// The entry is not a readable event (missing or malformed field, unknown kind or
    /// version, broken invariant).
    Malformed,
    /// A readable event the ledger cannot store (an id, customer or credit type it refuses).
    Unplaceable,
}

impl DeadLetterReason {
    /// The stored spelling, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Malformed => "malformed",
            Self::Unplaceable => "unplaceable",
        }
    }

    fn parse(s: &str) -> LedgerResult<Self> {
        match s {
            "conflict" => Ok(Self::Conflict),
            "malformed" => Ok(Self::Malformed),
            "unplaceable" => Ok(Self::Unplaceable),
            other => Err(LedgerError::Corrupt(format!(
                "dead_letters.reason {other:?} is not conflict, malformed or unplaceable"
            ))),
        }
    }
}

/// What an operator (or a replay) did about a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterAction {
    /// Replayed through the writer's path and now in the ledger (resolves it).
    Replayed,
    /// A replay the ledger still refused (the letter stays open).
    ReplayFailed,
    /// Marked resolved without applying it (resolves it; nothing is deleted).
    Discarded,
}

impl DeadLetterAction {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::ReplayFailed => "replay_failed",
            Self::Discarded => "discarded",
        }
    }

    fn parse(s: &str) -> LedgerResult<Self> {
        match s {
            "replayed" => Ok(Self::Replayed),
            "replay_failed" => Ok(Self::ReplayFailed),
            "discarded" => Ok(Self::Discarded),
            other => Err(LedgerError::Corrupt(format!(
                "dead_letter_actions.action {other:?} is not replayed, replay_failed or discarded"
            ))),
        }
    }
}

/// A stream entry to record as a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The shard whose stream held it.
    pub shard: u32,
    /// The stream entry id (`<ms>-<seq>`).
    pub stream_id: String,
    /// The entry's `event_id` field, empty when it had none.
    pub event_id: String,
    /// Why it was not applied.
    pub reason: DeadLetterReason,
    /// What was wrong, in words, for the operator.
    pub detail: String,
    /// The entry's raw field/value pairs, in stream order.
    pub fields: Vec<(String, String)>,
    /// When the writer recorded it, ms since the Unix epoch.
    pub recorded_at_ms: u64,
}

impl NewDeadLetter {
    /// The key that makes a redelivered entry one dead letter: shard, stream id and the
    /// SHA-256 of its fields (a stream id can come back after Redis lost its data).
    fn dedup_key(&self) -> String {
        let mut hash = Sha256::new();
        for (k, v) in &self.fields {
            hash.update((k.len() as u64).to_be_bytes());
            hash.update(k.as_bytes());
            hash.update((v.len() as u64).to_be_bytes());
            hash.update(v.as_bytes());
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}/{}/{digest}", self.shard, self.stream_id)
    }
}

/// One recorded action on a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterActionRecord {
    /// What was done.
    pub action: DeadLetterAction,
    /// Who did it (an admin token name, `cli:<user>`, …).
    pub actor: String,
    /// The operator's reason, or why a replay failed.
    pub note: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// A recorded dead letter with its actions, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its number, increasing.
    pub id: i64,
    /// The entry as recorded.
    pub letter: NewDeadLetter,
    /// What was done about it since.
    pub actions: Vec<DeadLetterActionRecord>,
}

impl DeadLetter {
    /// `open`, `replayed` or `discarded`: the last resolving action, else open.
    pub fn state(&self) -> &'static str {
        self.actions
            .iter()
            .rev()
            .find(|a| a.action != DeadLetterAction::ReplayFailed)
            .map_or("open", |a| a.action.as_str())
    }
}

/// Inserts a dead letter; a redelivered one (same dedup key) does nothing.
const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (dedup_key, shard, stream_id, \
     event_id, reason, detail, fields, recorded_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (dedup_key) DO NOTHING";

const SELECT_COLUMNS: &str = "SELECT id, shard, stream_id, event_id, reason, detail, fields, recorded_at_ms \
     FROM dead_letters d";

/// Newest first; `$1`: 1 for open letters only, `$2`: the limit.
fn select_list() -> String {
    format!(
        "{SELECT_COLUMNS} WHERE $1 = 0 OR NOT EXISTS (SELECT 1 FROM dead_letter_actions a \
         WHERE a.dead_letter_id = d.id AND a.action IN ('replayed', 'discarded')) \
         ORDER BY id DESC LIMIT $2"
    )
}

const INSERT_ACTION: &str = "INSERT INTO dead_letter_actions (dead_letter_id, action, actor, \
     note, at_ms) VALUES ($1, $2, $3, $4, $5)";

const SELECT_ACTIONS: &str = "SELECT action, actor, note, at_ms FROM dead_letter_actions \
     WHERE dead_letter_id = $1 ORDER BY id";

/// The raw fields as the stored JSON array of pairs.
fn fields_json(fields: &[(String, String)]) -> String {
    serde_json::to_string(fields).unwrap_or_else(|_| "[]".into())
}

impl<DB> Shared<'_, DB>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    /// Records a dead letter; false when this entry was recorded before.
    pub(crate) async fn record_dead_letter(&self, letter: &NewDeadLetter) -> LedgerResult<bool> {
        let done = sqlx::query(INSERT_DEAD_LETTER)
            .bind(letter.dedup_key())
            .bind(i64::from(letter.shard))
            .bind(letter.stream_id.as_str())
            .bind(letter.event_id.as_str())
            .bind(letter.reason.as_str())
            .bind(letter.detail.as_str())
            .bind(fields_json(&letter.fields))
            .bind(i64::try_from(letter.recorded_at_ms).unwrap_or(i64::MAX))
            .execute(self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` dead letters, newest first; only unresolved ones when `open_only`.
    pub(crate) async fn dead_letters(
        &self,
        open_only: bool,
        limit: u32,
    ) -> LedgerResult<Vec<DeadLetter>> {
        let rows = sqlx::query(&select_list())
            .bind(i64::from(open_only))
            .bind(i64::from(limit))
            .fetch_all(self.readers)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.with_actions(row).await?);
        }
        Ok(out)
    }

    /// The dead letter numbered `id`.
    pub(crate) async fn dead_letter(&self, id: i64) -> LedgerResult<Option<DeadLetter>> {
        let row = sqlx::query(&format!("{SELECT_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.readers)
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_actions(&row).await?)),
            None => Ok(None),
        }
    }

    /// Records an action on dead letter `id`.
    pub(crate) async fn record_dead_letter_action(
        &self,
        id: i64,
        action: &DeadLetterActionRecord,
    ) -> LedgerResult<()> {
        sqlx::query(INSERT_ACTION)
            .bind(id)
            .bind(action.action.as_str())
            .bind(action.actor.as_str())
            .bind(action.note.as_str())
            .bind(i64::try_from(action.at_ms).unwrap_or(i64::MAX))
            .execute(self.writer)
            .await?;
        Ok(())
    }

    /// The dead letter of `row` (columns of [`SELECT_COLUMNS`]) with its actions.
    async fn with_actions(&self, row: &DB::Row) -> LedgerResult<DeadLetter> {
        let id: i64 = row.try_get(0)?;
        let fields: String = row.try_get(6)?;
        let fields: Vec<(String, String)> = serde_json::from_str(&fields).map_err(|e| {
            LedgerError::Corrupt(format!("dead_letters.fields of letter {id}: {e}"))
        })?;
        let letter = NewDeadLetter {
            shard: u32::try_from(row.try_get::<i64, _>(1)?).unwrap_or(u32::MAX),
            stream_id: row.try_get(2)?,
            event_id: row.try_get(3)?,
            reason: DeadLetterReason::parse(&row.try_get::<String, _>(4)?)?,
            detail: row.try_get(5)?,
            fields,
            recorded_at_ms: row.try_get::<i64, _>(7)?.max(0) as u64,
        };
        let rows = sqlx::query(SELECT_ACTIONS)
            .bind(id)
            .fetch_all(self.readers)
            .await?;
        let actions = rows
            .iter()
            .map(|r| {
                Ok(DeadLetterActionRecord {
                    action: DeadLetterAction::parse(&r.try_get::<String, _>(0)?)?,
                    actor: r.try_get(1)?,
                    note: r.try_get(2)?,
                    at_ms: r.try_get::<i64, _>(3)?.max(0) as u64,
                })
            })
            .collect::<LedgerResult<_>>()?;
        Ok(DeadLetter {
            id,
            letter,
            actions,
        })
    }
}
