//! The config publisher: watches the pricing config file, validates every new content,
//! publishes each valid one to Redis as the fleet's next version (gateways swap it in) and
//! swaps it into the sidecar's own `pricing`; refuses an invalid one (every error logged,
//! `creditgate_config_reload_errors_total`), so the fleet keeps the last good version.
//! Beside it, keeps the fleet metrics (control state, gateways behind) current.
//!
//! Every version it publishes is also recorded in the ledger (`config_versions`: number,
//! label, hash, publication time, text) and added to the sidecar's [`PricingHistory`], so
//! usage events are priced by the version in force at their event time. Its version
//! numbers start above the newest the ledger knows, so they keep increasing even when
//! Redis and the sidecar both restart empty-handed.
//!
//! The file is re-read by path on every pass, so a Kubernetes ConfigMap's symlink swap is
//! seen like any edit. It never writes credits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate_config::PricingConfig;
use creditgate_protocol::RedisStore;
use creditgate_protocol::control::PublishOutcome;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::jobs::daemon::SharedPricing;
use crate::jobs::fleet_metrics::FleetMetrics;
use crate::ledger::{ConfigVersionRecord, Ledger, now_ms};
use crate::pricing_history::PricingHistory;

/// How often the config file is re-read, in milliseconds: with the gateways' pub/sub, an
/// edit reaches the fleet well within a second.
pub const CONFIG_POLL_MS: u64 = 250;

/// How often the fleet metrics are refreshed from Redis, in milliseconds.
pub const FLEET_STATUS_MS: u64 = 1_000;

/// The publisher's inputs.
pub struct ConfigPublisher {
    /// The watched file.
    pub path: PathBuf,
    /// The sidecar's own copy of the config in force (priced with by the sidecar).
    pub pricing: SharedPricing,
    /// Where to publish.
    pub redis: Arc<RedisStore>,
    /// Metrics.
    pub metrics: Arc<FleetMetrics>,
    /// Where each published version is recorded.
    pub ledger: Arc<dyn Ledger>,
    /// The parsed published versions, shared with the usage-events route.
    pub history: Arc<PricingHistory>,
}

/// What the last pass saw.
struct Seen {
    /// SHA-1 of the last text read (valid or not), so each content is handled once.
    hash: Option<String>,
    /// Whether the last valid text still has to be published (Redis was down, or lost it).
    unpublished: bool,
    /// The newest version this publisher published, found published or found in the
    /// ledger: the floor of the next number, so versions keep increasing even if Redis lost
    /// the published one.
    newest_version: u64,
    /// A published version not yet recorded in the ledger (it was down): its number and
    /// text, recorded on the next pass.
    unrecorded: Option<(u64, String)>,
}

