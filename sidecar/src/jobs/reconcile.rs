//! The reconciler: compares each customer's Redis balance with what the ledger says, and
//! rebuilds a customer's Redis state from the ledger when asked or when Redis lost its data.
//!
//! Redis `book_available + held` must equal the ledger's total (granted − posted − expired
//! − breakage) for every customer and credit type, and Redis `held` the ledger's held.
//! Events still in the streams make Redis run ahead of the ledger for a moment, so callers
//! drain the writer first and treat drift seen once under traffic as provisional.
//!
//! The store is reached through the protocol's [`CreditStore`] trait; the two operations
//! only Redis has (writing a customer's rebuilt state, the shards' generation markers) sit
//! behind the narrow [`RebuildStore`] seam, so the reconciler runs on the reference model
//! in tests. It never reads the streams: callers drain the writer first.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use creditgate_protocol::meter::{MeterError, MeterOutcome, force_reserve_then_settle};
use creditgate_protocol::{
    CreditStore, Event, EventBody, HoldRef, Keyspace, RedisStore, Release, RequestContext,
    RestoreOutcome, RestoreState, RestoredGrant, Shard, StoreError,
};
use tracing::{info, warn};

use crate::jobs::usage_burns::burn_request;
use crate::ledger::{
    ENTRY_PAGE, EntryKind, EntryQuery, Ledger, LedgerEntries, LedgerError, NewEntry, now_ms,
};

/// A time after every entry, for folding a customer's whole history (kept well inside the
/// range every backend stores as a signed 64-bit number).
const FOLD_EVERYTHING_MS: u64 = u64::MAX >> 12;

/// How many times a rebuild offers its restore while the ledger lags Redis (the fence
/// refuses): a healthy writer records a shard's in-flight events within a few batches, so
/// five tries 200 ms apart cover it; past that the caller retries on its next pass.
pub const RESTORE_ATTEMPTS: u32 = 5;

/// How long a rebuild waits between two fenced restore attempts, in milliseconds.
pub const RESTORE_RETRY_MS: u64 = 200;

/// How long `reconcile --repair` waits between its two looks, in milliseconds: long
/// enough for the writer to record what was in flight at the first look.
pub const REPAIR_CONFIRM_MS: u64 = 2_000;

/// What the reconciler needs of the store beyond the protocol's [`CreditStore`]: the
/// Redis-only operations that rebuild a shard which lost its data. The reference model
/// never loses its data and has neither; tests supply their own.
#[async_trait]
pub trait RebuildStore: CreditStore {
    /// The key schema: which shard a customer lives on, and every shard.
    fn keyspace(&self) -> &Keyspace;
    /// Replaces a customer's state with `state`, unless it has pending holds.
    async fn restore(&self, state: &RestoreState) -> Result<RestoreOutcome, StoreError>;
    /// A shard's generation marker, if set.
    async fn generation(&self, shard: Shard) -> Result<Option<String>, StoreError>;
    /// Sets a shard's generation marker if it is missing; returns whether it was set now.
    async fn init_generation(&self, shard: Shard, generation: &str) -> Result<bool, StoreError>;
    /// The stream id (`<ms>-<seq>`) of the customer's newest event in the store, if any.
    async fn position(&self, customer: &str) -> Result<Option<String>, StoreError>;
    /// The ids of the customer's holds pending in the store.
    async fn pending_hold_ids(&self, customer: &str) -> Result<Vec<String>, StoreError>;
    /// A shard's event sequence (the sequence part of its newest stream id), if set.
    async fn shard_sequence(&self, shard: Shard) -> Result<Option<u64>, StoreError>;
    /// Raises a shard's event sequence to at least `seq`.
    async fn raise_sequence(&self, shard: Shard, seq: u64) -> Result<(), StoreError>;
    /// The customers of `shard` the rebuild with `token` has restored.
    async fn rebuilt_customers(&self, shard: Shard, token: &str)
    -> Result<Vec<String>, StoreError>;
    /// Records that the rebuild `token` restored `customer`; `None` clears the record.
    async fn mark_rebuilt(
        &self,
        shard: Shard,
        customer: Option<&str>,
        token: &str,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl RebuildStore for RedisStore {
    fn keyspace(&self) -> &Keyspace {
        RedisStore::keyspace(self)
    }

    async fn restore(&self, state: &RestoreState) -> Result<RestoreOutcome, StoreError> {
        RedisStore::restore(self, state).await
    }

    async fn generation(&self, shard: Shard) -> Result<Option<String>, StoreError> {
        RedisStore::generation(self, shard).await
    }

    async fn init_generation(&self, shard: Shard, generation: &str) -> Result<bool, StoreError> {
        RedisStore::init_generation(self, shard, generation).await
    }

    async fn position(&self, customer: &str) -> Result<Option<String>, StoreError> {
        RedisStore::position(self, customer).await
    }

    async fn pending_hold_ids(&self, customer: &str) -> Result<Vec<String>, StoreError> {
        RedisStore::pending_hold_ids(self, customer).await
    }

    async fn shard_sequence(&self, shard: Shard) -> Result<Option<u64>, StoreError> {
        RedisStore::shard_sequence(self, shard).await
    }

    async fn raise_sequence(&self, shard: Shard, seq: u64) -> Result<(), StoreError> {
        RedisStore::raise_sequence(self, shard, seq).await
    }

    async fn rebuilt_customers(
        &self,
        shard: Shard,
        token: &str,
    ) -> Result<Vec<String>, StoreError> {
        RedisStore::rebuilt_customers(self, shard, token).await
    }

    async fn mark_rebuilt(
        &self,
        shard: Shard,
        customer: Option<&str>,
        token: &str,
    ) -> Result<(), StoreError> {
        RedisStore::mark_rebuilt(self, shard, customer, token).await
    }
}

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
    /// Stream id of the customer's newest event in Redis, once [`with_positions`] looked.
    pub redis_position: Option<String>,
    /// Stream id of the customer's newest event the ledger recorded from its shard, once
    /// [`with_positions`] looked.
    pub ledger_position: Option<String>,
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

/// Compares every customer the ledger knows with the store.
pub async fn compare(
    ledger: &dyn LedgerEntries,
    store: &dyn CreditStore,
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
        let balance = store.balance(&customer).await?;
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
                    redis_position: None,
                    ledger_position: None,
                });
            }
        }
    }
    Ok(report)
}

/// Fills in both stores' positions of each drifted customer, so two looks can tell a
/// standing difference from events in flight.
pub async fn with_positions(
    ledger: &dyn LedgerEntries,
    store: &dyn RebuildStore,
    mut report: ReconcileReport,
) -> Result<ReconcileReport, ReconcileError> {
    for d in &mut report.drifts {
        let shard = store.keyspace().shard_of(&d.customer);
        d.redis_position = store.position(&d.customer).await?;
        d.ledger_position = ledger_position(ledger, &d.customer, shard).await?;
    }
    Ok(report)
}

/// The drifts of `second` that `first` saw too, with the same figures at the same
/// positions in both stores: the only ones a repair acts on. A difference that moved, or
/// whose positions moved between the looks, is events in flight, not drift.
pub fn confirmed_drifts(first: &ReconcileReport, second: &ReconcileReport) -> Vec<Drift> {
    second
        .drifts
        .iter()
        .filter(|d| first.drifts.contains(d))
        .cloned()
        .collect()
}

