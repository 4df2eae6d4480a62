//! A dead, paused or failing Redis under the real gateway: `fail_open` routes go on for the
//! callers the gateway knows (and for nobody else), `fail_closed` routes answer 503, no
//! request waits longer than the route's store timeout plus a small margin, and the circuit
//! breaker lets the store back in once Redis is healthy, whatever its error replies were.
//!
//! The tests of this file run one at a time, so their latencies are not measured while
//! another stack competes for the CPU. Needs `redis-server` and a built gateway.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use creditgate_testkit::{
    ALICE, ALICE_KEY, Gateway, PREFIX, Reply, Stack, base_config, sha256_hex, wait_for,
};

/// The routes' `store_timeout_ms`.
const STORE_TIMEOUT_MS: u64 = 100;

/// What a request may take past the store timeout: proxying on loopback and the client.
const MARGIN_MS: u64 = 50;

/// Requests per route while the store is down.
const REQUESTS: usize = 5;

/// Serialises the tests of this file (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

fn failure_config(upstream: SocketAddr) -> String {
    base_config(upstream)
        + &format!(
            r#"
[[routes]]
name = "open"
method = "GET"
path = "/open"
feature = "search"
failure_policy = "fail_open"
store_timeout_ms = {STORE_TIMEOUT_MS}

[[routes]]
name = "closed"
method = "GET"
path = "/closed"
feature = "search"
failure_policy = "fail_closed"
store_timeout_ms = {STORE_TIMEOUT_MS}
"#
        )
}

/// A stack whose routes both answered once while Redis was healthy.
fn warm_stack() -> Stack {
    let stack = Stack::start(failure_config).expect("stack");
    stack.credits.grant(ALICE, 100).expect("grant");
    for path in ["/open", "/closed"] {
        let reply = stack.get(path, Some(ALICE_KEY));
        assert_eq!(reply.status, 200, "{path} with a healthy Redis: {reply:#?}");
    }
    stack.upstream.reset();
    stack
}

fn assert_fast(reply: &Reply, what: &str) {
    let bound = Duration::from_millis(STORE_TIMEOUT_MS + MARGIN_MS);
    assert!(
        reply.elapsed <= bound,
        "{what} took {:?}, more than the store timeout + {MARGIN_MS} ms ({bound:?})",
        reply.elapsed
    );
}

/// Sends [`REQUESTS`] to each route and checks status, body and latency of each.
fn assert_failure_policies(stack: &Stack, why: &str) {
    for i in 0..REQUESTS {
        let open = stack.get("/open", Some(ALICE_KEY));
        assert_eq!(open.status, 200, "{why}: fail_open request {i}: {open:#?}");
        assert_fast(&open, &format!("{why}: fail_open request {i}"));

        let closed = stack.get("/closed", Some(ALICE_KEY));
        assert_eq!(
            closed.status, 503,
            "{why}: fail_closed request {i}: {closed:#?}"
        );
        assert_eq!(
            closed.json()["error"],
            "credit_store_unavailable",
            "{closed:#?}"
        );
        assert_fast(&closed, &format!("{why}: fail_closed request {i}"));
    }
    assert_eq!(
        stack.upstream.count(),
        REQUESTS as u64,
        "{why}: only the fail_open requests reach the upstream"
    );
    assert_eq!(
        stack.decisions(Some("open"), "fail_open"),
        REQUESTS as f64,
        "{why}"
    );
    assert_eq!(
        stack.decisions(Some("closed"), "fail_closed"),
        REQUESTS as f64,
        "{why}"
    );
}

#[test]
fn redis_stopped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut stack = warm_stack();
    stack.redis.stop();
    assert_failure_policies(&stack, "Redis stopped");
}

#[test]
fn redis_paused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stack = warm_stack();
    stack
        .redis
        .cli(&["CLIENT", "PAUSE", "3000", "ALL"])
        .expect("pause Redis");
    assert_failure_policies(&stack, "Redis paused");
    // No UNPAUSE: a paused Redis holds back redis-cli's own command until the pause ends,
    // so it would only add wall time; dropping the stack kills the server.
}

/// A reserve that timed out may still run once Redis answers again (PROTOCOL.md: "a
/// timeout does not mean the script did not run"). The hold it places must not stay
/// pending until its deadline: the gateway should void it (or settle it, metering the
/// usage it admitted while failing open) soon after the store is back.
#[test]
fn a_reserve_that_timed_out_leaves_no_pending_hold() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stack = warm_stack();
    stack
        .credits
        .wait_for_balance(ALICE, (98, 0))
        .expect("warm-up settled");
    stack
        .redis
        .cli(&["CLIENT", "PAUSE", "1000", "ALL"])
        .expect("pause Redis");
    for i in 0..3 {
        let open = stack.get("/open", Some(ALICE_KEY));
        assert_eq!(open.status, 200, "fail_open request {i}: {open:#?}");
    }
    // Wait out the pause, then give the gateway the usual settlement time.
    std::thread::sleep(Duration::from_millis(1_200));
    let (available, held) = stack
        .credits
        .wait_until_settled(ALICE)
        .expect("balance after the pause");
    assert_eq!(
        held, 0,
        "holds left pending after the pause (available {available})"
    );
    // The three requests admitted while failing open were metered once Redis was back.
    assert_eq!(available, 95, "fail-open usage metered after the pause");
}

