//! The admin API: credit operations over HTTP on their own listener (`run --admin-listen`),
//! for support, sales, finance and the product's billing backend, plus fleet control
//! ([`crate::api::control`]) and usage events ([`crate::api::usage_events`]). Every call needs a
//! bearer token ([`auth`]); every mutating credit operation needs an `Idempotency-Key`
//! ([`idempotency`]) and records its actor. Fleet control changes record the token's name
//! as their actor and are set-to-a-value (a repeat changes nothing but adds an audit
//! entry); usage events carry an idempotency key per event, so neither takes the header.
//! The routes and their roles are in [`ROUTES`]; `sidecar/openapi.json` documents them
//! and a test keeps the two in step.
//!
//! This module wires routes to handlers; the rules live in [`grants`], [`customers`],
//! [`reads`] and [`schedule`].

pub mod alerts;
pub mod auth;
pub mod customers;
pub mod day_limit;
pub mod db;
pub mod error;
pub mod fields;
pub mod grants;
pub mod idempotency;
pub mod key_sync;
pub mod reads;
pub mod schedule;
pub mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use tokio::sync::watch;

use self::auth::{Caller, Role};
use self::idempotency::Reply;
use self::state::AdminState;
use crate::ledger::now_ms;

/// Largest request body the admin API reads, bytes: admin calls are small JSON objects.
pub const ADMIN_BODY_MAX_BYTES: usize = 64 * 1024;

type St = State<Arc<AdminState>>;

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

