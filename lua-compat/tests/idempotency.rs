//! Keyed reserves (an idempotency key's record in `reserve`) on a real `redis-server` and on
//! the reference model: the same scenario must give the same outcomes on both, and the
//! record's loss (`DEL`) must lead to a new hold under a new id, never a second event under
//! an old one.

use std::time::Duration;

use creditgate_protocol::{
    CreditStore, EventBody, GrantRequest, GrantSource, HoldRef, HoldState, IdempotencyClaim,
    KeyedReserveOutcome, Keyspace, MemoryStore, RedisStore, RedisTarget, ReserveOutcome,
    ReserveRequest, ResolveOutcome, SettleRequest,
};
use creditgate_testkit::{RedisCluster, RedisServer};

const CUSTOMER: &str = "acme";

fn grant(amount: u64) -> GrantRequest {
    GrantRequest {
        customer: CUSTOMER.into(),
        grant_id: "g1".into(),
        credit_type: "api".into(),
        amount,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::Promotion,
        actor: "test".into(),
        reason: "idempotency".into(),
    }
}

fn reserve(hold_id: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        customer: CUSTOMER.into(),
        hold_id: hold_id.into(),
        credit_type: "api".into(),
        amount,
        ttl_ms: 60_000,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "POST /v1/things".into(),
        feature: "things".into(),
        retain_ms: 86_400_000,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}

fn claim(record: &str, fingerprint: &str, supersedes: Option<&str>) -> IdempotencyClaim {
    IdempotencyClaim {
        record_id: record.into(),
        fingerprint: fingerprint.into(),
        supersedes: supersedes.map(str::to_string),
        replay_max: 2,
        replay_window_ms: 60_000,
    }
}

fn hold_ref(hold_id: &str) -> HoldRef {
    HoldRef {
        customer: CUSTOMER.into(),
        hold_id: hold_id.into(),
    }
}

async fn keyed(
    store: &dyn CreditStore,
    hold_id: &str,
    claim: &IdempotencyClaim,
) -> KeyedReserveOutcome {
    store
        .reserve_keyed(&reserve(hold_id, 3), claim)
        .await
        .expect("keyed reserve")
}

/// The record binds the key to one fingerprint, points retries at its hold, and counts
/// replays of the posted hold up to `replay_max`; a voided hold is superseded by a new one.
async fn binds_counts_and_supersedes(store: &dyn CreditStore) {
    store.grant(&grant(10)).await.unwrap();
    let k1 = claim("idem-k1", "fpa", None);
    let first = keyed(store, "idem-k1.n1", &k1).await;
    assert!(matches!(
        first,
        KeyedReserveOutcome::Reserve(ReserveOutcome::Placed { .. })
    ));
    let other = keyed(store, "idem-k1.n2", &claim("idem-k1", "fpb", None)).await;
    assert!(
        matches!(&other, KeyedReserveOutcome::KeyReused { first_request_id, .. } if first_request_id == "req-idem-k1.n1"),
        "{other:?}"
    );
    let moved = keyed(store, "idem-k1.n3", &k1).await;
    assert!(
        matches!(&moved, KeyedReserveOutcome::Moved { hold_id, .. } if hold_id == "idem-k1.n1"),
        "{moved:?}"
    );
    let pending = keyed(store, "idem-k1.n1", &k1).await;
    assert!(
        matches!(
            pending,
            KeyedReserveOutcome::Reserve(ReserveOutcome::Replay {
                state: HoldState::Pending,
                ..
            })
        ),
        "{pending:?}"
    );
    let settle = SettleRequest {
        customer: CUSTOMER.into(),
        hold_id: "idem-k1.n1".into(),
        actual: 3,
        overdraft_limit: 0,
    };
    assert!(matches!(
        store.settle(&settle).await.unwrap(),
        ResolveOutcome::Posted { posted: 3, .. }
    ));
    for n in 1..=2 {
        let replay = keyed(store, "idem-k1.n1", &k1).await;
        assert!(
            matches!(&replay, KeyedReserveOutcome::Replayed { replay, first_request_id, .. } if *replay == n && first_request_id == "req-idem-k1.n1"),
            "{replay:?}"
        );
    }
    let exhausted = keyed(store, "idem-k1.n1", &k1).await;
    assert!(
        matches!(
            &exhausted,
            KeyedReserveOutcome::ReplaysExhausted { replays: 2, .. }
        ),
        "{exhausted:?}"
    );
    // Another key: voided, then superseded by a new hold; a stale retry is moved on.
    let k2 = claim("idem-k2", "fpa", None);
    keyed(store, "idem-k2.n1", &k2).await;
    store.void(&hold_ref("idem-k2.n1")).await.unwrap();
    let voided = keyed(store, "idem-k2.n1", &k2).await;
    assert!(
        matches!(
            voided,
            KeyedReserveOutcome::Reserve(ReserveOutcome::Replay {
                state: HoldState::Voided,
                ..
            })
        ),
        "{voided:?}"
    );
    let again = keyed(
        store,
        "idem-k2.n2",
        &claim("idem-k2", "fpa", Some("idem-k2.n1")),
    )
    .await;
    assert!(matches!(
        again,
        KeyedReserveOutcome::Reserve(ReserveOutcome::Placed { .. })
    ));
    let stale = keyed(
        store,
        "idem-k2.n3",
        &claim("idem-k2", "fpa", Some("idem-k2.n1")),
    )
    .await;
    assert!(
        matches!(&stale, KeyedReserveOutcome::Moved { hold_id, .. } if hold_id == "idem-k2.n2"),
        "{stale:?}"
    );
    // Only the one posted request and the pending second attempt of k2 took credits.
    let balance = store.balance(CUSTOMER).await.unwrap();
    assert_eq!(balance.of("api").unwrap().available, 4);
}

