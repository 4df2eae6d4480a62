//! `creditgate-sidecar run`: the long-running sidecar. Ingest (the ledger writer, one
//! bounded batch per shard per pass, and the take-over of silent consumers' entries) runs
//! beside the sweeper, the grant outbox and audit mirror, the generation check, the trim
//! and the reconciler, each on its own interval and in bounded batches, so none of them
//! waits for the streams to be empty: under any ingest load a hold past its deadline is
//! expired on time. A job that needs the ledger caught up waits, for a bounded time, for
//! the writer to pass the stream positions it saw when it started. The HTTP listener and
//! the admin API's jobs run beside it on their own tasks.
//!
//! Every step is idempotent, so a crash at any point is repaired by the next start: the
//! writer re-reads its pending entries, the outbox redelivers, the sweeper re-scans.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use creditgate_protocol::sweep::SWEEP_BATCH_MAX;
use creditgate_protocol::{RedisStore, SweepReport, sweep_once};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::jobs::outbox::deliver_pending;
use crate::jobs::rebuilds::{FromLedger, retry_owed_rebuilds};
use crate::jobs::reconcile::{
    Rebuilt, ReconcileReport, check_generations, compare, rebuild_and_recover,
};
use crate::jobs::writer::{CLAIM_IDLE_MS, LedgerWriter, WriterError};
use crate::ledger::{Ledger, now_ms};
use crate::metrics::SidecarMetrics;

/// How long the writer waits when every stream was empty, in milliseconds: bounds the lag
/// from a burn to its ledger entry on a quiet system.
pub const IDLE_POLL_MS: u64 = 50;

/// How often the sweeper runs, in milliseconds: a hold must be expired within its
/// deadline + 2 s, and a pass every quarter second leaves room for a slow one; a pass with
/// nothing due is one range read per shard.
pub const SWEEP_MS: u64 = 250;

/// How often the grant outbox and the audit mirror run, in milliseconds: a grant recorded
/// in the ledger reaches Redis within about a second.
pub const HOUSEKEEPING_MS: u64 = 1_000;

/// How often the generation check runs, in milliseconds: a Redis that lost its data is
/// rebuilt within seconds, before many requests see empty balances.
pub const GENERATION_CHECK_MS: u64 = 1_000;

/// How often the owed Redis rebuilds (after grant voids) are looked at, in milliseconds:
/// each has its own backoff; this only bounds how late a due one is tried.
pub const REBUILDS_MS: u64 = 500;

/// How often the writer takes over a silent consumer's entries and trims the streams, in
/// milliseconds.
pub const CLAIM_AND_TRIM_MS: u64 = 10_000;

