//! `creditgate-sidecar run`: the long-running sidecar. One task loop drives the ledger
//! writer, the sweeper, the grant outbox, the generation check and the reconciler, each at
//! its own pace and in bounded batches; the HTTP listener serves metrics and read-only
//! ledger queries beside it.
//!
//! Every step is idempotent, so a crash at any point is repaired by the next start: the
//! writer re-reads its pending entries, the outbox redelivers, the sweeper re-scans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate_protocol::sweep::SWEEP_BATCH_MAX;
use creditgate_protocol::{RedisStore, SweepReport, sweep_once};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::jobs::outbox::deliver_pending;
use crate::jobs::rebuilds::{FromLedger, retry_owed_rebuilds};
use crate::jobs::reconcile::{ReconcileReport, check_generations, compare};
use crate::jobs::writer::{CLAIM_IDLE_MS, LedgerWriter};
use crate::ledger::{Ledger, now_ms};
use crate::metrics::SidecarMetrics;

/// How long the writer waits when every stream was empty, in milliseconds: bounds the lag
/// from a burn to its ledger entry on a quiet system.
pub const IDLE_POLL_MS: u64 = 50;

/// How often the sweeper, the outbox and the generation check run, in milliseconds.
pub const HOUSEKEEPING_MS: u64 = 1_000;

/// How often the writer takes over a silent consumer's entries and trims the streams, in
/// milliseconds.
pub const CLAIM_AND_TRIM_MS: u64 = 10_000;

/// How often Redis is reconciled with the ledger, in milliseconds.
pub const RECONCILE_MS: u64 = 30_000;

/// The last reconciliation, shared with the HTTP listener.
pub type LastReconcile = Arc<std::sync::RwLock<Option<ReconcileReport>>>;

/// Everything the sidecar loop works on.
pub struct Sidecar {
    /// The credit store.
    pub redis: Arc<RedisStore>,
    /// The ledger.
    pub ledger: Arc<dyn Ledger>,
    /// Metrics.
    pub metrics: Arc<SidecarMetrics>,
    /// This sidecar's consumer name in the stream group.
    pub consumer: String,
    /// The last reconciliation report.
    pub last_reconcile: LastReconcile,
    /// The pricing config in force, when the sidecar was given one (`--config`).
    pub pricing: Option<SharedPricing>,
    /// Every published pricing version, for pricing usage events at their event time.
    pub pricing_history: Arc<crate::pricing_history::PricingHistory>,
}

/// The pricing config, swapped whole when a new version is loaded.
pub type SharedPricing = Arc<arc_swap::ArcSwap<creditgate_config::PricingConfig>>;

impl Sidecar {
    fn task_error(&self, task: &str, error: &dyn std::fmt::Display) {
        self.metrics.task_errors.with_label_values(&[task]).inc();
        error!(task, %error, "sidecar task failed; retrying on its next pass");
    }

