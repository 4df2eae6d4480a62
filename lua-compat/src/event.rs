//! The event format: one stream entry per mutation, written by the script that made it.
//!
//! The sidecar's ledger writer, the OpenResty plugin and the reference model all read and
//! write exactly these fields; `PROTOCOL.md` lists them. Parsing is strict: an entry with a
//! missing or malformed field is an error naming the field, never a silent default.

use std::collections::HashMap;

use crate::types::{Draw, GrantSource, format_draws, parse_draws};

/// Version of the event field layout, written as field `v`.
pub const EVENT_VERSION: &str = "1";

/// One mutation of credits, as written to the shard's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Stable id, unique per mutation (`hold:<id>:posted`, `grant:<id>:added`, …): the
    /// ledger's key for exactly-once entries, independent of the stream entry id.
    pub event_id: String,
    /// Store time of the mutation, ms since epoch.
    pub at_ms: u64,
    /// The customer.
    pub customer: String,
    /// The credit type.
    pub credit_type: String,
    /// What happened.
    pub body: EventBody,
}

/// The request a hold was placed for, carried on every hold event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestContext {
    /// The request id.
    pub request_id: String,
    /// The route.
    pub route: String,
    /// The feature.
    pub feature: String,
    /// The pricing config version that priced the request (empty when unknown, as on
    /// holds placed before versions were recorded).
    pub pricing_version: String,
}

/// What a void or an expiry gave back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The hold.
    pub hold_id: String,
    /// Amount that was held.
    pub held: u64,
    /// Credits returned to each grant.
    pub returned: Vec<Draw>,
    /// Overdraft part returned.
    pub returned_overdraft: u64,
    /// Credits that would have returned to a grant expired meanwhile.
    pub breakage: Vec<Draw>,
    /// The request.
    pub context: RequestContext,
}

/// The kind-specific fields of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBody {
    /// `grant_added`: a grant was applied.
    GrantAdded {
        /// The grant.
        grant_id: String,
        /// Amount granted.
        amount: u64,
        /// Part of it that repaid overdraft debt.
        debt_repaid: u64,
        /// Burn priority.
        priority: u32,
        /// Expiry, if any.
        expires_at_ms: Option<u64>,
        /// Money paid, currency micro-units.
        cost_basis: u64,
        /// Source.
        source: GrantSource,
        /// Who issued it.
        actor: String,
        /// Why.
        reason: String,
    },
    /// `hold_placed`: a hold was placed.
    HoldPlaced {
        /// The hold.
        hold_id: String,
        /// Amount held.
        amount: u64,
        /// What each grant gave, in burn order.
        draws: Vec<Draw>,
        /// Part from overdraft.
        overdraft: u64,
        /// Deadline.
        deadline_ms: u64,
        /// Placed past the overdraft limit by `force`.
        over_limit: bool,
        /// The request.
        context: RequestContext,
    },
    /// `hold_posted`: a hold was settled.
    HoldPosted {
        /// The hold.
        hold_id: String,
        /// Amount that was held.
        held: u64,
        /// Actual cost asked for.
        requested: u64,
        /// Actual cost burned.
        posted: u64,
        /// Credits burned from each grant.
        burns: Vec<Draw>,
        /// Credits burned into overdraft debt.
        overdraft: u64,
        /// Credits returned to each grant.
        returned: Vec<Draw>,
        /// Overdraft part returned.
        returned_overdraft: u64,
        /// Returned credits of grants expired meanwhile.
        breakage: Vec<Draw>,
        /// Requested but not coverable within the overdraft limit.
        shortfall: u64,
        /// The request.
        context: RequestContext,
        /// A late burn: the hold had expired before this settle (its request outlived
        /// it), so `held` is 0 and everything posted came from the grants and overdraft
        /// now. On the wire `late` = `1`, absent otherwise.
        late: bool,
    },
    /// `hold_voided`: a hold was cancelled.
    HoldVoided(Release),
    /// `hold_expired`: a hold passed its deadline unsettled.
    HoldExpired(Release),
    /// `grant_expired`: the unused rest of a grant expired (breakage).
    GrantExpired {
        /// The grant.
        grant_id: String,
        /// Credits expired.
        amount: u64,
        /// Credits of it still in pending holds at the time.
        held: u64,
    },
}

