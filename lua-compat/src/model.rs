//! The in-memory reference model: the executable specification of the Lua scripts.
//!
//! [`Model`] is pure: every operation takes the store time as an argument and does no I/O,
//! so tests can replay a Redis run step by step with Redis's own clock and compare.
//! [`MemoryStore`] wraps it behind [`CreditStore`] with the system clock; it is the
//! gateway's embedded store when no Redis is configured. It must mirror the scripts
//! exactly, including which keys exist after each step, because the randomized comparison
//! test checks balances, holds, indexes and events after every call.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::event::{Event, EventBody, Release, RequestContext, hold_event_id};
use crate::idempotency::{IdempotencyClaim, KeyedReserveOutcome};
use crate::invariants::{
    InvariantViolation, TypeTotals, check_balance, check_event, check_expire_hold, check_extend,
    check_grant, check_grant_expiry, check_hold_record, check_reserve, check_settle,
    check_type_totals, check_void,
};
use crate::keys::{Keyspace, Shard};
use crate::store::{CreditStore, DueEntry, StoreError};
use crate::types::{
    Balance, Draw, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome, GrantRef,
    GrantRequest, GrantState, HoldRecord, HoldRef, HoldState, PlacedHold, ReserveOutcome,
    ReserveRequest, ResolveOutcome, SettleRequest, TypeBalance,
};

mod keyed;

#[derive(Clone, Debug)]
struct Grant {
    credit_type: String,
    remaining: u64,
    held: u64,
    priority: u32,
    /// 0 for never, as in the packed Redis form.
    expires_at: u64,
    cost_basis: u64,
    created: u64,
    expired: bool,
}

impl Grant {
    fn usable(&self, now: u64) -> bool {
        !self.expired && (self.expires_at == 0 || self.expires_at > now)
    }
}

/// Burn order: lower priority, soonest expiry (never last), free before paid, oldest, id.
fn burn_order(a: (&str, &Grant), b: (&str, &Grant)) -> Ordering {
    let expiry = |g: &Grant| {
        if g.expires_at == 0 {
            u64::MAX
        } else {
            g.expires_at
        }
    };
    a.1.priority
        .cmp(&b.1.priority)
        .then(expiry(a.1).cmp(&expiry(b.1)))
        .then((a.1.cost_basis != 0).cmp(&(b.1.cost_basis != 0)))
        .then(a.1.created.cmp(&b.1.created))
        .then(a.0.cmp(b.0))
}

#[derive(Clone, Debug, Default)]
struct Counters {
    /// Σ remaining of grants in the hash − debt − odheld (the "book" figure).
    avail: i64,
    held: i64,
    debt: i64,
    /// Overdraft part of pending holds.
    odheld: i64,
}

#[derive(Clone, Debug, Default)]
struct Customer {
    grants: BTreeMap<String, Grant>,
    counters: BTreeMap<String, Counters>,
    /// grant id → (credit type, amount) of every grant ever applied.
    applied: HashMap<String, (String, u64)>,
}

impl Customer {
    /// Mirrors the scripts' `balance_add`: a type's counters exist once any changed.
    fn add(&mut self, credit_type: &str, field: fn(&mut Counters) -> &mut i64, delta: i64) {
        if delta != 0 {
            *field(self.counters.entry(credit_type.to_string()).or_default()) += delta;
        }
    }

    fn counter(&self, credit_type: &str, field: fn(&Counters) -> i64) -> i64 {
        self.counters.get(credit_type).map(field).unwrap_or(0)
    }

    /// Usable grant ids of a type in burn order, and their total remaining.
    fn usable_grants(&self, credit_type: &str, now: u64) -> (Vec<String>, u64) {
        let mut list: Vec<(&str, &Grant)> = self
            .grants
            .iter()
            .filter(|(_, g)| g.credit_type == credit_type && g.usable(now) && g.remaining > 0)
            .map(|(id, g)| (id.as_str(), g))
            .collect();
        list.sort_by(|a, b| burn_order(*a, *b));
        let total = list.iter().map(|(_, g)| g.remaining).sum();
        (
            list.into_iter().map(|(id, _)| id.to_string()).collect(),
            total,
        )
    }

    fn available(&self, credit_type: &str, usable_total: u64) -> i64 {
        usable_total as i64
            - self.counter(credit_type, |c| c.debt)
            - self.counter(credit_type, |c| c.odheld)
    }

