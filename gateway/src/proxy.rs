//! The gateway's one Pingora `ProxyHttp` implementation: identify, match, decide, reserve
//! in `request_filter`; in `logging`, which runs for every request, hand the hold to a
//! background task that settles or voids it (retrying on store errors), so the connection
//! is free for its next request while the store call runs.
//!
//! Routes that estimate from the request (`estimate_from`) read a bounded request body in
//! `request_filter` before reserving; Pingora's retry buffer forwards it unchanged.
//! Routes priced from the response hand each body chunk to a [`ResponseInspector`]
//! (`crate::usage`) in `response_body_filter`; `logging` settles what it read.
//!
//! Per-request state lives in [`RequestCtx`]; shared state (the swappable pricing config,
//! the store client, metrics) in [`CreditGate`]. A request is priced by the config version
//! it started with, even if a new one is swapped in meanwhile.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use creditgate_config::{
    CostRule, DEFAULT_UPSTREAM, Mode, PricingConfig, RequestValues, Route, Unmatched,
    UpstreamErrorPolicy, query_param,
};
use creditgate_protocol::meter::{GATEWAY_IDEMPOTENT_PREFIX, idempotent_hold_id};
use creditgate_protocol::{
    DEFAULT_RETAIN_MS, HoldRef, HoldState, ReserveOutcome, ReserveRequest, ResolveOutcome,
    SettleRequest,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tracing::{debug, warn};

use crate::control::FleetControl;
use crate::identity::{Credential, api_key_hash, credential};
use crate::metrics::{Metrics, Outcome};
use crate::responses::{
    HEADER_CHARGED, HEADER_CREDIT_TYPE, HEADER_IDEMPOTENCY_KEY, HEADER_PRICING_VERSION,
    HEADER_REMAINING, HEADER_REQUEST_ID, Refusal,
};
use crate::store_client::{StoreClient, StoreFailure};
use crate::usage::ResponseInspector;
use crate::usage::request::{Estimate, EstimateOutcome, estimate_from_body, estimate_unread};

/// How many holds one `Idempotency-Key` may use: a retry after a voided or expired attempt
/// is charged anew under the next hold id, up to this many attempts.
pub const MAX_IDEMPOTENT_ATTEMPTS: u32 = 5;

/// How many times a retry finding its first attempt's hold still pending waits for it to
/// settle before answering 409, and how long each wait is, in milliseconds: settles run
/// right after the response, so a client retrying at once usually finds it done in a few.
pub const IDEMPOTENT_PENDING_WAITS: u32 = 4;
/// See [`IDEMPOTENT_PENDING_WAITS`].
pub const IDEMPOTENT_PENDING_WAIT_MS: u64 = 25;

/// Shortest timeout for settling or voiding, in milliseconds. Settling happens after the
/// response went out, so it may wait a little longer than a reservation.
pub const MIN_SETTLE_TIMEOUT_MS: u64 = 200;

/// Delays before retrying a settle or void that failed, in milliseconds. After the last one
/// the hold is left to expire at its deadline, which returns its credits: a store outage
/// can under-charge, never double-charge.
pub const SETTLE_RETRY_DELAYS_MS: [u64; 4] = [100, 500, 2_000, 5_000];

/// Route label for requests that matched no route.
const UNMATCHED_ROUTE: &str = "(unmatched)";

/// The credit-enforcing proxy.
pub struct CreditGate {
    config: Arc<ArcSwap<PricingConfig>>,
    store: Arc<StoreClient>,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    control: Arc<FleetControl>,
}

/// Requests (and background settles) not finished yet, so a graceful shutdown can end as
/// soon as the last one has settled.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    /// How many are in flight.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn enter(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn leave(&self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A hold placed for this request, to settle or void in `logging`.
#[derive(Debug, Clone)]
pub struct PlacedHold {
    hold_id: String,
    customer: String,
    credit_type: String,
    amount: u64,
    overdraft_limit: u64,
    settle_timeout_ms: u64,
    on_upstream_error: UpstreamErrorPolicy,
    /// The amount to settle when it differs from `amount`: read from the response for
    /// routes priced from it. `None` settles `amount`.
    actual: Option<u64>,
    /// Set when the reserve timed out: the hold may or may not exist (a late run of the
    /// script places it). Kept so that settling can place it if it never arrived: the
    /// request is then metered exactly once, by hold id.
    tentative: Option<ReserveRequest>,
}

/// What the response headers say about the charge.
#[derive(Debug, Clone)]
pub struct Charge {
    credit_type: String,
    charged: u64,
    remaining: Option<i64>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    request_id: String,
    config: Option<Arc<PricingConfig>>,
    route: String,
    upstream: Option<String>,
    customer: Option<String>,
    hold: Option<PlacedHold>,
    charge: Option<Charge>,
    upstream_status: Option<u16>,
    counted: bool,
    pricing_version: Option<String>,
    /// The route's response-usage rule and `max`, until the response headers arrive.
    response_cost: Option<(Arc<creditgate_config::ResponseUsage>, u64)>,
    /// Reads the actual cost of a response-priced request as its body passes.
    inspector: Option<ResponseInspector>,
    /// The gateway read the body and answered `Expect: 100-continue` itself, so the
    /// upstream request goes without `Expect` (the body follows at once).
    body_read: bool,
}

/// The request as cost rules see it.
struct RequestView<'r>(&'r RequestHeader);

