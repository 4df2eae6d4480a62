//! Grants through the admin API: the rules of each source (who may issue it, whether it
//! must expire, whether it has a cost basis, which reason codes it takes), per-role limits
//! with a second person's approval above them, purchases of configured bundles, and voids
//! of a grant's remaining credits.
//!
//! Every grant goes through the ledger-first path of [`crate::jobs::outbox::issue_grant`]; this
//! module decides whether and what to grant, never how it reaches Redis.

use axum::http::StatusCode;
use creditgate_protocol::{CreditStore, GrantSource};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{Caller, Role};
use super::customers::plan_of;
use super::day_limit::DayLock;
use super::error::ApiError;
use super::fields::Body;
use super::idempotency::{Reply, reply};
use super::state::AdminState;
use crate::jobs::outbox::{Issued, OutboxError, issue_grant};
use crate::jobs::rebuilds::{Attempt, FromLedger, attempt_rebuild};
use crate::ledger::{
    ADJUSTMENT_EVENT_PREFIX, Adjustment, GrantRecord, NewEntry, RebuildRecord, now_ms,
};
use crate::operations::{PURCHASE_REASON_CODE, RoleLimit};

/// Burn priority of API grants when the call does not say: the same for every source, so
/// burn order falls to expiry (promotions, which must expire, burn before purchases).
pub const DEFAULT_GRANT_PRIORITY: u32 = 100;

/// Highest priority a call may set (the grant script's limit).
pub const MAX_GRANT_PRIORITY: u64 = 1_000_000;

/// One UTC day, ms: the window of per-day limits.
const DAY_MS: u64 = 86_400_000;

/// How long a void waits for the ledger to catch up with Redis before it answers 409:
/// the writer's lag on a healthy system is tens of milliseconds.
pub const VOID_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most approvals listed per call.
const APPROVALS_LIST_MAX: i64 = 500;

/// A validated grant, ready to record (kept as JSON while it waits for approval).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantParams {
    /// The grant's id, chosen when the call is accepted (so an approval retried grants once).
    pub grant_id: String,
    /// The customer.
    pub customer: String,
    /// Source (wire name).
    pub source: String,
    /// The credit type.
    pub credit_type: String,
    /// Credits.
    pub amount: u64,
    /// Expiry, ms since epoch.
    pub expires_at_ms: Option<u64>,
    /// Money paid, currency micro-units.
    pub cost_basis: u64,
    /// Burn priority.
    pub priority: u32,
    /// Reason code.
    pub reason_code: String,
    /// Free text.
    pub note: String,
}

/// Which roles may issue a source.
fn source_roles(source: GrantSource) -> &'static [Role] {
    match source {
        GrantSource::Purchase | GrantSource::PlanAllotment => &[Role::Admin, Role::Billing],
        GrantSource::Promotion => &[Role::Admin, Role::Sales],
        GrantSource::Goodwill => &[Role::Admin, Role::Support],
        GrantSource::Adjustment => &[Role::Admin],
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("ledger", e)
}

/// Checks a grant request against the source's rules.
/// `call_id` identifies the API call (see [`super::idempotency::once`]); the grant's id
/// derives from it, so a call re-run after a crash records the same grant, not a second.
pub fn parse_grant(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    body: &[u8],
    now: u64,
    call_id: &str,
) -> Result<GrantParams, ApiError> {
    // Fields are read in this order, so the first error reported stays the same.
    let mut b = Body::parse(body)?;
    let source = parse_source(&mut b, caller)?;
    let credit_type = known_credit_type(st, &mut b)?;
    let amount = b.amount("amount")?;
    let reason_code = known_reason_code(st, &mut b, source)?;
    let note = b.opt_text("note")?.unwrap_or_default();
    let expires_at_ms = parse_expiry(st, &mut b, source, now)?;
    let cost_basis = parse_cost_basis(&mut b, source)?;
    let priority = parse_priority(&mut b)?;
    b.finish()?;
    Ok(GrantParams {
        grant_id: format!("g-{call_id}"),
        customer: customer.to_string(),
        source: source.as_str().to_string(),
        credit_type,
        amount,
        expires_at_ms,
        cost_basis,
        priority,
        reason_code,
        note,
    })
}

