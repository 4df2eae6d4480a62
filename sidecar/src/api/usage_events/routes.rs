//! `POST /v1/usage-events`: burns a batch of usage events through the reserve and settle
//! scripts and answers one result per event. A bad event is rejected on its own (its result
//! names the field); the rest of the batch still burns.
//!
//! Served on the admin listener only, to tokens of role `billing` or `admin` (see
//! [`crate::api::admin::ROUTES`]):
//!
//! ```text
//! curl -s localhost:9192/v1/usage-events -H "authorization: Bearer $TOKEN" \
//!   -H 'content-type: application/json' -d '{"events":[
//!   {"customer":"acme","feature":"export","quantity":3,"occurred_at_ms":1764000000000,
//!    "idempotency_key":"export-81","metadata":{"job":"nightly"}}]}'
//! ```

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditgate_protocol::{
    CreditStore, HoldState, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::{
    DEFAULT_LATE_WINDOW_MS, MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES, Priced, RejectReason,
    Rejection, UsageEvent, parse_event, price,
};
use crate::jobs::daemon::Sidecar;
use crate::ledger::{UsageEventRecord, now_ms};

/// The route name recorded on the holds of usage events (where gateway holds have theirs).
pub const USAGE_EVENTS_ROUTE: &str = "usage-events";

/// Lifetime of a usage event's hold between its reserve and settle, in milliseconds: the
/// two calls follow each other at once; should the sidecar die between them, the hold
/// expires soon and a retry of the event finds it gone and burns it anew.
const USAGE_HOLD_TTL_MS: u64 = 60_000;

/// How long the hold record stays after it is settled, in milliseconds: the late window
/// plus a day, so a duplicate is recognised for as long as its event time is accepted.
const USAGE_RETAIN_MS: u64 = DEFAULT_LATE_WINDOW_MS + 86_400_000;

fn bad_request(field: &str, message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "field": field, "message": message})),
    )
        .into_response()
}

/// The hold id of an event: derived from the customer and idempotency key, so a duplicate
/// finds the first one's hold.
fn hold_id(customer: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(customer.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    format!("ue-{}", &hex::encode(digest)[..40])
}

/// `POST /v1/usage-events`: prices and burns each event of the batch in `body`.
pub async fn ingest(s: &Sidecar, body: &Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return bad_request(
            "events",
            format!("the body is larger than {MAX_REQUEST_BYTES} bytes; send smaller batches"),
        );
    }
    let Some(pricing) = &s.pricing else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "pricing_unavailable",
                "message": "the sidecar runs without a pricing config (run --config FILE) and cannot price usage events"})),
        )
            .into_response();
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request("events", format!("the body is not JSON: {e}")),
    };
    let Some(events) = value.get("events").and_then(Value::as_array) else {
        return bad_request(
            "events",
            "the body must be a JSON object with an `events` array".into(),
        );
    };
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return bad_request(
            "events",
            format!(
                "{} events, more than {MAX_EVENTS_PER_REQUEST} per request",
                events.len()
            ),
        );
    }
    // Versions published since the last request (one query, usually empty). With the
    // ledger down, the versions already known still price.
    if let Err(e) = s.pricing_history.refresh(s.ledger.as_ref()).await {
        warn!(error = %e, "reading the recorded pricing versions failed; pricing with the ones known");
    }
    let current = pricing.load_full();
    let now = now_ms();
    let mut results = Vec::with_capacity(events.len());
    let mut counts = [0u64; 3];
    for (index, raw) in events.iter().enumerate() {
        let key = raw.get("idempotency_key").cloned().unwrap_or(Value::Null);
        let outcome = match parse_event(index, raw, now, DEFAULT_LATE_WINDOW_MS) {
            Ok(event) => {
                // The version in force when the usage happened; the one in force now when
                // no version was recorded yet (the first publication has not happened).
                let config = s
                    .pricing_history
                    .at(event.occurred_at_ms)
                    .unwrap_or_else(|| current.clone());
                match price(&config, index, &event) {
                    Ok(priced) => burn(s, index, &event, &priced).await,
                    Err(rejection) => Err(rejection),
                }
            }
            Err(rejection) => Err(rejection),
        };
        let result = match outcome {
            Ok(mut result) => {
                if result["status"] == "burned" {
                    counts[0] += 1;
                    s.metrics.usage_events_accepted.inc();
                    if result["overdraft"] == true {
                        s.metrics.usage_events_overdraft.inc();
                    }
                } else {
                    counts[1] += 1;
                    s.metrics.usage_events_duplicates.inc();
                }
                result["index"] = json!(index);
                result["idempotency_key"] = key;
                result
            }
            Err(Rejection {
                field,
                message,
                reason,
            }) => {
                counts[2] += 1;
                s.metrics
                    .usage_events_rejected
                    .with_label_values(&[reason.as_str()])
                    .inc();
                json!({"index": index, "idempotency_key": key, "status": "rejected",
                    "error": {"field": field, "message": message}})
            }
        };
        results.push(result);
    }
    Json(json!({
        // The version in force now; each result names the one that priced it.
        "pricing_version": current.version_label(),
        "burned": counts[0],
        "duplicates": counts[1],
        "rejected": counts[2],
        "results": results,
    }))
    .into_response()
}