impl RequestValues for RequestView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.0.uri.query().and_then(|q| query_param(q, name))
    }
}

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

/// The hold id for a request: random, or derived from the customer's `Idempotency-Key` so
/// that a retry finds the first attempt's hold.
fn base_hold_id(customer: &str, idempotency_key: Option<&str>, request_id: &str) -> String {
    match idempotency_key {
        Some(key) => idempotent_hold_id(GATEWAY_IDEMPOTENT_PREFIX, customer, key),
        None => format!("h-{request_id}"),
    }
}

impl CreditGate {
    /// A gateway on this config, store and metrics.
    pub fn new(
        config: Arc<ArcSwap<PricingConfig>>,
        store: Arc<StoreClient>,
        metrics: Arc<Metrics>,
        in_flight: InFlight,
    ) -> Self {
        Self {
            config,
            store,
            metrics,
            in_flight,
            control: Arc::new(FleetControl::new(false)),
        }
    }

    /// This gateway with the fleet's control state (mode overrides, kill switch).
    pub fn with_control(mut self, control: Arc<FleetControl>) -> Self {
        self.control = control;
        self
    }

    /// The store failed: the route's failure policy decides.
    fn store_failed(&self, route: &Route, op: &str, failure: &StoreFailure) -> Result<(), Refusal> {
        warn!(route = %route.name, op, error = %failure, policy = route.failure_policy.as_str(), "credit store call failed");
        match route.failure_policy {
            creditgate_config::FailurePolicy::FailOpen => {
                self.metrics.decision(&route.name, Outcome::FailOpen);
                Ok(())
            }
            creditgate_config::FailurePolicy::FailClosed => {
                self.metrics.decision(&route.name, Outcome::FailClosed);
                Err(Refusal::store_unavailable(failure.kind()))
            }
        }
    }

    /// Finds the customer; `Ok(None)` means the store failed and the route fails open.
    async fn identify(
        &self,
        config: &PricingConfig,
        req: &RequestHeader,
        route: &Route,
    ) -> Result<Option<String>, Refusal> {
        let unauthorized = |message: &str| {
            self.metrics.decision(&route.name, Outcome::Unauthorized);
            Refusal::unauthorized(message)
        };
        match credential(config.identity(), req) {
            Credential::TrustedCustomer(customer) => Ok(Some(customer.to_string())),
            Credential::Missing(message) => Err(unauthorized(&message)),
            Credential::ApiKey(key) => {
                let hash = api_key_hash(key);
                if let Some(found) = config.customer_for_key_hash(&hash) {
                    return Ok(Some(found.customer.clone()));
                }
                match self
                    .store
                    .customer_for_key(&hash, route.store_timeout_ms)
                    .await
                {
                    Ok(Some(customer)) => Ok(Some(customer)),
                    Ok(None) => Err(unauthorized("unknown API key")),
                    Err(failure) => self.store_failed(route, "api_key", &failure).map(|()| None),
                }
            }
        }
    }

