//! Balance watching: per customer and credit type, a low-balance threshold and an
//! auto-recharge threshold and target; the pass that compares live Redis balances with
//! them and queues webhooks once per crossing (low balance, depleted, auto-recharge) and
//! once per grant expiring soon.
//!
//! A crossing is recorded in `balance_crossings` with a conditional update, so however
//! many passes (or sidecars) see a balance below its threshold, one of them queues one
//! webhook; the next is armed only when the balance is back at or above the threshold.
//! For auto-recharge that makes exactly one recharge in flight per customer and credit
//! type: the next is armed by a purchase grant (the top-up landing) or by a pass that sees
//! the balance back at or above the threshold.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use creditgate_protocol::{Balance, CreditStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::error;

use super::auth::Caller;
use super::customers::plan_of;
use super::error::ApiError;
use super::fields::Body;
use super::idempotency::{Reply, reply};
use super::state::AdminState;
use super::webhooks;
use crate::ledger::{AdminDb, now_ms};
use crate::operations::Endpoint;

/// How often balances are compared with their thresholds, ms: a recharge starts within a
/// second of the crossing, and a pass is one Redis read per watched customer.
pub const ALERT_PASS_MS: u64 = 1_000;

/// Customers watched per pass at most; past it a warning says the pass is truncated.
pub const WATCHED_CUSTOMERS_MAX: i64 = 10_000;

/// One customer's alert settings for one credit type, as `PUT …/alerts` sets them (and
/// as an approval request for them is kept), credit units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSettings {
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Below it, `balance.low` is sent.
    pub low_balance_threshold: Option<u64>,
    /// Below it, an auto-recharge is asked for.
    pub recharge_threshold: Option<u64>,
    /// What an auto-recharge tops the balance up to: each recharge grants up to it.
    pub recharge_target: Option<u64>,
}

/// The one key of the `grant_json` of an approval request for alert settings (a grant
/// request's `grant_json` is the grant itself), so both kinds share one approval queue.
pub const ALERT_APPROVAL_KEY: &str = "alert_settings";

/// `PUT /v1/admin/customers/{customer}/alerts`
/// `{credit_type, low_balance_threshold?, recharge_threshold?, recharge_target?}`.
/// An auto-recharge grants up to its target each time, so a role with a grant limit
/// (support, sales) may set a target up to its `per_grant_max`; a higher one is filed for
/// an admin's approval (202), like a grant over the limit. `call_id` names the request.
pub async fn set(
    st: &AdminState,
    caller: &Caller,
    customer: &str,
    body: &[u8],
    call_id: &str,
) -> Reply {
    let r: Result<Reply, ApiError> = async {
        let settings = parse_settings(st, customer, body)?;
        plan_of(st, customer).await?;
        let target = settings.recharge_target.unwrap_or(0);
        if let Some(limit) = st.ops.limit(caller.role.as_str(), &settings.credit_type)
            && target > limit.per_grant_max
        {
            return file_for_approval(st, caller, &settings, limit.per_grant_max, call_id).await;
        }
        store(st, &settings, &caller.name, None).await
    }
    .await;
    r.unwrap_or_else(Reply::from)
}

/// The settings a `PUT …/alerts` body asks for, checked: a known credit type, a target
/// above its threshold, and the webhooks they need configured.
fn parse_settings(st: &AdminState, customer: &str, body: &[u8]) -> Result<AlertSettings, ApiError> {
    let mut b = Body::parse(body)?;
    let credit_type = b.id("credit_type")?;
    if !st.ops.credit_types.contains(&credit_type) {
        return Err(ApiError::field(
            "credit_type",
            format!("unknown credit type {credit_type:?}"),
        ));
    }
    let low = b.opt_u64("low_balance_threshold")?;
    let threshold = b.opt_u64("recharge_threshold")?;
    let target = b.opt_u64("recharge_target")?;
    b.finish()?;
    match (threshold, target) {
        (None, None) => {}
        (Some(t), Some(g)) if g > t => {
            if st.ops.auto_recharge.is_none() {
                return Err(ApiError::field(
                    "recharge_threshold",
                    "auto-recharge is not configured ([auto_recharge] in the operations file)",
                ));
            }
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "recharge_target",
                "must be above recharge_threshold",
            ));
        }
        (Some(_), None) => {
            return Err(ApiError::field(
                "recharge_target",
                "is required with recharge_threshold",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::field(
                "recharge_threshold",
                "is required with recharge_target",
            ));
        }
    }
    if low.is_some() && st.ops.webhooks.is_none() {
        return Err(ApiError::field(
            "low_balance_threshold",
            "webhooks are not configured ([webhooks] in the operations file)",
        ));
    }
    Ok(AlertSettings {
        customer: customer.to_string(),
        credit_type,
        low_balance_threshold: low,
        recharge_threshold: threshold,
        recharge_target: target,
    })
}

