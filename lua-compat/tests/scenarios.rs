//! Scenarios against a real `redis-server` and a real 3-master Redis Cluster: concurrency,
//! script reloading, cluster slots, timeouts, breakage and the 2^53 bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate_protocol::{
    CreditStore, EventBody, GrantExpiryOutcome, GrantOutcome, GrantRef, GrantRequest, GrantSource,
    HoldRef, Keyspace, MAX_AMOUNT, RedisStore, RedisTarget, ReserveOutcome, ReserveRequest,
    ResolveOutcome, SettleRequest, StoreErrorKind,
};
use creditgate_testkit::{RedisCluster, RedisServer};

fn grant(customer: &str, id: &str, amount: u64, expires_at_ms: Option<u64>) -> GrantRequest {
    GrantRequest {
        customer: customer.into(),
        grant_id: id.into(),
        credit_type: "api".into(),
        amount,
        priority: 10,
        expires_at_ms,
        cost_basis: 0,
        source: GrantSource::Promotion,
        actor: "test".into(),
        reason: "scenario".into(),
    }
}

fn reserve(customer: &str, hold_id: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        customer: customer.into(),
        hold_id: hold_id.into(),
        credit_type: "api".into(),
        amount,
        ttl_ms: 60_000,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "GET /v1/things".into(),
        feature: "things".into(),
        retain_ms: 86_400_000,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}

fn settle(customer: &str, hold_id: &str, actual: u64) -> SettleRequest {
    SettleRequest {
        customer: customer.into(),
        hold_id: hold_id.into(),
        actual,
        overdraft_limit: 0,
    }
}

/// The stream id of the newest entry of a shard's stream (default key space).
async fn newest_stream_id(server: &RedisServer, shard: creditgate_protocol::Shard) -> String {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(Keyspace::default().events(shard))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XREVRANGE");
    newest.ids[0].id.clone()
}

async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &RedisTarget::Single(server.url()),
        Keyspace::default(),
        2_000,
    )
    .await
    .expect("connect")
}

