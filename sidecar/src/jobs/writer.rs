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
//!
//! Streams are Redis's alone (the reference model keeps its events in a list), so the
//! writer reaches them through the narrow [`EventStreams`] seam, implemented for
//! [`RedisStore`]; tests put the model's events behind it. The writer makes no credit
//! store calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use creditgate_protocol::{Keyspace, ReadFrom, RedisStore, Shard, StoreError, StreamEntry};
use tracing::{error, info, warn};

use crate::ledger::{AppendOutcome, LedgerEntries, LedgerError, NewEntry, now_ms};
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
    /// `min_idle_ms`.
    async fn claim_stale(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;
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
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        RedisStore::claim_stale(self, shard, group, consumer, min_idle_ms, count).await
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

/// Whether a stream call failed because the stream or its consumer group does not exist
/// (Redis lost its data).
fn is_missing_group(e: &StoreError) -> bool {
    matches!(e, StoreError::Protocol { message, .. }
        if message.contains("NOGROUP") || message.contains("no such key"))
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
    streams: Arc<dyn EventStreams>,
    ledger: Arc<dyn LedgerEntries>,
    consumer: String,
    batch_max: usize,
    metrics: Arc<SidecarMetrics>,
    /// What the writer did since start.
    pub stats: WriterStats,
}

impl LedgerWriter {
    /// A writer consuming as `consumer` (unique per sidecar, stable across its restarts so
    /// it finds its own pending entries), reading `streams` (Redis in production).
    pub fn new(
        streams: Arc<dyn EventStreams>,
        ledger: Arc<dyn LedgerEntries>,
        consumer: &str,
        metrics: Arc<SidecarMetrics>,
    ) -> Self {
        Self {
            streams,
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
        for shard in self.streams.keyspace().all_shards() {
            self.streams.ensure_group(shard, GROUP).await?;
        }
        Ok(())
    }

    /// Writes this consumer's own pending entries (delivered before a crash, never
    /// acknowledged). Rejected entries stay pending, so this reads each pending entry once.
    pub async fn recover(&self) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.streams.keyspace().all_shards() {
            // Page through the pending entries by id, so entries left pending on purpose
            // (rejected) are read once per recovery, not forever.
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

    /// Takes over and writes entries other consumers left unacknowledged for `idle_ms`.
    pub async fn claim(&self, idle_ms: u64) -> Result<PassReport, WriterError> {
        let mut report = PassReport::default();
        for shard in self.streams.keyspace().all_shards() {
            let entries = match self
                .streams
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
        for shard in self.streams.keyspace().all_shards() {
            let entries = match self
                .streams
                .read_group(shard, GROUP, &self.consumer, ReadFrom::New, self.batch_max)
                .await
            {
                Err(e) if is_missing_group(&e) => {
                    // Redis lost the stream and its group (restart without persistence,
                    // FLUSHALL): create them again and read from the new stream's start.
                    warn!(shard = %shard, "consumer group missing; Redis lost its data; creating it again");
                    self.streams.ensure_group(shard, GROUP).await?;
                    self.streams
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
        for shard in self.streams.keyspace().all_shards() {
            removed += match self.streams.trim_acknowledged(shard, GROUP).await {
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
        let (batch, ids) = self.to_ledger_entries(shard, entries, &mut report);
        if batch.is_empty() {
            return Ok(report);
        }
        let outcomes = self.ledger.append_batch(&batch).await?;
        let ack = self.tally(shard, outcomes, ids, &batch, &mut report);
        self.stats
            .written
            .fetch_add(report.written, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(report.duplicates, Ordering::Relaxed);
        let acked = self.streams.ack(shard, GROUP, &ack).await?;
        self.stats.acked.fetch_add(acked, Ordering::Relaxed);
        Ok(report)
    }

    /// The ledger entries of `entries` and, for each, the stream entry it came from: a
    /// posted hold with a shortfall gives two (the posted entry and its overage). An
    /// unreadable entry is counted as rejected and left out, so it is never acknowledged.
    fn to_ledger_entries(
        &self,
        shard: Shard,
        entries: Vec<StreamEntry>,
        report: &mut PassReport,
    ) -> (Vec<NewEntry>, Vec<String>) {
        let mut batch = Vec::with_capacity(entries.len());
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
        (batch, ids)
    }

    /// Counts the ledger's answer for each entry of `batch` (whose stream ids are `ids`)
    /// and returns the stream ids to acknowledge: those whose every ledger entry is in the
    /// ledger now, once each.
    fn tally(
        &self,
        shard: Shard,
        outcomes: Vec<AppendOutcome>,
        ids: Vec<String>,
        batch: &[NewEntry],
        report: &mut PassReport,
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
        ack
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
    }

    impl ModelStreams {
        fn new() -> Self {
            Self {
                keyspace: keyspace(),
                slots: Mutex::default(),
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
            count: usize,
        ) -> Result<Vec<StreamEntry>, StoreError> {
            Ok(self.take(shard, consumer, count, |s| {
                s.owner.as_deref().is_some_and(|o| o != consumer) && !s.acked
            }))
        }

        async fn ack(&self, shard: Shard, _group: &str, ids: &[String]) -> Result<u64, StoreError> {
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
    async fn an_unreadable_entry_stays_unacknowledged_and_stops_the_trim() {
        let t = temp_ledger().await;
        let streams = Arc::new(ModelStreams::new());
        let shard = keyspace().shard_of("acme").0;
        streams.push(shard, Err("not an event".into()));
        streams.push_model_events(&acme_history().await);
        let writer = writer(&streams, &t.ledger, "a");

        let report = writer.drain().await.expect("drain");

        assert_eq!((report.read, report.written, report.rejected), (4, 3, 1));
        assert_eq!(writer.stats.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(streams.unacked(), 1);
        assert_eq!(writer.trim().await.expect("trim"), 0);
        // A restart reads it once more, and leaves it again.
        let recovered = writer.recover().await.expect("recover");
        assert_eq!((recovered.read, recovered.rejected), (1, 1));
        assert_eq!(streams.unacked(), 1);
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
}