    /// Everything `request_filter` decides; an `Err` is answered to the client.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        config: &PricingConfig,
    ) -> Result<(), Refusal> {
        let req = session.req_header();
        let method = req.method.as_str();
        let path = req.uri.path();
        let Some(found) = config.match_route(method, host_of(req), path) else {
            self.metrics.decision(UNMATCHED_ROUTE, Outcome::Unmatched);
            ctx.route = UNMATCHED_ROUTE.to_string();
            return match config.defaults().unmatched {
                Unmatched::NotFound => Err(Refusal::no_route(method, path)),
                Unmatched::PassThrough => {
                    ctx.upstream = Some(DEFAULT_UPSTREAM.to_string());
                    Ok(())
                }
            };
        };
        let route = found.route;
        ctx.route = route.name.clone();
        ctx.upstream = Some(route.upstream.clone());
        // One view of the control state for the whole request.
        let control = self.control.view();
        let route_mode = control.route_mode(route);
        if route_mode == Mode::Off {
            self.metrics.decision(&route.name, Outcome::Allowed);
            return Ok(());
        }
        let Some(customer) = self.identify(config, req, route).await? else {
            return Ok(());
        };
        let mode = control.customer_mode(route_mode, &customer);
        if mode == Mode::Off {
            self.metrics.decision(&route.name, Outcome::Allowed);
            ctx.customer = Some(customer);
            return Ok(());
        }
        ctx.customer = Some(customer.clone());
        let Some(cost) = config.cost_for(&found.feature.name, Some(&customer)) else {
            // Validation guarantees every route's feature exists; say so loudly if not.
            warn!(route = %route.name, feature = %found.feature.name, "route feature has no cost");
            return Err(Refusal::store_unavailable("pricing"));
        };
        let credit_type = cost.credit_type.name.clone();
        let pricing_version = config.pricing_version_of(&cost);
        ctx.pricing_version = Some(pricing_version.clone());
        let amount = match cost.rule {
            CostRule::FromResponse {
                estimate,
                max,
                estimate_from: Some(from),
                ..
            } => {
                let estimate = read_estimate(session, from, *estimate, *max).await?;
                ctx.body_read = estimate.outcome != EstimateOutcome::OverLimit;
                self.metrics
                    .request_estimate(&route.name, estimate.outcome.as_str());
                debug!(request_id = %ctx.request_id, route = %route.name, amount = estimate.amount,
                    outcome = estimate.outcome.as_str(), problem = ?estimate.problem, "estimated from the request");
                estimate.amount
            }
            rule => rule.reserve_amount(&RequestView(session.req_header())),
        };
        let req = session.req_header();
        if let CostRule::FromResponse { max, usage, .. } = cost.rule {
            ctx.response_cost = Some((usage.clone(), *max));
        }
        if amount == 0 {
            self.metrics.decision(&route.name, Outcome::Allowed);
            ctx.charge = Some(Charge {
                credit_type,
                charged: 0,
                remaining: None,
            });
            return Ok(());
        }
        let idempotency_key = req
            .headers
            .get(HEADER_IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok());
        let base = base_hold_id(&customer, idempotency_key, &ctx.request_id);
        let shadow = mode == Mode::Shadow;
        let mut attempt = 1;
        let mut pending_waits = 0;
        while attempt <= MAX_IDEMPOTENT_ATTEMPTS {
            let hold_id = if attempt == 1 {
                base.clone()
            } else {
                format!("{base}.{attempt}")
            };
            let request = ReserveRequest {
                customer: customer.clone(),
                hold_id: hold_id.clone(),
                credit_type: credit_type.clone(),
                amount,
                ttl_ms: config.defaults().hold_ttl_ms,
                overdraft_limit: cost.overdraft,
                force: shadow,
                request_id: ctx.request_id.clone(),
                route: route.name.clone(),
                feature: found.feature.name.clone(),
                retain_ms: DEFAULT_RETAIN_MS,
                pricing_version: pricing_version.clone(),
                occurred_at_ms: None,
            };
            let outcome = self
                .store
                .call(
                    "reserve",
                    route.store_timeout_ms,
                    self.store.store().reserve(&request),
                )
                .await;
            match outcome {
                Ok(ReserveOutcome::Placed {
                    hold,
                    available_after,
                    ..
                }) => {
                    let decision = if hold.over_limit {
                        Outcome::WouldBlock
                    } else {
                        Outcome::Allowed
                    };
                    self.metrics.decision(&route.name, decision);
                    self.metrics.reserved(&credit_type, amount);
                    self.metrics.holds_in_flight(1);
                    debug!(request_id = %ctx.request_id, customer = %customer, route = %route.name,
                        hold_id = %hold_id, amount, available_after, decision = decision.as_str(), "reserved");
                    ctx.hold = Some(PlacedHold {
                        hold_id,
                        customer: customer.clone(),
                        credit_type: credit_type.clone(),
                        amount,
                        overdraft_limit: cost.overdraft,
                        settle_timeout_ms: route.store_timeout_ms.max(MIN_SETTLE_TIMEOUT_MS),
                        on_upstream_error: route.on_upstream_error,
                        actual: None,
                        tentative: None,
                    });
                    ctx.charge = Some(Charge {
                        credit_type,
                        charged: amount,
                        remaining: Some(available_after),
                    });
                    return Ok(());
                }
                Ok(ReserveOutcome::Replay { state, .. }) if idempotency_key.is_some() => {
                    match state {
                        // The first request may be settling right now (settles run after
                        // the response): give it a moment before calling it in progress.
                        HoldState::Pending if pending_waits < IDEMPOTENT_PENDING_WAITS => {
                            pending_waits += 1;
                            tokio::time::sleep(Duration::from_millis(IDEMPOTENT_PENDING_WAIT_MS))
                                .await;
                            continue;
                        }
                        HoldState::Pending => {
                            self.metrics
                                .decision(&route.name, Outcome::IdempotencyRejected);
                            return Err(Refusal::idempotency_in_progress(
                                "a request with this Idempotency-Key is still in progress",
                            ));
                        }
                        HoldState::Posted => {
                            self.metrics.decision(&route.name, Outcome::Replayed);
                            debug!(request_id = %ctx.request_id, customer = %customer, hold_id = %hold_id, "idempotent replay, not charged again");
                            ctx.charge = Some(Charge {
                                credit_type,
                                charged: 0,
                                remaining: None,
                            });
                            return Ok(());
                        }
                        // The earlier attempt was voided or expired: charge this one anew.
                        HoldState::Voided | HoldState::Expired => {
                            attempt += 1;
                            continue;
                        }
                    }
                }
                Ok(ReserveOutcome::Replay { .. } | ReserveOutcome::Conflict { .. }) => {
                    self.metrics
                        .decision(&route.name, Outcome::IdempotencyRejected);
                    return Err(Refusal::idempotency_conflict());
                }
                Ok(ReserveOutcome::Insufficient { available, .. }) => {
                    self.metrics.decision(&route.name, Outcome::Blocked);
                    debug!(request_id = %ctx.request_id, customer = %customer, route = %route.name,
                        amount, available, "blocked: insufficient credits");
                    return Err(Refusal::insufficient(
                        &credit_type,
                        amount,
                        available,
                        config.billing().top_up_url.as_deref(),
                    ));
                }
                Err(failure) => {
                    let decision = self.store_failed(route, "reserve", &failure);
                    if failure.may_have_run() {
                        // The script may still run once the store catches up and place the
                        // hold: settle it after the response if the request goes through
                        // (metering what was admitted), void it now if it does not.
                        let hold = PlacedHold {
                            hold_id: hold_id.clone(),
                            customer: customer.clone(),
                            credit_type: credit_type.clone(),
                            amount,
                            overdraft_limit: cost.overdraft,
                            settle_timeout_ms: route.store_timeout_ms.max(MIN_SETTLE_TIMEOUT_MS),
                            on_upstream_error: route.on_upstream_error,
                            actual: None,
                            tentative: Some(ReserveRequest {
                                force: true,
                                ..request
                            }),
                        };
                        self.metrics.holds_in_flight(1);
                        if decision.is_ok() {
                            ctx.hold = Some(hold);
                        } else {
                            self.spawn_resolve(hold, true, &ctx.request_id);
                        }
                    }
                    return decision;
                }
            }
        }
        self.metrics
            .decision(&route.name, Outcome::IdempotencyRejected);
        Err(Refusal::idempotency_in_progress(
            "this Idempotency-Key was retried too many times",
        ))
    }
}

