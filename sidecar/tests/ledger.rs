//! The ledger on both backends: a real SQLite file in a temp dir and a real Postgres
//! server. Every check runs on each backend; events come from the reference model, so the
//! ledger's folds are checked against the protocol's own semantics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use creditgate_protocol::types::DEFAULT_RETAIN_MS;
use creditgate_protocol::{
    Balance, Event, GrantExpiryOutcome, GrantOutcome, GrantRef, GrantRequest, GrantSource, HoldRef,
    Keyspace, Model, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest,
};
use creditgate_sidecar::ledger::{
    Adjustment, AppendOutcome, BreakKind, EntryKind, EntryQuery, GrantRecord, Ledger, LedgerAdmin,
    LedgerBalance, LedgerEntries, NewEntry, PostgresLedger, RecordGrantOutcome, Revenue,
    SqliteLedger, UsageRow, fold_revenue,
};
use creditgate_testkit::Postgres;
use sqlx::Connection;
use tempfile::TempDir;

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 86_400_000;

// ---------------------------------------------------------------------------------------
// Backends

/// Raw SQL access beside the ledger, for what the ledger must refuse or detect.
enum Raw {
    Sqlite(PathBuf),
    Postgres(Arc<Postgres>),
}

impl Raw {
    /// Runs statements outside the ledger; `Err` carries the database's message.
    async fn exec(&self, statements: &str) -> Result<(), String> {
        match self {
            Raw::Sqlite(path) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .map_err(|e| e.to_string())?;
                let out = sqlx::raw_sql(statements)
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                conn.close().await.ok();
                out
            }
            Raw::Postgres(pg) => pg.psql(statements).map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Raw::Postgres(_))
    }
}

struct Backend {
    ledger: Box<dyn Ledger>,
    raw: Raw,
    _dir: Option<TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.unwrap();
    assert_eq!(
        ledger.migrate().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    );
    Backend {
        ledger: Box::new(ledger),
        raw: Raw::Sqlite(path),
        _dir: Some(dir),
    }
}

async fn postgres() -> Backend {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .expect("postgres starts");
    let ledger = PostgresLedger::connect(&pg.url()).await.unwrap();
    assert_eq!(
        ledger.migrate().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    );
    Backend {
        ledger: Box::new(ledger),
        raw: Raw::Postgres(Arc::new(pg)),
        _dir: None,
    }
}

/// Runs one check on each backend, as two tests.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let b = super::sqlite().await;
                super::$check(&b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let b = super::postgres().await;
                super::$check(&b).await;
            }
        }
    )*};
}

on_both_backends!(
    migrations_run_twice_are_a_no_op,
    a_batch_skips_duplicates_and_reports_conflicts,
    the_hash_chain_verifies_and_finds_the_first_tampered_row,
    entries_and_grants_refuse_update_and_delete,
    balance_at_a_past_instant,
    usage_by_day_and_feature,
    trail_of_a_request,
    revenue_recognized_breakage_deferred,
    record_grant_is_idempotent_and_feeds_the_outbox,
    the_fold_matches_the_model_in_a_scripted_run,
    the_fold_matches_the_model_in_random_runs,
    adjustments_change_the_total,
    usage_events_are_recorded_once_and_append_only,
    a_shortfall_is_recorded_as_an_overage_entry,
    dead_letters_are_recorded_once_with_their_actions_and_append_only,
    revenue_of_whole_months_matches_the_fold_and_is_rebuilt_by_migration_13,
);

async fn dead_letters_are_recorded_once_with_their_actions_and_append_only(b: &Backend) {
    use creditgate_sidecar::ledger::{
        DeadLetterAction, DeadLetterActionRecord, DeadLetterReason, NewDeadLetter,
    };
    let l = &*b.ledger;
    let letter = |stream_id: &str, value: &str| NewDeadLetter {
        shard: 3,
        stream_id: stream_id.into(),
        event_id: "hold:h1:placed".into(),
        reason: DeadLetterReason::Conflict,
        detail: "the ledger holds event id hold:h1:placed (seq 2) with other fields".into(),
        fields: vec![
            ("event_id".into(), "hold:h1:placed".into()),
            ("amount".into(), value.into()),
        ],
        recorded_at_ms: 1_000,
    };
    assert!(l.record_dead_letter(&letter("5-0", "30")).await.unwrap());
    // A redelivery is one letter; the same stream id with other fields (Redis lost its
    // data and reused the id) is another.
    assert!(!l.record_dead_letter(&letter("5-0", "30")).await.unwrap());
    assert!(l.record_dead_letter(&letter("5-0", "31")).await.unwrap());
    let all = l.dead_letters(true, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].letter, letter("5-0", "30"));
    assert_eq!(all[1].state(), "open");
    let discard = DeadLetterActionRecord {
        action: DeadLetterAction::Discarded,
        actor: "ops@example.com".into(),
        note: "duplicate placement under a reused id".into(),
        at_ms: 2_000,
    };
    l.record_dead_letter_action(all[1].id, &discard)
        .await
        .unwrap();
    let shown = l.dead_letter(all[1].id).await.unwrap().unwrap();
    assert_eq!(
        (shown.state(), shown.actions.clone()),
        ("discarded", vec![discard])
    );
    assert_eq!(l.dead_letters(true, 10).await.unwrap().len(), 1);
    assert_eq!(l.dead_letters(false, 1).await.unwrap().len(), 1);
    assert!(l.dead_letter(999).await.unwrap().is_none());
    for sql in [
        "UPDATE dead_letters SET reason = 'malformed'",
        "DELETE FROM dead_letters",
        "UPDATE dead_letter_actions SET actor = 'someone else'",
        "DELETE FROM dead_letter_actions",
    ] {
        let err = b.raw.exec(sql).await.expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
}

