//! The console's pages: each reads through the admin API ([`super::dispatch`]) or, for
//! the ledger reads the read listener serves (a request's trail, revenue), the ledger's
//! own read functions, and renders server-side HTML with [`super::html`]. Nothing here
//! changes anything.

use std::collections::HashMap;

use axum::http::Method;
use serde_json::{Value, json};

use super::dispatch::{Answer, call};
use super::html::{
    DAY_MS, Viewer, cell, change_fields, date, esc, page, parse_date, table, url_part,
};
use super::state::{ConsoleState, Notice, Visit};
use crate::api::admin::auth::Role;
use crate::ledger::now_ms;

/// Entries of a customer's ledger shown on its page, newest first.
const LEDGER_SHOWN: usize = 100;

/// How far back the customer page reads the ledger, days.
const LEDGER_DAYS: u64 = 90;

fn frame(v: &Visit, title: &str, notice: Notice, body: &str) -> String {
    let viewer = Viewer {
        name: &v.caller.name,
        role: v.caller.role.as_str(),
        csrf: &v.session.csrf,
    };
    page(title, Some(&viewer), notice, body)
}

async fn get(cs: &ConsoleState, v: &Visit, path: &str) -> Answer {
    call(&cs.api, &v.caller, Method::GET, path, None, None).await
}

/// The login page.
pub fn login(error: Option<String>) -> String {
    let body = r#"<div class="card login"><h1>Support console</h1>
<p class="hint">Log in with your admin API token. The console acts with its role and records its name as the actor of every change.</p>
<form method="post" action="/console/login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<button type="submit">Log in</button></form></div>"#;
    page("Log in", None, error.map(Err), body)
}

/// The start page: find a customer, and what waits for a decision.
pub async fn home(cs: &ConsoleState, v: &Visit, notice: Notice) -> String {
    let pending = get(cs, v, "/v1/admin/grant-approvals").await;
    let waiting = pending.body["approvals"].as_array().map_or(0, Vec::len);
    let body = format!(
        r#"<h1>Find a customer</h1><div class="card">{}</div>
<div class="grid"><div class="card"><h2>Approvals</h2><p><span class="pill{}">{waiting} waiting</span> grants over a role's limit wait for an admin other than who asked.</p><a href="/console/approvals">Open approvals →</a></div>
<div class="card"><h2>A request's trail</h2>{}</div></div>"#,
        search_form("", ""),
        if waiting > 0 { " warn" } else { "" },
        trail_form(""),
    );
    frame(v, "Customers", notice, &body)
}

fn search_form(label: &str, value: &str) -> String {
    format!(
        r#"<form class="search" method="get" action="/console/customers"><div style="flex:1"><label for="customer">Customer id{}</label><input id="customer" name="customer" value="{}" required></div><button type="submit">Open</button></form>"#,
        esc(label),
        esc(value)
    )
}

fn trail_form(value: &str) -> String {
    format!(
        r#"<form class="search" method="get" action="/console/requests"><div style="flex:1"><label for="request_id">Request id (x-request-id)</label><input id="request_id" name="request_id" value="{}" required></div><button type="submit">Show trail</button></form>"#,
        esc(value)
    )
}

