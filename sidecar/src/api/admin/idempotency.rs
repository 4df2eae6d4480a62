//! `Idempotency-Key` for every mutating admin call: the first call with a key runs and its
//! answer is kept; a replay gets those bytes back; the same key with another request is a
//! 422. Keys are scoped to the caller (token name) and kept [`IDEMPOTENCY_RETAIN_MS`].
//!
//! The first call claims the key with an insert before it runs, so concurrent calls with
//! one key run the operation once: the others wait for the answer and replay it. Only
//! successful (2xx) answers are kept; after a failure the claim is dropped and a retry
//! runs again. This module never decides what a call does.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::ledger::AdminDb;

/// How long a key and its answer are kept: 48 hours, twice the promised 24, so a client
/// retrying for a day never runs a call twice.
pub const IDEMPOTENCY_RETAIN_MS: u64 = 48 * 3_600_000;

/// Longest `Idempotency-Key`, bytes.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// How long a call waits for a concurrent call with the same key to finish before it
/// answers 409: longer than any admin call takes on a healthy system.
pub const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(30);

/// Age after which a claim without an answer is taken to be abandoned (its sidecar died
/// mid-call) and may be taken over, ms: well past [`IDEMPOTENCY_WAIT`]. The call's ids derive
/// from the key, so running it again records the same grant rather than a second.
pub const IDEMPOTENCY_ABANDONED_MS: u64 = 120_000;

/// Pause between looks at a concurrent call's answer.
const IDEMPOTENCY_POLL: Duration = Duration::from_millis(20);

/// The header.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// An answer: status and JSON body bytes.
pub type Reply = (StatusCode, Vec<u8>);

/// A JSON success answer.
pub fn reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    (status, serde_json::to_vec(body).unwrap_or_default())
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        (e.status, e.body())
    }
}

