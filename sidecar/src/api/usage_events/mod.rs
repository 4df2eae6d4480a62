//! Usage events from the product (asynchronous metering): actions that are not HTTP calls
//! through the gateway (a batch export, a background job) reported to the sidecar, priced by
//! the pricing config and burned through the same reserve and settle scripts as gateway
//! traffic, so the ledger looks the same.
//!
//! This module is the pure part: reading one event out of the request JSON with errors
//! that name the field, the late window, and pricing. [`routes`] does the I/O.

pub mod routes;

use creditgate_config::{CostRule, MAX_AMOUNT, PricingConfig};
use serde_json::{Map, Value};

/// How old an event may be when it arrives, in milliseconds: 7 days. Older usage is
/// rejected (the ledger's past balances are final by then); the hold records that make
/// retries idempotent are kept at least this long.
pub const DEFAULT_LATE_WINDOW_MS: u64 = 7 * 86_400_000;

/// How far in the future an event's time may be, in milliseconds: 5 minutes of clock skew
/// between the product's hosts and Redis.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// Most events in one request: 1 000, which a sidecar burns in well under a second and
/// keeps a request's answer small.
pub const MAX_EVENTS_PER_REQUEST: usize = 1_000;

/// Largest request body, in bytes: 2 MiB, axum's default body limit, room for a full batch
/// with some metadata per event.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// Longest idempotency key, in bytes: 200, enough for a UUID with a prefix or a job path.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Largest `metadata` object of one event, serialized, in bytes: 4 KiB. Metadata is for
/// tracing an event back to its job, not for payloads.
pub const MAX_METADATA_BYTES: usize = 4_096;

/// One event as the product sent it, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// The customer using the feature.
    pub customer: String,
    /// The feature used (a feature of the pricing config).
    pub feature: String,
    /// How many units were used (≥ 0).
    pub quantity: u64,
    /// When the usage happened, ms since the Unix epoch.
    pub occurred_at_ms: u64,
    /// The product's id for the event: the same key burns once.
    pub idempotency_key: String,
    /// Free-form object kept with the event's result.
    pub metadata: Option<Map<String, Value>>,
}

/// The kind of a rejection: the metric's label set, defined with the metrics so that they
/// need nothing from this module.
pub use crate::metrics::UsageRejectReason as RejectReason;

/// Why an event was rejected: the field (`events[3].occurred_at_ms`), a message and the
/// kind of rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The JSON path of the offending field.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The kind, for the metrics.
    pub reason: RejectReason,
}

impl Rejection {
    /// An [`RejectReason::Invalid`] rejection of `field`.
    pub fn new(field: String, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
            reason: RejectReason::Invalid,
        }
    }

    /// The same rejection with another kind.
    pub fn because(mut self, reason: RejectReason) -> Self {
        self.reason = reason;
        self
    }
}

/// Reads event `index` of the request, checking every field and the late window against
/// `now_ms`.
pub fn parse_event(
    index: usize,
    value: &Value,
    now_ms: u64,
    late_window_ms: u64,
) -> Result<UsageEvent, Rejection> {
    let object = value
        .as_object()
        .ok_or_else(|| Rejection::new(format!("events[{index}]"), "must be a JSON object"))?;
    let fields = EventFields { index, object };
    fields.check_known()?;
    let customer = fields.text("customer")?;
    creditgate_protocol::keys::validate_id("customer", &customer)
        .map_err(|e| Rejection::new(fields.at("customer"), e))?;
    let feature = fields.text("feature")?;
    let quantity = fields.integer("quantity")?;
    let occurred_at_ms = fields.integer("occurred_at_ms")?;
    let idempotency_key = fields.text("idempotency_key")?;
    fields.check_idempotency_key(&idempotency_key)?;
    let metadata = fields.metadata()?;
    check_event_time(
        &fields.at("occurred_at_ms"),
        occurred_at_ms,
        now_ms,
        late_window_ms,
    )?;
    Ok(UsageEvent {
        customer,
        feature,
        quantity,
        occurred_at_ms,
        idempotency_key,
        metadata,
    })
}

