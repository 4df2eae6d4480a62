//! Burning a recorded usage event: the hold that posts it through the protocol's forced
//! reserve-then-settle. Shared by `POST /v1/usage-events`, which burns an event as it
//! arrives, and the data-loss rebuild, which burns again the recorded events whose burn
//! Redis lost before the ledger recorded it; both derive the same hold, so an event burns
//! once whichever gets there first.

use creditgate_protocol::ReserveRequest;

use crate::ledger::UsageEventRecord;

/// The route name recorded on the holds of usage events (where gateway holds have theirs).
pub const USAGE_EVENTS_ROUTE: &str = "usage-events";

/// Lifetime of a usage event's hold between its reserve and settle, in milliseconds: the
/// two calls follow each other at once; should the sidecar die between them, the hold
/// expires soon and a retry of the event finds it gone and burns it anew.
pub const USAGE_HOLD_TTL_MS: u64 = 60_000;

/// How long the hold record stays after it is settled, in milliseconds: 8 days, the late
/// window for usage events (7 days) plus a day, so a duplicate is recognised for as long
/// as its event time is accepted.
pub const USAGE_RETAIN_MS: u64 = 8 * 86_400_000;

/// The request id the holds of usage events carry, and their ledger entries with them:
/// `usage-event:<idempotency key>`.
pub fn usage_request_id(idempotency_key: &str) -> String {
    format!("usage-event:{idempotency_key}")
}

/// The hold that burns `record` (forced, so it never fails for lack of credits; an empty
/// balance goes into overdraft, past `overdraft_limit` if need be, rather than dropping
/// usage that already happened). Posted at the event's time.
pub fn burn_request(record: &UsageEventRecord, overdraft_limit: u64) -> ReserveRequest {
    ReserveRequest {
        customer: record.customer.clone(),
        hold_id: record.hold_id.clone(),
        credit_type: record.credit_type.clone(),
        amount: record.amount,
        ttl_ms: USAGE_HOLD_TTL_MS,
        overdraft_limit,
        force: true,
        request_id: usage_request_id(&record.idempotency_key),
        route: USAGE_EVENTS_ROUTE.into(),
        feature: record.feature.clone(),
        retain_ms: USAGE_RETAIN_MS,
        pricing_version: record.pricing_version.clone(),
        occurred_at_ms: Some(record.occurred_at_ms),
    }
}
