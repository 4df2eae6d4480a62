//! The money invariants every store outcome must satisfy, checked where outcomes are
//! decoded (the Redis bindings, the embedded store, the stream reader), in every build.
//!
//! A broken invariant means the store or this client has a bug, or the data was changed by
//! hand: the check reports which field broke what with which values, as an
//! [`InvariantViolation`]. It must never repair a value (clamp, default, round): the caller
//! turns the violation into a non-retryable [`crate::StoreError::Invariant`]. Nothing here
//! does I/O or panics.
//!
//! Settling may post more than was held (the difference comes from the balance), so the
//! settle checks are `posted + shortfall = requested` and, on the event that carries the
//! held amount, `returned + breakage = held - min(requested, held)`.

use crate::MAX_AMOUNT;
use crate::event::{Event, EventBody, Release};
use crate::types::{
    Balance, Draw, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome, GrantRef,
    GrantRequest, HoldRecord, HoldRef, HoldState, ReserveOutcome, ReserveRequest, ResolveOutcome,
    SettleRequest,
};

/// A decoded outcome that breaks a money invariant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {field}: {detail}")]
pub struct InvariantViolation {
    /// What the outcome is about: `hold <customer>/<hold>`, `grant <customer>/<grant>`,
    /// `customer <customer>` or `event <event id>`.
    pub subject: String,
    /// The field whose value breaks the invariant.
    pub field: &'static str,
    /// The invariant and the values that broke it.
    pub detail: String,
}

/// Checks of one subject; every method names the field and the values it saw.
struct Subject(String);

impl Subject {
    fn hold(customer: &str, hold_id: &str) -> Self {
        Self(format!("hold {customer}/{hold_id}"))
    }

    fn grant(customer: &str, grant_id: &str) -> Self {
        Self(format!("grant {customer}/{grant_id}"))
    }

    fn violation(&self, field: &'static str, detail: String) -> InvariantViolation {
        InvariantViolation {
            subject: self.0.clone(),
            field,
            detail,
        }
    }

    /// Fails with `detail` unless `holds`.
    fn that(
        &self,
        holds: bool,
        field: &'static str,
        detail: impl FnOnce() -> String,
    ) -> Result<(), InvariantViolation> {
        if holds {
            Ok(())
        } else {
            Err(self.violation(field, detail()))
        }
    }

    /// An amount: at most [`MAX_AMOUNT`], beyond which the scripts' doubles are inexact.
    fn amount(&self, field: &'static str, value: u64) -> Result<(), InvariantViolation> {
        self.that(value <= MAX_AMOUNT, field, || {
            format!("{value} exceeds MAX_AMOUNT {MAX_AMOUNT}")
        })
    }

    /// A signed figure (available, a counter): its magnitude at most [`MAX_AMOUNT`].
    fn figure(&self, field: &'static str, value: i64) -> Result<(), InvariantViolation> {
        self.that(value.unsigned_abs() <= MAX_AMOUNT, field, || {
            format!("{value} is beyond ±MAX_AMOUNT {MAX_AMOUNT}")
        })
    }

    /// A signed figure that can never be negative (held, debt).
    fn non_negative(&self, field: &'static str, value: i64) -> Result<(), InvariantViolation> {
        self.that(value >= 0, field, || format!("{value} is negative"))?;
        self.figure(field, value)
    }

    /// Draws: each amount within limits; returns their sum.
    fn draws(&self, field: &'static str, draws: &[Draw]) -> Result<u64, InvariantViolation> {
        let mut sum: u64 = 0;
        for d in draws {
            self.amount(field, d.amount)?;
            sum = sum.saturating_add(d.amount);
        }
        self.that(sum <= MAX_AMOUNT, field, || {
            format!("draws sum to {sum}, more than MAX_AMOUNT {MAX_AMOUNT}")
        })?;
        Ok(sum)
    }

    /// What a hold took: its draws plus its overdraft part make up exactly `amount`.
    fn taken(&self, amount: u64, draws: &[Draw], overdraft: u64) -> Result<(), InvariantViolation> {
        self.amount("overdraft", overdraft)?;
        let drawn = self.draws("draws", draws)?;
        self.that(drawn + overdraft == amount, "draws", || {
            format!("draws {drawn} + overdraft {overdraft} != amount {amount}")
        })
    }
}