/// The request's key, or a 400 naming the header.
pub fn key_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers.get(IDEMPOTENCY_HEADER).ok_or_else(|| {
        ApiError::field(
            IDEMPOTENCY_HEADER,
            "every mutating call needs an Idempotency-Key header",
        )
    })?;
    let key = raw
        .to_str()
        .map_err(|_| ApiError::field(IDEMPOTENCY_HEADER, "must be printable ASCII"))?;
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_MAX_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::field(
            IDEMPOTENCY_HEADER,
            format!(
                "must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(key.to_string())
}

enum Seen {
    Missing,
    Other,
    Running { since_ms: i64 },
    Done(Reply),
}

async fn look(db: &AdminDb, actor: &str, key: &str, fingerprint: &str) -> Result<Seen, ApiError> {
    let rows = db
        .fetch(
            "SELECT fingerprint, status, body, created_at_ms FROM idempotency_keys WHERE actor = $1 AND idem_key = $2",
            &[actor.into(), key.into()],
            |row| Ok((
                row.try_get::<String, _>("fingerprint")?,
                row.try_get::<Option<i64>, _>("status")?,
                row.try_get::<Option<String>, _>("body")?,
                row.try_get::<i64, _>("created_at_ms")?
            )),
        )
        .await
        .map_err(|e| ApiError::unavailable("reading idempotency keys", e))?;
    Ok(match rows.into_iter().next() {
        None => Seen::Missing,
        Some((f, _, _, _)) if f != fingerprint => Seen::Other,
        Some((_, Some(status), Some(body), _)) => Seen::Done((
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
            body.into_bytes(),
        )),
        Some((_, _, _, since_ms)) => Seen::Running { since_ms },
    })
}

/// Runs `op` once per (caller, key): the first call runs it, replays and concurrent calls
/// get its answer, byte for byte. `request` identifies the call (method, path and body).
/// `op` gets the call's id (hex, derived from the caller and the key) to derive the ids of
/// what it creates.
pub async fn once<F, Fut>(
    db: &AdminDb,
    actor: &str,
    headers: &HeaderMap,
    request: &[&[u8]],
    now_ms: u64,
    op: F,
) -> Reply
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Reply>,
{
    once_kept_as(db, actor, headers, request, now_ms, op, |body| {
        body.to_vec()
    })
    .await
}

/// Like [`once`], but what is kept for replays is `kept_as` of the answer's body: a call
/// whose answer carries a secret (a new API key's plaintext) keeps a copy without it, so
/// the secret is never at rest and a replay answers without it.
pub async fn once_kept_as<F, Fut>(
    db: &AdminDb,
    actor: &str,
    headers: &HeaderMap,
    request: &[&[u8]],
    now_ms: u64,
    op: F,
    kept_as: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Reply
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Reply>,
{
    let key = match key_of(headers) {
        Ok(k) => k,
        Err(e) => return e.into(),
    };
    let claim = Claim {
        db,
        actor,
        key: &key,
        fingerprint: fingerprint_of(request),
        now_ms,
    };
    if let Err(answer) = claim.wait_for_key().await {
        return answer;
    }
    let (status, body) = op(call_id_of(actor, &key)).await;
    claim.keep(status, &kept_as(&body)).await;
    (status, body)
}

/// The SHA-256 hex of a request's parts, each prefixed by its length.
fn fingerprint_of(request: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in request {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// The call's id: 16 bytes of SHA-256 over the caller and the key, in hex.
fn call_id_of(actor: &str, key: &str) -> String {
    let mut id_hasher = Sha256::new();
    id_hasher.update((actor.len() as u64).to_be_bytes());
    id_hasher.update(actor.as_bytes());
    id_hasher.update(key.as_bytes());
    hex::encode(&id_hasher.finalize()[..16])
}

/// One caller's claim on one `Idempotency-Key` for one request.
struct Claim<'a> {
    db: &'a AdminDb,
    actor: &'a str,
    key: &'a str,
    fingerprint: String,
    now_ms: u64,
}

impl Claim<'_> {
    /// Claims the key, or takes over a claim abandoned for [`IDEMPOTENCY_ABANDONED_MS`];
    /// while another call holds it, polls for up to [`IDEMPOTENCY_WAIT`]. `Err` is the
    /// answer to give instead of running the call: the first call's answer, a 422 for a
    /// key reused on another request, a 409 while it still runs, or a 503.
    async fn wait_for_key(&self) -> Result<(), Reply> {
        let started = Instant::now();
        loop {
            let claimed = self
                .db
                .execute(
                    "INSERT INTO idempotency_keys (actor, idem_key, fingerprint, created_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        self.actor.into(),
                        self.key.into(),
                        self.fingerprint.as_str().into(),
                        (self.now_ms as i64).into(),
                    ],
                )
                .await;
            match claimed {
                Ok(1) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(ApiError::unavailable("claiming the idempotency key", e).into());
                }
            }
            let seen = look(self.db, self.actor, self.key, &self.fingerprint).await;
            if self.settled_by(seen?).await? {
                return Ok(());
            }
            if started.elapsed() > IDEMPOTENCY_WAIT {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_progress",
                    Some(IDEMPOTENCY_HEADER),
                    "a call with this Idempotency-Key is still running; retry later",
                )
                .into());
            }
            tokio::time::sleep(IDEMPOTENCY_POLL).await;
        }
    }

    /// What the key's row says for a claim that was not inserted: `Ok(true)` when this
    /// call took an abandoned claim over, `Ok(false)` to poll again, `Err` with the answer.
    async fn settled_by(&self, seen: Seen) -> Result<bool, Reply> {
        match seen {
            Seen::Done(reply) => Err(reply),
            Seen::Other => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                Some(IDEMPOTENCY_HEADER),
                "this Idempotency-Key was used for a different request; use a new key",
            )
            .into()),
            Seen::Running { since_ms }
                if (self.now_ms as i64).saturating_sub(since_ms)
                    > IDEMPOTENCY_ABANDONED_MS as i64 =>
            {
                // Take the abandoned claim over (one caller wins the conditional update).
                let taken = self
                    .db
                    .execute(
                        "UPDATE idempotency_keys SET created_at_ms = $1 WHERE actor = $2 AND idem_key = $3 \
                         AND status IS NULL AND created_at_ms = $4",
                        &[
                            (self.now_ms as i64).into(),
                            self.actor.into(),
                            self.key.into(),
                            since_ms.into(),
                        ],
                    )
                    .await;
                Ok(matches!(taken, Ok(1)))
            }
            Seen::Missing | Seen::Running { .. } => Ok(false),
        }
    }

    /// Keeps a successful answer for replays; forgets the key after a failed one, so the
    /// caller may retry with it.
    async fn keep(&self, status: StatusCode, body: &[u8]) {
        let kept = if status.is_success() {
            self.db
                .execute(
                    "UPDATE idempotency_keys SET status = $1, body = $2 WHERE actor = $3 AND idem_key = $4",
                    &[
                        (status.as_u16() as i64).into(),
                        String::from_utf8_lossy(body).into_owned().into(),
                        self.actor.into(),
                        self.key.into(),
                    ],
                )
                .await
        } else {
            self.db
                .execute(
                    "DELETE FROM idempotency_keys WHERE actor = $1 AND idem_key = $2",
                    &[self.actor.into(), self.key.into()],
                )
                .await
        };
        if let Err(e) = kept {
            let (actor, key) = (self.actor, self.key);
            tracing::error!(actor, key, error = %e, "could not record an idempotent answer; a replay may run the call again");
        }
    }
}

/// Drops keys older than [`IDEMPOTENCY_RETAIN_MS`]; returns how many.
pub async fn purge(db: &AdminDb, now_ms: u64) -> Result<u64, sqlx::Error> {
    let before = now_ms.saturating_sub(IDEMPOTENCY_RETAIN_MS) as i64;
    db.execute(
        "DELETE FROM idempotency_keys WHERE created_at_ms < $1",
        &[before.into()],
    )
    .await
}
