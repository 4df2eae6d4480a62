//! The reserve of a request that carries an idempotency key: the key's record binds the key
//! to one request (by fingerprint) and counts the uncharged replays of it, in the same
//! atomic step as the hold (`reserve` with a 7th key; see PROTOCOL.md).
//!
//! Types and reply decoding only: no I/O here. The Redis call is
//! [`crate::RedisStore`]'s, the model's is `crate::model`'s. It must not decide what a
//! request's fingerprint is (the gateway does) or what a replay costs (nothing: that is the
//! point of counting them).

use redis::Value;

use crate::keys::validate_id;
use crate::replies::decode_reserve;
use crate::store::StoreError;
use crate::types::{InvalidArgument, ReserveOutcome, ReserveRequest};

/// Most uncharged replays a record may allow; far above any sensible route setting, it
/// only keeps the argument bounded.
pub const MAX_REPLAYS: u32 = 1_000_000;

/// The idempotency side of a keyed reserve: which record, which request, and how many
/// uncharged replays the route allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The key's record id (an id: the gateway derives it from customer and key).
    pub record_id: String,
    /// The fingerprint of the request (an id: 1-128 of `[A-Za-z0-9_.@-]`, hex SHA-256).
    pub fingerprint: String,
    /// The record's hold id that the caller found voided, expired or gone: the reserve
    /// places its new hold in its stead. `None` on a first try.
    pub supersedes: Option<String>,
    /// Uncharged replays of a posted request allowed, 0 to [`MAX_REPLAYS`].
    pub replay_max: u32,
    /// How long after the record's hold was placed replays are allowed, in milliseconds.
    pub replay_window_ms: u64,
}

impl IdempotencyClaim {
    /// Checks the claim against the protocol's limits.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        let bad = |field: &'static str, message: String| InvalidArgument { field, message };
        validate_id("record_id", &self.record_id).map_err(|m| bad("record_id", m))?;
        validate_id("fingerprint", &self.fingerprint).map_err(|m| bad("fingerprint", m))?;
        if let Some(s) = &self.supersedes {
            validate_id("supersedes", s).map_err(|m| bad("supersedes", m))?;
        }
        if self.replay_max > MAX_REPLAYS {
            return Err(bad(
                "replay_max",
                format!("must be at most {MAX_REPLAYS}, got {}", self.replay_max),
            ));
        }
        if self.replay_window_ms > crate::types::MAX_TTL_MS {
            return Err(bad(
                "replay_window_ms",
                format!(
                    "must be at most {} ms, got {}",
                    crate::types::MAX_TTL_MS,
                    self.replay_window_ms
                ),
            ));
        }
        Ok(())
    }

    /// The script's arguments 14 to 17.
    pub(crate) fn args(&self) -> [String; 4] {
        [
            self.fingerprint.clone(),
            self.supersedes.clone().unwrap_or_default(),
            self.replay_max.to_string(),
            self.replay_window_ms.to_string(),
        ]
    }
}

/// The outcome of a keyed reserve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyedReserveOutcome {
    /// What a reserve without a key answers: placed, insufficient, a conflict, or the
    /// record's own hold still pending, voided or expired (a replay).
    Reserve(ReserveOutcome),
    /// The key was used for another request (another fingerprint); nothing changed.
    KeyReused {
        /// Store time.
        at_ms: u64,
        /// The request id of the request the key was first used for.
        first_request_id: String,
    },
    /// The record holds another hold id: ask again with it.
    Moved {
        /// Store time.
        at_ms: u64,
        /// The record's hold id.
        hold_id: String,
    },
    /// The record's hold is gone (deleted by hand or lost): the caller may place a new
    /// hold superseding it.
    Gone {
        /// Store time.
        at_ms: u64,
    },
    /// The record's hold is posted and this replay is allowed, uncharged: the `replay`th.
    Replayed {
        /// Store time.
        at_ms: u64,
        /// This replay's number, from 1.
        replay: u32,
        /// The request id of the charged request.
        first_request_id: String,
    },
    /// The record's hold is posted and no more replays are allowed (count or window).
    ReplaysExhausted {
        /// Store time.
        at_ms: u64,
        /// The request id of the charged request.
        first_request_id: String,
        /// Replays already served.
        replays: u32,
    },
}

