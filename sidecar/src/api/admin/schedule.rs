//! Scheduled grants: every customer on a schedule's plan gets its allotment once per
//! calendar month (UTC). The grant id is made of the schedule, the period and the
//! customer, and grants are idempotent by id, so each period is granted exactly once
//! however often the pass runs, across restarts and across several sidecars; a period that
//! began while the sidecar was down is granted by the first pass after it starts.
//!
//! Whole periods missed while the sidecar was down are back-filled: when a customer's last
//! granted period of a schedule is older than the previous month, every period after it is
//! granted, each with its own period in its id and reason, at most
//! [`BACKFILL_MAX_PERIODS`] before the current one, and only the months the customer was on
//! the schedule's plan at some moment, by its plan history (`customer_plan_history`,
//! migration 9). A customer with no grant of the schedule yet gets the current period
//! only (joining a plan grants no past months).
//!
//! The loop also drops expired idempotency keys. It decides what is due; the ledger-first
//! path of [`crate::jobs::outbox::issue_grant`] grants it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use creditgate_protocol::GrantSource;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::idempotency;
use super::state::AdminState;
use crate::jobs::outbox::{OutboxError, issue_grant};
use crate::ledger::{GrantRecord, now_ms};
use crate::operations::{SCHEDULE_REASON_CODE, Schedule};

/// How often the scheduled grants are checked, ms: a minute is far finer than a month, and
/// the first pass runs at start-up.
pub const SCHEDULE_PASS_MS: u64 = 60_000;

/// Most missed periods granted in one catch-up, before the current one: a year, so a
/// sidecar down for longer (or a ledger restored from an old backup) cannot flood a
/// customer with allotments; older periods are logged and left to an operator.
pub const BACKFILL_MAX_PERIODS: i64 = 12;

