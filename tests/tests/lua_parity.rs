//! Parity of the OpenResty module (`lua-compat/openresty/`) with `creditgate-gateway`: one
//! scripted scenario through each, against the same Redis with the sidecar writing the
//! ledger, must give the same statuses and charge headers, the same balances and the same
//! ledger entries (request and hold ids aside); and both serving one customer at once never
//! spend more than was granted.
//!
//! nginx runs as a real process (testkit `Nginx`) loading the module from this repository
//! and the canonical scripts from `lua-compat/lua/`; a second, plain nginx is the upstream
//! that answers with usage (a JSON body and an SSE stream). Without nginx and its Lua module
//! the test fails, naming `.ci/run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use creditgate_sidecar::ledger::{EntryKind, LedgerEntry};
use creditgate_testkit::{
    Backend, CREDIT_TYPE, GATEWAY_BIN, Gateway, GatewayOptions, LedgerHarness, Nginx, TOP_UP_URL,
    Upstream, cargo_bin, grant_request, sha256_hex,
};

/// How long a request's settle or void may take to show in Redis.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long both enforcement points get to see the kill switch file appear or go: ten times
/// the slower of their polls (the gateway's 100 ms tick, the module's 100 ms timer here).
const KILL_SWITCH_WAIT: Duration = Duration::from_millis(1_000);

/// How long both get to see a change of the control state in Redis: the gateway reads it
/// every 500 ms (and on a pub/sub message), the module's timer every 100 ms here.
const CONTROL_WAIT: Duration = Duration::from_millis(1_500);

/// Customers of the scripted scenario (keys in Redis), of the burst and of the mixed run
/// (keys in the config).
const SCENARIO: [&str; 2] = ["par-gw", "par-ngx"];
const BURST: [&str; 2] = ["burst-gw", "burst-ngx"];
const MIXED: &str = "mixed";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn key_of(customer: &str) -> String {
    format!("key-{customer}")
}

/// The pricing file both run: fixed, shadow, keyed and response-priced routes.
fn pricing_toml(upstream: &str, llm: &str) -> String {
    let keys: String = BURST
        .iter()
        .chain([&MIXED])
        .map(|c| {
            format!(
                "[[api_keys]]\ncustomer = \"{c}\"\nsha256 = \"{}\"\n",
                sha256_hex(&key_of(c))
            )
        })
        .collect();
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 500
unmatched = "not_found"

[billing]
top_up_url = "{TOP_UP_URL}"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"

[upstreams.llm]
address = "{llm}"

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = 1 }}

[features.chat]
credit_type = "api"
cost = {{ kind = "from_response", estimate = 5, max = 100, usage = {{ "usage.total_tokens" = 1 }} }}

[[routes]]
method = "GET"
path = "/search"
feature = "search"

[[routes]]
method = "POST"
path = "/search"
feature = "search"

[[routes]]
method = "GET"
path = "/shadow"
feature = "search"
mode = "shadow"

[[routes]]
method = "POST"
path = "/chat"
feature = "chat"
upstream = "llm"

[[routes]]
method = "GET"
path = "/stream"
feature = "chat"
upstream = "llm"

{keys}"#
    )
}

/// A plain nginx answering `/chat` with a JSON usage body and `/stream` with an SSE stream
/// whose last event carries the usage.
fn start_llm_upstream() -> Nginx {
    Nginx::start(1, |ports| {
        format!(
            r#"access_log off;
server {{
    listen 127.0.0.1:{port};
    location = /chat {{ default_type application/json; return 200 '{{"id":"c1","usage":{{"total_tokens":7}}}}'; }}
    location = /stream {{ default_type text/event-stream; return 200 'data: {{"delta":"hi"}}\n\ndata: {{"usage":{{"total_tokens":3}}}}\n\ndata: [DONE]\n\n'; }}
}}"#,
            port = ports[0]
        )
    })
    .expect("the usage upstream (plain nginx) starts")
}

