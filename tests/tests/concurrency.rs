//! Many clients racing for a small balance through the real gateway: exactly the paid
//! requests reach the upstream, and the balance ends at exactly zero. With credit leases
//! on, across two gateways on one Redis, too: each request still burns its own hold.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::collections::HashSet;
use std::time::Duration;

use creditgate_protocol::{EventBody, Keyspace, RedisStore, RedisTarget};
use creditgate_testkit::{
    ALICE, ALICE_KEY, Gateway, GatewayOptions, PREFIX, REQUEST_TIMEOUT, SHARDS, Stack, base_config,
};
use tokio::task::JoinSet;

/// Concurrent clients, each sending one request.
const CLIENTS: usize = 300;

/// Requests the balance pays for.
const PAID: u64 = 100;

/// Bound on the whole burst, so a stuck gateway fails the test instead of hanging it.
const BURST_TIMEOUT: Duration = Duration::from_secs(60);

const SEARCH_ROUTE: &str = r#"
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#;

/// Sends `CLIENTS` concurrent requests, spread over `urls` in turn; their statuses.
fn burst(urls: &[String]) -> Vec<u16> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("async client");
        let mut clients = JoinSet::new();
        for i in 0..CLIENTS {
            let (client, url) = (client.clone(), urls[i % urls.len()].clone());
            clients.spawn(async move {
                let response = client.get(&url).bearer_auth(ALICE_KEY).send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                Ok::<u16, reqwest::Error>(status)
            });
        }
        tokio::time::timeout(BURST_TIMEOUT, clients.join_all())
            .await
            .expect("the burst finished in time")
            .into_iter()
            .map(|r| r.expect("a request failed at the transport level"))
            .collect()
    })
}

/// Exactly `PAID` answered 200, the rest 402, nothing else.
fn assert_exactly_paid(statuses: &[u16]) {
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let blocked = statuses.iter().filter(|s| **s == 402).count();
    let other: Vec<u16> = statuses
        .iter()
        .copied()
        .filter(|s| *s != 200 && *s != 402)
        .collect();
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    assert_eq!(ok as u64, PAID, "admitted");
    assert_eq!(blocked, CLIENTS - PAID as usize, "blocked");
}

#[test]
fn three_hundred_clients_against_a_balance_for_one_hundred() {
    let stack = Stack::start(|upstream| base_config(upstream) + SEARCH_ROUTE).expect("stack");
    stack.credits.grant(ALICE, PAID).expect("grant");
    let url = format!("{}/search", stack.gateway.proxy_url());

    let statuses = burst(&[url]);
    assert_exactly_paid(&statuses);
    assert_eq!(stack.upstream.count(), PAID, "reached the upstream");
    stack
        .credits
        .wait_for_balance(ALICE, (0, 0))
        .expect("everything burned, nothing held");
    // The gauge drops when the gateway has the settle reply, a moment after Redis applied
    // it, so it is polled like the balance.
    stack.wait_for_metric("creditgate_holds_in_flight", &[], 0.0);
}

#[test]
fn three_hundred_clients_against_one_hundred_credits_with_leases_across_two_gateways() {
    let config = |upstream| base_config(upstream) + SEARCH_ROUTE + "enforcement = \"lease\"\n";
    let stack = Stack::start(config).expect("stack");
    let second = Gateway::start(GatewayOptions {
        config_toml: config(stack.upstream.addr()),
        redis_url: Some(stack.redis.url()),
        ..GatewayOptions::default()
    })
    .expect("second gateway");
    stack.credits.grant(ALICE, PAID).expect("grant");
    let urls = [
        format!("{}/search", stack.gateway.proxy_url()),
        format!("{}/search", second.proxy_url()),
    ];

    let statuses = burst(&urls);
    assert_exactly_paid(&statuses);
    assert_eq!(stack.upstream.count(), PAID, "reached the upstream");
    stack
        .credits
        .wait_for_balance(ALICE, (0, 0))
        .unwrap_or_else(|e| {
            panic!(
                "everything burned, nothing held, the leases gone: {e:#}\n{}\n{}",
                stack.gateway.log_tail(20),
                second.log_tail(20)
            )
        });

    // The ledger's view: one placed and one posted hold per admitted request, under its
    // own request id, as in hold mode; the leases' own holds are never posted.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let posted = runtime.block_on(async {
        let keyspace = Keyspace::new(PREFIX, SHARDS);
        let shard = keyspace.shard_of(ALICE);
        let store = RedisStore::connect(&RedisTarget::Single(stack.redis.url()), keyspace, 2_000)
            .await
            .expect("store");
        let events = store.stream_events(shard, 100_000).await.expect("events");
        events
            .into_iter()
            .filter_map(|(_, e)| match e.body {
                EventBody::HoldPlaced { hold_id, .. } if hold_id.starts_with("lease-") => {
                    Some((hold_id, 0, String::new(), String::new()))
                }
                EventBody::HoldPosted {
                    hold_id,
                    posted,
                    context,
                    ..
                } => Some((hold_id, posted, context.request_id, context.feature)),
                _ => None,
            })
            .collect::<Vec<_>>()
    });
    let (leases, posted): (Vec<_>, Vec<_>) = posted.into_iter().partition(|p| p.1 == 0);
    assert!(!leases.is_empty(), "the gateways took leases");
    assert_eq!(
        posted.len() as u64,
        PAID,
        "one posted hold per request: {posted:?}"
    );
    let request_ids: HashSet<&str> = posted.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(request_ids.len() as u64, PAID, "distinct request ids");
    for (hold_id, amount, _, feature) in &posted {
        assert!(
            !hold_id.starts_with("lease-"),
            "a lease was posted: {hold_id}"
        );
        assert_eq!((*amount, feature.as_str()), (1, "search"), "{hold_id}");
    }
}

#[test]
fn a_lease_is_returned_on_graceful_shutdown() {
    let config = |upstream| base_config(upstream) + SEARCH_ROUTE + "enforcement = \"lease\"\n";
    let mut stack = Stack::start(config).expect("stack");
    stack.credits.grant(ALICE, 1_000).expect("grant");
    for _ in 0..3 {
        let reply = stack.get("/search", Some(ALICE_KEY));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let (available, held) = stack.credits.balance(ALICE).expect("balance");
    assert!(held > 0, "a lease is held: ({available}, {held})");
    let status = stack.gateway.stop().expect("graceful stop");
    assert!(status.success(), "{status:?}");
    // Exactly the three requests burned; the lease's unused credits are back.
    assert_eq!(stack.credits.balance(ALICE).expect("balance"), (997, 0));
}