/// Longest wait, in milliseconds, for the writer to pass the streams' newest entries before
/// a job that needs the ledger caught up (the generation check, reconcile): many passes of
/// full batches. A job that waited this long skips its pass (logged and counted in
/// `creditgate_sidecar_task_errors_total`) and tries again on its next interval.
pub const CATCH_UP_WAIT_MS: u64 = 5_000;

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

    /// Runs until `shutdown` turns true; each job, on its own task, finishes its current
    /// step first.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let writer = LedgerWriter::new(
            self.redis.clone(),
            self.ledger.clone(),
            &self.consumer,
            self.metrics.clone(),
        );
        writer.prepare().await?;
        writer.recover().await?;
        let writer = Arc::new(writer);
        let generation: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let previous_drift = Arc::new(Mutex::new(BTreeMap::new()));
        info!(consumer = %self.consumer, "sidecar running");
        let mut tasks = JoinSet::new();
        let (me, w, stop) = (self.clone(), writer.clone(), shutdown.clone());
        tasks.spawn(async move {
            run_ingest(&w, stop, &|task: &str, e: &WriterError| {
                me.task_error(task, e)
            })
            .await
        });
        let me = self.clone();
        spawn_every(&mut tasks, 0, SWEEP_MS, &shutdown, move || {
            let me = me.clone();
            async move { me.sweep().await }
        });
        let me = self.clone();
        spawn_every(&mut tasks, 0, HOUSEKEEPING_MS, &shutdown, move || {
            let me = me.clone();
            async move { me.outbox_and_audit().await }
        });
        let me = self.clone();
        spawn_every(&mut tasks, 0, REBUILDS_MS, &shutdown, move || {
            let me = me.clone();
            async move { me.owed_rebuilds().await }
        });
        let (me, w) = (self.clone(), writer.clone());
        spawn_every(&mut tasks, 0, GENERATION_CHECK_MS, &shutdown, move || {
            let (me, w, generation) = (me.clone(), w.clone(), generation.clone());
            async move { me.generation_check(&w, &generation).await }
        });
        let (me, w) = (self.clone(), writer.clone());
        let trim_ms = CLAIM_AND_TRIM_MS;
        spawn_every(&mut tasks, trim_ms, trim_ms, &shutdown, move || {
            let (me, w) = (me.clone(), w.clone());
            async move { me.trim(&w).await }
        });
        let (me, w) = (self.clone(), writer.clone());
        spawn_every(
            &mut tasks,
            RECONCILE_MS,
            RECONCILE_MS,
            &shutdown,
            move || {
                let (me, w, previous) = (me.clone(), w.clone(), previous_drift.clone());
                async move { me.reconcile(&w, &previous).await }
            },
        );
        while let Some(done) = tasks.join_next().await {
            done.context("a sidecar task panicked")?;
        }
        info!("sidecar stopping");
        Ok(())
    }

    /// [`wait_for_writer`] with [`CATCH_UP_WAIT_MS`]; `false`, logged and counted against
    /// `task`, when the writer did not get there in time.
    async fn wait_for_writer(&self, writer: &LedgerWriter, task: &str) -> bool {
        match wait_for_writer(writer, CATCH_UP_WAIT_MS).await {
            Ok(true) => true,
            Ok(false) => {
                self.metrics.task_errors.with_label_values(&[task]).inc();
                warn!(
                    task,
                    wait_ms = CATCH_UP_WAIT_MS,
                    "the ledger writer did not reach the streams' newest entries in time; skipping this pass"
                );
                false
            }
            Err(e) => {
                self.task_error(task, &e);
                false
            }
        }
    }

    /// Rebuilds the shards whose generation marker is gone (Redis lost its data), once the
    /// writer has every event Redis still had: a rebuild must see all of them.
    async fn generation_check(&self, writer: &LedgerWriter, generation: &str) {
        if !self.wait_for_writer(writer, "generation").await {
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
    }

    /// One sweeper pass: expires due holds and grants, a bounded batch per shard.
    async fn sweep(&self) {
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
    }

    /// Delivers the grant outbox and mirrors the audit log.
    async fn outbox_and_audit(&self) {
        match deliver_pending(self.ledger.as_ref(), self.redis.as_ref()).await {
            Ok(report) => {
                self.metrics.grants_delivered.inc_by(report.delivered);
                self.metrics.grant_delivery_failures.inc_by(report.failed);
            }
            Err(e) => self.task_error("outbox", &e),
        }
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

    /// Trims every stream below what the group still needs.
    async fn trim(&self, writer: &LedgerWriter) {
        if let Err(e) = writer.trim().await {
            self.task_error("trim", &e);
        }
    }

    /// Rebuilds from the ledger the customers whose drift two consecutive passes saw with
    /// the same figures: a standing difference, not events in flight (Redis came back
    /// behind the ledger and the shard's sequence did not show it, or Redis was changed by
    /// hand). The restore is fenced and refuses while Redis has holds pending or events
    /// the ledger has not recorded; such a customer is tried again on a later pass.
    async fn repair_standing_drift(&self, customers: &BTreeSet<String>) {
        if customers.is_empty() {
            return;
        }
        warn!(
            drifted = customers.len(),
            "Redis differs from the ledger in two passes; rebuilding those customers from the ledger"
        );
        for customer in customers {
            let rebuilt =
                rebuild_and_recover(self.ledger.as_ref(), self.redis.as_ref(), customer).await;
            match rebuilt {
                Ok(Rebuilt::Restored { .. }) => {
                    info!(customer, "standing drift repaired from the ledger");
                }
                Ok(other) => {
                    warn!(
                        customer,
                        ?other,
                        "standing drift not repaired yet; tried again on the next pass"
                    );
                }
                Err(e) => self.task_error("reconcile repair", &e),
            }
        }
    }

    /// Compares Redis with the ledger once the writer has passed the streams' positions of
    /// the pass's start. Drift counts only when the same difference shows in two
    /// consecutive passes, so events in flight between the two stores do not raise a false
    /// alarm.
    async fn reconcile(
        &self,
        writer: &LedgerWriter,
        previous: &Mutex<BTreeMap<(String, String), i64>>,
    ) {
        if !self.wait_for_writer(writer, "reconcile").await {
            return;
        }
        match compare(self.ledger.as_ref(), self.redis.as_ref()).await {
            Ok(report) => {
                let current: BTreeMap<(String, String), i64> = report
                    .drifts
                    .iter()
                    .map(|d| ((d.customer.clone(), d.credit_type.clone()), d.amount()))
                    .collect();
                let standing = {
                    let mut previous = previous.lock().unwrap_or_else(|p| p.into_inner());
                    let confirmed: Vec<_> = current
                        .iter()
                        .filter(|(k, v)| previous.get(*k) == Some(*v))
                        .collect();
                    self.metrics.drifted.set(confirmed.len() as i64);
                    self.metrics
                        .drift_credits
                        .set(confirmed.iter().map(|(_, v)| v.abs()).sum());
                    let customers: BTreeSet<String> =
                        confirmed.iter().map(|((c, _), _)| c.clone()).collect();
                    *previous = current.clone();
                    customers
                };
                self.repair_standing_drift(&standing).await;
                *self
                    .last_reconcile
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some(report);
            }
            Err(e) => self.task_error("reconcile", &e),
        }
    }
}

/// Runs `job` every `period_ms` (the first time after `first_after_ms`) until `shutdown`
/// turns true, whatever the other jobs are doing; a pass is never cut short.
pub(crate) async fn every<F, Fut>(
    first_after_ms: u64,
    period_ms: u64,
    mut shutdown: watch::Receiver<bool>,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut wait_ms = first_after_ms;
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
        if *shutdown.borrow() {
            return;
        }
        job().await;
        wait_ms = period_ms;
    }
}