/// (year, month) of a time in ms since the Unix epoch, UTC civil calendar.
pub fn year_month(at_ms: u64) -> (i64, u32) {
    let days = (at_ms / 86_400_000) as i64;
    // Civil-from-days (proleptic Gregorian), on eras of 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The period label, `YYYY-MM`.
pub fn period_of(at_ms: u64) -> String {
    period_label(month_index(at_ms))
}

/// Months since year 0 of a time (`year * 12 + month - 1`): consecutive periods are
/// consecutive numbers.
pub fn month_index(at_ms: u64) -> i64 {
    let (y, m) = year_month(at_ms);
    y * 12 + i64::from(m) - 1
}

/// The `YYYY-MM` label of a [`month_index`].
pub fn period_label(index: i64) -> String {
    format!(
        "{:04}-{:02}",
        index.div_euclid(12),
        index.rem_euclid(12) + 1
    )
}

/// The [`month_index`] of a `YYYY-MM` label; `None` when it is not one.
pub fn parse_period(label: &str) -> Option<i64> {
    let (y, m) = label.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then_some(y * 12 + m - 1)
}

/// The periods to grant now: every one after `last_granted` up to `current`, at most
/// [`BACKFILL_MAX_PERIODS`] before `current`; only `current` when nothing was granted yet.
/// Empty when `current` is granted.
pub fn due_periods(last_granted: Option<i64>, current: i64) -> std::ops::RangeInclusive<i64> {
    match last_granted {
        None => current..=current,
        Some(last) => (last + 1).max(current - BACKFILL_MAX_PERIODS)..=current,
    }
}

/// One row of a customer's plan history: the plan (`None`: no plan) and since when, ms.
pub type PlanSince = (Option<String>, i64);

/// The month indices (inclusive ranges, oldest first) during which the customer was on
/// `plan` at any moment, up to `current`, from its plan history sorted by time. A month
/// the customer joined mid-way counts; months before it joined do not.
pub fn months_on_plan(history: &[PlanSince], plan: &str, current: i64) -> Vec<(i64, i64)> {
    let mut ranges = Vec::new();
    for (i, (p, since_ms)) in history.iter().enumerate() {
        if p.as_deref() != Some(plan) {
            continue;
        }
        let from = month_index(u64::try_from(*since_ms).unwrap_or(0));
        // On the plan until the next change (its last moment is the millisecond before).
        let to = history.get(i + 1).map_or(current, |(_, next_ms)| {
            month_index(u64::try_from(next_ms.saturating_sub(1)).unwrap_or(0))
        });
        if from <= to {
            ranges.push((from, to.min(current)));
        }
    }
    ranges
}

/// The `due` periods the customer was on the plan in (`on_plan`, from [`months_on_plan`]):
/// joining a plan grants no months before. A customer without recorded history (its
/// history row failed to be written) gets the `current` period only.
pub fn periods_on_plan(
    due: std::ops::RangeInclusive<i64>,
    on_plan: &[(i64, i64)],
    current: i64,
) -> Vec<i64> {
    due.filter(|index| {
        on_plan.iter().any(|(a, b)| (*a..=*b).contains(index))
            || (on_plan.is_empty() && *index == current)
    })
    .collect()
}

/// The grant id of a schedule's period for a customer (at most 128 bytes whatever the
/// customer id's length: the customer enters as a hash).
pub fn schedule_grant_id(schedule: &str, period: &str, customer: &str) -> String {
    let h = hex::encode(&Sha256::digest(customer.as_bytes())[..12]);
    format!("s-{schedule}-{period}-{h}")
}

/// The record of a schedule's grant for one customer and the current period.
pub fn schedule_record(s: &Schedule, customer: &str, now: u64) -> GrantRecord {
    period_record(s, customer, &period_of(now), now)
}

/// The record of a schedule's grant for one customer and `period` (`YYYY-MM`), granted at
/// `now` (a back-filled period's expiry counts from `now`, so it is usable).
pub fn period_record(s: &Schedule, customer: &str, period: &str, now: u64) -> GrantRecord {
    GrantRecord {
        grant_id: schedule_grant_id(&s.id, period, customer),
        customer: customer.to_string(),
        credit_type: s.credit_type.clone(),
        amount: s.amount,
        priority: super::grants::DEFAULT_GRANT_PRIORITY,
        expires_at_ms: s.expires_after_days.map(|d| now + d * 86_400_000),
        cost_basis: 0,
        source: GrantSource::PlanAllotment,
        actor: format!("schedule:{}", s.id),
        reason: format!("{SCHEDULE_REASON_CODE}: period {period}"),
        created_at_ms: now,
    }
}

/// One pass: grants every due period not granted yet by this process. Returns how many
/// grants were issued or confirmed.
pub async fn pass(st: &AdminState, done: &mut HashSet<String>) -> u64 {
    let now = now_ms();
    let mut issued = 0;
    for s in &st.ops.schedules {
        let customers = match st
            .db
            .fetch(
                "SELECT customer FROM customers WHERE plan = $1 ORDER BY customer",
                &[s.plan.as_str().into()],
                |row| row.try_get::<String, _>("customer"),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                error!(schedule = %s.id, error = %e, "scheduled grants: reading customers failed");
                continue;
            }
        };
        for customer in customers {
            let current = schedule_record(s, &customer, now);
            if done.contains(&current.grant_id) {
                continue;
            }
            let Some((granted, all_ok)) = grant_due_periods(st, s, &customer, now).await else {
                continue;
            };
            issued += granted;
            if all_ok {
                done.insert(current.grant_id);
            }
        }
    }
    issued
}

