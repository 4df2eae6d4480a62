//! The gateway's command line: the subcommands and their options, parsed with clap.
//!
//! This module only describes the command line; it must not load files or start services.
//! The proxy itself will become the default `run` subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Validates a pricing config file and reports every problem at once.
    ///
    /// Prints `ok: FILE: <summary>` and exits 0 for a good file; prints every error as
    /// `file:line: field: message`, then `N error(s) in FILE`, and exits 1 for a bad or
    /// unreadable one. Meant for CI and for ops before a rollout.
    CheckConfig {
        /// The pricing config file (TOML) to check.
        file: PathBuf,
    },
}
