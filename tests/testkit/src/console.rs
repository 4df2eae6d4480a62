//! Driving the sidecar's support console in a [`Browser`]: log in with an admin token,
//! open a customer, grant credits through the console's form, log out. Other browser tests
//! (the customer page's) use these to make a change the way a support person would.

use anyhow::{Context, bail};

use crate::browser::Browser;

/// A grant as the console's form takes it.
#[derive(Clone, Debug)]
pub struct ConsoleGrant<'a> {
    /// `goodwill`, `promotion`, `purchase`, … (what the role may issue).
    pub source: &'a str,
    /// The credit type.
    pub credit_type: &'a str,
    /// Credits.
    pub amount: u64,
    /// One of the operations file's reason codes.
    pub reason_code: &'a str,
    /// Free text (shown in the ledger as `reason_code: note`).
    pub note: &'a str,
    /// A UTC date `YYYY-MM-DD` the grant expires at the end of, or empty.
    pub expires: &'a str,
}

impl<'a> ConsoleGrant<'a> {
    /// A goodwill grant of `amount` credits of `credit_type` for an outage, no expiry.
    pub fn goodwill(credit_type: &'a str, amount: u64) -> Self {
        Self {
            source: "goodwill",
            credit_type,
            amount,
            reason_code: "outage",
            note: "",
            expires: "",
        }
    }
}

/// Logs in to the console at `admin_url` (the admin API's base URL) with `token`; fails
/// when the console does not show the logged-in navigation afterwards.
pub fn console_login(browser: &Browser, admin_url: &str, token: &str) -> anyhow::Result<()> {
    browser.open(&format!("{admin_url}/console/login"))?;
    browser.submit("form[action='/console/login']", &[("token", token)])?;
    if browser.count("form.who")? == 0 {
        let shown = browser.page_text().unwrap_or_default();
        bail!("console login failed; the page shows:\n{shown}");
    }
    Ok(())
}

/// Opens `customer`'s console page (logged in already).
pub fn console_open_customer(
    browser: &Browser,
    admin_url: &str,
    customer: &str,
) -> anyhow::Result<()> {
    browser.open(&format!("{admin_url}/console"))?;
    browser.submit(
        "form[action='/console/customers']",
        &[("customer", customer)],
    )
}

/// Grants through `customer`'s console page as the logged-in user and returns the notice
/// the console shows (`Granted …`, `Over your limit: …`, or the admin API's refusal).
pub fn console_grant(
    browser: &Browser,
    admin_url: &str,
    customer: &str,
    grant: &ConsoleGrant,
) -> anyhow::Result<String> {
    console_open_customer(browser, admin_url, customer)?;
    let amount = grant.amount.to_string();
    browser
        .submit(
            "#grant",
            &[
                ("source", grant.source),
                ("credit_type", grant.credit_type),
                ("amount", &amount),
                ("reason_code", grant.reason_code),
                ("note", grant.note),
                ("expires", grant.expires),
            ],
        )
        .context("submitting the console's grant form")?;
    browser.text(".notice")
}

/// Logs out of the console.
pub fn console_logout(browser: &Browser) -> anyhow::Result<()> {
    browser.submit("form.who", &[])
}
