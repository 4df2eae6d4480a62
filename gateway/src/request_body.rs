//! Reads a bounded request body for routes that estimate their reservation from it
//! (`estimate_from`), so the estimate is computed before the upstream sees the request.
//! Session I/O only; the estimate itself is `crate::usage::request`'s, a pure function.

use pingora::prelude::Session;

use crate::responses::Refusal;
use crate::usage::request::{Estimate, estimate_from_body, estimate_unread};

/// Reads the request body, at most `from.max_body_bytes` of it, and estimates the amount to
/// reserve from it (`fixed` when it cannot).
///
/// Only a body with a `content-length` within the bound is read: the bytes read are kept in
/// Pingora's retry buffer (`enable_retry_buffering`, 64 KiB, which the bound never exceeds),
/// and Pingora sends that buffer to the upstream before anything else, so the upstream gets
/// the body byte for byte. A body without a length up front (chunked) could outgrow the
/// buffer mid-read, losing bytes already taken off the socket, so it is not read at all.
/// `Err`: reading failed (the client broke off or mis-framed the body).
pub async fn read_estimate(
    session: &mut Session,
    from: &creditgate_config::RequestEstimate,
    fixed: u64,
    max: u64,
) -> Result<Estimate, Refusal> {
    if session.is_body_empty() {
        return Ok(estimate_from_body(b"", from, fixed, max));
    }
    let length = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(length) = length else {
        return Ok(estimate_unread(fixed, "the body has no content-length"));
    };
    if length > from.max_body_bytes {
        return Ok(estimate_unread(
            fixed,
            &format!(
                "the body has {length} bytes, more than estimate_max_body_bytes ({})",
                from.max_body_bytes
            ),
        ));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for this before sending the body; the upstream gets the request
        // without `Expect` (see `upstream_request_filter`).
        session
            .write_continue_response()
            .await
            .map_err(|e| Refusal::unreadable_body(&format!("cannot answer 100-continue: {e}")))?;
    }
    session.enable_retry_buffering();
    // `length` is at most MAX_ESTIMATE_BODY_BYTES (64 KiB), so this never grows past it.
    let mut body = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| Refusal::unreadable_body(&format!("reading the request body failed: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > from.max_body_bytes {
            // Framing guarantees otherwise; never buffer past the bound.
            return Err(Refusal::unreadable_body(
                "the request body is longer than its content-length",
            ));
        }
    }
    Ok(estimate_from_body(&body, from, fixed, max))
}
