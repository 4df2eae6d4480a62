//! The soak run's deployment: a Redis with AOF, the sidecar (admin API, usage events,
//! SQLite ledger), two gateways and a counting upstream, plus the customers and their
//! opening grants. It starts, restarts and repoints processes; it checks nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{CreditStore, Keyspace, RedisStore, RedisTarget};
use creditgate_sidecar::ledger::Ledger;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::admin_harness::ADMIN_OPERATIONS;
use crate::backend::open_ledger;
use crate::fixtures::{PREFIX, SHARDS, base_config, sha256_hex};
use crate::{
    Gateway, GatewayOptions, LedgerTarget, RedisServer, Sidecar, SidecarOptions, Upstream,
    create_admin_token, free_port, wait_for_admin_api,
};

/// Redis persistence of the run: an append-only file synced once a second, so a crash
/// loses up to a second of writes, as in production.
pub(crate) const AOF_ARGS: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "everysec"];

/// Customers the gateway traffic uses, with their opening grant in `api` credits: two that
/// never run out, three that do within seconds and live on the small grants the run adds.
pub(crate) const GATEWAY_CUSTOMERS: [(&str, u64); 5] = [
    ("soak-big-0", 1_000_000),
    ("soak-big-1", 1_000_000),
    ("soak-small-0", 40),
    ("soak-small-1", 40),
    ("soak-small-2", 40),
];

/// The customer usage events are posted for (no gateway traffic, so its burns are exactly
/// the events), and its opening grant.
pub(crate) const EVENTS_CUSTOMER: (&str, u64) = ("soak-events", 1_000_000);

/// How many gateways serve the traffic (one of them is killed by the schedule).
const GATEWAYS: usize = 2;

/// The gateways' hold TTL: short, so the holds of a killed gateway expire within the run's
/// bounded end wait.
pub(crate) const HOLD_TTL_MS: u64 = 3_000;

/// Per-call timeout of the test's own store calls and of the gateways' (a busy 2-core
/// machine misses the base config's 100 ms now and then).
const STORE_TIMEOUT_MS: u64 = 1_000;

/// How long the opening grants get to reach Redis through the outbox.
const OPENING_WAIT: Duration = Duration::from_secs(30);

/// The API key of a gateway customer.
pub(crate) fn api_key(customer: &str) -> String {
    format!("cg_soak_{customer}_key")
}

/// The deployment. Fields drop in order: the gateways and the sidecar before Redis.
pub(crate) struct SoakStack {
    pub gateways: Vec<Gateway>,
    pub sidecar: Sidecar,
    pub upstream: Upstream,
    /// The Redis everything uses now (a promoted replica after that fault).
    pub redis: RedisServer,
    /// Proxy base URLs of the running gateways, read by the traffic threads.
    pub endpoints: Arc<RwLock<Vec<String>>>,
    pub admin_url: String,
    pub billing_token: String,
    pub admin_token: String,
    pub target: LedgerTarget,
    pub sidecar_options: SidecarOptions,
    pub gateway_config: String,
    pub ledger: Arc<dyn Ledger>,
    pub rt: tokio::runtime::Runtime,
    pub dir: TempDir,
}

