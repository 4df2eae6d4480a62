//! The fingerprint of a request sent with an `Idempotency-Key`: what binds the key to one
//! request, so that the same key on another request is refused (422) and only the
//! identical request is ever replayed uncharged.
//!
//! The fingerprint is SHA-256 over the request as it is forwarded: the method, the path
//! (after normalisation: what the upstream receives), the query as received and the body's
//! SHA-256. The body is hashed when the gateway has it whole: read for an estimate, or read
//! here when it announces a `content-length` of at most [`FINGERPRINT_BODY_MAX_BYTES`]. A
//! body it does not have (chunked, larger, or not complete in time) is represented by its
//! announced length only; such a request is never replayed uncharged (its replay allowance
//! is 0), because two different bodies of one length would look the same.
//!
//! Session I/O only to read the body; the fingerprint itself is a pure function. The store
//! keeps and compares it ([`creditgate_protocol::idempotency`]); nothing here decides what
//! a replay costs.

use std::time::Duration;

use creditgate_config::ESTIMATE_READ_TIMEOUT_MS;
use pingora::prelude::Session;
use sha2::{Digest, Sha256};

use crate::admission::ReservePlan;
use crate::gate::RequestCtx;
use crate::request_body::answer_continue;
use crate::responses::Refusal;

/// Largest request body the gateway reads to fingerprint it, in bytes: 64 KiB, the size of
/// Pingora's retry buffer, which keeps what was read and sends it to the upstream first.
/// A larger body could not be passed on after reading it whole.
pub const FINGERPRINT_BODY_MAX_BYTES: u64 = 64 * 1024;

/// The request body as the fingerprint sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDigest {
    /// The whole body was read: its SHA-256.
    Hashed([u8; 32]),
    /// The body was not (wholly) read: only its announced length (`None`: chunked).
    Unread {
        /// The `content-length`, when the body announced one.
        length: Option<u64>,
    },
}

impl BodyDigest {
    /// The digest of a body read whole.
    pub fn of(body: &[u8]) -> Self {
        Self::Hashed(Sha256::digest(body).into())
    }
}

/// The fingerprint of one request: hex SHA-256, and whether the body is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFingerprint {
    /// 64 hex digits.
    pub hex: String,
    /// Whether the body's bytes are in the fingerprint (else only its length).
    pub body_hashed: bool,
}

/// The fingerprint of a request with this method, forwarded path, query and body. Each
/// part is length-prefixed, so no two different requests run together into the same bytes.
pub fn fingerprint(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &BodyDigest,
) -> RequestFingerprint {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(b"creditgate-request-v1");
    part(method.as_bytes());
    part(path.as_bytes());
    match query {
        Some(query) => part(format!("?{query}").as_bytes()),
        None => part(b""),
    }
    let body_hashed = match body {
        BodyDigest::Hashed(digest) => {
            part(b"body");
            part(digest);
            true
        }
        BodyDigest::Unread { length } => {
            part(b"unread");
            part(length.map(|n| n.to_string()).unwrap_or_default().as_bytes());
            false
        }
    };
    RequestFingerprint {
        hex: hex::encode(hash.finalize()),
        body_hashed,
    }
}

/// Binds a keyed plan to this request: fingerprints it (reading a small body first if
/// nothing read it yet) and, when the body could not be hashed, allows no uncharged replay.
/// Does nothing for a plan without an `Idempotency-Key`.
pub async fn bind_request(
    session: &mut Session,
    ctx: &mut RequestCtx,
    plan: &mut ReservePlan,
) -> Result<(), Refusal> {
    let Some(claim) = &mut plan.idempotency else {
        return Ok(());
    };
    let body = body_digest(session, ctx).await?;
    let req = session.req_header();
    let fp = fingerprint(req.method.as_str(), req.uri.path(), req.uri.query(), &body);
    claim.fingerprint = fp.hex;
    if !fp.body_hashed {
        claim.replay_max = 0;
    }
    Ok(())
}

/// The body as the fingerprint sees it, reading it whole when it is small, announced and
/// not read yet.
async fn body_digest(session: &mut Session, ctx: &mut RequestCtx) -> Result<BodyDigest, Refusal> {
    if session.is_body_empty() {
        return Ok(BodyDigest::of(b""));
    }
    let length = announced_length(session);
    if ctx.body_read {
        // Read for an estimate: whole only if it ended and the retry buffer kept all of it.
        let whole = ctx.body_put_back.is_none() && session.is_body_done();
        return Ok(match session.get_retry_buffer().filter(|_| whole) {
            Some(body) => BodyDigest::of(&body),
            None => BodyDigest::Unread { length },
        });
    }
    let Some(length) = length.filter(|n| *n <= FINGERPRINT_BODY_MAX_BYTES) else {
        return Ok(BodyDigest::Unread { length });
    };
    answer_continue(session).await?;
    ctx.body_read = true;
    session.enable_retry_buffering();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ESTIMATE_READ_TIMEOUT_MS);
    loop {
        let read = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        let Ok(read) = read else {
            // What was read is in the retry buffer and still goes to the upstream.
            return Ok(BodyDigest::Unread {
                length: Some(length),
            });
        };
        let read = read.map_err(|e| {
            Refusal::unreadable_body(&format!("reading the request body failed: {e}"))
        })?;
        if read.is_none() {
            break;
        }
    }
    Ok(match session.get_retry_buffer() {
        Some(body) if !session.retry_buffer_truncated() => BodyDigest::of(&body),
        _ => BodyDigest::Unread {
            length: Some(length),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_request_is_in_the_fingerprint() {
        let body = BodyDigest::of(b"{\"q\":1}");
        let base = fingerprint("POST", "/v1/chat", Some("a=1"), &body);
        assert_eq!(base.hex.len(), 64);
        assert!(base.body_hashed);
        assert_eq!(base, fingerprint("POST", "/v1/chat", Some("a=1"), &body));
        let others = [
            fingerprint("PUT", "/v1/chat", Some("a=1"), &body),
            fingerprint("POST", "/v1/chats", Some("a=1"), &body),
            fingerprint("POST", "/v1/chat", Some("a=2"), &body),
            fingerprint("POST", "/v1/chat", Some(""), &body),
            fingerprint("POST", "/v1/chat", None, &body),
            fingerprint(
                "POST",
                "/v1/chat",
                Some("a=1"),
                &BodyDigest::of(b"{\"q\":2}"),
            ),
            fingerprint("POST", "/v1/chat?a=1", None, &body),
        ];
        for other in others {
            assert_ne!(base.hex, other.hex);
        }
    }

    #[test]
    fn an_unread_body_is_its_length_and_is_marked_so() {
        let unread = fingerprint("POST", "/x", None, &BodyDigest::Unread { length: Some(9) });
        assert!(!unread.body_hashed);
        assert_ne!(
            unread.hex,
            fingerprint("POST", "/x", None, &BodyDigest::Unread { length: Some(10) }).hex
        );
        assert_ne!(
            unread.hex,
            fingerprint("POST", "/x", None, &BodyDigest::Unread { length: None }).hex
        );
    }
}
