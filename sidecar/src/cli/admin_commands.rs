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
    (method_of(&op), path_of(&op), body_of(op))
}

/// The HTTP method of a call: reads are GETs, replacing a setting is a PUT.
fn method_of(op: &Op) -> reqwest::Method {
    use reqwest::Method;
    match op {
        Op::Whoami
        | Op::Bundles
        | Op::Customer { .. }
        | Op::Approvals { .. }
        | Op::Balance { .. }
        | Op::Ledger { .. }
        | Op::Deliveries { .. } => Method::GET,
        Op::SetPlan { .. } | Op::SetAlerts { .. } => Method::PUT,
        Op::CreateCustomer { .. }
        | Op::CreateApiKey { .. }
        | Op::RevokeApiKey { .. }
        | Op::Grant { .. }
        | Op::Void { .. }
        | Op::Purchase { .. }
        | Op::Approve { .. } => Method::POST,
    }
}

/// The path of a call, with its query string.
fn path_of(op: &Op) -> String {
    let c = |c: &str, rest: &str| format!("/v1/admin/customers/{c}{rest}");
    match op {
        Op::Whoami => "/v1/admin/whoami".into(),
        Op::Bundles => "/v1/admin/bundles".into(),
        Op::CreateCustomer { .. } => "/v1/admin/customers".into(),
        Op::Customer { customer } => c(customer, ""),
        Op::SetPlan { customer, .. } => c(customer, "/plan"),
        Op::CreateApiKey { customer } => c(customer, "/api-keys"),
        Op::RevokeApiKey { customer, key_id } => c(customer, &format!("/api-keys/{key_id}/revoke")),
        Op::Grant { customer, .. } => c(customer, "/grants"),
        Op::Void {
            customer, grant_id, ..
        } => c(customer, &format!("/grants/{grant_id}/void")),
        Op::Purchase { customer, .. } => c(customer, "/purchases"),
        Op::Approvals { state } => format!("/v1/admin/grant-approvals?state={state}"),
        Op::Approve { request_id } => format!("/v1/admin/grant-approvals/{request_id}/approve"),
        Op::Balance { customer } => c(customer, "/balance"),
        Op::Ledger { customer, query } if query.is_empty() => c(customer, "/ledger"),
        Op::Ledger { customer, query } => c(customer, &format!("/ledger?{query}")),
        Op::SetAlerts { customer, .. } => c(customer, "/alerts"),
        Op::Deliveries {
            customer: Some(customer),
        } => format!("/v1/admin/webhook-deliveries?customer={customer}"),
        Op::Deliveries { customer: None } => "/v1/admin/webhook-deliveries".into(),
    }
}

/// The JSON body of a call, as the API names its fields; none for a read.
fn body_of(op: Op) -> Option<serde_json::Value> {
    use serde_json::json;
    match op {
        Op::CreateCustomer { customer, plan } => Some(json!({"customer": customer, "plan": plan})),
        Op::SetPlan { plan, .. } => Some(json!({"plan": plan})),
        Op::CreateApiKey { .. } | Op::RevokeApiKey { .. } | Op::Approve { .. } => Some(json!({})),
        Op::Grant {
            customer: _,
            source,
            credit_type,
            amount,
            reason_code,
            note,
            expires_in_days,
            amount_paid_micros,
        } => Some(json!({
            "source": source, "credit_type": credit_type, "amount": amount,
            "reason_code": reason_code, "note": note,
            "expires_at_ms": expires_in_days.map(|d| now_ms() + d * 86_400_000),
            "amount_paid_micros": amount_paid_micros,
        })),
        Op::Void { reason, .. } => Some(json!({"reason": reason})),
        Op::Purchase {
            bundle,
            payment_ref,
            ..
        } => Some(json!({"bundle": bundle, "payment_ref": payment_ref})),
        Op::SetAlerts {
            customer: _,
            credit_type,
            low_balance_threshold,
            recharge_threshold,
            recharge_target,
        } => Some(json!({
            "credit_type": credit_type, "low_balance_threshold": low_balance_threshold,
            "recharge_threshold": recharge_threshold, "recharge_target": recharge_target,
        })),
        Op::Whoami
        | Op::Bundles
        | Op::Customer { .. }
        | Op::Approvals { .. }
        | Op::Balance { .. }
        | Op::Ledger { .. }
        | Op::Deliveries { .. } => None,
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
