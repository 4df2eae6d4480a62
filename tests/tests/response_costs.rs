//! Routes priced from the response, end to end: the real gateway between a real Redis and
//! the fake model server, which answers JSON and SSE with known token usage. Each test
//! asserts the exact amount burned, which would be the reserved estimate without settling
//! from the response.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use creditgate_testkit::{
    ALICE, ALICE_KEY, Credits, Gateway, GatewayOptions, LedgerTarget, ModelServer, RedisServer,
    Reply, Sidecar, SidecarOptions, base_config, http_client, now_ms, send,
};

/// Reserved up front for every response-priced route of the test config.
const ESTIMATE: i64 = 5_000;
/// Charged when a response's usage cannot be read.
const FALLBACK: i64 = 3_000;
/// Charged per event forwarded by a stream cut short before its usage.
const PER_EVENT: i64 = 10;
/// Per-token rates of the test config.
const PROMPT_RATE: i64 = 2;
const COMPLETION_RATE: i64 = 6;
/// Per-unit rate of the `x-usage-units` header.
const UNIT_RATE: i64 = 7;
/// The test config's inspection limit, in bytes.
const INSPECT_MAX_BYTES: i64 = 4_096;
/// The `estimated` feature: `ESTIMATE_BASE + max_tokens × ESTIMATE_RATE` reserved from the
/// request body, capped at `ESTIMATED_MAX`, read from bodies of up to `ESTIMATE_BODY_BYTES`.
const ESTIMATE_RATE: i64 = 9;
const ESTIMATE_BASE: i64 = 100;
const ESTIMATED_MAX: i64 = 20_000;
const ESTIMATE_BODY_BYTES: usize = 1_024;
/// The model upstream's read timeout, for the stalled-stream test.
const READ_TIMEOUT_MS: u64 = 600;

/// The base config with the model server as upstream `model` and three response-priced
/// features: OpenAI-style fields, Anthropic-style fields and a usage header.
fn config(model: SocketAddr) -> String {
    base_config(model)
        + &format!(
            r#"
[upstreams.model]
address = "{model}"
read_timeout_ms = {READ_TIMEOUT_MS}

[features.chat]
credit_type = "api"
cost = {{ kind = "from_response", estimate = {ESTIMATE}, max = 100000, fallback = {FALLBACK}, per_event = {PER_EVENT}, inspect_max_bytes = {INSPECT_MAX_BYTES}, usage = {{ "usage.prompt_tokens" = {PROMPT_RATE}, "usage.completion_tokens" = {COMPLETION_RATE} }} }}

[features.claude]
credit_type = "api"
cost = {{ kind = "from_response", estimate = {ESTIMATE}, max = 100000, usage = {{ "message.usage.input_tokens" = {PROMPT_RATE}, "usage.output_tokens" = {COMPLETION_RATE} }} }}

[features.units]
credit_type = "api"
cost = {{ kind = "from_response", estimate = {ESTIMATE}, max = 100000, header = "x-usage-units", rate = {UNIT_RATE} }}

[features.estimated]
credit_type = "api"
cost = {{ kind = "from_response", estimate = {ESTIMATE}, max = {ESTIMATED_MAX}, estimate_from = "max_tokens", estimate_rate = {ESTIMATE_RATE}, estimate_base = {ESTIMATE_BASE}, estimate_max_body_bytes = {ESTIMATE_BODY_BYTES}, usage = {{ "usage.prompt_tokens" = {PROMPT_RATE}, "usage.completion_tokens" = {COMPLETION_RATE} }} }}

[[routes]]
name = "estimated"
method = "POST"
path = "/v1/chat/completions"
feature = "estimated"
upstream = "model"

[[routes]]
name = "claude"
method = "GET"
path = "/v1/anthropic-stream"
feature = "claude"
upstream = "model"

[[routes]]
name = "units"
method = "GET"
path = "/v1/header-usage"
feature = "units"
upstream = "model"

[[routes]]
name = "chat"
method = "GET"
path = "/v1/*"
feature = "chat"
upstream = "model"
"#
        )
}

/// Redis, the model server and the gateway, stopped in reverse order on drop.
struct ModelStack {
    gateway: Gateway,
    credits: Credits,
    http: reqwest::blocking::Client,
    model: ModelServer,
    redis: RedisServer,
}

