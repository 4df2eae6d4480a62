//! Behaviour of configs that validate: defaults, route order rules that are allowed, cost
//! resolution order and the summary.

use creditgate_config::{
    CostRule, CostSource, DEFAULT_HOLD_TTL_MS, DEFAULT_STORE_TIMEOUT_MS, FailurePolicy, Mode,
    PricingConfig, Unmatched,
};

const MINIMAL: &str = r#"
[credit_types.api]
scale = 3

[upstreams.default]
address = "127.0.0.1:8080"

[features.chat]
credit_type = "api"
cost = { kind = "fixed", amount = 10 }
"#;

fn config(extra: &str) -> PricingConfig {
    config_with_top(extra, "")
}

/// `top` holds top-level keys, which TOML only allows before the first table.
fn config_with_top(extra: &str, top: &str) -> PricingConfig {
    let text = format!("{top}\n{MINIMAL}\n{extra}");
    PricingConfig::from_toml_str(&text, "test.toml").unwrap_or_else(|errors| panic!("{errors}"))
}

#[test]
fn defaults_apply_when_absent() {
    let config = config(
        r#"
[[routes]]
method = "POST"
path = "/v1/chat"
feature = "chat"
"#,
    );
    let defaults = config.defaults();
    assert_eq!(defaults.mode, Mode::Enforce);
    assert_eq!(defaults.failure_policy, FailurePolicy::FailClosed);
    assert_eq!(defaults.unmatched, Unmatched::NotFound);
    assert_eq!(defaults.store_timeout_ms, DEFAULT_STORE_TIMEOUT_MS);
    assert_eq!(defaults.hold_ttl_ms, DEFAULT_HOLD_TTL_MS);
    let route = &config.route_table().routes()[0];
    assert_eq!(route.name, "POST /v1/chat");
    assert_eq!(route.upstream, "default");
    assert_eq!(route.mode, Mode::Enforce);
    assert_eq!(config.credit_types()["api"].display_name, "api");
    assert_eq!(config.credit_types()["api"].units_per_credit(), 1_000);
}

#[test]
fn specific_routes_before_general_ones_are_fine() {
    let config = config(
        r#"
[[routes]]
method = "GET"
host = "Admin.Example.com"
path = "/v1/chat"
feature = "chat"
mode = "off"

[[routes]]
method = "GET"
path = "/v1/chat"
feature = "chat"

[[routes]]
method = "POST"
path = "/v1/chat"
feature = "chat"
store_timeout_ms = 20

[[routes]]
method = "*"
path = "/v1/*"
feature = "chat"
failure_policy = "fail_open"
"#,
    );
    let index = |method, host, path| config.match_route(method, host, path).map(|m| m.index);
    assert_eq!(
        index("GET", Some("admin.example.com:443"), "/v1/chat"),
        Some(0)
    );
    assert_eq!(index("GET", Some("other.example.com"), "/v1/chat"), Some(1));
    assert_eq!(index("POST", None, "/v1/chat/"), Some(2));
    assert_eq!(index("DELETE", None, "/v1/chat"), Some(3));
    assert_eq!(index("GET", None, "/v2"), None);
    let routes = config.route_table().routes();
    assert_eq!(routes[0].name, "GET admin.example.com/v1/chat");
    assert_eq!(routes[0].host.as_deref(), Some("admin.example.com"));
    assert_eq!(routes[2].store_timeout_ms, 20);
    assert_eq!(routes[3].failure_policy, FailurePolicy::FailOpen);
}

#[test]
fn cost_resolution_prefers_customer_then_plan_then_default_plan_then_feature() {
    let config = config_with_top(
        r#"
[plans.basic]
overdraft = 5
costs = { chat = { kind = "fixed", amount = 8 } }

[plans.pro]
overdraft = 50
costs = { chat = { kind = "fixed", amount = 6 } }

[plans.bare]

[customers.vip]
plan = "pro"
overdraft = { api = 500 }
costs = { chat = { kind = "fixed", amount = 1 } }

[customers.regular]
plan = "pro"

[customers.legacy]
plan = "bare"
"#,
        r#"default_plan = "basic""#,
    );
    let resolve = |customer| {
        let cost = config.cost_for("chat", customer).expect("known feature");
        (cost.rule.clone(), cost.source, cost.plan, cost.overdraft)
    };
    let fixed = |amount| CostRule::Fixed { amount };
    assert_eq!(
        resolve(Some("vip")),
        (fixed(1), CostSource::Customer, Some("pro"), 500)
    );
    assert_eq!(
        resolve(Some("regular")),
        (fixed(6), CostSource::Plan, Some("pro"), 50)
    );
    assert_eq!(
        resolve(Some("legacy")),
        (fixed(10), CostSource::Feature, Some("bare"), 0)
    );
    assert_eq!(
        resolve(Some("stranger")),
        (fixed(8), CostSource::DefaultPlan, Some("basic"), 5)
    );
    assert_eq!(
        resolve(None),
        (fixed(8), CostSource::DefaultPlan, Some("basic"), 5)
    );
    assert!(config.cost_for("nope", None).is_none());
    assert_eq!(
        config.summary(),
        "1 credit type, 1 feature, 0 routes, 3 plans, 3 customers, 1 upstream"
    );
}

#[test]
fn content_hash_is_the_sha1_of_the_text() {
    let config = PricingConfig::from_toml_str("", "empty.toml").expect("empty is valid");
    assert_eq!(
        config.content_hash(),
        "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    );
    assert_eq!(config.file_name(), "empty.toml");
}