/// The outcome of a grant.
pub fn check_grant(req: &GrantRequest, out: &GrantOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::grant(&req.customer, &req.grant_id);
    match out {
        GrantOutcome::Granted { debt_repaid, .. } => {
            s.amount("debt_repaid", *debt_repaid)?;
            s.that(*debt_repaid <= req.amount, "debt_repaid", || {
                format!("{debt_repaid} > granted amount {}", req.amount)
            })
        }
        GrantOutcome::Conflict {
            first_credit_type,
            first_amount,
            ..
        } => {
            s.amount("first_amount", *first_amount)?;
            s.that(
                *first_credit_type != req.credit_type || *first_amount != req.amount,
                "first_amount",
                || format!("conflict with an equal grant ({first_credit_type}, {first_amount})"),
            )
        }
        GrantOutcome::AlreadyExpired { at_ms } => s.that(
            req.expires_at_ms.is_some_and(|e| e <= *at_ms),
            "expires_at_ms",
            || format!("{:?} is not at or before {at_ms}", req.expires_at_ms),
        ),
        GrantOutcome::Duplicate { .. } => Ok(()),
    }
}

/// The outcome of a reserve: what a placed hold took adds up to the amount, and it is past
/// the overdraft limit exactly when `available_after < -overdraft_limit` (only `force` may
/// place it there).
pub fn check_reserve(req: &ReserveRequest, out: &ReserveOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&req.customer, &req.hold_id);
    let floor = -(req.overdraft_limit.min(MAX_AMOUNT) as i64);
    match out {
        ReserveOutcome::Placed {
            at_ms,
            hold,
            available_after,
        } => {
            s.taken(req.amount, &hold.draws, hold.overdraft)?;
            s.figure("available_after", *available_after)?;
            s.that(
                hold.over_limit == (*available_after < floor),
                "available_after",
                || {
                    format!(
                        "{available_after} with overdraft_limit {} but over_limit {}",
                        req.overdraft_limit, hold.over_limit
                    )
                },
            )?;
            s.that(req.force || !hold.over_limit, "over_limit", || {
                "a hold past the overdraft limit was placed without force".to_string()
            })?;
            s.that(
                hold.deadline_ms == at_ms.saturating_add(req.ttl_ms),
                "deadline_ms",
                || format!("{} != at {at_ms} + ttl {}", hold.deadline_ms, req.ttl_ms),
            )
        }
        ReserveOutcome::Replay { hold, .. } => s.taken(req.amount, &hold.draws, hold.overdraft),
        ReserveOutcome::Conflict { first_amount, .. } => s.amount("first_amount", *first_amount),
        ReserveOutcome::Insufficient { available, .. } => {
            s.figure("available", *available)?;
            s.that(!req.force, "available", || {
                format!("insufficient ({available}) although force was set")
            })?;
            let room = i128::from(*available) + i128::from(req.overdraft_limit);
            s.that(room < i128::from(req.amount), "available", || {
                format!(
                    "{available} + overdraft_limit {} covers amount {}, yet insufficient",
                    req.overdraft_limit, req.amount
                )
            })
        }
    }
}

/// The outcome of a settle: `posted + shortfall = actual`; a shortfall means nothing was
/// returned and available went as low as the overdraft limit allows.
pub fn check_settle(req: &SettleRequest, out: &ResolveOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&req.customer, &req.hold_id);
    let ResolveOutcome::Posted {
        posted,
        shortfall,
        returned,
        available_after,
        ..
    } = out
    else {
        return check_settle_not_pending(&s, req, out);
    };
    s.amount("posted", *posted)?;
    s.amount("shortfall", *shortfall)?;
    s.amount("returned", *returned)?;
    s.figure("available_after", *available_after)?;
    s.that(posted + shortfall == req.actual, "posted", || {
        format!(
            "posted {posted} + shortfall {shortfall} != actual {}",
            req.actual
        )
    })?;
    // Something came back only if less than held was posted; the hold's amount is at most
    // MAX_AMOUNT, so posted and returned together are too.
    s.that(posted + returned <= MAX_AMOUNT, "returned", || {
        format!("posted {posted} + returned {returned} exceed MAX_AMOUNT {MAX_AMOUNT}")
    })?;
    if *shortfall > 0 {
        s.that(*returned == 0, "returned", || {
            format!("{returned} returned although shortfall is {shortfall}")
        })?;
        let floor = -(req.overdraft_limit.min(MAX_AMOUNT) as i64);
        s.that(*available_after <= floor, "available_after", || {
            format!(
                "{available_after} above -overdraft_limit {} although shortfall is {shortfall}",
                req.overdraft_limit
            )
        })?;
    }
    Ok(())
}