/// The event ids of `customer`'s shard's hold events, oldest first.
async fn hold_event_ids(store: &RedisStore, customer: &str) -> Vec<String> {
    let shard = Keyspace::default().shard_of(customer);
    store
        .stream_events(shard, 1_000)
        .await
        .expect("stream")
        .into_iter()
        .map(|(_, e)| e.event_id)
        .filter(|id| id.starts_with("hold:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_hold_id_placed_again_after_its_record_is_gone_has_new_event_ids() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("acme", "g1", 100, None)).await.unwrap();
    store.reserve(&reserve("acme", "h1", 30)).await.unwrap();
    store.settle(&settle("acme", "h1", 20)).await.unwrap();
    let first = hold_event_ids(&store, "acme").await;
    // Redis loses its data (the record would also be gone 24 h after the hold resolved);
    // the same request places the same hold id again, for another amount, and is voided.
    server.cli(&["FLUSHALL"]).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.grant(&grant("acme", "g1", 100, None)).await.unwrap();
    let mut again = reserve("acme", "h1", 40);
    again.request_id = "req-h1-again".into();
    assert!(matches!(
        store.reserve(&again).await.unwrap(),
        ReserveOutcome::Placed { .. }
    ));
    store
        .void(&HoldRef {
            customer: "acme".into(),
            hold_id: "h1".into(),
        })
        .await
        .unwrap();
    let second = hold_event_ids(&store, "acme").await;

    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(second.len(), 2, "{second:?}");
    for id in first.iter().chain(&second) {
        assert!(id.starts_with("hold:h1:"), "{id}");
    }
    assert!(
        first.iter().all(|id| !second.contains(id)),
        "{first:?} {second:?}"
    );
    // Each placement's events share one placement (hold id and nonce).
    let placement = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .map(|id| {
                creditgate_protocol::hold_placement_of(id)
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let (p1, p2) = (placement(&first), placement(&second));
    assert_eq!(p1[0], p1[1]);
    assert_eq!(p2[0], p2[1]);
    assert_ne!(p1[0], p2[0]);
    assert!(first[1].ends_with(":posted") && second[1].ends_with(":voided"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_reserves_against_three_hundred_credits() {
    let server = RedisServer::start().expect("redis-server");
    let store = Arc::new(connect(&server).await);
    let outcome = store.grant(&grant("acme", "g1", 300, None)).await.unwrap();
    assert!(matches!(outcome, GrantOutcome::Granted { .. }));

    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.reserve(&reserve("acme", &format!("h{i}"), 1)).await })
        })
        .collect();
    let mut placed = Vec::new();
    let mut refused = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap().expect("reserve") {
            ReserveOutcome::Placed { .. } => placed.push(format!("h{i}")),
            ReserveOutcome::Insufficient { available, .. } => {
                assert_eq!(available, 0);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(placed.len(), 300, "exactly the balance is reserved");
    assert_eq!(refused, 200);
    let b = store.balance("acme").await.unwrap();
    assert_eq!(
        (b.of("api").unwrap().available, b.of("api").unwrap().held),
        (0, 300)
    );

    let tasks: Vec<_> = placed
        .iter()
        .map(|h| {
            let store = store.clone();
            let h = h.clone();
            tokio::spawn(async move { store.settle(&settle("acme", &h, 1)).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(
            t.await.unwrap().unwrap(),
            ResolveOutcome::Posted { posted: 1, .. }
        ));
    }
    let b = store.balance("acme").await.unwrap();
    let api = b.of("api").unwrap();
    assert_eq!((api.available, api.held, api.debt), (0, 0, 0));
    assert!(
        b.grants.is_empty(),
        "the exhausted grant left the hash: {b:?}"
    );
    let shard = store.keyspace().shard_of("acme");
    let events = store.stream_events(shard, 10_000).await.unwrap();
    assert_eq!(
        events.len(),
        1 + 300 + 300,
        "one grant, 300 holds placed, 300 posted"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn noscript_reloads_once_and_the_call_succeeds() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("acme", "g1", 10, None)).await.unwrap();
    assert_eq!(store.script_reloads(), 0);
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    let outcome = store.reserve(&reserve("acme", "h1", 4)).await.unwrap();
    assert!(
        matches!(outcome, ReserveOutcome::Placed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        store.script_reloads(),
        1,
        "one reload for the flushed script"
    );
    // The reload loaded it for good: the next call of the same script needs none.
    store.reserve(&reserve("acme", "h2", 4)).await.unwrap();
    assert_eq!(store.script_reloads(), 1);
    let b = store.balance("acme").await.unwrap();
    assert_eq!(b.of("api").unwrap().available, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_paused_redis_times_out_and_a_dead_one_is_unavailable() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::connect(&RedisTarget::Single(server.url()), Keyspace::default(), 100)
        .await
        .unwrap();
    server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]).unwrap();
    let started = Instant::now();
    let err = store.reserve(&reserve("acme", "h1", 1)).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_retryable());

    let mut server = server;
    server.stop();
    let started = Instant::now();
    let err = store.reserve(&reserve("acme", "h2", 1)).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn credits_returned_to_an_expired_grant_are_breakage() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    let now = store.balance("acme").await.unwrap().at_ms;
    store
        .grant(&grant("acme", "promo", 100, Some(now + 150)))
        .await
        .unwrap();
    store.reserve(&reserve("acme", "h1", 60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expiry = store
        .expire_grant(&GrantRef {
            customer: "acme".into(),
            grant_id: "promo".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(expiry, GrantExpiryOutcome::Expired { amount: 40, .. }),
        "{expiry:?}"
    );
    // The hold settles for 25: 25 burns, the other 35 cannot return to the expired grant.
    let outcome = store.settle(&settle("acme", "h1", 25)).await.unwrap();
    assert!(
        matches!(
            outcome,
            ResolveOutcome::Posted {
                posted: 25,
                returned: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    let shard = store.keyspace().shard_of("acme");
    let events = store.stream_events(shard, 100).await.unwrap();
    let EventBody::HoldPosted {
        burns, breakage, ..
    } = &events.last().unwrap().1.body
    else {
        panic!("last event is not hold_posted: {events:?}");
    };
    assert_eq!((burns[0].amount, breakage[0].amount), (25, 35));
    let b = store.balance("acme").await.unwrap();
    assert!(
        b.grants.is_empty(),
        "the expired grant is gone once nothing is held: {b:?}"
    );
    assert_eq!(b.of("api").unwrap().available, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn amounts_up_to_two_to_the_53_minus_one_are_exact() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store
        .grant(&grant("acme", "big", MAX_AMOUNT, None))
        .await
        .unwrap();
    store
        .reserve(&reserve("acme", "h1", MAX_AMOUNT - 1))
        .await
        .unwrap();
    let b = store.balance("acme").await.unwrap();
    assert_eq!(b.of("api").unwrap().available, 1);
    assert_eq!(b.of("api").unwrap().held, (MAX_AMOUNT - 1) as i64);
    let outcome = store
        .settle(&settle("acme", "h1", MAX_AMOUNT - 2))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            ResolveOutcome::Posted {
                returned: 1,
                available_after: 2,
                ..
            }
        ),
        "{outcome:?}"
    );
    let err = store
        .grant(&grant("acme", "too-big", MAX_AMOUNT + 1, None))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid amount: must be in [1, 9007199254740991], got 9007199254740992"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_scripts_refuse_bad_arguments_themselves() {
    // The OpenResty plugin calls the scripts without the Rust validation: the scripts must
    // refuse bad input with an error naming the argument, before writing anything.
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    let k = store.keyspace().customer("acme");
    let reply = server
        .cli(&[
            "EVALSHA",
            &creditgate_protocol::scripts::SCRIPTS.grant.sha,
            "5",
            &k.grants,
            &k.balance,
            &k.applied,
            &k.grant_expiry,
            &k.events,
            "acme",
            "g1",
            "api",
            "-5",
            "10",
            "0",
            "0",
            "promotion",
            "me",
            "why",
        ])
        .unwrap();
    assert!(
        reply.contains("CG_BADARG amount must be an integer in [1, 9007199254740991], got \"-5\""),
        "{reply}"
    );
    assert_eq!(
        server.cli(&["DBSIZE"]).unwrap().trim(),
        "0",
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_runs_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3).expect("redis cluster");
    let store = RedisStore::connect(
        &RedisTarget::Cluster(cluster.urls()),
        Keyspace::default(),
        2_000,
    )
    .await
    .expect("connect to cluster");
    // Enough customers to land on every shard, and so on every primary.
    let customers: Vec<String> = (0..64).map(|i| format!("cust{i}")).collect();
    let shards: std::collections::HashSet<_> = customers
        .iter()
        .map(|c| store.keyspace().shard_of(c))
        .collect();
    assert_eq!(shards.len(), 16, "the customers cover every shard");
    for c in &customers {
        assert!(matches!(
            store.grant(&grant(c, "g1", 50, None)).await.unwrap(),
            GrantOutcome::Granted { .. }
        ));
        assert!(matches!(
            store
                .reserve(&reserve(c, &format!("{c}-h1"), 30))
                .await
                .unwrap(),
            ReserveOutcome::Placed { .. }
        ));
        assert!(matches!(
            store
                .settle(&settle(c, &format!("{c}-h1"), 20))
                .await
                .unwrap(),
            ResolveOutcome::Posted { posted: 20, .. }
        ));
        store
            .reserve(&reserve(c, &format!("{c}-h2"), 5))
            .await
            .unwrap();
        assert!(matches!(
            store
                .void(&HoldRef {
                    customer: c.clone(),
                    hold_id: format!("{c}-h2")
                })
                .await
                .unwrap(),
            ResolveOutcome::Voided { returned: 5, .. }
        ));
        let mut short = reserve(c, &format!("{c}-h3"), 1);
        short.ttl_ms = 1;
        store.reserve(&short).await.unwrap();
        let now = store.balance(c).await.expect("balance").at_ms;
        // Far enough ahead that a loaded machine still grants it before it expires.
        let g2 = store
            .grant(&grant(c, "g2", 5, Some(now + 1_000)))
            .await
            .unwrap();
        assert!(matches!(g2, GrantOutcome::Granted { .. }), "{g2:?}");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut expired_holds = 0;
    let mut expired_grants = 0;
    let mut not_expired: Vec<String> = Vec::new();
    for shard in store.keyspace().all_shards() {
        let far = u64::MAX >> 12;
        for due in store.due_holds(shard, far, 100).await.unwrap() {
            let h = HoldRef {
                customer: due.customer,
                hold_id: due.id,
            };
            if matches!(
                store.expire_hold(&h).await.unwrap(),
                ResolveOutcome::Expired { .. }
            ) {
                expired_holds += 1;
            }
        }
        for due in store.due_grants(shard, far, 100).await.unwrap() {
            let g = GrantRef {
                customer: due.customer,
                grant_id: due.id,
            };
            match store.expire_grant(&g).await.unwrap() {
                GrantExpiryOutcome::Expired { .. } => expired_grants += 1,
                other => not_expired.push(format!("{g:?}: {other:?}")),
            }
        }
        assert!(!store.stream_events(shard, 10).await.unwrap().is_empty());
    }
    assert_eq!(
        (expired_holds, expired_grants),
        (64, 64),
        "not expired: {not_expired:?}"
    );
    for c in &customers {
        let b = store.balance(c).await.unwrap();
        let api = b.of("api").unwrap();
        assert_eq!((api.available, api.held), (30, 0), "{c}: {b:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn restore_replaces_a_customers_state_and_refuses_while_holds_are_pending() {
    use creditgate_protocol::{RestoreOutcome, RestoreState, RestoredGrant};
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("acme", "old", 10, None)).await.unwrap();
    store.reserve(&reserve("acme", "h1", 4)).await.unwrap();
    let now = store.balance("acme").await.unwrap().at_ms;
    let state = RestoreState {
        customer: "acme".into(),
        grants: vec![
            RestoredGrant {
                grant_id: "g1".into(),
                credit_type: "api".into(),
                remaining: 7,
                priority: 10,
                expires_at_ms: Some(now + 60_000),
                cost_basis: 0,
                created_ms: now,
            },
            RestoredGrant {
                grant_id: "g2".into(),
                credit_type: "api".into(),
                remaining: 5,
                priority: 10,
                expires_at_ms: None,
                cost_basis: 100,
                created_ms: now,
            },
        ],
        debts: vec![("api".into(), 2)],
        applied: vec![
            ("g1".into(), "api".into(), 9),
            ("g2".into(), "api".into(), 5),
        ],
        ledger_position: None,
        resolved_holds: Vec::new(),
    };
    let busy = store.restore(&state).await.unwrap();
    assert!(
        matches!(
            busy,
            RestoreOutcome::Busy {
                pending_holds: 1,
                ..
            }
        ),
        "{busy:?}"
    );
    store
        .void(&HoldRef {
            customer: "acme".into(),
            hold_id: "h1".into(),
        })
        .await
        .unwrap();
    // The fence: the ledger has recorded none of acme's events, so restoring would count
    // state the ledger lacks.
    let behind = store.restore(&state).await.unwrap();
    let newest = newest_stream_id(&server, store.keyspace().shard_of("acme")).await;
    assert_eq!(
        behind,
        RestoreOutcome::Behind {
            at_ms: match behind {
                RestoreOutcome::Behind { at_ms, .. } => at_ms,
                _ => 0,
            },
            redis_position: newest.clone(),
        }
    );
    // Once the ledger's position reaches acme's newest event, restore goes ahead.
    let state = RestoreState {
        ledger_position: Some(newest),
        ..state
    };
    let restored = store.restore(&state).await.unwrap();
    assert!(
        matches!(restored, RestoreOutcome::Restored { grants: 2, .. }),
        "{restored:?}"
    );
    let b = store.balance("acme").await.unwrap();
    let api = b.of("api").unwrap();
    assert_eq!(
        (api.available, api.held, api.debt, api.book_available),
        (10, 0, 2, 10)
    );
    assert_eq!(
        b.grants
            .iter()
            .map(|g| g.grant_id.as_str())
            .collect::<Vec<_>>(),
        ["g1", "g2"]
    );
    // Applied ids survive: re-delivering g1 is a duplicate, not a second grant.
    let again = store.grant(&grant("acme", "g1", 9, None)).await.unwrap();
    assert!(matches!(again, GrantOutcome::Duplicate { .. }), "{again:?}");
    // The old grant is gone, and so is its expiry-index entry; g1's is there.
    let shard = store.keyspace().shard_of("acme");
    let due: Vec<_> = store.due_grants(shard, u64::MAX >> 12, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["g1"]
    );
}

/// Redis came back from before a hold's settle: the hold is pending again there while the
/// ledger has it posted. Restore closes it as the ledger has it, so neither the sweeper
/// nor the gateway resolves it a second time.
#[tokio::test(flavor = "current_thread")]
async fn restore_closes_holds_the_ledger_resolved_without_resolving_them_again() {
    use creditgate_protocol::{RestoreOutcome, RestoreState, RestoredGrant};
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("acme", "g1", 10, None)).await.unwrap();
    store.reserve(&reserve("acme", "h1", 4)).await.unwrap();
    let shard = store.keyspace().shard_of("acme");
    let state = RestoreState {
        customer: "acme".into(),
        grants: vec![RestoredGrant {
            grant_id: "g1".into(),
            credit_type: "api".into(),
            remaining: 7,
            priority: 10,
            expires_at_ms: None,
            cost_basis: 0,
            created_ms: 1,
        }],
        debts: Vec::new(),
        applied: vec![("g1".into(), "api".into(), 10)],
        ledger_position: Some(newest_stream_id(&server, shard).await),
        resolved_holds: vec![("h1".into(), "posted".into(), 3)],
    };
    let restored = store.restore(&state).await.unwrap();
    assert!(
        matches!(restored, RestoreOutcome::Restored { grants: 1, .. }),
        "{restored:?}"
    );
    let api = store.balance("acme").await.unwrap();
    let api = api.of("api").unwrap();
    assert_eq!((api.available, api.held), (7, 0));
    assert!(
        store
            .due_holds(shard, u64::MAX >> 12, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.settle(&settle("acme", "h1", 4)).await.unwrap();
    assert!(
        matches!(again, ResolveOutcome::AlreadyPosted { posted: 3, .. }),
        "{again:?}"
    );
}
