//! The sidecar's admin API on a real Redis and a real ledger, with a token per role made by
//! the real `admin token create` command, an HTTP client that calls the API as any of them,
//! and the test's own handles on Redis and the ledger to check what a call did.
//!
//! It drives the sidecar only from outside (HTTP, the CLI, Redis); it never calls the admin
//! API's handlers itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{
    CreditStore, Keyspace, RedisStore, RedisTarget, ReserveOutcome, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::{GrantRecord, Ledger};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::backend::{Backend, open_ledger};
use crate::client::http_client;
use crate::fixtures::{PREFIX, SHARDS, TEST_PLANS, base_config};
use crate::requests::reserve_request;
use crate::{
    LedgerTarget, Postgres, ReceivedWebhook, RedisServer, Sidecar, SidecarOptions, WebhookReceiver,
    create_admin_token, free_port, wait_for_admin_api,
};

/// The operations file an [`AdminHarness`] starts with unless told otherwise: two credit
/// types, support limited to 1,000 credits per grant and 1,500 per day, one bundle, one
/// monthly schedule for the `annual` plan.
pub const ADMIN_OPERATIONS: &str = r#"
credit_types = ["api", "ai"]
reason_codes = ["outage", "onboarding"]
promotion_max_days = 90

[limits.support]
per_grant_max = 1000
per_day_max = 1500

[[bundles]]
id = "usd50"
credit_type = "api"
credits = 1000
price_micros = 50000000

[[schedules]]
id = "annual-monthly"
plan = "annual"
credit_type = "ai"
amount = 700
"#;

/// The key the harness's sidecars sign customer session tokens with
/// (`CREDITGATE_SESSION_KEY`): 32 bytes and more, so tests can forge tokens with other keys.
pub const ADMIN_SESSION_KEY: &str = "test-session-key-0123456789abcdef0123456789";

/// The token names, one per role (the role is the name).
pub const ROLES: [&str; 5] = ["admin", "billing", "support", "sales", "readonly"];

/// A second admin, for approvals.
pub const SECOND_ADMIN: &str = "admin2";

/// How long the test waits for something the sidecar does asynchronously.
pub const WAIT: Duration = Duration::from_secs(20);

