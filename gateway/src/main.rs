//! The `creditgate-gateway` binary: parses the command line and hands over to the library.
//!
//! Nothing else belongs here; the logic lives in `creditgate_gateway` so tests can drive it
//! without a process.

use std::process::ExitCode;

use clap::Parser;
use creditgate_gateway::cli::Cli;

/// mimalloc instead of the system allocator: a request allocates a few dozen small objects
/// (header maps, store commands and replies, futures), and glibc's malloc and free took
/// about a sixth of the gateway's CPU per request under load (benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(creditgate_gateway::run(cli))
}
