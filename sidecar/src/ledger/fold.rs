//! Folds of ledger entries into balances, usage and revenue figures, shared by every
//! backend.
//!
//! Pure: entries in, figures out; no I/O and no clock (the instant is an argument). The
//! balance fold mirrors the reference model (`creditgate_protocol::Model`) event by event,
//! so the ledger and Redis agree on every figure; it must not invent semantics the
//! protocol does not have.

use std::collections::{BTreeMap, HashMap};

use creditgate_protocol::types::Draw;
use creditgate_protocol::{Event, EventBody, hold_placement_of};

use super::LedgerError;
use super::entry::{EntryKind, LedgerEntry};

/// One credit type's figures at an instant (credit units; negative in overdraft).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerTypeBalance {
    /// The credit type.
    pub credit_type: String,
    /// What the customer owns on the books: `book_available + held`
    /// (= Σ granted − Σ posted − Σ expired − Σ breakage ± adjustments).
    pub total: i64,
    /// Spendable at the instant: remaining of usable grants (not expired and not past
    /// `expires_at`), less debt and the overdraft part of pending holds. Redis's live
    /// `available`.
    pub available: i64,
    /// Redis's kept-in-step `book_available`: like `available` but still counting grants
    /// past their expiry that the sweeper had not expired yet.
    pub book_available: i64,
    /// Credits in pending holds (their overdraft part included).
    pub held: i64,
    /// Overdraft debt, repaid first by the next grant.
    pub debt: i64,
}

/// One grant's figures at an instant (credit units).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerGrantBalance {
    /// The grant.
    pub grant_id: String,
    /// Its credit type.
    pub credit_type: String,
    /// Credits granted.
    pub granted: i64,
    /// Part of the grant that repaid debt when it was applied.
    pub debt_repaid: i64,
    /// Credits left to draw (not held).
    pub remaining: i64,
    /// Credits of it in pending holds.
    pub held: i64,
    /// Credits of it burned by posted holds.
    pub burned: i64,
    /// Credits of it lost to expiry: the unused rest at `grant_expired` plus what holds
    /// returned to it afterwards (breakage).
    pub expired: i64,
    /// Its expiry, ms since epoch.
    pub expires_at_ms: Option<u64>,
    /// True once `grant_expired` was recorded for it.
    pub is_expired: bool,
}

/// A customer's balance at an instant, folded from the ledger.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerBalance {
    /// The customer.
    pub customer: String,
    /// The instant, ms since epoch: entries with `event_at_ms <= at_ms` are counted.
    pub at_ms: u64,
    /// Per credit type, sorted by name.
    pub types: Vec<LedgerTypeBalance>,
    /// Every grant the customer ever had, sorted by id.
    pub grants: Vec<LedgerGrantBalance>,
}

impl LedgerBalance {
    /// The figures of one credit type, if the customer has any.
    pub fn of(&self, credit_type: &str) -> Option<&LedgerTypeBalance> {
        self.types.iter().find(|t| t.credit_type == credit_type)
    }

    /// One grant's figures.
    pub fn grant(&self, grant_id: &str) -> Option<&LedgerGrantBalance> {
        self.grants.iter().find(|g| g.grant_id == grant_id)
    }
}

#[derive(Clone, Debug, Default)]
struct TypeState {
    held: i64,
    debt: i64,
    /// Overdraft part of pending holds.
    odheld: i64,
}

#[derive(Clone, Debug)]
struct PendingHold {
    credit_type: String,
    amount: i64,
    draws: Vec<Draw>,
    overdraft: i64,
}

/// The running state of one customer's fold.
#[derive(Clone, Debug, Default)]
pub(crate) struct CustomerFold {
    types: BTreeMap<String, TypeState>,
    grants: BTreeMap<String, LedgerGrantBalance>,
    holds: HashMap<String, PendingHold>,
}

