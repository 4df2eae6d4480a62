//! Assembles and runs the gateway process: loads the config, connects the store, builds
//! the Pingora server with the proxy and admin services, and runs until a signal.
//!
//! Redis unreachable at start-up is an error, unless the gateway starts forced off
//! (`--force-off` or an existing kill switch file): then it connects in the background.
//!
//! SIGTERM is a graceful shutdown: the listeners close at once, requests in flight get up
//! to the grace period to finish and settle, and the worker runtimes the shutdown timeout
//! to stop after it. SIGINT exits at once.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use creditgate_config::PricingConfig;
use creditgate_protocol::sweep::SWEEP_BATCH_MAX;
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, MemoryStore, RedisStore,
    RedisTarget, SweepReport, sweep_once,
};
use pingora::prelude::Server;
use pingora::server::ExecutionPhase;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use tracing::{info, warn};

use crate::admin::AdminApp;
use crate::cli::RunArgs;
use crate::control::FleetControl;
use crate::demo::DemoUpstream;
use crate::fleet::{ConfigSource, FleetSync};
use crate::gate::CreditGate;
use crate::in_flight::InFlight;
use crate::metrics::Metrics;
use crate::store_client::StoreClient;
use crate::store_connect::connect_in_background;
use crate::store_thread::ThreadConnections;

/// Timeout of the first connection to Redis at start-up, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Backstop timeout of every Redis call, in milliseconds; routes set their own, shorter
/// timeouts (`store_timeout_ms`), which apply first.
pub const REDIS_CALL_TIMEOUT_MS: u64 = 10_000;

