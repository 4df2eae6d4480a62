//! Ledger entries: what one row of `ledger_entries` holds, how stream events and
//! adjustments become entries, the canonical encoding the hash chain signs, and the one
//! JSON shape in which the HTTP APIs return a stored entry.
//!
//! Pure code: no I/O and no clock. It must never change the canonical encoding of an
//! existing field layout (that would break every stored chain); a new layout needs a new
//! encoding version.

use std::fmt;
use std::str::FromStr;

use creditgate_protocol::keys::validate_id;
use creditgate_protocol::types::{Draw, MAX_TEXT_LEN};
use creditgate_protocol::{Event, EventBody, MAX_AMOUNT, RequestContext, hold_placement_of};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::LedgerError;

/// `prev_hash` of a customer's first entry: 32 zero bytes, hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Prefix of every adjustment's `event_id` (`adjustment:<id>`).
pub const ADJUSTMENT_EVENT_PREFIX: &str = "adjustment:";

/// Suffix of an overage entry's `event_id` (`hold:<id>:<nonce>:overage`), beside the
/// hold's `hold:<id>:<nonce>:posted`: one overage per placement, so a redelivered event
/// records it once and a hold placed again under an old id records its own.
pub const OVERAGE_EVENT_SUFFIX: &str = ":overage";

/// Version tag that starts the canonical encoding; a new field layout needs a new tag.
const CANONICAL_TAG: &[u8] = b"creditgate-ledger-entry-v1\n";

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// A grant was applied (`grant_added`).
    GrantAdded,
    /// A hold was placed (`hold_placed`).
    HoldPlaced,
    /// A hold was settled (`hold_posted`).
    HoldPosted,
    /// A hold was voided (`hold_voided`).
    HoldVoided,
    /// A hold expired unsettled (`hold_expired`).
    HoldExpired,
    /// The unused rest of a grant expired (`grant_expired`).
    GrantExpired,
    /// A correction written by an admin or the reconciler, never by a script.
    Adjustment,
    /// What a settle could not take (`overage`): the shortfall of a posted hold whose
    /// actual cost was above what the balance and overdraft allowed. Written by the ledger
    /// writer beside the `hold_posted` entry; amount 0 (nothing moved), the unbilled amount
    /// in [`LedgerEntry::overage`].
    Overage,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 8] = [
        Self::GrantAdded,
        Self::HoldPlaced,
        Self::HoldPosted,
        Self::HoldVoided,
        Self::HoldExpired,
        Self::GrantExpired,
        Self::Adjustment,
        Self::Overage,
    ];

    /// The stored name (the event kind's wire name, or `adjustment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantAdded => "grant_added",
            Self::HoldPlaced => "hold_placed",
            Self::HoldPosted => "hold_posted",
            Self::HoldVoided => "hold_voided",
            Self::HoldExpired => "hold_expired",
            Self::GrantExpired => "grant_expired",
            Self::Adjustment => "adjustment",
            Self::Overage => "overage",
        }
    }

    /// True for the kinds that resolve a hold (posted, voided, expired).
    pub fn resolves_hold(self) -> bool {
        matches!(
            self,
            Self::HoldPosted | Self::HoldVoided | Self::HoldExpired
        )
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown ledger entry kind {s:?}"))
    }
}

