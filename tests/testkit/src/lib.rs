//! Test harness for creditgate integration tests.
//!
//! Starts **real** server processes on free loopback ports and cleans them up
//! again:
//!
//! * [`RedisServer`] — a single `redis-server` (no persistence, own temp dir),
//!   with [`RedisServer::stop`] / [`RedisServer::restart`] for fault tests.
//! * [`RedisCluster`] — an N-master Redis Cluster (no replicas) whose slots
//!   are all assigned and whose nodes all report `cluster_state:ok`.
//! * [`Postgres`] — a throw-away PostgreSQL instance (initdb into a temp dir,
//!   trust auth, `fsync=off`) with a database named `creditgate`.
//! * [`Upstream`] — a fake upstream API (HTTP/1.1, own thread and runtime) that
//!   counts and records every request and answers with a settable status,
//!   delay and run of failures.
//! * [`Gateway`] — the real `creditgate-gateway run` binary on free ports,
//!   ready once its admin `/readyz` answers 200; [`cargo_bin`] finds the
//!   workspace binaries next to the test executable.
//! * [`ScriptedUpstream`] — an upstream that drips a slow stream or answers `101`, and
//!   [`raw_exchange`], a client that writes exactly the bytes a test gives it.
//! * [`http_get`] and [`metric_value`] — a runtime-free GET for admin
//!   endpoints and a reader for Prometheus text, for asserting on metrics.
//!
//! With the `e2e` feature (the end-to-end tests' crate turns it on), the harnesses that
//! speak the protocol crate and open the sidecar's ledger too:
//!
//! * `Stack` — Redis, an upstream and the gateway, with a measuring client (`send`,
//!   `Reply`) and direct credit access (`Credits`); `base_config` and the test identities
//!   (`ALICE`, `MALLORY` and their keys).
//! * `AdminHarness` — the sidecar's admin API with a token per role.
//! * `LedgerHarness` — the sidecar between Redis and a ledger, read back through the
//!   sidecar's library, and generated credit traffic (`spawn_traffic`, `join_traffic`).
//! * `AttackStack` — Redis, a counting upstream, the gateway and the sidecar on an SQLite
//!   ledger, with the check that every request the upstream received was paid for.
//! * `Backend` and `on_both_backends!` — every ledger scenario on SQLite and on Postgres.
//! * `Browser` — a headless Chromium under chromedriver: open, read, fill and submit
//!   forms, window sizes, screenshots, cookies; `console_login`, `console_grant` drive the
//!   sidecar's support console in it.
//! * `run_soak` — the soak and fault run: load and a fault schedule for a set time, then
//!   the end checks (`SoakReport`).
//!
//! [`wait_for`] and [`now_ms`] (polling with a deadline, the wall clock in ms) need no
//! feature.
//!
//! All constructors are blocking and can be used from plain `#[test]`s as
//! well as from `#[tokio::test]`s. Every process is killed (and waited for)
//! when its handle is dropped, which also happens while a panicking test
//! unwinds.
//!
//! ```no_run
//! use creditgate_testkit::{Postgres, RedisCluster, RedisServer};
//!
//! let mut redis = RedisServer::start()?; // redis://127.0.0.1:PORT/
//! let _client_url = redis.url();
//! redis.stop(); // simulate an outage ...
//! redis.restart()?; // ... and bring it back on the same port (empty)
//!
//! let cluster = RedisCluster::start(3)?;
//! let _seed_nodes: Vec<String> = cluster.urls();
//!
//! let pg = Postgres::start()?; // postgres://postgres@127.0.0.1:PORT/creditgate
//! assert_eq!(pg.psql("select 1")?, "1");
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! If a required binary is not installed, the constructors return an error
//! that says exactly what to install (for example
//! `apt-get install -y redis-server redis-tools`), so tests fail loudly
//! instead of silently passing.

#[cfg(feature = "e2e")]
mod admin_harness;
#[cfg(feature = "e2e")]
mod adversary;
#[cfg(feature = "e2e")]
mod backend;
#[cfg(feature = "e2e")]
mod browser;
#[cfg(feature = "e2e")]
mod client;
mod cluster;
#[cfg(feature = "e2e")]
mod console;
#[cfg(feature = "e2e")]
mod credits;
#[cfg(feature = "e2e")]
mod fixtures;
mod gateway;
mod http;
#[cfg(feature = "e2e")]
mod ledger_harness;
mod metrics;
mod model_server;
mod nginx;
mod poll;
mod postgres;
mod raw_http;
mod redis_server;
#[cfg(feature = "e2e")]
mod requests;
mod scripted_upstream;
mod sidecar;
#[cfg(feature = "e2e")]
mod soak;
#[cfg(feature = "e2e")]
mod stack;
#[cfg(feature = "e2e")]
mod traffic;
mod upstream;
mod util;
mod webhook;

