//! Unit tests of the reference model's semantics: burn order, the hold life cycle,
//! overdraft, idempotency and expiry. No server; time is passed explicitly.

use creditgate_protocol::{
    Draw, GrantExpiryOutcome, GrantOutcome, GrantRef, GrantRequest, GrantSource, HoldRef,
    HoldState, Keyspace, Model, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};

const T0: u64 = 1_800_000_000_000;

struct Grant<'a> {
    id: &'a str,
    amount: u64,
    priority: u32,
    expires_at_ms: Option<u64>,
    cost_basis: u64,
}

impl Grant<'_> {
    fn request(&self) -> GrantRequest {
        GrantRequest {
            customer: "acme".into(),
            grant_id: self.id.into(),
            credit_type: "api".into(),
            amount: self.amount,
            priority: self.priority,
            expires_at_ms: self.expires_at_ms,
            cost_basis: self.cost_basis,
            source: if self.cost_basis > 0 {
                GrantSource::Purchase
            } else {
                GrantSource::Promotion
            },
            actor: "sales@example.com".into(),
            reason: "test".into(),
        }
    }
}

fn plain(id: &str, amount: u64) -> Grant<'_> {
    Grant {
        id,
        amount,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
    }
}

fn reserve(hold_id: &str, amount: u64, overdraft_limit: u64) -> ReserveRequest {
    ReserveRequest {
        customer: "acme".into(),
        hold_id: hold_id.into(),
        credit_type: "api".into(),
        amount,
        ttl_ms: 1_000,
        overdraft_limit,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "POST /v1/chat".into(),
        feature: "chat".into(),
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

fn draws(list: &[(&str, u64)]) -> Vec<Draw> {
    list.iter()
        .map(|(g, a)| Draw {
            grant_id: g.to_string(),
            amount: *a,
        })
        .collect()
}

fn placed_draws(outcome: ReserveOutcome) -> Vec<Draw> {
    match outcome {
        ReserveOutcome::Placed { hold, .. } => hold.draws,
        other => panic!("expected a placed hold, got {other:?}"),
    }
}

fn available(m: &Model, now: u64) -> i64 {
    m.balance(now, "acme")
        .of("api")
        .map(|t| t.available)
        .unwrap_or(0)
}

fn model() -> Model {
    Model::new(Keyspace::default())
}

#[test]
fn burn_order_is_priority_then_expiry_then_free_then_oldest() {
    let mut m = model();
    // Granted in an order that is none of the burn orders.
    m.grant(T0, &plain("paid-old", 10).request());
    m.grant(
        T0 + 1,
        &Grant {
            cost_basis: 500,
            ..plain("paid-new", 10)
        }
        .request(),
    );
    m.grant(T0 + 2, &plain("free-new", 10).request());
    m.grant(
        T0 + 3,
        &Grant {
            expires_at_ms: Some(T0 + 10_000),
            ..plain("expires-late", 10)
        }
        .request(),
    );
    m.grant(
        T0 + 4,
        &Grant {
            expires_at_ms: Some(T0 + 5_000),
            ..plain("expires-soon", 10)
        }
        .request(),
    );
    m.grant(
        T0 + 5,
        &Grant {
            priority: 0,
            ..plain("first", 10)
        }
        .request(),
    );
    let d = placed_draws(m.reserve(T0 + 10, &reserve("h1", 60, 0)));
    assert_eq!(
        d,
        draws(&[
            ("first", 10),        // lowest priority value
            ("expires-soon", 10), // then soonest expiry
            ("expires-late", 10),
            ("paid-old", 10), // never expiring: free before paid, then oldest
            ("free-new", 10),
            ("paid-new", 10),
        ])
    );
}

#[test]
fn burn_order_ties_break_on_grant_id() {
    let mut m = model();
    m.grant(T0, &plain("b", 5).request());
    m.grant(T0, &plain("a", 5).request());
    let d = placed_draws(m.reserve(T0 + 1, &reserve("h1", 7, 0)));
    assert_eq!(d, draws(&[("a", 5), ("b", 2)]));
}

#[test]
fn a_grant_past_its_expiry_is_not_drawn_before_the_sweeper_runs() {
    let mut m = model();
    m.grant(
        T0,
        &Grant {
            expires_at_ms: Some(T0 + 100),
            ..plain("promo", 50)
        }
        .request(),
    );
    m.grant(T0, &plain("paid", 5).request());
    let outcome = m.reserve(T0 + 100, &reserve("h1", 10, 0));
    assert_eq!(
        outcome,
        ReserveOutcome::Insufficient {
            at_ms: T0 + 100,
            available: 5
        }
    );
    let b = m.balance(T0 + 100, "acme");
    assert_eq!(b.of("api").unwrap().available, 5);
    assert_eq!(
        b.of("api").unwrap().book_available,
        55,
        "the book still counts it"
    );
}

#[test]
fn posting_less_than_held_returns_the_rest_exactly_once() {
    let mut m = model();
    m.grant(T0, &plain("g1", 100).request());
    m.reserve(T0, &reserve("h1", 40, 0));
    assert_eq!(available(&m, T0), 60);
    let outcome = m.settle(T0 + 1, &settle("h1", 25, 0));
    assert_eq!(
        outcome,
        ResolveOutcome::Posted {
            at_ms: T0 + 1,
            posted: 25,
            shortfall: 0,
            returned: 15,
            available_after: 75
        }
    );
    // A second resolution of any kind is a distinct outcome that changes nothing.
    assert_eq!(
        m.settle(T0 + 2, &settle("h1", 25, 0)),
        ResolveOutcome::AlreadyPosted {
            at_ms: T0 + 2,
            posted: 25
        }
    );
    assert_eq!(
        m.void(T0 + 2, &hold("h1")),
        ResolveOutcome::AlreadyPosted {
            at_ms: T0 + 2,
            posted: 25
        }
    );
    assert_eq!(
        m.expire_hold(T0 + 5_000, &hold("h1")),
        ResolveOutcome::AlreadyPosted {
            at_ms: T0 + 5_000,
            posted: 25
        }
    );
    assert_eq!(available(&m, T0 + 2), 75);
    let record = m.hold(T0 + 2, &hold("h1")).unwrap();
    assert_eq!((record.state, record.posted), (HoldState::Posted, 25));
}

#[test]
fn void_returns_everything_and_then_is_final() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    m.reserve(T0, &reserve("h1", 10, 0));
    assert_eq!(
        m.void(T0 + 1, &hold("h1")),
        ResolveOutcome::Voided {
            at_ms: T0 + 1,
            returned: 10
        }
    );
    assert_eq!(
        m.settle(T0 + 2, &settle("h1", 10, 0)),
        ResolveOutcome::AlreadyVoided { at_ms: T0 + 2 }
    );
    assert_eq!(available(&m, T0 + 2), 10);
}

#[test]
fn a_hold_expires_only_after_its_deadline() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    m.reserve(T0, &reserve("h1", 4, 0));
    assert_eq!(
        m.expire_hold(T0 + 999, &hold("h1")),
        ResolveOutcome::NotDue {
            at_ms: T0 + 999,
            deadline_ms: T0 + 1_000
        }
    );
    assert_eq!(
        m.due_holds(Keyspace::default().shard_of("acme"), T0 + 999, 10),
        vec![]
    );
    assert_eq!(
        m.due_holds(Keyspace::default().shard_of("acme"), T0 + 1_000, 10)
            .len(),
        1
    );
    assert_eq!(
        m.expire_hold(T0 + 1_000, &hold("h1")),
        ResolveOutcome::Expired {
            at_ms: T0 + 1_000,
            returned: 4
        }
    );
    assert_eq!(
        m.void(T0 + 1_001, &hold("h1")),
        ResolveOutcome::AlreadyExpired { at_ms: T0 + 1_001 }
    );
    assert_eq!(
        m.due_holds(Keyspace::default().shard_of("acme"), u64::MAX, 10),
        vec![]
    );
    assert_eq!(available(&m, T0 + 1_001), 10);
    // A settle that comes after the expiry still charges the request: a late burn.
    assert_eq!(
        m.settle(T0 + 1_002, &settle("h1", 4, 0)),
        ResolveOutcome::PostedLate {
            at_ms: T0 + 1_002,
            posted: 4,
            shortfall: 0,
            available_after: 6
        }
    );
    assert_eq!(available(&m, T0 + 1_002), 6);
}

