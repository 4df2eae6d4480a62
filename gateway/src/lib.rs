//! The creditgate gateway: identifies the customer, prices the route, reserves and settles
//! credits at the API edge.
//!
//! `run` starts the Pingora proxy and the admin listener ([`server`]); `check-config` is the
//! config checker CI and ops run before a rollout. The binary in `main.rs` only parses the
//! command line ([`cli`]) and calls [`run`].
//!
//! A request's way through the modules:
//!
//! - [`proxy`]: the one Pingora `ProxyHttp` implementation, one callback per phase, each
//!   calling into the modules below.
//! - [`gate`]: the service's shared state ([`gate::CreditGate`]) and per-request state
//!   ([`gate::RequestCtx`]); sequences admission and the hold's life.
//! - [`admission`]: route, mode ([`control`]), identity ([`identity`]), price
//!   ([`admission::price_request`]) and the reserve plan ([`admission::plan_reserve`]), as
//!   pure decisions without I/O.
//! - [`hold`]: the hold's life: [`hold::Holds::reserve_for_request`] places it (the
//!   idempotent reserve loop), [`hold::Holds::settle_or_void`] ends it in the background.
//! - [`request_body`] reads a bounded body for routes that estimate from it; [`usage`]
//!   reads the actual cost of routes priced from the response.
//! - [`responses`]: the gateway's own answers (4xx, 500, 503) and the charge headers.
//! - [`store_client`]: every store call, under the [`breaker`], a timeout and metrics, on
//!   Redis ([`store_connect`]; a connection per worker thread, [`store_thread`]) or the
//!   embedded in-memory store.
//! - [`fleet`] keeps the pricing config and the control state current; [`admin`] serves
//!   `/metrics` ([`metrics`]) and health; [`in_flight`] lets a graceful shutdown wait for
//!   the last settle; [`demo`] is the quickstart's stand-in upstream.

pub mod admin;
pub mod admission;
pub mod breaker;
pub mod cli;
pub mod control;
pub mod demo;
pub mod export_pricing;
pub mod fleet;
pub mod gate;
pub mod hold;
pub mod idempotency;
pub mod identity;
pub mod in_flight;
pub mod lease;
pub mod metrics;
pub mod proxy;
pub mod request_body;
pub mod responses;
pub mod server;
pub mod store_client;
pub mod store_connect;
pub mod store_thread;
pub mod usage;

use std::io::{self, Write};
use std::path::Path;

use creditgate_config::PricingConfig;

use crate::cli::{Cli, Command};

/// Process exit status of a successful command.
pub const EXIT_OK: u8 = 0;

/// Process exit status when the command failed: an invalid or unreadable config file, or
/// output that could not be written.
pub const EXIT_FAILURE: u8 = 1;

/// Runs the parsed command line against the process's stdout and stderr and returns the
/// process exit status.
pub fn run(cli: Cli) -> u8 {
    let Cli { command } = cli;
    match command {
        Command::Run(args) => match server::run(args) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                // A connection error may quote a URL; its password never reaches stderr.
                eprintln!(
                    "error: {}",
                    creditgate_protocol::redact_secrets(&format!("{e:#}"))
                );
                EXIT_FAILURE
            }
        },
        Command::CheckConfig { file } => {
            let stdout = io::stdout();
            let stderr = io::stderr();
            check_config(&file, &mut stdout.lock(), &mut stderr.lock()).unwrap_or(EXIT_FAILURE)
        }
        Command::ExportPricing {
            file,
            output,
            version,
        } => export_pricing_command(&file, output.as_deref(), version),
    }
}

/// `export-pricing`: the JSON of [`export_pricing::pricing_export`] to `output` or stdout;
/// a bad config's errors go to stderr as `check-config` prints them.
fn export_pricing_command(file: &Path, output: Option<&Path>, version: u64) -> u8 {
    let config = match PricingConfig::load(file) {
        Ok(config) => config.with_version(version),
        Err(errors) => {
            let count = errors.len();
            for error in errors {
                eprintln!("{error}");
            }
            eprintln!("{count} error(s) in {}", file.display());
            return EXIT_FAILURE;
        }
    };
    let text = export_pricing::pricing_export(&config).to_string();
    let written = match output {
        Some(path) => std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => writeln!(io::stdout(), "{text}").map_err(|e| format!("cannot write stdout: {e}")),
    };
    match written {
        Ok(()) => EXIT_OK,
        Err(message) => {
            eprintln!("error: {message}");
            EXIT_FAILURE
        }
    }
}

/// Loads and validates the pricing config at `file`.
///
/// A good file prints `ok: FILE: <summary>` to `out` and returns [`EXIT_OK`]. A bad or
/// unreadable file prints every error on its own line (`file:line: field: message`) to
/// `err`, followed by `N error(s) in FILE`, and returns [`EXIT_FAILURE`]. An `Err` means
/// the report itself could not be written.
pub fn check_config(file: &Path, out: &mut impl Write, err: &mut impl Write) -> io::Result<u8> {
    match PricingConfig::load(file) {
        Ok(config) => {
            writeln!(out, "ok: {}: {}", file.display(), config.summary())?;
            Ok(EXIT_OK)
        }
        Err(errors) => {
            let count = errors.len();
            for error in errors {
                writeln!(err, "{error}")?;
            }
            writeln!(err, "{count} error(s) in {}", file.display())?;
            Ok(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file: &Path) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = check_config(file, &mut out, &mut err).expect("writing to a Vec");
        (
            status,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn a_good_file_prints_its_summary() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/quickstart.toml");
        let expected = PricingConfig::load(&file).expect("valid").summary();
        let (status, out, err) = check(&file);
        assert_eq!(status, EXIT_OK, "stderr: {err}");
        assert_eq!(out, format!("ok: {}: {expected}\n", file.display()));
        assert_eq!(err, "");
    }

    #[test]
    fn an_unreadable_file_is_one_error() {
        let file = Path::new("/nonexistent/creditgate/pricing.toml");
        let (status, out, err) = check(file);
        assert_eq!(status, EXIT_FAILURE);
        assert_eq!(out, "");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with("/nonexistent/creditgate/pricing.toml: cannot read the file: "),
            "{err}"
        );
        assert_eq!(
            lines[1],
            "1 error(s) in /nonexistent/creditgate/pricing.toml"
        );
    }
}