fn amount_of(draws: &[Draw], grant_id: &str) -> i64 {
    draws
        .iter()
        .filter(|d| d.grant_id == grant_id)
        .map(|d| d.amount as i64)
        .sum()
}

impl CustomerFold {
    fn ty(&mut self, credit_type: &str) -> &mut TypeState {
        self.types.entry(credit_type.to_string()).or_default()
    }

    /// The grant's state; a grant the ledger never saw added (a partial ledger) starts
    /// empty so the fold still accounts for what the events say.
    fn grant(&mut self, grant_id: &str, credit_type: &str) -> &mut LedgerGrantBalance {
        self.grants
            .entry(grant_id.to_string())
            .or_insert_with(|| LedgerGrantBalance {
                grant_id: grant_id.to_string(),
                credit_type: credit_type.to_string(),
                granted: 0,
                debt_repaid: 0,
                remaining: 0,
                held: 0,
                burned: 0,
                expired: 0,
                expires_at_ms: None,
                is_expired: false,
            })
    }

    /// Applies one entry.
    pub(crate) fn apply(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let e = &entry.entry;
        if e.kind == EntryKind::Adjustment {
            self.ty(&e.credit_type);
            match &e.grant_id {
                Some(g) => self.grant(g, &e.credit_type).remaining += e.amount,
                None => self.ty(&e.credit_type).debt -= e.amount,
            }
            return Ok(());
        }
        let Some(event) = entry.event() else {
            return Ok(());
        };
        self.apply_event(&event?);
        Ok(())
    }

    /// Folds one event in. Pending holds are keyed by their placement
    /// (`hold:<id>:<nonce>`, from the event id), not the bare hold id: a hold placed again
    /// under an old id is another hold.
    fn apply_event(&mut self, event: &Event) {
        let t = event.credit_type.as_str();
        self.ty(t);
        let placement = hold_placement_of(&event.event_id);
        match &event.body {
            EventBody::GrantAdded {
                grant_id,
                amount,
                debt_repaid,
                expires_at_ms,
                ..
            } => {
                let g = self.grant(grant_id, t);
                g.granted += *amount as i64;
                g.debt_repaid += *debt_repaid as i64;
                g.remaining += (*amount - *debt_repaid) as i64;
                g.expires_at_ms = *expires_at_ms;
                self.ty(t).debt -= *debt_repaid as i64;
            }
            EventBody::HoldPlaced {
                hold_id,
                amount,
                draws,
                overdraft,
                ..
            } => {
                let key = placement.unwrap_or(hold_id);
                self.place(key, t, *amount as i64, draws.clone(), *overdraft as i64)
            }
            EventBody::HoldPosted {
                hold_id,
                held,
                burns,
                overdraft,
                returned,
                returned_overdraft,
                breakage,
                ..
            } => {
                let hold = self.pending(placement.unwrap_or(hold_id), t, *held as i64, || {
                    // Without its placement, assume every burn came from the hold; the
                    // effect on the total is the same.
                    let mut draws = burns.clone();
                    draws.extend(returned.iter().cloned());
                    draws.extend(breakage.iter().cloned());
                    (draws, (*returned_overdraft + *overdraft) as i64)
                });
                self.release(&hold, burns, returned, breakage);
                let od_burn = hold.overdraft - *returned_overdraft as i64;
                let ty = self.ty(&hold.credit_type);
                ty.odheld -= hold.overdraft;
                ty.held -= hold.amount;
                // `overdraft` is everything posted into debt: the hold's overdraft part
                // that burned plus what settling above the held amount could not take
                // from grants.
                ty.debt += *overdraft as i64;
                debug_assert!(od_burn <= *overdraft as i64);
            }
            EventBody::HoldVoided(r) | EventBody::HoldExpired(r) => {
                let hold = self.pending(placement.unwrap_or(&r.hold_id), t, r.held as i64, || {
                    let mut draws = r.returned.clone();
                    draws.extend(r.breakage.iter().cloned());
                    (draws, r.returned_overdraft as i64)
                });
                self.release(&hold, &[], &r.returned, &r.breakage);
                let ty = self.ty(&hold.credit_type);
                ty.odheld -= hold.overdraft;
                ty.held -= hold.amount;
            }
            EventBody::GrantExpired {
                grant_id, amount, ..
            } => {
                let g = self.grant(grant_id, t);
                g.remaining -= *amount as i64;
                g.expired += *amount as i64;
                g.is_expired = true;
            }
        }
    }