/// A customer: live balance per credit type, its grants (with void), a grant form and its
/// recent ledger entries.
pub async fn customer(cs: &ConsoleState, v: &Visit, customer: &str, notice: Notice) -> String {
    let c = url_part(customer);
    let balance = get(cs, v, &format!("/v1/admin/customers/{c}/balance")).await;
    if !balance.ok() {
        let body = format!(
            r#"<h1>Customer</h1><div class="card">{}</div>"#,
            search_form("", customer)
        );
        let refused = Err(format!("{customer}: {}", balance.message()));
        return frame(v, "Customer", notice.or(Some(refused)), &body);
    }
    let from = now_ms().saturating_sub(LEDGER_DAYS * DAY_MS);
    let ledger = get(
        cs,
        v,
        &format!("/v1/admin/customers/{c}/ledger?from_ms={from}&limit=1000"),
    )
    .await;
    let mut entries: Vec<Value> = ledger.body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    entries.reverse();
    entries.truncate(LEDGER_SHOWN);
    let why = grant_reasons(cs, customer).await;
    let with_why = |mut row: Value| {
        if let Some(w) = row["grant_id"].as_str().and_then(|g| why.get(g)) {
            for k in ["actor", "reason", "source"] {
                if row[k].is_null() {
                    row[k] = w[k].clone();
                }
            }
        }
        row
    };
    let entries: Vec<Value> = entries.iter().map(|e| with_why(flatten_entry(e))).collect();
    let live = &balance.body["live"];
    let live_grants: Vec<Value> = live["grants"]
        .as_array()
        .map_or_else(Vec::new, |g| g.iter().cloned().map(with_why).collect());
    let body = format!(
        r#"<h1>{}</h1><div class="stats">{}</div>
<div class="card"><h2>Live grants</h2>{}</div><div class="card"><h2>Grant credits</h2>{}</div>
<div class="card"><h2>Ledger, newest first (last {LEDGER_DAYS} days)</h2>{}</div>"#,
        esc(customer),
        stats(live),
        grants(v, customer, &live_grants),
        grant_form(cs, v, customer),
        table(
            &entries,
            &[
                ("event_at_ms", "When"),
                ("kind", "Kind"),
                ("amount", "Credits"),
                ("credit_type", "Type"),
                ("feature", "Feature"),
                ("route", "Route"),
                ("request_id", "Request"),
                ("grant_id", "Grant"),
                ("actor", "Actor"),
                ("reason", "Reason")
            ],
            "No ledger entries in this period.",
        ),
    );
    frame(v, customer, notice, &body)
}

/// Who granted each of the customer's admin-API grants, and why (`admin_grants`): the
/// ledger's entry JSON leaves the actor and the reason out.
async fn grant_reasons(cs: &ConsoleState, customer: &str) -> HashMap<String, Value> {
    let rows = cs
        .admin
        .db
        .fetch(
            "SELECT grant_id, source, reason_code, note, actor FROM admin_grants \
             WHERE customer = $1 ORDER BY created_at_ms DESC LIMIT 1000",
            &[customer.into()],
            |row| {
                let note = row.try_get::<String, _>("note")?;
                let code = row.try_get::<String, _>("reason_code")?;
                let reason = if note.is_empty() {
                    code
                } else {
                    format!("{code}: {note}")
                };
                Ok((
                    row.try_get::<String, _>("grant_id")?,
                    json!({"actor": row.try_get::<String, _>("actor")?, "reason": reason,
                           "source": row.try_get::<String, _>("source")?}),
                ))
            },
        )
        .await;
    rows.unwrap_or_default().into_iter().collect()
}

