//! The revenue rollup: each grant's credits granted and consumed per UTC calendar month,
//! kept in `revenue_grant_months` beside the entries, so revenue for a month reads a few
//! rows per grant instead of folding every entry since the ledger began.
//!
//! The rollup is derived: [`month_deltas`] is a pure function of the entries inserted, and
//! the append adds its rows in the same transaction as the entries (migration 13 filled it
//! from the entries already stored). It is the one table of the ledger that is updated in
//! place, and it is never the record: the entries are. Nothing here reads a clock or runs a
//! statement; [`revenue_of_months`] turns the rollup's rows into the figures of
//! [`fold_revenue`](super::fold_revenue), with one rule the per-entry fold does not need:
//! within one month, a grant's recognized credits are valued before its breakage. The two
//! agree exactly unless a grant's burns and breakage interleave within the month (a hold
//! settled after its grant expired), where the split may move by a few micro-units; their
//! sum, and deferred revenue, are the same either way.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::entry::{EntryKind, NewEntry};
use super::fold::GrantValue;
use super::sql::{Dialect, params};

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// One grant's movements in one month (credit units; `cost_basis` in currency
/// micro-units), as added by an append or read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantMonth {
    /// The customer.
    pub customer: String,
    /// The grant.
    pub grant_id: String,
    /// The month's first instant, ms since the Unix epoch (UTC).
    pub month_ms: i64,
    /// Credits granted (the grant's amount, in the month it was added).
    pub granted: i64,
    /// Money paid for the grant, in the month it was added.
    pub cost_basis: i64,
    /// Credits consumed and recognized: burned by posted holds, or repaying debt.
    pub recognized: i64,
    /// Credits lost: expired with the grant, or returned to it after it expired.
    pub breakage: i64,
}

/// The first instant of the UTC calendar month of `ms`, ms since the Unix epoch (Howard
/// Hinnant's civil-from-days, like [`utc_day`](super::utc_day)).
pub fn utc_month_start(ms: u64) -> u64 {
    let days = (ms / DAY_MS) as i64;
    let z = days + 719_468;
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5 + 1;
    (days - (day_of_month - 1)) as u64 * DAY_MS
}

/// Whether `[from_ms, to_ms)` is one or more whole UTC months: the windows the rollup
/// answers.
pub fn is_whole_months(from_ms: u64, to_ms: u64) -> bool {
    from_ms < to_ms
        && to_ms < u64::MAX / 2
        && utc_month_start(from_ms) == from_ms
        && utc_month_start(to_ms) == to_ms
}

/// The draws of list `key` of an entry's `grants`, as (grant id, credits).
fn draws<'e>(grants: &'e Value, key: &str) -> impl Iterator<Item = (&'e str, i64)> {
    grants
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let id = d.get("grant_id")?.as_str()?;
            let amount = d.get("amount")?.as_i64()?;
            Some((id, amount))
        })
}

/// A number carried as a string in an entry's `details` (0 when absent).
fn detail(details: &Value, key: &str) -> i64 {
    details
        .get(key)
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The rollup rows `entries` add, one per (customer, grant, month), summed: what an
/// append writes beside the entries it inserted. Holds placed, adjustments (no money)
/// and overages (no grant) add nothing.
pub fn month_deltas<'e>(entries: impl IntoIterator<Item = &'e NewEntry>) -> Vec<GrantMonth> {
    let mut rows: BTreeMap<(String, String, i64), GrantMonth> = BTreeMap::new();
    for e in entries {
        let month_ms = utc_month_start(e.event_at_ms) as i64;
        let mut add = |grant_id: &str, f: &dyn Fn(&mut GrantMonth)| {
            let key = (e.customer.clone(), grant_id.to_string(), month_ms);
            let row = rows.entry(key).or_insert_with(|| GrantMonth {
                customer: e.customer.clone(),
                grant_id: grant_id.to_string(),
                month_ms,
                ..GrantMonth::default()
            });
            f(row);
        };
        match e.kind {
            EntryKind::GrantAdded => {
                let Some(grant_id) = e.grant_id.as_deref() else {
                    continue;
                };
                let (cost, repaid) = (
                    detail(&e.details, "cost_basis"),
                    detail(&e.details, "debt_repaid"),
                );
                add(grant_id, &|r| {
                    r.granted += e.amount;
                    r.cost_basis += cost;
                    r.recognized += repaid;
                });
            }
            EntryKind::HoldPosted | EntryKind::HoldVoided | EntryKind::HoldExpired => {
                for (g, n) in draws(&e.grants, "burns") {
                    add(g, &|r| r.recognized += n);
                }
                for (g, n) in draws(&e.grants, "breakage") {
                    add(g, &|r| r.breakage += n);
                }
            }
            EntryKind::GrantExpired => {
                for (g, n) in draws(&e.grants, "expired") {
                    add(g, &|r| r.breakage += n);
                }
            }
            EntryKind::HoldPlaced | EntryKind::Adjustment | EntryKind::Overage => {}
        }
    }
    rows.into_values().collect()
}

