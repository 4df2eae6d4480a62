//! The credit-operations file (`run --operations FILE`): the settings of the admin API
//! that ops edit — known credit types, reason codes, per-role grant limits, top-up
//! bundles and scheduled grants — parsed, then validated with every error naming
//! `file:line: field` through the config crate's diagnostics, as the pricing config does.
//!
//! It is a separate file from the pricing config because it changes on a different
//! rhythm and is owned by other people (finance and support leads, not the platform team);
//! the gateways never read it. This module only parses and checks; it never grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use creditgate_config::{ConfigError, ConfigErrors, Diagnostics, MAX_AMOUNT};
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
    #[serde(default)]
    customer_page: Option<Spanned<FileCustomerPage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCustomerPage {
    #[serde(default)]
    checkout_url: Option<String>,
    #[serde(default)]
    recharge_target_max: BTreeMap<String, Spanned<u64>>,
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
    #[serde(default)]
    per_grant_max: Option<u64>,
    #[serde(default)]
    per_day_max: Option<u64>,
    #[serde(default)]
    credit_types: BTreeMap<String, Spanned<FileTypeLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTypeLimit {
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

/// How much a role may grant of one credit type without a second person's approval, in
/// that credit type's stored units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleLimit {
    /// Largest single grant.
    pub per_grant_max: u64,
    /// Largest total of one actor's grants of the credit type per UTC day.
    pub per_day_max: u64,
}

/// A role's limits: per credit type (`[limits.ROLE.credit_types.TYPE]`), else the role's
/// own `per_grant_max` / `per_day_max`, which apply to each other credit type in its own
/// stored units (so a file written before per-type limits means what it did per grant).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleLimits {
    /// For credit types without their own limit.
    pub default: Option<RoleLimit>,
    /// By credit type.
    pub by_credit_type: BTreeMap<String, RoleLimit>,
}

impl RoleLimits {
    /// The limit on grants of `credit_type`. A credit type the file did not cover (the
    /// check refuses such a file for the listed types) gets a zero limit: every grant of it
    /// waits for approval.
    pub fn of(&self, credit_type: &str) -> RoleLimit {
        self.by_credit_type
            .get(credit_type)
            .copied()
            .or(self.default)
            .unwrap_or(RoleLimit {
                per_grant_max: 0,
                per_day_max: 0,
            })
    }
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
    pub limits: BTreeMap<String, RoleLimits>,
    /// Top-up bundles by id.
    pub bundles: BTreeMap<String, Bundle>,
    /// Scheduled grants.
    pub schedules: Vec<Schedule>,
    /// The events webhook (low balance, depleted, grants expiring), if configured.
    pub webhooks: Option<Endpoint>,
    /// The billing webhook called to top a customer up, if configured.
    pub auto_recharge: Option<Endpoint>,
    /// `[customer_page] checkout_url`: where the customer page's "Buy" links go (with
    /// `bundle=` and `customer=` appended); `None`: the pricing config's `top_up_url`.
    pub checkout_url: Option<String>,
    /// `[customer_page.recharge_target_max]`: per credit type, the highest auto-recharge
    /// target (stored units) a customer may set on the customer page; a credit type not
    /// listed cannot be changed there.
    pub customer_recharge_max: BTreeMap<String, u64>,
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
            checkout_url: None,
            customer_recharge_max: BTreeMap::new(),
        }
    }
}

/// The roles a limit may name.
const LIMITED_ROLES: [&str; 2] = ["support", "sales"];

/// Longest promotion lifetime and longest scheduled-grant life a file may set, days: ten
/// years.
const MAX_LIFETIME_DAYS: u64 = 3_660;

/// Longest schedule id, bytes: the id is part of every grant id a schedule creates.
const MAX_SCHEDULE_ID_LEN: usize = 40;

/// Furthest ahead the expiring-grants webhook may look, days: one year.
const MAX_EXPIRING_WITHIN_DAYS: u64 = 366;