impl EventBody {
    /// The wire name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::GrantAdded { .. } => "grant_added",
            Self::HoldPlaced { .. } => "hold_placed",
            Self::HoldPosted { .. } => "hold_posted",
            Self::HoldVoided(_) => "hold_voided",
            Self::HoldExpired(_) => "hold_expired",
            Self::GrantExpired { .. } => "grant_expired",
        }
    }
}

/// A stream entry that is not a valid event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad event field {field:?}: {message}")]
pub struct EventParseError {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

struct Fields<'a>(HashMap<&'a str, &'a str>);

impl Fields<'_> {
    fn str(&self, field: &str) -> Result<String, EventParseError> {
        self.0
            .get(field)
            .map(|v| v.to_string())
            .ok_or_else(|| EventParseError {
                field: field.to_string(),
                message: "missing".to_string(),
            })
    }

    fn num<T: std::str::FromStr>(&self, field: &str) -> Result<T, EventParseError> {
        let raw = self.str(field)?;
        raw.parse().map_err(|_| EventParseError {
            field: field.to_string(),
            message: format!("not an integer: {raw:?}"),
        })
    }

    fn draws(&self, field: &str) -> Result<Vec<Draw>, EventParseError> {
        parse_draws(&self.str(field)?).map_err(|message| EventParseError {
            field: field.to_string(),
            message,
        })
    }

    fn context(&self) -> Result<RequestContext, EventParseError> {
        Ok(RequestContext {
            request_id: self.str("request_id")?,
            route: self.str("route")?,
            feature: self.str("feature")?,
            // Absent on events written before pricing versions were recorded.
            pricing_version: self
                .0
                .get("pricing_version")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        })
    }

    fn release(&self) -> Result<Release, EventParseError> {
        Ok(Release {
            hold_id: self.str("hold_id")?,
            held: self.num("held")?,
            returned: self.draws("returned")?,
            returned_overdraft: self.num("returned_overdraft")?,
            breakage: self.draws("breakage")?,
            context: self.context()?,
        })
    }
}

/// A hold event's id: `hold:<hold_id>:<nonce>:<what>` (`what`: `placed`, `posted`,
/// `voided`, `expired`). The nonce is the hold's placement time in ms, written into its
/// record by reserve, so a hold placed again under an id whose record is gone (expired
/// 24 h after it resolved, or lost with Redis's data) gets event ids the ledger never saw.
/// A hold placed before nonces existed (`None`) keeps `hold:<hold_id>:<what>`. Hold ids
/// never contain `:`, so the parts are unambiguous.
pub fn hold_event_id(hold_id: &str, nonce: Option<u64>, what: &str) -> String {
    match nonce {
        Some(n) => format!("hold:{hold_id}:{n}:{what}"),
        None => format!("hold:{hold_id}:{what}"),
    }
}

/// The placement a hold event id belongs to: `hold:<hold_id>:<nonce>` (or `hold:<hold_id>`
/// for a hold without a nonce), the part every event of one placement shares; `None` for
/// an id that is not a hold event's.
pub fn hold_placement_of(event_id: &str) -> Option<&str> {
    let (placement, _what) = event_id.rsplit_once(':')?;
    placement
        .strip_prefix("hold:")
        .filter(|rest| !rest.is_empty())?;
    Some(placement)
}

/// The id of the `what` event of the same placement as hold event `event_id`
/// (`hold:h1:17:placed` → `hold:h1:17:voided`); `None` for an id that is not a hold
/// event's.
pub fn hold_sibling_event_id(event_id: &str, what: &str) -> Option<String> {
    hold_placement_of(event_id).map(|placement| format!("{placement}:{what}"))
}

