//! The reconciler: compares each customer's Redis balance with what the ledger says, and
//! rebuilds a customer's Redis state from the ledger when asked or when Redis lost its data.
//!
//! Redis `book_available + held` must equal the ledger's total (granted − posted − expired
//! − breakage) for every customer and credit type, and Redis `held` the ledger's held.
//! Events still in the streams make Redis run ahead of the ledger for a moment, so callers
//! drain the writer first and treat drift seen once under traffic as provisional.

use std::collections::{BTreeMap, HashMap};

use creditgate_protocol::{
    CreditStore, Event, EventBody, Keyspace, RedisStore, Release, RequestContext, RestoreOutcome,
    RestoreState, RestoredGrant,
};
use tracing::{info, warn};

use crate::ledger::{EntryKind, EntryQuery, Ledger, LedgerError, NewEntry, now_ms};

/// Why reconciling failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] creditgate_protocol::StoreError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One customer and credit type whose Redis figures differ from the ledger's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Ledger total (available + held).
    pub ledger_total: i64,
    /// Redis `book_available + held`.
    pub redis_total: i64,
    /// Ledger held.
    pub ledger_held: i64,
    /// Redis held.
    pub redis_held: i64,
}

impl Drift {
    /// Redis total minus ledger total: positive when Redis shows more credits.
    pub fn amount(&self) -> i64 {
        self.redis_total - self.ledger_total
    }
}

/// What one comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Customer and credit type pairs compared.
    pub compared: u64,
    /// Those that differ.
    pub drifts: Vec<Drift>,
}

/// Compares every customer the ledger knows with Redis.
pub async fn compare(
    ledger: &dyn Ledger,
    redis: &RedisStore,
) -> Result<ReconcileReport, ReconcileError> {
    let mut by_customer: BTreeMap<String, Vec<(String, i64, i64)>> = BTreeMap::new();
    for t in ledger.customer_totals().await? {
        by_customer
            .entry(t.customer)
            .or_default()
            .push((t.credit_type, t.total, t.held));
    }
    let mut report = ReconcileReport::default();
    for (customer, totals) in by_customer {
        let balance = redis.balance(&customer).await?;
        for (credit_type, ledger_total, ledger_held) in totals {
            report.compared += 1;
            let (redis_total, redis_held) = balance
                .of(&credit_type)
                .map(|t| (t.book_available + t.held, t.held))
                .unwrap_or((0, 0));
            if redis_total != ledger_total || redis_held != ledger_held {
                report.drifts.push(Drift {
                    customer: customer.clone(),
                    credit_type,
                    ledger_total,
                    redis_total,
                    ledger_held,
                    redis_held,
                });
            }
        }
    }
    Ok(report)
}

/// What rebuilding one customer did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Rebuilt {
    /// Redis now holds the ledger's state; `voided` holds the ledger had pending were voided.
    Restored {
        /// Live grants written.
        grants: u64,
        /// Holds pending in the ledger and absent from Redis, voided in the ledger.
        voided: u64,
    },
    /// The customer has holds pending in Redis; nothing changed (try again when they are
    /// resolved).
    Busy {
        /// Pending holds in Redis.
        pending_holds: u64,
    },
}

/// Rebuilds one customer's Redis state from the ledger.
///
/// Holds the ledger has as pending but Redis no longer has (it lost them) are voided first,
/// in the ledger: their gateways' settles will find no hold, so those requests go
/// uncharged, and their credits return. Then the customer's live grants, debts and applied
/// grant ids replace whatever Redis holds.
pub async fn rebuild_customer(
    ledger: &dyn Ledger,
    redis: &RedisStore,
    customer: &str,
) -> Result<Rebuilt, ReconcileError> {
    let keyspace: &Keyspace = redis.keyspace();
    let pending = ledger
        .entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![EntryKind::HoldPlaced],
            pending_holds_only: true,
            ..EntryQuery::default()
        })
        .await?;
    let mut voids = Vec::new();
    for entry in &pending {
        let Some(Ok(event)) = entry.event() else {
            continue;
        };
        let EventBody::HoldPlaced {
            hold_id,
            amount,
            draws,
            overdraft,
            context,
            ..
        } = &event.body
        else {
            continue;
        };
        let hold = redis
            .hold(&creditgate_protocol::HoldRef {
                customer: customer.to_string(),
                hold_id: hold_id.clone(),
            })
            .await?;
        if hold.is_some() {
            // Still in Redis: restore will refuse; nothing to void.
            continue;
        }
        voids.push(void_event(
            customer,
            &event.credit_type,
            hold_id,
            *amount,
            draws,
            *overdraft,
            context,
        ));
    }
    // The fold tells which grants expired meanwhile: what would return to them is breakage.
    let before = ledger.balance_at(customer, u64::MAX >> 12).await?;
    let expired: std::collections::HashSet<&str> = before
        .grants
        .iter()
        .filter(|g| g.is_expired)
        .map(|g| g.grant_id.as_str())
        .collect();
    let entries: Vec<NewEntry> = voids
        .into_iter()
        .map(|mut event| {
            if let EventBody::HoldVoided(r) = &mut event.body {
                let (breakage, returned): (Vec<_>, Vec<_>) = r
                    .returned
                    .drain(..)
                    .partition(|d| expired.contains(d.grant_id.as_str()));
                r.returned = returned;
                r.breakage = breakage;
            }
            NewEntry::from_event(&event, keyspace.shard_of(customer).0, None)
        })
        .collect::<Result<_, _>>()?;
    let voided = entries.len() as u64;
    if !entries.is_empty() {
        ledger.append_batch(&entries).await?;
        warn!(
            customer,
            voided, "voided holds Redis lost; those requests go uncharged"
        );
    }

    let balance = ledger.balance_at(customer, u64::MAX >> 12).await?;
    let added = ledger
        .entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![EntryKind::GrantAdded],
            ..EntryQuery::default()
        })
        .await?;
    let mut meta: HashMap<String, (u32, Option<u64>, u64, u64)> = HashMap::new();
    let mut applied = Vec::new();
    for entry in &added {
        if let Some(Ok(Event {
            at_ms,
            credit_type,
            body:
                EventBody::GrantAdded {
                    grant_id,
                    amount,
                    priority,
                    expires_at_ms,
                    cost_basis,
                    ..
                },
            ..
        })) = entry.event()
        {
            meta.insert(
                grant_id.clone(),
                (priority, expires_at_ms, cost_basis, at_ms),
            );
            applied.push((grant_id, credit_type, amount));
        }
    }
    let grants = balance
        .grants
        .iter()
        .filter(|g| !g.is_expired && g.remaining > 0)
        .filter_map(|g| {
            let (priority, expires_at_ms, cost_basis, created_ms) = *meta.get(&g.grant_id)?;
            Some(RestoredGrant {
                grant_id: g.grant_id.clone(),
                credit_type: g.credit_type.clone(),
                remaining: (g.remaining + g.held) as u64,
                priority,
                expires_at_ms,
                cost_basis,
                created_ms,
            })
        })
        .collect();
    let debts = balance
        .types
        .iter()
        .filter(|t| t.debt > 0)
        .map(|t| (t.credit_type.clone(), t.debt as u64))
        .collect();
    let state = RestoreState {
        customer: customer.to_string(),
        grants,
        debts,
        applied,
    };
    Ok(match redis.restore(&state).await? {
        RestoreOutcome::Restored { grants, .. } => {
            info!(
                customer,
                grants, voided, "rebuilt the customer's Redis state from the ledger"
            );
            Rebuilt::Restored { grants, voided }
        }
        RestoreOutcome::Busy { pending_holds, .. } => Rebuilt::Busy { pending_holds },
    })
}

