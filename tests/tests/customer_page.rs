//! The customer's credit page and the token requirement on customer data, end to end: the
//! real sidecar (SQLite ledger, real Redis, admin API) and the real gateway in front of a
//! counting upstream; grants through the admin API, burns through the gateway; the page read
//! in a headless Chromium (Debian's `chromium` and `chromium-driver`) and over HTTP.
//!
//! Screenshots: with `CREDITGATE_WRITE_SCREENSHOTS=1` the first test writes
//! `docs/screenshots/customer-page-{desktop,phone}.png`; otherwise into a temp dir.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use creditgate_sidecar::api::customer_page::format::{credits, date};
use creditgate_testkit::{
    AdminHarness, Backend, Browser, DESKTOP_WINDOW, Gateway, GatewayOptions, PHONE_WINDOW,
    Upstream, WAIT, http_client, send,
};
use serde_json::{Value, json};

/// Credits one `/search` costs (credit type `api`, scale 0).
const SEARCH_COST: i64 = 7;

/// Stored units one `/summarize` costs (credit type `ai`, scale 3: 1.5 AI credits).
const SUMMARIZE_COST: i64 = 1_500;

/// The note of the first grant: markup that must render as text.
const MARKUP_NOTE: &str = r#"welcome <img src=x onerror="document.title='pwned'"><script>document.title='pwned'</script>"#;

const CHECKOUT_URL: &str = "https://shop.example.test/credits?src=page";

fn pricing(upstream: std::net::SocketAddr) -> String {
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
display_name = "API credits"

[credit_types.ai]
scale = 3
display_name = "AI credits"

[upstreams.default]
address = "{upstream}"
connect_timeout_ms = 500
read_timeout_ms = 2000

[features.search]
credit_type = "api"
cost = {{ kind = "fixed", amount = {SEARCH_COST} }}

[features.summarize]
credit_type = "ai"
cost = {{ kind = "fixed", amount = {SUMMARIZE_COST} }}

[[routes]]
name = "search"
method = "GET"
path = "/search"
feature = "search"

[[routes]]
name = "summarize"
method = "GET"
path = "/summarize"
feature = "summarize"
"#
    )
}

fn operations() -> String {
    let secret = "s".repeat(32);
    format!(
        r#"
credit_types = ["api", "ai"]
reason_codes = ["onboarding", "outage"]
promotion_max_days = 90

[[bundles]]
id = "api-5k"
credit_type = "api"
credits = 5000
price_micros = 50000000

[[bundles]]
id = "ai-20"
credit_type = "ai"
credits = 20000
price_micros = 12500000

[webhooks]
url = "http://127.0.0.1:9/events"
secret = "{secret}"

[auto_recharge]
url = "http://127.0.0.1:9/recharge"
secret = "{secret}"

[customer_page]
checkout_url = "{CHECKOUT_URL}"

[customer_page.recharge_target_max]
api = 10000
"#
    )
}

/// The sidecar with its admin API, the gateway and the upstream, and an API key per
/// customer.
struct Stack {
    h: AdminHarness,
    gateway: Gateway,
    client: reqwest::blocking::Client,
    keys: Vec<(String, String)>,
    _upstream: Upstream,
}

impl Stack {
    fn start(customers: &[&str]) -> Stack {
        let upstream = Upstream::start().expect("upstream");
        let config = pricing(upstream.addr());
        let h = AdminHarness::start_with_pricing(Backend::Sqlite, &operations(), Some(&config));
        let gateway = Gateway::start(GatewayOptions {
            config_toml: config,
            redis_url: Some(h.redis.url()),
            ..GatewayOptions::default()
        })
        .expect("gateway starts");
        let mut keys = Vec::new();
        for c in customers {
            h.create_customer(c, None);
            let a = h.post(
                "billing",
                &format!("/v1/admin/customers/{c}/api-keys"),
                json!({}),
            );
            assert_eq!(a.status, 201, "{a:?}");
            keys.push((
                c.to_string(),
                a.json()["api_key"].as_str().unwrap().to_string(),
            ));
        }
        Stack {
            h,
            gateway,
            client: http_client(),
            keys,
            _upstream: upstream,
        }
    }

    fn key(&self, customer: &str) -> &str {
        &self.keys.iter().find(|(c, _)| c == customer).unwrap().1
    }

