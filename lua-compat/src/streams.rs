//! Consumer-group reads of the shard event streams, for the sidecar's ledger writer, and
//! the per-shard generation marker that tells a Redis that lost its data.
//!
//! Entries are acknowledged only by the caller, after its ledger transaction commits;
//! nothing here acknowledges on its own. Trimming removes only entries every consumer of
//! the group has acknowledged. A malformed entry is returned as an error value beside the
//! good ones, never dropped.

use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use crate::event::Event;
use crate::keys::Shard;
use crate::redis_store::RedisStore;
use crate::replies::parse_entry;
use crate::store::StoreError;

/// One stream entry as read by a consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The shard whose stream it is in.
    pub shard: Shard,
    /// The stream entry id (`<ms>-<seq>`).
    pub stream_id: String,
    /// The entry's raw field/value pairs, sorted by field (values that are not text are
    /// shown as `<not text>`): what a dead letter keeps when the event cannot be applied.
    pub fields: Vec<(String, String)>,
    /// The event, or what makes the entry unreadable.
    pub event: Result<Event, String>,
}

/// The raw field/value pairs of a stream entry, sorted by field.
fn raw_fields(entry: &redis::streams::StreamId) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = entry
        .map
        .iter()
        .map(|(k, v)| {
            let text = redis::from_redis_value::<String>(v.clone())
                .unwrap_or_else(|_| "<not text>".to_string());
            (k.clone(), text)
        })
        .collect();
    fields.sort();
    fields
}

/// Where a consumer reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom<'a> {
    /// Entries never delivered to any consumer of the group (`>`).
    New,
    /// This consumer's own entries delivered but not acknowledged, with ids after this one
    /// (`"0"` for all), e.g. after a crash.
    OwnPendingAfter(&'a str),
}

