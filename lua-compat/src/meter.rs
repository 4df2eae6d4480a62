//! "Meter once": the pieces that make a metered request or usage event charge at most once,
//! shared by the gateway and the sidecar so both derive the same ids the same way.
//!
//! Pure functions only: nothing here talks to a store or reads a clock.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Prefix of the hold ids the gateway derives from a request's `Idempotency-Key`.
pub const GATEWAY_IDEMPOTENT_PREFIX: &str = "idem";

/// Prefix of the hold ids the sidecar derives from a usage event's idempotency key.
pub const USAGE_EVENT_PREFIX: &str = "ue";

/// How many hex digits of the digest a derived hold id keeps: 160 bits, ample against
/// collisions, and short enough that `id.N` retry suffixes stay within the id length limit.
const DIGEST_HEX_DIGITS: usize = 40;

/// The hold id for `customer`'s idempotency `key`: `prefix-` followed by the first 40 hex
/// digits of sha256(customer, NUL, key). The same customer and key always give the same
/// id, so a retry or duplicate finds the first attempt's hold; the customer is part of the
/// digest, so two customers using the same key never share a hold.
pub fn idempotent_hold_id(prefix: &str, customer: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(customer.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut id = String::with_capacity(prefix.len() + 1 + DIGEST_HEX_DIGITS);
    id.push_str(prefix);
    id.push('-');
    for byte in digest.iter().take(DIGEST_HEX_DIGITS / 2) {
        // Writing to a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_are_pinned() {
        // Changing these ids would charge again every retry of a request made before the
        // change: they are a stored format, not an implementation detail.
        assert_eq!(
            idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "acme", "k1"),
            "idem-a9bff821b3c257c60dac37cb1b04829394620c0e"
        );
    }

    #[test]
    fn usage_event_ids_are_pinned() {
        assert_eq!(
            idempotent_hold_id(USAGE_EVENT_PREFIX, "acme", "job-1"),
            "ue-b1ecca3fea6ebb86ca5f59f0ca40fd17fa937b48"
        );
    }

    #[test]
    fn ids_are_per_customer_and_valid_with_retry_suffixes() {
        let a = idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "acme", "k1");
        assert_ne!(
            a,
            idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, "globex", "k1")
        );
        assert!(crate::keys::validate_id("hold_id", &format!("{a}.5")).is_ok());
        let b = idempotent_hold_id(USAGE_EVENT_PREFIX, "acme", "k1");
        assert!(crate::keys::validate_id("hold_id", &b).is_ok());
    }
}
