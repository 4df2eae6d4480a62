//! The validated, internal pricing model: what the gateway and sidecar read after a file
//! passed validation.
//!
//! These types are not the file format (see `schema`); they hold resolved values, so no
//! reader has to apply a default or look a name up twice.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::cost::CostRule;

/// How the gateway treats a route's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Pass through without touching the store: no metering, no blocking.
    Off,
    /// Meter every request and record would-be blocks, but never block.
    Shadow,
    /// Meter and answer `402 Payment Required` when credits are insufficient.
    Enforce,
}

impl Mode {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shadow => "shadow",
            Mode::Enforce => "enforce",
        }
    }
}

/// The default mode: `enforce`, because a pricing config is meant to price; rolling out in
/// `shadow` first is an explicit choice written in the file.
pub const DEFAULT_MODE: Mode = Mode::Enforce;

/// What the gateway does when the store (Redis) fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Admit the request; its usage is spooled and metered later.
    FailOpen,
    /// Refuse the request (503) rather than serve it unmetered.
    FailClosed,
}

impl FailurePolicy {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
        }
    }
}

/// The default store failure policy: `fail_closed`, because failing open gives away paid
/// usage; routes where availability matters more say `fail_open` explicitly.
pub const DEFAULT_FAILURE_POLICY: FailurePolicy = FailurePolicy::FailClosed;

/// What the gateway does with a request that no route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Forward it, unmetered, to the upstream named `default` (which must then exist).
    PassThrough,
    /// Answer `404 Not Found` without contacting any upstream.
    NotFound,
}

impl Unmatched {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::PassThrough => "pass_through",
            Unmatched::NotFound => "not_found",
        }
    }
}

/// What the gateway does with a request no route matches: `not_found`, because passing
/// unknown paths through would let a new upstream endpoint be used for free.
pub const DEFAULT_UNMATCHED: Unmatched = Unmatched::NotFound;

/// What the gateway does with a request's hold when the upstream failed: it could not be
/// reached, or it answered a 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamErrorPolicy {
    /// Release the hold: the customer pays nothing for a failed call.
    Void,
    /// Settle the hold anyway, for upstreams whose failures still cost (a generation that ran
    /// before the error).
    Settle,
}

impl UpstreamErrorPolicy {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorPolicy::Void => "void",
            UpstreamErrorPolicy::Settle => "settle",
        }
    }
}

/// What a route does with the hold when its upstream failed (connect error or 5xx): `void`,
/// because a customer should not pay for a call that did not work; upstreams whose failures
/// still cost money say `settle` on their routes.
pub const DEFAULT_UPSTREAM_ERROR_POLICY: UpstreamErrorPolicy = UpstreamErrorPolicy::Void;

/// What a route does with a request that asks to switch protocols (`Upgrade: websocket`,
/// HTTP/1.1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradePolicy {
    /// Forward it; a `101 Switching Protocols` answer settles the route's cost once, when
    /// the upgraded connection closes (a `from_response` route: its usage header or
    /// `fallback`, since usage is not read from a tunnel).
    Charge,
    /// Answer `403 upgrade_refused` before the upstream sees the request.
    Refuse,
}

impl UpgradePolicy {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradePolicy::Charge => "charge",
            UpgradePolicy::Refuse => "refuse",
        }
    }
}

/// What a route does with an upgrade request: `charge`, because an upgraded connection is
/// upstream work like any other answer (it used to be voided, which made every WebSocket
/// free); routes whose tunnels cost more than one request's price say `refuse`.
pub const DEFAULT_UPGRADE_POLICY: UpgradePolicy = UpgradePolicy::Charge;

/// How an enforcing route's requests are held against the balance (`enforcement = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// One hold in the store per request, placed before the upstream sees it.
    Hold,
    /// Busy customers are admitted from a block of credits the gateway holds in the store
    /// (one hold, a share of the balance); each request still reaches the ledger as its own
    /// burn. Near a zero balance it falls back to one hold per request.
    Lease,
}

impl Enforcement {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Hold => "hold",
            Enforcement::Lease => "lease",
        }
    }
}

/// How a route holds credits: `hold`, one hold per request (exact, one store round trip on
/// the request path); `lease` is chosen per route where speed matters more.
pub const DEFAULT_ENFORCEMENT: Enforcement = Enforcement::Hold;

/// The `[defaults]` table with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The mode of routes that do not set one.
    pub mode: Mode,
    /// The store failure policy of routes that do not set one.
    pub failure_policy: FailurePolicy,
    /// The store timeout of routes that do not set one, in milliseconds.
    pub store_timeout_ms: u64,
    /// What to do with a request no route matches.
    pub unmatched: Unmatched,
    /// How long a hold lives before the sweeper may expire it, in milliseconds.
    pub hold_ttl_ms: u64,
}