impl Operations {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::in_order_found(vec![ConfigError {
                file: file.clone(),
                field: "(file)".into(),
                line: Some(0),
                message: e.to_string(),
            }])
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates `text`, naming `file` in errors. The errors come in the order
    /// the sections are checked (not sorted by line), each as `file:line: field: message`.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigErrors> {
        let mut diagnostics = Diagnostics::new(file, text);
        let raw: FileOperations = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                // Line 0 when the parser cannot place the error, as the file has always said.
                let line = e.span().map_or(0, |span| diagnostics.line_of(span.start));
                diagnostics.report_on_line("(syntax)", Some(line), e.message().to_string());
                return Err(ConfigErrors::in_order_found(diagnostics.into_errors()));
            }
        };
        let ops = Self::from_file(&mut diagnostics, raw);
        if diagnostics.is_empty() {
            Ok(ops)
        } else {
            Err(ConfigErrors::in_order_found(diagnostics.into_errors()))
        }
    }

    /// Checks the sections one after the other (the order their errors are reported in),
    /// reporting into `diagnostics`; the result is only meaningful when nothing was reported.
    fn from_file(diagnostics: &mut Diagnostics<'_>, raw: FileOperations) -> Self {
        let credit_types = credit_types(diagnostics, raw.credit_types);
        let reason_codes = reason_codes(diagnostics, &raw.reason_codes);
        let promotion_max_days = match raw.promotion_max_days {
            Some(days) => promotion_max_days(diagnostics, &days),
            None => DEFAULT_PROMOTION_MAX_DAYS,
        };
        let limits = limits(diagnostics, &raw.limits, &credit_types);
        let bundles = bundles(diagnostics, &raw.bundles, &credit_types);
        let schedules = schedules(diagnostics, &raw.schedules, &credit_types);
        let webhooks = raw
            .webhooks
            .as_ref()
            .map(|endpoint| webhook_endpoint(diagnostics, "webhooks", endpoint));
        let auto_recharge = raw
            .auto_recharge
            .as_ref()
            .map(|endpoint| webhook_endpoint(diagnostics, "auto_recharge", endpoint));
        let checkout_url = raw
            .customer_page
            .as_ref()
            .and_then(|page| checkout_url(diagnostics, page));
        let customer_recharge_max = raw
            .customer_page
            .as_ref()
            .map_or_else(BTreeMap::new, |page| {
                customer_recharge_max(
                    diagnostics,
                    page,
                    &credit_types,
                    raw.auto_recharge.is_some(),
                )
            });
        Self {
            credit_types,
            reason_codes,
            promotion_max_days,
            limits,
            bundles,
            schedules,
            webhooks,
            auto_recharge,
            checkout_url,
            customer_recharge_max,
        }
    }

    /// The limit of `role` on grants of `credit_type` (its stored units), if the role
    /// has limits.
    pub fn limit(&self, role: &str, credit_type: &str) -> Option<RoleLimit> {
        self.limits.get(role).map(|l| l.of(credit_type))
    }
}

/// `credit_types`: at least one, each a valid id.
fn credit_types(d: &mut Diagnostics<'_>, written: Spanned<Vec<String>>) -> BTreeSet<String> {
    let span = written.span();
    let mut credit_types = BTreeSet::new();
    for credit_type in written.into_inner() {
        if let Err(m) = validate_id("credit type", &credit_type) {
            d.report_in_table(span.clone(), "credit_types".into(), m);
        }
        credit_types.insert(credit_type);
    }
    if credit_types.is_empty() {
        d.report_in_table(
            span,
            "credit_types".into(),
            "must list at least one credit type".into(),
        );
    }
    credit_types
}

/// `reason_codes`: valid ids, each listed once.
fn reason_codes(d: &mut Diagnostics<'_>, written: &[Spanned<String>]) -> BTreeSet<String> {
    let mut reason_codes = BTreeSet::new();
    for (i, code) in written.iter().enumerate() {
        if let Err(m) = validate_id("reason code", code.get_ref()) {
            d.report_in_table(code.span(), format!("reason_codes[{i}]"), m);
        }
        if !reason_codes.insert(code.get_ref().clone()) {
            d.report_in_table(
                code.span(),
                format!("reason_codes[{i}]"),
                format!("{:?} is listed twice", code.get_ref()),
            );
        }
    }
    reason_codes
}

