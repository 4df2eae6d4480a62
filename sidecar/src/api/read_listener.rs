//! The sidecar's read listener: `/metrics`, `/healthz`, `/readyz` open to all; read-only
//! ledger queries as JSON and the customer page ([`crate::api::customer_page`]) only with
//! a token ([`crate::api::read_access`]): an admin-API token of any role reads every
//! customer, a customer session token its own customer only. Everything that changes
//! state — credit operations, fleet control, usage events — is the admin API's
//! ([`crate::api::admin`]), on its own listener.
//!
//! - `GET /v1/customers/{customer}/balance?at_ms=` — balance per credit type and per grant
//! - `GET /v1/usage?customer=&from_ms=&to_ms=` — usage by UTC day and feature (a session's
//!   own customer when `customer` is left out)
//! - `GET /v1/requests/{request_id}/trail` — a request's hold and what it drew and returned
//!   (a session sees only its own customer's entries)
//! - `GET /v1/revenue?from_ms=&to_ms=` — recognized, breakage and deferred revenue (staff)
//! - `GET /v1/reconcile` — the last comparison of Redis with the ledger (staff)

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::api::read_access::{ReadState, Reader};
use crate::ledger::now_ms;

/// Widest range a usage or revenue query may span, in milliseconds (a little over a year),
/// so one request cannot fold the whole history of a large ledger.
pub const MAX_QUERY_RANGE_MS: u64 = 400 * 86_400_000;

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

fn ledger_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger_unavailable",
        e.to_string(),
    )
}

#[derive(Deserialize)]
struct AtQuery {
    at_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RangeQuery {
    customer: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
}

impl RangeQuery {
    /// The range, or the message of a 400 naming the bad parameter.
    fn range(&self) -> Result<(u64, u64), String> {
        let to = self.to_ms.unwrap_or_else(now_ms);
        let from = match self.from_ms {
            Some(f) => f,
            None => {
                return Err("query parameter from_ms is required (ms since the Unix epoch)".into());
            }
        };
        if from >= to {
            return Err(format!(
                "query parameter from_ms ({from}) must be before to_ms ({to})"
            ));
        }
        if to - from > MAX_QUERY_RANGE_MS {
            return Err(format!(
                "the range from_ms..to_ms spans more than {MAX_QUERY_RANGE_MS} ms"
            ));
        }
        Ok((from, to))
    }
}

type St = State<Arc<ReadState>>;

async fn metrics(State(s): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.sidecar.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): St) -> Response {
    let s = &s.sidecar;
    match (s.redis.ping().await, s.ledger.customers().await) {
        (Ok(()), Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        (Err(e), _) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")).into_response(),
        (_, Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("ledger: {e}\n")).into_response(),
    }
}

async fn balance(
    State(s): St,
    reader: Reader,
    Path(customer): Path<String>,
    Query(q): Query<AtQuery>,
) -> Response {
    if let Err(e) = reader.may_read(&customer) {
        return e.into_response();
    }
    match s
        .sidecar
        .ledger
        .balance_at(&customer, q.at_ms.unwrap_or_else(now_ms))
        .await
    {
        Ok(b) => axum::Json(b).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn usage(State(s): St, reader: Reader, Query(q): Query<RangeQuery>) -> Response {
    let (from, to) = match q.range() {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    // A session reads its own customer's usage, never every customer's.
    let customer = q.customer.as_deref().or(reader.own_customer());
    if let Err(e) = customer.map_or(reader.staff_only("every customer's usage"), |c| {
        reader.may_read(c)
    }) {
        return e.into_response();
    }
    match s.sidecar.ledger.usage(customer, from, to).await {
        Ok(rows) => axum::Json(json!({"from_ms": from, "to_ms": to, "rows": rows})).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn trail(State(s): St, reader: Reader, Path(request_id): Path<String>) -> Response {
    let found = s
        .sidecar
        .ledger
        .trail(&request_id)
        .await
        .map(|mut entries| {
            // Another customer's request reads as unknown, so a session learns nothing of it.
            if let Some(own) = reader.own_customer() {
                entries.retain(|e| e.entry.customer == own);
            }
            entries
        });
    match found {
        Ok(entries) if entries.is_empty() => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the ledger has no entries for request id {request_id:?}"),
        ),
        Ok(entries) => axum::Json(json!({
            "request_id": request_id,
            "entries": entries,
        }))
        .into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn revenue(State(s): St, reader: Reader, Query(q): Query<RangeQuery>) -> Response {
    if let Err(e) = reader.staff_only("revenue") {
        return e.into_response();
    }
    let (from, to) = match q.range() {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    match s.sidecar.ledger.revenue(from, to).await {
        Ok(r) => axum::Json(json!({"from_ms": from, "to_ms": to, "revenue": r})).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn last_reconcile(State(s): St, reader: Reader) -> Response {
    if let Err(e) = reader.staff_only("the reconcile report") {
        return e.into_response();
    }
    let last = s
        .sidecar
        .last_reconcile
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    axum::Json(json!({"last": last})).into_response()
}

/// The router, for tests and for [`serve`].
pub fn router(state: Arc<ReadState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/customers/{customer}/balance", get(balance))
        .route("/v1/usage", get(usage))
        .route("/v1/requests/{request_id}/trail", get(trail))
        .route("/v1/revenue", get(revenue))
        .route("/v1/reconcile", get(last_reconcile))
        .merge(crate::api::customer_page::routes())
        .with_state(state)
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ReadState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The peer address keys the admin-token failure limit, as on the admin listener.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    })
    .await?;
    Ok(())
}
