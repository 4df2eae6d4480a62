//! Decodes the scripts' replies, hold hashes and stream entries into typed outcomes, and
//! checks every decoded outcome's money invariants ([`crate::invariants`]).
//!
//! Pure: no I/O, so tests feed it crafted replies. It must never repair a value: a reply it
//! cannot read is a [`StoreError::Protocol`], one that breaks an invariant a
//! [`StoreError::Invariant`].

use std::collections::HashMap;

use redis::{FromRedisValue, Value};

use crate::event::Event;
use crate::invariants::{
    InvariantViolation, check_balance, check_event, check_expire_hold, check_grant,
    check_grant_expiry, check_hold_record, check_reserve, check_settle, check_void,
};
use crate::store::StoreError;
use crate::types::{
    Balance, Draw, GrantExpiryOutcome, GrantOutcome, GrantRef, GrantRequest, GrantState,
    HoldRecord, HoldRef, HoldState, PlacedHold, ReserveOutcome, ReserveRequest, ResolveOutcome,
    RestoreOutcome, SettleRequest, TypeBalance, parse_draws,
};

/// Reads a script's array reply by position, with errors naming the position.
pub(crate) struct Reply {
    op: &'static str,
    items: Vec<Value>,
}

impl Reply {
    pub(crate) fn new(op: &'static str, v: Value) -> Result<Self, StoreError> {
        match v {
            Value::Array(items) => Ok(Self { op, items }),
            other => Err(StoreError::Protocol {
                op,
                message: format!("expected an array reply, got {other:?}"),
            }),
        }
    }

    fn bad(&self, i: usize, what: &str) -> StoreError {
        StoreError::Protocol {
            op: self.op,
            message: format!(
                "reply item {i}: expected {what}, got {:?}",
                self.items.get(i)
            ),
        }
    }

    fn str(&self, i: usize) -> Result<String, StoreError> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => {
                String::from_utf8(b.clone()).map_err(|_| self.bad(i, "utf-8 text"))
            }
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err(self.bad(i, "a string")),
        }
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    fn uint(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?).map_err(|_| self.bad(i, "a non-negative integer"))
    }

    fn draws(&self, i: usize) -> Result<Vec<Draw>, StoreError> {
        parse_draws(&self.str(i)?).map_err(|_| self.bad(i, "draws"))
    }

    /// The reply's status word (item 0) and store time (item 1).
    fn head(&self) -> Result<(String, u64), StoreError> {
        Ok((self.str(0)?, self.uint(1)?))
    }
}

/// Turns a broken invariant into the error of `op`.
fn checked<T>(
    op: &'static str,
    outcome: T,
    check: impl FnOnce(&T) -> Result<(), InvariantViolation>,
) -> Result<T, StoreError> {
    check(&outcome).map_err(|violation| StoreError::invariant(op, violation))?;
    Ok(outcome)
}

/// The reply of `grant`.
pub(crate) fn decode_grant(req: &GrantRequest, v: Value) -> Result<GrantOutcome, StoreError> {
    let r = Reply::new("grant", v)?;
    let (status, at_ms) = r.head()?;
    let outcome = match status.as_str() {
        "granted" => GrantOutcome::Granted {
            at_ms,
            debt_repaid: r.uint(2)?,
        },
        "duplicate" => GrantOutcome::Duplicate { at_ms },
        "conflict" => GrantOutcome::Conflict {
            at_ms,
            first_credit_type: r.str(2)?,
            first_amount: r.uint(3)?,
        },
        "already_expired" => GrantOutcome::AlreadyExpired { at_ms },
        _ => return Err(r.bad(0, "a grant status")),
    };
    checked("grant", outcome, |o| check_grant(req, o))
}

/// What a hold took, from four consecutive reply items starting at `i`: deadline, draws,
/// overdraft, over_limit.
fn placed_hold(r: &Reply, i: usize) -> Result<PlacedHold, StoreError> {
    Ok(PlacedHold {
        deadline_ms: r.uint(i)?,
        draws: r.draws(i + 1)?,
        overdraft: r.uint(i + 2)?,
        over_limit: r.int(i + 3)? == 1,
    })
}

