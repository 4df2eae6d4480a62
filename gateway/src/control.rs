//! The mode a request runs in: the route's mode from the pricing config, overridden by the
//! fleet's control state from Redis (global, per route, per customer, rollout) and by the
//! local kill switch. Pure decisions plus the shared, swappable state they read; no I/O
//! (the `fleet` module keeps the state current).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use creditgate_config::{Mode, Route};
use creditgate_protocol::control::{ControlMode, ControlState};
use sha2::{Digest, Sha256};

/// The control state every request reads, swapped whole when Redis says it changed, plus
/// the local kill switch, which needs no Redis at all.
#[derive(Debug)]
pub struct FleetControl {
    state: ArcSwap<ControlState>,
    /// `--force-off` / `CREDITGATE_FORCE_OFF`: fixed for the life of the process.
    forced_off_by_flag: bool,
    /// Whether the kill switch file exists (checked by the `fleet` task).
    forced_off_by_file: AtomicBool,
}

/// One request's view of the control state: taken once, so a flip in the middle of a
/// request does not change how it is handled halfway.
#[derive(Debug, Clone)]
pub struct ControlView {
    state: Arc<ControlState>,
    forced_off: bool,
}

impl FleetControl {
    /// Control with no overrides; `forced_off_by_flag` is the env or command-line flag.
    pub fn new(forced_off_by_flag: bool) -> Self {
        Self {
            state: ArcSwap::from_pointee(ControlState::default()),
            forced_off_by_flag,
            forced_off_by_file: AtomicBool::new(false),
        }
    }

    /// The view a request works with.
    pub fn view(&self) -> ControlView {
        ControlView {
            state: self.state.load_full(),
            forced_off: self.forced_off(),
        }
    }

    /// The control state last read from Redis.
    pub fn state(&self) -> Arc<ControlState> {
        self.state.load_full()
    }

    /// Replaces the control state (read from Redis).
    pub fn set_state(&self, state: ControlState) {
        self.state.store(Arc::new(state));
    }

    /// Records whether the kill switch file exists.
    pub fn set_forced_off_by_file(&self, present: bool) {
        self.forced_off_by_file.store(present, Ordering::Release);
    }

    /// Whether the local kill switch (flag or file) forces `off`.
    pub fn forced_off(&self) -> bool {
        self.forced_off_by_flag || self.forced_off_by_file.load(Ordering::Acquire)
    }

    /// The fleet-wide mode as this gateway applies it, for metrics and heartbeats: `off`
    /// when forced off locally, else the global override, else `file` (each route's own).
    pub fn global_mode_name(&self) -> &'static str {
        if self.forced_off() {
            return "off";
        }
        match self.state.load().global {
            Some(mode) => mode.as_str(),
            None => "file",
        }
    }
}

fn mode_of(mode: ControlMode) -> Mode {
    match mode {
        ControlMode::Off => Mode::Off,
        ControlMode::Shadow => Mode::Shadow,
        ControlMode::Enforce => Mode::Enforce,
    }
}

/// A customer's rollout bucket, 0 to 99: the first 8 bytes of the SHA-256 of the id,
/// modulo 100. Stable across gateways, restarts and releases, and spread evenly.
pub fn rollout_bucket(customer: &str) -> u8 {
    let digest = Sha256::digest(customer.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

impl ControlView {
    /// The mode of `route` before the customer is known: `off` when forced off locally or
    /// by the global kill switch; else the route's override, else the global mode, else
    /// the config's. `off` here means no store call at all, not even to identify the
    /// customer.
    pub fn route_mode(&self, route: &Route) -> Mode {
        if self.forced_off || self.state.global == Some(ControlMode::Off) {
            return Mode::Off;
        }
        if let Some(mode) = self.state.routes.get(&route.name) {
            return mode_of(*mode);
        }
        self.state.global.map_or(route.mode, mode_of)
    }

    /// The mode for `customer` on a route whose [`route_mode`](Self::route_mode) is
    /// `route_mode` (not `off`): the customer's override, else the route mode, where an
    /// `enforce` is limited by the rollout percentage to customers whose bucket is below
    /// it (shadow for the rest).
    pub fn customer_mode(&self, route_mode: Mode, customer: &str) -> Mode {
        if let Some(mode) = self.state.customers.get(customer) {
            return mode_of(*mode);
        }
        match (route_mode, self.state.rollout_percent) {
            (Mode::Enforce, Some(percent)) if rollout_bucket(customer) >= percent => Mode::Shadow,
            (mode, _) => mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(mode: Mode) -> Route {
        let text = format!(
            r#"
[credit_types.api]
scale = 0
[upstreams.default]
address = "127.0.0.1:1"
[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = 1 }}
[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
mode = "{}"
"#,
            mode.as_str()
        );
        let config = creditgate_config::PricingConfig::from_toml_str(&text, "t.toml").unwrap();
        config.route_table().routes()[0].clone()
    }

    fn view(state: ControlState, forced_off: bool) -> ControlView {
        ControlView {
            state: Arc::new(state),
            forced_off,
        }
    }

    #[test]
    fn overrides_apply_from_the_most_specific() {
        let r = route(Mode::Enforce);
        assert_eq!(
            view(ControlState::default(), false).route_mode(&r),
            Mode::Enforce
        );
        let mut state = ControlState {
            global: Some(ControlMode::Shadow),
            ..ControlState::default()
        };
        assert_eq!(view(state.clone(), false).route_mode(&r), Mode::Shadow);
        state.routes.insert("search".into(), ControlMode::Enforce);
        assert_eq!(view(state.clone(), false).route_mode(&r), Mode::Enforce);
        state.customers.insert("acme".into(), ControlMode::Off);
        let v = view(state.clone(), false);
        assert_eq!(v.customer_mode(Mode::Enforce, "acme"), Mode::Off);
        assert_eq!(v.customer_mode(Mode::Enforce, "globex"), Mode::Enforce);
        // The kill switch beats every override, and so does the local flag.
        state.global = Some(ControlMode::Off);
        assert_eq!(view(state, false).route_mode(&r), Mode::Off);
        assert_eq!(
            view(ControlState::default(), true).route_mode(&r),
            Mode::Off
        );
    }

    #[test]
    fn rollout_limits_enforce_to_a_stable_share() {
        let v = view(
            ControlState {
                rollout_percent: Some(10),
                ..ControlState::default()
            },
            false,
        );
        let enforced = (0..10_000)
            .filter(|i| v.customer_mode(Mode::Enforce, &format!("c{i}")) == Mode::Enforce)
            .count();
        assert!((900..=1_100).contains(&enforced), "{enforced}");
        assert_eq!(v.customer_mode(Mode::Shadow, "c1"), Mode::Shadow);
        assert_eq!(rollout_bucket("acme"), rollout_bucket("acme"));
    }
}