fn load_config(args: &RunArgs) -> anyhow::Result<PricingConfig> {
    PricingConfig::load(&args.config).map_err(|errors| {
        let lines: Vec<String> = errors.into_iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "{} error(s) in {}:\n{}",
            lines.len(),
            args.config.display(),
            lines.join("\n")
        )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Applies the config's `[[embedded_grants]]` to the embedded store.
async fn apply_embedded_grants(store: &MemoryStore, config: &PricingConfig) -> anyhow::Result<()> {
    for g in config.embedded_grants() {
        let request = GrantRequest {
            customer: g.customer.clone(),
            grant_id: g.grant_id.clone(),
            credit_type: g.credit_type.clone(),
            amount: g.amount,
            priority: g.priority,
            expires_at_ms: g.expires_in_s.map(|s| now_ms() + s * 1_000),
            cost_basis: 0,
            source: GrantSource::Adjustment,
            actor: "creditgate-gateway".into(),
            reason: format!("embedded_grants in {}", config.file_name()),
        };
        match store.grant(&request).await? {
            GrantOutcome::Granted { .. } => {
                info!(customer = %g.customer, grant_id = %g.grant_id, amount = g.amount, credit_type = %g.credit_type, "embedded grant applied")
            }
            other => warn!(grant_id = %g.grant_id, outcome = ?other, "embedded grant not applied"),
        }
    }
    Ok(())
}

/// How often the gateway sweeps its embedded store, in milliseconds. On Redis the
/// sidecar's sweeper does this job.
pub const EMBEDDED_SWEEP_INTERVAL_MS: u64 = 1_000;

/// Expires due holds and grants of the embedded store, forever, once per interval.
async fn sweep_embedded(store: Arc<MemoryStore>, keyspace: Keyspace) {
    let mut tick =
        tokio::time::interval(std::time::Duration::from_millis(EMBEDDED_SWEEP_INTERVAL_MS));
    loop {
        tick.tick().await;
        match sweep_once(store.as_ref(), &keyspace, now_ms(), SWEEP_BATCH_MAX).await {
            Ok(report) if report != SweepReport::default() => {
                info!(?report, "expired holds and grants of the embedded store")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sweeping the embedded store failed"),
        }
    }
}

/// How often a draining gateway checks whether its last request has settled.
const DRAIN_POLL_MS: u64 = 20;

/// Once a graceful shutdown's grace period has begun (the listeners are closed), exits the
/// process as soon as no request or background settle is in flight, instead of sleeping out
/// the whole grace period.
async fn exit_when_drained(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    in_flight: InFlight,
) {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
    while in_flight.count() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    info!("every request in flight has finished and settled; exiting");
    std::process::exit(0);
}

/// Sets up logging: text lines, or JSON with `CREDITGATE_LOG_FORMAT=json`; the level from
/// `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if std::env::var("CREDITGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = result;
}

/// Connects the credit store the arguments name: the embedded in-process store when no
/// `--redis` is given (with the config's `[[embedded_grants]]` applied and a sweeper
/// running), else Redis.
fn connect_store(
    args: &RunArgs,
    config: &PricingConfig,
    metrics: &Arc<Metrics>,
    store_runtime: &tokio::runtime::Runtime,
    forced_off_at_start: bool,
) -> anyhow::Result<StoreClient> {
    let keyspace = Keyspace::new(&args.redis_prefix, args.shards);
    if !args.redis.is_empty() {
        return connect_redis(args, keyspace, metrics, store_runtime, forced_off_at_start);
    }
    if args.redis_cluster {
        bail!("--redis-cluster needs the cluster's node URLs in --redis");
    }
    let memory = Arc::new(MemoryStore::new(keyspace.clone()));
    store_runtime.block_on(apply_embedded_grants(&memory, config))?;
    store_runtime.spawn(sweep_embedded(memory.clone(), keyspace));
    info!("running on the embedded in-process credit store (no --redis given)");
    Ok(StoreClient::embedded(memory, metrics.clone()))
}

/// Connects Redis within [`CONNECT_TIMEOUT_MS`]. Redis unreachable is an error, unless the
/// gateway starts forced off: then it connects in the background.
fn connect_redis(
    args: &RunArgs,
    keyspace: Keyspace,
    metrics: &Arc<Metrics>,
    store_runtime: &tokio::runtime::Runtime,
    forced_off_at_start: bool,
) -> anyhow::Result<StoreClient> {
    let target = if args.redis_cluster {
        RedisTarget::Cluster(args.redis.clone())
    } else if args.redis.len() == 1 {
        RedisTarget::Single(args.redis[0].clone())
    } else {
        bail!("several --redis URLs need --redis-cluster");
    };
    let connected = store_runtime
        .block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_millis(CONNECT_TIMEOUT_MS),
                RedisStore::connect(&target, keyspace.clone(), REDIS_CALL_TIMEOUT_MS),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("connecting to Redis at {target:?} timed out"))
        .and_then(|r| r.with_context(|| format!("connecting to Redis at {target:?}")));
    let client = match connected {
        Ok(redis) => {
            info!(target = ?target, "connected to the Redis credit store");
            StoreClient::redis(Arc::new(redis), metrics.clone())
        }
        // Forced off (flag, or kill switch file present at start-up), the gateway makes no
        // store call, so it may start and pass traffic through while Redis is down. Redis
        // is connected in the background and used as soon as it answers: once the kill
        // switch file is removed, metering resumes through Redis without a restart (and
        // until Redis is connected, routes follow their failure policy).
        Err(e) if forced_off_at_start => {
            warn!(error = %format!("{e:#}"), "Redis unreachable; starting anyway because the gateway is forced off (--force-off or the kill switch file); connecting in the background");
            let slot = Arc::new(std::sync::OnceLock::new());
            store_runtime.spawn(connect_in_background(
                target.clone(),
                keyspace.clone(),
                REDIS_CALL_TIMEOUT_MS,
                slot.clone(),
            ));
            StoreClient::connecting(slot, metrics.clone())
        }
        Err(e) => return Err(e),
    };
    let threads = args
        .thread_connections
        .then(|| ThreadConnections::new(&target, keyspace, REDIS_CALL_TIMEOUT_MS))
        .flatten();
    Ok(client
        .with_key_cache_ttl_ms(args.api_key_cache_ttl_ms)
        .with_thread_connections(threads))
}

/// The demo upstream service, when `--demo-upstream` asks for it: served on the address of
/// the config's `default` upstream.
fn demo_service(
    args: &RunArgs,
    config: &PricingConfig,
) -> anyhow::Result<Option<Service<DemoUpstream>>> {
    if !args.demo_upstream {
        return Ok(None);
    }
    let upstream = config
        .upstreams()
        .get(creditgate_config::DEFAULT_UPSTREAM)
        .context("--demo-upstream needs an upstream named \"default\" in the config")?;
    let mut demo = Service::new(
        "creditgate demo upstream".to_string(),
        DemoUpstream::new(&config.identity().customer_header),
    );
    demo.add_tcp(&upstream.address);
    info!(address = %upstream.address, "serving the demo upstream");
    Ok(Some(demo))
}

/// Pingora's server settings: worker threads and the graceful shutdown's timings.
fn server_conf(args: &RunArgs) -> ServerConf {
    ServerConf {
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(args.shutdown_grace_s),
        graceful_shutdown_timeout_seconds: Some(args.shutdown_timeout_s),
        ..ServerConf::default()
    }
}

/// The fleet's control state, starting forced off when the flag says so or the kill switch
/// file exists at start-up.
fn start_control(args: &RunArgs, kill_switch_at_start: bool) -> Arc<FleetControl> {
    let control = Arc::new(FleetControl::new(args.force_off));
    control.set_forced_off_by_file(kill_switch_at_start);
    if kill_switch_at_start {
        warn!(file = ?args.kill_switch_file, "kill switch file present at start-up: every route runs in mode off (no metering) until it is removed");
    }
    if args.force_off {
        warn!("--force-off / CREDITGATE_FORCE_OFF: every route runs in mode off (no metering)");
    }
    control
}

/// The task that keeps the pricing config and control state current for this gateway.
fn fleet_sync(
    args: &RunArgs,
    config: &Arc<ArcSwap<PricingConfig>>,
    control: &Arc<FleetControl>,
    metrics: &Arc<Metrics>,
    store: &StoreClient,
) -> FleetSync {
    let source = if args.watch_config {
        ConfigSource::WatchFile(args.config.clone())
    } else if store.is_embedded() {
        ConfigSource::Fixed
    } else {
        ConfigSource::Published
    };
    let gateway_id = args.gateway_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".to_string());
        format!("{host}/{}", args.admin_listen)
    });
    FleetSync {
        config: config.clone(),
        control: control.clone(),
        metrics: metrics.clone(),
        redis: store.redis_slot(),
        subscribe_url: args.redis.first().cloned(),
        source,
        kill_switch_file: args.kill_switch_file.clone(),
        gateway_id,
    }
}

