//! The top layer: the command line. Parses arguments ([`args`], [`admin_args`],
//! [`dead_letter_args`]), runs each command ([`commands`], [`admin_commands`],
//! [`mode_commands`], [`inspect`], [`dead_letters`]) over the stores it names ([`stores`])
//! and renders what ops read ([`render`]); [`dispatch`] picks the command and [`process`]
//! sets up logging and the shutdown signal.
//!
//! Nothing below this layer imports from it: the jobs, the APIs and the ledger take their
//! settings as plain values or from [`crate::settings`], never from here.

pub mod admin_args;
pub mod admin_commands;
pub mod args;
pub mod commands;
pub mod dead_letter_args;
pub mod dead_letters;
pub mod dispatch;
pub mod inspect;
pub mod mode_commands;
pub mod process;
pub mod render;
pub mod stores;
