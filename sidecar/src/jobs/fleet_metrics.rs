//! The sidecar's fleet metrics: the pricing config version it published, refused reloads,
//! the control state (mode overrides) and the gateways that report in. Recording only.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are constants; a failure is a programming error the first test
    // that builds the registry finds.
    r.expect("metric definitions are valid and registered once")
}

/// The values of the `mode` label of `creditgate_mode` (`file`: no global override).
pub const MODE_NAMES: [&str; 4] = ["off", "shadow", "enforce", "file"];

/// Fleet metrics, registered in the sidecar's registry.
pub struct FleetMetrics {
    /// Version of the pricing config last published (or found published).
    pub config_version: IntGauge,
    /// Config files refused on reload (each distinct bad content once).
    pub config_reload_errors: IntCounter,
    /// Version of the control state.
    pub control_version: IntGauge,
    /// The global mode: 1 for the current one.
    pub mode: IntGaugeVec,
    /// The rollout percentage (-1 when unset).
    pub rollout_percent: IntGauge,
    /// Gateways with a live heartbeat.
    pub gateways: IntGauge,
    /// Gateways running an older config version than the published one.
    pub gateways_behind: IntGauge,
}

impl FleetMetrics {
    /// Builds the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let config_reload_errors = must(IntCounter::new(
            "creditgate_config_reload_errors_total",
            "Pricing config files refused by validation (never published; the last good version stays).",
        ));
        must(registry.register(Box::new(config_reload_errors.clone())));
        let mode = must(IntGaugeVec::new(
            Opts::new(
                "creditgate_mode",
                "The fleet-wide mode override: 1 for the current one (off, shadow, enforce, file = none).",
            ),
            &["mode"],
        ));
        must(registry.register(Box::new(mode.clone())));
        Self {
            config_version: gauge(
                "creditgate_config_version",
                "Version of the pricing config published for the fleet.",
            ),
            config_reload_errors,
            control_version: gauge(
                "creditgate_control_version",
                "Version of the fleet control state (mode overrides).",
            ),
            mode,
            rollout_percent: gauge(
                "creditgate_rollout_percent",
                "Percentage of customers enforced by the rollout (-1: no rollout set).",
            ),
            gateways: gauge(
                "creditgate_fleet_gateways",
                "Gateways with a live heartbeat.",
            ),
            gateways_behind: gauge(
                "creditgate_fleet_gateways_behind",
                "Gateways running an older pricing config than the published version.",
            ),
        }
    }

    /// Records the global mode (`file` when no override is set).
    pub fn set_mode(&self, mode: &str) {
        for name in MODE_NAMES {
            self.mode
                .with_label_values(&[name])
                .set(i64::from(name == mode));
        }
    }
}
