//! Migration 9 (plan history) on an SQLite ledger written before it: every customer on a
//! plan gets one history row, that plan since its creation, and the table is append-only.

use creditgate_sidecar::ledger::{AdminDb, LedgerAdmin, SqliteLedger};
use creditgate_sidecar::settings::LedgerArgs;
use sqlx::Connection;

/// Runs `statements` on the SQLite file at `path`, outside the ledger.
async fn exec(path: &std::path::Path, statements: &str) -> Result<(), String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_9_records_each_customers_plan_since_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path).await.unwrap();
    // The schema as migrations 1 to 7 left it, with two customers (one without a plan).
    exec(
        &path,
        &format!(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             applied_at_ms BIGINT NOT NULL);\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n\
             INSERT INTO schema_migrations VALUES (1, 'ledger', 0), (2, 'redis_generations', 0), \
             (3, 'control_audit', 0), (4, 'admin', 0), (5, 'usage_events', 0), \
             (6, 'config_versions', 0), (7, 'overage_entries', 0);\n\
             INSERT INTO customers VALUES ('acme', 'annual', 'billing', 1000), \
             ('globex', NULL, 'billing', 2000);",
            include_str!("../migrations/sqlite/0001_ledger.sql"),
            include_str!("../migrations/sqlite/0002_redis_generations.sql"),
            include_str!("../migrations/sqlite/0003_control_audit.sql"),
            include_str!("../migrations/sqlite/0004_admin.sql"),
            include_str!("../migrations/sqlite/0005_usage_events.sql"),
            include_str!("../migrations/sqlite/0006_config_versions.sql"),
            include_str!("../migrations/sqlite/0007_overage_entries.sql"),
        ),
    )
    .await
    .unwrap();

    assert!(ledger.migrate().await.unwrap().contains(&9));
    let db = AdminDb::open(&LedgerArgs {
        sqlite: Some(path.clone()),
        postgres: None,
    })
    .await
    .unwrap();
    let rows = db
        .fetch(
            "SELECT customer, plan, since_ms, actor FROM customer_plan_history ORDER BY customer",
            &[],
            |row| {
                Ok((
                    row.try_get::<String, _>("customer")?,
                    row.try_get::<Option<String>, _>("plan")?,
                    row.try_get::<i64, _>("since_ms")?,
                    row.try_get::<String, _>("actor")?,
                ))
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(
            "acme".to_string(),
            Some("annual".to_string()),
            1000,
            "migration:plan_history".to_string()
        )]
    );
    let err = exec(&path, "UPDATE customer_plan_history SET since_ms = 0")
        .await
        .expect_err("append-only");
    assert!(err.contains("append-only"), "{err}");
    let err = exec(&path, "DELETE FROM customer_plan_history")
        .await
        .expect_err("append-only");
    assert!(err.contains("append-only"), "{err}");
}
