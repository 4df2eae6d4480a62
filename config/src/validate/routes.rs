//! `[[routes]]`: which requests are metered as which feature, where they go, and the checks
//! across routes (a route shadowed by an earlier one, a route name used twice).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::syntax::is_route_host;
use super::{Checker, DEFAULT_UPSTREAM, Declared};
use crate::limits::{
    DEFAULT_IDEMPOTENCY_REPLAY_WINDOW_MS, DEFAULT_IDEMPOTENCY_REPLAYS,
    MAX_IDEMPOTENCY_REPLAY_WINDOW_MS, MAX_IDEMPOTENCY_REPLAYS, MAX_ROUTE_NAME_LEN, MAX_ROUTES,
    MAX_STORE_TIMEOUT_MS,
};
use crate::model::{
    DEFAULT_ENFORCEMENT, DEFAULT_UPGRADE_POLICY, DEFAULT_UPSTREAM_ERROR_POLICY, Defaults, Feature,
    Method, Upstream,
};
use crate::pattern::PathPattern;
use crate::route_table::{IdempotencyReplays, Route};
use crate::schema::{IdempotencyFile, Name, RouteFile};

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

/// What a single route is checked against.
struct RouteContext<'a> {
    defaults: &'a Defaults,
    declared: &'a Declared,
    features: &'a BTreeMap<String, Feature>,
    upstreams: &'a BTreeMap<String, Upstream>,
}

impl Checker<'_> {
    pub(super) fn routes(
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
            upgrade,
            idempotency,
            enforcement,
        } = route;
        let method = self.route_method(&path, &method);
        let host = self.route_host(&path, host);
        let mut ok = host.is_some();
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
        let (upstream, upstream_ok) = self.route_upstream(&path, upstream, route_span, declared);
        ok &= upstream_ok;
        let store_timeout_ms = self.duration_ms(
            &format!("{path}.store_timeout_ms"),
            store_timeout_ms.as_ref(),
            1,
            MAX_STORE_TIMEOUT_MS,
            defaults.store_timeout_ms,
        );
        let idempotency = self.route_replays(&path, idempotency);
        let name = self.route_name(&path, name);
        ok &= name.is_some();
        let (Some(method), Some(pattern), Some(feature), true) = (method, pattern, feature, ok)
        else {
            return None;
        };
        upstreams.contains_key(&upstream).then_some(())?;
        let host = host.flatten();
        let name = name.flatten().unwrap_or_else(|| match &host {
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
            upgrade: upgrade.unwrap_or(DEFAULT_UPGRADE_POLICY),
            idempotency,
            enforcement: enforcement.unwrap_or(DEFAULT_ENFORCEMENT),
        })
    }

    /// A route's uncharged replays under an `Idempotency-Key`: how many, and within how
    /// many milliseconds of the charged request.
    fn route_replays(&mut self, path: &str, file: Option<IdempotencyFile>) -> IdempotencyReplays {
        let IdempotencyFile {
            replays,
            replay_window_ms,
        } = file.unwrap_or(IdempotencyFile {
            replays: None,
            replay_window_ms: None,
        });
        let replays = match replays {
            None => DEFAULT_IDEMPOTENCY_REPLAYS,
            Some(value) => match u32::try_from(*value.get_ref()) {
                Ok(n) if n <= MAX_IDEMPOTENCY_REPLAYS => n,
                _ => {
                    self.report(
                        format!("{path}.idempotency.replays"),
                        Some(value.span()),
                        format!(
                            "must be between 0 and {MAX_IDEMPOTENCY_REPLAYS}, got {}",
                            value.get_ref()
                        ),
                    );
                    DEFAULT_IDEMPOTENCY_REPLAYS
                }
            },
        };
        let window_ms = self.duration_ms(
            &format!("{path}.idempotency.replay_window_ms"),
            replay_window_ms.as_ref(),
            1,
            MAX_IDEMPOTENCY_REPLAY_WINDOW_MS,
            DEFAULT_IDEMPOTENCY_REPLAY_WINDOW_MS,
        );
        IdempotencyReplays { replays, window_ms }
    }

    fn route_method(&mut self, path: &str, method: &Spanned<String>) -> Option<Method> {
        Method::parse(method.get_ref()).or_else(|| {
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
        })
    }

    /// The host a route is limited to, in lower case: `Some(None)` for any host, `None`
    /// when the written host is not valid (reported).
    fn route_host(&mut self, path: &str, host: Option<Spanned<String>>) -> Option<Option<String>> {
        let Some(host) = host else {
            return Some(None);
        };
        if is_route_host(host.get_ref()) {
            return Some(Some(host.into_inner().to_ascii_lowercase()));
        }
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

    /// The upstream a route forwards to, [`DEFAULT_UPSTREAM`] when not written, and
    /// whether it is declared.
    fn route_upstream(
        &mut self,
        path: &str,
        upstream: Option<Name>,
        route_span: Range<usize>,
        declared: &Declared,
    ) -> (String, bool) {
        if let Some(upstream) = upstream {
            let ok = self.reference(
                &format!("{path}.upstream"),
                &upstream,
                "upstream",
                &declared.upstreams,
            );
            return (upstream.into_inner(), ok);
        }
        let ok = declared.upstreams.contains(DEFAULT_UPSTREAM);
        if !ok {
            self.report(
                format!("{path}.upstream"),
                Some(route_span),
                format!(
                    "not set and no upstream is named \"{DEFAULT_UPSTREAM}\"; set \
                     upstream or define [upstreams.{DEFAULT_UPSTREAM}]"
                ),
            );
        }
        (DEFAULT_UPSTREAM.to_owned(), ok)
    }

    /// The route name written in the file: `Some(None)` when none is (the default name is
    /// made from the method, host and path), `None` when it is not printable text.
    fn route_name(&mut self, path: &str, name: Option<Spanned<String>>) -> Option<Option<String>> {
        let Some(name) = name else {
            return Some(None);
        };
        let text = name.get_ref();
        if text.trim().is_empty()
            || text.len() > MAX_ROUTE_NAME_LEN
            || text.contains(char::is_control)
        {
            self.report(
                format!("{path}.name"),
                Some(name.span()),
                format!("must be 1 to {MAX_ROUTE_NAME_LEN} bytes of printable text, got {text:?}"),
            );
            return None;
        }
        Some(Some(name.into_inner()))
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
            let earlier_line = self.line_of(earlier_span.start);
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
}
