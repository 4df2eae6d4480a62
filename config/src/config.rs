//! [`PricingConfig`]: loading a file, the validated whole, and cost resolution for a
//! feature and customer.
//!
//! Loading happens off the request path; the gateway swaps whole configs and only calls
//! the lookups ([`PricingConfig::route_table`], [`PricingConfig::cost_for`]) per request.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::cost::CostRule;
use crate::diagnostics::{ConfigError, ConfigErrors, Diagnostics};
use crate::limits::DEFAULT_OVERDRAFT;
use crate::model::{
    ApiKey, Billing, Cohort, CreditType, Customer, Defaults, EmbeddedGrant, Feature, Identity,
    Plan, Upstream,
};
use crate::route_table::{RouteMatch, RouteTable};
use crate::schema::ConfigFile;
use crate::validate::{Validated, validate};

/// The version of a config not published by a sidecar: the file a process loaded itself.
pub const UNPUBLISHED_VERSION: u64 = 0;

/// Hex digits of the content hash in [`PricingConfig::version_label`]: 48 bits tell
/// versions apart with room to spare, and keep the label short in logs and the ledger.
const VERSION_HASH_DIGITS: usize = 12;

/// A validated pricing config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingConfig {
    file: String,
    content_hash: String,
    defaults: Defaults,
    default_plan: Option<String>,
    credit_types: BTreeMap<String, CreditType>,
    features: BTreeMap<String, Feature>,
    plans: BTreeMap<String, Plan>,
    customers: BTreeMap<String, Customer>,
    upstreams: BTreeMap<String, Upstream>,
    route_table: RouteTable,
    identity: Identity,
    api_keys: HashMap<[u8; 32], ApiKey>,
    billing: Billing,
    embedded_grants: Vec<EmbeddedGrant>,
    cohorts: BTreeMap<String, Cohort>,
    /// Cohort name by pinned customer id, and by pinned plan name.
    cohort_of_customer: HashMap<String, String>,
    cohort_of_plan: HashMap<String, String>,
    version: u64,
}

/// Where a resolved cost rule came from, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostSource {
    /// The customer's own `costs` override.
    Customer,
    /// The prices of the cohort the customer (or the customer's plan) is pinned to.
    Cohort,
    /// The `costs` override of the customer's plan.
    Plan,
    /// The `costs` override of `default_plan` (the customer is not listed in the config).
    DefaultPlan,
    /// The feature's own `cost`.
    Feature,
}

/// The price of one feature for one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedCost<'a> {
    /// The feature priced.
    pub feature: &'a Feature,
    /// The credit type burned.
    pub credit_type: &'a CreditType,
    /// The rule that applies.
    pub rule: &'a CostRule,
    /// Where the rule came from.
    pub source: CostSource,
    /// The plan that applied: the customer's, else `default_plan`, else none.
    pub plan: Option<&'a str>,
    /// How far below zero the customer's balance of this credit type may go, in its
    /// smallest unit.
    pub overdraft: u64,
    /// The cohort the customer is pinned to, when it priced this feature.
    pub cohort: Option<&'a str>,
}

