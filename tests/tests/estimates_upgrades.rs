//! Two ways a client used to pay less than its request costs, end to end: a chunked body on
//! a route that estimates from the body (the gateway reserved the small fixed estimate
//! without reading it), and a `101 Switching Protocols` answer (the gateway voided the hold,
//! so every upgraded connection was free). The real gateway between a real Redis, the
//! counting upstream (which hashes every body it receives) and an upstream that answers 101.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_testkit::{
    ALICE, ALICE_KEY, RawResponse, Script, ScriptedUpstream, Stack, base_config, loopback,
    parse_responses, raw_exchange,
};
use sha2::{Digest, Sha256};

/// Reserved by an estimate route without `estimate_from` would be this; with it, never.
const FIXED_ESTIMATE: i64 = 10;
/// The most one chat request costs, reserved whenever its body cannot be used.
const MAX: i64 = 5_000;
/// What a chat response without usage settles at (the counting upstream reports none).
const FALLBACK: i64 = 7;
/// The body bound of the estimate routes, in bytes.
const BODY_BOUND: usize = 1_024;
/// The price of one upgraded connection.
const SOCKET_PRICE: i64 = 50;

fn config(upstream: SocketAddr, sockets: SocketAddr) -> String {
    let chat = format!(
        r#"kind = "from_response", estimate = {FIXED_ESTIMATE}, max = {MAX}, fallback = {FALLBACK}, estimate_from = "max_tokens", estimate_rate = 1, estimate_max_body_bytes = {BODY_BOUND}, usage = {{ "usage.total_tokens" = 1 }}"#
    );
    base_config(upstream)
        + &format!(
            r#"
[upstreams.sockets]
address = "{sockets}"

[features.chat]
credit_type = "api"
cost = {{ {chat} }}

[features.strict_chat]
credit_type = "api"
cost = {{ {chat}, estimate_unreadable = "refuse" }}

[features.big_chat]
credit_type = "api"
cost = {{ kind = "from_response", estimate = {FIXED_ESTIMATE}, max = {MAX}, fallback = {FALLBACK}, estimate_from = "max_tokens", estimate_rate = 1, usage = {{ "usage.total_tokens" = 1 }} }}

[features.socket]
credit_type = "api"
cost = {{ kind = "fixed", amount = {SOCKET_PRICE} }}

[[routes]]
method = "POST"
path = "/v1/chat"
feature = "chat"

[[routes]]
method = "POST"
path = "/v1/strict"
feature = "strict_chat"

[[routes]]
method = "POST"
path = "/v1/big"
feature = "big_chat"

[[routes]]
method = "GET"
path = "/ws"
feature = "socket"
upstream = "sockets"

[[routes]]
method = "GET"
path = "/ws-refused"
feature = "socket"
upstream = "sockets"
upgrade = "refuse"
"#
        )
}

/// The stack and the upgrading upstream behind `/ws`.
struct Setup {
    stack: Stack,
    sockets: ScriptedUpstream,
}

fn start() -> Setup {
    let sockets = ScriptedUpstream::start(Script::Upgrade).expect("scripted upstream");
    let stack = Stack::start(|upstream| config(upstream, sockets.addr())).expect("stack");
    Setup { stack, sockets }
}

impl Setup {
    fn log(&self) -> String {
        self.stack.gateway.log_tail(40)
    }

    /// `(available, held)` once nothing is held any more.
    fn settled(&self) -> (i64, i64) {
        self.stack
            .credits
            .wait_until_settled(ALICE)
            .expect("balance")
    }

