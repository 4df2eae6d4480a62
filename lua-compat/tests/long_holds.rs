//! Requests that outlive their hold, against a real `redis-server`: `extend` moves a
//! pending hold's deadline (and nothing else), answers a typed outcome for a hold that is
//! not pending, and a settle that finds its hold expired still charges it, once, as a late
//! burn (into overdraft if it must).

use std::time::Duration;

use creditgate_protocol::{
    Balance, CreditStore, EventBody, ExtendOutcome, ExtendRequest, GrantRequest, GrantSource,
    HoldRef, HoldState, Keyspace, RedisStore, RedisTarget, ReserveOutcome, ReserveRequest,
    ResolveOutcome, SettleRequest,
};
use creditgate_testkit::RedisServer;

fn grant(id: &str, amount: u64) -> GrantRequest {
    GrantRequest {
        customer: "acme".into(),
        grant_id: id.into(),
        credit_type: "api".into(),
        amount,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::Promotion,
        actor: "test".into(),
        reason: "long holds".into(),
    }
}

fn reserve(hold_id: &str, amount: u64, ttl_ms: u64) -> ReserveRequest {
    ReserveRequest {
        customer: "acme".into(),
        hold_id: hold_id.into(),
        credit_type: "api".into(),
        amount,
        ttl_ms,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "GET /v1/stream".into(),
        feature: "stream".into(),
        retain_ms: 86_400_000,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}

fn settle(hold_id: &str, actual: u64, overdraft_limit: u64) -> SettleRequest {
    SettleRequest {
        customer: "acme".into(),
        hold_id: hold_id.into(),
        actual,
        overdraft_limit,
    }
}

fn hold(hold_id: &str) -> HoldRef {
    HoldRef {
        customer: "acme".into(),
        hold_id: hold_id.into(),
    }
}

fn extend(hold_id: &str, ttl_ms: u64) -> ExtendRequest {
    ExtendRequest {
        customer: "acme".into(),
        hold_id: hold_id.into(),
        ttl_ms,
    }
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

async fn place(store: &RedisStore, req: &ReserveRequest) -> u64 {
    match store.reserve(req).await.unwrap() {
        ReserveOutcome::Placed { hold, .. } => hold.deadline_ms,
        other => panic!("not placed: {other:?}"),
    }
}

/// Places `hold_id` with a 1 ms deadline and lets the sweeper's call expire it.
async fn place_and_expire(store: &RedisStore, hold_id: &str, amount: u64) {
    place(store, &reserve(hold_id, amount, 1)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expired = store.expire_hold(&hold(hold_id)).await.unwrap();
    assert!(
        matches!(expired, ResolveOutcome::Expired { .. }),
        "{expired:?}"
    );
}

async fn events(store: &RedisStore) -> Vec<EventBody> {
    let shard = store.keyspace().shard_of("acme");
    store
        .stream_events(shard, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.body)
        .collect()
}

fn available(b: &Balance) -> i64 {
    b.types
        .iter()
        .find(|t| t.credit_type == "api")
        .unwrap()
        .available
}

#[tokio::test(flavor = "current_thread")]
async fn extend_moves_the_deadline_of_a_pending_hold() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("g1", 10)).await.unwrap();
    let placed_deadline = place(&store, &reserve("h1", 4, 200)).await;
    let events_before = events(&store).await.len();

    let ExtendOutcome::Extended { at_ms, deadline_ms } =
        store.extend(&extend("h1", 60_000)).await.unwrap()
    else {
        panic!("not extended");
    };
    assert!(deadline_ms >= at_ms + 60_000 && deadline_ms > placed_deadline);
    let record = store.hold(&hold("h1")).await.unwrap().unwrap();
    assert_eq!(record.deadline_ms, deadline_ms);
    assert_eq!(record.state, HoldState::Pending);

    // Past the first deadline the sweeper finds nothing due, and expiring it is refused.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let shard = store.keyspace().shard_of("acme");
    let due = store.due_holds(shard, at_ms + 1_000, 10).await.unwrap();
    assert!(due.is_empty(), "{due:?}");
    let not_due = store.expire_hold(&hold("h1")).await.unwrap();
    assert!(
        matches!(not_due, ResolveOutcome::NotDue { deadline_ms: d, .. } if d == deadline_ms),
        "{not_due:?}"
    );

    // A shorter extension never moves the deadline earlier.
    let again = store.extend(&extend("h1", 10)).await.unwrap();
    assert!(
        matches!(again, ExtendOutcome::Extended { deadline_ms: d, .. } if d == deadline_ms),
        "{again:?}"
    );
    // Extending changes no credits and appends no event.
    assert_eq!(events(&store).await.len(), events_before);
    assert_eq!(available(&store.balance("acme").await.unwrap()), 6);
}

#[tokio::test(flavor = "current_thread")]
async fn extend_on_a_hold_that_is_not_pending_is_a_typed_outcome() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("g1", 10)).await.unwrap();
    place(&store, &reserve("posted", 2, 60_000)).await;
    store.settle(&settle("posted", 2, 0)).await.unwrap();
    place(&store, &reserve("voided", 2, 60_000)).await;
    store.void(&hold("voided")).await.unwrap();
    place_and_expire(&store, "expired", 2).await;

    let outcome = |o: ExtendOutcome| match o {
        ExtendOutcome::NotPending(r) => r,
        other => panic!("extended a hold that is not pending: {other:?}"),
    };
    assert!(matches!(
        outcome(store.extend(&extend("posted", 60_000)).await.unwrap()),
        ResolveOutcome::AlreadyPosted { posted: 2, .. }
    ));
    assert!(matches!(
        outcome(store.extend(&extend("voided", 60_000)).await.unwrap()),
        ResolveOutcome::AlreadyVoided { .. }
    ));
    assert!(matches!(
        outcome(store.extend(&extend("expired", 60_000)).await.unwrap()),
        ResolveOutcome::AlreadyExpired { .. }
    ));
    assert!(matches!(
        outcome(store.extend(&extend("never-placed", 60_000)).await.unwrap()),
        ResolveOutcome::Unknown { .. }
    ));
    // Another customer's hold is unknown, and stays expired.
    let other = ExtendRequest {
        customer: "globex".into(),
        ..extend("expired", 60_000)
    };
    assert!(matches!(
        outcome(store.extend(&other).await.unwrap()),
        ResolveOutcome::Unknown { .. }
    ));
    let shard = store.keyspace().shard_of("acme");
    assert!(
        store
            .due_holds(shard, u64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_settle_after_expiry_posts_a_late_burn_exactly_once() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("g1", 10)).await.unwrap();
    place_and_expire(&store, "h1", 4).await;
    assert_eq!(available(&store.balance("acme").await.unwrap()), 10);

    let late = store.settle(&settle("h1", 4, 0)).await.unwrap();
    assert!(
        matches!(
            late,
            ResolveOutcome::PostedLate {
                posted: 4,
                shortfall: 0,
                available_after: 6,
                ..
            }
        ),
        "{late:?}"
    );
    // A retried settle finds it posted: never a second burn.
    let again = store.settle(&settle("h1", 4, 0)).await.unwrap();
    assert!(
        matches!(again, ResolveOutcome::AlreadyPosted { posted: 4, .. }),
        "{again:?}"
    );
    let record = store.hold(&hold("h1")).await.unwrap().unwrap();
    assert_eq!((record.state, record.posted), (HoldState::Posted, 4));
    assert_eq!(available(&store.balance("acme").await.unwrap()), 6);

    let posted: Vec<EventBody> = events(&store)
        .await
        .into_iter()
        .filter(|e| matches!(e, EventBody::HoldPosted { .. }))
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let EventBody::HoldPosted {
        held,
        posted,
        burns,
        overdraft,
        late,
        ..
    } = &posted[0]
    else {
        unreachable!()
    };
    assert!(*late);
    assert_eq!((*held, *posted, *overdraft), (0, 4, 0));
    assert_eq!(burns.len(), 1);
    assert_eq!((burns[0].grant_id.as_str(), burns[0].amount), ("g1", 4));
}

#[tokio::test(flavor = "current_thread")]
async fn a_late_burn_goes_into_overdraft_up_to_what_was_held() {
    let server = RedisServer::start().expect("redis-server");
    let store = connect(&server).await;
    store.grant(&grant("g1", 5)).await.unwrap();
    place_and_expire(&store, "long", 4).await;
    // Meanwhile the customer spent everything on other requests.
    place(&store, &reserve("other", 5, 60_000)).await;
    store.settle(&settle("other", 5, 0)).await.unwrap();
    assert_eq!(available(&store.balance("acme").await.unwrap()), 0);

    // What was held (admitted when the request started) burns past the overdraft limit;
    // above it only what the limit allows, the rest is a shortfall.
    let late = store.settle(&settle("long", 7, 1)).await.unwrap();
    assert!(
        matches!(
            late,
            ResolveOutcome::PostedLate {
                posted: 4,
                shortfall: 3,
                available_after: -4,
                ..
            }
        ),
        "{late:?}"
    );
    let b = store.balance("acme").await.unwrap();
    let api = b.types.iter().find(|t| t.credit_type == "api").unwrap();
    assert_eq!((api.available, api.debt), (-4, 4));
}
