//! The gateway service: its shared state ([`CreditGate`]: the swappable pricing config, the
//! store client, metrics, the fleet's control state), each request's state
//! ([`RequestCtx`]), and the work of the phases that do more than copy headers: admitting
//! a request in `request_filter` ([`CreditGate::admit`]) and ending its hold in `logging`
//! ([`CreditGate::finish`]).
//!
//! This module sequences; it decides nothing itself. Decisions are
//! [`crate::admission`]'s, the hold's store calls [`crate::hold`]'s, and the phase
//! callbacks that call in here are `crate::proxy`'s. A request is priced by the config
//! version it started with, even if a new one is swapped in meanwhile.

use std::sync::Arc;

use arc_swap::ArcSwap;
use creditgate_config::{DEFAULT_UPSTREAM, Enforcement, Mode, PricingConfig, ResponseUsage, Route};
use pingora::Error;
use pingora::http::RequestHeader;
use pingora::prelude::Session;
use tracing::{debug, error, warn};

use crate::admission::{self, Caller, Price, ReserveAmount, RouteDecision, UNMATCHED_ROUTE};
use crate::control::FleetControl;
use crate::hold::{Holds, RequestHold};
use crate::idempotency;
use crate::in_flight::InFlight;
use crate::lease::{LeaseTicket, Leases};
use crate::metrics::{Metrics, Outcome};
use crate::request_body::read_estimate;
use crate::responses::{Charge, Refusal};
use crate::store_client::StoreClient;
use crate::usage::ResponseInspector;

/// The credit-enforcing proxy.
pub struct CreditGate {
    pub(crate) config: Arc<ArcSwap<PricingConfig>>,
    store: Arc<StoreClient>,
    metrics: Arc<Metrics>,
    pub(crate) in_flight: InFlight,
    control: Arc<FleetControl>,
    holds: Holds,
    /// Credit leases of routes with `enforcement = "lease"`.
    pub(crate) leases: Leases,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub(crate) request_id: String,
    pub(crate) config: Option<Arc<PricingConfig>>,
    route: String,
    pub(crate) upstream: Option<String>,
    pub(crate) customer: Option<String>,
    hold: Option<RequestHold>,
    /// Admitted from a credit lease instead of a hold of its own.
    lease: Option<LeaseTicket>,
    pub(crate) charge: Option<Charge>,
    upstream_status: Option<u16>,
    /// Whether `request_filter` counted this request in flight (`logging` uncounts it).
    pub(crate) counted: bool,
    pub(crate) pricing_version: Option<String>,
    /// The route's response-usage rule and `max`, until the response headers arrive.
    response_cost: Option<(Arc<ResponseUsage>, u64)>,
    /// Reads the actual cost of a response-priced request as its body passes.
    inspector: Option<ResponseInspector>,
    /// The gateway read the body and answered `Expect: 100-continue` itself, so the
    /// upstream request goes without `Expect` (the body follows at once).
    pub(crate) body_read: bool,
    /// Body bytes the gateway read that Pingora's retry buffer did not keep: forwarded in
    /// front of the rest of the body (`request_body_filter`).
    pub(crate) body_put_back: Option<bytes::Bytes>,
    /// Which uncharged replay of an already charged `Idempotency-Key` request this is.
    pub(crate) replay: Option<u32>,
}

