//! The `admin` subcommands' arguments, parsed with clap: token management and one
//! admin API call per `Op`, named as the API names its fields.
//!
//! This module only describes the command line; it must not connect to anything.

use clap::{Args, Subcommand};

use crate::settings::LedgerArgs;

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