/// One grant's totals before a window, read from the rollup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantBefore {
    /// The customer.
    pub customer: String,
    /// The grant.
    pub grant_id: String,
    /// Credits granted (0 when the ledger never saw the grant added).
    pub granted: i64,
    /// Money paid for it, currency micro-units.
    pub cost_basis: i64,
    /// Credits consumed (recognized or broken) before the window.
    pub consumed_before: i64,
}

/// Recognized, breakage and deferred-at-end revenue (currency micro-units) of a window of
/// whole months from the rollup: `grants` are every grant with credits left at the
/// window's end or consumed in it, `window` their rows of the window's months.
pub fn revenue_of_months(grants: &[GrantBefore], window: &[GrantMonth]) -> (i128, i128, i128) {
    let mut values: HashMap<(&str, &str), GrantValue> = grants
        .iter()
        .map(|g| {
            let mut v = GrantValue::new(g.granted, g.cost_basis);
            v.consume(i128::from(g.consumed_before));
            ((g.customer.as_str(), g.grant_id.as_str()), v)
        })
        .collect();
    let mut months: Vec<&GrantMonth> = window.iter().collect();
    months.sort_by_key(|m| m.month_ms);
    let (mut recognized, mut breakage) = (0i128, 0i128);
    for m in months {
        let v = values
            .entry((m.customer.as_str(), m.grant_id.as_str()))
            .or_insert_with(|| GrantValue::new(0, 0));
        recognized += v.consume(i128::from(m.recognized));
        breakage += v.consume(i128::from(m.breakage));
    }
    let deferred = values.values().map(GrantValue::unconsumed_value).sum();
    (recognized, breakage, deferred)
}

/// Rows per rollup upsert: 7 binds each, 2,100 binds.
pub(crate) const UPSERT_CHUNK: usize = 300;

/// Adds `n` rows (at least 1) to the rollup, each row's 7 binds in [`GrantMonth`]'s field
/// order.
pub(crate) fn upsert_months(d: Dialect, n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|r| format!("({})", params(d, r * 7 + 1, 7)))
        .collect();
    format!(
        "INSERT INTO revenue_grant_months AS r (customer, grant_id, month_ms, granted, \
         cost_basis, recognized, breakage) VALUES {} \
         ON CONFLICT (customer, grant_id, month_ms) DO UPDATE SET \
         granted = r.granted + excluded.granted, \
         cost_basis = r.cost_basis + excluded.cost_basis, \
         recognized = r.recognized + excluded.recognized, \
         breakage = r.breakage + excluded.breakage",
        rows.join(", ")
    )
}

/// Each grant with credits left at `$2` (a month start) or consumed in `[$1, $2)`, with
/// what it consumed before `$1`.
pub(crate) const SELECT_GRANTS_BEFORE: &str = "SELECT customer, grant_id, \
     CAST(SUM(granted) AS BIGINT) AS granted, CAST(SUM(cost_basis) AS BIGINT) AS cost_basis, \
     CAST(SUM(CASE WHEN month_ms < $1 THEN recognized + breakage ELSE 0 END) AS BIGINT) \
     AS consumed_before \
     FROM revenue_grant_months WHERE month_ms < $2 GROUP BY customer, grant_id \
     HAVING SUM(granted) > SUM(recognized + breakage) \
     OR SUM(CASE WHEN month_ms >= $1 THEN recognized + breakage ELSE 0 END) > 0";

/// The rollup's rows of the months in `[$1, $2)`.
pub(crate) const SELECT_WINDOW: &str = "SELECT customer, grant_id, month_ms, granted, \
     cost_basis, recognized, breakage FROM revenue_grant_months \
     WHERE month_ms >= $1 AND month_ms < $2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_starts() {
        // 2026-03-15T10:00:00Z → 2026-03-01T00:00:00Z.
        assert_eq!(utc_month_start(1_773_568_800_000), 1_772_323_200_000);
        assert_eq!(utc_month_start(1_772_323_200_000), 1_772_323_200_000);
        // 2024-02-29 (leap day) → 2024-02-01.
        assert_eq!(utc_month_start(1_709_164_800_000), 1_706_745_600_000);
        assert!(is_whole_months(1_706_745_600_000, 1_772_323_200_000));
        assert!(!is_whole_months(1_706_745_600_001, 1_772_323_200_000));
        assert!(!is_whole_months(0, u64::MAX));
    }

    #[test]
    fn a_grant_burned_then_expired_in_one_month_splits_like_the_fold() {
        // 10 credits for 1,000,000 micros: 3 burned in March, 4 in April, the rest expires
        // in April.
        let before = [GrantBefore {
            customer: "c".into(),
            grant_id: "g".into(),
            granted: 10,
            cost_basis: 1_000_000,
            consumed_before: 3,
        }];
        let april = [GrantMonth {
            customer: "c".into(),
            grant_id: "g".into(),
            month_ms: 1,
            recognized: 4,
            breakage: 3,
            ..GrantMonth::default()
        }];
        assert_eq!(revenue_of_months(&before, &april), (400_000, 300_000, 0));
        let (r, b, d) = revenue_of_months(&before, &[]);
        assert_eq!((r, b, d), (0, 0, 700_000));
    }
}