/// A stream id `<ms>-<seq>` as the pair of integers it orders by.
fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The stream id of the customer's newest event the ledger recorded from `shard`, if any:
/// the fence the restore script compares with the customer's newest event in Redis.
async fn ledger_position(
    ledger: &dyn LedgerEntries,
    customer: &str,
    shard: Shard,
) -> Result<Option<String>, ReconcileError> {
    let mut query = EntryQuery {
        customer: Some(customer.to_string()),
        seq_order: true,
        limit: Some(ENTRY_PAGE),
        ..EntryQuery::default()
    };
    let mut newest: Option<((u64, u64), String)> = None;
    // Page by page: a customer's history does not fit in memory.
    loop {
        let page = ledger.entries(&query).await?;
        for id in page
            .iter()
            .filter(|e| e.entry.shard == shard.0)
            .filter_map(|e| e.entry.stream_id.as_deref())
        {
            if let Some(key) = parse_stream_id(id)
                && newest.as_ref().is_none_or(|(k, _)| key > *k)
            {
                newest = Some((key, id.to_string()));
            }
        }
        match page.last() {
            Some(last) if page.len() as u64 == ENTRY_PAGE => {
                query.after = Some((last.entry.event_at_ms, last.seq));
            }
            _ => return Ok(newest.map(|(_, id)| id)),
        }
    }
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
    /// Redis still had an event of the customer the ledger had not recorded after every
    /// attempt (the fence); nothing changed (try again once the writer caught up).
    Behind {
        /// Stream id of the customer's newest event in Redis.
        redis_position: String,
        /// Stream id of the customer's newest event in the ledger.
        ledger_position: Option<String>,
    },
}

/// Rebuilds one customer's Redis state from the ledger.
///
/// Holds the ledger has as pending but Redis no longer has (it lost them) are voided first,
/// in the ledger: their gateways' settles will find no hold, so those requests go
/// uncharged, and their credits return. Then the customer's live grants, debts and applied
/// grant ids replace whatever Redis holds.
///
/// Fenced: the restore is refused while Redis has an event of the customer newer than
/// the newest the ledger recorded (a burn the writer has not written would be handed
/// back). The rebuild then waits for the writer and tries again, [`RESTORE_ATTEMPTS`]
/// times, reading the ledger afresh each time.
pub async fn rebuild_customer(
    ledger: &dyn LedgerEntries,
    store: &dyn RebuildStore,
    customer: &str,
) -> Result<Rebuilt, ReconcileError> {
    let lost = holds_the_store_lost(ledger, store, customer).await?;
    let shard = store.keyspace().shard_of(customer);
    let voided = void_in_ledger(ledger, shard, customer, lost).await?;
    let mut attempt = 1;
    loop {
        let mut state = restore_state(ledger, customer, shard).await?;
        state.resolved_holds = resolved_in_ledger(ledger, store, customer).await?;
        match store.restore(&state).await? {
            RestoreOutcome::Restored { grants, .. } => {
                info!(
                    customer,
                    grants, voided, "rebuilt the customer's Redis state from the ledger"
                );
                return Ok(Rebuilt::Restored { grants, voided });
            }
            RestoreOutcome::Busy { pending_holds, .. } => {
                return Ok(Rebuilt::Busy { pending_holds });
            }
            RestoreOutcome::Behind { redis_position, .. } if attempt >= RESTORE_ATTEMPTS => {
                warn!(customer, redis_position, ledger_position = ?state.ledger_position,
                    "not rebuilt: the ledger has not recorded the customer's newest event yet");
                return Ok(Rebuilt::Behind {
                    redis_position,
                    ledger_position: state.ledger_position,
                });
            }
            RestoreOutcome::Behind { .. } => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(RESTORE_RETRY_MS)).await;
            }
        }
    }
}

/// The holds pending in the store that the ledger has resolved (the store came back from
/// before their resolution), with how the ledger resolved them: restore closes them so they
/// are never resolved a second time.
async fn resolved_in_ledger(
    ledger: &dyn LedgerEntries,
    store: &dyn RebuildStore,
    customer: &str,
) -> Result<Vec<(String, String, u64)>, ReconcileError> {
    let pending: HashSet<String> = store
        .pending_hold_ids(customer)
        .await?
        .into_iter()
        .collect();
    // Each pending hold's few entries, through the (hold_id, customer) index: never the
    // customer's whole history of resolutions.
    let mut resolutions = Vec::new();
    for hold_id in &pending {
        resolutions.extend(
            ledger
                .entries(&EntryQuery {
                    customer: Some(customer.to_string()),
                    hold_id: Some(hold_id.clone()),
                    kinds: vec![
                        EntryKind::HoldPosted,
                        EntryKind::HoldVoided,
                        EntryKind::HoldExpired,
                    ],
                    ..EntryQuery::default()
                })
                .await?,
        );
    }
    let mut resolved = Vec::new();
    for entry in &resolutions {
        let Some(Ok(event)) = entry.event() else {
            continue;
        };
        let (hold_id, state, posted) = match &event.body {
            EventBody::HoldPosted {
                hold_id, posted, ..
            } => (hold_id, "posted", *posted),
            EventBody::HoldVoided(r) => (&r.hold_id, "voided", 0),
            EventBody::HoldExpired(r) => (&r.hold_id, "expired", 0),
            _ => continue,
        };
        if pending.contains(hold_id) {
            resolved.push((hold_id.clone(), state.to_string(), posted));
        }
    }
    Ok(resolved)
}

/// Delivers again the grants the outbox marked applied whose `grant_added` the ledger
/// never recorded: Redis lost them with the event, before the writer saw it (a shard that
/// lost its data or came back behind the ledger). The grant script skips any Redis still
/// has.
async fn reapply_lost_grants(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    customer: &str,
) -> Result<u64, ReconcileError> {
    let added = ledger
        .entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![EntryKind::GrantAdded],
            ..EntryQuery::default()
        })
        .await?;
    let recorded: HashSet<&str> = added
        .iter()
        .filter_map(|e| e.entry.grant_id.as_deref())
        .collect();
    let mut reapplied = 0;
    for grant in ledger.grants_of(customer).await? {
        if recorded.contains(grant.grant_id.as_str()) {
            continue;
        }
        let delivered = ledger
            .outbox_state(&grant.grant_id)
            .await?
            .is_some_and(|s| s.applied_at_ms.is_some());
        if delivered {
            store.grant(&grant.to_request()).await?;
            reapplied += 1;
        }
    }
    if reapplied > 0 {
        warn!(
            customer,
            reapplied, "re-applied grants the outbox delivered and Redis lost"
        );
    }
    Ok(reapplied)
}

/// Rebuilds `customer` from the ledger as a shard that lost its data is rebuilt: the fenced
/// restore ([`rebuild_customer`]), then, once restored, the grants the outbox delivered and
/// Redis lost are applied again and the usage events whose burn Redis lost are burned again.
pub async fn rebuild_and_recover(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    customer: &str,
) -> Result<Rebuilt, ReconcileError> {
    let rebuilt = rebuild_customer(ledger, store, customer).await?;
    if matches!(rebuilt, Rebuilt::Restored { .. }) {
        reapply_lost_grants(ledger, store, customer).await?;
        reburn_lost_usage_events(ledger, store, customer).await?;
    }
    Ok(rebuilt)
}

