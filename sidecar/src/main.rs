//! The `creditgate-sidecar` binary: parses the command line and hands over to the library.
//!
//! Nothing else belongs here; the logic lives in `creditgate_sidecar` so tests can drive it
//! without a process.

use std::process::ExitCode;

use clap::Parser;
use creditgate_sidecar::cli::args::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(creditgate_sidecar::cli::dispatch::run(cli).await)
}
