//! `creditgate-sidecar admin …`: the admin API's tokens (create the first one here) and a
//! terminal client of every admin call for ops. The arguments are in `admin_args`.
//!
//! The token commands write the ledger database directly. The other commands call the
//! admin API over HTTP with a token, so they obey the same roles, limits, approvals and
//! idempotency as any other client, and record the token's name as the actor. Nothing
//! here serves HTTP.

use anyhow::{Context, bail};

use crate::api::admin::auth::{Role, create_token, list_tokens, revoke_token};
use crate::cli::admin_args::{AdminCommand, CallArgs, Op, TokenCommand};
use crate::cli::stores::open_admin_db;
use crate::ledger::now_ms;

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
