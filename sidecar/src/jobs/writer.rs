//! The ledger writer: moves every shard's events from Redis Streams into the ledger,
//! exactly once.
//!
//! It reads each shard's stream with a consumer group, writes a batch in one ledger
//! transaction (a redelivered event is a duplicate and skipped), and acknowledges only
//! after the commit. At start-up it re-reads its own pending entries; it takes over the
//! entries of a consumer that has been silent too long. An entry that cannot be parsed, or
//! that conflicts with what the ledger holds under its id, is never acknowledged: it stays
//! in the stream (and trimming stops short of it) until someone looks. Batches are
//! bounded, so memory is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use creditgate_protocol::{ReadFrom, RedisStore, Shard, StreamEntry};
use tracing::{error, info, warn};

use crate::ledger::{AppendOutcome, Ledger, LedgerError, NewEntry, now_ms};
use crate::metrics::SidecarMetrics;

/// The consumer group every sidecar shares: each event goes to one of them.
pub const GROUP: &str = "creditgate-ledger";

/// Most entries read from one shard per pass and written in one transaction: large enough
/// to amortise a commit (`synchronous=FULL` costs a disk flush), small enough to bound
/// memory and keep a transaction short.
pub const BATCH_MAX: usize = 256;

/// How long another consumer's entries must sit unacknowledged before this one takes them
/// over, in milliseconds: far longer than a batch takes, so a live sidecar is never robbed.
pub const CLAIM_IDLE_MS: u64 = 30_000;

/// Whether a stream call failed because the stream or its consumer group does not exist
/// (Redis lost its data).
fn is_missing_group(e: &creditgate_protocol::StoreError) -> bool {
    matches!(e, creditgate_protocol::StoreError::Protocol { message, .. }
        if message.contains("NOGROUP") || message.contains("no such key"))
}

/// Why a pass of the writer failed; the writer retries on its next pass.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] creditgate_protocol::StoreError),
    /// The ledger failed; nothing of the batch was acknowledged.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Counters of what the writer did since start.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Entries inserted into the ledger.
    pub written: AtomicU64,
    /// Redelivered entries already in the ledger (skipped).
    pub duplicates: AtomicU64,
    /// Entries whose id the ledger holds with other fields: an alert.
    pub conflicts: AtomicU64,
    /// Entries that could not be parsed: an alert.
    pub malformed: AtomicU64,
    /// Entries acknowledged.
    pub acked: AtomicU64,
}

/// What one pass did, summed over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries read.
    pub read: u64,
    /// Entries inserted.
    pub written: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Conflicts and malformed entries left unacknowledged.
    pub rejected: u64,
}

impl PassReport {
    fn add(&mut self, other: PassReport) {
        self.read += other.read;
        self.written += other.written;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
    }
}

/// The writer of one sidecar.
pub struct LedgerWriter {
    redis: Arc<RedisStore>,
    ledger: Arc<dyn Ledger>,
    consumer: String,
    batch_max: usize,
    metrics: Arc<SidecarMetrics>,
    /// What the writer did since start.
    pub stats: WriterStats,
}

impl LedgerWriter {
    /// A writer consuming as `consumer` (unique per sidecar, stable across its restarts so
    /// it finds its own pending entries).
    pub fn new(
        redis: Arc<RedisStore>,
        ledger: Arc<dyn Ledger>,
        consumer: &str,
        metrics: Arc<SidecarMetrics>,
    ) -> Self {
        Self {
            redis,
            ledger,
            consumer: consumer.to_string(),
            batch_max: BATCH_MAX,
            metrics,
            stats: WriterStats::default(),
        }
    }

    /// Sets the batch size (at least 1).
    pub fn with_batch_max(mut self, batch_max: usize) -> Self {
        self.batch_max = batch_max.max(1);
        self
    }

    /// Creates the consumer group on every shard's stream.
    pub async fn prepare(&self) -> Result<(), WriterError> {
        for shard in self.redis.keyspace().all_shards() {
            self.redis.ensure_group(shard, GROUP).await?;
        }
        Ok(())
    }

