//! Many clients racing for a small balance through the real gateway: exactly the paid
//! requests reach the upstream, and the balance ends at exactly zero.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::time::Duration;

use creditgate_testkit::{ALICE, ALICE_KEY, REQUEST_TIMEOUT, Stack, base_config};
use tokio::task::JoinSet;

/// Concurrent clients, each sending one request.
const CLIENTS: usize = 300;

/// Requests the balance pays for.
const PAID: u64 = 100;

/// Bound on the whole burst, so a stuck gateway fails the test instead of hanging it.
const BURST_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn three_hundred_clients_against_a_balance_for_one_hundred() {
    let stack = Stack::start(|upstream| {
        base_config(upstream)
            + r#"
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#
    })
    .expect("stack");
    stack.credits.grant(ALICE, PAID).expect("grant");
    let url = format!("{}/search", stack.gateway.proxy_url());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let statuses: Vec<u16> = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("async client");
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            let (client, url) = (client.clone(), url.clone());
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
    });

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
    assert_eq!(stack.upstream.count(), PAID, "reached the upstream");
    stack
        .credits
        .wait_for_balance(ALICE, (0, 0))
        .expect("everything burned, nothing held");
    // The gauge drops when the gateway has the settle reply, a moment after Redis applied
    // it, so it is polled like the balance.
    stack.wait_for_metric("creditgate_holds_in_flight", &[], 0.0);
}