impl Event {
    /// Parses a stream entry's field/value pairs.
    pub fn from_fields<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Event, EventParseError> {
        let f = Fields(pairs.into_iter().collect());
        let version = f.str("v")?;
        if version != EVENT_VERSION {
            return Err(EventParseError {
                field: "v".into(),
                message: format!("unsupported event version {version:?}"),
            });
        }
        let kind = f.str("kind")?;
        let body = match kind.as_str() {
            "grant_added" => EventBody::GrantAdded {
                grant_id: f.str("grant_id")?,
                amount: f.num("amount")?,
                debt_repaid: f.num("debt_repaid")?,
                priority: f.num("priority")?,
                expires_at_ms: Some(f.num("expires_at")?).filter(|&e: &u64| e != 0),
                cost_basis: f.num("cost_basis")?,
                source: f
                    .str("source")?
                    .parse()
                    .map_err(|message| EventParseError {
                        field: "source".into(),
                        message,
                    })?,
                actor: f.str("actor")?,
                reason: f.str("reason")?,
            },
            "hold_placed" => EventBody::HoldPlaced {
                hold_id: f.str("hold_id")?,
                amount: f.num("amount")?,
                draws: f.draws("draws")?,
                overdraft: f.num("overdraft")?,
                deadline_ms: f.num("deadline")?,
                over_limit: f.num::<u8>("over_limit")? == 1,
                context: f.context()?,
            },
            "hold_posted" => EventBody::HoldPosted {
                hold_id: f.str("hold_id")?,
                held: f.num("held")?,
                requested: f.num("requested")?,
                posted: f.num("posted")?,
                burns: f.draws("burns")?,
                overdraft: f.num("overdraft")?,
                returned: f.draws("returned")?,
                returned_overdraft: f.num("returned_overdraft")?,
                breakage: f.draws("breakage")?,
                shortfall: f.num("shortfall")?,
                context: f.context()?,
                late: f.0.get("late").is_some_and(|v| *v == "1"),
            },
            "hold_voided" => EventBody::HoldVoided(f.release()?),
            "hold_expired" => EventBody::HoldExpired(f.release()?),
            "grant_expired" => EventBody::GrantExpired {
                grant_id: f.str("grant_id")?,
                amount: f.num("amount")?,
                held: f.num("held")?,
            },
            other => {
                return Err(EventParseError {
                    field: "kind".into(),
                    message: format!("unknown kind {other:?}"),
                });
            }
        };
        Ok(Event {
            event_id: f.str("event_id")?,
            at_ms: f.num("at")?,
            customer: f.str("customer")?,
            credit_type: f.str("credit_type")?,
            body,
        })
    }

    /// The field/value pairs of the stream entry, in the order the scripts write them.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("v", EVENT_VERSION.to_string()),
            ("event_id", self.event_id.clone()),
            ("kind", self.body.kind().to_string()),
            ("at", self.at_ms.to_string()),
            ("customer", self.customer.clone()),
            ("credit_type", self.credit_type.clone()),
        ];
        self.body.push_fields(&mut out);
        out
    }
}