    /// Checks every credit type's counters against what its grants hold and have left.
    fn check_totals(&self, customer: &str) -> Result<(), InvariantViolation> {
        let mut types: Vec<&String> = self.counters.keys().collect();
        types.extend(self.grants.values().map(|g| &g.credit_type));
        types.sort();
        types.dedup();
        for t in types {
            let (grants_held, grants_remaining) = self
                .grants
                .values()
                .filter(|g| &g.credit_type == t)
                .fold((0u64, 0u64), |(h, r), g| {
                    (h.saturating_add(g.held), r.saturating_add(g.remaining))
                });
            let totals = TypeTotals {
                held: self.counter(t, |c| c.held),
                debt: self.counter(t, |c| c.debt),
                overdraft_held: self.counter(t, |c| c.odheld),
                book_available: self.counter(t, |c| c.avail),
                grants_held,
                grants_remaining,
            };
            check_type_totals(customer, t, &totals)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct StoredHold {
    record: HoldRecord,
    retain_ms: u64,
    /// `ReserveRequest::occurred_at_ms`: the `at` of the hold's placed and posted events.
    occurred_ms: Option<u64>,
}

/// A sorted-set index: member → score, ordered like Redis (score, then member bytes).
#[derive(Clone, Debug, Default)]
struct Index(HashMap<String, u64>);

impl Index {
    fn due(&self, now: u64, limit: usize) -> Vec<DueEntry> {
        let mut due: Vec<(&String, &u64)> = self.0.iter().filter(|(_, s)| **s <= now).collect();
        due.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
        due.into_iter()
            .take(limit)
            .filter_map(|(m, s)| {
                let (customer, id) = m.split_once('/')?;
                Some(DueEntry {
                    customer: customer.to_string(),
                    id: id.to_string(),
                    due_ms: *s,
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
struct ShardState {
    holds: HashMap<String, StoredHold>,
    deadlines: Index,
    grant_expiry: Index,
    events: Vec<Event>,
    /// Resolved holds in resolution order (resolution time, hold id), so pruning finds the
    /// old ones without scanning every hold.
    resolved: std::collections::VecDeque<(u64, String)>,
    /// Idempotency keys' records by record id (see `keyed`).
    records: HashMap<String, keyed::KeyRecord>,
}

/// The reference model of the whole store: every shard's holds, indexes and events and
/// every customer's grants and balances.
#[derive(Clone, Debug, Default)]
pub struct Model {
    keyspace: Keyspace,
    customers: HashMap<String, Customer>,
    shards: HashMap<Shard, ShardState>,
}

fn member(customer: &str, id: &str) -> String {
    format!("{customer}/{id}")
}

fn add_draw(draws: &mut Vec<Draw>, grant_id: &str, amount: u64) {
    if amount == 0 {
        return;
    }
    match draws.iter_mut().find(|d| d.grant_id == grant_id) {
        Some(d) => d.amount += amount,
        None => draws.push(Draw {
            grant_id: grant_id.to_string(),
            amount,
        }),
    }
}

/// What releasing a hold did.
struct Released {
    burns: Vec<Draw>,
    overdraft_posted: u64,
    returned: Vec<Draw>,
    returned_overdraft: u64,
    breakage: Vec<Draw>,
    returned_total: u64,
}

impl Model {
    /// An empty store with this key space.
    pub fn new(keyspace: Keyspace) -> Self {
        Self {
            keyspace,
            ..Self::default()
        }
    }

    /// The key space (shard mapping) the model uses.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The events of one shard's stream, oldest first.
    pub fn events(&self, shard: Shard) -> &[Event] {
        self.shards
            .get(&shard)
            .map(|s| s.events.as_slice())
            .unwrap_or(&[])
    }

    fn shard_mut(&mut self, customer: &str) -> &mut ShardState {
        let shard = self.keyspace.shard_of(customer);
        self.shards.entry(shard).or_default()
    }

    fn emit(&mut self, event: Event) {
        self.shard_mut(&event.customer.clone()).events.push(event);
    }

    /// Takes up to `want` from the grants in order, as the scripts' `take`.
    fn take(
        &mut self,
        customer: &str,
        order: &[String],
        want: u64,
        hold: bool,
    ) -> (Vec<Draw>, u64) {
        let mut draws = Vec::new();
        let mut taken = 0;
        let mut gone = Vec::new();
        let c = self.customers.entry(customer.to_string()).or_default();
        for id in order {
            if taken >= want {
                break;
            }
            let g = c.grants.get_mut(id).expect("usable grant exists");
            let d = g.remaining.min(want - taken);
            if d > 0 {
                g.remaining -= d;
                if hold {
                    g.held += d;
                }
                taken += d;
                draws.push(Draw {
                    grant_id: id.clone(),
                    amount: d,
                });
                if g.remaining == 0 && g.held == 0 {
                    c.grants.remove(id);
                    gone.push(member(customer, id));
                }
            }
        }
        let shard = self.shard_mut(customer);
        for m in gone {
            shard.grant_expiry.0.remove(&m);
        }
        (draws, taken)
    }

    /// Adds a grant at store time `now`.
    pub fn grant(&mut self, now: u64, req: &GrantRequest) -> GrantOutcome {
        let c = self.customers.entry(req.customer.clone()).or_default();
        if let Some((first_type, first_amount)) = c.applied.get(&req.grant_id) {
            if *first_type == req.credit_type && *first_amount == req.amount {
                return GrantOutcome::Duplicate { at_ms: now };
            }
            return GrantOutcome::Conflict {
                at_ms: now,
                first_credit_type: first_type.clone(),
                first_amount: *first_amount,
            };
        }
        let expires_at = req.expires_at_ms.unwrap_or(0);
        if expires_at != 0 && expires_at <= now {
            return GrantOutcome::AlreadyExpired { at_ms: now };
        }
        let debt = c.counter(&req.credit_type, |x| x.debt) as u64;
        let repaid = debt.min(req.amount);
        let remaining = req.amount - repaid;
        if remaining > 0 {
            c.grants.insert(
                req.grant_id.clone(),
                Grant {
                    credit_type: req.credit_type.clone(),
                    remaining,
                    held: 0,
                    priority: req.priority,
                    expires_at,
                    cost_basis: req.cost_basis,
                    created: now,
                    expired: false,
                },
            );
        }
        c.applied
            .insert(req.grant_id.clone(), (req.credit_type.clone(), req.amount));
        c.add(&req.credit_type, |x| &mut x.debt, -(repaid as i64));
        c.add(&req.credit_type, |x| &mut x.avail, req.amount as i64);
        if remaining > 0 && expires_at != 0 {
            let m = member(&req.customer, &req.grant_id);
            self.shard_mut(&req.customer)
                .grant_expiry
                .0
                .insert(m, expires_at);
        }
        self.emit(Event {
            event_id: format!("grant:{}:added", req.grant_id),
            at_ms: now,
            customer: req.customer.clone(),
            credit_type: req.credit_type.clone(),
            body: EventBody::GrantAdded {
                grant_id: req.grant_id.clone(),
                amount: req.amount,
                debt_repaid: repaid,
                priority: req.priority,
                expires_at_ms: req.expires_at_ms,
                cost_basis: req.cost_basis,
                source: req.source,
                actor: req.actor.clone(),
                reason: req.reason.clone(),
            },
        });
        GrantOutcome::Granted {
            at_ms: now,
            debt_repaid: repaid,
        }
    }

    /// The hold's stored record, dropping it once its retention has passed (as Redis
    /// `PEXPIRE` does).
    fn live_hold(&mut self, now: u64, customer: &str, hold_id: &str) -> Option<StoredHold> {
        let shard = self.shard_mut(customer);
        let stored = shard.holds.get(hold_id)?;
        if let Some(resolved) = stored.record.resolved_ms
            && now > resolved + stored.retain_ms
        {
            shard.holds.remove(hold_id);
            return None;
        }
        Some(stored.clone())
    }

    /// Places a hold at store time `now`.
    pub fn reserve(&mut self, now: u64, req: &ReserveRequest) -> ReserveOutcome {
        if let Some(first) = self.live_hold(now, &req.customer, &req.hold_id) {
            return Self::replay(now, req, first.record);
        }
        let c = self.customers.entry(req.customer.clone()).or_default();
        let (order, total) = c.usable_grants(&req.credit_type, now);
        let avail = c.available(&req.credit_type, total);
        let amount = req.amount as i64;
        let over_limit = avail + (req.overdraft_limit as i64) < amount;
        if over_limit && !req.force {
            return ReserveOutcome::Insufficient {
                at_ms: now,
                available: avail,
            };
        }
        let (draws, taken) = self.take(&req.customer, &order, req.amount, true);
        let overdraft = req.amount - taken;
        let c = self
            .customers
            .get_mut(&req.customer)
            .expect("customer exists");
        c.add(&req.credit_type, |x| &mut x.avail, -amount);
        c.add(&req.credit_type, |x| &mut x.held, amount);
        c.add(&req.credit_type, |x| &mut x.odheld, overdraft as i64);
        let hold = PlacedHold {
            deadline_ms: now + req.ttl_ms,
            draws,
            overdraft,
            over_limit,
        };
        self.record_placed(now, req, &hold);
        ReserveOutcome::Placed {
            at_ms: now,
            hold,
            available_after: avail - amount,
        }
    }

    /// The outcome of a reserve whose hold id exists: the first outcome, or a conflict when
    /// the existing hold is another customer's, type's or amount's.
    fn replay(now: u64, req: &ReserveRequest, first: HoldRecord) -> ReserveOutcome {
        if first.customer != req.customer
            || first.credit_type != req.credit_type
            || first.amount != req.amount
        {
            return ReserveOutcome::Conflict {
                at_ms: now,
                first_credit_type: first.credit_type,
                first_amount: first.amount,
            };
        }
        ReserveOutcome::Replay {
            at_ms: now,
            state: first.state,
            hold: PlacedHold {
                deadline_ms: first.deadline_ms,
                draws: first.draws,
                overdraft: first.overdraft,
                over_limit: first.over_limit,
            },
        }
    }

    /// Stores a placed hold's record, indexes its deadline and emits `hold_placed`.
    fn record_placed(&mut self, now: u64, req: &ReserveRequest, hold: &PlacedHold) {
        let context = RequestContext {
            request_id: req.request_id.clone(),
            route: req.route.clone(),
            feature: req.feature.clone(),
            pricing_version: req.pricing_version.clone(),
        };
        let record = HoldRecord {
            state: HoldState::Pending,
            customer: req.customer.clone(),
            credit_type: req.credit_type.clone(),
            amount: req.amount,
            deadline_ms: hold.deadline_ms,
            created_ms: now,
            draws: hold.draws.clone(),
            overdraft: hold.overdraft,
            over_limit: hold.over_limit,
            request_id: req.request_id.clone(),
            route: req.route.clone(),
            feature: req.feature.clone(),
            pricing_version: req.pricing_version.clone(),
            posted: 0,
            resolved_ms: None,
        };
        let shard = self.shard_mut(&req.customer);
        shard.holds.insert(
            req.hold_id.clone(),
            StoredHold {
                record,
                retain_ms: req.retain_ms,
                occurred_ms: req.occurred_at_ms,
            },
        );
        shard
            .deadlines
            .0
            .insert(member(&req.customer, &req.hold_id), hold.deadline_ms);
        self.emit(Event {
            event_id: hold_event_id(&req.hold_id, Some(now), "placed"),
            at_ms: req.occurred_at_ms.unwrap_or(now),
            customer: req.customer.clone(),
            credit_type: req.credit_type.clone(),
            body: EventBody::HoldPlaced {
                hold_id: req.hold_id.clone(),
                amount: req.amount,
                draws: hold.draws.clone(),
                overdraft: hold.overdraft,
                deadline_ms: hold.deadline_ms,
                over_limit: hold.over_limit,
                context,
            },
        });
    }

    /// Posts `post` of a pending hold and returns the rest, as the scripts' `release`.
    fn release(&mut self, customer: &str, h: &HoldRecord, post: u64) -> Released {
        let mut left = post;
        let mut out = Released {
            burns: Vec::new(),
            overdraft_posted: 0,
            returned: Vec::new(),
            returned_overdraft: 0,
            breakage: Vec::new(),
            returned_total: 0,
        };
        let mut gone = Vec::new();
        let c = self.customers.entry(customer.to_string()).or_default();
        for d in &h.draws {
            let burn = d.amount.min(left);
            left -= burn;
            add_draw(&mut out.burns, &d.grant_id, burn);
            let back = d.amount - burn;
            match c.grants.get_mut(&d.grant_id) {
                Some(g) => {
                    g.held -= d.amount;
                    if g.expired {
                        add_draw(&mut out.breakage, &d.grant_id, back);
                    } else {
                        g.remaining += back;
                        add_draw(&mut out.returned, &d.grant_id, back);
                        out.returned_total += back;
                    }
                    if g.remaining == 0 && g.held == 0 {
                        c.grants.remove(&d.grant_id);
                        gone.push(member(customer, &d.grant_id));
                    }
                }
                None => add_draw(&mut out.breakage, &d.grant_id, back),
            }
        }
        let od_burn = h.overdraft.min(left);
        let od_back = h.overdraft - od_burn;
        let t = &h.credit_type;
        c.add(t, |x| &mut x.odheld, -(h.overdraft as i64));
        c.add(t, |x| &mut x.debt, od_burn as i64);
        c.add(t, |x| &mut x.held, -(h.amount as i64));
        c.add(t, |x| &mut x.avail, (out.returned_total + od_back) as i64);
        out.overdraft_posted = od_burn;
        out.returned_overdraft = od_back;
        out.returned_total += od_back;
        let shard = self.shard_mut(customer);
        for m in gone {
            shard.grant_expiry.0.remove(&m);
        }
        out
    }

    fn finish(&mut self, now: u64, customer: &str, hold_id: &str, state: HoldState, posted: u64) {
        let shard = self.shard_mut(customer);
        if let Some(stored) = shard.holds.get_mut(hold_id) {
            stored.record.state = state;
            stored.record.posted = posted;
            stored.record.resolved_ms = Some(now);
            shard.resolved.push_back((now, hold_id.to_string()));
        }
        shard.deadlines.0.remove(&member(customer, hold_id));
    }

    /// The typed outcome for a hold that is no longer pending.
    fn already(now: u64, h: &HoldRecord) -> ResolveOutcome {
        match h.state {
            HoldState::Posted => ResolveOutcome::AlreadyPosted {
                at_ms: now,
                posted: h.posted,
            },
            HoldState::Voided => ResolveOutcome::AlreadyVoided { at_ms: now },
            _ => ResolveOutcome::AlreadyExpired { at_ms: now },
        }
    }

    fn pending_hold(&mut self, now: u64, hold: &HoldRef) -> Result<HoldRecord, ResolveOutcome> {
        match self.live_hold(now, &hold.customer, &hold.hold_id) {
            Some(s) if s.record.customer == hold.customer => {
                if s.record.state == HoldState::Pending {
                    Ok(s.record)
                } else {
                    Err(Self::already(now, &s.record))
                }
            }
            _ => Err(ResolveOutcome::Unknown { at_ms: now }),
        }
    }

    /// Settles a hold at store time `now`.
    pub fn settle(&mut self, now: u64, req: &SettleRequest) -> ResolveOutcome {
        let hold = HoldRef {
            customer: req.customer.clone(),
            hold_id: req.hold_id.clone(),
        };
        let occurred_ms = self
            .live_hold(now, &req.customer, &req.hold_id)
            .and_then(|stored| stored.occurred_ms);
        let h = match self.pending_hold(now, &hold) {
            Ok(h) => h,
            Err(ResolveOutcome::AlreadyExpired { .. }) => {
                return self.settle_late(now, req, occurred_ms);
            }
            Err(outcome) => return outcome,
        };
        let held = h.amount;
        let mut r = self.release(&req.customer, &h, req.actual.min(held));
        let mut posted = req.actual.min(held);
        let mut shortfall = 0;
        let t = &h.credit_type;
        if req.actual > held {
            let extra = req.actual - held;
            let c = self.customers.entry(req.customer.clone()).or_default();
            let (order, total) = c.usable_grants(t, now);
            let room = c.available(t, total) + req.overdraft_limit as i64;
            let can = (extra as i64).min(room).max(0) as u64;
            let (draws, taken) = self.take(&req.customer, &order, can, false);
            for d in draws {
                add_draw(&mut r.burns, &d.grant_id, d.amount);
            }
            let c = self
                .customers
                .get_mut(&req.customer)
                .expect("customer exists");
            c.add(t, |x| &mut x.debt, (can - taken) as i64);
            c.add(t, |x| &mut x.avail, -(can as i64));
            r.overdraft_posted += can - taken;
            posted = held + can;
            shortfall = extra - can;
        }
        self.finish(now, &req.customer, &req.hold_id, HoldState::Posted, posted);
        let c = &self.customers[&req.customer];
        let (_, total) = c.usable_grants(t, now);
        let available_after = c.available(t, total);
        self.emit(Event {
            event_id: hold_event_id(&req.hold_id, Some(h.created_ms), "posted"),
            at_ms: occurred_ms.unwrap_or(now),
            customer: req.customer.clone(),
            credit_type: t.clone(),
            body: EventBody::HoldPosted {
                hold_id: req.hold_id.clone(),
                held,
                requested: req.actual,
                posted,
                burns: r.burns,
                overdraft: r.overdraft_posted,
                returned: r.returned,
                returned_overdraft: r.returned_overdraft,
                breakage: r.breakage,
                shortfall,
                context: RequestContext {
                    request_id: h.request_id.clone(),
                    route: h.route.clone(),
                    feature: h.feature.clone(),
                    pricing_version: h.pricing_version.clone(),
                },
                late: false,
            },
        });
        ResolveOutcome::Posted {
            at_ms: now,
            posted,
            shortfall,
            returned: r.returned_total,
            available_after,
        }
    }

    /// The late burn of an expired hold, as `settle.lua`'s `late_burn`: `actual` from the
    /// grants in burn order, then overdraft, at least up to what was held even past the
    /// overdraft limit; the hold becomes posted.
    fn settle_late(
        &mut self,
        now: u64,
        req: &SettleRequest,
        occurred_ms: Option<u64>,
    ) -> ResolveOutcome {
        let shard = self.shard_mut(&req.customer);
        let h = shard.holds[&req.hold_id].record.clone();
        let t = &h.credit_type;
        let c = self.customers.entry(req.customer.clone()).or_default();
        let (order, total) = c.usable_grants(t, now);
        let room = c.available(t, total) + req.overdraft_limit as i64;
        let can = (req.actual as i64).min(room.max(h.amount as i64)).max(0) as u64;
        let (burns, taken) = self.take(&req.customer, &order, can, false);
        let c = self
            .customers
            .get_mut(&req.customer)
            .expect("customer exists");
        c.add(t, |x| &mut x.debt, (can - taken) as i64);
        c.add(t, |x| &mut x.avail, -(can as i64));
        self.finish(now, &req.customer, &req.hold_id, HoldState::Posted, can);
        let c = &self.customers[&req.customer];
        let (_, total) = c.usable_grants(t, now);
        let available_after = c.available(t, total);
        self.emit(Event {
            event_id: hold_event_id(&req.hold_id, Some(h.created_ms), "posted"),
            at_ms: occurred_ms.unwrap_or(now),
            customer: req.customer.clone(),
            credit_type: t.clone(),
            body: EventBody::HoldPosted {
                hold_id: req.hold_id.clone(),
                held: 0,
                requested: req.actual,
                posted: can,
                burns,
                overdraft: can - taken,
                returned: Vec::new(),
                returned_overdraft: 0,
                breakage: Vec::new(),
                shortfall: req.actual - can,
                context: RequestContext {
                    request_id: h.request_id.clone(),
                    route: h.route.clone(),
                    feature: h.feature.clone(),
                    pricing_version: h.pricing_version.clone(),
                },
                late: true,
            },
        });
        ResolveOutcome::PostedLate {
            at_ms: now,
            posted: can,
            shortfall: req.actual - can,
            available_after,
        }
    }

    /// Moves a pending hold's deadline to at least `now + ttl_ms`, as `extend.lua`.
    pub fn extend(&mut self, now: u64, req: &ExtendRequest) -> ExtendOutcome {
        let h = match self.pending_hold(now, &req.hold()) {
            Ok(h) => h,
            Err(outcome) => return ExtendOutcome::NotPending(outcome),
        };
        let deadline_ms = h.deadline_ms.max(now + req.ttl_ms);
        let shard = self.shard_mut(&req.customer);
        if let Some(stored) = shard.holds.get_mut(&req.hold_id) {
            stored.record.deadline_ms = deadline_ms;
        }
        shard
            .deadlines
            .0
            .insert(member(&req.customer, &req.hold_id), deadline_ms);
        ExtendOutcome::Extended {
            at_ms: now,
            deadline_ms,
        }
    }

    fn release_all(&mut self, now: u64, hold: &HoldRef, h: HoldRecord, expired: bool) -> u64 {
        let r = self.release(&hold.customer, &h, 0);
        let state = if expired {
            HoldState::Expired
        } else {
            HoldState::Voided
        };
        self.finish(now, &hold.customer, &hold.hold_id, state, 0);
        let release = Release {
            hold_id: hold.hold_id.clone(),
            held: h.amount,
            returned: r.returned,
            returned_overdraft: r.returned_overdraft,
            breakage: r.breakage,
            context: RequestContext {
                request_id: h.request_id.clone(),
                route: h.route.clone(),
                feature: h.feature.clone(),
                pricing_version: h.pricing_version.clone(),
            },
        };
        let (suffix, body) = if expired {
            ("expired", EventBody::HoldExpired(release))
        } else {
            ("voided", EventBody::HoldVoided(release))
        };
        self.emit(Event {
            event_id: hold_event_id(&hold.hold_id, Some(h.created_ms), suffix),
            at_ms: now,
            customer: hold.customer.clone(),
            credit_type: h.credit_type.clone(),
            body,
        });
        r.returned_total
    }

    /// Voids a hold at store time `now`.
    pub fn void(&mut self, now: u64, hold: &HoldRef) -> ResolveOutcome {
        match self.pending_hold(now, hold) {
            Ok(h) => ResolveOutcome::Voided {
                at_ms: now,
                returned: self.release_all(now, hold, h, false),
            },
            Err(outcome) => outcome,
        }
    }

    /// Expires a hold at store time `now` if its deadline has passed.
    pub fn expire_hold(&mut self, now: u64, hold: &HoldRef) -> ResolveOutcome {
        match self.pending_hold(now, hold) {
            Ok(h) if h.deadline_ms > now => ResolveOutcome::NotDue {
                at_ms: now,
                deadline_ms: h.deadline_ms,
            },
            Ok(h) => ResolveOutcome::Expired {
                at_ms: now,
                returned: self.release_all(now, hold, h, true),
            },
            Err(outcome) => {
                if matches!(outcome, ResolveOutcome::Unknown { .. }) {
                    let m = member(&hold.customer, &hold.hold_id);
                    self.shard_mut(&hold.customer).deadlines.0.remove(&m);
                }
                outcome
            }
        }
    }

    /// Expires the rest of a grant at store time `now` if its expiry has passed.
    pub fn expire_grant(&mut self, now: u64, grant: &GrantRef) -> GrantExpiryOutcome {
        let m = member(&grant.customer, &grant.grant_id);
        let c = self.customers.entry(grant.customer.clone()).or_default();
        let Some(g) = c.grants.get_mut(&grant.grant_id) else {
            self.shard_mut(&grant.customer).grant_expiry.0.remove(&m);
            return GrantExpiryOutcome::Unknown { at_ms: now };
        };
        if g.expired {
            self.shard_mut(&grant.customer).grant_expiry.0.remove(&m);
            return GrantExpiryOutcome::AlreadyExpired { at_ms: now };
        }
        if g.expires_at == 0 || g.expires_at > now {
            return GrantExpiryOutcome::NotDue {
                at_ms: now,
                expires_at_ms: g.expires_at,
            };
        }
        let amount = g.remaining;
        g.remaining = 0;
        g.expired = true;
        let held = g.held;
        let credit_type = g.credit_type.clone();
        if held == 0 {
            c.grants.remove(&grant.grant_id);
        }
        c.add(&credit_type, |x| &mut x.avail, -(amount as i64));
        self.shard_mut(&grant.customer).grant_expiry.0.remove(&m);
        self.emit(Event {
            event_id: format!("grant:{}:expired", grant.grant_id),
            at_ms: now,
            customer: grant.customer.clone(),
            credit_type,
            body: EventBody::GrantExpired {
                grant_id: grant.grant_id.clone(),
                amount,
                held,
            },
        });
        GrantExpiryOutcome::Expired { at_ms: now, amount }
    }

    /// A customer's balance at store time `now`.
    pub fn balance(&self, now: u64, customer: &str) -> Balance {
        let empty = Customer::default();
        let c = self.customers.get(customer).unwrap_or(&empty);
        let mut types: Vec<&String> = c.counters.keys().collect();
        for g in c.grants.values() {
            if !types.contains(&&g.credit_type) {
                types.push(&g.credit_type);
            }
        }
        types.sort();
        let usable = |t: &str| -> u64 {
            c.grants
                .values()
                .filter(|g| g.credit_type == t && g.usable(now))
                .map(|g| g.remaining)
                .sum()
        };
        Balance {
            at_ms: now,
            types: types
                .into_iter()
                .map(|t| TypeBalance {
                    credit_type: t.clone(),
                    available: c.available(t, usable(t)),
                    held: c.counter(t, |x| x.held),
                    debt: c.counter(t, |x| x.debt),
                    book_available: c.counter(t, |x| x.avail),
                })
                .collect(),
            grants: c
                .grants
                .iter()
                .map(|(id, g)| GrantState {
                    grant_id: id.clone(),
                    credit_type: g.credit_type.clone(),
                    remaining: g.remaining,
                    held: g.held,
                    priority: g.priority,
                    expires_at_ms: (g.expires_at != 0).then_some(g.expires_at),
                    cost_basis: g.cost_basis,
                    created_ms: g.created,
                    expired: g.expired,
                })
                .collect(),
        }
    }

    /// Checks a customer's state at store time `now` against the money invariants: its
    /// balance as [`check_balance`] does, every credit type's counters against its grants,
    /// and the newest event of its shard. The embedded store runs it after every call.
    pub fn check_customer(&self, now: u64, customer: &str) -> Result<(), InvariantViolation> {
        check_balance(customer, &self.balance(now, customer))?;
        if let Some(c) = self.customers.get(customer) {
            c.check_totals(customer)?;
        }
        match self.events(self.keyspace.shard_of(customer)).last() {
            Some(event) => check_event(event),
            None => Ok(()),
        }
    }

    /// A hold's record at store time `now`, while pending or retained.
    pub fn hold(&mut self, now: u64, hold: &HoldRef) -> Option<HoldRecord> {
        self.live_hold(now, &hold.customer, &hold.hold_id)
            .map(|s| s.record)
            .filter(|r| r.customer == hold.customer)
    }

    /// Pending holds of a shard due at `now`.
    pub fn due_holds(&self, shard: Shard, now: u64, limit: usize) -> Vec<DueEntry> {
        self.shards
            .get(&shard)
            .map(|s| s.deadlines.due(now, limit))
            .unwrap_or_default()
    }

    /// Expiring grants of a shard due at `now`.
    pub fn due_grants(&self, shard: Shard, now: u64, limit: usize) -> Vec<DueEntry> {
        self.shards
            .get(&shard)
            .map(|s| s.grant_expiry.due(now, limit))
            .unwrap_or_default()
    }
}

/// Events the embedded store keeps per shard: nothing consumes them in process, so only the
/// most recent are kept, for inspection; the memory of a long-running gateway stays bounded.
pub const EMBEDDED_EVENTS_PER_SHARD: usize = 10_000;

/// Longest time the embedded store keeps a resolved hold for idempotent retries, in
/// milliseconds: a minute covers a client's prompt retries while bounding memory under
/// load (a minute of traffic); Redis deployments keep them for the requested retention.
pub const EMBEDDED_MAX_RETAIN_MS: u64 = 60_000;

/// How many calls the embedded store serves between two prunes of resolved holds.
const PRUNE_EVERY_CALLS: u64 = 1_024;

impl Model {
    /// Drops resolved holds resolved more than `max_retain_ms` ago and all but the newest
    /// `events_per_shard` events of each shard, in time proportional to what it drops. The
    /// embedded store calls it; tests comparing with Redis do not.
    pub fn prune(&mut self, now: u64, max_retain_ms: u64, events_per_shard: usize) {
        for shard in self.shards.values_mut() {
            // Oldest resolutions first; stop at the first one still within the cap. A hold
            // with a shorter retention than the cap is dropped when Redis would have, by
            // `live_hold`, or here once the cap has passed.
            while let Some((resolved, _)) = shard.resolved.front() {
                if now <= resolved + max_retain_ms {
                    break;
                }
                let (resolved, hold_id) = shard.resolved.pop_front().expect("front exists");
                if shard
                    .holds
                    .get(&hold_id)
                    .is_some_and(|h| h.record.resolved_ms == Some(resolved))
                {
                    shard.holds.remove(&hold_id);
                }
            }
            let excess = shard.events.len().saturating_sub(events_per_shard);
            if excess > 0 {
                shard.events.drain(..excess);
            }
            shard.records.retain(|_, r| r.live_at(now));
        }
    }
}

/// The embedded store: the reference model behind [`CreditStore`], on the system clock,
/// with bounded memory (see [`EMBEDDED_EVENTS_PER_SHARD`] and [`EMBEDDED_MAX_RETAIN_MS`]).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    model: Model,
    last_now: u64,
    calls: u64,
}

impl MemoryStore {
    /// An empty embedded store.
    pub fn new(keyspace: Keyspace) -> Self {
        Self {
            inner: Mutex::new(MemoryState {
                model: Model::new(keyspace),
                ..MemoryState::default()
            }),
        }
    }

    /// Runs `f` on the model with the current time, which never goes backwards.
    fn with<T>(&self, f: impl FnOnce(&mut Model, u64) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let now = wall.max(state.last_now);
        state.last_now = now;
        state.calls += 1;
        if state.calls.is_multiple_of(PRUNE_EVERY_CALLS) {
            state
                .model
                .prune(now, EMBEDDED_MAX_RETAIN_MS, EMBEDDED_EVENTS_PER_SHARD);
        }
        f(&mut state.model, now)
    }

    /// Runs `f` for `customer` and checks its outcome with `check_outcome`, then the
    /// customer's state ([`Model::check_customer`]): a broken invariant is an error of `op`.
    fn checked<T>(
        &self,
        op: &'static str,
        customer: &str,
        f: impl FnOnce(&mut Model, u64) -> T,
        check_outcome: impl FnOnce(&T) -> Result<(), InvariantViolation>,
    ) -> Result<T, StoreError> {
        self.with(|m, now| {
            let outcome = f(m, now);
            check_outcome(&outcome)
                .and_then(|()| m.check_customer(now, customer))
                .map_err(|violation| StoreError::invariant(op, violation))?;
            Ok(outcome)
        })
    }

    /// A copy of one shard's events, oldest first.
    pub fn events(&self, shard: Shard) -> Vec<Event> {
        self.with(|m, _| m.events(shard).to_vec())
    }
}

#[async_trait]
impl CreditStore for MemoryStore {
    async fn grant(&self, req: &GrantRequest) -> Result<GrantOutcome, StoreError> {
        req.validate()?;
        self.checked(
            "grant",
            &req.customer,
            |m, now| m.grant(now, req),
            |o| check_grant(req, o),
        )
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        req.validate()?;
        self.checked(
            "reserve",
            &req.customer,
            |m, now| m.reserve(now, req),
            |o| check_reserve(req, o),
        )
    }

    async fn reserve_keyed(
        &self,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
    ) -> Result<KeyedReserveOutcome, StoreError> {
        req.validate()?;
        claim.validate()?;
        self.checked(
            "reserve",
            &req.customer,
            |m, now| m.reserve_keyed(now, req, claim),
            |o| match o {
                KeyedReserveOutcome::Reserve(o) => check_reserve(req, o),
                _ => Ok(()),
            },
        )
    }

    async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
        req.validate()?;
        self.checked(
            "settle",
            &req.customer,
            |m, now| m.settle(now, req),
            |o| check_settle(req, o),
        )
    }

    async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        self.checked(
            "void",
            &hold.customer,
            |m, now| m.void(now, hold),
            |o| check_void(hold, o),
        )
    }

    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, StoreError> {
        req.validate()?;
        self.checked(
            "extend",
            &req.customer,
            |m, now| m.extend(now, req),
            |o| check_extend(req, o),
        )
    }

    async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        self.checked(
            "expire_hold",
            &hold.customer,
            |m, now| m.expire_hold(now, hold),
            |o| check_expire_hold(hold, o),
        )
    }

    async fn expire_grant(&self, grant: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
        grant.validate()?;
        self.checked(
            "expire_grant",
            &grant.customer,
            |m, now| m.expire_grant(now, grant),
            |o| check_grant_expiry(grant, o),
        )
    }

    async fn balance(&self, customer: &str) -> Result<Balance, StoreError> {
        crate::keys::validate_id("customer", customer).map_err(|message| {
            crate::types::InvalidArgument {
                field: "customer",
                message,
            }
        })?;
        self.checked(
            "balance",
            customer,
            |m, now| m.balance(now, customer),
            |b| check_balance(customer, b),
        )
    }

    async fn hold(&self, hold: &HoldRef) -> Result<Option<HoldRecord>, StoreError> {
        hold.validate()?;
        self.checked(
            "hold",
            &hold.customer,
            |m, now| m.hold(now, hold),
            |r| r.as_ref().map_or(Ok(()), |r| check_hold_record(hold, r)),
        )
    }

    async fn due_holds(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        Ok(self.with(|m, _| m.due_holds(shard, now_ms, limit)))
    }

    async fn due_grants(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        Ok(self.with(|m, _| m.due_grants(shard, now_ms, limit)))
    }
}

#[cfg(test)]
mod tests {
    //! The model's own state checks: a counter out of step with the grants is an error of
    //! the call that finds it, never a number handed out.

    use super::*;
    use crate::types::GrantSource;

    fn grant(id: &str, amount: u64) -> GrantRequest {
        GrantRequest {
            customer: "acme".into(),
            grant_id: id.into(),
            credit_type: "api".into(),
            amount,
            priority: 0,
            expires_at_ms: None,
            cost_basis: 0,
            source: GrantSource::Promotion,
            actor: "ops".into(),
            reason: "test".into(),
        }
    }

    fn reserve(hold_id: &str, amount: u64) -> ReserveRequest {
        ReserveRequest {
            customer: "acme".into(),
            hold_id: hold_id.into(),
            credit_type: "api".into(),
            amount,
            ttl_ms: 60_000,
            overdraft_limit: 0,
            force: false,
            request_id: "r1".into(),
            route: "chat".into(),
            feature: "chat".into(),
            retain_ms: 60_000,
            pricing_version: String::new(),
            occurred_at_ms: None,
        }
    }

    /// Changes one counter of `acme`'s `api` credits behind the model's back.
    fn corrupt(store: &MemoryStore, field: fn(&mut Counters) -> &mut i64, delta: i64) {
        let mut state = store.inner.lock().unwrap();
        let c = state.model.customers.get_mut("acme").unwrap();
        *field(c.counters.get_mut("api").unwrap()) += delta;
    }

    #[tokio::test]
    async fn a_counter_out_of_step_with_the_grants_is_an_invariant_error() {
        let store = MemoryStore::new(Keyspace::default());
        store.grant(&grant("g1", 100)).await.unwrap();
        store.reserve(&reserve("h1", 10)).await.unwrap();
        corrupt(&store, |c| &mut c.held, 5);
        let err = store.balance("acme").await.unwrap_err();
        assert_eq!(err.kind(), crate::StoreErrorKind::Invariant);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "money invariant broken during balance: customer acme type api: held: \
             15 != grants' held 10 + overdraft_held 0"
        );
        corrupt(&store, |c| &mut c.held, -5);
        corrupt(&store, |c| &mut c.avail, 1);
        let err = store.reserve(&reserve("h2", 1)).await.unwrap_err();
        assert!(
            err.to_string().contains(
                "during reserve: customer acme type api: book_available: \
                 90 != grants' remaining 89 - debt 0 - overdraft_held 0"
            ),
            "{err}"
        );
    }

    #[test]
    fn negative_debt_is_named() {
        let mut m = Model::new(Keyspace::default());
        m.grant(1, &grant("g1", 10));
        m.customers
            .get_mut("acme")
            .unwrap()
            .counters
            .get_mut("api")
            .unwrap()
            .debt = -3;
        let err = m.check_customer(2, "acme").unwrap_err();
        assert_eq!((err.field, err.detail.as_str()), ("debt", "-3 is negative"));
    }
}
