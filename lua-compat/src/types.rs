//! Typed arguments and outcomes of the protocol's operations, shared by every store.
//!
//! Amounts are integers in the credit type's smallest unit and always below
//! [`MAX_AMOUNT`]; times are milliseconds since the Unix epoch taken from
//! the store's clock (Redis `TIME`).

use std::fmt;
use std::str::FromStr;

use crate::keys::{MAX_AMOUNT, validate_id};

/// Longest free-text argument (actor, reason, request id, route, feature), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// Longest hold lifetime and retention the scripts accept: 30 days, in milliseconds.
pub const MAX_TTL_MS: u64 = 30 * 86_400_000;

/// How long a resolved hold's record is kept when the caller does not say: 24 hours, so an
/// `Idempotency-Key` retried within a day gets the first outcome back.
pub const DEFAULT_RETAIN_MS: u64 = 86_400_000;

/// Where a grant's credits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantSource {
    /// Bought by the customer; carries a cost basis.
    Purchase,
    /// Given by sales or marketing; usually expires.
    Promotion,
    /// The periodic allotment of the customer's plan.
    PlanAllotment,
    /// Given by support to make up for a problem.
    Goodwill,
    /// A correction by an admin.
    Adjustment,
}

impl GrantSource {
    /// The wire name used in events and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Promotion => "promotion",
            Self::PlanAllotment => "plan_allotment",
            Self::Goodwill => "goodwill",
            Self::Adjustment => "adjustment",
        }
    }

    /// Every source, for tests and listings.
    pub const ALL: [GrantSource; 5] = [
        Self::Purchase,
        Self::Promotion,
        Self::PlanAllotment,
        Self::Goodwill,
        Self::Adjustment,
    ];
}

impl fmt::Display for GrantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GrantSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| format!("unknown grant source {s:?}"))
    }
}

/// Adds credits to a customer. Idempotent by `grant_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRequest {
    /// The customer receiving the credits.
    pub customer: String,
    /// Unique id of this grant; a retry with the same id applies nothing twice.
    pub grant_id: String,
    /// The credit type granted.
    pub credit_type: String,
    /// Amount granted, 1 to [`MAX_AMOUNT`].
    pub amount: u64,
    /// Burn priority: lower values burn first.
    pub priority: u32,
    /// When the unused rest expires (ms since epoch), or never.
    pub expires_at_ms: Option<u64>,
    /// Total money paid for the grant in currency micro-units; 0 for free credits.
    pub cost_basis: u64,
    /// Where the credits came from.
    pub source: GrantSource,
    /// Who issued the grant.
    pub actor: String,
    /// Why it was issued.
    pub reason: String,
}

/// Places a hold (reservation). Idempotent by `hold_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The customer paying.
    pub customer: String,
    /// Unique id of the hold; a retry returns the first outcome.
    pub hold_id: String,
    /// The credit type burned.
    pub credit_type: String,
    /// Amount to hold, 0 to [`MAX_AMOUNT`].
    pub amount: u64,
    /// Lifetime of the hold before the sweeper may expire it, in milliseconds.
    pub ttl_ms: u64,
    /// How far below zero this customer's balance may go, in credit units.
    pub overdraft_limit: u64,
    /// Place the hold even past the overdraft limit (shadow mode); the outcome says so.
    pub force: bool,
    /// The request id for tracing a charge.
    pub request_id: String,
    /// The route name that priced the call.
    pub route: String,
    /// The feature the call used.
    pub feature: String,
    /// How long the record stays after resolution, for idempotent retries, in milliseconds.
    pub retain_ms: u64,
    /// The pricing config version that priced the request (`7-3f2a9c1b04de`, see the
    /// config crate); stored on the hold and carried on its events, so each ledger burn
    /// records it. May be empty.
    pub pricing_version: String,
    /// When the usage happened (ms since epoch), for usage metered after the fact: the hold's
    /// placed and posted events carry it as their `at`, so the ledger orders them by event
    /// time. `None`: now (store time), as for every gateway request.
    pub occurred_at_ms: Option<u64>,
}

/// Posts the actual cost of a pending hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleRequest {
    /// The customer the hold belongs to.
    pub customer: String,
    /// The hold.
    pub hold_id: String,
    /// The actual cost; more than held is taken from the balance and overdraft if allowed.
    pub actual: u64,
    /// The customer's overdraft limit, in credit units.
    pub overdraft_limit: u64,
}