/// `promotion_max_days`: 1 to [`MAX_LIFETIME_DAYS`].
fn promotion_max_days(d: &mut Diagnostics<'_>, days: &Spanned<u64>) -> u64 {
    if *days.get_ref() == 0 || *days.get_ref() > MAX_LIFETIME_DAYS {
        d.report_in_table(
            days.span(),
            "promotion_max_days".into(),
            format!("must be from 1 to {MAX_LIFETIME_DAYS} days"),
        );
    }
    *days.get_ref()
}

/// `[limits.ROLE]`: only for [`LIMITED_ROLES`]; the role's own pair (for credit types
/// without their own) and `[limits.ROLE.credit_types.TYPE]` pairs for listed credit types,
/// so that every listed credit type is covered. Each pair is checked by [`limit_pair`].
fn limits(
    d: &mut Diagnostics<'_>,
    written: &BTreeMap<String, Spanned<FileLimit>>,
    credit_types: &BTreeSet<String>,
) -> BTreeMap<String, RoleLimits> {
    let mut limits = BTreeMap::new();
    for (role, limit) in written {
        let field = format!("limits.{role}");
        let span = limit.span();
        if !LIMITED_ROLES.contains(&role.as_str()) {
            d.report_in_table(
                span.clone(),
                field.clone(),
                format!("limits apply to {LIMITED_ROLES:?} only"),
            );
        }
        let l = limit.get_ref();
        let mut role_limits = RoleLimits::default();
        match (l.per_grant_max, l.per_day_max) {
            (Some(grant), Some(day)) => {
                role_limits.default = Some(limit_pair(d, span.clone(), &field, grant, day));
            }
            (None, None) => {}
            _ => d.report_in_table(
                span.clone(),
                field.clone(),
                "per_grant_max and per_day_max go together".into(),
            ),
        }
        for (credit_type, type_limit) in &l.credit_types {
            let type_field = format!("{field}.credit_types.{credit_type}");
            if !credit_types.contains(credit_type) {
                d.report_in_table(
                    type_limit.span(),
                    type_field.clone(),
                    format!("{credit_type:?} is not in credit_types"),
                );
            }
            let t = type_limit.get_ref();
            let pair = limit_pair(
                d,
                type_limit.span(),
                &type_field,
                t.per_grant_max,
                t.per_day_max,
            );
            role_limits.by_credit_type.insert(credit_type.clone(), pair);
        }
        if role_limits.default.is_none() {
            for credit_type in credit_types {
                if !role_limits.by_credit_type.contains_key(credit_type) {
                    d.report_in_table(
                        span.clone(),
                        field.clone(),
                        format!(
                            "no limit for credit type {credit_type:?}: set per_grant_max and per_day_max \
                             for the role or [{field}.credit_types.{credit_type}]"
                        ),
                    );
                }
            }
        }
        limits.insert(role.clone(), role_limits);
    }
    limits
}

/// One limit pair at `field`: a positive per-grant maximum no larger than the per-day one,
/// both within [`MAX_AMOUNT`].
fn limit_pair(
    d: &mut Diagnostics<'_>,
    span: std::ops::Range<usize>,
    field: &str,
    per_grant_max: u64,
    per_day_max: u64,
) -> RoleLimit {
    if per_grant_max == 0 || per_grant_max > MAX_AMOUNT {
        d.report_in_table(
            span.clone(),
            format!("{field}.per_grant_max"),
            format!("must be from 1 to {MAX_AMOUNT}"),
        );
    }
    if per_day_max < per_grant_max || per_day_max > MAX_AMOUNT {
        d.report_in_table(
            span,
            format!("{field}.per_day_max"),
            format!("must be from per_grant_max to {MAX_AMOUNT}"),
        );
    }
    RoleLimit {
        per_grant_max,
        per_day_max,
    }
}

