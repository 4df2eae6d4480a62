//! A dead or paused Redis under the real gateway: `fail_open` routes go on, `fail_closed`
//! routes answer 503, and no request waits longer than the route's store timeout plus a
//! small margin.
//!
//! The tests of this file run one at a time, so their latencies are not measured while
//! another stack competes for the CPU. Needs `redis-server` and a built gateway.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use creditgate_testkit::{ALICE, ALICE_KEY, Reply, Stack, base_config};

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
