//! What the customer page shows, read for one customer: live balances and grants from the
//! credit store, usage and ledger entries from the ledger, the customer's alert settings
//! from the admin tables, and the page's query parameters checked. Reads only; nothing
//! here renders HTML or writes.

use std::collections::BTreeMap;

use creditgate_protocol::{Balance, CreditStore};

use crate::api::read_access::ReadState;
use crate::ledger::{EntryKind, EntryQuery, LedgerEntry, UsageRow, now_ms};

/// Ledger entries on one page of the table.
pub const LEDGER_PAGE_ROWS: usize = 25;

/// Most ledger entries one page view or CSV export reads: a busy customer's 90 days are
/// bounded by it; past it the page says the list is cut and the range should be narrowed.
pub const LEDGER_FETCH_MAX: u64 = 20_000;

/// The usage ranges offered, days.
pub const RANGES_DAYS: [u64; 3] = [7, 30, 90];

/// Days the burn rate of the run-out projection is measured over: a week evens out
/// weekday and weekend traffic.
pub const BURN_RATE_DAYS: u64 = 7;

const DAY_MS: u64 = 86_400_000;

/// The ledger filter a customer picks: a group of entry kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFilter {
    /// Credits added.
    Grant,
    /// Requests charged.
    Usage,
    /// Grant rests that expired.
    Expiry,
    /// Corrections.
    Adjustment,
    /// What a settle could not take.
    Overage,
}

impl KindFilter {
    /// Every filter, in the order the page lists them.
    pub const ALL: [KindFilter; 5] = [
        Self::Grant,
        Self::Usage,
        Self::Expiry,
        Self::Adjustment,
        Self::Overage,
    ];

    /// The query parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Usage => "usage",
            Self::Expiry => "expiry",
            Self::Adjustment => "adjustment",
            Self::Overage => "overage",
        }
    }

    /// The ledger kinds it selects.
    fn kinds(self) -> Vec<EntryKind> {
        match self {
            Self::Grant => vec![EntryKind::GrantAdded],
            Self::Usage => vec![EntryKind::HoldPosted],
            Self::Expiry => vec![EntryKind::GrantExpired],
            Self::Adjustment => vec![EntryKind::Adjustment],
            Self::Overage => vec![EntryKind::Overage],
        }
    }
}

/// The page's query parameters, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// The session token, carried into every link and form.
    pub session: String,
    /// The usage and ledger range, days (one of [`RANGES_DAYS`]).
    pub days: u64,
    /// Only ledger entries of this group.
    pub kind: Option<KindFilter>,
    /// Only ledger entries of this feature.
    pub feature: Option<String>,
    /// The ledger page, from 1.
    pub page: usize,
    /// The request whose trail is shown.
    pub request: Option<String>,
    /// CSS variable overrides (`theme_accent=#0a7` sets `--cg-accent`), checked.
    pub theme: BTreeMap<String, String>,
}

/// Longest request id a trail lookup takes, bytes.
const REQUEST_ID_MAX_BYTES: usize = 200;

/// Whether `value` is safe inside a CSS declaration: colours, lengths, font names; no
/// characters that could end the declaration or the style element.
fn safe_css_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " #(),.%-".contains(c))
}

impl PageQuery {
    /// Reads the pairs; a message naming the query parameter for a bad one.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = PageQuery {
            session: String::new(),
            days: 30,
            kind: None,
            feature: None,
            page: 1,
            request: None,
            theme: BTreeMap::new(),
        };
        for (k, v) in pairs {
            match k.as_str() {
                "session" => q.session = v.clone(),
                "days" => {
                    q.days = v
                        .parse()
                        .ok()
                        .filter(|d| RANGES_DAYS.contains(d))
                        .ok_or_else(|| {
                            format!("query parameter days: must be one of {RANGES_DAYS:?}")
                        })?
                }
                "kind" if v.is_empty() => {}
                "kind" => {
                    q.kind = Some(
                        KindFilter::ALL
                            .into_iter()
                            .find(|f| f.as_str() == v)
                            .ok_or_else(|| format!("query parameter kind: unknown kind {v:?}"))?,
                    )
                }
                "feature" => q.feature = Some(v.clone()).filter(|f| !f.is_empty()),
                "page" => {
                    q.page = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                        "query parameter page: must be a whole number from 1".to_string()
                    })?
                }
                "request" if v.trim().is_empty() => {}
                "request" if v.len() > REQUEST_ID_MAX_BYTES => {
                    return Err(format!(
                        "query parameter request: longer than {REQUEST_ID_MAX_BYTES} bytes"
                    ));
                }
                "request" => q.request = Some(v.trim().to_string()),
                k if k.starts_with("theme_") => {
                    let name = &k["theme_".len()..];
                    let ok_name = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_lowercase() || c == '-');
                    if !ok_name || !safe_css_value(v) {
                        return Err(format!(
                            "query parameter {k}: a CSS variable override takes a name of a-z and - \
                             and a value of letters, digits, spaces and #(),.%-"
                        ));
                    }
                    q.theme.insert(name.to_string(), v.clone());
                }
                other => return Err(format!("query parameter {other}: unknown")),
            }
        }
        Ok(q)
    }
}

