//! The pricing versions the fleet has run, read from the ledger's `config_versions` table
//! and parsed once each, so a usage event is priced by the version in force at its event
//! time rather than the one in force when it arrives.

use std::sync::{Arc, RwLock};

use creditgate_config::PricingConfig;
use tracing::warn;

use crate::ledger::{ConfigVersionRecord, Ledger, LedgerResult};

/// One parsed version.
struct Known {
    /// When it was published, ms since the Unix epoch.
    published_at_ms: u64,
    /// Its number.
    version: u64,
    /// The parsed config, carrying its number.
    config: Arc<PricingConfig>,
}

/// The parsed versions, in publication order.
#[derive(Default)]
struct Inner {
    /// Sorted by (published_at_ms, version).
    versions: Vec<Known>,
    /// The highest version number read from the ledger (parsed or not): the next refresh
    /// reads only the versions above it.
    newest: u64,
}

/// The cache of published pricing versions, shared by the config publisher (which adds
/// each version it records) and the usage-events route (which refreshes it per request).
#[derive(Default)]
pub struct PricingHistory {
    inner: RwLock<Inner>,
}

impl PricingHistory {
    /// An empty history; [`refresh`](Self::refresh) fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest version number known, 0 when none.
    pub fn newest(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).newest
    }

    /// Reads the versions recorded since the last refresh (one query, usually empty) and
    /// parses them. A recorded text that no longer parses is skipped with a warning: the
    /// events of its time fall back to the version before it.
    pub async fn refresh(&self, ledger: &dyn Ledger) -> LedgerResult<()> {
        let records = ledger.config_versions_after(self.newest()).await?;
        for record in records {
            self.add_record(&record);
        }
        Ok(())
    }

    fn add_record(&self, record: &ConfigVersionRecord) {
        match PricingConfig::from_toml_str(&record.toml, &record.file) {
            Ok(config) => self.insert(
                record.published_at_ms,
                Arc::new(config.with_version(record.version)),
            ),
            Err(errors) => {
                warn!(version = record.version, errors = %errors, "a recorded pricing version no longer parses; events of its time use the version before it");
                let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
                inner.newest = inner.newest.max(record.version);
            }
        }
    }

    /// Adds a parsed version (its number is `config.version()`) published at
    /// `published_at_ms`; a number already known is ignored.
    pub fn insert(&self, published_at_ms: u64, config: Arc<PricingConfig>) {
        let version = config.version();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.newest = inner.newest.max(version);
        if inner.versions.iter().any(|k| k.version == version) {
            return;
        }
        let at = inner
            .versions
            .partition_point(|k| (k.published_at_ms, k.version) <= (published_at_ms, version));
        inner.versions.insert(
            at,
            Known {
                published_at_ms,
                version,
                config,
            },
        );
    }

    /// The version in force at `at_ms`: the latest published at or before it; the oldest
    /// known when every version is later; `None` when none is known.
    pub fn at(&self, at_ms: u64) -> Option<Arc<PricingConfig>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let after = inner
            .versions
            .partition_point(|k| k.published_at_ms <= at_ms);
        let index = after.saturating_sub(1);
        inner.versions.get(index).map(|k| k.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cost: u64, version: u64) -> Arc<PricingConfig> {
        let text = format!(
            "[credit_types.api]\nscale = 0\n[upstreams.default]\naddress = \"127.0.0.1:9\"\n\
             [features.export]\ncredit_type = \"api\"\ncost = {{ kind = \"fixed\", amount = {cost} }}\n"
        );
        Arc::new(
            PricingConfig::from_toml_str(&text, "test.toml")
                .expect("valid")
                .with_version(version),
        )
    }

    #[test]
    fn the_version_in_force_is_the_latest_published_at_or_before_the_time() {
        let history = PricingHistory::new();
        assert!(history.at(5).is_none());
        history.insert(2_000, config(3, 2));
        history.insert(1_000, config(2, 1));
        history.insert(2_000, config(3, 2));
        assert_eq!(history.newest(), 2);
        let version_at = |t| history.at(t).map(|c| c.version());
        assert_eq!(version_at(500), Some(1), "before every version: the oldest");
        assert_eq!(version_at(1_000), Some(1));
        assert_eq!(version_at(1_999), Some(1));
        assert_eq!(version_at(2_000), Some(2));
        assert_eq!(version_at(u64::MAX), Some(2));
    }
}