/// An entry to append: everything but what the ledger assigns (`seq`, `recorded_at_ms`,
/// `prev_hash`, `hash`).
///
/// Amounts are in the credit type's smallest unit; times are ms since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// Stable id of the mutation (`hold:<id>:posted`, `grant:<id>:added`,
    /// `adjustment:<id>`); unique in the ledger.
    pub event_id: String,
    /// What the entry records.
    pub kind: EntryKind,
    /// The customer whose chain the entry joins.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Signed effect on the customer's total (available + held) of this credit type:
    /// `grant_added` +amount; `hold_placed` 0 (credits move from available to held);
    /// `hold_posted` −(posted + breakage); `hold_voided` and `hold_expired` −breakage;
    /// `grant_expired` −amount; `adjustment` its signed amount.
    pub amount: i64,
    /// The grant, for grant kinds and adjustments of one grant.
    pub grant_id: Option<String>,
    /// The hold, for hold kinds.
    pub hold_id: Option<String>,
    /// The request a hold was placed for, for hold kinds.
    pub request_id: Option<String>,
    /// The route that priced the request, for hold kinds.
    pub route: Option<String>,
    /// The feature, for hold kinds.
    pub feature: Option<String>,
    /// The grants touched and by how much: a JSON object of draw lists
    /// (`added`, `draws`, `burns`, `returned`, `breakage`, `expired`, `adjusted`), each
    /// `[{"grant_id": .., "amount": ..}]`.
    pub grants: Value,
    /// Store time of the mutation (Redis `TIME` for events), ms since epoch.
    pub event_at_ms: u64,
    /// Who made it, for grants and adjustments.
    pub actor: Option<String>,
    /// Why, for grants and adjustments.
    pub reason: Option<String>,
    /// Version of the pricing config that priced the request, when known.
    pub pricing_version: Option<String>,
    /// Every field of the source event as strings (the stream entry's field/value pairs),
    /// so nothing is lost; for adjustments, the adjustment's fields.
    pub details: Value,
    /// The shard whose stream carried the event.
    pub shard: u32,
    /// The stream entry id, when read from a stream (delivery metadata: not compared
    /// between duplicates, since a rebuilt Redis restarts stream ids).
    pub stream_id: Option<String>,
}

/// A stored entry: a [`NewEntry`] plus what the ledger assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Global sequence number: unique and increasing along each customer's chain (gaps
    /// are possible; on Postgres, entries of different customers may commit out of order).
    pub seq: i64,
    /// The entry's fields.
    pub entry: NewEntry,
    /// Sidecar clock when the entry was inserted, ms since epoch.
    pub recorded_at_ms: u64,
    /// Hash of the customer's previous entry (hex), or [`GENESIS_HASH`].
    pub prev_hash: String,
    /// `sha256(prev_hash bytes || canonical encoding)`, hex.
    pub hash: String,
}

impl LedgerEntry {
    /// The stream event this entry came from, parsed back from `details`; `None` for
    /// adjustments and overages, which no stream event is.
    pub fn event(&self) -> Option<Result<Event, LedgerError>> {
        if matches!(self.entry.kind, EntryKind::Adjustment | EntryKind::Overage) {
            return None;
        }
        Some(event_from_details(&self.entry.details))
    }

    /// For an `overage` entry, the unbilled amount (the settle's shortfall), in the credit
    /// type's smallest unit; `None` for other kinds.
    pub fn overage(&self) -> Option<Result<u64, LedgerError>> {
        (self.entry.kind == EntryKind::Overage).then(|| overage_of(&self.entry))
    }

    /// The hash this entry should carry given its stored `prev_hash`.
    pub fn computed_hash(&self) -> Result<String, LedgerError> {
        entry_hash(&self.prev_hash, &self.entry, self.recorded_at_ms)
    }
}

/// The one JSON shape of a stored entry, for every API that returns entries: its fields,
/// `kind` by its stored name, the overage's unbilled amount (null for other kinds or when
/// unreadable) and its chain hash. `prev_hash`, `shard` and `stream_id` stay internal.
#[derive(Serialize)]
struct EntryJson<'a> {
    seq: i64,
    event_id: &'a str,
    kind: &'static str,
    customer: &'a str,
    credit_type: &'a str,
    amount: i64,
    grant_id: Option<&'a str>,
    hold_id: Option<&'a str>,
    request_id: Option<&'a str>,
    route: Option<&'a str>,
    feature: Option<&'a str>,
    pricing_version: Option<&'a str>,
    grants: &'a Value,
    event_at_ms: u64,
    recorded_at_ms: u64,
    details: &'a Value,
    overage: Option<u64>,
    hash: &'a str,
}