fn void_event(
    customer: &str,
    credit_type: &str,
    hold_id: &str,
    amount: u64,
    draws: &[creditgate_protocol::Draw],
    overdraft: u64,
    context: &RequestContext,
) -> Event {
    Event {
        event_id: format!("hold:{hold_id}:voided"),
        at_ms: now_ms(),
        customer: customer.to_string(),
        credit_type: credit_type.to_string(),
        body: EventBody::HoldVoided(Release {
            hold_id: hold_id.to_string(),
            held: amount,
            returned: draws.to_vec(),
            returned_overdraft: overdraft,
            breakage: Vec::new(),
            context: context.clone(),
        }),
    }
}

/// Rebuilds every customer of one shard the ledger knows (the shard lost its data).
pub async fn rebuild_shard(
    ledger: &dyn Ledger,
    redis: &RedisStore,
    shard: creditgate_protocol::Shard,
) -> Result<Vec<(String, Rebuilt)>, ReconcileError> {
    let mut done = Vec::new();
    for customer in ledger.customers().await? {
        if redis.keyspace().shard_of(&customer) == shard {
            let rebuilt = rebuild_customer(ledger, redis, &customer).await?;
            done.push((customer, rebuilt));
        }
    }
    Ok(done)
}

/// Checks every shard's generation marker against the one the ledger recorded.
///
/// - No marker recorded in the ledger: the shard was never initialised (first start): set
///   one in Redis (keeping one another sidecar set) and record it.
/// - Redis has the recorded marker: it kept its data.
/// - Redis has no marker or another one: Redis lost the shard's data (restart without
///   persistence, failover to an empty replica, `FLUSHALL`): rebuild every customer of the
///   shard from the ledger, then set and record a new marker. A customer with holds pending
///   in Redis cannot be rebuilt yet; the marker then stays unset and the next check retries.
///
/// Returns the shards rebuilt. Callers drain the streams into the ledger first.
pub async fn check_generations(
    ledger: &dyn Ledger,
    redis: &RedisStore,
    generation: &str,
) -> Result<Vec<creditgate_protocol::Shard>, ReconcileError> {
    let mut rebuilt = Vec::new();
    for shard in redis.keyspace().all_shards() {
        let recorded = ledger.redis_generation(shard.0).await?;
        let current = redis.generation(shard).await?;
        match (&recorded, &current) {
            (Some(r), Some(c)) if r == c => continue,
            (None, Some(c)) => {
                ledger.set_redis_generation(shard.0, c).await?;
                continue;
            }
            (None, None) => {
                redis.init_generation(shard, generation).await?;
                if let Some(c) = redis.generation(shard).await? {
                    ledger.set_redis_generation(shard.0, &c).await?;
                }
                continue;
            }
            _ => {}
        }
        warn!(shard = %shard, recorded = ?recorded, found = ?current,
            "generation marker lost: Redis lost this shard's data; rebuilding from the ledger");
        let results = rebuild_shard(ledger, redis, shard).await?;
        if results
            .iter()
            .any(|(_, r)| matches!(r, Rebuilt::Busy { .. }))
        {
            warn!(shard = %shard, "some customers have holds pending in Redis; their rebuild waits for the next check");
            continue;
        }
        redis.init_generation(shard, generation).await?;
        if let Some(c) = redis.generation(shard).await? {
            ledger.set_redis_generation(shard.0, &c).await?;
        }
        rebuilt.push(shard);
    }
    Ok(rebuilt)
}
