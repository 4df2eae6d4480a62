//! The gateway's Prometheus metrics (`creditgate_*`), registered once and shared by every
//! request. Recording is lock-free counter arithmetic; nothing here does I/O.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Store latency buckets in seconds: a healthy Redis answers in well under a millisecond;
/// the top buckets show timeouts (the default store timeout is 50 ms).
const STORE_LATENCY_BUCKETS_S: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What the gateway decided for a request, the `outcome` label of
/// `creditgate_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reserved (or free, or mode off) and proxied.
    Allowed,
    /// Refused with 402 in enforce mode.
    Blocked,
    /// Shadow mode: proxied although enforce would have refused.
    WouldBlock,
    /// The store failed and the route fails open: proxied without a hold.
    FailOpen,
    /// The store failed and the route fails closed: refused with 503.
    FailClosed,
    /// No or unknown API key: refused with 401.
    Unauthorized,
    /// No route matched.
    Unmatched,
    /// An `Idempotency-Key` retry of a request already charged: proxied, not charged again.
    Replayed,
    /// An `Idempotency-Key` conflict or a retry of a request still in flight: refused.
    IdempotencyRejected,
    /// Refused for how it was sent, before the upstream saw it: an upgrade on a route that
    /// refuses them (403), an estimate body the route will not read or that broke off
    /// (400, 408, 411, 413).
    Refused,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Blocked => "blocked",
            Self::WouldBlock => "would_block",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::Unauthorized => "unauthorized",
            Self::Unmatched => "unmatched",
            Self::Replayed => "replayed",
            Self::IdempotencyRejected => "idempotency_rejected",
            Self::Refused => "refused",
        }
    }
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    credits_reserved: IntCounterVec,
    credits_burned: IntCounterVec,
    credits_returned: IntCounterVec,
    store_latency: HistogramVec,
    store_errors: IntCounterVec,
    holds_in_flight: IntGauge,
    circuit_open: IntGauge,
    config_info: IntGaugeVec,
    config_version: IntGauge,
    config_published_version: IntGauge,
    config_behind: IntGauge,
    config_reload_errors: IntCounterVec,
    control_version: IntGauge,
    control_read_errors: IntCounterVec,
    mode: IntGaugeVec,
    forced_off: IntGauge,
    response_costs: IntCounterVec,
    request_estimates: IntCounterVec,
    credits_shortfall: IntCounterVec,
    hold_renewals: IntCounterVec,
    late_burns: IntCounterVec,
}

/// The values of the `mode` label of `creditgate_mode`: the fleet-wide mode a gateway
/// applies (`file`: no global override, each route's mode from the config).
pub const MODE_NAMES: [&str; 4] = ["off", "shadow", "enforce", "file"];

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // The metric definitions are constants: a failure here is a programming error found by
    // the first test that builds the registry.
    r.expect("metric definitions are valid and registered once")
}

