//! The ledger-first grant registry: what a grant record holds and the outcomes of
//! recording one and of delivering it to Redis through the outbox.
//!
//! Pure types and checks; the backends store them. A grant record is immutable once
//! written; only its outbox row (delivery state) changes.

use creditgate_protocol::keys::validate_id;
use creditgate_protocol::types::MAX_TEXT_LEN;
use creditgate_protocol::{GrantRequest, GrantSource, MAX_AMOUNT};

use super::LedgerError;

/// A grant as the registry keeps it: written to the ledger before it is applied to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Unique id, also the Redis grant id (so applying it is idempotent).
    pub grant_id: String,
    /// The customer receiving it.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Credits granted, 1 to 2^53−1, in the credit type's smallest unit.
    pub amount: u64,
    /// Burn priority (lower burns first), 0 to 1,000,000.
    pub priority: u32,
    /// When its unused rest expires, ms since epoch; `None` for never.
    pub expires_at_ms: Option<u64>,
    /// Total money paid, currency micro-units (0 for free credits).
    pub cost_basis: u64,
    /// Where the credits came from.
    pub source: GrantSource,
    /// Who issued it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When it was recorded, ms since epoch (set by the caller; not compared between
    /// retries).
    pub created_at_ms: u64,
}

impl GrantRecord {
    /// The Redis grant call that applies this record.
    pub fn to_request(&self) -> GrantRequest {
        GrantRequest {
            customer: self.customer.clone(),
            grant_id: self.grant_id.clone(),
            credit_type: self.credit_type.clone(),
            amount: self.amount,
            priority: self.priority,
            expires_at_ms: self.expires_at_ms,
            cost_basis: self.cost_basis,
            source: self.source,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
        }
    }

    /// True when `other` is the same grant: every field equal but `created_at_ms`.
    pub fn same_grant(&self, other: &GrantRecord) -> bool {
        GrantRecord {
            created_at_ms: 0,
            ..self.clone()
        } == GrantRecord {
            created_at_ms: 0,
            ..other.clone()
        }
    }

    /// Checks the record against the limits the grant script enforces, so a recorded
    /// grant can always be applied.
    pub fn validate(&self) -> Result<(), LedgerError> {
        self.to_request()
            .validate()
            .map_err(|e| LedgerError::InvalidEntry(e.to_string()))?;
        validate_id("grant_id", &self.grant_id).map_err(LedgerError::InvalidEntry)?;
        if self.created_at_ms > MAX_AMOUNT {
            return Err(LedgerError::InvalidEntry(format!(
                "created_at_ms {} is out of range",
                self.created_at_ms
            )));
        }
        if self.actor.contains('\0')
            || self.reason.contains('\0')
            || self.reason.len() > MAX_TEXT_LEN
        {
            return Err(LedgerError::InvalidEntry(
                "actor and reason must not contain NUL".into(),
            ));
        }
        Ok(())
    }
}

/// The outcome of recording a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordGrantOutcome {
    /// Written now, with its outbox row.
    Recorded,
    /// The same grant was recorded before; nothing changed.
    AlreadyRecorded,
    /// The grant id was recorded before with other fields; nothing changed.
    Conflict {
        /// The record kept under this id.
        existing: Box<GrantRecord>,
    },
}

/// Delivery state of a grant's outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxState {
    /// The grant.
    pub grant_id: String,
    /// When the grant was recorded, ms since epoch.
    pub created_at_ms: u64,
    /// When Redis acknowledged it, ms since epoch; `None` while pending.
    pub applied_at_ms: Option<u64>,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// The last delivery error.
    pub last_error: Option<String>,
}
