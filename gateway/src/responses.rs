//! The gateway's own responses (400, 401, 402, 403, 404, 408, 409, 411, 413, 422, 500, 503):
//! JSON bodies with an error code a program can branch on and a message a person can read;
//! and the headers that tell the client what a proxied request was charged.

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
/// Response header: which uncharged replay (from 1) of an already charged request with the
/// same `Idempotency-Key` this response is.
pub const HEADER_REPLAY: &str = "x-creditgate-replay";

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

    /// 413: the request body is larger than the gateway reads to estimate the cost, and
    /// the route refuses such bodies (`estimate_unreadable = "refuse"`), or it came without
    /// a `content-length` and outgrew what the gateway can replay to the upstream.
    pub fn body_too_large(message: &str) -> Self {
        Self {
            status: 413,
            body: json!({"error": "request_body_too_large", "message": message}),
        }
    }

    /// 411: the request body came without a `content-length` and did not end in time for
    /// the estimate, and the route refuses such bodies.
    pub fn length_required(message: &str) -> Self {
        Self {
            status: 411,
            body: json!({"error": "length_required", "message": message}),
        }
    }

    /// 408: the request body announced by its `content-length` did not arrive in time for
    /// the estimate, and the route refuses such bodies.
    pub fn body_timeout(message: &str) -> Self {
        Self {
            status: 408,
            body: json!({"error": "request_body_timeout", "message": message}),
        }
    }

    /// 403: the route does not allow protocol upgrades (`upgrade = "refuse"`). Not 426,
    /// which asks the client to upgrade; not 400, the request is well-formed.
    pub fn upgrade_refused(route: &str, upgrade: &str) -> Self {
        Self {
            status: 403,
            body: json!({
                "error": "upgrade_refused",
                "message": format!(
                    "route {route:?} does not allow switching protocols (upgrade: {upgrade}); \
                     send the request without an upgrade header"
                ),
            }),
        }
    }

    /// 400: the request path is one servers disagree on, so the gateway cannot know what
    /// the upstream would serve (and charge) for it.
    pub fn invalid_path(path: &str, reason: &str) -> Self {
        Self {
            status: 400,
            body: json!({
                "error": "invalid_path",
                "message": format!("the request path {path:?} is refused: {reason}"),
                "path": path,
            }),
        }
    }

    /// 400: a `per_unit` route's unit count is not a whole number, or is given more than
    /// once with different values; `parameter` names the header or query parameter.
    pub fn invalid_units(error: &creditgate_config::UnitsError) -> Self {
        let (kind, name) = match &error.source {
            creditgate_config::UnitSource::Header(name) => ("header", name),
            creditgate_config::UnitSource::Query(name) => ("query", name),
        };
        Self {
            status: 400,
            body: json!({
                "error": "invalid_units",
                "message": error.to_string(),
                "parameter": name,
                "in": kind,
            }),
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

    /// 422: the `Idempotency-Key` was used before for another request (another method,
    /// path, query or body: another fingerprint), the request `original_request_id` when
    /// known. The upstream never sees this one.
    pub fn idempotency_key_reused(original_request_id: Option<&str>) -> Self {
        Self {
            status: 422,
            body: json!({
                "error": "idempotency_key_reused",
                "message": "the Idempotency-Key header was used before for a different request; use a new key for a new request",
                "original_request_id": original_request_id,
            }),
        }
    }

    /// 409: the request with this `Idempotency-Key` was charged (as `original_request_id`)
    /// and has been served again uncharged `replays` times, as often as its route allows
    /// within its replay window.
    pub fn idempotency_replays_exhausted(original_request_id: &str, replays: u32) -> Self {
        Self {
            status: 409,
            body: json!({
                "error": "idempotency_replays_exhausted",
                "message": format!(
                    "the request with this Idempotency-Key was charged as request \
                     {original_request_id} and replayed {replays} times since, all this route \
                     allows; send a new Idempotency-Key to run it again (charged)"
                ),
                "original_request_id": original_request_id,
                "replays": replays,
            }),
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

    /// 503: the API key is not one the gateway knows and the credit store that could
    /// tell cannot be asked; the same error code as [`Refusal::store_unavailable`], since
    /// the client should retry the same way.
    pub fn api_key_unverifiable(reason: &str) -> Self {
        Self {
            status: 503,
            body: json!({
                "error": "credit_store_unavailable",
                "message": format!("the API key cannot be checked right now ({reason}); retry later"),
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
