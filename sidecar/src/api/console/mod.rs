//! The support console: server-rendered HTML pages under `/console` on the admin API's
//! listener, for the admin API's roles. Log in with an admin token ([`session`]); find a
//! customer, see its balance, grants, ledger and a request's trail; grant credits, void a
//! grant, approve others' grants over a limit, set modes (admin); revenue for a period;
//! dead letters.
//!
//! It must not hold a business rule of its own: every change is a call to the admin API's
//! router as the logged-in caller ([`dispatch`]), so roles, limits, approvals, idempotency
//! and the audit are the admin API's. What it adds is the session, CSRF protection on every
//! change (a per-session token in each form, checked here before the call), and escaping
//! of everything it renders ([`html`]). Works without JavaScript; assets are embedded.

pub mod dispatch;
pub mod html;
pub mod pages;
pub mod session;
pub mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::{Map, Value, json};

use self::dispatch::call;
use self::html::{page, url_part};
use self::session::{ConsoleSessions, caller_of, cleared_cookie, is_loopback_host, session_cookie};
use self::state::{ConsoleState, Notice, Visit};
use crate::api::admin::state::AdminState;

type St = State<Arc<ConsoleState>>;
type Fields = Form<Vec<(String, String)>>;

/// The console's routes, to merge into the admin listener's router.
pub fn router(admin: Arc<AdminState>) -> Router {
    let state = Arc::new(ConsoleState {
        api: crate::api::admin::router(admin.clone()),
        admin,
        sessions: ConsoleSessions::default(),
    });
    Router::new()
        .route("/console", get(home))
        .route("/console/console.css", get(css))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/customers", get(find_customer))
        .route("/console/customers/{customer}", get(customer))
        .route("/console/customers/{customer}/grants", post(grant))
        .route("/console/customers/{customer}/void", post(void))
        .route("/console/approvals", get(approvals))
        .route("/console/approvals/{request_id}/approve", post(approve))
        .route("/console/requests", get(trail))
        .route("/console/revenue", get(revenue))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/modes", get(modes).post(set_mode))
        .with_state(state)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The logged-in visit of a request, or a redirect to the login page.
async fn visit(cs: &ConsoleState, headers: &HeaderMap) -> Result<Visit, Response> {
    let to_login = || Redirect::to("/console/login").into_response();
    let session = cs.sessions.get(headers).ok_or_else(to_login)?;
    match caller_of(&cs.admin.db, &session).await {
        Ok(Some(caller)) => Ok(Visit { session, caller }),
        Ok(None) => {
            cs.sessions.close(headers);
            Err(to_login())
        }
        Err(e) => Err(html(
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Unavailable",
                None,
                Some(Err(format!("reading admin tokens: {e}"))),
                "",
            ),
        )),
    }
}

/// A change's visit: logged in, and the form carries the session's CSRF token (403
/// otherwise, before anything is called). A cross-site `Origin` is refused too.
async fn change(
    cs: &ConsoleState,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<Visit, Response> {
    let v = visit(cs, headers).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let cross_site = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.split("://").nth(1) != Some(host));
    if cross_site || !ConsoleSessions::check_csrf(&v.session, field(form, "csrf")) {
        let message = "Refused: this form did not carry your session's CSRF token. Reload the page and try again.";
        return Err(html(
            StatusCode::FORBIDDEN,
            page("Refused", None, Some(Err(message.into())), ""),
        ));
    }
    Ok(v)
}

/// The `Idempotency-Key` of a change: the form's id, so a form sent twice changes once.
fn key_of(form: &[(String, String)]) -> String {
    format!("console-{}", field(form, "form_id").unwrap_or("none"))
}

/// A change form's POST to the admin API as the logged-in caller, under the form's
/// idempotency key (a resubmitted form is the same call).
async fn submit(
    cs: &ConsoleState,
    v: &Visit,
    path: &str,
    form: &[(String, String)],
    body: Option<&Value>,
) -> dispatch::Answer {
    call(
        &cs.api,
        &v.caller,
        Method::POST,
        path,
        Some(&key_of(form)),
        body,
    )
    .await
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::CSS,
    )
        .into_response()
}

async fn login_page() -> Response {
    html(StatusCode::OK, pages::login(None))
}

/// `POST /console/login`: checks the token like the admin API does (the same lockout per
/// address) and opens a session.
async fn login(
    State(cs): St,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Fields,
) -> Response {
    let ip = connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.0.ip());
    let bearer = format!(
        "Bearer {}",
        field(&form, "token").unwrap_or_default().trim()
    );
    match cs.admin.auth.authenticate(ip, Some(&bearer)).await {
        Ok(caller) => {
            let id = cs.sessions.open(&caller.name);
            let cookie = session_cookie(&id, !is_loopback_host(&headers));
            ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
        }
        Err(e) => html(StatusCode::UNAUTHORIZED, pages::login(Some(e.message))),
    }
}

async fn logout(State(cs): St, headers: HeaderMap, Form(form): Fields) -> Response {
    if let Err(r) = change(&cs, &headers, &form).await {
        return r;
    }
    cs.sessions.close(&headers);
    let cookie = cleared_cookie(!is_loopback_host(&headers));
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/console/login"),
    )
        .into_response()
}

async fn home(State(cs): St, headers: HeaderMap) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(StatusCode::OK, pages::home(&cs, &v, None).await),
        Err(r) => r,
    }
}

async fn find_customer(Query(q): Query<Vec<(String, String)>>) -> Response {
    let customer = field(&q, "customer").unwrap_or_default().trim();
    if customer.is_empty() {
        return Redirect::to("/console").into_response();
    }
    Redirect::to(&format!("/console/customers/{}", url_part(customer))).into_response()
}

