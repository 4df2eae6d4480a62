//! The sidecar's commands other than `inspect`: `run`, `grant`, `ledger verify|balance`
//! and `reconcile`. Each opens what it needs, does its one job and returns what to print.

use std::sync::Arc;

use anyhow::{Context, bail};
use creditgate_protocol::{GrantSource, RedisStore};
use tokio::sync::watch;

use crate::api::admin;
use crate::api::admin::state::AdminState;
use crate::api::customer_page::PageSettings;
use crate::api::customer_session::SessionKey;
use crate::api::read_access::ReadState;
use crate::cli::args::{GrantArgs, ReconcileArgs, RedisArgs, RunArgs};
use crate::cli::stores::{connect_redis, open_ledger};
use crate::jobs::config_publisher::{ConfigPublisher, FLEET_STATUS_MS, refresh_fleet_metrics};
use crate::jobs::daemon::{SharedPricing, Sidecar};
use crate::jobs::fleet_metrics::FleetMetrics;
use crate::jobs::outbox::{Issued, issue_grant};
use crate::jobs::reconcile::{
    REPAIR_CONFIRM_MS, Rebuilt, ReconcileReport, compare, confirmed_drifts, rebuild_customer,
    with_positions,
};
use crate::jobs::writer::LedgerWriter;
use crate::ledger::{GrantRecord, RecordGrantOutcome, now_ms};
use crate::metrics::SidecarMetrics;
use crate::operations::Operations;
use crate::settings::LedgerArgs;

/// `run`: the sidecar, until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<String> {
    crate::cli::process::init_logging();
    let (pricing, operations) = load_config_files(&args)?;
    let sessions = SessionKey::load(
        args.session_key_file.as_deref(),
        args.session_key.as_deref(),
    )?;
    let ledger = open_ledger(&args.ledger).await?;
    let Some(redis) = connect_redis_when_up(&args.redis).await else {
        return Ok(String::new());
    };
    let metrics = Arc::new(SidecarMetrics::new());
    let fleet_metrics = Arc::new(FleetMetrics::new(metrics.registry()));
    let sidecar = Arc::new(Sidecar {
        redis,
        ledger,
        metrics,
        consumer: args
            .consumer
            .clone()
            .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar".to_string())),
        last_reconcile: Default::default(),
        pricing,
        pricing_history: Default::default(),
    });
    if let Err(e) = sidecar
        .pricing_history
        .refresh(sidecar.ledger.as_ref())
        .await
    {
        tracing::warn!(error = %e, "reading the recorded pricing versions failed; retried per usage-events request");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    spawn_config_publisher(&args, &sidecar, fleet_metrics, stop_rx.clone());
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", args.listen))?;
    let read_state = read_state(&args, &sidecar, operations.as_deref(), sessions.clone()).await?;
    let http = tokio::spawn(crate::api::read_listener::serve(
        listener,
        read_state,
        stop_rx.clone(),
    ));
    let admin = match (&args.admin_listen, operations) {
        (Some(listen), Some(ops)) => {
            Some(spawn_admin_api(listen, &args.ledger, &sidecar, ops, sessions, &stop_rx).await?)
        }
        _ => None,
    };
    tokio::spawn(async move {
        crate::cli::process::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    sidecar.run(stop_rx).await?;
    http.await.context("HTTP listener task")??;
    if let Some(admin) = admin {
        admin.await.context("admin listener task")??;
    }
    Ok(String::new())
}

/// The pricing config (`--config`) and the operations file (`--operations`), each loaded
/// and validated when given; every error of a bad file is reported.
fn load_config_files(
    args: &RunArgs,
) -> anyhow::Result<(Option<SharedPricing>, Option<Arc<Operations>>)> {
    let pricing = match &args.config {
        Some(path) => {
            let config = creditgate_config::PricingConfig::load(path)
                .map_err(|errors| anyhow::anyhow!("{errors}"))?;
            tracing::info!(config = %path.display(), summary = %config.summary(), "pricing config loaded");
            Some(Arc::new(arc_swap::ArcSwap::from_pointee(config)))
        }
        None => None,
    };
    let operations = match &args.operations {
        Some(path) => Some(Arc::new(
            Operations::load(path).map_err(|errors| anyhow::anyhow!("{errors}"))?,
        )),
        None => None,
    };
    Ok((pricing, operations))
}

/// What the read listener needs: the admin tables (tokens, alert settings), the session
/// key and the customer page's settings.
async fn read_state(
    args: &RunArgs,
    sidecar: &Arc<Sidecar>,
    ops: Option<&Operations>,
    sessions: Option<SessionKey>,
) -> anyhow::Result<Arc<ReadState>> {
    let db = crate::ledger::AdminDb::open(&args.ledger)
        .await
        .context("opening the admin tables of the ledger database for the read listener")?;
    let top_up_url = sidecar
        .pricing
        .as_ref()
        .and_then(|p| p.load().billing().top_up_url.clone());
    Ok(Arc::new(ReadState {
        sidecar: sidecar.clone(),
        auth: crate::api::admin::auth::AuthState::new(db.clone()),
        db,
        sessions,
        page: PageSettings::new(ops, top_up_url),
    }))
}

/// Connects to Redis, retrying every second while it is down: a sidecar started before
/// Redis waits for it rather than exit. `None` when told to stop first.
async fn connect_redis_when_up(args: &RedisArgs) -> Option<Arc<RedisStore>> {
    loop {
        match connect_redis(args).await {
            Ok(redis) => return Some(redis),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Redis unreachable; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = crate::cli::process::shutdown_signal() => return None,
                }
            }
        }
    }
}

