//! Usage events from the product, end to end: the real sidecar (SQLite ledger, pricing
//! config) on a real Redis burns them through the same scripts as gateway traffic; the
//! ledger orders them by event time, duplicates burn once, late events are rejected.
//! Events are posted to the admin listener with a `billing` token, as the product would.
//!
//! Needs `redis-server` and a built sidecar (`cargo build -p creditgate-sidecar`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use creditgate_sidecar::ledger::{
    EntryKind, EntryQuery, LedgerEntries, LedgerPricingVersions, SqliteLedger,
};
use creditgate_testkit::{
    ALICE, Credits, LedgerTarget, RedisServer, Sidecar, SidecarOptions, add_admin_listener,
    base_config, create_admin_token, now_ms, wait_for_admin_api,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Price of one unit of the `export` feature in the test config.
const EXPORT_PRICE: i64 = 2;
/// Credits granted before the events: less than they cost, so later events go into
/// overdraft.
const GRANTED: i64 = 1_000;

/// Token names of the test, each with the role of the same name.
const TOKEN_ROLES: [&str; 3] = ["billing", "admin", "support"];

/// The test's pricing config, with `export` at `export_price` credits per unit.
fn pricing_config(export_price: i64) -> String {
    let unused: SocketAddr = "127.0.0.1:9".parse().expect("address");
    base_config(unused)
        + &format!(
            r#"
[features.export]
credit_type = "api"
cost = {{ kind = "fixed", amount = {export_price} }}

[features.chat]
credit_type = "api"
cost = {{ kind = "from_response", estimate = 10, max = 100, usage = {{ "usage.total_tokens" = 1 }} }}
"#
        )
}

struct EventStack {
    sidecar: Sidecar,
    credits: Credits,
    http: reqwest::blocking::Client,
    ledger_path: std::path::PathBuf,
    /// The pricing config the sidecar watches.
    config_path: std::path::PathBuf,
    /// The admin API's base URL.
    admin_url: String,
    /// Token by name (= role).
    tokens: std::collections::BTreeMap<&'static str, String>,
    _dir: tempfile::TempDir,
    redis: RedisServer,
}

impl EventStack {
    fn start() -> Self {
        let redis = RedisServer::start().expect("redis");
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("pricing.toml");
        std::fs::write(&config_path, pricing_config(EXPORT_PRICE)).expect("write config");
        let ledger_path = dir.path().join("ledger.db");
        let target = LedgerTarget::Sqlite(ledger_path.clone());
        let tokens = TOKEN_ROLES
            .into_iter()
            .map(|role| {
                let token =
                    create_admin_token(&target, dir.path(), role, role).expect("token create");
                (role, token)
            })
            .collect();
        let mut options = SidecarOptions::new(redis.url(), target);
        options.extra_args = vec!["--config".into(), config_path.display().to_string()];
        let admin_url = add_admin_listener(&mut options, dir.path()).expect("admin listener");
        let sidecar = Sidecar::start(options).expect("sidecar");
        let credits = Credits::connect(&redis.url()).expect("credits");
        let stack = Self {
            sidecar,
            credits,
            // A fresh connection per call: a pooled one the sidecar closed while idle was
            // once reset under a POST (a transport flake, not an answer of the API).
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            ledger_path,
            config_path,
            admin_url,
            tokens,
            _dir: dir,
            redis,
        };
        wait_for_admin_api(&stack.admin_url, Duration::from_secs(10)).expect("admin listener");
        stack
    }

    /// The pricing versions recorded in the ledger, waiting until there are `n`.
    fn wait_recorded_versions(
        &self,
        n: usize,
    ) -> Vec<creditgate_sidecar::ledger::ConfigVersionRecord> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ledger = runtime
            .block_on(SqliteLedger::open(&self.ledger_path))
            .expect("ledger");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let versions = runtime
                .block_on(ledger.config_versions_after(0))
                .expect("config versions");
            if versions.len() >= n || Instant::now() > deadline {
                return versions;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ledger's burns (`hold_posted`) of `customer`, waiting until there are `n`.
    fn wait_burns(&self, customer: &str, n: usize) -> Vec<(i64, String)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ledger = runtime
            .block_on(SqliteLedger::open(&self.ledger_path))
            .expect("ledger");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = runtime
                .block_on(ledger.entries(&EntryQuery {
                    customer: Some(customer.into()),
                    kinds: vec![EntryKind::HoldPosted],
                    ..EntryQuery::default()
                }))
                .expect("entries");
            if entries.len() >= n || Instant::now() > deadline {
                return entries
                    .iter()
                    .map(|e| {
                        (
                            e.entry.amount,
                            e.entry.pricing_version.clone().unwrap_or_default(),
                        )
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Posts a batch as the product's backend (a `billing` token).
    fn post(&self, body: &Value) -> (u16, Value) {
        self.post_to(&self.admin_url, Some("billing"), body)
    }

    /// Posts a batch to the listener at `base` with the token named `who`, if any.
    fn post_to(&self, base: &str, who: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{base}/v1/usage-events"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(who) = who {
            request = request.bearer_auth(&self.tokens[who]);
        }
        let response = request.send().expect("POST /v1/usage-events");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }
}

fn event(key: &str, occurred_at_ms: u64) -> Value {
    json!({"customer": ALICE, "feature": "export", "quantity": 1,
        "occurred_at_ms": occurred_at_ms, "idempotency_key": key,
        "metadata": {"job": "nightly-export"}})
}

#[test]
fn a_thousand_events_with_duplicates_and_late_arrivals_burn_once_in_event_time_order() {
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    std::thread::sleep(Duration::from_millis(5));
    // 900 distinct events 100 ms apart, starting just after the grant.
    let base = now_ms();
    let mut events: Vec<(String, u64)> = (0..900u64)
        .map(|i| (format!("export-{i}"), base + i * 100))
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    // 50 arrive out of order: moved to random later positions.
    for _ in 0..50 {
        let from = rng.random_range(0..events.len() - 1);
        let to = rng.random_range(from + 1..events.len());
        let moved = events.remove(from);
        events.insert(to, moved);
    }
    // 100 duplicates of already sent events, interleaved.
    for _ in 0..100 {
        let at = rng.random_range(1..events.len());
        let copy = events[rng.random_range(0..at)].clone();
        events.insert(at, copy);
    }
    assert_eq!(events.len(), 1_000);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut overdraft = 0;
    for batch in events.chunks(250) {
        let body = json!({"events": batch.iter().map(|(k, t)| event(k, *t)).collect::<Vec<_>>()});
        let (status, answer) = stack.post(&body);
        assert_eq!(status, 200, "{answer}");
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), batch.len(), "one result per event");
        for (result, (key, _)) in results.iter().zip(batch) {
            assert_eq!(
                result["idempotency_key"],
                key.as_str(),
                "results in request order"
            );
            *statuses
                .entry(result["status"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            if result["overdraft"] == true {
                overdraft += 1;
            }
        }
    }
    assert_eq!(statuses.get("burned"), Some(&900), "{statuses:?}");
    assert_eq!(statuses.get("duplicate"), Some(&100), "{statuses:?}");
    // 1 000 credits cover 500 events; the other 400 burned into overdraft and say so.
    assert_eq!(overdraft, 400);
    // The sidecar's /metrics count the same.
    let metric = |name: &str| stack.sidecar.metric(name, &[]);
    assert_eq!(metric("creditgate_usage_events_accepted_total"), 900.0);
    assert_eq!(metric("creditgate_usage_events_duplicate_total"), 100.0);
    assert_eq!(metric("creditgate_usage_events_overdraft_total"), 400.0);
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED - 900 * EXPORT_PRICE, 0)
    );

    // The ledger: 900 posted entries, stamped with their event times and read back in
    // event-time order although 50 arrived late.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ledger = runtime
        .block_on(SqliteLedger::open(&stack.ledger_path))
        .expect("ledger");
    let query = |seq_order| EntryQuery {
        customer: Some(ALICE.into()),
        kinds: vec![EntryKind::HoldPosted],
        seq_order,
        ..EntryQuery::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let by_time = loop {
        let entries = runtime
            .block_on(ledger.entries(&query(false)))
            .expect("entries");
        if entries.len() == 900 || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(by_time.len(), 900, "{}", stack.sidecar.log_tail(20));
    let times: Vec<u64> = by_time.iter().map(|e| e.entry.event_at_ms).collect();
    let expected: Vec<u64> = (0..900u64).map(|i| base + i * 100).collect();
    assert_eq!(
        times, expected,
        "ordered by event time, each at its own time"
    );
    let by_seq: Vec<u64> = runtime
        .block_on(ledger.entries(&query(true)))
        .expect("entries")
        .iter()
        .map(|e| e.entry.event_at_ms)
        .collect();
    assert!(
        by_seq.windows(2).any(|w| w[0] > w[1]),
        "arrival order differs from event order"
    );

    // Balance at an instant counts the events that happened by then, whatever their arrival.
    let at = base + 449 * 100 + 50;
    let balance: Value = serde_json::from_str(
        &stack
            .sidecar
            .get_ok(&format!("/v1/customers/{ALICE}/balance?at_ms={at}")),
    )
    .expect("balance JSON");
    let api = balance["types"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["credit_type"] == "api"))
        .expect("api balance");
    assert_eq!(api["total"], GRANTED - 450 * EXPORT_PRICE, "{balance}");
}

#[test]
fn a_batch_answers_per_event_and_rejects_old_and_bad_events_by_field() {
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    let now = now_ms();
    let eight_days_ago = now - 8 * 86_400_000;
    let body = json!({"events": [
        event("ok-1", now - 1_000),
        event("old-1", eight_days_ago),
        {"customer": ALICE, "feature": "export", "quantity": "three", "occurred_at_ms": now, "idempotency_key": "bad-1"},
        {"customer": ALICE, "feature": "nope", "quantity": 1, "occurred_at_ms": now, "idempotency_key": "bad-2"},
        {"customer": ALICE, "feature": "chat", "quantity": 1, "occurred_at_ms": now, "idempotency_key": "bad-3"},
        event("ok-1", now - 1_000),
        event("ok-2", now - 2_000),
    ]});
    let (status, answer) = stack.post(&body);
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    let summary: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or("?"),
                r["error"]["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("burned", ""),
            ("rejected", "events[1].occurred_at_ms"),
            ("rejected", "events[2].quantity"),
            ("rejected", "events[3].feature"),
            ("rejected", "events[4].feature"),
            ("duplicate", ""),
            ("burned", ""),
        ],
        "{answer}"
    );
    let old = results[1]["error"]["message"].as_str().expect("message");
    assert!(
        old.contains("late window of 7 days (604800000 ms)"),
        "{old}"
    );
    assert_eq!(
        (answer["burned"].as_u64(), answer["rejected"].as_u64()),
        (Some(2), Some(4))
    );
    // /metrics: two accepted, one duplicate, the rejections by reason, no overdraft.
    let metric = |name: &str, labels: &[(&str, &str)]| stack.sidecar.metric(name, labels);
    assert_eq!(metric("creditgate_usage_events_accepted_total", &[]), 2.0);
    assert_eq!(metric("creditgate_usage_events_duplicate_total", &[]), 1.0);
    assert_eq!(metric("creditgate_usage_events_overdraft_total", &[]), 0.0);
    for (reason, count) in [
        ("too_late", 1.0),
        ("invalid", 1.0),
        ("unknown_feature", 1.0),
        ("unpriceable", 1.0),
        ("in_the_future", 0.0),
        ("key_reused", 0.0),
        ("unavailable", 0.0),
    ] {
        assert_eq!(
            metric(
                "creditgate_usage_events_rejected_total",
                &[("reason", reason)]
            ),
            count,
            "{reason}"
        );
    }
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED - 2 * EXPORT_PRICE, 0),
        "only the two good events burned"
    );

    // A malformed body is a 400 naming the field.
    let (status, answer) = stack.post(&json!({"event": []}));
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "events", "{answer}");
}

