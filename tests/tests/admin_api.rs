//! The sidecar's admin API end to end: the real `creditgate-sidecar run --admin-listen`
//! binary on a real Redis and a real ledger (SQLite file or Postgres server), driven over
//! HTTP with tokens made by the real `admin token create` command.
//!
//! Scenarios that touch the ledger run once per backend (`<scenario>::sqlite`,
//! `<scenario>::postgres`). Needs `redis-server`, PostgreSQL and the built binaries:
//! `cargo build -p creditgate-sidecar -p creditgate-gateway`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use creditgate_protocol::GrantSource;
use creditgate_sidecar::ledger::GrantRecord;
use creditgate_testkit::{
    ADMIN_OPERATIONS, AdminHarness, Answer, Backend, Gateway, GatewayOptions, ROLES,
    ReceivedWebhook, SECOND_ADMIN, Upstream, WAIT, WebhookReceiver, create_token, http_client, key,
    send, sha256_hex, sidecar_command,
};
use serde_json::{Value, json};

/// The signing secret of the webhook tests.
const WEBHOOK_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Checks a webhook's signature the way a receiver should, and returns its JSON body.
fn verified(w: &ReceivedWebhook) -> Value {
    use hmac::{Hmac, Mac};
    let sig = w
        .header("x-creditgate-signature")
        .expect("signature header");
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .expect("t=…,v1=…");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(w.body.as_bytes());
    mac.verify_slice(&hex::decode(v1).expect("hex"))
        .expect("the signature verifies");
    let body: Value = serde_json::from_str(&w.body).expect("JSON");
    assert_eq!(
        w.header("x-creditgate-delivery"),
        body["delivery_id"].as_str(),
        "the delivery header names the body's delivery"
    );
    body
}

fn in_a_week_ms() -> u64 {
    creditgate_sidecar::ledger::now_ms() + 7 * 86_400_000
}

// ---------------------------------------------------------------------------------------
// Scenarios

creditgate_testkit::on_both_backends!(
    every_route_allows_exactly_its_roles,
    support_over_its_limit_waits_for_a_second_person,
    fifty_concurrent_purchases_with_one_key_grant_once,
    bad_input_names_the_field_and_writes_nothing,
    a_void_removes_only_the_remaining_credits,
    a_void_whose_rebuild_is_busy_is_finished_by_the_rebuild_job,
    a_monthly_allotment_missed_while_down_is_granted_once_on_restart,
    whole_months_missed_while_down_are_back_filled_once_each,
    a_customer_moved_onto_a_plan_gets_no_allotments_for_the_months_before,
    an_auto_recharge_burst_fires_one_webhook_and_its_top_up_lands_once,
    events_fire_once_per_crossing_signed_and_retried,
);

fn an_auto_recharge_burst_fires_one_webhook_and_its_top_up_lands_once(backend: Backend) {
    let receiver = WebhookReceiver::start(0).expect("receiver");
    let ops = format!(
        "{ADMIN_OPERATIONS}\n[auto_recharge]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
        receiver.url("/recharge")
    );
    let h = AdminHarness::start_with(backend, &ops);
    h.create_customer("acme", None);
    let a = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": 1000, "reason_code": "onboarding"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let set = h.call(
        Some("billing"),
        "PUT",
        "/v1/admin/customers/acme/alerts",
        Some(&key()),
        Some(&json!({"credit_type": "api", "recharge_threshold": 500, "recharge_target": 2000})),
    );
    assert_eq!(set.status, 200, "{set:?}");
    h.wait_available("acme", "api", 1000);
    // A burst across the threshold, then more burns while the recharge is in flight,
    // spread over several passes of the watcher.
    for _ in 0..6 {
        h.burn("acme", "api", 100);
    }
    let first = h.wait_for_webhooks(&receiver, 1);
    for _ in 0..2 {
        h.burn("acme", "api", 100);
        thread::sleep(Duration::from_millis(700));
    }
    thread::sleep(Duration::from_millis(1_500));
    let all = receiver.received();
    assert_eq!(
        all.len(),
        1,
        "exactly one recharge webhook for one crossing: {all:?}"
    );
    let body = verified(&first[0]);
    assert_eq!(body["kind"], "auto_recharge");
    assert_eq!(body["customer"], "acme");
    assert_eq!(body["target"], 2000);
    let amount = body["amount"].as_u64().expect("amount");
    assert_eq!(amount, 2000 - body["available"].as_u64().unwrap());
    // The receiver (the product's billing backend) charges and tops up, retrying its own
    // call once: the delivery id is its Idempotency-Key, so one grant lands.
    let delivery = body["delivery_id"].as_str().unwrap().to_string();
    let top_up = json!({"source": "purchase", "credit_type": "api", "amount": amount,
                        "amount_paid_micros": amount * 50_000, "reason_code": "purchase",
                        "note": format!("auto-recharge {delivery}")});
    let path = "/v1/admin/customers/acme/grants";
    let r1 = h.call(
        Some("billing"),
        "POST",
        path,
        Some(&delivery),
        Some(&top_up),
    );
    let r2 = h.call(
        Some("billing"),
        "POST",
        path,
        Some(&delivery),
        Some(&top_up),
    );
    assert_eq!(r1.status, 201, "{r1:?}");
    assert_eq!(r1, r2);
    let purchases: Vec<_> = h
        .grants_of("acme")
        .into_iter()
        .filter(|g| g.source == GrantSource::Purchase)
        .collect();
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    h.wait_available("acme", "api", 200 + amount as i64);
    let log = h
        .get("readonly", "/v1/admin/webhook-deliveries?customer=acme")
        .json();
    assert_eq!(log["deliveries"][0]["state"], "delivered", "{log}");
    // Back above the threshold, the next crossing recharges again: a second webhook.
    let available = h.available("acme", "api") as u64;
    h.burn("acme", "api", available - 100);
    let both = h.wait_for_webhooks(&receiver, 2);
    let second = verified(&both[1]);
    assert_ne!(second["delivery_id"], body["delivery_id"]);
    assert_eq!(second["amount"], 1900);
}