/// Files settings over the caller's limit for an admin's approval (in `grant_approvals`,
/// `amount` = the target): 202 with the request id.
async fn file_for_approval(
    st: &AdminState,
    caller: &Caller,
    settings: &AlertSettings,
    per_grant_max: u64,
    call_id: &str,
) -> Result<Reply, ApiError> {
    let request_id = format!("a-{call_id}");
    let json = json!({ ALERT_APPROVAL_KEY: settings }).to_string();
    st.db
        .execute(
            "INSERT INTO grant_approvals (request_id, customer, amount, grant_json, requested_by, \
             requested_at_ms, state) VALUES ($1, $2, $3, $4, $5, $6, 'pending') ON CONFLICT DO NOTHING",
            &[
                request_id.as_str().into(),
                settings.customer.as_str().into(),
                (settings.recharge_target.unwrap_or(0) as i64).into(),
                json.as_str().into(),
                caller.name.as_str().into(),
                (now_ms() as i64).into(),
            ],
        )
        .await
        .map_err(|e| ApiError::unavailable("admin database", e))?;
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({
            "status": "pending_approval",
            "request_id": request_id,
            "requested_by": caller.name,
            "message": format!(
                "recharge_target is over the {} limit ({per_grant_max} per grant; each auto-recharge \
                 grants up to the target): an admin must approve it",
                caller.role.as_str()
            ),
        }),
    ))
}

/// The alert settings an approval request's `grant_json` asks for; `None` for a grant.
pub fn requested_settings(grant_json: &str) -> Option<AlertSettings> {
    let mut v: serde_json::Value = serde_json::from_str(grant_json).ok()?;
    serde_json::from_value(v.get_mut(ALERT_APPROVAL_KEY)?.take()).ok()
}

/// Writes `settings` as the customer's alert settings for its credit type, recording
/// `actor` and `now_ms`. The one writer of `customer_alerts`: the admin route and the
/// customer page's auto-recharge form both call it.
pub async fn upsert(
    db: &AdminDb,
    settings: &AlertSettings,
    actor: &str,
    now: u64,
) -> Result<u64, sqlx::Error> {
    let to_i64 = |v: Option<u64>| v.map(|v| v as i64);
    let AlertSettings {
        customer,
        credit_type,
        low_balance_threshold: low,
        recharge_threshold: threshold,
        recharge_target: target,
    } = settings;
    db.execute(
        "INSERT INTO customer_alerts (customer, credit_type, low_balance_threshold, recharge_threshold, \
         recharge_target, updated_by, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (customer, credit_type) DO UPDATE SET low_balance_threshold = excluded.low_balance_threshold, \
         recharge_threshold = excluded.recharge_threshold, recharge_target = excluded.recharge_target, \
         updated_by = excluded.updated_by, updated_at_ms = excluded.updated_at_ms",
        &[
            customer.as_str().into(),
            credit_type.as_str().into(),
            to_i64(*low).into(),
            to_i64(*threshold).into(),
            to_i64(*target).into(),
            actor.into(),
            (now as i64).into(),
        ],
    )
    .await
}

/// Records `settings`, set by `actor` (and approved by `approved_by`): 200 with them.
pub async fn store(
    st: &AdminState,
    settings: &AlertSettings,
    actor: &str,
    approved_by: Option<&str>,
) -> Result<Reply, ApiError> {
    let now = now_ms();
    let AlertSettings {
        customer,
        credit_type,
        low_balance_threshold: low,
        recharge_threshold: threshold,
        recharge_target: target,
    } = settings;
    upsert(&st.db, settings, actor, now)
        .await
        .map_err(|e| ApiError::unavailable("admin database", e))?;
    Ok(reply(
        StatusCode::OK,
        &json!({"customer": customer, "credit_type": credit_type, "low_balance_threshold": low,
                "recharge_threshold": threshold, "recharge_target": target,
                "updated_by": actor, "approved_by": approved_by, "updated_at_ms": now}),
    ))
}