/// The grant's source, if the caller's role may issue it (403 otherwise).
fn parse_source(b: &mut Body, caller: &Caller) -> Result<GrantSource, ApiError> {
    let source: GrantSource = b.str("source")?.parse().map_err(|_| {
        ApiError::field(
            "source",
            "must be one of purchase, promotion, plan_allotment, goodwill, adjustment",
        )
    })?;
    if !source_roles(source).contains(&caller.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some("source"),
            format!(
                "role {} may not issue {} grants",
                caller.role.as_str(),
                source.as_str()
            ),
        ));
    }
    Ok(source)
}

/// The credit type, if the operations file knows it.
fn known_credit_type(st: &AdminState, b: &mut Body) -> Result<String, ApiError> {
    let credit_type = b.id("credit_type")?;
    if !st.ops.credit_types.contains(&credit_type) {
        return Err(ApiError::field(
            "credit_type",
            format!(
                "unknown credit type {credit_type:?}; known: {:?}",
                st.ops.credit_types
            ),
        ));
    }
    Ok(credit_type)
}

/// The reason code, if the operations file knows it (a purchase may also give the
/// purchase code).
fn known_reason_code(
    st: &AdminState,
    b: &mut Body,
    source: GrantSource,
) -> Result<String, ApiError> {
    let reason_code = b.id("reason_code")?;
    let purchase_code = source == GrantSource::Purchase && reason_code == PURCHASE_REASON_CODE;
    if !purchase_code && !st.ops.reason_codes.contains(&reason_code) {
        return Err(ApiError::field(
            "reason_code",
            format!(
                "unknown reason code {reason_code:?}; known: {:?}",
                st.ops.reason_codes
            ),
        ));
    }
    Ok(reason_code)
}

/// The expiry: in the future, and for a promotion required and within the operations
/// file's `promotion_max_days`.
fn parse_expiry(
    st: &AdminState,
    b: &mut Body,
    source: GrantSource,
    now: u64,
) -> Result<Option<u64>, ApiError> {
    let expires_at_ms = b.opt_u64("expires_at_ms")?;
    if let Some(at) = expires_at_ms
        && at <= now
    {
        return Err(ApiError::field("expires_at_ms", "is in the past"));
    }
    if source == GrantSource::Promotion {
        let Some(at) = expires_at_ms else {
            return Err(ApiError::field("expires_at_ms", "promotions must expire"));
        };
        let max = now + st.ops.promotion_max_days * DAY_MS;
        if at > max {
            return Err(ApiError::field(
                "expires_at_ms",
                format!(
                    "promotions expire within {} days",
                    st.ops.promotion_max_days
                ),
            ));
        }
    }
    Ok(expires_at_ms)
}

/// The cost basis: the amount paid, which a purchase needs and no other source has.
fn parse_cost_basis(b: &mut Body, source: GrantSource) -> Result<u64, ApiError> {
    match (source, b.opt_u64("amount_paid_micros")?) {
        (GrantSource::Purchase, Some(p)) => Ok(p),
        (GrantSource::Purchase, None) => Err(ApiError::field(
            "amount_paid_micros",
            "purchases need the amount paid",
        )),
        (_, Some(_)) => Err(ApiError::field(
            "amount_paid_micros",
            "only purchases have an amount paid",
        )),
        (_, None) => Ok(0),
    }
}

/// The burn priority: [`DEFAULT_GRANT_PRIORITY`] unless given, at most
/// [`MAX_GRANT_PRIORITY`].
fn parse_priority(b: &mut Body) -> Result<u32, ApiError> {
    match b.opt_u64("priority")? {
        None => Ok(DEFAULT_GRANT_PRIORITY),
        Some(p) if p <= MAX_GRANT_PRIORITY => Ok(p as u32),
        Some(_) => Err(ApiError::field(
            "priority",
            format!("must be at most {MAX_GRANT_PRIORITY}"),
        )),
    }
}