fn events_fire_once_per_crossing_signed_and_retried(backend: Backend) {
    // The receiver fails the first two attempts: the sidecar retries with backoff.
    let receiver = WebhookReceiver::start(2).expect("receiver");
    let ops = format!(
        "{ADMIN_OPERATIONS}\n[webhooks]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\nexpiring_within_days = 7\n",
        receiver.url("/events")
    );
    let h = AdminHarness::start_with(backend, &ops);
    h.create_customer("acme", None);
    let set = h.call(
        Some("support"),
        "PUT",
        "/v1/admin/customers/acme/alerts",
        Some(&key()),
        Some(&json!({"credit_type": "api", "low_balance_threshold": 300})),
    );
    assert_eq!(set.status, 200, "{set:?}");
    let promo = h.post(
        "sales",
        "/v1/admin/customers/acme/grants",
        json!({"source": "promotion", "credit_type": "api", "amount": 100, "reason_code": "onboarding",
               "expires_at_ms": creditgate_sidecar::ledger::now_ms() + 3 * 86_400_000}),
    );
    assert_eq!(promo.status, 201, "{promo:?}");
    let base = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": 500, "reason_code": "onboarding"}),
    );
    assert_eq!(base.status, 201, "{base:?}");
    let expiring = h.wait_for_webhooks(&receiver, 1);
    assert_eq!(verified(&expiring[0])["kind"], "grant.expiring");
    h.burn("acme", "api", 350);
    let low = h.wait_for_webhooks(&receiver, 2);
    let low_body = verified(&low[1]);
    assert_eq!(low_body["kind"], "balance.low");
    assert_eq!(low_body["available"], 250);
    h.burn("acme", "api", 100);
    h.burn("acme", "api", 150);
    let depleted = h.wait_for_webhooks(&receiver, 3);
    assert_eq!(verified(&depleted[2])["kind"], "balance.depleted");
    thread::sleep(Duration::from_millis(2_500));
    let all = receiver.received();
    let delivered: Vec<_> = all.iter().filter(|w| w.answered == 200).collect();
    assert_eq!(delivered.len(), 3, "each event once: {all:?}");
    assert_eq!(all.len(), 5, "two failed attempts, then retried: {all:?}");
    let ids: BTreeSet<_> = all
        .iter()
        .map(|w| w.header("x-creditgate-delivery").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "retries carry the same delivery id");
    let log = h.get("readonly", "/v1/admin/webhook-deliveries").json();
    let attempts: i64 = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["state"], "delivered", "{d}");
            d["attempts"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(attempts, 5, "{log}");
    // The sidecar's /metrics counts each attempt by kind and outcome.
    let deliveries = |kind: &str, outcome: &str| {
        h.sidecar.metric(
            "creditgate_webhook_deliveries_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    for kind in ["grant.expiring", "balance.low", "balance.depleted"] {
        assert_eq!(deliveries(kind, "delivered"), 1.0, "{kind}");
    }
    let retried: f64 = ["grant.expiring", "balance.low", "balance.depleted"]
        .iter()
        .map(|k| deliveries(k, "retry"))
        .sum();
    assert_eq!(retried, 2.0);
}

/// The table every role is checked against: route → roles allowed. Written out here,
/// independently of the server's own table, so a change of either shows.
fn expected_roles() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    const ALL: &[&str] = &["admin", "billing", "support", "sales", "readonly"];
    vec![
        ("GET", "/v1/admin/whoami", ALL),
        ("GET", "/v1/admin/bundles", ALL),
        ("POST", "/v1/admin/customers", &["admin", "billing"]),
        ("GET", "/v1/admin/customers/{customer}", ALL),
        (
            "PUT",
            "/v1/admin/customers/{customer}/plan",
            &["admin", "billing"],
        ),
        (
            "POST",
            "/v1/admin/customers/{customer}/api-keys",
            &["admin", "billing"],
        ),
        (
            "POST",
            "/v1/admin/customers/{customer}/api-keys/{key_id}/revoke",
            &["admin", "billing", "support"],
        ),
        (
            "POST",
            "/v1/admin/customers/{customer}/grants",
            &["admin", "billing", "support", "sales"],
        ),
        (
            "POST",
            "/v1/admin/customers/{customer}/grants/{grant_id}/void",
            &["admin", "support"],
        ),
        ("GET", "/v1/admin/redis-rebuilds", ALL),
        (
            "POST",
            "/v1/admin/customers/{customer}/purchases",
            &["admin", "billing"],
        ),
        ("GET", "/v1/admin/customers/{customer}/balance", ALL),
        ("GET", "/v1/admin/customers/{customer}/ledger", ALL),
        (
            "PUT",
            "/v1/admin/customers/{customer}/alerts",
            &["admin", "billing", "support"],
        ),
        ("GET", "/v1/admin/webhook-deliveries", ALL),
        ("GET", "/v1/admin/grant-approvals", ALL),
        (
            "POST",
            "/v1/admin/grant-approvals/{request_id}/approve",
            &["admin"],
        ),
        ("GET", "/v1/control", &["admin", "support", "readonly"]),
        ("POST", "/v1/control/mode", &["admin"]),
        ("POST", "/v1/control/rollout", &["admin"]),
        (
            "GET",
            "/v1/control/audit",
            &["admin", "support", "readonly"],
        ),
        (
            "GET",
            "/v1/fleet/gateways",
            &["admin", "support", "readonly"],
        ),
        ("POST", "/v1/usage-events", &["admin", "billing"]),
    ]
}

