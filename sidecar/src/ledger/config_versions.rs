//! The record of every pricing config version published to the fleet (`config_versions`,
//! migration 6): number, label, content hash, publication time and TOML text. Usage events
//! are priced by the version in force at their event time, read from here. Append-only; a
//! version recorded twice (a restart, two sidecars) keeps its first record.

/// One published pricing config version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigVersionRecord {
    /// The fleet's version number (monotonic, from 1).
    pub version: u64,
    /// The label recorded on holds and burns priced by it (`<number>-<12 hex of hash>`).
    pub version_label: String,
    /// SHA-1 of the text.
    pub content_hash: String,
    /// When it was published (Redis time), ms since the Unix epoch.
    pub published_at_ms: u64,
    /// The file it came from, for messages.
    pub file: String,
    /// The validated TOML text.
    pub toml: String,
}

/// Inserts `$1..$7` (the fields of [`ConfigVersionRecord`] in order, then the recording
/// time); a version recorded before is left as it is.
pub(crate) const INSERT_CONFIG_VERSION: &str = "INSERT INTO config_versions (version, \
     version_label, content_hash, published_at_ms, file, toml, recorded_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO NOTHING";

/// The versions numbered above `$1`, oldest first.
pub(crate) const SELECT_CONFIG_VERSIONS_AFTER: &str = "SELECT version, version_label, \
     content_hash, published_at_ms, file, toml FROM config_versions WHERE version > $1 \
     ORDER BY version";