#[test]
fn usage_events_need_a_billing_or_admin_token_on_the_admin_listener() {
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    let now = now_ms();
    let batch = |key: &str| json!({"events": [event(key, now - 1_000)]});
    // The unauthenticated listener no longer takes usage events.
    let open = stack.sidecar.url();
    assert_eq!(stack.post_to(&open, None, &batch("open-1")).0, 404);
    // No token: 401; a support token: 403 naming the header.
    assert_eq!(
        stack.post_to(&stack.admin_url, None, &batch("anon-1")).0,
        401
    );
    let (status, answer) = stack.post_to(&stack.admin_url, Some("support"), &batch("support-1"));
    assert_eq!(
        (status, answer["field"].as_str()),
        (403, Some("Authorization")),
        "{answer}"
    );
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED, 0),
        "nothing burned by the refused calls"
    );
    // billing and admin may.
    for who in ["billing", "admin"] {
        let (status, answer) =
            stack.post_to(&stack.admin_url, Some(who), &batch(&format!("{who}-1")));
        assert_eq!(
            (status, answer["burned"].as_u64()),
            (200, Some(1)),
            "{answer}"
        );
    }
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED - 2 * EXPORT_PRICE, 0)
    );
    // A full batch is larger than the admin API's 64 KiB limit for its other calls; the
    // usage-events route takes it (one key 1,000 times: burned once).
    let full = json!({"events": vec![event("full-batch", now - 1_000); 1_000]});
    assert!(full.to_string().len() > 64 * 1024);
    let (status, answer) = stack.post(&full);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["burned"].as_u64(), answer["duplicates"].as_u64()),
        (Some(1), Some(999))
    );
}