/// `[[bundles]]`: unique valid ids, a listed credit type, credits and price within
/// [`MAX_AMOUNT`].
fn bundles(
    d: &mut Diagnostics<'_>,
    written: &[Spanned<FileBundle>],
    credit_types: &BTreeSet<String>,
) -> BTreeMap<String, Bundle> {
    let mut bundles = BTreeMap::new();
    for (i, b) in written.iter().enumerate() {
        let span = b.span();
        let b = b.get_ref();
        let field = format!("bundles[{i}]");
        if let Err(m) = validate_id("bundle id", &b.id) {
            d.report_in_table(span.clone(), format!("{field}.id"), m);
        }
        if !credit_types.contains(&b.credit_type) {
            d.report_in_table(
                span.clone(),
                format!("{field}.credit_type"),
                format!("{:?} is not in credit_types", b.credit_type),
            );
        }
        if b.credits == 0 || b.credits > MAX_AMOUNT {
            d.report_in_table(
                span.clone(),
                format!("{field}.credits"),
                format!("must be from 1 to {MAX_AMOUNT}"),
            );
        }
        if b.price_micros > MAX_AMOUNT {
            d.report_in_table(
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
        if bundles.insert(b.id.clone(), bundle).is_some() {
            d.report_in_table(
                span,
                format!("{field}.id"),
                format!("bundle {:?} is defined twice", b.id),
            );
        }
    }
    bundles
}

/// `[[schedules]]`: each checked by [`schedule`], ids unique.
fn schedules(
    d: &mut Diagnostics<'_>,
    written: &[Spanned<FileSchedule>],
    credit_types: &BTreeSet<String>,
) -> Vec<Schedule> {
    let mut ids = BTreeSet::new();
    written
        .iter()
        .enumerate()
        .map(|(i, s)| schedule(d, i, s, &mut ids, credit_types))
        .collect()
}

/// One schedule: a short unique id, a valid plan, a listed credit type, an amount within
/// [`MAX_AMOUNT`] and a bounded life.
fn schedule(
    d: &mut Diagnostics<'_>,
    i: usize,
    written: &Spanned<FileSchedule>,
    ids: &mut BTreeSet<String>,
    credit_types: &BTreeSet<String>,
) -> Schedule {
    let span = written.span();
    let s = written.get_ref();
    let field = format!("schedules[{i}]");
    if let Err(m) = validate_id("schedule id", &s.id) {
        d.report_in_table(span.clone(), format!("{field}.id"), m);
    }
    if s.id.len() > MAX_SCHEDULE_ID_LEN {
        d.report_in_table(
            span.clone(),
            format!("{field}.id"),
            format!("must be at most {MAX_SCHEDULE_ID_LEN} bytes (it is part of every grant id)"),
        );
    }
    if !ids.insert(s.id.clone()) {
        d.report_in_table(
            span.clone(),
            format!("{field}.id"),
            format!("schedule {:?} is defined twice", s.id),
        );
    }
    if let Err(m) = validate_id("plan", &s.plan) {
        d.report_in_table(span.clone(), format!("{field}.plan"), m);
    }
    if !credit_types.contains(&s.credit_type) {
        d.report_in_table(
            span.clone(),
            format!("{field}.credit_type"),
            format!("{:?} is not in credit_types", s.credit_type),
        );
    }
    if s.amount == 0 || s.amount > MAX_AMOUNT {
        d.report_in_table(
            span.clone(),
            format!("{field}.amount"),
            format!("must be from 1 to {MAX_AMOUNT}"),
        );
    }
    if s.expires_after_days == Some(0) || s.expires_after_days > Some(MAX_LIFETIME_DAYS) {
        d.report_in_table(
            span,
            format!("{field}.expires_after_days"),
            format!("must be from 1 to {MAX_LIFETIME_DAYS} days"),
        );
    }
    Schedule {
        id: s.id.clone(),
        plan: s.plan.clone(),
        credit_type: s.credit_type.clone(),
        amount: s.amount,
        expires_after_days: s.expires_after_days,
    }
}

/// `[webhooks]` or `[auto_recharge]` (named `name`): an http(s) URL, one long enough
/// secret, and a look-ahead only for the events webhook.
fn webhook_endpoint(
    d: &mut Diagnostics<'_>,
    name: &str,
    written: &Spanned<FileEndpoint>,
) -> Endpoint {
    let span = written.span();
    let e = written.get_ref();
    if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
        d.report_in_table(
            span.clone(),
            format!("{name}.url"),
            "must be an http:// or https:// URL".into(),
        );
    }
    let secret = webhook_secret(d, name, written);
    let days = e
        .expiring_within_days
        .unwrap_or(DEFAULT_EXPIRING_WITHIN_DAYS);
    if name == "auto_recharge" && e.expiring_within_days.is_some() {
        d.report_in_table(
            span.clone(),
            format!("{name}.expiring_within_days"),
            "belongs to [webhooks]".into(),
        );
    }
    if days == 0 || days > MAX_EXPIRING_WITHIN_DAYS {
        d.report_in_table(
            span,
            format!("{name}.expiring_within_days"),
            format!("must be from 1 to {MAX_EXPIRING_WITHIN_DAYS} days"),
        );
    }
    Endpoint {
        url: e.url.clone(),
        secret: secret.unwrap_or_default(),
        expiring_within_days: days,
    }
}

/// Longest `checkout_url`, bytes: the length browsers reliably accept, less room for the
/// `bundle=` and `customer=` the page appends.
const MAX_CHECKOUT_URL_LEN: usize = 1_800;

/// `[customer_page] checkout_url`: an `http://` or `https://` URL without a fragment.
fn checkout_url(d: &mut Diagnostics<'_>, page: &Spanned<FileCustomerPage>) -> Option<String> {
    let url = page.get_ref().checkout_url.clone()?;
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains('#')
        && url.len() <= MAX_CHECKOUT_URL_LEN
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        d.report_in_table(
            page.span(),
            "customer_page.checkout_url".into(),
            format!(
                "must be an http:// or https:// URL of at most {MAX_CHECKOUT_URL_LEN} bytes, \
                 without spaces or a #fragment"
            ),
        );
        return None;
    }
    Some(url)
}

