//! Consumer-group reads, acknowledgement, claiming from a dead consumer, trimming and the
//! generation marker, against a real `redis-server`.

use creditgate_protocol::{
    CreditStore, GrantRequest, GrantSource, Keyspace, ReadFrom, RedisStore, RedisTarget,
};
use creditgate_testkit::RedisServer;

fn grant(id: &str) -> GrantRequest {
    GrantRequest {
        customer: "acme".into(),
        grant_id: id.into(),
        credit_type: "api".into(),
        amount: 10,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::Purchase,
        actor: "test".into(),
        reason: "streams".into(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_reads_acks_claims_and_trims_only_what_is_acknowledged() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::connect(
        &RedisTarget::Single(server.url()),
        Keyspace::default(),
        2_000,
    )
    .await
    .unwrap();
    let shard = store.keyspace().shard_of("acme");
    store.ensure_group(shard, "ledger").await.unwrap();
    store.ensure_group(shard, "ledger").await.unwrap(); // idempotent
    for i in 0..5 {
        store.grant(&grant(&format!("g{i}"))).await.unwrap();
    }

    let first = store
        .read_group(shard, "ledger", "a", ReadFrom::New, 3)
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].event.as_ref().unwrap().event_id, "grant:g0:added");
    // Not acknowledged: the same consumer sees them again as its own pending entries.
    let pending = store
        .read_group(shard, "ledger", "a", ReadFrom::OwnPendingAfter("0"), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
    // Another consumer takes over entries idle long enough (here: any), page by page: the
    // cursor carries the scan on from where the first page stopped.
    let (cursor, mut claimed) = store
        .claim_stale(shard, "ledger", "b", 0, "0-0", 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(cursor, first[2].stream_id);
    let (cursor, rest) = store
        .claim_stale(shard, "ledger", "b", 0, &cursor, 2)
        .await
        .unwrap();
    claimed.extend(rest);
    assert_eq!((claimed.len(), cursor.as_str()), (3, "0-0"));
    let newest = store.newest_events(shard, None, 1).await.unwrap();
    assert_eq!(
        store.last_stream_id(shard).await.unwrap(),
        Some(newest[0].0.clone())
    );
    assert!(
        store
            .read_group(shard, "ledger", "a", ReadFrom::OwnPendingAfter("0"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Trimming keeps every unacknowledged entry.
    assert_eq!(store.trim_acknowledged(shard, "ledger").await.unwrap(), 0);
    let ids: Vec<String> = claimed[..2].iter().map(|e| e.stream_id.clone()).collect();
    assert_eq!(store.ack(shard, "ledger", &ids).await.unwrap(), 2);
    assert_eq!(store.trim_acknowledged(shard, "ledger").await.unwrap(), 2);
    let left = store.stream_events(shard, 100).await.unwrap();
    assert_eq!(
        left.len(),
        3,
        "the pending third entry and two never delivered remain"
    );
    assert_eq!(left[0].0, claimed[2].stream_id);

    let rest = store
        .read_group(shard, "ledger", "b", ReadFrom::New, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_entry_is_reported_not_dropped() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::connect(
        &RedisTarget::Single(server.url()),
        Keyspace::default(),
        2_000,
    )
    .await
    .unwrap();
    let shard = store.keyspace().shard_of("acme");
    store.ensure_group(shard, "ledger").await.unwrap();
    server
        .cli(&[
            "XADD",
            &store.keyspace().events(shard),
            "*",
            "v",
            "1",
            "kind",
            "grant_added",
        ])
        .unwrap();
    let entries = store
        .read_group(shard, "ledger", "a", ReadFrom::New, 10)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let err = entries[0].event.as_ref().unwrap_err();
    assert!(err.contains("grant_id"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_generation_marker_is_set_once_and_gone_after_a_flush() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::connect(
        &RedisTarget::Single(server.url()),
        Keyspace::default(),
        2_000,
    )
    .await
    .unwrap();
    let shard = store.keyspace().shard_of("acme");
    assert_eq!(store.generation(shard).await.unwrap(), None);
    assert!(store.init_generation(shard, "gen-1").await.unwrap());
    assert!(!store.init_generation(shard, "gen-2").await.unwrap());
    assert_eq!(
        store.generation(shard).await.unwrap().as_deref(),
        Some("gen-1")
    );
    server.cli(&["FLUSHALL"]).unwrap();
    assert_eq!(store.generation(shard).await.unwrap(), None);
}
