//! Migration 10 (owed Redis rebuilds) on an SQLite ledger written before it: it applies
//! on top of migrations 1 to 9, keeps what was there, and the rebuild rows work.

use creditgate_sidecar::ledger::{LedgerAdmin, LedgerRebuilds, RebuildRecord, SqliteLedger};
use sqlx::Connection;

/// Runs `statements` on the SQLite file at `path`, outside the ledger.
async fn exec(path: &std::path::Path, statements: &str) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .expect("connect");
    sqlx::raw_sql(statements)
        .execute(&mut conn)
        .await
        .expect("statements");
    conn.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_10_applies_on_a_ledger_at_9_and_its_rows_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.unwrap();
    exec(
        &path,
        &format!(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             applied_at_ms BIGINT NOT NULL);\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n\
             INSERT INTO schema_migrations VALUES (1, 'ledger', 0), (2, 'redis_generations', 0), \
             (3, 'control_audit', 0), (4, 'admin', 0), (5, 'usage_events', 0), \
             (6, 'config_versions', 0), (7, 'overage_entries', 0), (8, 'dead_letters', 0), \
             (9, 'plan_history', 0);\n\
             INSERT INTO customers VALUES ('acme', NULL, 'billing', 1000);",
            include_str!("../migrations/sqlite/0001_ledger.sql"),
            include_str!("../migrations/sqlite/0002_redis_generations.sql"),
            include_str!("../migrations/sqlite/0003_control_audit.sql"),
            include_str!("../migrations/sqlite/0004_admin.sql"),
            include_str!("../migrations/sqlite/0005_usage_events.sql"),
            include_str!("../migrations/sqlite/0006_config_versions.sql"),
            include_str!("../migrations/sqlite/0007_overage_entries.sql"),
            include_str!("../migrations/sqlite/0008_dead_letters.sql"),
            include_str!("../migrations/sqlite/0009_plan_history.sql"),
        ),
    )
    .await;

    // Migration 10 and every later one.
    let applied = ledger.migrate().await.unwrap();
    assert_eq!(applied.first(), Some(&10), "{applied:?}");
    let owed = RebuildRecord::owed("void-g1", "acme", "void of grant g1", 5_000);
    assert!(ledger.record_rebuild(&owed).await.unwrap());
    assert!(
        ledger
            .mark_rebuild_retry("void-g1", "busy", 6_000)
            .await
            .unwrap()
    );
    let listed = ledger.owed_rebuilds(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].attempts, listed[0].next_attempt_at_ms),
        (1, 6_000)
    );
    assert!(ledger.mark_rebuild_done("void-g1", 7_000).await.unwrap());
    assert!(!ledger.mark_rebuild_done("void-g1", 8_000).await.unwrap());
    assert!(ledger.owed_rebuilds(10).await.unwrap().is_empty());
    assert_eq!(ledger.migrate().await.unwrap(), Vec::<i64>::new());
}
