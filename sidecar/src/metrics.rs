//! The sidecar's Prometheus metrics (`creditgate_*`). Recording only; no I/O.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Lag buckets in seconds, from an event's store time to its ledger commit: the goal is
/// under one second at p99.
const LAG_BUCKETS_S: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are constants; a failure is a programming error the first test
    // that builds the registry finds.
    r.expect("metric definitions are valid and registered once")
}

/// The kind of a rejection, the `reason` label of `creditgate_usage_events_rejected_total`:
/// a short fixed set, so the metric's cardinality stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageRejectReason {
    /// A field is missing, of the wrong type or out of its limits.
    Invalid,
    /// The event is older than the late window.
    TooLate,
    /// The event is further in the future than the clock skew allowed.
    InTheFuture,
    /// The feature is not in the pricing version in force at the event time.
    UnknownFeature,
    /// The feature's cost rule cannot price a usage event (usage fields of a response).
    Unpriceable,
    /// The idempotency key was used for another event of the customer.
    KeyReused,
    /// The ledger or the credit store failed; a retry burns the event once.
    Unavailable,
}

impl UsageRejectReason {
    /// Every reason, for initialising the metric's series.
    pub const ALL: [UsageRejectReason; 7] = [
        Self::Invalid,
        Self::TooLate,
        Self::InTheFuture,
        Self::UnknownFeature,
        Self::Unpriceable,
        Self::KeyReused,
        Self::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLate => "too_late",
            Self::InTheFuture => "in_the_future",
            Self::UnknownFeature => "unknown_feature",
            Self::Unpriceable => "unpriceable",
            Self::KeyReused => "key_reused",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Every metric of the sidecar.
pub struct SidecarMetrics {
    registry: Registry,
    /// Ledger entries written, by kind.
    pub entries_written: IntCounterVec,
    /// Redelivered events skipped as duplicates.
    pub duplicates: IntCounter,
    /// Events whose id the ledger holds with other fields (alert).
    pub conflicts: IntCounter,
    /// Stream entries that could not be parsed (alert).
    pub malformed: IntCounter,
    /// Stream entries recorded as dead letters and acknowledged, by reason (`conflict`,
    /// `malformed`, `unplaceable`): each one an alert.
    pub dead_letters: IntCounterVec,
    /// Seconds from an event's store time to its ledger commit.
    pub ledger_lag: Histogram,
    /// Holds expired by the sweeper.
    pub holds_expired: IntCounter,
    /// Grants expired by the sweeper.
    pub grants_expired: IntCounter,
    /// Grants delivered to Redis by the outbox.
    pub grants_delivered: IntCounter,
    /// Outbox deliveries that failed (retried later).
    pub grant_delivery_failures: IntCounter,
    /// Customer and credit type pairs whose Redis figures differ from the ledger's in two
    /// consecutive reconciliations.
    pub drifted: IntGauge,
    /// Sum of |Redis total − ledger total| over the drifted pairs, in credit units.
    pub drift_credits: IntGauge,
    /// Shards rebuilt from the ledger because Redis lost their data.
    pub shards_rebuilt: IntCounter,
    /// Errors of the sidecar's loops, by task.
    pub task_errors: IntCounterVec,
    /// Usage events burned (each once; duplicates are not counted here).
    pub usage_events_accepted: IntCounter,
    /// Usage events whose idempotency key had burned before.
    pub usage_events_duplicates: IntCounter,
    /// Usage events rejected, by reason (`UsageRejectReason` labels).
    pub usage_events_rejected: IntCounterVec,
    /// Usage events burned into overdraft (the balance could not cover them).
    pub usage_events_overdraft: IntCounter,
    /// Redis rebuilds owed (recorded, not done yet) as of the last rebuild pass.
    pub rebuilds_owed: IntGauge,
    /// Rebuild attempts, by outcome (`done`, `retry`).
    pub rebuild_attempts: IntCounterVec,
}

/// Creates metrics and registers each in one registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = must(IntCounter::new(name, help));
        must(self.0.register(Box::new(c.clone())));
        c
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = must(IntCounterVec::new(Opts::new(name, help), labels));
        must(self.0.register(Box::new(c.clone())));
        c
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = must(IntGauge::new(name, help));
        must(self.0.register(Box::new(g.clone())));
        g
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let h = must(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ));
        must(self.0.register(Box::new(h.clone())));
        h
    }

    /// Usage events rejected, with every reason present from the start, at 0, so that a
    /// rate() sees its first one.
    fn usage_events_rejected(&self) -> IntCounterVec {
        let rejected = self.counter_vec(
            "creditgate_usage_events_rejected_total",
            "Usage events rejected, by reason.",
            &["reason"],
        );
        for reason in UsageRejectReason::ALL {
            rejected.with_label_values(&[reason.as_str()]);
        }
        rejected
    }

    fn usage_events_overdraft(&self) -> IntCounter {
        self.counter(
            "creditgate_usage_events_overdraft_total",
            "Usage events burned into overdraft because the balance could not cover them.",
        )
    }

    /// The owed Redis rebuilds gauge and the attempts counter, with both outcomes present
    /// from the start, at 0.
    fn rebuilds(&self) -> (IntGauge, IntCounterVec) {
        let owed = self.gauge(
            "creditgate_redis_rebuilds_owed",
            "Redis rebuilds recorded after a grant void and not done yet.",
        );
        let attempts = self.counter_vec(
            "creditgate_redis_rebuild_attempts_total",
            "Attempts to rebuild a customer in Redis from the ledger, by outcome (done, retry).",
            &["outcome"],
        );
        for outcome in ["done", "retry"] {
            attempts.with_label_values(&[outcome]);
        }
        (owed, attempts)
    }
}

