//! An `Idempotency-Key` binds to one request, end to end: the real gateway binary on a real
//! Redis in front of a counting upstream (and, for the ledger, the real sidecar).
//!
//! Another request under a charged key is refused (422) and never reaches the upstream;
//! the identical request is served again uncharged only as often, and only as long, as its
//! route allows (`x-creditgate-replay: N`), then refused (409, naming the charged request);
//! a key whose record is gone is a new request, charged under a new hold id, so the ledger
//! holds two burns under two event ids.
//!
//! Needs `redis-server` and the built binaries:
//! `cargo build -p creditgate-gateway -p creditgate-sidecar`.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use creditgate_protocol::Keyspace;
use creditgate_protocol::meter::{GATEWAY_IDEMPOTENT_PREFIX, idempotent_hold_id};
use creditgate_sidecar::ledger::EntryKind;
use creditgate_testkit::{
    ALICE, ALICE_KEY, Backend, Gateway, GatewayOptions, LedgerHarness, PREFIX, SHARDS, Stack,
    Upstream, base_config, grant_request, http_client,
};
use serde_json::Value;
use sha2::Digest;

/// The test config: `search` (1 credit) on three POST routes with the default replay
/// allowance (3 within 10 minutes), none (`/render`), and a 300 ms window (`/brief`).
fn config(upstream: SocketAddr) -> String {
    let mut config = base_config(upstream);
    config.push_str(
        r#"
[[routes]]
method = "POST"
path = "/search"
feature = "search"

[[routes]]
method = "POST"
path = "/other"
feature = "search"

[[routes]]
method = "POST"
path = "/render"
feature = "search"
idempotency = { replays = 0 }

[[routes]]
method = "POST"
path = "/brief"
feature = "search"
idempotency = { replay_window_ms = 300 }
"#,
    );
    config
}

/// One answer: status, the headers the test reads, and the JSON body (`Null` if none).
#[derive(Debug)]
struct Answer {
    status: u16,
    request_id: String,
    charged: Option<String>,
    replay: Option<String>,
    body: Value,
}