/// With a pricing config, the config publisher (which also keeps the fleet metrics);
/// without one, a loop that only keeps the fleet metrics up to date.
fn spawn_config_publisher(
    args: &RunArgs,
    sidecar: &Sidecar,
    fleet_metrics: Arc<FleetMetrics>,
    stop_rx: watch::Receiver<bool>,
) {
    if let (Some(path), Some(pricing)) = (&args.config, &sidecar.pricing) {
        tokio::spawn(
            ConfigPublisher {
                path: path.clone(),
                pricing: pricing.clone(),
                redis: sidecar.redis.clone(),
                metrics: fleet_metrics,
                ledger: sidecar.ledger.clone(),
                history: sidecar.pricing_history.clone(),
            }
            .run(stop_rx),
        );
        return;
    }
    let (redis, mut stop) = (sidecar.redis.clone(), stop_rx);
    tokio::spawn(async move {
        while !*stop.borrow() {
            refresh_fleet_metrics(&redis, &fleet_metrics).await;
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(FLEET_STATUS_MS)) => {}
                _ = stop.changed() => {}
            }
        }
    });
}

/// Binds the admin listener and starts the admin API with its background passes (grant
/// schedules, balance alerts, API key sync); returns the listener's task.
async fn spawn_admin_api(
    listen: &str,
    ledger: &LedgerArgs,
    sidecar: &Arc<Sidecar>,
    ops: Arc<Operations>,
    sessions: Option<SessionKey>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let state = AdminState::open(sidecar.clone(), ledger, ops, sessions).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin listener to {listen}"))?;
    tokio::spawn(admin::schedule::run(state.clone(), stop_rx.clone()));
    tokio::spawn(admin::alerts::run(state.clone(), stop_rx.clone()));
    tokio::spawn(admin::key_sync::run(state.clone(), stop_rx.clone()));
    let console = crate::api::console::router(state.clone());
    Ok(tokio::spawn(admin::serve(
        listener,
        state,
        console,
        stop_rx.clone(),
    )))
}

/// Prefix of the actor recorded by `grant`: it bypasses the admin API's roles and limits,
/// so its grants must be told apart from the admin API's in the ledger.
pub const BREAK_GLASS_ACTOR_PREFIX: &str = "break-glass:";

