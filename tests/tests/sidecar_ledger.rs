//! The sidecar end to end: the real `creditgate-sidecar run` binary between a real Redis and
//! a real ledger (an SQLite file, or a Postgres server), with credit traffic driven straight
//! through the protocol library (or through the real gateway binary).
//!
//! Every scenario runs once per ledger backend (`<scenario>::sqlite`,
//! `<scenario>::postgres`). The tests read the ledger back through the sidecar's library on
//! the same file or database, through the sidecar's HTTP API and through its CLI.
//!
//! Needs `redis-server`, PostgreSQL and the built binaries:
//! `cargo build -p creditgate-sidecar -p creditgate-gateway`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::{
    CreditStore, GrantOutcome, ReserveOutcome, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::EntryKind;
use creditgate_testkit::{
    ALICE, ALICE_KEY, Backend, Gateway, GatewayOptions, LedgerHarness, Produced, TYPES, Upstream,
    grant_request, http_client, join_traffic, now_ms, reserve_request, sha256_hex, sidecar_command,
    spawn_traffic, wait_for, without_nonce,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

creditgate_testkit::on_both_backends!(
    every_event_lands_exactly_once_under_load,
    kill_9_at_random_points_loses_and_duplicates_nothing,
    holds_of_a_killed_gateway_expire_and_return_their_credits,
    flushall_is_detected_and_rebuilt_from_the_ledger,
    balance_at_past_instants_and_the_revenue_identity,
    a_ledger_first_grant_survives_a_redis_outage_and_applies_once,
);

// ---------------------------------------------------------------------------------------
// The exactly-once check

/// Whether the ledger has the event `id` (a hold event's without its placement nonce).
fn has_entry(h: &LedgerHarness, id: &str) -> bool {
    h.entries()
        .iter()
        .any(|e| without_nonce(&e.entry.event_id) == id)
}

/// After the traffic: everything swept, everything in the ledger once, balances equal.
fn assert_exactly_once(h: &LedgerHarness, p: &Produced) {
    h.wait_swept(p.last_due_ms + 1);
    let entries = h.wait_caught_up();
    let ids: Vec<&str> = entries.iter().map(|e| e.entry.event_id.as_str()).collect();
    // Each hold is placed once in this traffic, so its events are distinct without their
    // placement nonce too.
    let distinct: BTreeSet<String> = ids.iter().map(|id| without_nonce(id)).collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "an event id is in the ledger twice"
    );
    let missing: Vec<&String> = p
        .expected
        .iter()
        .filter(|id| !distinct.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} produced events missing from the ledger, e.g. {:?}\nsidecar log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        h.log()
    );
    let unexpected: Vec<&str> = distinct
        .iter()
        .map(String::as_str)
        .filter(|id| !p.expected.contains(*id) && !p.may_expire.contains(*id))
        // An overage entry is derived from a posted hold that fell short, not produced by
        // an operation of its own (`wait_caught_up` checks it sits beside its posted hold).
        .filter(|id| !id.ends_with(":overage"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} ledger entries no operation produced, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    h.assert_totals_match(&p.customers);
    let held: i64 = h.ledger_totals().values().map(|(_, held)| held).sum();
    assert_eq!(held, 0, "every hold was resolved");
    h.assert_chain_verifies();
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// 10,000 mixed operations over 50 customers and 2 credit types with the sidecar running:
/// the ledger ends with exactly one entry per stream event and the same balances as Redis.
fn every_event_lands_exactly_once_under_load(backend: Backend) {
    let h = LedgerHarness::start(backend);
    let started = Instant::now();
    let run = spawn_traffic(&h, 4, 50, |t| t.max_ops = 2_500);
    let p = join_traffic(&h, run, false);
    let driven = started.elapsed();
    assert_eq!(p.ops, 10_000);
    assert_exactly_once(&h, &p);
    let (added, _) = h.stream_counts();
    eprintln!(
        "{backend:?}: {} ops ({added} events) driven in {driven:?}, all in the ledger after {:?}",
        p.ops,
        started.elapsed()
    );
    assert!(
        h.sidecar().metric("creditgate_ledger_conflicts_total", &[]) == 0.0
            && h.sidecar().metric("creditgate_ledger_malformed_total", &[]) == 0.0,
        "no conflicts, nothing malformed"
    );
}

/// The sidecar is killed with SIGKILL 20 times at random points (every 150–400 ms) while
/// traffic flows, and restarted each time: afterwards no event is missing or duplicated
/// and nothing is left pending in the group.
fn kill_9_at_random_points_loses_and_duplicates_nothing(backend: Backend) {
    let mut h = LedgerHarness::start(backend);
    let run = spawn_traffic(&h, 3, 30, |t| t.pause = Duration::from_millis(1));
    let mut rng = StdRng::seed_from_u64(0x6b11);
    let mut restarts = Vec::new();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(rng.random_range(150..400)));
        h.sidecar_mut().kill9();
        let t = Instant::now();
        h.sidecar_mut().restart().expect("sidecar restarts");
        restarts.push(t.elapsed());
    }
    let p = join_traffic(&h, run, true);
    assert!(
        p.ops > 1_000,
        "traffic flowed during the kills: {} ops",
        p.ops
    );
    assert_eq!(h.sidecar().starts(), 21);
    assert_exactly_once(&h, &p);
    let (added, pending) = h.stream_counts();
    assert_eq!(pending, 0);
    // How many restarts found entries read but not acknowledged by the killed process.
    let log = std::fs::read_to_string(h.sidecar().log_path()).unwrap_or_default();
    let recoveries = log.matches("recovered pending stream entries").count();
    eprintln!(
        "{backend:?}: {} ops, {added} events through 20 SIGKILLs; restarts took up to {:?}; \
         {recoveries} restarts re-read entries the killed process had not acknowledged",
        p.ops,
        restarts.iter().max().copied().unwrap_or_default(),
    );
}

