//! Customers, their plan and their API keys. A key's plaintext is returned once, at
//! creation; only its SHA-256 hash is kept, in the ledger database and, for the gateways,
//! in Redis ([`super::key_sync`]); a replay of the creation answers without the key
//! ([`without_plaintext_key`]). Nothing here grants credits.

use axum::http::StatusCode;
use serde_json::json;

use super::auth::{Caller, new_secret, secret_hash};
use super::error::ApiError;
use super::fields::Body;
use super::idempotency::{Reply, reply};
use super::key_sync;
use super::state::AdminState;
use crate::ledger::now_ms;

/// Prefix of customer API keys created here.
pub const API_KEY_PREFIX: &str = "cgk_";

fn unavailable(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("admin database", e)
}

/// The customer's plan, `Ok(None)` when it has none, or a 404 naming `customer`.
pub async fn plan_of(st: &AdminState, customer: &str) -> Result<Option<String>, ApiError> {
    let rows = st
        .db
        .fetch(
            "SELECT plan FROM customers WHERE customer = $1",
            &[customer.into()],
            |row| row.try_get::<Option<String>, _>("plan"),
        )
        .await
        .map_err(unavailable)?;
    rows.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            Some("customer"),
            format!("no customer {customer:?}; create it with POST /v1/admin/customers"),
        )
    })
}

/// Appends the customer's plan (`None`: none) from `now` on to its plan history, which
/// decides the months its scheduled allotments are granted for ([`super::schedule`]).
async fn record_plan(
    st: &AdminState,
    customer: &str,
    plan: Option<&str>,
    actor: &str,
    now: u64,
) -> Result<(), ApiError> {
    st.db
        .execute(
            "INSERT INTO customer_plan_history (customer, plan, since_ms, actor) VALUES ($1, $2, $3, $4)",
            &[customer.into(), plan.into(), (now as i64).into(), actor.into()],
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// A 400 naming `plan` when the sidecar runs with a pricing config (`--config`) that
/// does not define the plan; without one, any plan id is taken.
fn check_plan(st: &AdminState, plan: &str) -> Result<(), ApiError> {
    let Some(pricing) = &st.sidecar.pricing else {
        return Ok(());
    };
    let config = pricing.load();
    if config.plans().contains_key(plan) {
        Ok(())
    } else {
        Err(ApiError::field(
            "plan",
            format!(
                "unknown plan {plan:?}; the pricing config defines {:?}",
                config.plans().keys().collect::<Vec<_>>()
            ),
        ))
    }
}

async fn run(f: impl std::future::Future<Output = Result<Reply, ApiError>>) -> Reply {
    f.await.unwrap_or_else(Reply::from)
}

/// `POST /v1/admin/customers` `{customer, plan?}`.
pub async fn create(st: &AdminState, caller: &Caller, body: &[u8]) -> Reply {
    run(async {
        let mut b = Body::parse(body)?;
        let customer = b.id("customer")?;
        let plan = b.opt_id("plan")?;
        b.finish()?;
        if let Some(p) = &plan {
            check_plan(st, p)?;
        }
        let now = now_ms();
        let inserted = st
            .db
            .execute(
                "INSERT INTO customers (customer, plan, created_by, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[
                    customer.as_str().into(),
                    plan.as_deref().into(),
                    caller.name.as_str().into(),
                    (now as i64).into(),
                ],
            )
            .await
            .map_err(unavailable)?;
        if inserted == 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "customer_exists",
                Some("customer"),
                format!("customer {customer:?} exists"),
            ));
        }
        if plan.is_some() {
            record_plan(st, &customer, plan.as_deref(), &caller.name, now).await?;
        }
        Ok(reply(
            StatusCode::CREATED,
            &json!({"customer": customer, "plan": plan, "created_by": caller.name, "created_at_ms": now}),
        ))
    })
    .await
}

/// `GET /v1/admin/customers/{customer}`: the plan and the API keys (ids only).
pub async fn get(st: &AdminState, customer: &str) -> Reply {
    run(async {
        let plan = plan_of(st, customer).await?;
        let keys = st
            .db
            .fetch(
                "SELECT key_id, created_by, created_at_ms, revoked_by, revoked_at_ms FROM customer_api_keys \
                 WHERE customer = $1 ORDER BY created_at_ms, key_id",
                &[customer.into()],
                |row| Ok(json!({
                    "key_id": row.try_get::<String, _>("key_id")?,
                    "created_by": row.try_get::<String, _>("created_by")?,
                    "created_at_ms": row.try_get::<i64, _>("created_at_ms")?,
                    "revoked_by": row.try_get::<Option<String>, _>("revoked_by")?,
                    "revoked_at_ms": row.try_get::<Option<i64>, _>("revoked_at_ms")?,
                })),
            )
            .await
            .map_err(unavailable)?;
        Ok(reply(
            StatusCode::OK,
            &json!({"customer": customer, "plan": plan, "api_keys": keys}),
        ))
    })
    .await
}