/// Reads the request body, at most `from.max_body_bytes` of it, and estimates the amount to
/// reserve from it (`fixed` when it cannot).
///
/// Only a body with a `content-length` within the bound is read: the bytes read are kept in
/// Pingora's retry buffer (`enable_retry_buffering`, 64 KiB, which the bound never exceeds),
/// and Pingora sends that buffer to the upstream before anything else, so the upstream gets
/// the body byte for byte. A body without a length up front (chunked) could outgrow the
/// buffer mid-read, losing bytes already taken off the socket, so it is not read at all.
/// `Err`: reading failed (the client broke off or mis-framed the body).
async fn read_estimate(
    session: &mut Session,
    from: &creditgate_config::RequestEstimate,
    fixed: u64,
    max: u64,
) -> Result<Estimate, Refusal> {
    if session.is_body_empty() {
        return Ok(estimate_from_body(b"", from, fixed, max));
    }
    let length = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(length) = length else {
        return Ok(estimate_unread(fixed, "the body has no content-length"));
    };
    if length > from.max_body_bytes {
        return Ok(estimate_unread(
            fixed,
            &format!(
                "the body has {length} bytes, more than estimate_max_body_bytes ({})",
                from.max_body_bytes
            ),
        ));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for this before sending the body; the upstream gets the request
        // without `Expect` (see `upstream_request_filter`).
        session
            .write_continue_response()
            .await
            .map_err(|e| Refusal::unreadable_body(&format!("cannot answer 100-continue: {e}")))?;
    }
    session.enable_retry_buffering();
    // `length` is at most MAX_ESTIMATE_BODY_BYTES (64 KiB), so this never grows past it.
    let mut body = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| Refusal::unreadable_body(&format!("reading the request body failed: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > from.max_body_bytes {
            // Framing guarantees otherwise; never buffer past the bound.
            return Err(Refusal::unreadable_body(
                "the request body is longer than its content-length",
            ));
        }
    }
    Ok(estimate_from_body(&body, from, fixed, max))
}

