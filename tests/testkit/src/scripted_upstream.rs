//! An upstream for the answers [`crate::Upstream`] cannot give: a body dripped out slowly
//! over longer than a hold lives, or a `101 Switching Protocols` followed by tunnel bytes.
//! A plain `std::net` server, one thread per connection, that records every request like
//! the counting upstream does.
//!
//! It must stay dumb: one request per connection, no knowledge of credits.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::RecordedRequest;
use crate::raw_http::{decode_chunked, find};

/// Most bytes of one request the scripted upstream reads before giving up on it.
const SCRIPTED_REQUEST_MAX_BYTES: usize = 1024 * 1024;

/// How long the scripted upstream waits for a request's bytes.
const SCRIPTED_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scripted upstream answers every request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// `200`, chunked, `chunks` chunks of `data: …\n\n`, one every `interval` (the first
    /// at once): a stream that lasts `(chunks - 1) × interval`.
    Drip {
        /// Number of chunks.
        chunks: u32,
        /// Pause between two chunks.
        interval: Duration,
    },
    /// `101 Switching Protocols` (`upgrade: websocket`), then `hello` through the tunnel,
    /// then the connection closes.
    Upgrade,
}

/// A scripted upstream on `127.0.0.1:<free port>`; it stops when dropped.
#[derive(Debug)]
pub struct ScriptedUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedUpstream {
    /// Binds a free loopback port and answers every request with `script`.
    pub fn start(script: Script) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the scripted upstream on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (recorded, stop) = (requests.clone(), stopping.clone());
        let thread = thread::Builder::new()
            .name(format!("testkit-scripted-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let recorded = recorded.clone();
                    thread::spawn(move || serve(stream, script, &recorded));
                }
            })
            .context("spawning the scripted upstream")?;
        Ok(Self {
            addr,
            requests,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request, records it, answers it by `script`.
fn serve(mut stream: TcpStream, script: Script, recorded: &Mutex<Vec<RecordedRequest>>) {
    let _ = stream.set_read_timeout(Some(SCRIPTED_READ_TIMEOUT));
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    {
        let mut all = recorded.lock().unwrap_or_else(|e| e.into_inner());
        let n = all.len() as u64 + 1;
        all.push(RecordedRequest { n, ..request });
    }
    let _ = match script {
        Script::Drip { chunks, interval } => drip(&mut stream, chunks, interval),
        Script::Upgrade => stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nhello",
        ),
    };
}

/// Writes a chunked `200` of `chunks` events, `interval` apart.
fn drip(stream: &mut TcpStream, chunks: u32, interval: Duration) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    for i in 0..chunks {
        if i > 0 {
            thread::sleep(interval);
        }
        let event = format!("data: {i}\n\n");
        write!(stream, "{:x}\r\n{event}\r\n", event.len())?;
        stream.flush()?;
    }
    stream.write_all(b"0\r\n\r\n")
}

/// Reads a request head and its body (content-length or chunked) off `stream`.
fn read_request(stream: &mut TcpStream) -> Option<RecordedRequest> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&bytes, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
        if bytes.len() > SCRIPTED_REQUEST_MAX_BYTES {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = read_body(stream, &headers, bytes[head_end + 4..].to_vec());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Some(RecordedRequest {
        n: 0,
        method,
        path,
        query,
        headers,
        body_len: body.len(),
        body_sha256: hex::encode(Sha256::digest(&body)),
    })
}

/// The body after the head, by its framing headers; what arrived already is `have`.
fn read_body(stream: &mut TcpStream, headers: &[(String, String)], mut have: Vec<u8>) -> Vec<u8> {
    let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: Option<usize> = value("content-length").and_then(|v| v.parse().ok());
    let mut buf = [0u8; 8192];
    loop {
        let complete = if chunked {
            find(&have, b"0\r\n\r\n").is_some()
        } else {
            have.len() >= length.unwrap_or(0)
        };
        if complete || have.len() > SCRIPTED_REQUEST_MAX_BYTES {
            break;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => have.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    if chunked {
        decode_chunked(&have).0
    } else {
        have
    }
}
