//! The attacker's view of a whole deployment: the real gateway binary between a counting
//! upstream and a real Redis, and the real sidecar writing a real (SQLite) ledger from that
//! Redis; plus the one check every adversarial test ends with: each request the upstream
//! received carries the gateway's `x-request-id`, and the ledger holds a burn under that
//! request id, unless the client's answer marked it as an allowed replay
//! (`x-creditgate-replay`).
//!
//! It drives the gateway only from outside (HTTP, raw bytes on a socket) and reads the
//! money only from the ledger the sidecar wrote, as an auditor would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::GrantOutcome;
use creditgate_sidecar::ledger::{EntryKind, LedgerEntry};

use crate::client::{Reply, http_client, send};
use crate::fixtures::{ALICE, CREDIT_TYPE, MALLORY};
use crate::raw_http::{RawResponse, loopback, raw_exchange};
use crate::requests::grant_request;
use crate::{Backend, Gateway, GatewayOptions, LedgerHarness, RecordedRequest, Upstream};

/// The header the gateway gives the upstream (and the client) its id of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The header on a client's answer that marks an allowed, counted idempotent replay.
pub const REPLAY_HEADER: &str = "x-creditgate-replay";

/// How long the check waits for the burns of forwarded requests to reach the ledger
/// (settles run after the answer; the sidecar reads the streams in batches).
pub const PAID_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis, a counting upstream, the gateway and the sidecar with an SQLite ledger. Fields
/// drop in order: the gateway first, the sidecar and Redis last.
pub struct AttackStack {
    /// The gateway under attack.
    pub gateway: Gateway,
    /// The counting upstream behind it (the routes' `default` upstream).
    pub upstream: Upstream,
    /// The sidecar, its ledger and the Redis everything runs on.
    pub ledger: LedgerHarness,
    /// Every answer the test's clients saw: (request id, marked as a replay).
    answers: Mutex<Vec<(String, bool)>>,
}

impl AttackStack {
    /// Starts Redis, the sidecar on an SQLite ledger, the upstream, and the gateway with
    /// the config `config(upstream_addr)`.
    ///
    /// # Panics
    /// Panics when a process does not start.
    pub fn start(config: impl FnOnce(SocketAddr) -> String) -> Self {
        let ledger = LedgerHarness::start(Backend::Sqlite);
        let upstream = Upstream::start().expect("upstream starts");
        let gateway = Gateway::start(GatewayOptions {
            config_toml: config(upstream.addr()),
            redis_url: Some(ledger.redis.url()),
            ..GatewayOptions::default()
        })
        .expect("gateway starts");
        Self {
            gateway,
            upstream,
            ledger,
            answers: Mutex::new(Vec::new()),
        }
    }

    /// Grants `amount` credits of type `api` to `customer` (grant id `grant_id`).
    pub fn grant(&self, customer: &str, grant_id: &str, amount: u64) {
        let outcome = self.ledger.grant(&grant_request(
            customer,
            grant_id,
            CREDIT_TYPE,
            amount,
            None,
            0,
        ));
        assert!(
            matches!(outcome, GrantOutcome::Granted { .. }),
            "{outcome:?}"
        );
    }