impl Serialize for LedgerEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = &self.entry;
        EntryJson {
            seq: self.seq,
            event_id: &n.event_id,
            kind: n.kind.as_str(),
            customer: &n.customer,
            credit_type: &n.credit_type,
            amount: n.amount,
            grant_id: n.grant_id.as_deref(),
            hold_id: n.hold_id.as_deref(),
            request_id: n.request_id.as_deref(),
            route: n.route.as_deref(),
            feature: n.feature.as_deref(),
            pricing_version: n.pricing_version.as_deref(),
            grants: &n.grants,
            event_at_ms: n.event_at_ms,
            recorded_at_ms: self.recorded_at_ms,
            details: &n.details,
            overage: self.overage().and_then(Result::ok),
            hash: &self.hash,
        }
        .serialize(serializer)
    }
}

/// A correction, written by an admin or the reconciler. Positive amounts on a grant add
/// to its remaining credits; without a grant, the amount is booked against the credit
/// type's debt (negative raises the debt, positive repays it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adjustment {
    /// Unique id (a UUID, say); the entry's `event_id` is `adjustment:<id>`.
    pub adjustment_id: String,
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// Signed change of the customer's total, in credit units.
    pub amount: i64,
    /// The grant adjusted, if one.
    pub grant_id: Option<String>,
    /// Who made it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When it takes effect, ms since epoch (usually the sidecar clock at creation).
    pub at_ms: u64,
    /// The customer's shard.
    pub shard: u32,
}

fn draws_json(draws: &[Draw]) -> Value {
    Value::Array(
        draws
            .iter()
            .map(|d| json!({"grant_id": d.grant_id, "amount": d.amount}))
            .collect(),
    )
}

fn sum(draws: &[Draw]) -> u64 {
    draws.iter().map(|d| d.amount).sum()
}

fn signed(what: &str, v: u64) -> Result<i64, LedgerError> {
    i64::try_from(v).map_err(|_| LedgerError::InvalidEntry(format!("{what} {v} exceeds i64")))
}

fn check_time(what: &str, v: u64) -> Result<(), LedgerError> {
    if v > i64::MAX as u64 {
        return Err(LedgerError::InvalidEntry(format!(
            "{what} {v} exceeds i64 milliseconds"
        )));
    }
    Ok(())
}