fn every_route_allows_exactly_its_roles(backend: Backend) {
    let h = AdminHarness::start(backend);
    h.create_customer("acme", None);
    let mut checked = 0;
    for (method, route, allowed) in expected_roles() {
        for role in ROLES {
            // A fresh customer, key and grant per call, so every call is valid for an
            // allowed role and only the role decides.
            let customer = format!("c{checked}");
            h.create_customer(&customer, None);
            let grant = h.post(
                "admin",
                &format!("/v1/admin/customers/{customer}/grants"),
                json!({"source": "adjustment", "credit_type": "api", "amount": 10, "reason_code": "outage"}),
            );
            assert_eq!(grant.status, 201, "{grant:?}");
            let grant_id = grant.json()["grant"]["grant_id"]
                .as_str()
                .unwrap()
                .to_string();
            let api_key = h.post(
                "admin",
                &format!("/v1/admin/customers/{customer}/api-keys"),
                json!({}),
            );
            let key_id = api_key.json()["key_id"].as_str().unwrap().to_string();
            let path = route
                .replace("{customer}", &customer)
                .replace("{grant_id}", &grant_id)
                .replace("{key_id}", &key_id)
                .replace("{request_id}", "a-none");
            let body = match route {
                "/v1/admin/customers" => json!({"customer": format!("new{checked}")}),
                "/v1/admin/customers/{customer}/plan" => json!({"plan": "pro"}),
                "/v1/admin/customers/{customer}/grants" => {
                    // A source every allowed role may issue on this route: each role's own.
                    let source = match role {
                        "billing" => "plan_allotment",
                        "sales" => "promotion",
                        "support" => "goodwill",
                        _ => "adjustment",
                    };
                    let mut b = json!({"source": source, "credit_type": "api", "amount": 5, "reason_code": "outage"});
                    if source == "promotion" {
                        b["expires_at_ms"] = json!(in_a_week_ms());
                    }
                    b
                }
                "/v1/admin/customers/{customer}/grants/{grant_id}/void" => {
                    json!({"reason": "test"})
                }
                "/v1/admin/customers/{customer}/purchases" => json!({"bundle": "usd50"}),
                "/v1/admin/customers/{customer}/alerts" => json!({"credit_type": "api"}),
                "/v1/control/mode" => json!({"mode": "enforce", "reason": "test"}),
                "/v1/control/rollout" => json!({"percent": null, "reason": "test"}),
                "/v1/usage-events" => json!({"events": [{"customer": customer,
                    "feature": "search", "quantity": 1,
                    "occurred_at_ms": creditgate_sidecar::ledger::now_ms(),
                    "idempotency_key": format!("e{checked}")}]}),
                _ => json!({}),
            };
            let a = if method == "GET" {
                h.get(role, &path)
            } else {
                h.call(Some(role), method, &path, Some(&key()), Some(&body))
            };
            if allowed.contains(&role) {
                // Allowed: done, or (approving a request that does not exist) a 404.
                let ok = if route.ends_with("/approve") {
                    a.status == 404 && a.json()["field"] == "request_id"
                } else if route == "/v1/usage-events" {
                    a.status == 200 && a.json()["burned"] == 1
                } else if route == "/v1/control/mode" || route == "/v1/control/rollout" {
                    a.status == 200 && a.json()["actor"] == role
                } else {
                    (200..300).contains(&a.status)
                };
                assert!(ok, "{role} {method} {route}: {a:?}");
            } else {
                assert_eq!(a.status, 403, "{role} {method} {route}: {a:?}");
                assert_eq!(a.json()["field"], "Authorization", "{a:?}");
            }
            // No token at all: 401 everywhere.
            let anon = h.call(None, method, &path, Some(&key()), Some(&body));
            assert_eq!(anon.status, 401, "anonymous {method} {route}: {anon:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, expected_roles().len() * 5);

    // Each grant source is open to exactly its roles.
    let sources: [(&str, &[&str]); 5] = [
        ("purchase", &["admin", "billing"]),
        ("plan_allotment", &["admin", "billing"]),
        ("promotion", &["admin", "sales"]),
        ("goodwill", &["admin", "support"]),
        ("adjustment", &["admin"]),
    ];
    for (source, allowed) in sources {
        for role in ROLES.into_iter().filter(|r| *r != "readonly") {
            let mut b = json!({"source": source, "credit_type": "api", "amount": 1, "reason_code": "outage"});
            if source == "promotion" {
                b["expires_at_ms"] = json!(in_a_week_ms());
            }
            if source == "purchase" {
                b["amount_paid_micros"] = json!(1000);
            }
            let a = h.post(role, "/v1/admin/customers/acme/grants", b);
            if allowed.contains(&role) {
                assert_eq!(a.status, 201, "{role} {source}: {a:?}");
                assert_eq!(a.json()["grant"]["actor"], role, "the actor is recorded");
            } else {
                assert_eq!(a.status, 403, "{role} {source}: {a:?}");
                assert_eq!(a.json()["field"], "source", "{a:?}");
            }
        }
    }
    let by_actor: BTreeSet<String> = h.grants_of("acme").into_iter().map(|g| g.actor).collect();
    assert_eq!(
        by_actor,
        ["admin", "billing", "sales", "support"]
            .map(String::from)
            .into()
    );
}

fn support_over_its_limit_waits_for_a_second_person(backend: Backend) {
    let h = AdminHarness::start(backend);
    h.create_customer("acme", None);
    let goodwill = |amount: u64| {
        h.post(
            "support",
            "/v1/admin/customers/acme/grants",
            json!({"source": "goodwill", "credit_type": "api", "amount": amount,
                   "reason_code": "outage", "note": "ticket 4711"}),
        )
    };
    // Within the limit: granted at once.
    let a = goodwill(900);
    assert_eq!(a.status, 201, "{a:?}");
    h.wait_available("acme", "api", 900);
    // Over the per-grant limit, and (separately) over the per-day limit: pending.
    let over_grant = goodwill(5_000);
    assert_eq!(over_grant.status, 202, "{over_grant:?}");
    let over_day = goodwill(700);
    assert_eq!(over_day.status, 202, "{over_day:?}");
    let request_id = over_grant.json()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.available("acme", "api"),
        900,
        "no credits before approval"
    );
    assert_eq!(
        h.grants_of("acme").len(),
        1,
        "nothing recorded before approval"
    );
    let pending = h.get("readonly", "/v1/admin/grant-approvals").json();
    assert_eq!(
        pending["approvals"].as_array().unwrap().len(),
        2,
        "{pending}"
    );

    // Support cannot approve; nor can an admin approve their own request.
    let path = format!("/v1/admin/grant-approvals/{request_id}/approve");
    assert_eq!(h.post("support", &path, json!({})).status, 403);
    let own = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": 1, "reason_code": "outage"}),
    );
    assert_eq!(own.status, 201, "admins have no limit: {own:?}");
    // A second person approves: the credits appear and the approver is recorded.
    let approved = h.post(SECOND_ADMIN, &path, json!({}));
    assert_eq!(approved.status, 201, "{approved:?}");
    assert_eq!(approved.json()["grant"]["approved_by"], SECOND_ADMIN);
    assert_eq!(approved.json()["grant"]["actor"], "support");
    h.wait_available("acme", "api", 900 + 5_000 + 1);
    let again = h.post("admin", &path, json!({}));
    assert_eq!(again.status, 409, "decided once: {again:?}");
    let done = h
        .get("readonly", "/v1/admin/grant-approvals?state=approved")
        .json();
    assert_eq!(done["approvals"][0]["approved_by"], SECOND_ADMIN, "{done}");
    assert_eq!(done["approvals"][0]["requested_by"], "support", "{done}");
    let granted = h.grants_of("acme");
    let g = granted
        .iter()
        .find(|g| g.amount == 5_000)
        .expect("the approved grant");
    assert_eq!(g.actor, "support");
    assert_eq!(g.source, GrantSource::Goodwill);
    assert!(g.reason.starts_with("outage: ticket 4711"), "{}", g.reason);
}

#[test]
fn the_support_day_limit_holds_across_two_sidecars_on_one_postgres_ledger() {
    // Several support people (the limit is per actor and day), each sending grants that
    // together exceed the day's limit to both sidecars at once: one round per person, so
    // that a race between the sidecars would show in at least one round.
    const ACTORS: usize = 6;
    const GRANTS_EACH: usize = 10;
    const AMOUNT: u64 = 100;
    const PER_DAY_MAX: u64 = 1_500;
    const ALLOWED: u64 = PER_DAY_MAX / AMOUNT;
    let h = AdminHarness::start(Backend::Postgres);
    h.create_customer("acme", None);
    let (second, second_url) = h.second_sidecar();
    let bases = [h.admin_url.clone(), second_url];
    for n in 0..ACTORS {
        let actor = format!("support-{n}");
        let token = create_token(&h.target, h.dir.path(), &actor, "support");
        let barrier = Barrier::new(2 * GRANTS_EACH);
        let answers: Vec<Answer> = thread::scope(|scope| {
            let calls: Vec<_> = (0..2 * GRANTS_EACH)
                .map(|i| {
                    let (h, token, barrier, base) = (&h, &token, &barrier, &bases[i % 2]);
                    scope.spawn(move || {
                        let request = h
                            .client
                            .post(format!("{base}/v1/admin/customers/acme/grants"))
                            .bearer_auth(token)
                            .header("Idempotency-Key", key())
                            .header("content-type", "application/json")
                            .body(
                                json!({"source": "goodwill", "credit_type": "api",
                                       "amount": AMOUNT, "reason_code": "outage"})
                                .to_string(),
                            );
                        barrier.wait();
                        let resp = request.send().expect("POST grant");
                        Answer {
                            status: resp.status().as_u16(),
                            body: resp.text().expect("body"),
                        }
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|c| c.join().expect("caller"))
                .collect()
        });
        let granted = answers.iter().filter(|a| a.status == 201).count() as u64;
        let pending = answers.iter().filter(|a| a.status == 202).count() as u64;
        assert_eq!(
            (granted, pending),
            (ALLOWED, 2 * GRANTS_EACH as u64 - ALLOWED),
            "{actor}: {answers:?}\n{}",
            second.log_tail(20)
        );
    }
    let actors = ACTORS as u64;
    h.wait_available("acme", "api", (actors * PER_DAY_MAX) as i64);
    assert_eq!(h.grants_of("acme").len() as u64, actors * ALLOWED);
    let approvals = h.get("readonly", "/v1/admin/grant-approvals").json();
    assert_eq!(
        approvals["approvals"].as_array().map(Vec::len),
        Some((actors * (2 * GRANTS_EACH as u64 - ALLOWED)) as usize),
        "{approvals}"
    );
}

fn fifty_concurrent_purchases_with_one_key_grant_once(backend: Backend) {
    let h = Arc::new(AdminHarness::start(backend));
    h.create_customer("acme", None);
    let idem = key();
    let body = json!({"bundle": "usd50", "payment_ref": "pi_123"});
    let barrier = Arc::new(Barrier::new(50));
    let answers: Vec<Answer> = (0..50)
        .map(|_| {
            let (h, idem, body, barrier) = (h.clone(), idem.clone(), body.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                h.call(
                    Some("billing"),
                    "POST",
                    "/v1/admin/customers/acme/purchases",
                    Some(&idem),
                    Some(&body),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(answers[0].status, 201, "{:?}", answers[0]);
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "50 identical answers: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let grants = h.grants_of("acme");
    assert_eq!(grants.len(), 1, "one grant: {grants:?}");
    assert_eq!(grants[0].amount, 1_000);
    assert_eq!(
        grants[0].cost_basis, 50_000_000,
        "cost basis is the price paid"
    );
    assert_eq!(grants[0].expires_at_ms, None, "purchases do not expire");
    h.wait_available("acme", "api", 1_000);
    // A replay later: the same bytes; the same key for another request: 422.
    let replay = h.call(
        Some("billing"),
        "POST",
        "/v1/admin/customers/acme/purchases",
        Some(&idem),
        Some(&body),
    );
    assert_eq!(replay, answers[0]);
    let other = h.call(
        Some("billing"),
        "POST",
        "/v1/admin/customers/acme/purchases",
        Some(&idem),
        Some(&json!({"bundle": "usd50", "payment_ref": "pi_999"})),
    );
    assert_eq!(other.status, 422, "{other:?}");
    assert_eq!(other.json()["field"], "Idempotency-Key");
    assert_eq!(h.grants_of("acme").len(), 1);
    // The key outlives the process: after a restart the replay is still the first answer.
    let mut h = Arc::try_unwrap(h).unwrap_or_else(|_| panic!("the threads are done"));
    h.sidecar.stop().expect("sidecar stops");
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    let after_restart = h.call(
        Some("billing"),
        "POST",
        "/v1/admin/customers/acme/purchases",
        Some(&idem),
        Some(&body),
    );
    assert_eq!(after_restart, answers[0]);
    assert_eq!(h.grants_of("acme").len(), 1);
}

fn bad_input_names_the_field_and_writes_nothing(backend: Backend) {
    let h = AdminHarness::start(backend);
    h.create_customer("acme", None);
    let grants = "/v1/admin/customers/acme/grants";
    let base =
        json!({"source": "goodwill", "credit_type": "api", "amount": 10, "reason_code": "outage"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, &str, Option<Value>, &str, u16)> = vec![
        (
            "admin",
            grants,
            Some(with("amount", json!(-5))),
            "amount",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("amount", json!(0))),
            "amount",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("amount", json!(9_007_199_254_740_992u64))),
            "amount",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("amount", json!("10"))),
            "amount",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("credit_type", json!("gold"))),
            "credit_type",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("reason_code", json!("because"))),
            "reason_code",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("source", json!("gift"))),
            "source",
            400,
        ),
        (
            "admin",
            grants,
            Some(with("colour", json!("red"))),
            "colour",
            400,
        ),
        (
            "sales",
            grants,
            Some(with("source", json!("promotion"))),
            "expires_at_ms",
            400,
        ),
        (
            "sales",
            grants,
            Some(
                json!({"source": "promotion", "credit_type": "api", "amount": 10,
                        "reason_code": "outage", "expires_at_ms": 1_000}),
            ),
            "expires_at_ms",
            400,
        ),
        (
            "admin",
            "/v1/admin/customers/nobody/grants",
            Some(base.clone()),
            "customer",
            404,
        ),
        (
            "billing",
            "/v1/admin/customers/acme/purchases",
            Some(json!({"bundle": "usd5"})),
            "bundle",
            400,
        ),
        (
            "billing",
            "/v1/admin/customers",
            Some(json!({"customer": "a b"})),
            "customer",
            400,
        ),
    ];
    for (who, path, body, field, status) in cases {
        let a = h.post(who, path, body.clone().unwrap());
        assert_eq!(a.status, status, "{body:?}: {a:?}");
        assert_eq!(a.json()["field"], field, "{body:?}: {a:?}");
    }
    // Malformed JSON and a missing Idempotency-Key.
    let raw = h
        .client
        .post(format!("{}{grants}", h.admin_url))
        .bearer_auth(h.token("admin"))
        .header("Idempotency-Key", key())
        .body("{\"source\": ")
        .send()
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(raw.json::<Value>().unwrap()["field"], "(body)");
    let no_key = h.call(Some("admin"), "POST", grants, None, Some(&base));
    assert_eq!(no_key.status, 400);
    assert_eq!(no_key.json()["field"], "Idempotency-Key");
    assert!(h.grants_of("acme").is_empty(), "nothing was written");
    assert_eq!(h.available("acme", "api"), 0);

    // Tokens: a wrong one is 401; after 20 failures from one address wrong tokens are
    // refused (429) for the rest of the minute, while the right ones (other admins behind
    // the same address) still work.
    for _ in 0..20 {
        let a = h
            .client
            .get(format!("{}/v1/admin/whoami", h.admin_url))
            .bearer_auth("cgt_wrong")
            .send()
            .unwrap();
        assert_eq!(a.status().as_u16(), 401);
    }
    let locked = h
        .client
        .get(format!("{}/v1/admin/whoami", h.admin_url))
        .bearer_auth("cgt_another_guess")
        .send()
        .unwrap();
    assert_eq!(locked.status().as_u16(), 429);
    assert_eq!(h.get("admin", "/v1/admin/whoami").status, 200);
    assert_eq!(h.get("readonly", "/v1/admin/whoami").status, 200);
}

fn a_void_removes_only_the_remaining_credits(backend: Backend) {
    let h = AdminHarness::start(backend);
    h.create_customer("acme", None);
    let keep = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": 300, "reason_code": "outage"}),
    );
    assert_eq!(keep.status, 201, "{keep:?}");
    let g = h.post(
        "support",
        "/v1/admin/customers/acme/grants",
        json!({"source": "goodwill", "credit_type": "api", "amount": 200, "reason_code": "outage"}),
    );
    assert_eq!(g.status, 201, "{g:?}");
    let grant_id = g.json()["grant"]["grant_id"].as_str().unwrap().to_string();
    h.wait_available("acme", "api", 500);
    // Let the ledger writer catch up with both grants.
    let started = Instant::now();
    let path = format!("/v1/admin/customers/acme/grants/{grant_id}/void");
    let voided = loop {
        let a = h.post("support", &path, json!({"reason": "issued by mistake"}));
        if a.status != 409 || started.elapsed() > WAIT {
            break a;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(voided.status, 200, "{voided:?}");
    assert_eq!(voided.json()["voided"], 200);
    h.wait_available("acme", "api", 300);
    // A second void answers the first one and its rebuild's state, not a conflict.
    let again = h.post("support", &path, json!({"reason": "twice"}));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["voided"], 200, "{again:?}");
    assert_eq!(again.json()["reason"], "issued by mistake", "{again:?}");
    assert_eq!(again.json()["redis_rebuild"], "done", "{again:?}");
    let balance = h.get("readonly", "/v1/admin/customers/acme/balance").json();
    let ledger_grant = balance["ledger"]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["grant_id"] == grant_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(ledger_grant["remaining"], 0, "{balance}");
    let entries = h
        .get(
            "readonly",
            "/v1/admin/customers/acme/ledger?kind=adjustment",
        )
        .json();
    assert_eq!(entries["entries"].as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries["entries"][0]["amount"], -200);
    // Paging one entry at a time walks the same entries as one page, in order.
    let all = h.get("readonly", "/v1/admin/customers/acme/ledger").json();
    let all_seqs: Vec<i64> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(all_seqs.len(), 3, "two grants and the void: {all}");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/admin/customers/acme/ledger?limit=1&cursor={c}"),
            None => "/v1/admin/customers/acme/ledger?limit=1".to_string(),
        };
        let page = h.get("readonly", &path).json();
        for e in page["entries"].as_array().unwrap() {
            paged.push(e["seq"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(paged.len() <= 3, "paging ends: {paged:?}");
    }
    assert_eq!(paged, all_seqs);
    let later = all["entries"][2]["event_at_ms"].as_u64().unwrap();
    let since = h
        .get(
            "readonly",
            &format!("/v1/admin/customers/acme/ledger?from_ms={later}"),
        )
        .json();
    assert!(
        since["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event_at_ms"].as_u64().unwrap() >= later)
    );
    let bad = h.get("readonly", "/v1/admin/customers/acme/ledger?limit=0");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "limit");
}

/// Voids `grant_id` of acme as support, retrying while the ledger catches up (409).
fn void_once_ledger_agrees(h: &AdminHarness, grant_id: &str) -> Answer {
    let started = Instant::now();
    let path = format!("/v1/admin/customers/acme/grants/{grant_id}/void");
    loop {
        let a = h.post("support", &path, json!({"reason": "issued by mistake"}));
        if a.status != 409 || started.elapsed() > WAIT {
            return a;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn a_void_whose_rebuild_is_busy_is_finished_by_the_rebuild_job(backend: Backend) {
    let h = AdminHarness::start(backend);
    h.create_customer("acme", None);
    let g = h.post(
        "support",
        "/v1/admin/customers/acme/grants",
        json!({"source": "goodwill", "credit_type": "api", "amount": 200, "reason_code": "outage"}),
    );
    assert_eq!(g.status, 201, "{g:?}");
    let grant_id = g.json()["grant"]["grant_id"].as_str().unwrap().to_string();
    h.wait_available("acme", "api", 200);
    // A free request in flight: a pending hold of nothing. The void's check sees no
    // credits held, but Redis cannot be rebuilt while a hold is pending.
    use creditgate_protocol::CreditStore;
    let free = creditgate_testkit::reserve_request("acme", "free-1", "api", 0, 600_000);
    let placed = h.rt.block_on(h.store.reserve(&free)).expect("reserve");
    assert!(format!("{placed:?}").starts_with("Placed"), "{placed:?}");

    let voided = void_once_ledger_agrees(&h, &grant_id);
    assert_eq!(voided.status, 200, "{voided:?}");
    assert_eq!(voided.json()["voided"], 200, "{voided:?}");
    assert_eq!(voided.json()["redis_rebuild"], "pending", "{voided:?}");
    assert!(
        voided.json()["rebuild"]["attempts"].as_u64() >= Some(1),
        "{voided:?}"
    );
    // Still spendable in Redis for now; the rebuild is owed and listed.
    assert_eq!(h.available("acme", "api"), 200);
    let owed = h.get("readonly", "/v1/admin/redis-rebuilds");
    assert_eq!(owed.status, 200, "{owed:?}");
    let owed = owed.json()["owed"].clone();
    assert_eq!(owed[0]["rebuild_id"], format!("void-{grant_id}"), "{owed}");
    assert_eq!(owed[0]["customer"], "acme", "{owed}");
    // A retried void answers the state, not 409.
    let retried = void_once_ledger_agrees(&h, &grant_id);
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.json()["redis_rebuild"], "pending", "{retried:?}");

    // The request ends; the rebuild job finishes the void: the grant is spent no more.
    let hold = creditgate_protocol::HoldRef {
        customer: "acme".into(),
        hold_id: "free-1".into(),
    };
    h.rt.block_on(h.store.void(&hold))
        .expect("void the free hold");
    h.wait_available("acme", "api", 0);
    let done = void_once_ledger_agrees(&h, &grant_id);
    assert_eq!(done.json()["redis_rebuild"], "done", "{done:?}");
    assert!(
        done.json()["rebuild"]["done_at_ms"].as_u64().is_some(),
        "{done:?}"
    );
    let owed = h.get("readonly", "/v1/admin/redis-rebuilds").json();
    assert_eq!(owed["owed"], json!([]), "{owed}");
    let attempts = h.sidecar.metric(
        "creditgate_redis_rebuild_attempts_total",
        &[("outcome", "done")],
    );
    assert_eq!(attempts, 1.0);
}

fn a_monthly_allotment_missed_while_down_is_granted_once_on_restart(backend: Backend) {
    let mut h = AdminHarness::start(backend);
    // The customer joins the annual plan; its month's allotment falls due on the next pass
    // (a minute away), but the sidecar goes down first.
    h.create_customer("acme", Some("annual"));
    h.sidecar.stop().expect("sidecar stops");
    assert!(
        h.grants_of("acme").is_empty(),
        "not granted before the restart"
    );
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    h.wait_available("acme", "ai", 700);
    let grants = h.grants_of("acme");
    assert_eq!(grants.len(), 1, "{grants:?}");
    let period =
        creditgate_sidecar::api::admin::schedule::period_of(creditgate_sidecar::ledger::now_ms());
    assert!(grants[0].grant_id.contains(&period), "{:?}", grants[0]);
    assert!(
        grants[0].reason.contains(&format!("period {period}")),
        "{:?}",
        grants[0]
    );
    assert_eq!(grants[0].source, GrantSource::PlanAllotment);
    // Restarting again within the period grants nothing more.
    h.sidecar.stop().expect("sidecar stops");
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(h.grants_of("acme").len(), 1);
    assert_eq!(h.available("acme", "ai"), 700);
}

/// Records the `annual-monthly` allotment of the period `month` (a month index) for
/// `customer` straight in the ledger and Redis, as a sidecar running then would have.
fn seed_allotment(h: &AdminHarness, customer: &str, month: i64) {
    use creditgate_sidecar::api::admin::schedule::{period_label, schedule_grant_id};
    let period = period_label(month);
    let record = GrantRecord {
        grant_id: schedule_grant_id("annual-monthly", &period, customer),
        customer: customer.to_string(),
        credit_type: "ai".into(),
        amount: 700,
        priority: creditgate_sidecar::api::admin::grants::DEFAULT_GRANT_PRIORITY,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::PlanAllotment,
        actor: "schedule:annual-monthly".into(),
        reason: format!("scheduled_allotment: period {period}"),
        created_at_ms: creditgate_sidecar::ledger::now_ms(),
    };
    h.rt.block_on(creditgate_sidecar::jobs::outbox::issue_grant(
        h.ledger.as_ref(),
        &h.store,
        &record,
    ))
    .expect("seed the allotment");
}

/// Records in the ledger's plan history that `customer` was put on `plan` at `since_ms`, as
/// a plan change made then would have.
fn on_plan_since(h: &AdminHarness, customer: &str, plan: &str, since_ms: u64) {
    use creditgate_sidecar::ledger::AdminDb;
    use creditgate_sidecar::settings::LedgerArgs;
    let args = match &h.target {
        creditgate_testkit::LedgerTarget::Sqlite(path) => LedgerArgs {
            sqlite: Some(path.clone()),
            postgres: None,
        },
        creditgate_testkit::LedgerTarget::Postgres(url) => LedgerArgs {
            sqlite: None,
            postgres: Some(url.clone()),
        },
    };
    h.rt.block_on(async {
        let db = AdminDb::open(&args).await?;
        db.execute(
            "INSERT INTO customer_plan_history (customer, plan, since_ms, actor) VALUES ($1, $2, $3, $4)",
            &[customer.into(), plan.into(), (since_ms as i64).into(), "test".into()],
        )
        .await
    })
    .expect("record the plan history");
}

/// A customer on another plan for months, moved (back) onto `annual` now: it gets this
/// month's allotment, not the months since its last `annual` allotment.
fn a_customer_moved_onto_a_plan_gets_no_allotments_for_the_months_before(backend: Backend) {
    use creditgate_sidecar::api::admin::schedule::{month_index, period_label};
    let mut h = AdminHarness::start(backend);
    h.create_customer("acme", Some("pro"));
    let now = creditgate_sidecar::ledger::now_ms();
    let current = month_index(now);
    // It was on `annual` until 130 days ago (in the month four before this one or
    // earlier, whatever today's date), then on `pro`.
    on_plan_since(&h, "acme", "annual", now - 200 * 86_400_000);
    on_plan_since(&h, "acme", "pro", now - 130 * 86_400_000);
    seed_allotment(&h, "acme", current - 4);
    let set = h.call(
        Some("billing"),
        "PUT",
        "/v1/admin/customers/acme/plan",
        Some(&key()),
        Some(&json!({"plan": "annual"})),
    );
    assert_eq!(set.status, 200, "{set:?}");
    // The pass runs at start-up.
    h.sidecar.stop().expect("sidecar stops");
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    h.wait_available("acme", "ai", 700 * 2);
    thread::sleep(Duration::from_millis(500));
    let want: BTreeMap<String, usize> = [current - 4, current]
        .into_iter()
        .map(|m| (period_label(m), 1))
        .collect();
    assert_eq!(allotment_periods(&h, "acme"), want);
}

/// The periods of a customer's `annual-monthly` grants, sorted, each with how many grants
/// carry it; every reason names its period.
fn allotment_periods(h: &AdminHarness, customer: &str) -> BTreeMap<String, usize> {
    let mut periods = BTreeMap::new();
    for g in h.grants_of(customer) {
        assert_eq!(g.source, GrantSource::PlanAllotment, "{g:?}");
        let period = g.grant_id["s-annual-monthly-".len()..][..7].to_string();
        assert!(g.reason.contains(&format!("period {period}")), "{g:?}");
        *periods.entry(period).or_insert(0) += 1;
    }
    periods
}

fn whole_months_missed_while_down_are_back_filled_once_each(backend: Backend) {
    use creditgate_sidecar::api::admin::schedule::{
        BACKFILL_MAX_PERIODS, month_index, period_label,
    };
    let mut h = AdminHarness::start(backend);
    h.create_customer("acme", Some("annual"));
    h.create_customer("globex", Some("annual"));
    // The sidecar was down for months: acme last got its allotment 4 months ago, globex
    // 20 months ago (past the back-fill bound).
    h.sidecar.stop().expect("sidecar stops");
    let now = creditgate_sidecar::ledger::now_ms();
    let current = month_index(now);
    // Both have been on the plan for two years (as their plan history records).
    on_plan_since(&h, "acme", "annual", now - 730 * 86_400_000);
    on_plan_since(&h, "globex", "annual", now - 730 * 86_400_000);
    seed_allotment(&h, "acme", current - 4);
    seed_allotment(&h, "globex", current - 20);
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();

    // acme: the 3 missed months and the current one, once each.
    h.wait_available("acme", "ai", 700 * 5);
    let want: BTreeMap<String, usize> = (current - 4..=current)
        .map(|m| (period_label(m), 1))
        .collect();
    assert_eq!(allotment_periods(&h, "acme"), want);
    // globex: the 12 months before the current one and the current one; older ones not.
    let granted = 1 + BACKFILL_MAX_PERIODS + 1;
    h.wait_available("globex", "ai", 700 * granted);
    let mut want: BTreeMap<String, usize> = (current - BACKFILL_MAX_PERIODS..=current)
        .map(|m| (period_label(m), 1))
        .collect();
    want.insert(period_label(current - 20), 1);
    assert_eq!(allotment_periods(&h, "globex"), want);

    // Another restart grants nothing more.
    h.sidecar.stop().expect("sidecar stops");
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(h.grants_of("acme").len(), 5);
    assert_eq!(h.grants_of("globex").len() as i64, granted);
    assert_eq!(h.available("acme", "ai"), 700 * 5);
}

/// The sidecar's /metrics counts admin calls by route template, method and status class,
/// authentication failures by reason, and shows the grants waiting for approval.
#[test]
fn admin_calls_auth_failures_and_pending_approvals_are_metrics() {
    let h = AdminHarness::start(Backend::Sqlite);
    let calls = |route: &str, method: &str, status: &str| {
        h.sidecar.metric(
            "creditgate_admin_calls_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let auth_failures = |reason: &str| {
        h.sidecar.metric(
            "creditgate_admin_auth_failures_total",
            &[("reason", reason)],
        )
    };
    let pending = || h.sidecar.metric("creditgate_admin_pending_approvals", &[]);
    // The harness polled whoami without a token while the sidecar started: counted too.
    let whoami = calls("/v1/admin/whoami", "GET", "2xx");
    let whoami_refused = calls("/v1/admin/whoami", "GET", "4xx");
    let failures = auth_failures("unauthorized");
    assert!(failures >= 1.0 && failures == whoami_refused);
    for who in ["admin", "readonly"] {
        assert_eq!(h.get(who, "/v1/admin/whoami").status, 200);
    }
    assert_eq!(calls("/v1/admin/whoami", "GET", "2xx"), whoami + 2.0);

    // A wrong token and a missing one: 401s, counted as auth failures. A role refusal
    // (403) is not an authentication failure.
    let bad = h
        .client
        .get(format!("{}/v1/admin/whoami", h.admin_url))
        .bearer_auth("cgt_wrong")
        .send()
        .expect("answer");
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(
        h.call(None, "GET", "/v1/admin/bundles", None, None).status,
        401
    );
    assert_eq!(auth_failures("unauthorized"), failures + 2.0);
    assert_eq!(
        calls("/v1/admin/whoami", "GET", "4xx"),
        whoami_refused + 1.0
    );
    assert_eq!(
        h.post("readonly", "/v1/admin/customers", json!({"customer": "x"}))
            .status,
        403
    );
    assert_eq!(auth_failures("unauthorized"), failures + 2.0);
    assert_eq!(calls("/v1/admin/customers", "POST", "4xx"), 1.0);
    assert_eq!(
        h.call(Some("admin"), "GET", "/v1/admin/nowhere", None, None)
            .status,
        404
    );
    assert_eq!(calls("unmatched", "GET", "4xx"), 1.0);

    // A grant over support's limit waits for approval: the gauge shows it until approved.
    h.create_customer("acme", None);
    assert_eq!(calls("/v1/admin/customers", "POST", "2xx"), 1.0);
    assert_eq!(pending(), 0.0);
    let over = h.post(
        "support",
        "/v1/admin/customers/acme/grants",
        json!({"source": "goodwill", "credit_type": "api", "amount": 5_000, "reason_code": "outage"}),
    );
    assert_eq!(over.status, 202, "{over:?}");
    assert_eq!(pending(), 1.0);
    let request_id = over.json()["request_id"].as_str().unwrap().to_string();
    let approved = h.post(
        "admin",
        &format!("/v1/admin/grant-approvals/{request_id}/approve"),
        json!({}),
    );
    assert_eq!(approved.status, 201, "{approved:?}");
    assert_eq!(pending(), 0.0);
    assert_eq!(
        calls(
            "/v1/admin/grant-approvals/{request_id}/approve",
            "POST",
            "2xx"
        ),
        1.0
    );
}

/// The OpenAPI file lists exactly the routes the server serves: every documented route
/// answers (401 without a token, never 404 or 405), the file and the server's route table
/// agree, and an undocumented path is a 404.
#[test]
fn the_openapi_file_matches_the_served_routes() {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sidecar/openapi.json"),
    )
    .expect("sidecar/openapi.json");
    let doc: Value = serde_json::from_str(&file).expect("valid JSON");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = creditgate_sidecar::api::admin::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, served);
    // The documented roles agree with the server's.
    for r in creditgate_sidecar::api::admin::ROUTES {
        let roles: Vec<&str> = r.roles.iter().map(|r| r.as_str()).collect();
        let doc_roles: Vec<&str> =
            doc["paths"][r.path][r.method.as_str().to_lowercase()]["x-roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        assert_eq!(roles, doc_roles, "{} {}", r.method, r.path);
    }
    let h = AdminHarness::start(Backend::Sqlite);
    for (method, path) in &documented {
        let concrete = path
            .replace("{customer}", "acme")
            .replace("{grant_id}", "g")
            .replace("{key_id}", "k")
            .replace("{request_id}", "r")
            .replace("{id}", "1");
        let a = h.call(None, method, &concrete, Some(&key()), Some(&json!({})));
        assert_eq!(a.status, 401, "{method} {path}: {a:?}");
    }
    let missing = h.call(None, "GET", "/v1/admin/undocumented", None, None);
    assert_eq!(missing.status, 404);
    let wrong_method = h.call(None, "DELETE", "/v1/admin/customers", None, None);
    assert_eq!(wrong_method.status, 405);
}

/// The ops CLI drives the same API: same roles, idempotency and field errors.
#[test]
fn the_cli_calls_the_admin_api() {
    let h = AdminHarness::start(Backend::Sqlite);
    let cli = |who: &str, args: &[&str]| {
        let mut all = vec![
            "admin".to_string(),
            "call".into(),
            "--url".into(),
            h.admin_url.clone(),
            "--token".into(),
            h.token(who).to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        sidecar_command(&all, h.dir.path()).expect("the CLI runs")
    };
    let out = cli("billing", &["create-customer", "acme", "--plan", "pro"]);
    assert!(out.status.success(), "{out:?}");
    let grant = [
        "--idempotency-key",
        "ticket-17",
        "grant",
        "acme",
        "--source",
        "goodwill",
        "--credit-type",
        "api",
        "--amount",
        "250",
        "--reason-code",
        "outage",
        "--note",
        "ticket 17",
    ];
    let first = cli("support", &grant);
    let retry = cli("support", &grant);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        first.stdout, retry.stdout,
        "a retried key replays the answer"
    );
    assert_eq!(h.grants_of("acme").len(), 1);
    let bad = cli(
        "support",
        &[
            "grant",
            "acme",
            "--source",
            "goodwill",
            "--credit-type",
            "gold",
            "--amount",
            "5",
            "--reason-code",
            "outage",
        ],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("\"credit_type\""),
        "{stderr}"
    );
    let forbidden = cli("readonly", &["purchase", "acme", "--bundle", "usd50"]);
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("403"));
    h.wait_available("acme", "api", 250);
    let balance = cli("readonly", &["balance", "acme"]);
    let body: Value = serde_json::from_slice(&balance.stdout).expect("JSON");
    assert_eq!(body["live"]["grants"][0]["remaining"], 250, "{body}");
    assert_eq!(body["live"]["types"][0]["available"], 250, "{body}");
}

/// With a pricing config, a customer's plan must be one of its plans.
#[test]
fn plans_are_checked_against_the_pricing_config() {
    let pricing = format!(
        "{}\n[plans.annual]\ndescription = \"Annual, billed monthly in credits.\"\n",
        creditgate_testkit::base_config("127.0.0.1:9".parse().unwrap())
    );
    let h = AdminHarness::start_with_pricing(Backend::Sqlite, ADMIN_OPERATIONS, Some(&pricing));
    h.create_customer("acme", Some("annual"));
    let unknown = h.post(
        "billing",
        "/v1/admin/customers",
        json!({"customer": "globex", "plan": "platinum"}),
    );
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert_eq!(unknown.json()["field"], "plan");
    let set = h.call(
        Some("billing"),
        "PUT",
        "/v1/admin/customers/acme/plan",
        Some(&key()),
        Some(&json!({"plan": "platinum"})),
    );
    assert_eq!(set.status, 400, "{set:?}");
    assert_eq!(
        h.get("readonly", "/v1/admin/customers/acme").json()["plan"],
        "annual"
    );
    assert_eq!(
        h.get("readonly", "/v1/admin/customers/globex").status,
        404,
        "nothing was written"
    );
}

// ---------------------------------------------------------------------------------------
// API keys at the gateway

/// The gateway's API key cache TTL in these tests, ms: short, so a revocation shows fast.
const GATEWAY_KEY_TTL_MS: u64 = 300;

/// Credits one `/search` costs at the gateway.
const SEARCH_COST: i64 = 7;

/// A pricing config with one charged route and no `[[api_keys]]`: every key comes from
/// Redis, where the sidecar publishes them.
fn gateway_config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 500
unmatched = "not_found"

[billing]
top_up_url = "https://billing.example.test/top-up"

[credit_types.api]
scale = 0

[upstreams.default]
address = "{upstream}"
connect_timeout_ms = 500
read_timeout_ms = 2000

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = {SEARCH_COST} }}

[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"
"#
    )
}