/// Longest `--actor` of `grant`, characters: a name or an e-mail address.
pub const BREAK_GLASS_ACTOR_MAX_CHARS: usize = 128;

/// The actor `grant` records: `break-glass:<actor>`, and ` (os user <name>)` when the
/// environment names the OS user. Fails on an empty or too long `--actor`.
pub fn break_glass_actor(actor: &str, os_user: Option<&str>) -> anyhow::Result<String> {
    let actor = actor.trim();
    if actor.is_empty() || actor.chars().count() > BREAK_GLASS_ACTOR_MAX_CHARS {
        bail!("--actor: give who issues the grant (1 to {BREAK_GLASS_ACTOR_MAX_CHARS} characters)");
    }
    Ok(match os_user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(user) => format!("{BREAK_GLASS_ACTOR_PREFIX}{actor} (os user {user})"),
        None => format!("{BREAK_GLASS_ACTOR_PREFIX}{actor}"),
    })
}

/// `grant`: ledger first, then Redis. The break-glass path (see [`BREAK_GLASS_ACTOR_PREFIX`]).
pub async fn grant(args: GrantArgs) -> anyhow::Result<String> {
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    let actor = break_glass_actor(&args.actor, os_user.as_deref())?;
    let source: GrantSource = args.source.parse().map_err(|e: String| {
        anyhow::anyhow!("--source: {e} (purchase, promotion, plan_allotment, goodwill, adjustment)")
    })?;
    let now = now_ms();
    let record = GrantRecord {
        grant_id: args
            .grant_id
            .unwrap_or_else(|| format!("g-{}", uuid::Uuid::new_v4().simple())),
        customer: args.customer,
        credit_type: args.credit_type,
        amount: args.amount,
        priority: args.priority,
        expires_at_ms: args.expires_in_days.map(|d| now + d * 86_400_000),
        cost_basis: args.cost_basis,
        source,
        actor,
        reason: args.reason,
        created_at_ms: now,
    };
    record.validate()?;
    let ledger = open_ledger(&args.ledger).await?;
    let redis = match connect_redis(&args.redis).await {
        Ok(redis) => redis,
        Err(e) => {
            // Ledger first: the grant is kept, and the sidecar's outbox applies it once
            // Redis answers again.
            if let RecordGrantOutcome::Conflict { .. } = ledger.record_grant(&record).await? {
                bail!(
                    "grant {} was recorded before with other fields",
                    record.grant_id
                );
            }
            return Ok(format!(
                "grant {} recorded in the ledger; Redis is unreachable ({e:#}); the sidecar's outbox delivers it when Redis is back\n",
                record.grant_id
            ));
        }
    };
    let issued = issue_grant(ledger.as_ref(), redis.as_ref(), &record).await?;
    Ok(match issued {
        Issued::Applied { outcome } => format!(
            "grant {} recorded and applied: {outcome:?}\n",
            record.grant_id
        ),
        Issued::AlreadyRecorded => format!(
            "grant {} was recorded before; delivered again\n",
            record.grant_id
        ),
        Issued::Recorded { error } => format!(
            "grant {} recorded in the ledger; Redis did not confirm ({error}); the sidecar's outbox delivers it\n",
            record.grant_id
        ),
    })
}

/// `ledger verify`.
pub async fn verify(args: LedgerArgs, customer: Option<String>) -> anyhow::Result<String> {
    let ledger = open_ledger(&args).await?;
    let report = ledger.verify_chain(customer.as_deref()).await?;
    match &report.first_broken {
        None => Ok(format!(
            "ok: {} entries of {} customers verified\n",
            report.entries_checked, report.customers_checked
        )),
        Some(broken) => bail!(
            "hash chain broken at customer {} seq {} (event {}): {:?}; expected {}, found {}",
            broken.customer,
            broken.seq,
            broken.event_id,
            broken.kind,
            broken.expected,
            broken.found
        ),
    }
}

