//! Nothing for free: a client's tricks against the real gateway, a real Redis, the real
//! sidecar writing a real (SQLite) ledger and a counting upstream. Every test ends with the
//! same check ([`AttackStack::assert_paid`]): each request the upstream received carries
//! the gateway's `x-request-id`, and the ledger holds a burn under that id, unless the
//! client's answer marked it as an allowed replay (`x-creditgate-replay`). A trick either
//! is refused before the upstream or its work is in the ledger.
//!
//! The first group replays the ways issue 12 found to get work for free; the second tries
//! what HTTP itself allows (header case and duplicates, `Expect`, pipelining, framing
//! conflicts, HTTP/1.0, absolute-form targets, hosts, methods, long headers). Requests whose
//! bytes matter are written raw over a socket, so no client library normalises them.
//!
//! Needs `redis-server` and built binaries (`cargo build -p creditgate-gateway -p
//! creditgate-sidecar`).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use creditgate_testkit::{
    ALICE, ALICE_KEY, AttackStack, LedgerTarget, MALLORY, MALLORY_KEY, REPLAY_HEADER,
    REQUEST_ID_HEADER, RawResponse, RecordedRequest, RedisServer, Script, ScriptedUpstream,
    Sidecar, SidecarOptions, base_config, http_client, send,
};

/// Credits a customer starts with in most tests: far more than any test spends.
const PLENTY: u64 = 10_000;

/// A balance below what the tricks' real cost is, to see whether they get in anyway.
const LOW_BALANCE: u64 = 50;

/// Units the pricing tricks ask the upstream for (`pages`, `max_tokens`): the upstream
/// reads this many, so the ledger must too.
const UNITS: i64 = 10;

/// What `GET /v1/ping` costs.
const PING_COST: i64 = 5;

/// `max_tokens` of the estimate tricks: far above [`LOW_BALANCE`].
const BIG_ESTIMATE: i64 = 900;

/// Features and routes of every test, after [`base_config`]: `POST /v1/search` and `POST
/// /v1/lookup` (1 credit each, the same price), `GET /v1/pages` (1 per `pages`, at most
/// 100, 1 page when not given), `GET /v1/ping` (5), `GET /v1/hosted` on host `api.example.test` (5), `POST
/// /v1/chat` (estimated from `max_tokens`, settled from the response), `GET /v1/open`
/// (5, fail open).
const ROUTES: &str = r#"
[features.pages]
credit_type = "api"
cost = { kind = "per_unit", query = "pages", rate = 1, max = 100, default_units = 1 }

[features.ping]
credit_type = "api"
cost = { kind = "fixed", amount = 5 }

[features.chat]
credit_type = "api"
cost = { kind = "from_response", estimate = 10, max = 1000, estimate_from = "max_tokens", estimate_rate = 1 }

[[routes]]
name = "search"
method = "POST"
path = "/v1/search"
feature = "search"

[[routes]]
name = "lookup"
method = "POST"
path = "/v1/lookup"
feature = "search"

[[routes]]
name = "pages"
method = "GET"
path = "/v1/pages"
feature = "pages"

[[routes]]
name = "ping"
method = "GET"
path = "/v1/ping"
feature = "ping"

[[routes]]
name = "hosted"
method = "GET"
host = "api.example.test"
path = "/v1/hosted"
feature = "ping"

[[routes]]
name = "chat"
method = "POST"
path = "/v1/chat"
feature = "chat"

[[routes]]
name = "open"
method = "GET"
path = "/v1/open"
feature = "ping"
failure_policy = "fail_open"
"#;

/// The test config with `unmatched` = `not_found` or `pass_through`.
fn config(upstream: SocketAddr, unmatched: &str) -> String {
    base_config(upstream).replace(
        "unmatched = \"not_found\"",
        &format!("unmatched = \"{unmatched}\""),
    ) + ROUTES
}

/// A stack on the test config with `unmatched`, Alice holding `balance` credits.
fn stack(unmatched: &str, balance: u64) -> AttackStack {
    let stack = AttackStack::start(|addr| config(addr, unmatched));
    stack.grant(ALICE, "g-alice", balance);
    stack
}