/// A settle of a hold that was not pending: a late burn of an expired hold
/// (`posted + shortfall = actual`, nothing returned), or a resolution from before.
/// A settle never answers `already_expired`: an expired hold is burned late instead.
fn check_settle_not_pending(
    s: &Subject,
    req: &SettleRequest,
    out: &ResolveOutcome,
) -> Result<(), InvariantViolation> {
    match out {
        ResolveOutcome::PostedLate {
            posted,
            shortfall,
            available_after,
            ..
        } => {
            s.amount("posted", *posted)?;
            s.amount("shortfall", *shortfall)?;
            s.figure("available_after", *available_after)?;
            s.that(posted + shortfall == req.actual, "posted", || {
                format!(
                    "late posted {posted} + shortfall {shortfall} != actual {}",
                    req.actual
                )
            })
        }
        ResolveOutcome::AlreadyExpired { .. } => Err(s.violation(
            "status",
            "settle answered already_expired: an expired hold is burned late".to_string(),
        )),
        _ => check_resolved_earlier(s, "settle", out),
    }
}

/// The outcome of an extend: a pending hold's deadline lies ahead of the store time; any
/// other answer is one a resolution gives for a hold no longer pending.
pub fn check_extend(req: &ExtendRequest, out: &ExtendOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&req.customer, &req.hold_id);
    match out {
        ExtendOutcome::Extended { at_ms, deadline_ms } => {
            s.that(*deadline_ms >= at_ms + req.ttl_ms, "deadline_ms", || {
                format!(
                    "extended to {deadline_ms}, before now {at_ms} + ttl_ms {}",
                    req.ttl_ms
                )
            })
        }
        ExtendOutcome::NotPending(o) => check_resolved_earlier(&s, "extend", o),
    }
}

/// The outcome of a void.
pub fn check_void(hold: &HoldRef, out: &ResolveOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&hold.customer, &hold.hold_id);
    match out {
        ResolveOutcome::Voided { returned, .. } => s.amount("returned", *returned),
        _ => check_resolved_earlier(&s, "void", out),
    }
}

/// The outcome of expire_hold: a hold not yet due has its deadline in the future.
pub fn check_expire_hold(hold: &HoldRef, out: &ResolveOutcome) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&hold.customer, &hold.hold_id);
    match out {
        ResolveOutcome::Expired { returned, .. } => s.amount("returned", *returned),
        ResolveOutcome::NotDue { at_ms, deadline_ms } => {
            s.that(deadline_ms > at_ms, "deadline_ms", || {
                format!("not due, yet deadline {deadline_ms} <= now {at_ms}")
            })
        }
        _ => check_resolved_earlier(&s, "expire_hold", out),
    }
}

/// The outcomes every resolution shares (resolved before, unknown); any other outcome is
/// one this operation never gives.
fn check_resolved_earlier(
    s: &Subject,
    op: &str,
    out: &ResolveOutcome,
) -> Result<(), InvariantViolation> {
    match out {
        ResolveOutcome::AlreadyPosted { posted, .. } => s.amount("posted", *posted),
        ResolveOutcome::AlreadyVoided { .. }
        | ResolveOutcome::AlreadyExpired { .. }
        | ResolveOutcome::Unknown { .. } => Ok(()),
        other => Err(s.violation("status", format!("{op} cannot answer {other:?}"))),
    }
}