/// A named balance, such as `api` or `ai`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditType {
    /// The identifier used in Redis keys and the ledger.
    pub name: String,
    /// The name shown to customers, e.g. `AI credits`.
    pub display_name: String,
    /// Decimal places: one displayed credit is `10^scale` stored units (0..=12).
    pub scale: u32,
}

impl CreditType {
    /// How many stored units make one displayed credit (`10^scale`).
    pub fn units_per_credit(&self) -> u64 {
        10u64.pow(self.scale)
    }
}

/// A priced feature: what a route sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// The identifier used in logs, metrics, the ledger and cost overrides.
    pub name: String,
    /// The credit type this feature burns.
    pub credit_type: String,
    /// The default cost, before plan and customer overrides.
    pub cost: CostRule,
    /// Free text for people reading the config.
    pub description: Option<String>,
}

/// How far below zero a balance may go, per credit type, in each type's smallest unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overdraft {
    /// The overdraft of credit types not listed in `per_credit_type`.
    pub default: u64,
    /// Overdrafts of specific credit types.
    pub per_credit_type: BTreeMap<String, u64>,
}

impl Overdraft {
    /// The overdraft allowed for `credit_type`, in its smallest unit.
    pub fn for_credit_type(&self, credit_type: &str) -> u64 {
        self.per_credit_type
            .get(credit_type)
            .copied()
            .unwrap_or(self.default)
    }
}

/// A pricing plan, i.e. one version of a price list (`pro_2025`, `pro_2026`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The identifier customers refer to.
    pub name: String,
    /// Free text for people reading the config.
    pub description: Option<String>,
    /// How far below zero balances of customers on this plan may go.
    pub overdraft: Overdraft,
    /// Per-feature cost overrides (feature name to rule).
    pub costs: BTreeMap<String, CostRule>,
}

/// A customer with a plan and, optionally, negotiated prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The customer id (as used in Redis keys and the ledger).
    pub id: String,
    /// The plan the customer is on.
    pub plan: String,
    /// Replaces the plan's overdraft when set.
    pub overdraft: Option<Overdraft>,
    /// Per-feature cost overrides that win over the plan's.
    pub costs: BTreeMap<String, CostRule>,
}

/// A cohort (`[cohorts.NAME]`): customers and whole plans pinned to a price list that no
/// longer applies to everyone, so they keep the prices they signed up for (grandfathered)
/// while new customers get the file's current prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cohort {
    /// The identifier, recorded with the pricing version of every hold it priced.
    pub name: String,
    /// Free text for people reading the config.
    pub description: Option<String>,
    /// The pinned prices: per-feature rules that win over plan and feature prices (a
    /// customer's own `costs` still win). Features not listed are priced as usual.
    pub costs: BTreeMap<String, CostRule>,
    /// Customers pinned by id (whether or not they are listed under `[customers]`).
    pub customers: Vec<String>,
    /// Plans whose every customer is pinned.
    pub plans: Vec<String>,
}

/// An upstream the gateway forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The identifier routes refer to.
    pub name: String,
    /// `host:port` (IPv6 hosts in brackets), validated but not resolved.
    pub address: String,
    /// Whether to connect with TLS.
    pub tls: bool,
    /// The TLS server name; when `tls` is set and the file gives none, the address's host
    /// name (left empty for IP addresses).
    pub sni: Option<String>,
    /// Connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout between two reads from the upstream, in milliseconds.
    pub read_timeout_ms: u64,
}

/// How the gateway identifies the customer of a request (`[identity]`, defaults applied).
///
/// Header names are lower case. The gateway reads the customer id from
/// `trusted_customer_header` when that is set and present; otherwise it takes the API key
/// from `header` (see [`Identity::key_in`]) and looks its SHA-256 up. Before proxying it
/// removes every header in `strip_headers` and sets `customer_header` to the identified
/// customer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The request header carrying the API key, e.g. `authorization`.
    pub header: String,
    /// The prefix before the key (`Bearer`), compared case-insensitively and followed by one
    /// space; `None` when the header carries the key alone.
    pub scheme: Option<String>,
    /// A header set by an authenticating layer in front of the gateway whose value is taken
    /// as the customer id without any key lookup. `None` (the default): never trusted.
    pub trusted_customer_header: Option<String>,
    /// The header the gateway sets towards the upstream with the identified customer id.
    pub customer_header: String,
    /// Client-supplied identity headers removed before proxying, in file order without
    /// duplicates; always includes `customer_header`, so a client can never send it.
    pub strip_headers: Vec<String>,
}

