//! The pricing config of creditgate: the TOML schema ops edit, its validation with clear
//! errors (file, field path, line; every error at once), and the compiled route table the
//! gateway matches requests against.
//!
//! This crate does no network I/O and keeps no global state; loading a file is the only I/O.
//! See `docs/configuration.md` for the file format.

mod config;
mod cost;
mod diagnostics;
mod limits;
mod model;
mod pattern;
mod request_target;
mod route_table;
mod schema;
mod usage;
mod validate;

pub use config::{CostSource, PricingConfig, ResolvedCost, UNPUBLISHED_VERSION};
pub use cost::{CostRule, RequestValues, UnitSource, UnitsError, UnitsProblem, UnitsValue};
pub use diagnostics::{ConfigError, ConfigErrors, Diagnostics};
pub use limits::*;
pub use model::{
    ApiKey, Billing, Cohort, CreditType, Customer, DEFAULT_ENFORCEMENT, DEFAULT_FAILURE_POLICY,
    DEFAULT_MODE, DEFAULT_UNMATCHED, DEFAULT_UPGRADE_POLICY, DEFAULT_UPSTREAM_ERROR_POLICY,
    Defaults, EmbeddedGrant, Enforcement, FailurePolicy, Feature, Identity, Method, Mode,
    Overdraft, Plan, Unmatched, UpgradePolicy, Upstream, UpstreamErrorPolicy,
};
pub use pattern::{PathPattern, Segment, path_segments};
pub use request_target::{PathError, normalize_path, query_values};
pub use route_table::{IdempotencyReplays, Route, RouteMatch, RouteTable};
pub use usage::{
    DEFAULT_INSPECT_MAX_BYTES, DEFAULT_UNREADABLE_ESTIMATE, ESTIMATE_READ_TIMEOUT_MS,
    MAX_ESTIMATE_BODY_BYTES, MAX_INSPECT_MAX_BYTES, MAX_USAGE_FIELDS, MAX_USAGE_PATH_SEGMENTS,
    RequestEstimate, ResponseUsage, UnreadableEstimate, UsageField, UsageHeader, UsagePath,
};
pub use validate::{DEFAULT_UPSTREAM, is_identifier};
