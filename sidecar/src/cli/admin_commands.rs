//! `creditgate-sidecar admin …`: the admin API's tokens (create the first one here), the
//! setup `run` uses to serve the API, and a terminal client of every admin call for ops.
//!
//! The token commands write the ledger database directly. The other commands call the
//! admin API over HTTP with a token, so they obey the same roles, limits, approvals and
//! idempotency as any other client, and record the token's name as the actor. Nothing
//! here serves HTTP.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::api::admin::AdminState;
use crate::api::admin::auth::{AuthState, Role, create_token, list_tokens, revoke_token};
use crate::api::admin::db::AdminDb;
use crate::cli::args::LedgerArgs;
use crate::cli::commands::open_ledger;
use crate::jobs::daemon::Sidecar;
use crate::ledger::now_ms;
use crate::operations::Operations;

/// What `admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manages the admin API's bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Calls the admin API of a running sidecar.
    Call(CallArgs),
}

/// Where the admin API is and who calls it.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The admin API's base URL, e.g. `http://127.0.0.1:9192`.
    #[arg(long, env = "CREDITGATE_ADMIN_URL")]
    pub url: String,
    /// The bearer token (prefer the environment variable: arguments show in `ps`).
    #[arg(long, env = "CREDITGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Idempotency-Key of a mutating call; reuse it to retry safely (default: random,
    /// printed to stderr).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `admin call`: one admin API call.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The API and the token.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The call.
    #[command(subcommand)]
    pub op: Op,
}