    fn place(&mut self, hold_id: &str, t: &str, amount: i64, draws: Vec<Draw>, overdraft: i64) {
        for d in &draws {
            let g = self.grant(&d.grant_id, t);
            g.remaining -= d.amount as i64;
            g.held += d.amount as i64;
        }
        let ty = self.ty(t);
        ty.held += amount;
        ty.odheld += overdraft;
        self.holds.insert(
            hold_id.to_string(),
            PendingHold {
                credit_type: t.to_string(),
                amount,
                draws,
                overdraft,
            },
        );
    }

    /// Takes the pending hold, or synthesises its placement from the resolution when the
    /// ledger lacks it.
    fn pending(
        &mut self,
        hold_id: &str,
        t: &str,
        held: i64,
        synthesise: impl FnOnce() -> (Vec<Draw>, i64),
    ) -> PendingHold {
        if let Some(h) = self.holds.remove(hold_id) {
            return h;
        }
        let (draws, overdraft) = synthesise();
        self.place(hold_id, t, held, draws, overdraft);
        self.holds.remove(hold_id).expect("just placed")
    }

    /// Unwinds a hold's draws: per grant, what it held now burns, returns or breaks; any
    /// burn beyond what it held came from the grant's remaining credits.
    fn release(
        &mut self,
        hold: &PendingHold,
        burns: &[Draw],
        returned: &[Draw],
        breakage: &[Draw],
    ) {
        let mut ids: Vec<&str> = hold.draws.iter().map(|d| d.grant_id.as_str()).collect();
        ids.extend(burns.iter().map(|d| d.grant_id.as_str()));
        ids.extend(returned.iter().map(|d| d.grant_id.as_str()));
        ids.extend(breakage.iter().map(|d| d.grant_id.as_str()));
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let held = amount_of(&hold.draws, id);
            let burn = amount_of(burns, id);
            let back = amount_of(returned, id);
            let broken = amount_of(breakage, id);
            let burn_from_hold = (held - back - broken).max(0);
            let extra = burn - burn_from_hold;
            let g = self.grant(id, &hold.credit_type);
            g.held -= held;
            g.remaining += back - extra;
            g.burned += burn;
            g.expired += broken;
        }
    }

    /// The figures at `at_ms` (used to tell usable grants from ones past expiry).
    pub(crate) fn balance(&self, customer: &str, at_ms: u64) -> LedgerBalance {
        let types = self
            .types
            .iter()
            .map(|(t, s)| {
                let of_type = || self.grants.values().filter(move |g| &g.credit_type == t);
                let book: i64 = of_type().map(|g| g.remaining).sum();
                let usable: i64 = of_type()
                    .filter(|g| !g.is_expired && g.expires_at_ms.is_none_or(|e| e > at_ms))
                    .map(|g| g.remaining)
                    .sum();
                let book_available = book - s.debt - s.odheld;
                LedgerTypeBalance {
                    credit_type: t.clone(),
                    total: book_available + s.held,
                    available: usable - s.debt - s.odheld,
                    book_available,
                    held: s.held,
                    debt: s.debt,
                }
            })
            .collect();
        LedgerBalance {
            customer: customer.to_string(),
            at_ms,
            types,
            grants: self.grants.values().cloned().collect(),
        }
    }
}