fn record_of(p: &GrantParams, actor: &str, now: u64) -> Result<GrantRecord, ApiError> {
    let source: GrantSource = p
        .source
        .parse()
        .map_err(|e: String| ApiError::field("source", e))?;
    let reason = if p.note.is_empty() {
        p.reason_code.clone()
    } else {
        format!("{}: {}", p.reason_code, p.note)
    };
    let record = GrantRecord {
        grant_id: p.grant_id.clone(),
        customer: p.customer.clone(),
        credit_type: p.credit_type.clone(),
        amount: p.amount,
        priority: p.priority,
        expires_at_ms: p.expires_at_ms,
        cost_basis: p.cost_basis,
        source,
        actor: actor.to_string(),
        reason,
        created_at_ms: now,
    };
    record
        .validate()
        .map_err(|e| ApiError::field("(body)", e.to_string()))?;
    Ok(record)
}

/// Records the grant ledger-first, applies it, and keeps its details; the JSON of a
/// granted answer.
pub async fn issue(
    st: &AdminState,
    p: &GrantParams,
    actor: &str,
    approved_by: Option<&str>,
    counts_toward_limit: bool,
) -> Result<serde_json::Value, ApiError> {
    let now = now_ms();
    let record = record_of(p, actor, now)?;
    let issued = issue_grant(
        st.sidecar.ledger.as_ref(),
        st.sidecar.redis.as_ref(),
        &record,
    )
    .await
    .map_err(|e| match e {
        OutboxError::Conflict(id) => ApiError::new(
            StatusCode::CONFLICT,
            "grant_conflict",
            Some("grant_id"),
            format!("grant {id} was recorded before with other fields"),
        ),
        OutboxError::Ledger(e) => unavailable(e),
    })?;
    st.db
        .execute(
            "INSERT INTO admin_grants (grant_id, customer, source, amount, reason_code, note, actor, \
             approved_by, counts_toward_limit, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
            &[
                p.grant_id.as_str().into(),
                p.customer.as_str().into(),
                p.source.as_str().into(),
                (p.amount as i64).into(),
                p.reason_code.as_str().into(),
                p.note.as_str().into(),
                actor.into(),
                approved_by.into(),
                i64::from(counts_toward_limit).into(),
                (now as i64).into(),
            ],
        )
        .await
        .map_err(unavailable)?;
    if p.source == GrantSource::Purchase.as_str() {
        // A purchase ends the auto-recharge in flight for this credit type (it is the
        // top-up, or made one unnecessary): the watcher may recharge again if the balance
        // is still, or again, below its threshold.
        st.db
            .execute(
                "INSERT INTO balance_crossings (customer, credit_type, kind, below, crossings, rearms) \
                 VALUES ($1, $2, 'auto_recharge', 0, 0, 1) ON CONFLICT (customer, credit_type, kind) \
                 DO UPDATE SET below = 0, rearms = balance_crossings.rearms + 1",
                &[p.customer.as_str().into(), p.credit_type.as_str().into()],
            )
            .await
            .map_err(unavailable)?;
    }
    let applied = !matches!(issued, Issued::Recorded { .. });
    Ok(json!({
        "status": "granted",
        "applied": applied,
        "grant": {
            "grant_id": p.grant_id,
            "customer": p.customer,
            "source": p.source,
            "credit_type": p.credit_type,
            "amount": p.amount,
            "expires_at_ms": p.expires_at_ms,
            "cost_basis_micros": p.cost_basis,
            "priority": p.priority,
            "reason_code": p.reason_code,
            "note": p.note,
            "actor": actor,
            "approved_by": approved_by,
            "created_at_ms": now,
        }
    }))
}

/// What the caller has granted of `credit_type` today (UTC) without approval, its units.
async fn granted_today(
    st: &AdminState,
    actor: &str,
    credit_type: &str,
    now: u64,
) -> Result<u64, ApiError> {
    let day_start = (now / DAY_MS * DAY_MS) as i64;
    // Per credit type: amounts of credit types of different scale never add up. The
    // ledger's grant (recorded before its admin row) carries the credit type.
    let rows = st
        .db
        .fetch(
            "SELECT a.amount AS amount FROM admin_grants a JOIN grants g ON g.grant_id = a.grant_id \
             WHERE a.actor = $1 AND a.created_at_ms >= $2 AND a.counts_toward_limit = 1 AND g.credit_type = $3",
            &[actor.into(), day_start.into(), credit_type.into()],
            |row| row.try_get::<i64, _>("amount"),
        )
        .await
        .map_err(unavailable)?;
    Ok(rows.into_iter().map(|a| a.max(0) as u64).sum())
}

