//! The middle layer's HTTP surfaces: the unauthenticated read listener
//! ([`read_listener`]), and the admin API ([`admin`]) with its fleet control routes
//! ([`control`]) and usage events ([`usage_events`]) behind bearer tokens.
//!
//! Handlers call into the jobs and the ledger; nothing here imports from the command line.

pub mod admin;
pub mod control;
pub mod read_listener;
pub mod usage_events;
