//! The compiled route table: finds the first route, in file order, that matches a request's
//! method, host and path, without allocating.
//!
//! Built once per config, off the request path. The table is a trie of path segments; each
//! node lists the routes that end there (or have their `*` there) in file order, and knows
//! the lowest route index in its subtree, so a lookup skips subtrees that cannot beat the
//! best match found so far. A trie node sits at a fixed depth and so pairs with exactly one
//! path segment: a lookup visits each node at most once, whatever the request path.

use crate::model::{
    Enforcement, FailurePolicy, Feature, Method, Mode, UpgradePolicy, UpstreamErrorPolicy,
};
use crate::pattern::{PathPattern, Segment};

/// A validated route: which requests it matches and how they are priced and forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The name used in logs and metrics (default `METHOD path`, or `METHOD host path`).
    pub name: String,
    /// The method matched; [`Method::Any`] matches every method.
    pub method: Method,
    /// The host matched (lower case, without port); `None` matches any host.
    pub host: Option<String>,
    /// The path pattern matched.
    pub path: PathPattern,
    /// The feature sold, with its default cost and credit type.
    pub feature: Feature,
    /// The mode, with the default applied.
    pub mode: Mode,
    /// The store failure policy, with the default applied.
    pub failure_policy: FailurePolicy,
    /// The store timeout in milliseconds, with the default applied.
    pub store_timeout_ms: u64,
    /// The upstream requests are forwarded to.
    pub upstream: String,
    /// What to do with the hold when the upstream failed (connect error or 5xx), with the
    /// default applied.
    pub on_upstream_error: UpstreamErrorPolicy,
    /// What to do with a request asking to switch protocols, with the default applied.
    pub upgrade: UpgradePolicy,
    /// The uncharged replays of a charged request under its `Idempotency-Key`, with the
    /// defaults applied.
    pub idempotency: IdempotencyReplays,
    /// How the route's requests are held against the balance, with the default applied.
    pub enforcement: Enforcement,
}

/// How often, and how long, a route serves the identical request again uncharged under
/// the `Idempotency-Key` of one that was charged (`idempotency = { … }` on a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyReplays {
    /// How many replays (0: none, for upstream work that is expensive).
    pub replays: u32,
    /// How long after the charged request they are served, in milliseconds.
    pub window_ms: u64,
}

impl Route {
    /// Whether this route matches the request, ignoring every other route. `method` and
    /// `host` compare case-insensitively; a `:port` suffix of `host` is ignored; `path` may
    /// carry a query string. This is the reference definition of a match.
    pub fn matches(&self, method: &str, host: Option<&str>, path: &str) -> bool {
        self.method.matches(Method::parse(method))
            && self.matches_host(host.map(host_without_port))
            && self.path.matches(path)
    }

    fn matches_host(&self, request_host: Option<&str>) -> bool {
        match (&self.host, request_host) {
            (None, _) => true,
            (Some(route_host), Some(request_host)) => route_host.eq_ignore_ascii_case(request_host),
            (Some(_), None) => false,
        }
    }
}

/// The route a request matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The route's position in the file's `[[routes]]` list, from 0.
    pub index: usize,
    /// The route.
    pub route: &'a Route,
    /// The route's feature (the same as `route.feature`).
    pub feature: &'a Feature,
}

/// Routes compiled for first-match lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// Literal children sorted by segment text, for binary search by `&str`.
    literals: Vec<(Box<str>, usize)>,
    /// The child reached through a `{param}` segment.
    param: Option<usize>,
    /// Routes whose pattern ends at this node, in file order.
    ends: Vec<usize>,
    /// Routes whose pattern has its trailing `*` at this node, in file order.
    wildcards: Vec<usize>,
    /// The lowest route index in this node's subtree (`usize::MAX` when empty).
    min_route: usize,
}

/// What a lookup compares against, parsed once per request.
struct Request<'r> {
    method: Option<Method>,
    host: Option<&'r str>,
}

const ROOT: usize = 0;

