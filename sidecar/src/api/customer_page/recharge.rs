//! The customer page's one change: a customer turning auto-recharge on or off for a credit
//! type, with a threshold and a target within the operations file's
//! `[customer_page.recharge_target_max]`. An auto-recharge asks the product's billing to
//! sell the customer credits (the alert pass's recharge webhook), so this only starts
//! purchases, never grants; the low-balance threshold is left as it is.
//!
//! `POST /customer/auto-recharge` (form: `session`, `credit_type`, `enabled`, `threshold`,
//! `target` in display units, and `days` / `theme_*` to return to) answers 303 back to the
//! page, or an error page naming the field.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::data::{alert_settings, credit_types};
use super::format::{esc, query};
use super::html::error_page;
use crate::api::admin::alerts::{AlertSettings, upsert};
use crate::api::read_access::{ReadState, Reader, url_pairs};
use crate::ledger::now_ms;

/// Largest form body read, bytes: a handful of short fields.
pub const RECHARGE_FORM_MAX_BYTES: usize = 4 * 1024;

/// An amount written in display units (`12.5`) in stored units at `scale`; `None` when it
/// is not a plain non-negative decimal with at most `scale` places.
pub fn parse_display(text: &str, scale: u32) -> Option<u64> {
    let text = text.trim().replace(',', "");
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > scale as usize {
        return None;
    }
    let unit = 10u64.checked_pow(scale)?;
    let frac_units: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}", width = scale as usize)
            .parse()
            .ok()?
    };
    whole
        .parse::<u64>()
        .ok()?
        .checked_mul(unit)?
        .checked_add(frac_units)
}

fn bad(field: &str, message: String) -> Response {
    let text = format!("{field}: {message}");
    (
        StatusCode::BAD_REQUEST,
        page_html(error_page("Not saved", &text)),
    )
        .into_response()
}

fn page_html(body: String) -> ([(header::HeaderName, &'static str); 2], String) {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

/// The settings a form asks for, checked against the limits: `Err` names the field.
fn settings_from(
    st: &ReadState,
    customer: &str,
    form: &[(String, String)],
) -> Result<(AlertSettings, Option<u64>), (String, String)> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let credit_type = get("credit_type").unwrap_or_default().to_string();
    let Some(max) = st.page.recharge_max.get(&credit_type).copied() else {
        return Err((
            "credit_type".into(),
            format!("auto-recharge of {credit_type:?} cannot be changed here"),
        ));
    };
    let scale = credit_types(st).get(&credit_type).map_or(0, |t| t.1);
    let amount = |field: &str| {
        parse_display(get(field).unwrap_or_default(), scale).ok_or_else(|| {
            (
                field.to_string(),
                format!("must be a number with at most {scale} decimals"),
            )
        })
    };
    let recharge = if get("enabled").is_some() {
        let (threshold, target) = (amount("threshold")?, amount("target")?);
        if target <= threshold {
            return Err(("target".into(), "must be above the threshold".into()));
        }
        if target > max {
            let max = super::format::credits(max as i64, scale);
            return Err(("target".into(), format!("must be at most {max}")));
        }
        Some((threshold, target))
    } else {
        None
    };
    let settings = AlertSettings {
        customer: customer.to_string(),
        credit_type,
        low_balance_threshold: None,
        recharge_threshold: recharge.map(|r| r.0),
        recharge_target: recharge.map(|r| r.1),
    };
    Ok((settings, Some(max)))
}

/// `POST /customer/auto-recharge`.
pub async fn set(State(st): State<Arc<ReadState>>, reader: Reader, body: String) -> Response {
    let Some(customer) = reader.own_customer().map(str::to_string) else {
        return bad(
            "Authorization",
            "staff change alert settings through the admin API".into(),
        );
    };
    let form: Vec<(String, String)> = format!("/?{body}")
        .parse::<Uri>()
        .map(|u| url_pairs(&u))
        .unwrap_or_default();
    let (mut settings, _) = match settings_from(&st, &customer, &form) {
        Ok(s) => s,
        Err((field, message)) => return bad(&field, message),
    };
    // The low-balance threshold is the product's to set; keep it.
    settings.low_balance_threshold = match alert_settings(&st, &customer).await {
        Ok(all) => all.get(&settings.credit_type).and_then(|a| a.0),
        Err(m) => return bad("(store)", m),
    };
    let actor = format!("customer-session:{customer}");
    if let Err(e) = upsert(&st.db, &settings, &actor, now_ms()).await {
        return bad("(store)", format!("the admin tables are unavailable: {e}"));
    }
    let keep: Vec<(&str, &str)> = form
        .iter()
        .filter(|(k, _)| k == "session" || k == "days" || k.starts_with("theme_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let location = format!("/customer/?{}#buy", query(&keep));
    let mut r = (StatusCode::SEE_OTHER, esc("saved")).into_response();
    if let Ok(v) = location.parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_amounts_parse_at_the_scale() {
        assert_eq!(parse_display("12.5", 3), Some(12_500));
        assert_eq!(parse_display("1,000", 0), Some(1_000));
        assert_eq!(parse_display("7", 2), Some(700));
        assert_eq!(parse_display("0.001", 2), None);
        assert_eq!(parse_display("-1", 0), None);
        assert_eq!(parse_display("", 0), None);
        assert_eq!(parse_display("1e3", 0), None);
    }
}
