//! The creditgate Redis protocol: the canonical Lua scripts, the key schema, the event
//! format, the Rust bindings to Redis and the in-memory reference model.
//!
//! Every credit mutation is one script that checks, mutates and appends its event to the
//! customer's shard stream atomically. [`RedisStore`] runs the scripts; [`MemoryStore`] is
//! the same semantics in process (the reference model and the gateway's embedded store).
//! `PROTOCOL.md` beside this crate documents keys, arguments, replies and event fields.

pub mod control;
pub mod event;
pub mod idempotency;
pub mod invariants;
pub mod keys;
pub mod meter;
pub mod model;
pub mod redact;
pub mod redis_store;
mod replies;
pub mod scripts;
pub mod store;
pub mod streams;
pub mod sweep;
pub mod types;

pub use event::{
    Event, EventBody, Release, RequestContext, hold_event_id, hold_placement_of,
    hold_sibling_event_id,
};
pub use idempotency::{IdempotencyClaim, KeyedReserveOutcome};
pub use invariants::InvariantViolation;
pub use keys::{Keyspace, MAX_AMOUNT, Shard};
pub use model::{MemoryStore, Model};
pub use redact::redact_secrets;
pub use redis_store::{
    LEASE_TRANSFER_BURNS_MAX, LeaseBurn, LeaseTransfer, LeaseTransferOutcome, RedisStore,
    RedisTarget,
};
pub use store::{CreditStore, DueEntry, StoreError, StoreErrorKind};
pub use streams::{ReadFrom, StreamEntry};
pub use sweep::{SweepReport, sweep_once};
pub use types::*;
