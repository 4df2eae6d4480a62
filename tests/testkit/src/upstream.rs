//! A fake upstream API: a real HTTP/1.1 server on a free loopback port that records every
//! request it receives and answers as the test tells it to.
//!
//! It must stay dumb: it knows nothing about credits, it only counts and records, so a test
//! can assert exactly what the gateway let through.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// Largest request body the upstream reads (and records the size of): 64 MiB, far above
/// anything an end-to-end test sends, so a runaway test fails instead of eating memory.
pub const UPSTREAM_BODY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Worker threads of the upstream's runtime: two keep it responsive under the concurrent
/// tests without competing much with the gateway for a small CI machine's cores.
const UPSTREAM_WORKER_THREADS: usize = 2;

/// How long in-flight connections get when the upstream is dropped, before they are cut.
const UPSTREAM_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(500);

/// One request as the upstream received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Its position: 1 for the first request since start or [`Upstream::reset`].
    pub n: u64,
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string without the `?`, if there was one.
    pub query: Option<String>,
    /// Every header in arrival order, names lowercased; values that are not valid UTF-8
    /// are converted lossily.
    pub headers: Vec<(String, String)>,
    /// Size of the request body, in bytes.
    pub body_len: usize,
    /// Hex SHA-256 of the request body, so a test can tell two bodies of one size apart.
    pub body_sha256: String,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream does, shared between the test and the server's tasks.
#[derive(Debug)]
struct Shared {
    /// Requests received since start or reset.
    count: AtomicU64,
    /// Status of normal answers.
    status: AtomicU16,
    /// Delay before each answer, in milliseconds.
    delay_ms: AtomicU64,
    /// The next `remaining` requests answer `status` instead of the normal status.
    fail: Mutex<FailNext>,
    /// Every request received since start or reset.
    requests: Mutex<Vec<RecordedRequest>>,
}

#[derive(Debug, Default)]
struct FailNext {
    remaining: u64,
    status: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide the real failure.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A real HTTP/1.1 server on `127.0.0.1:<free port>`, on its own thread and tokio runtime,
/// that counts and records every request and answers every method and path the same way.
///
/// By default it answers `200` with `{"ok":true,"n":<count>}` (`content-type:
/// application/json`), where `<count>` is the request's position since start or
/// [`reset`](Self::reset). The status, a per-request delay and a run of failures can be
/// changed at any time from the test; `ok` is `false` when the status is 400 or more.
/// The request is recorded (and counted) as soon as its body has been read, before any
/// delay, so [`count`](Self::count) includes requests still waiting.
///
/// The server stops (open connections are cut) when the value is dropped.
///
/// ```no_run
/// use creditgate_testkit::Upstream;
///
/// let upstream = Upstream::start()?;
/// let _address_for_config = upstream.addr().to_string(); // "127.0.0.1:PORT"
/// upstream.fail_next(1, 503);
/// assert_eq!(upstream.count(), 0);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds a free loopback port and starts serving on a background thread.
    ///
    /// The port is bound before this returns, so the address can be put in a config at
    /// once.
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the upstream on 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            count: AtomicU64::new(0),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            fail: Mutex::new(FailNext::default()),
            requests: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(UPSTREAM_WORKER_THREADS)
            .thread_name("testkit-upstream")
            .enable_all()
            .build()
            .context("building the upstream's tokio runtime")?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let thread = thread::Builder::new()
            .name(format!("testkit-upstream-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("testkit upstream: cannot register listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        res = axum::serve(listener, app) => {
                            if let Err(e) = res {
                                eprintln!("testkit upstream: server stopped: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
                // Cuts connections still open (keep-alive, delayed answers) within a
                // bound instead of waiting for clients to go away.
                runtime.shutdown_timeout(UPSTREAM_SHUTDOWN_TIMEOUT);
            })
            .context("spawning the upstream thread")?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received since start or [`reset`](Self::reset).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request received since start or [`reset`](Self::reset), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let mut all = lock(&self.shared.requests).clone();
        all.sort_by_key(|r| r.n);
        all
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.requests().pop()
    }

    /// Answers every later request with `status` (unless [`fail_next`](Self::fail_next)
    /// says otherwise).
    ///
    /// # Panics
    /// Panics if `status` is not in `100..=999`.
    pub fn set_status(&self, status: u16) {
        assert!((100..=999).contains(&status), "bad status {status}");
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Waits `delay` before answering each later request (after recording it).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers the next `n` requests with `status`, then goes back to the normal status.
    ///
    /// # Panics
    /// Panics if `status` is not in `100..=999`.
    pub fn fail_next(&self, n: u64, status: u16) {
        assert!((100..=999).contains(&status), "bad status {status}");
        *lock(&self.shared.fail) = FailNext {
            remaining: n,
            status,
        };
    }

    /// Forgets every recorded request and goes back to the defaults: count 0, status 200,
    /// no delay, no pending failures.
    pub fn reset(&self) {
        let mut requests = lock(&self.shared.requests);
        *lock(&self.shared.fail) = FailNext::default();
        self.shared.status.store(200, Ordering::SeqCst);
        self.shared.delay_ms.store(0, Ordering::SeqCst);
        self.shared.count.store(0, Ordering::SeqCst);
        requests.clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Records the request, then answers it as configured.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (body_len, body_sha256) = match axum::body::to_bytes(body, UPSTREAM_BODY_MAX_BYTES).await {
        Ok(bytes) => (bytes.len(), hex::encode(Sha256::digest(&bytes))),
        Err(_) => {
            return json_response(StatusCode::PAYLOAD_TOO_LARGE, false, 0);
        }
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let n = {
        // Count and record under one lock so `n` matches the order in `requests`.
        let mut requests = lock(&shared.requests);
        let n = shared.count.fetch_add(1, Ordering::SeqCst) + 1;
        requests.push(RecordedRequest {
            n,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers,
            body_len,
            body_sha256,
        });
        n
    };
    let status = {
        let mut fail = lock(&shared.fail);
        if fail.remaining > 0 {
            fail.remaining -= 1;
            fail.status
        } else {
            shared.status.load(Ordering::SeqCst)
        }
    };
    let delay_ms = shared.delay_ms.load(Ordering::SeqCst);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, status.as_u16() < 400, n)
}

fn json_response(status: StatusCode, ok: bool, n: u64) -> Response {
    let mut response = Response::new(Body::from(format!("{{\"ok\":{ok},\"n\":{n}}}")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
