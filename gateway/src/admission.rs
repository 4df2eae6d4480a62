//! Admission: what the gateway decides about a request before the upstream sees it (route,
//! mode, identity, price and the reserve request), as pure functions returning typed
//! decisions.
//!
//! No I/O here: no store calls, no socket reads, no sleeping. Where a decision needs I/O
//! (an API key only the store knows, a body to read for an estimate) it says so in its
//! return value and the caller (`crate::gate`) does it; the reserve itself is
//! [`crate::hold`]'s. Tests drive every step with a config and the in-memory store.

use std::sync::Arc;

use creditgate_config::{
    CostRule, FailurePolicy, Mode, PricingConfig, RequestEstimate, RequestValues, ResolvedCost,
    ResponseUsage, Route, RouteMatch, Unmatched, UpgradePolicy, UpstreamErrorPolicy,
    normalize_path,
};
use creditgate_protocol::meter::{GATEWAY_IDEMPOTENT_PREFIX, idempotent_hold_id};
use creditgate_protocol::{DEFAULT_RETAIN_MS, IdempotencyClaim, ReserveRequest};
use pingora::http::RequestHeader;

use crate::control::ControlView;
use crate::identity::{Credential, api_key_hash, credential};
use crate::metrics::Outcome;
use crate::responses::{HEADER_IDEMPOTENCY_KEY, Refusal};
use crate::store_client::StoreFailure;

/// Route label for requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Shortest timeout for settling or voiding, in milliseconds. Settling happens after the
/// response went out, so it may wait a little longer than a reservation.
pub const MIN_SETTLE_TIMEOUT_MS: u64 = 200;

/// Where a request goes, from its method, host and path and the mode in force.
#[derive(Debug)]
pub enum RouteDecision<'c> {
    /// No route matches and the config refuses unmatched requests: answer this (404).
    NoRoute(Refusal),
    /// No route matches and the config passes unmatched requests through: proxy to the
    /// default upstream without metering.
    PassThrough,
    /// The route runs in mode `off`: proxy without identifying the caller or metering.
    Unmetered(&'c Route),
    /// The route meters in `mode` (not `off`): identify the caller next.
    Metered {
        /// The route and its feature.
        found: RouteMatch<'c>,
        /// The route's mode after the fleet's overrides, before the customer's.
        mode: Mode,
    },
}

/// Puts the request's path in its normal form ([`normalize_path`]: unreserved escapes
/// decoded, dot segments removed, repeated slashes collapsed) before anything reads it, so
/// that the route matched, the price and the path the upstream receives are the same; the
/// query goes on as received. A path servers disagree on (an encoded slash, a NUL, a
/// backslash, a `..` above the root, a target that is not UTF-8) is refused (400).
pub fn normalize_target(req: &mut RequestHeader) -> Result<(), Refusal> {
    if !req.raw_path_is_utf8() {
        let target = String::from_utf8_lossy(req.raw_path()).into_owned();
        return Err(Refusal::invalid_path(&target, "it is not UTF-8"));
    }
    let path = req.uri.path();
    let normal =
        normalize_path(path).map_err(|error| Refusal::invalid_path(path, &error.to_string()))?;
    if normal == path {
        return Ok(());
    }
    let target = match req.uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let uri = http::Uri::try_from(target)
        .map_err(|_| Refusal::invalid_path(path, "its normal form is not a valid URI"))?;
    req.set_uri(uri);
    Ok(())
}

/// Matches the request to a route and decides its mode under `control`.
pub fn decide_route<'c>(
    config: &'c PricingConfig,
    control: &ControlView,
    req: &RequestHeader,
) -> RouteDecision<'c> {
    let method = req.method.as_str();
    let path = req.uri.path();
    let Some(found) = config.match_route(method, host_of(req), path) else {
        return match config.defaults().unmatched {
            Unmatched::NotFound => RouteDecision::NoRoute(Refusal::no_route(method, path)),
            Unmatched::PassThrough => RouteDecision::PassThrough,
        };
    };
    match control.route_mode(found.route) {
        Mode::Off => RouteDecision::Unmetered(found.route),
        mode => RouteDecision::Metered { found, mode },
    }
}

/// Who is calling, as far as the request and the config tell.
#[derive(Debug, PartialEq)]
pub enum Caller {
    /// The customer is known.
    Customer(String),
    /// An API key the config does not list: ask the store for the customer of this
    /// SHA-256 (an unknown key is then [`unknown_api_key`]).
    LookUpApiKey([u8; 32]),
    /// No usable credential: answer this (401).
    Unauthorized(Refusal),
}

