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
    InvariantViolation, check_balance, check_event, check_expire_hold, check_extend, check_grant,
    check_grant_expiry, check_hold_record, check_reserve, check_settle, check_void,
};
use crate::store::StoreError;
use crate::types::{
    Balance, Draw, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome, GrantRef,
    GrantRequest, GrantState, HoldRecord, HoldRef, HoldState, PlacedHold, ReserveOutcome,
    ReserveRequest, ResolveOutcome, RestoreOutcome, SettleRequest, TypeBalance, parse_draws,
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
        "posted_late" => ResolveOutcome::PostedLate {
            at_ms,
            posted: r.uint(2)?,
            shortfall: r.uint(3)?,
            available_after: r.int(4)?,
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

/// The reply of `extend`: `extended` with the new deadline, or the outcome a resolution
/// gives for a hold that is not pending.
pub(crate) fn decode_extend(req: &ExtendRequest, v: Value) -> Result<ExtendOutcome, StoreError> {
    let r = Reply::new("extend", v)?;
    let (status, at_ms) = r.head()?;
    let outcome = match status.as_str() {
        "extended" => ExtendOutcome::Extended {
            at_ms,
            deadline_ms: r.uint(2)?,
        },
        "already_posted" | "already_voided" | "already_expired" | "unknown" => {
            ExtendOutcome::NotPending(decode_resolve("extend", Value::Array(r.items))?)
        }
        _ => return Err(r.bad(0, "an extend status")),
    };
    checked("extend", outcome, |o| check_extend(req, o))
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
        "behind" => RestoreOutcome::Behind {
            at_ms,
            redis_position: r.str(2)?,
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

#[cfg(test)]
mod tests {
    //! Crafted replies that break one invariant each: decoding must fail loudly, naming the
    //! field and the values, and never hand out the numbers.

    use super::*;
    use crate::MAX_AMOUNT;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn max() -> i64 {
        MAX_AMOUNT as i64
    }

    fn reserve_req(force: bool) -> ReserveRequest {
        ReserveRequest {
            customer: "acme".into(),
            hold_id: "h1".into(),
            credit_type: "api".into(),
            amount: 10,
            ttl_ms: 1_000,
            overdraft_limit: 5,
            force,
            request_id: "r1".into(),
            route: "chat".into(),
            feature: "chat".into(),
            retain_ms: 1_000,
            pricing_version: String::new(),
            occurred_at_ms: None,
        }
    }

    fn settle_req(actual: u64) -> SettleRequest {
        SettleRequest {
            customer: "acme".into(),
            hold_id: "h1".into(),
            actual,
            overdraft_limit: 5,
        }
    }

    fn hold_ref() -> HoldRef {
        HoldRef {
            customer: "acme".into(),
            hold_id: "h1".into(),
        }
    }

    /// A `placed` reply at time 100 (deadline 1100).
    fn placed(draws: &str, overdraft: i64, over_limit: i64, available_after: i64) -> Value {
        Value::Array(vec![
            bulk("placed"),
            int(100),
            int(1_100),
            bulk(draws),
            int(overdraft),
            int(over_limit),
            int(available_after),
        ])
    }

    fn posted(posted: i64, shortfall: i64, returned: i64, available_after: i64) -> Value {
        Value::Array(vec![
            bulk("posted"),
            int(100),
            int(posted),
            int(shortfall),
            int(returned),
            int(available_after),
        ])
    }

    /// The broken invariant of an error, with the error's text.
    #[track_caller]
    fn broken<T: std::fmt::Debug>(result: Result<T, StoreError>) -> (InvariantViolation, String) {
        match result {
            Err(e @ StoreError::Invariant { .. }) => {
                let text = e.to_string();
                assert!(!e.is_retryable(), "{text}");
                let StoreError::Invariant { violation, .. } = e else {
                    unreachable!()
                };
                (violation, text)
            }
            other => panic!("expected a broken invariant, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_broken<T: std::fmt::Debug>(result: Result<T, StoreError>, field: &str, has: &[&str]) {
        let (violation, text) = broken(result);
        assert_eq!(violation.field, field, "{text}");
        for part in has {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
    }

    #[test]
    fn consistent_replies_decode() {
        let normal = decode_reserve(&reserve_req(false), placed("g1:6", 4, 0, -4)).unwrap();
        assert!(
            matches!(normal, ReserveOutcome::Placed { .. }),
            "{normal:?}"
        );
        let forced = decode_reserve(&reserve_req(true), placed("", 10, 1, -10)).unwrap();
        assert!(
            matches!(forced, ReserveOutcome::Placed { .. }),
            "{forced:?}"
        );
        let settled = decode_settle(&settle_req(12), posted(7, 5, 0, -5)).unwrap();
        assert!(
            matches!(settled, ResolveOutcome::Posted { .. }),
            "{settled:?}"
        );
    }

    #[test]
    fn a_hold_must_take_exactly_its_amount() {
        let (violation, text) =
            broken(decode_reserve(&reserve_req(false), placed("g1:4", 5, 0, 0)));
        assert_eq!(violation.field, "draws");
        assert_eq!(violation.subject, "hold acme/h1");
        assert_eq!(
            text,
            "money invariant broken during reserve: hold acme/h1: draws: \
             draws 4 + overdraft 5 != amount 10"
        );
    }

    #[test]
    fn a_placed_hold_stays_within_the_overdraft_limit_unless_forced() {
        assert_broken(
            decode_reserve(&reserve_req(false), placed("g1:10", 0, 0, -7)),
            "available_after",
            &["-7", "overdraft_limit 5", "over_limit false"],
        );
        assert_broken(
            decode_reserve(&reserve_req(false), placed("", 10, 1, -10)),
            "over_limit",
            &["without force"],
        );
    }

    #[test]
    fn amounts_beyond_max_amount_are_refused() {
        let draws = format!("g1:{}", MAX_AMOUNT + 1);
        assert_broken(
            decode_reserve(&reserve_req(false), placed(&draws, 0, 0, 0)),
            "draws",
            &["9007199254740992 exceeds MAX_AMOUNT 9007199254740991"],
        );
        assert_broken(
            decode_settle(&settle_req(10), posted(10, 0, max() + 1, 0)),
            "returned",
            &["9007199254740992"],
        );
        assert_broken(
            decode_settle(&settle_req(10), posted(10, 0, max(), 0)),
            "returned",
            &["posted 10 + returned 9007199254740991"],
        );
    }

    #[test]
    fn insufficient_means_the_amount_was_not_covered() {
        let reply = |available| Value::Array(vec![bulk("insufficient"), int(100), int(available)]);
        assert_broken(
            decode_reserve(&reserve_req(false), reply(6)),
            "available",
            &["6 + overdraft_limit 5 covers amount 10"],
        );
        assert_broken(
            decode_reserve(&reserve_req(true), reply(0)),
            "available",
            &["force was set"],
        );
    }

    #[test]
    fn a_settle_posts_what_was_asked_less_the_shortfall() {
        assert_broken(
            decode_settle(&settle_req(10), posted(8, 1, 0, 0)),
            "posted",
            &["posted 8 + shortfall 1 != actual 10"],
        );
        assert_broken(
            decode_settle(&settle_req(10), posted(8, 2, 3, -5)),
            "returned",
            &["3 returned although shortfall is 2"],
        );
        assert_broken(
            decode_settle(&settle_req(10), posted(8, 2, 0, 0)),
            "available_after",
            &["0 above -overdraft_limit 5"],
        );
    }

    #[test]
    fn an_operation_answers_only_its_own_outcomes() {
        let voided = || Value::Array(vec![bulk("voided"), int(100), int(3)]);
        assert_broken(
            decode_settle(&settle_req(10), voided()),
            "status",
            &["settle cannot answer Voided"],
        );
        assert_broken(
            decode_expire_hold(&hold_ref(), voided()),
            "status",
            &["expire_hold"],
        );
        let not_due = Value::Array(vec![bulk("not_due"), int(100), int(100)]);
        assert_broken(
            decode_expire_hold(&hold_ref(), not_due),
            "deadline_ms",
            &["deadline 100 <= now 100"],
        );
        assert!(decode_void(&hold_ref(), voided()).is_ok());
    }

    #[test]
    fn grant_outcomes_are_checked() {
        let req = GrantRequest {
            customer: "acme".into(),
            grant_id: "g1".into(),
            credit_type: "api".into(),
            amount: 10,
            priority: 0,
            expires_at_ms: None,
            cost_basis: 0,
            source: crate::types::GrantSource::Promotion,
            actor: "ops".into(),
            reason: "test".into(),
        };
        let granted = Value::Array(vec![bulk("granted"), int(100), int(11)]);
        assert_broken(
            decode_grant(&req, granted),
            "debt_repaid",
            &["grant acme/g1", "11 > granted amount 10"],
        );
        let expired = Value::Array(vec![bulk("already_expired"), int(100)]);
        assert_broken(decode_grant(&req, expired), "expires_at_ms", &["None"]);
        let grant = GrantRef {
            customer: "acme".into(),
            grant_id: "g1".into(),
        };
        let not_due = Value::Array(vec![bulk("not_due"), int(100), int(50)]);
        assert_broken(
            decode_grant_expiry(&grant, not_due),
            "expires_at_ms",
            &["expiry 50 <= now 100"],
        );
    }

    /// A balance reply of one type (`api`) and one grant (`g1`, of `api`).
    fn balance(available: i64, held: i64, debt: i64, book: i64, grant_held: i64) -> Value {
        Value::Array(vec![
            int(100),
            int(1),
            bulk("api"),
            int(available),
            int(held),
            int(debt),
            int(book),
            int(1),
            bulk("g1"),
            bulk("api"),
            int(5),
            int(grant_held),
            int(0),
            int(0),
            int(0),
            int(1),
            int(0),
        ])
    }

    #[test]
    fn a_balance_never_holds_or_owes_a_negative_amount() {
        assert!(decode_balance("acme", balance(5, 3, 0, 5, 3)).is_ok());
        assert_broken(
            decode_balance("acme", balance(5, -1, 0, 5, 0)),
            "held",
            &["customer acme", "-1 is negative"],
        );
        assert_broken(
            decode_balance("acme", balance(5, 0, -2, 5, 0)),
            "debt",
            &["-2 is negative"],
        );
        assert_broken(
            decode_balance("acme", balance(5, 2, 0, 5, 3)),
            "held",
            &["2 of api is less than the 3 its grants hold"],
        );
        assert_broken(
            decode_balance("acme", balance(6, 0, 0, 5, 0)),
            "available",
            &["6 of api above book_available 5"],
        );
        assert_broken(
            decode_balance("acme", balance(-max() - 1, 0, 0, 5, 0)),
            "available",
            &["beyond ±MAX_AMOUNT"],
        );
    }

    fn hold_hash(state: &str, draws: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut h: HashMap<String, String> = [
            ("state", state),
            ("customer", "acme"),
            ("type", "api"),
            ("amount", "10"),
            ("deadline", "1100"),
            ("created", "100"),
            ("draws", draws),
            ("overdraft", "0"),
            ("over_limit", "0"),
            ("request_id", "r1"),
            ("route", "chat"),
            ("feature", "chat"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            h.insert(k.to_string(), v.to_string());
        }
        h
    }

    #[test]
    fn a_stored_hold_is_checked() {
        let key = "cg:{s0}:hold:h1";
        assert!(decode_hold(&hold_ref(), key, &hold_hash("pending", "g1:10", &[])).is_ok());
        assert_broken(
            decode_hold(&hold_ref(), key, &hold_hash("pending", "g1:9", &[])),
            "draws",
            &["draws 9 + overdraft 0 != amount 10"],
        );
        let voided = [("posted", "4"), ("resolved", "200")];
        assert_broken(
            decode_hold(&hold_ref(), key, &hold_hash("voided", "g1:10", &voided)),
            "posted",
            &["4 posted by a voided hold"],
        );
        assert_broken(
            decode_hold(
                &hold_ref(),
                key,
                &hold_hash("posted", "g1:10", &[("posted", "4")]),
            ),
            "resolved_ms",
            &["None on a posted hold"],
        );
    }

    fn entry(fields: &[(&str, &str)]) -> redis::streams::StreamId {
        redis::streams::StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), bulk(v)))
                .collect(),
            ..Default::default()
        }
    }

    fn hold_event(kind: &str, body: &[(&str, &str)]) -> redis::streams::StreamId {
        let event_id = format!("hold:h1:{}", kind.trim_start_matches("hold_"));
        let mut fields = vec![
            ("v", "1"),
            ("event_id", event_id.as_str()),
            ("kind", kind),
            ("at", "100"),
            ("customer", "acme"),
            ("credit_type", "api"),
            ("hold_id", "h1"),
            ("request_id", "r1"),
            ("route", "chat"),
            ("feature", "chat"),
        ];
        fields.extend_from_slice(body);
        entry(&fields)
    }

    #[test]
    fn a_posted_event_returns_what_it_did_not_post() {
        let body = |returned| {
            [
                ("held", "10"),
                ("requested", "6"),
                ("posted", "6"),
                ("burns", "g1:6"),
                ("overdraft", "0"),
                ("returned", returned),
                ("returned_overdraft", "0"),
                ("breakage", ""),
                ("shortfall", "0"),
            ]
        };
        assert!(decode_entry(hold_event("hold_posted", &body("g1:4"))).is_ok());
        let err = parse_entry(hold_event("hold_posted", &body("g1:3"))).unwrap_err();
        assert_eq!(
            err,
            "money invariant broken: event hold:h1:posted: returned: returned + \
             returned_overdraft + breakage = 3, but held 10 - posted part 6 = 4"
        );
        let mut short = body("g1:4");
        short[2] = ("posted", "5");
        let err = parse_entry(hold_event("hold_posted", &short)).unwrap_err();
        assert!(
            err.contains("posted: posted 5 + shortfall 0 != requested 6"),
            "{err}"
        );
    }

    #[test]
    fn a_voided_event_returns_everything_held() {
        let body = [
            ("held", "10"),
            ("returned", "g1:7"),
            ("returned_overdraft", "1"),
            ("breakage", "g2:1"),
        ];
        let err = parse_entry(hold_event("hold_voided", &body)).unwrap_err();
        assert!(
            err.contains("returned: returned + returned_overdraft + breakage = 9 != held 10"),
            "{err}"
        );
        let placed = [
            ("amount", "10"),
            ("draws", "g1:7"),
            ("overdraft", "2"),
            ("deadline", "1100"),
            ("over_limit", "0"),
        ];
        let err = parse_entry(hold_event("hold_placed", &placed)).unwrap_err();
        assert!(err.contains("draws 7 + overdraft 2 != amount 10"), "{err}");
    }
}
