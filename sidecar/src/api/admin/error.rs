//! The admin API's error responses: a status and a JSON body naming the error code, the
//! field (request field, path parameter or header) at fault and a message for people.

use axum::http::StatusCode;
use serde_json::json;

/// An error answer of the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`invalid_field`, `forbidden`, …).
    pub code: &'static str,
    /// The request field, path parameter or header at fault, if one.
    pub field: Option<String>,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// A 400 naming the bad field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some(field),
            message,
        )
    }

    /// Any error.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// A 503: the ledger or the credit store failed; nothing was written by this call.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            format!("{what}: {e}"),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let v = json!({"error": self.code, "field": self.field, "message": self.message});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
    }
}