/// Reads the caller's credential as `[identity]` says and looks it up in the config.
pub fn identify_caller(config: &PricingConfig, req: &RequestHeader) -> Caller {
    match credential(config.identity(), req) {
        Credential::TrustedCustomer(customer) => Caller::Customer(customer.to_string()),
        Credential::Missing(message) => Caller::Unauthorized(Refusal::unauthorized(&message)),
        Credential::ApiKey(key) => {
            let hash = api_key_hash(key);
            match config.customer_for_key_hash(&hash) {
                Some(found) => Caller::Customer(found.customer.clone()),
                None => Caller::LookUpApiKey(hash),
            }
        }
    }
}

/// Refuses a request to switch protocols (any `Upgrade` header) on a route that says
/// `upgrade = "refuse"` (403), so the upstream never sees it; every other request passes.
pub fn refuse_upgrade(route: &Route, req: &RequestHeader) -> Result<(), Refusal> {
    let upgrade = req.headers.get(http::header::UPGRADE);
    match (route.upgrade, upgrade) {
        (UpgradePolicy::Refuse, Some(upgrade)) => Err(Refusal::upgrade_refused(
            &route.name,
            &String::from_utf8_lossy(upgrade.as_bytes()),
        )),
        _ => Ok(()),
    }
}

/// The answer to an API key neither the config nor the store knows (401).
pub fn unknown_api_key() -> Refusal {
    Refusal::unauthorized("unknown API key")
}

/// The answer to an API key the config does not list and the gateway has not seen in
/// Redis, while Redis cannot be asked (503, whatever the route's failure policy). Not 401:
/// the key may be valid (issued a moment ago), and the client should retry, not discard
/// it; and not proxied: failing open admits only callers the gateway knows.
pub fn unverifiable_api_key(failure: &StoreFailure) -> Refusal {
    Refusal::api_key_unverifiable(failure.kind())
}

/// What a failed store call means for the request under `policy`: the outcome to count,
/// and `Ok` to proxy without a hold (fail open) or the refusal to answer (fail closed).
pub fn store_failure_decision(
    policy: FailurePolicy,
    failure: &StoreFailure,
) -> (Outcome, Result<(), Refusal>) {
    match policy {
        FailurePolicy::FailOpen => (Outcome::FailOpen, Ok(())),
        FailurePolicy::FailClosed => (
            Outcome::FailClosed,
            Err(Refusal::store_unavailable(failure.kind())),
        ),
    }
}

/// Why a request cannot be priced: a bug or an inconsistent config, never the client's
/// fault nor the store's, so it is answered as an internal error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The route's feature has no cost (validation guarantees it has one).
    #[error("route {route:?} names feature {feature:?}, which has no cost")]
    NoCost {
        /// The route's name.
        route: String,
        /// The feature's name.
        feature: String,
    },
}

impl PricingError {
    /// The answer to the client (500).
    pub fn refusal(&self) -> Refusal {
        Refusal::internal_error("the request cannot be priced")
    }
}

/// A request's price for its customer.
#[derive(Debug)]
pub struct Price<'c> {
    /// The cost rule that applies, its credit type and overdraft.
    pub cost: ResolvedCost<'c>,
    /// The pricing version to record with the hold and answer in the response headers.
    pub pricing_version: String,
}

/// How much to reserve for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveAmount<'c> {
    /// Known from the request line and headers.
    Known(u64),
    /// To estimate from the request body (`estimate_from`): read it, at most
    /// `from.max_body_bytes`, reserving `max` when that is not possible (or refusing, as
    /// `from.unreadable` says).
    FromBody {
        /// Where in the body the estimate is.
        from: &'c RequestEstimate,
        /// The rule's fixed estimate (unused by a body estimate, which falls back to `max`).
        estimate: u64,
        /// The most the request is ever charged.
        max: u64,
    },
}

/// Prices the matched route for `customer`: the customer's, cohort's, plan's or
/// feature's cost rule, in that order, and the pricing version it comes from.
pub fn price_request<'c>(
    config: &'c PricingConfig,
    found: &RouteMatch<'c>,
    customer: &str,
) -> Result<Price<'c>, PricingError> {
    let cost = config
        .cost_for(&found.feature.name, Some(customer))
        .ok_or_else(|| PricingError::NoCost {
            route: found.route.name.clone(),
            feature: found.feature.name.clone(),
        })?;
    let pricing_version = config.pricing_version_of(&cost);
    Ok(Price {
        cost,
        pricing_version,
    })
}

