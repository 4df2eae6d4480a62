//! The admin auth layer on routes of another module: a router wrapped with
//! `require_role` answers 401 without a token, 403 to a role not listed and runs the
//! handler, with the caller in its extensions, for a role listed.

use axum::Router;
use axum::routing::get;
use creditgate_sidecar::api::admin::auth::{AuthState, Caller, Role, create_token, require_role};
use creditgate_sidecar::ledger::AdminDb;
use creditgate_sidecar::ledger::{LedgerAdmin, SqliteLedger};
use creditgate_sidecar::settings::LedgerArgs;

#[tokio::test]
async fn require_role_guards_other_modules_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    SqliteLedger::open(&path)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let db = AdminDb::open(&LedgerArgs {
        sqlite: Some(path),
        postgres: None,
    })
    .await
    .unwrap();
    let admin = create_token(&db, "ops-lead", Role::Admin, 1).await.unwrap();
    let support = create_token(&db, "helpdesk", Role::Support, 1)
        .await
        .unwrap();
    let modes: Router = Router::new().route(
        "/v1/mode",
        get(|axum::Extension(caller): axum::Extension<Caller>| async move { caller.name }),
    );
    let app = require_role(modes, AuthState::new(db), &[Role::Admin]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/mode");
    let anon = client.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let denied = client.get(&url).bearer_auth(&support).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let allowed = client.get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.unwrap(), "ops-lead");
}
