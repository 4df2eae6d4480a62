//! The console's HTML building blocks: escaping (every value put in a page goes through
//! [`esc`]), the page frame with its embedded stylesheet, tables of JSON rows, dates, and
//! the hidden fields of a change form. No I/O, no rules.

use std::fmt::Write;

use serde_json::Value;

/// The console's stylesheet, embedded in the binary (no CDN, no build step).
pub const CSS: &str = include_str!("console.css");

/// One day, ms.
pub const DAY_MS: u64 = 86_400_000;

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for one URL path segment or query value.
pub fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Who is logged in, for the frame's header.
pub struct Viewer<'a> {
    /// The token's name.
    pub name: &'a str,
    /// The role's name.
    pub role: &'a str,
    /// The session's CSRF token (for the logout form).
    pub csrf: &'a str,
}

/// A whole page: `title`, the navigation for `viewer` (none on the login page), an
/// optional notice (`Ok`: done; `Err`: refused) and `body`.
pub fn page(
    title: &str,
    viewer: Option<&Viewer>,
    notice: Option<Result<String, String>>,
    body: &str,
) -> String {
    let nav = viewer.map_or_else(String::new, |v| {
        format!(
            r#"<nav><a href="/console">Customers</a><a href="/console/approvals">Approvals</a><a href="/console/requests">Request trail</a><a href="/console/revenue">Revenue</a><a href="/console/dead-letters">Dead letters</a><a href="/console/modes">Modes</a></nav>
<form class="who" method="post" action="/console/logout"><span>{} <em>{}</em></span>{}<button type="submit" class="link">Log out</button></form>"#,
            esc(v.name),
            esc(v.role),
            csrf_field(v.csrf)
        )
    });
    let notice = match notice {
        Some(Ok(m)) => format!(r#"<div class="notice ok" role="status">{}</div>"#, esc(&m)),
        Some(Err(m)) => format!(r#"<div class="notice err" role="alert">{}</div>"#, esc(&m)),
        None => String::new(),
    };
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · creditgate support</title><link rel="stylesheet" href="/console/console.css"></head>
<body><header><a class="brand" href="/console">creditgate <span>support</span></a>{nav}</header>
<main>{notice}{body}</main></body></html>"#,
        esc(title)
    )
}

/// The hidden CSRF field every change form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// The hidden fields of a change form: the CSRF token and a fresh form id (the change's
/// `Idempotency-Key`, so a form sent twice changes once).
pub fn change_fields(csrf: &str) -> String {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
    format!(
        r#"{}<input type="hidden" name="form_id" value="{}">"#,
        csrf_field(csrf),
        hex::encode(id)
    )
}

/// A JSON value as table-cell text: strings bare, `null` as a dash, times readable.
pub fn cell(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => esc(s),
        Value::Number(n) if key.ends_with("_ms") => {
            n.as_u64().map_or_else(|| n.to_string(), date_time)
        }
        Value::Number(n) => n.to_string(),
        other => esc(&other.to_string()),
    }
}

/// A table of `rows` (JSON objects) with `columns` (key, heading); `empty` when none.
pub fn table(rows: &[Value], columns: &[(&str, &str)], empty: &str) -> String {
    if rows.is_empty() {
        return format!(r#"<p class="empty">{}</p>"#, esc(empty));
    }
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for (_, heading) in columns {
        let _ = write!(out, "<th>{}</th>", esc(heading));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (key, heading) in columns {
            let v = row.get(*key).unwrap_or(&Value::Null);
            let _ = write!(
                out,
                r#"<td data-label="{}">{}</td>"#,
                esc(heading),
                cell(key, v)
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` since the epoch as `YYYY-MM-DD`, UTC.
pub fn date(ms: u64) -> String {
    let (y, m, d) = civil((ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn date_time(ms: u64) -> String {
    let minutes = (ms % DAY_MS) / 60_000;
    format!("{} {:02}:{:02} UTC", date(ms), minutes / 60, minutes % 60)
}

/// A `YYYY-MM-DD` date as ms since the epoch at 00:00 UTC; `None` when malformed.
pub fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    (civil(days) == (y, m, d)).then(|| days as u64 * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc(r#"<script>"x"&'y'</script>"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url_part("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        let ms = parse_date("2026-02-28").unwrap();
        assert_eq!(date(ms), "2026-02-28");
        assert_eq!(date(ms + DAY_MS), "2026-03-01");
        assert_eq!(date_time(ms + 90 * 60_000), "2026-02-28 01:30 UTC");
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("soon"), None);
    }
}