    /// POSTs `chunks` as a chunked body to `path`, pausing `pause` between chunks and
    /// leaving the body unfinished when `finish` is false; returns the final answer.
    fn post_chunked(
        &self,
        path: &str,
        chunks: &[&[u8]],
        pause: Duration,
        finish: bool,
    ) -> RawResponse {
        let addr = loopback(self.stack.gateway.proxy_port());
        let mut socket = TcpStream::connect(addr).expect("connect to the gateway");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
        // A refusal may close the connection mid-body: a write error is not the test's.
        let _ = socket.write_all(head.as_bytes());
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                thread::sleep(pause);
            }
            let _ = write!(socket, "{:x}\r\n", chunk.len());
            let _ = socket.write_all(chunk);
            let _ = socket.write_all(b"\r\n");
        }
        if finish {
            let _ = socket.write_all(b"0\r\n\r\n");
        }
        let bytes = read_until_closed(&mut socket, ANSWER_TIMEOUT);
        final_answer(&bytes, &self.log())
    }

    /// `(count, sha256 of the last body)` of the counting upstream.
    fn upstream_seen(&self) -> (u64, Option<String>) {
        let last = self.stack.upstream.last_request().map(|r| r.body_sha256);
        (self.stack.upstream.count(), last)
    }
}

/// How long a test waits for the gateway's answer: above the estimate read timeout (5 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads until the gateway closes the connection or `timeout` passes.
fn read_until_closed(socket: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return bytes;
        }
        match socket.read(&mut buffer) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return bytes,
        }
    }
}

/// The first answer that is not an interim `100`.
fn final_answer(bytes: &[u8], log: &str) -> RawResponse {
    parse_responses(bytes)
        .into_iter()
        .find(|r| r.status != 100)
        .unwrap_or_else(|| {
            panic!(
                "no answer in {:?}\n{log}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
            )
        })
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn charged(answer: &RawResponse) -> i64 {
    answer
        .header("x-credits-charged")
        .and_then(|v| v.parse().ok())
        .expect("x-credits-charged")
}

/// A JSON body of about `len` bytes asking for `max_tokens`.
fn chat_body(max_tokens: u64, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"max_tokens":{max_tokens},"prompt":""#);
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

#[test]
fn a_chunked_body_asking_for_more_than_the_balance_is_402_and_never_forwarded() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 100).expect("grant");
    let body = chat_body(4_000, 200);
    let (first, rest) = body.split_at(50);
    let answer = setup.post_chunked("/v1/chat", &[first, rest], Duration::ZERO, true);
    assert_eq!(answer.status, 402, "{}", setup.log());
    assert_eq!(setup.stack.upstream.count(), 0, "the upstream never saw it");
    assert_eq!(setup.settled(), (100, 0), "nothing held, nothing burned");
}

#[test]
fn chunked_bodies_are_estimated_and_reach_the_upstream_byte_for_byte() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 1_000_000).expect("grant");
    let small = chat_body(300, 600);
    // Over the bound but within Pingora's retry buffer: replayed from it.
    let over_bound = chat_body(300, 3 * BODY_BOUND);
    // On a route reading up to 64 KiB, far over Pingora's 64 KiB retry buffer, which then
    // drops what it held: the bytes read are put back in front of the rest.
    let large = chat_body(300, 300 * 1024);
    let cases: [(&str, &str, &[u8], usize, i64); 3] = [
        ("small", "/v1/chat", &small, 100, 300),
        ("over the bound", "/v1/chat", &over_bound, 500, MAX),
        ("past the retry buffer", "/v1/big", &large, 8 * 1024, MAX),
    ];
    for (name, path, body, chunk, reserved) in cases {
        let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
        let before = setup.settled().0;
        let answer = setup.post_chunked(path, &chunks, Duration::ZERO, true);
        assert_eq!(answer.status, 200, "{name}: {}", setup.log());
        assert_eq!(charged(&answer), reserved, "{name}: reserved");
        let (_, sha) = setup.upstream_seen();
        assert_eq!(
            sha,
            Some(sha256(body)),
            "{name}: the body arrived unchanged"
        );
        assert_eq!(before - setup.settled().0, FALLBACK, "{name}: settled");
    }
    assert_eq!(setup.stack.upstream.count(), 3);
}

