//! The credit-operations file (`run --operations FILE`): the settings of the admin API
//! that ops edit — known credit types, reason codes, per-role grant limits, top-up
//! bundles and scheduled grants — parsed, then validated with every error naming
//! `file:line: field`.
//!
//! It is a separate file from the pricing config because it changes on a different
//! rhythm and is owned by other people (finance and support leads, not the platform team);
//! the gateways never read it. This module only parses and checks; it never grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use creditgate_protocol::MAX_AMOUNT;
use creditgate_protocol::keys::validate_id;
use serde::Deserialize;
use toml::Spanned;

/// Longest promotion lifetime when the file does not say: one year, in days. A promotion
/// must expire; a year is the longest run a marketing campaign usually has.
pub const DEFAULT_PROMOTION_MAX_DAYS: u64 = 366;

/// Reason code of the grants a purchase creates (not configurable: finance reports on it).
pub const PURCHASE_REASON_CODE: &str = "purchase";

/// Reason code of the grants a schedule creates.
pub const SCHEDULE_REASON_CODE: &str = "scheduled_allotment";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOperations {
    credit_types: Spanned<Vec<String>>,
    #[serde(default)]
    reason_codes: Vec<Spanned<String>>,
    #[serde(default)]
    promotion_max_days: Option<Spanned<u64>>,
    #[serde(default)]
    limits: BTreeMap<String, Spanned<FileLimit>>,
    #[serde(default)]
    bundles: Vec<Spanned<FileBundle>>,
    #[serde(default)]
    schedules: Vec<Spanned<FileSchedule>>,
    #[serde(default)]
    webhooks: Option<Spanned<FileEndpoint>>,
    #[serde(default)]
    auto_recharge: Option<Spanned<FileEndpoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    expiring_within_days: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimit {
    per_grant_max: u64,
    per_day_max: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBundle {
    id: String,
    credit_type: String,
    credits: u64,
    price_micros: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchedule {
    id: String,
    plan: String,
    credit_type: String,
    amount: u64,
    #[serde(default)]
    expires_after_days: Option<u64>,
}

/// How much a role may grant without a second person's approval, in credit units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleLimit {
    /// Largest single grant.
    pub per_grant_max: u64,
    /// Largest total of one actor's grants per UTC day.
    pub per_day_max: u64,
}

/// A top-up bundle: what a purchase of it grants and what it costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The bundle's id, named in purchase calls.
    pub id: String,
    /// The credit type granted.
    pub credit_type: String,
    /// Credits granted, in the credit type's smallest unit.
    pub credits: u64,
    /// Price, currency micro-units: the grant's cost basis.
    pub price_micros: u64,
}

/// A monthly allotment for every customer on a plan, granted once per calendar month (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The schedule's id (part of each grant id, so a period is granted once).
    pub id: String,
    /// Customers on this plan receive it.
    pub plan: String,
    /// The credit type.
    pub credit_type: String,
    /// Credits per period.
    pub amount: u64,
    /// Days until a period's grant expires; `None` for never.
    pub expires_after_days: Option<u64>,
}

/// Shortest webhook signing secret, bytes: 128 bits of a random hex string.
pub const WEBHOOK_SECRET_MIN_LEN: usize = 32;

/// How many days ahead the expiring-grants webhook looks when the file does not say.
pub const DEFAULT_EXPIRING_WITHIN_DAYS: u64 = 7;

/// Where a signed webhook goes.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The HMAC-SHA256 key the body is signed with.
    pub secret: String,
    /// How far ahead grant expiry is announced, days (events webhook only).
    pub expiring_within_days: u64,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("expiring_within_days", &self.expiring_within_days)
            .finish()
    }
}