/// nginx with the module in front of the same upstreams.
fn start_module(
    pricing_json: &Path,
    redis_port: u16,
    kill_switch: &Path,
    upstreams: [&str; 2],
) -> Nginx {
    let [upstream, llm] = upstreams;
    let lib = repo().join("lua-compat/openresty/lib");
    let scripts = repo().join("lua-compat/lua");
    Nginx::start(1, |ports| {
        format!(
            r#"access_log off;
lua_package_path "{lib}/?.lua;{lib}/?/init.lua;/usr/share/lua/5.1/?.lua;;";
init_by_lua_block {{
    require("creditgate").configure({{
        pricing_file = "{pricing}", scripts_dir = "{scripts}",
        redis_host = "127.0.0.1", redis_port = {redis_port},
        kill_switch_file = "{kill}", control_poll_ms = 100,
    }})
}}
init_worker_by_lua_block {{ require("creditgate").init_worker() }}
upstream default_upstream {{ server {upstream}; keepalive 16; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        access_by_lua_block {{ require("creditgate").access() }}
        header_filter_by_lua_block {{ require("creditgate").header_filter() }}
        body_filter_by_lua_block {{ require("creditgate").body_filter() }}
        log_by_lua_block {{ require("creditgate").log() }}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_pass http://default_upstream;
    }}
    location ~ ^/(chat|stream)$ {{
        access_by_lua_block {{ require("creditgate").access() }}
        header_filter_by_lua_block {{ require("creditgate").header_filter() }}
        body_filter_by_lua_block {{ require("creditgate").body_filter() }}
        log_by_lua_block {{ require("creditgate").log() }}
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_pass http://{llm};
    }}
}}"#,
            lib = lib.display(),
            scripts = scripts.display(),
            pricing = pricing_json.display(),
            kill = kill_switch.display(),
            port = ports[0],
        )
    })
    .expect("nginx with the creditgate module starts")
}

/// Both enforcement points, the services behind them and the shared Redis and ledger.
struct Parity {
    harness: LedgerHarness,
    upstream: Upstream,
    _llm: Nginx,
    gateway: Gateway,
    module: Nginx,
    kill_switch: PathBuf,
    client: reqwest::blocking::Client,
}