/// Publishes `key` for `customer` in Redis only (as the sidecar's admin API does), with
/// credits: a key the config does not list.
fn issue_redis_key(stack: &Stack, key: &str, customer: &str) {
    let name = format!("{PREFIX}:apikey:{}", sha256_hex(key));
    stack
        .redis
        .cli(&["SET", &name, customer])
        .expect("publish the API key");
    stack.credits.grant(customer, 100).expect("grant");
}

/// Failing open is for paying customers, not for anyone: with Redis down, a `fail_open`
/// route proxies the keys the gateway knows (from the config, or looked up in Redis
/// before) and refuses every other key with 503, without reaching the upstream.
#[test]
fn failing_open_admits_only_api_keys_the_gateway_knows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut stack = warm_stack();
    // Bob's key lives in Redis only and was used once: the gateway has it cached. Carol's
    // key is valid too, but this gateway never saw it; nobody issued the third.
    let (bob_key, carol_key, nobody_key) = ("cg_test_bob_6a1e", "cg_test_carol_93d0", "guess");
    issue_redis_key(&stack, bob_key, "bob");
    issue_redis_key(&stack, carol_key, "carol");
    let bob = stack.get("/open", Some(bob_key));
    assert_eq!(bob.status, 200, "Bob with a healthy Redis: {bob:#?}");
    stack.upstream.reset();

    stack.redis.stop();
    for i in 0..REQUESTS {
        for key in [carol_key, nobody_key] {
            let reply = stack.get("/open", Some(key));
            assert_eq!(
                reply.status, 503,
                "unknown key {key}, request {i}: {reply:#?}"
            );
            assert_eq!(
                reply.json()["error"],
                "credit_store_unavailable",
                "{reply:#?}"
            );
            assert_fast(&reply, &format!("unknown key {key}, request {i}"));
        }
        assert_eq!(
            stack.upstream.count(),
            0,
            "an unknown key reached the upstream"
        );
    }
    for key in [ALICE_KEY, bob_key] {
        let reply = stack.get("/open", Some(key));
        assert_eq!(reply.status, 200, "known key {key}: {reply:#?}");
    }
    assert_eq!(
        stack.upstream.count(),
        2,
        "known keys are proxied while failing open"
    );
    assert_eq!(stack.decisions(Some("open"), "fail_open"), 2.0);
    assert_eq!(
        stack.decisions(Some("open"), "fail_closed"),
        2.0 * REQUESTS as f64,
        "an unknown key refused during the outage counts as fail_closed"
    );
}

/// Polls `/readyz` until it answers `status`, for at most `within`.
fn wait_for_readyz(gateway: &Gateway, status: u16, within: Duration) {
    let answers = || gateway.admin_get("/readyz").expect("readyz");
    wait_for(
        &format!("/readyz answers {status}"),
        within,
        || answers().0 == status,
        || format!("/readyz answers {:?}", answers()),
    );
}

/// A Redis that answers, but with error replies (here OOM: `maxmemory` reached under
/// `noeviction`), fails every reserve: the circuit opens and `/readyz` says not ready. The
/// circuit first opens on timeouts (a paused Redis), so that its half-open probe is the
/// call answered with OOM, which used to stay "in flight" for ever and shut the store out
/// until a restart. Once Redis takes writes again, requests are metered again.
#[test]
fn the_circuit_recovers_after_error_replies() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stack = warm_stack();
    stack
        .credits
        .wait_for_balance(ALICE, (98, 0))
        .expect("warm-up settled");
    let circuit =
        |expected: f64| stack.wait_for_metric("creditgate_store_circuit_open", &[], expected);

    // Writes (scripts included) wait while paused: the reserves time out and open the
    // circuit. CONFIG is no write, so OOM is set up during the pause.
    stack
        .redis
        .cli(&["CLIENT", "PAUSE", "1500", "WRITE"])
        .expect("pause writes");
    for i in 0..REQUESTS + 1 {
        let closed = stack.get("/closed", Some(ALICE_KEY));
        assert_eq!(closed.status, 503, "paused, request {i}: {closed:#?}");
    }
    circuit(1.0);
    wait_for_readyz(&stack.gateway, 503, Duration::from_secs(1));
    stack
        .redis
        .cli(&["CONFIG", "SET", "maxmemory", "1"])
        .expect("set maxmemory");

    // Past the pause, every probe is answered OOM: the circuit stays open, and each probe
    // is resolved, so the next open period ends with a new one.
    std::thread::sleep(Duration::from_millis(1_700));
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1_100));
        let closed = stack.get("/closed", Some(ALICE_KEY));
        assert_eq!(closed.status, 503, "OOM, round {round}: {closed:#?}");
        assert_eq!(
            stack.gateway.admin_get("/readyz").expect("readyz").0,
            503,
            "not ready while Redis refuses writes (round {round})"
        );
    }
    circuit(1.0);
    assert_eq!(
        stack.upstream.count(),
        0,
        "nothing proxied on a fail_closed route"
    );

    stack
        .redis
        .cli(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("clear maxmemory");
    wait_for(
        "a request admitted once Redis takes writes again",
        Duration::from_secs(5),
        || stack.get("/closed", Some(ALICE_KEY)).status == 200,
        || {
            format!(
                "circuit open: {}",
                stack.gateway.metric("creditgate_store_circuit_open", &[])
            )
        },
    );
    circuit(0.0);
    wait_for_readyz(&stack.gateway, 200, Duration::from_secs(3));
}
