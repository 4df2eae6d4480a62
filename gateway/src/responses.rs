//! The gateway's own responses (400, 401, 402, 404, 409, 422, 500, 503): JSON bodies with an
//! error code a program can branch on and a message a person can read; and the headers that
//! tell the client what a proxied request was charged.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

/// Response header: credits charged for this request (for routes settled from the response,
/// what was reserved up front).
pub const HEADER_CHARGED: &str = "x-credits-charged";
/// Response header: credits of the route's type the customer has left after this request.
pub const HEADER_REMAINING: &str = "x-credits-remaining";
/// Response header: the credit type charged.
pub const HEADER_CREDIT_TYPE: &str = "x-credit-type";
/// Response header: the pricing config version that priced the request (`7-3f2a9c1b04de`,
/// with `@<cohort>` when a grandfathered price applied); the ledger records the same.
pub const HEADER_PRICING_VERSION: &str = "x-creditgate-pricing-version";
/// Request and response header: the gateway's id of the request, also in every log line.
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// Request header: a client's key that makes a retry neither reserve nor burn again.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A response the gateway answers itself, without the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Refusal {
    /// 401: no usable credential.
    pub fn unauthorized(message: &str) -> Self {
        Self {
            status: 401,
            body: json!({"error": "unauthorized", "message": message}),
        }
    }

    /// 402: not enough credits.
    pub fn insufficient(
        credit_type: &str,
        required: u64,
        available: i64,
        top_up_url: Option<&str>,
    ) -> Self {
        Self {
            status: 402,
            body: json!({
                "error": "insufficient_credits",
                "message": format!(
                    "this request needs {required} {credit_type} credits and {available} are available"
                ),
                "credit_type": credit_type,
                "required": required,
                "available": available,
                "top_up_url": top_up_url,
            }),
        }
    }

    /// 400: the request body could not be read (the client broke off, or its framing is
    /// invalid) while the gateway read it to estimate the cost.
    pub fn unreadable_body(message: &str) -> Self {
        Self {
            status: 400,
            body: json!({"error": "unreadable_body", "message": message}),
        }
    }

    /// 404: no route matches and the config says unmatched requests are refused.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: 404,
            body: json!({
                "error": "no_route",
                "message": format!("no priced route matches {method} {path}"),
            }),
        }
    }

    /// 409: a request with the same `Idempotency-Key` is still in flight, or was retried
    /// too often.
    pub fn idempotency_in_progress(message: &str) -> Self {
        Self {
            status: 409,
            body: json!({"error": "idempotency_key_in_progress", "message": message}),
        }
    }

    /// 422: the `Idempotency-Key` was used before for a request with another price.
    pub fn idempotency_conflict() -> Self {
        Self {
            status: 422,
            body: json!({
                "error": "idempotency_key_reused",
                "message": "the Idempotency-Key header was used before for a different request",
            }),
        }
    }

    /// 503: the credit store failed and the route fails closed.
    pub fn store_unavailable(reason: &str) -> Self {
        Self {
            status: 503,
            body: json!({
                "error": "credit_store_unavailable",
                "message": format!("credits cannot be checked right now ({reason}); retry later"),
            }),
        }
    }

    /// 500: the gateway itself is at fault (a bug or an inconsistent config), not the
    /// client nor the store; retrying does not help.
    pub fn internal_error(message: &str) -> Self {
        Self {
            status: 500,
            body: json!({"error": "internal_error", "message": message}),
        }
    }

    /// Writes the refusal to the client, with the request id in body and header.
    pub async fn send(self, session: &mut Session, request_id: &str) -> pingora::Result<()> {
        let mut body = self.body;
        if let Value::Object(map) = &mut body {
            map.insert("request_id".into(), Value::String(request_id.to_string()));
        }
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut header = ResponseHeader::build(self.status, Some(4))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", bytes.len().to_string())?;
        header.insert_header(HEADER_REQUEST_ID, request_id)?;
        header.insert_header("cache-control", "no-store")?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(bytes), true).await
    }
}

/// What the response headers say about the charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The credit type charged.
    pub credit_type: String,
    /// Credits charged (for routes settled from the response, what was reserved).
    pub charged: u64,
    /// Credits of the type left after the reservation, when known.
    pub remaining: Option<i64>,
}

impl Charge {
    /// Nothing charged: a free request, or an idempotent replay of one already charged.
    pub fn nothing(credit_type: &str) -> Self {
        Self {
            credit_type: credit_type.to_string(),
            charged: 0,
            remaining: None,
        }
    }

    /// Adds the charge headers to a response.
    pub fn insert_headers(&self, response: &mut ResponseHeader) -> pingora::Result<()> {
        response.insert_header(HEADER_CHARGED, self.charged.to_string())?;
        response.insert_header(HEADER_CREDIT_TYPE, self.credit_type.as_str())?;
        if let Some(remaining) = self.remaining {
            response.insert_header(HEADER_REMAINING, remaining.to_string())?;
        }
        Ok(())
    }
}