/// Replays are allowed only within the window of the first placement.
async fn the_window_closes(store: &dyn CreditStore) {
    store.grant(&grant(10)).await.unwrap();
    let k = IdempotencyClaim {
        replay_window_ms: 100,
        ..claim("idem-w", "fpa", None)
    };
    keyed(store, "idem-w.n1", &k).await;
    let settle = SettleRequest {
        customer: CUSTOMER.into(),
        hold_id: "idem-w.n1".into(),
        actual: 3,
        overdraft_limit: 0,
    };
    store.settle(&settle).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let late = keyed(store, "idem-w.n1", &k).await;
    assert!(
        matches!(
            late,
            KeyedReserveOutcome::ReplaysExhausted { replays: 0, .. }
        ),
        "{late:?}"
    );
}

async fn redis(server: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &RedisTarget::Single(server.url()),
        Keyspace::default(),
        2_000,
    )
    .await
    .expect("connect")
}

async fn redis_del(server: &RedisServer, key: &str) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "{key} existed");
}

#[tokio::test]
async fn the_script_binds_counts_and_supersedes() {
    let server = RedisServer::start().expect("redis-server");
    binds_counts_and_supersedes(&redis(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_binds_counts_and_supersedes_on_a_cluster() {
    // The record carries the customer's shard tag: one slot with the hold, on any primary.
    let cluster = RedisCluster::start(3).expect("redis cluster");
    let store = RedisStore::connect(
        &RedisTarget::Cluster(cluster.urls()),
        Keyspace::default(),
        2_000,
    )
    .await
    .expect("connect to cluster");
    binds_counts_and_supersedes(&store).await;
}

#[tokio::test]
async fn the_model_binds_counts_and_supersedes() {
    binds_counts_and_supersedes(&MemoryStore::new(Keyspace::default())).await;
}

#[tokio::test]
async fn the_script_closes_the_replay_window() {
    let server = RedisServer::start().expect("redis-server");
    the_window_closes(&redis(&server).await).await;
}

#[tokio::test]
async fn the_model_closes_the_replay_window() {
    the_window_closes(&MemoryStore::new(Keyspace::default())).await;
}

#[tokio::test]
async fn a_lost_record_means_a_new_hold_under_a_new_id_and_a_lost_hold_is_gone() {
    let server = RedisServer::start().expect("redis-server");
    let store = redis(&server).await;
    let keyspace = Keyspace::default();
    store.grant(&grant(10)).await.unwrap();
    let k = claim("idem-d", "fpa", None);
    keyed(&store, "idem-d.n1", &k).await;
    store
        .settle(&SettleRequest {
            customer: CUSTOMER.into(),
            hold_id: "idem-d.n1".into(),
            actual: 3,
            overdraft_limit: 0,
        })
        .await
        .unwrap();
    redis_del(&server, &keyspace.idempotency_record(CUSTOMER, "idem-d")).await;
    // The caller proposes a fresh hold id each time: no record, so it is a new request.
    let fresh = keyed(&store, "idem-d.n2", &k).await;
    assert!(matches!(
        fresh,
        KeyedReserveOutcome::Reserve(ReserveOutcome::Placed { .. })
    ));
    let placed: Vec<String> = store
        .stream_events(keyspace.shard_of(CUSTOMER), 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(e.body, EventBody::HoldPlaced { .. }))
        .map(|(_, e)| {
            creditgate_protocol::hold_placement_of(&e.event_id)
                .unwrap()
                .to_string()
        })
        .filter_map(|p| p.rsplit_once(':').map(|(hold, _nonce)| hold.to_string()))
        .collect();
    assert_eq!(placed, ["hold:idem-d.n1", "hold:idem-d.n2"]);
    // The record's hold deleted under it: the caller is told, and may supersede it.
    redis_del(&server, &keyspace.customer(CUSTOMER).hold("idem-d.n2")).await;
    assert!(matches!(
        keyed(&store, "idem-d.n2", &k).await,
        KeyedReserveOutcome::Gone { .. }
    ));
}