/// Moves a pending hold's deadline so a request still in flight keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendRequest {
    /// The customer the hold belongs to.
    pub customer: String,
    /// The hold.
    pub hold_id: String,
    /// The new deadline is at least store time + `ttl_ms`, in milliseconds; a deadline
    /// never moves earlier.
    pub ttl_ms: u64,
}

impl ExtendRequest {
    /// Checks every argument against the limits the scripts enforce.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("hold_id", &self.hold_id)?;
        range("ttl_ms", self.ttl_ms, 1, MAX_TTL_MS)
    }

    /// The hold it names.
    pub fn hold(&self) -> HoldRef {
        HoldRef {
            customer: self.customer.clone(),
            hold_id: self.hold_id.clone(),
        }
    }
}

/// The outcome of extend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// The hold is pending and its deadline is now `deadline_ms`.
    Extended {
        /// Store time.
        at_ms: u64,
        /// The hold's deadline, ms since epoch.
        deadline_ms: u64,
    },
    /// The hold is no longer pending (`AlreadyPosted`, `AlreadyVoided`, `AlreadyExpired`)
    /// or unknown (`Unknown`); nothing changed.
    NotPending(ResolveOutcome),
}

/// Names a hold, for void, expiry and reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HoldRef {
    /// The customer the hold belongs to.
    pub customer: String,
    /// The hold.
    pub hold_id: String,
}

/// Names a grant, for expiry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantRef {
    /// The customer the grant belongs to.
    pub customer: String,
    /// The grant.
    pub grant_id: String,
}

/// A bad argument, caught before any store is called.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidArgument {
    /// The argument's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn id(field: &'static str, v: &str) -> Result<(), InvalidArgument> {
    validate_id(field, v).map_err(|message| InvalidArgument { field, message })
}

fn range(field: &'static str, v: u64, min: u64, max: u64) -> Result<(), InvalidArgument> {
    if v < min || v > max {
        return Err(InvalidArgument {
            field,
            message: format!("must be in [{min}, {max}], got {v}"),
        });
    }
    Ok(())
}

fn text(field: &'static str, v: &str) -> Result<(), InvalidArgument> {
    if v.len() > MAX_TEXT_LEN {
        return Err(InvalidArgument {
            field,
            message: format!("must be at most {MAX_TEXT_LEN} bytes, got {}", v.len()),
        });
    }
    Ok(())
}

impl GrantRequest {
    /// Checks every argument against the limits the scripts enforce.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("grant_id", &self.grant_id)?;
        id("credit_type", &self.credit_type)?;
        range("amount", self.amount, 1, MAX_AMOUNT)?;
        range("priority", u64::from(self.priority), 0, 1_000_000)?;
        range(
            "expires_at_ms",
            self.expires_at_ms.unwrap_or(1),
            1,
            MAX_AMOUNT,
        )?;
        range("cost_basis", self.cost_basis, 0, MAX_AMOUNT)?;
        text("actor", &self.actor)?;
        text("reason", &self.reason)
    }
}

impl ReserveRequest {
    /// Checks every argument against the limits the scripts enforce.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("hold_id", &self.hold_id)?;
        id("credit_type", &self.credit_type)?;
        range("amount", self.amount, 0, MAX_AMOUNT)?;
        range("ttl_ms", self.ttl_ms, 1, MAX_TTL_MS)?;
        range("overdraft_limit", self.overdraft_limit, 0, MAX_AMOUNT)?;
        text("request_id", &self.request_id)?;
        text("route", &self.route)?;
        text("feature", &self.feature)?;
        range("retain_ms", self.retain_ms, 1, MAX_TTL_MS)?;
        text("pricing_version", &self.pricing_version)?;
        range(
            "occurred_at_ms",
            self.occurred_at_ms.unwrap_or(1),
            1,
            MAX_AMOUNT,
        )
    }
}

impl SettleRequest {
    /// Checks every argument against the limits the scripts enforce.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("hold_id", &self.hold_id)?;
        range("actual", self.actual, 0, MAX_AMOUNT)?;
        range("overdraft_limit", self.overdraft_limit, 0, MAX_AMOUNT)
    }
}