/// How many recorded usage events one read of [`reburn_lost_usage_events`] takes.
pub const REBURN_PAGE: u32 = 500;

/// Burns again the customer's usage events the ledger accepted (their `usage_events` row)
/// but whose burn it never recorded: Redis lost the burn (`FLUSHALL`, a lagging replica
/// promoted) before the writer read it, or the burn failed and the product stopped
/// retrying. Without this the product, answered `burned`, never sends the event again and
/// the customer gets the work free. Returns how many were burned now.
///
/// Runs after the customer's restore, page by page. Each event goes through the same
/// forced reserve-then-settle under its own hold id as `POST /v1/usage-events`, so it
/// burns once: a hold Redis still has (burned by an earlier pass that died before the
/// shard was marked done, or by the product's retry) answers duplicate, and a burn the
/// ledger has recorded is not selected again.
pub async fn reburn_lost_usage_events(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    customer: &str,
) -> Result<u64, ReconcileError> {
    let mut after = String::new();
    let mut burned = 0;
    loop {
        let page = ledger
            .unburned_usage_events(customer, &after, REBURN_PAGE)
            .await?;
        for record in &page {
            // The overdraft limit only labels the answer: the reserve is forced.
            match force_reserve_then_settle(store, &burn_request(record, 0)).await {
                Ok(MeterOutcome::Posted { .. }) => burned += 1,
                Ok(other) => info!(customer, key = %record.idempotency_key, ?other,
                    "usage event not burned again: Redis has its hold"),
                Err(MeterError::Store(e)) => return Err(e.into()),
                Err(e) => warn!(customer, key = %record.idempotency_key, error = %e,
                    "usage event not burned again; the next rebuild retries it"),
            }
        }
        match page.last() {
            Some(last) if page.len() as u32 == REBURN_PAGE => after = last.idempotency_key.clone(),
            _ => break,
        }
    }
    if burned > 0 {
        warn!(
            customer,
            burned, "burned again usage events whose burn Redis lost before the ledger recorded it"
        );
    }
    Ok(burned)
}

/// The void events of the holds the ledger has as pending for `customer` and the store no
/// longer has. A hold the store still has is left alone (restore refuses while it is
/// pending).
async fn holds_the_store_lost(
    ledger: &dyn LedgerEntries,
    store: &dyn CreditStore,
    customer: &str,
) -> Result<Vec<Event>, ReconcileError> {
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
        let hold = HoldRef {
            customer: customer.to_string(),
            hold_id: hold_id.clone(),
        };
        let live = store.hold(&hold).await?;
        if live.is_some_and(|h| same_placement(&event.event_id, h.created_ms)) {
            // Still in the store: restore will refuse; nothing to void.
            continue;
        }
        let mut void = void_event(
            customer,
            &event.credit_type,
            hold_id,
            *amount,
            draws,
            *overdraft,
            context,
        );
        // The void belongs to this placement (its nonce), not to the bare hold id.
        if let Some(id) = creditgate_protocol::hold_sibling_event_id(&event.event_id, "voided") {
            void.event_id = id;
        }
        voids.push(void);
    }
    Ok(voids)
}

/// Appends the `voids` to the ledger; what they would return to a grant that expired
/// meanwhile is breakage. Returns how many were appended.
async fn void_in_ledger(
    ledger: &dyn LedgerEntries,
    shard: Shard,
    customer: &str,
    voids: Vec<Event>,
) -> Result<u64, ReconcileError> {
    if voids.is_empty() {
        return Ok(0);
    }
    // The fold tells which grants expired meanwhile.
    let before = ledger.balance_at(customer, FOLD_EVERYTHING_MS).await?;
    let expired: HashSet<&str> = before
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
            NewEntry::from_event(&event, shard.0, None)
        })
        .collect::<Result<_, _>>()?;
    ledger.append_batch(&entries).await?;
    let voided = entries.len() as u64;
    warn!(
        customer,
        voided, "voided holds Redis lost; those requests go uncharged"
    );
    Ok(voided)
}

/// What a grant's `grant_added` entry says that the balance fold does not: its priority,
/// expiry, cost basis and creation time.
struct GrantTerms {
    priority: u32,
    expires_at_ms: Option<u64>,
    cost_basis: u64,
    created_ms: u64,
}

