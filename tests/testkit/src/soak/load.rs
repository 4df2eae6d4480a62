//! The soak run's load: closed-loop gateway traffic from a few threads (random customer,
//! random gateway), usage events in batches with duplicates and retries of failed batches,
//! and small grants through the admin API. It only counts what it sent and what came back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::stack::{
    EVENTS_CUSTOMER, GATEWAY_CUSTOMERS, SoakStack, admin_post, api_key, grant_body,
};
use crate::poll::now_ms;

/// Threads sending gateway requests back to back.
const HTTP_THREADS: u64 = 2;

/// Usage events per batch, and how many of them repeat an earlier key.
const EVENT_BATCH: usize = 20;
const EVENT_DUPLICATES: usize = 2;

/// Pause between event batches and between grants.
const EVENT_PAUSE: Duration = Duration::from_millis(20);
const GRANT_PAUSE: Duration = Duration::from_millis(700);

/// How often a failed event batch or grant is sent again before the run gives up on it.
const RETRIES: u32 = 100;

/// Per-request timeout of the load's HTTP clients.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a transport error (a process being restarted).
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Everything the load counted, frozen when it stopped.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Gateway answers by status (0: no answer).
    pub gateway_statuses: BTreeMap<u16, u64>,
    /// Usage event results by status (`burned`, `duplicate`, …), per event sent.
    pub event_results: BTreeMap<String, u64>,
    /// Event batches answered other than 200 (each retried).
    pub event_batch_failures: u64,
    /// Distinct event keys answered `burned` or `duplicate` at least once.
    pub events_accepted: BTreeSet<String>,
    /// Distinct event keys never answered `burned` or `duplicate` (gave up on them).
    pub events_given_up: BTreeSet<String>,
    /// Grants answered 2xx and their credits, per customer.
    pub grants_ok: BTreeMap<String, (u64, u64)>,
    /// Grant calls answered otherwise (each retried under the same idempotency key).
    pub grant_failures: u64,
    /// Grants given up on.
    pub grants_given_up: u64,
    /// Requests the upstream received.
    pub upstream_requests: u64,
}

impl LoadCounts {
    /// Gateway requests answered at all.
    pub fn gateway_answered(&self) -> u64 {
        self.gateway_statuses
            .iter()
            .filter(|(s, _)| **s != 0)
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes the load figures, with rates over `secs`.
    pub(crate) fn write(&self, f: &mut fmt::Formatter<'_>, secs: f64) -> fmt::Result {
        let answered = self.gateway_answered();
        let events: u64 = self.event_results.values().sum();
        let grants: u64 = self.grants_ok.values().map(|(n, _)| n).sum();
        writeln!(
            f,
            "gateway: {answered} answers ({:.0}/s), by status {:?}; upstream served {}",
            answered as f64 / secs,
            self.gateway_statuses,
            self.upstream_requests
        )?;
        writeln!(
            f,
            "usage events: {events} results ({:.0}/s) {:?}; {} batches failed and were \
             retried; {} keys accepted, {} given up",
            events as f64 / secs,
            self.event_results,
            self.event_batch_failures,
            self.events_accepted.len(),
            self.events_given_up.len()
        )?;
        writeln!(
            f,
            "grants: {grants} granted, {} calls failed and were retried, {} given up",
            self.grant_failures, self.grants_given_up
        )
    }
}

/// What the threads share.
struct Shared {
    stop: AtomicBool,
    endpoints: Arc<RwLock<Vec<String>>>,
    admin_url: String,
    billing_token: String,
    admin_token: String,
    counts: Mutex<LoadCounts>,
    upstream_base: AtomicU64,
}

/// The running load.
pub(crate) struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the traffic, event and grant threads against `stack`.
    pub fn start(stack: &SoakStack, seed: u64) -> Self {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            endpoints: stack.endpoints.clone(),
            admin_url: stack.admin_url.clone(),
            billing_token: stack.billing_token.clone(),
            admin_token: stack.admin_token.clone(),
            counts: Mutex::new(LoadCounts::default()),
            upstream_base: AtomicU64::new(stack.upstream.count()),
        });
        let mut threads = Vec::new();
        for i in 0..HTTP_THREADS {
            let s = shared.clone();
            threads.push(thread::spawn(move || http_worker(&s, seed + i)));
        }
        let s = shared.clone();
        threads.push(thread::spawn(move || event_worker(&s, seed + 100)));
        let s = shared.clone();
        threads.push(thread::spawn(move || grant_worker(&s, seed + 200)));
        Self { shared, threads }
    }

    /// Stops every thread, waits for them and returns the counts; `upstream_now` is the
    /// upstream's request count at that moment.
    pub fn stop(self, upstream_now: u64) -> LoadCounts {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut counts = std::mem::take(&mut *lock(&self.shared.counts));
        counts.upstream_requests =
            upstream_now.saturating_sub(self.shared.upstream_base.load(Ordering::SeqCst));
        counts
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("HTTP client")
}