/// Makes idempotency keys and hold ids unique within the test process.
static KEY_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh idempotency key.
pub fn key() -> String {
    format!(
        "k-{}-{}",
        std::process::id(),
        KEY_SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// An answer: status and body text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The body parsed as JSON.
    ///
    /// # Panics
    /// Panics (showing the answer) when the body is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The admin API harness: a Redis, a ledger, the sidecar with its admin listener on both,
/// a token per role, and the test's own handles on Redis and on the ledger.
/// Fields drop in order: the sidecar first, the servers last.
pub struct AdminHarness {
    /// The sidecar under test.
    pub sidecar: Sidecar,
    /// Base URL of its admin API, `http://127.0.0.1:PORT`.
    pub admin_url: String,
    tokens: BTreeMap<String, String>,
    /// The test's own handle on the ledger the sidecar writes.
    pub ledger: Arc<dyn Ledger>,
    /// The test's own protocol store on the sidecar's Redis.
    pub store: RedisStore,
    /// The runtime the store and ledger calls run on (tests call them from plain threads).
    pub rt: tokio::runtime::Runtime,
    /// The HTTP client the calls go through.
    pub client: reqwest::blocking::Client,
    /// The Redis the sidecar (and any gateway a test adds) uses.
    pub redis: RedisServer,
    /// The ledger the sidecar writes.
    pub target: LedgerTarget,
    _pg: Option<Arc<Postgres>>,
    /// The test's temp dir: the operations and pricing files, the SQLite ledger; CLI
    /// commands run here.
    pub dir: TempDir,
}

impl AdminHarness {
    /// Starts the harness on `backend` with [`ADMIN_OPERATIONS`] and the base pricing config
    /// plus [`TEST_PLANS`]; returns once the admin API answers.
    ///
    /// # Panics
    /// Panics when a process does not start or the admin API does not come up in [`WAIT`].
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, ADMIN_OPERATIONS)
    }

    /// Like [`start`](Self::start) with the operations file `operations`.
    pub fn start_with(backend: Backend, operations: &str) -> Self {
        Self::start_with_pricing(backend, operations, None)
    }

    /// Like [`start_with`](Self::start_with), with the pricing config `pricing` when given.
    pub fn start_with_pricing(backend: Backend, operations: &str, pricing: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start().expect("redis starts");
        let (target, pg) = backend.fresh_ledger(dir.path(), "admin");
        std::fs::write(dir.path().join(OPERATIONS_FILE), operations)
            .expect("write the operations file");
        // A pricing config, so usage events (feature `search`, 1 api credit) can be priced;
        // a test may bring its own.
        let unused: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
        let pricing_text = match pricing {
            Some(text) => text.to_string(),
            None => format!("{}{TEST_PLANS}", base_config(unused)),
        };
        std::fs::write(dir.path().join(PRICING_FILE), pricing_text)
            .expect("write the pricing config");
        let tokens = ROLES
            .iter()
            .copied()
            .chain([SECOND_ADMIN])
            .map(|name| {
                let role = if name == SECOND_ADMIN { "admin" } else { name };
                (
                    name.to_string(),
                    create_token(&target, dir.path(), name, role),
                )
            })
            .collect();
        let (options, admin_url) = admin_sidecar_options(&redis, &target, dir.path());
        let sidecar = Sidecar::start(options).expect("sidecar starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt
            .block_on(RedisStore::connect(
                &RedisTarget::Single(redis.url()),
                Keyspace::new(PREFIX, SHARDS),
                STORE_TIMEOUT_MS,
            ))
            .expect("store connects");
        let ledger = rt.block_on(open_ledger(&target));
        let h = Self {
            sidecar,
            admin_url,
            tokens,
            ledger,
            store,
            rt,
            client: http_client(),
            redis,
            target,
            _pg: pg,
            dir,
        };
        h.wait_for_admin();
        h
    }

    /// Another sidecar on the same ledger, Redis, operations and pricing files, and the
    /// base URL of its admin API (up when this returns).
    pub fn second_sidecar(&self) -> (Sidecar, String) {
        let (options, url) = admin_sidecar_options(&self.redis, &self.target, self.dir.path());
        let sidecar = Sidecar::start(options).expect("second sidecar starts");
        if let Err(e) = wait_for_admin_api(&url, WAIT) {
            panic!("{e:#}; log:\n{}", sidecar.log_tail(30));
        }
        (sidecar, url)
    }

    /// Waits (up to [`WAIT`]) until the admin API answers at all, e.g. after a restart.
    ///
    /// # Panics
    /// Panics with the sidecar's log when it does not.
    pub fn wait_for_admin(&self) {
        if let Err(e) = wait_for_admin_api(&self.admin_url, WAIT) {
            panic!("{e:#}; log:\n{}", self.sidecar.log_tail(30));
        }
    }

    /// The token of the token name `name` (a role, or [`SECOND_ADMIN`]).
    pub fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }

    /// Sends `method path` as `who` (a token name, or `None` for no token), with the
    /// idempotency key `idem` and the JSON `body` when given.
    ///
    /// # Panics
    /// Panics when the request fails at the transport level.
    pub fn call(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        idem: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.admin_url));
        if let Some(who) = who {
            req = req.bearer_auth(self.token(who));
        }
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        Answer {
            status: resp.status().as_u16(),
            body: resp.text().expect("body"),
        }
    }

    /// `POST path` with `body` as `who`, under a fresh idempotency key.
    pub fn post(&self, who: &str, path: &str, body: Value) -> Answer {
        self.call(Some(who), "POST", path, Some(&key()), Some(&body))
    }

    /// `GET path` as `who`.
    pub fn get(&self, who: &str, path: &str) -> Answer {
        self.call(Some(who), "GET", path, None, None)
    }

    /// Creates `customer` on `plan` as `billing`, asserting the 201.
    pub fn create_customer(&self, customer: &str, plan: Option<&str>) {
        let a = self.post(
            "billing",
            "/v1/admin/customers",
            json!({"customer": customer, "plan": plan}),
        );
        assert_eq!(a.status, 201, "{a:?}");
    }

    /// Every grant of `customer` in the ledger.
    pub fn grants_of(&self, customer: &str) -> Vec<GrantRecord> {
        self.rt
            .block_on(self.ledger.grants_of(customer))
            .expect("grants")
    }

    /// The live Redis available balance of a credit type.
    pub fn available(&self, customer: &str, credit_type: &str) -> i64 {
        self.rt
            .block_on(self.store.balance(customer))
            .expect("balance")
            .of(credit_type)
            .map_or(0, |t| t.available)
    }

    /// Waits (up to [`WAIT`]) until `customer`'s available `credit_type` in Redis is
    /// `expected`.
    ///
    /// # Panics
    /// Panics with the sidecar's log when it does not get there.
    pub fn wait_available(&self, customer: &str, credit_type: &str, expected: i64) {
        let started = Instant::now();
        loop {
            let now = self.available(customer, credit_type);
            if now == expected {
                return;
            }
            if started.elapsed() > WAIT {
                panic!(
                    "{customer} {credit_type}: available {now}, expected {expected}; log:\n{}",
                    self.sidecar.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Burns `amount` credits of `credit_type` with a reserve and a settle.
    pub fn burn(&self, customer: &str, credit_type: &str, amount: u64) {
        let hold_id = format!("h-{}", KEY_SEQ.fetch_add(1, Ordering::SeqCst));
        let mut request = reserve_request(customer, &hold_id, credit_type, amount, 60_000);
        request.route = "burst".to_string();
        request.feature = "burst".to_string();
        let placed = self
            .rt
            .block_on(self.store.reserve(&request))
            .expect("reserve");
        assert!(
            matches!(placed, ReserveOutcome::Placed { .. }),
            "{placed:?}"
        );
        let settled = self
            .rt
            .block_on(self.store.settle(&SettleRequest {
                customer: customer.to_string(),
                hold_id,
                actual: amount,
                overdraft_limit: 0,
            }))
            .expect("settle");
        assert!(
            matches!(settled, ResolveOutcome::Posted { .. }),
            "{settled:?}"
        );
    }

    /// Waits until the receiver has `n` successfully answered webhooks.
    pub fn wait_for_webhooks(&self, receiver: &WebhookReceiver, n: usize) -> Vec<ReceivedWebhook> {
        let started = Instant::now();
        loop {
            let ok: Vec<_> = receiver
                .received()
                .into_iter()
                .filter(|w| w.answered == 200)
                .collect();
            if ok.len() >= n {
                return ok;
            }
            if started.elapsed() > WAIT {
                panic!(
                    "{} webhooks, expected {n}: {:?}\nlog:\n{}",
                    ok.len(),
                    receiver.received(),
                    self.sidecar.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the ledger's total of `customer`'s `api` credits is `expected`: every charge
    /// settled and written, none in flight.
    pub fn wait_ledger_api(&self, customer: &str, expected: i64) {
        let started = Instant::now();
        loop {
            let sums = self
                .rt
                .block_on(self.ledger.amount_sums())
                .expect("ledger sums");
            let total = sums
                .iter()
                .find(|(c, t, _)| c == customer && t == "api")
                .map(|(_, _, sum)| *sum);
            if total == Some(expected) {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "ledger at {total:?}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Per-call timeout of the test's own store calls on a healthy local Redis.
const STORE_TIMEOUT_MS: u64 = 5_000;

/// The operations file's name in the harness's temp dir.
const OPERATIONS_FILE: &str = "operations.toml";

/// The pricing config's name in the harness's temp dir.
const PRICING_FILE: &str = "pricing.toml";

/// Options for a sidecar on `redis` and `target` with an admin listener on a free port and
/// the operations and pricing files in `dir`, and the admin API's base URL.
fn admin_sidecar_options(
    redis: &RedisServer,
    target: &LedgerTarget,
    dir: &Path,
) -> (SidecarOptions, String) {
    let admin_port = free_port();
    let mut options = SidecarOptions::new(redis.url(), target.clone());
    options.extra_args = vec![
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--operations".into(),
        dir.join(OPERATIONS_FILE).display().to_string(),
        "--config".into(),
        dir.join(PRICING_FILE).display().to_string(),
    ];
    options
        .env
        .push(("CREDITGATE_SESSION_KEY".into(), ADMIN_SESSION_KEY.into()));
    (options, format!("http://127.0.0.1:{admin_port}"))
}

/// Creates the admin token `name` with `role` in `target`'s database by the real
/// `admin token create` command, run in `dir`, and checks its shape (`cgt_` and 64 hex).
///
/// # Panics
/// Panics when the command fails or prints something else than a token.
pub fn create_token(target: &LedgerTarget, dir: &Path, name: &str, role: &str) -> String {
    let token = create_admin_token(target, dir, name, role).expect("admin token create runs");
    assert!(token.starts_with("cgt_") && token.len() == 68, "{token}");
    token
}
