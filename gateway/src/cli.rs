//! The gateway's command line: the subcommands and their options, parsed with clap.
//!
//! This module only describes the command line; it must not load files or start services.
//! Options take their value from the command line, then the environment, then the typed
//! defaults below.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where the proxy listens when not told: loopback, so a quickstart never exposes itself.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// Where the admin listener (metrics, health) listens when not told: loopback, port 9090,
/// the usual Prometheus scrape port, kept apart from the proxy listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Longest time, in seconds, requests in flight get after SIGTERM to finish and settle
/// their holds (the listeners close at once); the gateway exits as soon as none is left.
/// Thirty seconds covers a long AI completion; a hold cut off after it expires at its
/// deadline and returns its credits.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;

/// Seconds the worker runtimes get to stop once the grace period is over.
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 5;

/// The creditgate gateway: prepaid credit enforcement at the API edge.
#[derive(Debug, Parser)]
#[command(name = "creditgate-gateway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The gateway's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gateway: the proxy listener and the admin listener.
    Run(RunArgs),
    /// Validates a pricing config file and reports every problem at once.
    ///
    /// Prints `ok: FILE: <summary>` and exits 0 for a good file; prints every error as
    /// `file:line: field: message`, then `N error(s) in FILE`, and exits 1 for a bad or
    /// unreadable one. Meant for CI and for ops before a rollout.
    CheckConfig {
        /// The pricing config file (TOML) to check.
        file: PathBuf,
    },
    /// Writes the compiled pricing table of a config file as JSON (routes, features, plans,
    /// customers, cohorts, API key hashes, pricing version) for the OpenResty module.
    ///
    /// Refuses a bad file as `check-config` does. The format is in
    /// `lua-compat/openresty/README.md`.
    ExportPricing {
        /// The pricing config file (TOML) to export.
        file: PathBuf,
        /// Where to write the JSON (default: stdout).
        #[arg(long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// The version number to label it with, as a sidecar numbers what it publishes
        /// (default 0: a file read locally, as a gateway run with `--watch-config` labels it).
        #[arg(long, default_value_t = creditgate_config::UNPUBLISHED_VERSION)]
        version: u64,
    },
}

/// Options of `creditgate-gateway run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The pricing config file (TOML).
    #[arg(long, env = "CREDITGATE_CONFIG")]
    pub config: PathBuf,
    /// Address the proxy listens on.
    #[arg(long, env = "CREDITGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Address the admin listener (`/metrics`, `/healthz`, `/readyz`) listens on.
    #[arg(long, env = "CREDITGATE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Redis URL of the credit store (`redis://host:port/`). Repeat it, or give a comma
    /// separated list, with `--redis-cluster`. Without it the gateway runs on its embedded
    /// in-process store and applies the config's `[[embedded_grants]]`. A password in the
    /// URL is never printed (`--help` hides the environment's value; logs redact it).
    #[arg(
        long,
        env = "CREDITGATE_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis: Vec<String>,
    /// The Redis URLs are nodes of a Redis Cluster.
    #[arg(long, env = "CREDITGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key.
    #[arg(long, env = "CREDITGATE_REDIS_PREFIX", default_value = creditgate_protocol::keys::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Number of shards customers are spread over; fixed per deployment, the same for every
    /// gateway and sidecar.
    #[arg(long, env = "CREDITGATE_SHARDS", default_value_t = creditgate_protocol::keys::DEFAULT_SHARDS)]
    pub shards: u32,
    /// Worker threads of the proxy (default: the number of CPUs).
    #[arg(long, env = "CREDITGATE_THREADS")]
    pub threads: Option<usize>,
    /// Let idle worker threads steal requests queued on busy ones (`true`/`false`). Off by
    /// default: each worker thread then runs its requests, their background settles and
    /// its own Redis connection on itself, with no hand-over between threads.
    #[arg(long, env = "CREDITGATE_WORK_STEALING", default_value_t = false, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub work_stealing: bool,
    /// Give each worker thread a Redis connection of its own, opened on its own runtime
    /// (`true`/`false`; single Redis server only). Off by default: after a Redis restart a
    /// thread's first call can still find its connection's dead socket before the ping
    /// does, and fail (503 or, under `fail_open`, unmetered), where the shared connection is
    /// kept alive by the fleet poll. The load bench turns it on.
    #[arg(long, env = "CREDITGATE_THREAD_CONNECTIONS", default_value_t = false, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub thread_connections: bool,
    /// Longest time, in seconds, requests in flight get after SIGTERM to finish and settle;
    /// the gateway exits as soon as none is left.
    #[arg(long, env = "CREDITGATE_SHUTDOWN_GRACE_S", default_value_t = DEFAULT_SHUTDOWN_GRACE_S)]
    pub shutdown_grace_s: u64,
    /// Also serve a demo upstream (a JSON echo) on the address of the config's `default`
    /// upstream, for trying the gateway with nothing else running.
    #[arg(long)]
    pub demo_upstream: bool,
    /// Seconds the worker runtimes get to stop once the grace period is over.
    #[arg(long, env = "CREDITGATE_SHUTDOWN_TIMEOUT_S", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_S)]
    pub shutdown_timeout_s: u64,
    /// Re-read `--config` whenever its content changes (also through a Kubernetes
    /// ConfigMap's symlink swap) instead of following the versions a sidecar publishes in
    /// Redis. For gateways run without a sidecar.
    #[arg(long, env = "CREDITGATE_WATCH_CONFIG", value_parser = clap::builder::BoolishValueParser::new())]
    pub watch_config: bool,
    /// While this file exists, the gateway runs in mode `off` (passes everything through
    /// with no store call), whatever Redis says: the kill switch that works without Redis.
    /// If it exists at start-up the gateway starts even with Redis unreachable, connects
    /// in the background, and meters through Redis once the file is removed.
    #[arg(long, env = "CREDITGATE_KILL_SWITCH_FILE", value_name = "FILE")]
    pub kill_switch_file: Option<PathBuf>,
    /// Run in mode `off` for the life of the process, whatever Redis says, and start even
    /// when Redis is unreachable, connecting in the background (`CREDITGATE_FORCE_OFF=1`;
    /// also true/yes/on).
    #[arg(long, env = "CREDITGATE_FORCE_OFF", value_parser = clap::builder::BoolishValueParser::new())]
    pub force_off: bool,
    /// This gateway's id in heartbeats and the sidecar's fleet list (default: the host
    /// name and the admin address).
    #[arg(long, env = "CREDITGATE_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Milliseconds an API key found in Redis is trusted without asking again: a key
    /// revoked through the sidecar's admin API stops working within this time. Unknown
    /// keys are remembered for the smaller of this and 5,000 ms.
    #[arg(
        long,
        env = "CREDITGATE_API_KEY_CACHE_TTL_MS",
        default_value_t = crate::store_client::KEY_CACHE_HIT_TTL_MS,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    pub api_key_cache_ttl_ms: u64,
}
