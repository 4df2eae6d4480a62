//! Moving finished requests' burns out of a gateway's credit lease, atomically: one
//! `MULTI`/`EXEC` of the canonical scripts (void the lease, reserve and settle each
//! request's own hold, reserve the lease's remainder anew), so no other caller can take
//! the lease's credits between the void and the burns, and every request reaches the
//! ledger as its own placed and posted hold, exactly as without a lease.
//!
//! No new script: the transaction only sequences `void`, `reserve` and `settle`, so the
//! in-memory model and the seeded comparison cover every step. It must not decide sizes or
//! admit requests; the gateway's lease module does.

use redis::Value;

use super::{RedisStore, reserve_args};
use crate::replies::{decode_reserve, decode_settle, decode_void};
use crate::scripts::{SCRIPTS, Script};
use crate::store::StoreError;
use crate::types::{HoldRef, ReserveOutcome, ReserveRequest, ResolveOutcome, SettleRequest};

/// Most request burns moved in one transaction: bounds the time Redis is busy with one
/// customer's transaction (each burn is two short scripts).
pub const LEASE_TRANSFER_BURNS_MAX: usize = 256;

/// One request admitted from a lease: its own hold (reserve with `force`, so a burn the
/// gateway already served is never refused) and the settle that posts it.
#[derive(Clone, Debug)]
pub struct LeaseBurn {
    /// The request's own hold, as hold mode would place it.
    pub reserve: ReserveRequest,
    /// Its settle (the actual cost).
    pub settle: SettleRequest,
}

/// What to do atomically with a lease.
#[derive(Clone, Debug)]
pub struct LeaseTransfer {
    /// The lease hold to void (its credits return to the grants they came from).
    pub lease: HoldRef,
    /// Burns to place and post out of the returned credits, in order.
    pub burns: Vec<LeaseBurn>,
    /// The lease's remainder, reserved anew under a new hold id; `None` ends the lease.
    pub next: Option<ReserveRequest>,
}

/// What the transaction did.
#[derive(Clone, Debug)]
pub struct LeaseTransferOutcome {
    /// The old lease's void.
    pub voided: ResolveOutcome,
    /// Each burn's reserve and settle outcome, in order.
    pub burns: Vec<(ReserveOutcome, ResolveOutcome)>,
    /// The new lease's reserve, if one was asked for.
    pub next: Option<ReserveOutcome>,
}

impl RedisStore {
    /// Runs `t` as one transaction; safe to retry with the same ids after a timeout (every
    /// step is idempotent by hold id).
    pub async fn transfer_lease(
        &self,
        t: &LeaseTransfer,
    ) -> Result<LeaseTransferOutcome, StoreError> {
        if t.burns.len() > LEASE_TRANSFER_BURNS_MAX {
            return Err(StoreError::Protocol {
                op: "lease_transfer",
                message: format!(
                    "{} burns in one transfer, at most {LEASE_TRANSFER_BURNS_MAX}",
                    t.burns.len()
                ),
            });
        }
        t.lease.validate()?;
        for b in &t.burns {
            b.reserve.validate()?;
            b.settle.validate()?;
        }
        if let Some(next) = &t.next {
            next.validate()?;
        }
        let pipe = self.transfer_pipe(t);
        let mut conn = self.conn.clone();
        let replies = self
            .with_timeout("lease_transfer", conn.query_pipe::<Vec<Value>>(&pipe))
            .await?;
        decode_transfer(t, replies)
    }

    fn transfer_pipe(&self, t: &LeaseTransfer) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let resolve_args = |h: &HoldRef, extra: &[String]| {
            let mut args = vec![h.customer.clone(), h.hold_id.clone()];
            args.extend_from_slice(extra);
            args
        };
        // The first use of each script in the transaction goes by source (`EVAL`, which
        // also caches it), later ones by SHA: a `NOSCRIPT` inside `EXEC` would fail that
        // one command while the others run (a void without its burns), so it must not
        // happen at all.
        let mut sent: Vec<&'static str> = Vec::with_capacity(3);
        let mut add = |script: &Script, customer: &str, hold_id: &str, args: Vec<String>| {
            let keys = self.hold_keys(customer, hold_id);
            if sent.contains(&script.name) {
                pipe.cmd("EVALSHA").arg(&script.sha);
            } else {
                sent.push(script.name);
                pipe.cmd("EVAL").arg(&script.source);
            }
            pipe.arg(keys.len()).arg(&keys[..]).arg(args);
        };
        add(
            &SCRIPTS.void,
            &t.lease.customer,
            &t.lease.hold_id,
            resolve_args(&t.lease, &[]),
        );
        for b in &t.burns {
            let r = &b.reserve;
            add(
                &SCRIPTS.reserve,
                &r.customer,
                &r.hold_id,
                reserve_args(r).to_vec(),
            );
            let s = &b.settle;
            let held = HoldRef {
                customer: s.customer.clone(),
                hold_id: s.hold_id.clone(),
            };
            let extra = [s.actual.to_string(), s.overdraft_limit.to_string()];
            add(
                &SCRIPTS.settle,
                &s.customer,
                &s.hold_id,
                resolve_args(&held, &extra),
            );
        }
        if let Some(next) = &t.next {
            add(
                &SCRIPTS.reserve,
                &next.customer,
                &next.hold_id,
                reserve_args(next).to_vec(),
            );
        }
        pipe
    }
}

fn decode_transfer(
    t: &LeaseTransfer,
    replies: Vec<Value>,
) -> Result<LeaseTransferOutcome, StoreError> {
    let expected = 1 + 2 * t.burns.len() + usize::from(t.next.is_some());
    if replies.len() != expected {
        return Err(StoreError::Protocol {
            op: "lease_transfer",
            message: format!("{} replies to {expected} commands", replies.len()),
        });
    }
    let mut it = replies.into_iter();
    let mut next_reply = || it.next().unwrap_or(Value::Nil);
    let voided = decode_void(&t.lease, next_reply())?;
    let mut burns = Vec::with_capacity(t.burns.len());
    for b in &t.burns {
        let reserved = decode_reserve(&b.reserve, next_reply())?;
        let settled = decode_settle(&b.settle, next_reply())?;
        burns.push((reserved, settled));
    }
    let next = match &t.next {
        Some(req) => Some(decode_reserve(req, next_reply())?),
        None => None,
    };
    Ok(LeaseTransferOutcome {
        voided,
        burns,
        next,
    })
}
