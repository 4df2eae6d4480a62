//! Redis coming back behind the ledger with its generation marker (a lagging replica
//! promoted, a crash that lost the last second of an AOF): the real sidecar binary between
//! a real Redis and an SQLite ledger must notice from the shards' event sequence and
//! rebuild from the ledger, closing the holds the ledger already resolved instead of
//! expiring them a second time.
//!
//! The rollback is simulated inside one Redis: every key is copied aside (`COPY`, in one
//! script, so the snapshot is consistent), traffic goes on and reaches the ledger, then
//! every key is replaced by its copy in one script, generation markers included.
//!
//! Needs `redis-server` and the built binaries: `cargo build -p creditgate-sidecar`.

use std::collections::BTreeSet;
use std::time::Duration;

use creditgate_protocol::{
    CreditStore, GrantOutcome, ReserveOutcome, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::EntryKind;
use creditgate_testkit::{
    Backend, LedgerHarness, grant_request, now_ms, reserve_request, wait_for,
};

/// Copies every key to `snap:<key>`, atomically.
const SNAPSHOT: &str = "for _, k in ipairs(redis.call('KEYS', '*')) do \
     if string.sub(k, 1, 5) ~= 'snap:' then redis.call('COPY', k, 'snap:' .. k, 'REPLACE') end \
     end";

/// Replaces every key by its `snap:` copy (keys made since are deleted), atomically.
const ROLL_BACK: &str = "for _, k in ipairs(redis.call('KEYS', '*')) do \
     if string.sub(k, 1, 5) ~= 'snap:' then redis.call('DEL', k) end \
     end \
     for _, k in ipairs(redis.call('KEYS', 'snap:*')) do \
     redis.call('COPY', k, string.sub(k, 6), 'REPLACE') redis.call('DEL', k) \
     end";

fn settle(h: &LedgerHarness, hold_id: &str, actual: u64) -> ResolveOutcome {
    h.rt.block_on(h.store.settle(&SettleRequest {
        customer: "acme".into(),
        hold_id: hold_id.into(),
        actual,
        overdraft_limit: 0,
    }))
    .expect("settle")
}

#[test]
fn a_rollback_keeping_the_generation_marker_is_detected_and_rebuilt() {
    let h = LedgerHarness::start(Backend::Sqlite);
    let customers: BTreeSet<String> = ["acme".to_string()].into();
    let g = h.grant(&grant_request("acme", "g1", "api", 1_000, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
    let r = h.reserve(&reserve_request("acme", "h-before", "api", 40, 120_000));
    assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
    assert!(matches!(
        settle(&h, "h-before", 30),
        ResolveOutcome::Posted { .. }
    ));
    // Pending when the snapshot is taken, posted after it: the rollback makes it pending
    // again, with a deadline that passes during the test.
    let ttl_ms = 4_000;
    let r = h.reserve(&reserve_request("acme", "h-window", "api", 50, ttl_ms));
    assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
    let window_deadline_ms = now_ms() + ttl_ms;
    h.wait_caught_up();
    wait_for(
        "the generation markers are set",
        Duration::from_secs(5),
        || {
            h.redis
                .cli(&["GET", "cg:{s0}:generation"])
                .unwrap_or_default()
                != ""
        },
        || h.log(),
    );
    h.redis
        .cli(&["EVAL", SNAPSHOT, "0"])
        .expect("snapshot Redis");

    // The lost window: a settle, a burn and a grant that reach the ledger.
    assert!(matches!(
        settle(&h, "h-window", 45),
        ResolveOutcome::Posted { .. }
    ));
    let r = h.reserve(&reserve_request("acme", "h-after", "api", 20, 120_000));
    assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
    assert!(matches!(
        settle(&h, "h-after", 20),
        ResolveOutcome::Posted { .. }
    ));
    let g = h.grant(&grant_request("acme", "g2", "api", 100, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
    h.wait_caught_up();
    let expected = (1_000 + 100 - 30 - 45 - 20, 0);
    assert_eq!(h.redis_available_held("acme", "api"), expected);

    h.redis
        .cli(&["EVAL", ROLL_BACK, "0"])
        .expect("roll Redis back");
    assert_eq!(
        h.redis_available_held("acme", "api"),
        (1_000 - 30 - 50, 50),
        "Redis is back at the snapshot"
    );

    wait_for(
        "Redis behind the ledger is rebuilt from it",
        Duration::from_secs(8),
        || h.redis_available_held("acme", "api") == expected,
        || h.log(),
    );
    assert!(
        h.sidecar()
            .metric("creditgate_reconcile_shards_rebuilt_total", &[])
            >= 1.0
    );
    // The hold the rollback made pending again is closed as the ledger has it: a retried
    // settle is told it was posted, and the sweeper never expires it.
    assert!(
        matches!(
            settle(&h, "h-window", 45),
            ResolveOutcome::AlreadyPosted { posted: 45, .. }
        ),
        "h-window after the rebuild"
    );
    std::thread::sleep(Duration::from_millis(
        window_deadline_ms.saturating_sub(now_ms()) + 2_000,
    ));
    let window: Vec<EntryKind> = h
        .entries_of("acme")
        .iter()
        .filter(|e| e.entry.hold_id.as_deref() == Some("h-window"))
        .map(|e| e.entry.kind)
        .collect();
    assert_eq!(
        window,
        vec![EntryKind::HoldPlaced, EntryKind::HoldPosted],
        "h-window is never both posted and expired"
    );
    assert_eq!(h.redis_available_held("acme", "api"), expected);
    h.assert_totals_match(&customers);

    // Traffic after the rebuild is recorded as before.
    let r = h.reserve(&reserve_request("acme", "h-next", "api", 5, 120_000));
    assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
    assert!(matches!(
        settle(&h, "h-next", 5),
        ResolveOutcome::Posted { .. }
    ));
    wait_for(
        "an event written after the rebuild reaches the ledger",
        Duration::from_secs(5),
        || {
            h.entries_of("acme").iter().any(|e| {
                e.entry.hold_id.as_deref() == Some("h-next")
                    && e.entry.kind == EntryKind::HoldPosted
            })
        },
        || h.log(),
    );
    h.assert_totals_match(&customers);
}
