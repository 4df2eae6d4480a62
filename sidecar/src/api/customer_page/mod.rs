//! The customer's credit page, served by the read listener under `/customer/`: balances,
//! usage, history, a request's trail, expirations and buying more, for one customer, opened
//! with a customer session token (`?session=`). Its assets are embedded in the binary; it
//! loads nothing from elsewhere. Products embed it as an iframe or with
//! `<script src="…/customer/embed.js" data-session="…">`, and restyle it through CSS
//! variables (`theme_<name>=` query parameters, `data-theme-<name>` on the script tag).
//!
//! - `GET /customer/?session=&days=&kind=&feature=&page=&request=&theme_*=` — the page
//! - `GET /customer/ledger.csv?session=&days=&kind=&feature=` — the history as CSV
//! - `POST /customer/auto-recharge` — a session's auto-recharge settings ([`recharge`])
//! - `GET /customer/page.js`, `GET /customer/embed.js` — the scripts (no token)
//!
//! Staff tokens may open it too (header only), with `customer=` naming the customer.
//! This module routes and answers; [`data`] reads, [`html`] renders.

pub mod data;
pub mod format;
pub mod html;
pub mod recharge;
pub mod settings;

pub use settings::PageSettings;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::read_access::{ReadState, Reader, url_pairs};

/// The iframe-resizing script of the page.
const PAGE_JS: &str = include_str!("page.js");

/// The script tag that embeds the page as an iframe.
const EMBED_JS: &str = include_str!("embed.js");

/// The page's content security policy: its own scripts only, inline styles (the theme),
/// no network requests, forms only to itself; any site may frame it (the product embeds
/// it; the session token, not the framing site, decides what it shows).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
                   form-action 'self'; base-uri 'none'; frame-ancestors *";

/// The page's routes, merged into the read listener's router.
pub fn routes() -> Router<Arc<ReadState>> {
    Router::new()
        .route("/customer/", get(page))
        .route("/customer/ledger.csv", get(ledger_csv))
        .route(
            "/customer/auto-recharge",
            axum::routing::post(recharge::set).layer(axum::extract::DefaultBodyLimit::max(
                recharge::RECHARGE_FORM_MAX_BYTES,
            )),
        )
        .route("/customer/page.js", get(|| async { script(PAGE_JS) }))
        .route("/customer/embed.js", get(|| async { script(EMBED_JS) }))
}

fn script(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// An HTML answer with the page's security headers: never cached (it carries a session),
/// no referrer (the URL holds the token).
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// The customer a reader opens the page for: a session's own customer; staff name one
/// with `customer=`.
fn customer_of(
    reader: &Reader,
    pairs: &mut Vec<(String, String)>,
) -> Result<String, (StatusCode, String)> {
    let named = pairs
        .iter()
        .position(|(k, _)| k == "customer")
        .map(|i| pairs.remove(i).1);
    match (reader.own_customer(), named) {
        (Some(own), None) => Ok(own.to_string()),
        (Some(own), Some(c)) if c == own => Ok(c),
        (Some(_), Some(_)) => Err((
            StatusCode::FORBIDDEN,
            "query parameter customer: a session opens only its own customer's page".into(),
        )),
        (None, Some(c)) => creditgate_protocol::keys::validate_id("query parameter customer", &c)
            .map(|()| c)
            .map_err(|m| (StatusCode::BAD_REQUEST, m)),
        (None, None) => Err((
            StatusCode::BAD_REQUEST,
            "query parameter customer: staff tokens name the customer".into(),
        )),
    }
}

/// The page, or an error page naming what was wrong. A missing or bad token is answered
/// by the [`Reader`] extractor as JSON (401), like every customer-data route.
async fn page(State(st): State<Arc<ReadState>>, reader: Reader, uri: Uri) -> Response {
    let mut pairs = url_pairs(&uri);
    let customer = match customer_of(&reader, &mut pairs) {
        Ok(c) => c,
        Err((status, m)) => return html(status, html::error_page("Not allowed", &m)),
    };
    let q = match data::PageQuery::parse(&pairs) {
        Ok(q) => q,
        Err(m) => return html(StatusCode::BAD_REQUEST, html::error_page("Bad request", &m)),
    };
    match data::load(&st, &customer, &q).await {
        Ok(d) => html(StatusCode::OK, html::page(&d, &q, &st.page)),
        Err(m) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            html::error_page("Temporarily unavailable", &m),
        ),
    }
}

/// The history of the page's range and filter as CSV.
async fn ledger_csv(State(st): State<Arc<ReadState>>, reader: Reader, uri: Uri) -> Response {
    let mut pairs = url_pairs(&uri);
    let bad = |status, m: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            m,
        )
            .into_response()
    };
    let customer = match customer_of(&reader, &mut pairs) {
        Ok(c) => c,
        Err((status, m)) => return bad(status, m),
    };
    let q = match data::PageQuery::parse(&pairs) {
        Ok(q) => q,
        Err(m) => return bad(StatusCode::BAD_REQUEST, m),
    };
    let now = crate::ledger::now_ms();
    let from_ms = (now / 86_400_000 + 1).saturating_sub(q.days) * 86_400_000;
    let entries = match data::ledger_entries(&st, &customer, &q, from_ms).await {
        Ok((e, _)) => e,
        Err(m) => return bad(StatusCode::SERVICE_UNAVAILABLE, m),
    };
    let scales: std::collections::BTreeMap<String, u32> = st
        .sidecar
        .pricing
        .as_ref()
        .map(|p| {
            p.load()
                .credit_types()
                .values()
                .map(|t| (t.name.clone(), t.scale))
                .collect()
        })
        .unwrap_or_default();
    let body = html::csv(&|t| scales.get(t).copied().unwrap_or(0), &entries);
    let file = format!(
        "attachment; filename=\"credits-{}.csv\"",
        format::url_encode(&customer)
    );
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&file) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
