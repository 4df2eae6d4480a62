//! The fake upstream: what it answers, what it records, and that it stops on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use creditgate_testkit::{Upstream, http_get, try_cargo_bin};

const TIMEOUT: Duration = Duration::from_secs(5);

fn get(upstream: &Upstream, path: &str) -> (u16, String) {
    let r = http_get(&format!("{}{path}", upstream.url()), TIMEOUT).expect("GET");
    (r.status, r.body)
}

#[test]
fn answers_200_with_the_count_and_records_each_request() {
    let upstream = Upstream::start().expect("upstream");
    assert_eq!(
        get(&upstream, "/a"),
        (200, r#"{"ok":true,"n":1}"#.to_string())
    );
    assert_eq!(
        get(&upstream, "/v1/b?x=1"),
        (200, r#"{"ok":true,"n":2}"#.to_string())
    );
    assert_eq!(upstream.count(), 2);

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let last = &requests[1];
    assert_eq!(last.n, 2);
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, "/v1/b");
    assert_eq!(last.query.as_deref(), Some("x=1"));
    assert_eq!(last.body_len, 0);
    assert_eq!(
        last.header("HOST"),
        Some(upstream.addr().to_string().as_str())
    );
    assert!(
        last.headers
            .iter()
            .all(|(n, _)| *n == n.to_ascii_lowercase())
    );
}

#[test]
fn records_method_headers_and_body_size() {
    let upstream = Upstream::start().expect("upstream");
    let mut stream = TcpStream::connect(upstream.addr()).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body = "x".repeat(1234);
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: t\r\nX-Thing: One\r\nX-Thing: Two\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let r = upstream.last_request().expect("recorded");
    assert_eq!(r.method, "POST");
    assert_eq!(r.body_len, 1234);
    assert_eq!(r.header_all("x-thing"), vec!["One", "Two"]);
}

#[test]
fn status_failures_delay_and_reset() {
    let upstream = Upstream::start().expect("upstream");
    upstream.set_status(201);
    assert_eq!(get(&upstream, "/").0, 201);

    upstream.fail_next(2, 503);
    assert_eq!(
        get(&upstream, "/"),
        (503, r#"{"ok":false,"n":2}"#.to_string())
    );
    assert_eq!(get(&upstream, "/").0, 503);
    assert_eq!(get(&upstream, "/").0, 201, "back to the set status");

    upstream.set_delay(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(get(&upstream, "/").0, 201);
    assert!(started.elapsed() >= Duration::from_millis(200));

    upstream.reset();
    assert_eq!(upstream.count(), 0);
    assert!(upstream.requests().is_empty());
    let started = Instant::now();
    assert_eq!(
        get(&upstream, "/"),
        (200, r#"{"ok":true,"n":1}"#.to_string())
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "no delay after reset"
    );
}

#[test]
fn stops_on_drop_even_with_a_request_in_flight() {
    let upstream = Upstream::start().expect("upstream");
    let addr = upstream.addr();
    upstream.set_delay(Duration::from_secs(30));
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(upstream.count(), 1);

    let started = Instant::now();
    drop(upstream);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop is bounded"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn a_missing_binary_says_how_to_build_it() {
    let e = try_cargo_bin("creditgate-no-such-binary").unwrap_err();
    let message = format!("{e:#}");
    assert!(
        message.contains("run cargo build -p creditgate-no-such-binary"),
        "{message}"
    );
}