impl ConfigPublisher {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut seen = Seen {
            // The file loaded at start-up still needs publishing.
            hash: Some(self.pricing.load().content_hash().to_string()),
            unpublished: true,
            newest_version: self.history.newest(),
            unrecorded: None,
        };
        let mut last_status = Instant::now() - Duration::from_millis(FLEET_STATUS_MS);
        while !*stop.borrow() {
            self.pass(&mut seen).await;
            if last_status.elapsed() >= Duration::from_millis(FLEET_STATUS_MS) {
                last_status = Instant::now();
                // A Redis that lost its data lost the published config too: publish again.
                if let Ok(None) = self.redis.published_version().await {
                    seen.unpublished = true;
                }
                refresh_fleet_metrics(&self.redis, &self.metrics).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(CONFIG_POLL_MS)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn pass(&self, seen: &mut Seen) {
        let file = self.path.display().to_string();
        match std::fs::read_to_string(&self.path) {
            Err(e) => {
                if seen.hash.as_deref() != Some("unreadable") {
                    error!(file, error = %e, "cannot read the pricing config; the fleet keeps the last good version");
                    self.metrics.config_reload_errors.inc();
                    seen.hash = Some("unreadable".into());
                }
            }
            Ok(text) => {
                let hash = sha1_smol::Sha1::from(&text).digest().to_string();
                if seen.hash.as_deref() != Some(hash.as_str()) {
                    seen.hash = Some(hash);
                    match PricingConfig::from_toml_str(&text, &file) {
                        Ok(config) => {
                            // Version 0 until Redis numbers it.
                            self.pricing.store(Arc::new(config));
                            seen.unpublished = true;
                        }
                        Err(errors) => {
                            for e in errors.errors() {
                                error!(error = %e, "pricing config refused; the fleet keeps the last good version");
                            }
                            warn!(file, errors = errors.len(), "pricing config not published");
                            self.metrics.config_reload_errors.inc();
                        }
                    }
                }
            }
        }
        if seen.unpublished
            && let Some((version, text)) = self.publish(seen.newest_version).await
        {
            seen.newest_version = seen.newest_version.max(version);
            seen.unpublished = false;
            seen.unrecorded = Some((version, text));
        }
        if let Some((version, text)) = &seen.unrecorded
            && self.record(*version, text).await
        {
            seen.unrecorded = None;
        }
    }

    /// Records published `version` (the config in `pricing`, whose text is `text`) in the
    /// ledger and the history; false when the ledger failed (retried on the next pass).
    async fn record(&self, version: u64, text: &str) -> bool {
        let config = self.pricing.load_full();
        if config.version() != version {
            // A newer edit replaced it before it was recorded; that one is recorded instead.
            return true;
        }
        // Redis's clock stamps the publication; the sidecar's when Redis no longer has it.
        let published_at_ms = match self.redis.published_config().await {
            Ok(Some(p)) if p.version == version && p.hash == config.content_hash() => {
                p.published_at_ms
            }
            _ => now_ms(),
        };
        let record = ConfigVersionRecord {
            version,
            version_label: config.version_label(),
            content_hash: config.content_hash().to_string(),
            published_at_ms,
            file: config.file_name().to_string(),
            toml: text.to_string(),
        };
        match self.ledger.record_config_version(&record).await {
            Ok(_) => {
                // The ledger's first record of the number wins; read it back into the
                // history rather than assume it is this one.
                if let Err(e) = self.history.refresh(self.ledger.as_ref()).await {
                    warn!(error = %e, "reading the recorded pricing versions failed");
                    self.history.insert(published_at_ms, config);
                }
                true
            }
            Err(e) => {
                warn!(version, error = %e, "recording the published pricing version in the ledger failed; retrying");
                false
            }
        }
    }

    /// Publishes the config in `pricing` and records the version Redis gave it; returns
    /// the version and the text, or `None` when it could not (retried on the next pass).
    async fn publish(&self, floor: u64) -> Option<(u64, String)> {
        let config = self.pricing.load_full();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text)
                if sha1_smol::Sha1::from(&text).digest().to_string() == config.content_hash() =>
            {
                text
            }
            // The file changed again since it was validated: the next pass handles it.
            _ => return None,
        };
        match self
            .redis
            .publish_config(config.content_hash(), &text, config.file_name(), floor)
            .await
        {
            Ok(outcome) => {
                let (PublishOutcome::Published { version } | PublishOutcome::Unchanged { version }) =
                    outcome;
                let config = (*config).clone().with_version(version);
                if matches!(outcome, PublishOutcome::Published { .. }) {
                    info!(version = %config.version_label(), summary = %config.summary(), "pricing config published");
                }
                self.metrics.config_version.set(version as i64);
                self.pricing.store(Arc::new(config));
                Some((version, text))
            }
            Err(e) => {
                warn!(error = %e, "publishing the pricing config failed; retrying");
                None
            }
        }
    }
}

/// Reads the control state, the published version and the heartbeats into the metrics.
pub async fn refresh_fleet_metrics(redis: &RedisStore, metrics: &FleetMetrics) {
    if let Ok(state) = redis.control_state().await {
        metrics.control_version.set(state.version as i64);
        metrics.set_mode(state.global.map_or("file", |m| m.as_str()));
        metrics
            .rollout_percent
            .set(state.rollout_percent.map_or(-1, i64::from));
    }
    let published = match redis.published_version().await {
        Ok(Some((version, _))) => version,
        _ => 0,
    };
    if let Ok(gateways) = redis.gateways().await {
        metrics.gateways.set(gateways.len() as i64);
        metrics.gateways_behind.set(
            gateways
                .iter()
                .filter(|g| g.config_version < published)
                .count() as i64,
        );
    }
}
