//! What the console's handlers and pages share: the admin API's state and router, the
//! sessions, and who is visiting. A leaf of the console: it names no page and no route.

use std::sync::Arc;

use axum::Router;

use super::session::{ConsoleSessions, Session};
use crate::api::admin::auth::Caller;
use crate::api::admin::state::AdminState;

/// A notice for a page after a change: `Ok` done, `Err` refused (with the admin API's
/// message).
pub type Notice = Option<Result<String, String>>;

/// What the console's handlers share.
pub struct ConsoleState {
    /// The admin API's state (its settings and ledger, for reads the admin API has no route for).
    pub admin: Arc<AdminState>,
    /// The admin API's router, which every console call goes through.
    pub api: Router,
    /// Logged-in sessions.
    pub sessions: ConsoleSessions,
}

/// A logged-in request: its session and the caller behind it.
pub struct Visit {
    /// The session.
    pub session: Session,
    /// The token's name and current role.
    pub caller: Caller,
}
