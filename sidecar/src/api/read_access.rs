//! Who may read customer data on the read listener: staff with an admin-API token (any
//! role), or one customer with a customer session token ([`super::customer_session`]).
//!
//! [`Reader`] is an axum extractor over [`ReadState`]. A session comes in the
//! `Authorization: Bearer` header or, for pages a browser opens (an iframe cannot set
//! headers), in the `session` query parameter; admin tokens only ever in the header, so
//! they never land in a URL. This module decides who is reading and whose data they may
//! see; it reads no customer data itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::admin::auth::{AuthState, Caller};
use super::admin::error::ApiError;
use super::customer_page::settings::PageSettings;
use super::customer_session::{CustomerSession, SessionKey, is_session_token};
use crate::jobs::daemon::Sidecar;
use crate::ledger::AdminDb;
use crate::ledger::now_ms;

/// What the read listener's handlers share.
pub struct ReadState {
    /// The sidecar: ledger, credit store, pricing.
    pub sidecar: Arc<Sidecar>,
    /// Admin token checks (the admin tables of the ledger database).
    pub auth: AuthState,
    /// The admin tables: the customers' alert settings the page shows.
    pub db: AdminDb,
    /// The session signing key; `None`: customer sessions are off, staff tokens only.
    pub sessions: Option<SessionKey>,
    /// What the customer page shows beyond the customer's data: bundles, checkout URL,
    /// auto-recharge limits.
    pub page: PageSettings,
}

impl FromRef<Arc<ReadState>> for AuthState {
    fn from_ref(state: &Arc<ReadState>) -> AuthState {
        state.auth.clone()
    }
}

/// Who is reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    /// An admin-API token of any role: reads every customer.
    Staff(Caller),
    /// A customer session: reads that customer only.
    Customer(CustomerSession),
}

/// The error of a reader asking for another customer's data (or for data that is not any
/// one customer's, such as revenue).
fn not_yours(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        Some("Authorization"),
        format!("a customer session reads only its own customer's data, not {what}"),
    )
}

impl Reader {
    /// A 403 unless this reader may read `customer`'s data.
    pub fn may_read(&self, customer: &str) -> Result<(), ApiError> {
        match self {
            Reader::Staff(_) => Ok(()),
            Reader::Customer(s) if s.customer == customer => Ok(()),
            Reader::Customer(_) => Err(not_yours("another customer's")),
        }
    }

    /// A 403 for a customer session: the data is not one customer's (revenue, reconcile).
    pub fn staff_only(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Reader::Staff(_) => Ok(()),
            Reader::Customer(_) => Err(not_yours(what)),
        }
    }

    /// The customer a session is limited to; `None` for staff.
    pub fn own_customer(&self) -> Option<&str> {
        match self {
            Reader::Staff(_) => None,
            Reader::Customer(s) => Some(&s.customer),
        }
    }
}

/// The token a request presents: the `Authorization: Bearer` header, else (session tokens
/// only) the `session` query parameter.
fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(header) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(header.strip_prefix("Bearer ").unwrap_or(header).to_string());
    }
    url_pairs(&parts.uri)
        .into_iter()
        .find(|(k, _)| k == "session")
        .map(|(_, v)| v)
        .filter(|v| is_session_token(v))
}

/// The query string's pairs, percent-decoded (none when it does not parse).
pub fn url_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Checks `token` as a session (by its prefix) or as an admin token.
async fn check_token(st: &ReadState, ip: IpAddr, token: &str) -> Result<Reader, ApiError> {
    if is_session_token(token) {
        let Some(key) = &st.sessions else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "sessions_not_configured",
                Some("Authorization"),
                "this sidecar has no session signing key (--session-key-file), so it accepts no customer sessions",
            ));
        };
        return key
            .verify(token, now_ms())
            .map(Reader::Customer)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    e.code(),
                    Some("Authorization"),
                    e.message(),
                )
            });
    }
    st.auth
        .authenticate(ip, Some(&format!("Bearer {token}")))
        .await
        .map(Reader::Staff)
}

impl FromRequestParts<Arc<ReadState>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ReadState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = presented_token(parts) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("Authorization"),
                "customer data needs a token: send Authorization: Bearer <admin token or customer \
                 session token> (pages: ?session=<customer session token>)",
            ));
        };
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        check_token(state, ip, token.trim()).await
    }
}