async fn run(f: impl std::future::Future<Output = Result<Reply, ApiError>>) -> Reply {
    f.await.unwrap_or_else(Reply::from)
}

/// `POST /v1/admin/customers/{customer}/grants`.
pub async fn grant(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    body: &[u8],
    call_id: &str,
) -> Reply {
    run(async {
        let now = now_ms();
        let params = parse_grant(st, caller, customer, body, now, call_id)?;
        plan_of(st, customer).await?;
        let Some(limit) = st.ops.limit(caller.role.as_str(), &params.credit_type) else {
            let granted = issue(st, &params, &caller.name, None, false).await?;
            return Ok(reply(StatusCode::CREATED, &granted));
        };
        // One check-and-record at a time per actor and day: within this sidecar (the
        // mutex, which also keeps it to one pooled connection holding a lock) and across
        // sidecars sharing a Postgres ledger (an advisory lock held until the grant or
        // approval request is recorded).
        let _guard = st.limit_lock.lock().await;
        let lock = DayLock::acquire(&st.db, &caller.name, now / DAY_MS)
            .await
            .map_err(unavailable)?;
        let outcome = within_limit(st, caller, customer, &params, &limit, now, call_id).await;
        let released = lock.release().await;
        let reply = outcome?;
        released.map_err(unavailable)?;
        Ok(reply)
    })
    .await
}

/// Checks the caller's limit and grants at once or records an approval request; called
/// with the actor's day lock held.
async fn within_limit(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    params: &GrantParams,
    limit: &RoleLimit,
    now: u64,
    call_id: &str,
) -> Result<Reply, ApiError> {
    let today = granted_today(st, &caller.name, &params.credit_type, now).await?;
    let over = params.amount > limit.per_grant_max
        || today.saturating_add(params.amount) > limit.per_day_max;
    if !over {
        let granted = issue(st, params, &caller.name, None, true).await?;
        return Ok(reply(StatusCode::CREATED, &granted));
    }
    let request_id = format!("a-{call_id}");
    let grant_json = serde_json::to_string(params).map_err(unavailable)?;
    st.db
        .execute(
            "INSERT INTO grant_approvals (request_id, customer, amount, grant_json, requested_by, \
             requested_at_ms, state) VALUES ($1, $2, $3, $4, $5, $6, 'pending') ON CONFLICT DO NOTHING",
            &[
                request_id.as_str().into(),
                customer.into(),
                (params.amount as i64).into(),
                grant_json.as_str().into(),
                caller.name.as_str().into(),
                (now as i64).into(),
            ],
        )
        .await
        .map_err(unavailable)?;
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({
            "status": "pending_approval",
            "request_id": request_id,
            "grant_id": params.grant_id,
            "requested_by": caller.name,
            "message": format!(
                "over the {} limit ({} per grant, {} per day; {} granted today): an admin must approve it",
                caller.role.as_str(), limit.per_grant_max, limit.per_day_max, today
            ),
        }),
    ))
}

/// `POST /v1/admin/grant-approvals/{request_id}/approve`: a second person grants it (or,
/// for a request for alert settings over the requester's limit, sets them).
pub async fn approve(st: &AdminState, caller: &Caller, request_id: &str) -> Reply {
    run(async {
        let (grant_json, requested_by) = pending_request(st, caller, request_id).await?;
        if let Some(settings) = super::alerts::requested_settings(&grant_json) {
            claim_request(st, caller, request_id, None).await?;
            let stored = super::alerts::store(st, &settings, &requested_by, Some(&caller.name));
            return match stored.await {
                Ok(r) => Ok(r),
                Err(e) => {
                    unclaim_request(st, request_id).await;
                    Err(e)
                }
            };
        }
        let params: GrantParams = serde_json::from_str(&grant_json).map_err(unavailable)?;
        claim_request(st, caller, request_id, Some(&params.grant_id)).await?;
        match issue(st, &params, &requested_by, Some(&caller.name), false).await {
            Ok(mut granted) => {
                granted["request_id"] = json!(request_id);
                Ok(reply(StatusCode::CREATED, &granted))
            }
            Err(e) => {
                unclaim_request(st, request_id).await;
                Err(e)
            }
        }
    })
    .await
}

