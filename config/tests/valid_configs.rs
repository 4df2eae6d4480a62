//! Behaviour of configs that validate: defaults, route order rules that are allowed, cost
//! resolution order and the summary.

use creditgate_config::{
    ApiKey, CostRule, CostSource, DEFAULT_CUSTOMER_HEADER, DEFAULT_GRANT_PRIORITY,
    DEFAULT_HOLD_TTL_MS, DEFAULT_IDENTITY_HEADER, DEFAULT_IDENTITY_SCHEME,
    DEFAULT_STORE_TIMEOUT_MS, DEFAULT_STRIP_HEADERS, DEFAULT_UPSTREAM_ERROR_POLICY, EmbeddedGrant,
    FailurePolicy, Mode, PricingConfig, Unmatched, UpstreamErrorPolicy,
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

#[test]
fn identity_billing_keys_and_grants_default_to_empty() {
    let config = PricingConfig::from_toml_str("", "empty.toml").expect("empty is valid");
    let identity = config.identity();
    assert_eq!(identity.header, DEFAULT_IDENTITY_HEADER);
    assert_eq!(identity.scheme.as_deref(), Some(DEFAULT_IDENTITY_SCHEME));
    assert_eq!(identity.trusted_customer_header, None);
    assert_eq!(identity.customer_header, DEFAULT_CUSTOMER_HEADER);
    assert_eq!(identity.strip_headers, DEFAULT_STRIP_HEADERS);
    assert_eq!(identity.key_in("Bearer demo-key"), Some("demo-key"));
    assert_eq!(identity.key_in("BEARER demo-key"), Some("demo-key"));
    assert_eq!(identity.key_in("Bearer "), None);
    assert_eq!(identity.key_in("Bearer"), None);
    assert_eq!(identity.key_in("Bearerdemo-key"), None);
    assert_eq!(identity.key_in("Basic ZGVtbw=="), None);
    assert_eq!(identity.key_in("Beé"), None);
    assert_eq!(config.billing().top_up_url, None);
    assert_eq!(config.api_keys().len(), 0);
    assert!(config.embedded_grants().is_empty());
}

#[test]
fn identity_headers_are_lower_case_and_the_customer_header_is_always_stripped() {
    let keyed = config(
        r#"
[identity]
header = "X-API-Key"
trusted_customer_header = "X-Authenticated-Customer"
customer_header = "X-Tenant"
strip_headers = ["X-Org-Id"]
"#,
    );
    let identity = keyed.identity();
    assert_eq!(identity.header, "x-api-key");
    // Not the authorization header, so no scheme unless one is written.
    assert_eq!(identity.scheme, None);
    assert_eq!(identity.key_in("sk_live_1"), Some("sk_live_1"));
    assert_eq!(identity.key_in(""), None);
    assert_eq!(
        identity.trusted_customer_header.as_deref(),
        Some("x-authenticated-customer")
    );
    assert_eq!(identity.customer_header, "x-tenant");
    assert_eq!(identity.strip_headers, ["x-org-id", "x-tenant"]);

    let bare = config("[identity]\nscheme = \"\"");
    assert_eq!(bare.identity().header, "authorization");
    assert_eq!(bare.identity().scheme, None);
    assert_eq!(bare.identity().key_in("demo-key"), Some("demo-key"));

    let custom = config("[identity]\nheader = \"x-key\"\nscheme = \"Key\"");
    assert_eq!(custom.identity().key_in("key abc"), Some("abc"));
}

/// `printf %s 'demo-key' | sha256sum`
const DEMO_KEY_SHA256: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";

fn hash_of_hex(hex: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).expect("hex");
    }
    hash
}

#[test]
fn api_keys_are_found_by_hash() {
    let config = config(&format!(
        r#"
[[api_keys]]
customer = "demo"
sha256 = "{DEMO_KEY_SHA256}"
name = "demo laptop"

[[api_keys]]
customer = "acme@corp"
sha256 = "{}"
"#,
        "0".repeat(64)
    ));
    let demo = config
        .customer_for_key_hash(&hash_of_hex(DEMO_KEY_SHA256))
        .expect("demo key");
    assert_eq!(
        *demo,
        ApiKey {
            customer: "demo".into(),
            name: Some("demo laptop".into())
        }
    );
    assert_eq!(
        config
            .customer_for_key_hash(&[0; 32])
            .map(|key| key.customer.as_str()),
        Some("acme@corp")
    );
    assert_eq!(config.customer_for_key_hash(&[1; 32]), None);
    let mut customers: Vec<&str> = config
        .api_keys()
        .map(|(_, key)| key.customer.as_str())
        .collect();
    customers.sort_unstable();
    assert_eq!(customers, ["acme@corp", "demo"]);
}

