//! The fixtures every end-to-end test shares: the keyspace the binaries run with, the
//! customers and API keys of the base config, and that config's text.
//!
//! Only data and pure functions: nothing here starts a process or opens a connection.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// Redis key prefix the gateway runs with when not told otherwise.
pub const PREFIX: &str = "cg";

/// Number of shards the gateway runs with when not told otherwise.
pub const SHARDS: u32 = 16;

/// The credit type every test config defines.
pub const CREDIT_TYPE: &str = "api";

/// The `[billing] top_up_url` of the test config, expected back in 402 bodies.
pub const TOP_UP_URL: &str = "https://billing.example.test/top-up";

/// Alice's API key (in the config's `[[api_keys]]`).
pub const ALICE_KEY: &str = "cg_test_alice_4f7d2c9e";
/// The customer Alice's key identifies.
pub const ALICE: &str = "alice";
/// Mallory's API key (in the config's `[[api_keys]]`).
pub const MALLORY_KEY: &str = "cg_test_mallory_81b3a6d0";
/// The customer Mallory's key identifies.
pub const MALLORY: &str = "mallory";

/// Hex SHA-256 of an API key, the form `[[api_keys]] sha256` and `cg:apikey:<hex>` use.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The config every test starts from, without routes: enforce mode, fail closed, a
/// 100 ms store timeout, one credit type `api` (scale 0), the features `search` (fixed
/// cost 1) and `health` (free), the upstream `default` at `upstream`, a top-up URL and the
/// keys of Alice and Mallory. Tests append their `[[routes]]` (and may append
/// `[[embedded_grants]]`).
pub fn base_config(upstream: SocketAddr) -> String {
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 100
unmatched = "not_found"

[billing]
top_up_url = "{TOP_UP_URL}"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = 1 }}

[features.health]
credit_type = "api"
cost = {{ kind = "free" }}

[[api_keys]]
customer = "{ALICE}"
sha256 = "{alice}"

[[api_keys]]
customer = "{MALLORY}"
sha256 = "{mallory}"
"#,
        alice = sha256_hex(ALICE_KEY),
        mallory = sha256_hex(MALLORY_KEY),
    )
}

/// The plans the admin API tests attach customers to, to append to [`base_config`]: the
/// sidecar checks a customer's plan against its pricing config.
pub const TEST_PLANS: &str = "
[plans.pro]
description = \"Pro.\"

[plans.annual]
description = \"Annual, billed monthly in credits.\"
";