impl HoldRef {
    /// Checks the ids.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("hold_id", &self.hold_id)
    }
}

impl GrantRef {
    /// Checks the ids.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        id("customer", &self.customer)?;
        id("grant_id", &self.grant_id)
    }
}

/// What one grant gave to (or got back from) a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draw {
    /// The grant.
    pub grant_id: String,
    /// Credits, in the credit type's smallest unit.
    pub amount: u64,
}

/// The life of a hold: `pending` until exactly one of posted, voided or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldState {
    /// Placed, not yet resolved.
    Pending,
    /// The actual cost was burned and the rest returned.
    Posted,
    /// Cancelled; everything returned.
    Voided,
    /// Past its deadline and never settled; everything returned.
    Expired,
}

impl HoldState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }
}

impl FromStr for HoldState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "posted" => Ok(Self::Posted),
            "voided" => Ok(Self::Voided),
            "expired" => Ok(Self::Expired),
            other => Err(format!("unknown hold state {other:?}")),
        }
    }
}

/// The outcome of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Applied now; `debt_repaid` of it went to pay back overdraft.
    Granted {
        /// Store time.
        at_ms: u64,
        /// Credits that repaid overdraft debt instead of becoming spendable.
        debt_repaid: u64,
    },
    /// The same grant was applied before; nothing changed.
    Duplicate {
        /// Store time.
        at_ms: u64,
    },
    /// The grant id was used before with another credit type or amount; nothing changed.
    Conflict {
        /// Store time.
        at_ms: u64,
        /// The credit type of the first grant with this id.
        first_credit_type: String,
        /// The amount of the first grant with this id.
        first_amount: u64,
    },
    /// `expires_at_ms` is not in the future; nothing changed.
    AlreadyExpired {
        /// Store time.
        at_ms: u64,
    },
}

/// What a placed hold took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedHold {
    /// When the sweeper may expire it, ms since epoch.
    pub deadline_ms: u64,
    /// What each grant gave, in burn order.
    pub draws: Vec<Draw>,
    /// The part taken from overdraft.
    pub overdraft: u64,
    /// True when `force` placed it past the overdraft limit (shadow mode's would-block).
    pub over_limit: bool,
}

/// The outcome of a reserve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The hold is placed.
    Placed {
        /// Store time.
        at_ms: u64,
        /// What it took.
        hold: PlacedHold,
        /// Live available credits after the hold (negative in overdraft).
        available_after: i64,
    },
    /// The hold existed already: the first outcome, and the hold's state now.
    Replay {
        /// Store time.
        at_ms: u64,
        /// The hold's state now.
        state: HoldState,
        /// What it took when first placed.
        hold: PlacedHold,
    },
    /// The hold id exists with another customer, credit type or amount; nothing changed.
    Conflict {
        /// Store time.
        at_ms: u64,
        /// Credit type of the existing hold.
        first_credit_type: String,
        /// Amount of the existing hold.
        first_amount: u64,
    },
    /// Not enough credits: available plus overdraft is below the amount. Nothing changed.
    Insufficient {
        /// Store time.
        at_ms: u64,
        /// Live available credits (negative in overdraft).
        available: i64,
    },
}

/// The outcome of settle, void and expire_hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveOutcome {
    /// Settled: `posted` burned, `returned` back to available.
    Posted {
        /// Store time.
        at_ms: u64,
        /// Credits burned (≤ requested).
        posted: u64,
        /// Requested but neither held nor available within the overdraft limit.
        shortfall: u64,
        /// Credits returned to available.
        returned: u64,
        /// Live available credits after settling.
        available_after: i64,
    },
    /// A settle that found its hold expired (its request outlived the hold) and charged
    /// it anyway: `posted` burned from the grants, then overdraft (past the overdraft
    /// limit up to what was held); nothing was returned, since the expiry had returned
    /// the hold already.
    PostedLate {
        /// Store time.
        at_ms: u64,
        /// Credits burned (≤ requested).
        posted: u64,
        /// Requested above what was held and not coverable within the overdraft limit.
        shortfall: u64,
        /// Live available credits after settling (may be below −overdraft limit).
        available_after: i64,
    },
    /// Voided: `returned` back to available.
    Voided {
        /// Store time.
        at_ms: u64,
        /// Credits returned to available (breakage excluded).
        returned: u64,
    },
    /// Expired by the sweeper: `returned` back to available.
    Expired {
        /// Store time.
        at_ms: u64,
        /// Credits returned to available (breakage excluded).
        returned: u64,
    },
    /// expire_hold on a hold whose deadline has not passed; nothing changed.
    NotDue {
        /// Store time.
        at_ms: u64,
        /// The hold's deadline.
        deadline_ms: u64,
    },
    /// The hold was posted before; nothing changed.
    AlreadyPosted {
        /// Store time.
        at_ms: u64,
        /// What the first settle posted.
        posted: u64,
    },
    /// The hold was voided before; nothing changed.
    AlreadyVoided {
        /// Store time.
        at_ms: u64,
    },
    /// The hold expired before; nothing changed.
    AlreadyExpired {
        /// Store time.
        at_ms: u64,
    },
    /// No such hold for this customer (never placed, or its record's retention ended).
    Unknown {
        /// Store time.
        at_ms: u64,
    },
}

