//! Fixtures for the jobs' unit tests: a SQLite ledger in a temporary directory, and the
//! requests and events of the reference model ([`MemoryStore`]) that the tests run the jobs
//! against instead of Redis. Compiled for tests only; nothing here is a product default.

use std::sync::Arc;

use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{
    Balance, CreditStore, DueEntry, Event, ExtendOutcome, ExtendRequest, GrantExpiryOutcome,
    GrantOutcome, GrantRef, GrantRequest, GrantSource, HoldRecord, HoldRef, IdempotencyClaim,
    KeyedReserveOutcome, Keyspace, MemoryStore, ReserveOutcome, ReserveRequest, ResolveOutcome,
    SettleRequest, Shard, StoreError,
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

/// The reference model with faults: fails the next `fail_settles` settles as a Redis
/// timeout would, and places holds with `hold_ttl_ms` whatever was asked, so a test can
/// let a hold expire without waiting for its real lifetime.
pub(crate) struct FaultyStore {
    /// The model underneath.
    pub inner: MemoryStore,
    /// Settles still to fail.
    pub fail_settles: std::sync::atomic::AtomicU32,
    /// The lifetime of every hold placed, ms (none: as asked).
    pub hold_ttl_ms: Option<u64>,
}

impl FaultyStore {
    /// The model on `keyspace`, failing the first `fail_settles` settles.
    pub(crate) fn new(keyspace: Keyspace, fail_settles: u32, hold_ttl_ms: Option<u64>) -> Self {
        Self {
            inner: MemoryStore::new(keyspace),
            fail_settles: std::sync::atomic::AtomicU32::new(fail_settles),
            hold_ttl_ms,
        }
    }
}

#[async_trait::async_trait]
impl CreditStore for FaultyStore {
    async fn grant(&self, req: &GrantRequest) -> Result<GrantOutcome, StoreError> {
        self.inner.grant(req).await
    }
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        let ttl_ms = self.hold_ttl_ms.unwrap_or(req.ttl_ms);
        self.inner
            .reserve(&ReserveRequest {
                ttl_ms,
                ..req.clone()
            })
            .await
    }
    async fn reserve_keyed(
        &self,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
    ) -> Result<KeyedReserveOutcome, StoreError> {
        self.inner.reserve_keyed(req, claim).await
    }
    async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
        use std::sync::atomic::Ordering;
        let left = self.fail_settles.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_settles.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Timeout {
                op: "settle",
                timeout_ms: 1,
            });
        }
        self.inner.settle(req).await
    }
    async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        self.inner.void(hold).await
    }
    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, StoreError> {
        self.inner.extend(req).await
    }
    async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        self.inner.expire_hold(hold).await
    }
    async fn expire_grant(&self, grant: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
        self.inner.expire_grant(grant).await
    }
    async fn balance(&self, customer: &str) -> Result<Balance, StoreError> {
        self.inner.balance(customer).await
    }
    async fn hold(&self, hold: &HoldRef) -> Result<Option<HoldRecord>, StoreError> {
        self.inner.hold(hold).await
    }
    async fn due_holds(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.inner.due_holds(shard, now_ms, limit).await
    }
    async fn due_grants(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.inner.due_grants(shard, now_ms, limit).await
    }
}