#[test]
fn unknown_holds_and_other_customers_holds_are_unknown() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    m.reserve(T0, &reserve("h1", 4, 0));
    assert_eq!(
        m.void(T0, &hold("nope")),
        ResolveOutcome::Unknown { at_ms: T0 }
    );
    let other = HoldRef {
        customer: "globex".into(),
        hold_id: "h1".into(),
    };
    assert_eq!(m.void(T0, &other), ResolveOutcome::Unknown { at_ms: T0 });
}

#[test]
fn reserve_is_idempotent_by_hold_id() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    let first = placed_draws(m.reserve(T0, &reserve("h1", 4, 0)));
    let again = m.reserve(T0 + 5, &reserve("h1", 4, 0));
    let ReserveOutcome::Replay { state, hold, .. } = again else {
        panic!("{again:?}")
    };
    assert_eq!((state, hold.draws), (HoldState::Pending, first));
    assert_eq!(available(&m, T0 + 5), 6, "the retry took nothing");
    m.settle(T0 + 6, &settle("h1", 3, 0));
    let ReserveOutcome::Replay { state, .. } = m.reserve(T0 + 7, &reserve("h1", 4, 0)) else {
        panic!()
    };
    assert_eq!(state, HoldState::Posted);
    assert_eq!(
        m.reserve(T0 + 8, &reserve("h1", 5, 0)),
        ReserveOutcome::Conflict {
            at_ms: T0 + 8,
            first_credit_type: "api".into(),
            first_amount: 4
        }
    );
}

