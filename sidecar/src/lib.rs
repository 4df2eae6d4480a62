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
//!   names. [`cli::dispatch`] runs a parsed command line; `main.rs` only parses it.
//! - [`api`]: the HTTP surfaces of `run`. [`api::read_listener`] serves metrics, health
//!   and read-only ledger queries; with `--admin-listen`, [`api::admin`] serves credit
//!   operations (configured by the [`operations`] file), the fleet control routes of
//!   [`api::control`] and the [`api::usage_events`] route, all behind bearer tokens.
//! - [`jobs`]: the background work of `run`. [`jobs::daemon`] drives the ledger
//!   [`jobs::writer`], the sweeper, the grant [`jobs::outbox`], the generation check and
//!   the reconciler ([`jobs::reconcile`]); [`jobs::config_publisher`] publishes pricing
//!   configs and keeps the [`jobs::fleet_metrics`]; [`jobs::audit_mirror`] copies the
//!   control audit log into the ledger.
//! - Shared by the jobs and the APIs: [`metrics`] (every metric of the sidecar and
//!   their label sets), [`pricing_history`] (the published
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