/// The reply of `reserve`.
pub(crate) fn decode_reserve(req: &ReserveRequest, v: Value) -> Result<ReserveOutcome, StoreError> {
    let r = Reply::new("reserve", v)?;
    let (status, at_ms) = r.head()?;
    let outcome = match status.as_str() {
        "placed" => ReserveOutcome::Placed {
            at_ms,
            hold: placed_hold(&r, 2)?,
            available_after: r.int(6)?,
        },
        "replay" => ReserveOutcome::Replay {
            at_ms,
            state: r.str(2)?.parse().map_err(|_| r.bad(2, "a hold state"))?,
            hold: placed_hold(&r, 3)?,
        },
        "conflict" => ReserveOutcome::Conflict {
            at_ms,
            first_credit_type: r.str(2)?,
            first_amount: r.uint(3)?,
        },
        "insufficient" => ReserveOutcome::Insufficient {
            at_ms,
            available: r.int(2)?,
        },
        _ => return Err(r.bad(0, "a reserve status")),
    };
    checked("reserve", outcome, |o| check_reserve(req, o))
}

/// The reply of settle, void or expire_hold, before the operation's own checks.
fn decode_resolve(op: &'static str, v: Value) -> Result<ResolveOutcome, StoreError> {
    let r = Reply::new(op, v)?;
    let (status, at_ms) = r.head()?;
    Ok(match status.as_str() {
        "posted" => ResolveOutcome::Posted {
            at_ms,
            posted: r.uint(2)?,
            shortfall: r.uint(3)?,
            returned: r.uint(4)?,
            available_after: r.int(5)?,
        },
        "voided" => ResolveOutcome::Voided {
            at_ms,
            returned: r.uint(2)?,
        },
        "expired" => ResolveOutcome::Expired {
            at_ms,
            returned: r.uint(2)?,
        },
        "not_due" => ResolveOutcome::NotDue {
            at_ms,
            deadline_ms: r.uint(2)?,
        },
        "already_posted" => ResolveOutcome::AlreadyPosted {
            at_ms,
            posted: r.uint(2)?,
        },
        "already_voided" => ResolveOutcome::AlreadyVoided { at_ms },
        "already_expired" => ResolveOutcome::AlreadyExpired { at_ms },
        "unknown" => ResolveOutcome::Unknown { at_ms },
        _ => return Err(r.bad(0, "a resolve status")),
    })
}

/// The reply of `settle`.
pub(crate) fn decode_settle(req: &SettleRequest, v: Value) -> Result<ResolveOutcome, StoreError> {
    checked("settle", decode_resolve("settle", v)?, |o| {
        check_settle(req, o)
    })
}

/// The reply of `void`.
pub(crate) fn decode_void(hold: &HoldRef, v: Value) -> Result<ResolveOutcome, StoreError> {
    checked("void", decode_resolve("void", v)?, |o| check_void(hold, o))
}

/// The reply of `expire_hold`.
pub(crate) fn decode_expire_hold(hold: &HoldRef, v: Value) -> Result<ResolveOutcome, StoreError> {
    checked("expire_hold", decode_resolve("expire_hold", v)?, |o| {
        check_expire_hold(hold, o)
    })
}

/// The reply of `expire_grant`.
pub(crate) fn decode_grant_expiry(
    grant: &GrantRef,
    v: Value,
) -> Result<GrantExpiryOutcome, StoreError> {
    let r = Reply::new("expire_grant", v)?;
    let (status, at_ms) = r.head()?;
    let outcome = match status.as_str() {
        "expired" => GrantExpiryOutcome::Expired {
            at_ms,
            amount: r.uint(2)?,
        },
        "not_due" => GrantExpiryOutcome::NotDue {
            at_ms,
            expires_at_ms: r.uint(2)?,
        },
        "already_expired" => GrantExpiryOutcome::AlreadyExpired { at_ms },
        "unknown" => GrantExpiryOutcome::Unknown { at_ms },
        _ => return Err(r.bad(0, "a grant expiry status")),
    };
    checked("expire_grant", outcome, |o| check_grant_expiry(grant, o))
}

/// One grant of a balance reply, from nine items starting at `i`.
fn grant_state(r: &Reply, i: usize) -> Result<GrantState, StoreError> {
    let expires = r.uint(i + 5)?;
    Ok(GrantState {
        grant_id: r.str(i)?,
        credit_type: r.str(i + 1)?,
        remaining: r.uint(i + 2)?,
        held: r.uint(i + 3)?,
        priority: u32::try_from(r.uint(i + 4)?).map_err(|_| r.bad(i + 4, "a priority"))?,
        expires_at_ms: (expires != 0).then_some(expires),
        cost_basis: r.uint(i + 6)?,
        created_ms: r.uint(i + 7)?,
        expired: r.int(i + 8)? == 1,
    })
}