#[cfg(feature = "e2e")]
pub use admin_harness::{
    ADMIN_OPERATIONS, ADMIN_SESSION_KEY, AdminHarness, Answer, ROLES, SECOND_ADMIN, WAIT,
    create_token, key,
};
#[cfg(feature = "e2e")]
pub use adversary::{
    AttackStack, PAID_TIMEOUT, REPLAY_HEADER, REQUEST_ID_HEADER, burns_by_request,
};
#[cfg(feature = "e2e")]
pub use backend::{Backend, open_ledger};
#[cfg(feature = "e2e")]
pub use browser::{
    BROWSER_COMMAND_TIMEOUT, Browser, BrowserCookie, CHROMIUM_INSTALL_HINT, DESKTOP_WINDOW,
    DRIVER_READY_TIMEOUT, PHONE_WINDOW,
};
#[cfg(feature = "e2e")]
pub use client::{REQUEST_TIMEOUT, Reply, http_client, send, until_status};
#[cfg(feature = "e2e")]
pub use console::{
    ConsoleGrant, console_grant, console_login, console_logout, console_open_customer,
};
#[cfg(feature = "e2e")]
pub use credits::{Credits, SETTLE_TIMEOUT};
#[cfg(feature = "e2e")]
pub use fixtures::{
    ALICE, ALICE_KEY, CREDIT_TYPE, MALLORY, MALLORY_KEY, PREFIX, SHARDS, TEST_PLANS, TOP_UP_URL,
    base_config, sha256_hex,
};
#[cfg(feature = "e2e")]
pub use ledger_harness::{CATCH_UP_TIMEOUT, GROUP, LedgerHarness};
#[cfg(feature = "e2e")]
pub use requests::{grant_request, reserve_request};
#[cfg(feature = "e2e")]
pub use soak::{
    DEFAULT_SOAK_SECS, Findings, SOAK_KEEP_ENV, SOAK_SECS_ENV, SOAK_SEED_ENV, SoakConfig,
    SoakReport, run_soak,
};
#[cfg(feature = "e2e")]
pub use stack::Stack;
#[cfg(feature = "e2e")]
pub use traffic::{
    Produced, Snapshot, TYPES, Traffic, TrafficRun, join_traffic, spawn_traffic, without_nonce,
};

pub use cluster::RedisCluster;
pub use gateway::{
    BIN_DIR_ENV, GATEWAY_BIN, GATEWAY_READY_TIMEOUT, GATEWAY_STOP_TIMEOUT, Gateway, GatewayOptions,
    cargo_bin, try_cargo_bin,
};
pub use http::{HTTP_GET_MAX_BYTES, HttpResponse, http_get};
pub use metrics::{Sample, metric_value, parse_samples};
pub use model_server::ModelServer;
pub use nginx::{
    NGINX_LUA_MODULE, NGINX_NDK_MODULE, NGINX_PACKAGES, NGINX_READY_TIMEOUT, Nginx, require_nginx,
};
pub use poll::{POLL_INTERVAL, now_ms, wait_for};
pub use postgres::{PG_BIN_ENV, Postgres};
pub use raw_http::{
    RAW_READ_TIMEOUT, RawResponse, gzip, loopback, parse_responses, raw_exchange, read_until_closed,
};
pub use redis_server::RedisServer;
pub use scripted_upstream::{Script, ScriptedUpstream};
pub use sidecar::{
    LedgerTarget, MINIMAL_OPERATIONS, SIDECAR_BIN, SIDECAR_READY_TIMEOUT, SIDECAR_STOP_TIMEOUT,
    Sidecar, SidecarOptions, add_admin_listener, create_admin_token, sidecar_command,
    wait_for_admin_api,
};
pub use upstream::{RecordedRequest, UPSTREAM_BODY_MAX_BYTES, Upstream};
pub use util::{free_cluster_port, free_port, require, which};
pub use webhook::{ReceivedWebhook, WebhookReceiver};

/// Install hint for the Redis binaries (`redis-server`, `redis-cli`).
pub const REDIS_INSTALL_HINT: &str = "apt-get install -y redis-server redis-tools";

/// Install hint for the PostgreSQL binaries (`initdb`, `postgres`, `psql`).
pub const POSTGRES_INSTALL_HINT: &str = "apt-get install -y postgresql";