    /// Runs until `shutdown` turns true; finishes the current step first.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let writer = LedgerWriter::new(
            self.redis.clone(),
            self.ledger.clone(),
            &self.consumer,
            self.metrics.clone(),
        );
        writer.prepare().await?;
        writer.recover().await?;
        let generation = uuid::Uuid::new_v4().simple().to_string();
        let mut previous_drift: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut last_housekeeping = Instant::now() - Duration::from_millis(HOUSEKEEPING_MS);
        let mut last_claim = Instant::now();
        let mut last_reconcile = Instant::now();
        info!(consumer = %self.consumer, "sidecar running");
        while !*shutdown.borrow() {
            let read = match writer.poll().await {
                Ok(report) => report.read,
                Err(e) => {
                    self.task_error("writer", &e);
                    0
                }
            };
            if last_housekeeping.elapsed() >= Duration::from_millis(HOUSEKEEPING_MS) {
                last_housekeeping = Instant::now();
                self.housekeeping(&writer, &generation).await;
            }
            if last_claim.elapsed() >= Duration::from_millis(CLAIM_AND_TRIM_MS) {
                last_claim = Instant::now();
                if let Err(e) = writer.claim(CLAIM_IDLE_MS).await {
                    self.task_error("claim", &e);
                }
                if let Err(e) = writer.trim().await {
                    self.task_error("trim", &e);
                }
            }
            if last_reconcile.elapsed() >= Duration::from_millis(RECONCILE_MS) {
                last_reconcile = Instant::now();
                self.reconcile(&writer, &mut previous_drift).await;
            }
            if read == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        info!("sidecar stopping");
        Ok(())
    }

    async fn housekeeping(&self, writer: &LedgerWriter, generation: &str) {
        // A rebuild must see every event Redis still has: drain the streams first.
        if let Err(e) = writer.drain().await {
            self.task_error("writer", &e);
            return;
        }
        match check_generations(self.ledger.as_ref(), self.redis.as_ref(), generation).await {
            Ok(rebuilt) if !rebuilt.is_empty() => {
                self.metrics.shards_rebuilt.inc_by(rebuilt.len() as u64);
                warn!(?rebuilt, "rebuilt shards from the ledger");
            }
            Ok(_) => {}
            Err(e) => self.task_error("generation", &e),
        }
        match sweep_once(
            self.redis.as_ref(),
            self.redis.keyspace(),
            now_ms(),
            SWEEP_BATCH_MAX,
        )
        .await
        {
            Ok(report) => {
                self.metrics.holds_expired.inc_by(report.holds_expired);
                self.metrics.grants_expired.inc_by(report.grants_expired);
                if report != SweepReport::default() {
                    info!(?report, "sweeper pass");
                }
            }
            Err(e) => self.task_error("sweeper", &e),
        }
        match deliver_pending(self.ledger.as_ref(), self.redis.as_ref()).await {
            Ok(report) => {
                self.metrics.grants_delivered.inc_by(report.delivered);
                self.metrics.grant_delivery_failures.inc_by(report.failed);
            }
            Err(e) => self.task_error("outbox", &e),
        }
        self.owed_rebuilds().await;
        if let Err(e) =
            crate::jobs::audit_mirror::mirror_audit(&self.redis, self.ledger.as_ref()).await
        {
            self.task_error("audit_mirror", &e);
        }
    }

    /// Tries the Redis rebuilds owed (after grant voids) that are due; counts the outcomes.
    async fn owed_rebuilds(&self) {
        let ledger = self.ledger.as_ref();
        let rebuilder = FromLedger {
            ledger,
            store: self.redis.as_ref(),
        };
        match retry_owed_rebuilds(ledger, &rebuilder, now_ms()).await {
            Ok(report) => {
                let attempts = &self.metrics.rebuild_attempts;
                attempts.with_label_values(&["done"]).inc_by(report.done);
                attempts
                    .with_label_values(&["retry"])
                    .inc_by(report.retried);
                self.metrics.rebuilds_owed.set(report.owed as i64);
            }
            Err(e) => self.task_error("rebuilds", &e),
        }
    }

    /// Compares Redis with the ledger after draining the streams. Drift counts only when
    /// the same difference shows in two consecutive passes, so events in flight between
    /// the two stores do not raise a false alarm.
    async fn reconcile(
        &self,
        writer: &LedgerWriter,
        previous: &mut BTreeMap<(String, String), i64>,
    ) {
        if let Err(e) = writer.drain().await {
            self.task_error("writer", &e);
            return;
        }
        match compare(self.ledger.as_ref(), self.redis.as_ref()).await {
            Ok(report) => {
                let current: BTreeMap<(String, String), i64> = report
                    .drifts
                    .iter()
                    .map(|d| ((d.customer.clone(), d.credit_type.clone()), d.amount()))
                    .collect();
                let confirmed: Vec<_> = current
                    .iter()
                    .filter(|(k, v)| previous.get(*k) == Some(*v))
                    .collect();
                self.metrics.drifted.set(confirmed.len() as i64);
                self.metrics
                    .drift_credits
                    .set(confirmed.iter().map(|(_, v)| v.abs()).sum());
                if !confirmed.is_empty() {
                    warn!(
                        drifted = confirmed.len(),
                        "Redis differs from the ledger; `creditgate-sidecar reconcile --repair` rebuilds it"
                    );
                }
                *previous = current;
                *self
                    .last_reconcile
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some(report);
            }
            Err(e) => self.task_error("reconcile", &e),
        }
    }
}
