//! Graceful shutdown: a gateway told to stop (SIGTERM) finishes the requests in flight and
//! settles their holds before it exits, and takes no new ones.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::thread;
use std::time::Duration;

use creditgate_testkit::{ALICE, ALICE_KEY, Stack, base_config};

#[test]
fn sigterm_lets_requests_in_flight_finish_and_settle() {
    let mut stack = Stack::start(|upstream| {
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
    stack.credits.grant(ALICE, 10).expect("grant");
    stack.upstream.set_delay(Duration::from_millis(1_500));

    let url = format!("{}/search", stack.gateway.proxy_url());
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let http = stack.http.clone();
            let url = url.clone();
            thread::spawn(move || {
                http.get(&url)
                    .bearer_auth(ALICE_KEY)
                    .send()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    // Let the three requests reach the slow upstream, then ask the gateway to stop.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(stack.credits.balance(ALICE).expect("balance"), (7, 3));
    let status = stack
        .gateway
        .stop()
        .expect("the gateway exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    for request in in_flight {
        let status = request.join().expect("client thread").expect("response");
        assert_eq!(
            status, 200,
            "a request in flight was cut off by the shutdown"
        );
    }
    // The gateway has exited: the settles ran before it did.
    assert_eq!(
        stack.credits.balance(ALICE).expect("balance"),
        (7, 0),
        "every hold was settled before exit"
    );
    assert_eq!(stack.upstream.count(), 3);
}