impl RouteTable {
    /// Compiles `routes`, kept in the given (file) order.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut nodes = vec![Node {
            min_route: usize::MAX,
            ..Node::default()
        }];
        for (index, route) in routes.iter().enumerate() {
            let mut node = ROOT;
            nodes[node].min_route = nodes[node].min_route.min(index);
            for segment in route.path.segments() {
                node = match segment {
                    Segment::Wildcard => {
                        nodes[node].wildcards.push(index);
                        break;
                    }
                    Segment::Param(_) => match nodes[node].param {
                        Some(child) => child,
                        None => {
                            let child = push_node(&mut nodes);
                            nodes[node].param = Some(child);
                            child
                        }
                    },
                    Segment::Literal(text) => {
                        let search = nodes[node]
                            .literals
                            .binary_search_by(|(key, _)| (**key).cmp(text));
                        match search {
                            Ok(position) => nodes[node].literals[position].1,
                            Err(position) => {
                                let child = push_node(&mut nodes);
                                nodes[node].literals.insert(position, (text.clone(), child));
                                child
                            }
                        }
                    }
                };
                nodes[node].min_route = nodes[node].min_route.min(index);
            }
            if route.path.segments().last() != Some(&Segment::Wildcard) {
                nodes[node].ends.push(index);
            }
        }
        RouteTable { routes, nodes }
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table holds no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route in file order matching the request, or `None`.
    ///
    /// `method` and `host` compare case-insensitively and a `:port` suffix of `host` is
    /// ignored; `path` may carry a `?query` (ignored), and empty segments (a trailing or
    /// doubled `/`) are ignored. A request without a host matches only host-less routes.
    /// Does not allocate.
    pub fn lookup(&self, method: &str, host: Option<&str>, path: &str) -> Option<RouteMatch<'_>> {
        let request = Request {
            method: Method::parse(method),
            host: host.map(host_without_port),
        };
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let mut best = usize::MAX;
        self.walk(ROOT, &path[..end], &request, &mut best);
        self.route_match(best)
    }

    /// The same answer as [`RouteTable::lookup`], found by trying every route in order.
    /// The reference that tests and benches compare the trie against; O(routes).
    pub fn lookup_linear(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> Option<RouteMatch<'_>> {
        let index = self
            .routes
            .iter()
            .position(|route| route.matches(method, host, path))?;
        self.route_match(index)
    }

    fn route_match(&self, index: usize) -> Option<RouteMatch<'_>> {
        let route = self.routes.get(index)?;
        Some(RouteMatch {
            index,
            route,
            feature: &route.feature,
        })
    }

    fn walk(&self, node_id: usize, rest: &str, request: &Request<'_>, best: &mut usize) {
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        if node.min_route >= *best {
            return;
        }
        self.take_first_match(&node.wildcards, request, best);
        match next_segment(rest) {
            None => self.take_first_match(&node.ends, request, best),
            Some((segment, tail)) => {
                let literal = node
                    .literals
                    .binary_search_by(|(key, _)| (**key).cmp(segment))
                    .ok()
                    .map(|position| node.literals[position].1);
                if let Some(child) = literal {
                    self.walk(child, tail, request, best);
                }
                if let Some(child) = node.param {
                    self.walk(child, tail, request, best);
                }
            }
        }
    }

    /// Lowers `best` to the first route of `candidates` (sorted, file order) whose method and
    /// host match, if it comes before `best`.
    fn take_first_match(&self, candidates: &[usize], request: &Request<'_>, best: &mut usize) {
        for &index in candidates {
            if index >= *best {
                return;
            }
            let Some(route) = self.routes.get(index) else {
                return;
            };
            if route.method.matches(request.method) && route.matches_host(request.host) {
                *best = index;
                return;
            }
        }
    }
}

fn push_node(nodes: &mut Vec<Node>) -> usize {
    nodes.push(Node {
        min_route: usize::MAX,
        ..Node::default()
    });
    nodes.len() - 1
}

/// Splits off the next non-empty segment of `rest`, returning it and what follows.
fn next_segment(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return None;
    }
    Some(match rest.find('/') {
        Some(end) => (&rest[..end], &rest[end..]),
        None => (rest, ""),
    })
}