/// `GET /search` at the gateway with `api_key`; the status.
fn search(client: &reqwest::blocking::Client, gateway: &Gateway, api_key: &str) -> u16 {
    let url = format!("{}/search", gateway.proxy_url());
    send(client, "GET", &url, Some(api_key), &[]).status
}

/// Polls `search` until it answers `want`: how long that took and how many of the
/// answers were 200 (each one charged).
fn until_status(
    client: &reqwest::blocking::Client,
    gateway: &Gateway,
    api_key: &str,
    want: u16,
    within: Duration,
) -> (Duration, i64) {
    let url = format!("{}/search", gateway.proxy_url());
    creditgate_testkit::until_status(client, &url, api_key, want, within, || gateway.log_tail(20))
}

/// A key issued by the admin API is accepted by the real gateway and charges its customer;
/// once revoked the gateway rejects it within its key cache TTL. After Redis loses every
/// key (`FLUSHALL`), the sidecar republishes the active ones and the revoked one stays
/// revoked.
#[test]
fn api_keys_issued_by_the_admin_api_work_at_the_gateway_until_revoked() {
    const GRANTED: i64 = 10_000;
    let upstream = Upstream::start().expect("upstream");
    // The sidecar publishes its pricing config to the fleet and the gateway follows it, so
    // both get the gateway's.
    let h = AdminHarness::start_with_pricing(
        Backend::Sqlite,
        ADMIN_OPERATIONS,
        Some(&gateway_config(upstream.addr())),
    );
    let gateway = Gateway::start(GatewayOptions {
        config_toml: gateway_config(upstream.addr()),
        redis_url: Some(h.redis.url()),
        extra_args: vec![
            "--api-key-cache-ttl-ms".into(),
            GATEWAY_KEY_TTL_MS.to_string(),
        ],
        ..GatewayOptions::default()
    })
    .expect("gateway starts");
    let client = http_client();
    h.create_customer("acme", None);
    let grant = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": GRANTED, "reason_code": "onboarding"}),
    );
    assert_eq!(grant.status, 201, "{grant:?}");
    h.wait_available("acme", "api", GRANTED);

    let issue = |who: &str| {
        let a = h.post(who, "/v1/admin/customers/acme/api-keys", json!({}));
        assert_eq!(a.status, 201, "{a:?}");
        let v = a.json();
        assert_eq!(v["published"], true, "{a:?}");
        (
            v["key_id"].as_str().unwrap().to_string(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    };
    let (first_id, first) = issue("billing");
    let (_, second) = issue("admin");
    // Redis holds the hash, never the plaintext.
    let stored = h
        .redis
        .cli(&["GET", &format!("cg:apikey:{}", sha256_hex(&first))]);
    assert_eq!(stored.expect("redis-cli").trim(), "acme");

    // Accepted at once (nothing cached yet), and the customer is charged.
    assert_eq!(search(&client, &gateway, &first), 200);
    h.wait_available("acme", "api", GRANTED - SEARCH_COST);
    assert_eq!(search(&client, &gateway, "cgk_not-a-key"), 401);

    // Revoked: rejected within the cache TTL (plus polling slack).
    let revoke = h.post(
        "support",
        &format!("/v1/admin/customers/acme/api-keys/{first_id}/revoke"),
        json!({}),
    );
    assert_eq!(revoke.status, 200, "{revoke:?}");
    assert_eq!(revoke.json()["withdrawn"], true, "{revoke:?}");
    let (took, charged) = until_status(&client, &gateway, &first, 401, Duration::from_secs(5));
    eprintln!("revoked key rejected after {took:?} (cache TTL {GATEWAY_KEY_TTL_MS} ms)");
    assert!(
        took < Duration::from_millis(GATEWAY_KEY_TTL_MS + 1_000),
        "revocation took {took:?}"
    );
    let mut expected = GRANTED - SEARCH_COST * (1 + charged);
    h.wait_available("acme", "api", expected);
    assert_eq!(search(&client, &gateway, &second), 200);
    expected -= SEARCH_COST;
    h.wait_available("acme", "api", expected);

    // The ledger has every charge (so the data loss below loses none).
    h.wait_ledger_api("acme", expected);
    // Redis loses everything: keys and balances. The sidecar rebuilds the balances from
    // the ledger and republishes the active key; the revoked one stays revoked.
    h.redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
    let gone = h
        .redis
        .cli(&["EXISTS", &format!("cg:apikey:{}", sha256_hex(&second))]);
    assert_eq!(gone.expect("redis-cli").trim(), "0");
    let (took, _) = until_status(&client, &gateway, &second, 200, WAIT);
    eprintln!("active key usable again {took:?} after FLUSHALL");
    h.wait_available("acme", "api", expected - SEARCH_COST);
    assert_eq!(search(&client, &gateway, &first), 401);
    let revoked = h
        .redis
        .cli(&["EXISTS", &format!("cg:apikey:{}", sha256_hex(&first))]);
    assert_eq!(revoked.expect("redis-cli").trim(), "0");
}

/// Keys issued or revoked while Redis is down: the admin call still succeeds (recorded in
/// the ledger, `published` / `withdrawn` false), and once Redis is back the key sync pass
/// makes the gateway agree: the new key works, and the revoked key's mapping, even when it
/// reappears in Redis (a stale replica, a restored snapshot), is deleted again.
#[test]
fn keys_issued_or_revoked_while_redis_is_down_converge_when_it_is_back() {
    let upstream = Upstream::start().expect("upstream");
    // The sidecar publishes its pricing config to the fleet and the gateway follows it, so
    // both get the gateway's.
    let mut h = AdminHarness::start_with_pricing(
        Backend::Sqlite,
        ADMIN_OPERATIONS,
        Some(&gateway_config(upstream.addr())),
    );
    let gateway = Gateway::start(GatewayOptions {
        config_toml: gateway_config(upstream.addr()),
        redis_url: Some(h.redis.url()),
        extra_args: vec![
            "--api-key-cache-ttl-ms".into(),
            GATEWAY_KEY_TTL_MS.to_string(),
        ],
        ..GatewayOptions::default()
    })
    .expect("gateway starts");
    let client = http_client();
    h.create_customer("acme", None);
    let grant = h.post(
        "admin",
        "/v1/admin/customers/acme/grants",
        json!({"source": "adjustment", "credit_type": "api", "amount": 10_000, "reason_code": "onboarding"}),
    );
    assert_eq!(grant.status, 201, "{grant:?}");
    let old = h.post("billing", "/v1/admin/customers/acme/api-keys", json!({}));
    assert_eq!(old.status, 201, "{old:?}");
    let old_id = old.json()["key_id"].as_str().unwrap().to_string();
    let old_key = old.json()["api_key"].as_str().unwrap().to_string();
    h.wait_available("acme", "api", 10_000);
    assert_eq!(search(&client, &gateway, &old_key), 200);
    // Nothing in flight when Redis goes (a hold Redis loses delays the customer's rebuild
    // until its deadline).
    h.wait_ledger_api("acme", 10_000 - SEARCH_COST);

    h.redis.stop();
    let revoke = h.post(
        "support",
        &format!("/v1/admin/customers/acme/api-keys/{old_id}/revoke"),
        json!({}),
    );
    assert_eq!(
        revoke.status, 200,
        "recorded although Redis is down: {revoke:?}"
    );
    assert_eq!(revoke.json()["withdrawn"], false, "{revoke:?}");
    let new = h.post("billing", "/v1/admin/customers/acme/api-keys", json!({}));
    assert_eq!(new.status, 201, "recorded although Redis is down: {new:?}");
    assert_eq!(new.json()["published"], false, "{new:?}");
    let new_key = new.json()["api_key"].as_str().unwrap().to_string();

    // Redis comes back empty; the revoked key's mapping reappears as a stale copy would.
    h.redis.restart().expect("redis restarts");
    let stale = format!("cg:apikey:{}", sha256_hex(&old_key));
    h.redis.cli(&["SET", &stale, "acme"]).expect("SET");
    let (took, _) = until_status(&client, &gateway, &new_key, 200, WAIT);
    eprintln!("key issued while Redis was down usable {took:?} after Redis came back");
    let started = Instant::now();
    while h.redis.cli(&["EXISTS", &stale]).expect("EXISTS").trim() != "0" {
        assert!(
            started.elapsed() < WAIT,
            "the revoked key's mapping stays in Redis"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(GATEWAY_KEY_TTL_MS + 100));
    assert_eq!(search(&client, &gateway, &old_key), 401);
}

/// Every byte of the SQLite ledger's files (database, WAL, shared memory) as text, lossily.
fn sqlite_file_bytes(h: &AdminHarness) -> Vec<u8> {
    let creditgate_testkit::LedgerTarget::Sqlite(path) = &h.target else {
        panic!("an SQLite ledger");
    };
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(b) = std::fs::read(&name) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(!bytes.is_empty(), "the ledger file exists");
    bytes
}

/// A new API key's plaintext is in its creation answer only: a replay with the same
/// `Idempotency-Key` names the key without it, and no byte of the ledger database holds it.
#[test]
fn an_api_keys_plaintext_is_never_at_rest() {
    let h = AdminHarness::start(Backend::Sqlite);
    h.create_customer("acme", None);
    let idem = key();
    let path = "/v1/admin/customers/acme/api-keys";
    let first = h.call(Some("billing"), "POST", path, Some(&idem), Some(&json!({})));
    assert_eq!(first.status, 201, "{first:?}");
    let plaintext = first.json()["api_key"]
        .as_str()
        .expect("the key")
        .to_string();
    assert!(plaintext.starts_with("cgk_"), "{first:?}");
    assert_eq!(first.json()["api_key_shown"], true);

    let replay = h.call(Some("billing"), "POST", path, Some(&idem), Some(&json!({})));
    assert_eq!(replay.status, 201, "{replay:?}");
    let replayed = replay.json();
    assert_eq!(replayed["api_key"], Value::Null, "{replay:?}");
    assert_eq!(replayed["api_key_shown"], false);
    assert!(replayed["message"].as_str().unwrap().contains("shown once"));
    assert_eq!(replayed["key_id"], first.json()["key_id"]);
    assert!(!replay.body.contains(&plaintext));

    let bytes = sqlite_file_bytes(&h);
    let found = bytes
        .windows(plaintext.len())
        .any(|w| w == plaintext.as_bytes());
    assert!(!found, "the plaintext key is stored in the ledger database");
    // The hash is stored, so the scan reads the tables it should.
    let hash = sha256_hex(&plaintext);
    assert!(bytes.windows(hash.len()).any(|w| w == hash.as_bytes()));
}

/// Each auto-recharge grants up to the customer's recharge target, so support may set a
/// target up to its per-grant limit (1,000); a higher one waits for an admin's approval,
/// like a grant over the limit. Billing (no limit) sets any target at once.
#[test]
fn support_sets_a_recharge_target_over_its_limit_only_with_approval() {
    let receiver = WebhookReceiver::start(0).expect("receiver");
    let ops = format!(
        "{ADMIN_OPERATIONS}\n[auto_recharge]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
        receiver.url("/recharge")
    );
    let h = AdminHarness::start_with(Backend::Sqlite, &ops);
    h.create_customer("acme", None);
    let set = |who: &str, target: u64| {
        h.call(
            Some(who),
            "PUT",
            "/v1/admin/customers/acme/alerts",
            Some(&key()),
            Some(&json!({"credit_type": "api", "recharge_threshold": 100,
                         "recharge_target": target})),
        )
    };
    let within = set("support", 1_000);
    assert_eq!(within.status, 200, "{within:?}");
    assert_eq!(within.json()["recharge_target"], 1_000);

    let over = set("support", 9_007_199_254_740_000);
    assert_eq!(over.status, 202, "{over:?}");
    assert_eq!(over.json()["status"], "pending_approval");
    let request_id = over.json()["request_id"].as_str().unwrap().to_string();
    let pending = h.get("readonly", "/v1/admin/grant-approvals").json();
    let listed = &pending["approvals"][0];
    assert_eq!(listed["request_id"], request_id.as_str(), "{pending}");
    assert_eq!(
        listed["grant"]["alert_settings"]["recharge_target"], 9_007_199_254_740_000u64,
        "{pending}"
    );

    let path = format!("/v1/admin/grant-approvals/{request_id}/approve");
    assert_eq!(h.post("support", &path, json!({})).status, 403);
    let approved = h.post("admin", &path, json!({}));
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.json()["recharge_target"], 9_007_199_254_740_000u64);
    assert_eq!(approved.json()["updated_by"], "support");
    assert_eq!(approved.json()["approved_by"], "admin");
    assert_eq!(
        h.post("admin", &path, json!({})).status,
        409,
        "decided once"
    );

    let billing = set("billing", 5_000_000);
    assert_eq!(billing.status, 200, "{billing:?}");
}

/// Role limits are per credit type, in that type's own units: support's limit on `ai`
/// (a finer-grained credit type here) is its own, and its grants of `api` do not count
/// toward it.
#[test]
fn support_limits_are_per_credit_type_in_its_own_units() {
    let ops = ADMIN_OPERATIONS.replace(
        "per_day_max = 1500\n",
        "per_day_max = 1500\n\n[limits.support.credit_types.ai]\nper_grant_max = 2000000\nper_day_max = 3000000\n",
    );
    let h = AdminHarness::start_with(Backend::Sqlite, &ops);
    h.create_customer("acme", None);
    let goodwill = |credit_type: &str, amount: u64| {
        h.post(
            "support",
            "/v1/admin/customers/acme/grants",
            json!({"source": "goodwill", "credit_type": credit_type, "amount": amount,
                   "reason_code": "outage"}),
        )
    };
    let api = goodwill("api", 900);
    assert_eq!(api.status, 201, "{api:?}");
    let ai = goodwill("ai", 1_500_000);
    assert_eq!(ai.status, 201, "within the ai limit: {ai:?}");
    let api_over = goodwill("api", 1_200);
    assert_eq!(api_over.status, 202, "over the api limit: {api_over:?}");
    let ai_day = goodwill("ai", 1_600_000);
    assert_eq!(ai_day.status, 202, "over the ai day limit: {ai_day:?}");
    h.wait_available("acme", "ai", 1_500_000);
    h.wait_available("acme", "api", 900);
}

/// The key sync pass at start-up reads every key, then writes them one by one in key id
/// order; keys revoked while it runs (the last ones it writes) are not left published.
#[test]
fn keys_revoked_during_a_key_sync_pass_stay_withdrawn() {
    use creditgate_sidecar::ledger::AdminDb;
    use creditgate_sidecar::settings::LedgerArgs;
    const KEYS: usize = 20_000;
    const REVOKED: usize = 50;
    let mut h = AdminHarness::start(Backend::Sqlite);
    h.create_customer("acme", None);
    h.sidecar.stop().expect("sidecar stops");
    // Many keys, so the pass runs long enough to be revoked under: key ids k-000001…,
    // hashes the id's number in 64 digits.
    let creditgate_testkit::LedgerTarget::Sqlite(path) = &h.target else {
        unreachable!()
    };
    let args = LedgerArgs {
        sqlite: Some(path.clone()),
        postgres: None,
    };
    h.rt.block_on(async {
        let db = AdminDb::open(&args).await?;
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO customer_api_keys (key_id, customer, key_hash, created_by, created_at_ms) \
             SELECT printf('k-%06d', i), 'acme', printf('%064d', i), 'test', 0 FROM n",
            &[(KEYS as i64).into()],
        )
        .await
    })
    .expect("insert the keys");
    let hash = |i: usize| format!("{i:064}");
    let exists = |i: usize| {
        h.redis
            .cli(&["EXISTS", &format!("cg:apikey:{}", hash(i))])
            .expect("redis-cli")
            .trim()
            == "1"
    };
    h.sidecar.restart().expect("sidecar restarts");
    h.wait_for_admin();
    // Revoke the keys the pass writes last, while it runs.
    assert!(!exists(KEYS - REVOKED), "the pass is still running");
    for i in KEYS - REVOKED + 1..=KEYS {
        let a = h.post(
            "admin",
            &format!("/v1/admin/customers/acme/api-keys/k-{i:06}/revoke"),
            json!({}),
        );
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Once the pass wrote the last active key, it is done with the revoked ones too.
    let deadline = Instant::now() + WAIT;
    while !exists(KEYS - REVOKED) {
        assert!(Instant::now() < deadline, "the pass never finished");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    let published: Vec<usize> = (KEYS - REVOKED + 1..=KEYS).filter(|&i| exists(i)).collect();
    assert!(
        published.is_empty(),
        "revoked keys republished: {published:?}"
    );
}