/// Puts an approved request back to pending after what it asked for failed, so it can be
/// approved again.
async fn unclaim_request(st: &AdminState, request_id: &str) {
    let _ = st
        .db
        .execute(
            "UPDATE grant_approvals SET state = 'pending', decided_by = NULL, decided_at_ms = NULL \
             WHERE request_id = $1",
            &[request_id.into()],
        )
        .await;
}

/// What a pending approval request asks for (its `grant_json`), and who asked: 404 for an
/// unknown request, 403 when the caller asked for it, 409 when it was decided.
async fn pending_request(
    st: &AdminState,
    caller: &Caller,
    request_id: &str,
) -> Result<(String, String), ApiError> {
    let rows = st
        .db
        .fetch(
            "SELECT grant_json, requested_by, state FROM grant_approvals WHERE request_id = $1",
            &[request_id.into()],
            |row| {
                Ok((
                    row.try_get::<String, _>("grant_json")?,
                    row.try_get::<String, _>("requested_by")?,
                    row.try_get::<String, _>("state")?,
                ))
            },
        )
        .await
        .map_err(unavailable)?;
    let Some((grant_json, requested_by, state)) = rows.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_request",
            Some("request_id"),
            format!("no grant approval {request_id:?}"),
        ));
    };
    if requested_by == caller.name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "same_person",
            Some("Authorization"),
            "a grant must be approved by someone other than who asked for it",
        ));
    }
    if state != "pending" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_decided",
            Some("request_id"),
            format!("grant approval {request_id:?} is {state}"),
        ));
    }
    Ok((grant_json, requested_by))
}

/// Marks a pending request approved by the caller (with the grant it makes, if any), so
/// that two approvers cannot both grant it: 409 when another decision came first.
async fn claim_request(
    st: &AdminState,
    caller: &Caller,
    request_id: &str,
    grant_id: Option<&str>,
) -> Result<(), ApiError> {
    let claimed = st
        .db
        .execute(
            "UPDATE grant_approvals SET state = 'approved', decided_by = $1, decided_at_ms = $2, grant_id = $3 \
             WHERE request_id = $4 AND state = 'pending'",
            &[
                caller.name.as_str().into(),
                (now_ms() as i64).into(),
                grant_id.into(),
                request_id.into(),
            ],
        )
        .await
        .map_err(unavailable)?;
    if claimed == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_decided",
            Some("request_id"),
            format!("grant approval {request_id:?} was decided meanwhile"),
        ));
    }
    Ok(())
}

/// Sets the pending approvals gauge from the `grant_approvals` table (logged on failure).
pub async fn refresh_pending_gauge(st: &AdminState) {
    match st
        .db
        .fetch(
            "SELECT COUNT(*) AS n FROM grant_approvals WHERE state = 'pending'",
            &[],
            |row| row.try_get::<i64, _>("n"),
        )
        .await
    {
        Ok(n) => st
            .metrics
            .pending_approvals
            .set(n.first().copied().unwrap_or(0)),
        Err(e) => tracing::warn!(error = %e, "counting pending approvals failed"),
    }
}

