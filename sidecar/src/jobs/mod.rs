//! The middle layer's background work of `run`: the ledger writer, the sweeper and the
//! task loop ([`daemon`]), the grant outbox, the reconciler, the config publisher, the
//! audit mirror and the fleet metrics. Each job works in bounded batches at its own pace.
//!
//! Jobs depend on the ledger and the credit store, never on the command line or on the
//! HTTP surfaces.

pub mod audit_mirror;
pub mod config_publisher;
pub mod daemon;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod fleet_metrics;
pub mod outbox;
pub mod reconcile;
pub mod writer;
