//! Fixtures for the jobs' unit tests: a SQLite ledger in a temporary directory, and the
//! requests and events of the reference model ([`MemoryStore`]) that the tests run the jobs
//! against instead of Redis. Compiled for tests only; nothing here is a product default.

use std::sync::Arc;

use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{
    CreditStore, Event, GrantRequest, GrantSource, Keyspace, MemoryStore, ReserveRequest,
    SettleRequest,
};
use tempfile::TempDir;

use crate::ledger::{Ledger, NewEntry, SqliteLedger};

/// The credit type every fixture uses.
pub(crate) const CREDITS: &str = "credits";

/// A migrated SQLite ledger that lives as long as its directory.
pub(crate) struct TempLedger {
    /// The ledger.
    pub ledger: Arc<dyn Ledger>,
    _dir: TempDir,
}

/// A fresh, migrated SQLite ledger in a temporary directory.
pub(crate) async fn temp_ledger() -> TempLedger {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = SqliteLedger::open(dir.path().join("ledger.db"))
        .await
        .expect("open the SQLite ledger");
    let ledger: Arc<dyn Ledger> = Arc::new(sqlite);
    ledger.migrate().await.expect("migrate the ledger");
    TempLedger { ledger, _dir: dir }
}

/// A small key space, so tests that walk every shard stay short.
pub(crate) fn keyspace() -> Keyspace {
    Keyspace::new("cgtest", 2)
}

/// Grants `amount` credits to `customer` in `store` as grant `grant_id`.
pub(crate) async fn grant(store: &dyn CreditStore, customer: &str, grant_id: &str, amount: u64) {
    let request = GrantRequest {
        customer: customer.into(),
        grant_id: grant_id.into(),
        credit_type: CREDITS.into(),
        amount,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::Promotion,
        actor: "test".into(),
        reason: "fixture".into(),
    };
    store.grant(&request).await.expect("grant");
}

/// Places hold `hold_id` of `amount` for `customer` (not forced, no overdraft).
pub(crate) async fn reserve(store: &dyn CreditStore, customer: &str, hold_id: &str, amount: u64) {
    let request = ReserveRequest {
        customer: customer.into(),
        hold_id: hold_id.into(),
        credit_type: CREDITS.into(),
        amount,
        ttl_ms: 60_000,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "test".into(),
        feature: "test".into(),
        retain_ms: DEFAULT_RETAIN_MS,
        pricing_version: "v1".into(),
        occurred_at_ms: None,
    };
    store.reserve(&request).await.expect("reserve");
}

/// Settles hold `hold_id` of `customer` at `actual` (no overdraft).
pub(crate) async fn settle(store: &dyn CreditStore, customer: &str, hold_id: &str, actual: u64) {
    let request = SettleRequest {
        customer: customer.into(),
        hold_id: hold_id.into(),
        actual,
        overdraft_limit: 0,
    };
    store.settle(&request).await.expect("settle");
}

/// Every event of `store`, with its shard, oldest first per shard.
pub(crate) fn model_events(store: &MemoryStore, keyspace: &Keyspace) -> Vec<(u32, Event)> {
    keyspace
        .all_shards()
        .flat_map(|shard| store.events(shard).into_iter().map(move |e| (shard.0, e)))
        .collect()
}

/// Appends every event of `store` to `ledger`, as the writer would.
pub(crate) async fn record_model_events(
    ledger: &dyn Ledger,
    store: &MemoryStore,
    keyspace: &Keyspace,
) {
    let entries: Vec<NewEntry> = model_events(store, keyspace)
        .iter()
        .flat_map(|(shard, event)| {
            NewEntry::from_event_with_overage(event, *shard, None).expect("a ledger entry")
        })
        .collect();
    ledger.append_batch(&entries).await.expect("append");
}
