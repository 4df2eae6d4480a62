//! The top layer: the command line. Parses arguments ([`args`]), runs each command
//! ([`commands`], [`admin_commands`], [`mode_commands`], [`inspect`]) and renders what ops
//! read ([`render`]).
//!
//! Nothing below this layer imports from it: the jobs, the APIs and the ledger take their
//! settings as plain values, never as clap types.

pub mod admin_args;
pub mod admin_commands;
pub mod args;
pub mod commands;
pub mod inspect;
pub mod mode_commands;
pub mod render;
pub mod stores;
