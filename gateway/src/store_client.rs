//! The gateway's handle on the credit store: every call goes through the circuit breaker,
//! a per-route timeout and the store metrics.
//!
//! The store itself is either Redis ([`RedisStore`]) or the embedded reference model; the
//! proxy never cares which. Redis may also be still connecting (a gateway started forced
//! off while Redis was down, see [`crate::store_connect`]): calls then fail as
//! `unavailable` until the background connection fills the slot. API keys kept in Redis are looked up here too, through a small
//! cache so a known key costs no round trip.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use creditgate_protocol::{CreditStore, RedisStore, StoreError, StoreErrorKind};

use crate::breaker::{CallOutcome, CircuitBreaker};
use crate::metrics::Metrics;
use crate::store_connect::{NotConnected, RedisSlot, unavailable};
use crate::store_thread::ThreadConnections;

/// How long a key found in Redis is trusted without asking again, in milliseconds, unless
/// `run --api-key-cache-ttl-ms` says otherwise: a revoked key stops working within this
/// time (while Redis answers; see [`StoreClient::customer_for_key`]).
pub const KEY_CACHE_HIT_TTL_MS: u64 = 30_000;

/// How long an unknown key is remembered as unknown, in milliseconds: short, so a key
/// issued a moment ago works almost at once, yet a flood of bad keys costs few lookups.
pub const KEY_CACHE_MISS_TTL_MS: u64 = 5_000;

/// Most keys the cache holds; past it the cache is cleared, bounding memory under a flood
/// of random keys.
pub const KEY_CACHE_MAX: usize = 100_000;

/// Why a store call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// The circuit breaker is open; the store was not called.
    #[error("credit store circuit open")]
    CircuitOpen,
    /// The route's store timeout passed.
    #[error("credit store call timed out after {0} ms")]
    Timeout(u64),
    /// The store answered with an error or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreFailure {
    /// Whether the call may have run in the store although no usable answer came: after a
    /// timeout a mutation sent may still be applied later, and an answer that broke a money
    /// invariant came from a script that did run, so its hold may exist.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::CircuitOpen => false,
            Self::Timeout(_) => true,
            Self::Store(e) => matches!(
                e.kind(),
                StoreErrorKind::Timeout | StoreErrorKind::Invariant
            ),
        }
    }

    /// A metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::Timeout(_) => "timeout",
            Self::Store(e) => e.kind().as_str(),
        }
    }
}

/// What a store error says about the store's health. Timeouts, an unreachable store and
/// error replies (OOM, LOADING, READONLY, MASTERDOWN, BUSY …: Redis up but refusing the
/// call) are failures. An argument refused before sending, or an answer that broke a money
/// invariant (the store did answer; one customer's data is wrong), say nothing about the
/// store as a whole.
fn breaker_outcome(e: &StoreError) -> CallOutcome {
    match e.kind() {
        StoreErrorKind::Timeout | StoreErrorKind::Unavailable | StoreErrorKind::Protocol => {
            CallOutcome::Failure
        }
        StoreErrorKind::InvalidArgument | StoreErrorKind::Invariant => CallOutcome::Unknown,
    }
}

#[derive(Clone)]
struct CachedKey {
    customer: Option<String>,
    until: Instant,
}

/// The credit store with breaker, timeouts and metrics.
pub struct StoreClient {
    /// The in-process store, when running without Redis.
    embedded: Option<Arc<dyn CreditStore>>,
    /// Redis once connected (empty while connecting, and always on the embedded store).
    redis: RedisSlot,
    breaker: CircuitBreaker,
    metrics: Arc<Metrics>,
    keys: RwLock<HashMap<[u8; 32], CachedKey>>,
    key_hit_ttl_ms: u64,
    /// Each calling thread's own Redis connection (single server only).
    threads: Option<ThreadConnections>,
}

/// The store one call goes to: borrowed from the client, or this thread's own Redis
/// connection ([`crate::store_thread`]).
pub enum StoreRef<'a> {
    /// The embedded store, the shared Redis connection or the not-connected stand-in.
    Shared(&'a dyn CreditStore),
    /// This thread's own Redis connection, or the shared one until it is open.
    Thread(Arc<RedisStore>),
}