/// Grants one customer every period of schedule `s` that is due, oldest first (back to
/// [`BACKFILL_MAX_PERIODS`]); stops at the first failure. Returns how many were granted
/// and whether all went through; `None` when the customer's grants could not be read.
async fn grant_due_periods(
    st: &AdminState,
    s: &Schedule,
    customer: &str,
    now: u64,
) -> Option<(u64, bool)> {
    let known = match st.sidecar.ledger.grants_of(customer).await {
        Ok(known) => known,
        Err(e) => {
            error!(schedule = %s.id, customer, error = %e, "scheduled grants: reading grants failed; retrying next pass");
            return None;
        }
    };
    let last = last_granted_period(s, customer, &known);
    let current_index = month_index(now);
    if let Some(last) = last
        && current_index - last > BACKFILL_MAX_PERIODS + 1
    {
        warn!(schedule = %s.id, customer, last_granted = %period_label(last),
              skipped = current_index - last - 1 - BACKFILL_MAX_PERIODS,
              "scheduled grants: periods older than the back-fill bound are not granted");
    }
    let history = plan_history(st, customer).await?;
    let on_plan = months_on_plan(&history, &s.plan, current_index);
    let mut issued = 0;
    for index in periods_on_plan(due_periods(last, current_index), &on_plan, current_index) {
        let mut record = period_record(s, customer, &period_label(index), now);
        // A retry of a recorded period must carry the same fields (its expiry).
        if let Some(first) = known.iter().find(|g| g.grant_id == record.grant_id) {
            record = first.clone();
        }
        match issue_grant(
            st.sidecar.ledger.as_ref(),
            st.sidecar.redis.as_ref(),
            &record,
        )
        .await
        {
            Ok(outcome) => {
                info!(schedule = %s.id, customer, grant_id = %record.grant_id, ?outcome, "scheduled grant");
                issued += 1;
            }
            Err(OutboxError::Conflict(id)) => {
                error!(grant_id = %id, "scheduled grant id recorded before with other fields");
            }
            Err(e) => {
                error!(schedule = %s.id, customer, error = %e, "scheduled grant failed; retrying next pass");
                return Some((issued, false));
            }
        }
    }
    Some((issued, true))
}

/// The customer's plan history, oldest first; `None` (logged) when it cannot be read.
async fn plan_history(st: &AdminState, customer: &str) -> Option<Vec<PlanSince>> {
    let rows = st
        .db
        .fetch(
            "SELECT plan, since_ms FROM customer_plan_history WHERE customer = $1 ORDER BY since_ms",
            &[customer.into()],
            |row| Ok((row.try_get::<Option<String>, _>("plan")?, row.try_get::<i64, _>("since_ms")?)),
        )
        .await;
    match rows {
        Ok(rows) => Some(rows),
        Err(e) => {
            error!(customer, error = %e, "scheduled grants: reading the plan history failed; retrying next pass");
            None
        }
    }
}

/// The latest period of schedule `s` granted to the customer, read from the grant ids
/// (`s-<schedule>-<YYYY-MM>-<customer hash>`).
fn last_granted_period(s: &Schedule, customer: &str, known: &[GrantRecord]) -> Option<i64> {
    let prefix = format!("s-{}-", s.id);
    let hash_suffix = schedule_grant_id(&s.id, "", customer);
    let hash_suffix = &hash_suffix[prefix.len()..];
    known
        .iter()
        .filter_map(|g| {
            g.grant_id
                .strip_prefix(&prefix)?
                .strip_suffix(hash_suffix)
                .and_then(parse_period)
        })
        .max()
}