async fn a_shortfall_is_recorded_as_an_overage_entry(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    sim.grant("acme", "g1", "api", 100, 0, None, 1_000_000);
    sim.reserve("acme", "h1", "api", 50, 20, false, "chat");
    // 180 asked; the balance (100) and overdraft (20) allow 120.
    let ResolveOutcome::Posted {
        posted, shortfall, ..
    } = sim.settle("acme", "h1", 180, 20)
    else {
        panic!("settled");
    };
    assert_eq!((posted, shortfall), (120, 60));
    sim.reserve("acme", "h2", "api", 10, 20, true, "chat");
    sim.settle("acme", "h2", 0, 20); // no shortfall: no overage entry
    let entries = sim.entries();
    feed(l, &sim, 100).await;

    let trail = l.trail("req-h1").await.unwrap();
    let kinds: Vec<EntryKind> = trail.iter().map(|e| e.entry.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EntryKind::HoldPlaced,
            EntryKind::HoldPosted,
            EntryKind::Overage
        ]
    );
    let overage = &trail[2];
    // The overage belongs to the placement: the placed entry's id with another ending.
    assert_eq!(
        overage.entry.event_id,
        trail[0].entry.event_id.replace(":placed", ":overage")
    );
    assert!(overage.entry.event_id.starts_with("hold:h1:"));
    assert_eq!(overage.entry.request_id.as_deref(), Some("req-h1"));
    assert_eq!(overage.entry.hold_id.as_deref(), Some("h1"));
    assert_eq!(overage.entry.credit_type, "api");
    assert_eq!(overage.entry.feature.as_deref(), Some("chat"));
    assert_eq!(overage.entry.amount, 0, "an overage moves no credits");
    assert_eq!(overage.overage().unwrap().unwrap(), 60);
    assert!(overage.event().is_none());
    let h2 = l.trail("req-h2").await.unwrap();
    assert!(h2.iter().all(|e| e.entry.kind != EntryKind::Overage));

    // Redelivered: every entry, the overage included, is a duplicate.
    let again = l.append_batch(&entries).await.unwrap();
    assert!(
        again
            .iter()
            .all(|o| matches!(o, AppendOutcome::Duplicate { .. })),
        "{again:?}"
    );
    assert!(l.verify_chain(None).await.unwrap().is_intact());

    // Usage shows it beside what was burned; revenue as unbilled credits, not money.
    let usage = l.usage(Some("acme"), T0, T0 + DAY_MS).await.unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(
        (usage[0].requests, usage[0].burned, usage[0].overage),
        (2, 120, 60)
    );
    let revenue = l.revenue(T0, T0 + DAY_MS).await.unwrap();
    assert_eq!(revenue.unbilled_overage.get("api"), Some(&60));
    assert_eq!(
        revenue.recognized_micros, 1_000_000,
        "the whole grant was consumed"
    );
    // The balance is what Redis says: 100 granted, 120 posted, 20 of debt.
    let totals = l.customer_totals().await.unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].total, totals[0].held), (-20, 0));
}

