//! Validation: turns the file structs of `schema` into the model, collecting every problem
//! with its field path and line instead of stopping at the first.
//!
//! Every check lives here, so the model types can assume valid values. Nothing here reads
//! files or panics on bad input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;

use toml::Spanned;

use crate::cost::{CostRule, UnitSource};
use crate::error::{ConfigError, LineIndex};
use crate::limits::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_CUSTOMER_HEADER, DEFAULT_GRANT_PRIORITY,
    DEFAULT_HOLD_TTL_MS, DEFAULT_IDENTITY_HEADER, DEFAULT_IDENTITY_SCHEME, DEFAULT_OVERDRAFT,
    DEFAULT_READ_TIMEOUT_MS, DEFAULT_STORE_TIMEOUT_MS, DEFAULT_STRIP_HEADERS, MAX_AMOUNT,
    MAX_API_KEY_NAME_LEN, MAX_CONNECT_TIMEOUT_MS, MAX_GRANT_EXPIRES_IN_S, MAX_GRANT_PRIORITY,
    MAX_HOLD_TTL_MS, MAX_HOST_LEN, MAX_IDENTIFIER_LEN, MAX_READ_TIMEOUT_MS, MAX_ROUTE_NAME_LEN,
    MAX_ROUTES, MAX_SCALE, MAX_STORE_TIMEOUT_MS, MAX_URL_LEN, MIN_HOLD_TTL_MS,
};
use crate::model::{
    ApiKey, Billing, Cohort, CreditType, Customer, DEFAULT_FAILURE_POLICY, DEFAULT_MODE,
    DEFAULT_UNMATCHED, DEFAULT_UPSTREAM_ERROR_POLICY, Defaults, EmbeddedGrant, Feature, Identity,
    Method, Overdraft, Plan, Unmatched, Upstream,
};
use crate::pattern::PathPattern;
use crate::route_table::Route;
use crate::schema::{
    ApiKeyFile, BillingFile, CohortFile, ConfigFile, CostFile, CreditTypeFile, CustomerFile,
    DefaultsFile, EmbeddedGrantFile, FeatureFile, IdentityFile, Name, OverdraftFile, PlanFile,
    RouteFile, UpstreamFile,
};
use crate::usage::{
    DEFAULT_INSPECT_MAX_BYTES, MAX_ESTIMATE_BODY_BYTES, MAX_INSPECT_MAX_BYTES, MAX_USAGE_FIELDS,
    MAX_USAGE_PATH_SEGMENTS, RequestEstimate, ResponseUsage, UsageField, UsageHeader, UsagePath,
};

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
        file,
        lines: LineIndex::new(text),
        errors: Vec::new(),
    };
    let validated = checker.config(config);
    if checker.errors.is_empty() {
        Ok(validated)
    } else {
        Err(checker.errors)
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

/// What a single route is checked against.
struct RouteContext<'a> {
    defaults: &'a Defaults,
    declared: &'a Declared,
    features: &'a BTreeMap<String, Feature>,
    upstreams: &'a BTreeMap<String, Upstream>,
}

