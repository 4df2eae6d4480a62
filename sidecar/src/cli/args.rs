//! The sidecar's command line: the subcommands and their options, parsed with clap.
//!
//! This module only describes the command line; it must not connect to anything. The
//! `admin` subcommands are described in `admin_args`.

use clap::{Args, Parser, Subcommand};
use creditgate_protocol::keys::{DEFAULT_PREFIX, DEFAULT_SHARDS};
use creditgate_protocol::{RedisTarget, redact_secrets};

use crate::settings::LedgerArgs;

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
    /// Runs the sidecar: ledger writer, sweeper, grant outbox, rebuilds and reconciliation,
    /// with metrics and read-only ledger queries over HTTP.
    Run(RunArgs),
    /// Issues a grant: recorded in the ledger first, then applied to Redis.
    ///
    /// The break-glass path: it bypasses the admin API's roles, per-role limits, approvals
    /// and idempotency keys, so anyone holding the ledger and Redis credentials can grant
    /// any amount with it. Day-to-day grants go through the admin API (`admin call grant`).
    /// The ledger records the actor as `break-glass:<--actor>` with the OS user running the
    /// command, so these grants stand out in audits.
    Grant(GrantArgs),
    /// Reads and checks the ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Compares every customer's Redis balance with the ledger; `--repair` rebuilds the
    /// drifted ones in Redis from the ledger.
    Reconcile(ReconcileArgs),
    /// Reads credit state from Redis for ops; never writes credits.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Reads and changes the fleet's modes: the kill switch, per-route and per-customer
    /// overrides and the rollout percentage. Every change needs --actor and --reason and
    /// is written to the audit log.
    #[command(subcommand)]
    Mode(ModeCommand),
    /// Credit operations: admin tokens, and the admin API's calls from a terminal.
    #[command(subcommand)]
    Admin(crate::cli::admin_args::AdminCommand),
    /// Stream entries the ledger could not apply: list and show them, replay one once its
    /// cause is fixed, or discard it. Every action is recorded with its actor.
    #[command(subcommand)]
    DeadLetters(crate::cli::dead_letter_args::DeadLetterCommand),
}

/// What `mode` does.
#[derive(Debug, Subcommand)]
pub enum ModeCommand {
    /// Sets a mode override, fleet-wide (`off` is the kill switch) or for one route or one
    /// customer: off, shadow, enforce, or clear to remove the override.
    Set {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
        /// off, shadow, enforce or clear.
        mode: String,
        /// Only this route (by its name in the config).
        #[arg(long)]
        route: Option<String>,
        /// Only this customer.
        #[arg(long, conflicts_with = "route")]
        customer: Option<String>,
        /// Who makes the change.
        #[arg(long)]
        actor: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Enforces for PERCENT of customers (by a stable hash of the id) and shadows the
    /// rest, where the mode would be enforce; `clear` removes the rollout.
    Rollout {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
        /// 0 to 100, or clear.
        percent: String,
        /// Who makes the change.
        #[arg(long)]
        actor: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Prints the control state, the published config version and the gateways.
    Show {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Prints the audit log of changes, newest first.
    Audit {
        /// Where the credit store is.
        #[command(flatten)]
        redis: RedisArgs,
        /// How many entries, at most.
        #[arg(long, default_value_t = DEFAULT_AUDIT_COUNT)]
        limit: usize,
    },
}

/// How many audit entries `mode audit` prints when not told: a screenful.
pub const DEFAULT_AUDIT_COUNT: usize = 20;

/// Where the sidecar listens for HTTP (metrics, health, read-only queries) when not told:
/// loopback, next to the gateway's admin port.
pub const DEFAULT_SIDECAR_LISTEN: &str = "127.0.0.1:9191";

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the credit store is.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The ledger.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// This sidecar's consumer name in the stream group: unique per sidecar and stable
    /// across its restarts (default: the host name).
    #[arg(long, env = "CREDITGATE_CONSUMER")]
    pub consumer: Option<String>,
    /// Address of the HTTP listener.
    #[arg(long, env = "CREDITGATE_SIDECAR_LISTEN", default_value = DEFAULT_SIDECAR_LISTEN)]
    pub listen: String,
    /// The pricing config file (the same file the gateways use). Validated at start-up; a
    /// sidecar without one still moves events into the ledger but cannot price anything.
    #[arg(long = "config", value_name = "FILE", env = "CREDITGATE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address of the admin API's listener (credit operations); off when not given. Bind
    /// it to a private interface: it changes credits.
    #[arg(long, env = "CREDITGATE_ADMIN_LISTEN", requires = "operations")]
    pub admin_listen: Option<String>,
    /// The credit-operations file (credit types, reason codes, role limits, bundles,
    /// schedules); needed by the admin API.
    #[arg(long, value_name = "FILE", env = "CREDITGATE_OPERATIONS")]
    pub operations: Option<std::path::PathBuf>,
    /// A file holding the key customer session tokens are signed with (HMAC-SHA256, at
    /// least 32 bytes); rotating it ends every session. Without it (or
    /// `CREDITGATE_SESSION_KEY`) customer sessions are off.
    #[arg(long, value_name = "FILE", env = "CREDITGATE_SESSION_KEY_FILE")]
    pub session_key_file: Option<std::path::PathBuf>,
    /// The session signing key itself, when not in a file.
    #[arg(
        long = "session-key",
        env = "CREDITGATE_SESSION_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub session_key: Option<String>,
}

/// Options of `grant`.
#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    /// Where the credit store is.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The ledger.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The customer receiving the credits.
    #[arg(long)]
    pub customer: String,
    /// The credit type.
    #[arg(long)]
    pub credit_type: String,
    /// Amount, in the credit type's smallest unit.
    #[arg(long)]
    pub amount: u64,
    /// The grant's id; a retry with the same id applies nothing twice (default: random).
    #[arg(long)]
    pub grant_id: Option<String>,
    /// Burn priority: lower burns first.
    #[arg(long, default_value_t = 100)]
    pub priority: u32,
    /// Days until the unused rest expires (default: never).
    #[arg(long)]
    pub expires_in_days: Option<u64>,
    /// Total money paid for the grant, in currency micro-units (0 for free credits).
    #[arg(long, default_value_t = 0)]
    pub cost_basis: u64,
    /// Where the credits come from: purchase, promotion, plan_allotment, goodwill,
    /// adjustment.
    #[arg(long, default_value = "adjustment")]
    pub source: String,
    /// Who issues the grant (a person's name or e-mail, 1 to 128 characters); recorded as
    /// `break-glass:<actor>` with the OS user.
    #[arg(long)]
    pub actor: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
}

/// What `ledger` does.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Walks every customer's hash chain (or one customer's) and reports the first broken
    /// link; exits 1 if there is one.
    Verify {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Only this customer.
        #[arg(long)]
        customer: Option<String>,
    },
    /// Prints a customer's balance from the ledger, now or at a past instant.
    Balance {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The instant, ms since the Unix epoch (default: now).
        #[arg(long)]
        at_ms: Option<u64>,
        /// The customer.
        customer: String,
    },
}