#[test]
fn an_event_is_priced_by_the_version_in_force_at_its_event_time() {
    const NEW_PRICE: i64 = 5;
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    let first = stack.wait_recorded_versions(1);
    assert_eq!(first.len(), 1, "{}", stack.sidecar.log_tail(20));
    // Usage that happened under the first version, reported only after the price change.
    std::thread::sleep(Duration::from_millis(5));
    let before_change = now_ms();
    std::thread::sleep(Duration::from_millis(5));
    std::fs::write(&stack.config_path, pricing_config(NEW_PRICE)).expect("edit the config");
    let versions = stack.wait_recorded_versions(2);
    assert_eq!(versions.len(), 2, "{}", stack.sidecar.log_tail(20));
    let (v1, v2) = (&versions[0], &versions[1]);
    assert_eq!((v1.version, v2.version), (1, 2));
    assert!(v1.published_at_ms < before_change && before_change < v2.published_at_ms);
    assert!(
        v2.toml.contains(&format!("amount = {NEW_PRICE}")),
        "the text is kept"
    );
    std::thread::sleep(Duration::from_millis(5));
    let after_change = now_ms();
    let (status, answer) = stack.post(&json!({"events": [
        event("before-change", before_change),
        event("after-change", after_change),
    ]}));
    assert_eq!(status, 200, "{answer}");
    let charged: Vec<(i64, &str)> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["amount"].as_i64().unwrap_or(-1),
                r["pricing_version"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        charged,
        [
            (EXPORT_PRICE, v1.version_label.as_str()),
            (NEW_PRICE, v2.version_label.as_str())
        ],
        "{answer}"
    );
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED - EXPORT_PRICE - NEW_PRICE, 0)
    );
    // The burns in the ledger carry the version that priced them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ledger = runtime
        .block_on(SqliteLedger::open(&stack.ledger_path))
        .expect("ledger");
    let deadline = Instant::now() + Duration::from_secs(10);
    let burns = loop {
        let entries = runtime
            .block_on(ledger.entries(&EntryQuery {
                customer: Some(ALICE.into()),
                kinds: vec![EntryKind::HoldPosted],
                ..EntryQuery::default()
            }))
            .expect("entries");
        if entries.len() == 2 || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut burned: Vec<(u64, i64, String)> = burns
        .iter()
        .map(|e| {
            (
                e.entry.event_at_ms,
                e.entry.amount,
                e.entry.pricing_version.clone().unwrap_or_default(),
            )
        })
        .collect();
    burned.sort();
    assert_eq!(
        burned,
        [
            (before_change, -EXPORT_PRICE, v1.version_label.clone()),
            (after_change, -NEW_PRICE, v2.version_label.clone())
        ]
    );
}

