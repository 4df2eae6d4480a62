//! A blocking HTTP client for the tests that measures each request and keeps the whole
//! answer ([`Reply`]), for plain `#[test]`s.
//!
//! It must not be used inside an async runtime (reqwest's blocking client panics there).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

/// Timeout of every test HTTP request: far above any healthy answer on loopback, so a hung
/// gateway fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
    /// From sending the request to having read the whole body.
    pub elapsed: Duration,
}

impl Reply {
    /// Header `name` as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Header `name` as an integer.
    ///
    /// # Panics
    /// Panics (showing the reply) when it is missing or not an integer.
    pub fn header_i64(&self, name: &str) -> i64 {
        self.header(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("header {name} missing or not an integer in {self:#?}"))
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// Panics (showing the reply) when the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:#?}"))
    }
}

/// A blocking HTTP client for the tests: no proxy from the environment, a bounded timeout.
/// Use it from plain `#[test]`s, never inside an async runtime.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the test HTTP client")
}

/// Sends `method url` with `Authorization: Bearer <key>` (when given) and `headers`, and
/// reads the whole answer.
///
/// # Panics
/// Panics when the request fails at the transport level (refused, timed out).
pub fn send(
    client: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = client.request(method.clone(), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request
        .send()
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:#}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .text()
        .unwrap_or_else(|e| panic!("reading the body of {method} {url}: {e:#}"));
    Reply {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// Sends `GET url` with `api_key` as a bearer token until it answers `want`: how long that
/// took and how many of the answers were 200 along the way (at a charging gateway, each one
/// charged).
///
/// # Panics
/// Panics showing `log()` (say, the gateway's log tail) when it still answers something else
/// after `within`, or when a request fails at the transport level.
pub fn until_status(
    client: &reqwest::blocking::Client,
    url: &str,
    api_key: &str,
    want: u16,
    within: Duration,
    log: impl Fn() -> String,
) -> (Duration, i64) {
    let started = Instant::now();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let got = send(client, "GET", url, Some(api_key), &[]).status;
        *seen.entry(got).or_insert(0i64) += 1;
        if got == want {
            eprintln!("statuses seen while waiting for {want}: {seen:?}");
            return (started.elapsed(), seen.get(&200).copied().unwrap_or(0));
        }
        assert!(
            started.elapsed() < within,
            "{url} still answers {got} (want {want}) after {:?}; log:\n{}",
            started.elapsed(),
            log()
        );
        std::thread::sleep(crate::POLL_INTERVAL);
    }
}
