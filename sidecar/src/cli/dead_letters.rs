//! `creditgate-sidecar dead-letters list|show|replay|discard`: the stream entries the
//! ledger writer could not apply, read and acted on from a terminal against the ledger.
//!
//! Every action names its actor (`--actor`, with the OS user when the environment names
//! it) and a reason, and lands in the ledger's append-only `dead_letter_actions`, like the
//! admin API's actions. Nothing here talks to Redis.

use anyhow::bail;

use crate::cli::dead_letter_args::{DeadLetterCommand, LIST_MAX_LIMIT};
use crate::cli::stores::open_ledger;
use crate::jobs::dead_letters::{dead_letter_json, discard, replay};
use crate::ledger::DeadLetter;

/// The actor recorded for a terminal action: `cli:<actor>`, with ` (os user <name>)` when
/// the environment names the OS user. Fails on an empty `--actor` or `--reason`.
fn cli_actor(actor: &str, reason: &str) -> anyhow::Result<String> {
    if actor.trim().is_empty() {
        bail!("--actor: give who acts on the dead letter");
    }
    if reason.trim().is_empty() {
        bail!("--reason: say why");
    }
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    Ok(
        match os_user.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(user) => format!("cli:{} (os user {user})", actor.trim()),
            None => format!("cli:{}", actor.trim()),
        },
    )
}

/// One line per dead letter: number, state, reason, shard, stream id, event id, detail.
fn table(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:>6}  {:<9}  {:<11}  {:>5}  {:<17}  {:<40}  detail\n",
        "id", "state", "reason", "shard", "stream id", "event id"
    );
    for d in letters {
        let l = &d.letter;
        out.push_str(&format!(
            "{:>6}  {:<9}  {:<11}  {:>5}  {:<17}  {:<40}  {}\n",
            d.id,
            d.state(),
            l.reason.as_str(),
            l.shard,
            l.stream_id,
            l.event_id,
            l.detail
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

/// Runs one `dead-letters` subcommand and returns what it prints.
pub async fn dead_letter_command(command: DeadLetterCommand) -> anyhow::Result<String> {
    match command {
        DeadLetterCommand::List {
            ledger,
            all,
            limit,
            json,
        } => {
            if !(1..=LIST_MAX_LIMIT).contains(&limit) {
                bail!("--limit: {limit} is not between 1 and {LIST_MAX_LIMIT}");
            }
            let letters = open_ledger(&ledger)
                .await?
                .dead_letters(!all, limit)
                .await?;
            Ok(if json {
                let all: Vec<_> = letters.iter().map(dead_letter_json).collect();
                format!("{:#}\n", serde_json::Value::Array(all))
            } else {
                table(&letters)
            })
        }
        DeadLetterCommand::Show { ledger, id } => {
            match open_ledger(&ledger).await?.dead_letter(id).await? {
                Some(letter) => Ok(format!("{:#}\n", dead_letter_json(&letter))),
                None => bail!("no dead letter {id}"),
            }
        }
        DeadLetterCommand::Replay {
            ledger,
            id,
            actor,
            reason,
        } => {
            let actor = cli_actor(&actor, &reason)?;
            let ledger = open_ledger(&ledger).await?;
            let outcome = replay(ledger.as_ref(), id, &actor, &reason).await?;
            Ok(format!(
                "dead letter {id} replayed: {} ledger entries written, {} already there\n",
                outcome.written, outcome.duplicates
            ))
        }
        DeadLetterCommand::Discard {
            ledger,
            id,
            actor,
            reason,
        } => {
            let actor = cli_actor(&actor, &reason)?;
            let ledger = open_ledger(&ledger).await?;
            discard(ledger.as_ref(), id, &actor, &reason).await?;
            Ok(format!("dead letter {id} discarded\n"))
        }
    }
}