    /// `method path` through the gateway with bearer `key` (if any), extra `headers` and
    /// `body`; the answer is remembered for the paid check.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let url = format!("{}{path}", self.gateway.proxy_url());
        let reply = if body.is_empty() {
            send(&http_client(), method, &url, key, headers)
        } else {
            send_with_body(method, &url, key, headers, body)
        };
        self.remember(reply.header(REQUEST_ID_HEADER), reply.header(REPLAY_HEADER));
        reply
    }

    /// Writes `request` as is to the gateway's proxy port and parses what comes back (see
    /// [`raw_exchange`]); every answer is remembered for the paid check.
    pub fn raw(&self, request: &[u8]) -> Vec<RawResponse> {
        let (responses, _) = raw_exchange(loopback(self.gateway.proxy_port()), request);
        for r in &responses {
            self.remember(
                r.header(REQUEST_ID_HEADER).map(str::to_string),
                r.header(REPLAY_HEADER).map(str::to_string),
            );
        }
        responses
    }

    fn remember(&self, request_id: Option<String>, replay: Option<String>) {
        if let Some(id) = request_id {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            answers.push((id, replay.is_some()));
        }
    }

    /// The request ids whose answers were marked as allowed replays.
    pub fn replays(&self) -> BTreeSet<String> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .iter()
            .filter(|(_, replay)| *replay)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The paid check on the counting upstream's log: see [`Self::assert_paid`].
    pub fn assert_forwarded_paid(&self) -> BTreeMap<String, i64> {
        self.assert_paid(&self.upstream.requests())
    }

    /// Asserts that every request in `forwarded` (an upstream's log) carries the gateway's
    /// request id and that the ledger holds a burn under that id, unless its answer was an
    /// allowed replay; waits up to [`PAID_TIMEOUT`] for the ledger to catch up. Returns the
    /// credits burned per request id (every request id of the ledger, not only these).
    ///
    /// # Panics
    /// Panics listing each unpaid request (method, path, query, request id, body hash) and
    /// the ledger's hold entries.
    pub fn assert_paid(&self, forwarded: &[RecordedRequest]) -> BTreeMap<String, i64> {
        let replays = self.replays();
        let deadline = Instant::now() + PAID_TIMEOUT;
        let mut quiet_rounds = 0;
        loop {
            let entries = self.ledger.entries();
            let burned = burns_by_request(&entries);
            let unpaid: Vec<&RecordedRequest> = forwarded
                .iter()
                .filter(|r| match r.header(REQUEST_ID_HEADER) {
                    None => true,
                    Some(id) => !replays.contains(id) && burned.get(id).copied().unwrap_or(0) <= 0,
                })
                .collect();
            if unpaid.is_empty() {
                return burned;
            }
            // Nothing held and the ledger has every event: what is missing stays missing.
            quiet_rounds = if self.quiet() { quiet_rounds + 1 } else { 0 };
            if quiet_rounds >= 3 || Instant::now() > deadline {
                panic!("{}", unpaid_report(&unpaid, &entries, &replays));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when no credits are held in Redis and the ledger holds every stream event.
    fn quiet(&self) -> bool {
        let held = [ALICE, MALLORY]
            .iter()
            .map(|c| self.ledger.redis_available_held(c, CREDIT_TYPE).1)
            .sum::<i64>();
        let (added, pending) = self.ledger.stream_counts();
        let from_events = self
            .ledger
            .entries()
            .iter()
            .filter(|e| e.entry.kind != EntryKind::Overage)
            .count() as u64;
        held == 0 && pending == 0 && from_events == added
    }
}

/// Credits burned per request id: the negated sum of the amounts of every entry that names
/// the request (a posted hold, a late burn), grants aside.
pub fn burns_by_request(entries: &[LedgerEntry]) -> BTreeMap<String, i64> {
    let mut burned = BTreeMap::new();
    for e in entries {
        if matches!(
            e.entry.kind,
            EntryKind::GrantAdded | EntryKind::GrantExpired
        ) {
            continue;
        }
        if let Some(id) = &e.entry.request_id {
            *burned.entry(id.clone()).or_insert(0) -= e.entry.amount;
        }
    }
    burned
}

fn unpaid_report(
    unpaid: &[&RecordedRequest],
    entries: &[LedgerEntry],
    replays: &BTreeSet<String>,
) -> String {
    let mut report = format!(
        "{} request(s) reached the upstream without a burn in the ledger:\n",
        unpaid.len()
    );
    for r in unpaid {
        report += &format!(
            "  #{} {} {}{} x-request-id={:?} body_len={} body_sha256={}\n",
            r.n,
            r.method,
            r.path,
            r.query
                .as_ref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default(),
            r.header(REQUEST_ID_HEADER),
            r.body_len,
            r.body_sha256
        );
    }
    report += &format!("allowed replays: {replays:?}\nledger hold entries:\n");
    for e in entries.iter().filter(|e| e.entry.hold_id.is_some()) {
        report += &format!(
            "  {} hold={:?} request={:?} route={:?} amount={}\n",
            e.entry.kind, e.entry.hold_id, e.entry.request_id, e.entry.route, e.entry.amount
        );
    }
    report
}

/// `method url` with a text body (sent with a content-length).
fn send_with_body(
    method: &str,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let client = http_client();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = client.request(method.clone(), url).body(body.to_string());
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
    let body = response.text().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}