    fn grant(&self, customer: &str, body: Value) {
        let a = self.h.post(
            "admin",
            &format!("/v1/admin/customers/{customer}/grants"),
            body,
        );
        assert_eq!(a.status, 201, "{a:?}");
    }

    /// One request through the gateway, which must be charged: its request id.
    fn burn(&self, customer: &str, path: &str) -> String {
        let url = format!("{}{path}", self.gateway.proxy_url());
        let r = send(&self.client, "GET", &url, Some(self.key(customer)), &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.header("x-request-id").expect("x-request-id").to_string()
    }

    /// A session token for `customer`, living `ttl_seconds`.
    fn session(&self, customer: &str, ttl_seconds: u64) -> String {
        let a = self.h.post(
            "billing",
            &format!("/v1/admin/customers/{customer}/sessions"),
            json!({"ttl_seconds": ttl_seconds}),
        );
        assert_eq!(a.status, 201, "{a:?}");
        a.json()["token"].as_str().unwrap().to_string()
    }

    /// `GET path` on the read listener with `token` as bearer (none: no header).
    fn read(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.h.sidecar.url());
        let mut req = self.client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().expect("read listener answers");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    fn page_url(&self, session: &str) -> String {
        format!("{}/customer/?session={session}", self.h.sidecar.url())
    }

    /// Waits until the page (read over HTTP) lists `entries` history rows.
    fn wait_for_entries(&self, session: &str, entries: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.read(&format!("/customer/?session={session}&days=7"), None);
            let n = body.matches("<tr data-entry=").count();
            if status == 200 && n == entries {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page lists {n} entries, not {entries} (status {status})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var_os("CREDITGATE_WRITE_SCREENSHOTS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        return (dir, None);
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    (tmp.path().to_path_buf(), Some(tmp))
}

/// Sizes the window so the whole page is in a screenshot: the window's outer height is a
/// little more than the viewport, so the page's height is measured in the viewport.
fn whole_page(b: &Browser, width: u32, height: u32) {
    b.fit_height(width, height).unwrap();
    let sizes = b
        .eval(
            "return [window.outerHeight - window.innerHeight, document.documentElement.scrollHeight];",
            vec![],
        )
        .unwrap();
    let chrome = sizes[0].as_u64().unwrap_or(0) as u32;
    let page = sizes[1].as_u64().unwrap_or(u64::from(height)) as u32;
    b.set_window_size(width, (page + chrome).clamp(height, 4_000))
        .unwrap();
}

fn text_content(b: &Browser, css: &str) -> String {
    b.eval(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent).join('\\n');",
        vec![json!(css)],
    )
    .expect("eval")
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Grants through the admin API and burns through the real gateway; the page shows
/// exactly the balances, expiry split, usage and history they produced, the trail of a
/// request, the bundles' checkout links, the low-balance banner and auto-recharge status,
/// and a grant note full of markup as text.
#[test]
fn the_customer_page_shows_what_grants_and_burns_through_the_gateway_produced() {
    let s = Stack::start(&["acme"]);
    let now = creditgate_sidecar::ledger::now_ms();
    let promo_expiry = now + 10 * 86_400_000;
    s.grant(
        "acme",
        json!({"source": "adjustment", "credit_type": "api", "amount": 1000,
                            "reason_code": "onboarding", "note": MARKUP_NOTE}),
    );
    s.grant(
        "acme",
        json!({"source": "promotion", "credit_type": "api", "amount": 500,
                            "reason_code": "onboarding", "expires_at_ms": promo_expiry}),
    );
    s.grant(
        "acme",
        json!({"source": "adjustment", "credit_type": "ai", "amount": 10_500,
                            "reason_code": "outage"}),
    );
    s.h.wait_available("acme", "api", 1500);
    s.h.wait_available("acme", "ai", 10_500);
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(s.burn("acme", "/search"));
    }
    for _ in 0..2 {
        requests.push(s.burn("acme", "/summarize"));
    }
    s.h.wait_available("acme", "api", 1500 - 3 * SEARCH_COST);
    s.h.wait_available("acme", "ai", 10_500 - 2 * SUMMARIZE_COST);
    for (credit_type, low, threshold, target) in [
        ("api", Some(2000), None, None),
        ("ai", None, Some(2000), Some(20_000)),
    ] {
        let a = s.h.call(
            Some("admin"),
            "PUT",
            "/v1/admin/customers/acme/alerts",
            Some(&creditgate_testkit::key()),
            Some(
                &json!({"credit_type": credit_type, "low_balance_threshold": low,
                         "recharge_threshold": threshold, "recharge_target": target}),
            ),
        );
        assert_eq!(a.status, 200, "{a:?}");
    }
    let session = s.session("acme", 900);
    s.wait_for_entries(&session, 8);

    let b = Browser::start().expect("browser starts");
    b.open(&s.page_url(&session)).expect("open the page");
    // Balances in display units, live.
    let api = b
        .text(r#"[data-credit-type="api"] [data-available]"#)
        .unwrap();
    assert_eq!(api, "1,479");
    assert_eq!(
        b.text(r#"[data-credit-type="ai"] [data-available]"#)
            .unwrap(),
        "7.5"
    );
    assert_eq!(
        b.text(r#"[data-credit-type="ai"] h2"#).unwrap(),
        "AI credits"
    );
    assert_eq!(
        b.text(r#"[data-credit-type="api"] [data-held]"#).unwrap(),
        "0"
    );
    // The split by expiry is the store's live grants, soonest first.
    let live =
        s.h.rt
            .block_on(async {
                use creditgate_protocol::CreditStore;
                s.h.store.balance("acme").await
            })
            .expect("balance");
    let mut expected: Vec<(u64, Option<u64>)> = live
        .grants
        .iter()
        .filter(|g| g.credit_type == "api" && g.remaining > 0)
        .map(|g| (g.remaining, g.expires_at_ms))
        .collect();
    expected.sort_by_key(|(_, e)| e.unwrap_or(u64::MAX));
    let expected: Vec<String> = expected
        .iter()
        .map(|(r, e)| match e {
            Some(e) => format!("{} expiring {}", credits(*r as i64, 0), date(*e)),
            None => format!("{} no expiry", credits(*r as i64, 0)),
        })
        .collect();
    assert_eq!(
        b.texts(r#"[data-credit-type="api"] .cg-split li"#).unwrap(),
        expected
    );
    assert_eq!(expected.len(), 2, "{expected:?}");
    // Upcoming expirations and the run-out projection.
    assert!(
        b.text("[data-expiring]")
            .unwrap()
            .contains(&date(promo_expiry))
    );
    assert!(b.count("[data-run-out]").unwrap() >= 1);
    // Low balance (1,479 < 2,000) and auto-recharge status.
    assert!(
        b.text(r#"[data-low-balance="api"]"#)
            .unwrap()
            .contains("1,479")
    );
    assert_eq!(b.count(r#"[data-low-balance="ai"]"#).unwrap(), 0);
    assert!(
        b.text(r#"[data-auto-recharge="ai"]"#)
            .unwrap()
            .contains("below 2 tops up to 20")
    );
    // Usage per feature, both charts and their numbers.
    assert_eq!(b.count("[data-usage-chart]").unwrap(), 2);
    let usage = text_content(&b, ".cg-details tbody tr");
    assert!(usage.contains("search321"), "{usage}");
    assert!(usage.contains("summarize23"), "{usage}");
    // The history: exactly the three grants and five burns, newest first.
    let kinds: Vec<String> = b.eval(
        "return Array.from(document.querySelectorAll('tr[data-entry]')).map(e => e.dataset.entry);",
        vec![]).unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(
        kinds,
        ["hold_posted"; 5]
            .into_iter()
            .chain(["grant_added"; 3])
            .collect::<Vec<_>>()
    );
    let amounts = b.texts("tr[data-entry] td:nth-child(3)").unwrap();
    assert_eq!(
        amounts,
        ["-1.5", "-1.5", "-7", "-7", "-7", "+10.5", "+500", "+1,000"]
    );
    // The note's markup is text: no element was created from it, no script ran.
    assert!(
        b.page_text().unwrap().contains(MARKUP_NOTE),
        "the note shows as text"
    );
    assert_eq!(b.count(".cg-reason img, .cg-reason script").unwrap(), 0);
    assert_ne!(b.title().unwrap(), "pwned");
    // Buy more: each bundle links to the checkout with bundle and customer.
    let href = b
        .eval(
            "return document.querySelector('[data-bundle=\"api-5k\"]').href;",
            vec![],
        )
        .unwrap();
    assert_eq!(
        href,
        json!(format!("{CHECKOUT_URL}&bundle=api-5k&customer=acme"))
    );

    // Screenshots at desktop and phone widths, of the 7-day range.
    let (dir, _keep) = screenshot_dir();
    b.open(&format!("{}&days=7", s.page_url(&session))).unwrap();
    for (width, height, name) in [
        (
            DESKTOP_WINDOW.0,
            DESKTOP_WINDOW.1,
            "customer-page-desktop.png",
        ),
        (PHONE_WINDOW.0, PHONE_WINDOW.1, "customer-page-phone.png"),
    ] {
        whole_page(&b, width, height);
        b.screenshot(&dir.join(name)).unwrap();
    }
    b.set_window_size(DESKTOP_WINDOW.0, DESKTOP_WINDOW.1)
        .unwrap();

    // Auto-recharge, set by the customer within the operations file's limit; the
    // low-balance threshold stays.
    let open_form = "document.querySelector('li.cg-recharge details').open = true; \
         document.querySelector('[data-recharge-form=\"api\"] [name=enabled]').checked = true; return null;";
    b.eval(open_form, vec![]).unwrap();
    b.submit(
        r#"[data-recharge-form="api"]"#,
        &[("threshold", "100"), ("target", "3,000")],
    )
    .unwrap();
    assert!(
        b.text(r#"[data-auto-recharge="api"]"#)
            .unwrap()
            .contains("below 100 tops up to 3,000"),
        "{}",
        b.page_text().unwrap()
    );
    assert_eq!(b.count(r#"[data-low-balance="api"]"#).unwrap(), 1);
    b.eval(open_form, vec![]).unwrap();
    b.submit(
        r#"[data-recharge-form="api"]"#,
        &[("threshold", "100"), ("target", "20000")],
    )
    .unwrap();
    assert!(
        b.page_text()
            .unwrap()
            .contains("target: must be at most 10,000")
    );
    b.open(&s.page_url(&session)).unwrap();
    assert!(
        b.text(r#"[data-auto-recharge="api"]"#)
            .unwrap()
            .contains("tops up to 3,000")
    );
    // AI credits have no customer limit: shown, not changeable.
    assert_eq!(b.count(r#"[data-recharge-form="ai"]"#).unwrap(), 0);

    // Filtering to usage, then a request's trail by its link.
    b.submit(".cg-filters", &[("kind", "usage")]).unwrap();
    assert_eq!(b.count("tr[data-entry]").unwrap(), 5);
    let last = requests.last().unwrap();
    b.click(&format!("a[href*=\"request={last}\"]")).unwrap();
    let steps: Vec<String> = b.eval(
        "return Array.from(document.querySelectorAll('tr[data-trail-entry]')).map(e => e.dataset.trailEntry);",
        vec![]).unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(steps, ["hold_placed", "hold_posted"]);

    // The CSV export holds the same eight entries.
    let (status, csv) = s.read(
        &format!("/customer/ledger.csv?session={session}&days=7"),
        None,
    );
    assert_eq!(status, 200, "{csv}");
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(
        csv.contains("\"-1.5\"") && csv.contains("\"1000\""),
        "{csv}"
    );
}

/// Customer data needs a token; a session reads only its own customer (page and API);
/// expired and forged sessions are refused with JSON errors; a customer id with markup on
/// a staff-opened page renders as text.
#[test]
fn customer_sessions_read_only_their_own_customer() {
    let s = Stack::start(&["acme", "globex"]);
    s.grant("acme", json!({"source": "adjustment", "credit_type": "api", "amount": 100, "reason_code": "onboarding"}));
    s.grant("globex", json!({"source": "adjustment", "credit_type": "api", "amount": 200, "reason_code": "onboarding"}));
    s.h.wait_available("acme", "api", 100);
    s.h.wait_available("globex", "api", 200);
    let acme_request = s.burn("acme", "/search");
    s.h.wait_available("acme", "api", 100 - SEARCH_COST);
    let acme = s.session("acme", 900);
    let globex = s.session("globex", 900);
    s.wait_for_entries(&acme, 2);
    let now = creditgate_sidecar::ledger::now_ms();
    let day_ago = now - 86_400_000;
    let customer_routes = [
        "/v1/customers/acme/balance".to_string(),
        format!("/v1/usage?customer=acme&from_ms={day_ago}&to_ms={now}"),
        format!("/v1/requests/{acme_request}/trail"),
        format!("/v1/revenue?from_ms={day_ago}&to_ms={now}"),
        "/v1/reconcile".to_string(),
        "/customer/?customer=acme".to_string(),
        "/customer/ledger.csv?customer=acme".to_string(),
    ];
    // Without a token: 401 JSON on every customer-data route; the probes stay open.
    for path in &customer_routes {
        let (status, body) = s.read(path, None);
        assert_eq!(status, 401, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["error"], "unauthorized", "{path}: {body}");
    }
    for path in ["/metrics", "/healthz", "/readyz", "/customer/embed.js"] {
        assert_eq!(s.read(path, None).0, 200, "{path}");
    }
    // A staff token reads them all.
    let readonly = s.h.token("readonly").to_string();
    for path in &customer_routes {
        assert_eq!(s.read(path, Some(&readonly)).0, 200, "{path}");
    }
    // Its own data with its session; never another customer's.
    assert_eq!(s.read("/v1/customers/acme/balance", Some(&acme)).0, 200);
    assert_eq!(
        s.read(&format!("/v1/requests/{acme_request}/trail"), Some(&acme))
            .0,
        200
    );
    let (status, body) = s.read("/v1/customers/acme/balance", Some(&globex));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    assert_eq!(
        s.read(&format!("/v1/requests/{acme_request}/trail"), Some(&globex))
            .0,
        404
    );
    assert_eq!(
        s.read(
            &format!("/v1/usage?customer=acme&from_ms={day_ago}&to_ms={now}"),
            Some(&globex)
        )
        .0,
        403
    );
    let (status, body) = s.read(
        &format!("/v1/usage?from_ms={day_ago}&to_ms={now}"),
        Some(&globex),
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("acme"), "globex's usage only: {body}");
    assert_eq!(
        s.read(
            &format!("/v1/revenue?from_ms={day_ago}&to_ms={now}"),
            Some(&globex)
        )
        .0,
        403
    );
    assert_eq!(s.read("/v1/reconcile", Some(&globex)).0, 403);
    assert_eq!(
        s.read(&format!("/customer/?session={globex}&customer=acme"), None)
            .0,
        403
    );
    assert_eq!(
        s.read(
            &format!("/customer/ledger.csv?session={globex}&customer=acme"),
            None
        )
        .0,
        403
    );

    // In the browser: globex's page is globex's, with nothing of acme's.
    let b = Browser::start().expect("browser starts");
    b.open(&s.page_url(&globex)).unwrap();
    assert_eq!(b.text("[data-customer]").unwrap(), "globex");
    assert_eq!(
        b.text(r#"[data-credit-type="api"] [data-available]"#)
            .unwrap(),
        "200"
    );
    b.open(&format!("{}&request={acme_request}", s.page_url(&globex)))
        .unwrap();
    assert_eq!(b.count("[data-trail-empty]").unwrap(), 1);
    assert_eq!(b.count("tr[data-trail-entry]").unwrap(), 0);
    assert!(!b.page_text().unwrap().contains("acme"));

    // Expired: a one-second session, a little later.
    let short = s.session("acme", 1);
    std::thread::sleep(Duration::from_millis(1_200));
    let (status, body) = s.read("/v1/customers/acme/balance", Some(&short));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"session_expired\""), "{body}");
    b.open(&s.page_url(&short)).unwrap();
    assert!(b.page_text().unwrap().contains("session_expired"));
    // Forged: acme's token made to name globex, and a token signed with another key.
    let forged = acme.replacen(&hex::encode("acme"), &hex::encode("globex"), 1);
    let (status, body) = s.read("/v1/customers/globex/balance", Some(&forged));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"session_invalid\""), "{body}");
    let other_key =
        creditgate_sidecar::api::customer_session::SessionKey::new(vec![9u8; 32]).unwrap();
    let foreign = other_key.mint("acme", now, 900);
    assert_eq!(s.read("/v1/customers/acme/balance", Some(&foreign)).0, 401);
    b.open(&s.page_url(&forged)).unwrap();
    assert!(b.page_text().unwrap().contains("session_invalid"));

    // Markup in a customer id (staff may name any) is refused, and the refusal shows it
    // as text.
    let (status, body) = s.read("/customer/?customer=%3Cb%3Ebold%3C%2Fb%3E", Some(&readonly));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("&lt;b&gt;bold&lt;/b&gt;") && !body.contains("<b>bold</b>"),
        "{body}"
    );
}
