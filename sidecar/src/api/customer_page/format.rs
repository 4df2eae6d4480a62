//! Text helpers of the customer page: HTML escaping, URL encoding, credits in display
//! units and UTC dates. Pure functions; nothing here reads data or knows the page's layout.

use crate::ledger::utc_day;

/// `text` escaped for HTML text and double- or single-quoted attribute values, so a
/// reason or customer id containing markup renders as the characters it is.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// `text` percent-encoded for a URL query value (RFC 3986 unreserved characters kept).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, each value percent-encoded; pairs with empty values left out.
pub fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `n` with a comma between each group of three digits.
fn group_digits(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An amount in stored units shown in display units of a credit type with `scale`
/// decimal places: `1234500` at scale 3 is `1,234.5`; trailing zeros dropped.
pub fn credits(amount: i64, scale: u32) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let unit = 10u128.pow(scale.min(12));
    let abs = u128::from(amount.unsigned_abs());
    let (whole, frac) = (abs / unit, abs % unit);
    let mut text = format!("{sign}{}", group_digits(whole));
    if frac > 0 {
        let digits = format!("{frac:0width$}", width = scale as usize);
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The UTC date of an instant as `Jan 31, 2027`.
pub fn date(ms: u64) -> String {
    let day = utc_day(ms);
    let mut parts = day.split('-');
    let (y, m, d) = (parts.next(), parts.next(), parts.next());
    match (
        y,
        m.and_then(|m| m.parse::<usize>().ok()),
        d.and_then(|d| d.parse::<u32>().ok()),
    ) {
        (Some(y), Some(m @ 1..=12), Some(d)) => format!("{} {d}, {y}", MONTHS[m - 1]),
        _ => day,
    }
}

/// A short UTC day label for a chart axis, `Jan 31`.
pub fn short_day(ms: u64) -> String {
    let full = date(ms);
    full.split(',').next().unwrap_or(&full).to_string()
}

/// The UTC time of an instant as `2027-01-31 14:05:09 UTC`.
pub fn date_time(ms: u64) -> String {
    let secs = (ms / 1000) % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        utc_day(ms),
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url_encode("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
        assert_eq!(query(&[("a", "1"), ("b", ""), ("c", "x y")]), "a=1&c=x%20y");
    }

    #[test]
    fn credits_use_the_scale() {
        assert_eq!(credits(1_234_500, 3), "1,234.5");
        assert_eq!(credits(1_000, 0), "1,000");
        assert_eq!(credits(-25, 2), "-0.25");
        assert_eq!(credits(999, 0), "999");
        assert_eq!(credits(i64::MIN, 12), "-9,223,372.036854775808");
    }

    #[test]
    fn dates_are_utc() {
        // 2027-01-31T14:05:09Z
        let ms = 1_801_404_309_000;
        assert_eq!(date(ms), "Jan 31, 2027");
        assert_eq!(short_day(ms), "Jan 31");
        assert_eq!(date_time(ms), "2027-01-31 14:05:09 UTC");
    }
}
