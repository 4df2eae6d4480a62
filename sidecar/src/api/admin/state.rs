//! What every admin handler and admin background pass shares: the sidecar, the admin
//! tables, the token checks, the operations settings and the admin metrics.
//!
//! A leaf of the admin API: it names no handler and no route.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::FromRef;

use super::auth::AuthState;
use crate::api::customer_session::SessionKey;
use crate::jobs::daemon::Sidecar;
use crate::ledger::AdminDb;
use crate::metrics::AdminMetrics;
use crate::operations::Operations;
use crate::settings::LedgerArgs;

/// What the admin handlers share.
pub struct AdminState {
    /// The sidecar: ledger, credit store, pricing.
    pub sidecar: Arc<Sidecar>,
    /// The admin tables.
    pub db: AdminDb,
    /// Token checks.
    pub auth: AuthState,
    /// The operations settings.
    pub ops: Arc<Operations>,
    /// Held while a limited grant checks its role's daily total and is recorded, so two
    /// concurrent grants of one sidecar cannot both pass the limit (across sidecars, the
    /// [`super::day_limit`] lock does that on Postgres).
    pub limit_lock: tokio::sync::Mutex<()>,
    /// The admin API's metrics, served on the sidecar's `/metrics`.
    pub metrics: AdminMetrics,
    /// The key customer sessions are minted with; `None`: sessions are off.
    pub sessions: Option<SessionKey>,
}

impl FromRef<Arc<AdminState>> for AuthState {
    fn from_ref(state: &Arc<AdminState>) -> AuthState {
        state.auth.clone()
    }
}

impl AdminState {
    /// The admin API's shared state for `run`: opens the admin tables of the ledger
    /// `ledger` names and registers the admin metrics beside the sidecar's.
    pub async fn open(
        sidecar: Arc<Sidecar>,
        ledger: &LedgerArgs,
        ops: Arc<Operations>,
        sessions: Option<SessionKey>,
    ) -> anyhow::Result<Arc<AdminState>> {
        let db = AdminDb::open(ledger)
            .await
            .context("opening the admin tables of the ledger database")?;
        let metrics = sidecar.metrics.register_admin();
        Ok(Arc::new(AdminState {
            metrics,
            sidecar,
            auth: AuthState::new(db.clone()),
            db,
            ops,
            limit_lock: tokio::sync::Mutex::new(()),
            sessions,
        }))
    }
}
