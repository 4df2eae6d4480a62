//! `creditgate-sidecar admin …`: the admin API's tokens (create the first one here) and
//! the setup `run` uses to serve the API. The token commands write the ledger database
//! directly; nothing here serves HTTP.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::admin::AdminState;
use crate::admin::auth::{AuthState, Role, create_token, list_tokens, revoke_token};
use crate::admin::db::AdminDb;
use crate::cli::LedgerArgs;
use crate::commands::open_ledger;
use crate::daemon::Sidecar;
use crate::ledger::now_ms;
use crate::operations::Operations;

/// What `admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manages the admin API's bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// What `admin token` does.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it once (only its hash is kept).
    Create {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The token's name, recorded as the actor of every change made with it.
        #[arg(long)]
        name: String,
        /// admin, billing, support, sales or readonly.
        #[arg(long)]
        role: String,
    },
    /// Revokes a token by name.
    Revoke {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The token's name.
        #[arg(long)]
        name: String,
    },
    /// Lists the tokens (names and roles; never the tokens).
    List {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

/// Opens the admin tables of the ledger the arguments name (migrating it first).
pub async fn open_admin_db(args: &LedgerArgs) -> anyhow::Result<AdminDb> {
    open_ledger(args).await?;
    AdminDb::open(args)
        .await
        .context("opening the admin tables of the ledger database")
}

/// The admin API's shared state for `run`.
pub async fn admin_state(
    sidecar: Arc<Sidecar>,
    ledger: &LedgerArgs,
    ops: Arc<Operations>,
) -> anyhow::Result<Arc<AdminState>> {
    let db = AdminDb::open(ledger)
        .await
        .context("opening the admin tables of the ledger database")?;
    Ok(Arc::new(AdminState {
        sidecar,
        auth: AuthState::new(db.clone()),
        db,
        ops,
        limit_lock: tokio::sync::Mutex::new(()),
    }))
}

/// Runs an `admin` command.
pub async fn execute(command: AdminCommand) -> anyhow::Result<String> {
    match command {
        AdminCommand::Token(TokenCommand::Create { ledger, name, role }) => {
            let Some(role) = Role::parse(&role) else {
                bail!("--role: {role:?} is not one of admin, billing, support, sales, readonly");
            };
            let db = open_admin_db(&ledger).await?;
            let token = create_token(&db, &name, role, now_ms()).await?;
            Ok(format!("{token}\n"))
        }
        AdminCommand::Token(TokenCommand::Revoke { ledger, name }) => {
            let db = open_admin_db(&ledger).await?;
            if revoke_token(&db, &name, now_ms()).await? {
                Ok(format!("token {name} revoked\n"))
            } else {
                bail!("no active token named {name:?}")
            }
        }
        AdminCommand::Token(TokenCommand::List { ledger }) => {
            let db = open_admin_db(&ledger).await?;
            let mut out = String::new();
            for (name, role, created, revoked) in list_tokens(&db).await? {
                let state = match revoked {
                    Some(at) => format!("revoked at {at}"),
                    None => "active".to_string(),
                };
                out.push_str(&format!("{name}\t{role}\tcreated {created}\t{state}\n"));
            }
            Ok(out)
        }
    }
}