/// The customer's state as the ledger has it, for the store's `restore`: live grants with
/// what remains of each, overdraft debts, and every grant ever applied.
async fn restore_state(
    ledger: &dyn LedgerEntries,
    customer: &str,
    shard: Shard,
) -> Result<RestoreState, ReconcileError> {
    // Read before the fold: an event recorded in between is then in the fold and the
    // position only understates what the ledger has, which errs towards refusing.
    let ledger_position = ledger_position(ledger, customer, shard).await?;
    let balance = ledger.balance_at(customer, FOLD_EVERYTHING_MS).await?;
    let added = ledger
        .entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![EntryKind::GrantAdded],
            ..EntryQuery::default()
        })
        .await?;
    let mut terms: HashMap<String, GrantTerms> = HashMap::new();
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
            let created_ms = at_ms;
            terms.insert(
                grant_id.clone(),
                GrantTerms {
                    priority,
                    expires_at_ms,
                    cost_basis,
                    created_ms,
                },
            );
            applied.push((grant_id, credit_type, amount));
        }
    }
    let grants = balance
        .grants
        .iter()
        .filter(|g| !g.is_expired && g.remaining > 0)
        .filter_map(|g| {
            let terms = terms.get(&g.grant_id)?;
            Some(RestoredGrant {
                grant_id: g.grant_id.clone(),
                credit_type: g.credit_type.clone(),
                remaining: (g.remaining + g.held) as u64,
                priority: terms.priority,
                expires_at_ms: terms.expires_at_ms,
                cost_basis: terms.cost_basis,
                created_ms: terms.created_ms,
            })
        })
        .collect();
    let debts = balance
        .types
        .iter()
        .filter(|t| t.debt > 0)
        .map(|t| (t.credit_type.clone(), t.debt as u64))
        .collect();
    Ok(RestoreState {
        customer: customer.to_string(),
        grants,
        debts,
        applied,
        ledger_position,
        resolved_holds: Vec::new(),
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

/// Whether the store's hold, placed at `created_ms`, is the placement of the ledger's
/// `placed_event_id` (`hold:<id>:<nonce>:placed`, the nonce being the placement time): a
/// hold id placed again after Redis lost the first placement is another hold. A placement
/// without a nonce (placed before nonces existed) is taken to be the store's hold.
fn same_placement(placed_event_id: &str, created_ms: u64) -> bool {
    let nonce = creditgate_protocol::hold_placement_of(placed_event_id)
        .and_then(|p| p.rsplit(':').next())
        .and_then(|n| n.parse::<u64>().ok());
    // `hold:<id>` (no nonce) ends in the hold id, which may be all digits: count the parts.
    let has_nonce = placed_event_id.split(':').count() == 4;
    !has_nonce || nonce == Some(created_ms)
}

/// How many of a shard's newest ledger entries the rollback check reads for the ledger's
/// newest position: the writer records a shard's events in stream order, so the newest
/// position is among the last batches it wrote (4 of `BATCH_MAX`).
pub const POSITION_SCAN_MAX: u32 = 1_024;

/// Rebuilds every customer of one shard the ledger knows (the shard lost its data or came
/// back behind the ledger). Customers the rebuild `token` restored on an earlier pass are
/// skipped, so a busy shard's rebuild does not start over every pass; once every customer
/// is restored the shard's event sequence is raised to the ledger's and the progress record
/// cleared. Returns whether the rebuild is complete.
pub async fn rebuild_shard(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    shard: Shard,
    token: &str,
) -> Result<bool, ReconcileError> {
    let done: HashSet<String> = store
        .rebuilt_customers(shard, token)
        .await?
        .into_iter()
        .collect();
    let mut complete = true;
    for customer in ledger.customers().await? {
        if store.keyspace().shard_of(&customer) != shard || done.contains(&customer) {
            continue;
        }
        match rebuild_and_recover(ledger, store, &customer).await? {
            Rebuilt::Restored { .. } => {
                store.mark_rebuilt(shard, Some(&customer), token).await?;
            }
            waiting => {
                complete = false;
                warn!(shard = %shard, customer, ?waiting, "customer not rebuilt yet; retried on the next check");
            }
        }
    }
    if complete {
        if let Some(seq) = ledger_sequence(ledger, shard).await? {
            store.raise_sequence(shard, seq).await?;
        }
        store.mark_rebuilt(shard, None, token).await?;
    }
    Ok(complete)
}

/// The ledger's newest position in a shard's event sequence: the highest sequence part of
/// the stream ids it recorded last; `None` when it recorded none.
async fn ledger_sequence(ledger: &dyn Ledger, shard: Shard) -> Result<Option<u64>, ReconcileError> {
    Ok(ledger
        .shard_stream_ids(shard.0, POSITION_SCAN_MAX)
        .await?
        .iter()
        .filter_map(|id| parse_stream_id(id))
        .map(|(_, seq)| seq)
        .max())
}

/// Whether Redis came back behind the ledger on a shard that kept its generation marker
/// (a lagging replica promoted, a crash losing the last second of AOF): its event sequence
/// is below the highest one the ledger recorded. A shard with no sequence yet (the first
/// check after an upgrade) gets the ledger's.
async fn rolled_back(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    shard: Shard,
) -> Result<bool, ReconcileError> {
    let Some(ledger_seq) = ledger_sequence(ledger, shard).await? else {
        return Ok(false);
    };
    match store.shard_sequence(shard).await? {
        None => {
            store.raise_sequence(shard, ledger_seq).await?;
            Ok(false)
        }
        Some(redis_seq) if redis_seq < ledger_seq => {
            warn!(shard = %shard, redis_seq, ledger_seq,
                "Redis is behind the ledger (rolled back); rebuilding the shard from the ledger");
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// What the ledger records as a shard's generation while the rebuild after a rollback is
/// not complete, followed by Redis's marker: it differs from the marker, so every check
/// goes on rebuilding the shard (as after a lost marker) until it is done, and then records
/// the marker again.
pub const ROLLBACK_REBUILD_PREFIX: &str = "rollback-rebuild:";

/// Checks every shard's generation marker against the one the ledger recorded, and its
/// event sequence against the ledger's.
///
/// - No marker recorded in the ledger: the shard was never initialised (first start): set
///   one in Redis (keeping one another sidecar set) and record it.
/// - Redis has the recorded marker and a sequence at or past the ledger's: it kept its
///   data. A sequence behind the ledger's (Redis rolled back): rebuild every customer of
///   the shard from the ledger (holds the ledger resolved are closed, not resolved again;
///   grants the outbox delivered are re-applied, usage events burned again), recording
///   [`ROLLBACK_REBUILD_PREFIX`] in the ledger until every customer is done.
/// - Redis has no marker or another one: Redis lost the shard's data (restart without
///   persistence, failover to an empty replica, `FLUSHALL`): rebuild every customer of the
///   shard from the ledger, then set and record a new marker. A customer with holds pending
///   in Redis, or events the ledger has not recorded yet, cannot be rebuilt yet; the marker
///   then stays unset and the next check retries the customers not done.
///
/// Returns the shards rebuilt. Callers let the writer catch up with the streams first.
pub async fn check_generations(
    ledger: &dyn Ledger,
    store: &dyn RebuildStore,
    generation: &str,
) -> Result<Vec<Shard>, ReconcileError> {
    let mut rebuilt = Vec::new();
    for shard in store.keyspace().all_shards() {
        let recorded = ledger.redis_generation(shard.0).await?;
        let current = store.generation(shard).await?;
        match (&recorded, &current) {
            (Some(r), Some(c)) if r == c => {
                if !rolled_back(ledger, store, shard).await? {
                    continue;
                }
                // Remembered in the ledger until the rebuild is complete: new events soon
                // take the shard's sequence past the ledger's, and the next check would no
                // longer see the rollback of a shard whose customers were busy this time.
                let pending = format!("{ROLLBACK_REBUILD_PREFIX}{c}");
                ledger.set_redis_generation(shard.0, &pending).await?;
            }
            (None, Some(c)) => {
                ledger.set_redis_generation(shard.0, c).await?;
                continue;
            }
            (None, None) => {
                store.init_generation(shard, generation).await?;
                if let Some(c) = store.generation(shard).await? {
                    ledger.set_redis_generation(shard.0, &c).await?;
                }
                continue;
            }
            _ => {}
        }
        warn!(shard = %shard, recorded = ?recorded, found = ?current,
            "rebuilding the shard from the ledger: Redis lost its data (marker lost) or came \
             back behind the ledger (a rollback rebuild not finished yet)");
        if !rebuild_shard(ledger, store, shard, generation).await? {
            continue;
        }
        store.init_generation(shard, generation).await?;
        if let Some(c) = store.generation(shard).await? {
            ledger.set_redis_generation(shard.0, &c).await?;
        }
        rebuilt.push(shard);
    }
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use creditgate_protocol::{
        Balance, DueEntry, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome,
        GrantRef, GrantRequest, HoldRecord, IdempotencyClaim, KeyedReserveOutcome, MemoryStore,
        ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
    };

    use super::*;
    use crate::jobs::fixtures::{
        CREDITS, grant, keyspace, record_model_events, reserve, settle, temp_ledger,
    };

    #[test]
    fn a_hold_placed_again_is_not_the_ledgers_placement() {
        assert!(same_placement("hold:h1:1700:placed", 1700));
        assert!(!same_placement("hold:h1:1700:placed", 1800));
        // Placed before nonces: the store's hold is taken to be it.
        assert!(same_placement("hold:h1:placed", 1800));
        assert!(same_placement("hold:42:placed", 1800));
    }

    /// The reference model standing in for Redis, with the Redis-only operations recorded:
    /// `restore` keeps the state it was given (refusing, as the script does, while the
    /// customer has credits held) and the generation markers live in a map.
    struct ModelRedis {
        model: MemoryStore,
        keyspace: Keyspace,
        restored: Mutex<Vec<RestoreState>>,
        generations: Mutex<HashMap<u32, String>>,
        raised: Mutex<HashMap<u32, u64>>,
        rebuilt: Mutex<HashMap<(u32, String), String>>,
        /// Customers whose restore answers busy whatever they hold (a gateway's holds
        /// the test does not model).
        busy: Mutex<HashSet<String>>,
    }

    impl ModelRedis {
        fn new(model: MemoryStore) -> Self {
            Self {
                model,
                keyspace: keyspace(),
                restored: Mutex::default(),
                generations: Mutex::default(),
                raised: Mutex::default(),
                rebuilt: Mutex::default(),
                busy: Mutex::default(),
            }
        }

        /// The ids of the customer's pending holds in the model.
        async fn pending_of(&self, customer: &str) -> Vec<String> {
            let shard = self.keyspace.shard_of(customer);
            let due = self.model.due_holds(shard, FOLD_EVERYTHING_MS, 10_000);
            due.await
                .expect("due holds")
                .into_iter()
                .filter(|d| d.customer == customer)
                .map(|d| d.id)
                .collect()
        }

        fn restored(&self) -> Vec<RestoreState> {
            self.restored.lock().expect("lock").clone()
        }

        /// The customer's newest event as the stream id the fixtures give it.
        fn position_of(&self, customer: &str) -> Option<String> {
            let shard = self.keyspace.shard_of(customer);
            let events = self.model.events(shard);
            let newest = events.iter().rposition(|e| e.customer == customer)?;
            Some(model_stream_id(newest))
        }
    }

    /// The stream id the fixtures give the `index`-th event of a shard's stream: its
    /// sequence part counts the shard's events, as the scripts' ids do.
    fn model_stream_id(index: usize) -> String {
        format!("1-{}", index + 1)
    }

    /// Appends the events of `store` to `ledger` as the writer would, with their stream
    /// ids, leaving out the newest `lag` events of each shard (not written yet).
    async fn record_with_positions(ledger: &dyn Ledger, store: &MemoryStore, lag: usize) {
        let mut entries = Vec::new();
        for shard in keyspace().all_shards() {
            let events = store.events(shard);
            let written = events.len().saturating_sub(lag);
            for (i, event) in events.iter().enumerate().take(written) {
                let id = Some(model_stream_id(i));
                entries.push(NewEntry::from_event(event, shard.0, id).expect("entry"));
            }
        }
        ledger.append_batch(&entries).await.expect("append");
    }

    #[async_trait]
    impl CreditStore for ModelRedis {
        async fn grant(&self, req: &GrantRequest) -> Result<GrantOutcome, StoreError> {
            self.model.grant(req).await
        }
        async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
            self.model.reserve(req).await
        }
        async fn reserve_keyed(
            &self,
            req: &ReserveRequest,
            claim: &IdempotencyClaim,
        ) -> Result<KeyedReserveOutcome, StoreError> {
            self.model.reserve_keyed(req, claim).await
        }
        async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
            self.model.settle(req).await
        }
        async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
            self.model.void(hold).await
        }
        async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, StoreError> {
            self.model.extend(req).await
        }
        async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
            self.model.expire_hold(hold).await
        }
        async fn expire_grant(&self, g: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
            self.model.expire_grant(g).await
        }
        async fn balance(&self, customer: &str) -> Result<Balance, StoreError> {
            self.model.balance(customer).await
        }
        async fn hold(&self, hold: &HoldRef) -> Result<Option<HoldRecord>, StoreError> {
            self.model.hold(hold).await
        }
        async fn due_holds(
            &self,
            shard: Shard,
            now_ms: u64,
            limit: usize,
        ) -> Result<Vec<DueEntry>, StoreError> {
            self.model.due_holds(shard, now_ms, limit).await
        }
        async fn due_grants(
            &self,
            shard: Shard,
            now_ms: u64,
            limit: usize,
        ) -> Result<Vec<DueEntry>, StoreError> {
            self.model.due_grants(shard, now_ms, limit).await
        }
    }

    #[async_trait]
    impl RebuildStore for ModelRedis {
        fn keyspace(&self) -> &Keyspace {
            &self.keyspace
        }

        async fn restore(&self, state: &RestoreState) -> Result<RestoreOutcome, StoreError> {
            if self.busy.lock().expect("lock").contains(&state.customer) {
                return Ok(RestoreOutcome::Busy {
                    at_ms: 0,
                    pending_holds: 1,
                });
            }
            // The script's busy check: pending holds the ledger has not resolved.
            let closing: Vec<&String> = state.resolved_holds.iter().map(|(id, _, _)| id).collect();
            let pending = self.pending_of(&state.customer).await;
            let held = pending.iter().filter(|h| !closing.contains(h)).count() as u64;
            if held > 0 {
                return Ok(RestoreOutcome::Busy {
                    at_ms: 0,
                    pending_holds: held,
                });
            }
            // The script's fence.
            let ledger_at = state.ledger_position.as_deref().and_then(parse_stream_id);
            if let Some(newest) = self.position_of(&state.customer)
                && parse_stream_id(&newest) > ledger_at
            {
                return Ok(RestoreOutcome::Behind {
                    at_ms: 0,
                    redis_position: newest,
                });
            }
            self.restored.lock().expect("lock").push(state.clone());
            Ok(RestoreOutcome::Restored {
                at_ms: 0,
                grants: state.grants.len() as u64,
            })
        }

        async fn generation(&self, shard: Shard) -> Result<Option<String>, StoreError> {
            Ok(self
                .generations
                .lock()
                .expect("lock")
                .get(&shard.0)
                .cloned())
        }

        async fn init_generation(
            &self,
            shard: Shard,
            generation: &str,
        ) -> Result<bool, StoreError> {
            let mut markers = self.generations.lock().expect("lock");
            if markers.contains_key(&shard.0) {
                return Ok(false);
            }
            markers.insert(shard.0, generation.to_string());
            Ok(true)
        }

        async fn position(&self, customer: &str) -> Result<Option<String>, StoreError> {
            Ok(self.position_of(customer))
        }

        async fn pending_hold_ids(&self, customer: &str) -> Result<Vec<String>, StoreError> {
            Ok(self.pending_of(customer).await)
        }

        async fn shard_sequence(&self, shard: Shard) -> Result<Option<u64>, StoreError> {
            let events = self.model.events(shard).len() as u64;
            let raised = self.raised.lock().expect("lock").get(&shard.0).copied();
            Ok(match raised {
                Some(r) => Some(r.max(events)),
                None => (events > 0).then_some(events),
            })
        }

        async fn raise_sequence(&self, shard: Shard, seq: u64) -> Result<(), StoreError> {
            let mut raised = self.raised.lock().expect("lock");
            let r = raised.entry(shard.0).or_default();
            *r = (*r).max(seq);
            Ok(())
        }

        async fn rebuilt_customers(
            &self,
            shard: Shard,
            token: &str,
        ) -> Result<Vec<String>, StoreError> {
            let rebuilt = self.rebuilt.lock().expect("lock");
            Ok(rebuilt
                .iter()
                .filter(|((s, _), t)| *s == shard.0 && *t == token)
                .map(|((_, c), _)| c.clone())
                .collect())
        }

        async fn mark_rebuilt(
            &self,
            shard: Shard,
            customer: Option<&str>,
            token: &str,
        ) -> Result<(), StoreError> {
            let mut rebuilt = self.rebuilt.lock().expect("lock");
            match customer {
                Some(c) => {
                    rebuilt.insert((shard.0, c.to_string()), token.to_string());
                }
                None => rebuilt.retain(|(s, _), _| *s != shard.0),
            }
            Ok(())
        }
    }

    /// acme: 100 granted (g1), hold h1 of 30 posted at 20, hold h2 of 10 still pending.
    async fn acme_history() -> MemoryStore {
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        reserve(&store, "acme", "h1", 30).await;
        settle(&store, "acme", "h1", 20).await;
        reserve(&store, "acme", "h2", 10).await;
        store
    }

    #[tokio::test]
    async fn compare_finds_a_store_that_lost_its_data() {
        let t = temp_ledger().await;
        let before = acme_history().await;
        record_model_events(t.ledger.as_ref(), &before, &keyspace()).await;

        let same = compare(t.ledger.as_ref(), &before).await.expect("compare");
        assert_eq!((same.compared, same.drifts.len()), (1, 0), "{same:?}");

        let empty = MemoryStore::new(keyspace());
        let lost = compare(t.ledger.as_ref(), &empty).await.expect("compare");
        assert_eq!(
            lost.drifts,
            vec![Drift {
                customer: "acme".into(),
                credit_type: CREDITS.into(),
                ledger_total: 80,
                redis_total: 0,
                ledger_held: 10,
                redis_held: 0,
                redis_position: None,
                ledger_position: None,
            }]
        );
    }

    #[tokio::test]
    async fn a_rebuild_voids_the_holds_the_store_lost_and_restores_the_rest() {
        let t = temp_ledger().await;
        record_model_events(t.ledger.as_ref(), &acme_history().await, &keyspace()).await;
        let lost = ModelRedis::new(MemoryStore::new(keyspace()));

        let rebuilt = rebuild_customer(t.ledger.as_ref(), &lost, "acme")
            .await
            .expect("rebuild");

        assert_eq!(
            rebuilt,
            Rebuilt::Restored {
                grants: 1,
                voided: 1
            }
        );
        let [state] = lost.restored().try_into().expect("one restore");
        assert_eq!(state.customer, "acme");
        assert_eq!(state.debts, Vec::new());
        assert_eq!(state.applied, vec![("g1".into(), CREDITS.into(), 100)]);
        let [g1] = state.grants.try_into().expect("one live grant");
        assert_eq!((g1.grant_id.as_str(), g1.remaining), ("g1", 80));
        // The lost hold is voided in the ledger: nothing is held any more.
        let balance = t
            .ledger
            .balance_at("acme", FOLD_EVERYTHING_MS)
            .await
            .expect("balance");
        let credits = balance.of(CREDITS).expect("credits");
        assert_eq!((credits.total, credits.held), (80, 0));
    }

    #[tokio::test]
    async fn a_customer_with_a_hold_the_store_still_has_waits() {
        let t = temp_ledger().await;
        let before = acme_history().await;
        record_model_events(t.ledger.as_ref(), &before, &keyspace()).await;
        let kept = ModelRedis::new(before);

        let rebuilt = rebuild_customer(t.ledger.as_ref(), &kept, "acme")
            .await
            .expect("rebuild");

        assert_eq!(rebuilt, Rebuilt::Busy { pending_holds: 1 });
        assert!(kept.restored().is_empty());
        let balance = t
            .ledger
            .balance_at("acme", FOLD_EVERYTHING_MS)
            .await
            .expect("balance");
        assert_eq!(balance.of(CREDITS).expect("credits").held, 10);
    }

    #[tokio::test]
    async fn a_lost_generation_marker_rebuilds_the_shard() {
        let t = temp_ledger().await;
        let before = acme_history().await;
        settle(&before, "acme", "h2", 10).await;
        record_model_events(t.ledger.as_ref(), &before, &keyspace()).await;
        let first = ModelRedis::new(before);
        let shards = keyspace().all_shards().count();

        // First start: markers are set and recorded; nothing is rebuilt.
        let rebuilt = check_generations(t.ledger.as_ref(), &first, "gen-1")
            .await
            .expect("check");
        assert!(rebuilt.is_empty(), "{rebuilt:?}");
        assert!(first.restored().is_empty());

        // The store comes back empty, without markers: every shard is rebuilt from the
        // ledger and gets the new marker.
        let lost = ModelRedis::new(MemoryStore::new(keyspace()));
        let rebuilt = check_generations(t.ledger.as_ref(), &lost, "gen-2")
            .await
            .expect("check");
        assert_eq!(rebuilt.len(), shards);
        let [state] = lost.restored().try_into().expect("acme restored");
        assert_eq!(state.grants[0].remaining, 70);
        for shard in keyspace().all_shards() {
            let recorded = t.ledger.redis_generation(shard.0).await.expect("marker");
            assert_eq!(recorded.as_deref(), Some("gen-2"));
        }
    }

    /// acme: 100 granted (g1), hold h1 of 30 placed and posted at 20: nothing pending.
    async fn acme_posted() -> MemoryStore {
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        reserve(&store, "acme", "h1", 30).await;
        settle(&store, "acme", "h1", 20).await;
        store
    }

    #[tokio::test]
    async fn a_restore_while_the_ledger_lags_refuses_until_the_writer_catches_up() {
        let t = temp_ledger().await;
        // Redis posted h1's burn; the writer has not recorded that event yet.
        let redis = ModelRedis::new(acme_posted().await);
        record_with_positions(t.ledger.as_ref(), &redis.model, 1).await;

        let refused = rebuild_customer(t.ledger.as_ref(), &redis, "acme")
            .await
            .expect("rebuild");

        // Restoring now would hand the 20 burned back (the ledger still has 30 held).
        assert_eq!(
            refused,
            Rebuilt::Behind {
                redis_position: model_stream_id(2),
                ledger_position: Some(model_stream_id(1)),
            }
        );
        assert!(redis.restored().is_empty());

        // The writer catches up: the restore goes ahead with the burn counted.
        let t = temp_ledger().await;
        record_with_positions(t.ledger.as_ref(), &redis.model, 0).await;
        let rebuilt = rebuild_customer(t.ledger.as_ref(), &redis, "acme")
            .await
            .expect("rebuild");
        assert_eq!(
            rebuilt,
            Rebuilt::Restored {
                grants: 1,
                voided: 0
            }
        );
        let [state] = redis.restored().try_into().expect("one restore");
        assert_eq!(state.ledger_position, Some(model_stream_id(2)));
        assert_eq!(state.grants[0].remaining, 80);
    }

    #[tokio::test]
    async fn repair_ignores_drift_seen_once() {
        let t = temp_ledger().await;
        let redis = ModelRedis::new(acme_posted().await);
        // First look: the posted burn is still in flight, so Redis and the ledger differ.
        record_with_positions(t.ledger.as_ref(), &redis.model, 1).await;
        let look = || async {
            let report = compare(t.ledger.as_ref(), &redis).await.expect("compare");
            with_positions(t.ledger.as_ref(), &redis, report)
                .await
                .expect("positions")
        };
        let first = look().await;
        assert_eq!(first.drifts.len(), 1, "{first:?}");
        let drift = &first.drifts[0];
        assert_eq!(drift.redis_position, Some(model_stream_id(2)));
        assert_eq!(drift.ledger_position, Some(model_stream_id(1)));

        // The same difference at the same positions is confirmed.
        assert_eq!(confirmed_drifts(&first, &look().await), first.drifts);

        // Once the writer recorded the burn, the difference is gone: nothing to repair.
        let last = &redis.model.events(keyspace().shard_of("acme"))[2];
        let entry = NewEntry::from_event(
            last,
            keyspace().shard_of("acme").0,
            Some(model_stream_id(2)),
        )
        .expect("entry");
        t.ledger.append_batch(&[entry]).await.expect("append");
        assert!(confirmed_drifts(&first, &look().await).is_empty());
    }

    /// Records the markers `check_generations` would have set on a first start, so the
    /// store counts as having kept its data.
    async fn markers_kept(ledger: &dyn Ledger, store: &ModelRedis) {
        for shard in keyspace().all_shards() {
            store.init_generation(shard, "gen-1").await.expect("marker");
            ledger
                .set_redis_generation(shard.0, "gen-1")
                .await
                .expect("record marker");
        }
    }

    #[tokio::test]
    async fn redis_behind_the_ledger_is_rebuilt_and_a_posted_hold_is_closed_not_expired() {
        let t = temp_ledger().await;
        // The ledger recorded the whole history: h1 placed and posted at 20.
        record_with_positions(t.ledger.as_ref(), &acme_posted().await, 0).await;
        // Redis came back from before the settle, generation marker and all: h1 is pending.
        let behind = MemoryStore::new(keyspace());
        grant(&behind, "acme", "g1", 100).await;
        reserve(&behind, "acme", "h1", 30).await;
        let redis = ModelRedis::new(behind);
        markers_kept(t.ledger.as_ref(), &redis).await;
        let shard = keyspace().shard_of("acme");

        let rebuilt = check_generations(t.ledger.as_ref(), &redis, "gen-2")
            .await
            .expect("check");

        assert_eq!(rebuilt, vec![shard]);
        let [state] = redis.restored().try_into().expect("acme restored");
        assert_eq!(state.grants[0].remaining, 80);
        // h1 is closed as the ledger has it, never expired a second time.
        assert_eq!(
            state.resolved_holds,
            vec![("h1".to_string(), "posted".to_string(), 20)]
        );
        // The shard's sequence continues the ledger's: the next check rebuilds nothing.
        assert_eq!(redis.shard_sequence(shard).await.expect("seq"), Some(3));
        let again = check_generations(t.ledger.as_ref(), &redis, "gen-2")
            .await
            .expect("check");
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(redis.restored().len(), 1);
    }

    #[tokio::test]
    async fn a_rollback_rebuild_goes_on_after_new_events_pass_the_ledgers_sequence() {
        let t = temp_ledger().await;
        record_with_positions(t.ledger.as_ref(), &acme_posted().await, 0).await;
        let behind = MemoryStore::new(keyspace());
        grant(&behind, "acme", "g1", 100).await;
        reserve(&behind, "acme", "h1", 30).await;
        let redis = ModelRedis::new(behind);
        markers_kept(t.ledger.as_ref(), &redis).await;
        let shard = keyspace().shard_of("acme");
        // The rollback is seen while acme is busy: not rebuilt on this check.
        redis.busy.lock().expect("lock").insert("acme".into());
        let first = check_generations(t.ledger.as_ref(), &redis, "gen-2").await;
        assert!(first.expect("check").is_empty());
        let recorded = t.ledger.redis_generation(shard.0).await.expect("marker");
        assert_eq!(recorded.as_deref(), Some("rollback-rebuild:gen-1"));

        // Traffic goes on: the shard's sequence passes the ledger's before the next check,
        // which no longer sees a rollback in the sequences but goes on with the rebuild.
        redis.raise_sequence(shard, 1_000).await.expect("raise");
        redis.busy.lock().expect("lock").clear();
        let second = check_generations(t.ledger.as_ref(), &redis, "gen-2").await;

        assert_eq!(second.expect("check"), vec![shard]);
        let [state] = redis.restored().try_into().expect("acme restored");
        assert_eq!(state.grants[0].remaining, 80);
        let recorded = t.ledger.redis_generation(shard.0).await.expect("marker");
        assert_eq!(recorded.as_deref(), Some("gen-1"));
        let third = check_generations(t.ledger.as_ref(), &redis, "gen-2").await;
        assert!(third.expect("check").is_empty());
        assert_eq!(redis.restored().len(), 1);
    }

    #[tokio::test]
    async fn a_redis_in_step_with_the_ledger_is_not_rebuilt() {
        let t = temp_ledger().await;
        let redis = ModelRedis::new(acme_posted().await);
        // The writer is one event behind: Redis is ahead, not behind.
        record_with_positions(t.ledger.as_ref(), &redis.model, 1).await;
        markers_kept(t.ledger.as_ref(), &redis).await;

        let rebuilt = check_generations(t.ledger.as_ref(), &redis, "gen-2")
            .await
            .expect("check");

        assert!(rebuilt.is_empty(), "{rebuilt:?}");
        assert!(redis.restored().is_empty());
    }

    #[tokio::test]
    async fn a_busy_shards_rebuild_does_not_start_over_every_pass() {
        let t = temp_ledger().await;
        let before = acme_posted().await;
        // Another customer on acme's shard, with a hold pending in Redis and the ledger.
        let shard = keyspace().shard_of("acme");
        let busy = (0..100)
            .map(|i| format!("busy{i}"))
            .find(|c| keyspace().shard_of(c) == shard)
            .expect("a customer on acme's shard");
        grant(&before, &busy, "gb", 50).await;
        reserve(&before, &busy, "hb", 10).await;
        record_with_positions(t.ledger.as_ref(), &before, 0).await;
        // Redis lost the shard's marker but still has the busy customer's hold.
        let redis = ModelRedis::new(before);
        t.ledger
            .set_redis_generation(shard.0, "gen-1")
            .await
            .expect("record marker");

        for _ in 0..3 {
            let rebuilt = check_generations(t.ledger.as_ref(), &redis, "gen-2")
                .await
                .expect("check");
            assert!(!rebuilt.contains(&shard), "{rebuilt:?}");
        }

        // acme was restored once; the passes after only retried the busy customer.
        let restored: Vec<String> = redis.restored().into_iter().map(|s| s.customer).collect();
        assert_eq!(restored, vec!["acme".to_string()]);
    }

    /// The ledger's entries role, remembering the most entries one read returned.
    struct PageCounting {
        inner: std::sync::Arc<dyn Ledger>,
        most: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl LedgerEntries for PageCounting {
        async fn append_batch(
            &self,
            entries: &[NewEntry],
        ) -> crate::ledger::LedgerResult<Vec<crate::ledger::AppendOutcome>> {
            self.inner.append_batch(entries).await
        }
        async fn entry(
            &self,
            event_id: &str,
        ) -> crate::ledger::LedgerResult<Option<crate::ledger::LedgerEntry>> {
            self.inner.entry(event_id).await
        }
        async fn entries(
            &self,
            query: &EntryQuery,
        ) -> crate::ledger::LedgerResult<Vec<crate::ledger::LedgerEntry>> {
            let read = self.inner.entries(query).await?;
            self.most
                .fetch_max(read.len(), std::sync::atomic::Ordering::SeqCst);
            Ok(read)
        }
        async fn customers(&self) -> crate::ledger::LedgerResult<Vec<String>> {
            self.inner.customers().await
        }
        async fn chain_head(
            &self,
            customer: &str,
        ) -> crate::ledger::LedgerResult<Option<crate::ledger::ChainHead>> {
            self.inner.chain_head(customer).await
        }
        async fn amount_sums(&self) -> crate::ledger::LedgerResult<Vec<(String, String, i64)>> {
            self.inner.amount_sums().await
        }
    }

    /// The model's events appended to a ledger so far, for recording a history longer
    /// than the model keeps: each new event once, with stream ids counting the shard's
    /// events.
    #[derive(Default)]
    struct RecordedSoFar {
        ids: HashSet<String>,
        per_shard: HashMap<u32, usize>,
    }

    impl RecordedSoFar {
        async fn record(&mut self, ledger: &dyn Ledger, store: &MemoryStore) {
            let mut entries = Vec::new();
            for shard in keyspace().all_shards() {
                for event in store.events(shard) {
                    if !self.ids.insert(event.event_id.clone()) {
                        continue;
                    }
                    let n = self.per_shard.entry(shard.0).or_default();
                    let id = Some(model_stream_id(*n));
                    *n += 1;
                    entries.push(NewEntry::from_event(&event, shard.0, id).expect("entry"));
                }
            }
            ledger.append_batch(&entries).await.expect("append");
        }
    }

    /// This process's resident set, KiB (0 where `/proc` has none).
    fn vm_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// A rebuild holds one page of the customer's history at a time, never all of it: the
    /// soak's sidecar grew from 46 to 221 MiB rebuilding customers of ~100,000 entries.
    /// `CREDITGATE_REBUILD_MEASURE_HOLDS=N` runs it on N settled holds and prints VmRSS.
    #[tokio::test]
    async fn a_rebuild_reads_a_long_history_page_by_page() {
        let holds: u64 = std::env::var("CREDITGATE_REBUILD_MEASURE_HOLDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_600);
        let t = temp_ledger().await;
        // The ledger's history, and a store that came back from before its last settle:
        // one hold pending in the store that the ledger has resolved (a rollback).
        let (ledger_side, model) = (MemoryStore::new(keyspace()), MemoryStore::new(keyspace()));
        let mut recorded = RecordedSoFar::default();
        for store in [&ledger_side, &model] {
            grant(store, "acme", "g1", 10 * holds + 100).await;
        }
        for i in 0..holds {
            for store in [&ledger_side, &model] {
                reserve(store, "acme", &format!("h{i}"), 10).await;
                settle(store, "acme", &format!("h{i}"), 7).await;
            }
            // The model keeps its newest 10,000 events per shard: record before they go.
            if i % 2_000 == 1_999 {
                recorded.record(t.ledger.as_ref(), &ledger_side).await;
            }
        }
        for store in [&ledger_side, &model] {
            reserve(store, "acme", "h-open", 10).await;
        }
        settle(&ledger_side, "acme", "h-open", 7).await;
        recorded.record(t.ledger.as_ref(), &ledger_side).await;
        drop(ledger_side);
        let recorded = recorded.ids.len();
        let redis = ModelRedis::new(model);
        let counting = PageCounting {
            inner: t.ledger.clone(),
            most: Default::default(),
        };

        let before_kib = vm_rss_kib();
        let started = std::time::Instant::now();
        let rebuilt = rebuild_customer(&counting, &redis, "acme").await;
        let after_kib = vm_rss_kib();
        let most = counting.most.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!(
            "rebuild of {recorded} entries: {:?}, most entries in one read {most}, VmRSS \
             {before_kib} -> {after_kib} KiB",
            started.elapsed()
        );

        let rebuilt = rebuilt.expect("rebuild");
        assert!(matches!(rebuilt, Rebuilt::Restored { .. }), "{rebuilt:?}");
        let restored = redis.restored();
        assert_eq!(restored.len(), 1);
        let remaining: u64 = restored[0].grants.iter().map(|g| g.remaining).sum();
        assert_eq!(remaining, 10 * holds + 100 - 7 * (holds + 1));
        let closing = vec![("h-open".to_string(), "posted".to_string(), 7)];
        assert_eq!(restored[0].resolved_holds, closing);
        assert!(
            most as u64 <= crate::ledger::ENTRY_PAGE,
            "a read returned {most} entries of {recorded}"
        );
    }

    /// The record `POST /v1/usage-events` makes of `acme`'s event `key` priced `amount`.
    fn usage_row(key: &str, amount: u64) -> crate::ledger::UsageEventRecord {
        crate::ledger::UsageEventRecord {
            customer: "acme".into(),
            idempotency_key: key.into(),
            feature: "export".into(),
            quantity: 1,
            occurred_at_ms: now_ms(),
            received_at_ms: now_ms(),
            credit_type: CREDITS.into(),
            amount,
            hold_id: creditgate_protocol::meter::idempotent_hold_id("ue", "acme", key),
            pricing_version: "v1".into(),
            metadata: None,
        }
    }

    #[tokio::test]
    async fn usage_events_whose_burn_redis_lost_are_burned_again_once() {
        let t = temp_ledger().await;
        let redis = ModelRedis::new(MemoryStore::new(keyspace()));
        grant(&redis.model, "acme", "g1", 100).await;
        record_with_positions(t.ledger.as_ref(), &redis.model, 0).await;
        // Accepted by the ledger, burned in a Redis that lost the burns before the writer
        // read them (here: never burned in this store).
        for (key, amount) in [("job-1", 30), ("job-2", 5)] {
            let recorded = t.ledger.record_usage_event(&usage_row(key, amount)).await;
            assert!(recorded.expect("record"));
        }
        let unburned = t.ledger.unburned_usage_events("acme", "", 10).await;
        assert_eq!(unburned.expect("read").len(), 2);

        let first = reburn_lost_usage_events(t.ledger.as_ref(), &redis, "acme").await;
        assert_eq!(first.expect("reburn"), 2);
        // The sidecar died before the writer recorded them: the next rebuild finds the
        // holds in Redis and burns nothing more.
        let again = reburn_lost_usage_events(t.ledger.as_ref(), &redis, "acme").await;
        assert_eq!(again.expect("reburn"), 0);
        // Once the ledger has the burns, nothing is selected.
        record_with_positions(t.ledger.as_ref(), &redis.model, 0).await;
        let unburned = t.ledger.unburned_usage_events("acme", "", 10).await;
        assert!(unburned.expect("read").is_empty());
        let balance = redis.model.balance("acme").await.expect("balance");
        assert_eq!(balance.of(CREDITS).map(|b| b.available), Some(65));
        let burns = t.ledger.trail("usage-event:job-1").await.expect("trail");
        let posted = burns
            .iter()
            .filter(|e| e.entry.kind == EntryKind::HoldPosted)
            .count();
        assert_eq!(posted, 1);
    }
}
