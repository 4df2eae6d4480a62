//! The fleet control handlers of the sidecar's admin API: mode overrides (global kill
//! switch, per route, per customer), the rollout percentage, the audit log of changes and
//! the list of gateways with their config version and mode. Every change records the
//! caller's token name as its actor and needs a reason (400 naming the field otherwise);
//! it is written to the audit log atomically with the change itself.
//!
//! - `GET /v1/control` — the control state, the published config version, the gateways
//! - `POST /v1/control/mode` — `{"mode": "off"|"shadow"|"enforce"|null, "route"?: NAME,
//!   "customer"?: ID, "reason": ..}` (neither route nor customer: global; `null` clears
//!   the override)
//! - `POST /v1/control/rollout` — `{"percent": 0..100 | null, "reason": ..}`
//! - `GET /v1/control/audit?limit=N` — the newest changes first, from the ledger's
//!   durable copy (brought up to date from Redis first when Redis answers)
//! - `GET /v1/fleet/gateways` — gateways with a live heartbeat
//!
//! The routes and their roles are in [`crate::api::admin::ROUTES`]; they are served only on the
//! admin listener, behind bearer tokens. A body's `actor` field is ignored: the actor is
//! always the token's name, so nobody can record a change under another name.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditgate_protocol::control::{
    AUDIT_LIST_MAX, AuditEntry, AuditedChange, ControlChange, ControlMode, ControlState, Heartbeat,
    parse_percent,
};
use creditgate_protocol::{RedisStore, StoreError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::jobs::audit_mirror::mirror_audit;
use crate::jobs::daemon::Sidecar;

/// Audit entries listed when the request does not say.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

/// A request field that is wrong: answered 400 with a JSON body naming it.
#[derive(Debug)]
pub struct BadField {
    field: String,
    message: String,
}

impl IntoResponse for BadField {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "bad_request", "field": self.field, "message": self.message}),
            ),
        )
            .into_response()
    }
}

fn bad_field(field: &str, message: String) -> BadField {
    BadField {
        field: field.to_string(),
        message,
    }
}

fn store_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "redis_unavailable", "message": e.to_string()})),
    )
        .into_response()
}

/// The JSON object of a request body, or a 400 saying why not.
fn body_object(body: &Bytes) -> Result<Map<String, Value>, BadField> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_field("", "the body must be a JSON object".into())),
        Err(e) => Err(bad_field("", format!("the body is not valid JSON: {e}"))),
    }
}

/// A required, non-empty string field.
fn required_text(body: &Map<String, Value>, field: &str) -> Result<String, BadField> {
    match body.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad_field(field, format!("{field} must not be empty"))),
        Some(_) => Err(bad_field(field, format!("{field} must be a string"))),
        None => Err(bad_field(
            field,
            format!("{field} is required: every change names who made it and why"),
        )),
    }
}

/// An optional string field.
fn optional_text(body: &Map<String, Value>, field: &str) -> Result<Option<String>, BadField> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(bad_field(
            field,
            format!("{field} must be a non-empty string"),
        )),
    }
}

/// Parses a mode argument: a mode name, or `clear` to remove the override.
pub fn parse_mode_or_clear(raw: &str) -> Result<Option<ControlMode>, String> {
    if raw == "clear" {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|e: String| format!("{e}, or clear"))
}

/// The change a `POST /v1/control/mode` body asks for.
fn mode_change(body: &Map<String, Value>) -> Result<ControlChange, BadField> {
    let mode = match body.get("mode") {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<ControlMode>().map_err(|e| bad_field("mode", e))?),
        Some(_) => {
            return Err(bad_field(
                "mode",
                "mode must be \"off\", \"shadow\", \"enforce\" or null (clear)".into(),
            ));
        }
        None => {
            return Err(bad_field(
                "mode",
                "mode is required: \"off\", \"shadow\", \"enforce\" or null (clear)".into(),
            ));
        }
    };
    let route = optional_text(body, "route")?;
    let customer = optional_text(body, "customer")?;
    Ok(match (route, customer) {
        (Some(_), Some(_)) => {
            return Err(bad_field(
                "customer",
                "give route or customer, not both".into(),
            ));
        }
        (Some(route), None) => ControlChange::Route(route, mode),
        (None, Some(customer)) => ControlChange::Customer(customer, mode),
        (None, None) => ControlChange::Global(mode),
    })
}

/// The change a `POST /v1/control/rollout` body asks for.
fn rollout_change(body: &Map<String, Value>) -> Result<ControlChange, BadField> {
    let percent = match body.get("percent") {
        Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            Some(parse_percent(&n.to_string()).map_err(|e| bad_field("percent", e))?)
        }
        Some(_) => {
            return Err(bad_field(
                "percent",
                "percent must be a whole number from 0 to 100, or null (clear)".into(),
            ));
        }
        None => {
            return Err(bad_field(
                "percent",
                "percent is required: a whole number from 0 to 100, or null (clear)".into(),
            ));
        }
    };
    Ok(ControlChange::Rollout(percent))
}