/// Sends `GET /v1/search` as a random gateway customer to a random gateway until stopped.
fn http_worker(shared: &Shared, seed: u64) {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    while !shared.stop.load(Ordering::SeqCst) {
        let urls = shared
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if urls.is_empty() {
            thread::sleep(ERROR_PAUSE);
            continue;
        }
        let url = &urls[rng.random_range(0..urls.len())];
        // Three requests in four go to the customers who never run out, so most traffic
        // reaches the upstream and is burned; the rest keeps the small balances at zero.
        let pick = if rng.random_bool(0.75) {
            rng.random_range(0..2)
        } else {
            rng.random_range(2..GATEWAY_CUSTOMERS.len())
        };
        let (customer, _) = GATEWAY_CUSTOMERS[pick];
        let sent = client
            .get(format!("{url}/v1/search"))
            .bearer_auth(api_key(customer))
            .send();
        let status = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes();
                status
            }
            Err(_) => 0,
        };
        *lock(&shared.counts)
            .gateway_statuses
            .entry(status)
            .or_default() += 1;
        if status == 0 || status >= 500 {
            thread::sleep(ERROR_PAUSE);
        }
    }
}

/// Posts usage events in batches (some repeating an earlier key) until stopped; a batch
/// that is not answered 200 is sent again as it was, and an event rejected with an answer
/// that says to retry it (Redis or the ledger was down) goes into the next batch, as the
/// API asks of a product's backend. Events still waiting for their retry when the load
/// stops count as given up.
fn event_worker(shared: &Shared, seed: u64) {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let url = format!("{}/v1/usage-events", shared.admin_url);
    let mut sent: Vec<String> = Vec::new();
    let mut retry: Vec<String> = Vec::new();
    let mut next = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let mut keys: Vec<String> = (0..EVENT_BATCH - EVENT_DUPLICATES)
            .map(|_| {
                next += 1;
                format!("ev-{seed}-{next}")
            })
            .collect();
        for _ in 0..EVENT_DUPLICATES.min(sent.len()) {
            keys.push(sent[rng.random_range(0..sent.len())].clone());
        }
        keys.append(&mut retry);
        let events: Vec<Value> = keys
            .iter()
            .map(|k| {
                json!({"customer": EVENTS_CUSTOMER.0, "feature": "search",
                "quantity": 1, "occurred_at_ms": now_ms(), "idempotency_key": k})
            })
            .collect();
        let body = json!({"events": events});
        match post_events(shared, &client, &url, &body, &keys) {
            Some(again) => retry = again,
            None => lock(&shared.counts)
                .events_given_up
                .extend(keys.iter().cloned()),
        }
        sent.extend(keys);
        thread::sleep(EVENT_PAUSE);
    }
    let mut counts = lock(&shared.counts);
    counts.events_given_up.extend(retry);
    let accepted = counts.events_accepted.clone();
    counts.events_given_up.retain(|k| !accepted.contains(k));
}

/// Sends one batch until it is answered 200 (at most [`RETRIES`] times) and counts the
/// results; the keys of the events rejected with an answer that says to retry them, or
/// `None` when it gave up on the batch.
fn post_events(
    shared: &Shared,
    client: &reqwest::blocking::Client,
    url: &str,
    body: &Value,
    keys: &[String],
) -> Option<Vec<String>> {
    for _ in 0..RETRIES {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let answer = client
            .post(url)
            .bearer_auth(&shared.billing_token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .ok()
            .filter(|r| r.status().as_u16() == 200)
            .and_then(|r| r.json::<Value>().ok());
        let Some(answer) = answer else {
            lock(&shared.counts).event_batch_failures += 1;
            thread::sleep(ERROR_PAUSE * 4);
            continue;
        };
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        let mut counts = lock(&shared.counts);
        let mut again = Vec::new();
        for (result, key) in results.iter().zip(keys) {
            let status = result["status"].as_str().unwrap_or("?").to_string();
            if status == "burned" || status == "duplicate" {
                counts.events_accepted.insert(key.clone());
            }
            let message = result["error"]["message"].as_str().unwrap_or_default();
            if status == "rejected" && message.contains("retry") {
                again.push(key.clone());
            }
            *counts.event_results.entry(status).or_default() += 1;
        }
        return Some(again);
    }
    None
}

/// Grants a few credits to a random customer every [`GRANT_PAUSE`] until stopped; a failed
/// call is retried under the same idempotency key.
fn grant_worker(shared: &Shared, seed: u64) {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let customers = SoakStack::customers();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        thread::sleep(GRANT_PAUSE);
        n += 1;
        let (customer, opening) = customers[rng.random_range(0..customers.len())];
        let amount = if opening < 1_000 { 20 } else { 1_000 };
        let url = format!("{}/v1/admin/customers/{customer}/grants", shared.admin_url);
        let idem = format!("soak-grant-{seed}-{n}");
        let body = grant_body(amount);
        let granted = (0..RETRIES).any(|_| {
            if shared.stop.load(Ordering::SeqCst) {
                return false;
            }
            let (status, _) = admin_post(&client, &url, &shared.admin_token, &idem, &body);
            let ok = (200..300).contains(&status);
            if !ok {
                lock(&shared.counts).grant_failures += 1;
                thread::sleep(ERROR_PAUSE * 4);
            }
            ok
        });
        let mut counts = lock(&shared.counts);
        if granted {
            let entry = counts.grants_ok.entry(customer.to_string()).or_default();
            entry.0 += 1;
            entry.1 += amount;
        } else {
            counts.grants_given_up += 1;
        }
    }
}