impl<'c> Price<'c> {
    /// The credit type charged.
    pub fn credit_type(&self) -> &'c str {
        &self.cost.credit_type.name
    }

    /// How much to reserve for `req`; a `per_unit` value that is not a whole number or is
    /// given twice with different values is refused (400) naming the header or parameter.
    pub fn reserve_amount(&self, req: &RequestHeader) -> Result<ReserveAmount<'c>, Refusal> {
        Ok(match self.cost.rule {
            CostRule::FromResponse {
                estimate,
                max,
                estimate_from: Some(from),
                ..
            } => ReserveAmount::FromBody {
                from,
                estimate: *estimate,
                max: *max,
            },
            rule => ReserveAmount::Known(
                rule.checked_reserve_amount(&RequestView(req))
                    .map_err(|error| Refusal::invalid_units(&error))?,
            ),
        })
    }

    /// For a route priced from the response: how to read the usage, and the most the
    /// request is ever charged.
    pub fn response_cost(&self) -> Option<(Arc<ResponseUsage>, u64)> {
        match self.cost.rule {
            CostRule::FromResponse { max, usage, .. } => Some((usage.clone(), *max)),
            _ => None,
        }
    }
}

/// Everything needed to reserve credits for one request, and to settle or void the hold
/// afterwards: decided by admission, carried out by [`crate::hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservePlan {
    /// The customer charged.
    pub customer: String,
    /// The hold id of the first attempt; later attempts of an idempotent request add
    /// `.2`, `.3`, ….
    pub base_hold_id: String,
    /// Whether the client sent an `Idempotency-Key` (and `base_hold_id` derives from it).
    pub idempotent: bool,
    /// The `Idempotency-Key`'s record and the route's replay allowance; its fingerprint is
    /// filled in once the body is known (`crate::idempotency::bind_request`). `None`
    /// without a key.
    pub idempotency: Option<IdempotencyClaim>,
    /// The credit type charged.
    pub credit_type: String,
    /// Credits to hold, in the credit type's smallest unit (> 0).
    pub amount: u64,
    /// How far below zero the customer's balance may go, in the smallest unit.
    pub overdraft_limit: u64,
    /// Shadow mode: place the hold even without the credits, and proxy.
    pub shadow: bool,
    /// How long the hold lives unsettled before it expires, in milliseconds.
    pub hold_ttl_ms: u64,
    /// The gateway's id of the request.
    pub request_id: String,
    /// The route's name.
    pub route: String,
    /// The feature charged.
    pub feature: String,
    /// The pricing version recorded with the hold.
    pub pricing_version: String,
    /// Timeout of the reserve call, in milliseconds.
    pub store_timeout_ms: u64,
    /// Timeout of each settle or void call, in milliseconds.
    pub settle_timeout_ms: u64,
    /// What the route does when the store fails.
    pub failure_policy: FailurePolicy,
    /// What the route does with the hold when the upstream answers 5xx.
    pub on_upstream_error: UpstreamErrorPolicy,
    /// Where a customer without credits can buy more, for the 402 answer.
    pub top_up_url: Option<String>,
}

/// Plans the reservation of `amount` credits (> 0) at `price` for `customer` in `mode`.
#[allow(clippy::too_many_arguments)]
pub fn plan_reserve(
    config: &PricingConfig,
    found: &RouteMatch<'_>,
    price: &Price<'_>,
    customer: &str,
    mode: Mode,
    amount: u64,
    req: &RequestHeader,
    request_id: &str,
) -> ReservePlan {
    let route = found.route;
    let idempotency_key = req
        .headers
        .get(HEADER_IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok());
    ReservePlan {
        customer: customer.to_string(),
        base_hold_id: base_hold_id(customer, idempotency_key, request_id),
        idempotent: idempotency_key.is_some(),
        idempotency: idempotency_key.map(|key| IdempotencyClaim {
            record_id: idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, customer, key),
            fingerprint: String::new(),
            supersedes: None,
            replay_max: route.idempotency.replays,
            replay_window_ms: route.idempotency.window_ms,
        }),
        credit_type: price.credit_type().to_string(),
        amount,
        overdraft_limit: price.cost.overdraft,
        shadow: mode == Mode::Shadow,
        hold_ttl_ms: config.defaults().hold_ttl_ms,
        request_id: request_id.to_string(),
        route: route.name.clone(),
        feature: found.feature.name.clone(),
        pricing_version: price.pricing_version.clone(),
        store_timeout_ms: route.store_timeout_ms,
        settle_timeout_ms: route.store_timeout_ms.max(MIN_SETTLE_TIMEOUT_MS),
        failure_policy: route.failure_policy,
        on_upstream_error: route.on_upstream_error,
        top_up_url: config.billing().top_up_url.clone(),
    }
}