/// Burns one priced event: reserve (forced, so an empty balance goes into overdraft rather
/// than dropping usage that already happened), then settle the same amount.
async fn burn(
    s: &Sidecar,
    index: usize,
    event: &UsageEvent,
    priced: &Priced,
) -> Result<Value, Rejection> {
    let version = priced.pricing_version.as_str();
    let field = || format!("events[{index}].idempotency_key");
    let hold_id = hold_id(&event.customer, &event.idempotency_key);
    // Ledger first, as for grants: once recorded, a crash before the burn loses nothing
    // (the product's retry finds the record and burns once).
    let record = UsageEventRecord {
        customer: event.customer.clone(),
        idempotency_key: event.idempotency_key.clone(),
        feature: event.feature.clone(),
        quantity: event.quantity,
        occurred_at_ms: event.occurred_at_ms,
        received_at_ms: now_ms(),
        credit_type: priced.credit_type.clone(),
        amount: priced.amount,
        hold_id: hold_id.clone(),
        pricing_version: version.to_string(),
        metadata: event
            .metadata
            .as_ref()
            .map(|m| Value::Object(m.clone()).to_string()),
    };
    if let Err(e) = s.ledger.record_usage_event(&record).await {
        warn!(customer = %event.customer, key = %event.idempotency_key, error = %e, "usage event not recorded");
        return Err(Rejection {
            field: field(),
            message: format!("the ledger failed ({e}); retry the event, it burns once"),
            reason: RejectReason::Unavailable,
        });
    }
    let store_error = |e: &dyn std::fmt::Display| {
        warn!(customer = %event.customer, key = %event.idempotency_key, error = %e, "usage event not burned");
        Rejection {
            field: field(),
            message: format!("the credit store failed ({e}); retry the event, it burns once"),
            reason: RejectReason::Unavailable,
        }
    };
    let reserve = ReserveRequest {
        customer: event.customer.clone(),
        hold_id: hold_id.clone(),
        credit_type: priced.credit_type.clone(),
        amount: priced.amount,
        ttl_ms: USAGE_HOLD_TTL_MS,
        overdraft_limit: priced.overdraft,
        force: true,
        request_id: format!("usage-event:{}", event.idempotency_key),
        route: USAGE_EVENTS_ROUTE.into(),
        feature: event.feature.clone(),
        retain_ms: USAGE_RETAIN_MS,
        pricing_version: version.to_string(),
        occurred_at_ms: Some(event.occurred_at_ms),
    };
    let over_limit = match s.redis.reserve(&reserve).await {
        Ok(ReserveOutcome::Placed { hold, .. }) => hold.over_limit,
        Ok(ReserveOutcome::Replay { state, .. }) if state != HoldState::Pending => {
            return Ok(
                json!({"status": "duplicate", "hold_id": hold_id, "first_state": state.as_str()}),
            );
        }
        // A first attempt reserved but never settled (the sidecar stopped between the
        // two calls): finish it now.
        Ok(ReserveOutcome::Replay { hold, .. }) => hold.over_limit,
        Ok(ReserveOutcome::Conflict {
            first_credit_type,
            first_amount,
            ..
        }) => {
            return Err(Rejection {
                field: field(),
                message: format!(
                    "already used for another event of this customer ({first_amount} \
                     {first_credit_type}); idempotency keys must be unique per event"
                ),
                reason: RejectReason::KeyReused,
            });
        }
        Ok(ReserveOutcome::Insufficient { available, .. }) => {
            return Err(store_error(&format!(
                "a forced reserve was refused (available {available})"
            )));
        }
        Err(e) => return Err(store_error(&e)),
    };
    let settle = SettleRequest {
        customer: event.customer.clone(),
        hold_id: hold_id.clone(),
        actual: priced.amount,
        overdraft_limit: priced.overdraft,
    };
    match s.redis.settle(&settle).await {
        Ok(ResolveOutcome::Posted {
            posted,
            shortfall,
            available_after,
            ..
        }) => Ok(json!({
            "status": "burned",
            "hold_id": hold_id,
            "credit_type": priced.credit_type,
            "amount": posted,
            "shortfall": shortfall,
            "available_after": available_after,
            "overdraft": over_limit || available_after < 0,
            "pricing_version": version,
        })),
        Ok(ResolveOutcome::AlreadyPosted { .. }) => {
            Ok(json!({"status": "duplicate", "hold_id": hold_id, "first_state": "posted"}))
        }
        Ok(other) => Err(store_error(&format!("settle answered {other:?}"))),
        Err(e) => Err(store_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_ids_are_per_customer_and_valid() {
        let a = hold_id("acme", "job-1");
        assert_eq!(a, hold_id("acme", "job-1"));
        assert_ne!(a, hold_id("globex", "job-1"));
        assert!(creditgate_protocol::keys::validate_id("hold_id", &a).is_ok());
    }
}