impl SoakStack {
    /// Starts everything, creates the customers and waits until their opening grants are
    /// spendable in Redis.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start_with_args(&AOF_ARGS).expect("redis starts");
        let upstream = Upstream::start().expect("upstream starts");
        let gateway_config = gateway_config(upstream.addr());
        let target = LedgerTarget::Sqlite(dir.path().join("ledger.db"));
        let billing_token =
            create_admin_token(&target, dir.path(), "billing", "billing").expect("billing token");
        let admin_token =
            create_admin_token(&target, dir.path(), "admin", "admin").expect("admin token");
        let (sidecar_options, admin_url) = sidecar_options(&redis, &target, dir.path().into());
        std::fs::write(dir.path().join("pricing.toml"), &gateway_config).expect("pricing");
        let sidecar = Sidecar::start(sidecar_options.clone()).expect("sidecar starts");
        wait_for_admin_api(&admin_url, OPENING_WAIT).expect("admin API up");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let ledger = rt.block_on(open_ledger(&target));
        let mut stack = Self {
            gateways: Vec::new(),
            sidecar,
            upstream,
            redis,
            endpoints: Arc::new(RwLock::new(Vec::new())),
            admin_url,
            billing_token,
            admin_token,
            target,
            sidecar_options,
            gateway_config,
            ledger,
            rt,
            dir,
        };
        for _ in 0..GATEWAYS {
            let gateway = stack.start_gateway();
            stack.gateways.push(gateway);
        }
        stack.publish_endpoints();
        stack.open_customers();
        stack
    }

    /// A new gateway on the current Redis.
    pub fn start_gateway(&self) -> Gateway {
        Gateway::start(GatewayOptions {
            config_toml: self.gateway_config.clone(),
            redis_url: Some(self.redis.url()),
            ..GatewayOptions::default()
        })
        .expect("gateway starts")
    }

    /// Tells the traffic threads which gateways are up.
    pub fn publish_endpoints(&self) {
        let urls = self.gateways.iter().map(Gateway::proxy_url).collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = urls;
    }

    /// Tells the traffic threads every gateway but the one at `index`; `usize::MAX`
    /// publishes none.
    pub fn publish_endpoints_without(&self, index: usize) {
        let urls = if index == usize::MAX {
            Vec::new()
        } else {
            self.gateways
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, g)| g.proxy_url())
                .collect()
        };
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = urls;
    }

    /// The sidecar's options on the current Redis (after a promotion, the replica's URL).
    pub fn repoint_sidecar(&mut self) {
        self.sidecar_options.redis_url = self.redis.url();
        self.sidecar = Sidecar::start(self.sidecar_options.clone()).expect("sidecar starts");
        wait_for_admin_api(&self.admin_url, OPENING_WAIT).expect("admin API up");
    }

    /// The test's own protocol store on the current Redis.
    pub fn store(&self) -> anyhow::Result<RedisStore> {
        let store = self.rt.block_on(RedisStore::connect(
            &RedisTarget::Single(self.redis.url()),
            Keyspace::new(PREFIX, SHARDS),
            STORE_TIMEOUT_MS,
        ))?;
        Ok(store)
    }

    /// Every customer of the run, gateway customers first.
    pub fn customers() -> Vec<(&'static str, u64)> {
        let mut all = GATEWAY_CUSTOMERS.to_vec();
        all.push(EVENTS_CUSTOMER);
        all
    }

    /// Creates the customers and grants their opening credits through the admin API, then
    /// waits until Redis has them.
    fn open_customers(&self) {
        let client = crate::client::http_client();
        for (customer, amount) in Self::customers() {
            let created = admin_post(
                &client,
                &format!("{}/v1/admin/customers", self.admin_url),
                &self.billing_token,
                &format!("open-{customer}"),
                &json!({"customer": customer}),
            );
            assert_eq!(created.0, 201, "creating {customer}: {}", created.1);
            let url = format!("{}/v1/admin/customers/{customer}/grants", self.admin_url);
            let granted = admin_post(
                &client,
                &url,
                &self.admin_token,
                &format!("open-grant-{customer}"),
                &grant_body(amount),
            );
            assert!(granted.0 < 300, "granting {customer}: {}", granted.1);
        }
        let store = self.store().expect("store");
        let started = Instant::now();
        for (customer, amount) in Self::customers() {
            loop {
                let balance = self.rt.block_on(store.balance(customer)).expect("balance");
                if balance
                    .of("api")
                    .is_some_and(|t| t.available == amount as i64)
                {
                    break;
                }
                assert!(
                    started.elapsed() < OPENING_WAIT,
                    "{customer}'s opening grant did not reach Redis; sidecar log:\n{}",
                    self.sidecar.log_tail(30)
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The body of a grant of `amount` api credits, as the run's admin grants them.
pub(crate) fn grant_body(amount: u64) -> Value {
    json!({"source": "adjustment", "credit_type": "api", "amount": amount,
        "reason_code": "outage", "note": "soak run"})
}

/// `POST url` with a bearer token, an idempotency key and a JSON body: status and body, or
/// status 0 and the error when the call did not get an answer.
pub(crate) fn admin_post(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    idem: &str,
    body: &Value,
) -> (u16, String) {
    let sent = client
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", idem)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send();
    match sent {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, format!("{e:#}")),
    }
}

/// The gateways' config (also the sidecar's pricing config): the base config with a longer
/// store timeout and a short hold TTL, a key per gateway customer and one priced route,
/// `GET /v1/search` (1 credit).
fn gateway_config(upstream: SocketAddr) -> String {
    let mut config = base_config(upstream).replace(
        "store_timeout_ms = 100",
        &format!("store_timeout_ms = {STORE_TIMEOUT_MS}\nhold_ttl_ms = {HOLD_TTL_MS}"),
    );
    for (customer, _) in GATEWAY_CUSTOMERS {
        config.push_str(&format!(
            "\n[[api_keys]]\ncustomer = \"{customer}\"\nsha256 = \"{}\"\n",
            sha256_hex(&api_key(customer))
        ));
    }
    config.push_str(
        "\n[[routes]]\nname = \"search\"\nmethod = \"GET\"\npath = \"/v1/search\"\nfeature = \"search\"\n",
    );
    config
}

/// The sidecar's options: admin listener, operations file and pricing config in `dir`.
fn sidecar_options(
    redis: &RedisServer,
    target: &LedgerTarget,
    dir: PathBuf,
) -> (SidecarOptions, String) {
    std::fs::write(dir.join("operations.toml"), ADMIN_OPERATIONS).expect("operations file");
    let admin_port = free_port();
    let mut options = SidecarOptions::new(redis.url(), target.clone());
    options.extra_args = vec![
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--operations".into(),
        dir.join("operations.toml").display().to_string(),
        "--config".into(),
        dir.join("pricing.toml").display().to_string(),
    ];
    (options, format!("http://127.0.0.1:{admin_port}"))
}
