//! The creditgate sidecar: the durable ledger, the sweeper, the reconciler, the config
//! publisher and the admin API, next to the gateway.
//!
//! The crate is layered; each layer imports only from the layers below it, and no two
//! files import each other in a cycle:
//!
//! - [`cli`] (top): the command line. [`cli::args`] and [`cli::admin_args`] parse it;
//!   [`cli::commands`] runs `run`, `grant`, `ledger verify|balance` and `reconcile`;
//!   [`cli::admin_commands`] manages admin tokens and calls the admin API from a terminal;
//!   [`cli::mode_commands`] reads and changes the fleet's modes; [`cli::inspect`] reads
//!   the credit store, rendered by [`cli::render`]; [`cli::stores`] opens what a command
//!   names. [`run`] below dispatches a parsed command line; `main.rs` only parses it.
//! - [`api`]: the HTTP surfaces of `run`. [`api::read_listener`] serves metrics, health
//!   and read-only ledger queries; with `--admin-listen`, [`api::admin`] serves credit
//!   operations (configured by the [`operations`] file), the fleet control routes of
//!   [`api::control`] and the [`api::usage_events`] route, all behind bearer tokens.
//! - [`jobs`]: the background work of `run`. [`jobs::daemon`] drives the ledger
//!   [`jobs::writer`], the sweeper, the grant [`jobs::outbox`], the generation check and
//!   the reconciler ([`jobs::reconcile`]); [`jobs::config_publisher`] publishes pricing
//!   configs and keeps the [`jobs::fleet_metrics`]; [`jobs::audit_mirror`] copies the
//!   control audit log into the ledger.
//! - Shared by the jobs and the APIs: [`metrics`] (every metric of the sidecar; it names
//!   the usage events' reject reasons as labels), [`pricing_history`] (the published
//!   pricing versions a usage event is priced by), [`settings`] (where the ledger is) and
//!   [`operations`] (the admin API's operations file).
//! - [`ledger`] (bottom): the durable ledger, on SQLite or Postgres.

pub mod api;
pub mod cli;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod operations;
pub mod pricing_history;
pub mod settings;

use std::io::Write;

use crate::cli::args::{Cli, Command, InspectCommand, LedgerCommand};
use crate::cli::mode_commands::mode_command;
use crate::cli::{commands, inspect, render};

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
            eprintln!("error: {error:#}");
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
        Command::Admin(command) => crate::cli::admin_commands::execute(command).await,
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

/// Sets up logging to stderr: text lines, or JSON with `CREDITGATE_LOG_FORMAT=json`; the
/// level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if std::env::var("CREDITGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
