//! The console's calls into the admin API. Each is a request to the admin API's own router
//! — the same route table, role check, body limit, `Idempotency-Key`, handler, limits,
//! approvals and audit as a call over HTTP — made on behalf of the session's caller, so
//! the console has no second code path for any business rule.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::Value;
use tower::ServiceExt;

use crate::api::admin::ADMIN_BODY_MAX_BYTES;
use crate::api::admin::auth::Caller;

/// Largest admin answer the console reads, bytes: a ledger page of 1,000 entries fits.
const ANSWER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// An admin API answer: its status and JSON body (`null` when it was not JSON).
#[derive(Clone, Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// Whether the call succeeded (2xx).
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error message of a failed call: the admin API's `message`, else its `error`.
    pub fn message(&self) -> String {
        let field = |k: &str| self.body.get(k).and_then(Value::as_str).map(str::to_string);
        field("message")
            .or_else(|| field("error"))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

/// Calls `method path` of the admin router as `caller`, with `body` as JSON and
/// `idempotency_key` as the `Idempotency-Key` header (the console derives it from the
/// form, so a form sent twice makes one change).
pub async fn call(
    api: &Router,
    caller: &Caller,
    method: Method,
    path: &str,
    idempotency_key: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(key) = idempotency_key {
        builder = builder.header("Idempotency-Key", key);
    }
    let body = match body {
        Some(b) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let Ok(mut request) = builder.body(body) else {
        return Answer {
            status: 400,
            body: serde_json::json!({"message": format!("bad path {path:?}")}),
        };
    };
    request.extensions_mut().insert(caller.clone());
    let response = match api.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(
        response.into_body(),
        ANSWER_MAX_BYTES.max(ADMIN_BODY_MAX_BYTES),
    )
    .await
    .unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}