/// Runs passes until `stop` turns true: the first at once, then every
/// [`SCHEDULE_PASS_MS`].
pub async fn run(st: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let mut done = HashSet::new();
    loop {
        pass(&st, &mut done).await;
        // Approvals made by another sidecar show here within a pass.
        super::grants::refresh_pending_gauge(&st).await;
        if let Err(e) = idempotency::purge(&st.db, now_ms()).await {
            error!(error = %e, "dropping expired idempotency keys failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(SCHEDULE_PASS_MS)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_calendar_months() {
        assert_eq!(period_of(0), "1970-01");
        // 2026-11-25T21:00:00Z
        assert_eq!(period_of(1_795_640_400_000), "2026-11");
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        assert_eq!(period_of(1_709_251_199_999), "2024-02");
        assert_eq!(period_of(1_709_251_200_000), "2024-03");
        // 2025-12-31T23:59:59.999Z and the next millisecond.
        assert_eq!(period_of(1_767_225_599_999), "2025-12");
        assert_eq!(period_of(1_767_225_600_000), "2026-01");
    }

    #[test]
    fn due_periods_back_fill_at_most_a_year() {
        let nov = parse_period("2026-11").unwrap();
        assert_eq!(period_label(nov), "2026-11");
        assert_eq!(parse_period("2026-13"), None);
        assert_eq!(parse_period("26-11"), None);
        assert_eq!(due_periods(None, nov).collect::<Vec<_>>(), vec![nov]);
        assert!(due_periods(Some(nov), nov).is_empty());
        let labels = |r: std::ops::RangeInclusive<i64>| r.map(period_label).collect::<Vec<_>>();
        assert_eq!(
            labels(due_periods(parse_period("2026-08"), nov)),
            ["2026-09", "2026-10", "2026-11"]
        );
        // Across a year boundary, bounded at 12 before the current period.
        let all = labels(due_periods(parse_period("2024-01"), nov));
        assert_eq!(all.len(), 13);
        assert_eq!(all[0], "2025-11");
        assert_eq!(all[12], "2026-11");
    }

    /// 00:00 UTC on the first day of a month index.
    fn start_of(month: i64) -> i64 {
        let (y, m) = (month.div_euclid(12), month.rem_euclid(12) + 1);
        // Days from the civil date (inverse of `year_month`'s algorithm).
        let (y, mp) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let doy = (153 * mp + 2) / 5;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146_097 + doe - 719_468) * 86_400_000
    }

    #[test]
    fn a_customer_moved_onto_a_plan_mid_way_gets_no_months_before() {
        let nov = parse_period("2026-11").unwrap();
        assert_eq!(period_of(start_of(nov) as u64), "2026-11");
        let mid = |m: i64| start_of(m) + 14 * 86_400_000;
        // On `annual` in May, on `pro` from mid-June, back on `annual` from mid-October.
        let history: Vec<PlanSince> = vec![
            (Some("annual".into()), mid(nov - 6)),
            (Some("pro".into()), mid(nov - 5)),
            (Some("annual".into()), mid(nov - 1)),
        ];
        let on = months_on_plan(&history, "annual", nov);
        assert_eq!(on, vec![(nov - 6, nov - 5), (nov - 1, nov)]);
        assert_eq!(
            months_on_plan(&history, "pro", nov),
            vec![(nov - 5, nov - 1)]
        );
        // Moved onto the plan this month: only this month.
        let joined = vec![
            (Some("pro".into()), mid(nov - 3)),
            (Some("annual".into()), mid(nov)),
        ];
        assert_eq!(months_on_plan(&joined, "annual", nov), vec![(nov, nov)]);
        // Last granted in May: June (on the plan half of it), October and November; not
        // July to September, on `pro`.
        let due = due_periods(Some(nov - 6), nov);
        assert_eq!(periods_on_plan(due, &on, nov), vec![nov - 5, nov - 1, nov]);
        let due = due_periods(Some(nov - 4), nov);
        let joined_on = months_on_plan(&joined, "annual", nov);
        assert_eq!(periods_on_plan(due.clone(), &joined_on, nov), vec![nov]);
        assert_eq!(periods_on_plan(due, &[], nov), vec![nov]);
        // A change on the first millisecond of a month leaves the month before alone.
        let exact = vec![(Some("annual".into()), mid(nov - 2)), (None, start_of(nov))];
        assert_eq!(
            months_on_plan(&exact, "annual", nov),
            vec![(nov - 2, nov - 1)]
        );
    }

    #[test]
    fn schedule_grant_ids_fit_the_id_rules() {
        let id = schedule_grant_id(&"x".repeat(40), "2026-11", &"c".repeat(128));
        assert!(id.len() <= 128);
        creditgate_protocol::keys::validate_id("grant_id", &id).unwrap();
    }
}