/// The reply of `balance`.
pub(crate) fn decode_balance(customer: &str, v: Value) -> Result<Balance, StoreError> {
    let r = Reply::new("balance", v)?;
    let at_ms = r.uint(0)?;
    let n_types = r.uint(1)? as usize;
    let mut i = 2;
    let mut types = Vec::with_capacity(n_types.min(r.items.len()));
    for _ in 0..n_types {
        types.push(TypeBalance {
            credit_type: r.str(i)?,
            available: r.int(i + 1)?,
            held: r.int(i + 2)?,
            debt: r.int(i + 3)?,
            book_available: r.int(i + 4)?,
        });
        i += 5;
    }
    let n_grants = r.uint(i)? as usize;
    i += 1;
    let mut grants = Vec::with_capacity(n_grants.min(r.items.len()));
    for _ in 0..n_grants {
        grants.push(grant_state(&r, i)?);
        i += 9;
    }
    let balance = Balance {
        at_ms,
        types,
        grants,
    };
    checked("balance", balance, |b| check_balance(customer, b))
}

/// The reply of `restore`.
pub(crate) fn decode_restore(v: Value) -> Result<RestoreOutcome, StoreError> {
    let r = Reply::new("restore", v)?;
    let (status, at_ms) = r.head()?;
    Ok(match status.as_str() {
        "restored" => RestoreOutcome::Restored {
            at_ms,
            grants: r.uint(2)?,
        },
        "busy" => RestoreOutcome::Busy {
            at_ms,
            pending_holds: r.uint(2)?,
        },
        _ => return Err(r.bad(0, "a restore status")),
    })
}

/// A hold's hash (`HGETALL` of `key`); `None` when absent or another customer's.
pub(crate) fn decode_hold(
    hold: &HoldRef,
    key: &str,
    h: &HashMap<String, String>,
) -> Result<Option<HoldRecord>, StoreError> {
    let op = "hold";
    if h.is_empty() || h.get("customer") != Some(&hold.customer) {
        return Ok(None);
    }
    let field = |name: &str| -> Result<&String, StoreError> {
        h.get(name).ok_or_else(|| StoreError::Protocol {
            op,
            message: format!("hold {key} lacks field {name:?}"),
        })
    };
    let num = |name: &str| -> Result<u64, StoreError> {
        field(name)?.parse().map_err(|_| StoreError::Protocol {
            op,
            message: format!("hold {key} field {name:?} is not an integer"),
        })
    };
    let optional = |name: &str| h.contains_key(name).then(|| num(name)).transpose();
    let state: HoldState = field("state")?
        .parse()
        .map_err(|message| StoreError::Protocol { op, message })?;
    let record = HoldRecord {
        state,
        customer: field("customer")?.clone(),
        credit_type: field("type")?.clone(),
        amount: num("amount")?,
        deadline_ms: num("deadline")?,
        created_ms: num("created")?,
        draws: parse_draws(field("draws")?)
            .map_err(|message| StoreError::Protocol { op, message })?,
        overdraft: num("overdraft")?,
        over_limit: num("over_limit")? == 1,
        request_id: field("request_id")?.clone(),
        route: field("route")?.clone(),
        feature: field("feature")?.clone(),
        pricing_version: h.get("pricing_version").cloned().unwrap_or_default(),
        posted: optional("posted")?.unwrap_or(0),
        resolved_ms: optional("resolved")?,
    };
    checked(op, record, |r| check_hold_record(hold, r)).map(Some)
}

/// Why a stream entry is not a usable event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EntryError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Unreadable(String),
    /// The event's amounts break a money invariant.
    #[error("money invariant broken: {0}")]
    Invariant(InvariantViolation),
}

/// Parses one stream entry into an event and checks its invariants.
pub(crate) fn decode_entry(entry: redis::streams::StreamId) -> Result<Event, EntryError> {
    let fields: Vec<(String, String)> = entry
        .map
        .into_iter()
        .map(|(k, v)| Ok((k, String::from_redis_value(v)?)))
        .collect::<Result<_, redis::ParsingError>>()
        .map_err(|e| EntryError::Unreadable(e.to_string()))?;
    let event = Event::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| EntryError::Unreadable(e.to_string()))?;
    check_event(&event).map_err(EntryError::Invariant)?;
    Ok(event)
}

/// Parses one stream entry into an event; the error names what is wrong.
pub(crate) fn parse_entry(entry: redis::streams::StreamId) -> Result<Event, String> {
    decode_entry(entry).map_err(|e| e.to_string())
}