/// Runs the gateway until it is told to stop. Only returns on a start-up error.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    let config = load_config(&args)?;
    let metrics = Arc::new(Metrics::new());
    metrics.config_in_use(config.content_hash());

    // The store's own runtime: Redis connections are driven by tasks on it, whichever
    // Pingora thread calls them. It lives as long as the process.
    let store_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("creditgate-store")
        .enable_all()
        .build()
        .context("starting the store runtime")?;
    // Read once here and handed to the control below, so even the first request honours a
    // kill switch file that exists at start-up.
    let kill_switch_at_start = args.kill_switch_file.as_ref().is_some_and(|f| f.exists());
    let forced_off_at_start = args.force_off || kill_switch_at_start;
    let store = connect_store(
        &args,
        &config,
        &metrics,
        &store_runtime,
        forced_off_at_start,
    )?;
    let store = Arc::new(store);
    info!(config = %args.config.display(), summary = %config.summary(), hash = %config.content_hash(), "pricing config loaded");
    let demo = demo_service(&args, &config)?;
    let config = Arc::new(ArcSwap::from_pointee(config));

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&args));
    server.bootstrap();

    let in_flight = InFlight::default();
    let control = start_control(&args, kill_switch_at_start);
    store_runtime.spawn(fleet_sync(&args, &config, &control, &metrics, &store).run());
    let gateway = CreditGate::new(config, store.clone(), metrics.clone(), in_flight.clone())
        .with_control(control.clone());
    store_runtime.spawn(gateway.leases.clone().run(server.watch_execution_phase()));
    store_runtime.spawn(exit_when_drained(server.watch_execution_phase(), in_flight));
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&args.listen);
    let mut admin = Service::new(
        "creditgate admin".to_string(),
        AdminApp::new(metrics, store, control),
    );
    admin.add_tcp(&args.admin_listen);
    info!(listen = %args.listen, admin = %args.admin_listen, "gateway starting");
    server.add_service(proxy);
    server.add_service(admin);
    if let Some(demo) = demo {
        server.add_service(demo);
    }
    // Keeps the store runtime alive for the life of the process.
    let _store_runtime = store_runtime;
    server.run_forever()
}