/// `PUT /v1/admin/customers/{customer}/plan` `{plan}`.
pub async fn set_plan(st: &AdminState, caller: &Caller, customer: &str, body: &[u8]) -> Reply {
    run(async {
        let mut b = Body::parse(body)?;
        let plan = b.id("plan")?;
        b.finish()?;
        check_plan(st, &plan)?;
        plan_of(st, customer).await?;
        // History first: a customer is never on a plan its history does not show.
        record_plan(st, customer, Some(&plan), &caller.name, now_ms()).await?;
        st.db
            .execute(
                "UPDATE customers SET plan = $1 WHERE customer = $2",
                &[plan.as_str().into(), customer.into()],
            )
            .await
            .map_err(unavailable)?;
        tracing::info!(customer, plan, actor = %caller.name, "customer plan set");
        Ok(reply(
            StatusCode::OK,
            &json!({"customer": customer, "plan": plan, "actor": caller.name}),
        ))
    })
    .await
}

/// `POST /v1/admin/customers/{customer}/api-keys`: a new key, its plaintext shown once.
pub async fn create_api_key(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    body: &[u8],
) -> Reply {
    run(async {
        Body::parse(body)?.finish()?;
        plan_of(st, customer).await?;
        let key = new_secret(API_KEY_PREFIX);
        let key_id = format!("k-{}", uuid::Uuid::new_v4().simple());
        let hash = secret_hash(&key);
        let now = now_ms();
        st.db
            .execute(
                "INSERT INTO customer_api_keys (key_id, customer, key_hash, created_by, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    key_id.as_str().into(),
                    customer.into(),
                    hash.as_str().into(),
                    caller.name.as_str().into(),
                    (now as i64).into(),
                ],
            )
            .await
            .map_err(unavailable)?;
        // Recorded: the key exists. Publishing it is retried by the key sync pass when
        // Redis fails now, so the answer is a success either way.
        let published = key_sync::publish(st, &hash, customer).await;
        Ok(reply(
            StatusCode::CREATED,
            &json!({"customer": customer, "key_id": key_id, "api_key": key, "api_key_shown": true,
                    "created_by": caller.name, "created_at_ms": now, "published": published}),
        ))
    })
    .await
}

/// Why a replayed key creation carries no key, in its answer.
pub const API_KEY_SHOWN_ONCE: &str = "the key's plaintext was shown once, in the first answer, and is not stored; \
     if it was lost, revoke this key and create another";

/// The copy of a key creation's answer kept for `Idempotency-Key` replays: the plaintext
/// replaced by null, `api_key_shown: false` and [`API_KEY_SHOWN_ONCE`]. Only the key's
/// hash is ever at rest; a body that is not a JSON object is kept as it is (it carries no
/// key: only the success answer does).
pub fn without_plaintext_key(body: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut answer)) = serde_json::from_slice(body) else {
        return body.to_vec();
    };
    if answer.contains_key("api_key") {
        answer.insert("api_key".into(), serde_json::Value::Null);
        answer.insert("api_key_shown".into(), false.into());
        answer.insert("message".into(), API_KEY_SHOWN_ONCE.into());
    }
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// `POST /v1/admin/customers/{customer}/api-keys/{key_id}/revoke`.
pub async fn revoke_api_key(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    key_id: &str,
    body: &[u8],
) -> Reply {
    run(async {
        Body::parse(body)?.finish()?;
        let now = now_ms();
        let hashes = st
            .db
            .fetch(
                "SELECT key_hash FROM customer_api_keys WHERE key_id = $1 AND customer = $2",
                &[key_id.into(), customer.into()],
                |row| row.try_get::<String, _>("key_hash"),
            )
            .await
            .map_err(unavailable)?;
        let changed = st
            .db
            .execute(
                "UPDATE customer_api_keys SET revoked_by = $1, revoked_at_ms = $2 \
                 WHERE key_id = $3 AND customer = $4 AND revoked_at_ms IS NULL",
                &[
                    caller.name.as_str().into(),
                    (now as i64).into(),
                    key_id.into(),
                    customer.into(),
                ],
            )
            .await
            .map_err(unavailable)?;
        if changed == 0 {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_api_key",
                Some("key_id"),
                format!("customer {customer:?} has no active key {key_id:?}"),
            ));
        }
        // Recorded: the key is revoked. A failed delete is retried by the key sync pass.
        let mut withdrawn = true;
        for hash in &hashes {
            withdrawn &= key_sync::withdraw(st, hash).await;
        }
        Ok(reply(
            StatusCode::OK,
            &json!({"customer": customer, "key_id": key_id, "revoked_by": caller.name,
                    "revoked_at_ms": now, "withdrawn": withdrawn}),
        ))
    })
    .await
}