/// Where resolving a hold stands after one try.
#[derive(Debug, PartialEq, Eq)]
enum Resolution {
    /// Settled, voided, or found resolved already: nothing more to do.
    Done,
    /// A tentative hold to void is not in the store (yet): its late reserve may still come.
    NotPlacedYet,
}

/// Settles or voids a hold once; `Err` when a store call failed.
async fn resolve_once(
    store: &StoreClient,
    metrics: &Metrics,
    hold: &PlacedHold,
    void: bool,
    request_id: &str,
) -> std::result::Result<Resolution, StoreFailure> {
    let op = if void { "void" } else { "settle" };
    let hold_ref = HoldRef {
        customer: hold.customer.clone(),
        hold_id: hold.hold_id.clone(),
    };
    let settle = SettleRequest {
        customer: hold.customer.clone(),
        hold_id: hold.hold_id.clone(),
        actual: hold.actual.unwrap_or(hold.amount),
        overdraft_limit: hold.overdraft_limit,
    };
    let timeout = hold.settle_timeout_ms;
    let mut outcome = if void {
        store
            .call(op, timeout, store.store().void(&hold_ref))
            .await?
    } else {
        store
            .call(op, timeout, store.store().settle(&settle))
            .await?
    };
    if let (ResolveOutcome::Unknown { .. }, Some(reserve)) = (&outcome, &hold.tentative) {
        if void {
            return Ok(Resolution::NotPlacedYet);
        }
        // The timed-out reserve never arrived: place the hold now and settle it, so the
        // request admitted while failing open is metered. Should the late reserve still
        // arrive, it finds this hold and changes nothing.
        store
            .call("reserve", timeout, store.store().reserve(reserve))
            .await?;
        outcome = store
            .call(op, timeout, store.store().settle(&settle))
            .await?;
    }
    match &outcome {
        ResolveOutcome::Posted {
            posted,
            returned,
            shortfall,
            ..
        } => {
            metrics.resolved(&hold.credit_type, *posted, *returned);
            if *shortfall > 0 {
                // The ledger keeps it too: the sidecar's writer records an `overage` entry
                // with this request id, so finance can bill or write it off.
                metrics.shortfall(&hold.credit_type, *shortfall);
                warn!(request_id, hold_id = %hold.hold_id, customer = %hold.customer,
                    shortfall, posted, "settled above what the balance and overdraft allow; shortfall recorded as overage");
            }
        }
        ResolveOutcome::Voided { returned, .. } => {
            metrics.resolved(&hold.credit_type, 0, *returned)
        }
        other => {
            warn!(request_id, hold_id = %hold.hold_id, outcome = ?other, "hold was already resolved")
        }
    }
    debug!(request_id, hold_id = %hold.hold_id, customer = %hold.customer, op, outcome = ?outcome, "hold resolved");
    metrics.holds_in_flight(-1);
    Ok(Resolution::Done)
}

