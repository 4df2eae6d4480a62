//! A fake AI model server on loopback that answers with known token usage: a JSON chat
//! completion, an OpenAI-style SSE stream ending with a usage event, gzip on request, and
//! the broken cases (no usage, garbage usage, an oversized body, a stream that stalls).
//!
//! It speaks plain HTTP/1.1 with keep-alive over tokio sockets, so a test controls exactly
//! how each chunk of a stream goes out. What it answers is chosen by the request path and
//! query, so one server serves every case of a test:
//!
//! | path | answer |
//! |---|---|
//! | `/v1/chat/completions` | JSON completion with `usage.prompt_tokens = prompt`, `usage.completion_tokens = completion` |
//! | `/v1/stream` (any path ending in `/stream`) | SSE: `chunks` content events `delay_ms` apart, then the usage event, then `data: [DONE]`; `stall_ms` > 0 stalls before the usage event |
//! | `/v1/anthropic-stream` | SSE: `message_start` (input tokens), `chunks` deltas, `message_delta` (output tokens) |
//! | `/v1/no-usage` | JSON without usage |
//! | `/v1/garbage-usage` | JSON whose `usage.prompt_tokens` is a string |
//! | `/v1/big` | JSON with `pad` bytes of padding before a valid usage |
//! | `/v1/header-usage` | `x-usage-units: units`, empty JSON body |
//!
//! Query parameters (all optional): `prompt`, `completion`, `chunks`, `delay_ms`,
//! `stall_ms`, `pad`, `units`, `gzip=1` (gzip the body, `content-encoding: gzip`).
//!
//! The server keeps the body of the last request it read ([`ModelServer::last_body`]), so a
//! test can check the gateway forwarded it byte for byte.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Largest request head plus body the server reads: 1 MiB, far above any test request.
const MODEL_REQUEST_MAX_BYTES: usize = 1 << 20;

/// Worker threads of the server's runtime: enough for a load benchmark's connections
/// without competing much with the gateway on a small machine.
const MODEL_WORKER_THREADS: usize = 2;

/// The body of the last request read (bounded by `MODEL_REQUEST_MAX_BYTES`).
type LastBody = Arc<Mutex<Vec<u8>>>;

/// The fake model server; stops when dropped.
#[derive(Debug)]
pub struct ModelServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    last_body: LastBody,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ModelServer {
    /// Starts the server on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(0)
    }

    /// Starts the server on `port` (0: any free one).
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(MODEL_WORKER_THREADS)
            .enable_all()
            .build()
            .context("building the model server runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .context("binding the model server")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let last_body = LastBody::default();
        let (shutdown, stop) = oneshot::channel::<()>();
        let counter = requests.clone();
        let bodies = last_body.clone();
        let thread = thread::Builder::new()
            .name("model-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop => {}
                        () = accept_loop(listener, counter, bodies) => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .context("spawning the model server thread")?;
        Ok(Self {
            addr,
            requests,
            last_body,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered or being answered so far.
    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The body of the last request the server read (empty before the first).
    pub fn last_body(&self) -> Vec<u8> {
        self.last_body
            .lock()
            .map(|body| body.clone())
            .unwrap_or_default()
    }

    /// Serves until the process is killed (for the load benchmark's helper binary).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, requests: Arc<AtomicU64>, last_body: LastBody) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            requests.clone(),
            last_body.clone(),
        ));
    }
}

/// One request's target.
struct Target {
    path: String,
    query: HashMap<String, String>,
    body: Vec<u8>,
}