/// The outcome of expire_grant.
pub fn check_grant_expiry(
    grant: &GrantRef,
    out: &GrantExpiryOutcome,
) -> Result<(), InvariantViolation> {
    let s = Subject::grant(&grant.customer, &grant.grant_id);
    match out {
        GrantExpiryOutcome::Expired { amount, .. } => s.amount("amount", *amount),
        GrantExpiryOutcome::NotDue {
            at_ms,
            expires_at_ms,
        } => s.that(
            *expires_at_ms == 0 || expires_at_ms > at_ms,
            "expires_at_ms",
            || format!("not due, yet expiry {expires_at_ms} <= now {at_ms}"),
        ),
        GrantExpiryOutcome::AlreadyExpired { .. } | GrantExpiryOutcome::Unknown { .. } => Ok(()),
    }
}

/// A balance: held and debt never negative, available never above the book figure, and a
/// type's grants never hold more than the type's held total.
pub fn check_balance(customer: &str, balance: &Balance) -> Result<(), InvariantViolation> {
    let s = Subject(format!("customer {customer}"));
    for g in &balance.grants {
        let sg = Subject::grant(customer, &g.grant_id);
        sg.amount("remaining", g.remaining)?;
        sg.amount("held", g.held)?;
        sg.amount("cost_basis", g.cost_basis)?;
        sg.that(!g.expired || g.remaining == 0, "remaining", || {
            format!("{} remaining on an expired grant", g.remaining)
        })?;
    }
    for t in &balance.types {
        s.figure("available", t.available)?;
        s.figure("book_available", t.book_available)?;
        s.non_negative("held", t.held)?;
        s.non_negative("debt", t.debt)?;
        s.that(t.available <= t.book_available, "available", || {
            format!(
                "{} of {} above book_available {}",
                t.available, t.credit_type, t.book_available
            )
        })?;
        let in_grants = balance
            .grants
            .iter()
            .filter(|g| g.credit_type == t.credit_type)
            .fold(0u64, |sum, g| sum.saturating_add(g.held));
        s.that(in_grants <= t.held.unsigned_abs(), "held", || {
            format!(
                "{} of {} is less than the {in_grants} its grants hold",
                t.held, t.credit_type
            )
        })?;
    }
    Ok(())
}

/// A stored hold: what it took adds up to its amount; only a posted hold has posted
/// anything, and only a resolved hold has a resolution time.
pub fn check_hold_record(hold: &HoldRef, r: &HoldRecord) -> Result<(), InvariantViolation> {
    let s = Subject::hold(&hold.customer, &hold.hold_id);
    s.amount("amount", r.amount)?;
    s.amount("posted", r.posted)?;
    s.taken(r.amount, &r.draws, r.overdraft)?;
    s.that(r.deadline_ms >= r.created_ms, "deadline_ms", || {
        format!("{} before created {}", r.deadline_ms, r.created_ms)
    })?;
    s.that(
        r.state == HoldState::Posted || r.posted == 0,
        "posted",
        || format!("{} posted by a {} hold", r.posted, r.state.as_str()),
    )?;
    s.that(
        (r.state == HoldState::Pending) == r.resolved_ms.is_none(),
        "resolved_ms",
        || format!("{:?} on a {} hold", r.resolved_ms, r.state.as_str()),
    )
}

/// An event read from a shard stream: what a hold took, burned, returned and lost adds up.
pub fn check_event(event: &Event) -> Result<(), InvariantViolation> {
    let s = Subject(format!("event {}", event.event_id));
    match &event.body {
        EventBody::GrantAdded {
            amount,
            debt_repaid,
            cost_basis,
            ..
        } => {
            s.amount("amount", *amount)?;
            s.amount("cost_basis", *cost_basis)?;
            s.that(debt_repaid <= amount, "debt_repaid", || {
                format!("{debt_repaid} > amount {amount}")
            })
        }
        EventBody::HoldPlaced {
            amount,
            draws,
            overdraft,
            ..
        } => {
            s.amount("amount", *amount)?;
            s.taken(*amount, draws, *overdraft)
        }
        EventBody::HoldPosted { .. } => check_posted_event(&s, &event.body),
        EventBody::HoldVoided(r) | EventBody::HoldExpired(r) => check_release(&s, r),
        EventBody::GrantExpired { amount, held, .. } => {
            s.amount("amount", *amount)?;
            s.amount("held", *held)
        }
    }
}