impl Parity {
    fn start() -> Self {
        let harness = LedgerHarness::start(Backend::Sqlite);
        let upstream = Upstream::start().expect("upstream starts");
        let llm = start_llm_upstream();
        let llm_addr = format!("127.0.0.1:{}", llm.ports()[0]);
        let toml = pricing_toml(&upstream.addr().to_string(), &llm_addr);
        let dir = harness.dir.path();
        let toml_path = dir.join("pricing.toml");
        std::fs::write(&toml_path, &toml).expect("writing the pricing file");
        let json_path = dir.join("pricing.json");
        let exported = Command::new(cargo_bin(GATEWAY_BIN))
            .arg("export-pricing")
            .arg(&toml_path)
            .arg("--output")
            .arg(&json_path)
            .output()
            .expect("running export-pricing");
        assert!(exported.status.success(), "export-pricing: {exported:?}");
        let kill_switch = dir.join("creditgate-off");
        let gateway = Gateway::start(GatewayOptions {
            config_toml: toml,
            redis_url: Some(harness.redis.url()),
            extra_args: vec![
                "--kill-switch-file".into(),
                kill_switch.display().to_string(),
            ],
            ..GatewayOptions::default()
        })
        .expect("gateway starts");
        let module = start_module(
            &json_path,
            harness.redis.port(),
            &kill_switch,
            [&upstream.addr().to_string(), &llm_addr],
        );
        for customer in SCENARIO {
            let key = format!("cg:apikey:{}", sha256_hex(&key_of(customer)));
            harness
                .redis
                .cli(&["SET", &key, customer])
                .expect("SET apikey");
        }
        Self {
            harness,
            upstream,
            _llm: llm,
            gateway,
            module,
            kill_switch,
            client: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    fn url(&self, target: Target) -> String {
        match target {
            Target::Gateway => self.gateway.proxy_url(),
            Target::Module => self.module.url(),
        }
    }

    fn grant(&self, customer: &str, grant_id: &str, amount: u64) {
        self.harness.grant(&grant_request(
            customer,
            &format!("{grant_id}-{customer}"),
            CREDIT_TYPE,
            amount,
            None,
            0,
        ));
    }

    /// Waits until `customer` has nothing held: every settle and void landed.
    fn wait_settled(&self, customer: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.harness.redis_available_held(customer, CREDIT_TYPE).1 != 0 {
            assert!(
                Instant::now() < deadline,
                "{customer} still has credits held after {SETTLE_TIMEOUT:?}\ngateway:\n{}\nnginx:\n{}",
                self.gateway.log_tail(20),
                self.module.error_log_tail(20)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn request(&self, target: Target, req: &Req<'_>) -> Step {
        let url = format!("{}{}", self.url(target), req.path);
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).expect("method");
        let mut builder = self
            .client
            .request(method, &url)
            .bearer_auth(key_of(req.customer));
        if let Some(key) = req.idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if let Some(body) = req.body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = builder.send().unwrap_or_else(|e| {
            panic!(
                "{url}: {e:?}\ngateway:\n{}\nnginx:\n{}",
                self.gateway.log_tail(30),
                self.module.error_log_tail(30)
            )
        });
        Step::read(req.name, response)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Gateway,
    Module,
}

struct Req<'a> {
    name: &'static str,
    customer: &'a str,
    method: &'static str,
    path: &'static str,
    idempotency_key: Option<&'static str>,
    body: Option<&'static str>,
}

impl<'a> Req<'a> {
    fn get(name: &'static str, customer: &'a str, path: &'static str) -> Self {
        Self {
            name,
            customer,
            method: "GET",
            path,
            idempotency_key: None,
            body: None,
        }
    }
}

/// What one answer says about the charge: compared between the two enforcement points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    name: &'static str,
    status: u16,
    charged: Option<String>,
    remaining: Option<String>,
    credit_type: Option<String>,
    pricing_version: Option<String>,
    replay: Option<String>,
    has_request_id: bool,
    /// The JSON body of the module's own answers, without its request id.
    refusal: Option<String>,
}

impl Step {
    fn read(name: &'static str, response: reqwest::blocking::Response) -> Self {
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = response.status().as_u16();
        let (charged, remaining, credit_type, pricing_version, replay, request_id) = (
            header("x-credits-charged"),
            header("x-credits-remaining"),
            header("x-credit-type"),
            header("x-creditgate-pricing-version"),
            header("x-creditgate-replay"),
            header("x-request-id"),
        );
        let body = response.text().unwrap_or_default();
        let refusal = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .filter(|v| v.get("error").is_some())
            .map(|mut v| {
                assert_eq!(v["request_id"].as_str(), request_id.as_deref(), "{body}");
                v.as_object_mut().map(|o| o.remove("request_id"));
                v.to_string()
            });
        Self {
            name,
            status,
            charged,
            remaining,
            credit_type,
            pricing_version,
            replay,
            has_request_id: request_id.is_some(),
            refusal,
        }
    }
}

/// The scripted scenario for `customer` through `target`, waiting for each hold to end
/// before the next request so every `x-credits-remaining` is deterministic.
fn scenario(parity: &Parity, target: Target, customer: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut run = |req: Req<'_>| {
        steps.push(parity.request(target, &req));
        parity.wait_settled(customer);
    };
    parity.grant(customer, "g1", 3);
    for _ in 0..4 {
        run(Req::get("enforce", customer, "/search"));
    }
    run(Req::get("shadow", customer, "/shadow"));
    parity.grant(customer, "g2", 20);
    let keyed = || Req {
        name: "idempotent",
        method: "POST",
        path: "/search",
        idempotency_key: Some("order-1"),
        body: Some("{\"q\":1}"),
        ..Req::get("", customer, "")
    };
    run(keyed());
    run(keyed());
    parity.upstream.fail_next(1, 502);
    run(Req::get("upstream 5xx", customer, "/search"));
    run(Req {
        name: "json usage",
        method: "POST",
        body: Some("{}"),
        ..Req::get("", customer, "/chat")
    });
    run(Req::get("sse usage", customer, "/stream"));
    steps
}

/// `off` for each scenario customer by the fleet's control state in Redis (a runtime
/// override, as `creditgate-sidecar control` writes it): both proxy without a charge.
fn off_by_runtime_override(parity: &Parity) -> Vec<(Target, Step)> {
    let state = "cg:{control}:state";
    for customer in SCENARIO {
        let field = format!("customer:{customer}");
        parity
            .harness
            .redis
            .cli(&["HSET", state, &field, "off"])
            .expect("HSET");
    }
    thread::sleep(CONTROL_WAIT);
    let steps = [Target::Gateway, Target::Module]
        .into_iter()
        .zip(SCENARIO)
        .map(|(target, customer)| {
            let step = parity.request(target, &Req::get("customer off", customer, "/search"));
            (target, step)
        })
        .collect();
    for customer in SCENARIO {
        let field = format!("customer:{customer}");
        parity
            .harness
            .redis
            .cli(&["HDEL", state, &field])
            .expect("HDEL");
    }
    thread::sleep(CONTROL_WAIT);
    steps
}

/// `off` by the local kill switch while Redis is unreachable (paused): both proxy without
/// a charge.
fn off_with_redis_paused(parity: &Parity) -> Vec<(Target, Step)> {
    std::fs::write(&parity.kill_switch, b"").expect("kill switch file");
    thread::sleep(KILL_SWITCH_WAIT);
    let pid = parity.harness.redis.pid().expect("redis pid").to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    };
    signal("-STOP");
    let each = |name: &'static str| -> Vec<(Target, Step)> {
        [Target::Gateway, Target::Module]
            .into_iter()
            .zip(SCENARIO)
            .map(|(target, customer)| {
                (
                    target,
                    parity.request(target, &Req::get(name, customer, "/search")),
                )
            })
            .collect()
    };
    let mut steps = each("off");
    // Back to enforce with Redis still paused: the route fails closed (503) in both.
    std::fs::remove_file(&parity.kill_switch).expect("removing the kill switch file");
    thread::sleep(KILL_SWITCH_WAIT);
    steps.extend(each("fail closed"));
    signal("-CONT");
    for customer in SCENARIO {
        parity.wait_settled(customer);
    }
    steps
}

