//! The record of usage events the product reported (`usage_events`, migration 5): what was
//! received and how it was priced, written before the event is burned so nothing reported
//! is lost. Append-only; a duplicate (same customer and idempotency key) is not recorded
//! twice.

/// One usage event as received and priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEventRecord {
    /// The customer.
    pub customer: String,
    /// The product's key for the event, unique per customer.
    pub idempotency_key: String,
    /// The feature used.
    pub feature: String,
    /// Units used.
    pub quantity: u64,
    /// When the usage happened, ms since the Unix epoch.
    pub occurred_at_ms: u64,
    /// When the sidecar received it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The credit type burned.
    pub credit_type: String,
    /// The price, in the credit type's smallest unit.
    pub amount: u64,
    /// The hold that burns it (its ledger entries carry the burn).
    pub hold_id: String,
    /// The label of the pricing version that priced it (the one in force at
    /// `occurred_at_ms`, from `config_versions`).
    pub pricing_version: String,
    /// The event's metadata object as JSON text, if any.
    pub metadata: Option<String>,
}

/// Inserts `$1..$11` in the column order of [`UsageEventRecord`]; a duplicate key does
/// nothing.
pub(crate) const INSERT_USAGE_EVENT: &str = "INSERT INTO usage_events (customer, \
     idempotency_key, feature, quantity, occurred_at_ms, received_at_ms, credit_type, amount, \
     hold_id, pricing_version, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (customer, idempotency_key) DO NOTHING";