/// The validated operations settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operations {
    /// Credit types grants may use.
    pub credit_types: BTreeSet<String>,
    /// Reason codes a grant may carry.
    pub reason_codes: BTreeSet<String>,
    /// Longest promotion lifetime, days.
    pub promotion_max_days: u64,
    /// Per-role limits; a role without one has no limit.
    pub limits: BTreeMap<String, RoleLimit>,
    /// Top-up bundles by id.
    pub bundles: BTreeMap<String, Bundle>,
    /// Scheduled grants.
    pub schedules: Vec<Schedule>,
    /// The events webhook (low balance, depleted, grants expiring), if configured.
    pub webhooks: Option<Endpoint>,
    /// The billing webhook called to top a customer up, if configured.
    pub auto_recharge: Option<Endpoint>,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            credit_types: BTreeSet::new(),
            reason_codes: BTreeSet::new(),
            promotion_max_days: DEFAULT_PROMOTION_MAX_DAYS,
            limits: BTreeMap::new(),
            bundles: BTreeMap::new(),
            schedules: Vec::new(),
            webhooks: None,
            auto_recharge: None,
        }
    }
}

/// One problem with the file: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationsError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The field path, e.g. `bundles[1].credits`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for OperationsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.message
        )
    }
}

/// Every problem found in the file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationsErrors(pub Vec<OperationsError>);

impl fmt::Display for OperationsErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OperationsErrors {}

/// The roles a limit may name.
const LIMITED_ROLES: [&str; 2] = ["support", "sales"];

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of `field`'s last key in the table that starts at `span` (up to the next
/// table header), else the span's first line.
fn field_line(text: &str, span: std::ops::Range<usize>, field: &str) -> usize {
    let key = field.rsplit('.').next().unwrap_or(field);
    let start = span.start.min(text.len());
    let mut offset = start;
    for (i, line) in text[start..].split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if i > 0 && trimmed.starts_with('[') && !trimmed.starts_with("[\"") {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return line_of(text, offset);
        }
        offset += line.len();
    }
    line_of(text, start)
}