/// Asserts the paid check, and that each forwarded request burned at least `min`.
fn assert_paid_at_least(stack: &AttackStack, min: i64) {
    let forwarded = stack.upstream.requests();
    let burned = stack.assert_forwarded_paid();
    for r in &forwarded {
        let id = r.header(REQUEST_ID_HEADER).unwrap_or_default();
        let got = burned.get(id).copied().unwrap_or(0);
        assert!(
            got >= min,
            "{} {}{} reached the upstream and burned {got}, less than {min}: {r:#?}",
            r.method,
            r.path,
            r.query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
    }
}

/// A raw request: `head_lines` (request line first, without line ends), then `body`.
fn raw(head_lines: &[&str], body: &str) -> Vec<u8> {
    let mut text = head_lines.join("\r\n");
    text.push_str("\r\n\r\n");
    text.push_str(body);
    text.into_bytes()
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

fn statuses(responses: &[RawResponse]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

// ---------------------------------------------------------------------------------------
// The tricks of issue 12, "Today".
// ---------------------------------------------------------------------------------------

/// One key, one request: a second request under the key with another body must not reach
/// the upstream uncharged.
#[test]
fn idempotency_key_reused_with_another_body() {
    let stack = stack("not_found", PLENTY);
    let key = [("idempotency-key", "k-body")];
    let first = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, r#"{"q":"a"}"#);
    assert_eq!(first.status, 200, "{first:#?}");
    for q in ["b", "c", "d"] {
        let body = format!(r#"{{"q":"{q}"}}"#);
        let r = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, &body);
        assert!(
            r.header(REPLAY_HEADER).is_none(),
            "another body answered as a replay: {r:#?}"
        );
    }
    stack.assert_forwarded_paid();
}

/// A key used on another route of the same price must not carry its payment over.
#[test]
fn idempotency_key_reused_on_another_route() {
    let stack = stack("not_found", PLENTY);
    let key = [("idempotency-key", "k-route")];
    let first = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, "{}");
    assert_eq!(first.status, 200, "{first:#?}");
    let other = stack.send("POST", "/v1/lookup", Some(ALICE_KEY), &key, "{}");
    assert!(
        other.header(REPLAY_HEADER).is_none(),
        "another route answered as a replay: {other:#?}"
    );
    stack.assert_forwarded_paid();
}

/// Identical replays are proxied uncharged at most 3 times, each marked; then refused.
#[test]
fn identical_replays_are_counted_and_bounded() {
    let stack = stack("not_found", PLENTY);
    let key = [("idempotency-key", "k-same")];
    let mut replays = Vec::new();
    for _ in 0..6 {
        let r = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, "{}");
        if let Some(n) = r.header(REPLAY_HEADER) {
            assert_eq!(r.status, 200, "{r:#?}");
            replays.push(n);
        }
    }
    assert!(
        replays.len() <= 3,
        "{} replays proxied uncharged (at most 3): {replays:?}",
        replays.len()
    );
    stack.assert_forwarded_paid();
}

/// `?pages=%31%30` is 10 pages to the upstream.
#[test]
fn per_unit_percent_encoded_value() {
    let stack = stack("not_found", PLENTY);
    stack.send("GET", "/v1/pages?pages=%31%30", Some(ALICE_KEY), &[], "");
    assert_paid_at_least(&stack, UNITS);
}

/// `?%70ages=10` is 10 pages to the upstream.
#[test]
fn per_unit_percent_encoded_name() {
    let stack = stack("not_found", PLENTY);
    stack.send("GET", "/v1/pages?%70ages=10", Some(ALICE_KEY), &[], "");
    assert_paid_at_least(&stack, UNITS);
}

/// `?pages=1&pages=10`: an upstream reading the last value does 10 pages.
#[test]
fn per_unit_duplicated_parameter() {
    let stack = stack("not_found", PLENTY);
    stack.send(
        "GET",
        "/v1/pages?pages=1&pages=10",
        Some(ALICE_KEY),
        &[],
        "",
    );
    assert_paid_at_least(&stack, UNITS);
}

/// `?pages=+10`: form decoding reads ` 10`, that is 10.
#[test]
fn per_unit_plus_sign() {
    let stack = stack("not_found", PLENTY);
    stack.send("GET", "/v1/pages?pages=+10", Some(ALICE_KEY), &[], "");
    assert_paid_at_least(&stack, UNITS);
}

/// Sends `GET target` raw (no client normalises it) on a pass-through gateway.
fn pass_through_get(target: &str) -> AttackStack {
    let stack = stack("pass_through", PLENTY);
    let request_line = format!("GET {target} HTTP/1.1");
    let auth = bearer(ALICE_KEY);
    let responses = stack.raw(&raw(
        &[&request_line, "Host: 127.0.0.1", &auth, "Connection: close"],
        "",
    ));
    eprintln!("GET {target}: {:?}", statuses(&responses));
    stack
}

/// `/v1/./ping` is `/v1/ping` to most upstreams.
#[test]
fn dot_segment_path_with_pass_through() {
    let stack = pass_through_get("/v1/./ping");
    assert_paid_at_least(&stack, PING_COST);
}

/// `/v1/%70ing` is `/v1/ping` to most upstreams.
#[test]
fn percent_encoded_path_with_pass_through() {
    let stack = pass_through_get("/v1/%70ing");
    assert_paid_at_least(&stack, PING_COST);
}

/// `/v1/x/../ping` is `/v1/ping` to most upstreams.
#[test]
fn dot_dot_path_with_pass_through() {
    let stack = pass_through_get("/v1/x/../ping");
    assert_paid_at_least(&stack, PING_COST);
}

/// A `POST /v1/chat` whose body says `max_tokens` = [`BIG_ESTIMATE`], with `extra` framing
/// headers and the body framed by `body`.
fn chat_request(framing: &str, expect: Option<&str>, body: &str) -> Vec<u8> {
    let auth = bearer(ALICE_KEY);
    let mut head = vec![
        "POST /v1/chat HTTP/1.1",
        "Host: 127.0.0.1",
        auth.as_str(),
        "Content-Type: application/json",
        framing,
        "Connection: close",
    ];
    if let Some(expect) = expect {
        head.push(expect);
    }
    raw(&head, body)
}

/// The JSON body of the estimate tricks.
fn big_chat_body() -> String {
    format!(r#"{{"max_tokens":{BIG_ESTIMATE}}}"#)
}

/// A chunked body hides `max_tokens` from the estimate: with a low balance the request
/// must still be refused (or, if forwarded, burn what it asked for).
#[test]
fn chunked_body_on_estimate_route_with_low_balance() {
    let stack = stack("not_found", LOW_BALANCE);
    let json = big_chat_body();
    let body = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
    let responses = stack.raw(&chat_request("Transfer-Encoding: chunked", None, &body));
    eprintln!("chunked chat: {:?}", statuses(&responses));
    assert_paid_at_least(&stack, BIG_ESTIMATE);
}

/// The control of the chunked trick: the same body with a length is refused (402).
#[test]
fn sized_body_on_estimate_route_with_low_balance() {
    let stack = stack("not_found", LOW_BALANCE);
    let json = big_chat_body();
    let length = format!("Content-Length: {}", json.len());
    let responses = stack.raw(&chat_request(&length, None, &json));
    assert_eq!(statuses(&responses), [402], "{responses:#?}");
    assert_paid_at_least(&stack, BIG_ESTIMATE);
}

/// The config of the scripted-upstream tests: the test config plus upstream `scripted` at
/// `scripted` with the given timeouts, and `GET /v1/scripted` (5 credits) routed to it;
/// `hold_ttl_ms` as given (every upstream's timeouts fit in it).
fn scripted_config(upstream: SocketAddr, scripted: SocketAddr, hold_ttl_ms: u64) -> String {
    let timeouts = "connect_timeout_ms = 100\nread_timeout_ms = 800\n";
    config(upstream, "not_found")
        .replace(
            "[defaults]\n",
            &format!("[defaults]\nhold_ttl_ms = {hold_ttl_ms}\n"),
        )
        .replace(
            &format!("address = \"{upstream}\"\n"),
            &format!("address = \"{upstream}\"\n{timeouts}"),
        )
        + &format!(
            r#"
[upstreams.scripted]
address = "{scripted}"
{timeouts}
[[routes]]
name = "scripted"
method = "GET"
path = "/v1/scripted"
feature = "ping"
upstream = "scripted"
"#
        )
}

/// A stream that outlives its hold (1 s) by far must still be paid.
#[test]
fn request_longer_than_its_hold_ttl() {
    let scripted = ScriptedUpstream::start(Script::Drip {
        chunks: 10,
        interval: Duration::from_millis(300),
    })
    .expect("scripted upstream");
    let stack = AttackStack::start(|addr| scripted_config(addr, scripted.addr(), 1_000));
    stack.grant(ALICE, "g-alice", PLENTY);
    let started = Instant::now();
    let r = stack.send("GET", "/v1/scripted", Some(ALICE_KEY), &[], "");
    assert_eq!(r.status, 200, "{r:#?}");
    assert!(
        started.elapsed() > Duration::from_millis(2_000),
        "the stream took only {:?}",
        started.elapsed()
    );
    assert_eq!(scripted.requests().len(), 1);
    assert_paid_at_least_on(&stack, &scripted.requests(), PING_COST);
}

/// Like [`assert_paid_at_least`], on another upstream's log.
fn assert_paid_at_least_on(stack: &AttackStack, forwarded: &[RecordedRequest], min: i64) {
    let burned = stack.assert_paid(forwarded);
    for r in forwarded {
        let id = r.header(REQUEST_ID_HEADER).unwrap_or_default();
        let got = burned.get(id).copied().unwrap_or(0);
        assert!(got >= min, "{} {} burned {got} < {min}", r.method, r.path);
    }
}

/// A `101 Switching Protocols` (a WebSocket) is upstream work: paid, or refused before.
#[test]
fn upgrade_101_is_paid() {
    let scripted = ScriptedUpstream::start(Script::Upgrade).expect("scripted upstream");
    let stack = AttackStack::start(|addr| scripted_config(addr, scripted.addr(), 300_000));
    stack.grant(ALICE, "g-alice", PLENTY);
    let auth = bearer(ALICE_KEY);
    let responses = stack.raw(&raw(
        &[
            "GET /v1/scripted HTTP/1.1",
            "Host: 127.0.0.1",
            &auth,
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        "",
    ));
    eprintln!("upgrade: {:?}", statuses(&responses));
    assert_paid_at_least_on(&stack, &scripted.requests(), PING_COST);
}

/// With the store down, a `fail_open` route admits only keys the gateway knows.
#[test]
fn unknown_key_on_fail_open_route_with_redis_down() {
    let mut stack = stack("not_found", PLENTY);
    let warm = stack.send("GET", "/v1/open", Some(ALICE_KEY), &[], "");
    assert_eq!(warm.status, 200, "{warm:#?}");
    stack.assert_forwarded_paid();
    stack.upstream.reset();
    stack.ledger.redis.stop();
    for key in ["cg_unknown_0a1b2c3d", "not-a-key-at-all"] {
        let r = stack.send("GET", "/v1/open", Some(key), &[], "");
        assert!(
            matches!(r.status, 401 | 503),
            "unknown key {key:?} with Redis down answered {}: {r:#?}",
            r.status
        );
    }
    assert_eq!(
        stack.upstream.count(),
        0,
        "an unknown key reached the upstream"
    );
}

/// A breaker probe answered with an error reply (OOM) must not leave the store unused for
/// ever: once Redis accepts writes again, requests are admitted again.
#[test]
fn breaker_probe_answered_with_an_error_reply() {
    let stack = stack("not_found", PLENTY);
    let ok = stack.send("GET", "/v1/ping", Some(ALICE_KEY), &[], "");
    assert_eq!(ok.status, 200, "{ok:#?}");
    let redis = &stack.ledger.redis;
    // Every call times out (100 ms) while Redis is paused: the circuit opens for 1 s. The
    // pause is long enough for the requests on a busy machine.
    redis
        .cli(&["CLIENT", "PAUSE", "2500", "ALL"])
        .expect("client pause");
    let refused = (0..6)
        .filter(|_| {
            stack
                .send("GET", "/v1/ping", Some(ALICE_KEY), &[], "")
                .status
                == 503
        })
        .count();
    assert!(
        refused >= 5,
        "only {refused} of 6 refused while Redis was paused"
    );
    // Applied when the pause ends; the probe after the open period gets an OOM reply.
    redis
        .cli(&["CONFIG", "SET", "maxmemory", "1"])
        .expect("maxmemory");
    thread::sleep(Duration::from_millis(1_200));
    let probe = stack.send("GET", "/v1/ping", Some(ALICE_KEY), &[], "");
    eprintln!("probe answered {}", probe.status);
    redis
        .cli(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("maxmemory");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = BTreeMap::new();
    loop {
        let r = stack.send("GET", "/v1/ping", Some(ALICE_KEY), &[], "");
        *seen.entry(r.status).or_insert(0) += 1;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store is healthy again but requests still answer {seen:?} after 5 s: the \
             probe never resolved\n{}",
            stack.gateway.log_tail(20)
        );
        thread::sleep(Duration::from_millis(100));
    }
    stack.assert_forwarded_paid();
}

/// The Redis password never reaches a log, neither the gateway's nor the sidecar's, in
/// health or while Redis is down.
#[test]
fn redis_password_is_not_logged() {
    const PASSWORD: &str = "s3cret-Pa55word-9f2e";
    let mut redis = RedisServer::start().expect("redis");
    redis
        .cli(&["CONFIG", "SET", "requirepass", PASSWORD])
        .expect("requirepass");
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/", redis.port());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sidecar_options = SidecarOptions::new(
        url.clone(),
        LedgerTarget::Sqlite(dir.path().join("l.sqlite")),
    );
    sidecar_options
        .env
        .push(("RUST_LOG".into(), "debug".into()));
    let sidecar = Sidecar::start(sidecar_options).expect("sidecar");
    let upstream = creditgate_testkit::Upstream::start().expect("upstream");
    let gateway = creditgate_testkit::Gateway::start(creditgate_testkit::GatewayOptions {
        config_toml: config(upstream.addr(), "not_found"),
        redis_url: Some(url),
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .expect("gateway");
    let client = http_client();
    let ping = format!("{}/v1/ping", gateway.proxy_url());
    send(&client, "GET", &ping, Some(ALICE_KEY), &[]);
    redis.stop();
    send(&client, "GET", &ping, Some(ALICE_KEY), &[]);
    thread::sleep(Duration::from_millis(1_500));
    for (who, log) in [
        ("gateway", gateway.log_path()),
        ("sidecar", sidecar.log_path()),
    ] {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(PASSWORD)).collect();
        assert!(
            leaks.is_empty(),
            "the {who} log shows the Redis password in {} line(s), e.g.:\n{}",
            leaks.len(),
            leaks.iter().take(3).copied().collect::<Vec<_>>().join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// What HTTP itself allows.
// ---------------------------------------------------------------------------------------

/// Sends `head` (Host and a close added) with no body on a stack with `unmatched`; prints
/// the statuses; returns the stack for the check.
fn raw_get(unmatched: &str, head: &[&str]) -> AttackStack {
    let stack = stack(unmatched, PLENTY);
    stack.grant(MALLORY, "g-mallory", PLENTY);
    let mut lines = head.to_vec();
    lines.push("Connection: close");
    let responses = stack.raw(&raw(&lines, ""));
    eprintln!("{}: {:?}", head[0], statuses(&responses));
    stack
}

/// Header names are case-insensitive; the scheme too (`bearer`).
#[test]
fn lowercase_authorization_header_and_scheme() {
    let auth = format!("authorization: bearer {ALICE_KEY}");
    let stack = raw_get(
        "pass_through",
        &["GET /v1/ping HTTP/1.1", "Host: 127.0.0.1", &auth],
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// Two `Authorization` headers (Alice's and Mallory's): refused, or someone pays.
#[test]
fn two_authorization_headers() {
    let (alice, mallory) = (bearer(ALICE_KEY), bearer(MALLORY_KEY));
    let stack = raw_get(
        "pass_through",
        &["GET /v1/ping HTTP/1.1", "Host: 127.0.0.1", &alice, &mallory],
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// An unknown key first and a valid one second: refused, or paid.
#[test]
fn bad_then_good_authorization_headers() {
    let good = bearer(ALICE_KEY);
    let stack = raw_get(
        "pass_through",
        &[
            "GET /v1/ping HTTP/1.1",
            "Host: 127.0.0.1",
            "Authorization: Bearer cg_nobody_00000000",
            &good,
        ],
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// An `X-Api-Key` beside the bearer token: whichever the gateway reads, someone pays.
#[test]
fn x_api_key_beside_bearer() {
    let bearer_alice = bearer(ALICE_KEY);
    let api_key = format!("X-Api-Key: {MALLORY_KEY}");
    let stack = raw_get(
        "pass_through",
        &[
            "GET /v1/ping HTTP/1.1",
            "Host: 127.0.0.1",
            &api_key,
            &bearer_alice,
        ],
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// Two `Idempotency-Key` headers, in both orders, after one paid request under the
/// first: no other body rides on the paid key.
#[test]
fn two_idempotency_key_headers() {
    let stack = stack("not_found", PLENTY);
    let auth = bearer(ALICE_KEY);
    let post = |keys: &[&str], body: &str| {
        let length = format!("Content-Length: {}", body.len());
        let mut head = vec![
            "POST /v1/search HTTP/1.1",
            "Host: 127.0.0.1",
            &auth,
            &length,
        ];
        head.extend_from_slice(keys);
        head.push("Connection: close");
        statuses(&stack.raw(&raw(&head, body)))
    };
    eprintln!("paid: {:?}", post(&["Idempotency-Key: k1"], r#"{"q":"a"}"#));
    eprintln!(
        "k2,k1: {:?}",
        post(
            &["Idempotency-Key: k2", "Idempotency-Key: k1"],
            r#"{"q":"b"}"#
        )
    );
    eprintln!(
        "k1,k3: {:?}",
        post(
            &["Idempotency-Key: k1", "Idempotency-Key: k3"],
            r#"{"q":"c"}"#
        )
    );
    eprintln!(
        "k1 k4 in one: {:?}",
        post(&["Idempotency-Key: k1, k4"], r#"{"q":"d"}"#)
    );
    stack.assert_forwarded_paid();
}

/// Two `Host` headers, the priced host in either place, on a pass-through gateway.
#[test]
fn two_host_headers() {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    for hosts in [
        ["Host: api.example.test", "Host: other.test"],
        ["Host: other.test", "Host: api.example.test"],
    ] {
        let head = [
            "GET /v1/hosted HTTP/1.1",
            hosts[0],
            hosts[1],
            &auth,
            "Connection: close",
        ];
        eprintln!("{hosts:?}: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    }
    assert_paid_at_least(&stack, PING_COST);
}

/// The priced host spelled differently (case, port, a trailing dot) is the same host.
#[test]
fn priced_host_spelled_differently() {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    for host in [
        "Host: API.Example.Test",
        "Host: api.example.test:80",
        "Host: api.example.test.",
    ] {
        let head = ["GET /v1/hosted HTTP/1.1", host, &auth, "Connection: close"];
        eprintln!("{host}: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    }
    assert_paid_at_least(&stack, PING_COST);
}

/// A `Host` that matches no route host, with `not_found`: refused.
#[test]
fn host_matching_no_route_host_is_refused() {
    let auth = bearer(ALICE_KEY);
    let stack = raw_get(
        "not_found",
        &["GET /v1/hosted HTTP/1.1", "Host: other.test", &auth],
    );
    assert_eq!(
        stack.upstream.count(),
        0,
        "{:#?}",
        stack.upstream.requests()
    );
    stack.assert_forwarded_paid();
}

/// `Expect: 100-continue` on a fixed-price route and on the estimate route (low balance).
#[test]
fn expect_100_continue() {
    let stack = stack("not_found", LOW_BALANCE);
    let auth = bearer(ALICE_KEY);
    let search = raw(
        &[
            "POST /v1/search HTTP/1.1",
            "Host: 127.0.0.1",
            &auth,
            "Content-Length: 2",
            "Expect: 100-continue",
            "Connection: close",
        ],
        "{}",
    );
    eprintln!("search: {:?}", statuses(&stack.raw(&search)));
    let json = big_chat_body();
    let length = format!("Content-Length: {}", json.len());
    let chat = chat_request(&length, Some("Expect: 100-continue"), &json);
    let answers = stack.raw(&chat);
    eprintln!("chat: {:?}", statuses(&answers));
    let search_paid = stack.upstream.requests();
    let burned = stack.assert_forwarded_paid();
    for r in search_paid.iter().filter(|r| r.path == "/v1/chat") {
        let id = r.header(REQUEST_ID_HEADER).unwrap_or_default();
        assert!(
            burned.get(id).copied().unwrap_or(0) >= BIG_ESTIMATE,
            "{r:#?}"
        );
    }
}

/// Five priced requests (with and without bodies) pipelined on one connection.
#[test]
fn pipelined_requests_on_one_connection() {
    let stack = stack("not_found", PLENTY);
    let auth = bearer(ALICE_KEY);
    let mut bytes = Vec::new();
    for i in 1..=5 {
        let last = if i == 5 {
            "Connection: close"
        } else {
            "Connection: keep-alive"
        };
        if i % 2 == 1 {
            let body = format!(r#"{{"q":{i}}}"#);
            let length = format!("Content-Length: {}", body.len());
            let head = [
                "POST /v1/search HTTP/1.1",
                "Host: 127.0.0.1",
                &auth,
                &length,
                last,
            ];
            bytes.extend(raw(&head, &body));
        } else {
            let head = ["GET /v1/ping HTTP/1.1", "Host: 127.0.0.1", &auth, last];
            bytes.extend(raw(&head, ""));
        }
    }
    let answers = stack.raw(&bytes);
    eprintln!("pipelined: {:?}", statuses(&answers));
    stack.assert_forwarded_paid();
}

/// A request smuggled behind a priced one: the framing headers `framing` (conflicting)
/// and a body that ends, for a reader that follows chunked framing, with an unpriced
/// request without a key.
fn smuggle(framing: &[&str], body: &str) -> AttackStack {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    let mut head = vec!["POST /v1/search HTTP/1.1", "Host: 127.0.0.1", auth.as_str()];
    head.extend_from_slice(framing);
    let answers = stack.raw(&raw(&head, body));
    eprintln!("{framing:?}: {:?}", statuses(&answers));
    stack
}

/// What follows the chunked body's last chunk in the smuggling tests: an unauthenticated
/// request for a priced path.
const SMUGGLED: &str = "GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// Content-Length and Transfer-Encoding together (CL first).
#[test]
fn smuggling_content_length_then_chunked() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let stack = smuggle(&["Content-Length: 5", "Transfer-Encoding: chunked"], &body);
    stack.assert_forwarded_paid();
}

/// Transfer-Encoding and Content-Length together (TE first, CL covering the smuggled
/// request).
#[test]
fn smuggling_chunked_then_content_length() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let length = format!("Content-Length: {}", body.len());
    let stack = smuggle(&["Transfer-Encoding: chunked", &length], &body);
    stack.assert_forwarded_paid();
}

/// Two different Content-Lengths.
#[test]
fn smuggling_two_content_lengths() {
    let body = format!("{{}}{SMUGGLED}");
    let long = format!("Content-Length: {}", body.len());
    let stack = smuggle(&["Content-Length: 2", &long], &body);
    stack.assert_forwarded_paid();
}

/// `Transfer-Encoding: chunked, identity` and an obfuscated `Transfer-Encoding`.
#[test]
fn smuggling_obfuscated_transfer_encodings() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    for te in [
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: xchunked",
    ] {
        let length = format!("Content-Length: {}", body.len());
        let stack = smuggle(&[&length, te], &body);
        stack.assert_forwarded_paid();
    }
}

/// HTTP/1.0 without a Host.
#[test]
fn http_1_0_without_host() {
    let auth = bearer(ALICE_KEY);
    let stack = raw_get("pass_through", &["GET /v1/ping HTTP/1.0", &auth]);
    assert_paid_at_least(&stack, PING_COST);
}

/// Absolute-form request targets naming another host, plain and with a dot segment.
#[test]
fn absolute_form_request_targets() {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    for target in [
        "GET http://other-host/v1/ping HTTP/1.1",
        "GET http://other-host/v1/./ping HTTP/1.1",
        "GET http://api.example.test/v1/hosted HTTP/1.1",
    ] {
        let head = [target, "Host: 127.0.0.1", &auth, "Connection: close"];
        eprintln!("{target}: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    }
    assert_paid_at_least(&stack, PING_COST);
}

/// `HEAD` on a priced `GET` route: most frameworks serve it with the GET handler.
#[test]
fn head_on_a_priced_get_route() {
    let auth = bearer(ALICE_KEY);
    let stack = raw_get(
        "pass_through",
        &["HEAD /v1/ping HTTP/1.1", "Host: 127.0.0.1", &auth],
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// `OPTIONS` on a priced path, `not_found`: refused, or paid.
#[test]
fn options_on_a_priced_path() {
    let auth = bearer(ALICE_KEY);
    let stack = raw_get(
        "not_found",
        &["OPTIONS /v1/ping HTTP/1.1", "Host: 127.0.0.1", &auth],
    );
    stack.assert_forwarded_paid();
}

/// Very long headers (one of 60 KiB, then 300 small ones) on a priced route.
#[test]
fn very_long_headers() {
    let stack = stack("not_found", PLENTY);
    let auth = bearer(ALICE_KEY);
    let long = format!("X-Padding: {}", "a".repeat(60 * 1024));
    let head = [
        "GET /v1/ping HTTP/1.1",
        "Host: 127.0.0.1",
        &auth,
        &long,
        "Connection: close",
    ];
    eprintln!("one long: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    let many: Vec<String> = (0..300).map(|i| format!("X-H{i}: {i}")).collect();
    let mut head: Vec<&str> = vec!["GET /v1/ping HTTP/1.1", "Host: 127.0.0.1", &auth];
    head.extend(many.iter().map(String::as_str));
    head.push("Connection: close");
    eprintln!("many: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    assert_paid_at_least(&stack, PING_COST);
}

// ---------------------------------------------------------------------------------------
// More spellings of the same work.
// ---------------------------------------------------------------------------------------

/// A client's own `X-Request-Id` (say, a paid request's) never reaches the upstream: the
/// upstream sees exactly one, the gateway's, so the ledger check cannot be fooled.
#[test]
fn client_supplied_request_id_is_replaced() {
    let stack = stack("not_found", PLENTY);
    let paid = stack.send("GET", "/v1/ping", Some(ALICE_KEY), &[], "");
    let paid_id = paid.header(REQUEST_ID_HEADER).expect("a request id");
    let spoof = [(REQUEST_ID_HEADER, paid_id.as_str())];
    stack.send("GET", "/v1/ping", Some(ALICE_KEY), &spoof, "");
    for r in stack.upstream.requests() {
        assert_eq!(r.header_all(REQUEST_ID_HEADER).len(), 1, "{r:#?}");
    }
    let ids: Vec<String> = stack
        .upstream
        .requests()
        .iter()
        .filter_map(|r| r.header(REQUEST_ID_HEADER).map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(
        ids[0], ids[1],
        "the client's request id reached the upstream"
    );
    assert_paid_at_least(&stack, PING_COST);
}

/// `Connection` naming the gateway's own headers (hop-by-hop removal) must not strip the
/// request id or the customer the gateway gives the upstream.
#[test]
fn connection_header_naming_the_gateways_headers() {
    let auth = bearer(ALICE_KEY);
    let stack = raw_get(
        "not_found",
        &[
            "GET /v1/ping HTTP/1.1",
            "Host: 127.0.0.1",
            &auth,
            "Connection: close, x-request-id, x-creditgate-customer",
        ],
    );
    for r in stack.upstream.requests() {
        assert_eq!(r.header("x-creditgate-customer"), Some(ALICE), "{r:#?}");
    }
    assert_paid_at_least(&stack, PING_COST);
}

/// Unit values that are not whole numbers but that an upstream may read as 10.
#[test]
fn per_unit_not_a_whole_number() {
    let stack = stack("not_found", PLENTY);
    for query in ["pages=10.0", "pages=1e1", "pages=%2B10"] {
        let r = stack.send(
            "GET",
            &format!("/v1/pages?{query}"),
            Some(ALICE_KEY),
            &[],
            "",
        );
        eprintln!("{query}: {}", r.status);
    }
    assert_paid_at_least(&stack, UNITS);
}

/// A body over `estimate_max_body_bytes` (64 KiB), `max_tokens` first: with a low balance
/// it must be refused, or burn what it asked for.
#[test]
fn oversized_body_on_estimate_route_with_low_balance() {
    let stack = stack("not_found", LOW_BALANCE);
    let json = format!(
        r#"{{"max_tokens":{BIG_ESTIMATE},"pad":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let length = format!("Content-Length: {}", json.len());
    let answers = stack.raw(&chat_request(&length, None, &json));
    eprintln!("oversized chat: {:?}", statuses(&answers));
    assert_paid_at_least(&stack, BIG_ESTIMATE);
}

/// A gzip-compressed body the upstream inflates: with a low balance it must be refused, or
/// burn what it asked for.
#[test]
fn gzip_body_on_estimate_route_with_low_balance() {
    let stack = stack("not_found", LOW_BALANCE);
    let body = creditgate_testkit::gzip(big_chat_body().as_bytes());
    let auth = bearer(ALICE_KEY);
    let length = format!("Content-Length: {}", body.len());
    let mut bytes = raw(
        &[
            "POST /v1/chat HTTP/1.1",
            "Host: 127.0.0.1",
            &auth,
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            &length,
            "Connection: close",
        ],
        "",
    );
    bytes.extend_from_slice(&body);
    let answers = stack.raw(&bytes);
    eprintln!("gzip chat: {:?}", statuses(&answers));
    assert_paid_at_least(&stack, BIG_ESTIMATE);
}

/// Encoded dots and slashes: `/v1/%2e/ping`, `/v1/x/%2E%2E/ping`, `/v1%2Fping`.
#[test]
fn encoded_dots_and_slashes_with_pass_through() {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    for target in ["/v1/%2e/ping", "/v1/x/%2E%2E/ping", "/v1%2Fping"] {
        let line = format!("GET {target} HTTP/1.1");
        let head = [line.as_str(), "Host: 127.0.0.1", &auth, "Connection: close"];
        eprintln!("{target}: {:?}", statuses(&stack.raw(&raw(&head, ""))));
    }
    assert_paid_at_least(&stack, PING_COST);
}

/// A path parameter (`/v1/ping;x=1`), which servlet-style upstreams strip before routing.
#[test]
fn path_parameter_with_pass_through() {
    let stack = pass_through_get("/v1/ping;x=1");
    assert_paid_at_least(&stack, PING_COST);
}

/// `CONNECT` on a pass-through gateway must not open an unmetered tunnel to the upstream.
#[test]
fn connect_with_pass_through() {
    let stack = stack("pass_through", PLENTY);
    let auth = bearer(ALICE_KEY);
    let authority = stack.upstream.addr().to_string();
    let line = format!("CONNECT {authority} HTTP/1.1");
    let host = format!("Host: {authority}");
    let mut bytes = raw(&[&line, &host, &auth], "");
    bytes.extend(raw(
        &[
            "GET /v1/ping HTTP/1.1",
            "Host: 127.0.0.1",
            "Connection: close",
        ],
        "",
    ));
    eprintln!("CONNECT: {:?}", statuses(&stack.raw(&bytes)));
    assert_paid_at_least(&stack, PING_COST);
}

// ---------------------------------------------------------------------------------------
// Replays and long requests, from the other side.
// ---------------------------------------------------------------------------------------

/// Another customer's identical request under the same `Idempotency-Key` is not a replay
/// of Alice's paid request: Mallory pays for her own.
#[test]
fn idempotency_key_of_another_customer() {
    let stack = stack("not_found", PLENTY);
    stack.grant(MALLORY, "g-mallory", PLENTY);
    let key = [("idempotency-key", "k-shared")];
    let alice = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, "{}");
    assert_eq!(alice.status, 200, "{alice:#?}");
    let mallory = stack.send("POST", "/v1/search", Some(MALLORY_KEY), &key, "{}");
    assert!(
        mallory.header(REPLAY_HEADER).is_none(),
        "Mallory's request answered as a replay of Alice's: {mallory:#?}"
    );
    stack.assert_forwarded_paid();
}

/// The identical request sent again while the first is still at the upstream, and the
/// first then fails (5xx, its hold voided): the second must not be a free replay of a
/// request nobody paid for.
#[test]
fn replay_of_a_request_still_in_flight_that_then_fails() {
    let stack = stack("not_found", PLENTY);
    stack.upstream.set_delay(Duration::from_millis(600));
    stack.upstream.fail_next(1, 503);
    let key = [("idempotency-key", "k-in-flight")];
    let (first, second) = thread::scope(|s| {
        let first = s.spawn(|| stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, "{}"));
        thread::sleep(Duration::from_millis(200));
        let second = stack.send("POST", "/v1/search", Some(ALICE_KEY), &key, "{}");
        (first.join().expect("first request"), second)
    });
    eprintln!(
        "first {} (replay {:?}), second {} (replay {:?})",
        first.status,
        first.header(REPLAY_HEADER),
        second.status,
        second.header(REPLAY_HEADER)
    );
    // The upstream's 503 to the first request voids its hold, as the route says
    // (`on_upstream_error = "void"`): every other request it received must be paid.
    let served: Vec<RecordedRequest> = stack
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.n != 1)
        .collect();
    let burned: i64 = stack.assert_paid(&served).values().sum();
    let served_as_replay = [&first, &second]
        .iter()
        .filter(|r| r.status < 300 && r.header(REPLAY_HEADER).is_some())
        .count();
    assert!(
        served_as_replay == 0 || burned > 0,
        "{served_as_replay} replay(s) served while nothing was burned: {first:#?} {second:#?}"
    );
}

/// A client that reads a long stream past its hold's TTL and then hangs up: the upstream
/// worked, so the ledger holds a burn.
#[test]
fn client_leaving_a_long_stream_after_its_hold_ttl() {
    let scripted = ScriptedUpstream::start(Script::Drip {
        chunks: 20,
        interval: Duration::from_millis(250),
    })
    .expect("scripted upstream");
    let stack = AttackStack::start(|addr| scripted_config(addr, scripted.addr(), 1_000));
    stack.grant(ALICE, "g-alice", PLENTY);
    let auth = bearer(ALICE_KEY);
    let request = raw(&["GET /v1/scripted HTTP/1.1", "Host: 127.0.0.1", &auth], "");
    let addr = creditgate_testkit::loopback(stack.gateway.proxy_port());
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    std::io::Write::write_all(&mut conn, &request).expect("write");
    let read = creditgate_testkit::read_until_closed(&mut conn, Duration::from_millis(3_000));
    drop(conn);
    eprintln!("read {} bytes before hanging up", read.len());
    assert_eq!(scripted.requests().len(), 1);
    assert_paid_at_least_on(&stack, &scripted.requests(), 1);
}
