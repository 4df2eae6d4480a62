//! The admin API: credit operations over HTTP on their own listener (`run --admin-listen`),
//! for support, sales, finance and the product's billing backend, plus fleet control
//! ([`crate::api::control`]) and usage events ([`crate::api::usage_events`]). Every call needs a
//! bearer token ([`auth`]); every mutating credit operation needs an `Idempotency-Key`
//! ([`idempotency`]) and records its actor. Fleet control changes record the token's name
//! as their actor and are set-to-a-value (a repeat changes nothing but adds an audit
//! entry); usage events carry an idempotency key per event, so neither takes the header.
//! Each route is declared once, in [`ROUTES`]: method, path, roles and handler. The axum
//! router and the role check in front of every handler are built from that table, and a
//! test holds `sidecar/openapi.json` against it.
//!
//! This module only declares and wires routes; the handlers are in [`handlers`], the
//! rules in [`grants`], [`customers`], [`reads`], [`alerts`], [`schedule`],
//! [`sessions`] and [`dead_letters`].

pub mod alerts;
pub mod auth;
pub mod customers;
pub mod day_limit;
pub mod dead_letters;
pub mod error;
pub mod fields;
pub mod grants;
pub mod handlers;
pub mod idempotency;
pub mod key_sync;
pub mod reads;
pub mod schedule;
pub mod sessions;
pub mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post, put};
use tokio::sync::watch;

use self::auth::{Role, require_roles};
use self::handlers as h;
use self::state::AdminState;
use crate::api::usage_events::MAX_REQUEST_BYTES as USAGE_EVENTS_BODY_MAX_BYTES;

/// Largest request body the admin API reads, bytes: admin calls are small JSON objects.
pub const ADMIN_BODY_MAX_BYTES: usize = 64 * 1024;

/// Every role.
const ALL: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
const ADMIN_BILLING: &[Role] = &[Role::Admin, Role::Billing];
const ADMIN_BILLING_SUPPORT: &[Role] = &[Role::Admin, Role::Billing, Role::Support];
const ADMIN_SUPPORT: &[Role] = &[Role::Admin, Role::Support];
const GRANTERS: &[Role] = &[Role::Admin, Role::Billing, Role::Support, Role::Sales];
/// Who may read the fleet's control state, audit log and gateways: the people who operate
/// or watch it. Not billing or sales, whose work is credits, not the fleet.
const CONTROL_READERS: &[Role] = &[Role::Admin, Role::Support, Role::Readonly];

/// One admin route, declared once: what the router serves, who may call it and what
/// `sidecar/openapi.json` must document are all read from here.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{param}` segments (axum syntax, as in the OpenAPI file).
    pub path: &'static str,
    /// Roles allowed (a grant's source narrows this further).
    pub roles: &'static [Role],
    /// Largest request body read, bytes.
    pub body_max_bytes: usize,
    /// The handler, served for `method` only (another method is a 405).
    pub handler: fn() -> MethodRouter<Arc<AdminState>>,
}

/// Declares a [`Route`]: `route!(METHOD "path", roles, handler)`, with an optional body
/// limit in bytes after the handler (default [`ADMIN_BODY_MAX_BYTES`]). The method is
/// written once: it picks both [`Route::method`] and the axum method router.
macro_rules! route {
    ($method:ident $path:literal, $roles:expr, $handler:path) => {
        route!($method $path, $roles, $handler, ADMIN_BODY_MAX_BYTES)
    };
    (GET $path:literal, $roles:expr, $handler:path, $body:expr) => {
        Route { method: Method::GET, path: $path, roles: $roles, body_max_bytes: $body,
                handler: || get($handler) }
    };
    (POST $path:literal, $roles:expr, $handler:path, $body:expr) => {
        Route { method: Method::POST, path: $path, roles: $roles, body_max_bytes: $body,
                handler: || post($handler) }
    };
    (PUT $path:literal, $roles:expr, $handler:path, $body:expr) => {
        Route { method: Method::PUT, path: $path, roles: $roles, body_max_bytes: $body,
                handler: || put($handler) }
    };
}

