//! The customer page as server-rendered HTML: every number is in the markup (the usage
//! chart is inline SVG drawn here), so the page reads without JavaScript; the one script
//! only resizes an embedding iframe. Every value from the ledger, the store or the query
//! goes through [`esc`]. Renders only; it reads nothing.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::data::{CreditView, KindFilter, LEDGER_PAGE_ROWS, PageData, PageQuery, RANGES_DAYS};
use super::format::{credits, date, date_time, esc, query, short_day, url_encode};
use super::settings::PageSettings;
use crate::ledger::{EntryKind, LedgerEntry, UsageRow};

/// The page's stylesheet, embedded in the binary.
pub const PAGE_CSS: &str = include_str!("page.css");

/// Colours of the chart's series, as CSS variables the product can override.
const SERIES: usize = 6;

const DAY_MS: u64 = 86_400_000;

/// A link to the page with the current query, `changes` replacing parameters.
fn link(q: &PageQuery, changes: &[(&str, &str)]) -> String {
    let days = q.days.to_string();
    let page = q.page.to_string();
    let kind = q.kind.map(KindFilter::as_str).unwrap_or_default();
    let mut pairs: Vec<(&str, String)> = vec![
        ("session", q.session.clone()),
        ("days", days),
        ("kind", kind.to_string()),
        ("feature", q.feature.clone().unwrap_or_default()),
        ("page", page),
        ("request", q.request.clone().unwrap_or_default()),
    ];
    for (k, v) in changes {
        match pairs.iter_mut().find(|(n, _)| n == k) {
            Some(p) => p.1 = v.to_string(),
            None => pairs.push((k, v.to_string())),
        }
    }
    let theme: Vec<(String, String)> = q
        .theme
        .iter()
        .map(|(k, v)| (format!("theme_{k}"), v.clone()))
        .collect();
    let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend(theme.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    esc(&format!("?{}", query(&all)))
}

/// Hidden inputs carrying the session, range and theme into a GET form.
fn hidden_inputs(q: &PageQuery) -> String {
    let mut out = format!(
        r#"<input type="hidden" name="session" value="{}"><input type="hidden" name="days" value="{}">"#,
        esc(&q.session),
        q.days
    );
    for (k, v) in &q.theme {
        let _ = write!(
            out,
            r#"<input type="hidden" name="theme_{}" value="{}">"#,
            esc(k),
            esc(v)
        );
    }
    out
}

/// The whole page.
pub fn page(data: &PageData, q: &PageQuery, settings: &PageSettings) -> String {
    let theme: String = q
        .theme
        .iter()
        .map(|(k, v)| format!("--cg-{k}:{v};"))
        .collect();
    let mut out = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer"><title>Credits · {customer}</title><style>{css}:root{{{theme}}}</style></head><body><main class="cg">"#,
        customer = esc(&data.customer),
        css = PAGE_CSS,
    );
    out.push_str(&header(data, q));
    out.push_str(&banners(data));
    out.push_str(r#"<section class="cg-cards" aria-label="Balances">"#);
    for c in &data.credits {
        out.push_str(&card(c, data.as_of_ms));
    }
    if data.credits.is_empty() {
        out.push_str(r#"<p class="cg-empty">No credits yet.</p>"#);
    }
    out.push_str("</section>");
    out.push_str(&usage_section(data, q));
    out.push_str(r#"<div class="cg-grid">"#);
    out.push_str(&expirations(data));
    out.push_str(&buy_more(data, settings, q));
    out.push_str("</div>");
    out.push_str(&ledger_section(data, q));
    out.push_str(&trail_section(data, q));
    out.push_str(
        r#"<footer class="cg-foot">Times are UTC. Balances are live; usage and history come from the ledger, a second or two behind.</footer></main><script src="/customer/page.js" defer></script></body></html>"#,
    );
    out
}

fn header(data: &PageData, q: &PageQuery) -> String {
    let mut tabs = String::new();
    for d in RANGES_DAYS {
        let current = if d == q.days {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            tabs,
            r#"<a class="cg-tab" href="{}"{current}>{d} days</a>"#,
            link(q, &[("days", &d.to_string()), ("page", "1")])
        );
    }
    format!(
        r#"<header class="cg-head"><div><h1>Credits</h1><p class="cg-muted">Account <span class="cg-id" data-customer>{}</span> · as of <time data-as-of="{}">{}</time></p></div><nav class="cg-tabs" aria-label="Range">{tabs}</nav></header>"#,
        esc(&data.customer),
        data.as_of_ms,
        esc(&date_time(data.as_of_ms)),
    )
}

fn banners(data: &PageData) -> String {
    let mut out = String::new();
    for c in data.credits.iter().filter(|c| c.is_low()) {
        let threshold = c.low_threshold.unwrap_or(0) as i64;
        let _ = write!(
            out,
            r##"<div class="cg-banner" role="alert" data-low-balance="{name}"><strong>Low balance:</strong> {avail} {dn} left, below your alert level of {thr}. <a href="#buy">Buy more</a> to keep requests flowing.</div>"##,
            name = esc(&c.name),
            avail = credits(c.available, c.scale),
            dn = esc(&c.display_name),
            thr = credits(threshold, c.scale),
        );
    }
    out
}

/// One credit type's card: what is left, what is held, the split by expiry and the
/// projected run-out.
fn card(c: &CreditView, now: u64) -> String {
    let mut split = String::new();
    let mut by_expiry: BTreeMap<Option<u64>, u64> = BTreeMap::new();
    for (remaining, expires) in &c.grants {
        *by_expiry.entry(expires.map(|e| e / DAY_MS)).or_default() += remaining;
    }
    // Dated amounts first, soonest first; the undated rest last.
    let mut rows: Vec<_> = by_expiry.into_iter().collect();
    rows.sort_by_key(|(day, _)| day.unwrap_or(u64::MAX));
    for (day, amount) in rows {
        let when = match day {
            Some(d) => format!("expiring {}", esc(&date(d * DAY_MS))),
            None => "no expiry".to_string(),
        };
        let _ = write!(
            split,
            r#"<li><span class="cg-num">{}</span> {when}</li>"#,
            credits(amount as i64, c.scale)
        );
    }
    let projection = match c.run_out_ms(now) {
        Some(at) => format!(
            r#"At your last 7 days' pace ({}/day), this runs out around <strong data-run-out>{}</strong>."#,
            per_day(c.burned_recent, c.scale),
            esc(&date(at))
        ),
        None if c.available <= 0 => "Nothing left to spend.".into(),
        None => "No usage in the last 7 days.".into(),
    };
    let debt = if c.debt > 0 {
        format!(
            r#"<p class="cg-debt">{} owed from overdraft, repaid by your next credits.</p>"#,
            credits(c.debt, c.scale)
        )
    } else {
        String::new()
    };
    format!(
        r#"<article class="cg-card{low}" data-credit-type="{name}"><h2>{dn}</h2><p class="cg-big"><span class="cg-num" data-available>{avail}</span> <span class="cg-unit">available</span></p><p class="cg-held"><span class="cg-dot"></span><span class="cg-num" data-held>{held}</span> held by requests in flight</p>{debt}<ul class="cg-split">{split}</ul><p class="cg-proj">{projection}</p></article>"#,
        low = if c.is_low() { " cg-low" } else { "" },
        name = esc(&c.name),
        dn = esc(&c.display_name),
        avail = credits(c.available, c.scale),
        held = credits(c.held, c.scale),
    )
}

/// A week's burn as a daily rate in display units, to two decimal places at most.
fn per_day(burned_week: u64, scale: u32) -> String {
    let unit = 10u64.pow(scale.min(12)) as f64;
    let rate = burned_week as f64 / 7.0 / unit;
    let text = format!("{rate:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" {
        "under 0.01".into()
    } else {
        text.to_string()
    }
}

/// The usage section: per credit type, a daily bar chart by feature (inline SVG with a
/// `<title>` per bar) and the same numbers as a table.
fn usage_section(data: &PageData, q: &PageQuery) -> String {
    let mut out = format!(
        r#"<section class="cg-panel" aria-labelledby="cg-usage"><h2 id="cg-usage">Usage, last {} days</h2>"#,
        q.days
    );
    if data.usage.is_empty() {
        out.push_str(r#"<p class="cg-empty">No usage in this range.</p>"#);
    }
    let mut by_type: BTreeMap<&str, Vec<&UsageRow>> = BTreeMap::new();
    for row in &data.usage {
        by_type
            .entry(row.credit_type.as_str())
            .or_default()
            .push(row);
    }
    for (credit_type, rows) in by_type {
        let (name, scale) = data
            .credits
            .iter()
            .find(|c| c.name == credit_type)
            .map_or((credit_type, 0), |c| (c.display_name.as_str(), c.scale));
        let total: u64 = rows.iter().map(|r| r.burned).sum();
        let _ = write!(
            out,
            r#"<div class="cg-chart-head"><h3>{}</h3><span><span class="cg-num">{}</span> used</span></div>"#,
            esc(name),
            credits(total as i64, scale)
        );
        out.push_str(&chart(data.from_ms, q.days, credit_type, &rows, scale));
    }
    out.push_str("</section>");
    out
}

/// The bar chart of one credit type and its table.
fn chart(from_ms: u64, days: u64, credit_type: &str, rows: &[&UsageRow], scale: u32) -> String {
    let features: Vec<&str> = {
        let mut f: Vec<&str> = rows.iter().map(|r| r.feature.as_str()).collect();
        f.sort();
        f.dedup();
        f
    };
    let mut per_day: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in rows {
        let i = features.iter().position(|f| *f == r.feature).unwrap_or(0);
        per_day
            .entry(r.day.clone())
            .or_insert_with(|| vec![0; features.len()])[i] += r.burned;
    }
    let max = per_day
        .values()
        .map(|v| v.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, pad) = (720.0_f64, 180.0_f64, 24.0_f64);
    let slot = w / days as f64;
    let mut bars = String::new();
    for i in 0..days {
        let day_ms = from_ms + i * DAY_MS;
        let day = crate::ledger::utc_day(day_ms);
        let Some(values) = per_day.get(&day) else {
            continue;
        };
        let mut y = h;
        for (fi, v) in values.iter().enumerate().filter(|(_, v)| **v > 0) {
            let bh = (*v as f64 / max as f64) * (h - pad);
            y -= bh;
            let _ = write!(
                bars,
                r#"<rect class="cg-s{}" x="{:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}"><title>{}: {} {} credits</title></rect>"#,
                fi % SERIES + 1,
                i as f64 * slot + slot * 0.15,
                slot * 0.7,
                esc(&short_day(day_ms)),
                esc(features[fi]),
                credits(*v as i64, scale),
            );
        }
    }
    let legend: String = features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                r#"<li><span class="cg-key cg-s{}"></span>{}</li>"#,
                i % SERIES + 1,
                esc(f)
            )
        })
        .collect();
    // Axis labels are HTML, not SVG text, so they keep their size however the chart is
    // stretched to the width.
    let grid = format!(
        r#"<line x1="0" y1="{top}" x2="{w}" y2="{top}" class="cg-grid-line"/><line x1="0" y1="{mid}" x2="{w}" y2="{mid}" class="cg-grid-line"/><line x1="0" y1="{h}" x2="{w}" y2="{h}" class="cg-base"/>"#,
        top = pad,
        mid = pad + (h - pad) / 2.0,
    );
    format!(
        r#"<figure class="cg-chart" data-usage-chart="{ct}"><div class="cg-ymax">{max} / day</div><svg viewBox="0 0 {w} {h}" role="img" aria-label="Daily usage of {ct} by feature" preserveAspectRatio="none">{grid}{bars}</svg><div class="cg-xaxis"><span>{from}</span><span>today</span></div><ul class="cg-legend">{legend}</ul></figure>{table}"#,
        max = credits(max as i64, scale),
        from = esc(&short_day(from_ms)),
        table = usage_table(rows, scale),
        ct = esc(credit_type),
    )
}

/// The usage numbers as a table, newest day first.
fn usage_table(rows: &[&UsageRow], scale: u32) -> String {
    let mut body = String::new();
    for r in rows.iter().rev() {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td class="cg-r">{}</td><td class="cg-r">{}</td></tr>"#,
            esc(&r.day),
            esc(&r.feature),
            r.requests,
            credits(r.burned as i64, scale)
        );
    }
    format!(
        r#"<details class="cg-details"><summary>Daily numbers</summary><div class="cg-scroll"><table class="cg-table"><thead><tr><th>Day (UTC)</th><th>Feature</th><th class="cg-r">Requests</th><th class="cg-r">Credits</th></tr></thead><tbody>{body}</tbody></table></div></details>"#
    )
}

fn expirations(data: &PageData) -> String {
    let mut items: Vec<(u64, u64, &CreditView)> = data
        .credits
        .iter()
        .flat_map(|c| {
            c.grants
                .iter()
                .filter_map(move |(amount, exp)| exp.map(|e| (e, *amount, c)))
        })
        .collect();
    items.sort_by_key(|(e, _, _)| *e);
    let list: String = items
        .iter()
        .map(|(e, amount, c)| {
            format!(
                r#"<li data-expiring><span><span class="cg-num">{}</span> {}</span><time>{}</time></li>"#,
                credits(*amount as i64, c.scale),
                esc(&c.display_name),
                esc(&date(*e))
            )
        })
        .collect();
    let body = if list.is_empty() {
        r#"<p class="cg-empty">Nothing expires.</p>"#.to_string()
    } else {
        format!(r#"<ul class="cg-list">{list}</ul>"#)
    };
    format!(
        r#"<section class="cg-panel" aria-labelledby="cg-exp"><h2 id="cg-exp">Upcoming expirations</h2>{body}</section>"#
    )
}

/// Bundles, each linking to the product's checkout with bundle and customer; and the
/// auto-recharge status.
fn buy_more(data: &PageData, settings: &PageSettings, q: &PageQuery) -> String {
    let mut out = r#"<section class="cg-panel" id="buy" aria-labelledby="cg-buy"><h2 id="cg-buy">Buy more</h2>"#.to_string();
    match (&settings.checkout_url, settings.bundles.is_empty()) {
        (Some(url), false) => {
            out.push_str(r#"<ul class="cg-bundles">"#);
            for b in &settings.bundles {
                let scale = data
                    .credits
                    .iter()
                    .find(|c| c.name == b.credit_type)
                    .map_or(0, |c| c.scale);
                let sep = if url.contains('?') { '&' } else { '?' };
                let href = format!(
                    "{url}{sep}bundle={}&customer={}",
                    url_encode(&b.id),
                    url_encode(&data.customer)
                );
                let _ = write!(
                    out,
                    r#"<li><a class="cg-bundle" href="{}" target="_top" rel="noopener" data-bundle="{}"><span class="cg-bundle-credits">{} {}</span><span class="cg-price">{}</span><span class="cg-buy">Buy</span></a></li>"#,
                    esc(&href),
                    esc(&b.id),
                    credits(b.credits as i64, scale),
                    esc(&display_name_of(data, &b.credit_type)),
                    esc(&money(b.price_micros)),
                );
            }
            out.push_str("</ul>");
        }
        _ => out.push_str(r#"<p class="cg-empty">Purchases are not offered here.</p>"#),
    }
    out.push_str(&auto_recharge(data, settings, q));
    out.push_str("</section>");
    out
}

/// A price in currency micro-units as `$50` or `$12.50` (the bundles' currency is the
/// product's; the page shows the amount with a dollar sign as the operations file means).
fn money(micros: u64) -> String {
    let cents = micros / 10_000;
    if cents.is_multiple_of(100) {
        format!("${}", credits((cents / 100) as i64, 0))
    } else {
        format!("${}.{:02}", credits((cents / 100) as i64, 0), cents % 100)
    }
}

fn auto_recharge(data: &PageData, settings: &PageSettings, q: &PageQuery) -> String {
    if !settings.auto_recharge {
        return String::new();
    }
    let mut out = r#"<h3 id="auto-recharge">Auto-recharge</h3><ul class="cg-list">"#.to_string();
    for c in &data.credits {
        let status = match c.recharge {
            Some((threshold, target)) => format!(
                r#"<span class="cg-on">On</span> below {} tops up to {}"#,
                credits(threshold as i64, c.scale),
                credits(target as i64, c.scale)
            ),
            None => r#"<span class="cg-off">Off</span>"#.to_string(),
        };
        let _ = write!(
            out,
            r#"<li data-auto-recharge="{}"><span>{}</span><span>{status}</span></li>"#,
            esc(&c.name),
            esc(&c.display_name)
        );
        if let Some(max) = settings
            .recharge_max
            .get(&c.name)
            .filter(|_| !q.session.is_empty())
        {
            out.push_str(&recharge_form(c, *max, q));
        }
    }
    out.push_str("</ul>");
    out
}

/// The form that changes one credit type's auto-recharge (sessions only; it posts the
/// session back, never a cookie, so no other site can submit it for the customer).
fn recharge_form(c: &CreditView, max: u64, q: &PageQuery) -> String {
    let (threshold, target) = c.recharge.unwrap_or((0, 0));
    let value = |v: u64| {
        if v == 0 {
            String::new()
        } else {
            credits(v as i64, c.scale).replace(',', "")
        }
    };
    format!(
        r#"<li class="cg-recharge"><details><summary>Change auto-recharge of {dn}</summary><form method="post" action="/customer/auto-recharge{action}" data-recharge-form="{name}">{hidden}<input type="hidden" name="credit_type" value="{name}"><label class="cg-check"><input type="checkbox" name="enabled"{checked}> On</label><label>When below <input name="threshold" inputmode="decimal" value="{th}"></label><label>top up to <input name="target" inputmode="decimal" value="{tg}"></label><span class="cg-muted">at most {max}</span><button type="submit">Save</button></form></details></li>"#,
        dn = esc(&c.display_name),
        name = esc(&c.name),
        // The session goes in the URL too: the token check reads headers and the query,
        // never a body.
        action = link(
            q,
            &[("page", ""), ("request", ""), ("kind", ""), ("feature", "")]
        ),
        hidden = hidden_inputs(q),
        checked = if c.recharge.is_some() { " checked" } else { "" },
        th = value(threshold),
        tg = value(target),
        max = credits(max as i64, c.scale),
    )
}

/// How a ledger entry is named for customers.
fn kind_label(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::GrantAdded => "Credits added",
        EntryKind::HoldPosted => "Usage",
        EntryKind::GrantExpired => "Expired",
        EntryKind::Adjustment => "Adjustment",
        EntryKind::Overage => "Overage",
        EntryKind::HoldPlaced => "Held",
        EntryKind::HoldVoided => "Returned (not charged)",
        EntryKind::HoldExpired => "Returned (hold expired)",
    }
}

/// The name customers see for a credit type on this page.
fn display_name_of(data: &PageData, credit_type: &str) -> String {
    data.credits
        .iter()
        .find(|c| c.name == credit_type)
        .map_or_else(|| credit_type.to_string(), |c| c.display_name.clone())
}

/// The stored-unit scale of a credit type on this page.
fn scale_of(data: &PageData, credit_type: &str) -> u32 {
    data.credits
        .iter()
        .find(|c| c.name == credit_type)
        .map_or(0, |c| c.scale)
}

fn entry_row(data: &PageData, q: &PageQuery, e: &LedgerEntry) -> String {
    let n = &e.entry;
    let request = match &n.request_id {
        Some(id) => format!(
            r#"<a href="{}#trail" class="cg-mono">{}</a>"#,
            link(q, &[("request", id)]),
            esc(id)
        ),
        None => String::new(),
    };
    let amount = credits(n.amount, scale_of(data, &n.credit_type));
    let amount = if n.amount > 0 {
        format!("+{amount}")
    } else {
        amount
    };
    format!(
        r#"<tr data-entry="{kind}"><td class="cg-c-time"><time>{}</time></td><td class="cg-c-entry">{}</td><td class="cg-c-amount cg-r cg-num{}">{amount}</td><td class="cg-c-type">{}</td><td class="cg-c-feature">{}</td><td class="cg-c-route">{}</td><td class="cg-c-request">{request}</td><td class="cg-reason">{}</td></tr>"#,
        esc(date_time(n.event_at_ms).trim_end_matches(" UTC")),
        kind_label(n.kind),
        if n.amount < 0 { " cg-neg" } else { "" },
        esc(&n.credit_type),
        esc(n.feature.as_deref().unwrap_or("")),
        esc(n.route.as_deref().unwrap_or("")),
        esc(n.reason.as_deref().unwrap_or("")),
        kind = n.kind.as_str(),
    )
}

fn ledger_filters(data: &PageData, q: &PageQuery) -> String {
    let mut kinds = r#"<option value="">All entries</option>"#.to_string();
    for k in KindFilter::ALL {
        let sel = if q.kind == Some(k) { " selected" } else { "" };
        let _ = write!(
            kinds,
            r#"<option value="{}"{sel}>{}</option>"#,
            k.as_str(),
            k.as_str()
        );
    }
    let mut features = r#"<option value="">All features</option>"#.to_string();
    for f in &data.features {
        let sel = if q.feature.as_deref() == Some(f) {
            " selected"
        } else {
            ""
        };
        let _ = write!(features, r#"<option value="{0}"{sel}>{0}</option>"#, esc(f));
    }
    let csv = link(q, &[("page", "")]).replacen('?', "ledger.csv?", 1);
    format!(
        r#"<form class="cg-filters" method="get" action="/customer/">{}<label>Kind <select name="kind">{kinds}</select></label><label>Feature <select name="feature">{features}</select></label><button type="submit">Filter</button><a class="cg-csv" href="/customer/{csv}" download>Export CSV</a></form>"#,
        hidden_inputs(q)
    )
}

fn ledger_section(data: &PageData, q: &PageQuery) -> String {
    let total = data.entries.len();
    let pages = total.div_ceil(LEDGER_PAGE_ROWS).max(1);
    let page = q.page.min(pages);
    let rows: String = data
        .entries
        .iter()
        .skip((page - 1) * LEDGER_PAGE_ROWS)
        .take(LEDGER_PAGE_ROWS)
        .map(|e| entry_row(data, q, e))
        .collect();
    let rows = if rows.is_empty() {
        r#"<tr><td colspan="8" class="cg-empty">No entries in this range.</td></tr>"#.to_string()
    } else {
        rows
    };
    let prev = if page > 1 {
        format!(
            r#"<a rel="prev" href="{}#ledger">← Newer</a>"#,
            link(q, &[("page", &(page - 1).to_string())])
        )
    } else {
        String::new()
    };
    let next = if page < pages {
        format!(
            r#"<a rel="next" href="{}#ledger">Older →</a>"#,
            link(q, &[("page", &(page + 1).to_string())])
        )
    } else {
        String::new()
    };
    let capped = if data.entries_capped {
        r#"<p class="cg-muted">Showing the oldest entries the page reads at once; pick a shorter range for the rest.</p>"#
    } else {
        ""
    };
    format!(
        r#"<section class="cg-panel" id="ledger" aria-labelledby="cg-ledger"><h2 id="cg-ledger">History</h2>{}{capped}<div class="cg-scroll"><table class="cg-table"><thead><tr><th>Time (UTC)</th><th>Entry</th><th class="cg-r">Credits</th><th>Type</th><th>Feature</th><th>Route</th><th>Request</th><th>Reason</th></tr></thead><tbody>{rows}</tbody></table></div><nav class="cg-pages" aria-label="Pages">{prev}<span>Page {page} of {pages} · {total} entries</span>{next}</nav></section>"#,
        ledger_filters(data, q)
    )
}

fn trail_section(data: &PageData, q: &PageQuery) -> String {
    let mut out = format!(
        r#"<section class="cg-panel" id="trail" aria-labelledby="cg-trail"><h2 id="cg-trail">Request trail</h2><form class="cg-filters" method="get" action="/customer/">{}<label>Request id <input name="request" value="{}" placeholder="x-request-id of a response" autocomplete="off"></label><button type="submit">Look up</button></form>"#,
        hidden_inputs(q),
        esc(q.request.as_deref().unwrap_or(""))
    );
    if let Some((id, entries)) = &data.trail {
        if entries.is_empty() {
            let _ = write!(
                out,
                r#"<p class="cg-empty" data-trail-empty>No entries of yours for request {}.</p>"#,
                esc(id)
            );
        } else {
            let rows: String = entries.iter().map(|e| trail_row(data, e)).collect();
            let _ = write!(
                out,
                r#"<div class="cg-scroll"><table class="cg-table" data-trail="{}"><thead><tr><th>Time</th><th>Step</th><th>Type</th><th>Feature</th><th>Route</th><th>Grants</th></tr></thead><tbody>{rows}</tbody></table></div>"#,
                esc(id)
            );
        }
    }
    out.push_str("</section>");
    out
}

fn trail_row(data: &PageData, e: &LedgerEntry) -> String {
    let n = &e.entry;
    let scale = scale_of(data, &n.credit_type);
    let mut grants = String::new();
    if let Some(obj) = n.grants.as_object() {
        for (what, list) in obj {
            for g in list.as_array().into_iter().flatten() {
                let amount = g.get("amount").and_then(|a| a.as_i64()).unwrap_or(0);
                let _ = write!(
                    grants,
                    "<div>{} {} · {}</div>",
                    esc(what),
                    credits(amount, scale),
                    esc(g.get("grant_id").and_then(|v| v.as_str()).unwrap_or(""))
                );
            }
        }
    }
    format!(
        r#"<tr data-trail-entry="{}"><td><time>{}</time></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="cg-mono">{grants}</td></tr>"#,
        n.kind.as_str(),
        esc(&date_time(n.event_at_ms)),
        kind_label(n.kind),
        esc(&n.credit_type),
        esc(n.feature.as_deref().unwrap_or("")),
        esc(n.route.as_deref().unwrap_or("")),
    )
}

/// The page shown instead when the request cannot be answered: a status line and the
/// message, escaped.
pub fn error_page(title: &str, message: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{t}</title><style>{css}</style></head><body><main class="cg"><section class="cg-panel cg-error"><h1>{t}</h1><p>{m}</p></section></main></body></html>"#,
        t = esc(title),
        m = esc(message),
        css = PAGE_CSS
    )
}

/// The ledger entries as CSV (RFC 4180 quoting), amounts in display units.
pub fn csv(data_scale: &dyn Fn(&str) -> u32, entries: &[LedgerEntry]) -> String {
    let cell = |s: &str| {
        // A leading =, +, - or @ would be read as a formula by spreadsheets.
        let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
            format!("'{s}")
        } else {
            s.to_string()
        };
        format!("\"{}\"", s.replace('"', "\"\""))
    };
    let mut out = String::from(
        "time_utc,event_at_ms,entry,credit_type,credits,feature,route,request_id,grant_id,reason,event_id\r\n",
    );
    for e in entries {
        let n = &e.entry;
        let fields = [
            date_time(n.event_at_ms),
            n.event_at_ms.to_string(),
            n.kind.as_str().to_string(),
            n.credit_type.clone(),
            credits(n.amount, data_scale(&n.credit_type)).replace(',', ""),
            n.feature.clone().unwrap_or_default(),
            n.route.clone().unwrap_or_default(),
            n.request_id.clone().unwrap_or_default(),
            n.grant_id.clone().unwrap_or_default(),
            n.reason.clone().unwrap_or_default(),
            n.event_id.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| cell(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}
