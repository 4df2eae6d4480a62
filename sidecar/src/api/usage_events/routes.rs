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

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditgate_config::PricingConfig;
use creditgate_protocol::meter::{
    MeterError, MeterOutcome, USAGE_EVENT_PREFIX, force_reserve_then_settle, idempotent_hold_id,
};

use creditgate_protocol::{CreditStore, Event, EventBody, HoldState};
use serde_json::{Value, json};
use tracing::warn;

use super::{
    DEFAULT_LATE_WINDOW_MS, MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES, Priced, RejectReason,
    Rejection, UsageEvent, parse_event, price,
};
use crate::jobs::daemon::Sidecar;
use crate::jobs::usage_burns::{burn_request, usage_request_id};
use crate::ledger::{EntryKind, EntryQuery, Ledger, LedgerError, UsageEventRecord, now_ms};
use crate::metrics::SidecarMetrics;

/// The route name recorded on the holds of usage events (where gateway holds have theirs).
pub use crate::jobs::usage_burns::USAGE_EVENTS_ROUTE;

/// How long one request waits in all for the ledger writer to record burns that retries
/// find posted in the store but not yet in the ledger, before answering them "retry": the
/// writer's lag on a healthy system is tens of milliseconds; the bound keeps a batch of
/// retries from waiting on a stopped writer event by event.
const LEDGER_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// How often a retry looks at the ledger while it waits for the writer.
const LEDGER_CATCH_UP_POLL: Duration = Duration::from_millis(20);

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
    idempotent_hold_id(USAGE_EVENT_PREFIX, customer, key)
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
    let events = match read_batch(body) {
        Ok(events) => events,
        Err(message) => return bad_request("events", message),
    };
    // Versions published since the last request (one query, usually empty). With the
    // ledger down, the versions already known still price.
    if let Err(e) = s.pricing_history.refresh(s.ledger.as_ref()).await {
        warn!(error = %e, "reading the recorded pricing versions failed; pricing with the ones known");
    }
    let current = pricing.load_full();
    let now = now_ms();
    let catch_up_by = Instant::now() + LEDGER_CATCH_UP_WAIT;
    let mut results = Vec::with_capacity(events.len());
    let mut tally = BatchTally::default();
    for (index, raw) in events.iter().enumerate() {
        let key = raw.get("idempotency_key").cloned().unwrap_or(Value::Null);
        let outcome = meter_event(s, &current, (index, raw), now, catch_up_by).await;
        results.push(tally.result(&s.metrics, index, key, outcome));
    }
    Json(json!({
        // The version in force now; each result names the one that priced it.
        "pricing_version": current.version_label(),
        "burned": tally.burned,
        "duplicates": tally.duplicates,
        "rejected": tally.rejected,
        "results": results,
    }))
    .into_response()
}

/// The `events` array of a request body, or what is wrong with the body (a 400 naming
/// the `events` field).
fn read_batch(body: &Bytes) -> Result<Vec<Value>, String> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(Value::Array(events)) = value.get_mut("events").map(Value::take) else {
        return Err("the body must be a JSON object with an `events` array".into());
    };
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(format!(
            "{} events, more than {MAX_EVENTS_PER_REQUEST} per request",
            events.len()
        ));
    }
    Ok(events)
}

/// Reads, prices and burns event `index` of a batch received at `now`, waiting for the
/// ledger writer until `catch_up_by` at most.
async fn meter_event(
    s: &Sidecar,
    current: &std::sync::Arc<PricingConfig>,
    (index, raw): (usize, &Value),
    now: u64,
    catch_up_by: Instant,
) -> Result<Value, Rejection> {
    let event = parse_event(index, raw, now, DEFAULT_LATE_WINDOW_MS)?;
    // The version in force when the usage happened; the one in force now when no version
    // was recorded yet (the first publication has not happened).
    let config = s
        .pricing_history
        .at(event.occurred_at_ms)
        .unwrap_or_else(|| current.clone());
    let priced = price(&config, index, &event)?;
    let ledger = s.ledger.as_ref();
    burn(
        ledger,
        s.redis.as_ref(),
        index,
        &event,
        &priced,
        catch_up_by,
    )
    .await
}

/// The counts of a batch's answer.
#[derive(Default)]
struct BatchTally {
    burned: u64,
    duplicates: u64,
    rejected: u64,
}