#[test]
fn a_cohort_pinned_customer_burns_at_the_cohort_price_under_the_cohort_version() {
    const COHORT_PRICE: i64 = 1;
    const EARLY: &str = "early-bird";
    let stack = EventStack::start();
    let cohort = format!(
        r#"
[cohorts.launch_2025]
description = "customers who signed before the price change"
costs = {{ export = {{ kind = "fixed", amount = {COHORT_PRICE} }} }}
customers = ["{EARLY}"]
"#
    );
    std::fs::write(
        &stack.config_path,
        pricing_config(EXPORT_PRICE + 1) + &cohort,
    )
    .expect("edit the config");
    let versions = stack.wait_recorded_versions(2);
    assert_eq!(versions.len(), 2, "{}", stack.sidecar.log_tail(20));
    let label = versions[1].version_label.clone();
    stack.credits.grant(EARLY, GRANTED as u64).expect("grant");
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    std::thread::sleep(Duration::from_millis(5));
    let at = now_ms();
    let mut early = event("pinned-1", at);
    early["customer"] = json!(EARLY);
    let (status, answer) = stack.post(&json!({"events": [early, event("new-1", at)]}));
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    let pinned = format!("{label}@launch_2025");
    assert_eq!(
        (
            results[0]["amount"].as_i64(),
            results[0]["pricing_version"].as_str()
        ),
        (Some(COHORT_PRICE), Some(pinned.as_str())),
        "{answer}"
    );
    assert_eq!(
        (
            results[1]["amount"].as_i64(),
            results[1]["pricing_version"].as_str()
        ),
        (Some(EXPORT_PRICE + 1), Some(label.as_str())),
        "{answer}"
    );
    // The ledger's burns record the same versions as the gateway's would.
    assert_eq!(stack.wait_burns(EARLY, 1), [(-COHORT_PRICE, pinned)]);
    assert_eq!(stack.wait_burns(ALICE, 1), [(-(EXPORT_PRICE + 1), label)]);
}