/// Starts [`every`] on its own task in `tasks`.
fn spawn_every<F, Fut>(
    tasks: &mut JoinSet<()>,
    first_after_ms: u64,
    period_ms: u64,
    shutdown: &watch::Receiver<bool>,
    job: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tasks.spawn(every(first_after_ms, period_ms, shutdown.clone(), job));
}

/// Moves events into the ledger, one bounded pass after another, sleeping only when a pass
/// found nothing, until `shutdown` turns true. Between passes it takes over silent
/// consumers' entries on its own clock, and again at once while a claim scan stopped short;
/// claims run here rather than beside, so this writer's ledger writes stay in order.
/// Failures go to `on_error` (task name, error) and are retried.
pub(crate) async fn run_ingest(
    writer: &LedgerWriter,
    mut shutdown: watch::Receiver<bool>,
    on_error: &(dyn Fn(&str, &WriterError) + Send + Sync),
) {
    let mut last_claim = Instant::now();
    while !*shutdown.borrow() {
        let read = match writer.poll().await {
            Ok(report) => report.read,
            Err(e) => {
                on_error("writer", &e);
                0
            }
        };
        let claim_due = last_claim.elapsed() >= Duration::from_millis(CLAIM_AND_TRIM_MS);
        if claim_due || writer.claim_unfinished() {
            last_claim = Instant::now();
            if let Err(e) = writer.claim(CLAIM_IDLE_MS).await {
                on_error("claim", &e);
            }
        }
        if read == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Waits until `writer` has passed every stream's newest entry as of the call, for at most
/// `wait_ms` milliseconds: `Ok(false)` when it has not. Unlike waiting for a pass that reads
/// nothing, this ends under any ingest load.
pub(crate) async fn wait_for_writer(
    writer: &LedgerWriter,
    wait_ms: u64,
) -> Result<bool, WriterError> {
    let since = Instant::now();
    let heads = writer.stream_heads().await?;
    let deadline = since + Duration::from_millis(wait_ms);
    while !writer.has_passed(&heads, since) {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use creditgate_protocol::{Keyspace, ReadFrom, Shard, StoreError, StreamEntry};

    use super::*;
    use crate::jobs::fixtures::{keyspace, temp_ledger};
    use crate::jobs::writer::EventStreams;

    /// Streams that always have a full batch of new entries: ingest never reads nothing,
    /// so a job that waited for an empty pass would never run.
    struct EndlessStreams {
        keyspace: Keyspace,
        added: AtomicU64,
        reads: AtomicU64,
    }

    #[async_trait]
    impl EventStreams for EndlessStreams {
        fn keyspace(&self) -> &Keyspace {
            &self.keyspace
        }

        async fn ensure_group(&self, _shard: Shard, _group: &str) -> Result<(), StoreError> {
            Ok(())
        }

        async fn read_group(
            &self,
            shard: Shard,
            _group: &str,
            _consumer: &str,
            from: ReadFrom<'_>,
            count: usize,
        ) -> Result<Vec<StreamEntry>, StoreError> {
            // A round trip to Redis yields to the other tasks; so does this.
            tokio::task::yield_now().await;
            if from != ReadFrom::New {
                return Ok(Vec::new());
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
            let first = self.added.fetch_add(count as u64, Ordering::Relaxed) + 1;
            Ok((first..first + count as u64)
                .map(|seq| StreamEntry {
                    shard,
                    stream_id: format!("{seq}-0"),
                    fields: Vec::new(),
                    event: Err("filler".to_string()),
                })
                .collect())
        }

        async fn claim_stale(
            &self,
            _shard: Shard,
            _group: &str,
            _consumer: &str,
            _min_idle_ms: u64,
            _start: &str,
            _count: usize,
        ) -> Result<(String, Vec<StreamEntry>), StoreError> {
            Ok(("0-0".to_string(), Vec::new()))
        }

        async fn last_stream_id(&self, _shard: Shard) -> Result<Option<String>, StoreError> {
            // The newest entry is always past what was delivered so far.
            let newest = self.added.load(Ordering::Relaxed) + 1;
            Ok(Some(format!("{newest}-0")))
        }

        async fn ack(
            &self,
            _shard: Shard,
            _group: &str,
            ids: &[String],
        ) -> Result<u64, StoreError> {
            Ok(ids.len() as u64)
        }

        async fn trim_acknowledged(&self, _shard: Shard, _group: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn housekeeping_runs_while_ingest_always_has_more_to_read() {
        let t = temp_ledger().await;
        let streams = Arc::new(EndlessStreams {
            keyspace: keyspace(),
            added: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        });
        let writer = LedgerWriter::new(
            streams.clone(),
            t.ledger.clone(),
            "a",
            Arc::new(SidecarMetrics::new()),
        )
        .with_batch_max(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (sweeps, checks_passed) = (AtomicU64::new(0), AtomicU64::new(0));

        let jobs = async {
            tokio::join!(
                run_ingest(&writer, stop_rx.clone(), &|_, _| {}),
                every(0, 20, stop_rx.clone(), || async {
                    sweeps.fetch_add(1, Ordering::Relaxed);
                }),
                every(0, 50, stop_rx.clone(), || async {
                    if wait_for_writer(&writer, 2_000).await.expect("heads") {
                        checks_passed.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            )
        };
        let stop = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            stop_tx.send(true).expect("stop");
        };
        tokio::join!(jobs, stop);

        let reads = streams.reads.load(Ordering::Relaxed);
        assert!(reads > 20, "ingest ran without pause ({reads} full reads)");
        let sweeps = sweeps.load(Ordering::Relaxed);
        assert!(
            sweeps >= 10,
            "the sweeper ran on its clock: {sweeps} passes in 600 ms"
        );
        let checks = checks_passed.load(Ordering::Relaxed);
        assert!(
            checks >= 3,
            "a job needing the ledger caught up ran: {checks} position checks passed"
        );
    }
}