impl Target {
    fn num(&self, name: &str, default: u64) -> u64 {
        self.query
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

async fn serve_connection(mut stream: TcpStream, requests: Arc<AtomicU64>, last_body: LastBody) {
    let mut buffer = Vec::new();
    loop {
        let Some(target) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        if let Ok(mut last) = last_body.lock() {
            last.clone_from(&target.body);
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if answer(&mut stream, &target).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body) off the connection.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Target> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MODEL_REQUEST_MAX_BYTES {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let body_len: usize = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let total = head_end + 4 + body_len;
    while buffer.len() < total {
        if buffer.len() > MODEL_REQUEST_MAX_BYTES {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end + 4..total].to_vec();
    buffer.drain(..total);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Target {
        path: path.to_string(),
        query,
        body,
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

async fn answer(stream: &mut TcpStream, target: &Target) -> std::io::Result<()> {
    let prompt = target.num("prompt", 1_200);
    let completion = target.num("completion", 300);
    let gzipped = target.num("gzip", 0) == 1;
    let json = |body: String, extra: &str| {
        let body = if gzipped {
            gzip(body.as_bytes())
        } else {
            body.into_bytes()
        };
        let encoding = if gzipped {
            "content-encoding: gzip\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{encoding}{extra}content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    };
    let completion_body = |usage: &str, pad: &str| {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","pad":"{pad}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello there."}},"finish_reason":"stop"}}]{usage}}}"#
        )
    };
    match target.path.as_str() {
        path if path.ends_with("/stream") => {
            stream_openai(stream, target, prompt, completion).await
        }
        "/v1/anthropic-stream" => stream_anthropic(stream, target, prompt, completion).await,
        path => {
            let response = match path {
                "/v1/no-usage" => json(completion_body("", ""), ""),
                "/v1/garbage-usage" => json(
                    completion_body(
                        r#","usage":{"prompt_tokens":"twelve hundred","completion_tokens":300}"#,
                        "",
                    ),
                    "",
                ),
                "/v1/big" => {
                    let pad = "x".repeat(usize::try_from(target.num("pad", 0)).unwrap_or(0));
                    json(completion_body(&usage_json(prompt, completion), &pad), "")
                }
                "/v1/header-usage" => json(
                    "{}".to_string(),
                    &format!("x-usage-units: {}\r\n", target.num("units", 0)),
                ),
                _ => json(completion_body(&usage_json(prompt, completion), ""), ""),
            };
            stream.write_all(&response).await
        }
    }
}

fn usage_json(prompt: u64, completion: u64) -> String {
    format!(
        r#","usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}"#,
        prompt + completion
    )
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await
}

async fn stream_head(stream: &mut TcpStream) -> std::io::Result<()> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
}

async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn stream_openai(
    stream: &mut TcpStream,
    target: &Target,
    prompt: u64,
    completion: u64,
) -> std::io::Result<()> {
    let chunks = target.num("chunks", 10);
    let delay_ms = target.num("delay_ms", 0);
    stream_head(stream).await?;
    for i in 0..chunks {
        pause(delay_ms).await;
        let event = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}}}}],\"usage\":null}}\n\n"
        );
        write_chunk(stream, event.as_bytes()).await?;
    }
    pause(target.num("stall_ms", 0)).await;
    pause(delay_ms).await;
    let usage = format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[]{}}}\n\ndata: [DONE]\n\n",
        usage_json(prompt, completion)
    );
    write_chunk(stream, usage.as_bytes()).await?;
    stream.write_all(b"0\r\n\r\n").await
}

async fn stream_anthropic(
    stream: &mut TcpStream,
    target: &Target,
    prompt: u64,
    completion: u64,
) -> std::io::Result<()> {
    let chunks = target.num("chunks", 10);
    let delay_ms = target.num("delay_ms", 0);
    stream_head(stream).await?;
    let start = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"usage\":{{\"input_tokens\":{prompt},\"output_tokens\":1}}}}}}\n\n"
    );
    write_chunk(stream, start.as_bytes()).await?;
    for i in 0..chunks {
        pause(delay_ms).await;
        let event = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} \"}}}}\n\n"
        );
        write_chunk(stream, event.as_bytes()).await?;
    }
    let end = format!(
        "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{completion}}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    write_chunk(stream, end.as_bytes()).await?;
    stream.write_all(b"0\r\n\r\n").await
}
