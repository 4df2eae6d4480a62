//! The arguments of `creditgate-sidecar dead-letters …` (run by [`super::dead_letters`]).
//! Parsing only; nothing here opens a store.

use clap::Subcommand;

use crate::settings::LedgerArgs;

/// Most dead letters `list` prints by default: a screenful; `--limit` raises it.
pub const LIST_DEFAULT_LIMIT: u32 = 50;

/// Most dead letters `list` reads at once, whatever `--limit` says.
pub const LIST_MAX_LIMIT: u32 = 1_000;

/// What `dead-letters` does.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Lists dead letters, newest first: open ones only unless --all.
    List {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Also those replayed or discarded.
        #[arg(long)]
        all: bool,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = LIST_DEFAULT_LIMIT)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints one dead letter: its raw fields, why, and what was done about it (JSON).
    Show {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The dead letter's number, as `list` shows it.
        id: i64,
    },
    /// Re-applies a dead letter through the writer's path once its cause is fixed; a
    /// refusal is recorded too and leaves it open.
    Replay {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The dead letter's number.
        id: i64,
        /// Who replays it.
        #[arg(long)]
        actor: String,
        /// Why (what was fixed).
        #[arg(long)]
        reason: String,
    },
    /// Marks a dead letter resolved without applying it; nothing is deleted.
    Discard {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The dead letter's number.
        id: i64,
        /// Who discards it.
        #[arg(long)]
        actor: String,
        /// Why it needs no entry in the ledger.
        #[arg(long)]
        reason: String,
    },
}
