//! The sidecar's command line: the subcommands and their options, parsed with clap.
//!
//! This module only describes the command line; it must not connect to anything. For now
//! the sidecar offers read-only inspection for ops; the ledger writer, sweeper and admin
//! API will be further subcommands.

use clap::{Args, Parser, Subcommand};
use creditgate_protocol::keys::{DEFAULT_PREFIX, DEFAULT_SHARDS};

/// Per-call Redis timeout of the inspection commands, in milliseconds. An operator's
/// one-off read can wait far longer than the gateway's hot-path timeout, and two seconds
/// still fails quickly at a terminal when Redis is down.
pub const DEFAULT_INSPECT_TIMEOUT_MS: u64 = 2_000;

/// How many events `inspect events` shows when not told: a screenful.
pub const DEFAULT_EVENTS_COUNT: usize = 20;

/// The most events `inspect events` shows at once, so that a typo cannot pull a whole
/// stream over the network.
pub const EVENTS_COUNT_MAX: usize = 10_000;

/// The creditgate sidecar: ledger, sweeper, reconciler and ops tools.
#[derive(Debug, Parser)]
#[command(name = "creditgate-sidecar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The sidecar's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reads credit state from Redis for ops; never writes credits.
    #[command(subcommand)]
    Inspect(InspectCommand),
}

/// What `inspect` reads.
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Prints a customer's balance per credit type and per grant.
    Balance {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
        /// Prints JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The customer id.
        customer: String,
    },
    /// Prints the newest events of one shard's stream, oldest of them first.
    Events {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
        /// Which stream to read.
        #[command(flatten)]
        stream: StreamSelector,
        /// How many events to show, at most.
        #[arg(long, default_value_t = DEFAULT_EVENTS_COUNT,
              value_parser = parse_events_count)]
        count: usize,
    },
}

/// Where the credit store is and how its keys are laid out.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/`.
    #[arg(long = "redis", value_name = "URL")]
    pub url: String,
    /// The key prefix of the deployment.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// The number of shards of the deployment (fixed per deployment).
    #[arg(long, default_value_t = DEFAULT_SHARDS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
    /// Per-call timeout, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_INSPECT_TIMEOUT_MS)]
    pub timeout_ms: u64,
}

/// The shard whose event stream to read: by number or by one of its customers.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct StreamSelector {
    /// The shard number, from 0 to shards - 1.
    #[arg(long)]
    pub shard: Option<u32>,
    /// A customer: reads the customer's shard and shows only the customer's events.
    #[arg(long)]
    pub customer: Option<String>,
}

fn parse_events_count(raw: &str) -> Result<usize, String> {
    let count: usize = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a whole number"))?;
    if (1..=EVENTS_COUNT_MAX).contains(&count) {
        Ok(count)
    } else {
        Err(format!("must be from 1 to {EVENTS_COUNT_MAX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn events_need_exactly_one_of_shard_and_customer() {
        let base = [
            "creditgate-sidecar",
            "inspect",
            "events",
            "--redis",
            "redis://x/",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--shard", "1"])).is_ok());
        assert!(Cli::try_parse_from(base.iter().chain(&["--customer", "acme"])).is_ok());
        assert!(
            Cli::try_parse_from(base.iter().chain(&["--shard", "1", "--customer", "acme"]))
                .is_err()
        );
        assert!(Cli::try_parse_from(base.iter().chain(&["--shard", "1", "--count", "0"])).is_err());
    }
}