/// Folds one customer's entries, ordered by event time then seq, into the balance at
/// `at_ms` (entries after `at_ms` are skipped).
pub fn fold_balance(
    customer: &str,
    at_ms: u64,
    entries: &[LedgerEntry],
) -> Result<LedgerBalance, LedgerError> {
    let mut fold = CustomerFold::default();
    for e in entries
        .iter()
        .filter(|e| e.entry.customer == customer && e.entry.event_at_ms <= at_ms)
    {
        fold.apply(e)?;
    }
    Ok(fold.balance(customer, at_ms))
}

/// One row of usage: posted holds of one UTC day, feature and credit type.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The feature.
    pub feature: String,
    /// The credit type.
    pub credit_type: String,
    /// Posted holds (requests charged).
    pub requests: u64,
    /// Credits burned (posted), credit units.
    pub burned: u64,
    /// Unbilled overage: what settles could not take because the balance and overdraft
    /// ran out (the `overage` entries' shortfalls), credit units. Not in `burned`.
    pub overage: u64,
}

/// The UTC calendar day of an instant, `YYYY-MM-DD` (Howard Hinnant's civil-from-days).
pub fn utc_day(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Groups `hold_posted` entries (and the `overage` entries beside them) by UTC day,
/// feature and credit type, sorted by those.
pub fn fold_usage(entries: &[LedgerEntry]) -> Result<Vec<UsageRow>, LedgerError> {
    let mut rows: BTreeMap<(String, String, String), (u64, u64, u64)> = BTreeMap::new();
    for entry in entries {
        if let Some(overage) = entry.overage() {
            let key = (
                utc_day(entry.entry.event_at_ms),
                entry.entry.feature.clone().unwrap_or_default(),
                entry.entry.credit_type.clone(),
            );
            rows.entry(key).or_default().2 += overage?;
            continue;
        }
        if entry.entry.kind != EntryKind::HoldPosted {
            continue;
        }
        let Some(event) = entry.event() else { continue };
        if let EventBody::HoldPosted {
            posted, context, ..
        } = event?.body
        {
            let key = (
                utc_day(entry.entry.event_at_ms),
                context.feature,
                entry.entry.credit_type.clone(),
            );
            let row = rows.entry(key).or_default();
            row.0 += 1;
            row.1 += posted;
        }
    }
    Ok(rows
        .into_iter()
        .map(
            |((day, feature, credit_type), (requests, burned, overage))| UsageRow {
                day,
                feature,
                credit_type,
                requests,
                burned,
                overage,
            },
        )
        .collect())
}

/// Revenue figures of a window, currency micro-units.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Revenue {
    /// Value of credits consumed in the window: burned by posted holds, or repaying
    /// overdraft debt when a grant arrived.
    pub recognized_micros: i128,
    /// Value of credits lost to expiry in the window.
    pub breakage_micros: i128,
    /// Value of credits granted before the window's end and neither consumed nor expired
    /// by then.
    pub deferred_micros_at_end: i128,
    /// Unbilled overage of the window per credit type, in **credit units** (not money): what
    /// settles could not take because balance and overdraft ran out. No grant backs these
    /// credits, so they have no cost basis; finance bills them (at list price) or writes
    /// them off. Not part of recognized revenue.
    pub unbilled_overage: BTreeMap<String, u64>,
}

/// What a grant's credits are worth as they are consumed (shared with the revenue
/// rollup, which values a month's credits the same way).
#[derive(Default)]
pub(crate) struct GrantValue {
    amount: i128,
    cost_basis: i128,
    consumed: i128,
}

impl GrantValue {
    /// A grant of `amount` credits paid `cost_basis` micro-units, nothing consumed yet.
    pub(crate) fn new(amount: i64, cost_basis: i64) -> Self {
        Self {
            amount: i128::from(amount),
            cost_basis: i128::from(cost_basis),
            consumed: 0,
        }
    }