/// Every admin route: method, path, who may call it, and its handler.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route!(GET  "/v1/admin/whoami", ALL, h::whoami),
    route!(GET  "/v1/admin/bundles", ALL, h::bundles),
    route!(POST "/v1/admin/customers", ADMIN_BILLING, h::create_customer),
    route!(GET  "/v1/admin/customers/{customer}", ALL, h::get_customer),
    route!(POST "/v1/admin/customers/{customer}/sessions", ADMIN_BILLING, h::mint_session),
    route!(PUT  "/v1/admin/customers/{customer}/plan", ADMIN_BILLING, h::set_plan),
    route!(POST "/v1/admin/customers/{customer}/api-keys", ADMIN_BILLING, h::create_api_key),
    route!(POST "/v1/admin/customers/{customer}/api-keys/{key_id}/revoke", ADMIN_BILLING_SUPPORT,
           h::revoke_api_key),
    route!(POST "/v1/admin/customers/{customer}/grants", GRANTERS, h::create_grant),
    route!(POST "/v1/admin/customers/{customer}/grants/{grant_id}/void", ADMIN_SUPPORT,
           h::void_grant),
    route!(GET  "/v1/admin/redis-rebuilds", ALL, h::owed_rebuilds),
    route!(POST "/v1/admin/customers/{customer}/purchases", ADMIN_BILLING, h::purchase),
    route!(GET  "/v1/admin/customers/{customer}/balance", ALL, h::balance),
    route!(GET  "/v1/admin/customers/{customer}/ledger", ALL, h::ledger),
    route!(PUT  "/v1/admin/customers/{customer}/alerts", ADMIN_BILLING_SUPPORT, h::set_alerts),
    route!(GET  "/v1/admin/webhook-deliveries", ALL, h::deliveries),
    route!(GET  "/v1/admin/grant-approvals", ALL, h::approvals),
    route!(POST "/v1/admin/grant-approvals/{request_id}/approve", ADMIN, h::approve),
    route!(GET  "/v1/control", CONTROL_READERS, h::control_show),
    route!(POST "/v1/control/mode", ADMIN, h::control_mode),
    route!(POST "/v1/control/rollout", ADMIN, h::control_rollout),
    route!(GET  "/v1/control/audit", CONTROL_READERS, h::control_audit),
    route!(GET  "/v1/fleet/gateways", CONTROL_READERS, h::fleet_gateways),
    route!(GET  "/v1/admin/dead-letters", CONTROL_READERS, h::dead_letters),
    route!(GET  "/v1/admin/dead-letters/{id}", CONTROL_READERS, h::dead_letter),
    route!(POST "/v1/admin/dead-letters/{id}/replay", ADMIN, h::replay_dead_letter),
    route!(POST "/v1/admin/dead-letters/{id}/discard", ADMIN, h::discard_dead_letter),
    // A batch of events is bigger than an admin call.
    route!(POST "/v1/usage-events", ADMIN_BILLING, h::usage_events, USAGE_EVENTS_BODY_MAX_BYTES),
];

/// The admin router: every route of [`ROUTES`] behind its roles and body limit, and the
/// call counter around them all.
pub fn router(state: Arc<AdminState>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let handler = require_roles((route.handler)(), state.auth.clone(), route.roles)
            .layer(DefaultBodyLimit::max(route.body_max_bytes));
        router = router.route(route.path, handler);
    }
    // An explicit fallback, so an unknown path is counted (as `unmatched`) even after the
    // console's routes are merged in: a merged router's default fallback is not layered.
    router
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_calls,
        ))
        .with_state(state)
}

/// Counts every answered call by route template, method and status class, and the
/// authentication failures (401: missing, unknown or revoked token; 429: locked out).
async fn count_calls(
    State(st): State<Arc<AdminState>>,
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let class = match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    st.metrics
        .calls
        .with_label_values(&[route.as_str(), method.as_str(), class])
        .inc();
    match status {
        StatusCode::UNAUTHORIZED => st
            .metrics
            .auth_failures
            .with_label_values(&["unauthorized"])
            .inc(),
        StatusCode::TOO_MANY_REQUESTS => st
            .metrics
            .auth_failures
            .with_label_values(&["rate_limited"])
            .inc(),
        _ => {}
    }
    response
}

/// Serves the admin API, and the routes of `beside` (the support console) on the same
/// listener, until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    beside: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        router(state)
            .merge(beside)
            .into_make_service_with_connect_info::<SocketAddr>(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_declared_once() {
        let mut seen = BTreeSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method.as_str(), route.path)),
                "{} {} is declared twice",
                route.method,
                route.path
            );
        }
    }
}