struct Checker<'a> {
    file: &'a str,
    lines: LineIndex,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn report(&mut self, field: impl Into<String>, span: Option<Range<usize>>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            field: field.into(),
            line: span.map(|span| self.lines.line_of(span.start)),
            message,
        });
    }

    fn config(&mut self, config: ConfigFile) -> Validated {
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
        let declared = Declared {
            credit_types: credit_types
                .keys()
                .map(|name| name.get_ref().clone())
                .collect(),
            features: features.keys().map(|name| name.get_ref().clone()).collect(),
            plans: plans.keys().map(|name| name.get_ref().clone()).collect(),
            upstreams: upstreams
                .keys()
                .map(|name| name.get_ref().clone())
                .collect(),
        };

        let defaults_span = defaults.as_ref().map(Spanned::span);
        let defaults = defaults.map(Spanned::into_inner).unwrap_or_default();
        let unmatched_span = defaults.unmatched.as_ref().map(Spanned::span);
        let hold_ttl_span = defaults.hold_ttl_ms.as_ref().map(Spanned::span);
        let defaults = self.defaults(defaults);
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

        if defaults.unmatched == Unmatched::PassThrough
            && !declared.upstreams.contains(DEFAULT_UPSTREAM)
        {
            self.report(
                "defaults.unmatched",
                unmatched_span.or(defaults_span.clone()),
                format!(
                    "\"pass_through\" forwards unmatched requests to the upstream named \
                     \"{DEFAULT_UPSTREAM}\", which is not defined"
                ),
            );
        }
        for upstream in upstreams.values() {
            let slowest_ms = upstream.connect_timeout_ms + upstream.read_timeout_ms;
            if defaults.hold_ttl_ms < slowest_ms {
                self.report(
                    "defaults.hold_ttl_ms",
                    hold_ttl_span.clone().or(defaults_span.clone()),
                    format!(
                        "{} ms is shorter than upstreams.{}'s connect_timeout_ms + \
                         read_timeout_ms ({slowest_ms} ms): a hold could expire while its \
                         request still waits for the upstream",
                        defaults.hold_ttl_ms,
                        key(&upstream.name)
                    ),
                );
            }
        }

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

    fn defaults(&mut self, defaults: DefaultsFile) -> Defaults {
        let DefaultsFile {
            mode,
            failure_policy,
            store_timeout_ms,
            unmatched,
            hold_ttl_ms,
        } = defaults;
        Defaults {
            mode: mode.unwrap_or(DEFAULT_MODE),
            failure_policy: failure_policy.unwrap_or(DEFAULT_FAILURE_POLICY),
            store_timeout_ms: self.duration_ms(
                "defaults.store_timeout_ms",
                store_timeout_ms.as_ref(),
                1,
                MAX_STORE_TIMEOUT_MS,
                DEFAULT_STORE_TIMEOUT_MS,
            ),
            unmatched: unmatched.map_or(DEFAULT_UNMATCHED, Spanned::into_inner),
            hold_ttl_ms: self.duration_ms(
                "defaults.hold_ttl_ms",
                hold_ttl_ms.as_ref(),
                MIN_HOLD_TTL_MS,
                MAX_HOLD_TTL_MS,
                DEFAULT_HOLD_TTL_MS,
            ),
        }
    }

    fn credit_types(
        &mut self,
        credit_types: BTreeMap<Name, CreditTypeFile>,
    ) -> BTreeMap<String, CreditType> {
        let mut valid = BTreeMap::new();
        for (name, credit_type) in credit_types {
            let path = format!("credit_types.{}", key(name.get_ref()));
            let CreditTypeFile {
                display_name,
                scale,
            } = credit_type;
            let mut ok = self.identifier(&path, &name, "credit type name");
            let display_name = match display_name {
                None => name.get_ref().clone(),
                Some(display_name) => {
                    if display_name.get_ref().trim().is_empty() {
                        ok = false;
                        self.report(
                            format!("{path}.display_name"),
                            Some(display_name.span()),
                            "must not be empty".to_owned(),
                        );
                    }
                    display_name.into_inner()
                }
            };
            let scale_value = *scale.get_ref();
            let scale = match u32::try_from(scale_value) {
                Ok(scale) if scale <= MAX_SCALE => scale,
                _ => {
                    self.report(
                        format!("{path}.scale"),
                        Some(scale.span()),
                        format!("must be between 0 and {MAX_SCALE}, got {scale_value}"),
                    );
                    continue;
                }
            };
            if ok {
                let name = name.into_inner();
                let credit_type = CreditType {
                    name: name.clone(),
                    display_name,
                    scale,
                };
                valid.insert(name, credit_type);
            }
        }
        valid
    }

    fn upstreams(&mut self, upstreams: BTreeMap<Name, UpstreamFile>) -> BTreeMap<String, Upstream> {
        let mut valid = BTreeMap::new();
        for (name, upstream) in upstreams {
            let path = format!("upstreams.{}", key(name.get_ref()));
            let UpstreamFile {
                address,
                tls,
                sni,
                connect_timeout_ms,
                read_timeout_ms,
            } = upstream;
            let mut ok = self.identifier(&path, &name, "upstream name");
            let host = match parse_address(address.get_ref()) {
                Ok(host) => Some(host),
                Err(message) => {
                    ok = false;
                    self.report(format!("{path}.address"), Some(address.span()), message);
                    None
                }
            };
            let sni = match sni {
                Some(sni) if !tls => {
                    ok = false;
                    self.report(
                        format!("{path}.sni"),
                        Some(sni.span()),
                        "is set but tls = false; set tls = true or remove sni".to_owned(),
                    );
                    None
                }
                Some(sni) => {
                    if !is_host_name(sni.get_ref()) {
                        ok = false;
                        self.report(
                            format!("{path}.sni"),
                            Some(sni.span()),
                            format!("{:?} is not a valid host name", sni.get_ref()),
                        );
                    }
                    Some(sni.into_inner().to_ascii_lowercase())
                }
                None if tls => host
                    .filter(|host| host.parse::<IpAddr>().is_err() && !host.starts_with('['))
                    .map(|host| host.to_ascii_lowercase()),
                None => None,
            };
            let connect_timeout_ms = self.duration_ms(
                &format!("{path}.connect_timeout_ms"),
                connect_timeout_ms.as_ref(),
                1,
                MAX_CONNECT_TIMEOUT_MS,
                DEFAULT_CONNECT_TIMEOUT_MS,
            );
            let read_timeout_ms = self.duration_ms(
                &format!("{path}.read_timeout_ms"),
                read_timeout_ms.as_ref(),
                1,
                MAX_READ_TIMEOUT_MS,
                DEFAULT_READ_TIMEOUT_MS,
            );
            if ok {
                let name = name.into_inner();
                let upstream = Upstream {
                    name: name.clone(),
                    address: address.into_inner(),
                    tls,
                    sni,
                    connect_timeout_ms,
                    read_timeout_ms,
                };
                valid.insert(name, upstream);
            }
        }
        valid
    }

    fn features(
        &mut self,
        features: BTreeMap<Name, FeatureFile>,
        declared: &Declared,
        credit_types: &BTreeMap<String, CreditType>,
    ) -> BTreeMap<String, Feature> {
        let mut valid = BTreeMap::new();
        for (name, feature) in features {
            let path = format!("features.{}", key(name.get_ref()));
            let FeatureFile {
                credit_type,
                cost,
                description,
            } = feature;
            let mut ok = self.identifier(&path, &name, "feature name");
            ok &= self.reference(
                &format!("{path}.credit_type"),
                &credit_type,
                "credit type",
                &declared.credit_types,
            );
            ok &= credit_types.contains_key(credit_type.get_ref());
            let cost = self.cost_rule(&format!("{path}.cost"), &cost);
            if let (true, Some(cost)) = (ok, cost) {
                let name = name.into_inner();
                let feature = Feature {
                    name: name.clone(),
                    credit_type: credit_type.into_inner(),
                    cost,
                    description,
                };
                valid.insert(name, feature);
            }
        }
        valid
    }

    fn plans(
        &mut self,
        plans: BTreeMap<Name, PlanFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Plan> {
        let mut valid = BTreeMap::new();
        for (name, plan) in plans {
            let path = format!("plans.{}", key(name.get_ref()));
            let PlanFile {
                description,
                overdraft,
                costs,
            } = plan;
            let mut ok = self.identifier(&path, &name, "plan name");
            let overdraft = match overdraft {
                None => Some(Overdraft::default()),
                Some(overdraft) => {
                    self.overdraft(&format!("{path}.overdraft"), &overdraft, declared)
                }
            };
            let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
            ok &= overdraft.is_some() && costs.is_some();
            if let (true, Some(overdraft), Some(costs)) = (ok, overdraft, costs) {
                let name = name.into_inner();
                let plan = Plan {
                    name: name.clone(),
                    description,
                    overdraft,
                    costs,
                };
                valid.insert(name, plan);
            }
        }
        valid
    }

    /// `[cohorts.NAME]`: every cohort pins someone to at least one price, and no customer
    /// or plan is pinned twice (which price would win would depend on name order).
    fn cohorts(
        &mut self,
        cohorts: BTreeMap<Name, CohortFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Cohort> {
        let mut valid = BTreeMap::new();
        let mut pinned_customers: BTreeMap<String, String> = BTreeMap::new();
        let mut pinned_plans: BTreeMap<String, String> = BTreeMap::new();
        for (name, cohort) in cohorts {
            let path = format!("cohorts.{}", key(name.get_ref()));
            let CohortFile {
                description,
                costs,
                customers,
                plans,
            } = cohort;
            let mut ok = self.identifier(&path, &name, "cohort name");
            if costs.is_empty() {
                ok = false;
                self.report(
                    format!("{path}.costs"),
                    Some(name.span()),
                    "a cohort must pin at least one feature's price (costs = { feature = \
                     { kind = .. } })"
                        .to_owned(),
                );
            }
            if customers.is_empty() && plans.is_empty() {
                ok = false;
                self.report(
                    path.clone(),
                    Some(name.span()),
                    "a cohort must pin someone: list customers, plans or both".to_owned(),
                );
            }
            let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
            for (i, customer) in customers.iter().enumerate() {
                let field = format!("{path}.customers[{i}]");
                ok &= self.identifier(&field, customer, "customer id");
                if let Some(other) =
                    pinned_customers.insert(customer.get_ref().clone(), name.get_ref().clone())
                {
                    ok = false;
                    self.report(
                        field,
                        Some(customer.span()),
                        format!(
                            "customer {:?} is already pinned by cohorts.{}: a customer \
                             belongs to one cohort at most",
                            customer.get_ref(),
                            key(&other)
                        ),
                    );
                }
            }
            for (i, plan) in plans.iter().enumerate() {
                let field = format!("{path}.plans[{i}]");
                ok &= self.reference(&field, plan, "plan", &declared.plans);
                if let Some(other) =
                    pinned_plans.insert(plan.get_ref().clone(), name.get_ref().clone())
                {
                    ok = false;
                    self.report(
                        field,
                        Some(plan.span()),
                        format!(
                            "plan {:?} is already pinned by cohorts.{}: a plan belongs to \
                             one cohort at most",
                            plan.get_ref(),
                            key(&other)
                        ),
                    );
                }
            }
            if let (true, Some(costs)) = (ok, costs) {
                let name = name.into_inner();
                let cohort = Cohort {
                    name: name.clone(),
                    description,
                    costs,
                    customers: customers.into_iter().map(Spanned::into_inner).collect(),
                    plans: plans.into_iter().map(Spanned::into_inner).collect(),
                };
                valid.insert(name, cohort);
            }
        }
        valid
    }

    fn customers(
        &mut self,
        customers: BTreeMap<Name, CustomerFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Customer> {
        let mut valid = BTreeMap::new();
        for (id, customer) in customers {
            let path = format!("customers.{}", key(id.get_ref()));
            let CustomerFile {
                plan,
                overdraft,
                costs,
            } = customer;
            let mut ok = self.identifier(&path, &id, "customer id");
            ok &= self.reference(&format!("{path}.plan"), &plan, "plan", &declared.plans);
            let overdraft = match overdraft {
                None => Some(None),
                Some(overdraft) => self
                    .overdraft(&format!("{path}.overdraft"), &overdraft, declared)
                    .map(Some),
            };
            let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
            if let (true, Some(overdraft), Some(costs)) = (ok, overdraft, costs) {
                let id = id.into_inner();
                let customer = Customer {
                    id: id.clone(),
                    plan: plan.into_inner(),
                    overdraft,
                    costs,
                };
                valid.insert(id, customer);
            }
        }
        valid
    }

    fn routes(
        &mut self,
        routes: Vec<Spanned<RouteFile>>,
        defaults: &Defaults,
        declared: &Declared,
        features: &BTreeMap<String, Feature>,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Vec<Route> {
        if routes.len() > MAX_ROUTES {
            self.report(
                "routes",
                routes.get(MAX_ROUTES).map(Spanned::span),
                format!("{} routes, the limit is {MAX_ROUTES}", routes.len()),
            );
            return Vec::new();
        }
        // (route, line of its path, whether its name was written in the file)
        let mut checked: Vec<(Option<Route>, Range<usize>, bool)> = Vec::new();
        for (index, route) in routes.into_iter().enumerate() {
            let path_span = route.get_ref().path.span();
            let explicit_name = route.get_ref().name.is_some();
            let route_span = route.span();
            let context = RouteContext {
                defaults,
                declared,
                features,
                upstreams,
            };
            let route = self.route(index, route.into_inner(), route_span, &context);
            checked.push((route, path_span, explicit_name));
        }
        self.shadowed_routes(&checked);
        self.duplicate_route_names(&checked);
        checked
            .into_iter()
            .filter_map(|(route, _, _)| route)
            .collect()
    }

    fn route(
        &mut self,
        index: usize,
        route: RouteFile,
        route_span: Range<usize>,
        context: &RouteContext<'_>,
    ) -> Option<Route> {
        let RouteContext {
            defaults,
            declared,
            features,
            upstreams,
        } = *context;
        let path = format!("routes[{index}]");
        let RouteFile {
            name,
            method,
            host,
            path: pattern,
            feature,
            mode,
            failure_policy,
            store_timeout_ms,
            upstream,
            on_upstream_error,
        } = route;
        let mut ok = true;
        let method = Method::parse(method.get_ref()).or_else(|| {
            self.report(
                format!("{path}.method"),
                Some(method.span()),
                format!(
                    "unknown method {:?} (known: {})",
                    method.get_ref(),
                    Method::known_names()
                ),
            );
            None
        });
        let host = host.and_then(|host| {
            if is_route_host(host.get_ref()) {
                Some(host.into_inner().to_ascii_lowercase())
            } else {
                ok = false;
                self.report(
                    format!("{path}.host"),
                    Some(host.span()),
                    format!(
                        "{:?} is not a host name (letters, digits, \".\" and \"-\", or an \
                         IPv6 address in brackets; no port, no scheme)",
                        host.get_ref()
                    ),
                );
                None
            }
        });
        let pattern = PathPattern::parse(pattern.get_ref())
            .map_err(|message| self.report(format!("{path}.path"), Some(pattern.span()), message))
            .ok();
        ok &= self.reference(
            &format!("{path}.feature"),
            &feature,
            "feature",
            &declared.features,
        );
        let feature = features.get(feature.get_ref());
        let upstream = match upstream {
            Some(upstream) => {
                ok &= self.reference(
                    &format!("{path}.upstream"),
                    &upstream,
                    "upstream",
                    &declared.upstreams,
                );
                upstream.into_inner()
            }
            None => {
                if !declared.upstreams.contains(DEFAULT_UPSTREAM) {
                    ok = false;
                    self.report(
                        format!("{path}.upstream"),
                        Some(route_span),
                        format!(
                            "not set and no upstream is named \"{DEFAULT_UPSTREAM}\"; set \
                             upstream or define [upstreams.{DEFAULT_UPSTREAM}]"
                        ),
                    );
                }
                DEFAULT_UPSTREAM.to_owned()
            }
        };
        let store_timeout_ms = self.duration_ms(
            &format!("{path}.store_timeout_ms"),
            store_timeout_ms.as_ref(),
            1,
            MAX_STORE_TIMEOUT_MS,
            defaults.store_timeout_ms,
        );
        let name = name.and_then(|name| {
            let text = name.get_ref();
            if text.trim().is_empty()
                || text.len() > MAX_ROUTE_NAME_LEN
                || text.contains(char::is_control)
            {
                ok = false;
                self.report(
                    format!("{path}.name"),
                    Some(name.span()),
                    format!(
                        "must be 1 to {MAX_ROUTE_NAME_LEN} bytes of printable text, got {text:?}"
                    ),
                );
                None
            } else {
                Some(name.into_inner())
            }
        });
        let (Some(method), Some(pattern), Some(feature), true) = (method, pattern, feature, ok)
        else {
            return None;
        };
        if !upstreams.contains_key(&upstream) {
            return None;
        }
        let name = name.unwrap_or_else(|| match &host {
            Some(host) => format!("{} {host}{}", method.as_str(), pattern.as_str()),
            None => format!("{} {}", method.as_str(), pattern.as_str()),
        });
        Some(Route {
            name,
            method,
            host,
            path: pattern,
            feature: feature.clone(),
            mode: mode.unwrap_or(defaults.mode),
            failure_policy: failure_policy.unwrap_or(defaults.failure_policy),
            store_timeout_ms,
            upstream,
            on_upstream_error: on_upstream_error.unwrap_or(DEFAULT_UPSTREAM_ERROR_POLICY),
        })
    }

    /// Reports every route that can never match because an earlier route matches all of its
    /// requests. Only single earlier routes are considered: a route covered by the union of
    /// several earlier ones is not detected.
    fn shadowed_routes(&mut self, routes: &[(Option<Route>, Range<usize>, bool)]) {
        for (later_index, (later, span, _)) in routes.iter().enumerate() {
            let Some(later) = later else { continue };
            let earlier =
                routes[..later_index]
                    .iter()
                    .enumerate()
                    .find_map(|(index, (route, span, _))| {
                        route
                            .as_ref()
                            .filter(|earlier| route_covers(earlier, later))
                            .map(|earlier| (index, earlier, span))
                    });
            let Some((earlier_index, earlier, earlier_span)) = earlier else {
                continue;
            };
            let earlier_line = self.lines.line_of(earlier_span.start);
            let message = if route_covers(later, earlier) {
                format!(
                    "duplicate of routes[{earlier_index}] ({:?}, line {earlier_line}): the same \
                     method, host and path",
                    earlier.name
                )
            } else {
                format!(
                    "never matches: shadowed by routes[{earlier_index}] ({:?}, line \
                     {earlier_line}), which comes first and matches every request this route \
                     matches; move this route above it or remove it",
                    earlier.name
                )
            };
            self.report(
                format!("routes[{later_index}]"),
                Some(span.clone()),
                message,
            );
        }
    }

    fn duplicate_route_names(&mut self, routes: &[(Option<Route>, Range<usize>, bool)]) {
        let mut seen: HashMap<&str, (usize, bool)> = HashMap::new();
        for (index, (route, span, explicit)) in routes.iter().enumerate() {
            let Some(route) = route else { continue };
            match seen.get(route.name.as_str()) {
                // Two default names collide only for identical routes, already reported.
                Some(&(first, first_explicit)) if *explicit || first_explicit => {
                    self.report(
                        format!("routes[{index}].name"),
                        Some(span.clone()),
                        format!(
                            "route name {:?} is already used by routes[{first}]; names label \
                             logs and metrics and must be unique",
                            route.name
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(&route.name, (index, *explicit));
                }
            }
        }
    }

    fn identity(&mut self, identity: IdentityFile) -> Identity {
        let IdentityFile {
            header,
            scheme,
            trusted_customer_header,
            customer_header,
            strip_headers,
        } = identity;
        let header_span = header.as_ref().map(Spanned::span);
        let header = match header {
            None => DEFAULT_IDENTITY_HEADER.to_owned(),
            Some(header) => self
                .http_header_name("identity.header", &header)
                .unwrap_or_default(),
        };
        let scheme = match scheme {
            None => (header == DEFAULT_IDENTITY_HEADER).then(|| DEFAULT_IDENTITY_SCHEME.to_owned()),
            Some(scheme) if scheme.get_ref().is_empty() => None,
            Some(scheme) if is_http_token(scheme.get_ref()) => Some(scheme.into_inner()),
            Some(scheme) => {
                self.report(
                    "identity.scheme",
                    Some(scheme.span()),
                    format!(
                        "{:?} is not a valid scheme: write the word before the key without \
                         spaces (e.g. \"Bearer\"), or \"\" when the header carries the key alone",
                        scheme.get_ref()
                    ),
                );
                None
            }
        };
        let trusted_span = trusted_customer_header.as_ref().map(Spanned::span);
        let trusted_customer_header = trusted_customer_header.and_then(|trusted| {
            self.http_header_name("identity.trusted_customer_header", &trusted)
        });
        let customer_span = customer_header.as_ref().map(Spanned::span);
        let customer_header = match customer_header {
            None => DEFAULT_CUSTOMER_HEADER.to_owned(),
            Some(customer_header) => self
                .http_header_name("identity.customer_header", &customer_header)
                .unwrap_or_default(),
        };
        if !header.is_empty() && customer_header == header {
            self.report(
                "identity.customer_header",
                customer_span.or(header_span),
                format!(
                    "{customer_header:?} is also identity.header: the gateway sets this header \
                     towards the upstream and would replace the API key with the customer id"
                ),
            );
        }
        if let Some(trusted) = &trusted_customer_header
            && !customer_header.is_empty()
            && *trusted == customer_header
        {
            self.report(
                "identity.trusted_customer_header",
                trusted_span,
                format!(
                    "{trusted:?} is also identity.customer_header, which the gateway strips \
                     from client requests and sets itself; let the auth layer in front use \
                     another header"
                ),
            );
        }
        let mut strip: Vec<String> = Vec::new();
        match strip_headers {
            None => strip.extend(DEFAULT_STRIP_HEADERS.iter().map(|name| (*name).to_owned())),
            Some(names) => {
                for (index, written) in names.iter().enumerate() {
                    let field = format!("identity.strip_headers[{index}]");
                    let Some(name) = self.http_header_name(&field, written) else {
                        continue;
                    };
                    if let Some(first) = strip.iter().position(|seen| *seen == name) {
                        self.report(
                            field,
                            Some(written.span()),
                            format!("{name:?} is already listed at strip_headers[{first}]"),
                        );
                    }
                    strip.push(name);
                }
            }
        }
        if !strip.contains(&customer_header) {
            strip.push(customer_header.clone());
        }
        Identity {
            header,
            scheme,
            trusted_customer_header,
            customer_header,
            strip_headers: strip,
        }
    }

    fn api_keys(&mut self, keys: Vec<Spanned<ApiKeyFile>>) -> HashMap<[u8; 32], ApiKey> {
        let mut valid = HashMap::new();
        // hash -> (index, line) of its first appearance
        let mut seen: HashMap<[u8; 32], (usize, u32)> = HashMap::new();
        for (index, api_key) in keys.into_iter().enumerate() {
            let path = format!("api_keys[{index}]");
            let ApiKeyFile {
                customer,
                sha256,
                name,
            } = api_key.into_inner();
            let mut ok = self.identifier(&format!("{path}.customer"), &customer, "customer id");
            // The value is never echoed: a mistaken entry may be the plaintext key.
            let hash = match parse_sha256(sha256.get_ref()) {
                Ok(hash) => Some(hash),
                Err(problem) => {
                    self.report(
                        format!("{path}.sha256"),
                        Some(sha256.span()),
                        format!(
                            "must be the SHA-256 of the key as 64 lower-case hex digits \
                             (printf %s 'KEY' | sha256sum), but {problem}; never write the key \
                             itself"
                        ),
                    );
                    None
                }
            };
            let name = name.and_then(|name| {
                let text = name.get_ref();
                if text.trim().is_empty()
                    || text.len() > MAX_API_KEY_NAME_LEN
                    || text.contains(char::is_control)
                {
                    ok = false;
                    self.report(
                        format!("{path}.name"),
                        Some(name.span()),
                        format!(
                            "must be 1 to {MAX_API_KEY_NAME_LEN} bytes of printable text, got \
                             {text:?}"
                        ),
                    );
                    None
                } else {
                    Some(name.into_inner())
                }
            });
            let Some(hash) = hash else { continue };
            let line = self.lines.line_of(sha256.span().start);
            if let Some(&(first, first_line)) = seen.get(&hash) {
                self.report(
                    format!("{path}.sha256"),
                    Some(sha256.span()),
                    format!(
                        "the same hash as api_keys[{first}] (line {first_line}): one key can \
                         identify only one customer"
                    ),
                );
                continue;
            }
            seen.insert(hash, (index, line));
            if ok {
                let api_key = ApiKey {
                    customer: customer.into_inner(),
                    name,
                };
                valid.insert(hash, api_key);
            }
        }
        valid
    }

    fn billing(&mut self, billing: BillingFile) -> Billing {
        let BillingFile { top_up_url } = billing;
        let top_up_url = top_up_url.and_then(|url| match check_url(url.get_ref()) {
            Ok(()) => Some(url.into_inner()),
            Err(message) => {
                self.report("billing.top_up_url", Some(url.span()), message);
                None
            }
        });
        Billing { top_up_url }
    }

    fn embedded_grants(
        &mut self,
        grants: Vec<Spanned<EmbeddedGrantFile>>,
        declared: &Declared,
        credit_types: &BTreeMap<String, CreditType>,
    ) -> Vec<EmbeddedGrant> {
        let mut valid = Vec::new();
        // grant id -> (index, line) of its first appearance
        let mut seen: HashMap<String, (usize, u32)> = HashMap::new();
        for (index, grant) in grants.into_iter().enumerate() {
            let path = format!("embedded_grants[{index}]");
            let EmbeddedGrantFile {
                grant_id,
                customer,
                credit_type,
                amount,
                priority,
                expires_in_s,
            } = grant.into_inner();
            let mut ok = self.identifier(&format!("{path}.grant_id"), &grant_id, "grant id");
            if let Some(&(first, first_line)) = seen.get(grant_id.get_ref()) {
                ok = false;
                self.report(
                    format!("{path}.grant_id"),
                    Some(grant_id.span()),
                    format!(
                        "grant id {:?} is already used by embedded_grants[{first}] (line \
                         {first_line}); a grant id is applied once, so this grant would be \
                         skipped",
                        grant_id.get_ref()
                    ),
                );
            } else {
                let line = self.lines.line_of(grant_id.span().start);
                seen.insert(grant_id.get_ref().clone(), (index, line));
            }
            ok &= self.identifier(&format!("{path}.customer"), &customer, "customer id");
            ok &= self.reference(
                &format!("{path}.credit_type"),
                &credit_type,
                "credit type",
                &declared.credit_types,
            );
            ok &= credit_types.contains_key(credit_type.get_ref());
            let amount = self.checked_amount(&format!("{path}.amount"), &amount, Positive::Yes);
            let priority = match priority {
                None => Some(DEFAULT_GRANT_PRIORITY),
                Some(priority) => {
                    let number = *priority.get_ref();
                    let checked = u32::try_from(number)
                        .ok()
                        .filter(|value| *value <= MAX_GRANT_PRIORITY);
                    if checked.is_none() {
                        self.report(
                            format!("{path}.priority"),
                            Some(priority.span()),
                            format!("must be between 0 and {MAX_GRANT_PRIORITY}, got {number}"),
                        );
                    }
                    checked
                }
            };
            let expires_in_s = match expires_in_s {
                None => Some(None),
                Some(seconds) => {
                    let number = *seconds.get_ref();
                    let checked = u64::try_from(number)
                        .ok()
                        .filter(|value| (1..=MAX_GRANT_EXPIRES_IN_S).contains(value));
                    if checked.is_none() {
                        self.report(
                            format!("{path}.expires_in_s"),
                            Some(seconds.span()),
                            format!(
                                "must be between 1 and {MAX_GRANT_EXPIRES_IN_S} s (leave it out \
                                 for credits that never expire), got {number}"
                            ),
                        );
                    }
                    checked.map(Some)
                }
            };
            if let (true, Some(amount), Some(priority), Some(expires_in_s)) =
                (ok, amount, priority, expires_in_s)
            {
                valid.push(EmbeddedGrant {
                    grant_id: grant_id.into_inner(),
                    customer: customer.into_inner(),
                    credit_type: credit_type.into_inner(),
                    amount,
                    priority,
                    expires_in_s,
                });
            }
        }
        valid
    }

    fn cost_overrides(
        &mut self,
        path: &str,
        costs: BTreeMap<Name, Spanned<CostFile>>,
        declared: &Declared,
    ) -> Option<BTreeMap<String, CostRule>> {
        let mut valid = BTreeMap::new();
        let mut ok = true;
        for (feature, cost) in costs {
            let field = format!("{path}.{}", key(feature.get_ref()));
            if !declared.features.contains(feature.get_ref()) {
                ok = false;
                let message = unknown("feature", feature.get_ref(), &declared.features);
                self.report(field.clone(), Some(feature.span()), message);
            }
            match self.cost_rule(&field, &cost) {
                Some(rule) => {
                    valid.insert(feature.into_inner(), rule);
                }
                None => ok = false,
            }
        }
        ok.then_some(valid)
    }

    fn cost_rule(&mut self, path: &str, cost: &Spanned<CostFile>) -> Option<CostRule> {
        let CostFile {
            kind,
            amount,
            header,
            query,
            rate,
            max,
            default_units,
            estimate,
            usage,
            fallback,
            per_event,
            inspect_max_bytes,
            estimate_from,
            estimate_rate,
            estimate_base,
            estimate_max_body_bytes,
        } = cost.get_ref();
        let present: [(&str, Option<Range<usize>>); 15] = [
            ("amount", amount.as_ref().map(Spanned::span)),
            ("header", header.as_ref().map(Spanned::span)),
            ("query", query.as_ref().map(Spanned::span)),
            ("rate", rate.as_ref().map(Spanned::span)),
            ("max", max.as_ref().map(Spanned::span)),
            ("default_units", default_units.as_ref().map(Spanned::span)),
            ("estimate", estimate.as_ref().map(Spanned::span)),
            ("usage", usage.as_ref().map(Spanned::span)),
            ("fallback", fallback.as_ref().map(Spanned::span)),
            ("per_event", per_event.as_ref().map(Spanned::span)),
            (
                "inspect_max_bytes",
                inspect_max_bytes.as_ref().map(Spanned::span),
            ),
            ("estimate_from", estimate_from.as_ref().map(Spanned::span)),
            ("estimate_rate", estimate_rate.as_ref().map(Spanned::span)),
            ("estimate_base", estimate_base.as_ref().map(Spanned::span)),
            (
                "estimate_max_body_bytes",
                estimate_max_body_bytes.as_ref().map(Spanned::span),
            ),
        ];
        let allowed: &[&str] = match kind.get_ref().as_str() {
            "free" => &[],
            "fixed" => &["amount"],
            "per_unit" => &["header", "query", "rate", "max", "default_units"],
            "from_response" => &[
                "estimate",
                "max",
                "header",
                "rate",
                "usage",
                "fallback",
                "per_event",
                "inspect_max_bytes",
                "estimate_from",
                "estimate_rate",
                "estimate_base",
                "estimate_max_body_bytes",
            ],
            other => {
                self.report(
                    format!("{path}.kind"),
                    Some(kind.span()),
                    format!(
                        "unknown cost kind {other:?} (known: free, fixed, per_unit, from_response)"
                    ),
                );
                return None;
            }
        };
        let mut ok = true;
        for (field, span) in present {
            if let Some(span) = span
                && !allowed.contains(&field)
            {
                ok = false;
                let fields = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                self.report(
                    format!("{path}.{field}"),
                    Some(span),
                    format!(
                        "not a field of kind {:?} (its fields: {fields})",
                        kind.get_ref()
                    ),
                );
            }
        }
        let table_span = cost.span();
        let rule = match kind.get_ref().as_str() {
            "free" => Some(CostRule::Free),
            "fixed" => self
                .amount(
                    path,
                    "amount",
                    amount.as_ref(),
                    &table_span,
                    Positive::FixedAmount,
                )
                .map(|amount| CostRule::Fixed { amount }),
            "per_unit" => {
                let source = match (header, query) {
                    (Some(header), None) => self.header_name(path, header).map(UnitSource::Header),
                    (None, Some(query)) => self.query_name(path, query).map(UnitSource::Query),
                    (Some(_), Some(query)) => {
                        self.report(
                            format!("{path}.query"),
                            Some(query.span()),
                            "set either header or query, not both".to_owned(),
                        );
                        None
                    }
                    (None, None) => {
                        self.report(
                            path,
                            Some(table_span.clone()),
                            "kind \"per_unit\" needs header = \"...\" or query = \"...\" to \
                             read the units from"
                                .to_owned(),
                        );
                        None
                    }
                };
                let rate = self.amount(path, "rate", rate.as_ref(), &table_span, Positive::Yes);
                let max = self.amount(path, "max", max.as_ref(), &table_span, Positive::Yes);
                let default_units_given = default_units.is_some();
                let default_units = default_units.as_ref().and_then(|units| {
                    let value = *units.get_ref();
                    u64::try_from(value)
                        .map_err(|_| {
                            self.report(
                                format!("{path}.default_units"),
                                Some(units.span()),
                                format!("must not be negative, got {value}"),
                            );
                        })
                        .ok()
                });
                let default_units_ok = default_units.is_some() || !default_units_given;
                if let (Some(rate), Some(max)) = (rate, max)
                    && rate > max
                {
                    ok = false;
                    self.report(
                        format!("{path}.rate"),
                        cost.get_ref().rate.as_ref().map(Spanned::span),
                        format!("{rate} is above max ({max}): every request would be charged max"),
                    );
                }
                match (source, rate, max, default_units_ok) {
                    (Some(source), Some(rate), Some(max), true) => Some(CostRule::PerUnit {
                        source,
                        rate,
                        max,
                        default_units,
                    }),
                    _ => None,
                }
            }
            "from_response" => {
                let estimate = self.amount(
                    path,
                    "estimate",
                    estimate.as_ref(),
                    &table_span,
                    Positive::Yes,
                );
                let max = self.amount(path, "max", max.as_ref(), &table_span, Positive::Yes);
                if let (Some(estimate), Some(max)) = (estimate, max)
                    && estimate > max
                {
                    ok = false;
                    self.report(
                        format!("{path}.estimate"),
                        cost.get_ref().estimate.as_ref().map(Spanned::span),
                        format!("{estimate} is above max ({max}); the estimate is reserved up front and may not exceed what a request can cost"),
                    );
                }
                let usage = self.response_usage(path, cost, estimate, max);
                let estimate_from = self.request_estimate(path, cost.get_ref(), max);
                match (estimate, max, usage, estimate_from) {
                    (Some(estimate), Some(max), Some(usage), Some(estimate_from)) => {
                        Some(CostRule::FromResponse {
                            estimate,
                            max,
                            usage: std::sync::Arc::new(usage),
                            estimate_from: estimate_from.map(std::sync::Arc::new),
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        rule.filter(|_| ok)
    }

    /// The request-estimate part of a `from_response` rule: `estimate_from` names a valid
    /// field path and comes with `estimate_rate`; `estimate_base` stays within `max`; the
    /// body bound fits Pingora's replay buffer. `Some(None)`: the rule has none (valid);
    /// `None`: something was wrong (reported).
    fn request_estimate(
        &mut self,
        path: &str,
        file: &CostFile,
        max: Option<u64>,
    ) -> Option<Option<RequestEstimate>> {
        let Some(from) = &file.estimate_from else {
            let strays = [
                (
                    "estimate_rate",
                    file.estimate_rate.as_ref().map(Spanned::span),
                ),
                (
                    "estimate_base",
                    file.estimate_base.as_ref().map(Spanned::span),
                ),
                (
                    "estimate_max_body_bytes",
                    file.estimate_max_body_bytes.as_ref().map(Spanned::span),
                ),
            ];
            let mut ok = true;
            for (field, span) in strays {
                if let Some(span) = span {
                    ok = false;
                    self.report(
                        format!("{path}.{field}"),
                        Some(span),
                        "belongs to an estimate read from the request body: set \
                         estimate_from = \"<JSON field>\" too, or leave it out"
                            .to_owned(),
                    );
                }
            }
            return ok.then_some(None);
        };
        let mut ok = true;
        let parsed = UsagePath::parse(from.get_ref());
        if parsed.is_none() {
            ok = false;
            self.report(
                format!("{path}.estimate_from"),
                Some(from.span()),
                format!(
                    "{:?} is not a request field path: write JSON object keys (A-Z a-z 0-9 _ -) \
                     separated by dots, at most {MAX_USAGE_PATH_SEGMENTS} deep, e.g. \"max_tokens\"",
                    from.get_ref()
                ),
            );
        }
        let rate = match &file.estimate_rate {
            Some(value) => {
                self.checked_amount(&format!("{path}.estimate_rate"), value, Positive::Yes)
            }
            None => {
                self.report(
                    format!("{path}.estimate_from"),
                    Some(from.span()),
                    "needs estimate_rate = <amount per unit> to price the field's unit count"
                        .to_owned(),
                );
                None
            }
        };
        let base = match &file.estimate_base {
            Some(value) => {
                let field = format!("{path}.estimate_base");
                let base = self.checked_amount(&field, value, Positive::No);
                if let (Some(base), Some(max)) = (base, max)
                    && base > max
                {
                    ok = false;
                    self.report(
                        field,
                        Some(value.span()),
                        format!(
                            "{base} is above max ({max}); every request would reserve max \
                             whatever the field says"
                        ),
                    );
                }
                base
            }
            None => Some(0),
        };
        let max_body_bytes = match &file.estimate_max_body_bytes {
            Some(value) => {
                let number = *value.get_ref();
                match u64::try_from(number) {
                    Ok(bytes) if (1..=MAX_ESTIMATE_BODY_BYTES).contains(&bytes) => Some(bytes),
                    _ => {
                        self.report(
                            format!("{path}.estimate_max_body_bytes"),
                            Some(value.span()),
                            format!(
                                "must be between 1 and {MAX_ESTIMATE_BODY_BYTES} bytes (the \
                                 request body the gateway can replay to the upstream), got \
                                 {number}"
                            ),
                        );
                        None
                    }
                }
            }
            None => Some(MAX_ESTIMATE_BODY_BYTES),
        };
        match (ok, parsed, rate, base, max_body_bytes) {
            (true, Some(path), Some(rate), Some(base), Some(max_body_bytes)) => {
                Some(Some(RequestEstimate {
                    path,
                    rate,
                    base,
                    max_body_bytes,
                }))
            }
            _ => None,
        }
    }

    /// The response-usage part of a `from_response` rule: header and rate together, valid
    /// field paths with positive rates, a fallback within `max`, a bounded inspection size.
    fn response_usage(
        &mut self,
        path: &str,
        cost: &Spanned<CostFile>,
        estimate: Option<u64>,
        max: Option<u64>,
    ) -> Option<ResponseUsage> {
        let file = cost.get_ref();
        let table_span = cost.span();
        let mut ok = true;
        let header = match (&file.header, &file.rate) {
            (Some(header), Some(_)) => {
                let name = self.header_name(path, header);
                let rate =
                    self.amount(path, "rate", file.rate.as_ref(), &table_span, Positive::Yes);
                match (name, rate) {
                    (Some(name), Some(rate)) => Some(UsageHeader { name, rate }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            (None, None) => None,
            (Some(header), None) => {
                ok = false;
                self.report(
                    format!("{path}.header"),
                    Some(header.span()),
                    "needs rate = <amount per unit> to price the header's unit count".to_owned(),
                );
                None
            }
            (None, Some(rate)) => {
                ok = false;
                self.report(
                    format!("{path}.rate"),
                    Some(rate.span()),
                    "prices the units of a response header: set header = \"...\" too, or \
                     price body fields under usage"
                        .to_owned(),
                );
                None
            }
        };
        let mut fields = Vec::new();
        if let Some(usage) = &file.usage {
            if usage.get_ref().len() > MAX_USAGE_FIELDS {
                ok = false;
                self.report(
                    format!("{path}.usage"),
                    Some(usage.span()),
                    format!(
                        "{} fields, more than the limit {MAX_USAGE_FIELDS}",
                        usage.get_ref().len()
                    ),
                );
            }
            for (field_path, rate) in usage.get_ref() {
                let field = format!("{path}.usage.{}", key(field_path.get_ref()));
                let parsed = UsagePath::parse(field_path.get_ref());
                if parsed.is_none() {
                    ok = false;
                    self.report(
                        field.clone(),
                        Some(field_path.span()),
                        format!(
                            "{:?} is not a usage field path: write JSON object keys \
                             (A-Z a-z 0-9 _ -) separated by dots, at most \
                             {MAX_USAGE_PATH_SEGMENTS} deep, e.g. \"usage.prompt_tokens\"",
                            field_path.get_ref()
                        ),
                    );
                }
                let rate = self.checked_amount(&field, rate, Positive::Yes);
                match (parsed, rate) {
                    (Some(path), Some(rate)) => fields.push(UsageField { path, rate }),
                    _ => ok = false,
                }
            }
        }
        let fallback = match &file.fallback {
            Some(value) => {
                let field = format!("{path}.fallback");
                let fallback = self.checked_amount(&field, value, Positive::No);
                if let (Some(fallback), Some(max)) = (fallback, max)
                    && fallback > max
                {
                    ok = false;
                    self.report(
                        field,
                        Some(value.span()),
                        format!(
                            "{fallback} is above max ({max}); a response without usage may \
                             not cost more than any response can"
                        ),
                    );
                }
                fallback
            }
            None => estimate,
        };
        let per_event = match &file.per_event {
            Some(value) => {
                let per_event =
                    self.checked_amount(&format!("{path}.per_event"), value, Positive::Yes);
                ok &= per_event.is_some();
                per_event
            }
            None => None,
        };
        let inspect_max_bytes = match &file.inspect_max_bytes {
            Some(value) => {
                let number = *value.get_ref();
                match u64::try_from(number) {
                    Ok(bytes) if (1..=MAX_INSPECT_MAX_BYTES).contains(&bytes) => Some(bytes),
                    _ => {
                        self.report(
                            format!("{path}.inspect_max_bytes"),
                            Some(value.span()),
                            format!(
                                "must be between 1 and {MAX_INSPECT_MAX_BYTES} bytes, got \
                                 {number}"
                            ),
                        );
                        None
                    }
                }
            }
            None => Some(DEFAULT_INSPECT_MAX_BYTES),
        };
        match (ok, fallback, inspect_max_bytes) {
            (true, Some(fallback), Some(inspect_max_bytes)) => Some(ResponseUsage {
                header,
                fields,
                fallback,
                per_event,
                inspect_max_bytes,
            }),
            _ => None,
        }
    }

    /// Checks a required amount: present, not negative, within [`MAX_AMOUNT`] and, unless
    /// `positive` allows it, above zero.
    fn amount(
        &mut self,
        path: &str,
        field: &str,
        value: Option<&Spanned<i64>>,
        table_span: &Range<usize>,
        positive: Positive,
    ) -> Option<u64> {
        let Some(value) = value else {
            self.report(
                path,
                Some(table_span.clone()),
                format!("missing field `{field}`"),
            );
            return None;
        };
        let field = format!("{path}.{field}");
        self.checked_amount(&field, value, positive)
    }

    fn checked_amount(
        &mut self,
        field: &str,
        value: &Spanned<i64>,
        positive: Positive,
    ) -> Option<u64> {
        let number = *value.get_ref();
        let message = if number < 0 {
            format!("must not be negative, got {number}")
        } else if number == 0 && positive == Positive::FixedAmount {
            "must be greater than 0; write kind = \"free\" for a feature that costs nothing"
                .to_owned()
        } else if number == 0 && positive == Positive::Yes {
            "must be greater than 0".to_owned()
        } else if number.unsigned_abs() > MAX_AMOUNT {
            format!(
                "{number} is above the limit {MAX_AMOUNT} (2^53 - 1: amounts must stay exact \
                 in the doubles of Redis Lua)"
            )
        } else {
            return Some(number.unsigned_abs());
        };
        self.report(field, Some(value.span()), message);
        None
    }

    fn overdraft(
        &mut self,
        path: &str,
        overdraft: &Spanned<OverdraftFile>,
        declared: &Declared,
    ) -> Option<Overdraft> {
        match overdraft.get_ref() {
            OverdraftFile::All(number) => {
                let value = Spanned::new(overdraft.span(), *number);
                self.checked_amount(path, &value, Positive::No)
                    .map(|default| Overdraft {
                        default,
                        per_credit_type: BTreeMap::new(),
                    })
            }
            OverdraftFile::PerCreditType(amounts) => {
                let mut per_credit_type = BTreeMap::new();
                let mut ok = true;
                for (credit_type, amount) in amounts {
                    let field = format!("{path}.{}", key(credit_type.get_ref()));
                    if !declared.credit_types.contains(credit_type.get_ref()) {
                        ok = false;
                        let message =
                            unknown("credit type", credit_type.get_ref(), &declared.credit_types);
                        self.report(field.clone(), Some(credit_type.span()), message);
                    }
                    match self.checked_amount(&field, amount, Positive::No) {
                        Some(amount) => {
                            per_credit_type.insert(credit_type.get_ref().clone(), amount);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Overdraft {
                    default: DEFAULT_OVERDRAFT,
                    per_credit_type,
                })
            }
        }
    }

    fn header_name(&mut self, path: &str, header: &Spanned<String>) -> Option<String> {
        self.http_header_name(&format!("{path}.header"), header)
    }

    /// Checks an HTTP header name (an RFC 9110 token); returns it in lower case.
    fn http_header_name(&mut self, field: &str, header: &Spanned<String>) -> Option<String> {
        let name = header.get_ref();
        if is_http_token(name) {
            Some(name.to_ascii_lowercase())
        } else {
            self.report(
                field,
                Some(header.span()),
                format!("{name:?} is not a valid HTTP header name"),
            );
            None
        }
    }

    fn query_name(&mut self, path: &str, query: &Spanned<String>) -> Option<String> {
        let name = query.get_ref();
        let valid = !name.is_empty()
            && name.len() <= MAX_IDENTIFIER_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && !"&=#?+%".contains(c));
        if valid {
            Some(name.clone())
        } else {
            self.report(
                format!("{path}.query"),
                Some(query.span()),
                format!(
                    "{name:?} is not a valid query parameter name (printable ASCII without \
                     & = # ? + % or spaces)"
                ),
            );
            None
        }
    }

    /// Checks an optional duration in milliseconds against `min..=max`; returns `default`
    /// when absent or invalid (the error is recorded).
    fn duration_ms(
        &mut self,
        field: &str,
        value: Option<&Spanned<i64>>,
        min: u64,
        max: u64,
        default: u64,
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        match u64::try_from(number) {
            Ok(ms) if (min..=max).contains(&ms) => ms,
            _ => {
                self.report(
                    field,
                    Some(value.span()),
                    format!("must be between {min} and {max} ms, got {number}"),
                );
                default
            }
        }
    }

    /// Checks an identifier used in Redis keys; reports and returns false when invalid.
    fn identifier(&mut self, path: &str, name: &Name, what: &str) -> bool {
        if is_identifier(name.get_ref()) {
            return true;
        }
        self.report(
            path,
            Some(name.span()),
            format!(
                "invalid {what} {:?}: use 1 to {MAX_IDENTIFIER_LEN} of A-Z a-z 0-9 _ . @ - \
                 (names go into Redis keys)",
                name.get_ref()
            ),
        );
        false
    }

    /// Checks that `name` is one of `known`; reports and returns false otherwise.
    fn reference(
        &mut self,
        field: &str,
        name: &Name,
        what: &str,
        known: &BTreeSet<String>,
    ) -> bool {
        if known.contains(name.get_ref()) {
            return true;
        }
        let message = unknown(what, name.get_ref(), known);
        self.report(field, Some(name.span()), message);
        false
    }
}

/// Whether zero is a valid amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Positive {
    /// Zero is fine (overdrafts).
    No,
    /// Zero is an error.
    Yes,
    /// Zero is an error with a hint to use `kind = "free"`.
    FixedAmount,
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

/// `[A-Za-z0-9_.@-]{1,128}`: safe inside Redis keys, which use `:` `/` `,` `|` and spaces
/// as separators.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.@-".contains(&byte))
}

/// An RFC 9110 token (header names, authorization schemes) of at most
/// [`MAX_IDENTIFIER_LEN`] bytes.
fn is_http_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Parses 64 lower-case hex digits; the error says what is wrong without repeating the value.
fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!("it has {} characters", hex.chars().count()));
    }
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Err("it has upper-case hex digits".to_owned()),
        _ => Err("it has characters that are not hex digits".to_owned()),
    };
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(hash)
}

/// Checks an absolute `http://` or `https://` URL shown to customers.
fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!("{url:?} must start with https:// or http://"));
    };
    let problem = if url.len() > MAX_URL_LEN {
        format!("is longer than {MAX_URL_LEN} bytes")
    } else if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains spaces or control characters".to_owned()
    } else if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
        "has no host".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("{url:?} is not a valid URL: it {problem}"))
}

/// A DNS-style host name (or IPv4 address): labels of letters, digits and `-`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// A route host: a host name, or an IPv6 address in brackets.
fn is_route_host(host: &str) -> bool {
    match host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => is_host_name(host),
    }
}

/// Checks `host:port` and returns the host part.
fn parse_address(address: &str) -> Result<&str, String> {
    let problem = || {
        format!("{address:?} must be host:port, e.g. \"127.0.0.1:8080\" or \"api.internal:443\"")
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(problem)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port > 0);
    if !port_ok {
        return Err(format!("{address:?} has an invalid port (1 to 65535)"));
    }
    if is_route_host(host) {
        Ok(host)
    } else {
        Err(problem())
    }
}

/// Whether route `earlier` matches every request `later` matches.
fn route_covers(earlier: &Route, later: &Route) -> bool {
    let method = earlier.method == Method::Any || earlier.method == later.method;
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => a == b,
        (Some(_), None) => false,
    };
    method && host && earlier.path.covers(&later.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_redis_key_rules() {
        for good in ["api", "pro_2026", "cus-1.a@b", &"x".repeat(128)] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "a:b", "a/b", "a,b", "a|b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(parse_address("127.0.0.1:8080"), Ok("127.0.0.1"));
        assert_eq!(parse_address("api.internal:443"), Ok("api.internal"));
        assert_eq!(parse_address("[::1]:443"), Ok("[::1]"));
        for bad in [
            "localhost",
            "host:0",
            "host:99999",
            ":80",
            "http://x:80",
            "a b:1",
            "[zz]:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_needs_64_lower_case_hex_digits() {
        let hex = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
        let hash = parse_sha256(hex).expect("valid");
        assert_eq!(hash[0], 0xc4);
        assert_eq!(hash[31], 0x5c);
        assert!(parse_sha256(&hex[..63]).is_err());
        assert!(parse_sha256(&hex.to_ascii_uppercase()).is_err());
        assert!(parse_sha256(&format!("{}g", &hex[..63])).is_err());
        // A multi-byte character of the right byte length is not hex either.
        assert!(parse_sha256(&format!("{}é", &hex[..62])).is_err());
    }

    #[test]
    fn top_up_urls_are_absolute_http_urls() {
        for good in [
            "https://example.com/billing",
            "http://localhost:3000",
            "https://pay.example.com?from=402#credits",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "https:///billing",
            "https://exa mple.com",
            "https://example.com/\n",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_quoted_when_not_bare() {
        assert_eq!(key("chat"), "chat");
        assert_eq!(key("acme@corp"), "\"acme@corp\"");
    }
}