impl ResolveOutcome {
    /// The store time of the call.
    pub fn at_ms(&self) -> u64 {
        match self {
            Self::Posted { at_ms, .. }
            | Self::PostedLate { at_ms, .. }
            | Self::Voided { at_ms, .. }
            | Self::Expired { at_ms, .. }
            | Self::NotDue { at_ms, .. }
            | Self::AlreadyPosted { at_ms, .. }
            | Self::AlreadyVoided { at_ms }
            | Self::AlreadyExpired { at_ms }
            | Self::Unknown { at_ms } => *at_ms,
        }
    }
}

/// The outcome of expire_grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantExpiryOutcome {
    /// The unused rest expired (breakage).
    Expired {
        /// Store time.
        at_ms: u64,
        /// Credits expired.
        amount: u64,
    },
    /// The grant has no expiry or it is in the future; nothing changed.
    NotDue {
        /// Store time.
        at_ms: u64,
        /// The grant's expiry (0 for never).
        expires_at_ms: u64,
    },
    /// Expired before; nothing changed.
    AlreadyExpired {
        /// Store time.
        at_ms: u64,
    },
    /// No live grant with this id (exhausted, expired and gone, or never granted).
    Unknown {
        /// Store time.
        at_ms: u64,
    },
}

/// One credit type's balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeBalance {
    /// The credit type.
    pub credit_type: String,
    /// Spendable now: usable grants less debt and the overdraft part of pending holds.
    pub available: i64,
    /// Credits in pending holds.
    pub held: i64,
    /// Credits owed from overdraft, repaid by the next grant.
    pub debt: i64,
    /// The kept-in-step figure; differs from `available` only by grants past their expiry
    /// that the sweeper has not expired yet.
    pub book_available: i64,
}

/// One live grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantState {
    /// The grant.
    pub grant_id: String,
    /// Its credit type.
    pub credit_type: String,
    /// Credits left to draw.
    pub remaining: u64,
    /// Credits of it in pending holds.
    pub held: u64,
    /// Burn priority (lower first).
    pub priority: u32,
    /// Expiry, if any.
    pub expires_at_ms: Option<u64>,
    /// Money paid for it, currency micro-units.
    pub cost_basis: u64,
    /// When it was applied.
    pub created_ms: u64,
    /// True once expire_grant ran while holds still had credits of it.
    pub expired: bool,
}

/// A customer's credits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// Store time of the read.
    pub at_ms: u64,
    /// Per credit type, sorted by name.
    pub types: Vec<TypeBalance>,
    /// Live grants, sorted by id.
    pub grants: Vec<GrantState>,
}

impl Balance {
    /// The balance of one credit type, if the customer has any.
    pub fn of(&self, credit_type: &str) -> Option<&TypeBalance> {
        self.types.iter().find(|t| t.credit_type == credit_type)
    }
}