/// Resolves a hold in the background, off the request path: at once, then after each
/// retry delay while the store fails (or, voiding a tentative hold, while it is not there
/// yet). After the last try a hold left pending expires at its deadline and returns its
/// credits.
async fn retry_resolve(
    store: Arc<StoreClient>,
    metrics: Arc<Metrics>,
    hold: PlacedHold,
    void: bool,
    request_id: String,
    in_flight: InFlight,
) {
    resolve_with_retries(&store, &metrics, &hold, void, &request_id).await;
    in_flight.leave();
}

async fn resolve_with_retries(
    store: &StoreClient,
    metrics: &Metrics,
    hold: &PlacedHold,
    void: bool,
    request_id: &str,
) {
    let delays = std::iter::once(0).chain(SETTLE_RETRY_DELAYS_MS);
    for delay in delays {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match resolve_once(store, metrics, hold, void, request_id).await {
            Ok(Resolution::Done) => return,
            Ok(Resolution::NotPlacedYet) => {}
            Err(failure) => {
                warn!(request_id, hold_id = %hold.hold_id, error = %failure, "resolving hold failed")
            }
        }
    }
    if hold.tentative.is_none() {
        warn!(request_id, hold_id = %hold.hold_id, customer = %hold.customer,
            "giving up resolving hold; it expires at its deadline and returns its credits");
    }
    metrics.holds_in_flight(-1);
}