#[test]
fn a_body_that_stalls_past_the_read_timeout_reserves_max_and_still_arrives_whole() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 1_000_000).expect("grant");
    let body = chat_body(300, 400);
    let (first, rest) = body.split_at(100);
    // The pause outlasts the gateway's 5 s estimate read: it gives up reading, reserves
    // max, and forwards what it read in front of what comes later.
    let answer = setup.post_chunked("/v1/chat", &[first, rest], Duration::from_secs(6), true);
    assert_eq!(answer.status, 200, "{}", setup.log());
    assert_eq!(charged(&answer), MAX);
    assert_eq!(setup.upstream_seen(), (1, Some(sha256(&body))));
    assert_eq!(setup.settled(), (1_000_000 - FALLBACK, 0));
}

#[test]
fn an_unusable_body_reserves_max_or_is_refused_where_the_rule_says() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 1_000_000).expect("grant");
    let not_json: &[u8] = b"max_tokens=1";
    let answer = setup.post_chunked("/v1/chat", &[not_json], Duration::ZERO, true);
    assert_eq!(
        (answer.status, charged(&answer)),
        (200, MAX),
        "{}",
        setup.log()
    );
    let no_field = br#"{"prompt":"hi"}"#;
    let answer = setup.post_chunked("/v1/strict", &[no_field], Duration::ZERO, true);
    assert_eq!(
        (answer.status, charged(&answer)),
        (200, MAX),
        "{}",
        setup.log()
    );
    let seen = setup.stack.upstream.count();

    // Too large, chunked or by its content-length: 413 on the refusing route.
    let over_bound = chat_body(1, 2 * BODY_BOUND);
    let answer = setup.post_chunked("/v1/strict", &[&over_bound], Duration::ZERO, true);
    assert_eq!(answer.status, 413, "{}", setup.log());
    let request = format!(
        "POST /v1/strict HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        over_bound.len()
    );
    let (answers, bytes) = raw_exchange(
        loopback(setup.stack.gateway.proxy_port()),
        &[request.as_bytes(), &over_bound].concat(),
    );
    assert_eq!(
        answers.first().map(|a| a.status),
        Some(413),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    // A chunked body that stops arriving: 411 once the read times out.
    let answer = setup.post_chunked("/v1/strict", &[b"{\"max"], Duration::ZERO, false);
    assert_eq!(answer.status, 411, "{}", setup.log());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        setup.stack.upstream.count(),
        seen,
        "no refusal reached the upstream"
    );
    assert_eq!(
        setup.stack.decisions(Some("POST /v1/strict"), "refused"),
        3.0
    );
    assert_eq!(setup.settled().1, 0, "nothing left held");
}

#[test]
fn an_upgrade_answered_101_is_charged() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 1_000).expect("grant");
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\
         upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
    let (answers, bytes) = raw_exchange(
        loopback(setup.stack.gateway.proxy_port()),
        request.as_bytes(),
    );
    let answer = answers.first().unwrap_or_else(|| {
        panic!(
            "no answer: {:?}\n{}",
            String::from_utf8_lossy(&bytes),
            setup.log()
        )
    });
    assert_eq!(answer.status, 101, "{}", setup.log());
    assert_eq!(setup.sockets.requests().len(), 1);
    assert_eq!(
        setup.settled(),
        (1_000 - SOCKET_PRICE, 0),
        "the upgraded connection is paid: {}",
        setup.log()
    );
}

#[test]
fn an_upgrade_on_a_route_that_refuses_them_never_reaches_the_upstream() {
    let setup = start();
    setup.stack.credits.grant(ALICE, 1_000).expect("grant");
    let request = format!(
        "GET /ws-refused HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\
         upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
    let (answers, bytes) = raw_exchange(
        loopback(setup.stack.gateway.proxy_port()),
        request.as_bytes(),
    );
    let answer = answers.first().unwrap_or_else(|| {
        panic!(
            "no answer: {:?}\n{}",
            String::from_utf8_lossy(&bytes),
            setup.log()
        )
    });
    assert_eq!(answer.status, 403, "{}", setup.log());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(body["error"], "upgrade_refused", "{body}");
    assert!(
        setup.sockets.requests().is_empty(),
        "the upstream never saw it"
    );
    assert_eq!(
        setup.stack.decisions(Some("GET /ws-refused"), "refused"),
        1.0
    );
    assert_eq!(setup.settled(), (1_000, 0), "nothing held, nothing burned");
}
