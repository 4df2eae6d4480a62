//! `creditgate-gateway export-pricing`: the compiled pricing table as JSON, for enforcement
//! points that cannot read the TOML (the OpenResty module in `lua-compat/openresty/`).
//!
//! The export is the validated model with every default applied (routes in file order with
//! their resolved mode, failure policy, timeout; features; plans, customers and cohorts with
//! their cost overrides; API key hashes; the pricing version), so a reader never re-implements
//! validation or defaults. Format: `lua-compat/openresty/README.md`. Pure conversion; the
//! CLI writes the result.

use std::collections::BTreeMap;

use creditgate_config::{
    CostRule, Overdraft, PricingConfig, ResponseUsage, Route, Segment, UnitSource,
};
use serde_json::{Map, Value, json};

/// The export format's version: readers refuse a file with another one.
pub const EXPORT_FORMAT: u64 = 1;

/// The pricing table of `config` as one JSON document (see the module docs).
pub fn pricing_export(config: &PricingConfig) -> Value {
    let defaults = config.defaults();
    let identity = config.identity();
    let api_keys: Map<String, Value> = config
        .api_keys()
        .map(|(hash, key)| (hex::encode(hash), Value::String(key.customer.clone())))
        .collect();
    json!({
        "format": EXPORT_FORMAT,
        "pricing_version": config.version_label(),
        "content_hash": config.content_hash(),
        "defaults": {
            "mode": defaults.mode.as_str(),
            "failure_policy": defaults.failure_policy.as_str(),
            "store_timeout_ms": defaults.store_timeout_ms,
            "unmatched": defaults.unmatched.as_str(),
            "hold_ttl_ms": defaults.hold_ttl_ms,
        },
        "default_plan": config.default_plan(),
        "credit_types": config.credit_types().values().map(|t| (t.name.clone(), json!({
            "display_name": t.display_name, "scale": t.scale,
        }))).collect::<Map<_, _>>(),
        "features": config.features().values().map(|f| (f.name.clone(), json!({
            "credit_type": f.credit_type, "cost": cost_rule(&f.cost),
        }))).collect::<Map<_, _>>(),
        "routes": config.route_table().routes().iter().map(route).collect::<Vec<_>>(),
        "plans": config.plans().values().map(|p| (p.name.clone(), json!({
            "overdraft": overdraft(&p.overdraft), "costs": costs(&p.costs),
        }))).collect::<Map<_, _>>(),
        "customers": config.customers().values().map(|c| (c.id.clone(), json!({
            "plan": c.plan, "overdraft": c.overdraft.as_ref().map(overdraft), "costs": costs(&c.costs),
        }))).collect::<Map<_, _>>(),
        "cohorts": config.cohorts().values().map(|c| (c.name.clone(), json!({
            "costs": costs(&c.costs), "customers": c.customers, "plans": c.plans,
        }))).collect::<Map<_, _>>(),
        "identity": {
            "header": identity.header,
            "scheme": identity.scheme,
            "trusted_customer_header": identity.trusted_customer_header,
            "customer_header": identity.customer_header,
            "strip_headers": identity.strip_headers,
        },
        "api_keys": api_keys,
        "billing": { "top_up_url": config.billing().top_up_url },
    })
}

fn route(route: &Route) -> Value {
    let segments: Vec<Value> = route
        .path
        .segments()
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => json!({"literal": &**text}),
            Segment::Param(name) => json!({"param": &**name}),
            Segment::Wildcard => json!({"wildcard": true}),
        })
        .collect();
    json!({
        "name": route.name,
        "method": route.method.as_str(),
        "host": route.host,
        "path": route.path.as_str(),
        "segments": segments,
        "feature": route.feature.name,
        "mode": route.mode.as_str(),
        "failure_policy": route.failure_policy.as_str(),
        "store_timeout_ms": route.store_timeout_ms,
        "upstream": route.upstream,
        "on_upstream_error": route.on_upstream_error.as_str(),
        "upgrade": route.upgrade.as_str(),
        "idempotency": {
            "replays": route.idempotency.replays,
            "window_ms": route.idempotency.window_ms,
        },
    })
}

fn costs(rules: &BTreeMap<String, CostRule>) -> Map<String, Value> {
    rules
        .iter()
        .map(|(feature, rule)| (feature.clone(), cost_rule(rule)))
        .collect()
}

fn overdraft(overdraft: &Overdraft) -> Value {
    json!({"default": overdraft.default, "per_credit_type": overdraft.per_credit_type})
}

/// One cost rule, tagged by `kind` as in the TOML, amounts in the smallest unit.
fn cost_rule(rule: &CostRule) -> Value {
    match rule {
        CostRule::Free => json!({"kind": "free"}),
        CostRule::Fixed { amount } => json!({"kind": "fixed", "amount": amount}),
        CostRule::PerUnit {
            source,
            rate,
            max,
            default_units,
        } => {
            let (from, name) = match source {
                UnitSource::Header(name) => ("header", name),
                UnitSource::Query(name) => ("query", name),
            };
            json!({"kind": "per_unit", "from": from, "name": name, "rate": rate, "max": max,
                "default_units": default_units})
        }
        CostRule::FromResponse {
            estimate,
            max,
            usage,
            estimate_from,
        } => json!({
            "kind": "from_response",
            "estimate": estimate,
            "max": max,
            "usage": response_usage(usage),
            "estimate_from": estimate_from.as_ref().map(|from| json!({
                "path": from.path.as_str(), "rate": from.rate, "base": from.base,
                "max_body_bytes": from.max_body_bytes, "unreadable": from.unreadable.as_str(),
            })),
        }),
    }
}

fn response_usage(usage: &ResponseUsage) -> Value {
    json!({
        "header": usage.header.as_ref().map(|h| json!({"name": h.name, "rate": h.rate})),
        "fields": usage.fields.iter().map(|f| json!({"path": f.path.as_str(), "rate": f.rate}))
            .collect::<Vec<_>>(),
        "fallback": usage.fallback,
        "per_event": usage.per_event,
        "inspect_max_bytes": usage.inspect_max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quickstart_exports_its_routes_prices_and_key_hashes() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/examples/quickstart.toml");
        let config = PricingConfig::load(&file).expect("valid");
        let export = pricing_export(&config);
        assert_eq!(export["format"], EXPORT_FORMAT);
        assert_eq!(export["pricing_version"], config.version_label());
        assert_eq!(export["routes"][0]["path"], "/search");
        assert_eq!(export["routes"][0]["mode"], "enforce");
        assert_eq!(export["routes"][2]["mode"], "off");
        assert_eq!(
            export["features"]["report"]["cost"],
            json!({"kind": "per_unit", "from": "query", "name": "pages", "rate": 5,
                "max": 100, "default_units": 1})
        );
        assert_eq!(
            export["api_keys"]["c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"],
            "demo"
        );
    }

    #[test]
    fn response_priced_rules_carry_their_usage_reading() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/ai-api.toml");
        let config = PricingConfig::load(&file).expect("valid");
        let export = pricing_export(&config);
        let from_response = export["features"]
            .as_object()
            .expect("features")
            .values()
            .find(|f| f["cost"]["kind"] == "from_response")
            .expect("the AI example prices a feature from the response");
        assert!(from_response["cost"]["usage"]["fallback"].is_u64());
        assert!(from_response["cost"]["usage"]["fields"].is_array());
    }
}