impl ModelStack {
    fn start() -> Self {
        let redis = RedisServer::start().expect("redis");
        let model = ModelServer::start().expect("model server");
        let credits = Credits::connect(&redis.url()).expect("credits");
        let gateway = Gateway::start(GatewayOptions {
            config_toml: config(model.addr()),
            redis_url: Some(redis.url()),
            ..GatewayOptions::default()
        })
        .expect("gateway");
        Self {
            gateway,
            credits,
            http: http_client(),
            model,
            redis,
        }
    }

    fn get(&self, path: &str) -> Reply {
        let url = format!("{}{path}", self.gateway.proxy_url());
        send(&self.http, "GET", &url, Some(ALICE_KEY), &[])
    }

    /// Grants `amount`, runs `request`, waits for its settle and returns what it burned.
    fn burned_by(&self, amount: u64, request: impl FnOnce(&Self)) -> i64 {
        let (before, held) = self.credits.balance(ALICE).expect("balance");
        assert_eq!(held, 0, "nothing pending before the request");
        self.credits.grant(ALICE, amount).expect("grant");
        request(self);
        let (after, held) = self.credits.wait_until_settled(ALICE).expect("balance");
        assert_eq!(held, 0, "the hold was settled: {}", self.log());
        before + i64::try_from(amount).expect("small") - after
    }

    fn outcome(&self, route: &str, outcome: &str) -> f64 {
        self.gateway.metric(
            "creditgate_response_costs_total",
            &[("route", route), ("outcome", outcome)],
        )
    }

    fn log(&self) -> String {
        self.gateway.log_tail(30)
    }
}

#[test]
fn json_completion_is_charged_per_token_and_the_rest_of_the_hold_returns() {
    let stack = ModelStack::start();
    let burned = stack.burned_by(10_000, |s| {
        let reply = s.get("/v1/chat/completions?prompt=1200&completion=300");
        assert_eq!(reply.status, 200, "{reply:#?}");
        assert_eq!(reply.json()["usage"]["prompt_tokens"], 1200);
        // The charge is not known when the headers go out: they show the hold.
        assert_eq!(reply.header_i64("x-credits-charged"), ESTIMATE);
    });
    assert_eq!(
        burned,
        1_200 * PROMPT_RATE + 300 * COMPLETION_RATE,
        "{}",
        stack.log()
    );
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (10_000 - 4_200, 0),
        "the hold's remainder (5 000 - 4 200) returned"
    );
    assert_eq!(stack.outcome("chat", "json"), 1.0);
    let returned = stack.gateway.metric(
        "creditgate_credits_returned_total",
        &[("credit_type", "api")],
    );
    assert_eq!(returned, 800.0);
}

#[test]
fn a_gzip_body_is_inspected_and_reaches_the_client_unchanged() {
    let stack = ModelStack::start();
    let burned = stack.burned_by(10_000, |s| {
        let url = format!(
            "{}/v1/chat/completions?prompt=1200&completion=300&gzip=1",
            s.gateway.proxy_url()
        );
        let response = s
            .http
            .get(url)
            .bearer_auth(ALICE_KEY)
            .send()
            .expect("request");
        assert_eq!(
            response
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some("gzip")
        );
        let body = response.bytes().expect("body");
        assert_eq!(&body[..2], &[0x1f, 0x8b], "still gzip for the client");
    });
    assert_eq!(burned, 4_200, "{}", stack.log());
    assert_eq!(stack.outcome("chat", "json"), 1.0);
}

#[test]
fn streams_are_charged_from_their_final_usage_event() {
    let stack = ModelStack::start();
    let burned = stack.burned_by(10_000, |s| {
        let reply = s.get("/v1/stream?chunks=50&prompt=100&completion=400");
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body.matches("data: ").count(),
            52,
            "every event reached the client"
        );
    });
    assert_eq!(
        burned,
        100 * PROMPT_RATE + 400 * COMPLETION_RATE,
        "{}",
        stack.log()
    );
    assert_eq!(stack.outcome("chat", "sse"), 1.0);

    let burned = stack.burned_by(10_000, |s| {
        let reply = s.get("/v1/anthropic-stream?chunks=20&prompt=700&completion=90");
        assert_eq!(reply.status, 200);
    });
    assert_eq!(
        burned,
        700 * PROMPT_RATE + 90 * COMPLETION_RATE,
        "{}",
        stack.log()
    );
    assert_eq!(stack.outcome("claude", "sse"), 1.0);
}

