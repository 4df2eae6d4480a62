//! The per-customer hash chain: checking a customer's stored entries link up and match
//! their hashes, and the report of a check.
//!
//! Pure: the backends load the rows and the chain head, this module judges them. It
//! never repairs anything; a broken link is evidence to keep.

use super::entry::{GENESIS_HASH, LedgerEntry};

/// What is wrong at a broken link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// The entry's `prev_hash` is not the previous entry's hash: an entry was removed or
    /// inserted before it, or its `prev_hash` was edited.
    PrevHashMismatch,
    /// The entry's fields do not hash to its stored `hash`: the entry was edited.
    HashMismatch,
    /// The chain head does not name the last entry: the newest entries were removed or
    /// the head was edited.
    HeadMismatch,
}

/// The first broken link found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The customer whose chain is broken.
    pub customer: String,
    /// The entry's seq (for [`BreakKind::HeadMismatch`], the head's `last_seq`).
    pub seq: i64,
    /// The entry's event id (empty for [`BreakKind::HeadMismatch`]).
    pub event_id: String,
    /// What is wrong.
    pub kind: BreakKind,
    /// The hash the chain says should be there (hex).
    pub expected: String,
    /// The hash found (hex).
    pub found: String,
}

/// The result of a chain check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Customers whose chains were walked (up to and including the broken one).
    pub customers_checked: u64,
    /// Entries checked.
    pub entries_checked: u64,
    /// The first broken link, customers in byte order and entries in seq order; `None`
    /// when every chain is intact.
    pub first_broken: Option<BrokenLink>,
}

impl VerifyReport {
    /// True when no link is broken.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// The chain head as stored in `chain_heads`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Seq of the customer's last entry.
    pub last_seq: i64,
    /// Hash of the customer's last entry (hex).
    pub last_hash: String,
}

/// Walks one customer's entries (in seq order) against their head; returns how many
/// entries were checked and the first broken link.
pub fn verify_customer(
    customer: &str,
    entries: &[LedgerEntry],
    head: Option<&ChainHead>,
) -> (u64, Option<BrokenLink>) {
    let mut prev = GENESIS_HASH.to_string();
    let mut last_seq = 0;
    let mut checked = 0;
    for e in entries {
        checked += 1;
        let broken = |kind, expected: String, found: String| BrokenLink {
            customer: customer.to_string(),
            seq: e.seq,
            event_id: e.entry.event_id.clone(),
            kind,
            expected,
            found,
        };
        if e.prev_hash != prev {
            return (
                checked,
                Some(broken(
                    BreakKind::PrevHashMismatch,
                    prev,
                    e.prev_hash.clone(),
                )),
            );
        }
        // An unparsable prev_hash cannot be hashed; the empty expectation reports it.
        let computed = e.computed_hash().unwrap_or_default();
        if computed != e.hash {
            return (
                checked,
                Some(broken(BreakKind::HashMismatch, computed, e.hash.clone())),
            );
        }
        prev = e.hash.clone();
        last_seq = e.seq;
    }
    let (head_seq, head_hash) = head
        .map(|h| (h.last_seq, h.last_hash.clone()))
        .unwrap_or((0, GENESIS_HASH.to_string()));
    if head_hash != prev || head_seq != last_seq {
        return (
            checked,
            Some(BrokenLink {
                customer: customer.to_string(),
                seq: head_seq,
                event_id: String::new(),
                kind: BreakKind::HeadMismatch,
                expected: prev,
                found: head_hash,
            }),
        );
    }
    (checked, None)
}