/// A metric's name, help text and label names (none for a plain gauge).
struct MetricDef {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const DECISIONS: MetricDef = MetricDef {
    name: "creditgate_decisions_total",
    help: "Requests by route and what the gateway decided.",
    labels: &["route", "outcome"],
};
const CREDITS_RESERVED: MetricDef = MetricDef {
    name: "creditgate_credits_reserved_total",
    help: "Credits placed in holds, in each credit type's smallest unit.",
    labels: &["credit_type"],
};
const CREDITS_BURNED: MetricDef = MetricDef {
    name: "creditgate_credits_burned_total",
    help: "Credits burned by settled holds, in each credit type's smallest unit.",
    labels: &["credit_type"],
};
const CREDITS_RETURNED: MetricDef = MetricDef {
    name: "creditgate_credits_returned_total",
    help: "Credits returned by settled and voided holds, in each credit type's smallest unit.",
    labels: &["credit_type"],
};
const STORE_LATENCY: MetricDef = MetricDef {
    name: "creditgate_store_latency_seconds",
    help: "Latency of credit store calls, including failed ones.",
    labels: &["op"],
};
const STORE_ERRORS: MetricDef = MetricDef {
    name: "creditgate_store_errors_total",
    help: "Failed credit store calls by operation and kind (timeout, unavailable, protocol, circuit_open).",
    labels: &["op", "kind"],
};
const HOLDS_IN_FLIGHT: MetricDef = MetricDef {
    name: "creditgate_holds_in_flight",
    help: "Holds placed by this gateway and not yet settled or voided.",
    labels: &[],
};
const CIRCUIT_OPEN: MetricDef = MetricDef {
    name: "creditgate_store_circuit_open",
    help: "1 while the store circuit breaker is open and store calls are skipped.",
    labels: &[],
};
const CONFIG_INFO: MetricDef = MetricDef {
    name: "creditgate_config_info",
    help: "The pricing config in use: 1 for its content hash.",
    labels: &["hash"],
};
const CONFIG_VERSION: MetricDef = MetricDef {
    name: "creditgate_config_version",
    help: "Version of the pricing config in use (0: the gateway's own file, not published).",
    labels: &[],
};
const CONFIG_PUBLISHED_VERSION: MetricDef = MetricDef {
    name: "creditgate_config_published_version",
    help: "Newest pricing config version published in Redis that this gateway has seen.",
    labels: &[],
};
const CONFIG_BEHIND: MetricDef = MetricDef {
    name: "creditgate_config_behind",
    help: "1 while the gateway runs an older pricing config than the published one.",
    labels: &[],
};
const CONFIG_RELOAD_ERRORS: MetricDef = MetricDef {
    name: "creditgate_config_reload_errors_total",
    help: "Pricing configs refused on reload (the last good one stays), by source (file, published).",
    labels: &["source"],
};
const CONTROL_VERSION: MetricDef = MetricDef {
    name: "creditgate_control_version",
    help: "Version of the fleet control state (mode overrides) this gateway applies.",
    labels: &[],
};
const CONTROL_READ_ERRORS: MetricDef = MetricDef {
    name: "creditgate_control_read_errors_total",
    help: "Failed reads of the control state or published config from Redis (the last known state stays).",
    labels: &["what"],
};
const MODE: MetricDef = MetricDef {
    name: "creditgate_mode",
    help: "The fleet-wide mode this gateway applies: 1 for the current one (off, shadow, enforce, file).",
    labels: &["mode"],
};
const FORCED_OFF: MetricDef = MetricDef {
    name: "creditgate_mode_forced_off",
    help: "1 while the local kill switch (file or env flag) forces mode off.",
    labels: &[],
};
const RESPONSE_COSTS: MetricDef = MetricDef {
    name: "creditgate_response_costs_total",
    help: "Requests settled from the response, by route and how the cost was found (header, json, sse, stream_cut; missing, unparseable, over_limit settle the fallback).",
    labels: &["route", "outcome"],
};
const REQUEST_ESTIMATES: MetricDef = MetricDef {
    name: "creditgate_request_estimates_total",
    help: "Reservations of routes that estimate from the request body, by route and how the amount was found (body; missing, unparseable, over_limit, timeout reserve the rule's max).",
    labels: &["route", "outcome"],
};
const CREDITS_SHORTFALL: MetricDef = MetricDef {
    name: "creditgate_credits_shortfall_total",
    help: "Credits settled above what the balance and overdraft allowed (recorded as overage in the ledger), in each credit type's smallest unit.",
    labels: &["credit_type"],
};

const HOLD_RENEWALS: MetricDef = MetricDef {
    name: "creditgate_hold_renewals_total",
    help: "Renewals of in-flight holds by outcome (extended; failed: the store call failed, retried sooner; expired: the hold expired before it could be renewed, its settle burns late; resolved: already settled or voided; unknown: not in the store; not_tracked: too many holds kept alive, not renewed).",
    labels: &["outcome"],
};
const LATE_BURNS: MetricDef = MetricDef {
    name: "creditgate_late_burns_total",
    help: "Settles that found their hold expired and charged it anyway (a late burn, flagged late in the ledger), by credit type.",
    labels: &["credit_type"],
};

/// Registers metrics on one registry, each from its [`MetricDef`].
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        must(self.0.register(Box::new(metric.clone())));
        metric
    }

    fn counter(&self, def: &MetricDef) -> IntCounterVec {
        self.register(must(IntCounterVec::new(
            Opts::new(def.name, def.help),
            def.labels,
        )))
    }

    fn gauge(&self, def: &MetricDef) -> IntGauge {
        self.register(must(IntGauge::new(def.name, def.help)))
    }

    fn gauge_vec(&self, def: &MetricDef) -> IntGaugeVec {
        self.register(must(IntGaugeVec::new(
            Opts::new(def.name, def.help),
            def.labels,
        )))
    }

    fn histogram(&self, def: &MetricDef, buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(def.name, def.help).buckets(buckets.to_vec());
        self.register(must(HistogramVec::new(opts, def.labels)))
    }
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Self {
            decisions: r.counter(&DECISIONS),
            credits_reserved: r.counter(&CREDITS_RESERVED),
            credits_burned: r.counter(&CREDITS_BURNED),
            credits_returned: r.counter(&CREDITS_RETURNED),
            store_latency: r.histogram(&STORE_LATENCY, &STORE_LATENCY_BUCKETS_S),
            store_errors: r.counter(&STORE_ERRORS),
            holds_in_flight: r.gauge(&HOLDS_IN_FLIGHT),
            circuit_open: r.gauge(&CIRCUIT_OPEN),
            config_info: r.gauge_vec(&CONFIG_INFO),
            config_version: r.gauge(&CONFIG_VERSION),
            config_published_version: r.gauge(&CONFIG_PUBLISHED_VERSION),
            config_behind: r.gauge(&CONFIG_BEHIND),
            config_reload_errors: r.counter(&CONFIG_RELOAD_ERRORS),
            control_version: r.gauge(&CONTROL_VERSION),
            control_read_errors: r.counter(&CONTROL_READ_ERRORS),
            mode: r.gauge_vec(&MODE),
            forced_off: r.gauge(&FORCED_OFF),
            response_costs: r.counter(&RESPONSE_COSTS),
            request_estimates: r.counter(&REQUEST_ESTIMATES),
            credits_shortfall: r.counter(&CREDITS_SHORTFALL),
            hold_renewals: r.counter(&HOLD_RENEWALS),
            late_burns: r.counter(&LATE_BURNS),
            registry,
        }
    }

    /// Counts one decision.
    pub fn decision(&self, route: &str, outcome: Outcome) {
        self.decisions
            .with_label_values(&[route, outcome.as_str()])
            .inc();
    }

    /// Counts credits placed in a hold.
    pub fn reserved(&self, credit_type: &str, amount: u64) {
        self.credits_reserved
            .with_label_values(&[credit_type])
            .inc_by(amount);
    }

    /// Counts credits burned and returned by a settled or voided hold.
    pub fn resolved(&self, credit_type: &str, burned: u64, returned: u64) {
        self.credits_burned
            .with_label_values(&[credit_type])
            .inc_by(burned);
        self.credits_returned
            .with_label_values(&[credit_type])
            .inc_by(returned);
    }

    /// Counts one settlement of a response-priced request by how its cost was found.
    pub fn response_cost(&self, route: &str, outcome: &str) {
        self.response_costs
            .with_label_values(&[route, outcome])
            .inc();
    }

    /// Counts one reservation estimated from the request body by how its amount was found.
    pub fn request_estimate(&self, route: &str, outcome: &str) {
        self.request_estimates
            .with_label_values(&[route, outcome])
            .inc();
    }

    /// Counts one renewal of an in-flight hold by its outcome (`extended`, `failed`,
    /// `expired`, `resolved`, `unknown`).
    pub fn hold_renewal(&self, outcome: &str) {
        self.hold_renewals.with_label_values(&[outcome]).inc();
    }

    /// Counts one settle that found its hold expired and burned it late.
    pub fn late_burn(&self, credit_type: &str) {
        self.late_burns.with_label_values(&[credit_type]).inc();
    }

    /// Counts credits a settle could not take (the shortfall recorded as overage).
    pub fn shortfall(&self, credit_type: &str, amount: u64) {
        self.credits_shortfall
            .with_label_values(&[credit_type])
            .inc_by(amount);
    }

    /// Records the latency of one store call, in seconds.
    pub fn store_latency(&self, op: &str, seconds: f64) {
        self.store_latency.with_label_values(&[op]).observe(seconds);
    }

    /// Counts one failed store call.
    pub fn store_error(&self, op: &str, kind: &str) {
        self.store_errors.with_label_values(&[op, kind]).inc();
    }

    /// A hold was placed (`+1`) or resolved (`-1`).
    pub fn holds_in_flight(&self, delta: i64) {
        self.holds_in_flight.add(delta);
    }

    /// Whether the store circuit breaker is open.
    pub fn circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }

    /// Marks the config in use.
    pub fn config_in_use(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// Records the pricing config version in use and the newest one seen published.
    pub fn config_versions(&self, in_use: u64, published: u64) {
        self.config_version.set(in_use as i64);
        self.config_published_version.set(published as i64);
        self.config_behind.set(i64::from(published > in_use));
    }

    /// Counts a config refused on reload; `source` is `file` or `published`.
    pub fn config_reload_error(&self, source: &str) {
        self.config_reload_errors.with_label_values(&[source]).inc();
    }

    /// Records the control state version and the fleet-wide mode applied.
    pub fn control(&self, version: u64, mode: &str, forced_off: bool) {
        self.control_version.set(version as i64);
        for name in MODE_NAMES {
            self.mode
                .with_label_values(&[name])
                .set(i64::from(name == mode));
        }
        self.forced_off.set(i64::from(forced_off));
    }

    /// Counts a failed read of the control state (`state`) or published config (`config`).
    pub fn control_read_error(&self, what: &str) {
        self.control_read_errors.with_label_values(&[what]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.decision("GET /search", Outcome::WouldBlock);
        m.reserved("api", 3);
        m.resolved("api", 2, 1);
        m.store_latency("reserve", 0.0004);
        m.store_error("reserve", "timeout");
        m.holds_in_flight(1);
        m.hold_renewal("extended");
        m.late_burn("api");
        m.config_in_use("abc");
        let text = String::from_utf8(m.render()).unwrap();
        for needle in [
            "creditgate_decisions_total{outcome=\"would_block\",route=\"GET /search\"} 1",
            "creditgate_credits_reserved_total{credit_type=\"api\"} 3",
            "creditgate_credits_burned_total{credit_type=\"api\"} 2",
            "creditgate_store_errors_total{kind=\"timeout\",op=\"reserve\"} 1",
            "creditgate_holds_in_flight 1",
            "creditgate_hold_renewals_total{outcome=\"extended\"} 1",
            "creditgate_late_burns_total{credit_type=\"api\"} 1",
            "creditgate_config_info{hash=\"abc\"} 1",
            "creditgate_store_latency_seconds_bucket{op=\"reserve\",le=\"0.0005\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