/// `[customer_page.recharge_target_max]`: known credit types, each limit from 1 to
/// [`MAX_AMOUNT`], and `[auto_recharge]` configured.
fn customer_recharge_max(
    d: &mut Diagnostics<'_>,
    page: &Spanned<FileCustomerPage>,
    credit_types: &BTreeSet<String>,
    auto_recharge: bool,
) -> BTreeMap<String, u64> {
    let limits = &page.get_ref().recharge_target_max;
    if !limits.is_empty() && !auto_recharge {
        d.report_in_table(
            page.span(),
            "customer_page.recharge_target_max".into(),
            "customers can set auto-recharge only when [auto_recharge] is configured".into(),
        );
    }
    let mut out = BTreeMap::new();
    for (credit_type, max) in limits {
        let field = format!("customer_page.recharge_target_max.{credit_type}");
        if !credit_types.contains(credit_type) {
            let line = d.line_of(max.span().start);
            d.report_on_line(
                field,
                Some(line),
                format!("{credit_type:?} is not in credit_types"),
            );
        } else if *max.get_ref() == 0 || *max.get_ref() > MAX_AMOUNT {
            let line = d.line_of(max.span().start);
            d.report_on_line(field, Some(line), format!("must be from 1 to {MAX_AMOUNT}"));
        } else {
            out.insert(credit_type.clone(), *max.get_ref());
        }
    }
    out
}

