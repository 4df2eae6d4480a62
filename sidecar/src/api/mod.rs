//! The middle layer's HTTP surfaces: the read listener ([`read_listener`]) with its
//! token check ([`read_access`], [`customer_session`]) and the customer page
//! ([`customer_page`]), and the admin API ([`admin`]) with its fleet control routes
//! ([`control`]) and usage events ([`usage_events`]) behind bearer tokens, and the support
//! console ([`console`]) beside it, whose changes are calls to the admin API.
//!
//! Handlers call into the jobs and the ledger; nothing here imports from the command line.

pub mod admin;
pub mod console;
pub mod control;
pub mod customer_page;
pub mod customer_session;
pub mod read_access;
pub mod read_listener;
pub mod usage_events;