impl Operations {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, OperationsErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            OperationsErrors(vec![OperationsError {
                file: file.clone(),
                line: 0,
                field: "(file)".into(),
                message: e.to_string(),
            }])
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates `text`, naming `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, OperationsErrors> {
        let raw: FileOperations = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            OperationsErrors(vec![OperationsError {
                file: file.to_string(),
                line,
                field: "(syntax)".into(),
                message: e.message().to_string(),
            }])
        })?;
        let mut errors = Vec::new();
        let mut err = |span: std::ops::Range<usize>, field: String, message: String| {
            errors.push(OperationsError {
                file: file.to_string(),
                line: field_line(text, span, &field),
                field,
                message,
            });
        };
        let mut ops = Operations::default();
        let types_span = raw.credit_types.span();
        for t in raw.credit_types.into_inner() {
            if let Err(m) = validate_id("credit type", &t) {
                err(types_span.clone(), "credit_types".into(), m);
            }
            ops.credit_types.insert(t);
        }
        if ops.credit_types.is_empty() {
            err(
                types_span,
                "credit_types".into(),
                "must list at least one credit type".into(),
            );
        }
        for (i, code) in raw.reason_codes.iter().enumerate() {
            if let Err(m) = validate_id("reason code", code.get_ref()) {
                err(code.span(), format!("reason_codes[{i}]"), m);
            }
            if !ops.reason_codes.insert(code.get_ref().clone()) {
                err(
                    code.span(),
                    format!("reason_codes[{i}]"),
                    format!("{:?} is listed twice", code.get_ref()),
                );
            }
        }
        if let Some(days) = raw.promotion_max_days {
            if *days.get_ref() == 0 || *days.get_ref() > 3_660 {
                err(
                    days.span(),
                    "promotion_max_days".into(),
                    "must be from 1 to 3660 days".into(),
                );
            }
            ops.promotion_max_days = *days.get_ref();
        }
        for (role, limit) in &raw.limits {
            let field = format!("limits.{role}");
            if !LIMITED_ROLES.contains(&role.as_str()) {
                err(
                    limit.span(),
                    field.clone(),
                    format!("limits apply to {LIMITED_ROLES:?} only"),
                );
            }
            let l = limit.get_ref();
            if l.per_grant_max == 0 || l.per_grant_max > MAX_AMOUNT {
                err(
                    limit.span(),
                    format!("{field}.per_grant_max"),
                    format!("must be from 1 to {MAX_AMOUNT}"),
                );
            }
            if l.per_day_max < l.per_grant_max || l.per_day_max > MAX_AMOUNT {
                err(
                    limit.span(),
                    format!("{field}.per_day_max"),
                    format!("must be from per_grant_max to {MAX_AMOUNT}"),
                );
            }
            ops.limits.insert(
                role.clone(),
                RoleLimit {
                    per_grant_max: l.per_grant_max,
                    per_day_max: l.per_day_max,
                },
            );
        }
        for (i, b) in raw.bundles.iter().enumerate() {
            let span = b.span();
            let b = b.get_ref();
            let field = format!("bundles[{i}]");
            if let Err(m) = validate_id("bundle id", &b.id) {
                err(span.clone(), format!("{field}.id"), m);
            }
            if !ops.credit_types.contains(&b.credit_type) {
                err(
                    span.clone(),
                    format!("{field}.credit_type"),
                    format!("{:?} is not in credit_types", b.credit_type),
                );
            }
            if b.credits == 0 || b.credits > MAX_AMOUNT {
                err(
                    span.clone(),
                    format!("{field}.credits"),
                    format!("must be from 1 to {MAX_AMOUNT}"),
                );
            }
            if b.price_micros > MAX_AMOUNT {
                err(
                    span.clone(),
                    format!("{field}.price_micros"),
                    format!("must be at most {MAX_AMOUNT}"),
                );
            }
            let bundle = Bundle {
                id: b.id.clone(),
                credit_type: b.credit_type.clone(),
                credits: b.credits,
                price_micros: b.price_micros,
            };
            if ops.bundles.insert(b.id.clone(), bundle).is_some() {
                err(
                    span,
                    format!("{field}.id"),
                    format!("bundle {:?} is defined twice", b.id),
                );
            }
        }
        let mut schedule_ids = BTreeSet::new();
        for (i, s) in raw.schedules.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let field = format!("schedules[{i}]");
            if let Err(m) = validate_id("schedule id", &s.id) {
                err(span.clone(), format!("{field}.id"), m);
            }
            if s.id.len() > 40 {
                err(
                    span.clone(),
                    format!("{field}.id"),
                    "must be at most 40 bytes (it is part of every grant id)".into(),
                );
            }
            if !schedule_ids.insert(s.id.clone()) {
                err(
                    span.clone(),
                    format!("{field}.id"),
                    format!("schedule {:?} is defined twice", s.id),
                );
            }
            if let Err(m) = validate_id("plan", &s.plan) {
                err(span.clone(), format!("{field}.plan"), m);
            }
            if !ops.credit_types.contains(&s.credit_type) {
                err(
                    span.clone(),
                    format!("{field}.credit_type"),
                    format!("{:?} is not in credit_types", s.credit_type),
                );
            }
            if s.amount == 0 || s.amount > MAX_AMOUNT {
                err(
                    span.clone(),
                    format!("{field}.amount"),
                    format!("must be from 1 to {MAX_AMOUNT}"),
                );
            }
            if s.expires_after_days == Some(0) || s.expires_after_days > Some(3_660) {
                err(
                    span,
                    format!("{field}.expires_after_days"),
                    "must be from 1 to 3660 days".into(),
                );
            }
            ops.schedules.push(Schedule {
                id: s.id.clone(),
                plan: s.plan.clone(),
                credit_type: s.credit_type.clone(),
                amount: s.amount,
                expires_after_days: s.expires_after_days,
            });
        }
        for (name, raw_endpoint) in [
            ("webhooks", &raw.webhooks),
            ("auto_recharge", &raw.auto_recharge),
        ] {
            let Some(e) = raw_endpoint else { continue };
            let span = e.span();
            let e = e.get_ref();
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                err(
                    span.clone(),
                    format!("{name}.url"),
                    "must be an http:// or https:// URL".into(),
                );
            }
            let secret = match (&e.secret, &e.secret_env) {
                (Some(s), None) => Some(s.clone()),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        err(
                            span.clone(),
                            format!("{name}.secret_env"),
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                },
                _ => {
                    err(
                        span.clone(),
                        format!("{name}.secret"),
                        "give exactly one of secret and secret_env".into(),
                    );
                    None
                }
            };
            if let Some(s) = &secret
                && s.len() < WEBHOOK_SECRET_MIN_LEN
            {
                err(
                    span.clone(),
                    format!(
                        "{name}.{}",
                        if e.secret.is_some() {
                            "secret"
                        } else {
                            "secret_env"
                        }
                    ),
                    format!("the secret must be at least {WEBHOOK_SECRET_MIN_LEN} bytes"),
                );
            }
            let days = e
                .expiring_within_days
                .unwrap_or(DEFAULT_EXPIRING_WITHIN_DAYS);
            if name == "auto_recharge" && e.expiring_within_days.is_some() {
                err(
                    span.clone(),
                    format!("{name}.expiring_within_days"),
                    "belongs to [webhooks]".into(),
                );
            }
            if days == 0 || days > 366 {
                err(
                    span.clone(),
                    format!("{name}.expiring_within_days"),
                    "must be from 1 to 366 days".into(),
                );
            }
            let endpoint = Endpoint {
                url: e.url.clone(),
                secret: secret.unwrap_or_default(),
                expiring_within_days: days,
            };
            if name == "webhooks" {
                ops.webhooks = Some(endpoint);
            } else {
                ops.auto_recharge = Some(endpoint);
            }
        }
        if errors.is_empty() {
            Ok(ops)
        } else {
            Err(OperationsErrors(errors))
        }
    }

    /// The limit of `role`, if it has one.
    pub fn limit(&self, role: &str) -> Option<RoleLimit> {
        self.limits.get(role).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
credit_types = ["api", "ai"]
reason_codes = ["outage", "billing_error"]

[limits.support]
per_grant_max = 1000
per_day_max = 5000

[[bundles]]
id = "starter"
credit_type = "api"
credits = 1000
price_micros = 50000000

[[schedules]]
id = "annual-monthly"
plan = "annual"
credit_type = "api"
amount = 10000
"#;

    #[test]
    fn a_good_file_parses() {
        let ops = Operations::parse("ops.toml", GOOD).unwrap();
        assert_eq!(ops.bundles["starter"].credits, 1000);
        assert_eq!(ops.limit("support").unwrap().per_day_max, 5000);
        assert_eq!(ops.limit("sales"), None);
        assert_eq!(ops.schedules[0].plan, "annual");
        assert_eq!(ops.promotion_max_days, DEFAULT_PROMOTION_MAX_DAYS);
    }

    #[test]
    fn the_example_file_is_valid() {
        // Inline secrets instead of the environment, so the test does not depend on it.
        let text = include_str!("../examples/operations.toml")
            .replace(
                "secret_env = \"CREDITGATE_WEBHOOK_SECRET\"",
                &format!("secret = \"{}\"", "s".repeat(32)),
            )
            .replace(
                "secret_env = \"CREDITGATE_RECHARGE_SECRET\"",
                &format!("secret = \"{}\"", "r".repeat(32)),
            );
        let ops = Operations::parse("operations.toml", &text).unwrap();
        assert_eq!(ops.bundles.len(), 2);
        assert_eq!(ops.webhooks.unwrap().expiring_within_days, 7);
        assert!(ops.auto_recharge.is_some());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace("credits = 1000", "credits = 0");
        let e = Operations::parse("ops.toml", &bad).unwrap_err().to_string();
        assert!(e.starts_with("ops.toml:12: bundles[0].credits: "), "{e}");
        let bad = GOOD.replace("[limits.support]", "[limits.readonly]");
        let e = Operations::parse("ops.toml", &bad).unwrap_err().to_string();
        assert!(e.starts_with("ops.toml:5: limits.readonly: "), "{e}");
        let bad = format!("{GOOD}\n[webhooks]\nurl = \"ftp://x\"\nsecret = \"short\"\n");
        let e = Operations::parse("ops.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("ops.toml:22: webhooks.url: "), "{e}");
        assert!(e.contains("ops.toml:23: webhooks.secret: "), "{e}");
        let bad = GOOD.replace("amount = 10000", "amount = 1\nextra = 2");
        let e = Operations::parse("ops.toml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("ops.toml:20: (syntax): unknown field `extra`"),
            "{e}"
        );
    }
}