#[test]
fn with_redis_down_each_event_is_rejected_by_its_indexed_key_and_a_retry_burns_once() {
    let mut stack = EventStack::start();
    let at = now_ms();
    let batch = json!({"events": [event("down-0", at), event("down-1", at + 1)]});
    stack.redis.stop();
    let (status, answer) = stack.post(&batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"], 2, "{answer}");
    for (i, result) in answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .enumerate()
    {
        assert_eq!(result["status"], "rejected", "{answer}");
        assert_eq!(
            result["error"]["field"],
            format!("events[{i}].idempotency_key"),
            "{answer}"
        );
        let message = result["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("retry the event"), "{message}");
    }
    // Redis back (empty): the product retries the same batch; each event burns once.
    stack.redis.restart().expect("redis restart");
    let credits = Credits::connect(&stack.redis.url()).expect("credits");
    credits.grant(ALICE, GRANTED as u64).expect("grant");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let (status, answer) = stack.post(&batch);
        assert_eq!(status, 200, "{answer}");
        if answer["rejected"] == 0 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer["burned"], 2, "{answer}");
    let (_, again) = stack.post(&batch);
    assert_eq!(
        (again["burned"].clone(), again["duplicates"].clone()),
        (json!(0), json!(2)),
        "{again}"
    );
    assert_eq!(
        credits.balance(ALICE).expect("balance"),
        (GRANTED - 2 * EXPORT_PRICE, 0)
    );
    let burns = stack.wait_burns(ALICE, 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(burns.len(), 2, "{burns:?}");
    assert_eq!(stack.wait_burns(ALICE, 3).len(), 2, "nothing burned twice");
}

/// The sidecar's store, seen from the test: to play a first attempt whose settle failed.
fn test_store(rt: &tokio::runtime::Runtime, url: &str) -> creditgate_protocol::RedisStore {
    use creditgate_protocol::{Keyspace, RedisStore, RedisTarget};
    rt.block_on(RedisStore::connect(
        &RedisTarget::Single(url.to_string()),
        Keyspace::new("cg", 16),
        2_000,
    ))
    .expect("connect the store")
}

#[test]
fn a_settle_that_failed_is_burned_by_the_retry_after_its_hold_expired_and_once() {
    use creditgate_protocol::meter::{USAGE_EVENT_PREFIX, idempotent_hold_id};
    use creditgate_protocol::{CreditStore, HoldRef, HoldState, ReserveRequest};
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = test_store(&rt, &stack.redis.url());
    // The first attempt of event `job-7` reserved its hold (as the sidecar does) and then
    // its settle failed (Redis paused, a timeout): the hold expires unsettled.
    let at = now_ms();
    let hold = HoldRef {
        customer: ALICE.into(),
        hold_id: idempotent_hold_id(USAGE_EVENT_PREFIX, ALICE, "job-7"),
    };
    let first = ReserveRequest {
        customer: ALICE.into(),
        hold_id: hold.hold_id.clone(),
        credit_type: "api".into(),
        amount: EXPORT_PRICE as u64,
        ttl_ms: 1,
        overdraft_limit: 0,
        force: true,
        request_id: "usage-event:job-7".into(),
        route: "usage-events".into(),
        feature: "export".into(),
        retain_ms: 86_400_000,
        pricing_version: String::new(),
        occurred_at_ms: Some(at),
    };
    rt.block_on(store.reserve(&first)).expect("reserve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt
        .block_on(store.hold(&hold))
        .expect("hold")
        .is_some_and(|h| h.state == HoldState::Pending)
    {
        assert!(Instant::now() < deadline, "the sweeper expired the hold");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED, 0),
        "the expiry gave the hold back"
    );

    // The product retries: the expired hold is burned late, once.
    let batch = json!({"events": [event("job-7", at)]});
    let (status, answer) = stack.post(&batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], "burned", "{answer}");
    assert_eq!(answer["results"][0]["amount"], EXPORT_PRICE, "{answer}");
    // Every later retry is a duplicate, and only once the ledger has the burn.
    for _ in 0..3 {
        let (_, again) = stack.post(&batch);
        assert_eq!(again["results"][0]["status"], "duplicate", "{again}");
        let burns = stack.wait_burns(ALICE, 0);
        assert_eq!(burns.len(), 1, "in the ledger when answered duplicate");
    }
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (GRANTED - EXPORT_PRICE, 0)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stack.wait_burns(ALICE, 2).len(), 1, "burned once");
}