fn check_text(what: &str, v: &str) -> Result<(), LedgerError> {
    if v.len() > MAX_TEXT_LEN || v.contains('\0') {
        return Err(LedgerError::InvalidEntry(format!(
            "{what} must be at most {MAX_TEXT_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

fn check_id(what: &str, v: &str) -> Result<(), LedgerError> {
    validate_id(what, v).map_err(LedgerError::InvalidEntry)
}

impl NewEntry {
    /// The entry for one stream event. `shard` is the stream's shard, `stream_id` the
    /// stream entry id when read from a stream.
    pub fn from_event(
        event: &Event,
        shard: u32,
        stream_id: Option<String>,
    ) -> Result<NewEntry, LedgerError> {
        check_id("customer", &event.customer)?;
        check_id("credit_type", &event.credit_type)?;
        check_time("at", event.at_ms)?;
        let mut entry = NewEntry::carrying(event, shard, stream_id);
        entry.record_body(&event.body)?;
        entry.validate()?;
        Ok(entry)
    }

    /// The fields every event's entry has: ids, time, delivery metadata and every event
    /// field in `details`; the kind-specific fields are left for [`Self::record_body`].
    fn carrying(event: &Event, shard: u32, stream_id: Option<String>) -> NewEntry {
        let details = Value::Object(
            event
                .to_fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect::<Map<String, Value>>(),
        );
        NewEntry {
            event_id: event.event_id.clone(),
            kind: EntryKind::GrantAdded,
            customer: event.customer.clone(),
            credit_type: event.credit_type.clone(),
            amount: 0,
            grant_id: None,
            hold_id: None,
            request_id: None,
            route: None,
            feature: None,
            grants: json!({}),
            event_at_ms: event.at_ms,
            actor: None,
            reason: None,
            pricing_version: None,
            details,
            shard,
            stream_id,
        }
    }

    /// Sets the hold's ids and the request context of a hold kind.
    fn record_hold(&mut self, kind: EntryKind, hold_id: &str, c: &RequestContext) {
        self.kind = kind;
        self.hold_id = Some(hold_id.to_string());
        self.request_id = Some(c.request_id.clone());
        self.route = Some(c.route.clone());
        self.feature = Some(c.feature.clone());
        // Holds placed before versions were recorded carry none.
        self.pricing_version = Some(c.pricing_version.clone()).filter(|v| !v.is_empty());
    }

    /// Sets the kind, the signed amount, the ids and the grants touched of one event body.
    fn record_body(&mut self, body: &EventBody) -> Result<(), LedgerError> {
        match body {
            EventBody::GrantAdded {
                grant_id,
                amount,
                actor,
                reason,
                ..
            } => {
                self.kind = EntryKind::GrantAdded;
                self.amount = signed("amount", *amount)?;
                self.grant_id = Some(grant_id.clone());
                self.actor = Some(actor.clone());
                self.reason = Some(reason.clone());
                self.grants = json!({ "added": [{"grant_id": grant_id, "amount": amount}] });
            }
            EventBody::HoldPlaced {
                hold_id,
                draws,
                context,
                ..
            } => {
                self.record_hold(EntryKind::HoldPlaced, hold_id, context);
                self.grants = json!({ "draws": draws_json(draws) });
            }
            EventBody::HoldPosted {
                hold_id,
                posted,
                burns,
                returned,
                breakage,
                context,
                ..
            } => {
                self.record_hold(EntryKind::HoldPosted, hold_id, context);
                self.amount = -signed("posted", posted + sum(breakage))?;
                self.grants = json!({
                    "burns": draws_json(burns),
                    "returned": draws_json(returned),
                    "breakage": draws_json(breakage),
                });
            }
            EventBody::HoldVoided(r) | EventBody::HoldExpired(r) => {
                let kind = if matches!(body, EventBody::HoldVoided(_)) {
                    EntryKind::HoldVoided
                } else {
                    EntryKind::HoldExpired
                };
                self.record_hold(kind, &r.hold_id, &r.context);
                self.amount = -signed("breakage", sum(&r.breakage))?;
                self.grants = json!({
                    "returned": draws_json(&r.returned),
                    "breakage": draws_json(&r.breakage),
                });
            }
            EventBody::GrantExpired {
                grant_id, amount, ..
            } => {
                self.kind = EntryKind::GrantExpired;
                self.amount = -signed("amount", *amount)?;
                self.grant_id = Some(grant_id.clone());
                self.grants = json!({ "expired": [{"grant_id": grant_id, "amount": amount}] });
            }
        }
        Ok(())
    }

    /// The entries for one stream event: its own ([`NewEntry::from_event`]) and, for a
    /// posted hold with a shortfall, the [`EntryKind::Overage`] entry that records it.
    pub fn from_event_with_overage(
        event: &Event,
        shard: u32,
        stream_id: Option<String>,
    ) -> Result<Vec<NewEntry>, LedgerError> {
        let entry = NewEntry::from_event(event, shard, stream_id)?;
        let overage = match &event.body {
            EventBody::HoldPosted {
                hold_id,
                requested,
                posted,
                shortfall,
                ..
            } if *shortfall > 0 => {
                let mut overage = entry.clone();
                overage.event_id = match hold_placement_of(&event.event_id) {
                    Some(placement) => format!("{placement}{OVERAGE_EVENT_SUFFIX}"),
                    None => format!("hold:{hold_id}{OVERAGE_EVENT_SUFFIX}"),
                };
                overage.kind = EntryKind::Overage;
                overage.amount = 0;
                overage.grants = json!({});
                let mut details = Map::new();
                details.insert("v".into(), json!("1"));
                details.insert("event_id".into(), json!(overage.event_id));
                details.insert("kind".into(), json!("overage"));
                details.insert("source_event_id".into(), json!(event.event_id));
                details.insert("at".into(), json!(event.at_ms.to_string()));
                details.insert("customer".into(), json!(event.customer));
                details.insert("credit_type".into(), json!(event.credit_type));
                details.insert("hold_id".into(), json!(hold_id));
                details.insert("requested".into(), json!(requested.to_string()));
                details.insert("posted".into(), json!(posted.to_string()));
                details.insert("shortfall".into(), json!(shortfall.to_string()));
                overage.details = Value::Object(details);
                overage.validate()?;
                Some(overage)
            }
            _ => None,
        };
        Ok(std::iter::once(entry).chain(overage).collect())
    }

    /// The entry for an adjustment (`event_id` `adjustment:<adjustment_id>`).
    pub fn adjustment(adjustment: &Adjustment) -> Result<NewEntry, LedgerError> {
        let a = adjustment;
        check_id("adjustment_id", &a.adjustment_id)?;
        if a.amount.unsigned_abs() > MAX_AMOUNT {
            return Err(LedgerError::InvalidEntry(format!(
                "adjustment amount {} exceeds 2^53-1",
                a.amount
            )));
        }
        check_time("at_ms", a.at_ms)?;
        let event_id = format!("{ADJUSTMENT_EVENT_PREFIX}{}", a.adjustment_id);
        let mut details = Map::new();
        details.insert("v".into(), json!("1"));
        details.insert("event_id".into(), json!(event_id));
        details.insert("kind".into(), json!("adjustment"));
        details.insert("at".into(), json!(a.at_ms.to_string()));
        details.insert("customer".into(), json!(a.customer));
        details.insert("credit_type".into(), json!(a.credit_type));
        details.insert("amount".into(), json!(a.amount.to_string()));
        if let Some(g) = &a.grant_id {
            details.insert("grant_id".into(), json!(g));
        }
        details.insert("actor".into(), json!(a.actor));
        details.insert("reason".into(), json!(a.reason));
        let grants = match &a.grant_id {
            Some(g) => json!({ "adjusted": [{"grant_id": g, "amount": a.amount}] }),
            None => json!({}),
        };
        let entry = NewEntry {
            event_id,
            kind: EntryKind::Adjustment,
            customer: a.customer.clone(),
            credit_type: a.credit_type.clone(),
            amount: a.amount,
            grant_id: a.grant_id.clone(),
            hold_id: None,
            request_id: None,
            route: None,
            feature: None,
            grants,
            event_at_ms: a.at_ms,
            actor: Some(a.actor.clone()),
            reason: Some(a.reason.clone()),
            pricing_version: None,
            details: Value::Object(details),
            shard: a.shard,
            stream_id: None,
        };
        entry.validate()?;
        Ok(entry)
    }

    /// Checks what every backend relies on: ids in the protocol's alphabet, texts within
    /// bounds and without NUL (Postgres refuses it), times that fit in `BIGINT`.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if self.event_id.is_empty() || self.event_id.len() > 3 * 128 {
            return Err(LedgerError::InvalidEntry(format!(
                "event_id {:?} must be 1-384 bytes",
                self.event_id
            )));
        }
        check_text("event_id", &self.event_id)?;
        check_id("customer", &self.customer)?;
        check_id("credit_type", &self.credit_type)?;
        check_time("event_at_ms", self.event_at_ms)?;
        for (what, v) in [("grant_id", &self.grant_id), ("hold_id", &self.hold_id)] {
            if let Some(v) = v {
                check_id(what, v)?;
            }
        }
        for (what, v) in [
            ("request_id", &self.request_id),
            ("route", &self.route),
            ("feature", &self.feature),
            ("actor", &self.actor),
            ("reason", &self.reason),
            ("pricing_version", &self.pricing_version),
            ("stream_id", &self.stream_id),
        ] {
            if let Some(v) = v {
                check_text(what, v)?;
            }
        }
        if !self.grants.is_object() || !self.details.is_object() {
            return Err(LedgerError::InvalidEntry(
                "grants and details must be JSON objects".into(),
            ));
        }
        Ok(())
    }

    /// True when `other` records the same mutation: every field equal except the
    /// delivery metadata (`shard`, `stream_id`). JSON fields compare by value.
    pub fn same_mutation(&self, other: &NewEntry) -> bool {
        self.event_id == other.event_id
            && self.kind == other.kind
            && self.customer == other.customer
            && self.credit_type == other.credit_type
            && self.amount == other.amount
            && self.grant_id == other.grant_id
            && self.hold_id == other.hold_id
            && self.request_id == other.request_id
            && self.route == other.route
            && self.feature == other.feature
            && canonical_json(&self.grants) == canonical_json(&other.grants)
            && self.event_at_ms == other.event_at_ms
            && self.actor == other.actor
            && self.reason == other.reason
            && self.pricing_version == other.pricing_version
            && canonical_json(&self.details) == canonical_json(&other.details)
    }
}

/// The shortfall recorded in an overage entry's `details`.
fn overage_of(entry: &NewEntry) -> Result<u64, LedgerError> {
    entry
        .details
        .get("shortfall")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            LedgerError::Corrupt(format!(
                "overage entry {} has no numeric details.shortfall",
                entry.event_id
            ))
        })
}

/// Parses an event back from the `details` of an entry.
pub fn event_from_details(details: &Value) -> Result<Event, LedgerError> {
    let Some(map) = details.as_object() else {
        return Err(LedgerError::Corrupt("details is not a JSON object".into()));
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let Some(v) = v.as_str() else {
            return Err(LedgerError::Corrupt(format!(
                "details field {k:?} is not a string"
            )));
        };
        pairs.push((k.as_str(), v));
    }
    Event::from_fields(pairs).map_err(|e| LedgerError::Corrupt(format!("details: {e}")))
}

/// JSON with object keys sorted byte-wise and no whitespace: the same text whatever the
/// map's insertion order or the database's storage form (Postgres `jsonb` reorders keys).
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes `value` canonically into `out`. Keys and leaves go through serde_json's own
/// serializer straight into the buffer (the text `Value`'s `Display` gives, without a
/// `String` per key and per leaf: this runs for every entry the writer appends).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_leaf(k, out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => write_leaf(other, out),
    }
}