/// `host` without a `:port` suffix and without the trailing dot of a fully qualified name
/// (`api.example.com.` is the same host to DNS and to most servers); `[v6]:port` keeps its
/// brackets.
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::CostRule;
    use proptest::prelude::*;

    fn route(method: Method, host: Option<&str>, path: &str) -> Route {
        Route {
            name: format!("{} {path}", method.as_str()),
            method,
            host: host.map(str::to_owned),
            path: PathPattern::parse(path).expect(path),
            feature: Feature {
                name: "f".into(),
                credit_type: "api".into(),
                cost: CostRule::Free,
                description: None,
            },
            mode: Mode::Enforce,
            failure_policy: FailurePolicy::FailClosed,
            store_timeout_ms: 50,
            upstream: "default".into(),
            on_upstream_error: UpstreamErrorPolicy::Void,
            upgrade: UpgradePolicy::Charge,
            enforcement: Enforcement::Hold,
            idempotency: IdempotencyReplays {
                replays: 3,
                window_ms: 600_000,
            },
        }
    }

    fn index(table: &RouteTable, method: &str, host: Option<&str>, path: &str) -> Option<usize> {
        table.lookup(method, host, path).map(|found| found.index)
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let table = RouteTable::new(vec![
            route(Method::Post, None, "/v1/chat/completions"),
            route(Method::Get, Some("admin.example.com"), "/v1/*"),
            route(Method::Any, None, "/v1/files/{id}"),
            route(Method::Get, None, "/v1/*"),
            route(Method::Any, None, "/"),
        ]);
        let lookup = |method, host, path| index(&table, method, host, path);
        assert_eq!(lookup("POST", None, "/v1/chat/completions?x=1"), Some(0));
        assert_eq!(lookup("post", None, "/v1/chat/completions/"), Some(0));
        assert_eq!(lookup("GET", None, "/v1/chat/completions"), Some(3));
        assert_eq!(
            lookup("GET", Some("Admin.Example.com:8443"), "/v1/files/9"),
            Some(1)
        );
        assert_eq!(
            lookup("DELETE", Some("admin.example.com"), "/v1/files/9"),
            Some(2)
        );
        assert_eq!(lookup("GET", None, "/v1"), Some(3));
        assert_eq!(lookup("PROPFIND", None, "/"), Some(4));
        assert_eq!(lookup("PROPFIND", None, "/v1"), None);
        assert_eq!(lookup("POST", None, "/v2"), None);
    }

    #[test]
    fn head_is_priced_as_get_and_a_fully_qualified_host_as_its_name() {
        let table = RouteTable::new(vec![
            route(Method::Head, None, "/v1/free-head"),
            route(Method::Get, None, "/v1/*"),
            route(Method::Get, Some("api.example.com"), "/hosted"),
        ]);
        let lookup = |method, host, path| index(&table, method, host, path);
        assert_eq!(lookup("HEAD", None, "/v1/search"), Some(1));
        assert_eq!(lookup("HEAD", None, "/v1/free-head"), Some(0));
        assert_eq!(lookup("GET", None, "/v1/free-head"), Some(1));
        assert_eq!(lookup("HEAD", Some("api.example.com."), "/hosted"), Some(2));
        assert_eq!(
            lookup("GET", Some("API.example.com.:80"), "/hosted"),
            Some(2)
        );
    }

    #[test]
    fn host_without_port_handles_names_and_ipv6() {
        assert_eq!(host_without_port("example.com:443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("example.com."), "example.com");
        assert_eq!(host_without_port("example.com.:443"), "example.com");
    }

    const LITERALS: [&str; 4] = ["a", "b", "c", "v1"];

    fn segment_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(&LITERALS[..]).prop_map(str::to_owned),
            2 => Just("{p}".to_owned()),
        ]
    }

    fn route_strategy() -> impl Strategy<Value = Route> {
        let methods = prop::sample::select(vec![Method::Any, Method::Get, Method::Post]);
        let hosts = prop::option::weighted(0.2, prop::sample::select(vec!["x.io", "y.io"]));
        let segments = prop::collection::vec(segment_strategy(), 0..4);
        (methods, hosts, segments, any::<bool>()).prop_map(|(method, host, segments, wildcard)| {
            let mut path = String::new();
            for (position, segment) in segments.iter().enumerate() {
                // Parameter names must differ within one pattern.
                path.push('/');
                path.push_str(&segment.replace("{p}", &format!("{{p{position}}}")));
            }
            if wildcard {
                path.push_str("/*");
            }
            if path.is_empty() {
                path.push('/');
            }
            route(method, host, &path)
        })
    }

    fn request_strategy() -> impl Strategy<Value = (String, Option<String>, String)> {
        let methods = prop::sample::select(vec!["GET", "post", "PUT"]);
        let hosts = prop::option::of(prop::sample::select(vec!["x.io", "Y.IO:80", "z.io"]));
        let segment = prop::sample::select(vec!["a", "b", "c", "v1", "zz", ""]);
        let segments = prop::collection::vec(segment, 0..6);
        let query = prop::sample::select(vec!["", "?a=b", "/"]);
        (methods, hosts, segments, query).prop_map(|(method, host, segments, query)| {
            let path = format!("/{}{query}", segments.join("/"));
            (method.to_owned(), host.map(str::to_owned), path)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn trie_agrees_with_a_linear_first_match_scan(
            routes in prop::collection::vec(route_strategy(), 0..60),
            requests in prop::collection::vec(request_strategy(), 1..40),
        ) {
            let table = RouteTable::new(routes);
            for (method, host, path) in &requests {
                let fast = table.lookup(method, host.as_deref(), path).map(|found| found.index);
                let slow = table
                    .lookup_linear(method, host.as_deref(), path)
                    .map(|found| found.index);
                prop_assert_eq!(fast, slow, "{} {:?} {}", method, host, path);
            }
        }
    }
}
