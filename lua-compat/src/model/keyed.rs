//! The model of a keyed reserve (`reserve` with an idempotency key's record): the mirror of
//! the record logic in `lua/reserve.lua`, step for step, so the seeded comparison can hold
//! the script to it. Pure like the rest of the model: the store time is an argument.

use super::{Model, StoredHold};
use crate::idempotency::{IdempotencyClaim, KeyedReserveOutcome};
use crate::types::{HoldState, ReserveOutcome, ReserveRequest};

/// One idempotency key's record, as the script's hash holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyRecord {
    fingerprint: String,
    hold_id: String,
    request_id: String,
    first_ms: u64,
    replays: u32,
    /// When Redis drops the key (`PEXPIRE` at placement: ttl + retain).
    expires_ms: u64,
}

impl KeyRecord {
    /// Whether Redis still has the key at `now`.
    pub(super) fn live_at(&self, now: u64) -> bool {
        now <= self.expires_ms
    }
}

impl Model {
    /// The key's record at store time `now`, dropping it once expired (as Redis does).
    fn live_record(&mut self, now: u64, customer: &str, record_id: &str) -> Option<KeyRecord> {
        let shard = self.shard_mut(customer);
        let record = shard.records.get(record_id)?;
        if !record.live_at(now) {
            shard.records.remove(record_id);
            return None;
        }
        Some(record.clone())
    }

    /// Places a hold for a request with an idempotency key at store time `now`, as
    /// `reserve` with the key's record does.
    pub fn reserve_keyed(
        &mut self,
        now: u64,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
    ) -> KeyedReserveOutcome {
        if let Some(rec) = self.live_record(now, &req.customer, &claim.record_id) {
            if rec.fingerprint != claim.fingerprint {
                return KeyedReserveOutcome::KeyReused {
                    at_ms: now,
                    first_request_id: rec.request_id,
                };
            }
            if rec.hold_id == req.hold_id {
                let held: Option<StoredHold> = self.live_hold(now, &req.customer, &req.hold_id);
                let Some(held) = held else {
                    return KeyedReserveOutcome::Gone { at_ms: now };
                };
                if held.record.state == HoldState::Posted {
                    return self.count_replay(now, req, claim, rec);
                }
            } else if claim.supersedes.as_deref() != Some(rec.hold_id.as_str()) {
                return KeyedReserveOutcome::Moved {
                    at_ms: now,
                    hold_id: rec.hold_id,
                };
            }
        }
        let outcome = self.reserve(now, req);
        if let ReserveOutcome::Placed { .. } = outcome {
            let record = KeyRecord {
                fingerprint: claim.fingerprint.clone(),
                hold_id: req.hold_id.clone(),
                request_id: req.request_id.clone(),
                first_ms: now,
                replays: 0,
                expires_ms: now + req.ttl_ms + req.retain_ms,
            };
            self.shard_mut(&req.customer)
                .records
                .insert(claim.record_id.clone(), record);
        }
        KeyedReserveOutcome::Reserve(outcome)
    }

    /// A replay of the record's posted request: allowed while under the count and within
    /// the window of the first placement, and counted.
    fn count_replay(
        &mut self,
        now: u64,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
        rec: KeyRecord,
    ) -> KeyedReserveOutcome {
        if rec.replays < claim.replay_max && now < rec.first_ms + claim.replay_window_ms {
            if let Some(stored) = self
                .shard_mut(&req.customer)
                .records
                .get_mut(&claim.record_id)
            {
                stored.replays += 1;
            }
            return KeyedReserveOutcome::Replayed {
                at_ms: now,
                replay: rec.replays + 1,
                first_request_id: rec.request_id,
            };
        }
        KeyedReserveOutcome::ReplaysExhausted {
            at_ms: now,
            first_request_id: rec.request_id,
            replays: rec.replays,
        }
    }

    /// The uncharged replays the key's record has served, while it lives.
    pub fn record_replays(&mut self, now: u64, customer: &str, record_id: &str) -> Option<u32> {
        self.live_record(now, customer, record_id)
            .map(|r| r.replays)
    }

    /// Drops the key's record, as `DEL` of its key does (tests of a lost record).
    pub fn forget_record(&mut self, customer: &str, record_id: &str) {
        self.shard_mut(customer).records.remove(record_id);
    }
}
