//! Scheduled grants: every customer on a schedule's plan gets its allotment once per
//! calendar month (UTC). The grant id is made of the schedule, the period and the
//! customer, and grants are idempotent by id, so each period is granted exactly once
//! however often the pass runs, across restarts and across several sidecars; a period that
//! began while the sidecar was down is granted by the first pass after it starts.
//!
//! The loop also drops expired idempotency keys. It decides what is due; the ledger-first
//! path of [`crate::outbox::issue_grant`] grants it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use creditgate_protocol::GrantSource;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info};

use super::AdminState;
use super::db::fetch;
use super::idempotency;
use crate::ledger::{GrantRecord, now_ms};
use crate::operations::{SCHEDULE_REASON_CODE, Schedule};
use crate::outbox::{OutboxError, issue_grant};

/// How often the scheduled grants are checked, ms: a minute is far finer than a month, and
/// the first pass runs at start-up.
pub const SCHEDULE_PASS_MS: u64 = 60_000;

/// Days from 1970-01-01 to (year, month), UTC civil calendar.
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
    let (y, m) = year_month(at_ms);
    format!("{y:04}-{m:02}")
}

/// The grant id of a schedule's period for a customer (at most 128 bytes whatever the
/// customer id's length: the customer enters as a hash).
pub fn schedule_grant_id(schedule: &str, period: &str, customer: &str) -> String {
    let h = hex::encode(&Sha256::digest(customer.as_bytes())[..12]);
    format!("s-{schedule}-{period}-{h}")
}

/// The record of a schedule's grant for one customer and period.
pub fn schedule_record(s: &Schedule, customer: &str, now: u64) -> GrantRecord {
    let period = period_of(now);
    GrantRecord {
        grant_id: schedule_grant_id(&s.id, &period, customer),
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
        let customers = match fetch!(
            &st.db,
            "SELECT customer FROM customers WHERE plan = $1 ORDER BY customer",
            [s.plan.as_str()],
            |row| row.try_get::<String, _>("customer")
        ) {
            Ok(c) => c,
            Err(e) => {
                error!(schedule = %s.id, error = %e, "scheduled grants: reading customers failed");
                continue;
            }
        };
        for customer in customers {
            let mut record = schedule_record(s, &customer, now);
            if done.contains(&record.grant_id) {
                continue;
            }
            // A retry of a recorded period must carry the same fields: keep the first
            // record's expiry by recomputing from the registry when it exists.
            if let Ok(known) = st.sidecar.ledger.grants_of(&customer).await
                && let Some(first) = known.iter().find(|g| g.grant_id == record.grant_id)
            {
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
                    done.insert(record.grant_id);
                    issued += 1;
                }
                Err(OutboxError::Conflict(id)) => {
                    error!(grant_id = %id, "scheduled grant id recorded before with other fields");
                    done.insert(record.grant_id);
                }
                Err(e) => {
                    error!(schedule = %s.id, customer, error = %e, "scheduled grant failed; retrying next pass")
                }
            }
        }
    }
    issued
}

/// Runs passes until `stop` turns true: the first at once, then every
/// [`SCHEDULE_PASS_MS`].
pub async fn run(st: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let mut done = HashSet::new();
    loop {
        pass(&st, &mut done).await;
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
    fn schedule_grant_ids_fit_the_id_rules() {
        let id = schedule_grant_id(&"x".repeat(40), "2026-11", &"c".repeat(128));
        assert!(id.len() <= 128);
        creditgate_protocol::keys::validate_id("grant_id", &id).unwrap();
    }
}
