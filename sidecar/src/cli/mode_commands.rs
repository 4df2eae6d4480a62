//! `creditgate-sidecar mode …`: the command-line twin of the control routes of the admin
//! API. Talks to Redis directly; every change carries its actor and reason and lands in
//! the same audit log as the API's changes.

use creditgate_protocol::control::{AuditedChange, ControlChange, parse_percent};

use crate::api::control::{audit_json, gateway_json, parse_mode_or_clear, state_json};
use crate::cli::args::ModeCommand;
use crate::cli::stores::connect_redis;

/// Runs one `mode` subcommand and returns what it prints.
pub async fn mode_command(command: ModeCommand) -> anyhow::Result<String> {
    match command {
        ModeCommand::Set {
            redis,
            mode,
            route,
            customer,
            actor,
            reason,
        } => {
            let mode = parse_mode_or_clear(&mode).map_err(|e| anyhow::anyhow!("MODE: {e}"))?;
            let change = match (route, customer) {
                (Some(route), _) => ControlChange::Route(route, mode),
                (None, Some(customer)) => ControlChange::Customer(customer, mode),
                (None, None) => ControlChange::Global(mode),
            };
            change_control(&redis, change, actor, reason).await
        }
        ModeCommand::Rollout {
            redis,
            percent,
            actor,
            reason,
        } => {
            let percent = if percent == "clear" {
                None
            } else {
                Some(
                    parse_percent(&percent)
                        .map_err(|e| anyhow::anyhow!("PERCENT: {e}, or clear"))?,
                )
            };
            change_control(&redis, ControlChange::Rollout(percent), actor, reason).await
        }
        ModeCommand::Show { redis } => {
            let redis = connect_redis(&redis).await?;
            let state = redis.control_state().await?;
            let published = redis.published_version().await?.map_or(0, |(v, _)| v);
            let gateways = redis.gateways().await?;
            let out = serde_json::json!({
                "state": state_json(&state),
                "config": {"version": published},
                "gateways": gateways.iter().map(|g| gateway_json(g, published)).collect::<Vec<_>>(),
            });
            Ok(format!("{out:#}\n"))
        }
        ModeCommand::Audit { redis, limit } => {
            let redis = connect_redis(&redis).await?;
            let entries = redis.audit_log(limit).await?;
            let mut out = String::new();
            for e in &entries {
                out.push_str(&format!("{}\n", audit_json(e)));
            }
            Ok(out)
        }
    }
}

async fn change_control(
    redis: &crate::cli::args::RedisArgs,
    change: ControlChange,
    actor: String,
    reason: String,
) -> anyhow::Result<String> {
    let change = AuditedChange {
        change,
        actor,
        reason,
    };
    change.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let redis = connect_redis(redis).await?;
    let version = redis.change_control(&change).await?;
    Ok(format!(
        "{} (control version {version}) by {}: {}\n",
        change.change.describe(),
        change.actor,
        change.reason
    ))
}