/// `n` requests at once through `target` for `customer`: their statuses, sorted.
fn burst(parity: &Parity, targets: &[Target], customer: &str, n: usize) -> Vec<u16> {
    let mut statuses: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let target = targets[i % targets.len()];
                scope.spawn(move || {
                    parity
                        .request(target, &Req::get("burst", customer, "/search"))
                        .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst request"))
            .collect()
    });
    statuses.sort_unstable();
    statuses
}

/// A ledger entry without what differs between the two runs by construction (ids, times,
/// the customer's name, sequence and hash chain), for comparing the two as multisets.
fn normalized(entries: &[LedgerEntry], customer: &str) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .map(|e| {
            let entry = &e.entry;
            format!(
                "{:?} {} {} {:?} {:?} {:?} {}",
                entry.kind,
                entry.amount,
                entry.credit_type,
                entry.route,
                entry.feature,
                entry.pricing_version,
                entry.grants.to_string().replace(customer, "C"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_openresty_module_enforces_exactly_as_the_gateway() {
    let parity = Parity::start();
    let gw = scenario(&parity, Target::Gateway, SCENARIO[0]);
    let ngx = scenario(&parity, Target::Module, SCENARIO[1]);
    let statuses: Vec<u16> = gw.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 402, 200, 200, 200, 502, 200, 200],
        "{gw:#?}"
    );
    assert_eq!(
        gw[6].replay.as_deref(),
        Some("1"),
        "the keyed retry is a replay: {gw:#?}"
    );
    assert_eq!(
        gw,
        ngx,
        "gateway and module answered differently\nnginx log:\n{}",
        parity.module.error_log_tail(30)
    );
    let mut off = off_by_runtime_override(&parity);
    off.extend(off_with_redis_paused(&parity));
    let (off, fail_closed) = off.split_at(4);
    assert_eq!(fail_closed[0].1.status, 503, "{fail_closed:#?}");
    assert_eq!(fail_closed[0].1, fail_closed[1].1, "fail closed");
    for (target, step) in off {
        assert_eq!(step.status, 200, "{target:?} while off: {step:#?}");
        assert_eq!(
            step.charged, None,
            "{target:?} charged while off: {step:#?}"
        );
    }
    assert_eq!(off[0].1, off[1].1);
    assert_eq!(off[2].1, off[3].1);
    let bursts: Vec<Vec<u16>> = [Target::Gateway, Target::Module]
        .into_iter()
        .zip(BURST)
        .map(|(target, customer)| {
            parity.grant(customer, "g1", 5);
            let statuses = burst(&parity, &[target], customer, 12);
            parity.wait_settled(customer);
            statuses
        })
        .collect();
    assert_eq!(bursts[0], [[200; 5].as_slice(), &[402; 7]].concat());
    assert_eq!(bursts[0], bursts[1]);
    let entries = parity.harness.wait_caught_up();
    let of = |customer: &str| -> Vec<LedgerEntry> {
        entries
            .iter()
            .filter(|e| e.entry.customer == customer)
            .cloned()
            .collect()
    };
    for pair in [SCENARIO, BURST] {
        assert_eq!(
            parity.harness.redis_available_held(pair[0], CREDIT_TYPE),
            parity.harness.redis_available_held(pair[1], CREDIT_TYPE),
            "balances of {pair:?}"
        );
        assert_eq!(
            normalized(&of(pair[0]), pair[0]),
            normalized(&of(pair[1]), pair[1]),
            "ledger entries of {pair:?}"
        );
    }
    let posted: i64 = of(SCENARIO[1])
        .iter()
        .filter(|e| e.entry.kind == EntryKind::HoldPosted)
        .map(|e| -e.entry.amount)
        .sum();
    // 3 enforced + 1 shadow + 1 keyed + 7 (JSON usage) + 3 (SSE usage); the 5xx is voided.
    assert_eq!(posted, 15, "{:#?}", of(SCENARIO[1]));
}

#[test]
fn gateway_and_module_serving_one_customer_at_once_never_overspend() {
    let parity = Parity::start();
    let granted = 20;
    parity.grant(MIXED, "g1", granted);
    let statuses = burst(&parity, &[Target::Gateway, Target::Module], MIXED, 60);
    parity.wait_settled(MIXED);
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(served as u64, granted, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 402),
        "{statuses:?}"
    );
    assert_eq!(
        parity.harness.redis_available_held(MIXED, CREDIT_TYPE),
        (0, 0)
    );
    let entries = parity.harness.wait_caught_up();
    let mut by_kind: BTreeMap<String, i64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.entry.customer == MIXED) {
        *by_kind.entry(format!("{:?}", e.entry.kind)).or_default() += e.entry.amount;
    }
    assert_eq!(
        by_kind.get("HoldPosted"),
        Some(&-(granted as i64)),
        "{by_kind:?}"
    );
    let upstream_saw = parity.upstream.count();
    assert_eq!(
        upstream_saw, granted,
        "the upstream served only what was paid for"
    );
}
