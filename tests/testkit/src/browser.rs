//! A headless Chromium driven over WebDriver, for tests of the pages the sidecar serves.
//!
//! [`Browser::start`] starts Debian's `chromedriver` on a free loopback port (its own
//! process group, killed by a Drop guard together with the Chromium it launched) and opens
//! one WebDriver session with a fresh profile in a temp dir. The methods are blocking, like
//! the other harnesses: each runs one WebDriver command on the handle's own runtime, bounded
//! by [`BROWSER_COMMAND_TIMEOUT`]. Use the handle from a plain `#[test]` (or from
//! `spawn_blocking`), never from inside an async task.
//!
//! It knows nothing about credits: what to open, fill and check is the test's.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::util::{free_port, log_stdio, log_tail, require, terminate};

/// Install hint for the browser and its WebDriver.
pub const CHROMIUM_INSTALL_HINT: &str = "apt-get install -y chromium chromium-driver";

/// How long a starting chromedriver gets to report itself ready on `GET /status`.
pub const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on each browser command (a page load included): generous, because the machine
/// running the tests may be busy compiling.
pub const BROWSER_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A desktop window, width × height in CSS pixels.
pub const DESKTOP_WINDOW: (u32, u32) = (1280, 900);

/// A phone window (a common 6.1" phone), width × height in CSS pixels.
pub const PHONE_WINDOW: (u32, u32) = (390, 844);

/// Chromium's options: headless, no sandbox (tests may run as root in a container), and
/// nothing that reaches the network on its own (updates, sync, QUIC probes).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// How many fresh ports are tried when chromedriver cannot listen on the first.
const PORT_ATTEMPTS: usize = 3;

/// Lines of the chromedriver log put in errors.
const ERROR_LOG_LINES: usize = 30;

/// A cookie as the browser holds it, with the attributes a session cookie is checked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserCookie {
    /// The cookie's name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Whether scripts cannot read it.
    pub http_only: bool,
    /// Whether it is sent only over HTTPS.
    pub secure: bool,
    /// `Strict`, `Lax`, `None`, or empty when not set.
    pub same_site: String,
}

/// The chromedriver process: its own process group, so dropping it ends the Chromium it
/// started as well.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = require("chromedriver", CHROMIUM_INSTALL_HINT)?;
        let log = dir.join("chromedriver.log");
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let (out, err) = log_stdio(&log)?;
            let child = Command::new(&bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let mut driver = Self {
                child,
                port,
                log: log.clone(),
            };
            match driver.wait_ready() {
                Ok(()) => return Ok(driver),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("chromedriver did not start")))
    }

    /// Ready once it accepts connections: chromedriver listens only after it has started.
    /// (Its `/status` answer keeps the connection open, which a read-to-close GET would wait
    /// out, so the port is checked instead.)
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "chromedriver exited ({status}):\n{}",
                    log_tail(&self.log, ERROR_LOG_LINES)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "chromedriver not ready within {DRIVER_READY_TIMEOUT:?}:\n{}",
            log_tail(&self.log, ERROR_LOG_LINES)
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process it launched. The `--`
        // matters: without it procps `kill` reads `-PGID` as an option and signals another
        // process group (even -1, every process the user may signal).
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", self.child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        terminate(&mut self.child, None, Duration::ZERO);
    }
}

