//! Outgoing webhooks: the delivery log (one row per event, its id fixed by what caused
//! it, so an event is queued once), HMAC-SHA256 signatures, and delivery with retries and
//! exponential backoff.
//!
//! Each request carries `X-Creditgate-Delivery: <id>` and
//! `X-Creditgate-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`; the
//! receiver recomputes it and rejects stale timestamps. This module sends what it is told;
//! [`super::alerts`] decides what to send.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tracing::{info, warn};

use crate::ledger::AdminDb;
use crate::metrics::AdminMetrics;
use crate::operations::Endpoint;

/// Attempts before a delivery is given up (state `failed`, kept in the log): with the
/// backoff below, about a day of retries.
pub const WEBHOOK_ATTEMPTS_MAX: i64 = 20;

/// Wait before the first retry, ms; doubled per attempt up to [`WEBHOOK_BACKOFF_MAX_MS`].
pub const WEBHOOK_BACKOFF_BASE_MS: u64 = 500;

/// Longest wait between attempts, ms: an hour, so a receiver down for a day is retried
/// often enough and a dead one is not hammered.
pub const WEBHOOK_BACKOFF_MAX_MS: u64 = 3_600_000;

/// Timeout of one delivery attempt: a receiver should answer at once and work later.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries attempted per pass, so one pass stays bounded.
pub const WEBHOOK_BATCH_MAX: i64 = 100;

/// How long a claimed delivery is left to its sender before another pass may retry it,
/// ms: longer than [`WEBHOOK_TIMEOUT`].
const CLAIM_LEASE_MS: u64 = 30_000;

/// Most deliveries listed per call.
pub const DELIVERIES_LIST_MAX: i64 = 500;