#[test]
fn a_usage_header_wins_and_is_priced_per_unit() {
    let stack = ModelStack::start();
    let burned = stack.burned_by(10_000, |s| {
        assert_eq!(s.get("/v1/header-usage?units=30").status, 200);
    });
    assert_eq!(burned, 30 * UNIT_RATE);
    assert_eq!(stack.outcome("units", "header"), 1.0);
}

/// Sends a GET on a raw socket and reads until `events` SSE events arrived, then closes
/// the connection: a client giving up mid-stream.
fn read_events_then_disconnect(gateway: &Gateway, path: &str, events: usize) {
    let mut socket =
        TcpStream::connect(("127.0.0.1", gateway.proxy_port())).expect("connect to gateway");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\r\n"
    )
    .expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("data: ").count() < events {
        let n = socket.read(&mut buffer).expect("read");
        assert!(n > 0, "the stream ended before {events} events");
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(socket);
}

#[test]
fn a_stream_cut_by_the_client_pays_per_event_forwarded() {
    let stack = ModelStack::start();
    // 40 events 50 ms apart; the client leaves after 20 (half). The documented rule: the
    // larger of the usage seen (none yet) and per_event × events forwarded. The gateway
    // notices the closed socket on a later write, so an event or two more may have gone.
    let burned = stack.burned_by(10_000, |s| {
        read_events_then_disconnect(
            &s.gateway,
            "/v1/stream?chunks=40&delay_ms=50&prompt=1000&completion=1000",
            20,
        );
    });
    assert!(
        (20 * PER_EVENT..=23 * PER_EVENT).contains(&burned),
        "burned {burned}, expected 20 to 23 events at {PER_EVENT}: {}",
        stack.log()
    );
    assert_eq!(stack.outcome("chat", "stream_cut"), 1.0);
}

#[test]
fn a_stream_the_upstream_stalls_is_charged_for_what_it_produced() {
    let stack = ModelStack::start();
    let started = Instant::now();
    let burned = stack.burned_by(10_000, |s| {
        let url = format!("{}/v1/stream?chunks=5&stall_ms=3000", s.gateway.proxy_url());
        // The gateway's read timeout cuts the stream after the fifth event.
        let result = s
            .http
            .get(url)
            .bearer_auth(ALICE_KEY)
            .send()
            .and_then(|r| r.text());
        if let Ok(body) = result {
            assert!(
                !body.contains("usage\":{"),
                "the usage event never came: {body}"
            );
        }
    });
    assert!(
        started.elapsed() < Duration::from_millis(2_900),
        "cut by the read timeout"
    );
    assert_eq!(burned, 5 * PER_EVENT, "{}", stack.log());
    assert_eq!(stack.outcome("chat", "stream_cut"), 1.0);
}

#[test]
fn unreadable_usage_settles_the_fallback_and_moves_its_counter() {
    let stack = ModelStack::start();
    for (path, outcome) in [
        ("/v1/no-usage", "missing"),
        ("/v1/garbage-usage", "unparseable"),
        (
            &*format!("/v1/big?pad={}", INSPECT_MAX_BYTES * 2),
            "over_limit",
        ),
        ("/v1/stream?chunks=3&prompt=0&completion=0&gzip=0", "sse"),
    ] {
        let burned = stack.burned_by(10_000, |s| assert_eq!(s.get(path).status, 200));
        let expected = if outcome == "sse" { 0 } else { FALLBACK };
        assert_eq!(burned, expected, "{path}: {}", stack.log());
        assert_eq!(stack.outcome("chat", outcome), 1.0, "{path}");
    }
    // Just under the limit, the same padded body is read.
    let pad = INSPECT_MAX_BYTES - 400;
    let burned = stack.burned_by(10_000, |s| {
        assert_eq!(
            s.get(&format!("/v1/big?pad={pad}&prompt=10&completion=10"))
                .status,
            200
        );
    });
    assert_eq!(burned, 10 * PROMPT_RATE + 10 * COMPLETION_RATE);
    assert_eq!(stack.outcome("chat", "json"), 1.0);
}

