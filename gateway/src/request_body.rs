//! Reads a bounded request body for routes that estimate their reservation from it
//! (`estimate_from`), so the estimate is computed before the upstream sees the request, and
//! hands back what the forwarding needs to send the body on byte for byte. Session I/O
//! only; the estimate itself is `crate::usage::request`'s, a pure function.
//!
//! A body is read the same way whether it has a `content-length` or comes chunked: at most
//! `max_body_bytes` (plus whatever the last read brought), for at most
//! [`ESTIMATE_READ_TIMEOUT_MS`]. What was read must reach the upstream unchanged. Pingora
//! keeps the bytes read in its retry buffer (64 KiB) and sends that buffer first; when a
//! chunked body outgrows the buffer, Pingora drops it, so the gateway keeps its own copy and
//! puts it in front of the next chunk it forwards ([`put_back`]). Only a body that outgrew
//! the buffer and also ended in that same read cannot be sent on (Pingora then forwards no
//! body at all, and never asks for one): it is refused 413, never forwarded cut.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use creditgate_config::{ESTIMATE_READ_TIMEOUT_MS, RequestEstimate};
use pingora::prelude::Session;

use crate::responses::Refusal;
use crate::usage::request::{Estimate, Unread, estimate_from_body, estimate_unread};

/// What reading the body for an estimate decided, and what forwarding needs to know.
#[derive(Debug)]
pub struct BodyRead {
    /// The amount to reserve and how it was found.
    pub estimate: Estimate,
    /// Whether any of the body was read (the 100 Continue, if asked for, was answered).
    pub read: bool,
    /// Bytes read that Pingora's retry buffer did not keep: to forward before the rest of
    /// the body ([`put_back`]).
    pub put_back: Option<Bytes>,
}

/// How the reading stopped.
enum Stopped {
    /// At the end of the body: all of it is in hand.
    Complete,
    /// Past `max_body_bytes`: the rest is still on the socket.
    OverBound,
    /// At the read deadline.
    TimedOut,
}

/// Reads the request body, about `from.max_body_bytes` of it at most, and estimates the
/// amount to reserve from it; `max` is the rule's `max`, reserved when the body cannot be
/// used. `Err`: the answer to the client (the client broke off or mis-framed the body, or
/// the rule refuses a body it cannot read).
pub async fn read_estimate(
    session: &mut Session,
    from: &RequestEstimate,
    max: u64,
) -> Result<BodyRead, Refusal> {
    let unread = |estimate| BodyRead {
        estimate,
        read: false,
        put_back: None,
    };
    if session.is_body_empty() {
        return Ok(unread(estimate_from_body(b"", from, max)));
    }
    let length = announced_length(session);
    if let Some(length) = length.filter(|length| *length > from.max_body_bytes) {
        // Not read: it streams through to the upstream as it comes.
        let why = Unread::TooLarge {
            length: Some(length),
        };
        return estimate_unread(from, max, why).map(unread);
    }
    answer_continue(session).await?;
    session.enable_retry_buffering();
    let (body, stopped) = read_bounded(session, from.max_body_bytes).await?;
    let put_back = if session.retry_buffer_truncated() {
        if session.is_body_done() {
            return Err(Refusal::body_too_large(&format!(
                "the request body came without content-length and ended after {} bytes, \
                 more than the gateway can pass on after reading it; send it with a \
                 content-length",
                body.len()
            )));
        }
        Some(body.clone().freeze())
    } else {
        None
    };
    let estimate = match stopped {
        Stopped::Complete => estimate_from_body(&body, from, max),
        Stopped::OverBound => estimate_unread(from, max, Unread::TooLarge { length })?,
        Stopped::TimedOut => estimate_unread(
            from,
            max,
            Unread::TimedOut {
                length_known: length.is_some(),
            },
        )?,
    };
    Ok(BodyRead {
        estimate,
        read: true,
        put_back,
    })
}

/// The body's `content-length`, unless it is chunked (which wins over a length).
fn announced_length(session: &Session) -> Option<u64> {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Answers `Expect: 100-continue`: the client waits for it before sending the body; the
/// upstream gets the request without `Expect` (see `upstream_request_filter`).
pub(crate) async fn answer_continue(session: &mut Session) -> Result<(), Refusal> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| Refusal::unreadable_body(&format!("cannot answer 100-continue: {e}")))?;
    }
    Ok(())
}