/// The signature header's value for `body` sent at `t_ms`.
pub fn signature(secret: &str, t_ms: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(t_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t_ms},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Backoff before attempt `attempts + 1`, ms.
pub fn backoff_ms(attempts: i64) -> u64 {
    let shift = attempts.clamp(0, 30) as u32;
    WEBHOOK_BACKOFF_BASE_MS
        .saturating_mul(1u64 << shift)
        .min(WEBHOOK_BACKOFF_MAX_MS)
}

/// Queues an event once: false when a delivery with this id exists.
pub async fn enqueue(
    db: &AdminDb,
    delivery_id: &str,
    kind: &str,
    customer: &str,
    endpoint: &Endpoint,
    mut payload: Value,
    now_ms: u64,
) -> Result<bool, sqlx::Error> {
    payload["delivery_id"] = json!(delivery_id);
    payload["kind"] = json!(kind);
    payload["customer"] = json!(customer);
    payload["created_at_ms"] = json!(now_ms);
    let inserted = db
        .execute(
            "INSERT INTO webhook_deliveries (delivery_id, kind, customer, url, payload, state, attempts, \
             next_attempt_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7) \
             ON CONFLICT DO NOTHING",
            &[
                delivery_id.into(),
                kind.into(),
                customer.into(),
                endpoint.url.as_str().into(),
                payload.to_string().into(),
                (now_ms as i64).into(),
                (now_ms as i64).into(),
            ],
        )
        .await?;
    if inserted > 0 {
        info!(delivery_id, kind, customer, "webhook queued");
    }
    Ok(inserted > 0)
}

/// Sends the due deliveries once each; `secret_for` gives the key of a URL.
pub async fn deliver_due(
    db: &AdminDb,
    client: &reqwest::Client,
    secret_for: impl Fn(&str) -> Option<String>,
    now_ms: u64,
    metrics: &AdminMetrics,
) -> Result<u64, sqlx::Error> {
    let mut delivered = 0;
    for due in due_deliveries(db, now_ms).await? {
        let count = |outcome: &str| {
            metrics
                .webhook_deliveries
                .with_label_values(&[due.kind.as_str(), outcome])
                .inc()
        };
        if !claim(db, &due, now_ms).await? {
            continue;
        }
        let Some(secret) = secret_for(&due.url) else {
            db.execute(
                "UPDATE webhook_deliveries SET state = 'failed', last_error = $1 WHERE delivery_id = $2",
                &["the URL is no longer configured".into(), due.id.as_str().into()],
            )
            .await?;
            count("failed");
            continue;
        };
        let (status, error) = send(client, &due, &secret).await;
        let outcome = record_attempt(db, &due, status, error).await?;
        if outcome == "delivered" {
            delivered += 1;
        }
        count(outcome);
    }
    Ok(delivered)
}

/// A pending delivery whose next attempt is due.
struct Due {
    id: String,
    kind: String,
    url: String,
    payload: String,
    attempts: i64,
    next_at: i64,
}

/// The pending deliveries due at `now_ms`, oldest first, at most [`WEBHOOK_BATCH_MAX`].
async fn due_deliveries(db: &AdminDb, now_ms: u64) -> Result<Vec<Due>, sqlx::Error> {
    db.fetch(
        "SELECT delivery_id, kind, url, payload, attempts, next_attempt_at_ms FROM webhook_deliveries \
         WHERE state = 'pending' AND next_attempt_at_ms <= $1 ORDER BY next_attempt_at_ms LIMIT $2",
        &[(now_ms as i64).into(), WEBHOOK_BATCH_MAX.into()],
        |row| {
            Ok(Due {
                id: row.try_get::<String, _>("delivery_id")?,
                kind: row.try_get::<String, _>("kind")?,
                url: row.try_get::<String, _>("url")?,
                payload: row.try_get::<String, _>("payload")?,
                attempts: row.try_get::<i64, _>("attempts")?,
                next_at: row.try_get::<i64, _>("next_attempt_at_ms")?,
            })
        },
    )
    .await
}

/// Claims a due delivery for a lease, so a second sidecar (or an overlapping pass) does
/// not send it too; false when someone else claimed it first.
async fn claim(db: &AdminDb, due: &Due, now_ms: u64) -> Result<bool, sqlx::Error> {
    let claimed = db
        .execute(
            "UPDATE webhook_deliveries SET next_attempt_at_ms = $1 \
             WHERE delivery_id = $2 AND state = 'pending' AND next_attempt_at_ms = $3",
            &[
                ((now_ms + CLAIM_LEASE_MS) as i64).into(),
                due.id.as_str().into(),
                due.next_at.into(),
            ],
        )
        .await?;
    Ok(claimed > 0)
}

/// Posts the signed payload once: the status answered, and the error unless it was a 2xx.
async fn send(client: &reqwest::Client, due: &Due, secret: &str) -> (Option<u16>, Option<String>) {
    let t = crate::ledger::now_ms();
    let result = client
        .post(&due.url)
        .timeout(WEBHOOK_TIMEOUT)
        .header("content-type", "application/json")
        .header("X-Creditgate-Delivery", &due.id)
        .header(
            "X-Creditgate-Signature",
            signature(secret, t, due.payload.as_bytes()),
        )
        .body(due.payload.clone())
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
        Ok(r) => (
            Some(r.status().as_u16()),
            Some(format!("answered {}", r.status())),
        ),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// Records an attempt: delivered, or failed and retried after a backoff until
/// [`WEBHOOK_ATTEMPTS_MAX`] attempts. Returns the outcome's metric label (`delivered`,
/// `retry` or `failed`).
async fn record_attempt(
    db: &AdminDb,
    due: &Due,
    status: Option<u16>,
    error: Option<String>,
) -> Result<&'static str, sqlx::Error> {
    let attempts = due.attempts + 1;
    let Some(error) = error else {
        db.execute(
            "UPDATE webhook_deliveries SET state = 'delivered', attempts = $1, last_status = $2, \
             delivered_at_ms = $3, last_error = NULL WHERE delivery_id = $4",
            &[
                attempts.into(),
                status.map(i64::from).into(),
                (crate::ledger::now_ms() as i64).into(),
                due.id.as_str().into(),
            ],
        )
        .await?;
        return Ok("delivered");
    };
    let state = if attempts >= WEBHOOK_ATTEMPTS_MAX {
        "failed"
    } else {
        "pending"
    };
    warn!(delivery_id = %due.id, attempts, error, "webhook delivery failed");
    db.execute(
        "UPDATE webhook_deliveries SET state = $1, attempts = $2, last_status = $3, last_error = $4, \
         next_attempt_at_ms = $5 WHERE delivery_id = $6",
        &[
            state.into(),
            attempts.into(),
            status.map(i64::from).into(),
            error.as_str().into(),
            ((crate::ledger::now_ms() + backoff_ms(attempts - 1)) as i64).into(),
            due.id.as_str().into(),
        ],
    )
    .await?;
    Ok(if state == "failed" { "failed" } else { "retry" })
}

/// The delivery log, newest first: of one customer, or all.
pub async fn list(db: &AdminDb, customer: Option<&str>) -> Result<Vec<Value>, sqlx::Error> {
    db.fetch(
        "SELECT delivery_id, kind, customer, url, payload, state, attempts, next_attempt_at_ms, \
         last_status, last_error, created_at_ms, delivered_at_ms FROM webhook_deliveries \
         WHERE ($1 = '' OR customer = $2) ORDER BY created_at_ms DESC, delivery_id LIMIT $3",
        &[customer.unwrap_or("").into(), customer.unwrap_or("").into(), DELIVERIES_LIST_MAX.into()],
        |row| Ok(json!({
            "delivery_id": row.try_get::<String, _>("delivery_id")?,
            "kind": row.try_get::<String, _>("kind")?,
            "customer": row.try_get::<String, _>("customer")?,
            "url": row.try_get::<String, _>("url")?,
            "payload": serde_json::from_str::<Value>(&row.try_get::<String, _>("payload")?).unwrap_or_default(),
            "state": row.try_get::<String, _>("state")?,
            "attempts": row.try_get::<i64, _>("attempts")?,
            "next_attempt_at_ms": row.try_get::<i64, _>("next_attempt_at_ms")?,
            "last_status": row.try_get::<Option<i64>, _>("last_status")?,
            "last_error": row.try_get::<Option<String>, _>("last_error")?,
            "created_at_ms": row.try_get::<i64, _>("created_at_ms")?,
            "delivered_at_ms": row.try_get::<Option<i64>, _>("delivered_at_ms")?,
        })),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_time_and_body() {
        let s = signature("k".repeat(32).as_str(), 1_000, b"{}");
        assert!(s.starts_with("t=1000,v1="));
        assert_eq!(s.len(), "t=1000,v1=".len() + 64);
        assert_ne!(s, signature("k".repeat(32).as_str(), 1_001, b"{}"));
        assert_ne!(s, signature("k".repeat(32).as_str(), 1_000, b"{ }"));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(40), WEBHOOK_BACKOFF_MAX_MS);
    }
}
