//! The middle layer's background work of `run`: the ledger writer, the sweeper and the
//! task loop ([`daemon`]), the grant outbox, the reconciler, the config publisher, the
//! audit mirror, the fleet metrics, burning usage events, and replaying or discarding dead
//! letters. Each job works in bounded batches at its own pace.
//!
//! Jobs depend on the ledger and the credit store, never on the command line or on the
//! HTTP surfaces.

pub mod audit_mirror;
pub mod config_publisher;
pub mod daemon;
pub mod dead_letters;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod fleet_metrics;
pub mod outbox;
pub mod rebuilds;
pub mod reconcile;
pub mod usage_burns;
pub mod writer;