/// A gateway killed with SIGKILL while its requests wait on a slow upstream leaves pending
/// holds; once their deadline (`hold_ttl_ms` = 1 s) passes the sidecar's sweeper expires
/// them: credits back, nothing held, one `hold_expired` entry per hold.
fn holds_of_a_killed_gateway_expire_and_return_their_credits(backend: Backend) {
    const COST: i64 = 7;
    const REQUESTS: usize = 3;
    const GRANTED: u64 = 100;
    let h = LedgerHarness::start(backend);
    let upstream = Upstream::start().expect("upstream");
    upstream.set_delay(Duration::from_secs(3));
    let mut gateway = Gateway::start(GatewayOptions {
        config_toml: short_hold_config(upstream.addr(), COST),
        redis_url: Some(h.redis.url()),
        ..GatewayOptions::default()
    })
    .expect("gateway starts");
    let g = h.grant(&grant_request(ALICE, "g-alice", "api", GRANTED, None, 0));
    assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");

    let url = format!("{}/search", gateway.proxy_url());
    let clients: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                // The gateway dies under this request: a transport error is the expected end.
                let _ = http_client().get(&url).bearer_auth(ALICE_KEY).send();
            })
        })
        .collect();
    let held = REQUESTS as i64 * COST;
    wait_for(
        "the gateway's holds are placed",
        Duration::from_secs(5),
        || h.redis_available_held(ALICE, "api").1 == held,
        || gateway.log_tail(30),
    );
    let killed_at = now_ms();
    gateway.kill();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(
        h.redis_available_held(ALICE, "api"),
        (GRANTED as i64 - held, held),
        "the holds stay pending after the crash"
    );

    wait_for(
        "the sweeper returns the held credits",
        Duration::from_secs(10),
        || h.redis_available_held(ALICE, "api") == (GRANTED as i64, 0),
        || h.log(),
    );
    let back_after = now_ms() - killed_at;
    wait_for(
        "the expiries reach the ledger",
        Duration::from_secs(10),
        || {
            h.entries_of(ALICE)
                .iter()
                .filter(|e| e.entry.kind == EntryKind::HoldExpired)
                .count()
                == REQUESTS
        },
        || h.log(),
    );
    let entries = h.entries_of(ALICE);
    let holds = |kind: EntryKind| -> BTreeMap<String, u64> {
        entries
            .iter()
            .filter(|e| e.entry.kind == kind)
            .map(|e| {
                (
                    e.entry.hold_id.clone().expect("hold id"),
                    e.entry.event_at_ms,
                )
            })
            .collect()
    };
    let placed = holds(EntryKind::HoldPlaced);
    let expired = holds(EntryKind::HoldExpired);
    assert_eq!(placed.len(), REQUESTS, "{entries:#?}");
    assert_eq!(
        placed.keys().collect::<Vec<_>>(),
        expired.keys().collect::<Vec<_>>(),
        "exactly one hold_expired per hold"
    );
    let resolved_otherwise = entries
        .iter()
        .filter(|e| matches!(e.entry.kind, EntryKind::HoldPosted | EntryKind::HoldVoided))
        .count();
    assert_eq!(resolved_otherwise, 0, "nothing posted or voided");
    for (hold, placed_at) in &placed {
        assert!(
            expired[hold] >= placed_at + 1_000,
            "hold {hold} expired at {} before its deadline {}",
            expired[hold],
            placed_at + 1_000
        );
    }
    assert_eq!(
        entries.iter().map(|e| e.entry.amount).sum::<i64>(),
        GRANTED as i64,
        "nothing burned, nothing broken"
    );
    h.assert_totals_match(&BTreeSet::from([ALICE.to_string()]));
    eprintln!("{backend:?}: credits back {back_after} ms after the gateway died");
}

