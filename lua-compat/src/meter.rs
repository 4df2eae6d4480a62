//! "Meter once": the pieces that make a metered request or usage event charge at most once,
//! shared by the gateway and the sidecar so both derive the same ids the same way, and the
//! forced reserve-then-settle that posts usage which already happened.
//!
//! The id derivation is pure. [`force_reserve_then_settle`] talks to a store only through
//! the [`CreditStore`] trait, so it runs the same on Redis and on the reference model; it
//! never reads a clock and knows nothing of HTTP or the ledger.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::store::{CreditStore, StoreError};
use crate::types::{HoldState, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest};

/// Prefix of the hold ids the gateway derives from a request's `Idempotency-Key`.
pub const GATEWAY_IDEMPOTENT_PREFIX: &str = "idem";

/// Prefix of the hold ids the sidecar derives from a usage event's idempotency key.
pub const USAGE_EVENT_PREFIX: &str = "ue";

/// How many hex digits of the digest a derived hold id keeps: 160 bits, ample against
/// collisions, and short enough that `id.N` retry suffixes stay within the id length limit.
const DIGEST_HEX_DIGITS: usize = 40;

/// The hold id for `customer`'s idempotency `key`: `prefix-` followed by the first 40 hex
/// digits of sha256(customer, NUL, key). The same customer and key always give the same
/// id, so a retry or duplicate finds the first attempt's hold; the customer is part of the
/// digest, so two customers using the same key never share a hold.
pub fn idempotent_hold_id(prefix: &str, customer: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(customer.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut id = String::with_capacity(prefix.len() + 1 + DIGEST_HEX_DIGITS);
    id.push_str(prefix);
    id.push('-');
    for byte in digest.iter().take(DIGEST_HEX_DIGITS / 2) {
        // Writing to a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// What [`force_reserve_then_settle`] did with one usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterOutcome {
    /// This call posted the usage (or finished a first attempt that reserved but never
    /// settled).
    Posted {
        /// Credits burned.
        posted: u64,
        /// Requested but neither held nor available within the overdraft limit.
        shortfall: u64,
        /// Live available credits after the post (negative in overdraft).
        available_after: i64,
        /// Whether the usage took the balance into overdraft or past its limit.
        overdraft: bool,
    },
    /// An earlier call with the same hold id got there first; nothing changed.
    Duplicate {
        /// The state that earlier call left the hold in (posted or voided).
        first_state: HoldState,
    },
    /// The hold id was used for other usage of the customer (another credit type or
    /// amount); nothing changed.
    IdReused {
        /// Credit type of the existing hold.
        first_credit_type: String,
        /// Amount of the existing hold.
        first_amount: u64,
    },
}

/// Why [`force_reserve_then_settle`] could not tell whether the usage is posted. Retrying
/// with the same request is safe: it posts at most once.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store refused a forced reserve, which it never should.
    #[error("a forced reserve was refused (available {available})")]
    ForcedReserveRefused {
        /// Live available credits the store reported.
        available: i64,
    },
    /// The settle answered something other than posted (the hold was voided or expired
    /// between the two calls).
    #[error("settle answered {0:?}")]
    UnexpectedSettle(ResolveOutcome),
}

/// Posts usage that already happened exactly once: a reserve forced past the balance (an
/// empty balance goes into overdraft rather than dropping the usage), then a settle of the
/// same amount.
///
/// `reserve.force` is set whatever the caller passed. The hold id makes it idempotent: a
/// replay of a posted or voided hold changes nothing and answers
/// [`MeterOutcome::Duplicate`]; a first attempt that reserved but never settled (the caller
/// stopped between the two calls, or its settle failed) is settled now, and one whose hold
/// expired meanwhile is burned late (`posted_late`), so a retry always posts the usage.
pub async fn force_reserve_then_settle(
    store: &dyn CreditStore,
    reserve: &ReserveRequest,
) -> Result<MeterOutcome, MeterError> {
    let forced = ReserveRequest {
        force: true,
        ..reserve.clone()
    };
    let over_limit = match store.reserve(&forced).await? {
        ReserveOutcome::Placed { hold, .. } => hold.over_limit,
        // A first attempt reserved but never settled (the caller stopped, or its settle
        // failed): finish it now. If the hold expired meanwhile, the settle burns it late,
        // so usage that happened is never dropped because a settle failed once.
        ReserveOutcome::Replay {
            state: HoldState::Pending | HoldState::Expired,
            hold,
            ..
        } => hold.over_limit,
        ReserveOutcome::Replay { state, .. } => {
            return Ok(MeterOutcome::Duplicate { first_state: state });
        }
        ReserveOutcome::Conflict {
            first_credit_type,
            first_amount,
            ..
        } => {
            return Ok(MeterOutcome::IdReused {
                first_credit_type,
                first_amount,
            });
        }
        ReserveOutcome::Insufficient { available, .. } => {
            return Err(MeterError::ForcedReserveRefused { available });
        }
    };
    let settle = SettleRequest {
        customer: forced.customer,
        hold_id: forced.hold_id,
        actual: forced.amount,
        overdraft_limit: forced.overdraft_limit,
    };
    match store.settle(&settle).await? {
        // A hold that expired between its reserve and this settle is burned late: the usage
        // happened, so it is charged like any other.
        ResolveOutcome::Posted {
            posted,
            shortfall,
            available_after,
            ..
        }
        | ResolveOutcome::PostedLate {
            posted,
            shortfall,
            available_after,
            ..
        } => Ok(MeterOutcome::Posted {
            posted,
            shortfall,
            available_after,
            overdraft: over_limit || available_after < 0,
        }),
        ResolveOutcome::AlreadyPosted { .. } => Ok(MeterOutcome::Duplicate {
            first_state: HoldState::Posted,
        }),
        other => Err(MeterError::UnexpectedSettle(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::keys::Keyspace;
    use crate::model::MemoryStore;
    use crate::types::{GrantRequest, GrantSource, HoldRef};

    fn usage(customer: &str, key: &str, amount: u64) -> ReserveRequest {
        ReserveRequest {
            customer: customer.into(),
            hold_id: idempotent_hold_id(USAGE_EVENT_PREFIX, customer, key),
            credit_type: "credits".into(),
            amount,
            ttl_ms: 60_000,
            overdraft_limit: 0,
            force: false,
            request_id: format!("usage-event:{key}"),
            route: "usage-events".into(),
            feature: "export".into(),
            retain_ms: 86_400_000,
            pricing_version: "v1".into(),
            occurred_at_ms: None,
        }
    }

    async fn store_with_credits(customer: &str, amount: u64) -> MemoryStore {
        let store = MemoryStore::new(Keyspace::default());
        let grant = GrantRequest {
            customer: customer.into(),
            grant_id: "g1".into(),
            credit_type: "credits".into(),
            amount,
            priority: 10,
            expires_at_ms: None,
            cost_basis: 0,
            source: GrantSource::Promotion,
            actor: "test".into(),
            reason: "meter test".into(),
        };
        store.grant(&grant).await.expect("grant");
        store
    }

    async fn available(store: &MemoryStore, customer: &str) -> i64 {
        let balance = store.balance(customer).await.expect("balance");
        balance.of("credits").map_or(0, |t| t.available)
    }

    #[tokio::test]
    async fn a_replay_posts_once() {
        let store = store_with_credits("acme", 100).await;
        let req = usage("acme", "job-1", 30);
        let first = force_reserve_then_settle(&store, &req)
            .await
            .expect("first");
        assert_eq!(
            first,
            MeterOutcome::Posted {
                posted: 30,
                shortfall: 0,
                available_after: 70,
                overdraft: false
            }
        );
        let replay = force_reserve_then_settle(&store, &req)
            .await
            .expect("replay");
        assert_eq!(
            replay,
            MeterOutcome::Duplicate {
                first_state: HoldState::Posted
            }
        );
        assert_eq!(available(&store, "acme").await, 70);
    }

    #[tokio::test]
    async fn an_empty_balance_goes_into_overdraft() {
        let store = MemoryStore::new(Keyspace::default());
        let outcome = force_reserve_then_settle(&store, &usage("acme", "job-1", 5))
            .await
            .expect("posted");
        let MeterOutcome::Posted { overdraft, .. } = outcome else {
            panic!("not posted: {outcome:?}");
        };
        assert!(overdraft, "{outcome:?}");
    }

    #[tokio::test]
    async fn a_first_attempt_that_only_reserved_is_settled() {
        let store = store_with_credits("acme", 100).await;
        let req = usage("acme", "job-1", 30);
        let placed = store
            .reserve(&ReserveRequest {
                force: true,
                ..req.clone()
            })
            .await
            .expect("reserve");
        assert!(
            matches!(placed, ReserveOutcome::Placed { .. }),
            "{placed:?}"
        );
        let outcome = force_reserve_then_settle(&store, &req)
            .await
            .expect("finish");
        assert!(
            matches!(outcome, MeterOutcome::Posted { posted: 30, .. }),
            "{outcome:?}"
        );
        assert_eq!(available(&store, "acme").await, 70);
    }

    #[tokio::test]
    async fn a_first_attempt_whose_hold_expired_is_burned_late_once() {
        let store = store_with_credits("acme", 100).await;
        let req = usage("acme", "job-1", 30);
        // The first attempt reserved, its settle failed, and the hold expired.
        store
            .reserve(&ReserveRequest {
                force: true,
                ttl_ms: 1,
                ..req.clone()
            })
            .await
            .expect("reserve");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let hold = HoldRef {
            customer: "acme".into(),
            hold_id: req.hold_id.clone(),
        };
        let expired = store.expire_hold(&hold).await.expect("expire");
        assert!(
            matches!(expired, ResolveOutcome::Expired { .. }),
            "{expired:?}"
        );

        let retry = force_reserve_then_settle(&store, &req)
            .await
            .expect("retry");
        assert!(
            matches!(retry, MeterOutcome::Posted { posted: 30, .. }),
            "{retry:?}"
        );
        let again = force_reserve_then_settle(&store, &req)
            .await
            .expect("again");
        assert_eq!(
            again,
            MeterOutcome::Duplicate {
                first_state: HoldState::Posted
            }
        );
        assert_eq!(available(&store, "acme").await, 70);
    }

    #[tokio::test]
    async fn a_voided_first_attempt_is_a_duplicate_and_another_amount_a_reused_id() {
        let store = store_with_credits("acme", 100).await;
        let req = usage("acme", "job-1", 30);
        store
            .reserve(&ReserveRequest {
                force: true,
                ..req.clone()
            })
            .await
            .expect("reserve");
        let hold = HoldRef {
            customer: "acme".into(),
            hold_id: req.hold_id.clone(),
        };
        store.void(&hold).await.expect("void");
        assert_eq!(
            force_reserve_then_settle(&store, &req)
                .await
                .expect("replay"),
            MeterOutcome::Duplicate {
                first_state: HoldState::Voided
            }
        );
        let other = usage("acme", "job-1", 31);
        assert_eq!(
            force_reserve_then_settle(&store, &other)
                .await
                .expect("reused"),
            MeterOutcome::IdReused {
                first_credit_type: "credits".into(),
                first_amount: 30
            }
        );
        assert_eq!(available(&store, "acme").await, 100);
    }

    #[test]
    fn gateway_ids_are_pinned() {
        // Changing these ids would charge again every retry of a request made before the
        // change: they are a stored format, not an implementation detail.
        assert_eq!(
            idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "acme", "k1"),
            "idem-a9bff821b3c257c60dac37cb1b04829394620c0e"
        );
    }

    #[test]
    fn usage_event_ids_are_pinned() {
        assert_eq!(
            idempotent_hold_id(USAGE_EVENT_PREFIX, "acme", "job-1"),
            "ue-b1ecca3fea6ebb86ca5f59f0ca40fd17fa937b48"
        );
    }

    #[test]
    fn ids_are_per_customer_and_valid_with_retry_suffixes() {
        let a = idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "acme", "k1");
        assert_ne!(
            a,
            idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "globex", "k1")
        );
        assert!(crate::keys::validate_id("hold_id", &format!("{a}.5")).is_ok());
        let b = idempotent_hold_id(USAGE_EVENT_PREFIX, "acme", "k1");
        assert!(crate::keys::validate_id("hold_id", &b).is_ok());
    }
}
