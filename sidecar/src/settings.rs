//! Settings that the command line parses and the library reads: where the ledger database
//! is. They live below the command line so that library code (the admin tables, the
//! ledger openers) never imports from `cli/`.
//!
//! Nothing here opens or connects to anything.

use clap::Args;

/// The ledger file when neither `--sqlite` nor `--postgres` is given: SQLite, embedded.
pub const DEFAULT_SQLITE_PATH: &str = "creditgate-ledger.sqlite";

/// Which ledger to use.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// The SQLite ledger file (the embedded default).
    #[arg(long, env = "CREDITGATE_LEDGER_SQLITE", conflicts_with = "postgres")]
    pub sqlite: Option<std::path::PathBuf>,
    /// The Postgres ledger URL (production; several sidecars may share it). Its password
    /// is never printed (`--help` hides the environment's value; logs redact it).
    #[arg(long, env = "CREDITGATE_LEDGER_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
}
