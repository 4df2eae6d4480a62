//! Keeps a running gateway in step with its fleet, off the request path: follows the
//! pricing config published in Redis (pub/sub plus a periodic check, so a missed message
//! heals) or, with `--watch-config`, its own config file; reads the control state (mode
//! overrides); watches the local kill switch file; and sends heartbeats.
//!
//! A config that fails validation is logged and counted, never swapped in; a Redis that
//! does not answer leaves the last known config and control state in force. Requests in
//! flight keep the config they started with (they hold its `Arc`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use creditgate_config::{ConfigErrors, PricingConfig};
use creditgate_protocol::control::{ControlKeys, Heartbeat};
use creditgate_protocol::{RedisStore, redact_secrets};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::control::FleetControl;
use crate::metrics::Metrics;
use crate::store_connect::RedisSlot;

/// How often the loop wakes, in milliseconds: the kill switch file is checked this often,
/// so a local `off` takes effect within this time.
pub const SYNC_TICK_MS: u64 = 100;

/// How often the watched config file is read, in milliseconds. Reading by path every time
/// (rather than watching inotify events) also sees a Kubernetes ConfigMap's symlink swap.
pub const FILE_POLL_MS: u64 = 250;

/// How often the control state and the published version are read even without a
/// pub/sub message, in milliseconds: a missed message delays a change by at most this,
/// inside the one-second goal for flips.
pub const REDIS_POLL_MS: u64 = 500;

/// How often the gateway reports in, in milliseconds.
pub const HEARTBEAT_MS: u64 = 1_000;

/// How long a heartbeat stays listed without renewal, in milliseconds: several missed
/// beats, so one slow Redis call does not make a gateway vanish from the list.
pub const HEARTBEAT_TTL_MS: u64 = 5_000;

/// How long the subscriber waits before reconnecting after losing pub/sub, in
/// milliseconds; the periodic check covers the gap.
pub const RESUBSCRIBE_MS: u64 = 200;

/// Longest a pass of Redis reads (or a heartbeat) may take, in milliseconds: a Redis that
/// hangs must not hold up the loop; the next pass tries again.
pub const REDIS_PASS_TIMEOUT_MS: u64 = 300;

/// Most pending change notifications; more are dropped, as one poll reads everything.
const NOTIFY_QUEUE: usize = 16;

/// Where the gateway's config comes from after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Only the file read at start-up.
    Fixed,
    /// The file, re-read whenever its content changes (`--watch-config`).
    WatchFile(PathBuf),
    /// The versions a sidecar publishes in Redis.
    Published,
}

/// Everything the sync loop works on.
pub struct FleetSync {
    /// The swappable pricing config the proxy reads.
    pub config: Arc<ArcSwap<PricingConfig>>,
    /// The control state the proxy reads.
    pub control: Arc<FleetControl>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where the credit store's Redis appears once connected, when the gateway runs on
    /// Redis (it may connect after start-up; see [`crate::store_connect`]).
    pub redis: Option<RedisSlot>,
    /// A Redis URL to subscribe to change notifications on (the first `--redis` URL; in a
    /// cluster, PUBLISH reaches every node).
    pub subscribe_url: Option<String>,
    /// Where configs come from.
    pub source: ConfigSource,
    /// While this file exists, the gateway runs in mode `off`.
    pub kill_switch_file: Option<PathBuf>,
    /// This gateway's id in heartbeats.
    pub gateway_id: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn log_refused(what: &str, errors: &ConfigErrors) {
    for e in errors.errors() {
        error!(source = what, error = %e, "pricing config refused; the last good one stays");
    }
}

/// Checks the kill switch file every tick, forever.
async fn watch_kill_switch(path: PathBuf, control: Arc<FleetControl>) {
    let mut tick = tokio::time::interval(Duration::from_millis(SYNC_TICK_MS));
    loop {
        tick.tick().await;
        let was = control.forced_off();
        control.set_forced_off_by_file(path.exists());
        if was != control.forced_off() {
            warn!(file = %path.display(), forced_off = control.forced_off(), "local kill switch changed");
        }
    }
}

/// Subscribes to the notify channel and forwards every message (and every successful
/// (re)subscription, which may follow missed messages) as a wake-up, forever.
async fn subscribe(url: String, channel: String, wake: mpsc::Sender<()>) {
    loop {
        match subscribe_once(&url, &channel, &wake).await {
            Ok(()) => warn!("control channel closed; resubscribing"),
            Err(e) => {
                warn!(error = %redact_secrets(&e.to_string()), "control channel unavailable; relying on the periodic check")
            }
        }
        tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_MS)).await;
    }
}