/// A credit type as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditView {
    /// The credit type's id.
    pub name: String,
    /// Its name for customers.
    pub display_name: String,
    /// Its decimal places.
    pub scale: u32,
    /// The live figures, stored units.
    pub available: i64,
    /// Credits held by requests in flight.
    pub held: i64,
    /// Overdraft owed.
    pub debt: i64,
    /// Live grants with credits left: remaining (stored units) and expiry.
    pub grants: Vec<(u64, Option<u64>)>,
    /// The customer's low-balance threshold, stored units.
    pub low_threshold: Option<u64>,
    /// Auto-recharge: threshold and target, stored units.
    pub recharge: Option<(u64, u64)>,
    /// Burned over the last [`BURN_RATE_DAYS`] days, stored units.
    pub burned_recent: u64,
}

impl CreditView {
    /// The projected run-out instant at the recent burn rate; `None` without recent burns
    /// or with nothing left.
    pub fn run_out_ms(&self, now_ms: u64) -> Option<u64> {
        if self.burned_recent == 0 || self.available <= 0 {
            return None;
        }
        let per_ms = self.burned_recent as f64 / (BURN_RATE_DAYS * DAY_MS) as f64;
        Some(now_ms.saturating_add((self.available as f64 / per_ms) as u64))
    }

    /// Whether the balance is below the customer's low-balance threshold.
    pub fn is_low(&self) -> bool {
        self.low_threshold
            .is_some_and(|t| self.available < i64::try_from(t).unwrap_or(i64::MAX))
    }
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct PageData {
    /// The customer.
    pub customer: String,
    /// When the live balance was read (store time), ms since the Unix epoch.
    pub as_of_ms: u64,
    /// Per credit type.
    pub credits: Vec<CreditView>,
    /// Usage rows of the range, by day, feature and credit type.
    pub usage: Vec<UsageRow>,
    /// Start of the range, ms since the Unix epoch (a UTC midnight).
    pub from_ms: u64,
    /// Ledger entries of the range matching the filter, newest first.
    pub entries: Vec<LedgerEntry>,
    /// Whether [`LEDGER_FETCH_MAX`] cut the list.
    pub entries_capped: bool,
    /// Every feature in the range's entries (for the filter).
    pub features: Vec<String>,
    /// The trail asked for: request id and the customer's entries of it.
    pub trail: Option<(String, Vec<LedgerEntry>)>,
}

/// Reads a failure as a message for the page (503).
fn unavailable(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} unavailable: {e}")
}

/// The credit types' display names and scales from the pricing config (the id and scale
/// 0 for a type it does not name, or without a pricing config).
pub fn credit_types(st: &ReadState) -> BTreeMap<String, (String, u32)> {
    st.sidecar
        .pricing
        .as_ref()
        .map(|p| {
            p.load()
                .credit_types()
                .values()
                .map(|t| (t.name.clone(), (t.display_name.clone(), t.scale)))
                .collect()
        })
        .unwrap_or_default()
}

/// A customer's alert settings by credit type: the low-balance threshold, and the
/// auto-recharge threshold and target, stored units.
pub type AlertsByType = BTreeMap<String, (Option<u64>, Option<(u64, u64)>)>;

/// The customer's alert settings per credit type: low threshold, recharge threshold and
/// target.
pub async fn alert_settings(st: &ReadState, customer: &str) -> Result<AlertsByType, String> {
    let rows = st
        .db
        .fetch(
            "SELECT credit_type, low_balance_threshold, recharge_threshold, recharge_target \
             FROM customer_alerts WHERE customer = $1",
            &[customer.into()],
            |row| {
                Ok((
                    row.try_get::<String, _>("credit_type")?,
                    row.try_get::<Option<i64>, _>("low_balance_threshold")?,
                    row.try_get::<Option<i64>, _>("recharge_threshold")?,
                    row.try_get::<Option<i64>, _>("recharge_target")?,
                ))
            },
        )
        .await
        .map_err(|e| unavailable("the admin tables", e))?;
    let to_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(|(t, low, th, target)| {
            let recharge = th.zip(target).map(|(a, b)| (to_u64(a), to_u64(b)));
            (t, (low.map(to_u64), recharge))
        })
        .collect())
}