/// `GET /v1/admin/webhook-deliveries?customer=`.
pub async fn deliveries(st: &AdminState, query: &[(String, String)]) -> Reply {
    let mut customer = None;
    for (k, v) in query {
        match k.as_str() {
            "customer" => customer = Some(v.as_str()),
            other => return ApiError::field(other, "unknown query parameter").into(),
        }
    }
    match webhooks::list(&st.db, customer).await {
        Ok(rows) => reply(StatusCode::OK, &json!({"deliveries": rows})),
        Err(e) => ApiError::unavailable("admin database", e).into(),
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..10])
}

/// A crossing row as read before the balance: (crossings, rearms).
type Snapshot = std::collections::HashMap<(String, String), (i64, i64)>;

/// The customer's crossing rows, read before its balance, so the updates below act only if
/// nothing changed them meanwhile (another sidecar's pass, a purchase re-arming).
async fn snapshot(st: &AdminState, customer: &str) -> Result<Snapshot, sqlx::Error> {
    let rows = st
        .db
        .fetch(
            "SELECT credit_type, kind, crossings, rearms FROM balance_crossings WHERE customer = $1",
            &[customer.into()],
            |row| Ok((
                (
                    row.try_get::<String, _>("credit_type")?,
                    row.try_get::<String, _>("kind")?
                ),
                (
                    row.try_get::<i64, _>("crossings")?,
                    row.try_get::<i64, _>("rearms")?
                )
            )),
        )
        .await?;
    Ok(rows.into_iter().collect())
}

/// Records that the balance (read after `seen` was taken) is below (`true`) or not below
/// its threshold; returns the crossing's number when this call is the one that saw it go
/// below. Both updates are conditional on the row being as `seen` had it.
async fn cross(
    st: &AdminState,
    seen: &Snapshot,
    customer: &str,
    credit_type: &str,
    kind: &str,
    below: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let db = &st.db;
    db.execute(
        "INSERT INTO balance_crossings (customer, credit_type, kind, below, crossings, rearms) \
         VALUES ($1, $2, $3, 0, 0, 0) ON CONFLICT DO NOTHING",
        &[customer.into(), credit_type.into(), kind.into()],
    )
    .await?;
    let (crossings, rearms) = seen
        .get(&(credit_type.to_string(), kind.to_string()))
        .copied()
        .unwrap_or((0, 0));
    if !below {
        db.execute(
            "UPDATE balance_crossings SET below = 0 WHERE customer = $1 AND credit_type = $2 \
             AND kind = $3 AND below = 1 AND crossings = $4 AND rearms = $5",
            &[
                customer.into(),
                credit_type.into(),
                kind.into(),
                crossings.into(),
                rearms.into(),
            ],
        )
        .await?;
        return Ok(None);
    }
    let changed = db
        .execute(
            "UPDATE balance_crossings SET below = 1, crossings = crossings + 1 \
             WHERE customer = $1 AND credit_type = $2 AND kind = $3 AND below = 0 \
             AND crossings = $4 AND rearms = $5",
            &[
                customer.into(),
                credit_type.into(),
                kind.into(),
                crossings.into(),
                rearms.into(),
            ],
        )
        .await?;
    Ok((changed > 0).then_some(crossings + 1))
}

type Thresholds = (String, String, Option<i64>, Option<i64>, Option<i64>);

/// One pass over every customer (watched customers: those with alert settings, and, when
/// the events webhook is configured, every customer).
pub async fn pass(st: &AdminState) -> Result<(), sqlx::Error> {
    let (settings, customers) = watched(st).await?;
    let now = now_ms();
    if let Some(hook) = &st.ops.webhooks {
        dead_letter_events(st, hook, now).await?;
    }
    for customer in customers {
        let seen = snapshot(st, &customer).await?;
        let balance = match st.sidecar.redis.balance(&customer).await {
            Ok(b) => b,
            Err(e) => {
                error!(customer, error = %e, "alerts: reading the balance failed");
                continue;
            }
        };
        let watch = Watch {
            customer: &customer,
            seen,
            balance,
            settings: settings.iter().filter(|s| s.0 == customer).collect(),
            now,
        };
        if let Some(hook) = &st.ops.webhooks {
            balance_events(st, &watch, hook).await?;
            expiring_grants(st, &watch, hook).await?;
        }
        if let Some(billing) = &st.ops.auto_recharge {
            recharge_requests(st, &watch, billing).await?;
        }
    }
    Ok(())
}

