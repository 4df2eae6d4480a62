//! The example configs shipped in `config/examples/` must always validate, and resolve
//! routes and prices the way their comments say.

use creditgate_config::{
    CostRule, CostSource, EmbeddedGrant, Mode, PricingConfig, RequestValues, UpstreamErrorPolicy,
};

fn example(name: &str) -> PricingConfig {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    match PricingConfig::load(&path) {
        Ok(config) => config,
        Err(errors) => panic!("{name} does not validate:\n{errors}"),
    }
}

struct NoValues;

impl RequestValues for NoValues {
    fn header_values(&self, _name: &str) -> Vec<Option<&str>> {
        Vec::new()
    }

    fn raw_query(&self) -> Option<&str> {
        None
    }
}

#[test]
fn quickstart_validates() {
    let config = example("quickstart.toml");
    assert_eq!(
        config.summary(),
        "1 credit type, 3 features, 3 routes, 0 plans, 0 customers, 1 upstream"
    );
    let found = config
        .match_route("POST", None, "/reports/42")
        .expect("report route");
    assert_eq!(found.feature.name, "report");
    assert_eq!(found.route.mode, Mode::Enforce);
    assert_eq!(found.route.on_upstream_error, UpstreamErrorPolicy::Void);
    assert_eq!(found.feature.cost.reserve_amount(&NoValues), 5);
    assert!(config.match_route("GET", None, "/admin").is_none());
    assert_eq!(config.content_hash().len(), 40);

    // The identity block is commented out: defaults apply.
    let identity = config.identity();
    assert_eq!(identity.header, "authorization");
    assert_eq!(identity.key_in("Bearer demo-key"), Some("demo-key"));

    // sha256("demo-key"), as the comment in the file says.
    let demo_key_hash: [u8; 32] = [
        0xc4, 0x8a, 0x01, 0xf4, 0x9f, 0xd0, 0xf2, 0xcc, 0x40, 0x4b, 0xc3, 0xcb, 0xbc, 0x80, 0xe9,
        0x14, 0x57, 0xa3, 0xd4, 0x1b, 0xb4, 0x29, 0xa6, 0x95, 0x24, 0x3d, 0xe4, 0xc6, 0x17, 0x94,
        0x15, 0x5c,
    ];
    let key = config.customer_for_key_hash(&demo_key_hash);
    assert_eq!(key.map(|key| key.customer.as_str()), Some("demo"));
    assert_eq!(
        config.billing().top_up_url.as_deref(),
        Some("https://example.com/billing")
    );
    assert_eq!(
        config.embedded_grants(),
        [EmbeddedGrant {
            grant_id: "quickstart-demo".into(),
            customer: "demo".into(),
            credit_type: "api".into(),
            amount: 10,
            priority: 100,
            expires_in_s: None,
        }]
    );
}

#[test]
fn ai_api_validates_and_resolves_prices() {
    let config = example("ai-api.toml");
    assert_eq!(
        config.summary(),
        "2 credit types, 5 features, 5 routes, 2 plans, 2 customers, 2 upstreams"
    );

    let chat = config.match_route("post", Some("api.example.com:443"), "/v1/chat/completions");
    assert_eq!(
        chat.map(|found| found.route.upstream.as_str()),
        Some("inference")
    );

    let export = config.match_route("GET", None, "/v1/files/f_1/export?pages=3");
    assert_eq!(
        export.map(|found| found.feature.name.as_str()),
        Some("file_export")
    );

    let list = config.cost_for("chat", None).expect("chat");
    assert_eq!(list.source, CostSource::Feature);
    assert_eq!(list.plan, Some("starter_2026"));
    assert_eq!(list.overdraft, 0);

    let pro = config.cost_for("chat", Some("globex")).expect("chat");
    assert_eq!(pro.source, CostSource::Plan);
    let CostRule::FromResponse {
        estimate,
        max,
        usage,
        estimate_from,
    } = pro.rule
    else {
        panic!("chat is priced from the response: {:?}", pro.rule);
    };
    assert_eq!((*estimate, *max), (15_000, 1_500_000));
    let from = estimate_from
        .as_ref()
        .expect("the plan estimates from max_tokens");
    assert_eq!(from.path.as_str(), "max_tokens");
    assert_eq!(
        (from.rate, from.base, from.max_body_bytes),
        (6, 15_000, 65_536)
    );
    assert_eq!(from.amount(500, *max), 18_000, "15_000 + 500 x 6");
    assert_eq!(from.amount(1_000_000, *max), 1_500_000, "capped at max");
    let rates: Vec<(&str, u64)> = usage
        .fields
        .iter()
        .map(|field| (field.path.as_str(), field.rate))
        .collect();
    assert_eq!(
        rates,
        [("usage.completion_tokens", 6), ("usage.prompt_tokens", 2)]
    );
    assert_eq!(
        usage.fallback, 15_000,
        "the fallback defaults to the estimate"
    );
    assert_eq!(pro.overdraft, 5_000_000);

    let acme = config.cost_for("image", Some("acme-corp")).expect("image");
    assert_eq!(acme.source, CostSource::Customer);
    assert_eq!(acme.rule.reserve_amount(&NoValues), 250);
    assert_eq!(acme.credit_type.name, "media");
    // acme's own overdraft table names only "ai", so "media" falls back to 0.
    assert_eq!(acme.overdraft, 0);
    assert_eq!(
        config
            .cost_for("chat", Some("acme-corp"))
            .map(|c| c.overdraft),
        Some(50_000_000)
    );

    let grandfathered = config
        .cost_for("embeddings", Some("globex"))
        .expect("embeddings");
    assert_eq!(grandfathered.source, CostSource::Cohort);
    assert_eq!(grandfathered.cohort, Some("embeddings_2025"));
    assert_eq!(grandfathered.rule.reserve_amount(&NoValues), 400);
    let list = config
        .cost_for("embeddings", Some("acme-corp"))
        .expect("embeddings");
    assert_eq!(list.rule.reserve_amount(&NoValues), 500);

    let images = config.match_route("POST", None, "/v1/images/generations");
    assert_eq!(
        images.map(|found| found.route.on_upstream_error),
        Some(UpstreamErrorPolicy::Settle)
    );
    assert_eq!(config.identity().header, "x-api-key");
    assert_eq!(config.identity().key_in("sk_live_1"), Some("sk_live_1"));
    assert_eq!(config.api_keys().len(), 0);
    assert!(config.billing().top_up_url.is_some());

    let upstream = &config.upstreams()["default"];
    assert_eq!(upstream.sni.as_deref(), Some("api-backend.internal"));
}