#[test]
fn refusal_leaves_nothing_behind_so_a_retry_after_top_up_succeeds() {
    let mut m = model();
    m.grant(T0, &plain("g1", 3).request());
    assert_eq!(
        m.reserve(T0, &reserve("h1", 5, 0)),
        ReserveOutcome::Insufficient {
            at_ms: T0,
            available: 3
        }
    );
    assert!(m.hold(T0, &hold("h1")).is_none());
    m.grant(T0 + 1, &plain("g2", 3).request());
    assert!(matches!(
        m.reserve(T0 + 2, &reserve("h1", 5, 0)),
        ReserveOutcome::Placed { .. }
    ));
}

#[test]
fn overdraft_lets_the_balance_go_negative_up_to_the_limit() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    assert_eq!(
        m.reserve(T0, &reserve("h1", 16, 5)),
        ReserveOutcome::Insufficient {
            at_ms: T0,
            available: 10
        }
    );
    let ReserveOutcome::Placed {
        hold: placed,
        available_after,
        ..
    } = m.reserve(T0, &reserve("h1", 15, 5))
    else {
        panic!()
    };
    assert_eq!((placed.overdraft, available_after), (5, -5));
    m.settle(T0 + 1, &settle("h1", 15, 5));
    let b = m.balance(T0 + 1, "acme");
    let api = b.of("api").unwrap();
    assert_eq!((api.available, api.debt, api.held), (-5, 5, 0));
    // The next grant repays the debt first.
    assert_eq!(
        m.grant(T0 + 2, &plain("g2", 8).request()),
        GrantOutcome::Granted {
            at_ms: T0 + 2,
            debt_repaid: 5
        }
    );
    assert_eq!(available(&m, T0 + 2), 3);
}

#[test]
fn settling_more_than_held_takes_the_rest_or_reports_the_shortfall() {
    let mut m = model();
    m.grant(T0, &plain("g1", 20).request());
    m.reserve(T0, &reserve("h1", 5, 0));
    // 5 held + 15 available + 3 overdraft = 23 of the 30 asked.
    assert_eq!(
        m.settle(T0 + 1, &settle("h1", 30, 3)),
        ResolveOutcome::Posted {
            at_ms: T0 + 1,
            posted: 23,
            shortfall: 7,
            returned: 0,
            available_after: -3
        }
    );
    let api = m.balance(T0 + 1, "acme").of("api").cloned().unwrap();
    assert_eq!((api.available, api.debt), (-3, 3));
}

#[test]
fn force_places_a_hold_past_the_limit_and_says_so() {
    let mut m = model();
    m.grant(T0, &plain("g1", 2).request());
    let mut r = reserve("h1", 10, 0);
    r.force = true;
    let ReserveOutcome::Placed {
        hold: placed,
        available_after,
        ..
    } = m.reserve(T0, &r)
    else {
        panic!()
    };
    assert!(placed.over_limit);
    assert_eq!((placed.overdraft, available_after), (8, -8));
}