/// Every admin call, as the API names its fields.
#[derive(Debug, Clone, Subcommand)]
pub enum Op {
    /// The token's name and role.
    Whoami,
    /// The configured top-up bundles.
    Bundles,
    /// Creates a customer.
    CreateCustomer {
        /// The customer id.
        customer: String,
        /// Its plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Shows a customer: plan and API keys.
    Customer {
        /// The customer id.
        customer: String,
    },
    /// Attaches a customer to a plan.
    SetPlan {
        /// The customer id.
        customer: String,
        /// The plan.
        #[arg(long)]
        plan: String,
    },
    /// Issues an API key (printed once).
    CreateApiKey {
        /// The customer id.
        customer: String,
    },
    /// Revokes an API key.
    RevokeApiKey {
        /// The customer id.
        customer: String,
        /// The key's id.
        #[arg(long)]
        key_id: String,
    },
    /// Grants credits.
    Grant {
        /// The customer id.
        customer: String,
        /// purchase, promotion, plan_allotment, goodwill or adjustment.
        #[arg(long)]
        source: String,
        /// The credit type.
        #[arg(long)]
        credit_type: String,
        /// Credits, in the credit type's smallest unit.
        #[arg(long)]
        amount: u64,
        /// A reason code from the operations file.
        #[arg(long)]
        reason_code: String,
        /// Free text.
        #[arg(long)]
        note: Option<String>,
        /// Days until the unused rest expires (promotions must expire).
        #[arg(long)]
        expires_in_days: Option<u64>,
        /// Money paid, currency micro-units (purchases).
        #[arg(long)]
        amount_paid_micros: Option<u64>,
    },
    /// Voids a grant's remaining credits.
    Void {
        /// The customer id.
        customer: String,
        /// The grant.
        #[arg(long)]
        grant_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Records a purchase of a bundle.
    Purchase {
        /// The customer id.
        customer: String,
        /// The bundle's id.
        #[arg(long)]
        bundle: String,
        /// The payment's reference.
        #[arg(long)]
        payment_ref: Option<String>,
    },
    /// Lists grant approvals.
    Approvals {
        /// pending or approved.
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Approves a pending grant.
    Approve {
        /// The approval request id.
        request_id: String,
    },
    /// A customer's balance per credit type and per grant.
    Balance {
        /// The customer id.
        customer: String,
    },
    /// A customer's ledger entries (query as the API takes it, e.g. `kind=grant_added&limit=10`).
    Ledger {
        /// The customer id.
        customer: String,
        /// The query string.
        #[arg(long, default_value = "")]
        query: String,
    },
    /// Sets a customer's low-balance and auto-recharge thresholds for one credit type.
    SetAlerts {
        /// The customer id.
        customer: String,
        /// The credit type.
        #[arg(long)]
        credit_type: String,
        /// Low-balance webhook threshold.
        #[arg(long)]
        low_balance_threshold: Option<u64>,
        /// Auto-recharge below this.
        #[arg(long)]
        recharge_threshold: Option<u64>,
        /// Auto-recharge up to this.
        #[arg(long)]
        recharge_target: Option<u64>,
    },
    /// The webhook delivery log.
    Deliveries {
        /// Only this customer.
        #[arg(long)]
        customer: Option<String>,
    },
}

/// Largest answer the CLI prints, bytes.
const CLI_ANSWER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Timeout of one CLI call.
const CLI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The method, path and body of a call.
fn request_of(op: Op) -> (reqwest::Method, String, Option<serde_json::Value>) {
    use reqwest::Method;
    use serde_json::json;
    let c = |c: &str, rest: &str| format!("/v1/admin/customers/{c}{rest}");
    match op {
        Op::Whoami => (Method::GET, "/v1/admin/whoami".into(), None),
        Op::Bundles => (Method::GET, "/v1/admin/bundles".into(), None),
        Op::CreateCustomer { customer, plan } => (
            Method::POST,
            "/v1/admin/customers".into(),
            Some(json!({"customer": customer, "plan": plan})),
        ),
        Op::Customer { customer } => (Method::GET, c(&customer, ""), None),
        Op::SetPlan { customer, plan } => (
            Method::PUT,
            c(&customer, "/plan"),
            Some(json!({"plan": plan})),
        ),
        Op::CreateApiKey { customer } => (Method::POST, c(&customer, "/api-keys"), Some(json!({}))),
        Op::RevokeApiKey { customer, key_id } => (
            Method::POST,
            c(&customer, &format!("/api-keys/{key_id}/revoke")),
            Some(json!({})),
        ),
        Op::Grant {
            customer,
            source,
            credit_type,
            amount,
            reason_code,
            note,
            expires_in_days,
            amount_paid_micros,
        } => (
            Method::POST,
            c(&customer, "/grants"),
            Some(json!({
                "source": source, "credit_type": credit_type, "amount": amount,
                "reason_code": reason_code, "note": note,
                "expires_at_ms": expires_in_days.map(|d| now_ms() + d * 86_400_000),
                "amount_paid_micros": amount_paid_micros,
            })),
        ),
        Op::Void {
            customer,
            grant_id,
            reason,
        } => (
            Method::POST,
            c(&customer, &format!("/grants/{grant_id}/void")),
            Some(json!({"reason": reason})),
        ),
        Op::Purchase {
            customer,
            bundle,
            payment_ref,
        } => (
            Method::POST,
            c(&customer, "/purchases"),
            Some(json!({"bundle": bundle, "payment_ref": payment_ref})),
        ),
        Op::Approvals { state } => (
            Method::GET,
            format!("/v1/admin/grant-approvals?state={state}"),
            None,
        ),
        Op::Approve { request_id } => (
            Method::POST,
            format!("/v1/admin/grant-approvals/{request_id}/approve"),
            Some(json!({})),
        ),
        Op::Balance { customer } => (Method::GET, c(&customer, "/balance"), None),
        Op::Ledger { customer, query } => (
            Method::GET,
            if query.is_empty() {
                c(&customer, "/ledger")
            } else {
                c(&customer, &format!("/ledger?{query}"))
            },
            None,
        ),
        Op::SetAlerts {
            customer,
            credit_type,
            low_balance_threshold,
            recharge_threshold,
            recharge_target,
        } => (
            Method::PUT,
            c(&customer, "/alerts"),
            Some(json!({
                "credit_type": credit_type, "low_balance_threshold": low_balance_threshold,
                "recharge_threshold": recharge_threshold, "recharge_target": recharge_target,
            })),
        ),
        Op::Deliveries { customer } => (
            Method::GET,
            match customer {
                Some(c) => format!("/v1/admin/webhook-deliveries?customer={c}"),
                None => "/v1/admin/webhook-deliveries".into(),
            },
            None,
        ),
    }
}

/// Sends one call and returns the pretty-printed answer; a non-2xx answer is an error
/// carrying the API's JSON error.
async fn call(args: CallArgs) -> anyhow::Result<String> {
    let CallArgs { api, op } = args;
    let (method, path, body) = request_of(op);
    let client = reqwest::Client::builder()
        .timeout(CLI_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let mut req = client.request(method.clone(), &url).bearer_auth(&api.token);
    if let Some(mut body) = body {
        // Absent options are left out rather than sent as null.
        if let Some(map) = body.as_object_mut() {
            map.retain(|_, v| !v.is_null());
        }
        let key = api
            .idempotency_key
            .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
        eprintln!("Idempotency-Key: {key}");
        req = req.header("Idempotency-Key", key).json(&body);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("reading the answer")?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(CLI_ANSWER_MAX_BYTES)]);
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| format!("{v:#}"))
        .unwrap_or_else(|_| text.into_owned());
    if status.is_success() {
        Ok(format!("{pretty}\n"))
    } else {
        bail!("{status}: {pretty}")
    }
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
    let metrics = sidecar.metrics.register_admin();
    Ok(Arc::new(AdminState {
        metrics,
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
        AdminCommand::Call(args) => call(args).await,
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
