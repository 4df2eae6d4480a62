//! Direct access to the credits in a gateway's Redis through the protocol crate: grants
//! and balance reads, and polling until a balance settles.
//!
//! It reads and writes Redis as the gateway does; it must not stand in for the gateway in a
//! test of the gateway's own behaviour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, RedisStore, RedisTarget,
};

use crate::fixtures::{CREDIT_TYPE, PREFIX, SHARDS};

/// Settlement runs in the gateway's `logging` phase after the response is sent, so a test
/// polls the balance for up to this long before asserting final values.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of the test's own store calls (balances, grants) on a healthy local Redis.
const STORE_TIMEOUT_MS: u64 = 2_000;

/// Direct access to the credits in the gateway's Redis, through the protocol crate, on a
/// private runtime. Use it from plain `#[test]`s, never inside an async runtime.
pub struct Credits {
    runtime: tokio::runtime::Runtime,
    store: RedisStore,
}

/// Makes grant ids unique within the test process.
static GRANT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Credits {
    /// Connects to the Redis at `url` with the gateway's default keyspace (`cg`, 16 shards).
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("building the credits runtime")?;
        let store = runtime
            .block_on(RedisStore::connect(
                &RedisTarget::Single(url.to_string()),
                Keyspace::new(PREFIX, SHARDS),
                STORE_TIMEOUT_MS,
            ))
            .with_context(|| format!("connecting the protocol store to {url}"))?;
        Ok(Self { runtime, store })
    }

    /// Grants `amount` credits of type `api` to `customer`, under a fresh grant id.
    pub fn grant(&self, customer: &str, amount: u64) -> anyhow::Result<()> {
        let seq = GRANT_SEQ.fetch_add(1, Ordering::SeqCst);
        let request = GrantRequest {
            customer: customer.to_string(),
            grant_id: format!("e2e-{customer}-{}-{seq}", std::process::id()),
            credit_type: CREDIT_TYPE.to_string(),
            amount,
            priority: 100,
            expires_at_ms: None,
            cost_basis: 0,
            source: GrantSource::Goodwill,
            actor: "creditgate-e2e".to_string(),
            reason: "end-to-end test".to_string(),
        };
        match self.runtime.block_on(self.store.grant(&request))? {
            GrantOutcome::Granted { .. } => Ok(()),
            other => anyhow::bail!("grant to {customer} not applied: {other:?}"),
        }
    }

    /// `(available, held)` of type `api` for `customer`; `(0, 0)` if it has none.
    pub fn balance(&self, customer: &str) -> anyhow::Result<(i64, i64)> {
        let balance = self.runtime.block_on(self.store.balance(customer))?;
        Ok(balance
            .of(CREDIT_TYPE)
            .map_or((0, 0), |t| (t.available, t.held)))
    }

    /// Polls until `customer`'s `(available, held)` equals `expected`, for at most
    /// [`SETTLE_TIMEOUT`]; the error names the last balance seen.
    pub fn wait_for_balance(&self, customer: &str, expected: (i64, i64)) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self.balance(customer)?;
            if now == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{customer}: (available, held) is {now:?} after {SETTLE_TIMEOUT:?}, \
                     expected {expected:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `customer` has nothing held (every hold settled or voided), for at most
    /// [`SETTLE_TIMEOUT`], and returns `(available, held)` then.
    pub fn wait_until_settled(&self, customer: &str) -> anyhow::Result<(i64, i64)> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self.balance(customer)?;
            if now.1 == 0 || Instant::now() >= deadline {
                return Ok(now);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}