/// `POST path` through `gateway` as Alice with `Idempotency-Key: key` and `body`.
fn post(gateway: &Gateway, path: &str, key: &str, body: &str) -> Answer {
    let reply = http_client()
        .post(format!("{}{path}", gateway.proxy_url()))
        .bearer_auth(ALICE_KEY)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("the gateway answers");
    let header = |name: &str| {
        reply
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (request_id, charged, replay) = (
        header("x-request-id").unwrap_or_default(),
        header("x-credits-charged"),
        header("x-creditgate-replay"),
    );
    let status = reply.status().as_u16();
    let text = reply.text().unwrap_or_default();
    Answer {
        status,
        request_id,
        charged,
        replay,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// A stack with 10 credits for Alice.
fn stack() -> Stack {
    let stack = Stack::start(config).expect("stack starts");
    stack.credits.grant(ALICE, 10).expect("grant");
    stack
}

/// Alice's available credits once nothing is held any more.
fn settled(stack: &Stack) -> i64 {
    let (available, held) = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(held, 0, "every hold resolved");
    available
}

#[test]
fn another_body_or_route_under_a_charged_key_is_422_and_never_reaches_the_upstream() {
    let stack = stack();
    let first = post(&stack.gateway, "/search", "k-other", r#"{"q":"a"}"#);
    assert_eq!(
        (first.status, first.charged.as_deref()),
        (200, Some("1")),
        "{first:?}"
    );
    assert_eq!(settled(&stack), 9);
    // Another body of the same length, another body, another route of the same price,
    // another query: each is another request.
    for (path, body) in [
        ("/search", r#"{"q":"b"}"#),
        ("/search", r#"{"q":"a","n":2}"#),
        ("/other", r#"{"q":"a"}"#),
        ("/search?page=2", r#"{"q":"a"}"#),
    ] {
        let reused = post(&stack.gateway, path, "k-other", body);
        assert_eq!(reused.status, 422, "{path} {body}: {reused:?}");
        assert_eq!(reused.body["error"], "idempotency_key_reused");
        assert_eq!(
            reused.body["original_request_id"],
            first.request_id.as_str()
        );
    }
    assert_eq!(
        stack.upstream.count(),
        1,
        "only the charged request went up"
    );
    assert_eq!(settled(&stack), 9);
}

#[test]
fn identical_replays_are_served_uncharged_three_times_then_409() {
    let stack = stack();
    let body = r#"{"q":"same"}"#;
    let first = post(&stack.gateway, "/search", "k-same", body);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.replay, None);
    assert_eq!(settled(&stack), 9);
    for n in 1..=3 {
        let replay = post(&stack.gateway, "/search", "k-same", body);
        assert_eq!(
            (
                replay.status,
                replay.charged.as_deref(),
                replay.replay.as_deref()
            ),
            (200, Some("0"), Some(n.to_string().as_str())),
            "replay {n}: {replay:?}"
        );
    }
    assert_eq!(stack.upstream.count(), 4);
    // The body the gateway read to fingerprint went up whole, every time.
    let sent = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    for request in stack.upstream.requests() {
        assert_eq!(
            (request.body_len, request.body_sha256.as_str()),
            (body.len(), sent.as_str())
        );
    }
    let fourth = post(&stack.gateway, "/search", "k-same", body);
    assert_eq!(fourth.status, 409, "{fourth:?}");
    assert_eq!(fourth.body["error"], "idempotency_replays_exhausted");
    assert_eq!(
        fourth.body["original_request_id"],
        first.request_id.as_str()
    );
    assert_eq!(
        stack.upstream.count(),
        4,
        "the refused replay never went up"
    );
    assert_eq!(settled(&stack), 9, "charged once");
    // A route whose upstream work is expensive allows no replay at all.
    let render = post(&stack.gateway, "/render", "k-render", body);
    assert_eq!(render.status, 200, "{render:?}");
    assert_eq!(settled(&stack), 8);
    let again = post(&stack.gateway, "/render", "k-render", body);
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(stack.upstream.count(), 5);
}

/// A body larger than the gateway reads to fingerprint is passed on untouched, and
/// its request is never replayed uncharged: two bodies of one length would look the same.
#[test]
fn a_body_too_large_to_fingerprint_goes_up_whole_and_is_never_replayed() {
    let stack = stack();
    let body = format!(r#"{{"q":"{}"}}"#, "x".repeat(100 * 1024));
    let first = post(&stack.gateway, "/search", "k-large", &body);
    assert_eq!(first.status, 200, "{first:?}");
    let request = stack.upstream.last_request().expect("it went up");
    assert_eq!(request.body_len, body.len());
    assert_eq!(settled(&stack), 9);
    let again = post(&stack.gateway, "/search", "k-large", &body);
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(stack.upstream.count(), 1);
    assert_eq!(settled(&stack), 9);
}

#[test]
fn a_replay_after_the_window_is_409() {
    let stack = stack();
    let body = r#"{"q":"brief"}"#;
    let first = post(&stack.gateway, "/brief", "k-window", body);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(settled(&stack), 9);
    thread::sleep(Duration::from_millis(500));
    let late = post(&stack.gateway, "/brief", "k-window", body);
    assert_eq!(late.status, 409, "{late:?}");
    assert_eq!(late.body["original_request_id"], first.request_id.as_str());
    assert_eq!(stack.upstream.count(), 1);
    assert_eq!(settled(&stack), 9);
}

#[test]
fn a_key_whose_record_is_gone_is_a_new_request_with_its_own_hold_in_the_ledger() {
    let h = LedgerHarness::start(Backend::Sqlite);
    let upstream = Upstream::start().expect("upstream");
    let gateway = Gateway::start(GatewayOptions {
        config_toml: config(upstream.addr()),
        redis_url: Some(h.redis.url()),
        ..GatewayOptions::default()
    })
    .expect("gateway starts");
    h.grant(&grant_request(ALICE, "g-alice", "api", 10, None, 0));
    let body = r#"{"q":"gone"}"#;
    let first = post(&gateway, "/search", "k-gone", body);
    assert_eq!(first.status, 200, "{first:?}");
    let settled = || {
        for _ in 0..250 {
            if h.redis_available_held(ALICE, "api").1 == 0 {
                return h.redis_available_held(ALICE, "api").0;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "holds still pending: {:?}",
            h.redis_available_held(ALICE, "api")
        );
    };
    assert_eq!(settled(), 9);
    let record_id = idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, ALICE, "k-gone");
    let record = Keyspace::new(PREFIX, SHARDS).idempotency_record(ALICE, &record_id);
    let client = redis::Client::open(h.redis.url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&record)
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(deleted, 1, "the key's record {record} existed");
    let second = post(&gateway, "/search", "k-gone", body);
    assert_eq!(
        (
            second.status,
            second.charged.as_deref(),
            second.replay.as_deref()
        ),
        (200, Some("1"), None),
        "{second:?}"
    );
    assert_eq!(settled(), 8);
    assert_eq!(upstream.count(), 2);
    let burns: Vec<(String, Option<String>)> = h
        .wait_caught_up()
        .into_iter()
        .filter(|e| e.entry.kind == EntryKind::HoldPosted && e.entry.customer == ALICE)
        .map(|e| (e.entry.event_id, e.entry.hold_id))
        .collect();
    assert_eq!(burns.len(), 2, "{burns:?}");
    assert_ne!(burns[0].0, burns[1].0, "two burns, two event ids");
    assert_ne!(burns[0].1, burns[1].1, "two burns, two hold ids");
    assert_eq!(
        h.sidecar().metric("creditgate_ledger_conflicts_total", &[]),
        0.0,
        "the ledger saw no id twice"
    );
}
