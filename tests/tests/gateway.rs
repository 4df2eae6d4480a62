//! The gateway's credit contract end to end: the real binary between a real Redis and a
//! fake upstream, on loopback. Each test starts its own stack and writes its config inline.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::net::SocketAddr;
use std::time::Duration;

use creditgate_testkit::{
    ALICE, ALICE_KEY, Gateway, GatewayOptions, MALLORY, MALLORY_KEY, Stack, TOP_UP_URL, Upstream,
    base_config, http_client, send, sha256_hex,
};

/// One enforced route, `GET /search`, costing 1 credit.
fn search_config(upstream: SocketAddr) -> String {
    base_config(upstream)
        + r#"
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#
}

#[test]
fn enforce_admits_exactly_the_paid_requests_then_answers_402() {
    let stack = Stack::start(search_config).expect("stack");
    stack.credits.grant(ALICE, 5).expect("grant");

    for (i, remaining) in [4, 3, 2, 1, 0].into_iter().enumerate() {
        let reply = stack.get("/search", Some(ALICE_KEY));
        assert_eq!(reply.status, 200, "request {}: {reply:#?}", i + 1);
        assert_eq!(reply.header_i64("x-credits-charged"), 1, "{reply:#?}");
        assert_eq!(
            reply.header_i64("x-credits-remaining"),
            remaining,
            "request {}: {reply:#?}",
            i + 1
        );
        assert_eq!(reply.header("x-credit-type").as_deref(), Some("api"));
        let request_id = reply.header("x-request-id").expect("x-request-id");
        assert!(!request_id.is_empty());
        let seen = stack.upstream.last_request().expect("upstream saw it");
        assert_eq!(seen.header("x-creditgate-customer"), Some(ALICE));
        assert_eq!(seen.header("x-request-id"), Some(request_id.as_str()));
    }

    let blocked = stack.get("/search", Some(ALICE_KEY));
    assert_eq!(blocked.status, 402, "{blocked:#?}");
    let body = blocked.json();
    assert_eq!(body["error"], "insufficient_credits", "{body}");
    assert_eq!(body["credit_type"], "api", "{body}");
    assert_eq!(body["required"], 1, "{body}");
    assert_eq!(body["available"], 0, "{body}");
    assert_eq!(body["top_up_url"], TOP_UP_URL, "{body}");
    let request_id = body["request_id"].as_str().expect("request_id is a string");
    assert!(!request_id.is_empty(), "{body}");
    if let Some(header) = blocked.header("x-request-id") {
        assert_eq!(header, request_id, "the 402 names the same request id");
    }

    assert_eq!(
        stack.upstream.count(),
        5,
        "the blocked request never reached it"
    );
    stack
        .credits
        .wait_for_balance(ALICE, (0, 0))
        .expect("all five burned");
    assert_eq!(stack.decisions(Some("search"), "allowed"), 5.0);
    assert_eq!(stack.decisions(Some("search"), "blocked"), 1.0);
    let metric = |name, labels: &[(&str, &str)]| stack.gateway.metric(name, labels);
    let api = [("credit_type", "api")];
    assert_eq!(metric("creditgate_credits_reserved_total", &api), 5.0);
    assert_eq!(metric("creditgate_credits_burned_total", &api), 5.0);
    assert!(metric("creditgate_store_latency_seconds_count", &[]) >= 6.0);
    stack.wait_for_metric("creditgate_holds_in_flight", &[], 0.0);
    // The config hash is the SHA-1 of the file, the same as `sha1sum pricing.toml`.
    let config = std::fs::read(stack.gateway.config_path()).expect("config file");
    let hash = sha1_smol::Sha1::from(&config).digest().to_string();
    assert_eq!(metric("creditgate_config_info", &[("hash", &hash)]), 1.0);
}

