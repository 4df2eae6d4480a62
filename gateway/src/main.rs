//! The `creditgate-gateway` binary: parses the command line and hands over to the library.
//!
//! Nothing else belongs here; the logic lives in `creditgate_gateway` so tests can drive it
//! without a process.

use std::process::ExitCode;

use clap::Parser;
use creditgate_gateway::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(creditgate_gateway::run(cli))
}