async fn apply(
    s: &Sidecar,
    actor: &str,
    body: &Map<String, Value>,
    change: ControlChange,
) -> Response {
    let change = AuditedChange {
        change,
        actor: actor.to_string(),
        reason: match required_text(body, "reason") {
            Ok(r) => r,
            Err(r) => return r.into_response(),
        },
    };
    if let Err(message) = change.validate() {
        let field = message.split(' ').next().unwrap_or("").to_string();
        return bad_field(&field, message).into_response();
    }
    match s.redis.change_control(&change).await {
        Ok(version) => {
            // Copy it to the ledger now; the sidecar's loop retries if this fails.
            if let Err(e) = mirror_audit(&s.redis, s.ledger.as_ref()).await {
                tracing::warn!(error = %format!("{e:#}"), "copying the audit log to the ledger failed; retrying in the background");
            }
            tracing::warn!(change = %change.change.describe(), actor = %change.actor, reason = %change.reason, version, "control state changed");
            axum::Json(
                json!({"version": version, "change": change.change.describe(),
                "actor": change.actor, "reason": change.reason}),
            )
            .into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `POST /v1/control/mode`, by `actor` (the caller's token name).
pub async fn set_mode(s: &Sidecar, actor: &str, body: &Bytes) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match mode_change(&body) {
        Ok(change) => apply(s, actor, &body, change).await,
        Err(r) => r.into_response(),
    }
}

/// `POST /v1/control/rollout`, by `actor` (the caller's token name).
pub async fn set_rollout(s: &Sidecar, actor: &str, body: &Bytes) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match rollout_change(&body) {
        Ok(change) => apply(s, actor, &body, change).await,
        Err(r) => r.into_response(),
    }
}

/// The control state as JSON.
pub fn state_json(state: &ControlState) -> Value {
    json!({
        "version": state.version,
        "global": state.global.map(|m| m.as_str()),
        "rollout_percent": state.rollout_percent,
        "routes": state.routes.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect::<Map<_, _>>(),
        "customers": state.customers.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect::<Map<_, _>>(),
    })
}

/// One gateway as JSON; `behind` when it runs an older config than `published`.
pub fn gateway_json(g: &Heartbeat, published: u64) -> Value {
    json!({
        "gateway_id": g.gateway_id,
        "config_version": g.config_version,
        "config_hash": g.config_hash,
        "behind": g.config_version < published,
        "control_version": g.control_version,
        "mode": g.mode,
        "forced_off": g.forced_off,
        "last_seen_ms": g.at_ms,
    })
}

/// One audit entry as JSON.
pub fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at_ms": e.at_ms,
        "actor": e.actor,
        "reason": e.reason,
        "change": e.change,
        "version": e.version,
    })
}

async fn published(redis: &RedisStore) -> Result<(u64, Option<String>), StoreError> {
    Ok(match redis.published_version().await? {
        Some((version, hash)) => (version, Some(hash)),
        None => (0, None),
    })
}

/// `GET /v1/control`: the control state, the published config version, the gateways.
pub async fn show(s: &Sidecar) -> Response {
    let state = match s.redis.control_state().await {
        Ok(state) => state,
        Err(e) => return store_error(e),
    };
    let (version, hash) = match published(&s.redis).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let gateways = match s.redis.gateways().await {
        Ok(g) => g,
        Err(e) => return store_error(e),
    };
    axum::Json(json!({
        "state": state_json(&state),
        "config": {"version": version, "hash": hash},
        "gateways": gateways.iter().map(|g| gateway_json(g, version)).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /v1/fleet/gateways`: the gateways with a live heartbeat.
pub async fn gateways(s: &Sidecar) -> Response {
    let (version, _) = match published(&s.redis).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    match s.redis.gateways().await {
        Ok(g) => axum::Json(json!({
            "published_version": version,
            "gateways": g.iter().map(|g| gateway_json(g, version)).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// The query of `GET /v1/control/audit`.
#[derive(Deserialize)]
pub struct LimitQuery {
    /// Entries to list, 1 to `AUDIT_LIST_MAX`; [`DEFAULT_AUDIT_LIMIT`] when absent.
    pub limit: Option<usize>,
}

/// `GET /v1/control/audit?limit=N`: the newest changes first.
pub async fn audit(s: &Sidecar, q: LimitQuery) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=AUDIT_LIST_MAX).contains(&limit) {
        return bad_field(
            "limit",
            format!("query parameter limit must be from 1 to {AUDIT_LIST_MAX}"),
        )
        .into_response();
    }
    // Bring the durable copy up to date; with Redis down it still lists what it has.
    if let Err(e) = mirror_audit(&s.redis, s.ledger.as_ref()).await {
        tracing::warn!(error = %format!("{e:#}"), "audit log not copied from Redis; listing the ledger's copy");
    }
    match s.ledger.control_audit(limit as u32).await {
        Ok(entries) => axum::Json(json!({
            "entries": entries.iter().map(audit_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "ledger_unavailable", "message": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn bodies_become_changes() {
        let b = obj(json!({"mode": "off"}));
        assert_eq!(
            mode_change(&b).unwrap(),
            ControlChange::Global(Some(ControlMode::Off))
        );
        let b = obj(json!({"mode": null, "route": "GET /x"}));
        assert_eq!(
            mode_change(&b).unwrap(),
            ControlChange::Route("GET /x".into(), None)
        );
        assert!(mode_change(&obj(json!({"mode": "enforced"}))).is_err());
        assert!(mode_change(&obj(json!({"route": "r"}))).is_err());
        assert_eq!(
            rollout_change(&obj(json!({"percent": 10}))).unwrap(),
            ControlChange::Rollout(Some(10))
        );
        assert!(rollout_change(&obj(json!({"percent": 101}))).is_err());
        assert!(rollout_change(&obj(json!({"percent": 2.5}))).is_err());
        assert_eq!(parse_mode_or_clear("clear"), Ok(None));
        assert!(parse_mode_or_clear("of").is_err());
    }
}