/// A ledger entry as the admin API answers it, its `entry` fields lifted to the top.
fn flatten_entry(e: &Value) -> Value {
    let mut row = e.get("entry").cloned().unwrap_or_else(|| e.clone());
    if let (Some(obj), Some(outer)) = (row.as_object_mut(), e.as_object()) {
        for (k, val) in outer {
            if k != "entry" {
                obj.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
    }
    row
}

fn stats(live: &Value) -> String {
    let types = live["types"].as_array().cloned().unwrap_or_default();
    if types.is_empty() {
        return r#"<p class="empty">No credits of any type.</p>"#.to_string();
    }
    types
        .iter()
        .map(|t| {
            format!(
                r#"<div class="stat"><small>{} available</small><b>{}</b><small>held {} · debt {}</small></div>"#,
                cell("", &t["credit_type"]),
                cell("", &t["available"]),
                cell("", &t["held"]),
                cell("", &t["debt"])
            )
        })
        .collect()
}

fn grants(v: &Visit, customer: &str, grants: &[Value]) -> String {
    let may_void = matches!(v.caller.role, Role::Admin | Role::Support);
    let rows: Vec<Value> = grants
        .iter()
        .map(|g| {
            let mut g = g.clone();
            let id = g["grant_id"].as_str().unwrap_or_default().to_string();
            g["void"] = json!(may_void);
            g["grant_id"] = json!(id);
            g
        })
        .collect();
    let mut out = table(
        &rows,
        &[
            ("grant_id", "Grant"),
            ("credit_type", "Type"),
            ("remaining", "Remaining"),
            ("held", "Held"),
            ("expires_at_ms", "Expires"),
            ("created_at_ms", "Granted"),
            ("actor", "By"),
            ("reason", "Reason"),
        ],
        "No live grants.",
    );
    if may_void && !rows.is_empty() {
        out.push_str(&void_form(v, customer, &rows));
    }
    out
}

fn void_form(v: &Visit, customer: &str, grants: &[Value]) -> String {
    let options: String = grants
        .iter()
        .filter_map(|g| g["grant_id"].as_str())
        .map(|id| format!(r#"<option value="{0}">{0}</option>"#, esc(id)))
        .collect();
    format!(
        r#"<form id="void" method="post" action="/console/customers/{}/void">{}<div class="row"><div><label for="void-grant">Void grant</label><select id="void-grant" name="grant_id">{options}</select></div><div><label for="void-reason">Reason</label><input id="void-reason" name="reason" required></div></div><button type="submit" class="danger">Void its remaining credits</button></form>"#,
        url_part(customer),
        change_fields(&v.session.csrf)
    )
}

fn grant_form(cs: &ConsoleState, v: &Visit, customer: &str) -> String {
    let sources: &[&str] = match v.caller.role {
        Role::Admin => &[
            "goodwill",
            "promotion",
            "purchase",
            "plan_allotment",
            "adjustment",
        ],
        Role::Support => &["goodwill"],
        Role::Sales => &["promotion"],
        Role::Billing => &["purchase", "plan_allotment"],
        Role::Readonly => return r#"<p class="empty">Your role reads only.</p>"#.to_string(),
    };
    let opts = |items: &mut dyn Iterator<Item = &str>| -> String {
        items
            .map(|s| format!(r#"<option value="{0}">{0}</option>"#, esc(s)))
            .collect()
    };
    let ops = &cs.admin.ops;
    format!(
        r#"<form id="grant" method="post" action="/console/customers/{}/grants">{}
<div class="row"><div><label for="source">Source</label><select id="source" name="source">{}</select></div>
<div><label for="credit_type">Credit type</label><select id="credit_type" name="credit_type">{}</select></div>
<div><label for="amount">Credits</label><input id="amount" name="amount" inputmode="numeric" required></div></div>
<div class="row"><div><label for="reason_code">Reason code</label><select id="reason_code" name="reason_code">{}</select></div>
<div><label for="expires">Expires (UTC date, optional)</label><input id="expires" name="expires" placeholder="YYYY-MM-DD"></div></div>
<label for="note">Note</label><textarea id="note" name="note" maxlength="500"></textarea>
<button type="submit">Grant</button><p class="hint">Grants over your role's limit wait for an admin's approval.</p></form>"#,
        url_part(customer),
        change_fields(&v.session.csrf),
        opts(&mut sources.iter().copied()),
        opts(&mut ops.credit_types.iter().map(String::as_str)),
        opts(&mut ops.reason_codes.iter().map(String::as_str)),
    )
}

/// Grant requests waiting for approval, with an approve button for admins on requests
/// someone else made.
pub async fn approvals(cs: &ConsoleState, v: &Visit, notice: Notice) -> String {
    let answer = get(cs, v, "/v1/admin/grant-approvals").await;
    let rows = answer.body["approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut body = String::from(r#"<h1>Grant approvals</h1><div class="card">"#);
    if rows.is_empty() {
        body.push_str(r#"<p class="empty">Nothing waits for approval.</p>"#);
    }
    for r in &rows {
        body.push_str(&approval_row(v, r));
    }
    body.push_str("</div>");
    frame(v, "Approvals", notice, &body)
}

fn approval_row(v: &Visit, r: &Value) -> String {
    let id = r["request_id"].as_str().unwrap_or_default();
    let by = r["requested_by"].as_str().unwrap_or_default();
    let g = &r["grant"];
    let action = if by == v.caller.name {
        r#"<span class="pill warn">yours: another admin must approve it</span>"#.to_string()
    } else if v.caller.role == Role::Admin {
        format!(
            r#"<form class="inline approve" method="post" action="/console/approvals/{}/approve">{}<button type="submit" class="small">Approve</button></form>"#,
            url_part(id),
            change_fields(&v.session.csrf)
        )
    } else {
        r#"<span class="pill">an admin approves</span>"#.to_string()
    };
    format!(
        r#"<div class="approval" data-request="{}"><b>{} {}</b><span>for <a href="/console/customers/{}">{}</a></span><span class="hint">{} · by {} · {}</span><span class="hint">“{}”</span>{action}</div>"#,
        esc(id),
        cell("", &g["amount"]),
        cell("", &g["credit_type"]),
        url_part(r["customer"].as_str().unwrap_or_default()),
        cell("", &r["customer"]),
        cell("", &g["reason_code"]),
        esc(by),
        cell("requested_at_ms", &r["requested_at_ms"]),
        cell("", &g["note"]),
    )
}

/// The trail of one request id: its hold and what it drew and returned.
pub async fn trail(cs: &ConsoleState, v: &Visit, request_id: Option<&str>) -> String {
    let mut body = format!(
        r#"<h1>Request trail</h1><div class="card">{}</div>"#,
        trail_form(request_id.unwrap_or(""))
    );
    let Some(id) = request_id.filter(|r| !r.is_empty()) else {
        return frame(v, "Request trail", None, &body);
    };
    let rows = match cs.admin.sidecar.ledger.trail(id).await {
        Ok(entries) => entries
            .iter()
            .map(|e| flatten_entry(&json!(e)))
            .collect::<Vec<_>>(),
        Err(e) => return frame(v, "Request trail", Some(Err(format!("ledger: {e}"))), &body),
    };
    body.push_str(&format!(
        r#"<div class="card"><h2>{}</h2>{}</div>"#,
        esc(id),
        table(
            &rows,
            &[
                ("event_at_ms", "When"),
                ("kind", "Kind"),
                ("customer", "Customer"),
                ("amount", "Credits"),
                ("credit_type", "Type"),
                ("feature", "Feature"),
                ("route", "Route"),
                ("hold_id", "Hold"),
                ("grant_id", "Grant")
            ],
            "The ledger has no entries for this request id.",
        )
    ));
    frame(v, "Request trail", None, &body)
}

/// Revenue for a period of UTC dates (default: the last 30 days).
pub async fn revenue(cs: &ConsoleState, v: &Visit, from: Option<&str>, to: Option<&str>) -> String {
    let today = now_ms() / DAY_MS * DAY_MS;
    let to_ms = to
        .and_then(parse_date)
        .map_or(today + DAY_MS, |t| t + DAY_MS);
    let from_ms = from
        .and_then(parse_date)
        .unwrap_or(today.saturating_sub(29 * DAY_MS));
    let form = format!(
        r#"<form class="row" method="get" action="/console/revenue"><div><label for="from">From (UTC)</label><input id="from" name="from" value="{}"></div><div><label for="to">To, inclusive</label><input id="to" name="to" value="{}"></div><div><button type="submit">Show</button></div></form>"#,
        date(from_ms),
        date(to_ms - DAY_MS)
    );
    let (notice, figures) = if from_ms >= to_ms {
        (
            Some(Err(
                "the period's start must not be after its end".to_string()
            )),
            String::new(),
        )
    } else {
        match cs.admin.sidecar.ledger.revenue(from_ms, to_ms).await {
            Ok(r) => (None, revenue_figures(&json!(r))),
            Err(e) => (Some(Err(format!("ledger: {e}"))), String::new()),
        }
    };
    let body = format!(r#"<h1>Revenue</h1><div class="card">{form}</div>{figures}"#);
    frame(v, "Revenue", notice, &body)
}

fn revenue_figures(r: &Value) -> String {
    let money = |k: &str| {
        let micros = r[k].as_i64().unwrap_or(0);
        format!(
            "{}{}.{:02}",
            if micros < 0 { "-" } else { "" },
            micros.abs() / 1_000_000,
            micros.abs() % 1_000_000 / 10_000
        )
    };
    let mut out = format!(
        r#"<div class="stats"><div class="stat"><small>Recognized</small><b>{}</b></div><div class="stat"><small>Breakage</small><b>{}</b></div><div class="stat"><small>Deferred at end</small><b>{}</b></div></div>"#,
        money("recognized_micros"),
        money("breakage_micros"),
        money("deferred_micros_at_end")
    );
    let rest: Vec<Value> = r
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !k.ends_with("_micros") && !k.ends_with("_at_end"))
                .map(|(k, v)| json!({"figure": k, "value": v}))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        r#"<div class="card"><h2>Details</h2>{}</div>"#,
        table(&rest, &[("figure", "Figure"), ("value", "Value")], "")
    ));
    out
}

/// Dead letters: stream entries the ledger could not apply.
pub async fn dead_letters(cs: &ConsoleState, v: &Visit) -> String {
    let answer = get(cs, v, "/v1/admin/dead-letters").await;
    let notice = (!answer.ok()).then(|| Err(answer.message()));
    let rows = answer.body["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Dead letters</h1><div class="card">{}<p class="hint">Replay or discard with <code>creditgate-sidecar dead-letters</code> or the admin API (admin role).</p></div>"#,
        table(
            &rows,
            &[
                ("id", "Id"),
                ("state", "State"),
                ("reason", "Reason"),
                ("shard", "Shard"),
                ("event_id", "Event"),
                ("detail", "Detail"),
                ("created_at_ms", "Recorded")
            ],
            "No dead letters.",
        )
    );
    frame(v, "Dead letters", notice, &body)
}

/// Modes: the fleet's control state, and (for admins) a form to set one.
pub async fn modes(cs: &ConsoleState, v: &Visit, notice: Notice) -> String {
    let answer = get(cs, v, "/v1/control").await;
    let state = if answer.body.get("state").is_some() {
        &answer.body["state"]
    } else {
        &answer.body
    };
    let overrides = |key: &str, scope: &str| -> Vec<Value> {
        state[key].as_object().map_or_else(Vec::new, |m| {
            m.iter()
                .map(|(k, mode)| json!({"scope": scope, "target": k, "mode": mode}))
                .collect()
        })
    };
    let mut rows =
        vec![json!({"scope": "global", "target": "every route", "mode": state["global"]})];
    rows.extend(overrides("routes", "route"));
    rows.extend(overrides("customers", "customer"));
    let form = if v.caller.role == Role::Admin {
        format!(
            r#"<form id="mode" method="post" action="/console/modes">{}<div class="row"><div><label for="scope">Scope</label><select id="scope" name="scope"><option value="global">global</option><option value="route">route</option><option value="customer">customer</option></select></div><div><label for="target">Route or customer</label><input id="target" name="target"></div><div><label for="mode-mode">Mode</label><select id="mode-mode" name="mode"><option>enforce</option><option>shadow</option><option>off</option><option value="clear">clear the override</option></select></div></div><label for="mode-reason">Reason</label><input id="mode-reason" name="reason" required><button type="submit">Set mode</button></form>"#,
            change_fields(&v.session.csrf)
        )
    } else {
        r#"<p class="empty">Only admins change modes.</p>"#.to_string()
    };
    let notice = notice.or_else(|| (!answer.ok()).then(|| Err(answer.message())));
    let body = format!(
        r#"<h1>Modes</h1><div class="grid"><div class="card"><h2>Overrides</h2>{}</div><div class="card"><h2>Set a mode</h2>{form}</div></div>"#,
        table(
            &rows,
            &[("scope", "Scope"), ("target", "Target"), ("mode", "Mode")],
            ""
        )
    );
    frame(v, "Modes", notice, &body)
}