/// `GET /v1/admin/grant-approvals?state=pending|approved`.
pub async fn list_approvals(st: &AdminState, query: &[(String, String)]) -> Reply {
    run(async {
        let mut state = "pending".to_string();
        for (k, v) in query {
            match k.as_str() {
                "state" if v == "pending" || v == "approved" => state = v.clone(),
                "state" => return Err(ApiError::field("state", "must be pending or approved")),
                other => return Err(ApiError::field(other, "unknown query parameter")),
            }
        }
        let rows = st
            .db
            .fetch(
                "SELECT request_id, customer, amount, grant_json, requested_by, requested_at_ms, state, \
                 decided_by, decided_at_ms, grant_id FROM grant_approvals WHERE state = $1 \
                 ORDER BY requested_at_ms, request_id LIMIT $2",
                &[state.as_str().into(), APPROVALS_LIST_MAX.into()],
                |row| Ok(json!({
                    "request_id": row.try_get::<String, _>("request_id")?,
                    "customer": row.try_get::<String, _>("customer")?,
                    "amount": row.try_get::<i64, _>("amount")?,
                    "grant": serde_json::from_str::<serde_json::Value>(&row.try_get::<String, _>("grant_json")?)
                        .unwrap_or_default(),
                    "requested_by": row.try_get::<String, _>("requested_by")?,
                    "requested_at_ms": row.try_get::<i64, _>("requested_at_ms")?,
                    "state": row.try_get::<String, _>("state")?,
                    "approved_by": row.try_get::<Option<String>, _>("decided_by")?,
                    "approved_at_ms": row.try_get::<Option<i64>, _>("decided_at_ms")?,
                    "grant_id": row.try_get::<Option<String>, _>("grant_id")?,
                })),
            )
            .await
            .map_err(unavailable)?;
        Ok(reply(StatusCode::OK, &json!({"state": state, "approvals": rows})))
    })
    .await
}

/// `POST /v1/admin/customers/{customer}/purchases` `{bundle, payment_ref?}`: the product's
/// backend after a payment succeeded.
pub async fn purchase(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    body: &[u8],
    call_id: &str,
) -> Reply {
    run(async {
        let mut b = Body::parse(body)?;
        let bundle_id = b.id("bundle")?;
        let payment_ref = b.opt_text("payment_ref")?.unwrap_or_default();
        b.finish()?;
        let Some(bundle) = st.ops.bundles.get(&bundle_id) else {
            return Err(ApiError::field(
                "bundle",
                format!(
                    "unknown bundle {bundle_id:?}; known: {:?}",
                    st.ops.bundles.keys().collect::<Vec<_>>()
                ),
            ));
        };
        plan_of(st, customer).await?;
        let params = GrantParams {
            grant_id: format!("g-{call_id}"),
            customer: customer.to_string(),
            source: GrantSource::Purchase.as_str().to_string(),
            credit_type: bundle.credit_type.clone(),
            amount: bundle.credits,
            expires_at_ms: None,
            cost_basis: bundle.price_micros,
            priority: DEFAULT_GRANT_PRIORITY,
            reason_code: PURCHASE_REASON_CODE.to_string(),
            note: if payment_ref.is_empty() {
                format!("bundle {bundle_id}")
            } else {
                format!("bundle {bundle_id}, payment {payment_ref}")
            },
        };
        let mut granted = issue(st, &params, &caller.name, None, false).await?;
        granted["bundle"] = json!(bundle_id);
        Ok(reply(StatusCode::CREATED, &granted))
    })
    .await
}

/// `POST /v1/admin/customers/{customer}/grants/{grant_id}/void` `{reason}`: removes the
/// grant's remaining credits with an adjustment entry, records the Redis rebuild it owes
/// the customer, then tries the rebuild once; one that cannot run now (holds pending,
/// Redis behind the ledger) is `pending` and the sidecar's rebuild job retries it until it
/// is done. Refused (409, retry) while the customer has holds pending or while the ledger
/// has not caught up with Redis, so the two never disagree on what was voided. A void of a
/// grant voided before answers that void and its rebuild's state now.
pub async fn void(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    grant_id: &str,
    body: &[u8],
) -> Reply {
    run(async {
        let mut b = Body::parse(body)?;
        let reason = b
            .opt_text("reason")?
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| ApiError::field("reason", "is required"))?;
        b.finish()?;
        plan_of(st, customer).await?;
        let credit_type = credit_type_of_grant(st, customer, grant_id).await?;
        if let Some(before) = void_recorded_before(st, customer, grant_id).await? {
            return Ok(reply(StatusCode::OK, &before));
        }
        // A void that booked its removal and stopped before recording itself (a crash)
        // finishes with the amount it booked; else the removal is booked now.
        let booked_before = removal_booked(st, grant_id).await?;
        let booked = match booked_before {
            Some(amount) => amount,
            None => remaining_once_ledger_agrees(st, customer, grant_id).await?,
        };
        let now = now_ms();
        let mut owed = None;
        if booked > 0 {
            let removal = Adjustment {
                adjustment_id: void_id(grant_id),
                customer: customer.to_string(),
                credit_type,
                amount: -(booked as i64),
                grant_id: Some(grant_id.to_string()),
                actor: caller.name.clone(),
                reason: format!("void: {reason}"),
                at_ms: now,
                shard: st.sidecar.redis.keyspace().shard_of(customer).0,
            };
            owed = Some(book_and_owe_rebuild(st, &removal, booked_before.is_none()).await?);
        }
        st.db
            .execute(
                "INSERT INTO grant_voids (grant_id, customer, amount, reason, actor, voided_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    grant_id.into(),
                    customer.into(),
                    (booked as i64).into(),
                    reason.as_str().into(),
                    caller.name.as_str().into(),
                    (now as i64).into(),
                ],
            )
            .await
            .map_err(unavailable)?;
        let rebuild = match owed {
            Some(owed) => Some(try_owed_rebuild(st, owed).await?),
            None => None,
        };
        Ok(reply(
            StatusCode::OK,
            &void_answer(
                grant_id,
                customer,
                booked,
                &reason,
                &caller.name,
                now,
                rebuild,
            ),
        ))
    })
    .await
}