async fn customer(State(cs): St, headers: HeaderMap, Path(customer): Path<String>) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(
            StatusCode::OK,
            pages::customer(&cs, &v, &customer, None).await,
        ),
        Err(r) => r,
    }
}

/// The grant call's body from the form: the admin API validates every field.
fn grant_body(form: &[(String, String)]) -> Result<Value, String> {
    let mut body = Map::new();
    for name in ["source", "credit_type", "reason_code", "note"] {
        body.insert(name.into(), json!(field(form, name).unwrap_or_default()));
    }
    let amount = field(form, "amount").unwrap_or_default().trim();
    body.insert(
        "amount".into(),
        amount
            .parse::<u64>()
            .map_or_else(|_| json!(amount), |n| json!(n)),
    );
    match field(form, "expires")
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        // The end of the given UTC day.
        Some(day) => match html::parse_date(day) {
            Some(ms) => body.insert("expires_at_ms".into(), json!(ms + html::DAY_MS - 1)),
            None => return Err(format!("expires: {day:?} is not a date (YYYY-MM-DD)")),
        },
        None => None,
    };
    Ok(Value::Object(body))
}

/// "Granted 300 api (g-…)." from a grant answer's `grant`.
fn granted_notice(g: &Value) -> String {
    let text = |k: &str| g[k].as_str().unwrap_or_default().to_string();
    format!(
        "Granted {} {} ({}).",
        g["amount"],
        text("credit_type"),
        text("grant_id")
    )
}

async fn grant(
    State(cs): St,
    headers: HeaderMap,
    Path(customer): Path<String>,
    Form(form): Fields,
) -> Response {
    let v = match change(&cs, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice: Notice = match grant_body(&form) {
        Err(m) => Some(Err(m)),
        Ok(body) => {
            let path = format!("/v1/admin/customers/{}/grants", url_part(&customer));
            let a = submit(&cs, &v, &path, &form, Some(&body)).await;
            Some(match a.status {
                201 => Ok(granted_notice(&a.body["grant"])),
                202 => Ok(format!(
                    "Over your limit: request {} waits for an admin's approval.",
                    a.body["request_id"].as_str().unwrap_or_default()
                )),
                _ => Err(a.message()),
            })
        }
    };
    html(
        StatusCode::OK,
        pages::customer(&cs, &v, &customer, notice).await,
    )
}

async fn void(
    State(cs): St,
    headers: HeaderMap,
    Path(customer): Path<String>,
    Form(form): Fields,
) -> Response {
    let v = match change(&cs, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let grant_id = field(&form, "grant_id").unwrap_or_default();
    let path = format!(
        "/v1/admin/customers/{}/grants/{}/void",
        url_part(&customer),
        url_part(grant_id)
    );
    let body = json!({"reason": field(&form, "reason").unwrap_or_default()});
    let a = submit(&cs, &v, &path, &form, Some(&body)).await;
    let notice = if a.ok() {
        Ok(format!("Voided {grant_id}."))
    } else {
        Err(a.message())
    };
    html(
        StatusCode::OK,
        pages::customer(&cs, &v, &customer, Some(notice)).await,
    )
}

async fn approvals(State(cs): St, headers: HeaderMap) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(StatusCode::OK, pages::approvals(&cs, &v, None).await),
        Err(r) => r,
    }
}

async fn approve(
    State(cs): St,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    Form(form): Fields,
) -> Response {
    let v = match change(&cs, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = format!(
        "/v1/admin/grant-approvals/{}/approve",
        url_part(&request_id)
    );
    let a = submit(&cs, &v, &path, &form, None).await;
    let notice = if a.ok() {
        Ok(format!(
            "Approved {request_id}. {}",
            granted_notice(&a.body["grant"])
        ))
    } else {
        Err(a.message())
    };
    html(
        StatusCode::OK,
        pages::approvals(&cs, &v, Some(notice)).await,
    )
}

async fn trail(
    State(cs): St,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(
            StatusCode::OK,
            pages::trail(&cs, &v, field(&q, "request_id").map(str::trim)).await,
        ),
        Err(r) => r,
    }
}

async fn revenue(
    State(cs): St,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(
            StatusCode::OK,
            pages::revenue(&cs, &v, field(&q, "from"), field(&q, "to")).await,
        ),
        Err(r) => r,
    }
}

async fn dead_letters(State(cs): St, headers: HeaderMap) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(StatusCode::OK, pages::dead_letters(&cs, &v).await),
        Err(r) => r,
    }
}

async fn modes(State(cs): St, headers: HeaderMap) -> Response {
    match visit(&cs, &headers).await {
        Ok(v) => html(StatusCode::OK, pages::modes(&cs, &v, None).await),
        Err(r) => r,
    }
}

async fn set_mode(State(cs): St, headers: HeaderMap, Form(form): Fields) -> Response {
    let v = match change(&cs, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mode = field(&form, "mode").unwrap_or_default();
    let mut body = json!({"mode": if mode == "clear" { Value::Null } else { json!(mode) },
                          "reason": field(&form, "reason").unwrap_or_default()});
    let target = field(&form, "target").unwrap_or_default().trim();
    match field(&form, "scope") {
        Some("route") => body["route"] = json!(target),
        Some("customer") => body["customer"] = json!(target),
        _ => {}
    }
    let a = submit(&cs, &v, "/v1/control/mode", &form, Some(&body)).await;
    let notice = if a.ok() {
        Ok(format!("Mode set: {mode}."))
    } else {
        Err(a.message())
    };
    html(StatusCode::OK, pages::modes(&cs, &v, Some(notice)).await)
}