#[test]
fn usage_above_the_balance_burns_what_it_can_and_records_the_shortfall() {
    let stack = ModelStack::start();
    // 5 000 granted and held; the response costs 1 500 × 2 + 1 000 × 6 = 9 000.
    let burned = stack.burned_by(5_000, |s| {
        assert_eq!(
            s.get("/v1/chat/completions?prompt=1500&completion=1000")
                .status,
            200
        );
    });
    assert_eq!(burned, 5_000);
    assert_eq!(stack.credits.balance(ALICE).expect("balance"), (0, 0));
    let shortfall = stack.gateway.metric(
        "creditgate_credits_shortfall_total",
        &[("credit_type", "api")],
    );
    assert_eq!(shortfall, 4_000.0, "{}", stack.log());
}

#[test]
fn the_shortfall_is_an_overage_entry_in_the_ledger_with_the_request_id() {
    let stack = ModelStack::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = Sidecar::start(SidecarOptions::new(
        stack.redis.url(),
        LedgerTarget::Sqlite(dir.path().join("ledger.db")),
    ))
    .expect("sidecar");
    let from_ms = now_ms();
    let mut request_id = String::new();
    // 5 000 granted and held; the response costs 1 500 × 2 + 1 000 × 6 = 9 000.
    let burned = stack.burned_by(5_000, |s| {
        let reply = s.get("/v1/chat/completions?prompt=1500&completion=1000");
        assert_eq!(reply.status, 200);
        request_id = reply.header("x-request-id").expect("x-request-id");
    });
    assert_eq!(burned, 5_000);
    let path = format!("/v1/requests/{request_id}/trail");
    let deadline = Instant::now() + Duration::from_secs(15);
    let trail = loop {
        let response = sidecar.http_get(&path).expect("trail");
        if response.status == 200 {
            let trail: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
            if trail["entries"].as_array().map_or(0, Vec::len) >= 3 {
                break trail;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no overage in the trail: {} {}",
            response.body,
            sidecar.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let entries = trail["entries"].as_array().expect("entries");
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["hold_placed", "hold_posted", "overage"],
        "{trail:#}"
    );
    let overage = &entries[2];
    assert_eq!(overage["overage"], 4_000, "{overage:#}");
    assert_eq!(overage["amount"], 0);
    assert_eq!(overage["credit_type"], "api");
    assert_eq!(overage["request_id"], request_id.as_str());
    assert_eq!(overage["hold_id"], entries[1]["hold_id"]);
    assert_eq!(overage["details"]["shortfall"], "4000");
    // Reporting: the day's usage row carries it as unbilled, beside what was burned.
    let usage: serde_json::Value = serde_json::from_str(&sidecar.get_ok(&format!(
        "/v1/usage?customer={ALICE}&from_ms={from_ms}&to_ms={}",
        now_ms() + 1
    )))
    .expect("JSON");
    let rows = usage["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{usage:#}");
    assert_eq!(
        (rows[0]["burned"].as_i64(), rows[0]["overage"].as_i64()),
        (Some(5_000), Some(4_000))
    );
    let revenue: serde_json::Value = serde_json::from_str(&sidecar.get_ok(&format!(
        "/v1/revenue?from_ms={from_ms}&to_ms={}",
        now_ms() + 1
    )))
    .expect("JSON");
    assert_eq!(
        revenue["revenue"]["unbilled_overage"]["api"], 4_000,
        "{revenue:#}"
    );
}

/// POSTs `body` as JSON to the `estimated` route; returns what the gateway said it reserved
/// (`x-credits-charged`, the hold placed before the upstream was called).
fn post_estimated(stack: &ModelStack, query: &str, body: &[u8]) -> i64 {
    let reply = stack
        .http
        .post(format!(
            "{}/v1/chat/completions?{query}",
            stack.gateway.proxy_url()
        ))
        .bearer_auth(ALICE_KEY)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .expect("request");
    assert_eq!(reply.status().as_u16(), 200, "{}", stack.log());
    let charged = reply
        .headers()
        .get("x-credits-charged")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-credits-charged");
    let _ = reply.bytes();
    charged
}

#[test]
fn the_estimate_is_read_from_the_request_body_which_reaches_the_upstream_unchanged() {
    let stack = ModelStack::start();
    let reserved_metric = || {
        stack.gateway.metric(
            "creditgate_credits_reserved_total",
            &[("credit_type", "api")],
        )
    };
    let estimates = |outcome: &str| {
        stack.gateway.metric(
            "creditgate_request_estimates_total",
            &[("route", "estimated"), ("outcome", outcome)],
        )
    };
    let padded = |max_tokens: &str, pad: usize| {
        format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]{max_tokens}}}"#,
            "é".repeat(pad)
        )
        .into_bytes()
    };
    let cases: [(&str, Vec<u8>, i64, &str); 5] = [
        // 100 + 500 × 9: read from the body.
        (
            "500 max_tokens",
            padded(r#","max_tokens":500"#, 10),
            ESTIMATE_BASE + 500 * ESTIMATE_RATE,
            "body",
        ),
        // 100 + 100 000 × 9 is above max: capped.
        (
            "over the cap",
            padded(r#","max_tokens":100000"#, 10),
            ESTIMATED_MAX,
            "body",
        ),
        // A body that does not say how much it uses reserves the most it could cost.
        ("no max_tokens", padded("", 10), ESTIMATED_MAX, "missing"),
        (
            "not JSON",
            b"max_tokens=500".to_vec(),
            ESTIMATED_MAX,
            "unparseable",
        ),
        // More than ESTIMATE_BODY_BYTES: not read, streamed through, max reserved.
        (
            "over the body bound",
            padded(r#","max_tokens":500"#, ESTIMATE_BODY_BYTES),
            ESTIMATED_MAX,
            "over_limit",
        ),
    ];
    for (name, body, expected, outcome) in cases {
        let before = reserved_metric();
        let counted = estimates(outcome);
        let mut reserved = 0;
        // prompt 10 × 2 + completion 10 × 6 = 80 settles, whatever was reserved.
        let burned = stack.burned_by(30_000, |s| {
            reserved = post_estimated(s, "prompt=10&completion=10", &body);
        });
        assert_eq!(reserved, expected, "{name}: {}", stack.log());
        assert_eq!(reserved_metric() - before, expected as f64, "{name}");
        assert_eq!(estimates(outcome), counted + 1.0, "{name}");
        assert_eq!(burned, 10 * PROMPT_RATE + 10 * COMPLETION_RATE, "{name}");
        assert_eq!(
            stack.model.last_body(),
            body,
            "{name}: the upstream got the body byte for byte"
        );
    }
}

#[test]
fn a_client_waiting_for_100_continue_gets_it_before_the_body_is_read() {
    let stack = ModelStack::start();
    let body = br#"{"model":"m","max_tokens":200}"#;
    let mut reserved = 0;
    let burned = stack.burned_by(30_000, |s| {
        let mut socket =
            TcpStream::connect(("127.0.0.1", s.gateway.proxy_port())).expect("connect to gateway");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            socket,
            "POST /v1/chat/completions?prompt=10&completion=10 HTTP/1.1\r\nhost: localhost\r\n\
             authorization: Bearer {ALICE_KEY}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len()
        )
        .expect("send head");
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        // Without the gateway's 100 Continue this read times out: the body is not sent yet.
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = socket.read(&mut buffer).expect("read 100 Continue");
            assert!(n > 0, "closed before 100 Continue");
            seen.extend_from_slice(&buffer[..n]);
        }
        assert!(
            String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        socket.write_all(body).expect("send body");
        let mut response = Vec::new();
        while !String::from_utf8_lossy(&response).contains("\"usage\"") {
            let n = socket.read(&mut buffer).expect("read response");
            assert!(n > 0, "closed before the response");
            response.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&response);
        assert!(text.contains(" 200 "), "{text}");
        reserved = text
            .lines()
            .find_map(|line| line.strip_prefix("x-credits-charged: "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .expect("x-credits-charged");
    });
    assert_eq!(reserved, ESTIMATE_BASE + 200 * ESTIMATE_RATE);
    assert_eq!(burned, 10 * PROMPT_RATE + 10 * COMPLETION_RATE);
    assert_eq!(stack.model.last_body(), body);
}