/// Options of `reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Where the credit store is.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The ledger.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Rebuild every drifted customer's Redis state from the ledger.
    #[arg(long)]
    pub repair: bool,
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
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/` (its password is never printed).
    /// Either this or `--redis-cluster`.
    #[arg(
        id = "redis_url",
        long = "redis",
        value_name = "URL",
        env = "CREDITGATE_REDIS_URL",
        hide_env_values = true,
        required_unless_present = "redis_cluster"
    )]
    pub url: Option<String>,
    /// The URLs of some nodes of a Redis Cluster (seeds: the client finds the others),
    /// repeated or comma-separated, e.g. `redis://10.0.0.1:6379/,redis://10.0.0.2:6379/`.
    /// Either this or `--redis`.
    #[arg(
        id = "redis_cluster",
        long = "redis-cluster",
        value_name = "URL",
        env = "CREDITGATE_REDIS_CLUSTER_NODES",
        hide_env_values = true,
        value_delimiter = ',',
        num_args = 1..,
        conflicts_with = "redis_url"
    )]
    pub cluster: Vec<String>,
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

impl RedisArgs {
    /// Where the credit store is: one server, or a cluster by its seed nodes.
    pub fn target(&self) -> RedisTarget {
        match &self.url {
            Some(url) if self.cluster.is_empty() => RedisTarget::Single(url.clone()),
            _ => RedisTarget::Cluster(self.cluster.clone()),
        }
    }

    /// The target for messages, passwords removed: the URL, or the seed URLs.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) if self.cluster.is_empty() => redact_secrets(url),
            _ => format!(
                "the Redis Cluster at {}",
                self.cluster
                    .iter()
                    .map(|u| redact_secrets(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
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
    fn redis_is_one_url_or_cluster_seeds_never_both() {
        let reconcile = |extra: &[&str]| {
            let base = ["creditgate-sidecar", "reconcile", "--sqlite", "l.db"];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        let Command::Reconcile(args) = reconcile(&["--redis-cluster", "redis://a/,redis://b/"])
            .expect("cluster seeds")
            .command
        else {
            panic!("not reconcile");
        };
        assert_eq!(
            args.redis.target(),
            RedisTarget::Cluster(vec!["redis://a/".into(), "redis://b/".into()])
        );
        let Command::Reconcile(args) = reconcile(&["--redis", "redis://a/"]).unwrap().command
        else {
            panic!("not reconcile");
        };
        assert_eq!(
            args.redis.target(),
            RedisTarget::Single("redis://a/".into())
        );
        let both = reconcile(&["--redis", "redis://a/", "--redis-cluster", "redis://b/"])
            .expect_err("both")
            .to_string();
        assert!(
            both.contains("--redis-cluster") && both.contains("cannot be used"),
            "{both}"
        );
        let neither = reconcile(&[]).expect_err("neither").to_string();
        assert!(neither.contains("--redis <URL>"), "{neither}");
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