/// A hold as stored, for the sweeper, the trail of a request and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    /// Its state.
    pub state: HoldState,
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Amount held.
    pub amount: u64,
    /// When the sweeper may expire it.
    pub deadline_ms: u64,
    /// When it was placed.
    pub created_ms: u64,
    /// What each grant gave.
    pub draws: Vec<Draw>,
    /// The part from overdraft.
    pub overdraft: u64,
    /// Placed past the overdraft limit by `force`.
    pub over_limit: bool,
    /// The request id.
    pub request_id: String,
    /// The route.
    pub route: String,
    /// The feature.
    pub feature: String,
    /// The pricing config version that priced the request (may be empty).
    pub pricing_version: String,
    /// Burned, once posted.
    pub posted: u64,
    /// When it was resolved, once resolved.
    pub resolved_ms: Option<u64>,
}

/// Formats draws as `grant:amount,grant:amount`, the wire form in events and hold records.
pub fn format_draws(draws: &[Draw]) -> String {
    let mut s = String::new();
    for (i, d) in draws.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&d.grant_id);
        s.push(':');
        s.push_str(&d.amount.to_string());
    }
    s
}

/// Parses the wire form of draws.
pub fn parse_draws(s: &str) -> Result<Vec<Draw>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let (id, amount) = part
                .split_once(':')
                .ok_or_else(|| format!("bad draw {part:?}"))?;
            let amount = amount
                .parse()
                .map_err(|_| format!("bad draw amount in {part:?}"))?;
            Ok(Draw {
                grant_id: id.to_string(),
                amount,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_round_trip() {
        let d = vec![
            Draw {
                grant_id: "g1".into(),
                amount: 5,
            },
            Draw {
                grant_id: "g-2".into(),
                amount: MAX_AMOUNT,
            },
        ];
        assert_eq!(format_draws(&d), "g1:5,g-2:9007199254740991");
        assert_eq!(parse_draws(&format_draws(&d)).unwrap(), d);
        assert_eq!(parse_draws("").unwrap(), vec![]);
        assert!(parse_draws("g1").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let r = SettleRequest {
            customer: "c".into(),
            hold_id: "h".into(),
            actual: MAX_AMOUNT + 1,
            overdraft_limit: 0,
        };
        let e = r.validate().unwrap_err();
        assert_eq!(e.field, "actual");
        assert_eq!(
            e.to_string(),
            "invalid actual: must be in [0, 9007199254740991], got 9007199254740992"
        );
    }
}

/// A customer's state rebuilt from the ledger, for the `restore` script.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreState {
    /// The customer.
    pub customer: String,
    /// Live grants with what remains of each (nothing held: restore refuses while holds
    /// are pending).
    pub grants: Vec<RestoredGrant>,
    /// Overdraft debt per credit type.
    pub debts: Vec<(String, u64)>,
    /// Every grant ever applied (id, credit type, amount), so a redelivered grant stays a
    /// duplicate.
    pub applied: Vec<(String, String, u64)>,
    /// The stream id (`<ms>-<seq>`) of the customer's newest event the ledger recorded
    /// from the customer's shard; `None` when it recorded none. The fence: restore refuses
    /// while Redis has a newer event of the customer.
    pub ledger_position: Option<String>,
    /// Holds the ledger has resolved (hold id, `posted`/`voided`/`expired`, amount posted)
    /// that Redis may still have pending because it came back from before their
    /// resolution: restore closes them as the ledger has them, without an event, so they
    /// are never resolved a second time.
    pub resolved_holds: Vec<(String, String, u64)>,
}

/// One live grant in a [`RestoreState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredGrant {
    /// The grant.
    pub grant_id: String,
    /// Its credit type.
    pub credit_type: String,
    /// Credits left.
    pub remaining: u64,
    /// Burn priority.
    pub priority: u32,
    /// Expiry, if any.
    pub expires_at_ms: Option<u64>,
    /// Money paid for it, currency micro-units.
    pub cost_basis: u64,
    /// When it was first applied.
    pub created_ms: u64,
}

/// The outcome of a restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The state was replaced.
    Restored {
        /// Store time.
        at_ms: u64,
        /// Grants written.
        grants: u64,
    },
    /// The customer has pending holds; nothing changed.
    Busy {
        /// Store time.
        at_ms: u64,
        /// Pending holds found.
        pending_holds: u64,
    },
    /// Redis has an event of the customer newer than the ledger's position (the writer
    /// has not recorded it yet); nothing changed. Retry once the writer caught up.
    Behind {
        /// Store time.
        at_ms: u64,
        /// Stream id of the customer's newest event in Redis.
        redis_position: String,
    },
}