/// Reads body chunks until the body ends, more than `bound` bytes are in hand, or
/// [`ESTIMATE_READ_TIMEOUT_MS`] passes. Holds at most `bound` plus one read (Pingora reads
/// at most 64 KiB at a time).
async fn read_bounded(session: &mut Session, bound: u64) -> Result<(BytesMut, Stopped), Refusal> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ESTIMATE_READ_TIMEOUT_MS);
    let mut body = BytesMut::new();
    loop {
        let read = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        let Ok(read) = read else {
            return Ok((body, Stopped::TimedOut));
        };
        let read = read.map_err(|e| {
            Refusal::unreadable_body(&format!("reading the request body failed: {e}"))
        })?;
        let Some(chunk) = read else {
            return Ok((body, Stopped::Complete));
        };
        body.extend_from_slice(&chunk);
        if body.len() as u64 > bound {
            return Ok((body, Stopped::OverBound));
        }
    }
}

/// Puts the bytes the gateway read, and Pingora's retry buffer lost, in front of the first
/// body chunk forwarded to the upstream (`None` at the end of the body: they are all of it).
pub fn put_back(read: Bytes, chunk: &mut Option<Bytes>) {
    *chunk = Some(match chunk.take() {
        None => read,
        Some(rest) if rest.is_empty() => read,
        Some(rest) => {
            let mut whole = BytesMut::with_capacity(read.len() + rest.len());
            whole.extend_from_slice(&read);
            whole.extend_from_slice(&rest);
            whole.freeze()
        }
    });
}

#[cfg(test)]
mod tests {
    use creditgate_config::{MAX_ESTIMATE_BODY_BYTES, UnreadableEstimate, UsagePath};
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::usage::request::EstimateOutcome;

    fn rule() -> RequestEstimate {
        RequestEstimate {
            path: UsagePath::parse("max_tokens").expect("valid"),
            rate: 1,
            base: 0,
            max_body_bytes: MAX_ESTIMATE_BODY_BYTES,
            unreadable: UnreadableEstimate::ReserveMax,
        }
    }

    /// A session that has read the head of a chunked POST whose body is `body`, sent in
    /// chunks of `chunk` bytes (the client end stays open, so nothing is cut short).
    async fn chunked_session(body: &[u8], chunk: usize) -> (Session, tokio::io::DuplexStream) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut wire =
            b"POST /v1/chat HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(chunk) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        client.write_all(&wire).await.expect("write the request");
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.expect("a request"));
        (session, client)
    }

    #[tokio::test]
    async fn a_chunked_body_is_estimated_and_kept_for_the_upstream() {
        let body = br#"{"model":"m","max_tokens":700}"#;
        let (mut session, _client) = chunked_session(body, 7).await;
        let read = read_estimate(&mut session, &rule(), 10_000)
            .await
            .expect("read");
        assert_eq!(
            (read.estimate.amount, read.estimate.outcome),
            (700, EstimateOutcome::Body)
        );
        assert!(read.read && read.put_back.is_none());
        assert_eq!(session.get_retry_buffer().as_deref(), Some(&body[..]));
    }

    #[tokio::test]
    async fn a_chunked_body_past_the_retry_buffer_reserves_max_and_keeps_what_was_read() {
        let body: Vec<u8> = (0..200 * 1024).map(|i| b"{abc}"[i % 5]).collect();
        let (mut session, _client) = chunked_session(&body, 4 * 1024).await;
        let read = read_estimate(&mut session, &rule(), 10_000)
            .await
            .expect("read");
        assert_eq!(
            (read.estimate.amount, read.estimate.outcome),
            (10_000, EstimateOutcome::OverLimit)
        );
        assert!(session.retry_buffer_truncated());
        let kept = read.put_back.expect("Pingora dropped what it buffered");
        let mut rest = Vec::new();
        while let Some(chunk) = session.read_request_body().await.expect("the rest") {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(
            [&kept[..], &rest[..]].concat(),
            body,
            "nothing lost, nothing twice"
        );
    }

    #[test]
    fn the_bytes_read_go_in_front_of_the_rest() {
        let mut chunk = Some(Bytes::from_static(b"world"));
        put_back(Bytes::from_static(b"hello "), &mut chunk);
        assert_eq!(chunk.as_deref(), Some(&b"hello world"[..]));
        let mut end = None;
        put_back(Bytes::from_static(b"all of it"), &mut end);
        assert_eq!(end.as_deref(), Some(&b"all of it"[..]));
    }
}
