//! Publishes customer API keys to Redis, where the gateways look them up
//! (`cg:apikey:<sha256 hex>` → customer). The ledger database is the source of truth: a
//! key is recorded there first, then published; a revocation is recorded, then the Redis
//! entry deleted. Whatever Redis missed (down at the time, or its data lost) is put right
//! by [`sync_all`], which runs at start-up and every [`KEY_SYNC_MS`]: every active key is
//! written again and every revoked key deleted again.
//!
//! A pass never leaves a key revoked after it read the keys published: after writing a key
//! it reads the key's revocation again and deletes the key when it was revoked meanwhile.
//! A revocation records, then deletes; so whichever order the two interleave in, the last
//! Redis write for a revoked key is a delete (the key is in Redis at most for the one
//! database read between the pass's write and its delete).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::state::AdminState;

/// How often every key is republished, ms: bounds how long a key issued or revoked while
/// Redis was unreachable, or lost with Redis's data, stays wrong at the gateways (plus
/// their key cache TTL). Ten seconds keeps the write load at one `SET` per active key per
/// ten seconds.
pub const KEY_SYNC_MS: u64 = 10_000;

/// What one [`sync_all`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Active keys written to Redis.
    pub published: u64,
    /// Revoked keys deleted from Redis.
    pub withdrawn: u64,
}

/// Writes one key's mapping; logs and returns `false` when Redis fails (the next
/// [`sync_all`] pass retries).
pub async fn publish(st: &AdminState, key_hash: &str, customer: &str) -> bool {
    match st.sidecar.redis.set_api_key(key_hash, customer).await {
        // A key revoked as soon as it was recorded is withdrawn again (see the module doc).
        Ok(()) if matches!(revoked_now(st, key_hash).await, Ok(true)) => {
            withdraw(st, key_hash).await;
            false
        }
        Ok(()) => true,
        Err(e) => {
            warn!(customer, error = %e, "publishing an API key to Redis failed; the key sync pass retries");
            false
        }
    }
}

/// Deletes one key's mapping; logs and returns `false` when Redis fails.
pub async fn withdraw(st: &AdminState, key_hash: &str) -> bool {
    match st.sidecar.redis.delete_api_key(key_hash).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "withdrawing an API key from Redis failed; the key sync pass retries");
            false
        }
    }
}

/// One pass over every key of the ledger database. Stops at the first Redis error.
pub async fn sync_all(st: &AdminState) -> anyhow::Result<SyncReport> {
    let rows = st
        .db
        .fetch(
            "SELECT customer, key_hash, revoked_at_ms FROM customer_api_keys ORDER BY key_id",
            &[],
            |row| {
                Ok((
                    row.try_get::<String, _>("customer")?,
                    row.try_get::<String, _>("key_hash")?,
                    row.try_get::<Option<i64>, _>("revoked_at_ms")?.is_some(),
                ))
            },
        )
        .await?;
    let mut report = SyncReport::default();
    for (customer, hash, revoked) in rows {
        if revoked {
            st.sidecar.redis.delete_api_key(&hash).await?;
            report.withdrawn += 1;
        } else {
            st.sidecar.redis.set_api_key(&hash, &customer).await?;
            if revoked_now(st, &hash).await? {
                st.sidecar.redis.delete_api_key(&hash).await?;
                report.withdrawn += 1;
            } else {
                report.published += 1;
            }
        }
    }
    Ok(report)
}

/// Whether the key is revoked in the ledger database now (or gone): read after the pass
/// wrote it, so a revocation recorded since the pass read the keys is undone at once.
async fn revoked_now(st: &AdminState, key_hash: &str) -> Result<bool, sqlx::Error> {
    let rows = st
        .db
        .fetch(
            "SELECT revoked_at_ms FROM customer_api_keys WHERE key_hash = $1",
            &[key_hash.into()],
            |row| row.try_get::<Option<i64>, _>("revoked_at_ms"),
        )
        .await?;
    Ok(!matches!(rows.first(), Some(None)))
}

/// Runs [`sync_all`] at once, then every [`KEY_SYNC_MS`], until `stop` turns true.
pub async fn run(st: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        match sync_all(&st).await {
            Ok(report) if first => {
                info!(?report, "API keys published to Redis");
                first = false;
            }
            Ok(_) => {}
            Err(e) => error!(error = %format!("{e:#}"), "API key sync failed; retrying next pass"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(KEY_SYNC_MS)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}
