//! The versioned schema migrations of each backend, applied in order at start-up and
//! recorded in `schema_migrations`.
//!
//! The SQL lives in `sidecar/migrations/<backend>/`. A released migration must never be
//! edited (a database that ran it would not run it again); changes are new versions.

/// One schema migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Version number, increasing from 1. Gaps are allowed (each engineer's branch takes its
    /// own number); every missing version is applied in order.
    pub version: i64,
    /// Short name, recorded beside the version.
    pub name: &'static str,
    /// The SQL, run in one transaction with the version's record.
    pub sql: &'static str,
}

/// Creates the record of applied migrations; run before anything else, idempotent.
pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";

/// SQLite migrations, in version order.
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/sqlite/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "redis_generations",
        sql: include_str!("../../migrations/sqlite/0002_redis_generations.sql"),
    },
    Migration {
        version: 3,
        name: "control_audit",
        sql: include_str!("../../migrations/sqlite/0003_control_audit.sql"),
    },
    Migration {
        version: 4,
        name: "admin",
        sql: include_str!("../../migrations/sqlite/0004_admin.sql"),
    },
    Migration {
        version: 5,
        name: "usage_events",
        sql: include_str!("../../migrations/sqlite/0005_usage_events.sql"),
    },
    Migration {
        version: 6,
        name: "config_versions",
        sql: include_str!("../../migrations/sqlite/0006_config_versions.sql"),
    },
    Migration {
        version: 7,
        name: "overage_entries",
        sql: include_str!("../../migrations/sqlite/0007_overage_entries.sql"),
    },
    Migration {
        version: 8,
        name: "dead_letters",
        sql: include_str!("../../migrations/sqlite/0008_dead_letters.sql"),
    },
    Migration {
        version: 9,
        name: "plan_history",
        sql: include_str!("../../migrations/sqlite/0009_plan_history.sql"),
    },
    Migration {
        version: 10,
        name: "redis_rebuilds",
        sql: include_str!("../../migrations/sqlite/0010_redis_rebuilds.sql"),
    },
    Migration {
        version: 13,
        name: "dispute_queries",
        sql: include_str!("../../migrations/sqlite/0013_dispute_queries.sql"),
    },
];

/// Postgres migrations, in version order.
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/postgres/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "redis_generations",
        sql: include_str!("../../migrations/postgres/0002_redis_generations.sql"),
    },
    Migration {
        version: 3,
        name: "control_audit",
        sql: include_str!("../../migrations/postgres/0003_control_audit.sql"),
    },
    Migration {
        version: 4,
        name: "admin",
        sql: include_str!("../../migrations/postgres/0004_admin.sql"),
    },
    Migration {
        version: 5,
        name: "usage_events",
        sql: include_str!("../../migrations/postgres/0005_usage_events.sql"),
    },
    Migration {
        version: 6,
        name: "config_versions",
        sql: include_str!("../../migrations/postgres/0006_config_versions.sql"),
    },
    Migration {
        version: 7,
        name: "overage_entries",
        sql: include_str!("../../migrations/postgres/0007_overage_entries.sql"),
    },
    Migration {
        version: 8,
        name: "dead_letters",
        sql: include_str!("../../migrations/postgres/0008_dead_letters.sql"),
    },
    Migration {
        version: 9,
        name: "plan_history",
        sql: include_str!("../../migrations/postgres/0009_plan_history.sql"),
    },
    Migration {
        version: 10,
        name: "redis_rebuilds",
        sql: include_str!("../../migrations/postgres/0010_redis_rebuilds.sql"),
    },
    Migration {
        version: 13,
        name: "dispute_queries",
        sql: include_str!("../../migrations/postgres/0013_dispute_queries.sql"),
    },
];