impl Identity {
    /// The API key in a value of the `header` header: the whole value without a scheme, else
    /// what follows `scheme` (any case) and one space. `None` when the scheme does not match
    /// or the key is empty. Does not allocate, so the gateway may call it per request.
    ///
    /// ```
    /// # let config = creditgate_config::PricingConfig::from_toml_str("", "p.toml").unwrap();
    /// let identity = config.identity(); // the default: `authorization: Bearer <key>`
    /// assert_eq!(identity.key_in("bearer demo-key"), Some("demo-key"));
    /// assert_eq!(identity.key_in("Basic ZGVtbw=="), None);
    /// assert_eq!(identity.key_in("demo-key"), None);
    /// ```
    pub fn key_in<'v>(&self, value: &'v str) -> Option<&'v str> {
        let key = match &self.scheme {
            None => value,
            Some(scheme) => {
                let prefix = value.get(..scheme.len())?;
                if !prefix.eq_ignore_ascii_case(scheme) {
                    return None;
                }
                value[scheme.len()..].strip_prefix(' ')?
            }
        };
        (!key.is_empty()).then_some(key)
    }
}

/// One API key of `[[api_keys]]`, found by the SHA-256 of its plaintext
/// ([`crate::PricingConfig::customer_for_key_hash`]). The plaintext is never in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The customer the key identifies; customers not under `[customers]` use
    /// `default_plan`.
    pub customer: String,
    /// A label for logs (never the key itself).
    pub name: Option<String>,
}

/// `[billing]`: what the gateway tells a customer who ran out of credits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Billing {
    /// Where to buy credits (`http://` or `https://`), included in the 402 body.
    pub top_up_url: Option<String>,
}

/// Credits the gateway grants at start-up when it runs on its embedded in-process store (the
/// quickstart, no Redis). Ignored with Redis: production grants come from the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedGrant {
    /// The grant's unique id; applying it twice grants once.
    pub grant_id: String,
    /// The customer receiving the credits.
    pub customer: String,
    /// The credit type granted (defined under `[credit_types]`).
    pub credit_type: String,
    /// The amount, in the credit type's smallest unit (1 to `MAX_AMOUNT`).
    pub amount: u64,
    /// Burn priority: lower values burn first.
    pub priority: u32,
    /// Seconds after start-up when the unused rest expires; `None`: never.
    pub expires_in_s: Option<u64>,
}

/// The HTTP method a route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `*`: any method, including ones not listed here.
    Any,
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `PATCH`.
    Patch,
    /// `OPTIONS`.
    Options,
    /// `CONNECT`.
    Connect,
    /// `TRACE`.
    Trace,
}

impl Method {
    /// Every concrete method with its name, in the order listed in error messages.
    const NAMED: [(Method, &'static str); 9] = [
        (Method::Get, "GET"),
        (Method::Head, "HEAD"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Patch, "PATCH"),
        (Method::Options, "OPTIONS"),
        (Method::Connect, "CONNECT"),
        (Method::Trace, "TRACE"),
    ];

    /// Parses a method name case-insensitively, or `*` for [`Method::Any`]. Returns `None`
    /// for anything else. Does not allocate, so the gateway may call it per request.
    pub fn parse(name: &str) -> Option<Method> {
        if name == "*" {
            return Some(Method::Any);
        }
        Self::NAMED
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name))
            .map(|(method, _)| *method)
    }

    /// The upper-case name, or `*` for [`Method::Any`].
    pub fn as_str(self) -> &'static str {
        Self::NAMED
            .iter()
            .find(|(method, _)| *method == self)
            .map_or("*", |(_, name)| name)
    }

    /// The accepted names, for error messages.
    pub(crate) fn known_names() -> String {
        let mut names: Vec<&str> = Self::NAMED.iter().map(|(_, name)| *name).collect();
        names.push("*");
        names.join(", ")
    }

    /// Whether a route with this method matches a request whose parsed method is
    /// `request` (`None` for a method not in this list, matched only by `*`). A `GET` route
    /// also matches `HEAD`: servers answer a `HEAD` by running the `GET` handler, so the
    /// upstream does the same work and the request is priced as that `GET` (a `HEAD`
    /// route listed before it still takes `HEAD` requests).
    pub fn matches(self, request: Option<Method>) -> bool {
        self == Method::Any
            || Some(self) == request
            || (self == Method::Get && request == Some(Method::Head))
    }
}
