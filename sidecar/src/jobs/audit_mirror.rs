//! Copies the fleet control audit log from its Redis stream into the ledger
//! (`control_audit`), so the record of who changed which mode, when and why outlives a
//! Redis that loses its data. Copying is idempotent (by stream entry id) and bounded.

use creditgate_protocol::RedisStore;

use crate::ledger::LedgerControlAudit;

/// The newest audit entries copied per pass: people change modes a few times a day, and
/// the sidecar copies every second, so a pass never misses one; a script flooding the log
/// cannot make one pass unbounded.
pub const AUDIT_MIRROR_BATCH: usize = 100;

/// Copies the newest audit entries into the ledger; returns how many were new.
pub async fn mirror_audit(
    redis: &RedisStore,
    ledger: &dyn LedgerControlAudit,
) -> anyhow::Result<u64> {
    let entries = redis.audit_log(AUDIT_MIRROR_BATCH).await?;
    if entries.is_empty() {
        return Ok(0);
    }
    Ok(ledger.record_control_audit(&entries).await?)
}
