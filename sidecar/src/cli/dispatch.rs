//! Runs a parsed command line: hands each subcommand to the module that does it, prints
//! its output or its error, and turns the outcome into the process's exit status.
//!
//! Nothing here does a command's work; the binary's `main` only parses and calls [`run`].

use std::io::Write;

use creditgate_protocol::redact_secrets;

use crate::cli::args::{Cli, Command, InspectCommand, LedgerCommand};
use crate::cli::mode_commands::mode_command;
use crate::cli::{admin_commands, commands, dead_letters, inspect, render};

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
            // A connection error may quote a URL; its password never reaches the terminal.
            eprintln!("error: {}", redact_secrets(&format!("{error:#}")));
            EXIT_FAILURE
        }
    }
}

/// Runs the parsed command line and returns what it prints on success.
pub async fn execute(cli: Cli) -> anyhow::Result<String> {
    let Cli { command } = cli;
    match command {
        Command::Run(args) => commands::run(args).await,
        Command::Grant(args) => commands::grant(args).await,
        Command::Ledger(LedgerCommand::Verify { ledger, customer }) => {
            commands::verify(ledger, customer).await
        }
        Command::Ledger(LedgerCommand::Balance {
            ledger,
            at_ms,
            customer,
        }) => commands::ledger_balance(ledger, customer, at_ms).await,
        Command::Reconcile(args) => commands::reconcile(args).await,
        Command::Mode(command) => mode_command(command).await,
        Command::Admin(command) => admin_commands::execute(command).await,
        Command::DeadLetters(command) => dead_letters::dead_letter_command(command).await,
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
