//! Turns inspection reports into what ops read: aligned text tables and JSON.
//!
//! Pure functions only: no I/O, no clock. Amounts are printed as the integers the store
//! keeps (the credit type's smallest unit; cost basis in currency micro-units), never
//! rescaled, so what ops see matches the ledger exactly.

use std::fmt::Write as _;

use creditgate_protocol::{Draw, EventBody, GrantState, TypeBalance};
use serde_json::{Value, json};

use crate::cli::inspect::{BalanceReport, EventsReport, StreamEvent};

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left, so digits line up.
    Right,
}

/// Renders rows under a header, columns separated by two spaces and padded to the widest
/// cell, without trailing spaces. Each row must have one cell per column.
pub fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|(header, _)| header.chars().count())
        .collect();
    for row in rows {
        assert_eq!(row.len(), columns.len(), "one cell per column");
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let pad = widths[index] - cell.chars().count();
            match columns[index].1 {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A time in milliseconds since the Unix epoch as RFC 3339 in UTC, e.g.
/// `2026-05-01T12:00:00Z`, with `.mmm` milliseconds only when they are not zero.
pub fn rfc3339_utc(ms: u64) -> String {
    let seconds_total = ms / 1000;
    let millis = ms % 1000;
    let days = seconds_total / 86_400;
    let seconds_of_day = seconds_total % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60,
    );
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if millis != 0 {
        let _ = write!(out, ".{millis:03}");
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn expiry(expires_at_ms: Option<u64>) -> String {
    expires_at_ms.map_or_else(|| "never".to_owned(), rfc3339_utc)
}

/// The balance as text: a title line, then a table per credit type and a table per grant.
pub fn balance_table(report: &BalanceReport) -> String {
    let BalanceReport {
        customer,
        shard,
        balance,
    } = report;
    let mut out = format!(
        "customer {customer} (shard {shard}) at {}\n",
        rfc3339_utc(balance.at_ms)
    );
    if balance.types.is_empty() && balance.grants.is_empty() {
        out.push_str("\nno credits\n");
        return out;
    }
    let type_rows: Vec<Vec<String>> = balance
        .types
        .iter()
        .map(|t| {
            vec![
                t.credit_type.clone(),
                t.available.to_string(),
                t.held.to_string(),
                t.debt.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            ("CREDIT_TYPE", Align::Left),
            ("AVAILABLE", Align::Right),
            ("HELD", Align::Right),
            ("DEBT", Align::Right),
        ],
        &type_rows,
    ));
    out.push('\n');
    if balance.grants.is_empty() {
        out.push_str("no live grants\n");
        return out;
    }
    let grant_rows: Vec<Vec<String>> = balance
        .grants
        .iter()
        .map(|g| {
            vec![
                g.grant_id.clone(),
                g.credit_type.clone(),
                g.remaining.to_string(),
                g.held.to_string(),
                g.priority.to_string(),
                expiry(g.expires_at_ms),
                g.cost_basis.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            ("GRANT", Align::Left),
            ("CREDIT_TYPE", Align::Left),
            ("REMAINING", Align::Right),
            ("HELD", Align::Right),
            ("PRIORITY", Align::Right),
            ("EXPIRES_AT", Align::Left),
            ("COST_BASIS_MICROS", Align::Right),
        ],
        &grant_rows,
    ));
    out
}

/// The balance as a JSON document; times appear both as RFC 3339 and in milliseconds.
pub fn balance_json(report: &BalanceReport) -> Value {
    let BalanceReport {
        customer,
        shard,
        balance,
    } = report;
    let type_json = |t: &TypeBalance| {
        json!({
            "credit_type": t.credit_type,
            "available": t.available,
            "held": t.held,
            "debt": t.debt,
            "book_available": t.book_available,
        })
    };
    let grant_json = |g: &GrantState| {
        json!({
            "grant_id": g.grant_id,
            "credit_type": g.credit_type,
            "remaining": g.remaining,
            "held": g.held,
            "priority": g.priority,
            "expires_at": g.expires_at_ms.map(rfc3339_utc),
            "expires_at_ms": g.expires_at_ms,
            "cost_basis_micros": g.cost_basis,
            "created_at": rfc3339_utc(g.created_ms),
            "expired": g.expired,
        })
    };
    json!({
        "customer": customer,
        "shard": shard.0,
        "at": rfc3339_utc(balance.at_ms),
        "at_ms": balance.at_ms,
        "types": balance.types.iter().map(type_json).collect::<Vec<_>>(),
        "grants": balance.grants.iter().map(grant_json).collect::<Vec<_>>(),
    })
}

/// The events as text: a table, one event per line, oldest first.
pub fn events_table(report: &EventsReport) -> String {
    let EventsReport {
        shard,
        customer,
        events,
        scan_limited,
    } = report;
    let mut out = String::new();
    if events.is_empty() {
        match customer {
            Some(customer) => {
                let _ = writeln!(out, "no events of customer {customer} in shard {shard}");
            }
            None => {
                let _ = writeln!(out, "no events in shard {shard}");
            }
        }
    } else {
        let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
        out.push_str(&table(
            &[
                ("STREAM_ID", Align::Left),
                ("KIND", Align::Left),
                ("CUSTOMER", Align::Left),
                ("CREDIT_TYPE", Align::Left),
                ("EVENT_ID", Align::Left),
                ("AMOUNTS", Align::Left),
            ],
            &rows,
        ));
    }
    if *scan_limited {
        let _ = writeln!(
            out,
            "(searched only the newest {} entries of shard {shard}; older events may exist)",
            crate::cli::inspect::EVENTS_SCAN_MAX
        );
    }
    out
}

fn event_row(entry: &StreamEvent) -> Vec<String> {
    let StreamEvent { stream_id, event } = entry;
    vec![
        stream_id.clone(),
        event.body.kind().to_owned(),
        event.customer.clone(),
        event.credit_type.clone(),
        event.event_id.clone(),
        key_amounts(&event.body),
    ]
}

fn total(draws: &[Draw]) -> u64 {
    draws.iter().map(|draw| draw.amount).sum()
}

/// The amounts that matter for each kind of event, as `name=value` pairs.
pub fn key_amounts(body: &EventBody) -> String {
    match body {
        EventBody::GrantAdded {
            amount,
            debt_repaid,
            expires_at_ms,
            source,
            ..
        } => format!(
            "amount={amount} debt_repaid={debt_repaid} expires_at={} source={source}",
            expiry(*expires_at_ms)
        ),
        EventBody::HoldPlaced {
            amount,
            overdraft,
            over_limit,
            ..
        } => {
            let mut out = format!("amount={amount} overdraft={overdraft}");
            if *over_limit {
                out.push_str(" over_limit");
            }
            out
        }
        EventBody::HoldPosted {
            held,
            requested,
            posted,
            overdraft,
            returned,
            returned_overdraft,
            breakage,
            shortfall,
            ..
        } => format!(
            "held={held} requested={requested} posted={posted} overdraft={overdraft} \
             returned={} breakage={} shortfall={shortfall}",
            total(returned) + returned_overdraft,
            total(breakage)
        ),
        EventBody::HoldVoided(release) | EventBody::HoldExpired(release) => format!(
            "held={} returned={} breakage={}",
            release.held,
            total(&release.returned) + release.returned_overdraft,
            total(&release.breakage)
        ),
        EventBody::GrantExpired { amount, held, .. } => format!("amount={amount} held={held}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn table_aligns_text_left_and_numbers_right() {
        let rendered = table(
            &[("NAME", Align::Left), ("AMOUNT", Align::Right)],
            &[
                vec!["a".into(), "5".into()],
                vec!["longer".into(), "12345678".into()],
            ],
        );
        assert_eq!(
            rendered,
            "NAME      AMOUNT\n\
             a              5\n\
             longer  12345678\n"
        );
    }
}