/// The fields of event `index`, read with rejections that name them.
struct EventFields<'a> {
    index: usize,
    object: &'a Map<String, Value>,
}

impl EventFields<'_> {
    /// The JSON path of `field`: `events[3].quantity`.
    fn at(&self, field: &str) -> String {
        format!("events[{}].{field}", self.index)
    }

    /// Rejects the first field that is not one of an event's.
    fn check_known(&self) -> Result<(), Rejection> {
        for key in self.object.keys() {
            if !matches!(
                key.as_str(),
                "customer"
                    | "feature"
                    | "quantity"
                    | "occurred_at_ms"
                    | "idempotency_key"
                    | "metadata"
            ) {
                return Err(Rejection::new(
                    self.at(key),
                    "unknown field (known: customer, feature, quantity, occurred_at_ms, \
                     idempotency_key, metadata)",
                ));
            }
        }
        Ok(())
    }

    /// A required string field.
    fn text(&self, field: &str) -> Result<String, Rejection> {
        match self.object.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Rejection::new(self.at(field), "must be a string")),
            None => Err(Rejection::new(self.at(field), "is required")),
        }
    }

    /// A required non-negative integer field.
    fn integer(&self, field: &str) -> Result<u64, Rejection> {
        match self.object.get(field) {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                Rejection::new(
                    self.at(field),
                    format!("must be a non-negative integer, got {n}"),
                )
            }),
            Some(_) => Err(Rejection::new(
                self.at(field),
                "must be a non-negative integer",
            )),
            None => Err(Rejection::new(self.at(field), "is required")),
        }
    }

    /// Rejects an idempotency key that is empty, too long or not printable ASCII.
    fn check_idempotency_key(&self, key: &str) -> Result<(), Rejection> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Rejection::new(
                self.at("idempotency_key"),
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
                ),
            ));
        }
        Ok(())
    }

    /// The optional `metadata` object, within [`MAX_METADATA_BYTES`] serialized.
    fn metadata(&self) -> Result<Option<Map<String, Value>>, Rejection> {
        match self.object.get("metadata") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => {
                let size = Value::Object(map.clone()).to_string().len();
                if size > MAX_METADATA_BYTES {
                    return Err(Rejection::new(
                        self.at("metadata"),
                        format!("is {size} bytes serialized, more than {MAX_METADATA_BYTES}"),
                    ));
                }
                Ok(Some(map.clone()))
            }
            Some(_) => Err(Rejection::new(self.at("metadata"), "must be a JSON object")),
        }
    }
}

/// Rejects an event time (at JSON path `field`) older than the late window before `now_ms`
/// or further ahead than the clock skew allowed.
fn check_event_time(
    field: &str,
    occurred_at_ms: u64,
    now_ms: u64,
    late_window_ms: u64,
) -> Result<(), Rejection> {
    let oldest = now_ms.saturating_sub(late_window_ms);
    if occurred_at_ms < oldest {
        return Err(Rejection::new(
            field.to_string(),
            format!(
                "{occurred_at_ms} is {} ms before now, outside the late window of {} days \
                 ({late_window_ms} ms): usage older than that is not accepted",
                now_ms - occurred_at_ms,
                late_window_ms / 86_400_000
            ),
        )
        .because(RejectReason::TooLate));
    }
    if occurred_at_ms > now_ms + MAX_CLOCK_SKEW_MS {
        return Err(Rejection::new(
            field.to_string(),
            format!(
                "{occurred_at_ms} is {} ms in the future (at most {MAX_CLOCK_SKEW_MS} ms of \
                 clock skew is accepted)",
                occurred_at_ms - now_ms
            ),
        )
        .because(RejectReason::InTheFuture));
    }
    Ok(())
}

/// An event's price under the config in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The credit type burned.
    pub credit_type: String,
    /// The amount, in the credit type's smallest unit.
    pub amount: u64,
    /// The customer's overdraft for that credit type.
    pub overdraft: u64,
    /// The pricing version recorded with the burn, as the gateway records it:
    /// `<label>@<cohort>` when a grandfathered cohort's pinned price applied.
    pub pricing_version: String,
}

