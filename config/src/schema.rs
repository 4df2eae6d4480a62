//! The file format: serde structs mirroring the TOML exactly, with `deny_unknown_fields`
//! and spans for line numbers.
//!
//! These types hold what ops wrote, unchecked (amounts are `i64` so a negative number gets a
//! clear message rather than a type error); `validate` turns them into the model. Nothing
//! outside this crate should see them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::model::{
    Enforcement, FailurePolicy, Mode, Unmatched, UpgradePolicy, UpstreamErrorPolicy,
};
use crate::usage::UnreadableEstimate;

/// A name with the span where it was written.
pub(crate) type Name = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub defaults: Option<Spanned<DefaultsFile>>,
    pub default_plan: Option<Name>,
    #[serde(default)]
    pub credit_types: BTreeMap<Name, CreditTypeFile>,
    #[serde(default)]
    pub features: BTreeMap<Name, FeatureFile>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub plans: BTreeMap<Name, PlanFile>,
    #[serde(default)]
    pub customers: BTreeMap<Name, CustomerFile>,
    #[serde(default)]
    pub upstreams: BTreeMap<Name, UpstreamFile>,
    pub identity: Option<IdentityFile>,
    #[serde(default)]
    pub api_keys: Vec<Spanned<ApiKeyFile>>,
    pub billing: Option<BillingFile>,
    #[serde(default)]
    pub embedded_grants: Vec<Spanned<EmbeddedGrantFile>>,
    #[serde(default)]
    pub cohorts: BTreeMap<Name, CohortFile>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsFile {
    pub mode: Option<Mode>,
    pub failure_policy: Option<FailurePolicy>,
    pub store_timeout_ms: Option<Spanned<i64>>,
    pub unmatched: Option<Spanned<Unmatched>>,
    pub hold_ttl_ms: Option<Spanned<i64>>,
}

/// `[credit_types.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditTypeFile {
    pub display_name: Option<Spanned<String>>,
    pub scale: Spanned<i64>,
}

/// `[features.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeatureFile {
    pub credit_type: Name,
    pub cost: Spanned<CostFile>,
    pub description: Option<String>,
}

/// A cost rule as written. One flat struct rather than a tagged enum: serde's tagged enums
/// buffer their input and lose spans, and a flat struct lets validation say "`rate` does not
/// belong to kind `fixed`" instead of a generic serde message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CostFile {
    pub kind: Spanned<String>,
    pub amount: Option<Spanned<i64>>,
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub rate: Option<Spanned<i64>>,
    pub max: Option<Spanned<i64>>,
    pub default_units: Option<Spanned<i64>>,
    pub estimate: Option<Spanned<i64>>,
    pub usage: Option<Spanned<BTreeMap<Spanned<String>, Spanned<i64>>>>,
    pub fallback: Option<Spanned<i64>>,
    pub per_event: Option<Spanned<i64>>,
    pub inspect_max_bytes: Option<Spanned<i64>>,
    pub estimate_from: Option<Spanned<String>>,
    pub estimate_rate: Option<Spanned<i64>>,
    pub estimate_base: Option<Spanned<i64>>,
    pub estimate_max_body_bytes: Option<Spanned<i64>>,
    pub estimate_unreadable: Option<Spanned<UnreadableEstimate>>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub name: Option<Spanned<String>>,
    pub method: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub feature: Name,
    pub mode: Option<Mode>,
    pub failure_policy: Option<FailurePolicy>,
    pub store_timeout_ms: Option<Spanned<i64>>,
    pub upstream: Option<Name>,
    pub on_upstream_error: Option<UpstreamErrorPolicy>,
    pub upgrade: Option<UpgradePolicy>,
    pub idempotency: Option<IdempotencyFile>,
    pub enforcement: Option<Enforcement>,
}

/// `[[routes]] idempotency = { replays, replay_window_ms }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdempotencyFile {
    pub replays: Option<Spanned<i64>>,
    pub replay_window_ms: Option<Spanned<i64>>,
}

/// `[plans.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanFile {
    pub description: Option<String>,
    pub overdraft: Option<Spanned<OverdraftFile>>,
    #[serde(default)]
    pub costs: BTreeMap<Name, Spanned<CostFile>>,
}

/// `[customers.<id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerFile {
    pub plan: Name,
    pub overdraft: Option<Spanned<OverdraftFile>>,
    #[serde(default)]
    pub costs: BTreeMap<Name, Spanned<CostFile>>,
}

/// `[upstreams.<name>]`.
/// `[cohorts.NAME]`: customers and plans pinned to an older price list (grandfathered).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CohortFile {
    pub description: Option<String>,
    #[serde(default)]
    pub costs: BTreeMap<Name, Spanned<CostFile>>,
    #[serde(default)]
    pub customers: Vec<Name>,
    #[serde(default)]
    pub plans: Vec<Name>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    pub address: Spanned<String>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<i64>>,
    pub read_timeout_ms: Option<Spanned<i64>>,
}

/// `[identity]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityFile {
    pub header: Option<Spanned<String>>,
    pub scheme: Option<Spanned<String>>,
    pub trusted_customer_header: Option<Spanned<String>>,
    pub customer_header: Option<Spanned<String>>,
    pub strip_headers: Option<Vec<Spanned<String>>>,
}

/// `[[api_keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyFile {
    pub customer: Name,
    pub sha256: Spanned<String>,
    pub name: Option<Spanned<String>>,
}

/// `[billing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillingFile {
    pub top_up_url: Option<Spanned<String>>,
}

/// `[[embedded_grants]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddedGrantFile {
    pub grant_id: Name,
    pub customer: Name,
    pub credit_type: Name,
    pub amount: Spanned<i64>,
    pub priority: Option<Spanned<i64>>,
    pub expires_in_s: Option<Spanned<i64>>,
}

/// `overdraft = 5000` (every credit type) or `overdraft = { ai = 5000, api = 20 }`.
#[derive(Debug)]
pub(crate) enum OverdraftFile {
    All(i64),
    PerCreditType(BTreeMap<Name, Spanned<i64>>),
}

impl<'de> Deserialize<'de> for OverdraftFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OverdraftVisitor;

        impl<'de> Visitor<'de> for OverdraftVisitor {
            type Value = OverdraftFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a table of credit type = integer")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(OverdraftFile::All(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(OverdraftFile::All(i64::try_from(value).unwrap_or(i64::MAX)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut per_credit_type = BTreeMap::new();
                while let Some((name, amount)) = map.next_entry::<Name, Spanned<i64>>()? {
                    per_credit_type.insert(name, amount);
                }
                Ok(OverdraftFile::PerCreditType(per_credit_type))
            }
        }

        deserializer.deserialize_any(OverdraftVisitor)
    }
}