    /// Writes this consumer's own pending entries (delivered before a crash, never
    /// acknowledged). Rejected entries stay pending, so this reads each pending entry once.
    pub async fn recover(&self) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.redis.keyspace().all_shards() {
            // Page through the pending entries by id, so entries left pending on purpose
            // (rejected) are read once per recovery, not forever.
            let mut after = "0".to_string();
            loop {
                let entries = self
                    .redis
                    .read_group(
                        shard,
                        GROUP,
                        &self.consumer,
                        ReadFrom::OwnPendingAfter(&after),
                        self.batch_max,
                    )
                    .await?;
                let Some(last) = entries.last().map(|e| e.stream_id.clone()) else {
                    break;
                };
                report.add(self.write(shard, entries).await?);
                after = last;
            }
        }
        if report.read > 0 {
            info!(?report, "recovered pending stream entries");
        }
        Ok(report)
    }

    /// Takes over and writes entries other consumers left unacknowledged for `idle_ms`.
    pub async fn claim(&self, idle_ms: u64) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.redis.keyspace().all_shards() {
            let entries = match self
                .redis
                .claim_stale(shard, GROUP, &self.consumer, idle_ms, self.batch_max)
                .await
            {
                // No group, nothing to claim: the next poll creates it.
                Err(e) if is_missing_group(&e) => continue,
                other => other?,
            };
            report.add(self.write(shard, entries).await?);
        }
        if report.read > 0 {
            warn!(?report, "took over stream entries of a silent consumer");
        }
        Ok(report)
    }

    /// Reads and writes up to one batch of new entries from every shard.
    pub async fn poll(&self) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.redis.keyspace().all_shards() {
            let entries = match self
                .redis
                .read_group(shard, GROUP, &self.consumer, ReadFrom::New, self.batch_max)
                .await
            {
                Err(e) if is_missing_group(&e) => {
                    // Redis lost the stream and its group (restart without persistence,
                    // FLUSHALL): create them again and read from the new stream's start.
                    warn!(shard = %shard, "consumer group missing; Redis lost its data; creating it again");
                    self.redis.ensure_group(shard, GROUP).await?;
                    self.redis
                        .read_group(shard, GROUP, &self.consumer, ReadFrom::New, self.batch_max)
                        .await?
                }
                other => other?,
            };
            report.add(self.write(shard, entries).await?);
        }
        Ok(report)
    }

    /// Polls until a pass reads nothing: the ledger has every event written so far.
    pub async fn drain(&self) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        loop {
            let pass = self.poll().await?;
            report.add(pass);
            if pass.read == 0 {
                return Ok(report);
            }
        }
    }

    /// Trims every shard's stream below what the group still needs.
    pub async fn trim(&self) -> Result<u64, WriterError> {
        let mut removed = 0;
        for shard in self.redis.keyspace().all_shards() {
            removed += match self.redis.trim_acknowledged(shard, GROUP).await {
                Err(e) if is_missing_group(&e) => 0,
                other => other?,
            };
        }
        Ok(removed)
    }

    /// Writes one shard's entries in one transaction, then acknowledges what the ledger
    /// now holds.
    async fn write(
        &self,
        shard: Shard,
        entries: Vec<StreamEntry>,
    ) -> Result<PassReport, WriterError> {
        let mut report = PassReport {
            read: entries.len() as u64,
            ..PassReport::default()
        };
        let mut batch = Vec::with_capacity(entries.len());
        // The stream entry of each ledger entry: a posted hold with a shortfall gives two
        // (the posted entry and its overage), acknowledged once both are in the ledger.
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let parsed = entry.event.map_err(|e| e.to_string()).and_then(|event| {
                NewEntry::from_event_with_overage(&event, shard.0, Some(entry.stream_id.clone()))
                    .map_err(|e| e.to_string())
            });
            match parsed {
                Ok(new) => {
                    for one in new {
                        batch.push(one);
                        ids.push(entry.stream_id.clone());
                    }
                }
                Err(message) => {
                    report.rejected += 1;
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.metrics.malformed.inc();
                    error!(shard = %shard, stream_id = %entry.stream_id, error = %message,
                        "unreadable stream entry left unacknowledged");
                }
            }
        }
        if batch.is_empty() {
            return Ok(report);
        }
        let outcomes = self.ledger.append_batch(&batch).await?;
        let committed_ms = now_ms();
        let mut ack: Vec<String> = Vec::with_capacity(ids.len());
        let mut refused: Vec<String> = Vec::new();
        for ((outcome, id), entry) in outcomes.into_iter().zip(ids).zip(&batch) {
            match outcome {
                AppendOutcome::Inserted { .. } => {
                    report.written += 1;
                    self.metrics
                        .entries_written
                        .with_label_values(&[entry.kind.as_str()])
                        .inc();
                    self.metrics
                        .ledger_lag
                        .observe(committed_ms.saturating_sub(entry.event_at_ms) as f64 / 1_000.0);
                    ack.push(id);
                }
                AppendOutcome::Duplicate { .. } => {
                    report.duplicates += 1;
                    self.metrics.duplicates.inc();
                    ack.push(id);
                }
                AppendOutcome::Conflict { event_id, existing } => {
                    refused.push(id.clone());
                    report.rejected += 1;
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.metrics.conflicts.inc();
                    error!(shard = %shard, stream_id = %id, event_id = %event_id, existing_seq = existing.seq,
                        "ALERT: the ledger holds this event id with other fields; entry left unacknowledged");
                }
            }
        }
        // One stream entry may stand behind two ledger entries: acknowledge it once, and
        // not at all when either was refused.
        ack.dedup();
        ack.retain(|id| !refused.contains(id));
        self.stats
            .written
            .fetch_add(report.written, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(report.duplicates, Ordering::Relaxed);
        let acked = self.redis.ack(shard, GROUP, &ack).await?;
        self.stats.acked.fetch_add(acked, Ordering::Relaxed);
        Ok(report)
    }
}