impl SidecarMetrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let (rebuilds_owed, rebuild_attempts) = r.rebuilds();
        Self {
            entries_written: r.counter_vec(
                "creditgate_ledger_entries_written_total",
                "Ledger entries written, by kind.",
                &["kind"],
            ),
            duplicates: r.counter(
                "creditgate_ledger_duplicates_total",
                "Redelivered events skipped because the ledger has them.",
            ),
            conflicts: r.counter(
                "creditgate_ledger_conflicts_total",
                "Events whose id the ledger holds with other fields; dead-lettered (alert).",
            ),
            malformed: r.counter(
                "creditgate_ledger_malformed_total",
                "Stream entries that could not be parsed; dead-lettered (alert).",
            ),
            dead_letters: r.counter_vec(
                "creditgate_dead_letters_total",
                "Stream entries the ledger could not apply, recorded as dead letters and acknowledged, by reason (alert).",
                &["reason"],
            ),
            ledger_lag: r.histogram(
                "creditgate_ledger_lag_seconds",
                "Seconds from an event's store time to its ledger commit.",
                &LAG_BUCKETS_S,
            ),
            holds_expired: r.counter(
                "creditgate_sweeper_holds_expired_total",
                "Pending holds expired past their deadline.",
            ),
            grants_expired: r.counter(
                "creditgate_sweeper_grants_expired_total",
                "Grants expired past their expiry.",
            ),
            grants_delivered: r.counter(
                "creditgate_outbox_grants_delivered_total",
                "Ledger-first grants confirmed by Redis.",
            ),
            grant_delivery_failures: r.counter(
                "creditgate_outbox_delivery_failures_total",
                "Grant deliveries to Redis that failed and stay in the outbox.",
            ),
            drifted: r.gauge(
                "creditgate_reconcile_drifted",
                "Customer and credit type pairs whose Redis figures differ from the ledger's.",
            ),
            drift_credits: r.gauge(
                "creditgate_reconcile_drift_credits",
                "Sum of the absolute differences between Redis and the ledger, in credit units.",
            ),
            shards_rebuilt: r.counter(
                "creditgate_reconcile_shards_rebuilt_total",
                "Shards rebuilt from the ledger because Redis lost their data.",
            ),
            task_errors: r.counter_vec(
                "creditgate_sidecar_task_errors_total",
                "Failed passes of the sidecar's loops, by task.",
                &["task"],
            ),
            usage_events_accepted: r.counter(
                "creditgate_usage_events_accepted_total",
                "Usage events burned.",
            ),
            usage_events_duplicates: r.counter(
                "creditgate_usage_events_duplicate_total",
                "Usage events whose idempotency key had burned before; not burned again.",
            ),
            usage_events_rejected: r.usage_events_rejected(),
            usage_events_overdraft: r.usage_events_overdraft(),
            rebuilds_owed,
            rebuild_attempts,
            registry,
        }
    }

    /// The registry, for metrics other modules own (`fleet_metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The admin API's metrics (`creditgate_admin_*`, `creditgate_webhook_*`), registered in
/// the sidecar's registry by [`SidecarMetrics::register_admin`] when the admin API runs.
#[derive(Clone)]
pub struct AdminMetrics {
    /// Admin calls answered, by route (its path template, or `unmatched`), method and
    /// status class (`2xx`, `4xx`, `5xx`).
    pub calls: IntCounterVec,
    /// Admin calls refused at authentication, by reason (`unauthorized`: missing, unknown or
    /// revoked token; `rate_limited`: too many failures from the address).
    pub auth_failures: IntCounterVec,
    /// Webhook delivery attempts, by kind (`balance.low`, `auto_recharge`, …) and outcome
    /// (`delivered`; `retry`: failed, retried later; `failed`: given up).
    pub webhook_deliveries: IntCounterVec,
    /// Grant requests waiting for a second person's approval.
    pub pending_approvals: IntGauge,
}

impl SidecarMetrics {
    /// Builds and registers the admin API's metrics. Call once per registry.
    pub fn register_admin(&self) -> AdminMetrics {
        let r = Registrar(&self.registry);
        AdminMetrics {
            calls: r.counter_vec(
                "creditgate_admin_calls_total",
                "Admin API calls answered, by route, method and status class.",
                &["route", "method", "status"],
            ),
            auth_failures: r.counter_vec(
                "creditgate_admin_auth_failures_total",
                "Admin API calls refused at authentication, by reason.",
                &["reason"],
            ),
            webhook_deliveries: r.counter_vec(
                "creditgate_webhook_deliveries_total",
                "Webhook delivery attempts, by kind and outcome (delivered, retry, failed).",
                &["kind", "outcome"],
            ),
            pending_approvals: r.gauge(
                "creditgate_admin_pending_approvals",
                "Grant requests waiting for a second person's approval.",
            ),
        }
    }
}

#[cfg(test)]
mod admin_metrics_tests {
    use super::*;

    #[test]
    fn admin_metrics_render_with_their_labels() {
        let m = SidecarMetrics::new();
        let a = m.register_admin();
        a.calls
            .with_label_values(&["/v1/admin/whoami", "GET", "2xx"])
            .inc();
        a.auth_failures.with_label_values(&["unauthorized"]).inc();
        a.webhook_deliveries
            .with_label_values(&["balance.low", "delivered"])
            .inc();
        a.pending_approvals.set(2);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"creditgate_admin_calls_total{method="GET",route="/v1/admin/whoami",status="2xx"} 1"#
        ));
        assert!(text.contains(r#"creditgate_admin_auth_failures_total{reason="unauthorized"} 1"#));
        assert!(text.contains(
            r#"creditgate_webhook_deliveries_total{kind="balance.low",outcome="delivered"} 1"#
        ));
        assert!(text.contains("creditgate_admin_pending_approvals 2"));
    }
}