#[async_trait]
impl ProxyHttp for CreditGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.in_flight.enter();
        ctx.counted = true;
        let config = self.config.load_full();
        ctx.config = Some(config.clone());
        match self.decide(session, ctx, &config).await {
            Ok(()) => Ok(false),
            Err(refusal) => {
                refusal.send(session, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let config = ctx
            .config
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no config for request"))?;
        let name = ctx.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        let upstream = config.upstreams().get(name).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                format!("route names upstream {name:?}, which is not configured"),
            )
        })?;
        let mut peer = HttpPeer::new(
            upstream.address.as_str(),
            upstream.tls,
            upstream.sni.clone().unwrap_or_default(),
        );
        peer.options.connection_timeout = Some(Duration::from_millis(upstream.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(upstream.read_timeout_ms));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(config) = &ctx.config {
            let identity = config.identity();
            for name in &identity.strip_headers {
                upstream_request.remove_header(name.as_str());
            }
            upstream_request.remove_header(identity.customer_header.as_str());
            if let Some(customer) = &ctx.customer {
                upstream_request
                    .insert_header(identity.customer_header.clone(), customer.as_str())?;
            }
        }
        if ctx.body_read {
            // Already answered with 100 Continue, and the body is sent right behind.
            upstream_request.remove_header(&http::header::EXPECT);
        }
        upstream_request.insert_header(HEADER_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !upstream_response.status.is_informational() {
            ctx.upstream_status = Some(upstream_response.status.as_u16());
            if let Some((usage, max)) = ctx.response_cost.take() {
                ctx.inspector = Some(ResponseInspector::new(
                    usage,
                    max,
                    &upstream_response.headers,
                ));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(inspector) = &mut ctx.inspector {
            inspector.feed(body.as_deref().unwrap_or_default(), end_of_stream);
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(charge) = &ctx.charge {
            response.insert_header(HEADER_CHARGED, charge.charged.to_string())?;
            response.insert_header(HEADER_CREDIT_TYPE, charge.credit_type.as_str())?;
            if let Some(remaining) = charge.remaining {
                response.insert_header(HEADER_REMAINING, remaining.to_string())?;
            }
        }
        if let Some(version) = &ctx.pricing_version {
            response.insert_header(HEADER_PRICING_VERSION, version.as_str())?;
        }
        response.insert_header(HEADER_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish(session, error, ctx).await;
        if ctx.counted {
            self.in_flight.leave();
        }
    }
}

impl CreditGate {
    /// Resolves a hold in the background; it counts as in flight until it is done.
    fn spawn_resolve(&self, hold: PlacedHold, void: bool, request_id: &str) {
        self.in_flight.enter();
        tokio::spawn(retry_resolve(
            self.store.clone(),
            self.metrics.clone(),
            hold,
            void,
            request_id.to_string(),
            self.in_flight.clone(),
        ));
    }

    /// The `logging` phase: resolves the request's hold.
    async fn finish(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        if let Some(e) = error {
            warn!(request_id = %ctx.request_id, route = %ctx.route, customer = ?ctx.customer, error = %e, "request failed");
        }
        let Some(mut hold) = ctx.hold.take() else {
            debug!(request_id = %ctx.request_id, route = %ctx.route, customer = ?ctx.customer, status = ?status, "request done");
            return;
        };
        let void = match ctx.upstream_status {
            // The upstream never answered (connect error, timeout): nothing to bill.
            None => true,
            Some(s) if s >= 500 => hold.on_upstream_error == UpstreamErrorPolicy::Void,
            Some(_) => false,
        };
        if let Some(inspector) = ctx.inspector.take() {
            let settlement = inspector.settle();
            self.metrics
                .response_cost(&ctx.route, settlement.outcome.as_str());
            if let Some(problem) = &settlement.problem {
                warn!(request_id = %ctx.request_id, route = %ctx.route, hold_id = %hold.hold_id,
                    problem, fallback = settlement.amount, "response usage not readable; settling the fallback");
            }
            debug!(request_id = %ctx.request_id, hold_id = %hold.hold_id, amount = settlement.amount,
                outcome = settlement.outcome.as_str(), "cost read from the response");
            hold.actual = Some(settlement.amount);
        }
        // Settle off the connection: the client's next request on it does not wait for the
        // store. The settle counts as in flight, so a graceful shutdown waits for it.
        self.spawn_resolve(hold, void, &ctx.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_hold_ids_are_per_customer_and_valid_ids() {
        let a = base_hold_id("acme", Some("k1"), "r1");
        assert_eq!(
            a,
            base_hold_id("acme", Some("k1"), "r2"),
            "same key, same hold"
        );
        assert_ne!(
            a,
            base_hold_id("globex", Some("k1"), "r1"),
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
}