async fn usage_events_are_recorded_once_and_append_only(b: &Backend) {
    let l = &*b.ledger;
    let record = creditgate_sidecar::ledger::UsageEventRecord {
        customer: "acme".into(),
        idempotency_key: "export-1".into(),
        feature: "export".into(),
        quantity: 3,
        occurred_at_ms: 1_700_000_000_000,
        received_at_ms: 1_700_000_000_500,
        credit_type: "api".into(),
        amount: 6,
        hold_id: "ue-1".into(),
        pricing_version: "abc".into(),
        metadata: Some(r#"{"job":"nightly"}"#.into()),
    };
    assert!(l.record_usage_event(&record).await.unwrap());
    let retry = creditgate_sidecar::ledger::UsageEventRecord {
        received_at_ms: 1_700_000_009_000,
        ..record.clone()
    };
    assert!(
        !l.record_usage_event(&retry).await.unwrap(),
        "recorded once"
    );
    let other = creditgate_sidecar::ledger::UsageEventRecord {
        customer: "globex".into(),
        metadata: None,
        ..record
    };
    assert!(
        l.record_usage_event(&other).await.unwrap(),
        "keys are per customer"
    );
    let refused = b
        .raw
        .exec("UPDATE usage_events SET amount = 0")
        .await
        .expect_err("append-only");
    assert!(
        refused.contains("append-only") || refused.contains("refused"),
        "{refused}"
    );
}

// ---------------------------------------------------------------------------------------
// A reference-model run that records its events and balances

struct Sim {
    model: Model,
    now: u64,
    /// (time, customer, model balance) after each step.
    snapshots: Vec<(u64, String, Balance)>,
}

impl Sim {
    fn new() -> Self {
        Self {
            model: Model::new(Keyspace::new("cg", 4)),
            now: T0,
            snapshots: Vec::new(),
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
    }

    fn snap(&mut self, customer: &str) {
        let b = self.model.balance(self.now, customer);
        self.snapshots.push((self.now, customer.to_string(), b));
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        customer: &str,
        grant_id: &str,
        credit_type: &str,
        amount: u64,
        priority: u32,
        expires_at_ms: Option<u64>,
        cost_basis: u64,
    ) -> GrantOutcome {
        self.tick(1000);
        let out = self.model.grant(
            self.now,
            &GrantRequest {
                customer: customer.into(),
                grant_id: grant_id.into(),
                credit_type: credit_type.into(),
                amount,
                priority,
                expires_at_ms,
                cost_basis,
                source: if cost_basis > 0 {
                    GrantSource::Purchase
                } else {
                    GrantSource::Promotion
                },
                actor: "ops@example.com".into(),
                reason: "test".into(),
            },
        );
        self.snap(customer);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &mut self,
        customer: &str,
        hold_id: &str,
        credit_type: &str,
        amount: u64,
        overdraft_limit: u64,
        force: bool,
        feature: &str,
    ) -> ReserveOutcome {
        self.tick(1000);
        let out = self.model.reserve(
            self.now,
            &ReserveRequest {
                customer: customer.into(),
                hold_id: hold_id.into(),
                credit_type: credit_type.into(),
                amount,
                ttl_ms: 30_000,
                overdraft_limit,
                force,
                request_id: format!("req-{hold_id}"),
                route: format!("POST /v1/{feature}"),
                feature: feature.into(),
                retain_ms: DEFAULT_RETAIN_MS,
                pricing_version: String::new(),
                occurred_at_ms: None,
            },
        );
        self.snap(customer);
        out
    }

    fn settle(&mut self, customer: &str, hold_id: &str, actual: u64, od: u64) -> ResolveOutcome {
        self.tick(1000);
        let out = self.model.settle(
            self.now,
            &SettleRequest {
                customer: customer.into(),
                hold_id: hold_id.into(),
                actual,
                overdraft_limit: od,
            },
        );
        self.snap(customer);
        out
    }

    fn void(&mut self, customer: &str, hold_id: &str) -> ResolveOutcome {
        self.tick(1000);
        let out = self.model.void(self.now, &hold(customer, hold_id));
        self.snap(customer);
        out
    }

    fn expire_hold(&mut self, customer: &str, hold_id: &str) -> ResolveOutcome {
        self.tick(1000);
        let out = self.model.expire_hold(self.now, &hold(customer, hold_id));
        self.snap(customer);
        out
    }

    fn expire_grant(&mut self, customer: &str, grant_id: &str) -> GrantExpiryOutcome {
        self.tick(1000);
        let out = self.model.expire_grant(
            self.now,
            &GrantRef {
                customer: customer.into(),
                grant_id: grant_id.into(),
            },
        );
        self.snap(customer);
        out
    }

    /// Every shard's events, each shard in stream order.
    fn events(&self) -> Vec<(u32, Event)> {
        let ks = self.model.keyspace().clone();
        ks.all_shards()
            .flat_map(|s| self.model.events(s).iter().map(move |e| (s.0, e.clone())))
            .collect()
    }

    fn entries(&self) -> Vec<NewEntry> {
        self.events()
            .iter()
            .enumerate()
            .flat_map(|(i, (shard, e))| {
                // As the writer does: a posted hold with a shortfall adds its overage entry.
                NewEntry::from_event_with_overage(e, *shard, Some(format!("{}-{i}", T0 + i as u64)))
                    .unwrap()
            })
            .collect()
    }
}

fn hold(customer: &str, hold_id: &str) -> HoldRef {
    HoldRef {
        customer: customer.into(),
        hold_id: hold_id.into(),
    }
}

/// Appends the run's events in batches of `batch` and checks each went in once.
async fn feed(ledger: &dyn Ledger, sim: &Sim, batch: usize) {
    let entries = sim.entries();
    for chunk in entries.chunks(batch.max(1)) {
        let out = ledger.append_batch(chunk).await.unwrap();
        assert!(
            out.iter()
                .all(|o| matches!(o, AppendOutcome::Inserted { .. })),
            "{out:?}"
        );
    }
}

/// Per credit type (available, held, debt, book_available), all-zero types left out.
fn model_types(b: &Balance) -> BTreeMap<String, (i64, i64, i64, i64)> {
    b.types
        .iter()
        .map(|t| {
            (
                t.credit_type.clone(),
                (t.available, t.held, t.debt, t.book_available),
            )
        })
        .filter(|(_, v)| *v != (0, 0, 0, 0))
        .collect()
}

fn ledger_types(b: &LedgerBalance) -> BTreeMap<String, (i64, i64, i64, i64)> {
    b.types
        .iter()
        .map(|t| {
            assert_eq!(t.total, t.book_available + t.held);
            (
                t.credit_type.clone(),
                (t.available, t.held, t.debt, t.book_available),
            )
        })
        .filter(|(_, v)| *v != (0, 0, 0, 0))
        .collect()
}

/// Per live grant (remaining, held, expired flag).
fn model_grants(b: &Balance) -> BTreeMap<String, (i64, i64, bool)> {
    b.grants
        .iter()
        .map(|g| {
            (
                g.grant_id.clone(),
                (g.remaining as i64, g.held as i64, g.expired),
            )
        })
        .collect()
}

fn ledger_grants(b: &LedgerBalance) -> BTreeMap<String, (i64, i64, bool)> {
    b.grants
        .iter()
        .filter(|g| g.remaining != 0 || g.held != 0)
        .map(|g| (g.grant_id.clone(), (g.remaining, g.held, g.is_expired)))
        .collect()
}

/// The ledger's balance equals the model's at every recorded instant.
async fn assert_balances_match(ledger: &dyn Ledger, sim: &Sim) {
    for (at, customer, model) in &sim.snapshots {
        let got = ledger.balance_at(customer, *at).await.unwrap();
        assert_eq!(
            ledger_types(&got),
            model_types(model),
            "types of {customer} at {at}"
        );
        assert_eq!(
            ledger_grants(&got),
            model_grants(model),
            "grants of {customer} at {at}"
        );
    }
}

/// The reconciler's totals equal the model's `book_available + held` now.
async fn assert_totals_match(ledger: &dyn Ledger, sim: &Sim, customers: &[&str]) {
    let totals = ledger.customer_totals().await.unwrap();
    let got: BTreeMap<(String, String), (i64, i64)> = totals
        .into_iter()
        .map(|t| ((t.customer, t.credit_type), (t.total, t.held)))
        .filter(|(_, v)| *v != (0, 0))
        .collect();
    let mut want = BTreeMap::new();
    for c in customers {
        for t in sim.model.balance(sim.now, c).types {
            if (t.book_available + t.held, t.held) != (0, 0) {
                want.insert(
                    (c.to_string(), t.credit_type.clone()),
                    (t.book_available + t.held, t.held),
                );
            }
        }
    }
    assert_eq!(got, want);
}

fn sample_entries() -> Vec<NewEntry> {
    let mut sim = Sim::new();
    sim.grant("acme", "g1", "api", 100, 0, None, 1_000);
    sim.reserve("acme", "h1", "api", 10, 0, false, "chat");
    sim.settle("acme", "h1", 7, 0);
    sim.grant("beta", "g2", "api", 50, 0, None, 0);
    sim.reserve("acme", "h2", "api", 5, 0, false, "chat");
    sim.void("acme", "h2");
    sim.entries()
}

// ---------------------------------------------------------------------------------------
// Checks

async fn migrations_run_twice_are_a_no_op(b: &Backend) {
    let l = &*b.ledger;
    assert_eq!(l.migrate().await.unwrap(), Vec::<i64>::new());
    assert_eq!(l.migrate().await.unwrap(), Vec::<i64>::new());
    assert_eq!(
        l.applied_migrations().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    );
    // A second process opening the same database finds it up to date.
    let other: Box<dyn Ledger> = match &b.raw {
        Raw::Sqlite(path) => Box::new(SqliteLedger::open(path).await.unwrap()),
        Raw::Postgres(pg) => Box::new(PostgresLedger::connect(&pg.url()).await.unwrap()),
    };
    assert_eq!(other.migrate().await.unwrap(), Vec::<i64>::new());
    assert_eq!(
        other.applied_migrations().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    );
    // The Redis generation markers the ledger records can be set and replaced.
    assert_eq!(l.redis_generation(3).await.unwrap(), None);
    l.set_redis_generation(3, "gen-a").await.unwrap();
    l.set_redis_generation(3, "gen-b").await.unwrap();
    assert_eq!(
        other.redis_generation(3).await.unwrap().as_deref(),
        Some("gen-b")
    );
    assert_eq!(l.redis_generation(4).await.unwrap(), None);
    // The copy of the control audit log: idempotent by id, listed newest first.
    let change = |id: &str, at_ms: u64, change: &str| creditgate_protocol::control::AuditEntry {
        id: id.into(),
        at_ms,
        actor: "sre@example.com".into(),
        reason: "incident 42".into(),
        change: change.into(),
        version: at_ms,
    };
    let first = [
        change("1-0", 1, "global=off"),
        change("2-0", 2, "global=enforce"),
    ];
    assert_eq!(l.record_control_audit(&first).await.unwrap(), 2);
    let again = [
        change("2-0", 2, "global=enforce"),
        change("3-0", 3, "rollout_percent=10"),
    ];
    assert_eq!(l.record_control_audit(&again).await.unwrap(), 1);
    let listed = other.control_audit(2).await.unwrap();
    assert_eq!(listed, vec![again[1].clone(), first[1].clone()]);
}

async fn a_batch_skips_duplicates_and_reports_conflicts(b: &Backend) {
    let l = &*b.ledger;
    let entries = sample_entries();
    let (e0, e1, e2) = (&entries[0], &entries[1], &entries[2]);
    let mut redelivered = e0.clone();
    redelivered.stream_id = Some("9-9".into()); // a new stream id is still the same event
    let mut forged = e1.clone();
    forged.amount = 1;
    forged.details["amount"] = "11".into();
    let batch = vec![
        e0.clone(),
        e1.clone(),
        redelivered,
        forged.clone(),
        e2.clone(),
    ];
    let out = l.append_batch(&batch).await.unwrap();
    let AppendOutcome::Inserted { seq: s0 } = out[0] else {
        panic!("{out:?}")
    };
    assert!(matches!(out[1], AppendOutcome::Inserted { .. }), "{out:?}");
    assert_eq!(out[2], AppendOutcome::Duplicate { seq: s0 });
    match &out[3] {
        AppendOutcome::Conflict { event_id, existing } => {
            assert_eq!(event_id, &e1.event_id);
            assert_eq!(&existing.entry, e1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(out[4], AppendOutcome::Inserted { .. }), "{out:?}");

    // The whole batch again: nothing new, the conflict still reported.
    let again = l.append_batch(&batch).await.unwrap();
    assert!(matches!(again[0], AppendOutcome::Duplicate { .. }));
    assert!(matches!(again[1], AppendOutcome::Duplicate { .. }));
    assert!(matches!(again[2], AppendOutcome::Duplicate { .. }));
    assert!(matches!(again[3], AppendOutcome::Conflict { .. }));
    assert!(matches!(again[4], AppendOutcome::Duplicate { .. }));
    let all = l.entries(&EntryQuery::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(l.entry(&e1.event_id).await.unwrap().unwrap().entry, *e1);
    assert!(l.verify_chain(None).await.unwrap().is_intact());
}

async fn the_hash_chain_verifies_and_finds_the_first_tampered_row(b: &Backend) {
    let l = &*b.ledger;
    let entries = sample_entries();
    l.append_batch(&entries[..3]).await.unwrap();
    l.append_batch(&entries[3..]).await.unwrap();
    let report = l.verify_chain(None).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.customers_checked, 2);
    assert_eq!(report.entries_checked, entries.len() as u64);

    // Each entry links to the previous one of its customer.
    let acme = l
        .entries(&EntryQuery {
            customer: Some("acme".into()),
            seq_order: true,
            ..EntryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(acme[0].prev_hash, creditgate_sidecar::ledger::GENESIS_HASH);
    for pair in acme.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let head = l.chain_head("acme").await.unwrap().unwrap();
    assert_eq!(head.last_hash, acme.last().unwrap().hash);

    // Tamper with acme's third entry (the posted hold): burn less than it did.
    let victim = &acme[2];
    assert_eq!(victim.entry.kind, EntryKind::HoldPosted);
    let disable = if b.raw.is_postgres() {
        "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only;"
    } else {
        "DROP TRIGGER ledger_entries_no_update;"
    };
    b.raw
        .exec(&format!(
            "{disable} UPDATE ledger_entries SET amount = -1 WHERE seq = {};",
            victim.seq
        ))
        .await
        .unwrap();
    let report = l.verify_chain(None).await.unwrap();
    let broken = report.first_broken.expect("tampering is detected");
    assert_eq!(broken.customer, "acme");
    assert_eq!(broken.seq, victim.seq);
    assert_eq!(broken.event_id, victim.entry.event_id);
    assert_eq!(broken.kind, BreakKind::HashMismatch);
    assert_eq!(broken.found, victim.hash);
    assert_ne!(broken.expected, victim.hash);
    // The other customer's chain is untouched.
    assert!(l.verify_chain(Some("beta")).await.unwrap().is_intact());

    // Rewriting the hash too breaks the next link instead.
    b.raw
        .exec(&format!(
            "UPDATE ledger_entries SET hash = '{}' WHERE seq = {};",
            broken.expected, victim.seq
        ))
        .await
        .unwrap();
    let broken = l
        .verify_chain(Some("acme"))
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(broken.seq, acme[3].seq);
    assert_eq!(broken.kind, BreakKind::PrevHashMismatch);
}

async fn entries_and_grants_refuse_update_and_delete(b: &Backend) {
    let l = &*b.ledger;
    l.append_batch(&sample_entries()).await.unwrap();
    l.record_grant(&grant_record("g-1", 10)).await.unwrap();
    let change = creditgate_protocol::control::AuditEntry {
        id: "1-0".into(),
        at_ms: 1,
        actor: "sre@example.com".into(),
        reason: "incident 42".into(),
        change: "global=off".into(),
        version: 1,
    };
    l.record_control_audit(&[change]).await.unwrap();
    for sql in [
        "UPDATE ledger_entries SET amount = 0",
        "DELETE FROM ledger_entries",
        "UPDATE grants SET amount = 1",
        "DELETE FROM grants",
        "UPDATE control_audit SET actor = 'someone else'",
        "DELETE FROM control_audit",
    ] {
        let err = b.raw.exec(sql).await.expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    if b.raw.is_postgres() {
        let err = b.raw.exec("TRUNCATE ledger_entries").await.unwrap_err();
        assert!(err.contains("append-only"), "{err}");
    }
    assert_eq!(
        l.entries(&EntryQuery::default()).await.unwrap().len(),
        sample_entries().len()
    );
    assert!(l.verify_chain(None).await.unwrap().is_intact());
}

async fn balance_at_a_past_instant(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    sim.grant("acme", "g1", "api", 100, 0, None, 0);
    let after_grant = sim.now;
    sim.reserve("acme", "h1", "api", 30, 0, false, "chat");
    let while_held = sim.now;
    sim.settle("acme", "h1", 20, 0);
    feed(l, &sim, 10).await;

    let before = l.balance_at("acme", T0).await.unwrap();
    assert!(before.types.is_empty() && before.grants.is_empty());
    let at = l.balance_at("acme", after_grant).await.unwrap();
    let api = at.of("api").unwrap();
    assert_eq!((api.total, api.available, api.held), (100, 100, 0));
    let at = l.balance_at("acme", while_held).await.unwrap();
    let api = at.of("api").unwrap();
    assert_eq!((api.total, api.available, api.held), (100, 70, 30));
    assert_eq!(at.grant("g1").unwrap().held, 30);
    let now = l.balance_at("acme", sim.now).await.unwrap();
    let api = now.of("api").unwrap();
    assert_eq!((api.total, api.available, api.held), (80, 80, 0));
    assert_eq!(now.grant("g1").unwrap().burned, 20);
    assert_balances_match(l, &sim).await;
}

async fn usage_by_day_and_feature(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    sim.grant("acme", "g1", "api", 1_000, 0, None, 0);
    sim.grant("beta", "g2", "api", 1_000, 0, None, 0);
    sim.grant("acme", "g3", "ai", 1_000, 0, None, 0);
    sim.reserve("acme", "h1", "api", 10, 0, false, "chat");
    sim.settle("acme", "h1", 4, 0);
    sim.reserve("acme", "h2", "api", 10, 0, false, "chat");
    sim.settle("acme", "h2", 6, 0);
    sim.reserve("acme", "h3", "ai", 10, 0, false, "embed");
    sim.settle("acme", "h3", 10, 0);
    sim.reserve("acme", "h4", "api", 10, 0, false, "chat");
    sim.void("acme", "h4"); // voided: no usage
    sim.tick(DAY_MS);
    sim.reserve("acme", "h5", "api", 10, 0, false, "chat");
    sim.settle("acme", "h5", 3, 0);
    sim.reserve("beta", "h6", "api", 10, 0, false, "chat");
    sim.settle("beta", "h6", 9, 0);
    feed(l, &sim, 100).await;

    let row = |day: &str, feature: &str, credit_type: &str, requests, burned| UsageRow {
        day: day.into(),
        feature: feature.into(),
        credit_type: credit_type.into(),
        requests,
        burned,
        overage: 0,
    };
    let acme = l.usage(Some("acme"), T0, T0 + 3 * DAY_MS).await.unwrap();
    assert_eq!(
        acme,
        vec![
            row("2023-11-14", "chat", "api", 2, 10),
            row("2023-11-14", "embed", "ai", 1, 10),
            row("2023-11-15", "chat", "api", 1, 3),
        ]
    );
    let all = l.usage(None, T0, T0 + 3 * DAY_MS).await.unwrap();
    assert_eq!(all[2], row("2023-11-15", "chat", "api", 2, 12));
    // The window is [from, to): the second day only.
    let second = l.usage(None, T0 + DAY_MS, T0 + 3 * DAY_MS).await.unwrap();
    assert_eq!(second, vec![row("2023-11-15", "chat", "api", 2, 12)]);
}

async fn trail_of_a_request(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    sim.grant("acme", "g-promo", "api", 5, 0, None, 0);
    sim.grant("acme", "g-paid", "api", 100, 1, None, 1_000_000);
    sim.reserve("acme", "h1", "api", 20, 0, false, "chat");
    sim.settle("acme", "h1", 12, 0);
    sim.reserve("acme", "h2", "api", 20, 0, false, "chat");
    feed(l, &sim, 3).await;

    let trail = l.trail("req-h1").await.unwrap();
    let kinds: Vec<EntryKind> = trail.iter().map(|e| e.entry.kind).collect();
    assert_eq!(kinds, vec![EntryKind::HoldPlaced, EntryKind::HoldPosted]);
    assert!(
        trail
            .iter()
            .all(|e| e.entry.hold_id.as_deref() == Some("h1"))
    );
    assert_eq!(
        trail[0].entry.grants,
        serde_json::json!({"draws": [
            {"grant_id": "g-promo", "amount": 5},
            {"grant_id": "g-paid", "amount": 15},
        ]})
    );
    assert_eq!(
        trail[1].entry.grants,
        serde_json::json!({
            "burns": [
                {"grant_id": "g-promo", "amount": 5},
                {"grant_id": "g-paid", "amount": 7},
            ],
            "returned": [{"grant_id": "g-paid", "amount": 8}],
            "breakage": [],
        })
    );
    assert_eq!(trail[1].entry.amount, -12);
    assert_eq!(trail[1].entry.feature.as_deref(), Some("chat"));
    assert!(l.trail("req-unknown").await.unwrap().is_empty());
    assert_eq!(l.trail("req-h2").await.unwrap().len(), 1);
}

async fn revenue_recognized_breakage_deferred(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    // 3 credits for 100 micros: worth 33, 33, 34 as they burn (cumulative rounding).
    sim.grant("acme", "g-a", "a", 3, 0, None, 100);
    let expiry = T0 + 60_000;
    // 4 credits for 1000 micros, expiring: 250 each.
    sim.grant("acme", "g-c", "c", 4, 0, Some(expiry), 1_000);
    // Free credits are worth nothing.
    sim.grant("acme", "g-free", "f", 10, 0, None, 0);
    for (i, ty) in ["a", "c", "f"].iter().enumerate() {
        let h = format!("h{i}");
        sim.reserve("acme", &h, ty, 1, 0, false, "chat");
        sim.settle("acme", &h, 1, 0);
    }
    let window_from = sim.now + 1;
    sim.tick(10);
    sim.reserve("acme", "h3", "a", 1, 0, false, "chat");
    sim.settle("acme", "h3", 1, 0);
    sim.reserve("acme", "h4", "a", 1, 0, false, "chat");
    sim.settle("acme", "h4", 1, 0);
    sim.now = sim.now.max(expiry);
    assert!(matches!(
        sim.expire_grant("acme", "g-c"),
        GrantExpiryOutcome::Expired { amount: 3, .. }
    ));
    let window_to = sim.now + 1;
    feed(l, &sim, 4).await;

    let before = l.revenue(T0, window_from).await.unwrap();
    assert_eq!(before.recognized_micros, 33 + 250);
    assert_eq!(before.breakage_micros, 0);
    assert_eq!(before.deferred_micros_at_end, (100 - 33) + (1_000 - 250));

    let window = l.revenue(window_from, window_to).await.unwrap();
    assert_eq!(window.recognized_micros, 33 + 34);
    assert_eq!(window.breakage_micros, 750);
    assert_eq!(window.deferred_micros_at_end, 0);

    let all = l.revenue(0, u64::MAX).await.unwrap();
    assert_eq!(all.recognized_micros + all.breakage_micros, 1_100);
}

/// 2023-11-01, 2023-12-01 and 2024-01-01, 00:00 UTC.
const NOV: u64 = 1_698_796_800_000;
const DEC: u64 = 1_701_388_800_000;
const JAN: u64 = 1_704_067_200_000;

/// Revenue of whole months comes from the rollup each append adds to (migration 13): the
/// same figures as folding every entry, for one month, the next and both; the rollup of a
/// ledger written before migration 13 is rebuilt from its entries by the migration.
async fn revenue_of_whole_months_matches_the_fold_and_is_rebuilt_by_migration_13(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    // 7 credits for 700 micros expiring in December, 3 for 100 never expiring.
    let expiry = DEC + 5 * DAY_MS;
    sim.grant("acme", "g-c", "c", 7, 0, Some(expiry), 700);
    sim.grant("beta", "g-a", "a", 3, 0, None, 100);
    for i in 0..3 {
        sim.reserve("acme", &format!("n{i}"), "c", 2, 0, false, "chat");
        sim.settle("acme", &format!("n{i}"), 1, 0);
    }
    sim.reserve("beta", "nb", "a", 1, 0, false, "chat");
    sim.settle("beta", "nb", 1, 0);
    sim.now = DEC + DAY_MS;
    sim.reserve("acme", "d1", "c", 2, 0, false, "chat");
    sim.settle("acme", "d1", 2, 0);
    sim.reserve("beta", "db", "a", 1, 0, false, "chat");
    sim.settle("beta", "db", 1, 0);
    sim.now = expiry;
    assert!(matches!(
        sim.expire_grant("acme", "g-c"),
        GrantExpiryOutcome::Expired { amount: 2, .. }
    ));
    feed(l, &sim, 3).await;
    let entries = l.entries(&EntryQuery::default()).await.unwrap();
    let windows = [(NOV, DEC), (DEC, JAN), (NOV, JAN)];
    let check = |label: &str, got: Vec<Revenue>| {
        for ((from, to), got) in windows.iter().zip(got) {
            assert_eq!(
                got,
                fold_revenue(*from, *to, &entries).unwrap(),
                "{label} {from}..{to}"
            );
        }
    };
    let mut got = Vec::new();
    for (from, to) in windows {
        got.push(l.revenue(from, to).await.unwrap());
    }
    assert_eq!(got[0].recognized_micros, 300 + 33);
    assert_eq!(got[1].breakage_micros, 200);
    check("appended", got);

    // The ledger as it was before migration 13: its rollup is filled from the entries.
    b.raw
        .exec("DROP TABLE revenue_grant_months; DELETE FROM schema_migrations WHERE version = 13")
        .await
        .unwrap();
    assert_eq!(l.migrate().await.unwrap(), vec![13]);
    let mut got = Vec::new();
    for (from, to) in windows {
        got.push(l.revenue(from, to).await.unwrap());
    }
    check("migrated", got);
}

fn grant_record(grant_id: &str, amount: u64) -> GrantRecord {
    GrantRecord {
        grant_id: grant_id.into(),
        customer: "acme".into(),
        credit_type: "api".into(),
        amount,
        priority: 1,
        expires_at_ms: Some(T0 + DAY_MS),
        cost_basis: 5_000_000,
        source: GrantSource::Purchase,
        actor: "sales@example.com".into(),
        reason: "order 42".into(),
        created_at_ms: T0,
    }
}

async fn record_grant_is_idempotent_and_feeds_the_outbox(b: &Backend) {
    let l = &*b.ledger;
    let g1 = grant_record("g-1", 100);
    let mut g2 = grant_record("g-2", 200);
    g2.created_at_ms = T0 + 1;
    g2.expires_at_ms = None;
    assert_eq!(
        l.record_grant(&g1).await.unwrap(),
        RecordGrantOutcome::Recorded
    );
    assert_eq!(
        l.record_grant(&g2).await.unwrap(),
        RecordGrantOutcome::Recorded
    );
    // A retry (even with a later clock) is the same grant.
    let mut retry = g1.clone();
    retry.created_at_ms = T0 + 5;
    assert_eq!(
        l.record_grant(&retry).await.unwrap(),
        RecordGrantOutcome::AlreadyRecorded
    );
    let mut other = g1.clone();
    other.amount = 101;
    assert_eq!(
        l.record_grant(&other).await.unwrap(),
        RecordGrantOutcome::Conflict {
            existing: Box::new(g1.clone())
        }
    );
    let mut bad = grant_record("g 3", 1);
    bad.grant_id = "g 3".into();
    assert!(l.record_grant(&bad).await.is_err());

    assert_eq!(
        l.pending_grants(10).await.unwrap(),
        vec![g1.clone(), g2.clone()]
    );
    assert_eq!(l.pending_grants(1).await.unwrap(), vec![g1.clone()]);
    assert!(
        l.mark_grant_attempt_failed("g-1", "redis timeout")
            .await
            .unwrap()
    );
    assert!(
        l.mark_grant_attempt_failed("g-1", "connection refused")
            .await
            .unwrap()
    );
    let state = l.outbox_state("g-1").await.unwrap().unwrap();
    assert_eq!(state.attempts, 2);
    assert_eq!(state.last_error.as_deref(), Some("connection refused"));
    assert_eq!(state.applied_at_ms, None);

    assert!(l.mark_grant_applied("g-1", T0 + 10).await.unwrap());
    assert!(!l.mark_grant_applied("g-1", T0 + 20).await.unwrap());
    assert!(!l.mark_grant_applied("g-unknown", T0).await.unwrap());
    assert!(!l.mark_grant_attempt_failed("g-1", "late").await.unwrap());
    let state = l.outbox_state("g-1").await.unwrap().unwrap();
    assert_eq!(state.applied_at_ms, Some(T0 + 10));
    assert_eq!(l.pending_grants(10).await.unwrap(), vec![g2.clone()]);
    assert_eq!(
        l.grants_of("acme").await.unwrap(),
        vec![g1.clone(), g2.clone()]
    );
    assert!(l.grants_of("beta").await.unwrap().is_empty());
    assert_eq!(g2.to_request().amount, 200);
}

async fn the_fold_matches_the_model_in_a_scripted_run(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    let c = "acme";
    sim.grant(c, "g-promo", "api", 100, 0, Some(T0 + 3_600_000), 0);
    sim.grant(c, "g-paid", "api", 1_000, 1, None, 10_000_000);
    sim.grant(c, "g-ai", "ai", 50, 0, None, 500_000);
    sim.reserve(c, "h1", "api", 150, 0, false, "chat");
    sim.settle(c, "h1", 120, 0);
    sim.reserve(c, "h2", "api", 50, 0, false, "embed");
    sim.void(c, "h2");
    sim.reserve(c, "h3", "api", 950, 0, false, "chat");
    // Overdraft: 30 left, the rest of 100 from an overdraft of up to 100.
    assert!(matches!(
        sim.reserve(c, "h4", "api", 100, 100, false, "chat"),
        ReserveOutcome::Placed { .. }
    ));
    // Posting more than held: the extra from overdraft up to the limit, then shortfall.
    match sim.settle(c, "h4", 200, 100) {
        ResolveOutcome::Posted { shortfall, .. } => assert!(shortfall > 0, "shortfall"),
        other => panic!("{other:?}"),
    }
    // Shadow mode: forced past the limit.
    assert!(matches!(
        sim.reserve(c, "h5", "ai", 80, 0, true, "chat"),
        ReserveOutcome::Placed { .. }
    ));
    sim.settle(c, "h5", 70, 0);
    // Debt repaid by the next grant.
    match sim.grant(c, "g-top", "api", 500, 1, None, 1_000_000) {
        GrantOutcome::Granted { debt_repaid, .. } => assert!(debt_repaid > 0),
        other => panic!("{other:?}"),
    }
    sim.grant(c, "g-ai-2", "ai", 10, 0, None, 0); // all of it repays debt
    // Posting more than held while grants still have credits: the extra burns from them.
    sim.reserve(c, "h8", "api", 10, 0, false, "chat");
    match sim.settle(c, "h8", 25, 0) {
        ResolveOutcome::Posted {
            posted, shortfall, ..
        } => assert_eq!((posted, shortfall), (25, 0)),
        other => panic!("{other:?}"),
    }
    // Breakage: a hold on a grant that expires before the hold resolves.
    sim.grant(c, "g-short", "api", 40, 0, Some(sim.now + 20_000), 400);
    sim.reserve(c, "h6", "api", 30, 0, false, "chat");
    sim.tick(25_000);
    sim.snap(c); // past expiry, not swept: live and book availability differ
    assert!(matches!(
        sim.expire_grant(c, "g-short"),
        GrantExpiryOutcome::Expired { .. }
    ));
    sim.void(c, "h6");
    // A hold that expires at its deadline.
    sim.reserve(c, "h7", "api", 10, 0, false, "chat");
    sim.tick(40_000);
    assert!(matches!(
        sim.expire_hold(c, "h7"),
        ResolveOutcome::Expired { .. }
    ));
    // Its request still settles: a late burn, posted once, folded like any burn.
    assert!(matches!(
        sim.settle(c, "h7", 10, 0),
        ResolveOutcome::PostedLate { posted: 10, .. }
    ));
    assert!(matches!(
        sim.settle(c, "h7", 10, 0),
        ResolveOutcome::AlreadyPosted { posted: 10, .. }
    ));
    sim.settle(c, "h3", 500, 0);
    // A second customer on another shard.
    sim.grant("beta", "g-b", "api", 10, 0, None, 0);
    sim.reserve("beta", "hb", "api", 10, 0, false, "chat");

    let entries = sim.entries();
    assert!(entries.iter().any(|e| {
        e.grants["breakage"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
    }));
    let late: Vec<_> = entries
        .iter()
        .filter(|e| e.details.get("late").is_some())
        .collect();
    assert_eq!(late.len(), 1, "one late burn");
    assert_eq!(late[0].amount, -10);
    assert!(
        late[0].event_id.starts_with("hold:h7:") && late[0].event_id.ends_with(":posted"),
        "{}",
        late[0].event_id
    );
    feed(l, &sim, 5).await;
    assert_balances_match(l, &sim).await;
    assert_totals_match(l, &sim, &["acme", "beta"]).await;
    assert!(l.verify_chain(None).await.unwrap().is_intact());
}

/// xorshift64*: a tiny seeded generator, so the run is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn the_fold_matches_the_model_in_random_runs(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    let customers = ["acme", "beta"];
    let types = ["api", "ai"];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut holds: Vec<(String, String)> = Vec::new();
    let mut grants: Vec<(String, String)> = Vec::new();
    for step in 0..400 {
        let c = customers[rng.below(2) as usize];
        let t = types[rng.below(2) as usize];
        match rng.below(10) {
            0 | 1 => {
                let id = format!("g{step}");
                let expires = (rng.below(3) == 0).then(|| sim.now + 1_000 + rng.below(60_000));
                let cost = if rng.below(2) == 0 {
                    0
                } else {
                    rng.below(10_000)
                };
                sim.grant(
                    c,
                    &id,
                    t,
                    1 + rng.below(100),
                    rng.below(3) as u32,
                    expires,
                    cost,
                );
                grants.push((c.to_string(), id));
            }
            2..=4 => {
                let id = format!("h{step}");
                let od = if rng.below(3) == 0 { 30 } else { 0 };
                let force = rng.below(8) == 0;
                sim.reserve(
                    c,
                    &id,
                    t,
                    rng.below(60),
                    od,
                    force,
                    ["chat", "embed"][step % 2],
                );
                holds.push((c.to_string(), id));
            }
            5 | 6 if !holds.is_empty() => {
                let (c, h) = holds[rng.below(holds.len() as u64) as usize].clone();
                let od = if rng.below(3) == 0 { 30 } else { 0 };
                sim.settle(&c, &h, rng.below(80), od);
            }
            7 if !holds.is_empty() => {
                let (c, h) = holds[rng.below(holds.len() as u64) as usize].clone();
                sim.void(&c, &h);
            }
            8 if !holds.is_empty() => {
                sim.tick(rng.below(40_000));
                let (c, h) = holds[rng.below(holds.len() as u64) as usize].clone();
                sim.expire_hold(&c, &h);
            }
            9 if !grants.is_empty() => {
                sim.tick(rng.below(40_000));
                let (c, g) = grants[rng.below(grants.len() as u64) as usize].clone();
                sim.expire_grant(&c, &g);
            }
            _ => sim.tick(rng.below(5_000)),
        }
    }
    let entries = sim.entries();
    assert!(entries.len() > 200, "{}", entries.len());
    // The seed reaches every kind, debt repayment, breakage and shortfall.
    for kind in [
        EntryKind::GrantAdded,
        EntryKind::HoldPlaced,
        EntryKind::HoldPosted,
        EntryKind::HoldVoided,
        EntryKind::HoldExpired,
        EntryKind::GrantExpired,
    ] {
        assert!(entries.iter().any(|e| e.kind == kind), "no {kind}");
    }
    let field = |e: &NewEntry, f: &str| e.details[f].as_str().map(|v| v != "0");
    assert!(
        entries
            .iter()
            .any(|e| field(e, "debt_repaid") == Some(true))
    );
    assert!(entries.iter().any(|e| field(e, "shortfall") == Some(true)));
    assert!(entries.iter().any(|e| {
        e.grants["breakage"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
    }));
    feed(l, &sim, 37).await;
    // Every 7th snapshot keeps the run short; the last is always checked.
    let last = sim.snapshots.len() - 1;
    let mut sampled = Sim::new();
    sampled.snapshots = sim
        .snapshots
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 == 0 || *i == last)
        .map(|(_, s)| s.clone())
        .collect();
    assert_balances_match(l, &sampled).await;
    assert_totals_match(l, &sim, &customers).await;
    assert!(l.verify_chain(None).await.unwrap().is_intact());
}

async fn adjustments_change_the_total(b: &Backend) {
    let l = &*b.ledger;
    let mut sim = Sim::new();
    sim.grant("acme", "g1", "api", 100, 0, None, 1_000);
    feed(l, &sim, 10).await;
    let adjust = |id: &str, amount: i64, grant_id: Option<&str>| {
        NewEntry::adjustment(&Adjustment {
            adjustment_id: id.into(),
            customer: "acme".into(),
            credit_type: "api".into(),
            amount,
            grant_id: grant_id.map(str::to_string),
            actor: "finance@example.com".into(),
            reason: "correction".into(),
            at_ms: sim.now + 10,
            shard: 0,
        })
        .unwrap()
    };
    let a1 = adjust("6f1c2a9e-0000-4000-8000-000000000001", -15, Some("g1"));
    let a2 = adjust("6f1c2a9e-0000-4000-8000-000000000002", -5, None);
    let out = l.append_batch(&[a1.clone(), a2]).await.unwrap();
    assert!(
        out.iter()
            .all(|o| matches!(o, AppendOutcome::Inserted { .. }))
    );
    assert_eq!(
        l.append_batch(std::slice::from_ref(&a1)).await.unwrap()[0],
        AppendOutcome::Duplicate {
            seq: match out[0] {
                AppendOutcome::Inserted { seq } => seq,
                _ => unreachable!(),
            }
        }
    );
    let bal = l.balance_at("acme", sim.now + 10).await.unwrap();
    let api = bal.of("api").unwrap();
    assert_eq!((api.total, api.available, api.debt), (80, 80, 5));
    assert_eq!(bal.grant("g1").unwrap().remaining, 85);
    let totals = l.customer_totals().await.unwrap();
    assert_eq!((totals[0].total, totals[0].held), (80, 0));
    assert!(
        NewEntry::adjustment(&Adjustment {
            adjustment_id: "bad id".into(),
            ..Adjustment {
                adjustment_id: String::new(),
                customer: "acme".into(),
                credit_type: "api".into(),
                amount: 1,
                grant_id: None,
                actor: String::new(),
                reason: String::new(),
                at_ms: 0,
                shard: 0,
            }
        })
        .is_err()
    );
    assert!(l.verify_chain(None).await.unwrap().is_intact());
}

// ---------------------------------------------------------------------------------------
// Postgres only: several sidecars appending at once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_postgres_keep_every_chain_intact() {
    let b = postgres().await;
    let Raw::Postgres(pg) = &b.raw else {
        unreachable!()
    };
    let mut sim = Sim::new();
    for (i, c) in ["acme", "beta", "gamma"].iter().enumerate() {
        sim.grant(c, &format!("g{i}"), "api", 1_000_000, 0, None, 0);
    }
    for n in 0..120 {
        let c = ["acme", "beta", "gamma"][n % 3];
        let h = format!("h{n}");
        sim.reserve(c, &h, "api", 5, 0, false, "chat");
        sim.settle(c, &h, 3, 0);
    }
    let entries = Arc::new(sim.entries());
    let total = entries.len();
    // Two "sidecars" with their own pools each write every entry, in batches of different
    // sizes and opposite orders, so they race on the same customers and event ids.
    let mut tasks = Vec::new();
    for (writer, batch) in [(0usize, 7usize), (1, 11)] {
        let ledger = PostgresLedger::connect(&pg.url()).await.unwrap();
        let entries = Arc::clone(&entries);
        tasks.push(tokio::spawn(async move {
            let mut chunks: Vec<Vec<NewEntry>> = entries.chunks(batch).map(<[_]>::to_vec).collect();
            if writer == 1 {
                // Within a customer the chain order is the order of insertion, so both
                // writers keep stream order per batch; they only race between batches.
                let half = chunks.len() / 2;
                chunks.rotate_left(half);
            }
            let mut inserted = 0;
            for chunk in chunks {
                for o in ledger.append_batch(&chunk).await.unwrap() {
                    match o {
                        AppendOutcome::Inserted { .. } => inserted += 1,
                        AppendOutcome::Duplicate { .. } => {}
                        AppendOutcome::Conflict { .. } => panic!("no conflicts expected"),
                    }
                }
            }
            inserted
        }));
    }
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await.unwrap();
    }
    assert_eq!(inserted, total);
    let report = b.ledger.verify_chain(None).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries_checked, total as u64);
    assert_eq!(report.customers_checked, 3);
    // The totals are right whatever order the events landed in.
    assert_totals_match(&*b.ledger, &sim, &["acme", "beta", "gamma"]).await;
}

/// SQLite rebuilds `ledger_entries` in migration 7 (a `CHECK` cannot be altered): a ledger
/// written before it keeps every row, `seq` and hash, stays append-only, and takes
/// overage entries after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migration_7_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.unwrap();
    let raw = Raw::Sqlite(path.clone());
    // The schema as migrations 1 to 6 left it.
    raw.exec(&format!(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         applied_at_ms BIGINT NOT NULL);\n{}\n{}\n{}\n{}\n{}\n{}\n\
         INSERT INTO schema_migrations VALUES (1, 'ledger', 0), (2, 'redis_generations', 0), \
         (3, 'control_audit', 0), (4, 'admin', 0), (5, 'usage_events', 0), \
         (6, 'config_versions', 0);",
        include_str!("../migrations/sqlite/0001_ledger.sql"),
        include_str!("../migrations/sqlite/0002_redis_generations.sql"),
        include_str!("../migrations/sqlite/0003_control_audit.sql"),
        include_str!("../migrations/sqlite/0004_admin.sql"),
        include_str!("../migrations/sqlite/0005_usage_events.sql"),
        include_str!("../migrations/sqlite/0006_config_versions.sql"),
    ))
    .await
    .unwrap();
    // This binary's appends add to the revenue rollup of migration 13: a stand-in takes
    // its place while the old schema is written, and migration 13 fills the real one.
    raw.exec(
        "CREATE TABLE revenue_grant_months (customer TEXT, grant_id TEXT, month_ms INTEGER, \
         granted INTEGER, cost_basis INTEGER, recognized INTEGER, breakage INTEGER, \
         PRIMARY KEY (customer, grant_id, month_ms))",
    )
    .await
    .unwrap();
    ledger.append_batch(&sample_entries()).await.unwrap();
    raw.exec("DROP TABLE revenue_grant_months").await.unwrap();
    let before = ledger.entries(&EntryQuery::default()).await.unwrap();
    assert!(!before.is_empty());

    // Migration 7 and every later one run.
    assert_eq!(ledger.migrate().await.unwrap().first(), Some(&7));
    let after = ledger.entries(&EntryQuery::default()).await.unwrap();
    assert_eq!(after, before, "same rows, seq and hashes");
    assert!(ledger.verify_chain(None).await.unwrap().is_intact());
    let err = raw
        .exec("DELETE FROM ledger_entries")
        .await
        .expect_err("still append-only");
    assert!(err.contains("append-only"), "{err}");

    let mut sim = Sim::new();
    sim.grant("gamma", "g9", "api", 10, 0, None, 0);
    sim.reserve("gamma", "h9", "api", 10, 0, false, "chat");
    sim.settle("gamma", "h9", 25, 0);
    let out = ledger.append_batch(&sim.entries()).await.unwrap();
    assert_eq!(out.len(), 4, "grant, placed, posted, overage");
    let overage = ledger.trail("req-h9").await.unwrap();
    let last = overage.last().unwrap();
    assert_eq!(last.entry.kind, EntryKind::Overage);
    assert!(last.seq > before.iter().map(|e| e.seq).max().unwrap());
}
