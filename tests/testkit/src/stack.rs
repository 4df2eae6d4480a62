//! A full gateway stack for one test: Redis, a fake upstream and the gateway binary on
//! that Redis, with a client and direct access to the credits.
//!
//! It drives the gateway only over HTTP, as a client would; nothing here reaches into the
//! gateway's library.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Reply, http_client, send};
use crate::credits::{Credits, SETTLE_TIMEOUT};
use crate::{Gateway, GatewayOptions, RedisServer, Upstream};

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