fn text(items: &[Value], i: usize) -> Option<String> {
    match items.get(i)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn uint(items: &[Value], i: usize) -> Option<u64> {
    match items.get(i)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Decodes the reply of a keyed `reserve`: the record's own statuses here, the rest as
/// any reserve (with its money invariants checked).
pub(crate) fn decode_keyed_reserve(
    req: &ReserveRequest,
    v: Value,
) -> Result<KeyedReserveOutcome, StoreError> {
    let items = match &v {
        Value::Array(items) => items.as_slice(),
        _ => &[],
    };
    let status = text(items, 0);
    let keyed =
        match status.as_deref() {
            Some("key_reused") => uint(items, 1).zip(text(items, 2)).map(|(at_ms, id)| {
                KeyedReserveOutcome::KeyReused {
                    at_ms,
                    first_request_id: id,
                }
            }),
            Some("moved") => uint(items, 1)
                .zip(text(items, 2))
                .map(|(at_ms, hold_id)| KeyedReserveOutcome::Moved { at_ms, hold_id }),
            Some("gone") => uint(items, 1).map(|at_ms| KeyedReserveOutcome::Gone { at_ms }),
            Some("replayed") => (|| {
                Some(KeyedReserveOutcome::Replayed {
                    at_ms: uint(items, 1)?,
                    replay: u32::try_from(uint(items, 2)?).ok()?,
                    first_request_id: text(items, 3)?,
                })
            })(),
            Some("replays_exhausted") => (|| {
                Some(KeyedReserveOutcome::ReplaysExhausted {
                    at_ms: uint(items, 1)?,
                    first_request_id: text(items, 2)?,
                    replays: u32::try_from(uint(items, 3)?).ok()?,
                })
            })(),
            _ => return decode_reserve(req, v).map(KeyedReserveOutcome::Reserve),
        };
    keyed.ok_or_else(|| StoreError::Protocol {
        op: "reserve",
        message: format!("malformed keyed reserve reply {v:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn req() -> ReserveRequest {
        ReserveRequest {
            customer: "acme".into(),
            hold_id: "h1".into(),
            credit_type: "api".into(),
            amount: 1,
            ttl_ms: 1_000,
            overdraft_limit: 0,
            force: false,
            request_id: "r1".into(),
            route: String::new(),
            feature: String::new(),
            retain_ms: 1_000,
            pricing_version: String::new(),
            occurred_at_ms: None,
        }
    }

    #[test]
    fn keyed_replies_decode_and_malformed_ones_are_protocol_errors() {
        let v = Value::Array(vec![
            bulk("replayed"),
            Value::Int(5),
            Value::Int(2),
            bulk("r0"),
        ]);
        assert_eq!(
            decode_keyed_reserve(&req(), v).unwrap(),
            KeyedReserveOutcome::Replayed {
                at_ms: 5,
                replay: 2,
                first_request_id: "r0".into()
            }
        );
        let v = Value::Array(vec![bulk("key_reused"), Value::Int(5)]);
        assert!(matches!(
            decode_keyed_reserve(&req(), v),
            Err(StoreError::Protocol { .. })
        ));
        let v = Value::Array(vec![bulk("insufficient"), Value::Int(5), Value::Int(0)]);
        assert!(matches!(
            decode_keyed_reserve(&req(), v).unwrap(),
            KeyedReserveOutcome::Reserve(ReserveOutcome::Insufficient { .. })
        ));
    }

    #[test]
    fn claims_are_checked_against_the_protocol_limits() {
        let claim = IdempotencyClaim {
            record_id: "idem-ab".into(),
            fingerprint: "00ff".into(),
            supersedes: None,
            replay_max: 3,
            replay_window_ms: 600_000,
        };
        assert!(claim.validate().is_ok());
        let bad = IdempotencyClaim {
            fingerprint: "a:b".into(),
            ..claim.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "fingerprint");
        let bad = IdempotencyClaim {
            replay_max: MAX_REPLAYS + 1,
            ..claim
        };
        assert_eq!(bad.validate().unwrap_err().field, "replay_max");
    }
}
