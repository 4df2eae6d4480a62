//! What operators do about dead letters (the stream entries the ledger writer could not
//! apply): replay one through the writer's path once its cause is fixed, or discard it.
//!
//! Both record who acted and why in the ledger's append-only `dead_letter_actions`; nothing
//! is deleted. The CLI and the admin API call these; neither touches Redis (a dead letter's
//! stream entry was acknowledged when it was recorded).

use creditgate_protocol::{Event, Shard, invariants::check_event};

use super::writer::ledger_entries_of;
use crate::ledger::{
    AppendOutcome, DeadLetter, DeadLetterAction, DeadLetterActionRecord, LedgerDeadLetters,
    LedgerError, now_ms,
};

/// Why a dead letter could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has this number.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// It was replayed or discarded before.
    #[error("dead letter {id} is {state} already")]
    Resolved {
        /// The letter.
        id: i64,
        /// `replayed` or `discarded`.
        state: &'static str,
    },
    /// The ledger still refuses it; the failed replay is recorded and the letter stays open.
    #[error("dead letter {id} was not replayed: {reason}")]
    Refused {
        /// The letter.
        id: i64,
        /// What the ledger or the parser said.
        reason: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What a replay wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Ledger entries inserted.
    pub written: u64,
    /// Ledger entries that were there already (the same event arrived meanwhile).
    pub duplicates: u64,
}

/// The open dead letter `id`.
async fn open_letter(
    ledger: &dyn LedgerDeadLetters,
    id: i64,
) -> Result<DeadLetter, DeadLetterError> {
    let letter = ledger
        .dead_letter(id)
        .await?
        .ok_or(DeadLetterError::NotFound(id))?;
    match letter.state() {
        "open" => Ok(letter),
        state => Err(DeadLetterError::Resolved { id, state }),
    }
}

/// Records `action` on letter `id` by `actor`.
async fn record(
    ledger: &dyn LedgerDeadLetters,
    id: i64,
    action: DeadLetterAction,
    actor: &str,
    note: String,
) -> Result<(), DeadLetterError> {
    let record = DeadLetterActionRecord {
        action,
        actor: actor.to_string(),
        note,
        at_ms: now_ms(),
    };
    Ok(ledger.record_dead_letter_action(id, &record).await?)
}

/// Parses the stored fields and appends the event's ledger entries, as the writer does.
async fn apply(
    ledger: &dyn LedgerDeadLetters,
    letter: &DeadLetter,
) -> Result<ReplayOutcome, String> {
    let l = &letter.letter;
    let event = Event::from_fields(l.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| e.to_string())?;
    check_event(&event).map_err(|e| e.to_string())?;
    let entries = ledger_entries_of(&event, Shard(l.shard), &l.stream_id)?;
    let outcomes = ledger
        .append_batch(&entries)
        .await
        .map_err(|e| e.to_string())?;
    let mut outcome = ReplayOutcome {
        written: 0,
        duplicates: 0,
    };
    for result in outcomes {
        match result {
            AppendOutcome::Inserted { .. } => outcome.written += 1,
            AppendOutcome::Duplicate { .. } => outcome.duplicates += 1,
            AppendOutcome::Conflict { event_id, existing } => {
                return Err(format!(
                    "the ledger still holds event id {event_id} (seq {}) with other fields",
                    existing.seq
                ));
            }
        }
    }
    Ok(outcome)
}

/// Re-applies dead letter `id` through the writer's path (parse, check, append) after an
/// operator fixed its cause; records `replayed` or `replay_failed` with `actor` and `note`.
pub async fn replay(
    ledger: &dyn LedgerDeadLetters,
    id: i64,
    actor: &str,
    note: &str,
) -> Result<ReplayOutcome, DeadLetterError> {
    let letter = open_letter(ledger, id).await?;
    match apply(ledger, &letter).await {
        Ok(outcome) => {
            let said = format!(
                "{note} (written {}, already there {})",
                outcome.written, outcome.duplicates
            );
            record(ledger, id, DeadLetterAction::Replayed, actor, said).await?;
            Ok(outcome)
        }
        Err(reason) => {
            let said = format!("{note}: {reason}");
            record(ledger, id, DeadLetterAction::ReplayFailed, actor, said).await?;
            Err(DeadLetterError::Refused { id, reason })
        }
    }
}

/// Marks dead letter `id` resolved without applying it; records `discarded` with `actor`
/// and `note` (the reason). Nothing is deleted.
pub async fn discard(
    ledger: &dyn LedgerDeadLetters,
    id: i64,
    actor: &str,
    note: &str,
) -> Result<(), DeadLetterError> {
    open_letter(ledger, id).await?;
    record(
        ledger,
        id,
        DeadLetterAction::Discarded,
        actor,
        note.to_string(),
    )
    .await
}

/// A dead letter as JSON, the one shape the CLI's `--json` and the admin API answer with.
pub fn dead_letter_json(letter: &DeadLetter) -> serde_json::Value {
    let l = &letter.letter;
    let fields: serde_json::Map<String, serde_json::Value> = l
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let actions: Vec<serde_json::Value> = letter
        .actions
        .iter()
        .map(|a| {
            serde_json::json!({
                "action": a.action.as_str(),
                "actor": a.actor,
                "note": a.note,
                "at_ms": a.at_ms,
            })
        })
        .collect();
    serde_json::json!({
        "id": letter.id,
        "state": letter.state(),
        "shard": l.shard,
        "stream_id": l.stream_id,
        "event_id": l.event_id,
        "reason": l.reason.as_str(),
        "detail": l.detail,
        "recorded_at_ms": l.recorded_at_ms,
        "fields": fields,
        "actions": actions,
    })
}
