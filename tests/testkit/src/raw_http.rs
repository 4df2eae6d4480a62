//! HTTP/1.x spoken byte for byte over a `TcpStream`: a client that sends exactly the bytes a
//! test writes (pipelined requests, conflicting framing headers, absolute-form targets,
//! HTTP/1.0) and a lenient parser of what comes back.
//!
//! It must stay lenient and dumb: it never fixes up a request, and it parses answers only
//! well enough to read statuses, headers and bodies, never to judge them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long [`raw_exchange`] reads answers after writing, when the server keeps the
/// connection open: far above a loopback answer, short enough for many tests.
pub const RAW_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Most bytes of answers [`raw_exchange`] keeps: a runaway answer fails the test instead of
/// eating memory.
const RAW_READ_MAX_BYTES: usize = 4 * 1024 * 1024;

/// One response as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code (`100` for an interim answer, `101` for an upgrade).
    pub status: u16,
    /// Every header in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (chunked bodies decoded); after a `101`, whatever the tunnel carried.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr`, writes `request` as is, and reads until the server closes the
/// connection or [`RAW_READ_TIMEOUT`] passes; returns every response parsed from what was
/// read (interim `100`s included) and the raw bytes. A reset connection ends the reading;
/// it is not an error.
///
/// # Panics
/// Panics when the connection cannot be made or the request cannot be written.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<RawResponse>, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, RAW_READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(request)
        .unwrap_or_else(|e| panic!("writing the request to {addr}: {e}"));
    let bytes = read_until_closed(&mut stream, RAW_READ_TIMEOUT);
    (parse_responses(&bytes), bytes)
}

/// The loopback address of `port`.
pub fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// Reads until EOF, an error or `timeout` from now, keeping at most
/// `RAW_READ_MAX_BYTES`.
pub fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while bytes.len() < RAW_READ_MAX_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    bytes
}

/// Parses consecutive HTTP/1.x responses; stops at the first `101` (the rest is tunnel
/// data, kept as its body) or at bytes that do not parse.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut responses = Vec::new();
    while let Some((mut response, rest)) = parse_head(bytes) {
        if response.status == 101 {
            response.body = rest.to_vec();
            responses.push(response);
            break;
        }
        let (body, rest) = if response.status < 200 || response.status == 204 {
            (Vec::new(), rest)
        } else {
            split_body(&response, rest)
        };
        response.body = body;
        responses.push(response);
        bytes = rest;
    }
    responses
}

/// The status line and headers at the start of `bytes`, and what follows them.
pub(crate) fn parse_head(bytes: &[u8]) -> Option<(RawResponse, &[u8])> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    Some((response, &bytes[end + 4..]))
}

/// The body of `response` at the start of `rest` (by chunked framing, content-length, or to
/// the end), and what follows it. A truncated body is returned as far as it goes.
fn split_body<'a>(response: &RawResponse, rest: &'a [u8]) -> (Vec<u8>, &'a [u8]) {
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return decode_chunked(rest);
    }
    match response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => {
            let n = n.min(rest.len());
            (rest[..n].to_vec(), &rest[n..])
        }
        None => (rest.to_vec(), &[]),
    }
}

/// Decodes a chunked body at the start of `bytes`: the data and what follows the last
/// chunk (and its trailers).
pub(crate) fn decode_chunked(mut bytes: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(bytes, b"\r\n") else {
            return (body, &[]);
        };
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return (body, &[]);
        };
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            let after = find(bytes, b"\r\n\r\n")
                .filter(|_| !bytes.starts_with(b"\r\n"))
                .map_or(2.min(bytes.len()), |i| i + 4);
            return (body, &bytes[after..]);
        }
        let take = size.min(bytes.len());
        body.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        bytes = bytes.strip_prefix(b"\r\n").unwrap_or(bytes);
    }
}

/// `data` gzip-compressed, for request bodies sent with `Content-Encoding: gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// Position of the first `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_interim_chunked_and_upgraded_answers() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: a\r\n\r\nok\
            HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\ntunnel";
        let r = parse_responses(wire);
        let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [100, 200, 402, 101]);
        assert_eq!(r[1].header("x-request-id"), Some("a"));
        assert_eq!(r[1].body, b"ok");
        assert_eq!(r[2].body, b"abc");
        assert_eq!(r[3].body, b"tunnel");
    }
}