impl BatchTally {
    /// Counts one event's outcome (and its metrics) and returns its entry of `results`.
    fn result(
        &mut self,
        metrics: &SidecarMetrics,
        index: usize,
        key: Value,
        outcome: Result<Value, Rejection>,
    ) -> Value {
        match outcome {
            Ok(mut result) => {
                if result["status"] == "burned" {
                    self.burned += 1;
                    metrics.usage_events_accepted.inc();
                    if result["overdraft"] == true {
                        metrics.usage_events_overdraft.inc();
                    }
                } else {
                    self.duplicates += 1;
                    metrics.usage_events_duplicates.inc();
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
                self.rejected += 1;
                metrics
                    .usage_events_rejected
                    .with_label_values(&[reason.as_str()])
                    .inc();
                json!({"index": index, "idempotency_key": key, "status": "rejected",
                    "error": {"field": field, "message": message}})
            }
        }
    }
}

/// Burns one priced event: recorded in the ledger first, then posted once in the store by
/// the protocol's forced reserve-then-settle (an empty balance goes into overdraft rather
/// than dropping usage that already happened).
///
/// `duplicate` is answered only once the burn is in the ledger: its `hold_posted` entry is
/// recorded (the event's row alone, or the store's posted state alone, is not enough: a
/// Redis that rolls back before the writer recorded the burn would lose it while the
/// product stopped retrying). A retry that finds the burn posted in the store but not yet
/// recorded waits for the writer until `catch_up_by` (its lag is usually under 100 ms);
/// still missing then, it is an error the product retries.
async fn burn(
    ledger: &dyn Ledger,
    store: &dyn CreditStore,
    index: usize,
    event: &UsageEvent,
    priced: &Priced,
    catch_up_by: Instant,
) -> Result<Value, Rejection> {
    let field = || format!("events[{index}].idempotency_key");
    let hold_id = hold_id(&event.customer, &event.idempotency_key);
    let ledger_failed = |e: LedgerError| {
        warn!(customer = %event.customer, key = %event.idempotency_key, error = %e, "usage event not recorded");
        Rejection {
            field: field(),
            message: format!("the ledger failed ({e}); retry the event, it burns once"),
            reason: RejectReason::Unavailable,
        }
    };
    // Ledger first, as for grants: once recorded, a crash before the burn loses nothing
    // (the product's retry finds the record and burns once; a rebuild after Redis lost
    // the burn burns it again, see `reconcile::reburn_lost_usage_events`).
    let record = usage_record(event, priced, &hold_id);
    let first_report = ledger
        .record_usage_event(&record)
        .await
        .map_err(ledger_failed)?;
    // A retry (the row was recorded before) whose burn the ledger already has is a
    // duplicate without asking the store, whatever the store remembers of the hold.
    if !first_report
        && let Some(burned) = recorded_burn(ledger, event).await.map_err(ledger_failed)?
    {
        return answer_recorded(field(), &hold_id, priced, burned);
    }
    let reserve = burn_request(&record, priced.overdraft);
    match force_reserve_then_settle(store, &reserve).await {
        Ok(MeterOutcome::Posted {
            posted,
            shortfall,
            available_after,
            overdraft,
        }) => Ok(json!({
            "status": "burned",
            "hold_id": hold_id,
            "credit_type": priced.credit_type,
            "amount": posted,
            "shortfall": shortfall,
            "available_after": available_after,
            "overdraft": overdraft,
            "pricing_version": priced.pricing_version,
        })),
        Ok(MeterOutcome::Duplicate {
            first_state: HoldState::Posted,
        }) => {
            if let Some(burned) = burn_recorded_by(ledger, event, catch_up_by)
                .await
                .map_err(ledger_failed)?
            {
                return answer_recorded(field(), &hold_id, priced, burned);
            }
            Err(Rejection {
                field: field(),
                message: "burned in the credit store, not yet recorded in the ledger; retry \
                          the event: it burns once, and is answered duplicate once the \
                          ledger has its burn"
                    .into(),
                reason: RejectReason::Unavailable,
            })
        }
        // Voided by an operator: nothing was burned under this key, and nothing is.
        Ok(MeterOutcome::Duplicate { first_state }) => {
            Ok(duplicate(&hold_id, first_state.as_str()))
        }
        Ok(MeterOutcome::IdReused {
            first_credit_type,
            first_amount,
        }) => Err(key_reused(field(), &first_credit_type, first_amount)),
        Err(e) => Err(store_failed(field(), event, &e)),
    }
}

/// The burn of `event` the ledger has recorded, as (credit type, amount asked for): a
/// `hold_posted` entry of its customer under the event's request id
/// (`usage-event:<idempotency key>`). The request id, not the event id, is matched, so a
/// hold placed again under the same id is found too.
async fn recorded_burn(
    ledger: &dyn Ledger,
    event: &UsageEvent,
) -> Result<Option<(String, u64)>, LedgerError> {
    let posted = ledger
        .entries(&EntryQuery {
            customer: Some(event.customer.clone()),
            request_id: Some(usage_request_id(&event.idempotency_key)),
            kinds: vec![EntryKind::HoldPosted],
            limit: Some(1),
            ..EntryQuery::default()
        })
        .await?;
    let Some(entry) = posted.into_iter().next() else {
        return Ok(None);
    };
    let requested = match entry.event().transpose()? {
        Some(Event {
            body: EventBody::HoldPosted { requested, .. },
            ..
        }) => requested,
        _ => entry.entry.amount.unsigned_abs(),
    };
    Ok(Some((entry.entry.credit_type, requested)))
}

/// The answer for an event whose burn the ledger has: a duplicate when it burned the same
/// credit type and amount, else a reused key.
fn answer_recorded(
    field: String,
    hold_id: &str,
    priced: &Priced,
    (credit_type, amount): (String, u64),
) -> Result<Value, Rejection> {
    if credit_type == priced.credit_type && amount == priced.amount {
        return Ok(duplicate(hold_id, "posted"));
    }
    Err(key_reused(field, &credit_type, amount))
}

/// The rejection of an idempotency key used before for other usage.
fn key_reused(field: String, first_credit_type: &str, first_amount: u64) -> Rejection {
    Rejection {
        field,
        message: format!(
            "already used for another event of this customer ({first_amount} \
             {first_credit_type}); idempotency keys must be unique per event"
        ),
        reason: RejectReason::KeyReused,
    }
}

/// The burn of `event` once the ledger records it, polled until `deadline`.
async fn burn_recorded_by(
    ledger: &dyn Ledger,
    event: &UsageEvent,
    deadline: Instant,
) -> Result<Option<(String, u64)>, LedgerError> {
    loop {
        if let Some(burned) = recorded_burn(ledger, event).await? {
            return Ok(Some(burned));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(LEDGER_CATCH_UP_POLL).await;
    }
}

/// The answer for an event burned before.
fn duplicate(hold_id: &str, first_state: &str) -> Value {
    json!({"status": "duplicate", "hold_id": hold_id, "first_state": first_state})
}

/// The rejection of an event the store did not burn: retrying it burns it once.
fn store_failed(field: String, event: &UsageEvent, error: &MeterError) -> Rejection {
    warn!(customer = %event.customer, key = %event.idempotency_key, error = %error, "usage event not burned");
    Rejection {
        field,
        message: format!("the credit store failed ({error}); retry the event, it burns once"),
        reason: RejectReason::Unavailable,
    }
}

/// The ledger's record of a priced event, burned as `hold_id`.
fn usage_record(event: &UsageEvent, priced: &Priced, hold_id: &str) -> UsageEventRecord {
    UsageEventRecord {
        customer: event.customer.clone(),
        idempotency_key: event.idempotency_key.clone(),
        feature: event.feature.clone(),
        quantity: event.quantity,
        occurred_at_ms: event.occurred_at_ms,
        received_at_ms: now_ms(),
        credit_type: priced.credit_type.clone(),
        amount: priced.amount,
        hold_id: hold_id.to_string(),
        pricing_version: priced.pricing_version.clone(),
        metadata: event
            .metadata
            .as_ref()
            .map(|m| Value::Object(m.clone()).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use creditgate_protocol::MemoryStore;

    use super::*;
    use crate::jobs::fixtures::{
        CREDITS, FaultyStore, grant, keyspace, record_model_events, temp_ledger,
    };

    #[test]
    fn a_burned_events_hold_record_outlives_its_late_window_by_a_day() {
        let retain = crate::jobs::usage_burns::USAGE_RETAIN_MS;
        assert_eq!(retain, DEFAULT_LATE_WINDOW_MS + 86_400_000);
    }

    #[test]
    fn hold_ids_are_per_customer_and_valid() {
        let a = hold_id("acme", "job-1");
        assert_eq!(a, hold_id("acme", "job-1"));
        assert_ne!(a, hold_id("globex", "job-1"));
        assert!(creditgate_protocol::keys::validate_id("hold_id", &a).is_ok());
        // The ids of events burned before the derivation moved into the protocol.
        assert_eq!(a, "ue-b1ecca3fea6ebb86ca5f59f0ca40fd17fa937b48");
    }

    fn export(key: &str, quantity: u64) -> UsageEvent {
        UsageEvent {
            customer: "acme".into(),
            feature: "export".into(),
            quantity,
            occurred_at_ms: now_ms(),
            idempotency_key: key.into(),
            metadata: None,
        }
    }

    fn priced(amount: u64) -> Priced {
        Priced {
            credit_type: CREDITS.into(),
            amount,
            overdraft: 0,
            pricing_version: "v1".into(),
        }
    }

    #[tokio::test]
    async fn an_event_burns_once_on_the_model() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        let event = export("job-1", 3);

        let first = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        record_model_events(t.ledger.as_ref(), &store, &keyspace()).await;
        let replay = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;

        let first = first.expect("burned");
        assert_eq!(first["status"], "burned");
        assert_eq!(first["amount"], 30);
        assert_eq!(first["available_after"], 70);
        assert_eq!(first["overdraft"], false);
        assert_eq!(first["pricing_version"], "v1");
        let replay = replay.expect("duplicate");
        assert_eq!(
            replay,
            json!({"status": "duplicate", "hold_id": first["hold_id"], "first_state": "posted"})
        );
    }

    #[tokio::test]
    async fn a_failed_settle_is_burned_by_the_retry_even_after_its_hold_expired() {
        let t = temp_ledger().await;
        // Holds live 1 ms, so the failed first attempt's hold expires at once.
        let store = FaultyStore::new(keyspace(), 1, Some(1));
        grant(&store, "acme", "g1", 100).await;
        let event = export("job-1", 3);

        let failed = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        let failed = failed.expect_err("the settle failed");
        assert_eq!(failed.reason, RejectReason::Unavailable);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let hold = creditgate_protocol::HoldRef {
            customer: "acme".into(),
            hold_id: hold_id("acme", "job-1"),
        };
        store.expire_hold(&hold).await.expect("expire");

        let retry = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        let retry = retry.expect("burned late");
        assert_eq!(retry["status"], "burned", "{retry}");
        assert_eq!(retry["amount"], 30);
        assert_eq!(retry["available_after"], 70);
    }

    #[tokio::test]
    async fn a_retry_is_a_duplicate_only_once_the_ledger_has_the_burn() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        let event = export("job-1", 3);
        burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await
        .expect("burned");

        // Posted in the store, the writer has not recorded it yet.
        let early = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        let early = early.expect_err("not in the ledger yet");
        assert_eq!(early.reason, RejectReason::Unavailable);
        assert!(early.message.contains("not yet recorded in the ledger"));

        record_model_events(t.ledger.as_ref(), &store, &keyspace()).await;
        let late = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        assert_eq!(late.expect("duplicate")["status"], "duplicate");
        // Nothing was burned twice.
        let balance = store.balance("acme").await.expect("balance");
        assert_eq!(balance.of(CREDITS).map(|b| b.available), Some(70));
    }

    #[tokio::test]
    async fn a_burn_the_ledger_has_is_a_duplicate_even_when_the_store_forgot_it() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        let event = export("job-1", 3);
        burn(
            t.ledger.as_ref(),
            &store,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await
        .expect("burned");
        record_model_events(t.ledger.as_ref(), &store, &keyspace()).await;

        // A store that lost everything (FLUSHALL) burns nothing again.
        let empty = MemoryStore::new(keyspace());
        let replay = burn(
            t.ledger.as_ref(),
            &empty,
            0,
            &event,
            &priced(30),
            Instant::now(),
        )
        .await;
        assert_eq!(replay.expect("duplicate")["status"], "duplicate");
        let balance = empty.balance("acme").await.expect("balance");
        assert_eq!(balance.of(CREDITS).map(|b| b.held), None);
    }

    #[tokio::test]
    async fn an_empty_balance_goes_into_overdraft_on_the_model() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());

        let burned = burn(
            t.ledger.as_ref(),
            &store,
            0,
            &export("job-1", 1),
            &priced(5),
            Instant::now(),
        )
        .await
        .expect("burned");

        assert_eq!(burned["status"], "burned");
        assert_eq!(burned["overdraft"], true);
    }

    #[tokio::test]
    async fn a_reused_key_is_rejected_on_the_model() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        burn(
            t.ledger.as_ref(),
            &store,
            0,
            &export("job-1", 3),
            &priced(30),
            Instant::now(),
        )
        .await
        .expect("burned");

        let reused = burn(
            t.ledger.as_ref(),
            &store,
            4,
            &export("job-1", 4),
            &priced(40),
            Instant::now(),
        )
        .await
        .expect_err("rejected");

        assert_eq!(reused.field, "events[4].idempotency_key");
        assert_eq!(reused.reason, RejectReason::KeyReused);
        assert_eq!(
            reused.message,
            "already used for another event of this customer (30 credits); idempotency keys \
             must be unique per event"
        );
    }
}