/// One route: method, path (axum syntax, as in the OpenAPI file) and the roles that may
/// call it.
pub struct RouteSpec {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{param}` segments.
    pub path: &'static str,
    /// Roles allowed (a grant's source narrows this further).
    pub roles: &'static [Role],
}

/// Every admin route and who may call it.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/whoami",
        roles: ALL,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/bundles",
        roles: ALL,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers",
        roles: ADMIN_BILLING,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/customers/{customer}",
        roles: ALL,
    },
    RouteSpec {
        method: Method::PUT,
        path: "/v1/admin/customers/{customer}/plan",
        roles: ADMIN_BILLING,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers/{customer}/api-keys",
        roles: ADMIN_BILLING,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers/{customer}/api-keys/{key_id}/revoke",
        roles: ADMIN_BILLING_SUPPORT,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers/{customer}/grants",
        roles: GRANTERS,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers/{customer}/grants/{grant_id}/void",
        roles: ADMIN_SUPPORT,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/customers/{customer}/purchases",
        roles: ADMIN_BILLING,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/customers/{customer}/balance",
        roles: ALL,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/customers/{customer}/ledger",
        roles: ALL,
    },
    RouteSpec {
        method: Method::PUT,
        path: "/v1/admin/customers/{customer}/alerts",
        roles: ADMIN_BILLING_SUPPORT,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/webhook-deliveries",
        roles: ALL,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/admin/grant-approvals",
        roles: ALL,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/admin/grant-approvals/{request_id}/approve",
        roles: ADMIN,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/control",
        roles: CONTROL_READERS,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/control/mode",
        roles: ADMIN,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/control/rollout",
        roles: ADMIN,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/control/audit",
        roles: CONTROL_READERS,
    },
    RouteSpec {
        method: Method::GET,
        path: "/v1/fleet/gateways",
        roles: CONTROL_READERS,
    },
    RouteSpec {
        method: Method::POST,
        path: "/v1/usage-events",
        roles: ADMIN_BILLING,
    },
];

/// The roles of a route in [`ROUTES`].
fn roles_of(method: Method, path: &str) -> &'static [Role] {
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .map(|r| r.roles)
        .unwrap_or(ADMIN)
}

fn json_response(reply: Reply) -> Response {
    (
        reply.0,
        [(header::CONTENT_TYPE, "application/json")],
        reply.1,
    )
        .into_response()
}

/// Checks the role, then runs `op` once per `Idempotency-Key`.
async fn mutate<F, Fut>(
    st: &AdminState,
    caller: &Caller,
    method: Method,
    route: &'static str,
    (uri, headers, body): (&Uri, &HeaderMap, &Bytes),
    op: F,
) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    if let Err(e) = caller.require(roles_of(method.clone(), route)) {
        return e.into_response();
    }
    let reply = idempotency::once(
        &st.db,
        &caller.name,
        headers,
        &[method.as_str().as_bytes(), uri.path().as_bytes(), body],
        now_ms(),
        op,
    )
    .await;
    json_response(reply)
}

fn read(caller: &Caller, route: &'static str, reply: impl FnOnce() -> Reply) -> Response {
    match caller.require(roles_of(Method::GET, route)) {
        Ok(()) => json_response(reply()),
        Err(e) => e.into_response(),
    }
}

async fn whoami(caller: Caller) -> Response {
    read(&caller, "/v1/admin/whoami", || {
        idempotency::reply(
            StatusCode::OK,
            &serde_json::json!({"name": caller.name, "role": caller.role.as_str()}),
        )
    })
}

async fn bundles(State(st): St, caller: Caller) -> Response {
    read(&caller, "/v1/admin/bundles", || reads::bundles(&st))
}

async fn create_customer(
    State(st): St,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers",
        (&uri, &headers, &body),
        |_| customers::create(&st, &caller, &body),
    )
    .await
}

async fn get_customer(State(st): St, caller: Caller, Path(customer): Path<String>) -> Response {
    if let Err(e) = caller.require(roles_of(Method::GET, "/v1/admin/customers/{customer}")) {
        return e.into_response();
    }
    json_response(customers::get(&st, &customer).await)
}

async fn set_plan(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::PUT,
        "/v1/admin/customers/{customer}/plan",
        (&uri, &headers, &body),
        |_| customers::set_plan(&st, &caller, &customer, &body),
    )
    .await
}

async fn create_api_key(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers/{customer}/api-keys",
        (&uri, &headers, &body),
        |_| customers::create_api_key(&st, &caller, &customer, &body),
    )
    .await
}

async fn revoke_api_key(
    State(st): St,
    caller: Caller,
    Path((customer, key_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers/{customer}/api-keys/{key_id}/revoke",
        (&uri, &headers, &body),
        |_| customers::revoke_api_key(&st, &caller, &customer, &key_id, &body),
    )
    .await
}

async fn create_grant(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers/{customer}/grants",
        (&uri, &headers, &body),
        {
            let (st, caller, customer, body) = (&*st, &caller, &customer, &body);
            move |call_id: String| async move {
                grants::grant(st, caller, customer, body, &call_id).await
            }
        },
    )
    .await;
    grants::refresh_pending_gauge(&st).await;
    answer
}

async fn void_grant(
    State(st): St,
    caller: Caller,
    Path((customer, grant_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers/{customer}/grants/{grant_id}/void",
        (&uri, &headers, &body),
        |_| grants::void(&st, &caller, &customer, &grant_id, &body),
    )
    .await
}

async fn purchase(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/customers/{customer}/purchases",
        (&uri, &headers, &body),
        {
            let (st, caller, customer, body) = (&*st, &caller, &customer, &body);
            move |call_id: String| async move {
                grants::purchase(st, caller, customer, body, &call_id).await
            }
        },
    )
    .await
}

async fn balance(State(st): St, caller: Caller, Path(customer): Path<String>) -> Response {
    if let Err(e) = caller.require(roles_of(
        Method::GET,
        "/v1/admin/customers/{customer}/balance",
    )) {
        return e.into_response();
    }
    json_response(reads::balance(&st, &customer).await)
}

async fn ledger(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(e) = caller.require(roles_of(
        Method::GET,
        "/v1/admin/customers/{customer}/ledger",
    )) {
        return e.into_response();
    }
    json_response(reads::ledger(&st, &customer, &q).await)
}

async fn approvals(
    State(st): St,
    caller: Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(e) = caller.require(roles_of(Method::GET, "/v1/admin/grant-approvals")) {
        return e.into_response();
    }
    json_response(grants::list_approvals(&st, &q).await)
}

async fn approve(
    State(st): St,
    caller: Caller,
    Path(request_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = mutate(
        &st,
        &caller,
        Method::POST,
        "/v1/admin/grant-approvals/{request_id}/approve",
        (&uri, &headers, &body),
        |_| grants::approve(&st, &caller, &request_id),
    )
    .await;
    grants::refresh_pending_gauge(&st).await;
    answer
}

async fn set_alerts(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mutate(
        &st,
        &caller,
        Method::PUT,
        "/v1/admin/customers/{customer}/alerts",
        (&uri, &headers, &body),
        |_| alerts::set(&st, &caller, &customer, &body),
    )
    .await
}

async fn deliveries(
    State(st): St,
    caller: Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(e) = caller.require(roles_of(Method::GET, "/v1/admin/webhook-deliveries")) {
        return e.into_response();
    }
    json_response(alerts::deliveries(&st, &q).await)
}

/// A 403 unless `caller` may call `method route`; else `handler`'s answer.
async fn gated<Fut>(caller: &Caller, method: Method, route: &'static str, handler: Fut) -> Response
where
    Fut: std::future::Future<Output = Response>,
{
    match caller.require(roles_of(method, route)) {
        Ok(()) => handler.await,
        Err(e) => e.into_response(),
    }
}

async fn control_show(State(st): St, caller: Caller) -> Response {
    gated(
        &caller,
        Method::GET,
        "/v1/control",
        crate::api::control::show(&st.sidecar),
    )
    .await
}

async fn control_mode(State(st): St, caller: Caller, body: Bytes) -> Response {
    gated(
        &caller,
        Method::POST,
        "/v1/control/mode",
        crate::api::control::set_mode(&st.sidecar, &caller.name, &body),
    )
    .await
}

async fn control_rollout(State(st): St, caller: Caller, body: Bytes) -> Response {
    gated(
        &caller,
        Method::POST,
        "/v1/control/rollout",
        crate::api::control::set_rollout(&st.sidecar, &caller.name, &body),
    )
    .await
}

async fn control_audit(
    State(st): St,
    caller: Caller,
    Query(q): Query<crate::api::control::LimitQuery>,
) -> Response {
    gated(
        &caller,
        Method::GET,
        "/v1/control/audit",
        crate::api::control::audit(&st.sidecar, q),
    )
    .await
}

async fn fleet_gateways(State(st): St, caller: Caller) -> Response {
    gated(
        &caller,
        Method::GET,
        "/v1/fleet/gateways",
        crate::api::control::gateways(&st.sidecar),
    )
    .await
}

async fn usage_events(State(st): St, caller: Caller, body: Bytes) -> Response {
    gated(
        &caller,
        Method::POST,
        "/v1/usage-events",
        crate::api::usage_events::routes::ingest(&st.sidecar, &body),
    )
    .await
}

/// The handler of each route of [`ROUTES`], by path.
fn handlers() -> Vec<(&'static str, MethodRouter<Arc<AdminState>>)> {
    vec![
        ("/v1/admin/whoami", get(whoami)),
        ("/v1/admin/bundles", get(bundles)),
        ("/v1/admin/customers", post(create_customer)),
        ("/v1/admin/customers/{customer}", get(get_customer)),
        ("/v1/admin/customers/{customer}/plan", put(set_plan)),
        (
            "/v1/admin/customers/{customer}/api-keys",
            post(create_api_key),
        ),
        (
            "/v1/admin/customers/{customer}/api-keys/{key_id}/revoke",
            post(revoke_api_key),
        ),
        ("/v1/admin/customers/{customer}/grants", post(create_grant)),
        (
            "/v1/admin/customers/{customer}/grants/{grant_id}/void",
            post(void_grant),
        ),
        ("/v1/admin/customers/{customer}/purchases", post(purchase)),
        ("/v1/admin/customers/{customer}/balance", get(balance)),
        ("/v1/admin/customers/{customer}/ledger", get(ledger)),
        ("/v1/admin/customers/{customer}/alerts", put(set_alerts)),
        ("/v1/admin/webhook-deliveries", get(deliveries)),
        ("/v1/admin/grant-approvals", get(approvals)),
        (
            "/v1/admin/grant-approvals/{request_id}/approve",
            post(approve),
        ),
        ("/v1/control", get(control_show)),
        ("/v1/control/mode", post(control_mode)),
        ("/v1/control/rollout", post(control_rollout)),
        ("/v1/control/audit", get(control_audit)),
        ("/v1/fleet/gateways", get(fleet_gateways)),
        (
            "/v1/usage-events",
            // A batch of events is bigger than an admin call.
            post(usage_events).layer(axum::extract::DefaultBodyLimit::max(
                crate::api::usage_events::MAX_REQUEST_BYTES,
            )),
        ),
    ]
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let mut router = Router::new();
    for (path, handler) in handlers() {
        router = router.route(path, handler);
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_calls,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_MAX_BYTES))
        .with_state(state)
}

/// Counts every answered call by route template, method and status class, and the
/// authentication failures (401: missing, unknown or revoked token; 429: locked out).
async fn count_calls(
    State(st): St,
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

/// Serves the admin API until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler_and_every_handler_a_route() {
        let specs: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        let handled: Vec<&str> = handlers().iter().map(|(p, _)| *p).collect();
        assert_eq!(specs, handled);
    }
}
