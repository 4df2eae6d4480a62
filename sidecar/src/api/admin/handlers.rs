//! The admin API's axum handlers: each takes the request apart, calls the rule that does
//! the work ([`super::customers`], [`super::grants`], [`super::reads`], [`super::alerts`],
//! fleet control, usage events) and turns its reply into a response.
//!
//! Nothing here checks roles: the route table in the parent module puts each route behind
//! its roles before a handler runs, and hands the authenticated [`Caller`] on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::idempotency::{self, Reply};
use super::state::AdminState;
use super::{alerts, customers, dead_letters, grants, reads, sessions};
use crate::api::{control, usage_events};
use crate::ledger::now_ms;

type St = State<Arc<AdminState>>;

/// A mutating call as its `Idempotency-Key` fingerprints it: method, path, headers and
/// body. Extracted last, since it reads the body.
pub struct Call {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Call {
    type Rejection = BytesRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state).await?;
        Ok(Call {
            method,
            path,
            headers,
            body,
        })
    }
}

fn json_response(reply: Reply) -> Response {
    (
        reply.0,
        [(header::CONTENT_TYPE, "application/json")],
        reply.1,
    )
        .into_response()
}

/// Runs `op` once per `Idempotency-Key` of the caller; a repeat gets the first reply.
async fn once<F, Fut>(st: &AdminState, caller: &Caller, call: &Call, op: F) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let fingerprint = [
        call.method.as_str().as_bytes(),
        call.path.as_bytes(),
        &call.body,
    ];
    let reply = idempotency::once(
        &st.db,
        &caller.name,
        &call.headers,
        &fingerprint,
        now_ms(),
        op,
    )
    .await;
    json_response(reply)
}

/// `GET /v1/admin/whoami`: the token's name and role.
pub async fn whoami(caller: Caller) -> Response {
    json_response(idempotency::reply(
        StatusCode::OK,
        &serde_json::json!({"name": caller.name, "role": caller.role.as_str()}),
    ))
}

/// `POST /v1/admin/customers/{customer}/sessions`: a customer session token. Not a
/// credit operation (it changes nothing and stores nothing), so no `Idempotency-Key`.
pub async fn mint_session(State(st): St, Path(customer): Path<String>, body: Bytes) -> Response {
    json_response(sessions::mint(&st, &customer, &body).await)
}

/// `GET /v1/admin/bundles`: the configured top-up bundles.
pub async fn bundles(State(st): St) -> Response {
    json_response(reads::bundles(&st))
}

/// `POST /v1/admin/customers`: creates a customer.
pub async fn create_customer(State(st): St, caller: Caller, call: Call) -> Response {
    once(&st, &caller, &call, |_| {
        customers::create(&st, &caller, &call.body)
    })
    .await
}

/// `GET /v1/admin/customers/{customer}`: its plan and API keys.
pub async fn get_customer(State(st): St, Path(customer): Path<String>) -> Response {
    json_response(customers::get(&st, &customer).await)
}

/// `PUT /v1/admin/customers/{customer}/plan`: changes its plan.
pub async fn set_plan(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, |_| {
        customers::set_plan(&st, &caller, &customer, &call.body)
    })
    .await
}

/// `POST /v1/admin/customers/{customer}/api-keys`: issues an API key.
pub async fn create_api_key(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    call: Call,
) -> Response {
    // The answer shows the key once; the copy kept for replays has no plaintext.
    let fingerprint = [
        call.method.as_str().as_bytes(),
        call.path.as_bytes(),
        &call.body,
    ];
    let reply = idempotency::once_kept_as(
        &st.db,
        &caller.name,
        &call.headers,
        &fingerprint,
        now_ms(),
        |_| customers::create_api_key(&st, &caller, &customer, &call.body),
        customers::without_plaintext_key,
    )
    .await;
    json_response(reply)
}

/// `POST /v1/admin/customers/{customer}/api-keys/{key_id}/revoke`: revokes one.
pub async fn revoke_api_key(
    State(st): St,
    caller: Caller,
    Path((customer, key_id)): Path<(String, String)>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, |_| {
        customers::revoke_api_key(&st, &caller, &customer, &key_id, &call.body)
    })
    .await
}

/// `POST /v1/admin/customers/{customer}/grants`: grants credits (or files the grant
/// for approval), then refreshes the pending-approvals gauge.
pub async fn create_grant(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    call: Call,
) -> Response {
    let answer =
        once(&st, &caller, &call, {
            let (st, caller, customer, body) = (&*st, &caller, &customer, &call.body);
            move |call_id: String| async move {
                grants::grant(st, caller, customer, body, &call_id).await
            }
        })
        .await;
    grants::refresh_pending_gauge(&st).await;
    answer
}

/// `POST /v1/admin/customers/{customer}/grants/{grant_id}/void`: voids a grant.
pub async fn void_grant(
    State(st): St,
    caller: Caller,
    Path((customer, grant_id)): Path<(String, String)>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, |_| {
        grants::void(&st, &caller, &customer, &grant_id, &call.body)
    })
    .await
}