/// Prices `event` as the gateway would price `quantity` units of its feature:
/// `fixed`: amount × quantity; `per_unit`: quantity × rate capped at max; `free`: 0;
/// `from_response` with a usage header: quantity × its rate capped at max. A
/// `from_response` rule without a per-unit rate cannot price a count and is rejected.
pub fn price(
    config: &PricingConfig,
    index: usize,
    event: &UsageEvent,
) -> Result<Priced, Rejection> {
    let cost = config
        .cost_for(&event.feature, Some(&event.customer))
        .ok_or_else(|| {
            Rejection::new(
                format!("events[{index}].feature"),
                format!(
                    "unknown feature {:?} in pricing version {}, the one in force at the \
                     event time",
                    event.feature,
                    config.version_label()
                ),
            )
            .because(RejectReason::UnknownFeature)
        })?;
    let q = event.quantity;
    let amount = match cost.rule {
        CostRule::Free => 0,
        CostRule::Fixed { amount } => q.saturating_mul(*amount),
        CostRule::PerUnit { rate, max, .. } => q.saturating_mul(*rate).min(*max),
        CostRule::FromResponse { max, usage, .. } => match &usage.header {
            Some(header) => q.saturating_mul(header.rate).min(*max),
            None => {
                return Err(Rejection::new(
                    format!("events[{index}].feature"),
                    format!(
                        "feature {:?} is priced from responses by usage fields; usage events \
                         need a fixed, per_unit or header-rated rule",
                        event.feature
                    ),
                )
                .because(RejectReason::Unpriceable));
            }
        },
    };
    if amount > MAX_AMOUNT {
        return Err(Rejection::new(
            format!("events[{index}].quantity"),
            format!("{q} units cost more than the largest amount {MAX_AMOUNT}"),
        ));
    }
    Ok(Priced {
        credit_type: cost.credit_type.name.clone(),
        amount,
        overdraft: cost.overdraft,
        pricing_version: config.pricing_version_of(&cost),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000_000;

    fn event(overrides: Value) -> Value {
        let mut base = json!({
            "customer": "acme", "feature": "export", "quantity": 3,
            "occurred_at_ms": NOW - 1_000, "idempotency_key": "job-1",
        });
        if let (Some(base), Some(o)) = (base.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                base.insert(k.clone(), v.clone());
            }
        }
        base
    }

    #[test]
    fn fields_are_checked_and_named() {
        let ok = parse_event(0, &event(json!({})), NOW, DEFAULT_LATE_WINDOW_MS).unwrap();
        assert_eq!(ok.quantity, 3);
        for (overrides, field) in [
            (json!({"quantity": -1}), "events[2].quantity"),
            (json!({"quantity": "3"}), "events[2].quantity"),
            (json!({"customer": "a b"}), "events[2].customer"),
            (json!({"idempotency_key": ""}), "events[2].idempotency_key"),
            (json!({"metadata": [1]}), "events[2].metadata"),
            (json!({"extra": 1}), "events[2].extra"),
            (
                json!({"occurred_at_ms": NOW + 600_000}),
                "events[2].occurred_at_ms",
            ),
        ] {
            let err =
                parse_event(2, &event(overrides.clone()), NOW, DEFAULT_LATE_WINDOW_MS).unwrap_err();
            assert_eq!(err.field, field, "{overrides}");
        }
    }

    #[test]
    fn an_eight_day_old_event_is_rejected_naming_the_window() {
        let old = event(json!({"occurred_at_ms": NOW - 8 * 86_400_000}));
        let err = parse_event(0, &old, NOW, DEFAULT_LATE_WINDOW_MS).unwrap_err();
        assert_eq!(err.field, "events[0].occurred_at_ms");
        assert!(
            err.message.contains("late window of 7 days (604800000 ms)"),
            "{}",
            err.message
        );
    }
}
