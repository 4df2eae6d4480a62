//! The ledger writer: moves every shard's events from Redis Streams into the ledger,
//! exactly once.
//!
//! It reads each shard's stream with a consumer group, writes a batch in one ledger
//! transaction (a redelivered event is a duplicate and skipped), and acknowledges only
//! after the commit. At start-up it re-reads its own pending entries; it takes over the
//! entries of a consumer that has been silent too long. An entry the ledger cannot apply
//! (unreadable, refused by the ledger, or conflicting with what the ledger holds under its
//! id) is recorded as a dead letter with its raw fields and then acknowledged, so one bad
//! entry never stops the stream or its trimming; operators replay or discard it
//! (the `dead_letters` job). Batches are bounded, so memory is.
//!
//! Streams are Redis's alone (the reference model keeps its events in a list), so the
//! writer reaches them through the narrow [`EventStreams`] seam, implemented for
//! [`RedisStore`]; tests put the model's events behind it. The writer makes no credit
//! store calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use creditgate_protocol::{Event, Keyspace, ReadFrom, RedisStore, Shard, StoreError, StreamEntry};
use tracing::{error, info, warn};

use crate::ledger::{
    AppendOutcome, DeadLetterReason, LedgerDeadLetters, LedgerError, NewDeadLetter, NewEntry,
    now_ms,
};
use crate::metrics::SidecarMetrics;

/// The consumer-group operations on the shards' event streams that the writer needs.
/// Nothing here acknowledges on its own: the writer acknowledges after its ledger commit.
#[async_trait]
pub trait EventStreams: Send + Sync {
    /// The key schema: every shard.
    fn keyspace(&self) -> &Keyspace;
    /// Creates the consumer group on a shard's stream if missing, reading from its start.
    async fn ensure_group(&self, shard: Shard, group: &str) -> Result<(), StoreError>;
    /// Reads up to `count` entries for `consumer`: new ones, or its own pending ones.
    async fn read_group(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        from: ReadFrom<'_>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;
    /// Takes over up to `count` entries other consumers left unacknowledged for
    /// `min_idle_ms`, scanning from the cursor `start` (`"0-0"` first); returns the next
    /// cursor (`"0-0"` once the scan went round) and the entries.
    async fn claim_stale(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        start: &str,
        count: usize,
    ) -> Result<(String, Vec<StreamEntry>), StoreError>;
    /// The id of the newest entry of a shard's stream, `None` when it is empty.
    async fn last_stream_id(&self, shard: Shard) -> Result<Option<String>, StoreError>;
    /// Acknowledges entries; returns how many were pending.
    async fn ack(&self, shard: Shard, group: &str, ids: &[String]) -> Result<u64, StoreError>;
    /// Removes the entries every consumer of the group acknowledged; returns how many.
    async fn trim_acknowledged(&self, shard: Shard, group: &str) -> Result<u64, StoreError>;
}

#[async_trait]
impl EventStreams for RedisStore {
    fn keyspace(&self) -> &Keyspace {
        RedisStore::keyspace(self)
    }

    async fn ensure_group(&self, shard: Shard, group: &str) -> Result<(), StoreError> {
        RedisStore::ensure_group(self, shard, group).await
    }

    async fn read_group(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        from: ReadFrom<'_>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        RedisStore::read_group(self, shard, group, consumer, from, count).await
    }

    async fn claim_stale(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        start: &str,
        count: usize,
    ) -> Result<(String, Vec<StreamEntry>), StoreError> {
        RedisStore::claim_stale(self, shard, group, consumer, min_idle_ms, start, count).await
    }

    async fn last_stream_id(&self, shard: Shard) -> Result<Option<String>, StoreError> {
        RedisStore::last_stream_id(self, shard).await
    }

    async fn ack(&self, shard: Shard, group: &str, ids: &[String]) -> Result<u64, StoreError> {
        RedisStore::ack(self, shard, group, ids).await
    }