/// A headless Chromium with one WebDriver session; everything ends when it is dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    // Dropped after the client: the session is closed first, then the processes are ended,
    // then the profile and the log are removed.
    _driver: Driver,
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, window
    /// [`DESKTOP_WINDOW`]. Fails with an install hint when either binary is missing.
    pub fn start() -> anyhow::Result<Self> {
        let chromium = require("chromium", CHROMIUM_INSTALL_HINT)?;
        let dir = tempfile::Builder::new()
            .prefix("creditgate-browser-")
            .tempdir()?;
        let driver = Driver::start(dir.path())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let profile = dir.path().join("profile");
        fs::create_dir_all(&profile)?;
        let capabilities = chromium_capabilities(&chromium, &profile);
        let url = driver.url();
        let client = runtime
            .block_on(async {
                // The session is created within a timeout: a Chromium that cannot start
                // makes chromedriver wait a minute before it says so.
                let mut builder = ClientBuilder::new(HttpConnector::new());
                builder.capabilities(capabilities);
                tokio::time::timeout(BROWSER_COMMAND_TIMEOUT * 2, builder.connect(&url)).await
            })
            .map_err(|_| {
                anyhow!(
                    "no WebDriver session within {:?}",
                    BROWSER_COMMAND_TIMEOUT * 2
                )
            })?
            .map_err(|e| {
                anyhow!(
                    "opening a WebDriver session: {e}\nchromedriver log:\n{}",
                    log_tail(&driver.log, ERROR_LOG_LINES)
                )
            })?;
        let browser = Self {
            runtime,
            client: Some(client),
            _driver: driver,
            dir,
        };
        browser.set_window_size(DESKTOP_WINDOW.0, DESKTOP_WINDOW.1)?;
        Ok(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the client lives until drop")
    }

    /// Runs one browser command on the handle's runtime, bounded by
    /// [`BROWSER_COMMAND_TIMEOUT`]; `what` names it in the error.
    fn run<T>(
        &self,
        what: &str,
        command: impl std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    ) -> anyhow::Result<T> {
        match self
            .runtime
            .block_on(async { tokio::time::timeout(BROWSER_COMMAND_TIMEOUT, command).await })
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(anyhow!("browser: {what}: {e}")),
            Err(_) => Err(anyhow!(
                "browser: {what}: no answer within {BROWSER_COMMAND_TIMEOUT:?}"
            )),
        }
    }

    /// Opens `url` and waits for the page to load.
    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        self.run(&format!("open {url}"), self.client().goto(url))
    }

    /// The URL of the page shown now.
    pub fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .run("current url", self.client().current_url())?
            .to_string())
    }

    /// The page's title.
    pub fn title(&self) -> anyhow::Result<String> {
        self.run("title", self.client().title())
    }

    /// The rendered text of the first element matching the CSS selector `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let client = self.client();
        self.run(&format!("text of {css}"), async {
            client.find(Locator::Css(css)).await?.text().await
        })
    }

    /// The rendered text of every element matching `css`, in document order.
    pub fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let client = self.client();
        self.run(&format!("texts of {css}"), async {
            let mut texts = Vec::new();
            for element in client.find_all(Locator::Css(css)).await? {
                texts.push(element.text().await?);
            }
            Ok(texts)
        })
    }

    /// The rendered text of the whole page (`body`).
    pub fn page_text(&self) -> anyhow::Result<String> {
        self.text("body")
    }

    /// The inner HTML of the first element matching `css`, as the browser serialises it.
    pub fn inner_html(&self, css: &str) -> anyhow::Result<String> {
        let client = self.client();
        self.run(&format!("html of {css}"), async {
            client.find(Locator::Css(css)).await?.html(true).await
        })
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> anyhow::Result<usize> {
        let client = self.client();
        self.run(&format!("count {css}"), async {
            Ok(client.find_all(Locator::Css(css)).await?.len())
        })
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns
    /// what it returns.
    pub fn eval(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.run("script", self.client().execute(script, args))
    }

    /// Sets the fields of the form matching `form_css` by their `name`s (text inputs,
    /// textareas, selects, hidden inputs), without submitting it.
    pub fn fill(&self, form_css: &str, fields: &[(&str, &str)]) -> anyhow::Result<()> {
        let client = self.client();
        self.run(&format!("fill {form_css}"), async {
            let form = client.form(Locator::Css(form_css)).await?;
            for (name, value) in fields {
                form.set_by_name(name, value).await?;
            }
            Ok(())
        })
    }

    /// Fills the form matching `form_css` (see [`Browser::fill`]), clicks its first submit
    /// button and waits for the page the submission leads to.
    pub fn submit(&self, form_css: &str, fields: &[(&str, &str)]) -> anyhow::Result<()> {
        self.submit_with(form_css, fields, "button[type=submit],input[type=submit]")
    }

    /// Like [`Browser::submit`], clicking the button matching `button_css` inside the form
    /// (a form with an approve and a reject button, say).
    pub fn submit_with(
        &self,
        form_css: &str,
        fields: &[(&str, &str)],
        button_css: &str,
    ) -> anyhow::Result<()> {
        self.fill(form_css, fields)?;
        let client = self.client();
        self.navigating(&format!("submit {form_css}"), async {
            let form = client.form(Locator::Css(form_css)).await?;
            form.submit_with(Locator::Css(button_css)).await
        })
    }

    /// Clicks the first element matching `css` and, when that loads another page, waits for
    /// it (a link, a button outside a form).
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let client = self.client();
        self.navigating(&format!("click {css}"), async {
            client.find(Locator::Css(css)).await?.click().await
        })
    }

    /// Runs `action`, which may load a new document, and waits until the document it left
    /// is gone and the new one has loaded (or, when it stayed, until it is complete).
    fn navigating(
        &self,
        what: &str,
        action: impl std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    ) -> anyhow::Result<()> {
        self.eval("window.__creditgateBefore = true; return null;", vec![])?;
        self.run(what, action)?;
        let deadline = Instant::now() + BROWSER_COMMAND_TIMEOUT;
        loop {
            let state = self.eval(
                "return [document.readyState, window.__creditgateBefore === true];",
                vec![],
            );
            if let Ok(state) = state
                && state == json!(["complete", false])
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                // Stayed on the same document (a click that did not navigate): fine once loaded.
                return Ok(());
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sets the window to `width` × `height` CSS pixels.
    pub fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.run("window size", self.client().set_window_size(width, height))
    }

    /// Saves a PNG of the visible part of the page to `path` (creating its directory).
    /// To capture a whole long page, make the window as tall as the page first:
    /// [`Browser::fit_height`].
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.run("screenshot", self.client().screenshot())?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Sets the window to `width` wide and as tall as the page's content (at least
    /// `min_height`, at most 4,000 px), so a screenshot shows all of it.
    pub fn fit_height(&self, width: u32, min_height: u32) -> anyhow::Result<()> {
        self.set_window_size(width, min_height)?;
        // The window is taller than the page's viewport by the browser's own frame.
        let height = self
            .eval(
                "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight) \
                 + Math.max(0, window.outerHeight - window.innerHeight);",
                vec![],
            )?
            .as_f64()
            .map_or(u64::from(min_height), |h| h.ceil() as u64);
        let height = u32::try_from(height)
            .unwrap_or(4_000)
            .clamp(min_height, 4_000);
        self.set_window_size(width, height)
    }

    /// Every cookie the browser holds for the page shown now.
    pub fn cookies(&self) -> anyhow::Result<Vec<BrowserCookie>> {
        let cookies = self.run("cookies", self.client().get_all_cookies())?;
        Ok(cookies
            .iter()
            .map(|c| BrowserCookie {
                name: c.name().to_string(),
                value: c.value().to_string(),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()).unwrap_or_default(),
            })
            .collect())
    }

    /// Waits until the text of the first element matching `css` contains `needle`;
    /// returns the text, or an error with the last text seen.
    pub fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).unwrap_or_default();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{css} did not show {needle:?} within {timeout:?}; it shows:\n{text}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The temp dir holding the profile and the chromedriver log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session quits Chromium cleanly; a runtime cannot be entered from inside
        // another one, so inside an async context the process group is simply killed.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
    }
}

/// The session's capabilities: the `chromium` binary with [`CHROMIUM_ARGS`] and its own profile dir.
fn chromium_capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, Value> {
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
    });
    match caps {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}
