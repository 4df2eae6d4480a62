//! Validation: turns the file structs of `schema` into the model, collecting every problem
//! with its field path and line instead of stopping at the first.
//!
//! Every check lives here, one submodule per section of the file, so the model types can
//! assume valid values. This module orchestrates the sections in file-independent order;
//! nothing here reads files or panics on bad input.

mod cohorts;
mod costs;
mod defaults;
mod features;
mod from_response;
mod grants;
mod identity;
mod plans_customers;
mod routes;
mod syntax;
mod upstreams;
mod values;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use crate::diagnostics::{ConfigError, Diagnostics};
use crate::model::{
    ApiKey, Billing, Cohort, CreditType, Customer, Defaults, EmbeddedGrant, Feature, Identity,
    Plan, Upstream,
};
use crate::route_table::Route;
use crate::schema::{ConfigFile, Name};

pub use syntax::is_identifier;

/// The name of the upstream used by routes without `upstream` and by `pass_through`.
pub const DEFAULT_UPSTREAM: &str = "default";

/// How many known names an "unknown name" message lists before eliding the rest.
const MAX_LISTED_NAMES: usize = 10;

/// Everything validated, ready to become a `PricingConfig`.
pub(crate) struct Validated {
    pub defaults: Defaults,
    pub default_plan: Option<String>,
    pub credit_types: BTreeMap<String, CreditType>,
    pub features: BTreeMap<String, Feature>,
    pub plans: BTreeMap<String, Plan>,
    pub customers: BTreeMap<String, Customer>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    pub identity: Identity,
    pub api_keys: HashMap<[u8; 32], ApiKey>,
    pub billing: Billing,
    pub embedded_grants: Vec<EmbeddedGrant>,
    pub cohorts: BTreeMap<String, Cohort>,
}

/// Validates a parsed file; `text` is the file's text (for line numbers) and `file` its name.
pub(crate) fn validate(
    config: ConfigFile,
    text: &str,
    file: &str,
) -> Result<Validated, Vec<ConfigError>> {
    let mut checker = Checker {
        diagnostics: Diagnostics::new(file, text),
    };
    let validated = checker.config(config);
    if checker.diagnostics.is_empty() {
        Ok(validated)
    } else {
        Err(checker.diagnostics.into_errors())
    }
}

/// Names written in the file, valid or not, so a reference to a name whose own definition
/// has an error is not reported a second time as "unknown".
struct Declared {
    credit_types: BTreeSet<String>,
    features: BTreeSet<String>,
    plans: BTreeSet<String>,
    upstreams: BTreeSet<String>,
}

impl Declared {
    fn of(config: &ConfigFile) -> Self {
        fn names<T>(table: &BTreeMap<Name, T>) -> BTreeSet<String> {
            table.keys().map(|name| name.get_ref().clone()).collect()
        }
        Self {
            credit_types: names(&config.credit_types),
            features: names(&config.features),
            plans: names(&config.plans),
            upstreams: names(&config.upstreams),
        }
    }
}

/// Checks one file; the checks of each section are methods in that section's submodule.
struct Checker<'a> {
    diagnostics: Diagnostics<'a>,
}

impl Checker<'_> {
    fn report(&mut self, field: impl Into<String>, span: Option<Range<usize>>, message: String) {
        self.diagnostics.report(field, span, message);
    }

    fn line_of(&self, offset: usize) -> u32 {
        self.diagnostics.line_of(offset)
    }

    /// Checks every section in the order their errors have always been reported (errors on
    /// one line keep this order), then the checks that compare sections.
    fn config(&mut self, config: ConfigFile) -> Validated {
        let declared = Declared::of(&config);
        let ConfigFile {
            defaults,
            default_plan,
            credit_types,
            features,
            routes,
            plans,
            customers,
            upstreams,
            identity,
            api_keys,
            billing,
            embedded_grants,
            cohorts,
        } = config;
        let (defaults, defaults_spans) = self.defaults(defaults);
        let credit_types = self.credit_types(credit_types);
        let upstreams = self.upstreams(upstreams);
        let features = self.features(features, &declared, &credit_types);
        let plans = self.plans(plans, &declared);
        let customers = self.customers(customers, &declared);
        let default_plan = default_plan.and_then(|name| {
            self.reference("default_plan", &name, "plan", &declared.plans)
                .then(|| name.into_inner())
        });
        let routes = self.routes(routes, &defaults, &declared, &features, &upstreams);
        let identity = self.identity(identity.unwrap_or_default());
        let api_keys = self.api_keys(api_keys);
        let billing = self.billing(billing.unwrap_or_default());
        let embedded_grants = self.embedded_grants(embedded_grants, &declared, &credit_types);
        let cohorts = self.cohorts(cohorts, &declared);
        self.defaults_against_upstreams(&defaults, &defaults_spans, &declared);
        Validated {
            defaults,
            default_plan,
            credit_types,
            features,
            plans,
            customers,
            upstreams,
            routes,
            identity,
            api_keys,
            billing,
            embedded_grants,
            cohorts,
        }
    }
}

/// `unknown feature "chatt" (known: chat, embed)`.
fn unknown(what: &str, name: &str, known: &BTreeSet<String>) -> String {
    if known.is_empty() {
        let plural = match what.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{what}s"),
        };
        return format!("unknown {what} {name:?} (no {plural} are defined)");
    }
    let mut listed: Vec<&str> = known
        .iter()
        .take(MAX_LISTED_NAMES)
        .map(String::as_str)
        .collect();
    if known.len() > MAX_LISTED_NAMES {
        listed.push("…");
    }
    format!("unknown {what} {name:?} (known: {})", listed.join(", "))
}

/// A table key as written in a TOML path: bare when it can be, quoted otherwise.
pub(crate) fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_when_not_bare() {
        assert_eq!(key("chat"), "chat");
        assert_eq!(key("acme@corp"), "\"acme@corp\"");
    }
}