async fn subscribe_once(
    url: &str,
    channel: &str,
    wake: &mpsc::Sender<()>,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let _ = wake.try_send(());
    let mut messages = pubsub.into_on_message();
    while messages.next().await.is_some() {
        let _ = wake.try_send(());
    }
    Ok(())
}

impl FleetSync {
    /// Runs forever.
    pub async fn run(self) {
        let (wake_tx, mut wake_rx) = mpsc::channel(NOTIFY_QUEUE);
        if let Some(path) = self.kill_switch_file.clone() {
            // Its own task: nothing Redis does can delay the local kill switch.
            tokio::spawn(watch_kill_switch(path, self.control.clone()));
        }
        // Taken by the subscriber once Redis is connected.
        let mut wake_tx = Some(wake_tx);
        let mut tick = tokio::time::interval(Duration::from_millis(SYNC_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let long_ago = Instant::now() - Duration::from_secs(3_600);
        let (mut last_file, mut last_poll, mut last_beat) = (long_ago, long_ago, long_ago);
        let mut state = SyncState::default();
        self.publish_metrics(&state);
        loop {
            let woken = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = wake_rx.recv() => true,
            };
            if let ConfigSource::WatchFile(path) = &self.source
                && last_file.elapsed() >= Duration::from_millis(FILE_POLL_MS)
            {
                last_file = Instant::now();
                self.reload_file(path, &mut state);
            }
            let redis = self.redis.as_ref().and_then(|slot| slot.get().cloned());
            if let Some(redis) = &redis {
                if let (Some(url), Some(wake)) = (&self.subscribe_url, wake_tx.take()) {
                    let channel = ControlKeys::new(redis.keyspace()).notify;
                    tokio::spawn(subscribe(url.clone(), channel, wake));
                }
                if woken || last_poll.elapsed() >= Duration::from_millis(REDIS_POLL_MS) {
                    last_poll = Instant::now();
                    let pass = self.poll_redis(redis, &mut state);
                    let read =
                        tokio::time::timeout(Duration::from_millis(REDIS_PASS_TIMEOUT_MS), pass)
                            .await
                            .unwrap_or(false);
                    if !read {
                        // Retry on the next tick: a Redis that comes back is followed at once.
                        last_poll = long_ago;
                    }
                }
                if last_beat.elapsed() >= Duration::from_millis(HEARTBEAT_MS) {
                    last_beat = Instant::now();
                    let beat = self.heartbeat(redis);
                    let _ =
                        tokio::time::timeout(Duration::from_millis(REDIS_PASS_TIMEOUT_MS), beat)
                            .await;
                }
            }
            self.publish_metrics(&state);
        }
    }

    fn publish_metrics(&self, state: &SyncState) {
        let config = self.config.load();
        self.metrics
            .config_versions(config.version(), state.published_version);
        self.metrics.control(
            self.control.state().version,
            self.control.global_mode_name(),
            self.control.forced_off(),
        );
    }

    /// Re-reads the watched file; swaps in a new valid content, refuses an invalid one.
    fn reload_file(&self, path: &PathBuf, state: &mut SyncState) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                if state.refused_hash.as_deref() != Some("unreadable") {
                    error!(file = %path.display(), error = %e, "cannot read the pricing config; the last good one stays");
                    self.metrics.config_reload_error("file");
                    state.refused_hash = Some("unreadable".into());
                }
                return;
            }
        };
        let hash = sha1_smol::Sha1::from(&text).digest().to_string();
        let current = self.config.load();
        if hash == current.content_hash() || state.refused_hash.as_deref() == Some(&hash) {
            return;
        }
        match PricingConfig::from_toml_str(&text, &path.display().to_string()) {
            Ok(config) => {
                let config = config.with_version(current.version() + 1);
                info!(file = %path.display(), version = %config.version_label(), summary = %config.summary(), "pricing config reloaded");
                self.metrics.config_in_use(config.content_hash());
                self.config.store(Arc::new(config));
                state.refused_hash = None;
            }
            Err(errors) => {
                log_refused(&path.display().to_string(), &errors);
                self.metrics.config_reload_error("file");
                state.refused_hash = Some(hash);
            }
        }
    }

    /// Reads the control state and, when following published configs, the published
    /// version; false when a read failed.
    async fn poll_redis(&self, redis: &RedisStore, state: &mut SyncState) -> bool {
        match redis.control_state().await {
            Ok(control) => {
                let current = self.control.state();
                if *current != control {
                    info!(version = control.version, global = ?control.global, rollout = ?control.rollout_percent,
                        routes = control.routes.len(), customers = control.customers.len(), "control state changed");
                    self.control.set_state(control);
                }
                state.state_failing = false;
            }
            Err(e) => {
                self.metrics.control_read_error("state");
                if !state.state_failing {
                    warn!(error = %e, "cannot read the control state; keeping the last known one");
                }
                state.state_failing = true;
                return false;
            }
        }
        if self.source != ConfigSource::Published {
            return true;
        }
        let (published, published_hash) = match redis.published_version().await {
            Ok(Some(found)) => found,
            Ok(None) => return true,
            Err(e) => {
                self.metrics.control_read_error("config");
                warn!(error = %e, "cannot read the published config version; keeping the current config");
                return false;
            }
        };
        state.published_version = published;
        let current = self.config.load();
        // The published config is authoritative: follow it whenever it differs, even to a
        // lower number (a Redis that lost its data and a restarted publisher start over).
        let same = published == current.version() && published_hash == current.content_hash();
        if same || state.refused_version == Some(published) {
            return true;
        }
        let Ok(Some(found)) = redis.published_config().await else {
            self.metrics.control_read_error("config");
            return false;
        };
        let name = format!("published config v{} ({})", found.version, found.file);
        match PricingConfig::from_toml_str(&found.text, &name) {
            Ok(config) => {
                let config = config.with_version(found.version);
                info!(version = %config.version_label(), summary = %config.summary(), "published pricing config swapped in");
                self.metrics.config_in_use(config.content_hash());
                self.config.store(Arc::new(config));
            }
            Err(errors) => {
                // The publisher validated it: a gateway of another release may read it
                // differently. Keep the last good config and say so once.
                log_refused(&name, &errors);
                self.metrics.config_reload_error("published");
                state.refused_version = Some(found.version);
            }
        }
        true
    }

    async fn heartbeat(&self, redis: &RedisStore) {
        let config = self.config.load();
        let beat = Heartbeat {
            gateway_id: self.gateway_id.clone(),
            config_version: config.version(),
            config_hash: config.content_hash().to_string(),
            control_version: self.control.state().version,
            mode: self.control.global_mode_name().to_string(),
            forced_off: self.control.forced_off(),
            at_ms: now_ms(),
        };
        if let Err(e) = redis.heartbeat(&beat, HEARTBEAT_TTL_MS).await {
            self.metrics.control_read_error("heartbeat");
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

/// What the loop remembers between passes.
#[derive(Debug, Default)]
struct SyncState {
    /// Newest published version seen.
    published_version: u64,
    /// A published version refused, not retried until a newer one comes.
    refused_version: Option<u64>,
    /// The content hash of a watched file's refused text, not retried until it changes.
    refused_hash: Option<String>,
    /// Whether reading the control state is failing (logged once per outage).
    state_failing: bool,
}