/// The credit views: every credit type of the live balance, with its live grants, the
/// customer's thresholds and the recent burn.
fn credit_views(
    st: &ReadState,
    live: &Balance,
    alerts: &AlertsByType,
    usage: &[UsageRow],
    now: u64,
) -> Vec<CreditView> {
    let types = credit_types(st);
    let recent_from = crate::ledger::utc_day(now.saturating_sub(BURN_RATE_DAYS * DAY_MS));
    live.types
        .iter()
        .map(|t| {
            let (display_name, scale) = types
                .get(&t.credit_type)
                .cloned()
                .unwrap_or_else(|| (t.credit_type.clone(), 0));
            let (low_threshold, recharge) = alerts.get(&t.credit_type).cloned().unwrap_or_default();
            let mut grants: Vec<(u64, Option<u64>)> = live
                .grants
                .iter()
                .filter(|g| g.credit_type == t.credit_type && g.remaining > 0 && !g.expired)
                .map(|g| (g.remaining, g.expires_at_ms))
                .collect();
            grants.sort_by_key(|(_, e)| e.unwrap_or(u64::MAX));
            let burned_recent = usage
                .iter()
                .filter(|u| u.credit_type == t.credit_type && u.day > recent_from)
                .map(|u| u.burned)
                .sum();
            CreditView {
                name: t.credit_type.clone(),
                display_name,
                scale,
                available: t.available,
                held: t.held,
                debt: t.debt,
                grants,
                low_threshold,
                recharge,
                burned_recent,
            }
        })
        .collect()
}

/// The customer's ledger entries of `[from_ms, now)` matching the filter, newest first,
/// and whether the fetch limit cut them.
pub async fn ledger_entries(
    st: &ReadState,
    customer: &str,
    q: &PageQuery,
    from_ms: u64,
) -> Result<(Vec<LedgerEntry>, bool), String> {
    let kinds = match q.kind {
        Some(k) => k.kinds(),
        None => KindFilter::ALL
            .into_iter()
            .flat_map(KindFilter::kinds)
            .collect(),
    };
    let mut entries = st
        .sidecar
        .ledger
        .entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds,
            from_ms: Some(from_ms),
            limit: Some(LEDGER_FETCH_MAX),
            ..EntryQuery::default()
        })
        .await
        .map_err(|e| unavailable("the ledger", e))?;
    let capped = entries.len() as u64 >= LEDGER_FETCH_MAX;
    if let Some(f) = &q.feature {
        entries.retain(|e| e.entry.feature.as_deref() == Some(f.as_str()));
    }
    entries.reverse();
    Ok((entries, capped))
}

/// Reads everything the page shows for `customer`.
pub async fn load(st: &ReadState, customer: &str, q: &PageQuery) -> Result<PageData, String> {
    let now = now_ms();
    let from_ms = (now / DAY_MS + 1).saturating_sub(q.days) * DAY_MS;
    let live = st
        .sidecar
        .redis
        .balance(customer)
        .await
        .map_err(|e| unavailable("the credit store", e))?;
    let usage = st
        .sidecar
        .ledger
        .usage(Some(customer), from_ms, now.saturating_add(1))
        .await
        .map_err(|e| unavailable("the ledger", e))?;
    let alerts = alert_settings(st, customer).await?;
    let credits = credit_views(st, &live, &alerts, &usage, now);
    let (entries, entries_capped) = ledger_entries(st, customer, q, from_ms).await?;
    let mut features: Vec<String> = usage.iter().map(|u| u.feature.clone()).collect();
    features.sort();
    features.dedup();
    let trail = match &q.request {
        Some(id) => {
            let mut trail = st
                .sidecar
                .ledger
                .trail(id)
                .await
                .map_err(|e| unavailable("the ledger", e))?;
            trail.retain(|e| e.entry.customer == customer);
            Some((id.clone(), trail))
        }
        None => None,
    };
    Ok(PageData {
        customer: customer.to_string(),
        as_of_ms: live.at_ms,
        credits,
        usage,
        from_ms,
        entries,
        entries_capped,
        features,
        trail,
    })
}
