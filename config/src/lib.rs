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
mod route_table;
mod schema;
mod usage;
mod validate;

pub use config::{CostSource, PricingConfig, ResolvedCost, UNPUBLISHED_VERSION};
pub use cost::{CostRule, RequestValues, UnitSource, UnitsValue, query_param};
pub use diagnostics::{ConfigError, ConfigErrors, Diagnostics};
pub use limits::*;
pub use model::{
    ApiKey, Billing, Cohort, CreditType, Customer, DEFAULT_FAILURE_POLICY, DEFAULT_MODE,
    DEFAULT_UNMATCHED, DEFAULT_UPSTREAM_ERROR_POLICY, Defaults, EmbeddedGrant, FailurePolicy,
    Feature, Identity, Method, Mode, Overdraft, Plan, Unmatched, Upstream, UpstreamErrorPolicy,
};
pub use pattern::{PathPattern, Segment, path_segments};
pub use route_table::{Route, RouteMatch, RouteTable};
pub use usage::{
    DEFAULT_INSPECT_MAX_BYTES, MAX_ESTIMATE_BODY_BYTES, MAX_INSPECT_MAX_BYTES, MAX_USAGE_FIELDS,
    MAX_USAGE_PATH_SEGMENTS, RequestEstimate, ResponseUsage, UsageField, UsageHeader, UsagePath,
};
pub use validate::{DEFAULT_UPSTREAM, is_identifier};
