//! One fixture per way a pricing config can be wrong, under `tests/fixtures/invalid/`,
//! each asserting the exact messages (file, line, field path, text) ops will see.

use creditgate_config::PricingConfig;

/// Loads `tests/fixtures/invalid/<name>.toml` and returns its rendered errors.
fn errors_of(name: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/fixtures/invalid/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    match PricingConfig::from_toml_str(&text, &format!("{name}.toml")) {
        Ok(_) => panic!("{name}.toml validated but must not"),
        Err(errors) => errors.messages(),
    }
}

/// Every fixture and its expected messages, in line order.
const CASES: &[(&str, &[&str])] = &[
    (
        "cohort_bad_price",
        &[
            r#"cohort_bad_price.toml:14: cohorts.launch.customers[0]: invalid customer id "acme:corp": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
            r#"cohort_bad_price.toml:15: cohorts.launch.costs.search.amount: must not be negative, got -1"#,
        ],
    ),
    (
        "cohort_customer_pinned_twice",
        &[
            r#"cohort_customer_pinned_twice.toml:14: cohorts.launch.customers[0]: customer "acme" is already pinned by cohorts.beta: a customer belongs to one cohort at most"#,
        ],
    ),
    (
        "cohort_pins_no_one",
        &[
            r#"cohort_pins_no_one.toml:13: cohorts.launch: a cohort must pin someone: list customers, plans or both"#,
        ],
    ),
    (
        "cohort_plan_pinned_twice",
        &[
            r#"cohort_plan_pinned_twice.toml:14: cohorts.launch.plans[0]: plan "pro" is already pinned by cohorts.beta: a plan belongs to one cohort at most"#,
        ],
    ),
    (
        "cohort_unknown_feature",
        &[
            r#"cohort_unknown_feature.toml:15: cohorts.launch.costs.serch: unknown feature "serch" (known: search)"#,
        ],
    ),
    (
        "cohort_unknown_plan",
        &[
            r#"cohort_unknown_plan.toml:14: cohorts.launch.plans[0]: unknown plan "pro_2025" (known: pro)"#,
        ],
    ),
    (
        "cohort_without_costs",
        &[
            r#"cohort_without_costs.toml:13: cohorts.launch.costs: a cohort must pin at least one feature's price (costs = { feature = { kind = .. } })"#,
        ],
    ),
    (
        "bad_estimate_from",
        &[
            r#"bad_estimate_from.toml:14: features.chat.cost.estimate_from: "messages[0].max_tokens" is not a request field path: write JSON object keys (A-Z a-z 0-9 _ -) separated by dots, at most 8 deep, e.g. "max_tokens""#,
        ],
    ),
    (
        "estimate_from_without_rate",
        &[
            r#"estimate_from_without_rate.toml:14: features.chat.cost.estimate_from: needs estimate_rate = <amount per unit> to price the field's unit count"#,
        ],
    ),
    (
        "estimate_unreadable_without_field",
        &[
            r#"estimate_unreadable_without_field.toml:14: features.embed.cost.estimate_unreadable: belongs to an estimate read from the request body: set estimate_from = "<JSON field>" too, or leave it out"#,
        ],
    ),
    (
        "estimate_rate_without_field",
        &[
            r#"estimate_rate_without_field.toml:14: features.chat.cost.estimate_rate: belongs to an estimate read from the request body: set estimate_from = "<JSON field>" too, or leave it out"#,
            r#"estimate_rate_without_field.toml:15: features.chat.cost.estimate_base: belongs to an estimate read from the request body: set estimate_from = "<JSON field>" too, or leave it out"#,
        ],
    ),
    (
        "bad_estimate_max_body_bytes",
        &[
            r#"bad_estimate_max_body_bytes.toml:16: features.chat.cost.estimate_max_body_bytes: must be between 1 and 65536 bytes (the request body the gateway can replay to the upstream), got 1048576"#,
        ],
    ),
    (
        "estimate_base_above_max",
        &[
            r#"estimate_base_above_max.toml:16: features.chat.cost.estimate_base: 200000 is above max (100000); every request would reserve max whatever the field says"#,
        ],
    ),
    (
        "amount_overflow",
        &[
            r#"amount_overflow.toml:9: features.search.cost.amount: 9007199254740992 is above the limit 9007199254740991 (2^53 - 1: amounts must stay exact in the doubles of Redis Lua)"#,
        ],
    ),
    (
        "bad_address",
        &[
            r#"bad_address.toml:2: upstreams.default.address: "localhost" must be host:port, e.g. "127.0.0.1:8080" or "api.internal:443""#,
            r#"bad_address.toml:5: upstreams.backup.address: "10.0.0.2:70000" has an invalid port (1 to 65535)"#,
        ],
    ),
    (
        "bad_api_key_hash",
        &[
            r#"bad_api_key_hash.toml:3: api_keys[0].sha256: must be the SHA-256 of the key as 64 lower-case hex digits (printf %s 'KEY' | sha256sum), but it has 8 characters; never write the key itself"#,
            r#"bad_api_key_hash.toml:7: api_keys[1].sha256: must be the SHA-256 of the key as 64 lower-case hex digits (printf %s 'KEY' | sha256sum), but it has upper-case hex digits; never write the key itself"#,
            r#"bad_api_key_hash.toml:11: api_keys[2].sha256: must be the SHA-256 of the key as 64 lower-case hex digits (printf %s 'KEY' | sha256sum), but it has characters that are not hex digits; never write the key itself"#,
            r#"bad_api_key_hash.toml:14: api_keys[3].customer: invalid customer id "acme:corp": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
            r#"bad_api_key_hash.toml:16: api_keys[3].name: must be 1 to 128 bytes of printable text, got """#,
        ],
    ),
    (
        "bad_embedded_grant",
        &[
            r#"bad_embedded_grant.toml:8: embedded_grants[0].amount: must be greater than 0"#,
            r#"bad_embedded_grant.toml:9: embedded_grants[0].priority: must be between 0 and 1000000, got -1"#,
            r#"bad_embedded_grant.toml:10: embedded_grants[0].expires_in_s: must be between 1 and 315360000 s (leave it out for credits that never expire), got 0"#,
            r#"bad_embedded_grant.toml:13: embedded_grants[1].grant_id: grant id "welcome" is already used by embedded_grants[0] (line 5); a grant id is applied once, so this grant would be skipped"#,
            r#"bad_embedded_grant.toml:16: embedded_grants[1].amount: 9007199254740992 is above the limit 9007199254740991 (2^53 - 1: amounts must stay exact in the doubles of Redis Lua)"#,
            r#"bad_embedded_grant.toml:17: embedded_grants[1].priority: must be between 0 and 1000000, got 1000001"#,
        ],
    ),
    (
        "bad_host",
        &[
            r#"bad_host.toml:13: routes[0].host: "https://api.example.com" is not a host name (letters, digits, "." and "-", or an IPv6 address in brackets; no port, no scheme)"#,
        ],
    ),
    (
        "bad_identifier",
        &[
            r#"bad_identifier.toml:1: credit_types."api:v2": invalid credit type name "api:v2": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
            r#"bad_identifier.toml:7: features."chat completions": invalid feature name "chat completions": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
            r#"bad_identifier.toml:11: plans."pro/2026": invalid plan name "pro/2026": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
            r#"bad_identifier.toml:13: customers."acme|corp": invalid customer id "acme|corp": use 1 to 128 of A-Z a-z 0-9 _ . @ - (names go into Redis keys)"#,
        ],
    ),
    (
        "bad_identity_header",
        &[
            r#"bad_identity_header.toml:2: identity.header: "x api key" is not a valid HTTP header name"#,
            r#"bad_identity_header.toml:3: identity.scheme: "Bearer token" is not a valid scheme: write the word before the key without spaces (e.g. "Bearer"), or "" when the header carries the key alone"#,
            r#"bad_identity_header.toml:4: identity.trusted_customer_header: "x-authenticated-customer:" is not a valid HTTP header name"#,
            r#"bad_identity_header.toml:5: identity.customer_header: "x-creditgate/customer" is not a valid HTTP header name"#,
            r#"bad_identity_header.toml:6: identity.strip_headers[1]: "x-customer-id" is already listed at strip_headers[0]"#,
            r#"bad_identity_header.toml:6: identity.strip_headers[2]: "x-tenant id" is not a valid HTTP header name"#,
        ],
    ),
    (
        "bad_method",
        &[
            r#"bad_method.toml:12: routes[0].method: unknown method "FETCH" (known: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE, *)"#,
        ],
    ),
    (
        "bad_inspect_max_bytes",
        &[
            r#"bad_inspect_max_bytes.toml:14: features.chat.cost.inspect_max_bytes: must be between 1 and 67108864 bytes, got 0"#,
        ],
    ),
    (
        "bad_usage_path",
        &[
            r#"bad_usage_path.toml:14: features.chat.cost.usage."choices[0].tokens": "choices[0].tokens" is not a usage field path: write JSON object keys (A-Z a-z 0-9 _ -) separated by dots, at most 8 deep, e.g. "usage.prompt_tokens""#,
            r#"bad_usage_path.toml:14: features.chat.cost.usage."choices[0].tokens": must be greater than 0"#,
            r#"bad_usage_path.toml:14: features.chat.cost.usage."usage..completion_tokens": "usage..completion_tokens" is not a usage field path: write JSON object keys (A-Z a-z 0-9 _ -) separated by dots, at most 8 deep, e.g. "usage.prompt_tokens""#,
        ],
    ),
    (
        "bad_overdraft",
        &[
            r#"bad_overdraft.toml:8: plans.pro.overdraft: must not be negative, got -1"#,
            r#"bad_overdraft.toml:11: plans.enterprise.overdraft.api: 9007199254740992 is above the limit 9007199254740991 (2^53 - 1: amounts must stay exact in the doubles of Redis Lua)"#,
            r#"bad_overdraft.toml:11: plans.enterprise.overdraft.gold: unknown credit type "gold" (known: api)"#,
        ],
    ),
    (
        "bad_pattern",
        &[
            r#"bad_pattern.toml:13: routes[0].path: path pattern "v1/chat" must start with "/""#,
            r#"bad_pattern.toml:18: routes[1].path: path pattern "/v1/*/chat": "*" may only be the last segment"#,
            r#"bad_pattern.toml:23: routes[2].path: path pattern "/v1/{}": empty parameter name "{}""#,
            r#"bad_pattern.toml:28: routes[3].path: path pattern "/v1/{id}/x/{id}": parameter {id} appears twice"#,
            r#"bad_pattern.toml:33: routes[4].path: path pattern "/v1/ch at": segment "ch at" contains ' '; literals may use letters, digits and -._~!$&'()+,;=:@%, and "{name}" or "*" must fill a whole segment"#,
        ],
    ),
    (
        "bad_scale",
        &[r#"bad_scale.toml:2: credit_types.api.scale: must be between 0 and 12, got 13"#],
    ),
    (
        "bad_timeouts",
        &[
            r#"bad_timeouts.toml:2: defaults.store_timeout_ms: must be between 1 and 10000 ms, got 0"#,
            r#"bad_timeouts.toml:3: defaults.hold_ttl_ms: must be between 1000 and 86400000 ms, got 500"#,
            r#"bad_timeouts.toml:7: upstreams.default.connect_timeout_ms: must be between 1 and 60000 ms, got 0"#,
            r#"bad_timeouts.toml:8: upstreams.default.read_timeout_ms: must be between 1 and 3600000 ms, got 7200000"#,
        ],
    ),
    (
        "bad_top_up_url",
        &[
            r#"bad_top_up_url.toml:2: billing.top_up_url: "example.com/billing" must start with https:// or http://"#,
        ],
    ),
    (
        "bad_estimate_unreadable",
        &[
            r#"bad_estimate_unreadable.toml:16: features.chat.cost.estimate_unreadable: unknown variant `reserve_estimate`, expected `reserve_max` or `refuse`"#,
        ],
    ),
    (
        "bad_upgrade_policy",
        &[
            r#"bad_upgrade_policy.toml:15: routes.upgrade: unknown variant `free`, expected `charge` or `refuse`"#,
        ],
    ),
    (
        "bad_idempotency_replays",
        &[
            r#"bad_idempotency_replays.toml:15: routes[0].idempotency.replays: must be between 0 and 100, got -1"#,
            r#"bad_idempotency_replays.toml:15: routes[0].idempotency.replay_window_ms: must be between 1 and 86400000 ms, got 0"#,
        ],
    ),
    (
        "bad_upstream_error_policy",
        &[
            r#"bad_upstream_error_policy.toml:15: routes.on_upstream_error: unknown variant `refund`, expected `void` or `settle`"#,
        ],
    ),
    (
        "duplicate_api_key",
        &[
            r#"duplicate_api_key.toml:8: api_keys[1].sha256: the same hash as api_keys[0] (line 3): one key can identify only one customer"#,
        ],
    ),
    (
        "duplicate_route",
        &[
            r#"duplicate_route.toml:18: routes[1]: duplicate of routes[0] ("GET /v1/chat/{id}", line 13): the same method, host and path"#,
        ],
    ),
    (
        "duplicate_route_name",
        &[
            r#"duplicate_route_name.toml:20: routes[1].name: route name "chat" is already used by routes[0]; names label logs and metrics and must be unique"#,
        ],
    ),
    (
        "embedded_grant_unknown_credit_type",
        &[
            r#"embedded_grant_unknown_credit_type.toml:7: embedded_grants[0].credit_type: unknown credit type "credits" (known: api)"#,
        ],
    ),
    (
        "estimate_above_max",
        &[
            r#"estimate_above_max.toml:12: features.chat.cost.estimate: 1000 is above max (10); the estimate is reserved up front and may not exceed what a request can cost"#,
        ],
    ),
    (
        "fallback_above_max",
        &[
            r#"fallback_above_max.toml:14: features.chat.cost.fallback: 250000 is above max (100000); a response without usage may not cost more than any response can"#,
        ],
    ),
    (
        "hold_ttl_too_short",
        &[
            r#"hold_ttl_too_short.toml:2: defaults.hold_ttl_ms: 1000 ms is shorter than 2 x defaults.store_timeout_ms (1200 ms): the gateway renews in-flight holds every third of the TTL, and a renewal may take a store timeout"#,
        ],
    ),
    (
        "identity_header_conflict",
        &[
            r#"identity_header_conflict.toml:3: identity.trusted_customer_header: "x-api-key" is also identity.customer_header, which the gateway strips from client requests and sets itself; let the auth layer in front use another header"#,
            r#"identity_header_conflict.toml:4: identity.customer_header: "x-api-key" is also identity.header: the gateway sets this header towards the upstream and would replace the API key with the customer id"#,
        ],
    ),
    (
        "many_errors",
        &[
            r#"many_errors.toml:8: features.chat.credit_type: unknown credit type "ai" (known: api)"#,
            r#"many_errors.toml:9: features.chat.cost.estimate: must be greater than 0"#,
            r#"many_errors.toml:13: features.export.cost.rate: must not be negative, got -3"#,
            r#"many_errors.toml:16: customers.acme.plan: unknown plan "gold" (no plans are defined)"#,
            r#"many_errors.toml:26: routes[1].feature: unknown feature "exports" (known: chat, export)"#,
            r#"many_errors.toml:30: routes[2].path: path pattern "/v1/export/{id}/" ends with "/"; trailing slashes are ignored when matching, so write "/v1/export/{id}""#,
            r#"many_errors.toml:32: routes[2].upstream: unknown upstream "nowhere" (known: default)"#,
        ],
    ),
    (
        "missing_default_upstream",
        &[
            r#"missing_default_upstream.toml:8: defaults.unmatched: "pass_through" forwards unmatched requests to the upstream named "default", which is not defined"#,
            r#"missing_default_upstream.toml:14: routes[0].upstream: not set and no upstream is named "default"; set upstream or define [upstreams.default]"#,
        ],
    ),
    (
        "negative_cost",
        &[r#"negative_cost.toml:9: features.search.cost.amount: must not be negative, got -5"#],
    ),
    (
        "per_unit_without_source",
        &[
            r#"per_unit_without_source.toml:9: features.export.cost: kind "per_unit" needs header = "..." or query = "..." to read the units from"#,
        ],
    ),
    (
        "rate_above_max",
        &[
            r#"rate_above_max.toml:9: features.export.cost.rate: 500 is above max (100): every request would be charged max"#,
        ],
    ),
    (
        "shadowed_route",
        &[
            r#"shadowed_route.toml:18: routes[1]: never matches: shadowed by routes[0] ("GET /v1/*", line 13), which comes first and matches every request this route matches; move this route above it or remove it"#,
            r#"shadowed_route.toml:28: routes[3]: never matches: shadowed by routes[2] ("* /a/{x}", line 23), which comes first and matches every request this route matches; move this route above it or remove it"#,
            r#"shadowed_route.toml:39: routes[5]: never matches: shadowed by routes[4] ("POST /c", line 33), which comes first and matches every request this route matches; move this route above it or remove it"#,
        ],
    ),
    (
        "sni_without_tls",
        &[
            r#"sni_without_tls.toml:3: upstreams.default.sni: is set but tls = false; set tls = true or remove sni"#,
        ],
    ),
    (
        "syntax_error",
        &[r#"syntax_error.toml:2: invalid basic string, expected `"`"#],
    ),
    (
        "too_many_usage_fields",
        &[
            r#"too_many_usage_fields.toml:14: features.chat.cost.usage: 17 fields, more than the limit 16"#,
        ],
    ),
    (
        "unknown_cost_kind",
        &[
            r#"unknown_cost_kind.toml:9: features.search.cost.kind: unknown cost kind "flat" (known: free, fixed, per_unit, from_response)"#,
        ],
    ),
    (
        "unknown_cost_override",
        &[
            r#"unknown_cost_override.toml:12: plans.pro.costs.chatt: unknown feature "chatt" (known: chat)"#,
            r#"unknown_cost_override.toml:16: customers.acme.costs.chat.amount: must not be negative, got -1"#,
        ],
    ),
    (
        "unknown_credit_type",
        &[
            r#"unknown_credit_type.toml:8: features.search.credit_type: unknown credit type "apl" (known: api)"#,
        ],
    ),
    (
        "unknown_feature",
        &[
            r#"unknown_feature.toml:18: routes[0].feature: unknown feature "chatt" (known: chat, embed)"#,
        ],
    ),
    (
        "unknown_field",
        &[
            r#"unknown_field.toml:3: defaults: unknown field `colour`, expected one of `mode`, `failure_policy`, `store_timeout_ms`, `unmatched`, `hold_ttl_ms`"#,
        ],
    ),
    (
        "unknown_mode",
        &[
            r#"unknown_mode.toml:2: defaults.mode: unknown variant `enforced`, expected one of `off`, `shadow`, `enforce`"#,
        ],
    ),
    (
        "unknown_plan",
        &[
            r#"unknown_plan.toml:1: default_plan: unknown plan "pro" (known: starter)"#,
            r#"unknown_plan.toml:12: customers.acme.plan: unknown plan "pro_2025" (known: starter)"#,
        ],
    ),
    (
        "unknown_upstream",
        &[
            r#"unknown_upstream.toml:15: routes[0].upstream: unknown upstream "backend" (known: default)"#,
        ],
    ),
    (
        "usage_header_without_rate",
        &[
            r#"usage_header_without_rate.toml:14: features.export.cost.header: needs rate = <amount per unit> to price the header's unit count"#,
        ],
    ),
    (
        "usage_rate_without_header",
        &[
            r#"usage_rate_without_header.toml:14: features.chat.cost.rate: prices the units of a response header: set header = "..." too, or price body fields under usage"#,
        ],
    ),
    (
        "wrong_cost_field",
        &[
            r#"wrong_cost_field.toml:9: features.search.cost.rate: not a field of kind "fixed" (its fields: amount)"#,
        ],
    ),
    (
        "wrong_type",
        &[r#"wrong_type.toml:2: credit_types.api.scale: invalid type: string "six", expected i64"#],
    ),
    (
        "zero_cost",
        &[
            r#"zero_cost.toml:9: features.search.cost.amount: must be greater than 0; write kind = "free" for a feature that costs nothing"#,
        ],
    ),
    (
        "zero_rate",
        &[r#"zero_rate.toml:9: features.export.cost.rate: must be greater than 0"#],
    ),
];

fn check(name: &str) {
    let (_, expected) = CASES
        .iter()
        .find(|(case, _)| *case == name)
        .expect("case is listed");
    assert_eq!(errors_of(name), *expected, "{name}.toml");
}

#[test]
fn bad_idempotency_replays() {
    check("bad_idempotency_replays");
}

#[test]
fn amount_overflow() {
    check("amount_overflow");
}

#[test]
fn bad_address() {
    check("bad_address");
}

#[test]
fn bad_api_key_hash() {
    check("bad_api_key_hash");
}

#[test]
fn bad_embedded_grant() {
    check("bad_embedded_grant");
}

#[test]
fn bad_host() {
    check("bad_host");
}

#[test]
fn bad_identifier() {
    check("bad_identifier");
}

#[test]
fn bad_identity_header() {
    check("bad_identity_header");
}

#[test]
fn bad_method() {
    check("bad_method");
}

#[test]
fn bad_overdraft() {
    check("bad_overdraft");
}

#[test]
fn bad_pattern() {
    check("bad_pattern");
}

#[test]
fn bad_scale() {
    check("bad_scale");
}

#[test]
fn bad_timeouts() {
    check("bad_timeouts");
}

#[test]
fn bad_top_up_url() {
    check("bad_top_up_url");
}

#[test]
fn bad_estimate_unreadable() {
    check("bad_estimate_unreadable");
}

#[test]
fn bad_upgrade_policy() {
    check("bad_upgrade_policy");
}

#[test]
fn bad_upstream_error_policy() {
    check("bad_upstream_error_policy");
}

#[test]
fn duplicate_api_key() {
    check("duplicate_api_key");
}

#[test]
fn duplicate_route() {
    check("duplicate_route");
}

#[test]
fn duplicate_route_name() {
    check("duplicate_route_name");
}

#[test]
fn embedded_grant_unknown_credit_type() {
    check("embedded_grant_unknown_credit_type");
}

#[test]
fn estimate_above_max() {
    check("estimate_above_max");
}

#[test]
fn hold_ttl_too_short() {
    check("hold_ttl_too_short");
}

#[test]
fn identity_header_conflict() {
    check("identity_header_conflict");
}

#[test]
fn many_errors() {
    check("many_errors");
}

#[test]
fn missing_default_upstream() {
    check("missing_default_upstream");
}

#[test]
fn negative_cost() {
    check("negative_cost");
}

#[test]
fn per_unit_without_source() {
    check("per_unit_without_source");
}

#[test]
fn rate_above_max() {
    check("rate_above_max");
}

#[test]
fn shadowed_route() {
    check("shadowed_route");
}

#[test]
fn sni_without_tls() {
    check("sni_without_tls");
}

#[test]
fn syntax_error() {
    check("syntax_error");
}

#[test]
fn unknown_cost_kind() {
    check("unknown_cost_kind");
}

#[test]
fn unknown_cost_override() {
    check("unknown_cost_override");
}

#[test]
fn unknown_credit_type() {
    check("unknown_credit_type");
}

#[test]
fn unknown_feature() {
    check("unknown_feature");
}

#[test]
fn unknown_field() {
    check("unknown_field");
}

#[test]
fn unknown_mode() {
    check("unknown_mode");
}

#[test]
fn unknown_plan() {
    check("unknown_plan");
}

#[test]
fn unknown_upstream() {
    check("unknown_upstream");
}

#[test]
fn wrong_cost_field() {
    check("wrong_cost_field");
}

#[test]
fn wrong_type() {
    check("wrong_type");
}

#[test]
fn zero_cost() {
    check("zero_cost");
}

#[test]
fn zero_rate() {
    check("zero_rate");
}

#[test]
fn many_errors_are_reported_together() {
    // Seven independent mistakes, all in one report: validation never stops at the first.
    assert_eq!(errors_of("many_errors").len(), 7);
}

#[test]
fn every_fixture_has_a_case() {
    let dir = format!("{}/tests/fixtures/invalid", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".toml")?.to_owned())
        })
        .collect();
    files.sort();
    let mut cases: Vec<String> = CASES.iter().map(|(name, _)| (*name).to_owned()).collect();
    cases.sort();
    assert_eq!(files, cases);
}

#[test]
fn an_unreadable_file_is_a_config_error() {
    let errors = PricingConfig::load("/nonexistent/pricing.toml").expect_err("no such file");
    assert_eq!(errors.len(), 1);
    let message = errors.to_string();
    assert!(
        message.starts_with("/nonexistent/pricing.toml: cannot read the file: "),
        "{message}"
    );
}

#[test]
fn cohort_bad_price() {
    check("cohort_bad_price");
}

#[test]
fn cohort_customer_pinned_twice() {
    check("cohort_customer_pinned_twice");
}

#[test]
fn cohort_pins_no_one() {
    check("cohort_pins_no_one");
}

#[test]
fn cohort_plan_pinned_twice() {
    check("cohort_plan_pinned_twice");
}

#[test]
fn cohort_unknown_feature() {
    check("cohort_unknown_feature");
}

#[test]
fn cohort_unknown_plan() {
    check("cohort_unknown_plan");
}

#[test]
fn cohort_without_costs() {
    check("cohort_without_costs");
}

#[test]
fn bad_inspect_max_bytes() {
    check("bad_inspect_max_bytes");
}

#[test]
fn bad_usage_path() {
    check("bad_usage_path");
}

#[test]
fn fallback_above_max() {
    check("fallback_above_max");
}

#[test]
fn usage_header_without_rate() {
    check("usage_header_without_rate");
}

#[test]
fn too_many_usage_fields() {
    check("too_many_usage_fields");
}

#[test]
fn usage_rate_without_header() {
    check("usage_rate_without_header");
}

#[test]
fn bad_estimate_from() {
    check("bad_estimate_from");
}

#[test]
fn estimate_from_without_rate() {
    check("estimate_from_without_rate");
}

#[test]
fn estimate_unreadable_without_field() {
    check("estimate_unreadable_without_field");
}

#[test]
fn estimate_rate_without_field() {
    check("estimate_rate_without_field");
}

#[test]
fn bad_estimate_max_body_bytes() {
    check("bad_estimate_max_body_bytes");
}

#[test]
fn estimate_base_above_max() {
    check("estimate_base_above_max");
}
