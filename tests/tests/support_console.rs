//! The support console in a real headless Chromium, against the real sidecar on a real
//! Redis and an SQLite ledger: log in with an admin token, grant through the console and
//! see it through the admin API, a support grant over the limit waits for an admin's
//! approval, change forms without the session's CSRF token are refused, markup in a
//! reason renders as text, log out. With `CREDITGATE_SCREENSHOTS=1` the screenshots go to
//! `docs/screenshots/` (otherwise to the test's temp dir).

use std::path::PathBuf;
use std::time::Duration;

use creditgate_testkit::{
    AdminHarness, Backend, Browser, ConsoleGrant, DESKTOP_WINDOW, PHONE_WINDOW, console_grant,
    console_login, console_logout, console_open_customer,
};

const CUSTOMER: &str = "acme";
const MARKUP: &str = "<b id=\"injected\">bold</b><script>document.title='owned'</script>";

fn harness_with_customer() -> AdminHarness {
    let h = AdminHarness::start(Backend::Sqlite);
    h.create_customer(CUSTOMER, None);
    h
}

fn screenshot_dir(h: &AdminHarness) -> PathBuf {
    if std::env::var("CREDITGATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        h.dir.path().join("screenshots")
    }
}

/// The session cookie's value, as the browser holds it.
fn session_cookie(browser: &Browser) -> creditgate_testkit::BrowserCookie {
    browser
        .cookies()
        .unwrap()
        .into_iter()
        .find(|c| c.name == "creditgate_console")
        .expect("a console session cookie")
}

#[test]
fn a_grant_made_in_the_console_is_the_admin_apis_grant_and_markup_renders_as_text() {
    let h = harness_with_customer();
    let browser = Browser::start().unwrap();
    browser.open(&format!("{}/console", h.admin_url)).unwrap();
    assert!(
        browser.current_url().unwrap().ends_with("/console/login"),
        "not logged in: the login page"
    );

    console_login(&browser, &h.admin_url, h.token("support")).unwrap();
    let cookie = session_cookie(&browser);
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(cookie.same_site, "Strict", "{cookie:?}");
    assert!(!cookie.secure, "loopback: no Secure flag, {cookie:?}");

    let grant = ConsoleGrant {
        note: MARKUP,
        ..ConsoleGrant::goodwill("api", 300)
    };
    let notice = console_grant(&browser, &h.admin_url, CUSTOMER, &grant).unwrap();
    assert!(notice.starts_with("Granted 300 api"), "{notice}");
    // The admin API sees the grant, made by the support token, with its reason.
    h.wait_available(CUSTOMER, "api", 300);
    let grants = h.grants_of(CUSTOMER);
    assert_eq!(grants.len(), 1, "{grants:?}");
    let ledger = h
        .get("admin", &format!("/v1/admin/customers/{CUSTOMER}/ledger"))
        .json();
    assert!(
        ledger.to_string().contains("support"),
        "actor recorded: {ledger}"
    );

    // The reason with markup is text on the page, never markup.
    console_open_customer(&browser, &h.admin_url, CUSTOMER).unwrap();
    let page = browser.page_text().unwrap();
    assert!(
        page.contains("<b id=\"injected\">bold</b>"),
        "the note shows as text:\n{page}"
    );
    assert_eq!(
        browser.count("#injected").unwrap(),
        0,
        "no element made from the note"
    );
    assert_ne!(browser.title().unwrap(), "owned", "no script ran");

    let dir = screenshot_dir(&h);
    browser
        .fit_height(DESKTOP_WINDOW.0, DESKTOP_WINDOW.1)
        .unwrap();
    browser
        .screenshot(&dir.join("console-customer-desktop.png"))
        .unwrap();
    browser.fit_height(PHONE_WINDOW.0, PHONE_WINDOW.1).unwrap();
    browser
        .screenshot(&dir.join("console-customer-phone.png"))
        .unwrap();

    console_logout(&browser).unwrap();
    assert!(browser.current_url().unwrap().ends_with("/console/login"));
    browser
        .open(&format!("{}/console/customers/{CUSTOMER}", h.admin_url))
        .unwrap();
    assert!(
        browser.current_url().unwrap().ends_with("/console/login"),
        "logged out"
    );
}