/// The config of the killed-gateway scenario: 1 s holds (the minimum), an upstream timeout
/// within them, `GET /search` costing `cost`.
fn short_hold_config(upstream: SocketAddr, cost: i64) -> String {
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 500
unmatched = "not_found"
hold_ttl_ms = 1000

[billing]
top_up_url = "https://billing.example.test/top-up"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"
connect_timeout_ms = 200
read_timeout_ms = 800

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = {cost} }}

[[api_keys]]
customer = "{ALICE}"
sha256 = "{key}"

[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#,
        key = sha256_hex(ALICE_KEY),
    )
}

/// `FLUSHALL` under a running sidecar: it notices the lost generation markers, rebuilds
/// every customer from the ledger within a few seconds, voids the hold Redis lost (its
/// credits come back) and goes on recording new traffic.
fn flushall_is_detected_and_rebuilt_from_the_ledger(backend: Backend) {
    let h = LedgerHarness::start(backend);
    let customers: BTreeSet<String> = ["acme", "globex", "initech"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    for (i, c) in customers.iter().enumerate() {
        for t in TYPES {
            let g = h.grant(&grant_request(
                c,
                &format!("g-{c}-{t}"),
                t,
                500,
                None,
                1_000_000,
            ));
            assert!(matches!(g, GrantOutcome::Granted { .. }), "{g:?}");
            let hold = format!("h-{c}-{t}-done");
            let r = h.reserve(&reserve_request(c, &hold, t, 40, 120_000));
            assert!(matches!(r, ReserveOutcome::Placed { .. }), "{r:?}");
            let s =
                h.rt.block_on(h.store.settle(&SettleRequest {
                    customer: c.clone(),
                    hold_id: hold,
                    actual: 30 + i as u64,
                    overdraft_limit: 0,
                }))
                .expect("settle");
            assert!(matches!(s, ResolveOutcome::Posted { .. }), "{s:?}");
        }
    }
    // A hold in flight when Redis loses its data.
    let lost = reserve_request("acme", "h-acme-lost", "api", 70, 120_000);
    assert!(matches!(h.reserve(&lost), ReserveOutcome::Placed { .. }));
    let before: BTreeMap<_, _> = customers
        .iter()
        .flat_map(|c| TYPES.map(|t| ((c.clone(), t), h.redis_available_held(c, t))))
        .collect();
    assert_eq!(before[&("acme".to_string(), "api")], (500 - 30 - 70, 70));
    h.wait_caught_up();
    h.assert_totals_match(&customers);
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

    h.redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
    let flushed = Instant::now();
    wait_for(
        "Redis is rebuilt from the ledger",
        Duration::from_secs(8),
        || h.redis_available_held("acme", "api") == (500 - 30, 0),
        || h.log(),
    );
    let rebuilt_after = flushed.elapsed();
    for c in &customers {
        for t in TYPES {
            let (available, held) = before[&(c.clone(), t)];
            let expected = if (c.as_str(), t) == ("acme", "api") {
                (available + 70, 0)
            } else {
                (available, held)
            };
            assert_eq!(
                h.redis_available_held(c, t),
                expected,
                "{c} {t} after the rebuild"
            );
        }
    }
    let voided = has_entry(&h, "hold:h-acme-lost:voided");
    assert!(voided, "the lost hold is voided in the ledger");
    h.assert_totals_match(&customers);
    // The shard counts as rebuilt once its last customer is restored and the shard is
    // marked done, a moment after the balances above are back.
    wait_for(
        "the shard rebuild is counted",
        Duration::from_secs(5),
        || {
            h.sidecar()
                .metric("creditgate_reconcile_shards_rebuilt_total", &[])
                >= 1.0
        },
        || h.log(),
    );

    // New traffic after the rebuild is recorded as before.
    let next = reserve_request("globex", "h-globex-after", "tokens", 5, 120_000);
    assert!(matches!(h.reserve(&next), ReserveOutcome::Placed { .. }));
    wait_for(
        "an event written after the rebuild reaches the ledger",
        Duration::from_secs(5),
        || has_entry(&h, "hold:h-globex-after:placed"),
        || h.log(),
    );
    h.assert_totals_match(&customers);
    h.assert_chain_verifies();
    eprintln!("{backend:?}: rebuilt {rebuilt_after:?} after FLUSHALL");
}

/// Balances recorded in Redis at chosen instants during a run equal the ledger's balance at
/// those instants afterwards; and over a window covering every grant, the money sold
/// equals recognized + breakage + deferred, with each part as the per-grant figures say.
fn balance_at_past_instants_and_the_revenue_identity(backend: Backend) {
    let h = LedgerHarness::start(backend);
    let from_ms = now_ms() - 1_000;
    let run = spawn_traffic(&h, 2, 6, |t| {
        t.max_ops = 400;
        t.snapshot_every = 40;
        t.paid = true;
        t.pause = Duration::from_millis(1);
    });
    let p = join_traffic(&h, run, false);
    assert!(p.snapshots.len() >= 20, "{} snapshots", p.snapshots.len());
    assert_exactly_once(&h, &p);

    let mut compared = 0;
    for s in &p.snapshots {
        let b = h.get_json(&format!(
            "/v1/customers/{}/balance?at_ms={}",
            s.customer, s.at_ms
        ));
        let ledger: BTreeMap<String, (i64, i64, i64, i64)> = b["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| {
                let n = |f: &str| t[f].as_i64().unwrap_or_else(|| panic!("{f} in {t}"));
                assert_eq!(n("total"), n("book_available") + n("held"), "{t}");
                (
                    t["credit_type"].as_str().expect("type").to_string(),
                    (n("available"), n("held"), n("debt"), n("book_available")),
                )
            })
            .filter(|(_, v)| *v != (0, 0, 0, 0))
            .collect();
        let redis: BTreeMap<_, _> = s
            .types
            .iter()
            .filter(|(_, v)| **v != (0, 0, 0, 0))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            ledger, redis,
            "{} at {}: ledger (available, held, debt, book_available) vs Redis then",
            s.customer, s.at_ms
        );
        compared += 1;
    }

    // Revenue over a window covering every grant, against the per-grant figures.
    let to_ms = now_ms() + 1_000;
    let r = h.get_json(&format!("/v1/revenue?from_ms={from_ms}&to_ms={to_ms}"));
    let money = |f: &str| -> i128 {
        r["revenue"][f]
            .as_i64()
            .unwrap_or_else(|| panic!("{f} in {r}")) as i128
    };
    let (recognized, breakage, deferred) = (
        money("recognized_micros"),
        money("breakage_micros"),
        money("deferred_micros_at_end"),
    );
    assert_eq!(
        recognized + breakage + deferred,
        p.cost_basis as i128,
        "sold = recognized + breakage + deferred: {r}"
    );
    let (mut want_recognized, mut want_breakage, mut posted) = (0i128, 0i128, BTreeMap::new());
    let cost_basis: HashMap<String, (i128, i128)> = h
        .entries()
        .iter()
        .filter(|e| e.entry.kind == EntryKind::GrantAdded)
        .map(|e| {
            let d = &e.entry.details;
            let n = |f: &str| {
                d[f].as_str()
                    .and_then(|s| s.parse::<i128>().ok())
                    .unwrap_or(0)
            };
            (
                e.entry.grant_id.clone().unwrap(),
                (n("cost_basis"), n("amount")),
            )
        })
        .collect();
    for c in &p.customers {
        let b = h.get_json(&format!("/v1/customers/{c}/balance"));
        for g in b["grants"].as_array().expect("grants") {
            let id = g["grant_id"].as_str().unwrap();
            let (cb, amount) = cost_basis[id];
            let burned = g["burned"].as_i64().unwrap() as i128;
            let expired = g["expired"].as_i64().unwrap() as i128;
            let value = |n: i128| cb * n.min(amount) / amount;
            want_recognized += value(burned);
            want_breakage += value(burned + expired) - value(burned);
            *posted
                .entry((c.clone(), g["credit_type"].as_str().unwrap().to_string()))
                .or_insert(0u64) += burned as u64;
        }
    }
    assert_eq!(recognized, want_recognized, "recognized: {r}");
    assert_eq!(breakage, want_breakage, "breakage: {r}");
    assert!(breakage > 0 && recognized > 0 && deferred > 0, "{r}");
    // Burns charged to grants equal what the settles posted (the overdraft part, repaid by
    // a later grant, is burned from that grant as debt repaid, so compare only when the
    // run left no debt behind).
    let debts: i64 = p
        .customers
        .iter()
        .map(|c| {
            h.rt.block_on(h.store.balance(c))
                .unwrap()
                .types
                .iter()
                .map(|t| t.debt)
                .sum::<i64>()
        })
        .sum();
    if debts == 0 {
        let posted_total: u64 = p.posted.values().sum();
        let burned_total: u64 = posted.values().sum();
        assert!(
            burned_total <= posted_total,
            "burned {burned_total} > posted {posted_total}"
        );
    }
    eprintln!(
        "{backend:?}: {compared} balance snapshots equal; revenue {recognized} + {breakage} + \
         {deferred} = {}",
        p.cost_basis
    );
}

