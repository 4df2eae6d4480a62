//! The two ledger backends a sidecar test runs on: an SQLite file in the test's temp dir or
//! a database of its own on a Postgres server shared by the tests that overlap in time, plus
//! [`on_both_backends!`](crate::on_both_backends) to run a scenario on each and
//! [`open_ledger`] to read the ledger back through the sidecar's library.
//!
//! It only provides ledgers; it must not start a sidecar (the harnesses do).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use creditgate_sidecar::ledger::{Ledger, PostgresLedger, SqliteLedger};

use crate::{LedgerTarget, Postgres};

/// Which ledger a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the test's temp dir.
    Sqlite,
    /// A fresh database on a shared Postgres server.
    Postgres,
}

/// One Postgres server shared by the tests of a test binary that overlap in time (each test
/// gets its own database); it stops when the last test holding it ends.
static SHARED_POSTGRES: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

/// Makes database names unique within the test process.
static DATABASE_SEQ: AtomicU64 = AtomicU64::new(0);

impl Backend {
    /// A fresh ledger of this backend: for SQLite the file `ledger.sqlite` in `dir`, for
    /// Postgres a new database named `<db_prefix>_<n>` on the shared server, whose handle is
    /// returned too (keep it as long as the ledger is used).
    ///
    /// # Panics
    /// Panics when Postgres does not start or the database cannot be created.
    pub fn fresh_ledger(
        self,
        dir: &Path,
        db_prefix: &str,
    ) -> (LedgerTarget, Option<Arc<Postgres>>) {
        match self {
            Self::Sqlite => (LedgerTarget::Sqlite(dir.join("ledger.sqlite")), None),
            Self::Postgres => {
                let (pg, url) = postgres_database(db_prefix);
                (LedgerTarget::Postgres(url), Some(pg))
            }
        }
    }
}

/// The shared Postgres server (started when no test holds it) and the URL of a new database
/// on it named `<prefix>_<n>`.
fn postgres_database(prefix: &str) -> (Arc<Postgres>, String) {
    let pg = {
        let mut shared = SHARED_POSTGRES.lock().unwrap_or_else(|e| e.into_inner());
        match shared.upgrade() {
            Some(pg) => pg,
            None => {
                let pg = Arc::new(Postgres::start().expect("postgres starts"));
                *shared = Arc::downgrade(&pg);
                pg
            }
        }
    };
    let name = format!("{prefix}_{}", DATABASE_SEQ.fetch_add(1, Ordering::SeqCst));
    pg.create_database(&name).expect("create database");
    let url = pg.url_for(&name);
    (pg, url)
}

/// Opens the ledger at `target` through the sidecar's library, as the sidecar does.
///
/// # Panics
/// Panics when the file or database cannot be opened.
pub async fn open_ledger(target: &LedgerTarget) -> Arc<dyn Ledger> {
    match target {
        LedgerTarget::Sqlite(path) => Arc::new(SqliteLedger::open(path).await.expect("sqlite")),
        LedgerTarget::Postgres(url) => {
            Arc::new(PostgresLedger::connect(url).await.expect("postgres"))
        }
    }
}

/// Runs each scenario `fn(Backend)` once per backend, as the tests `<scenario>::sqlite` and
/// `<scenario>::postgres`. Invoke it at the top level of a test file.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn sqlite() {
                super::$scenario($crate::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                super::$scenario($crate::Backend::Postgres);
            }
        }
    )*};
}