/// The ledger's entries of `customer` of `kind`, with their request ids.
fn ledger_entries(stack: &EventStack, customer: &str, kind: EntryKind) -> Vec<Option<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ledger = runtime
        .block_on(SqliteLedger::open(&stack.ledger_path))
        .expect("ledger");
    let entries = runtime.block_on(ledger.entries(&EntryQuery {
        customer: Some(customer.into()),
        kinds: vec![kind],
        ..EntryQuery::default()
    }));
    let entries = entries.expect("entries");
    entries.into_iter().map(|e| e.entry.request_id).collect()
}

/// Runs one statement on the SQLite ledger with the `sqlite3` tool, waiting for the lock.
fn sqlite3(path: &std::path::Path, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 20000")
        .arg(path)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sqlite3 {sql}: {stderr}");
}

/// Keeps the writer from recording anything while it lives: a trigger aborts every insert
/// into the ledger's entries (the `usage_events` table still takes rows), so burns stay in
/// Redis's streams only, as they are between a burn and the writer's next read.
struct WriterHeldBack(std::path::PathBuf);

impl WriterHeldBack {
    fn start(path: &std::path::Path) -> Self {
        sqlite3(
            path,
            "CREATE TRIGGER test_hold_back BEFORE INSERT ON ledger_entries \
             BEGIN SELECT RAISE(ABORT, 'the writer is held back (test)'); END;",
        );
        Self(path.to_path_buf())
    }
}

impl Drop for WriterHeldBack {
    fn drop(&mut self) {
        sqlite3(&self.0, "DROP TRIGGER IF EXISTS test_hold_back;");
    }
}

/// Events answered `burned` whose burn Redis loses (`FLUSHALL`) before the writer records
/// it: the ledger has their `usage_events` rows, and the data-loss rebuild burns each again,
/// once; the product's retries are then duplicates and burn nothing more.
#[test]
fn events_whose_burn_redis_lost_before_the_ledger_read_it_are_burned_again_once() {
    let stack = EventStack::start();
    stack.credits.grant(ALICE, GRANTED as u64).expect("grant");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger_entries(&stack, ALICE, EntryKind::GrantAdded).is_empty()
        || stack
            .redis
            .cli(&["GET", "cg:{s0}:generation"])
            .unwrap_or_default()
            == ""
    {
        assert!(
            Instant::now() < deadline,
            "the grant reached the ledger and markers are set"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let held_back = WriterHeldBack::start(&stack.ledger_path);
    let at = now_ms();
    let batch = json!({"events": [event("lost-1", at), event("lost-2", at)]});
    let (status, answer) = stack.post(&batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["burned"], 2, "{answer}");
    // Redis loses the burns before the writer has recorded them.
    stack.redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
    drop(held_back);

    let expected = (GRANTED - 2 * EXPORT_PRICE, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let burns = ledger_entries(&stack, ALICE, EntryKind::HoldPosted);
        let balance = stack.credits.balance(ALICE).unwrap_or_default();
        if burns.len() >= 2 && balance == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost burns are burned again: ledger burns {burns:?}, Redis {balance:?}, \
             expected {expected:?}\n{}",
            stack.sidecar.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The product retries; nothing burns twice.
    let (status, again) = stack.post(&batch);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicates"], 2, "{again}");
    std::thread::sleep(Duration::from_millis(500));
    let mut burns = ledger_entries(&stack, ALICE, EntryKind::HoldPosted);
    burns.sort();
    let once = vec![
        Some("usage-event:lost-1".to_string()),
        Some("usage-event:lost-2".to_string()),
    ];
    assert_eq!(burns, once, "each lost event burned once");
    assert_eq!(stack.credits.balance(ALICE).expect("balance"), expected);
}
