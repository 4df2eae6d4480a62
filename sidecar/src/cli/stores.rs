//! Opens the stores that the command line names: the ledger (migrated), the credit store
//! and the ledger's admin tables. Shared by the commands; nothing here parses arguments or
//! prints.

use std::sync::Arc;

use anyhow::Context;
use creditgate_protocol::{Keyspace, RedisStore, redact_secrets};

use crate::cli::args::RedisArgs;
use crate::ledger::{AdminDb, Ledger, PostgresLedger, SqliteLedger};
use crate::settings::{DEFAULT_SQLITE_PATH, LedgerArgs};

/// Opens the ledger the arguments name and runs its migrations.
pub async fn open_ledger(args: &LedgerArgs) -> anyhow::Result<Arc<dyn Ledger>> {
    let ledger: Arc<dyn Ledger> =
        match (&args.sqlite, &args.postgres) {
            (_, Some(url)) => Arc::new(PostgresLedger::connect(url).await.with_context(|| {
                format!("opening the Postgres ledger at {}", redact_secrets(url))
            })?),
            (path, None) => {
                let path = path.clone().unwrap_or_else(|| DEFAULT_SQLITE_PATH.into());
                Arc::new(
                    SqliteLedger::open(&path)
                        .await
                        .with_context(|| format!("opening the SQLite ledger {}", path.display()))?,
                )
            }
        };
    ledger.migrate().await.context("migrating the ledger")?;
    Ok(ledger)
}

/// Connects to the credit store the arguments name.
pub async fn connect_redis(args: &RedisArgs) -> anyhow::Result<Arc<RedisStore>> {
    let keyspace = Keyspace::new(&args.prefix, args.shards);
    let store = RedisStore::connect(&args.target(), keyspace, args.timeout_ms)
        .await
        .with_context(|| format!("connecting to Redis at {}", args.describe()))?;
    Ok(Arc::new(store))
}

/// Opens the admin tables of the ledger the arguments name (migrating it first).
pub async fn open_admin_db(args: &LedgerArgs) -> anyhow::Result<AdminDb> {
    open_ledger(args).await?;
    AdminDb::open(args)
        .await
        .context("opening the admin tables of the ledger database")
}
