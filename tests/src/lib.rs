//! Shared pieces of the end-to-end tests: a stack of real processes (Redis, a fake
//! upstream, the gateway binary) on loopback, the config every test starts from, a blocking
//! HTTP client that measures each request, and direct balance reads and grants through the
//! protocol crate against the same Redis.
//!
//! Nothing here reaches into the gateway's library: the tests see the binary exactly as an
//! operator runs it. Run `cargo build -p creditgate-gateway` before the tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, RedisStore, RedisTarget,
};
use creditgate_testkit::{Gateway, GatewayOptions, RedisServer, Upstream};
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

/// Redis key prefix the gateway runs with when not told otherwise.
pub const PREFIX: &str = "cg";

/// Number of shards the gateway runs with when not told otherwise.
pub const SHARDS: u32 = 16;

/// The credit type every test config defines.
pub const CREDIT_TYPE: &str = "api";

/// The `[billing] top_up_url` of the test config, expected back in 402 bodies.
pub const TOP_UP_URL: &str = "https://billing.example.test/top-up";

/// Settlement runs in the gateway's `logging` phase after the response is sent, so a test
/// polls the balance for up to this long before asserting final values.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of every test HTTP request: far above any healthy answer on loopback, so a hung
/// gateway fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of the test's own store calls (balances, grants) on a healthy local Redis.
const STORE_TIMEOUT_MS: u64 = 2_000;

/// Alice's API key (in the config's `[[api_keys]]`).
pub const ALICE_KEY: &str = "cg_test_alice_4f7d2c9e";
/// The customer Alice's key identifies.
pub const ALICE: &str = "alice";
/// Mallory's API key (in the config's `[[api_keys]]`).
pub const MALLORY_KEY: &str = "cg_test_mallory_81b3a6d0";
/// The customer Mallory's key identifies.
pub const MALLORY: &str = "mallory";

/// Hex SHA-256 of an API key, the form `[[api_keys]] sha256` and `cg:apikey:<hex>` use.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The config every test starts from, without routes: enforce mode, fail closed, a
/// 100 ms store timeout, one credit type `api` (scale 0), the features `search` (fixed
/// cost 1) and `health` (free), the upstream `default` at `upstream`, a top-up URL and the
/// keys of Alice and Mallory. Tests append their `[[routes]]` (and may append
/// `[[embedded_grants]]`).
pub fn base_config(upstream: SocketAddr) -> String {
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 100
unmatched = "not_found"

[billing]
top_up_url = "{TOP_UP_URL}"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = 1 }}

[features.health]
credit_type = "api"
cost = {{ kind = "free" }}

[[api_keys]]
customer = "{ALICE}"
sha256 = "{alice}"

[[api_keys]]
customer = "{MALLORY}"
sha256 = "{mallory}"
"#,
        alice = sha256_hex(ALICE_KEY),
        mallory = sha256_hex(MALLORY_KEY),
    )
}

/// One answer as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
    /// From sending the request to having read the whole body.
    pub elapsed: Duration,
}

impl Reply {
    /// Header `name` as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Header `name` as an integer.
    ///
    /// # Panics
    /// Panics (showing the reply) when it is missing or not an integer.
    pub fn header_i64(&self, name: &str) -> i64 {
        self.header(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("header {name} missing or not an integer in {self:#?}"))
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// Panics (showing the reply) when the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:#?}"))
    }
}

/// A blocking HTTP client for the tests: no proxy from the environment, a bounded timeout.
/// Use it from plain `#[test]`s, never inside an async runtime.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the test HTTP client")
}

/// Sends `method url` with `Authorization: Bearer <key>` (when given) and `headers`, and
/// reads the whole answer.
///
/// # Panics
/// Panics when the request fails at the transport level (refused, timed out).
pub fn send(
    client: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = client.request(method.clone(), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request
        .send()
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:#}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .text()
        .unwrap_or_else(|e| panic!("reading the body of {method} {url}: {e:#}"));
    Reply {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

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

/// A full stack for one test: a Redis, a fake upstream and a gateway on the Redis, plus a
/// client and direct access to the credits. Everything stops when it is dropped (the
/// gateway first).
pub struct Stack {
    /// The gateway under test (started with `--redis`).
    pub gateway: Gateway,
    /// The upstream API behind it.
    pub upstream: Upstream,
    /// The credits in Redis, read and granted directly.
    pub credits: Credits,
    /// The test's HTTP client.
    pub http: reqwest::blocking::Client,
    /// The Redis both use; declared last so it stops after the gateway.
    pub redis: RedisServer,
}

impl Stack {
    /// Starts Redis and the upstream, writes the config `config(upstream_addr)` and starts
    /// the gateway on that Redis.
    pub fn start(config: impl FnOnce(SocketAddr) -> String) -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let upstream = Upstream::start()?;
        let credits = Credits::connect(&redis.url())?;
        let gateway = Gateway::start(GatewayOptions {
            config_toml: config(upstream.addr()),
            redis_url: Some(redis.url()),
            ..GatewayOptions::default()
        })?;
        Ok(Self {
            gateway,
            upstream,
            credits,
            http: http_client(),
            redis,
        })
    }

    /// `GET path` through the gateway with `key` (if any).
    pub fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send("GET", path, key, &[])
    }

    /// `method path` through the gateway with `key` (if any) and extra `headers`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.gateway.proxy_url());
        send(&self.http, method, &url, key, headers)
    }

    /// Polls metric `name` (summed over the series with `labels`, 0 when absent) until it
    /// equals `expected`, for at most [`SETTLE_TIMEOUT`]: gauges and counters that move in
    /// the `logging` phase change a moment after the client has its answer.
    ///
    /// # Panics
    /// Panics with the last value seen when it does not get there in time.
    pub fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self.gateway.metric(name, labels);
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {now} after {SETTLE_TIMEOUT:?}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `creditgate_decisions_total` counter, summed over the series with these labels.
    pub fn decisions(&self, route: Option<&str>, outcome: &str) -> f64 {
        let mut labels = vec![("outcome", outcome)];
        if let Some(route) = route {
            labels.push(("route", route));
        }
        self.gateway.metric("creditgate_decisions_total", &labels)
    }
}