impl RequestCtx {
    /// Per-request state with a fresh request id.
    pub fn new() -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            ..Self::default()
        }
    }

    /// The upstream answered with `status` and `headers`: remember the status (it decides
    /// settle or void) and, for a route priced from the response, start reading its usage.
    pub(crate) fn upstream_answered(&mut self, status: u16, headers: &http::HeaderMap) {
        self.upstream_status = Some(status);
        let upgraded = status == 101;
        if status < 200 && !upgraded {
            // An interim answer (100, 103): the upstream's answer is still to come.
            return;
        }
        if let Some((usage, max)) = self.response_cost.take() {
            let inspector = ResponseInspector::new(usage, max, headers);
            // Usage is never read from a tunnel: a usage header or the fallback settles it.
            self.inspector = Some(if upgraded {
                inspector.without_body()
            } else {
                inspector
            });
        }
    }

    /// A chunk of the response body passed (for a route priced from the response).
    pub(crate) fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) {
        if let Some(inspector) = &mut self.inspector {
            inspector.feed(chunk, end_of_stream);
        }
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
        let holds = Holds::new(store.clone(), metrics.clone(), in_flight.clone());
        let leases = Leases::new(store.clone(), in_flight.clone());
        Self {
            leases,
            config,
            store,
            metrics,
            in_flight,
            control: Arc::new(FleetControl::new(false)),
            holds,
        }
    }

    /// This gateway with the fleet's control state (mode overrides, kill switch).
    pub fn with_control(mut self, control: Arc<FleetControl>) -> Self {
        self.control = control;
        self
    }

    /// The `request_filter` phase's work: route, mode, identity, price, reserve. `Ok`
    /// proxies the request; an `Err` is answered to the client.
    pub async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        config: &PricingConfig,
    ) -> Result<(), Refusal> {
        // Before anything reads the path: what is matched and priced is what is forwarded.
        admission::normalize_target(session.req_header_mut())?;
        // One view of the control state for the whole request.
        let control = self.control.view();
        let (found, route_mode) =
            match admission::decide_route(config, &control, session.req_header()) {
                RouteDecision::NoRoute(refusal) => {
                    self.unmatched(ctx);
                    return Err(refusal);
                }
                RouteDecision::PassThrough => {
                    self.unmatched(ctx);
                    ctx.upstream = Some(DEFAULT_UPSTREAM.to_string());
                    return Ok(());
                }
                RouteDecision::Unmetered(route) => {
                    self.matched(ctx, route, session.req_header())?;
                    self.metrics.decision(&route.name, Outcome::Allowed);
                    return Ok(());
                }
                RouteDecision::Metered { found, mode } => (found, mode),
            };
        let route = found.route;
        self.matched(ctx, route, session.req_header())?;
        let customer = self.identify(config, session.req_header(), route).await?;
        ctx.customer = Some(customer.clone());
        let mode = control.customer_mode(route_mode, &customer);
        if mode == Mode::Off {
            self.metrics.decision(&route.name, Outcome::Allowed);
            return Ok(());
        }
        let price = admission::price_request(config, &found, &customer).map_err(|e| {
            error!(request_id = %ctx.request_id, error = %e, "cannot price the request");
            e.refusal()
        })?;
        ctx.pricing_version = Some(price.pricing_version.clone());
        ctx.response_cost = price.response_cost();
        let amount = self.reserve_amount(session, ctx, route, &price).await?;
        if amount == 0 {
            self.metrics.decision(&route.name, Outcome::Allowed);
            ctx.charge = Some(Charge::nothing(price.credit_type()));
            return Ok(());
        }
        let mut plan = admission::plan_reserve(
            config,
            &found,
            &price,
            &customer,
            mode,
            amount,
            session.req_header(),
            &ctx.request_id,
        );
        idempotency::bind_request(session, ctx, &mut plan).await?;
        if route.enforcement == Enforcement::Lease
            && let Some((ticket, charge)) = self.leases.admit(&plan).await
        {
            self.metrics.decision(&route.name, Outcome::Allowed);
            ctx.lease = Some(ticket);
            ctx.charge = Some(charge);
            return Ok(());
        }
        let reserved = self.holds.reserve_for_request(&plan).await?;
        ctx.hold = reserved.hold;
        ctx.charge = reserved.charge;
        ctx.replay = reserved.replay;
        Ok(())
    }

    fn unmatched(&self, ctx: &mut RequestCtx) {
        self.metrics.decision(UNMATCHED_ROUTE, Outcome::Unmatched);
        ctx.route = UNMATCHED_ROUTE.to_string();
    }

    /// Records the route matched; a request to switch protocols on a route that refuses
    /// upgrades is answered before anything else (and before the upstream sees it).
    fn matched(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        req: &RequestHeader,
    ) -> Result<(), Refusal> {
        ctx.route = route.name.clone();
        ctx.upstream = Some(route.upstream.clone());
        admission::refuse_upgrade(route, req)
            .inspect_err(|_| self.metrics.decision(&route.name, Outcome::Refused))
    }

    /// Finds the customer, asking the store for an API key the config does not list.
    /// Failing open never admits a caller the gateway does not know: when the store cannot
    /// be asked, a key neither in the config nor cached as known is refused whatever the
    /// route's failure policy ([`admission::unverifiable_api_key`]).
    async fn identify(
        &self,
        config: &PricingConfig,
        req: &RequestHeader,
        route: &Route,
    ) -> Result<String, Refusal> {
        let refused = |refusal: Refusal| {
            self.metrics.decision(&route.name, Outcome::Unauthorized);
            refusal
        };
        let hash = match admission::identify_caller(config, req) {
            Caller::Customer(customer) => return Ok(customer),
            Caller::Unauthorized(refusal) => return Err(refused(refusal)),
            Caller::LookUpApiKey(hash) => hash,
        };
        match self
            .store
            .customer_for_key(&hash, route.store_timeout_ms)
            .await
        {
            Ok(Some(customer)) => Ok(customer),
            Ok(None) => Err(refused(admission::unknown_api_key())),
            Err(failure) => {
                warn!(route = %route.name, op = "api_key", error = %failure, "credit store call failed; an API key the gateway does not know is refused");
                self.metrics.decision(&route.name, Outcome::FailClosed);
                Err(admission::unverifiable_api_key(&failure))
            }
        }
    }

    /// How much to reserve, reading the body first for a route that estimates from it.
    async fn reserve_amount(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        price: &Price<'_>,
    ) -> Result<u64, Refusal> {
        let (from, max) = match price.reserve_amount(session.req_header())? {
            ReserveAmount::Known(amount) => return Ok(amount),
            ReserveAmount::FromBody { from, max, .. } => (from, max),
        };
        let read = read_estimate(session, from, max)
            .await
            .inspect_err(|_| self.metrics.decision(&route.name, Outcome::Refused))?;
        ctx.body_read = read.read;
        ctx.body_put_back = read.put_back;
        let estimate = read.estimate;
        self.metrics
            .request_estimate(&route.name, estimate.outcome.as_str());
        debug!(request_id = %ctx.request_id, route = %route.name, amount = estimate.amount,
            outcome = estimate.outcome.as_str(), problem = ?estimate.problem, "estimated from the request");
        Ok(estimate.amount)
    }

    /// The `logging` phase's work: hands the request's hold, if any, to a background
    /// settle or void, with the cost read from the response for routes priced from it.
    pub fn finish(&self, session: &Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        if let Some(e) = error {
            warn!(request_id = %ctx.request_id, route = %ctx.route, customer = ?ctx.customer, error = %e, "request failed");
        }
        if let Some(ticket) = ctx.lease.take() {
            let actual = ctx.inspector.take().map(|i| i.settle().amount);
            let end = ticket.end_for(ctx.upstream_status);
            self.leases.finish(ticket, end, actual);
            return;
        }
        let Some(mut hold) = ctx.hold.take() else {
            debug!(request_id = %ctx.request_id, route = %ctx.route, customer = ?ctx.customer, status = ?status, "request done");
            return;
        };
        let end = hold.end_for(ctx.upstream_status);
        if let Some(inspector) = ctx.inspector.take() {
            let settlement = inspector.settle();
            self.metrics
                .response_cost(&ctx.route, settlement.outcome.as_str());
            if let Some(problem) = &settlement.problem {
                warn!(request_id = %ctx.request_id, route = %ctx.route, hold_id = %hold.hold_id(),
                    problem, fallback = settlement.amount, "response usage not readable; settling the fallback");
            }
            debug!(request_id = %ctx.request_id, hold_id = %hold.hold_id(), amount = settlement.amount,
                outcome = settlement.outcome.as_str(), "cost read from the response");
            hold.settle_amount(settlement.amount);
        }
        self.holds.settle_or_void(hold, end, &ctx.request_id);
    }
}