/// A posted hold's event: `posted + shortfall = requested`, the burns (and what went into
/// debt) make up `posted`, and what was not posted of the hold came back or broke.
fn check_posted_event(s: &Subject, body: &EventBody) -> Result<(), InvariantViolation> {
    let EventBody::HoldPosted {
        held,
        requested,
        posted,
        burns,
        overdraft,
        returned,
        returned_overdraft,
        breakage,
        shortfall,
        ..
    } = body
    else {
        return Ok(());
    };
    for (field, value) in [
        ("held", held),
        ("requested", requested),
        ("posted", posted),
        ("overdraft", overdraft),
        ("returned_overdraft", returned_overdraft),
        ("shortfall", shortfall),
    ] {
        s.amount(field, *value)?;
    }
    s.that(posted + shortfall == *requested, "posted", || {
        format!("posted {posted} + shortfall {shortfall} != requested {requested}")
    })?;
    let burned = s.draws("burns", burns)?;
    s.that(burned + overdraft == *posted, "burns", || {
        format!("burns {burned} + overdraft {overdraft} != posted {posted}")
    })?;
    let back =
        s.draws("returned", returned)? + returned_overdraft + s.draws("breakage", breakage)?;
    let rest = held - (*requested).min(*held);
    s.that(back == rest, "returned", || {
        format!(
            "returned + returned_overdraft + breakage = {back}, \
             but held {held} - posted part {} = {rest}",
            (*requested).min(*held)
        )
    })
}

/// A voided or expired hold's event: everything held came back or broke.
fn check_release(s: &Subject, r: &Release) -> Result<(), InvariantViolation> {
    s.amount("held", r.held)?;
    s.amount("returned_overdraft", r.returned_overdraft)?;
    let back = s.draws("returned", &r.returned)?
        + r.returned_overdraft
        + s.draws("breakage", &r.breakage)?;
    s.that(back == r.held, "returned", || {
        format!(
            "returned + returned_overdraft + breakage = {back} != held {}",
            r.held
        )
    })
}

/// One credit type's counters in the reference model, beside what its grants add up to.
pub(crate) struct TypeTotals {
    /// Credits in pending holds.
    pub held: i64,
    /// Overdraft debt.
    pub debt: i64,
    /// The overdraft part of pending holds.
    pub overdraft_held: i64,
    /// The kept-in-step available figure.
    pub book_available: i64,
    /// Σ held of the type's grants.
    pub grants_held: u64,
    /// Σ remaining of the type's grants.
    pub grants_remaining: u64,
}

/// The reference model's counters of one credit type: never negative where they count
/// credits, `held` is what the grants hold plus the overdraft part, and the book figure is
/// what remains less debt and the overdraft part.
pub(crate) fn check_type_totals(
    customer: &str,
    credit_type: &str,
    t: &TypeTotals,
) -> Result<(), InvariantViolation> {
    let s = Subject(format!("customer {customer} type {credit_type}"));
    s.non_negative("held", t.held)?;
    s.non_negative("debt", t.debt)?;
    s.non_negative("overdraft_held", t.overdraft_held)?;
    s.figure("book_available", t.book_available)?;
    let held = i128::from(t.grants_held) + i128::from(t.overdraft_held);
    s.that(held == i128::from(t.held), "held", || {
        format!(
            "{} != grants' held {} + overdraft_held {}",
            t.held, t.grants_held, t.overdraft_held
        )
    })?;
    let book = i128::from(t.grants_remaining) - i128::from(t.debt) - i128::from(t.overdraft_held);
    s.that(
        book == i128::from(t.book_available),
        "book_available",
        || {
            format!(
                "{} != grants' remaining {} - debt {} - overdraft_held {}",
                t.book_available, t.grants_remaining, t.debt, t.overdraft_held
            )
        },
    )
}