/// One customer in a pass: its crossing rows (read before its balance), its balance and
/// its alert settings.
struct Watch<'a> {
    customer: &'a str,
    seen: Snapshot,
    balance: Balance,
    settings: Vec<&'a Thresholds>,
    now: u64,
}

impl Watch<'_> {
    fn available(&self, credit_type: &str) -> i64 {
        self.balance.of(credit_type).map_or(0, |t| t.available)
    }

    /// The delivery id of the `n`th crossing of `kind` for one credit type.
    fn crossing_id(&self, kind: &str, credit_type: &str, n: i64) -> String {
        let customer = self.customer;
        format!(
            "{kind}-{}-{n}",
            short_hash(&format!("{customer}/{credit_type}"))
        )
    }
}

/// Every customer's alert settings, and the customers a pass watches: those with
/// settings and, when the events webhook is configured, every customer.
async fn watched(st: &AdminState) -> Result<(Vec<Thresholds>, Vec<String>), sqlx::Error> {
    let db = &st.db;
    let settings: Vec<Thresholds> = db
        .fetch(
            "SELECT customer, credit_type, low_balance_threshold, recharge_threshold, recharge_target \
             FROM customer_alerts ORDER BY customer, credit_type LIMIT $1",
            &[WATCHED_CUSTOMERS_MAX.into()],
            |row| Ok((
                row.try_get::<String, _>("customer")?,
                row.try_get::<String, _>("credit_type")?,
                row.try_get::<Option<i64>, _>("low_balance_threshold")?,
                row.try_get::<Option<i64>, _>("recharge_threshold")?,
                row.try_get::<Option<i64>, _>("recharge_target")?
            )),
        )
        .await?;
    let mut customers: Vec<String> = if st.ops.webhooks.is_some() {
        db.fetch(
            "SELECT customer FROM customers ORDER BY customer LIMIT $1",
            &[WATCHED_CUSTOMERS_MAX.into()],
            |row| row.try_get::<String, _>("customer"),
        )
        .await?
    } else {
        Vec::new()
    };
    customers.extend(settings.iter().map(|s| s.0.clone()));
    customers.sort();
    customers.dedup();
    Ok((settings, customers))
}

/// `balance.depleted` when a credit type runs out and `balance.low` when it falls below
/// the customer's threshold, once per crossing.
async fn balance_events(
    st: &AdminState,
    w: &Watch<'_>,
    hook: &Endpoint,
) -> Result<(), sqlx::Error> {
    let (db, customer, now) = (&st.db, w.customer, w.now);
    for t in &w.balance.types {
        let depleted = t.available <= 0;
        if let Some(n) = cross(st, &w.seen, customer, &t.credit_type, "depleted", depleted).await? {
            let id = w.crossing_id("depleted", &t.credit_type, n);
            let payload = json!({"credit_type": t.credit_type, "available": t.available});
            webhooks::enqueue(db, &id, "balance.depleted", customer, hook, payload, now).await?;
        }
    }
    for (_, credit_type, low, _, _) in &w.settings {
        let Some(low) = low else { continue };
        let available = w.available(credit_type);
        if let Some(n) = cross(
            st,
            &w.seen,
            customer,
            credit_type,
            "low_balance",
            available < *low,
        )
        .await?
        {
            let id = w.crossing_id("low", credit_type, n);
            let payload =
                json!({"credit_type": credit_type, "available": available, "threshold": low});
            webhooks::enqueue(db, &id, "balance.low", customer, hook, payload, now).await?;
        }
    }
    Ok(())
}

/// Most open dead letters one pass sends `ledger.dead_letter` for: they are queued once
/// each, so a backlog is worked off over a few passes.
const DEAD_LETTER_ALERTS_PER_PASS: u32 = 100;