#[test]
fn embedded_grants_keep_file_order_and_defaults() {
    let config = config(
        r#"
[[embedded_grants]]
grant_id = "welcome"
customer = "demo"
credit_type = "api"
amount = 10

[[embedded_grants]]
grant_id = "promo-1"
customer = "demo"
credit_type = "api"
amount = 5
priority = 10
expires_in_s = 86400
"#,
    );
    assert_eq!(
        config.embedded_grants(),
        [
            EmbeddedGrant {
                grant_id: "welcome".into(),
                customer: "demo".into(),
                credit_type: "api".into(),
                amount: 10,
                priority: DEFAULT_GRANT_PRIORITY,
                expires_in_s: None,
            },
            EmbeddedGrant {
                grant_id: "promo-1".into(),
                customer: "demo".into(),
                credit_type: "api".into(),
                amount: 5,
                priority: 10,
                expires_in_s: Some(86_400),
            },
        ]
    );
}

#[test]
fn routes_void_holds_on_upstream_errors_unless_told_to_settle() {
    let config = config(
        r#"
[billing]
top_up_url = "https://example.com/billing"

[[routes]]
method = "POST"
path = "/v1/chat"
feature = "chat"

[[routes]]
method = "POST"
path = "/v1/batch"
feature = "chat"
on_upstream_error = "settle"
"#,
    );
    let routes = config.route_table().routes();
    assert_eq!(routes[0].on_upstream_error, DEFAULT_UPSTREAM_ERROR_POLICY);
    assert_eq!(routes[0].on_upstream_error, UpstreamErrorPolicy::Void);
    assert_eq!(routes[1].on_upstream_error, UpstreamErrorPolicy::Settle);
    assert_eq!(UpstreamErrorPolicy::Settle.as_str(), "settle");
    assert_eq!(
        config.billing().top_up_url.as_deref(),
        Some("https://example.com/billing")
    );
}

#[test]
fn cohorts_pin_customers_and_plans_to_their_prices() {
    let config = config_with_top(
        r#"
[features.embed]
credit_type = "api"
cost = { kind = "fixed", amount = 3 }

[plans.pro_2025]
[plans.pro_2026]
costs = { chat = { kind = "fixed", amount = 12 } }

[customers.acme]
plan = "pro_2026"
[customers.initech]
plan = "pro_2025"
[customers.hooli]
plan = "pro_2026"
costs = { chat = { kind = "fixed", amount = 2 } }

[cohorts.launch]
description = "signed before the 2026 price change"
costs = { chat = { kind = "fixed", amount = 5 } }
customers = ["acme", "hooli", "not-in-config"]
plans = ["pro_2025"]
"#,
        r#"default_plan = "pro_2026""#,
    )
    .with_version(7);
    let price = |customer: &str, feature: &str| {
        let cost = config
            .cost_for(feature, Some(customer))
            .expect("known feature");
        let CostRule::Fixed { amount } = cost.rule else {
            panic!("fixed price expected");
        };
        (*amount, cost.source, config.pricing_version_of(&cost))
    };
    let label = config.version_label();
    assert!(label.starts_with("7-") && label.len() == 14, "{label}");
    let pinned = format!("{label}@launch");
    // Pinned by id: the cohort's price wins over the plan's new one.
    assert_eq!(
        price("acme", "chat"),
        (5, CostSource::Cohort, pinned.clone())
    );
    // Pinned through the plan.
    assert_eq!(
        price("initech", "chat"),
        (5, CostSource::Cohort, pinned.clone())
    );
    // A customer not in [customers] can be pinned by id.
    assert_eq!(
        price("not-in-config", "chat"),
        (5, CostSource::Cohort, pinned)
    );
    // A customer's own negotiated price still wins.
    assert_eq!(
        price("hooli", "chat"),
        (2, CostSource::Customer, label.clone())
    );
    // Features the cohort does not pin are priced as usual.
    assert_eq!(
        price("acme", "embed"),
        (3, CostSource::Feature, label.clone())
    );
    // A new customer gets the new price.
    assert_eq!(
        price("newcomer", "chat"),
        (12, CostSource::DefaultPlan, label)
    );
}
