//! Minting customer session tokens (`POST /v1/admin/customers/{customer}/sessions`): the
//! product's backend asks for one per signed-in visit and hands it to the customer's
//! browser, which opens the customer page or reads the customer-data routes with it.
//! Signing and checking are [`crate::api::customer_session`]'s; this module only decides
//! whether a session may be minted and for how long. Nothing is stored.

use axum::http::StatusCode;
use serde_json::json;

use super::customers::plan_of;
use super::error::ApiError;
use super::fields::Body;
use super::idempotency::{Reply, reply};
use super::state::AdminState;
use crate::api::customer_page::format::url_encode;
use crate::api::customer_session::{SESSION_TTL_DEFAULT_SECS, SESSION_TTL_MAX_SECS};
use crate::ledger::now_ms;

/// `POST /v1/admin/customers/{customer}/sessions` `{ttl_seconds?}`: a session token for
/// the customer, valid `ttl_seconds` (default [`SESSION_TTL_DEFAULT_SECS`], at most
/// [`SESSION_TTL_MAX_SECS`]), and the customer page's path with it.
pub async fn mint(st: &AdminState, customer: &str, body: &[u8]) -> Reply {
    let r: Result<Reply, ApiError> = async {
        let mut b = Body::parse(body)?;
        let ttl = b
            .opt_u64("ttl_seconds")?
            .unwrap_or(SESSION_TTL_DEFAULT_SECS);
        b.finish()?;
        if !(1..=SESSION_TTL_MAX_SECS).contains(&ttl) {
            return Err(ApiError::field(
                "ttl_seconds",
                format!("must be from 1 to {SESSION_TTL_MAX_SECS} seconds"),
            ));
        }
        let Some(key) = &st.sessions else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "sessions_not_configured",
                None,
                "customer sessions are off: start the sidecar with --session-key-file \
                 (or CREDITGATE_SESSION_KEY)",
            ));
        };
        plan_of(st, customer).await?;
        let now = now_ms();
        let token = key.mint(customer, now, ttl);
        Ok(reply(
            StatusCode::CREATED,
            &json!({"customer": customer, "token": token, "issued_at_ms": now,
                    "expires_at_ms": now + ttl * 1000,
                    "page_path": format!("/customer/?session={}", url_encode(&token))}),
        ))
    }
    .await;
    r.unwrap_or_else(Reply::from)
}