/// `ledger balance`.
pub async fn ledger_balance(
    args: LedgerArgs,
    customer: String,
    at_ms: Option<u64>,
) -> anyhow::Result<String> {
    let ledger = open_ledger(&args).await?;
    let balance = ledger
        .balance_at(&customer, at_ms.unwrap_or_else(now_ms))
        .await?;
    Ok(format!("{balance:#?}\n"))
}

/// `reconcile [--repair]`: drains the streams into the ledger first, so events in flight
/// do not show as drift.
pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<String> {
    let ledger = open_ledger(&args.ledger).await?;
    let redis = connect_redis(&args.redis).await?;
    let writer = LedgerWriter::new(
        redis.clone(),
        ledger.clone(),
        "reconcile",
        Arc::new(SidecarMetrics::new()),
    );
    writer.prepare().await?;
    writer.drain().await?;
    let report = with_positions(
        ledger.as_ref(),
        redis.as_ref(),
        compare(ledger.as_ref(), redis.as_ref()).await?,
    )
    .await?;
    let mut out = format!(
        "{} customer/credit type pairs compared, {} drifted\n",
        report.compared,
        report.drifts.len()
    );
    for d in &report.drifts {
        out.push_str(&format!(
            "  {} {}: ledger total {} held {}, redis total {} held {}\n",
            d.customer, d.credit_type, d.ledger_total, d.ledger_held, d.redis_total, d.redis_held
        ));
    }
    if args.repair && !report.drifts.is_empty() {
        out.push_str(&repair_confirmed(&writer, ledger.as_ref(), redis.as_ref(), &report).await?);
    }
    Ok(out)
}

/// Looks a second time after [`REPAIR_CONFIRM_MS`] and rebuilds only the customers whose
/// drift both looks saw with the same figures at the same positions.
async fn repair_confirmed(
    writer: &LedgerWriter,
    ledger: &dyn crate::ledger::Ledger,
    redis: &creditgate_protocol::RedisStore,
    first: &ReconcileReport,
) -> anyhow::Result<String> {
    tokio::time::sleep(std::time::Duration::from_millis(REPAIR_CONFIRM_MS)).await;
    writer.drain().await?;
    let second = with_positions(ledger, redis, compare(ledger, redis).await?).await?;
    let confirmed = confirmed_drifts(first, &second);
    let mut out = String::new();
    for d in first.drifts.iter().filter(|d| !confirmed.contains(d)) {
        out.push_str(&format!(
            "  {} {}: changed between two looks (events in flight); not repaired\n",
            d.customer, d.credit_type
        ));
    }
    let mut customers: Vec<&str> = confirmed.iter().map(|d| d.customer.as_str()).collect();
    customers.dedup();
    for customer in customers {
        out.push_str(&match rebuild_customer(ledger, redis, customer).await? {
            Rebuilt::Restored { grants, voided } => {
                format!("  rebuilt {customer}: {grants} grants, {voided} lost holds voided\n")
            }
            Rebuilt::Busy { pending_holds } => format!(
                "  {customer} not rebuilt: {pending_holds} holds pending in Redis; run again once they are resolved\n"
            ),
            Rebuilt::Behind { redis_position, .. } => format!(
                "  {customer} not rebuilt: the ledger has not recorded its event {redis_position} yet; run again\n"
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_glass_grants_record_who_ran_them() {
        assert_eq!(
            break_glass_actor(" ops@example.test ", Some("alice")).unwrap(),
            "break-glass:ops@example.test (os user alice)"
        );
        assert_eq!(break_glass_actor("ops", None).unwrap(), "break-glass:ops");
        let err = break_glass_actor("  ", Some("alice"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--actor:"), "{err}");
        assert!(break_glass_actor(&"x".repeat(129), None).is_err());
    }
}