#[test]
fn a_support_grant_over_the_limit_waits_for_an_admin_who_approves_it_in_the_console() {
    let h = harness_with_customer();
    let browser = Browser::start().unwrap();
    console_login(&browser, &h.admin_url, h.token("support")).unwrap();
    // Support may grant 1,000 per grant (the harness's operations file).
    let grant = ConsoleGrant {
        note: MARKUP,
        ..ConsoleGrant::goodwill("api", 1_200)
    };
    let notice = console_grant(&browser, &h.admin_url, CUSTOMER, &grant).unwrap();
    assert!(notice.contains("waits for an admin's approval"), "{notice}");
    assert_eq!(h.available(CUSTOMER, "api"), 0, "nothing granted yet");

    // Support sees its own request, with no way to approve it.
    browser
        .open(&format!("{}/console/approvals", h.admin_url))
        .unwrap();
    let listed = browser.text(".approval").unwrap();
    assert!(
        listed.contains("1200 api") && listed.contains("yours"),
        "{listed}"
    );
    assert!(listed.contains(MARKUP), "the note as text: {listed}");
    assert_eq!(browser.count("form.approve").unwrap(), 0);
    assert_eq!(browser.count("#injected").unwrap(), 0);
    console_logout(&browser).unwrap();

    console_login(&browser, &h.admin_url, h.token("admin")).unwrap();
    browser
        .open(&format!("{}/console/approvals", h.admin_url))
        .unwrap();
    assert_eq!(browser.count("form.approve").unwrap(), 1);
    let dir = screenshot_dir(&h);
    browser.fit_height(DESKTOP_WINDOW.0, 600).unwrap();
    browser
        .screenshot(&dir.join("console-approvals-desktop.png"))
        .unwrap();
    browser
        .set_window_size(DESKTOP_WINDOW.0, DESKTOP_WINDOW.1)
        .unwrap();
    browser.submit("form.approve", &[]).unwrap();
    let notice = browser.text(".notice").unwrap();
    assert!(notice.starts_with("Approved"), "{notice}");
    h.wait_available(CUSTOMER, "api", 1_200);
    let pending = h.get("admin", "/v1/admin/grant-approvals").json();
    assert_eq!(
        pending["approvals"].as_array().map(Vec::len),
        Some(0),
        "{pending}"
    );
}

#[test]
fn console_change_forms_without_the_sessions_csrf_token_are_refused() {
    let h = harness_with_customer();
    let browser = Browser::start().unwrap();
    console_login(&browser, &h.admin_url, h.token("admin")).unwrap();
    console_open_customer(&browser, &h.admin_url, CUSTOMER).unwrap();
    let csrf = browser
        .eval(
            "return document.querySelector('#grant input[name=csrf]').value;",
            vec![],
        )
        .unwrap();
    let csrf = csrf
        .as_str()
        .expect("the grant form carries a CSRF token")
        .to_string();
    let cookie = format!("creditgate_console={}", session_cookie(&browser).value);

    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let post = |path: &str, form: &[(&str, &str)]| {
        client
            .post(format!("{}{path}", h.admin_url))
            .header("Cookie", &cookie)
            .form(form)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let grant = [
        ("source", "goodwill"),
        ("credit_type", "api"),
        ("amount", "50"),
        ("reason_code", "outage"),
        ("form_id", "raw-1"),
    ];
    let grants_path = format!("/console/customers/{CUSTOMER}/grants");
    assert_eq!(post(&grants_path, &grant), 403, "no CSRF token");
    let mut forged = grant.to_vec();
    forged.push(("csrf", "0000"));
    assert_eq!(post(&grants_path, &forged), 403, "a wrong CSRF token");
    assert_eq!(
        post(
            "/console/modes",
            &[("scope", "global"), ("mode", "off"), ("reason", "x")]
        ),
        403
    );
    assert_eq!(post("/console/approvals/a-x/approve", &[]), 403);
    assert_eq!(post("/console/logout", &[]), 403);
    assert!(h.grants_of(CUSTOMER).is_empty(), "nothing was granted");

    // The same form with the session's token goes through.
    let mut with_token = grant.to_vec();
    with_token.push(("csrf", &csrf));
    assert_eq!(post(&grants_path, &with_token), 200);
    h.wait_available(CUSTOMER, "api", 50);
}

#[test]
fn a_grant_made_in_the_console_appears_on_the_customers_page() {
    let h = harness_with_customer();
    let browser = Browser::start().unwrap();
    console_login(&browser, &h.admin_url, h.token("support")).unwrap();
    let grant = ConsoleGrant {
        note: "welcome credits",
        ..ConsoleGrant::goodwill("api", 250)
    };
    let notice = console_grant(&browser, &h.admin_url, CUSTOMER, &grant).unwrap();
    assert!(notice.starts_with("Granted 250 api"), "{notice}");
    console_logout(&browser).unwrap();

    // The product's backend mints the customer a session; the customer opens their page.
    let minted = h.post(
        "billing",
        &format!("/v1/admin/customers/{CUSTOMER}/sessions"),
        serde_json::json!({"ttl_seconds": 300}),
    );
    assert_eq!(minted.status, 201, "{minted:?}");
    let session = minted.json()["token"].as_str().unwrap().to_string();
    let page = format!("{}/customer/?session={session}", h.sidecar.url());
    // Balances are live from Redis; the history follows the ledger a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        browser.open(&page).unwrap();
        let available = browser
            .text("[data-credit-type='api'] [data-available]")
            .unwrap_or_default();
        let history = browser.texts("tr[data-entry]").unwrap_or_default();
        let granted = history
            .iter()
            .any(|row| row.contains("+250") && row.contains("welcome credits"));
        if available == "250" && granted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the customer page shows {available:?} available and history {history:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