/// Appends a hold's request context, the last fields of every hold event.
fn push_context(out: &mut Vec<(&'static str, String)>, c: &RequestContext) {
    out.extend([
        ("request_id", c.request_id.clone()),
        ("route", c.route.clone()),
        ("feature", c.feature.clone()),
        ("pricing_version", c.pricing_version.clone()),
    ]);
}

impl EventBody {
    /// Appends the kind-specific fields, in the order the scripts write them.
    fn push_fields(&self, out: &mut Vec<(&'static str, String)>) {
        match self {
            Self::GrantAdded { .. } => self.push_grant_added(out),
            Self::HoldPlaced {
                hold_id,
                amount,
                draws,
                overdraft,
                deadline_ms,
                over_limit,
                context,
            } => {
                out.extend([
                    ("hold_id", hold_id.clone()),
                    ("amount", amount.to_string()),
                    ("draws", format_draws(draws)),
                    ("overdraft", overdraft.to_string()),
                    ("deadline", deadline_ms.to_string()),
                    ("over_limit", u8::from(*over_limit).to_string()),
                ]);
                push_context(out, context);
            }
            Self::HoldPosted { .. } => self.push_hold_posted(out),
            Self::HoldVoided(r) | Self::HoldExpired(r) => {
                out.extend([
                    ("hold_id", r.hold_id.clone()),
                    ("held", r.held.to_string()),
                    ("returned", format_draws(&r.returned)),
                    ("returned_overdraft", r.returned_overdraft.to_string()),
                    ("breakage", format_draws(&r.breakage)),
                ]);
                push_context(out, &r.context);
            }
            Self::GrantExpired {
                grant_id,
                amount,
                held,
            } => out.extend([
                ("grant_id", grant_id.clone()),
                ("amount", amount.to_string()),
                ("held", held.to_string()),
            ]),
        }
    }

    /// The fields of `grant_added`; appends nothing for another kind.
    fn push_grant_added(&self, out: &mut Vec<(&'static str, String)>) {
        if let Self::GrantAdded {
            grant_id,
            amount,
            debt_repaid,
            priority,
            expires_at_ms,
            cost_basis,
            source,
            actor,
            reason,
        } = self
        {
            out.extend([
                ("grant_id", grant_id.clone()),
                ("amount", amount.to_string()),
                ("debt_repaid", debt_repaid.to_string()),
                ("priority", priority.to_string()),
                ("expires_at", expires_at_ms.unwrap_or(0).to_string()),
                ("cost_basis", cost_basis.to_string()),
                ("source", source.as_str().to_string()),
                ("actor", actor.clone()),
                ("reason", reason.clone()),
            ]);
        }
    }

    /// The fields of `hold_posted`; appends nothing for another kind.
    fn push_hold_posted(&self, out: &mut Vec<(&'static str, String)>) {
        if let Self::HoldPosted {
            hold_id,
            held,
            requested,
            posted,
            burns,
            overdraft,
            returned,
            returned_overdraft,
            breakage,
            shortfall,
            context,
            late,
        } = self
        {
            out.extend([
                ("hold_id", hold_id.clone()),
                ("held", held.to_string()),
                ("requested", requested.to_string()),
                ("posted", posted.to_string()),
                ("burns", format_draws(burns)),
                ("overdraft", overdraft.to_string()),
                ("returned", format_draws(returned)),
                ("returned_overdraft", returned_overdraft.to_string()),
                ("breakage", format_draws(breakage)),
                ("shortfall", shortfall.to_string()),
            ]);
            push_context(out, context);
            // Only late burns carry the field, so every other event reads as before.
            if *late {
                out.push(("late", "1".to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let e = Event {
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
                breakage: vec![],
                shortfall: 0,
                context: RequestContext {
                    request_id: "r1".into(),
                    route: "POST /v1/chat".into(),
                    feature: "chat".into(),
                    pricing_version: "7-3f2a9c1b04de".into(),
                },
                late: false,
            },
        };
        let fields = e.to_fields();
        let parsed = Event::from_fields(fields.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(parsed, e);
        // An event written before pricing versions were recorded still parses.
        let old: Vec<_> = fields
            .iter()
            .filter(|(k, _)| *k != "pricing_version")
            .collect();
        let parsed = Event::from_fields(old.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        let EventBody::HoldPosted { context, .. } = parsed.body else {
            panic!("kind changed: {parsed:?}");
        };
        assert_eq!(context.pricing_version, "");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = Event::from_fields([("v", "1"), ("kind", "grant_expired")]).unwrap_err();
        assert_eq!(err.field, "grant_id");
    }
}