/// The signing secret, written inline or named by an environment variable (exactly one),
/// at least [`WEBHOOK_SECRET_MIN_LEN`] bytes; `None` when missing (reported).
fn webhook_secret(
    d: &mut Diagnostics<'_>,
    name: &str,
    written: &Spanned<FileEndpoint>,
) -> Option<String> {
    let span = written.span();
    let e = written.get_ref();
    let secret = match (&e.secret, &e.secret_env) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(s) => Some(s),
            Err(_) => {
                d.report_in_table(
                    span.clone(),
                    format!("{name}.secret_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        _ => {
            d.report_in_table(
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
        let key = if e.secret.is_some() {
            "secret"
        } else {
            "secret_env"
        };
        d.report_in_table(
            span,
            format!("{name}.{key}"),
            format!("the secret must be at least {WEBHOOK_SECRET_MIN_LEN} bytes"),
        );
    }
    secret
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
        assert_eq!(ops.limit("support", "api").unwrap().per_day_max, 5000);
        assert_eq!(ops.limit("support", "ai").unwrap().per_day_max, 5000);
        assert_eq!(ops.limit("sales", "api"), None);
        assert_eq!(ops.schedules[0].plan, "annual");
        assert_eq!(ops.promotion_max_days, DEFAULT_PROMOTION_MAX_DAYS);
    }

    /// Limits per credit type, each in its own units; the role's own pair covers the other
    /// types (as a file written before per-type limits means).
    #[test]
    fn limits_are_per_credit_type_in_its_own_units() {
        let text = GOOD.replace(
            "per_day_max = 5000\n",
            "per_day_max = 5000\n\n[limits.support.credit_types.ai]\nper_grant_max = 2000000\nper_day_max = 9000000\n",
        );
        let ops = Operations::parse("ops.toml", &text).unwrap();
        let ai = ops.limit("support", "ai").unwrap();
        assert_eq!((ai.per_grant_max, ai.per_day_max), (2_000_000, 9_000_000));
        let api = ops.limit("support", "api").unwrap();
        assert_eq!((api.per_grant_max, api.per_day_max), (1000, 5000));

        // Per-type limits only: every listed credit type needs one.
        let only_ai = text.replace("per_grant_max = 1000\nper_day_max = 5000\n", "");
        let e = Operations::parse("ops.toml", &only_ai)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ops.toml:5: limits.support: no limit for credit type \"api\""),
            "{e}"
        );
        let unknown = text.replace("credit_types.ai]", "credit_types.gpu]");
        let e = Operations::parse("ops.toml", &unknown)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "ops.toml:9: limits.support.credit_types.gpu: \"gpu\" is not in credit_types"
            ),
            "{e}"
        );
        let zero = text.replace("per_grant_max = 2000000", "per_grant_max = 0");
        let e = Operations::parse("ops.toml", &zero)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ops.toml:10: limits.support.credit_types.ai.per_grant_max: must be from 1"),
            "{e}"
        );
        let half = GOOD.replace("per_day_max = 5000\n", "");
        let e = Operations::parse("ops.toml", &half)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.support: per_grant_max and per_day_max go together"),
            "{e}"
        );
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
    fn the_checkout_url_is_checked() {
        let good = format!(
            "{GOOD}\n[customer_page]\ncheckout_url = \"https://shop.example.com/buy?src=cg\"\n"
        );
        let ops = Operations::parse("ops.toml", &good).unwrap();
        assert_eq!(
            ops.checkout_url.as_deref(),
            Some("https://shop.example.com/buy?src=cg")
        );
        let limits = format!("{GOOD}\n[customer_page.recharge_target_max]\napi = 0\ngpu = 5\n");
        let e = Operations::parse("ops.toml", &limits)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("customer_page.recharge_target_max: customers can set"),
            "{e}"
        );
        assert!(
            e.contains("ops.toml:22: customer_page.recharge_target_max.api: must be from 1"),
            "{e}"
        );
        assert!(
            e.contains("ops.toml:23: customer_page.recharge_target_max.gpu: \"gpu\" is not"),
            "{e}"
        );
        let bad = format!("{GOOD}\n[customer_page]\ncheckout_url = \"javascript:alert(1)\"\n");
        let e = Operations::parse("ops.toml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("ops.toml:22: customer_page.checkout_url: must be"),
            "{e}"
        );
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