/// `GET /v1/admin/redis-rebuilds`: the Redis rebuilds owed after grant voids.
pub async fn owed_rebuilds(State(st): St) -> Response {
    json_response(grants::owed_rebuilds(&st).await)
}

/// `POST /v1/admin/customers/{customer}/purchases`: records a bought bundle.
pub async fn purchase(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, {
        let (st, caller, customer, body) = (&*st, &caller, &customer, &call.body);
        move |call_id: String| async move {
            grants::purchase(st, caller, customer, body, &call_id).await
        }
    })
    .await
}

/// `GET /v1/admin/customers/{customer}/balance`: the balance, from the credit store.
pub async fn balance(State(st): St, Path(customer): Path<String>) -> Response {
    json_response(reads::balance(&st, &customer).await)
}

/// `GET /v1/admin/customers/{customer}/ledger`: a page of its ledger entries.
pub async fn ledger(
    State(st): St,
    Path(customer): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    json_response(reads::ledger(&st, &customer, &q).await)
}

/// `GET /v1/admin/grant-approvals`: grants waiting for approval.
pub async fn approvals(State(st): St, Query(q): Query<Vec<(String, String)>>) -> Response {
    json_response(grants::list_approvals(&st, &q).await)
}

/// `POST /v1/admin/grant-approvals/{request_id}/approve`: approves one, then
/// refreshes the pending-approvals gauge.
pub async fn approve(
    State(st): St,
    caller: Caller,
    Path(request_id): Path<String>,
    call: Call,
) -> Response {
    let answer = once(&st, &caller, &call, |_| {
        grants::approve(&st, &caller, &request_id)
    })
    .await;
    grants::refresh_pending_gauge(&st).await;
    answer
}

/// `PUT /v1/admin/customers/{customer}/alerts`: sets its balance alerts.
pub async fn set_alerts(
    State(st): St,
    caller: Caller,
    Path(customer): Path<String>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, {
        let (st, caller, customer, body) = (&*st, &caller, &customer, &call.body);
        move |call_id: String| async move {
            alerts::set(st, caller, customer, body, &call_id).await
        }
    })
    .await
}

/// `GET /v1/admin/webhook-deliveries`: the webhook deliveries.
pub async fn deliveries(State(st): St, Query(q): Query<Vec<(String, String)>>) -> Response {
    json_response(alerts::deliveries(&st, &q).await)
}

/// `GET /v1/control`: the control state, config version and gateways.
pub async fn control_show(State(st): St) -> Response {
    control::show(&st.sidecar).await
}

/// `POST /v1/control/mode`: sets or clears a mode override; the token is the actor.
pub async fn control_mode(State(st): St, caller: Caller, body: Bytes) -> Response {
    control::set_mode(&st.sidecar, &caller.name, &body).await
}

/// `POST /v1/control/rollout`: sets or clears the rollout; the token is the actor.
pub async fn control_rollout(State(st): St, caller: Caller, body: Bytes) -> Response {
    control::set_rollout(&st.sidecar, &caller.name, &body).await
}

/// `GET /v1/control/audit`: the newest control changes first.
pub async fn control_audit(State(st): St, Query(q): Query<control::LimitQuery>) -> Response {
    control::audit(&st.sidecar, q).await
}

/// `GET /v1/fleet/gateways`: gateways with a live heartbeat.
pub async fn fleet_gateways(State(st): St) -> Response {
    control::gateways(&st.sidecar).await
}

/// `GET /v1/admin/dead-letters`: stream entries the ledger could not apply.
pub async fn dead_letters(State(st): St, Query(q): Query<Vec<(String, String)>>) -> Response {
    json_response(dead_letters::list(&st, &q).await)
}

/// `GET /v1/admin/dead-letters/{id}`: one dead letter.
pub async fn dead_letter(State(st): St, Path(id): Path<String>) -> Response {
    json_response(dead_letters::show(&st, &id).await)
}

/// `POST /v1/admin/dead-letters/{id}/replay`: re-applies it; the token is the actor.
pub async fn replay_dead_letter(
    State(st): St,
    caller: Caller,
    Path(id): Path<String>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, |_| {
        dead_letters::act(&st, &caller, &id, &call.body, false)
    })
    .await
}

/// `POST /v1/admin/dead-letters/{id}/discard`: marks it resolved; the token is the actor.
pub async fn discard_dead_letter(
    State(st): St,
    caller: Caller,
    Path(id): Path<String>,
    call: Call,
) -> Response {
    once(&st, &caller, &call, |_| {
        dead_letters::act(&st, &caller, &id, &call.body, true)
    })
    .await
}

/// `POST /v1/usage-events`: meters a batch of usage events.
pub async fn usage_events(State(st): St, body: Bytes) -> Response {
    usage_events::routes::ingest(&st.sidecar, &body).await
}