#[test]
fn a_retry_with_the_same_idempotency_key_burns_once() {
    let stack = Stack::start(search_config).expect("stack");
    stack.credits.grant(ALICE, 10).expect("grant");
    let key = [("idempotency-key", "retry-7f3a")];

    let first = stack.send("GET", "/search", Some(ALICE_KEY), &key);
    assert_eq!(first.status, 200, "{first:#?}");
    assert_eq!(first.header_i64("x-credits-charged"), 1);
    stack
        .credits
        .wait_for_balance(ALICE, (9, 0))
        .expect("first settled");

    let retry = stack.send("GET", "/search", Some(ALICE_KEY), &key);
    assert_eq!(retry.status, 200, "{retry:#?}");
    assert_eq!(retry.header_i64("x-credits-charged"), 0, "{retry:#?}");
    assert_eq!(stack.upstream.count(), 2, "the retry is still proxied");
    stack
        .credits
        .wait_for_balance(ALICE, (9, 0))
        .expect("the retry burns nothing");
    assert_eq!(stack.decisions(Some("search"), "replayed"), 1.0);

    // Another key is another request and pays.
    let other = stack.send(
        "GET",
        "/search",
        Some(ALICE_KEY),
        &[("idempotency-key", "retry-other")],
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.header_i64("x-credits-charged"), 1);
    stack
        .credits
        .wait_for_balance(ALICE, (8, 0))
        .expect("a new key pays");
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream_nor_change_who_pays() {
    let stack = Stack::start(search_config).expect("stack");
    stack.credits.grant(ALICE, 10).expect("grant alice");
    stack.credits.grant(MALLORY, 10).expect("grant mallory");

    let reply = stack.send(
        "GET",
        "/search",
        Some(MALLORY_KEY),
        &[("X-Customer-Id", ALICE), ("X-Creditgate-Customer", ALICE)],
    );
    assert_eq!(reply.status, 200, "{reply:#?}");

    let seen = stack.upstream.last_request().expect("upstream saw it");
    assert_eq!(
        seen.header_all("x-creditgate-customer"),
        vec![MALLORY],
        "only the key's customer, once: {seen:#?}"
    );
    assert_eq!(seen.header("x-customer-id"), None, "{seen:#?}");
    stack
        .credits
        .wait_for_balance(MALLORY, (9, 0))
        .expect("mallory pays");
    stack
        .credits
        .wait_for_balance(ALICE, (10, 0))
        .expect("alice does not");
}

#[test]
fn an_upstream_5xx_voids_the_hold() {
    let stack = Stack::start(|upstream| {
        base_config(upstream)
            + r#"
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
on_upstream_error = "void"
"#
    })
    .expect("stack");
    stack.credits.grant(ALICE, 10).expect("grant");

    stack.upstream.fail_next(1, 500);
    let failed = stack.get("/search", Some(ALICE_KEY));
    assert_eq!(failed.status, 500, "the upstream's status is passed on");
    assert_eq!(stack.upstream.count(), 1);
    let after = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(after, (10, 0), "the hold is voided, nothing burned");

    let ok = stack.get("/search", Some(ALICE_KEY));
    assert_eq!(ok.status, 200);
    stack
        .credits
        .wait_for_balance(ALICE, (9, 0))
        .expect("a good answer burns");
}

#[test]
fn a_missing_or_unknown_key_is_401_and_never_reaches_the_upstream() {
    let stack = Stack::start(search_config).expect("stack");

    let missing = stack.get("/search", None);
    assert_eq!(missing.status, 401, "{missing:#?}");
    assert_eq!(missing.json()["error"], "unauthorized");
    assert!(missing.json()["message"].is_string(), "{missing:#?}");

    let unknown = stack.get("/search", Some("cg_test_nobody"));
    assert_eq!(unknown.status, 401, "{unknown:#?}");
    assert_eq!(unknown.json()["error"], "unauthorized");
    assert_eq!(stack.upstream.count(), 0);
    assert_eq!(stack.decisions(None, "unauthorized"), 2.0);

    // A key registered in Redis instead of the config identifies its customer.
    let bob_key = "cg_test_bob_redis_only";
    let apikey = format!("cg:apikey:{}", sha256_hex(bob_key));
    stack
        .redis
        .cli(&["SET", &apikey, "bob"])
        .expect("register bob's key");
    stack.credits.grant("bob", 2).expect("grant bob");
    let bob = stack.get("/search", Some(bob_key));
    assert_eq!(bob.status, 200, "{bob:#?}");
    let seen = stack.upstream.last_request().expect("upstream saw bob");
    assert_eq!(seen.header("x-creditgate-customer"), Some("bob"));
    stack
        .credits
        .wait_for_balance("bob", (1, 0))
        .expect("bob pays");
}

#[test]
fn shadow_mode_never_blocks_and_counts_would_block() {
    let stack = Stack::start(|upstream| {
        base_config(upstream)
            + r#"
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
mode = "shadow"
"#
    })
    .expect("stack");

    for i in 0..5 {
        let reply = stack.get("/search", Some(ALICE_KEY));
        assert_eq!(reply.status, 200, "request {}: {reply:#?}", i + 1);
    }
    assert_eq!(stack.upstream.count(), 5);
    assert_eq!(stack.decisions(Some("search"), "would_block"), 5.0);
    assert_eq!(stack.decisions(Some("search"), "blocked"), 0.0);
}

#[test]
fn off_mode_works_with_redis_down_and_readiness_follows_the_store() {
    let mut stack = Stack::start(|upstream| {
        base_config(upstream)
            + r#"
[[routes]]
name = "health"
method = "GET"
path = "/health"
feature = "health"
mode = "off"
"#
    })
    .expect("stack");

    assert_eq!(stack.gateway.admin_get("/readyz").expect("readyz").0, 200);
    stack.redis.stop();
    wait_for_readyz(&stack.gateway, 503);
    assert_eq!(
        stack.gateway.admin_get("/healthz").expect("healthz").0,
        200,
        "healthz answers 200 whatever the store does"
    );
    for i in 0..3 {
        let reply = stack.get("/health", Some(ALICE_KEY));
        assert_eq!(reply.status, 200, "request {}: {reply:#?}", i + 1);
    }
    assert_eq!(stack.upstream.count(), 3);
    // `off` makes no store call at all, so a dead Redis shows no reserve or settle error.
    let metrics = stack.gateway.metrics();
    for op in ["reserve", "settle", "void"] {
        let errors = creditgate_testkit::metric_value(
            &metrics,
            "creditgate_store_errors_total",
            &[("op", op)],
        )
        .unwrap_or(0.0);
        assert_eq!(errors, 0.0, "store errors for {op} on an off route");
    }
}

/// Polls `/readyz` until it answers `status`, for at most 5 s.
fn wait_for_readyz(gateway: &Gateway, status: u16) {
    let what = format!("/readyz answers {status}");
    let answers = || gateway.admin_get("/readyz").expect("readyz");
    creditgate_testkit::wait_for(
        &what,
        Duration::from_secs(5),
        || answers().0 == status,
        || format!("/readyz answers {:?}", answers()),
    );
}

#[test]
fn the_embedded_store_applies_embedded_grants() {
    let upstream = Upstream::start().expect("upstream");
    let config = search_config(upstream.addr())
        + &format!(
            r#"
[[embedded_grants]]
grant_id = "welcome"
customer = "{ALICE}"
credit_type = "api"
amount = 3
"#
        );
    let mut gateway = Gateway::start(GatewayOptions {
        config_toml: config,
        redis_url: None,
        ..GatewayOptions::default()
    })
    .expect("gateway on the embedded store");
    let http = http_client();
    let url = format!("{}/search", gateway.proxy_url());

    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let reply = send(&http, "GET", &url, Some(ALICE_KEY), &[]);
        assert_eq!(reply.status, 200, "request {}: {reply:#?}", i + 1);
        assert_eq!(reply.header_i64("x-credits-remaining"), remaining);
    }
    let blocked = send(&http, "GET", &url, Some(ALICE_KEY), &[]);
    assert_eq!(blocked.status, 402, "{blocked:#?}");
    assert_eq!(blocked.json()["error"], "insufficient_credits");
    assert_eq!(upstream.count(), 3);

    let status = gateway.stop().expect("graceful stop on SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