impl ReservePlan {
    /// The hold id of attempt `attempt` (from 1).
    pub fn hold_id(&self, attempt: u32) -> String {
        if attempt == 1 {
            self.base_hold_id.clone()
        } else {
            format!("{}.{attempt}", self.base_hold_id)
        }
    }

    /// The reserve request of attempt `attempt` (from 1).
    pub fn reserve_request(&self, attempt: u32) -> ReserveRequest {
        ReserveRequest {
            customer: self.customer.clone(),
            hold_id: self.hold_id(attempt),
            credit_type: self.credit_type.clone(),
            amount: self.amount,
            ttl_ms: self.hold_ttl_ms,
            overdraft_limit: self.overdraft_limit,
            force: self.shadow,
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            feature: self.feature.clone(),
            retain_ms: DEFAULT_RETAIN_MS,
            pricing_version: self.pricing_version.clone(),
            occurred_at_ms: None,
        }
    }
}

/// The hold id for a request: from its request id, after the customer's
/// `Idempotency-Key`'s record id when it has one. Never the record id alone: a key used
/// again once its record is gone is a new request, and its hold must not reuse an id the
/// ledger has seen (a retry finds the first attempt's hold through the record).
fn base_hold_id(customer: &str, idempotency_key: Option<&str>, request_id: &str) -> String {
    match idempotency_key {
        Some(key) => format!(
            "{}.{request_id}",
            idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, customer, key)
        ),
        None => format!("h-{request_id}"),
    }
}

/// The request as cost rules see it.
struct RequestView<'r>(&'r RequestHeader);

impl RequestValues for RequestView<'_> {
    fn header_values(&self, name: &str) -> Vec<Option<&str>> {
        self.0
            .headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().ok())
            .collect()
    }

    fn raw_query(&self) -> Option<&str> {
        self.0.uri.query()
    }
}

