//! Connects to Redis in the background when it was unreachable at start-up (allowed only
//! while the gateway is forced off), and stands in for the store until it is connected.
//!
//! A gateway started under the kill switch file or `--force-off` with Redis down makes no
//! store call while forced off; once Redis answers, the real store is swapped in here, so
//! removing the kill switch file resumes metering through Redis without a restart. Until
//! then every store call fails as `unavailable`, and routes follow their failure policy
//! like in any other Redis outage.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use creditgate_protocol::{
    Balance, CreditStore, DueEntry, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome,
    GrantRef, GrantRequest, HoldRecord, HoldRef, IdempotencyClaim, KeyedReserveOutcome, Keyspace,
    RedisStore, RedisTarget, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest, Shard,
    StoreError,
};
use tracing::{info, warn};

/// The Redis store once connected: empty until the background connection succeeds, then
/// set for the life of the process (the store's own connection heals later outages).
pub type RedisSlot = Arc<OnceLock<Arc<RedisStore>>>;

/// Pause between connection attempts, in milliseconds: short, so a gateway whose kill
/// switch file is removed soon after Redis returns is already connected (the one-second
/// goal for flips), yet a refused connection costs next to nothing.
pub const RECONNECT_MS: u64 = 200;

/// Longest one background connection attempt may take, in milliseconds: a Redis that
/// accepts but hangs must not stall the retries for the start-up timeout's 5 s.
pub const RECONNECT_TIMEOUT_MS: u64 = 1_000;

/// Attempts between two repeated warnings while Redis stays unreachable (about a minute
/// at [`RECONNECT_MS`]), so an outage does not flood the log.
const WARN_EVERY_ATTEMPTS: u64 = 300;

/// Retries connecting to `target` until it succeeds, then fills `slot`.
pub async fn connect_in_background(
    target: RedisTarget,
    keyspace: Keyspace,
    call_timeout_ms: u64,
    slot: RedisSlot,
) {
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let attempt = tokio::time::timeout(
            Duration::from_millis(RECONNECT_TIMEOUT_MS),
            RedisStore::connect(&target, keyspace.clone(), call_timeout_ms),
        )
        .await;
        let error = match attempt {
            Ok(Ok(redis)) => {
                info!(target = ?target, attempts, "connected to the Redis credit store in the background; store calls go to Redis from now on");
                let _ = slot.set(Arc::new(redis));
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {RECONNECT_TIMEOUT_MS} ms"),
        };
        if attempts % WARN_EVERY_ATTEMPTS == 1 {
            warn!(target = ?target, attempts, error = %error, "Redis still unreachable; retrying in the background (store calls fail as unavailable meanwhile)");
        }
        tokio::time::sleep(Duration::from_millis(RECONNECT_MS)).await;
    }
}

/// The store while Redis is not connected yet: every call fails as `unavailable`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotConnected;

/// The error of a call made before Redis is connected.
pub fn unavailable(op: &'static str) -> StoreError {
    StoreError::Unavailable {
        op,
        message: "not connected to Redis yet (it was unreachable at start-up; retrying in the background)".into(),
    }
}

#[async_trait]
impl CreditStore for NotConnected {
    async fn grant(&self, _: &GrantRequest) -> Result<GrantOutcome, StoreError> {
        Err(unavailable("grant"))
    }
    async fn reserve(&self, _: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        Err(unavailable("reserve"))
    }
    async fn reserve_keyed(
        &self,
        _: &ReserveRequest,
        _: &IdempotencyClaim,
    ) -> Result<KeyedReserveOutcome, StoreError> {
        Err(unavailable("reserve"))
    }
    async fn settle(&self, _: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
        Err(unavailable("settle"))
    }
    async fn void(&self, _: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        Err(unavailable("void"))
    }
    async fn extend(&self, _: &ExtendRequest) -> Result<ExtendOutcome, StoreError> {
        Err(unavailable("extend"))
    }
    async fn expire_hold(&self, _: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        Err(unavailable("expire_hold"))
    }
    async fn expire_grant(&self, _: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
        Err(unavailable("expire_grant"))
    }
    async fn balance(&self, _: &str) -> Result<Balance, StoreError> {
        Err(unavailable("balance"))
    }
    async fn hold(&self, _: &HoldRef) -> Result<Option<HoldRecord>, StoreError> {
        Err(unavailable("hold"))
    }
    async fn due_holds(&self, _: Shard, _: u64, _: usize) -> Result<Vec<DueEntry>, StoreError> {
        Err(unavailable("due_holds"))
    }
    async fn due_grants(&self, _: Shard, _: u64, _: usize) -> Result<Vec<DueEntry>, StoreError> {
        Err(unavailable("due_grants"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store_client::StoreClient;

    #[tokio::test]
    async fn a_client_still_connecting_fails_like_an_unreachable_redis() {
        let slot: RedisSlot = Arc::new(OnceLock::new());
        let client = StoreClient::connecting(slot.clone(), Arc::new(Metrics::new()));
        assert!(
            !client.is_embedded(),
            "follows published configs, not fixed"
        );
        assert!(client.redis_store().is_none());
        assert!(client.redis_slot().is_some());
        assert!(!client.ready(50).await);
        let error = client
            .store()
            .balance("acme")
            .await
            .expect_err("no store yet");
        // Retryable and `unavailable`: routes follow their failure policy, and the
        // breaker counts it, as for any Redis outage.
        assert!(error.is_retryable());
        assert_eq!(error.kind().as_str(), "unavailable");
        // However many calls fail before the connection, none counts for the breaker: it
        // would otherwise still be open once Redis is connected.
        for _ in 0..100 {
            let failure = client
                .call("balance", 50, client.store().balance("acme"))
                .await
                .expect_err("no store yet");
            assert_eq!(failure.kind(), "unavailable");
        }
    }
}
