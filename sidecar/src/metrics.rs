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
    /// Usage events rejected, by reason (`RejectReason` labels).
    pub usage_events_rejected: IntCounterVec,
    /// Usage events burned into overdraft (the balance could not cover them).
    pub usage_events_overdraft: IntCounter,
}

impl SidecarMetrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let ledger_lag = must(Histogram::with_opts(
            HistogramOpts::new(
                "creditgate_ledger_lag_seconds",
                "Seconds from an event's store time to its ledger commit.",
            )
            .buckets(LAG_BUCKETS_S.to_vec()),
        ));
        must(registry.register(Box::new(ledger_lag.clone())));
        Self {
            entries_written: counter_vec(
                "creditgate_ledger_entries_written_total",
                "Ledger entries written, by kind.",
                &["kind"],
            ),
            duplicates: counter(
                "creditgate_ledger_duplicates_total",
                "Redelivered events skipped because the ledger has them.",
            ),
            conflicts: counter(
                "creditgate_ledger_conflicts_total",
                "Events whose id the ledger holds with other fields; left unacknowledged (alert).",
            ),
            malformed: counter(
                "creditgate_ledger_malformed_total",
                "Stream entries that could not be parsed; left unacknowledged (alert).",
            ),
            ledger_lag,
            holds_expired: counter(
                "creditgate_sweeper_holds_expired_total",
                "Pending holds expired past their deadline.",
            ),
            grants_expired: counter(
                "creditgate_sweeper_grants_expired_total",
                "Grants expired past their expiry.",
            ),
            grants_delivered: counter(
                "creditgate_outbox_grants_delivered_total",
                "Ledger-first grants confirmed by Redis.",
            ),
            grant_delivery_failures: counter(
                "creditgate_outbox_delivery_failures_total",
                "Grant deliveries to Redis that failed and stay in the outbox.",
            ),
            drifted: gauge(
                "creditgate_reconcile_drifted",
                "Customer and credit type pairs whose Redis figures differ from the ledger's.",
            ),
            drift_credits: gauge(
                "creditgate_reconcile_drift_credits",
                "Sum of the absolute differences between Redis and the ledger, in credit units.",
            ),
            shards_rebuilt: counter(
                "creditgate_reconcile_shards_rebuilt_total",
                "Shards rebuilt from the ledger because Redis lost their data.",
            ),
            task_errors: counter_vec(
                "creditgate_sidecar_task_errors_total",
                "Failed passes of the sidecar's loops, by task.",
                &["task"],
            ),
            usage_events_accepted: counter(
                "creditgate_usage_events_accepted_total",
                "Usage events burned.",
            ),
            usage_events_duplicates: counter(
                "creditgate_usage_events_duplicate_total",
                "Usage events whose idempotency key had burned before; not burned again.",
            ),
            usage_events_rejected: {
                let rejected = counter_vec(
                    "creditgate_usage_events_rejected_total",
                    "Usage events rejected, by reason.",
                    &["reason"],
                );
                // Every reason shows from the start, at 0, so a rate() sees its first one.
                for reason in crate::api::usage_events::RejectReason::ALL {
                    rejected.with_label_values(&[reason.as_str()]);
                }
                rejected
            },
            usage_events_overdraft: counter(
                "creditgate_usage_events_overdraft_total",
                "Usage events burned into overdraft because the balance could not cover them.",
            ),
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
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(self.registry.register(Box::new(c.clone())));
            c
        };
        let pending_approvals = must(IntGauge::new(
            "creditgate_admin_pending_approvals",
            "Grant requests waiting for a second person's approval.",
        ));
        must(self.registry.register(Box::new(pending_approvals.clone())));
        AdminMetrics {
            calls: counter_vec(
                "creditgate_admin_calls_total",
                "Admin API calls answered, by route, method and status class.",
                &["route", "method", "status"],
            ),
            auth_failures: counter_vec(
                "creditgate_admin_auth_failures_total",
                "Admin API calls refused at authentication, by reason.",
                &["reason"],
            ),
            webhook_deliveries: counter_vec(
                "creditgate_webhook_deliveries_total",
                "Webhook delivery attempts, by kind and outcome (delivered, retry, failed).",
                &["kind", "outcome"],
            ),
            pending_approvals,
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
