//! Requests longer than their hold's TTL, end to end: the real gateway between a real Redis
//! and the fake model server streaming slowly, with the real sidecar sweeping holds and
//! writing the ledger. A stream that outlives `hold_ttl_ms` is charged (its hold is renewed
//! while it runs, so the sweeper never expires it); a gateway killed mid-request leaves a
//! hold that nothing renews, and the sweeper expires it.
//!
//! Needs `redis-server` and built binaries (`cargo build -p creditgate-gateway -p
//! creditgate-sidecar`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use creditgate_testkit::{
    ALICE, ALICE_KEY, Credits, Gateway, GatewayOptions, LedgerTarget, ModelServer, RedisServer,
    Sidecar, SidecarOptions, base_config, http_client, send,
};

/// The hold TTL of the test config, in milliseconds: the shortest the config allows.
const HOLD_TTL_MS: u64 = 1_000;
/// What one stream costs.
const STREAM_COST: i64 = 5;
/// Granted before each test.
const GRANTED: i64 = 100;

/// The base config with a 1 s hold TTL and a fixed-price streaming route on the model
/// server, whose reads each stay well within the read timeout.
fn config(model: SocketAddr) -> String {
    base_config(model).replacen(
        "[defaults]\n",
        &format!("[defaults]\nhold_ttl_ms = {HOLD_TTL_MS}\n"),
        1,
    ) + &format!(
        r#"
[upstreams.model]
address = "{model}"
read_timeout_ms = 2000

[features.stream]
credit_type = "api"
cost = {{ kind = "fixed", amount = {STREAM_COST} }}

[[routes]]
name = "stream"
method = "GET"
path = "/v1/stream"
feature = "stream"
upstream = "model"
"#
    )
}

/// Redis, the model server, the sidecar (SQLite ledger) and the gateway.
struct LongStack {
    gateway: Gateway,
    sidecar: Sidecar,
    credits: Credits,
    _model: ModelServer,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl LongStack {
    fn start() -> Self {
        let redis = RedisServer::start().expect("redis");
        let model = ModelServer::start().expect("model server");
        let dir = tempfile::tempdir().expect("tempdir");
        let sidecar = Sidecar::start(SidecarOptions::new(
            redis.url(),
            LedgerTarget::Sqlite(dir.path().join("ledger.db")),
        ))
        .expect("sidecar");
        let credits = Credits::connect(&redis.url()).expect("credits");
        credits.grant(ALICE, GRANTED as u64).expect("grant");
        let gateway = Gateway::start(GatewayOptions {
            config_toml: config(model.addr()),
            redis_url: Some(redis.url()),
            ..GatewayOptions::default()
        })
        .expect("gateway");
        Self {
            gateway,
            sidecar,
            credits,
            _model: model,
            _redis: redis,
            _dir: dir,
        }
    }

    fn stream_url(&self, chunks: u32, delay_ms: u64) -> String {
        format!(
            "{}/v1/stream?chunks={chunks}&delay_ms={delay_ms}",
            self.gateway.proxy_url()
        )
    }

    /// The kinds of the ledger entries of `request_id`, once there are `at_least`.
    fn trail(&self, request_id: &str, at_least: usize) -> serde_json::Value {
        let path = format!("/v1/requests/{request_id}/trail");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let response = self.sidecar.http_get(&path).expect("trail");
            if response.status == 200 {
                let trail: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
                if trail["entries"].as_array().map_or(0, Vec::len) >= at_least {
                    return trail;
                }
            }
            assert!(
                Instant::now() < deadline,
                "trail of {request_id} has fewer than {at_least} entries: {}\n{}",
                response.body,
                self.sidecar.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kinds(trail: &serde_json::Value) -> Vec<String> {
    trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_stream_longer_than_the_hold_ttl_is_charged_and_its_hold_never_expires() {
    let stack = LongStack::start();
    // Ten events 400 ms apart: over four hold TTLs, each read well within the timeout.
    let started = Instant::now();
    let reply = send(
        &http_client(),
        "GET",
        &stack.stream_url(10, 400),
        Some(ALICE_KEY),
        &[],
    );
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(started.elapsed() > Duration::from_millis(4 * HOLD_TTL_MS));
    assert_eq!(reply.body.matches("data: ").count(), 12, "every event");
    let request_id = reply.header("x-request-id").expect("x-request-id");

    let (available, held) = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(
        (available, held),
        (GRANTED - STREAM_COST, 0),
        "charged once: {}",
        stack.gateway.log_tail(30)
    );
    let trail = stack.trail(&request_id, 2);
    assert_eq!(kinds(&trail), ["hold_placed", "hold_posted"], "{trail:#}");
    let posted = &trail["entries"][1];
    assert_eq!(posted["amount"], -STREAM_COST, "{posted:#}");
    assert!(
        posted["details"].get("late").is_none(),
        "renewed, not late: {posted:#}"
    );
    // The sidecar's sweeper ran several times during the stream and expired nothing.
    assert_eq!(
        stack
            .sidecar
            .metric("creditgate_sweeper_holds_expired_total", &[]),
        0.0
    );
    assert!(
        stack
            .gateway
            .metric("creditgate_hold_renewals_total", &[("outcome", "extended")])
            >= 3.0,
        "{}",
        stack.gateway.metrics()
    );
    assert_eq!(
        stack
            .gateway
            .metric("creditgate_late_burns_total", &[("credit_type", "api")]),
        0.0
    );
}

#[test]
fn a_hold_left_by_a_gateway_killed_mid_request_still_expires() {
    let mut stack = LongStack::start();
    let url = stack.stream_url(40, 250);
    let client = std::thread::spawn(move || {
        // The gateway dies mid-stream: the transfer fails; nothing to check here.
        let _ = http_client()
            .get(url)
            .bearer_auth(ALICE_KEY)
            .send()
            .and_then(|r| r.bytes());
    });
    stack
        .credits
        .wait_for_balance(ALICE, (GRANTED - STREAM_COST, STREAM_COST))
        .expect("the hold is placed");
    // Let it be renewed at least once, then crash the gateway.
    std::thread::sleep(Duration::from_millis(HOLD_TTL_MS / 2));
    stack.gateway.kill();
    let killed = Instant::now();
    // Nothing renews it now: the sweeper expires it and every credit comes back.
    let deadline = killed + Duration::from_secs(10);
    while stack.credits.balance(ALICE).expect("balance") != (GRANTED, 0) {
        assert!(
            Instant::now() < deadline,
            "the hold never expired: {:?}\n{}",
            stack.credits.balance(ALICE),
            stack.sidecar.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        killed.elapsed() < Duration::from_millis(HOLD_TTL_MS * 5),
        "expired within the TTL and a sweep"
    );
    assert_eq!(
        stack
            .sidecar
            .metric("creditgate_sweeper_holds_expired_total", &[]),
        1.0
    );
    client.join().expect("client thread");
}