    async fn trim_acknowledged(&self, shard: Shard, group: &str) -> Result<u64, StoreError> {
        RedisStore::trim_acknowledged(self, shard, group).await
    }
}

/// The consumer group every sidecar shares: each event goes to one of them.
pub const GROUP: &str = "creditgate-ledger";

/// Most entries read from one shard per pass and written in one transaction: large enough
/// to amortise a commit (`synchronous=FULL` costs a disk flush), small enough to bound
/// memory and keep a transaction short.
pub const BATCH_MAX: usize = 256;

/// How long another consumer's entries must sit unacknowledged before this one takes them
/// over, in milliseconds: far longer than a batch takes, so a live sidecar is never robbed.
pub const CLAIM_IDLE_MS: u64 = 30_000;

/// Most entries of silent consumers taken over per shard in one claim: four batches, so a
/// dead sidecar's backlog moves in few round trips (they are written [`BATCH_MAX`] at a
/// time); the scan's cursor is kept, and a claim that stopped short is repeated on the next
/// pass ([`LedgerWriter::claim_unfinished`]).
pub const CLAIM_BATCH_MAX: usize = 4 * BATCH_MAX;

/// First wait before a failed batch is read again from this consumer's own pending
/// entries, in milliseconds: a blip of the ledger costs a fifth of a second, and a ledger
/// that just failed is not hammered.
pub const RETRY_BACKOFF_MIN_MS: u64 = 200;

/// Longest wait between two retries of a failed batch, in milliseconds: the wait doubles up
/// to this, so a ledger back after an outage is written to within 2 s.
pub const RETRY_BACKOFF_MAX_MS: u64 = 2_000;

/// Whether a stream call failed because the stream or its consumer group does not exist
/// (Redis lost its data).
fn is_missing_group(e: &StoreError) -> bool {
    matches!(e, StoreError::Protocol { message, .. }
        if message.contains("NOGROUP") || message.contains("no such key"))
}

/// A stream id (`<ms>-<seq>`) as a number pair that orders like the stream; an id that is
/// not one orders first.
fn stream_pos(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The stream id just before `id`: reading pending entries "after" it includes `id`.
fn id_before(id: &str) -> String {
    match stream_pos(id) {
        (0, 0) => "0".to_string(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

/// Why a pass of the writer failed; the writer retries on its next pass.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Entries recorded as dead letters (conflicting, malformed or refused by the ledger)
    /// and acknowledged.
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

/// A failed batch waiting to be read again from this consumer's pending entries.
#[derive(Clone, Debug)]
struct Retry {
    /// Re-read the pending entries after this stream id.
    after: String,
    /// Not before this instant.
    due: Instant,
    /// The wait that led to `due`, in milliseconds (0 after a success).
    backoff_ms: u64,
}

/// One shard's entries read by a pass, to be written with the other shards'.
struct ShardRead {
    shard: Shard,
    entries: Vec<StreamEntry>,
    /// The first and last stream ids read.
    first: String,
    last: String,
    /// `Some(after)` when these are this consumer's pending entries after `after` (a
    /// retry), `None` for new entries.
    retry_after: Option<String>,
}

/// What the writer knows of one shard between passes.
#[derive(Debug, Default)]
struct ShardProgress {
    /// The last stream id of a batch of new entries the writer is done with (in the ledger,
    /// or rejected).
    processed: Option<String>,
    /// When the newest read of new entries that found none started.
    caught_up_at: Option<Instant>,
    /// A failed batch to retry before reading new entries.
    retry: Option<Retry>,
    /// The claim scan's cursor (`None`: from the start).
    claim_cursor: Option<String>,
}

/// The writer of one sidecar.
pub struct LedgerWriter {
    streams: Arc<dyn EventStreams>,
    ledger: Arc<dyn LedgerDeadLetters>,
    consumer: String,
    batch_max: usize,
    metrics: Arc<SidecarMetrics>,
    progress: Mutex<HashMap<Shard, ShardProgress>>,
    /// What the writer did since start.
    pub stats: WriterStats,
}

impl LedgerWriter {
    /// A writer consuming as `consumer` (unique per sidecar, stable across its restarts so
    /// it finds its own pending entries), reading `streams` (Redis in production).
    pub fn new(
        streams: Arc<dyn EventStreams>,
        ledger: Arc<dyn LedgerDeadLetters>,
        consumer: &str,
        metrics: Arc<SidecarMetrics>,
    ) -> Self {
        Self {
            streams,
            ledger,
            consumer: consumer.to_string(),
            batch_max: BATCH_MAX,
            metrics,
            progress: Mutex::default(),
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
        for shard in self.streams.keyspace().all_shards() {
            self.streams.ensure_group(shard, GROUP).await?;
        }
        Ok(())
    }

    /// Writes this consumer's own pending entries (delivered before a crash, never
    /// acknowledged), each once: an entry the ledger cannot apply is dead-lettered and
    /// acknowledged like the rest.
    pub async fn recover(&self) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.streams.keyspace().all_shards() {
            // Page through the pending entries by id, so an entry left pending by a failed
            // acknowledgement is read once per recovery, not forever.
            let mut after = "0".to_string();
            loop {
                let entries = self
                    .streams
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

    /// Takes over and writes up to [`CLAIM_BATCH_MAX`] entries per shard that other
    /// consumers left unacknowledged for `idle_ms`, going on from where the last claim of
    /// the shard stopped. A batch that fails is retried like one of this consumer's own.
    pub async fn claim(&self, idle_ms: u64) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.streams.keyspace().all_shards() {
            let start = self
                .progress(shard, |p| p.claim_cursor.clone())
                .unwrap_or_else(|| "0-0".to_string());
            let claim_max = CLAIM_BATCH_MAX.max(self.batch_max);
            let (next, entries) = match self
                .streams
                .claim_stale(shard, GROUP, &self.consumer, idle_ms, &start, claim_max)
                .await
            {
                // No group, nothing to claim: the next poll creates it.
                Err(e) if is_missing_group(&e) => continue,
                other => other?,
            };
            self.progress(shard, |p| p.claim_cursor = Some(next));
            let mut entries = entries.into_iter().peekable();
            while let Some(first) = entries.peek().map(|e| e.stream_id.clone()) {
                let chunk: Vec<StreamEntry> = entries.by_ref().take(self.batch_max).collect();
                match self.write(shard, chunk).await {
                    Ok(pass) => report.add(pass),
                    Err(e) => {
                        self.schedule_retry(shard, id_before(&first));
                        return Err(e);
                    }
                }
            }
        }
        if report.read > 0 {
            warn!(?report, "took over stream entries of a silent consumer");
        }
        Ok(report)
    }

    /// Whether a claim scan stopped short on some shard: more entries of silent consumers
    /// may be waiting, so the next claim should not wait for its interval.
    pub fn claim_unfinished(&self) -> bool {
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress
            .values()
            .any(|p| p.claim_cursor.as_deref().is_some_and(|c| c != "0-0"))
    }

    /// Reads up to one batch from every shard: this consumer's own pending entries first
    /// when a batch failed and its retry is due, new entries otherwise; then writes what
    /// every shard gave in one ledger transaction and acknowledges each shard's entries
    /// after its commit. A shard whose retry is not due yet is skipped, so its events reach
    /// the ledger in stream order. A failing shard does not hold up the others; the first
    /// error is returned after the pass.
    ///
    /// One transaction per pass rather than per shard: a commit (a disk flush with
    /// `synchronous=FULL`) and the statements around it are paid once for up to 16 batches.
    pub async fn poll(&self) -> Result<PassReport, WriterError> {
        let mut first_error = None;
        let mut reads = Vec::new();
        for shard in self.streams.keyspace().all_shards() {
            match self.read_shard(shard).await {
                Ok(Some(read)) => reads.push(read),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut report = PassReport::default();
        if !reads.is_empty() {
            let batches = reads
                .iter_mut()
                .map(|r| (r.shard, std::mem::take(&mut r.entries)))
                .collect();
            match self.write_shards(batches).await {
                Ok(per_shard) => {
                    for (read, outcome) in reads.into_iter().zip(per_shard) {
                        match outcome {
                            Ok(pass) => {
                                report.add(pass);
                                self.done_with(read);
                            }
                            Err(e) => {
                                self.failed(read);
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                // Nothing was committed: every shard's read is retried.
                Err(e) => {
                    for read in reads {
                        self.failed(read);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// One shard's read of [`Self::poll`]: its own pending entries when its retry is due,
    /// nothing while a retry waits, new entries otherwise; `None` when there is nothing.
    async fn read_shard(&self, shard: Shard) -> Result<Option<ShardRead>, WriterError> {
        let now = Instant::now();
        match self.progress(shard, |p| p.retry.clone()) {
            Some(retry) if retry.due <= now => return self.read_retry(shard, retry.after).await,
            Some(_) => return Ok(None),
            None => {}
        }
        let entries = match self.read_new(shard).await {
            Ok(entries) => entries,
            Err(e) => {
                // The read may have been delivered before it failed (a timeout): look at
                // this consumer's pending entries past what it has done before new ones.
                let done = self.progress(shard, |p| p.processed.clone());
                self.schedule_retry(shard, done.unwrap_or_else(|| "0".to_string()));
                return Err(e);
            }
        };
        let (Some(first), Some(last)) = (
            entries.first().map(|e| e.stream_id.clone()),
            entries.last().map(|e| e.stream_id.clone()),
        ) else {
            self.progress(shard, |p| p.caught_up_at = Some(now));
            return Ok(None);
        };
        Ok(Some(ShardRead {
            shard,
            entries,
            first,
            last,
            retry_after: None,
        }))
    }

    /// Reads this consumer's pending entries of `shard` after `after`: a failed batch,
    /// retried by the consumer that read it, within seconds. Once none is left, the shard
    /// reads new entries again.
    async fn read_retry(
        &self,
        shard: Shard,
        after: String,
    ) -> Result<Option<ShardRead>, WriterError> {
        let read = self
            .streams
            .read_group(
                shard,
                GROUP,
                &self.consumer,
                ReadFrom::OwnPendingAfter(&after),
                self.batch_max,
            )
            .await;
        let entries = match read {
            Ok(entries) => entries,
            // Redis lost the stream: nothing is left to retry; the next read creates it.
            Err(e) if is_missing_group(&e) => {
                self.progress(shard, |p| p.retry = None);
                return Ok(None);
            }
            Err(e) => {
                self.schedule_retry(shard, after);
                return Err(e.into());
            }
        };
        let (Some(first), Some(last)) = (
            entries.first().map(|e| e.stream_id.clone()),
            entries.last().map(|e| e.stream_id.clone()),
        ) else {
            self.progress(shard, |p| p.retry = None);
            info!(shard = %shard, "failed batches written on retry; reading new entries again");
            return Ok(None);
        };
        Ok(Some(ShardRead {
            shard,
            entries,
            first,
            last,
            retry_after: Some(after),
        }))
    }

    /// Records that a shard's read is in the ledger (or dead-lettered) and acknowledged.
    fn done_with(&self, read: ShardRead) {
        match read.retry_after {
            // Go on with the pending entries after this batch at once.
            Some(_) => {
                let next = Retry {
                    after: read.last,
                    due: Instant::now(),
                    backoff_ms: 0,
                };
                self.progress(read.shard, |p| p.retry = Some(next));
            }
            None => self.progress(read.shard, |p| p.processed = Some(read.last)),
        }
    }

    /// Schedules a shard's read again from this consumer's pending entries: its write or
    /// its acknowledgement failed.
    fn failed(&self, read: ShardRead) {
        let after = read.retry_after.unwrap_or_else(|| id_before(&read.first));
        self.schedule_retry(read.shard, after);
    }

    /// Reads up to one batch of new entries of `shard`, creating its group again when Redis
    /// lost it.
    async fn read_new(&self, shard: Shard) -> Result<Vec<StreamEntry>, WriterError> {
        Ok(
            match self
                .streams
                .read_group(shard, GROUP, &self.consumer, ReadFrom::New, self.batch_max)
                .await
            {
                Err(e) if is_missing_group(&e) => {
                    // Redis lost the stream and its group (restart without persistence,
                    // FLUSHALL): create them again and read from the new stream's start.
                    warn!(shard = %shard, "consumer group missing; Redis lost its data; creating it again");
                    // The new stream's ids start again from the clock: forget the old ones.
                    self.progress(shard, |p| *p = ShardProgress::default());
                    self.streams.ensure_group(shard, GROUP).await?;
                    self.streams
                        .read_group(shard, GROUP, &self.consumer, ReadFrom::New, self.batch_max)
                        .await?
                }
                other => other?,
            },
        )
    }

    /// Runs `f` on what the writer knows of `shard`.
    fn progress<T>(&self, shard: Shard, f: impl FnOnce(&mut ShardProgress) -> T) -> T {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        f(progress.entry(shard).or_default())
    }

    /// Retries `shard`'s pending entries after `after` (or after an older id already
    /// waiting) once the backoff has passed; the backoff doubles on each failure in a row.
    fn schedule_retry(&self, shard: Shard, after: String) {
        self.progress(shard, |p| {
            let (after, backoff_ms) = match p.retry.take() {
                Some(old) => {
                    let older = if stream_pos(&old.after) <= stream_pos(&after) {
                        old.after
                    } else {
                        after
                    };
                    (older, (old.backoff_ms * 2).max(RETRY_BACKOFF_MIN_MS))
                }
                None => (after, RETRY_BACKOFF_MIN_MS),
            };
            let backoff_ms = backoff_ms.min(RETRY_BACKOFF_MAX_MS);
            p.retry = Some(Retry {
                after,
                due: Instant::now() + Duration::from_millis(backoff_ms),
                backoff_ms,
            });
        });
    }

    /// The newest entry of every shard's stream now, for [`Self::has_passed`].
    pub async fn stream_heads(&self) -> Result<Vec<(Shard, Option<String>)>, WriterError> {
        let mut heads = Vec::new();
        for shard in self.streams.keyspace().all_shards() {
            heads.push((shard, self.streams.last_stream_id(shard).await?));
        }
        Ok(heads)
    }

    /// Whether this writer is done with every entry up to `heads` (read by
    /// [`Self::stream_heads`] at `since`): per shard, nothing is waiting for a retry, and
    /// either its last batch reached the head or a read that started after `since` found
    /// nothing new. A bounded check that holds under any load, unlike waiting for a pass
    /// that reads nothing.
    pub fn has_passed(&self, heads: &[(Shard, Option<String>)], since: Instant) -> bool {
        heads.iter().all(|(shard, head)| {
            self.progress(*shard, |p| {
                let Some(head) = head else {
                    return p.retry.is_none();
                };
                let reached = p
                    .processed
                    .as_deref()
                    .is_some_and(|done| stream_pos(done) >= stream_pos(head));
                let found_nothing = p.caught_up_at.is_some_and(|at| at >= since);
                p.retry.is_none() && (reached || found_nothing)
            })
        })
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
        for shard in self.streams.keyspace().all_shards() {
            removed += match self.streams.trim_acknowledged(shard, GROUP).await {
                Err(e) if is_missing_group(&e) => 0,
                other => other?,
            };
        }
        Ok(removed)
    }

    /// Writes one shard's entries in one transaction, records the ones the ledger cannot
    /// apply as dead letters, then acknowledges both: nothing stays behind for good.
    async fn write(
        &self,
        shard: Shard,
        entries: Vec<StreamEntry>,
    ) -> Result<PassReport, WriterError> {
        self.write_shards(vec![(shard, entries)])
            .await?
            .pop()
            .unwrap_or_else(|| Ok(PassReport::default()))
    }

    /// Writes several shards' entries in one transaction; then, shard by shard, records
    /// the ones the ledger cannot apply as dead letters and acknowledges both. `Err` when
    /// the transaction failed (nothing was written); otherwise each shard's outcome, in
    /// order: a shard whose dead letters or acknowledgement failed is retried alone.
    async fn write_shards(
        &self,
        reads: Vec<(Shard, Vec<StreamEntry>)>,
    ) -> Result<Vec<Result<PassReport, WriterError>>, WriterError> {
        let mut parts = Vec::with_capacity(reads.len());
        let mut all = Vec::new();
        for (shard, entries) in reads {
            let mut dead = Vec::new();
            let read = entries.len() as u64;
            let (batch, ids, raw) = self.to_ledger_entries(shard, entries, &mut dead);
            parts.push((shard, read, batch.len(), ids, raw, dead));
            all.extend(batch);
        }
        let mut outcomes = if all.is_empty() {
            Vec::new()
        } else {
            self.ledger.append_batch(&all).await?
        }
        .into_iter();
        let mut results = Vec::with_capacity(parts.len());
        let mut offset = 0;
        for (shard, read, len, ids, mut raw, mut dead) in parts {
            let batch = &all[offset..offset + len];
            offset += len;
            let mut report = PassReport {
                read,
                ..PassReport::default()
            };
            let outs = outcomes.by_ref().take(len).collect();
            let ack = self.tally(shard, outs, ids, batch, &mut report, &mut raw, &mut dead);
            self.stats
                .written
                .fetch_add(report.written, Ordering::Relaxed);
            self.stats
                .duplicates
                .fetch_add(report.duplicates, Ordering::Relaxed);
            results.push(self.acknowledge(shard, ack, dead, report).await);
        }
        Ok(results)
    }

    /// After the commit: records a shard's dead letters, then acknowledges them and the
    /// entries in `ack`.
    async fn acknowledge(
        &self,
        shard: Shard,
        mut ack: Vec<String>,
        dead: Vec<NewDeadLetter>,
        mut report: PassReport,
    ) -> Result<PassReport, WriterError> {
        report.rejected += dead.len() as u64;
        ack.extend(self.record_dead_letters(dead).await?);
        let acked = self.streams.ack(shard, GROUP, &ack).await?;
        self.stats.acked.fetch_add(acked, Ordering::Relaxed);
        Ok(report)
    }

    /// Records each dead letter (a redelivered one is recorded once) and returns their
    /// stream ids, to acknowledge. A ledger failure leaves the whole batch pending.
    async fn record_dead_letters(
        &self,
        dead: Vec<NewDeadLetter>,
    ) -> Result<Vec<String>, WriterError> {
        let mut ids = Vec::with_capacity(dead.len());
        for letter in dead {
            if self.ledger.record_dead_letter(&letter).await? {
                let reason = letter.reason.as_str();
                self.metrics.dead_letters.with_label_values(&[reason]).inc();
                error!(shard = letter.shard, stream_id = %letter.stream_id,
                    event_id = %letter.event_id, reason, detail = %letter.detail,
                    "ALERT: stream entry recorded as a dead letter and acknowledged; see `creditgate-sidecar dead-letters list`");
            }
            ids.push(letter.stream_id);
        }
        Ok(ids)
    }

    /// The ledger entries of `entries`, for each the stream entry it came from (a posted
    /// hold with a shortfall gives two: the posted entry and its overage), and the raw
    /// fields by stream id. An entry that is not a readable event, or one the ledger would
    /// refuse, goes to `dead` instead.
    fn to_ledger_entries(
        &self,
        shard: Shard,
        entries: Vec<StreamEntry>,
        dead: &mut Vec<NewDeadLetter>,
    ) -> (Vec<NewEntry>, Vec<String>, RawFields) {
        let mut batch = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut raw = HashMap::with_capacity(entries.len());
        for entry in entries {
            let parsed = match entry.event {
                Err(message) => Err((DeadLetterReason::Malformed, message)),
                Ok(event) => ledger_entries_of(&event, shard, &entry.stream_id)
                    .map_err(|message| (DeadLetterReason::Unplaceable, message)),
            };
            match parsed {
                Ok(new) => {
                    for one in new {
                        batch.push(one);
                        ids.push(entry.stream_id.clone());
                    }
                    raw.insert(entry.stream_id, entry.fields);
                }
                Err((reason, detail)) => {
                    if reason == DeadLetterReason::Malformed {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        self.metrics.malformed.inc();
                    }
                    dead.push(dead_letter(
                        shard,
                        entry.stream_id,
                        entry.fields,
                        reason,
                        detail,
                    ));
                }
            }
        }
        (batch, ids, raw)
    }

    /// Counts the ledger's answer for each entry of `batch` (whose stream ids are `ids`)
    /// and returns the stream ids to acknowledge: those whose every ledger entry is in the
    /// ledger now, once each. A stream entry with a conflicting ledger entry goes to `dead`
    /// (once, with its raw fields from `raw`).
    #[allow(clippy::too_many_arguments)]
    fn tally(
        &self,
        shard: Shard,
        outcomes: Vec<AppendOutcome>,
        ids: Vec<String>,
        batch: &[NewEntry],
        report: &mut PassReport,
        raw: &mut RawFields,
        dead: &mut Vec<NewDeadLetter>,
    ) -> Vec<String> {
        let committed_ms = now_ms();
        let mut ack: Vec<String> = Vec::with_capacity(ids.len());
        let mut refused: Vec<String> = Vec::new();
        for ((outcome, id), entry) in outcomes.into_iter().zip(ids).zip(batch) {
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
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.metrics.conflicts.inc();
                    if let Some(fields) = raw.remove(&id) {
                        let detail = format!(
                            "the ledger holds event id {event_id} (seq {}) with other fields",
                            existing.seq
                        );
                        dead.push(dead_letter(
                            shard,
                            id.clone(),
                            fields,
                            DeadLetterReason::Conflict,
                            detail,
                        ));
                    }
                    refused.push(id);
                }
            }
        }
        // One stream entry may stand behind two ledger entries: acknowledge it once here,
        // and not at all when either was refused (its dead letter acknowledges it).
        ack.dedup();
        ack.retain(|id| !refused.contains(id));
        ack
    }
}

/// The ledger entries of one event, checked as the ledger will check them, or why the
/// ledger cannot store it.
pub(crate) fn ledger_entries_of(
    event: &Event,
    shard: Shard,
    stream_id: &str,
) -> Result<Vec<NewEntry>, String> {
    let entries = NewEntry::from_event_with_overage(event, shard.0, Some(stream_id.to_string()))
        .map_err(|e| e.to_string())?;
    for entry in &entries {
        entry.validate().map_err(|e| e.to_string())?;
    }
    Ok(entries)
}

/// The raw fields of a batch's stream entries, by stream id: kept until the ledger has
/// answered, for the dead letter of an entry it refuses.
type RawFields = HashMap<String, Vec<(String, String)>>;

/// A dead letter for the stream entry `stream_id` of `shard`, recorded now.
fn dead_letter(
    shard: Shard,
    stream_id: String,
    fields: Vec<(String, String)>,
    reason: DeadLetterReason,
    detail: String,
) -> NewDeadLetter {
    let event_id = fields
        .iter()
        .find(|(k, _)| k == "event_id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    NewDeadLetter {
        shard: shard.0,
        stream_id,
        event_id,
        reason,
        detail,
        fields,
        recorded_at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use creditgate_protocol::{Event, MemoryStore};

    use super::*;
    use crate::jobs::fixtures::{
        CREDITS, grant, keyspace, model_events, reserve, settle, temp_ledger,
    };
    use crate::ledger::Ledger;

    /// One entry of a [`ModelStreams`] stream.
    struct Slot {
        entry: StreamEntry,
        seq: u64,
        owner: Option<String>,
        acked: bool,
    }

    /// The shards' streams and one consumer group, in memory: entries are delivered once
    /// to one consumer, stay pending with it until acknowledged, and can be taken over.
    struct ModelStreams {
        keyspace: Keyspace,
        slots: Mutex<Vec<Slot>>,
        /// How many of the next acknowledgements fail (Redis or the ledger failing in the
        /// middle of a batch: the batch stays pending with its reader).
        failing_acks: AtomicU64,
    }

    impl ModelStreams {
        fn new() -> Self {
            Self {
                keyspace: keyspace(),
                slots: Mutex::default(),
                failing_acks: AtomicU64::new(0),
            }
        }

        /// Appends an entry (an event, or what makes it unreadable) to a shard's stream.
        fn push(&self, shard: u32, event: Result<Event, String>) {
            let mut slots = self.slots.lock().expect("lock");
            let seq = slots.len() as u64 + 1;
            slots.push(Slot {
                entry: StreamEntry {
                    shard: Shard(shard),
                    stream_id: format!("{seq}-0"),
                    fields: match &event {
                        Ok(e) => e
                            .to_fields()
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                        Err(what) => vec![("garbage".to_string(), what.clone())],
                    },
                    event,
                },
                seq,
                owner: None,
                acked: false,
            });
        }

        fn push_model_events(&self, store: &MemoryStore) {
            for (shard, event) in model_events(store, &self.keyspace) {
                self.push(shard, Ok(event));
            }
        }

        /// Forgets every acknowledgement, as if the writer died between its ledger commit
        /// and its acknowledgement.
        fn lose_acks(&self) {
            for slot in self.slots.lock().expect("lock").iter_mut() {
                slot.acked = false;
            }
        }

        fn unacked(&self) -> usize {
            let slots = self.slots.lock().expect("lock");
            slots.iter().filter(|s| !s.acked).count()
        }

        /// Takes up to `count` entries of `shard` that `pick` accepts, for `consumer`.
        fn take(
            &self,
            shard: Shard,
            consumer: &str,
            count: usize,
            pick: impl Fn(&Slot) -> bool,
        ) -> Vec<StreamEntry> {
            let mut slots = self.slots.lock().expect("lock");
            let picked = slots
                .iter_mut()
                .filter(|s| s.entry.shard == shard && pick(s))
                .take(count);
            picked
                .map(|slot| {
                    slot.owner = Some(consumer.to_string());
                    slot.entry.clone()
                })
                .collect()
        }
    }

    #[async_trait]
    impl EventStreams for ModelStreams {
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
            consumer: &str,
            from: ReadFrom<'_>,
            count: usize,
        ) -> Result<Vec<StreamEntry>, StoreError> {
            Ok(match from {
                ReadFrom::New => self.take(shard, consumer, count, |s| s.owner.is_none()),
                ReadFrom::OwnPendingAfter(after) => {
                    let after: u64 = after
                        .split('-')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    self.take(shard, consumer, count, |s| {
                        s.owner.as_deref() == Some(consumer) && !s.acked && s.seq > after
                    })
                }
            })
        }

        async fn claim_stale(
            &self,
            shard: Shard,
            _group: &str,
            consumer: &str,
            _min_idle_ms: u64,
            start: &str,
            count: usize,
        ) -> Result<(String, Vec<StreamEntry>), StoreError> {
            let start = stream_pos(start).0;
            let stale = |s: &Slot| s.owner.as_deref().is_some_and(|o| o != consumer) && !s.acked;
            // Like XAUTOCLAIM: the cursor is the first stale entry left for the next call.
            let next = {
                let slots = self.slots.lock().expect("lock");
                let mut left = slots
                    .iter()
                    .filter(|s| s.entry.shard == shard && s.seq >= start && stale(s))
                    .skip(count);
                left.next()
                    .map_or_else(|| "0-0".to_string(), |s| s.entry.stream_id.clone())
            };
            let taken = self.take(shard, consumer, count, |s| s.seq >= start && stale(s));
            Ok((next, taken))
        }

        async fn last_stream_id(&self, shard: Shard) -> Result<Option<String>, StoreError> {
            let slots = self.slots.lock().expect("lock");
            let last = slots.iter().rev().find(|s| s.entry.shard == shard);
            Ok(last.map(|s| s.entry.stream_id.clone()))
        }

        async fn ack(&self, shard: Shard, _group: &str, ids: &[String]) -> Result<u64, StoreError> {
            let failing = self.failing_acks.load(Ordering::Relaxed);
            if failing > 0 {
                self.failing_acks.store(failing - 1, Ordering::Relaxed);
                return Err(StoreError::Timeout {
                    op: "ack",
                    timeout_ms: 0,
                });
            }
            let mut acked = 0;
            for slot in self.slots.lock().expect("lock").iter_mut() {
                if slot.entry.shard == shard && !slot.acked && ids.contains(&slot.entry.stream_id) {
                    slot.acked = true;
                    acked += 1;
                }
            }
            Ok(acked)
        }

        async fn trim_acknowledged(&self, shard: Shard, _group: &str) -> Result<u64, StoreError> {
            let mut slots = self.slots.lock().expect("lock");
            let first_unacked = slots
                .iter()
                .find(|s| s.entry.shard == shard && !s.acked)
                .map_or(u64::MAX, |s| s.seq);
            let before = slots.len();
            slots.retain(|s| s.entry.shard != shard || s.seq >= first_unacked);
            Ok((before - slots.len()) as u64)
        }
    }

    fn writer(
        streams: &Arc<ModelStreams>,
        ledger: &Arc<dyn Ledger>,
        consumer: &str,
    ) -> LedgerWriter {
        LedgerWriter::new(
            streams.clone(),
            ledger.clone(),
            consumer,
            Arc::new(SidecarMetrics::new()),
        )
    }

    /// acme: 100 granted, a hold of 30 posted at 20: three events.
    async fn acme_history() -> MemoryStore {
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 100).await;
        reserve(&store, "acme", "h1", 30).await;
        settle(&store, "acme", "h1", 20).await;
        store
    }

    async fn ledger_total(ledger: &dyn Ledger, customer: &str) -> (i64, i64) {
        let balance = ledger
            .balance_at(customer, u64::MAX >> 12)
            .await
            .expect("balance");
        let credits = balance.of(CREDITS).expect("credits");
        (credits.total, credits.held)
    }

    #[tokio::test]
    async fn the_model_events_are_written_once_and_acknowledged() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        streams.push_model_events(&acme_history().await);
        let writer = writer(&streams, &t.ledger, "a");

        let first = writer.drain().await.expect("drain");
        assert_eq!((first.read, first.written, first.rejected), (3, 3, 0));
        assert_eq!(writer.stats.acked.load(Ordering::Relaxed), 3);
        assert_eq!(streams.unacked(), 0);
        assert_eq!(ledger_total(t.ledger.as_ref(), "acme").await, (80, 0));

        // The acknowledgements were lost (a crash after the commit): a restart reads the
        // entries again, and the ledger takes them as duplicates.
        streams.lose_acks();
        let again = writer.recover().await.expect("recover");
        assert_eq!((again.read, again.written, again.duplicates), (3, 0, 3));
        assert_eq!(streams.unacked(), 0);
        assert_eq!(ledger_total(t.ledger.as_ref(), "acme").await, (80, 0));
        assert_eq!(writer.trim().await.expect("trim"), 3);
    }

    #[tokio::test]
    async fn a_shortfall_is_two_ledger_entries_and_one_acknowledgement() {
        let t = temp_ledger().await;
        let store = MemoryStore::new(keyspace());
        grant(&store, "acme", "g1", 10).await;
        reserve(&store, "acme", "h1", 10).await;
        settle(&store, "acme", "h1", 15).await;
        let streams = Arc::new(ModelStreams::new());
        streams.push_model_events(&store);
        let writer = writer(&streams, &t.ledger, "a");

        let report = writer.poll().await.expect("poll");

        assert_eq!((report.read, report.written), (3, 4), "{report:?}");
        assert_eq!(writer.stats.acked.load(Ordering::Relaxed), 3);
        assert_eq!(streams.unacked(), 0);
    }

    #[tokio::test]
    async fn an_unreadable_entry_is_dead_lettered_acknowledged_and_trimmed() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        let shard = keyspace().shard_of("acme").0;
        streams.push(shard, Err("not an event".into()));
        streams.push_model_events(&acme_history().await);
        let writer = writer(&streams, &t.ledger, "a");

        let report = writer.drain().await.expect("drain");

        assert_eq!((report.read, report.written, report.rejected), (4, 3, 1));
        assert_eq!(writer.stats.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(streams.unacked(), 0, "the bad entry is acknowledged");
        assert_eq!(
            writer.trim().await.expect("trim"),
            4,
            "nothing stops the trim"
        );
        let letters = t.ledger.dead_letters(true, 10).await.expect("dead letters");
        assert_eq!(letters.len(), 1);
        let letter = &letters[0].letter;
        assert_eq!(letter.reason, DeadLetterReason::Malformed);
        assert_eq!((letter.shard, letter.stream_id.as_str()), (shard, "1-0"));
        assert_eq!(
            letter.fields,
            [("garbage".to_string(), "not an event".to_string())]
        );
        assert_eq!(letter.detail, "not an event");
    }

    #[tokio::test]
    async fn a_conflicting_event_is_dead_lettered_and_the_events_behind_it_are_written() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        let history = acme_history().await;
        streams.push_model_events(&history);
        let writer = writer(&streams, &t.ledger, "a");
        assert_eq!(writer.drain().await.expect("drain").written, 3);
        // The same event id with other fields (a hold placed again under an old id),
        // then a new hold behind it on the same shard.
        let shard = keyspace().shard_of("acme").0;
        let mut reused = model_events(&history, &keyspace())
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| matches!(e.body, creditgate_protocol::EventBody::HoldPlaced { .. }))
            .expect("a placed event");
        reused.at_ms += 1;
        streams.push(shard, Ok(reused.clone()));
        let later = MemoryStore::new(keyspace());
        grant(&later, "acme", "g2", 50).await;
        streams.push_model_events(&later);

        let report = writer.drain().await.expect("drain");

        assert_eq!((report.read, report.written, report.rejected), (2, 1, 1));
        assert_eq!(writer.stats.conflicts.load(Ordering::Relaxed), 1);
        assert_eq!(streams.unacked(), 0, "the conflict is acknowledged");
        assert_eq!(
            writer.trim().await.expect("trim"),
            5,
            "the trim goes past it"
        );
        assert_eq!(ledger_total(t.ledger.as_ref(), "acme").await, (130, 0));
        let letters = t.ledger.dead_letters(true, 10).await.expect("dead letters");
        assert_eq!(letters.len(), 1);
        let letter = &letters[0].letter;
        assert_eq!(letter.reason, DeadLetterReason::Conflict);
        assert_eq!(letter.event_id, reused.event_id);
        assert_eq!(letter.stream_id, "4-0");
        assert!(
            letter
                .fields
                .contains(&("at".to_string(), reused.at_ms.to_string()))
        );
        // A redelivery of the same entry (a crash before the acknowledgement) is one letter.
        streams.lose_acks();
        writer.recover().await.expect("recover");
        assert_eq!(
            t.ledger.dead_letters(false, 10).await.expect("list").len(),
            1
        );
    }

    #[tokio::test]
    async fn dead_letters_are_replayed_or_discarded_once_with_their_actor() {
        use crate::jobs::dead_letters::{DeadLetterError, discard, replay};

        let t = temp_ledger().await;
        let ledger = t.ledger.as_ref();
        let shard = keyspace().shard_of("acme").0;
        // An applicable event the ledger once refused (say, a credit type it did not know).
        let (_, event) = model_events(&acme_history().await, &keyspace()).remove(0);
        let fields = event
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let refused = dead_letter(
            Shard(shard),
            "7-0".into(),
            fields,
            DeadLetterReason::Unplaceable,
            "refused".into(),
        );
        assert!(ledger.record_dead_letter(&refused).await.expect("record"));
        let unreadable = dead_letter(
            Shard(shard),
            "8-0".into(),
            vec![("x".into(), "y".into())],
            DeadLetterReason::Malformed,
            "no event_id".into(),
        );
        assert!(
            ledger
                .record_dead_letter(&unreadable)
                .await
                .expect("record")
        );
        let letters = ledger.dead_letters(true, 10).await.expect("list");
        let (bad_id, good_id) = (letters[0].id, letters[1].id);

        let outcome = replay(ledger, good_id, "ops@example.test", "credit type added")
            .await
            .expect("replay");
        assert_eq!((outcome.written, outcome.duplicates), (1, 0));
        assert_eq!(ledger_total(ledger, "acme").await, (100, 0));
        assert!(matches!(
            replay(ledger, good_id, "ops", "again").await,
            Err(DeadLetterError::Resolved {
                state: "replayed",
                ..
            })
        ));
        // A replay the ledger refuses is recorded and leaves the letter open.
        assert!(matches!(
            replay(ledger, bad_id, "ops", "try").await,
            Err(DeadLetterError::Refused { .. })
        ));
        assert_eq!(
            ledger
                .dead_letter(bad_id)
                .await
                .expect("show")
                .expect("letter")
                .state(),
            "open"
        );
        discard(
            ledger,
            bad_id,
            "ops@example.test",
            "garbage written by a test",
        )
        .await
        .expect("discard");

        let bad = ledger
            .dead_letter(bad_id)
            .await
            .expect("show")
            .expect("letter");
        assert_eq!(bad.state(), "discarded");
        let actions: Vec<_> = bad
            .actions
            .iter()
            .map(|a| (a.action.as_str(), a.actor.as_str()))
            .collect();
        assert_eq!(
            actions,
            [("replay_failed", "ops"), ("discarded", "ops@example.test")]
        );
        assert!(
            ledger
                .dead_letters(true, 10)
                .await
                .expect("list")
                .is_empty()
        );
        assert_eq!(ledger.dead_letters(false, 10).await.expect("list").len(), 2);
        assert!(matches!(
            discard(ledger, 999, "ops", "x").await,
            Err(DeadLetterError::NotFound(999))
        ));
    }

    #[tokio::test]
    async fn a_silent_consumers_entries_are_taken_over() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        streams.push_model_events(&acme_history().await);
        // Consumer "dead" read every entry and stopped before writing them.
        for shard in keyspace().all_shards() {
            streams
                .read_group(shard, GROUP, "dead", ReadFrom::New, BATCH_MAX)
                .await
                .expect("read");
        }
        let writer = writer(&streams, &t.ledger, "live");
        assert_eq!(writer.poll().await.expect("poll").read, 0);

        let claimed = writer.claim(CLAIM_IDLE_MS).await.expect("claim");

        assert_eq!((claimed.read, claimed.written), (3, 3));
        assert_eq!(streams.unacked(), 0);
        assert_eq!(ledger_total(t.ledger.as_ref(), "acme").await, (80, 0));
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_by_its_reader_within_the_backoff() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        streams.push_model_events(&acme_history().await);
        let writer = writer(&streams, &t.ledger, "a");
        streams.failing_acks.store(1, Ordering::Relaxed);

        assert!(writer.poll().await.is_err(), "the batch failed");
        assert_eq!(streams.unacked(), 3);
        // Within the backoff the shard waits (nothing new is read past the failed batch).
        assert_eq!(writer.poll().await.expect("poll").read, 0);
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MIN_MS + 50)).await;

        // The same consumer reads its pending entries again: no other consumer and no
        // claim after CLAIM_IDLE_MS is needed.
        let retried = writer.poll().await.expect("retry");
        assert_eq!(retried.read, 3, "{retried:?}");
        assert_eq!(streams.unacked(), 0);
        assert_eq!(ledger_total(t.ledger.as_ref(), "acme").await, (80, 0));
        // Its own pending entries done, the shard reads new entries again.
        assert_eq!(writer.poll().await.expect("poll").read, 0);
        push_a_new_grant(&streams).await;
        assert_eq!(writer.poll().await.expect("poll").read, 1);
    }

    /// Appends one new event (a grant to another customer) to the streams.
    async fn push_a_new_grant(streams: &ModelStreams) {
        let store = MemoryStore::new(keyspace());
        grant(&store, "globex", "g9", 10).await;
        let shard = keyspace().shard_of("globex").0;
        let events = model_events(&store, &keyspace());
        let (_, event) = events.into_iter().next().expect("an event");
        streams.push(shard, Ok(event));
    }

    #[tokio::test]
    async fn the_retry_backoff_doubles_up_to_its_bound() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        let writer = writer(&streams, &t.ledger, "a");
        let shard = Shard(0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            writer.schedule_retry(shard, "5-0".into());
            waits.push(writer.progress(shard, |p| p.retry.as_ref().map(|r| r.backoff_ms)));
        }
        let max = RETRY_BACKOFF_MAX_MS;
        assert_eq!(waits, [200, 400, 800, 1_600, max, max].map(Some).to_vec());
        // A later failure never moves the retry past entries still waiting.
        writer.schedule_retry(shard, "9-0".into());
        assert_eq!(
            writer.progress(shard, |p| p.retry.as_ref().map(|r| r.after.clone())),
            Some("5-0".to_string())
        );
    }

    #[tokio::test]
    async fn the_writer_passes_the_stream_heads_it_was_given_while_more_arrive() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        streams.push_model_events(&acme_history().await);
        let writer = writer(&streams, &t.ledger, "a").with_batch_max(1);
        let since = Instant::now();
        let heads = writer.stream_heads().await.expect("heads");
        assert!(!writer.has_passed(&heads, since));

        // More events arrive than one pass reads; the heads of `since` are passed anyway.
        push_a_new_grant(&streams).await;
        for _ in 0..3 {
            writer.poll().await.expect("poll");
        }
        assert!(
            writer.has_passed(&heads, since),
            "three one-entry passes reach the heads"
        );
        assert!(streams.unacked() > 0, "newer entries are still waiting");
    }
}
