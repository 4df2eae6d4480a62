//! Pricing inputs are read as the upstream reads them: the real gateway between a real
//! Redis and a counting upstream, sent request targets byte for byte (an HTTP client library
//! would tidy them first). A unit count spelled with escapes or `+` is charged as the
//! upstream reads it, an ambiguous one is refused before the upstream sees it, and an
//! obfuscated path is matched, priced and forwarded as its normal form.
//!
//! Needs `redis-server` and a built gateway (`cargo build -p creditgate-gateway`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use creditgate_testkit::{ALICE, ALICE_KEY, Stack, base_config};

/// Credits Alice starts with: far more than any test here spends.
const GRANT: u64 = 1_000;

/// How long one raw exchange may take on loopback.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /v1/report` costs 1 credit per `pages` (1 page when absent), `GET /v1/sized` 1 per
/// `x-pages` header, `GET /v1/ping` 1 credit; anything else passes through unmetered.
fn config(upstream: SocketAddr) -> String {
    base_config(upstream).replace("unmatched = \"not_found\"", "unmatched = \"pass_through\"")
        + r#"
[features.report]
credit_type = "api"
cost = { kind = "per_unit", query = "pages", rate = 1, max = 100, default_units = 1 }

[features.sized]
credit_type = "api"
cost = { kind = "per_unit", header = "x-pages", rate = 1, max = 100, default_units = 1 }

[[routes]]
method = "GET"
path = "/v1/report"
feature = "report"

[[routes]]
method = "GET"
path = "/v1/sized"
feature = "sized"

[[routes]]
method = "GET"
path = "/v1/ping"
feature = "search"
"#
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn charged(&self) -> Option<u64> {
        self.header("x-credits-charged")?.parse().ok()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Sends `GET target` exactly as written, as Alice, with `headers`, and reads the answer
/// up to the end of the connection.
fn get(stack: &Stack, target: &str, headers: &[(&str, &str)]) -> Answer {
    let addr = ("127.0.0.1", stack.gateway.proxy_port());
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).unwrap();
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ALICE_KEY}\r\n\
         connection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn stack() -> Stack {
    let stack = Stack::start(config).expect("stack");
    stack.credits.grant(ALICE, GRANT).expect("grant");
    stack
}

#[test]
fn encoded_unit_counts_are_charged_as_the_upstream_reads_them() {
    let stack = stack();
    let mut spent = 0;
    for target in [
        "/v1/report?pages=10",
        "/v1/report?pages=%31%30",
        "/v1/report?%70ages=10",
        "/v1/report?pages=+10",
        "/v1/report?PAGES=10",
        "/v1/report?x=1;pages=10",
        "/v1/report?pages=10&pages=010",
    ] {
        let answer = get(&stack, target, &[]);
        assert_eq!(answer.status, 200, "{target}: {answer:#?}");
        assert_eq!(answer.charged(), Some(10), "{target}: {answer:#?}");
        let seen = stack.upstream.last_request().expect("forwarded");
        let query = target.split_once('?').map(|(_, query)| query);
        assert_eq!(seen.query.as_deref(), query, "the query goes on as sent");
        spent += 10;
    }
    let absent = get(&stack, "/v1/report", &[]);
    assert_eq!(
        absent.charged(),
        Some(1),
        "absent is default_units: {absent:#?}"
    );
    spent += 1;
    let settled = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(settled, (GRANT as i64 - spent, 0));
}

#[test]
fn ambiguous_unit_counts_are_refused_before_the_upstream() {
    let stack = stack();
    for target in [
        "/v1/report?pages=1&pages=10",
        "/v1/report?pages=1&%70ages=10",
        "/v1/report?pages=%2B10",
        "/v1/report?pages=1.5",
        "/v1/report?pages=-1",
        "/v1/report?pages=",
        "/v1/report?pages=ten",
    ] {
        let answer = get(&stack, target, &[]);
        assert_eq!(answer.status, 400, "{target}: {answer:#?}");
        let body = answer.json();
        assert_eq!(body["error"], "invalid_units", "{target}: {body}");
        assert_eq!(body["parameter"], "pages", "{target}: {body}");
    }
    let twice = get(&stack, "/v1/sized", &[("x-pages", "1"), ("x-pages", "10")]);
    assert_eq!(twice.status, 400, "{twice:#?}");
    let body = twice.json();
    assert_eq!(body["parameter"], "x-pages", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("header x-pages"),
        "{body}"
    );
    assert_eq!(
        stack.upstream.count(),
        0,
        "no refused request reached the upstream"
    );

    let same = get(&stack, "/v1/sized", &[("x-pages", "10"), ("x-pages", "10")]);
    assert_eq!((same.status, same.charged()), (200, Some(10)), "{same:#?}");
    let settled = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(
        settled,
        (GRANT as i64 - 10, 0),
        "only the clear request paid"
    );
}

#[test]
fn obfuscated_paths_are_priced_and_forwarded_as_their_normal_form() {
    let stack = stack();
    let spellings = [
        "/v1/ping",
        "/v1/./ping",
        "/v1/%70ing",
        "/v1/x/../ping",
        "//v1//ping",
        "/v1/%2e/ping",
        "/v1/x/%2E%2e/ping",
        "http://localhost/v1/./p%69ng",
        "/%76%31/p%69ng?q=%2f",
    ];
    for (n, target) in spellings.iter().enumerate() {
        let answer = get(&stack, target, &[]);
        assert_eq!(answer.status, 200, "{target}: {answer:#?}");
        assert_eq!(
            answer.charged(),
            Some(1),
            "{target} is /v1/ping: {answer:#?}"
        );
        let seen = stack.upstream.last_request().expect("forwarded");
        assert_eq!(seen.n, n as u64 + 1);
        assert_eq!(seen.path, "/v1/ping", "{target}");
    }
    let seen = stack.upstream.last_request().unwrap();
    assert_eq!(
        seen.query.as_deref(),
        Some("q=%2f"),
        "the query is kept as sent"
    );
    let report = get(&stack, "/v1/./report/?pages=%31%30", &[]);
    assert_eq!(report.charged(), Some(10), "{report:#?}");
    let seen = stack.upstream.last_request().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/v1/report/", Some("pages=%31%30"))
    );
    let passed = get(&stack, "/other/../free/%7Eme", &[]);
    assert_eq!(
        (passed.status, passed.charged()),
        (200, None),
        "{passed:#?}"
    );
    assert_eq!(stack.upstream.last_request().unwrap().path, "/free/~me");
    let spent = spellings.len() as i64 + 10;
    let settled = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(settled, (GRANT as i64 - spent, 0));
}

#[test]
fn paths_servers_disagree_on_are_refused_naming_the_path() {
    let stack = stack();
    for target in [
        "/v1%2Fping",
        "/v1%2fping",
        "/v1/ping%00",
        "/../v1/ping",
        "/v1/../../v1/ping",
        "/v1/%2e%2e/%2e%2e/v1/ping",
        "/v1%5Cping",
        "/v1/p%zzing",
        "/v1/ping;x=1",
        "/v1/x/..;/ping",
    ] {
        let answer = get(&stack, target, &[]);
        assert_eq!(answer.status, 400, "{target}: {answer:#?}");
        let body = answer.json();
        assert_eq!(body["error"], "invalid_path", "{target}: {body}");
        assert_eq!(body["path"], target, "{target}: {body}");
    }
    assert_eq!(
        stack.upstream.count(),
        0,
        "no refused path reached the upstream"
    );
    let settled = stack.credits.wait_until_settled(ALICE).expect("balance");
    assert_eq!(settled, (GRANT as i64, 0));
}