/// Most owed rebuilds listed by [`owed_rebuilds`]: the rebuild job's batch.
const OWED_REBUILDS_LISTED: u32 = crate::jobs::rebuilds::REBUILD_BATCH_MAX;

/// `GET /v1/admin/redis-rebuilds`: the Redis rebuilds owed after grant voids and not done
/// yet, the soonest due first, with their attempts and last error.
pub async fn owed_rebuilds(st: &AdminState) -> Reply {
    run(async {
        let owed = st
            .sidecar
            .ledger
            .owed_rebuilds(OWED_REBUILDS_LISTED)
            .await
            .map_err(unavailable)?;
        Ok(reply(StatusCode::OK, &json!({ "owed": owed })))
    })
    .await
}

/// The id of a grant's void: its adjustment's id and its owed rebuild's id.
fn void_id(grant_id: &str) -> String {
    format!("void-{grant_id}")
}

/// The answer of a void: what was removed, by whom, and the Redis rebuild's state
/// (`done`, `pending` or `not_needed`) with its attempts.
fn void_answer(
    grant_id: &str,
    customer: &str,
    voided: u64,
    reason: &str,
    actor: &str,
    voided_at_ms: u64,
    rebuild: Option<RebuildRecord>,
) -> serde_json::Value {
    json!({
        "grant_id": grant_id,
        "customer": customer,
        "voided": voided,
        "reason": reason,
        "actor": actor,
        "voided_at_ms": voided_at_ms,
        "redis_rebuild": rebuild.as_ref().map_or("not_needed", RebuildRecord::state),
        "rebuild": rebuild,
    })
}

/// The answer of a void recorded before, with its rebuild's state now; `None` when the
/// grant was not voided.
async fn void_recorded_before(
    st: &AdminState,
    customer: &str,
    grant_id: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    let voids = st
        .db
        .fetch(
            "SELECT amount, reason, actor, voided_at_ms FROM grant_voids WHERE grant_id = $1",
            &[grant_id.into()],
            |row| {
                Ok((
                    row.try_get::<i64, _>("amount")?,
                    row.try_get::<String, _>("reason")?,
                    row.try_get::<String, _>("actor")?,
                    row.try_get::<i64, _>("voided_at_ms")?,
                ))
            },
        )
        .await
        .map_err(unavailable)?;
    let Some((amount, reason, actor, at_ms)) = voids.into_iter().next() else {
        return Ok(None);
    };
    let rebuild = st
        .sidecar
        .ledger
        .rebuild(&void_id(grant_id))
        .await
        .map_err(unavailable)?;
    let (amount, at_ms) = (amount.max(0) as u64, at_ms.max(0) as u64);
    Ok(Some(void_answer(
        grant_id, customer, amount, &reason, &actor, at_ms, rebuild,
    )))
}

/// The credits a void of `grant_id` booked before (its adjustment entry), if it did.
async fn removal_booked(st: &AdminState, grant_id: &str) -> Result<Option<u64>, ApiError> {
    let event_id = format!("{ADJUSTMENT_EVENT_PREFIX}{}", void_id(grant_id));
    let entry = st
        .sidecar
        .ledger
        .entry(&event_id)
        .await
        .map_err(unavailable)?;
    Ok(entry.map(|e| e.entry.amount.unsigned_abs()))
}

