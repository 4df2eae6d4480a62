//! The credit store interface: one trait with a Redis implementation and the in-memory
//! reference model, so the gateway and the sidecar never care which one runs.

use std::fmt;

use async_trait::async_trait;

use crate::idempotency::{IdempotencyClaim, KeyedReserveOutcome};
use crate::invariants::InvariantViolation;
use crate::keys::Shard;
use crate::types::{
    Balance, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome, GrantRef,
    GrantRequest, HoldRecord, HoldRef, InvalidArgument, ReserveOutcome, ReserveRequest,
    ResolveOutcome, SettleRequest,
};

/// Why a store call failed. Outcomes such as "insufficient" are not errors; these are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An argument broke a protocol limit; nothing was sent.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// The call did not answer within its timeout. It may still have run: retry with the
    /// same ids, which is safe because every mutation is idempotent.
    #[error("store call {op} timed out after {timeout_ms} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout that passed.
        timeout_ms: u64,
    },
    /// The store could not be reached (refused, dropped, cluster down).
    #[error("store unavailable during {op}: {message}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// What the client said.
        message: String,
    },
    /// The store answered with an error or a reply this client does not understand.
    #[error("store error during {op}: {message}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The store's answer broke a money invariant (posted + shortfall = requested, an
    /// amount beyond `MAX_AMOUNT`, …): a bug in the store or this client, or data changed
    /// by hand. Never retried, and the numbers are never used.
    #[error("money invariant broken during {op}: {violation}")]
    Invariant {
        /// The operation.
        op: &'static str,
        /// Which field broke what, with the values.
        violation: InvariantViolation,
    },
}

/// The kind of a store error, for metrics labels and failure policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// Bad argument.
    InvalidArgument,
    /// Timed out.
    Timeout,
    /// Unreachable.
    Unavailable,
    /// Error reply or unexpected reply.
    Protocol,
    /// An answer that broke a money invariant.
    Invariant,
}

impl StoreErrorKind {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Protocol => "protocol",
            Self::Invariant => "invariant",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreError {
    /// The error's kind.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::InvalidArgument(_) => StoreErrorKind::InvalidArgument,
            Self::Timeout { .. } => StoreErrorKind::Timeout,
            Self::Unavailable { .. } => StoreErrorKind::Unavailable,
            Self::Protocol { .. } => StoreErrorKind::Protocol,
            Self::Invariant { .. } => StoreErrorKind::Invariant,
        }
    }

    /// Whether retrying the same call (same ids) may succeed. A broken invariant is not:
    /// the store would give the same answer again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unavailable { .. })
    }

    /// A broken money invariant found in the answer to `op`.
    pub fn invariant(op: &'static str, violation: InvariantViolation) -> Self {
        Self::Invariant { op, violation }
    }
}

/// Where a due hold or grant lives, as listed by the shard indexes for the sweeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueEntry {
    /// The customer.
    pub customer: String,
    /// The hold or grant id.
    pub id: String,
    /// Its deadline or expiry, ms since epoch.
    pub due_ms: u64,
}

/// The protocol's operations. Every mutation is one atomic step that also appends its
/// event to the customer's shard stream.
#[async_trait]
pub trait CreditStore: Send + Sync {
    /// Adds a grant; idempotent by grant id.
    async fn grant(&self, req: &GrantRequest) -> Result<GrantOutcome, StoreError>;
    /// Places a hold; idempotent by hold id.
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError>;
    /// Places a hold for a request that carries an idempotency key: the key's record binds
    /// it to one request and counts uncharged replays, atomically with the hold.
    async fn reserve_keyed(
        &self,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
    ) -> Result<KeyedReserveOutcome, StoreError>;
    /// Posts a hold's actual cost and returns the rest; exactly once.
    async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError>;
    /// Cancels a pending hold.
    async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError>;
    /// Moves a pending hold's deadline to at least store time + `ttl_ms`, so a request
    /// still in flight keeps its hold; changes no credits.
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, StoreError>;
    /// Expires a pending hold past its deadline.
    async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError>;
    /// Expires the unused rest of a grant past its expiry.
    async fn expire_grant(&self, grant: &GrantRef) -> Result<GrantExpiryOutcome, StoreError>;
    /// A customer's balance per credit type and per grant.
    async fn balance(&self, customer: &str) -> Result<Balance, StoreError>;
    /// A hold's record, while it is pending or within its retention.
    async fn hold(&self, hold: &HoldRef) -> Result<Option<HoldRecord>, StoreError>;
    /// Pending holds of a shard whose deadline is at or before `now_ms`, oldest first, at
    /// most `limit`.
    async fn due_holds(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError>;
    /// Grants of a shard whose expiry is at or before `now_ms`, oldest first, at most
    /// `limit`.
    async fn due_grants(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError>;
}