impl RedisStore {
    /// Creates the consumer group on a shard's stream (and the stream) if missing, reading
    /// from the start so no entry written before the group existed is skipped.
    pub async fn ensure_group(&self, shard: Shard, group: &str) -> Result<(), StoreError> {
        let key = self.keyspace().events(shard);
        let mut conn = self.conn.clone();
        let result: Result<(), StoreError> = self
            .with_timeout("ensure_group", async {
                conn.query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&key)
                        .arg(group)
                        .arg("0")
                        .arg("MKSTREAM"),
                )
                .await
            })
            .await;
        match result {
            Err(StoreError::Protocol { message, .. }) if message.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads up to `count` entries of a shard's stream for `consumer` of `group`.
    pub async fn read_group(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        from: ReadFrom<'_>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let key = self.keyspace().events(shard);
        let id = match from {
            ReadFrom::New => ">",
            ReadFrom::OwnPendingAfter(after) => after,
        };
        let mut conn = self.conn.clone();
        let reply: Option<StreamReadReply> = self
            .with_timeout("read_group", async {
                conn.query(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(group)
                        .arg(consumer)
                        .arg("COUNT")
                        .arg(count)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(id),
                )
                .await
            })
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| StreamEntry {
                shard,
                stream_id: entry.id.clone(),
                fields: raw_fields(&entry),
                event: parse_entry(entry),
            })
            .collect())
    }

    /// Takes over up to `count` entries that another consumer of `group` has held
    /// unacknowledged for at least `min_idle_ms` (it died), for `consumer`, scanning the
    /// pending entries from stream id `start` (`"0-0"` for the first). Returns the cursor
    /// to pass next (`"0-0"` once the scan went round) and the entries taken.
    pub async fn claim_stale(
        &self,
        shard: Shard,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        start: &str,
        count: usize,
    ) -> Result<(String, Vec<StreamEntry>), StoreError> {
        let key = self.keyspace().events(shard);
        let mut conn = self.conn.clone();
        let reply: StreamAutoClaimReply = self
            .with_timeout("claim_stale", async {
                conn.query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(group)
                        .arg(consumer)
                        .arg(min_idle_ms)
                        .arg(start)
                        .arg("COUNT")
                        .arg(count),
                )
                .await
            })
            .await?;
        let entries = reply
            .claimed
            .into_iter()
            .map(|entry| StreamEntry {
                shard,
                stream_id: entry.id.clone(),
                fields: raw_fields(&entry),
                event: parse_entry(entry),
            })
            .collect();
        Ok((reply.next_stream_id, entries))
    }

    /// The id of the newest entry of a shard's stream (`None` when it is empty or missing):
    /// the position a caller waits for the writer to pass.
    pub async fn last_stream_id(&self, shard: Shard) -> Result<Option<String>, StoreError> {
        let key = self.keyspace().events(shard);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = self
            .with_timeout("last_stream_id", async {
                conn.query(
                    redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                )
                .await
            })
            .await?;
        Ok(reply.ids.into_iter().next().map(|entry| entry.id))
    }

    /// Acknowledges entries of a shard's stream for `group`; returns how many were pending.
    pub async fn ack(&self, shard: Shard, group: &str, ids: &[String]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let key = self.keyspace().events(shard);
        let mut conn = self.conn.clone();
        self.with_timeout("ack", async {
            conn.query(redis::cmd("XACK").arg(&key).arg(group).arg(ids))
                .await
        })
        .await
    }

    /// Trims a shard's stream below the oldest entry `group` still needs: its oldest
    /// pending entry, or past its last delivered entry when nothing is pending. Returns how
    /// many entries were removed. Entries of other groups are not considered: one group
    /// owns the streams.
    pub async fn trim_acknowledged(&self, shard: Shard, group: &str) -> Result<u64, StoreError> {
        let key = self.keyspace().events(shard);
        let mut conn = self.conn.clone();
        let groups: Vec<redis::Value> = self
            .with_timeout("trim", async {
                conn.query(redis::cmd("XINFO").arg("GROUPS").arg(&key))
                    .await
            })
            .await?;
        let mut last_delivered: Option<String> = None;
        for g in groups {
            let fields: std::collections::HashMap<String, redis::Value> =
                redis::FromRedisValue::from_redis_value(g).map_err(|e| StoreError::Protocol {
                    op: "trim",
                    message: e.to_string(),
                })?;
            let name: Option<String> = fields
                .get("name")
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
            if name.as_deref() == Some(group) {
                last_delivered = fields
                    .get("last-delivered-id")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
            }
        }
        let Some(last_delivered) = last_delivered else {
            return Ok(0);
        };
        let mut conn = self.conn.clone();
        let pending: (u64, Option<String>, Option<String>, redis::Value) = self
            .with_timeout("trim", async {
                conn.query(redis::cmd("XPENDING").arg(&key).arg(group))
                    .await
            })
            .await?;
        // Keep everything from the oldest pending entry on; with nothing pending, keep
        // only what was never delivered (strictly after the last delivered id).
        let min_id = match pending.1 {
            Some(oldest_pending) => oldest_pending,
            None => next_id(&last_delivered),
        };
        let mut conn = self.conn.clone();
        self.with_timeout("trim", async {
            conn.query(redis::cmd("XTRIM").arg(&key).arg("MINID").arg(&min_id))
                .await
        })
        .await
    }

    /// Reads a shard's generation marker, if set.
    pub async fn generation(&self, shard: Shard) -> Result<Option<String>, StoreError> {
        let key = self.keyspace().generation(shard);
        let mut conn = self.conn.clone();
        self.with_timeout("generation", async {
            conn.query(redis::cmd("GET").arg(&key)).await
        })
        .await
    }

    /// Sets a shard's generation marker if it is missing; returns whether it was set now.
    pub async fn init_generation(
        &self,
        shard: Shard,
        generation: &str,
    ) -> Result<bool, StoreError> {
        let key = self.keyspace().generation(shard);
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .with_timeout("generation", async {
                conn.query(redis::cmd("SET").arg(&key).arg(generation).arg("NX"))
                    .await
            })
            .await?;
        Ok(set.is_some())
    }
}

/// The stream id just after `id` (`<ms>-<seq+1>`).
fn next_id(id: &str) -> String {
    match id.split_once('-') {
        Some((ms, seq)) => match seq.parse::<u64>() {
            Ok(seq) => format!("{ms}-{}", seq + 1),
            Err(_) => id.to_string(),
        },
        None => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_id_increments_the_sequence() {
        assert_eq!(super::next_id("1700000000000-4"), "1700000000000-5");
    }
}