/// A string, number, boolean or null as compact JSON.
fn write_leaf<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Appends one field: its name, then `N` for null or `S`, the byte length as 8 bytes
/// big-endian and the bytes. Length prefixes make the encoding unambiguous.
fn field(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    out.extend_from_slice(name.as_bytes());
    match value {
        None => out.push(b'N'),
        Some(v) => {
            out.push(b'S');
            out.extend_from_slice(&(v.len() as u64).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }
}

/// The canonical encoding of an entry's immutable fields (everything stored but `seq`,
/// `prev_hash` and `hash`): what the chain hash signs.
pub fn canonical_encoding(entry: &NewEntry, recorded_at_ms: u64) -> Vec<u8> {
    let json = CanonicalColumns::of(entry);
    encoding_with(entry, recorded_at_ms, &json)
}

/// An entry's JSON columns as canonical text: computed once per appended entry, both
/// hashed and stored.
pub(crate) struct CanonicalColumns {
    /// `canonical_json(&entry.grants)`.
    pub(crate) grants: String,
    /// `canonical_json(&entry.details)`.
    pub(crate) details: String,
}

impl CanonicalColumns {
    /// The canonical JSON columns of `entry`.
    pub(crate) fn of(entry: &NewEntry) -> Self {
        Self {
            grants: canonical_json(&entry.grants),
            details: canonical_json(&entry.details),
        }
    }
}

/// [`canonical_encoding`] with the JSON columns already in canonical text.
fn encoding_with(entry: &NewEntry, recorded_at_ms: u64, json: &CanonicalColumns) -> Vec<u8> {
    let e = entry;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(CANONICAL_TAG);
    field(&mut out, "event_id", Some(&e.event_id));
    field(&mut out, "kind", Some(e.kind.as_str()));
    field(&mut out, "customer", Some(&e.customer));
    field(&mut out, "credit_type", Some(&e.credit_type));
    field(&mut out, "amount", Some(&e.amount.to_string()));
    field(&mut out, "grant_id", e.grant_id.as_deref());
    field(&mut out, "hold_id", e.hold_id.as_deref());
    field(&mut out, "request_id", e.request_id.as_deref());
    field(&mut out, "route", e.route.as_deref());
    field(&mut out, "feature", e.feature.as_deref());
    field(&mut out, "grants", Some(&json.grants));
    field(&mut out, "event_at_ms", Some(&e.event_at_ms.to_string()));
    field(
        &mut out,
        "recorded_at_ms",
        Some(&recorded_at_ms.to_string()),
    );
    field(&mut out, "actor", e.actor.as_deref());
    field(&mut out, "reason", e.reason.as_deref());
    field(&mut out, "pricing_version", e.pricing_version.as_deref());
    field(&mut out, "details", Some(&json.details));
    field(&mut out, "shard", Some(&e.shard.to_string()));
    field(&mut out, "stream_id", e.stream_id.as_deref());
    out
}

/// `sha256(prev_hash bytes || canonical encoding)`, hex. `prev_hash` must be 64 hex digits.
pub fn entry_hash(
    prev_hash: &str,
    entry: &NewEntry,
    recorded_at_ms: u64,
) -> Result<String, LedgerError> {
    entry_hash_with(
        prev_hash,
        entry,
        recorded_at_ms,
        &CanonicalColumns::of(entry),
    )
}

/// [`entry_hash`] with the entry's JSON columns already in canonical text.
pub(crate) fn entry_hash_with(
    prev_hash: &str,
    entry: &NewEntry,
    recorded_at_ms: u64,
    json: &CanonicalColumns,
) -> Result<String, LedgerError> {
    let prev = hex::decode(prev_hash)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            LedgerError::Corrupt(format!("prev_hash {prev_hash:?} is not 32 bytes of hex"))
        })?;
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(encoding_with(entry, recorded_at_ms, json));
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted() -> Event {
        Event {
            event_id: "hold:h1:posted".into(),
            at_ms: 1_700_000_000_000,
            customer: "acme".into(),
            credit_type: "api".into(),
            body: EventBody::HoldPosted {
                hold_id: "h1".into(),
                held: 10,
                requested: 12,
                posted: 12,
                burns: vec![Draw {
                    grant_id: "g1".into(),
                    amount: 12,
                }],
                overdraft: 0,
                returned: vec![],
                returned_overdraft: 0,
                breakage: vec![Draw {
                    grant_id: "g0".into(),
                    amount: 3,
                }],
                shortfall: 0,
                context: RequestContext {
                    request_id: "r1".into(),
                    route: "chat".into(),
                    feature: "chat".into(),
                    pricing_version: "7-3f2a9c1b04de".into(),
                },
                late: false,
            },
        }
    }

    #[test]
    fn a_late_burn_is_a_posted_entry_flagged_in_details() {
        let mut e = posted();
        if let EventBody::HoldPosted {
            held,
            breakage,
            late,
            ..
        } = &mut e.body
        {
            (*held, *breakage, *late) = (0, vec![], true);
        }
        let entry = NewEntry::from_event(&e, 3, None).unwrap();
        assert_eq!(entry.kind, EntryKind::HoldPosted);
        assert_eq!(entry.amount, -12);
        assert_eq!(entry.details["late"], "1");
        assert_eq!(event_from_details(&entry.details).unwrap(), e);
        // Every other burn reads as before: no `late` field at all.
        let normal = NewEntry::from_event(&posted(), 3, None).unwrap();
        assert!(normal.details.get("late").is_none());
    }

    #[test]
    fn an_event_round_trips_through_details() {
        let e = posted();
        let entry = NewEntry::from_event(&e, 3, Some("1-0".into())).unwrap();
        assert_eq!(entry.amount, -15);
        assert_eq!(entry.pricing_version.as_deref(), Some("7-3f2a9c1b04de"));
        assert_eq!(entry.hold_id.as_deref(), Some("h1"));
        assert_eq!(event_from_details(&entry.details).unwrap(), e);
    }

    #[test]
    fn a_shortfall_adds_an_overage_entry_and_nothing_else_does() {
        let e = posted();
        assert_eq!(
            NewEntry::from_event_with_overage(&e, 3, None)
                .unwrap()
                .len(),
            1
        );
        let mut short = e.clone();
        if let EventBody::HoldPosted { shortfall, .. } = &mut short.body {
            *shortfall = 7;
        }
        let entries = NewEntry::from_event_with_overage(&short, 3, Some("1-0".into())).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            NewEntry::from_event(&short, 3, Some("1-0".into())).unwrap()
        );
        let overage = &entries[1];
        assert_eq!(overage.event_id, "hold:h1:overage");
        assert_eq!(overage.kind, EntryKind::Overage);
        assert_eq!(overage.amount, 0, "nothing moved");
        assert_eq!(overage.request_id.as_deref(), Some("r1"));
        assert_eq!(overage.hold_id.as_deref(), Some("h1"));
        assert_eq!(overage_of(overage).unwrap(), 7);
        assert_eq!(overage.details["source_event_id"], "hold:h1:posted");
    }

    #[test]
    fn a_stored_entry_has_one_json_shape() {
        let entry = LedgerEntry {
            seq: 9,
            entry: NewEntry::from_event(&posted(), 3, Some("1-0".into())).unwrap(),
            recorded_at_ms: 5,
            prev_hash: GENESIS_HASH.into(),
            hash: "ab".into(),
        };
        let v = serde_json::to_value(&entry).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "seq",
            "event_id",
            "kind",
            "customer",
            "credit_type",
            "amount",
            "grant_id",
            "hold_id",
            "request_id",
            "route",
            "feature",
            "pricing_version",
            "grants",
            "event_at_ms",
            "recorded_at_ms",
            "details",
            "overage",
            "hash",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["kind"], "hold_posted");
        assert_eq!(v["amount"], -15);
        assert_eq!(v["overage"], Value::Null);
        assert_eq!(v["grants"]["burns"][0]["grant_id"], "g1");
        assert_eq!(v["details"]["hold_id"], "h1");
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":[{"y":2,"x":"s"}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[{"x":"s","y":2}],"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":[{"x":"s","y":2}],"b":1}"#);
    }

    /// Stored hashes sign this text: it must stay byte for byte what `Value`'s `Display`
    /// gives for keys and leaves (escapes, non-ASCII, numbers, null, booleans).
    #[test]
    fn canonical_json_text_is_unchanged() {
        let v = json!({"q\"\\\n\t\u{1}é": [null, true, -1, 1.5, "x\u{7f}\u{2028}"], "a": {}});
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let old = format!(
            "{{{}:{{}},{}:{}}}",
            Value::String(keys[0].clone()),
            Value::String(keys[1].clone()),
            v[&keys[1]]
        );
        assert_eq!(canonical_json(&v), old);
    }

    #[test]
    fn the_hash_covers_every_field() {
        let entry = NewEntry::from_event(&posted(), 3, None).unwrap();
        let h = entry_hash(GENESIS_HASH, &entry, 5).unwrap();
        let mut other = entry.clone();
        other.feature = None;
        assert_ne!(entry_hash(GENESIS_HASH, &other, 5).unwrap(), h);
        assert_ne!(entry_hash(GENESIS_HASH, &entry, 6).unwrap(), h);
        assert!(entry.same_mutation(&entry.clone()));
        assert!(!entry.same_mutation(&other));
    }
}