/// The request's host, from the URI or the `Host` header, without a port.
fn host_of(req: &RequestHeader) -> Option<&str> {
    let host = req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })?;
    // Strip a port, but not the colons of a bracketed IPv6 literal.
    Some(match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use creditgate_config::Feature;
    use creditgate_protocol::{
        CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, MemoryStore, ReserveOutcome,
    };

    use super::*;
    use crate::control::FleetControl;

    const CONFIG: &str = r#"
[defaults]
mode = "enforce"
unmatched = "not_found"

[credit_types.api]
scale = 0

[upstreams.default]
address = "127.0.0.1:8080"

[features.search]
credit_type = "api"
cost = { kind = "fixed", amount = 3 }

[features.report]
credit_type = "api"
cost = { kind = "per_unit", query = "pages", rate = 5, max = 100, default_units = 1 }

[[routes]]
method = "GET"
path = "/search"
feature = "search"

[[routes]]
method = "POST"
path = "/reports/{id}"
feature = "report"

[[api_keys]]
customer = "demo"
sha256 = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"

[billing]
top_up_url = "https://example.com/billing"
"#;

    fn config() -> PricingConfig {
        PricingConfig::from_toml_str(CONFIG, "p.toml").expect("valid")
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        req
    }

    fn metered<'c>(config: &'c PricingConfig, req: &RequestHeader) -> (RouteMatch<'c>, Mode) {
        match decide_route(config, &FleetControl::new(false).view(), req) {
            RouteDecision::Metered { found, mode } => (found, mode),
            other => panic!("not metered: {other:?}"),
        }
    }

    async fn granted_store(amount: u64) -> MemoryStore {
        let store = MemoryStore::new(Keyspace::new("cg", 4));
        let outcome = store
            .grant(&GrantRequest {
                customer: "demo".into(),
                grant_id: "g1".into(),
                credit_type: "api".into(),
                amount,
                priority: 0,
                expires_at_ms: None,
                cost_basis: 0,
                source: GrantSource::Adjustment,
                actor: "test".into(),
                reason: "test".into(),
            })
            .await
            .unwrap();
        assert!(
            matches!(outcome, GrantOutcome::Granted { .. }),
            "{outcome:?}"
        );
        store
    }

    #[test]
    fn idempotent_hold_ids_are_per_customer_and_placement_and_valid_ids() {
        let request_id = "0123456789abcdef0123456789abcdef";
        let a = base_hold_id("acme", Some("k1"), request_id);
        assert!(a.starts_with(&idempotent_hold_id("idem", "acme", "k1")));
        assert_ne!(
            a,
            base_hold_id("acme", Some("k1"), "r2"),
            "a new placement, a new hold id"
        );
        assert_ne!(
            a,
            base_hold_id("globex", Some("k1"), request_id),
            "keys are per customer"
        );
        assert!(creditgate_protocol::keys::validate_id("hold_id", &format!("{a}.5")).is_ok());
        assert_eq!(base_hold_id("acme", None, "r1"), "h-r1");
    }

    #[test]
    fn host_drops_the_port() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "api.example.com:8443").unwrap();
        assert_eq!(host_of(&req), Some("api.example.com"));
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "[::1]").unwrap();
        assert_eq!(host_of(&req), Some("[::1]"));
    }

    #[test]
    fn targets_are_normalised_keeping_the_query_or_refused_naming_the_path() {
        let config = config();
        for target in [
            "/reports/./7?pages=4",
            "/r%65ports/7?pages=4",
            "/x/../reports//7?pages=4",
        ] {
            let mut req = request("POST", target, &[]);
            normalize_target(&mut req).expect(target);
            assert_eq!(req.uri.to_string(), "/reports/7?pages=4", "{target}");
            assert_eq!(req.raw_path(), b"/reports/7?pages=4", "{target}");
            let (found, _) = metered(&config, &req);
            assert_eq!(found.route.name, "POST /reports/{id}", "{target}");
        }
        let mut req = request("GET", "/search", &[]);
        normalize_target(&mut req).unwrap();
        assert_eq!(req.uri.to_string(), "/search");
        for target in ["/reports%2F7", "/../search", "/search%00", "/a\\b"] {
            let mut req = request("GET", target, &[]);
            let refusal = normalize_target(&mut req).expect_err(target);
            assert_eq!(refusal.status, 400, "{target}");
            assert_eq!(refusal.body["error"], "invalid_path", "{target}");
            assert_eq!(refusal.body["path"], target, "{target}");
        }
    }

    #[test]
    fn unit_counts_read_as_upstreams_read_them_or_refused() {
        let config = config();
        let req = request("POST", "/reports/7", &[]);
        let (found, _) = metered(&config, &req);
        let price = price_request(&config, &found, "demo").unwrap();
        for query in [
            "pages=%31%30",
            "%70ages=10",
            "pages=+10",
            "pages=10&pages=10",
        ] {
            let req = request("POST", &format!("/reports/7?{query}"), &[]);
            assert_eq!(
                price.reserve_amount(&req),
                Ok(ReserveAmount::Known(50)),
                "{query}"
            );
        }
        for query in ["pages=1&pages=10", "pages=ten", "pages=%2B10", "pages=-1"] {
            let req = request("POST", &format!("/reports/7?{query}"), &[]);
            let refusal = price.reserve_amount(&req).expect_err(query);
            assert_eq!(refusal.status, 400, "{query}");
            assert_eq!(refusal.body["error"], "invalid_units", "{query}");
            assert_eq!(refusal.body["parameter"], "pages", "{query}");
        }
        let req = request("POST", "/reports/7", &[]);
        assert_eq!(price.reserve_amount(&req), Ok(ReserveAmount::Known(5)));
    }

    #[test]
    fn unmatched_requests_are_refused_and_forced_off_routes_unmetered() {
        let config = config();
        let control = FleetControl::new(false);
        let req = request("GET", "/nowhere", &[]);
        match decide_route(&config, &control.view(), &req) {
            RouteDecision::NoRoute(refusal) => assert_eq!(refusal.status, 404),
            other => panic!("{other:?}"),
        }
        let req = request("GET", "/search", &[]);
        let (found, mode) = metered(&config, &req);
        assert_eq!(
            (found.route.name.as_str(), mode),
            ("GET /search", Mode::Enforce)
        );
        let off = FleetControl::new(true);
        assert!(matches!(
            decide_route(&config, &off.view(), &req),
            RouteDecision::Unmetered(route) if route.name == "GET /search"
        ));
    }

    #[test]
    fn callers_are_found_in_the_config_or_looked_up_or_refused() {
        let config = config();
        let known = request("GET", "/search", &[("authorization", "Bearer demo-key")]);
        assert_eq!(
            identify_caller(&config, &known),
            Caller::Customer("demo".into())
        );
        let other = request("GET", "/search", &[("authorization", "Bearer other")]);
        assert_eq!(
            identify_caller(&config, &other),
            Caller::LookUpApiKey(api_key_hash("other"))
        );
        match identify_caller(&config, &request("GET", "/search", &[])) {
            Caller::Unauthorized(refusal) => assert_eq!(refusal.status, 401),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_route_whose_feature_has_no_cost_is_an_internal_error() {
        let config = config();
        let req = request("GET", "/search", &[]);
        let (found, _) = metered(&config, &req);
        let unpriced = Feature {
            name: "unpriced".into(),
            ..found.feature.clone()
        };
        let found = RouteMatch {
            feature: &unpriced,
            ..found
        };
        let error = price_request(&config, &found, "demo").expect_err("no cost");
        assert_eq!(
            error,
            PricingError::NoCost {
                route: "GET /search".into(),
                feature: "unpriced".into()
            }
        );
        // Not the store's fault: a 500, not the 503 that says "retry later".
        let refusal = error.refusal();
        assert_eq!(refusal.status, 500);
        assert_eq!(refusal.body["error"], "internal_error");
    }

    #[test]
    fn plans_carry_the_price_and_the_idempotency_key() {
        let config = config();
        let req = request(
            "POST",
            "/reports/7?pages=4",
            &[
                ("idempotency-key", "k1"),
                ("authorization", "Bearer demo-key"),
            ],
        );
        let (found, mode) = metered(&config, &req);
        let price = price_request(&config, &found, "demo").unwrap();
        assert_eq!(price.credit_type(), "api");
        assert_eq!(price.reserve_amount(&req), Ok(ReserveAmount::Known(20)));
        assert!(price.response_cost().is_none());
        let plan = plan_reserve(&config, &found, &price, "demo", mode, 20, &req, "r1");
        assert!(plan.idempotent && !plan.shadow);
        let record_id = idempotent_hold_id("idem", "demo", "k1");
        assert_eq!(plan.base_hold_id, format!("{record_id}.r1"));
        let claim = plan.idempotency.as_ref().expect("keyed");
        assert_eq!(claim.record_id, record_id);
        assert_eq!((claim.replay_max, claim.replay_window_ms), (3, 600_000));
        assert_eq!(plan.hold_id(3), format!("{}.3", plan.base_hold_id));
        assert_eq!(
            plan.top_up_url.as_deref(),
            Some("https://example.com/billing")
        );
        let request = plan.reserve_request(1);
        assert_eq!(
            (request.amount, request.feature.as_str(), request.force),
            (20, "report", false)
        );
        assert_eq!(request.pricing_version, price.pricing_version);
    }

    #[tokio::test]
    async fn an_admitted_request_reserves_in_the_in_memory_store() {
        let config = config();
        let store = granted_store(5).await;
        let req = request("GET", "/search", &[("authorization", "Bearer demo-key")]);
        let (found, mode) = metered(&config, &req);
        let Caller::Customer(customer) = identify_caller(&config, &req) else {
            panic!("demo-key is in the config");
        };
        let price = price_request(&config, &found, &customer).unwrap();
        let Ok(ReserveAmount::Known(amount)) = price.reserve_amount(&req) else {
            panic!("a fixed cost is known up front");
        };
        let plan = plan_reserve(&config, &found, &price, &customer, mode, amount, &req, "r1");
        match store.reserve(&plan.reserve_request(1)).await.unwrap() {
            ReserveOutcome::Placed {
                available_after, ..
            } => assert_eq!(available_after, 2),
            other => panic!("{other:?}"),
        }
        // The second request finds 2 of the 3 credits it needs.
        let plan = plan_reserve(&config, &found, &price, &customer, mode, amount, &req, "r2");
        assert!(matches!(
            store.reserve(&plan.reserve_request(1)).await.unwrap(),
            ReserveOutcome::Insufficient { available: 2, .. }
        ));
    }
}