/// The credit type of one of the customer's grants; 404 when the ledger has no such grant.
async fn credit_type_of_grant(
    st: &AdminState,
    customer: &str,
    grant_id: &str,
) -> Result<String, ApiError> {
    let known = st
        .sidecar
        .ledger
        .grants_of(customer)
        .await
        .map_err(unavailable)?;
    match known.into_iter().find(|g| g.grant_id == grant_id) {
        Some(grant) => Ok(grant.credit_type),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_grant",
            Some("grant_id"),
            format!("customer {customer:?} has no grant {grant_id:?}"),
        )),
    }
}

/// What is left of the grant, once the ledger and Redis agree on it. The ledger learns of
/// the grant's burns through the event stream: wait (up to [`VOID_CATCH_UP_WAIT`]) until
/// it agrees with Redis, so the void removes exactly that. 409 while holds are pending or
/// when the ledger does not catch up in time.
async fn remaining_once_ledger_agrees(
    st: &AdminState,
    customer: &str,
    grant_id: &str,
) -> Result<u64, ApiError> {
    let busy = |message: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "retry_later",
            None,
            message.to_string(),
        )
    };
    let started = std::time::Instant::now();
    loop {
        let live = st
            .sidecar
            .redis
            .balance(customer)
            .await
            .map_err(|e| ApiError::unavailable("credit store", e))?;
        if live.types.iter().any(|t| t.held != 0) {
            return Err(busy(
                "the customer has holds pending; retry when they are resolved",
            ));
        }
        let in_redis = live
            .grants
            .iter()
            .find(|g| g.grant_id == grant_id)
            .map(|g| g.remaining)
            .unwrap_or(0);
        let booked = st
            .sidecar
            .ledger
            .balance_at(customer, now_ms())
            .await
            .map_err(unavailable)?
            .grant(grant_id)
            .map(|g| g.remaining.max(0) as u64)
            .unwrap_or(0);
        if in_redis == booked {
            return Ok(booked);
        }
        if started.elapsed() > VOID_CATCH_UP_WAIT {
            return Err(busy(
                "the ledger is catching up with Redis; retry in a moment",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Books the removal in the ledger (unless `book` is false: a crashed void booked it
/// before) and records the Redis rebuild it owes the customer, before any attempt, so the
/// rebuild job finishes it whatever happens next.
async fn book_and_owe_rebuild(
    st: &AdminState,
    removal: &Adjustment,
    book: bool,
) -> Result<RebuildRecord, ApiError> {
    let ledger = st.sidecar.ledger.as_ref();
    if book {
        let entry = NewEntry::adjustment(removal).map_err(unavailable)?;
        ledger.append_batch(&[entry]).await.map_err(unavailable)?;
    }
    let grant_id = removal.grant_id.as_deref().unwrap_or_default();
    let owed = RebuildRecord::owed(
        &removal.adjustment_id,
        &removal.customer,
        &format!("void of grant {grant_id}"),
        now_ms(),
    );
    ledger.record_rebuild(&owed).await.map_err(unavailable)?;
    Ok(owed)
}

/// Tries an owed rebuild once now; returns its row as it stands after the attempt.
async fn try_owed_rebuild(st: &AdminState, owed: RebuildRecord) -> Result<RebuildRecord, ApiError> {
    let ledger = st.sidecar.ledger.as_ref();
    let rebuilder = FromLedger {
        ledger,
        store: st.sidecar.redis.as_ref(),
    };
    let attempt = attempt_rebuild(ledger, &rebuilder, &owed, now_ms())
        .await
        .map_err(unavailable)?;
    let outcome = if attempt == Attempt::Done {
        "done"
    } else {
        "retry"
    };
    st.sidecar
        .metrics
        .rebuild_attempts
        .with_label_values(&[outcome])
        .inc();
    let now = ledger
        .rebuild(&owed.rebuild_id)
        .await
        .map_err(unavailable)?;
    Ok(now.unwrap_or(owed))
}