impl<'a> std::ops::Deref for StoreRef<'a> {
    type Target = dyn CreditStore + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Shared(store) => *store,
            Self::Thread(redis) => redis.as_ref(),
        }
    }
}

impl StoreClient {
    /// A client on Redis.
    pub fn redis(store: Arc<RedisStore>, metrics: Arc<Metrics>) -> Self {
        Self::connecting(Arc::new(OnceLock::from(store)), metrics)
    }

    /// A client on a Redis that is still being connected in the background: its calls
    /// fail as `unavailable` until `slot` is filled.
    pub fn connecting(slot: RedisSlot, metrics: Arc<Metrics>) -> Self {
        Self {
            embedded: None,
            redis: slot,
            breaker: CircuitBreaker::default(),
            metrics,
            keys: RwLock::new(HashMap::new()),
            key_hit_ttl_ms: KEY_CACHE_HIT_TTL_MS,
            threads: None,
        }
    }

    /// A client on an in-process store (the embedded default).
    pub fn embedded(store: Arc<dyn CreditStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            embedded: Some(store),
            redis: Arc::new(OnceLock::new()),
            breaker: CircuitBreaker::default(),
            metrics,
            keys: RwLock::new(HashMap::new()),
            key_hit_ttl_ms: KEY_CACHE_HIT_TTL_MS,
            threads: None,
        }
    }

    /// Trusts a key found in Redis for `ttl_ms` (a revocation is honoured within it);
    /// unknown keys are remembered for the smaller of `ttl_ms` and
    /// [`KEY_CACHE_MISS_TTL_MS`].
    pub fn with_key_cache_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.key_hit_ttl_ms = ttl_ms;
        self
    }

    /// Sends each thread's Redis calls over a connection of its own once it is open
    /// ([`crate::store_thread`]); `None` keeps every call on the shared connection.
    pub fn with_thread_connections(mut self, threads: Option<ThreadConnections>) -> Self {
        self.threads = threads;
        self
    }

    /// How many per-thread Redis connections have been opened so far.
    pub fn thread_connections_opened(&self) -> u64 {
        self.threads.as_ref().map_or(0, ThreadConnections::opened)
    }

    /// The store, for calls through [`StoreClient::call`]: on Redis, this thread's own
    /// connection when there is one. A stand-in that fails every call while Redis is not
    /// connected yet.
    pub fn store(&self) -> StoreRef<'_> {
        match (&self.embedded, self.redis.get(), &self.threads) {
            (Some(embedded), _, _) => StoreRef::Shared(embedded.as_ref()),
            (None, Some(redis), Some(threads)) => StoreRef::Thread(threads.pick(redis)),
            (None, Some(redis), None) => StoreRef::Shared(redis.as_ref()),
            (None, None, _) => StoreRef::Shared(&NotConnected),
        }
    }

    /// The Redis store, once connected; `None` on the embedded store.
    pub fn redis_store(&self) -> Option<Arc<RedisStore>> {
        self.redis.get().cloned()
    }

    /// Where the Redis store appears once connected; `None` on the embedded store.
    pub fn redis_slot(&self) -> Option<RedisSlot> {
        self.embedded.is_none().then(|| self.redis.clone())
    }

    /// True when running on the embedded store.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Runs one store call under the breaker and a timeout, recording latency and errors.
    pub async fn call<T>(
        &self,
        op: &'static str,
        timeout_ms: u64,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreFailure> {
        if self.embedded.is_none() && self.redis.get().is_none() {
            // Not connected yet: fails at once without touching the breaker, so the calls
            // made before the background connection succeeds do not hold the circuit open
            // after it (the breaker is for a store that is slow or failing, not absent).
            self.metrics.store_error(op, "unavailable");
            return Err(StoreFailure::Store(unavailable(op)));
        }
        // Held across the call: if this future is dropped (the client went away), the
        // permit's drop still releases a probe, so the circuit cannot stay shut.
        let Some(permit) = self.breaker.allow() else {
            self.metrics.store_error(op, "circuit_open");
            return Err(StoreFailure::CircuitOpen);
        };
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await;
        self.metrics
            .store_latency(op, started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(Ok(value)) => {
                permit.resolve(CallOutcome::Success);
                self.metrics.circuit_open(self.breaker.is_open());
                return Ok(value);
            }
            Ok(Err(e)) => {
                permit.resolve(breaker_outcome(&e));
                StoreFailure::Store(e)
            }
            Err(_) => {
                permit.resolve(CallOutcome::Failure);
                StoreFailure::Timeout(timeout_ms)
            }
        };
        self.metrics.store_error(op, failure.kind());
        self.metrics.circuit_open(self.breaker.is_open());
        Err(failure)
    }

    /// The customer of an API key kept in Redis, by the key's SHA-256. `Ok(None)` for an
    /// unknown key, and always on the embedded store (its keys are in the config). A cached
    /// answer is used while fresh; when Redis fails, a stale known key still works, so a
    /// key revoked during a Redis outage keeps working at a gateway that had it cached
    /// until Redis answers again (failing open for paying customers over failing closed).
    pub async fn customer_for_key(
        &self,
        hash: &[u8; 32],
        timeout_ms: u64,
    ) -> Result<Option<String>, StoreFailure> {
        if self.is_embedded() {
            return Ok(None);
        }
        let now = Instant::now();
        let cached = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned();
        if let Some(c) = &cached
            && c.until > now
        {
            return Ok(c.customer.clone());
        }
        let hex = hex::encode(hash);
        let answer = match self.redis.get() {
            Some(redis) => {
                self.call("api_key", timeout_ms, redis.api_key_customer(&hex))
                    .await
            }
            None => {
                self.metrics.store_error("api_key", "unavailable");
                Err(StoreFailure::Store(unavailable("api_key")))
            }
        };
        match answer {
            Ok(customer) => {
                let ttl = if customer.is_some() {
                    self.key_hit_ttl_ms
                } else {
                    KEY_CACHE_MISS_TTL_MS.min(self.key_hit_ttl_ms)
                };
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                if keys.len() >= KEY_CACHE_MAX {
                    keys.clear();
                }
                keys.insert(
                    *hash,
                    CachedKey {
                        customer: customer.clone(),
                        until: now + Duration::from_millis(ttl),
                    },
                );
                Ok(customer)
            }
            Err(failure) => match cached {
                Some(CachedKey {
                    customer: Some(customer),
                    ..
                }) => Ok(Some(customer)),
                _ => Err(failure),
            },
        }
    }

    /// Whether the store takes calls now (for `/readyz`): Redis connected, the circuit not
    /// open, and a write answered (a Redis that answers `PING` but refuses writes fails
    /// every reserve). The check goes through the breaker: while the circuit is open it is
    /// refused at once, and once the open period has passed it may be the probe itself, so
    /// a gateway that gets no traffic (taken out of rotation because it was not ready)
    /// still finds out that Redis recovered.
    pub async fn ready(&self, timeout_ms: u64) -> bool {
        if self.is_embedded() {
            return true;
        }
        match self.redis.get() {
            None => false,
            Some(redis) => self
                .call("ready", timeout_ms, redis.check_writable())
                .await
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use creditgate_protocol::{InvariantViolation, StoreError};

    use super::StoreFailure;

    #[test]
    fn a_reserve_whose_answer_broke_an_invariant_may_have_placed_its_hold() {
        let broken = StoreFailure::Store(StoreError::Invariant {
            op: "reserve",
            violation: InvariantViolation {
                subject: "hold acme/h1".into(),
                field: "draws",
                detail: "draws 4 + overdraft 5 != amount 10".into(),
            },
        });
        assert!(broken.may_have_run(), "the script ran: its hold may exist");
        assert_eq!(broken.kind(), "invariant");
        let refused = StoreFailure::Store(StoreError::Unavailable {
            op: "reserve",
            message: "connection refused".into(),
        });
        assert!(!refused.may_have_run());
        assert!(!StoreFailure::CircuitOpen.may_have_run());
    }
}