    /// The value of the credits not consumed yet: deferred revenue.
    pub(crate) fn unconsumed_value(&self) -> i128 {
        self.cost_basis - self.value(self.consumed)
    }

    /// Value of the first `n` credits: `floor(cost_basis × min(n, amount) / amount)`.
    /// Valuing cumulative consumption (not each burn alone) makes the parts add up to
    /// exactly the cost basis once the grant is used up.
    fn value(&self, n: i128) -> i128 {
        if self.amount == 0 {
            return 0;
        }
        self.cost_basis * n.min(self.amount) / self.amount
    }

    /// Consumes `n` more credits; returns their value.
    pub(crate) fn consume(&mut self, n: i128) -> i128 {
        let before = self.value(self.consumed);
        self.consumed += n;
        self.value(self.consumed) - before
    }
}

/// Revenue of the window `[from_ms, to_ms)` from every entry before `to_ms`, ordered by
/// event time then seq. A credit of grant g is worth `cost_basis_g / amount_g`;
/// adjustments carry no money and are left out.
pub fn fold_revenue(
    from_ms: u64,
    to_ms: u64,
    entries: &[LedgerEntry],
) -> Result<Revenue, LedgerError> {
    let mut grants: HashMap<(String, String), GrantValue> = HashMap::new();
    let mut out = Revenue::default();
    for entry in entries.iter().filter(|e| e.entry.event_at_ms < to_ms) {
        let in_window = entry.entry.event_at_ms >= from_ms;
        if let Some(overage) = entry.overage() {
            let overage = overage?;
            if in_window {
                *out.unbilled_overage
                    .entry(entry.entry.credit_type.clone())
                    .or_default() += overage;
            }
            continue;
        }
        let Some(event) = entry.event() else { continue };
        let event = event?;
        let customer = event.customer.clone();
        if let EventBody::GrantAdded {
            grant_id,
            amount,
            cost_basis,
            ..
        } = &event.body
        {
            let g = grants
                .entry((customer.clone(), grant_id.clone()))
                .or_default();
            g.amount = i128::from(*amount);
            g.cost_basis = i128::from(*cost_basis);
        }
        let mut consume = |grant_id: &str, n: u64, recognized: bool| {
            let g = grants
                .entry((customer.clone(), grant_id.to_string()))
                .or_default();
            let v = g.consume(i128::from(n));
            if in_window {
                if recognized {
                    out.recognized_micros += v;
                } else {
                    out.breakage_micros += v;
                }
            }
        };
        match &event.body {
            EventBody::GrantAdded {
                grant_id,
                debt_repaid,
                ..
            } => consume(grant_id, *debt_repaid, true),
            EventBody::HoldPosted {
                burns, breakage, ..
            } => {
                for d in burns {
                    consume(&d.grant_id, d.amount, true);
                }
                for d in breakage {
                    consume(&d.grant_id, d.amount, false);
                }
            }
            EventBody::HoldVoided(r) | EventBody::HoldExpired(r) => {
                for d in &r.breakage {
                    consume(&d.grant_id, d.amount, false);
                }
            }
            EventBody::GrantExpired {
                grant_id, amount, ..
            } => consume(grant_id, *amount, false),
            EventBody::HoldPlaced { .. } => {}
        }
    }
    out.deferred_micros_at_end = grants.values().map(GrantValue::unconsumed_value).sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_700_000_000_000), "2023-11-14");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(951_868_799_999), "2000-02-29");
        assert_eq!(utc_day(951_868_800_000), "2000-03-01");
    }

    #[test]
    fn cumulative_valuation_adds_up_to_the_cost_basis() {
        let mut g = GrantValue {
            amount: 3,
            cost_basis: 100,
            consumed: 0,
        };
        let parts = [g.consume(1), g.consume(1), g.consume(1)];
        assert_eq!(parts, [33, 33, 34]);
        assert_eq!(g.consume(5), 0);
    }
}