/// `ledger.dead_letter` once per open dead letter: a stream entry the ledger could not
/// apply (the writer recorded and acknowledged it), which an operator must replay or
/// discard. A ledger error is logged, not fatal to the pass.
async fn dead_letter_events(st: &AdminState, hook: &Endpoint, now: u64) -> Result<(), sqlx::Error> {
    let letters = match st
        .sidecar
        .ledger
        .dead_letters(true, DEAD_LETTER_ALERTS_PER_PASS)
        .await
    {
        Ok(letters) => letters,
        Err(e) => {
            error!(error = %e, "alerts: reading the dead letters failed");
            return Ok(());
        }
    };
    for d in letters {
        let customer = d
            .letter
            .fields
            .iter()
            .find(|(k, _)| k == "customer")
            .map_or("", |(_, v)| v.as_str());
        let payload = json!({"dead_letter_id": d.id, "reason": d.letter.reason.as_str(),
                             "shard": d.letter.shard, "stream_id": d.letter.stream_id,
                             "event_id": d.letter.event_id, "detail": d.letter.detail});
        let id = format!("dead-letter-{}", d.id);
        webhooks::enqueue(
            &st.db,
            &id,
            "ledger.dead_letter",
            customer,
            hook,
            payload,
            now,
        )
        .await?;
    }
    Ok(())
}

/// `grant.expiring` once per grant with credits left that expires within the webhook's
/// `expiring_within_days`.
async fn expiring_grants(
    st: &AdminState,
    w: &Watch<'_>,
    hook: &Endpoint,
) -> Result<(), sqlx::Error> {
    let horizon = w.now + hook.expiring_within_days * 86_400_000;
    for g in &w.balance.grants {
        let Some(at) = g.expires_at_ms else { continue };
        if g.remaining > 0 && at > w.now && at <= horizon {
            let id = format!("expiring-{}", g.grant_id);
            let payload = json!({"credit_type": g.credit_type, "grant_id": g.grant_id,
                                 "remaining": g.remaining, "expires_at_ms": at});
            webhooks::enqueue(
                &st.db,
                &id,
                "grant.expiring",
                w.customer,
                hook,
                payload,
                w.now,
            )
            .await?;
        }
    }
    Ok(())
}

/// `auto_recharge` to the billing endpoint once per crossing below a customer's recharge
/// threshold, asking for the amount that brings it back to its target.
async fn recharge_requests(
    st: &AdminState,
    w: &Watch<'_>,
    billing: &Endpoint,
) -> Result<(), sqlx::Error> {
    for (_, credit_type, _, threshold, target) in &w.settings {
        let (Some(threshold), Some(target)) = (threshold, target) else {
            continue;
        };
        let available = w.available(credit_type);
        let below = available < *threshold;
        if let Some(n) = cross(st, &w.seen, w.customer, credit_type, "auto_recharge", below).await?
        {
            let id = w.crossing_id("recharge", credit_type, n);
            let payload = json!({"credit_type": credit_type, "available": available,
                                 "threshold": threshold, "target": target,
                                 "amount": (target - available).max(0)});
            webhooks::enqueue(
                &st.db,
                &id,
                "auto_recharge",
                w.customer,
                billing,
                payload,
                w.now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Watches balances and delivers webhooks until `stop` turns true.
pub async fn run(st: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    if st.ops.webhooks.is_none() && st.ops.auto_recharge.is_none() {
        return;
    }
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "webhooks: building the HTTP client failed; no webhooks will be sent");
            return;
        }
    };
    let endpoints: Vec<_> = st
        .ops
        .webhooks
        .iter()
        .chain(st.ops.auto_recharge.iter())
        .cloned()
        .collect();
    let secret_for = |url: &str| {
        endpoints
            .iter()
            .find(|e| e.url == url)
            .map(|e| e.secret.clone())
    };
    loop {
        if let Err(e) = pass(&st).await {
            error!(error = %e, "alerts pass failed; retrying next pass");
        }
        if let Err(e) =
            webhooks::deliver_due(&st.db, &client, secret_for, now_ms(), &st.metrics).await
        {
            error!(error = %e, "webhook delivery pass failed; retrying next pass");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ALERT_PASS_MS)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}
