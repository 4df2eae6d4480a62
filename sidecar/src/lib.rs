//! The creditgate sidecar: the durable ledger, the sweeper, the reconciler, the config
//! publisher and the admin API, next to the gateway.
//!
//! For now it offers read-only inspection of the credit store for ops
//! ([`inspect`], rendered by [`render`]). The binary in `main.rs` only parses the command
//! line and calls [`run`].

pub mod cli;
pub mod daemon;
pub mod inspect;
pub mod ledger;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod render;
pub mod writer;

use std::io::Write;

use crate::cli::{Cli, Command, InspectCommand};
use crate::inspect::InspectError;

/// Process exit status of a successful command.
pub const EXIT_OK: u8 = 0;

/// Process exit status of a failed command: Redis unreachable, a failed read, a bad
/// argument, or output that could not be written.
pub const EXIT_FAILURE: u8 = 1;

/// Runs the parsed command line, prints its output to stdout or its error to stderr, and
/// returns the process exit status.
pub async fn run(cli: Cli) -> u8 {
    match execute(cli).await {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => EXIT_OK,
                Err(_) => EXIT_FAILURE,
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            EXIT_FAILURE
        }
    }
}

/// Runs the parsed command line and returns what it prints on success.
pub async fn execute(cli: Cli) -> Result<String, InspectError> {
    let Cli { command } = cli;
    match command {
        Command::Inspect(InspectCommand::Balance {
            redis,
            json,
            customer,
        }) => {
            let report = inspect::read_balance(&redis, &customer).await?;
            Ok(if json {
                format!("{:#}\n", render::balance_json(&report))
            } else {
                render::balance_table(&report)
            })
        }
        Command::Inspect(InspectCommand::Events {
            redis,
            stream,
            count,
        }) => {
            let report = inspect::read_events(&redis, &stream, count).await?;
            Ok(render::events_table(&report))
        }
    }
}