#[test]
fn grants_are_idempotent_by_id_and_refuse_past_expiry() {
    let mut m = model();
    assert!(matches!(
        m.grant(T0, &plain("g1", 10).request()),
        GrantOutcome::Granted { .. }
    ));
    assert_eq!(
        m.grant(T0 + 1, &plain("g1", 10).request()),
        GrantOutcome::Duplicate { at_ms: T0 + 1 }
    );
    assert_eq!(
        m.grant(T0 + 1, &plain("g1", 11).request()),
        GrantOutcome::Conflict {
            at_ms: T0 + 1,
            first_credit_type: "api".into(),
            first_amount: 10
        }
    );
    assert_eq!(available(&m, T0 + 1), 10);
    assert_eq!(
        m.grant(
            T0 + 1,
            &Grant {
                expires_at_ms: Some(T0 + 1),
                ..plain("late", 5)
            }
            .request()
        ),
        GrantOutcome::AlreadyExpired { at_ms: T0 + 1 }
    );
}

#[test]
fn grant_expiry_takes_only_the_unheld_rest() {
    let mut m = model();
    let g = GrantRef {
        customer: "acme".into(),
        grant_id: "promo".into(),
    };
    m.grant(
        T0,
        &Grant {
            expires_at_ms: Some(T0 + 100),
            ..plain("promo", 50)
        }
        .request(),
    );
    m.reserve(T0, &reserve("h1", 20, 0));
    assert_eq!(
        m.expire_grant(T0 + 99, &g),
        GrantExpiryOutcome::NotDue {
            at_ms: T0 + 99,
            expires_at_ms: T0 + 100
        }
    );
    assert_eq!(
        m.expire_grant(T0 + 100, &g),
        GrantExpiryOutcome::Expired {
            at_ms: T0 + 100,
            amount: 30
        }
    );
    assert_eq!(
        m.expire_grant(T0 + 101, &g),
        GrantExpiryOutcome::AlreadyExpired { at_ms: T0 + 101 }
    );
    // The hold still posts from the expired grant's held credits.
    assert!(matches!(
        m.settle(T0 + 102, &settle("h1", 20, 0)),
        ResolveOutcome::Posted {
            posted: 20,
            returned: 0,
            ..
        }
    ));
    assert!(m.balance(T0 + 102, "acme").grants.is_empty());
    assert_eq!(
        m.expire_grant(T0 + 103, &g),
        GrantExpiryOutcome::Unknown { at_ms: T0 + 103 }
    );
}

#[test]
fn every_mutation_appends_one_event_with_a_stable_id() {
    let mut m = model();
    m.grant(T0, &plain("g1", 10).request());
    m.reserve(T0, &reserve("h1", 4, 0));
    m.reserve(T0, &reserve("h1", 4, 0)); // replay: no event
    m.reserve(T0, &reserve("h2", 40, 0)); // refused: no event
    m.settle(T0 + 1, &settle("h1", 3, 0));
    m.settle(T0 + 1, &settle("h1", 3, 0)); // already posted: no event
    let ids: Vec<_> = m
        .events(Keyspace::default().shard_of("acme"))
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    // Every event of a hold carries its placement time (the nonce) in its id.
    assert_eq!(
        ids,
        [
            "grant:g1:added".to_string(),
            format!("hold:h1:{T0}:placed"),
            format!("hold:h1:{T0}:posted")
        ]
    );
}

#[test]
fn a_hold_placed_again_after_its_record_is_gone_has_new_event_ids() {
    let mut m = model();
    m.grant(T0, &plain("g1", 100).request());
    m.reserve(T0, &reserve("h1", 4, 0));
    m.settle(T0 + 1, &settle("h1", 3, 0));
    // The record is pruned once its retention is over; the same id is placed again, for
    // another amount, and voided.
    m.prune(T0 + 1_000, 500, 100);
    assert!(m.hold(T0 + 1_000, &hold("h1")).is_none());
    let t1 = T0 + 2_000;
    m.reserve(t1, &reserve("h1", 7, 0));
    m.void(t1 + 1, &hold("h1"));
    let ids: Vec<_> = m
        .events(Keyspace::default().shard_of("acme"))
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            "grant:g1:added".to_string(),
            format!("hold:h1:{T0}:placed"),
            format!("hold:h1:{T0}:posted"),
            format!("hold:h1:{t1}:placed"),
            format!("hold:h1:{t1}:voided"),
        ]
    );
}

