//! The Redis key schema: which shard a customer lives on and the keys of one call.
//!
//! Every key of one script call shares the shard's hash tag `{s<N>}`, so the call touches a
//! single Redis Cluster slot. Nothing here does I/O.

use std::fmt;

/// Key prefix used when the deployment does not choose one.
pub const DEFAULT_PREFIX: &str = "cg";

/// Number of shards when the deployment does not choose one. Sixteen tags spread evenly
/// over a handful of cluster primaries and keep each shard's event stream busy enough to
/// batch well. Changing it moves customers between shards, so it is fixed per deployment.
pub const DEFAULT_SHARDS: u32 = 16;

/// Longest identifier (customer, grant, hold, credit type) the protocol accepts, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Largest amount any script accepts: Lua numbers are doubles, exact only below 2^53.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Checks an identifier: 1 to 128 bytes of `[A-Za-z0-9_.@-]`. The key schema and the event
/// format use `:`, `/`, `,` and `|` as separators, so those never appear in an id.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.@-], got {id:?}"
        ))
    }
}

/// A shard number in `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(pub u32);

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// The key space of one deployment: a prefix and a fixed number of shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
    shards: u32,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX, DEFAULT_SHARDS)
    }
}

impl Keyspace {
    /// A key space with this prefix and number of shards (at least 1).
    pub fn new(prefix: &str, shards: u32) -> Self {
        Self {
            prefix: prefix.to_string(),
            shards: shards.max(1),
        }
    }

    /// The key prefix of the deployment.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Every shard, in order.
    pub fn all_shards(&self) -> impl Iterator<Item = Shard> {
        (0..self.shards).map(Shard)
    }

    /// The shard of a customer: CRC-32 (IEEE) of the customer id modulo the shard count,
    /// which the OpenResty plugin can compute with `ngx.crc32_long`.
    pub fn shard_of(&self, customer: &str) -> Shard {
        Shard(crc32fast::hash(customer.as_bytes()) % self.shards)
    }

    fn shard_key(&self, shard: Shard, rest: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, shard, rest)
    }

    /// The event stream of a shard.
    pub fn events(&self, shard: Shard) -> String {
        self.shard_key(shard, "events")
    }

    /// A shard's positions hash: per customer, the stream id of the customer's newest
    /// event, and `#last`, the shard's newest event. Every event-writing script updates it
    /// (the key is the events key with `:positions` appended, so the scripts derive it).
    pub fn positions(&self, shard: Shard) -> String {
        format!("{}:positions", self.events(shard))
    }

    /// A shard's rebuild progress: per customer, the token of the rebuild that restored it,
    /// so a rebuild of a busy shard retries only the customers it has not done yet. The
    /// sidecar deletes it when the rebuild is complete.
    pub fn rebuilt(&self, shard: Shard) -> String {
        self.shard_key(shard, "rebuilt")
    }

    /// A shard's generation marker: set once by the sidecar; its absence means Redis lost
    /// the shard's data and the sidecar must rebuild it from the ledger.
    pub fn generation(&self, shard: Shard) -> String {
        self.shard_key(shard, "generation")
    }

    /// The sorted set of pending holds by deadline (member `customer/hold_id`).
    pub fn deadlines(&self, shard: Shard) -> String {
        self.shard_key(shard, "deadlines")
    }

    /// The sorted set of expiring grants by `expires_at` (member `customer/grant_id`).
    pub fn grant_expiry(&self, shard: Shard) -> String {
        self.shard_key(shard, "grant_expiry")
    }

    /// The string key holding the customer id of an API key, by the hex SHA-256 of the
    /// key's plaintext. It has no shard tag: it is read alone, never inside a script.
    pub fn api_key(&self, sha256_hex: &str) -> String {
        format!("{}:apikey:{}", self.prefix, sha256_hex)
    }

    /// The string key gateways write to check that Redis takes writes (`/readyz`); it
    /// expires 10 s after each write and holds nothing of value.
    pub fn readiness(&self) -> String {
        format!("{}:readyz", self.prefix)
    }

    /// The record of one idempotency key of `customer` (hash: `fp`, `hold`, `request_id`,
    /// `first`, `replays`), in the customer's shard so it goes into the same script call.
    pub fn idempotency_record(&self, customer: &str, record_id: &str) -> String {
        self.shard_key(self.shard_of(customer), &format!("idem:{record_id}"))
    }

    /// The keys of one customer.
    pub fn customer(&self, customer: &str) -> CustomerKeys {
        let shard = self.shard_of(customer);
        CustomerKeys {
            shard,
            grants: self.shard_key(shard, &format!("cust:{customer}:grants")),
            balance: self.shard_key(shard, &format!("cust:{customer}:balance")),
            applied: self.shard_key(shard, &format!("cust:{customer}:applied")),
            deadlines: self.deadlines(shard),
            grant_expiry: self.grant_expiry(shard),
            events: self.events(shard),
            hold_prefix: self.shard_key(shard, "hold:"),
        }
    }
}

/// The keys a script call for one customer may touch, all in the customer's shard.
#[derive(Clone, Debug)]
pub struct CustomerKeys {
    /// The customer's shard.
    pub shard: Shard,
    /// Hash: grant id → packed live grant.
    pub grants: String,
    /// Hash: `<type>:avail|held|debt|odheld` → integer.
    pub balance: String,
    /// Hash: grant id → `type|amount|applied_at` for every grant ever applied (idempotency).
    pub applied: String,
    /// The shard's deadline index.
    pub deadlines: String,
    /// The shard's grant expiry index.
    pub grant_expiry: String,
    /// The shard's event stream.
    pub events: String,
    hold_prefix: String,
}

impl CustomerKeys {
    /// The hash of one hold.
    pub fn hold(&self, hold_id: &str) -> String {
        format!("{}{}", self.hold_prefix, hold_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_customer_shares_the_shard_tag() {
        let ks = Keyspace::default();
        let k = ks.customer("acme");
        let tag = format!("{{{}}}", k.shard);
        for key in [
            &k.grants,
            &k.balance,
            &k.applied,
            &k.deadlines,
            &k.grant_expiry,
            &k.events,
            &k.hold("h1"),
        ] {
            assert!(key.contains(&tag), "{key} lacks {tag}");
        }
    }

    #[test]
    fn shard_is_crc32_modulo_shards() {
        let ks = Keyspace::new("cg", 16);
        // crc32("acme") = 96778814 (IEEE), and 96778814 % 16 = 14. Pinned so that a change
        // of hash, which would move every customer to another shard, fails loudly.
        assert_eq!(ks.shard_of("acme"), Shard(14));
        assert_eq!(ks.customer("acme").grants, "cg:{s14}:cust:acme:grants");
    }

    #[test]
    fn ids_reject_separators() {
        assert!(validate_id("customer", "acme-1.eu@x_y").is_ok());
        for bad in ["", "a:b", "a/b", "a,b", "a|b", "a b", &"x".repeat(129)] {
            assert!(validate_id("customer", bad).is_err(), "{bad:?}");
        }
    }
}
