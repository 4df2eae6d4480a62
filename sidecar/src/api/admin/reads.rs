//! Read-only admin calls: a customer's balance per credit type and per grant (with
//! expiry), the ledger entries of a customer (paginated, filtered by time, kind and
//! feature), and the configured top-up bundles. Nothing here writes.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::customers::plan_of;
use super::error::ApiError;
use super::idempotency::{Reply, reply};
use super::state::AdminState;
use creditgate_protocol::CreditStore;

use crate::ledger::{EntryKind, EntryQuery, now_ms};

/// Entries per ledger page when the call does not say.
pub const LEDGER_PAGE_DEFAULT: u64 = 100;

/// Most entries per ledger page.
pub const LEDGER_PAGE_MAX: u64 = 1_000;

async fn run(f: impl std::future::Future<Output = Result<Reply, ApiError>>) -> Reply {
    f.await.unwrap_or_else(Reply::from)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("ledger", e)
}

/// `GET /v1/admin/bundles`.
pub fn bundles(st: &AdminState) -> Reply {
    let list: Vec<Value> = st
        .ops
        .bundles
        .values()
        .map(|b| {
            json!({"id": b.id, "credit_type": b.credit_type, "credits": b.credits,
                   "price_micros": b.price_micros})
        })
        .collect();
    reply(StatusCode::OK, &json!({"bundles": list}))
}

/// `GET /v1/admin/customers/{customer}/balance`: `live`, the credit store's balance now
/// (what the gateways enforce), per credit type and per live grant with its expiry; and
/// `ledger`, the durable ledger's figures (every grant the customer ever had), which trail
/// the live ones by the writer's lag.
pub async fn balance(st: &AdminState, customer: &str) -> Reply {
    run(async {
        plan_of(st, customer).await?;
        let live = st
            .sidecar
            .redis
            .balance(customer)
            .await
            .map_err(|e| ApiError::unavailable("credit store", e))?;
        let b = st
            .sidecar
            .ledger
            .balance_at(customer, now_ms())
            .await
            .map_err(unavailable)?;
        let ledger = serde_json::to_value(&b).map_err(unavailable)?;
        let types: Vec<Value> = live
            .types
            .iter()
            .map(|t| {
                json!({"credit_type": t.credit_type, "available": t.available, "held": t.held,
                       "debt": t.debt})
            })
            .collect();
        let grants: Vec<Value> = live
            .grants
            .iter()
            .map(|g| {
                json!({"grant_id": g.grant_id, "credit_type": g.credit_type,
                       "remaining": g.remaining, "held": g.held, "priority": g.priority,
                       "expires_at_ms": g.expires_at_ms, "cost_basis_micros": g.cost_basis,
                       "created_at_ms": g.created_ms})
            })
            .collect();
        Ok(reply(
            StatusCode::OK,
            &json!({"customer": customer,
                    "live": {"at_ms": live.at_ms, "types": types, "grants": grants},
                    "ledger": ledger}),
        ))
    })
    .await
}

/// `GET /v1/admin/customers/{customer}/ledger?from_ms=&to_ms=&kind=&feature=&limit=&cursor=`.
/// Entries in event-time order; `next_cursor` continues after the last one returned.
pub async fn ledger(st: &AdminState, customer: &str, query: &[(String, String)]) -> Reply {
    run(async {
        let LedgerPage {
            mut q,
            feature,
            limit,
            after,
        } = LedgerPage::parse(customer, query)?;
        plan_of(st, customer).await?;
        if let Some((at, _)) = after {
            q.from_ms = Some(q.from_ms.map_or(at, |f| f.max(at)));
        }
        // Entries at the cursor's instant that were already returned are skipped, so ask
        // for more than a page; a short page still carries a cursor while more may exist.
        q.limit = Some(limit.saturating_mul(2).saturating_add(LEDGER_PAGE_DEFAULT));
        let fetched = st.sidecar.ledger.entries(&q).await.map_err(unavailable)?;
        let exhausted = (fetched.len() as u64) < q.limit.unwrap_or(u64::MAX);
        let mut page = Vec::new();
        let mut last: Option<(u64, i64)> = None;
        for e in &fetched {
            let position = (e.entry.event_at_ms, e.seq);
            if after.is_some_and(|a| position <= a) {
                continue;
            }
            last = Some(position);
            if feature
                .as_deref()
                .is_some_and(|f| e.entry.feature.as_deref() != Some(f))
            {
                continue;
            }
            page.push(e);
            if page.len() as u64 == limit {
                break;
            }
        }
        let more = page.len() as u64 == limit || !exhausted;
        let next_cursor = match (more, last) {
            (true, Some((at, seq))) => Some(format!("{at}-{seq}")),
            _ => None,
        };
        Ok(reply(
            StatusCode::OK,
            &json!({"customer": customer, "entries": page, "next_cursor": next_cursor}),
        ))
    })
    .await
}

/// A ledger page request, from its query parameters.
struct LedgerPage {
    /// The ledger query: the customer and the time range and kinds asked for.
    q: EntryQuery,
    /// Only entries of this feature.
    feature: Option<String>,
    /// Entries on the page, at most.
    limit: u64,
    /// The position (event time, sequence) of the previous page's last entry.
    after: Option<(u64, i64)>,
}

impl LedgerPage {
    /// Reads `from_ms`, `to_ms`, `kind` (repeatable), `feature`, `limit` and `cursor`;
    /// a 400 naming the parameter for anything else or a bad value.
    fn parse(customer: &str, query: &[(String, String)]) -> Result<Self, ApiError> {
        let number = |field: &str, v: &str| {
            v.parse::<u64>().map_err(|_| {
                ApiError::field(field, "must be a whole number (ms since the Unix epoch)")
            })
        };
        let mut page = LedgerPage {
            q: EntryQuery {
                customer: Some(customer.to_string()),
                ..EntryQuery::default()
            },
            feature: None,
            limit: LEDGER_PAGE_DEFAULT,
            after: None,
        };
        for (k, v) in query {
            match k.as_str() {
                "from_ms" => page.q.from_ms = Some(number("from_ms", v)?),
                "to_ms" => page.q.until_ms = Some(number("to_ms", v)?),
                "kind" => page.q.kinds.push(
                    v.parse::<EntryKind>()
                        .map_err(|e| ApiError::field("kind", e))?,
                ),
                "feature" => page.feature = Some(v.clone()),
                "limit" => {
                    page.limit = number("limit", v)?;
                    if !(1..=LEDGER_PAGE_MAX).contains(&page.limit) {
                        return Err(ApiError::field(
                            "limit",
                            format!("must be from 1 to {LEDGER_PAGE_MAX}"),
                        ));
                    }
                }
                "cursor" => {
                    let parsed = v
                        .split_once('-')
                        .and_then(|(a, s)| Some((a.parse::<u64>().ok()?, s.parse::<i64>().ok()?)));
                    page.after = Some(parsed.ok_or_else(|| {
                        ApiError::field("cursor", "not a cursor this API returned")
                    })?);
                }
                other => return Err(ApiError::field(other, "unknown query parameter")),
            }
        }
        if let (Some(f), Some(t)) = (page.q.from_ms, page.q.until_ms)
            && f >= t
        {
            return Err(ApiError::field("from_ms", "must be before to_ms"));
        }
        Ok(page)
    }
}
