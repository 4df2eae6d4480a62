//! The admin API's dead-letter rules: list and show the stream entries the ledger writer
//! could not apply, replay one once its cause is fixed, or discard it. The caller's token
//! name is the actor recorded in the ledger's append-only `dead_letter_actions`.
//!
//! The work itself is the dead-letter job's ([`crate::jobs::dead_letters`]), shared with the
//! command line; nothing here touches Redis.

use axum::http::StatusCode;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::fields::Body;
use super::idempotency::{Reply, reply};
use super::state::AdminState;
use crate::jobs::dead_letters::{DeadLetterError, dead_letter_json, discard, replay};

/// Dead letters listed when `limit` is absent.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// Most dead letters one list returns: bounded like every admin list.
pub const LIST_MAX: u32 = 1_000;

/// The answer to a failed action: 404 unknown, 409 resolved already or still refused by
/// the ledger (the failed replay is recorded), 503 when the ledger failed.
fn error_reply(e: DeadLetterError) -> Reply {
    let (status, code) = match &e {
        DeadLetterError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        DeadLetterError::Resolved { .. } => (StatusCode::CONFLICT, "dead_letter_resolved"),
        DeadLetterError::Refused { .. } => (StatusCode::CONFLICT, "replay_refused"),
        DeadLetterError::Ledger(_) => return ApiError::unavailable("ledger", &e).into(),
    };
    ApiError::new(status, code, None, e.to_string()).into()
}

/// The dead letter number in the path.
fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::field(
            "id",
            format!("path parameter id {id:?} is not a dead letter number"),
        )
    })
}

/// `GET /v1/admin/dead-letters?state=open|all&limit=N`: newest first, open ones by default.
pub async fn list(st: &AdminState, query: &[(String, String)]) -> Reply {
    let mut open_only = true;
    let mut limit = DEFAULT_LIST_LIMIT;
    for (k, v) in query {
        match (k.as_str(), v.as_str()) {
            ("state", "open") => open_only = true,
            ("state", "all") => open_only = false,
            ("state", _) => {
                return ApiError::field("state", "query parameter state must be open or all")
                    .into();
            }
            ("limit", n) => match n.parse::<u32>() {
                Ok(n) if (1..=LIST_MAX).contains(&n) => limit = n,
                _ => {
                    return ApiError::field(
                        "limit",
                        format!("query parameter limit must be from 1 to {LIST_MAX}"),
                    )
                    .into();
                }
            },
            (other, _) => return ApiError::field(other, "unknown query parameter").into(),
        }
    }
    match st.sidecar.ledger.dead_letters(open_only, limit).await {
        Ok(letters) => {
            let all: Vec<_> = letters.iter().map(dead_letter_json).collect();
            reply(StatusCode::OK, &json!({"dead_letters": all}))
        }
        Err(e) => ApiError::unavailable("ledger", e).into(),
    }
}

/// `GET /v1/admin/dead-letters/{id}`: one dead letter with its raw fields and actions.
pub async fn show(st: &AdminState, id: &str) -> Reply {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return e.into(),
    };
    match st.sidecar.ledger.dead_letter(id).await {
        Ok(Some(letter)) => reply(StatusCode::OK, &dead_letter_json(&letter)),
        Ok(None) => error_reply(DeadLetterError::NotFound(id)),
        Err(e) => ApiError::unavailable("ledger", e).into(),
    }
}

/// `POST /v1/admin/dead-letters/{id}/replay` (`{"reason": …}`): re-applies it through the
/// writer's path; `POST …/discard` marks it resolved. The token name is the actor.
pub async fn act(
    st: &AdminState,
    caller: &Caller,
    id: &str,
    body: &[u8],
    discarding: bool,
) -> Reply {
    let r: Result<Reply, ApiError> = async {
        let id = parse_id(id)?;
        let mut b = Body::parse(body)?;
        let reason = b.str("reason")?;
        b.finish()?;
        if reason.trim().is_empty() {
            return Err(ApiError::field("reason", "say why"));
        }
        let ledger = st.sidecar.ledger.as_ref();
        let answer = if discarding {
            discard(ledger, id, &caller.name, &reason).await.map(|()| json!({"id": id, "state": "discarded"}))
        } else {
            replay(ledger, id, &caller.name, &reason).await.map(|o| {
                json!({"id": id, "state": "replayed", "written": o.written, "already_there": o.duplicates})
            })
        };
        Ok(match answer {
            Ok(body) => reply(StatusCode::OK, &body),
            Err(e) => error_reply(e),
        })
    }
    .await;
    r.unwrap_or_else(Reply::from)
}
