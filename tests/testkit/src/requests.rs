//! Builders of the protocol's grant and reserve requests with the defaults the tests share
//! (priority 100, no overdraft, the protocol's retention), so a test names only what it
//! varies.
//!
//! Pure data: nothing here talks to a store.

use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{GrantRequest, GrantSource, ReserveRequest};

/// A grant of `amount` credits of `credit_type` to `customer` under `grant_id`: a purchase
/// when it has a `cost_basis` (money, micros), a promotion otherwise.
pub fn grant_request(
    customer: &str,
    grant_id: &str,
    credit_type: &str,
    amount: u64,
    expires_at_ms: Option<u64>,
    cost_basis: u64,
) -> GrantRequest {
    GrantRequest {
        customer: customer.to_string(),
        grant_id: grant_id.to_string(),
        credit_type: credit_type.to_string(),
        amount,
        priority: 100,
        expires_at_ms,
        cost_basis,
        source: if cost_basis > 0 {
            GrantSource::Purchase
        } else {
            GrantSource::Promotion
        },
        actor: "sidecar-e2e".to_string(),
        reason: "test traffic".to_string(),
    }
}

/// A reserve of `amount` credits of `credit_type` for `customer` under `hold_id`, held for
/// `ttl_ms`, without overdraft, on the route and feature `generated`.
pub fn reserve_request(
    customer: &str,
    hold_id: &str,
    credit_type: &str,
    amount: u64,
    ttl_ms: u64,
) -> ReserveRequest {
    ReserveRequest {
        customer: customer.to_string(),
        hold_id: hold_id.to_string(),
        credit_type: credit_type.to_string(),
        amount,
        ttl_ms,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "generated".to_string(),
        feature: "generated".to_string(),
        retain_ms: DEFAULT_RETAIN_MS,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}