impl PricingConfig {
    /// Parses and validates `text`; `file_name` is only used in error messages.
    pub fn from_toml_str(text: &str, file_name: &str) -> Result<PricingConfig, ConfigErrors> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| {
            let mut diagnostics = Diagnostics::new(file_name, text);
            diagnostics.report(
                toml_error_field(&error),
                error.span(),
                error.message().trim_end().to_owned(),
            );
            ConfigErrors::new(diagnostics.into_errors())
        })?;
        let Validated {
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
        } = validate(file, text, file_name).map_err(ConfigErrors::new)?;
        Ok(PricingConfig {
            file: file_name.to_owned(),
            content_hash: sha1_smol::Sha1::from(text).digest().to_string(),
            defaults,
            default_plan,
            credit_types,
            features,
            plans,
            customers,
            upstreams,
            route_table: RouteTable::new(routes),
            identity,
            api_keys,
            billing,
            embedded_grants,
            cohort_of_customer: cohorts
                .values()
                .flat_map(|c| c.customers.iter().map(|id| (id.clone(), c.name.clone())))
                .collect(),
            cohort_of_plan: cohorts
                .values()
                .flat_map(|c| c.plans.iter().map(|p| (p.clone(), c.name.clone())))
                .collect(),
            cohorts,
            version: UNPUBLISHED_VERSION,
        })
    }

    /// This config with its published version number: the sidecar numbers each valid
    /// config it publishes, and gateways and the ledger name prices by that number.
    pub fn with_version(mut self, version: u64) -> PricingConfig {
        self.version = version;
        self
    }

    /// The published version number, or [`UNPUBLISHED_VERSION`] for a config read from a
    /// local file and not (yet) published.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version as recorded on holds and in the ledger: `<number>-<first 12 hex digits
    /// of the content hash>`, e.g. `7-3f2a9c1b04de`. The number orders versions; the hash
    /// tells two files with the same number apart (a file a gateway watched itself).
    pub fn version_label(&self) -> String {
        format!(
            "{}-{}",
            self.version,
            &self.content_hash[..VERSION_HASH_DIGITS.min(self.content_hash.len())]
        )
    }

    /// The pricing version recorded on a hold priced by `cost`: the
    /// [`version_label`](Self::version_label), followed by `@<cohort>` when a cohort's
    /// pinned price applied (`7-3f2a9c1b04de@launch_2025`).
    pub fn pricing_version_of(&self, cost: &ResolvedCost<'_>) -> String {
        match cost.cohort {
            Some(cohort) => format!("{}@{cohort}", self.version_label()),
            None => self.version_label(),
        }
    }

    /// Cohorts by name.
    pub fn cohorts(&self) -> &BTreeMap<String, Cohort> {
        &self.cohorts
    }

    /// The cohort `customer` is pinned to: by id first, else through the customer's plan
    /// (or `default_plan` for customers not listed).
    pub fn cohort_for(&self, customer: Option<&str>) -> Option<&Cohort> {
        let by_id = customer.and_then(|id| self.cohort_of_customer.get(id));
        let plan = match customer.and_then(|id| self.customers.get(id)) {
            Some(c) => Some(c.plan.as_str()),
            None => self.default_plan.as_deref(),
        };
        let name = by_id.or_else(|| plan.and_then(|p| self.cohort_of_plan.get(p)))?;
        self.cohorts.get(name)
    }

    /// Reads and validates the file at `path`; an unreadable file is reported as a
    /// [`ConfigError`] like any other problem.
    pub fn load(path: impl AsRef<Path>) -> Result<PricingConfig, ConfigErrors> {
        let path = path.as_ref();
        let file_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors::new(vec![ConfigError {
                file: file_name.clone(),
                field: String::new(),
                line: None,
                message: format!("cannot read the file: {error}"),
            }])
        })?;
        PricingConfig::from_toml_str(&text, &file_name)
    }

    /// The file name given when loading.
    pub fn file_name(&self) -> &str {
        &self.file
    }

    /// The SHA-1 of the file's text as 40 lower-case hex digits: the same as `sha1sum`
    /// prints, so ops can tell which file a gateway runs. Identifies a version; it is not a
    /// security measure.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// The `[defaults]` table with defaults applied.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// The plan of customers not listed under `[customers]`, if any.
    pub fn default_plan(&self) -> Option<&str> {
        self.default_plan.as_deref()
    }

    /// Credit types by name.
    pub fn credit_types(&self) -> &BTreeMap<String, CreditType> {
        &self.credit_types
    }

    /// Features by name.
    pub fn features(&self) -> &BTreeMap<String, Feature> {
        &self.features
    }

    /// Plans by name.
    pub fn plans(&self) -> &BTreeMap<String, Plan> {
        &self.plans
    }

    /// Customers by id.
    pub fn customers(&self) -> &BTreeMap<String, Customer> {
        &self.customers
    }

    /// Upstreams by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Upstream> {
        &self.upstreams
    }

    /// The routes, compiled for lookup; `route_table().routes()` lists them in file order.
    pub fn route_table(&self) -> &RouteTable {
        &self.route_table
    }

    /// How the gateway identifies the customer (`[identity]`, defaults applied).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The customer of the API key whose SHA-256 is `hash`, from `[[api_keys]]`. Production
    /// keeps keys in Redis; these serve the quickstart. A hash-map lookup, no allocation.
    pub fn customer_for_key_hash(&self, hash: &[u8; 32]) -> Option<&ApiKey> {
        self.api_keys.get(hash)
    }

    /// Every `[[api_keys]]` entry with its SHA-256, in no particular order.
    pub fn api_keys(&self) -> impl ExactSizeIterator<Item = (&[u8; 32], &ApiKey)> {
        self.api_keys.iter()
    }

    /// The `[billing]` table (empty when absent).
    pub fn billing(&self) -> &Billing {
        &self.billing
    }

    /// The `[[embedded_grants]]`, in file order: credits the embedded in-process store grants
    /// at start-up. A gateway running on Redis ignores them.
    pub fn embedded_grants(&self) -> &[EmbeddedGrant] {
        &self.embedded_grants
    }

    /// Shorthand for `route_table().lookup(..)`: the first route in file order matching the
    /// request.
    pub fn match_route(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> Option<RouteMatch<'_>> {
        self.route_table.lookup(method, host, path)
    }

    /// A one-line description for logs, e.g. `3 credit types, 12 features, 40 routes, 2
    /// plans, 5 customers, 2 upstreams`.
    pub fn summary(&self) -> String {
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        [
            count(self.credit_types.len(), "credit type", "credit types"),
            count(self.features.len(), "feature", "features"),
            count(self.route_table.len(), "route", "routes"),
            count(self.plans.len(), "plan", "plans"),
            count(self.customers.len(), "customer", "customers"),
            count(self.upstreams.len(), "upstream", "upstreams"),
        ]
        .join(", ")
    }

    /// The price of `feature` for `customer`, or `None` for an unknown feature.
    ///
    /// The rule is the first found of: the customer's own override, the price of the
    /// cohort the customer (by id, else through its plan) is pinned to, the override of the
    /// customer's plan, the override of `default_plan` (for customers not in the config, or
    /// when `customer` is `None`), the feature's cost. The overdraft is the customer's if
    /// set, else the applied plan's, else [`DEFAULT_OVERDRAFT`].
    pub fn cost_for(&self, feature: &str, customer: Option<&str>) -> Option<ResolvedCost<'_>> {
        let feature = self.features.get(feature)?;
        let credit_type = self.credit_types.get(&feature.credit_type)?;
        let customer_id = customer;
        let customer = customer.and_then(|id| self.customers.get(id));
        let (plan_name, plan_source) = match customer {
            Some(customer) => (Some(customer.plan.as_str()), CostSource::Plan),
            None => (self.default_plan.as_deref(), CostSource::DefaultPlan),
        };
        let plan = plan_name.and_then(|name| self.plans.get(name));
        let cohort = self
            .cohort_for(customer.map(|c| c.id.as_str()).or(customer_id))
            .filter(|c| c.costs.contains_key(&feature.name));
        let (rule, source) = if let Some(rule) = customer.and_then(|c| c.costs.get(&feature.name)) {
            (rule, CostSource::Customer)
        } else if let Some(rule) = cohort.and_then(|c| c.costs.get(&feature.name)) {
            (rule, CostSource::Cohort)
        } else if let Some(rule) = plan.and_then(|p| p.costs.get(&feature.name)) {
            (rule, plan_source)
        } else {
            (&feature.cost, CostSource::Feature)
        };
        let overdraft = customer
            .and_then(|c| c.overdraft.as_ref())
            .or(plan.map(|p| &p.overdraft))
            .map_or(DEFAULT_OVERDRAFT, |overdraft| {
                overdraft.for_credit_type(&credit_type.name)
            });
        Some(ResolvedCost {
            feature,
            credit_type,
            rule,
            source,
            plan: plan_name,
            overdraft,
            cohort: cohort
                .filter(|_| source == CostSource::Cohort)
                .map(|c| c.name.as_str()),
        })
    }
}

/// The key path the toml crate attaches to a type error (`credit_types.api.scale`), or an
/// empty string. The crate shows it only in its context-free rendering, so render that.
fn toml_error_field(error: &toml::de::Error) -> String {
    let mut bare = error.clone();
    bare.set_input(None);
    bare.to_string()
        .lines()
        .filter_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
        .next_back()
        .unwrap_or_default()
        .to_owned()
}