/// `creditgate-sidecar grant` with Redis down records the grant in the ledger and exits 0,
/// saying the outbox will deliver it; once Redis is back, the running sidecar applies it
/// exactly once (a repeated command changes nothing).
fn a_ledger_first_grant_survives_a_redis_outage_and_applies_once(backend: Backend) {
    let mut h = LedgerHarness::start(backend);
    let grant_args = |h: &LedgerHarness| -> Vec<String> {
        let mut a: Vec<String> = [
            "grant",
            "--redis",
            &h.redis.url(),
            "--customer",
            "umbrella",
            "--credit-type",
            "api",
            "--amount",
            "250",
            "--grant-id",
            "g-umbrella-outage",
            "--cost-basis",
            "5000000",
            "--source",
            "purchase",
            "--actor",
            "ops@example.test",
            "--reason",
            "bought during an outage",
            "--timeout-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(h.target.args());
        a
    };
    h.redis.stop();
    let started = Instant::now();
    let out = sidecar_command(&grant_args(&h), h.dir.path()).expect("grant runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "grant with Redis down must record and exit 0; got {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("outbox delivers it"),
        "says the outbox delivers it: {stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not hang"
    );
    let state =
        h.rt.block_on(h.ledger.outbox_state("g-umbrella-outage"))
            .expect("outbox state")
            .expect("recorded in the outbox");
    assert_eq!(state.applied_at_ms, None);
    // The break-glass path records who ran it.
    let recorded =
        h.rt.block_on(h.ledger.grants_of("umbrella"))
            .expect("grants");
    assert!(
        recorded[0]
            .actor
            .starts_with("break-glass:ops@example.test"),
        "{:?}",
        recorded[0]
    );

    h.redis.restart().expect("redis restarts");
    wait_for(
        "the outbox delivers the grant",
        Duration::from_secs(10),
        || {
            h.rt.block_on(h.store.balance("umbrella"))
                .ok()
                .and_then(|b| b.of("api").map(|t| (t.available, t.held)))
                == Some((250, 0))
        },
        || h.log(),
    );
    wait_for(
        "the grant reaches the ledger",
        Duration::from_secs(10),
        || {
            h.rt.block_on(h.ledger.entry("grant:g-umbrella-outage:added"))
                .expect("entry")
                .is_some()
        },
        || h.log(),
    );
    let state =
        h.rt.block_on(h.ledger.outbox_state("g-umbrella-outage"))
            .unwrap()
            .unwrap();
    assert!(state.applied_at_ms.is_some(), "{state:?}");

    // The same command again: recorded before, delivered again, applied nothing twice.
    let again = sidecar_command(&grant_args(&h), h.dir.path()).expect("grant runs");
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("recorded before"),
        "{again:?}"
    );
    h.sidecar_mut().restart().expect("sidecar restarts");
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(h.redis_available_held("umbrella", "api"), (250, 0));
    let entries = h.entries_of("umbrella");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.entry.event_id.as_str())
            .collect::<Vec<_>>(),
        vec!["grant:g-umbrella-outage:added"],
        "one ledger entry for the grant"
    );
    assert_eq!(entries[0].entry.amount, 250);
    h.assert_totals_match(&BTreeSet::from(["umbrella".to_string()]));
}

/// A sidecar given an invalid pricing config refuses to start and names the file, line and
/// field, before it touches the ledger or Redis.
#[test]
fn sidecar_refuses_to_start_on_an_invalid_pricing_config() {
    let dir = TempDir::new().expect("temp dir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures/invalid/amount_overflow.toml");
    let ledger = dir.path().join("ledger.sqlite");
    let args = [
        "run".to_string(),
        "--redis".to_string(),
        "redis://127.0.0.1:1/".to_string(),
        "--sqlite".to_string(),
        ledger.display().to_string(),
        "--config".to_string(),
        fixture.display().to_string(),
    ];
    let out = sidecar_command(&args, dir.path()).expect("sidecar runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on an invalid config");
    assert!(
        stderr.contains("amount_overflow.toml:"),
        "the error names the file: {stderr}"
    );
    assert!(
        !ledger.exists(),
        "the ledger was opened before the config was checked"
    );
}
