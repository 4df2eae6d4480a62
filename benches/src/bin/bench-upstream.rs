//! The load bench's upstream: a hand-written HTTP/1.1 keep-alive responder that answers
//! every request with `200` and a small fixed JSON body.
//!
//! It exists to be cheap, so that the proxy under test and not the upstream is what the
//! load bench measures: one thread, no allocation per request, no header parsing beyond
//! finding the end of the head and a `content-length` to skip. It must not be used as a
//! real server: it ignores the method and path and understands no chunked request bodies.
//!
//! ```text
//! cargo run --release -p creditgate-benches --bin bench-upstream -- --listen 127.0.0.1:18080
//! curl -i http://127.0.0.1:18080/bench
//! ```

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The response to every request: a complete HTTP/1.1 message with a fixed length, so
/// clients and the proxy keep the connection alive.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: application/json\r\n\
content-length: 28\r\n\
\r\n\
{\"ok\":true,\"source\":\"bench\"}";

/// Largest request head the upstream buffers, in bytes: far above what the bench sends, so
/// a confused client is cut off instead of growing the buffer without bound.
const REQUEST_HEAD_MAX_BYTES: usize = 16 * 1024;

/// Bytes read from the socket at a time; one read usually holds every pipelined request.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Options of `bench-upstream`.
#[derive(Debug, Parser)]
#[command(
    name = "bench-upstream",
    about = "A cheap fixed-answer HTTP/1.1 upstream for the load bench."
)]
struct Args {
    /// Address to listen on (loopback only for the bench).
    #[arg(long)]
    listen: SocketAddr,
}

/// Where a complete request ends in `buf`, if one is there: the head's end plus the
/// `content-length` of its body. `Err` for a head the responder cannot serve.
fn request_end(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return if buf.len() > REQUEST_HEAD_MAX_BYTES {
            Err("request head too large")
        } else {
            Ok(None)
        };
    };
    let mut body_len = 0usize;
    for line in buf[..head_len].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err("chunked request bodies are not supported");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = std::str::from_utf8(&line[colon + 1..])
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad content-length")?;
        }
    }
    let end = head_len + body_len;
    Ok((buf.len() >= end).then_some(end))
}

/// Serves one keep-alive connection until the client closes it or sends nonsense.
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(RESPONSE.len() * 4);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Answer every complete request in the buffer with one write: pipelined requests
        // cost one syscall.
        let mut consumed = 0;
        loop {
            match request_end(&buf[consumed..]) {
                Ok(Some(end)) => {
                    consumed += end;
                    out.extend_from_slice(RESPONSE);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the bench pins it to a core of its own choosing and counts on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        loop {
            let (stream, _) = listener.accept().await.context("accepting")?;
            tokio::spawn(serve(stream));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_requests() {
        assert_eq!(request_end(b"GET / HTTP/1.1\r\nhost: x\r\n"), Ok(None));
        assert_eq!(request_end(b"GET / HTTP/1.1\r\n\r\nGET"), Ok(Some(18)));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(request_end(post), Ok(Some(post.len())));
        assert_eq!(request_end(&post[..post.len() - 1]), Ok(None));
        assert!(request_end(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn the_response_length_matches_its_body() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