#[tokio::test]
async fn a_sweep_expires_due_holds_and_grants_on_the_memory_store() {
    use creditgate_protocol::{CreditStore, MemoryStore, sweep_once};
    let keyspace = Keyspace::default();
    let store = MemoryStore::new(keyspace.clone());
    let now = store.balance("acme").await.unwrap().at_ms;
    store
        .grant(
            &Grant {
                expires_at_ms: Some(now + 30),
                ..plain("promo", 50)
            }
            .request(),
        )
        .await
        .unwrap();
    store.grant(&plain("paid", 10).request()).await.unwrap();
    let mut short = reserve("h1", 20, 0);
    short.ttl_ms = 10;
    store.reserve(&short).await.unwrap();
    store.reserve(&reserve("h2", 5, 0)).await.unwrap();
    // Nothing is due yet.
    let report = sweep_once(&store, &keyspace, now, 100).await.unwrap();
    assert_eq!(report, Default::default());
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    let report = sweep_once(&store, &keyspace, now + 40, 100).await.unwrap();
    // h1 (20 from promo) returned, then promo's 25 unheld credits expired; h2 holds 5 more.
    assert_eq!(report.holds_expired, 1);
    assert_eq!(report.credits_returned, 20);
    assert_eq!(report.grants_expired, 1);
    assert_eq!(report.credits_expired, 45);
    let api = store
        .balance("acme")
        .await
        .unwrap()
        .of("api")
        .cloned()
        .unwrap();
    assert_eq!((api.available, api.held), (10, 5));
}

#[test]
fn pruning_drops_old_resolved_holds_and_old_events_only() {
    let mut m = model();
    m.grant(T0, &plain("g1", 100).request());
    m.reserve(T0, &reserve("h1", 1, 0));
    m.settle(T0, &settle("h1", 1, 0));
    m.reserve(T0, &reserve("h2", 1, 0)); // still pending
    m.prune(T0 + 1_000, 500, 2);
    assert!(
        m.hold(T0 + 1_000, &hold("h1")).is_none(),
        "resolved and past retention"
    );
    assert!(
        m.hold(T0 + 1_000, &hold("h2")).is_some(),
        "pending holds are kept"
    );
    let ids: Vec<_> = m
        .events(Keyspace::default().shard_of("acme"))
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            format!("hold:h1:{T0}:posted"),
            format!("hold:h2:{T0}:placed")
        ],
        "the newest two events remain"
    );
    assert_eq!(available(&m, T0 + 1_000), 98);
}

/// One random step of a seeded run: the outcome passes its own checks.
fn random_step(
    m: &mut Model,
    rng: &mut rand::rngs::StdRng,
    now: u64,
    n: u32,
) -> Result<(), String> {
    use creditgate_protocol::invariants::{
        check_expire_hold, check_grant, check_grant_expiry, check_reserve, check_settle, check_void,
    };
    use rand::Rng;
    let h = hold(&format!("h{}", rng.random_range(0..n.max(1))));
    let limit = [0, 0, 40][rng.random_range(0..3)];
    let checked = match rng.random_range(0..6) {
        0 => {
            let mut g = plain("g", rng.random_range(1..200)).request();
            g.grant_id = format!("g{n}");
            g.priority = rng.random_range(0..3);
            g.expires_at_ms = rng
                .random_bool(0.5)
                .then(|| now + rng.random_range(1..5_000));
            check_grant(&g, &m.grant(now, &g))
        }
        1 | 2 => {
            let mut r = reserve(&format!("h{n}"), rng.random_range(0..150), limit);
            r.force = rng.random_bool(0.2);
            check_reserve(&r, &m.reserve(now, &r))
        }
        3 => {
            let s = settle(&h.hold_id, rng.random_range(0..300), limit);
            check_settle(&s, &m.settle(now, &s))
        }
        4 => check_void(&h, &m.void(now, &h)),
        _ if rng.random_bool(0.5) => check_expire_hold(&h, &m.expire_hold(now, &h)),
        _ => {
            let g = GrantRef {
                customer: "acme".into(),
                grant_id: format!("g{}", rng.random_range(0..n.max(1))),
            };
            check_grant_expiry(&g, &m.expire_grant(now, &g))
        }
    };
    checked
        .and_then(|()| m.check_customer(now, "acme"))
        .map_err(|e| e.to_string())
}

#[test]
fn the_models_money_invariants_hold_through_seeded_random_runs() {
    use rand::SeedableRng;
    for seed in 0..300u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut m = model();
        let mut now = T0;
        for n in 0..60 {
            now += 1 + n as u64 * 37 % 700;
            if let Err(e) = random_step(&mut m, &mut rng, now, n) {
                panic!("seed {seed} step {n}: {e}");
            }
        }
    }
}
