//! The `creditgate-sidecar` binary as a child process on a free loopback port, and its
//! one-shot subcommands (`grant`, `ledger verify`, `reconcile`, …).
//!
//! Like [`crate::Gateway`], this module starts and stops the real binary and never reaches
//! into the sidecar's library, so the tests see exactly what an operator would run. The
//! handle survives its process: [`Sidecar::kill9`] and [`Sidecar::stop`] end the process and
//! keep the temp dir, the log and the arguments, so [`Sidecar::restart`] brings the same
//! sidecar (same consumer name, same ledger) back.

use std::env;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tempfile::TempDir;

use crate::gateway::try_cargo_bin;
use crate::http::{HttpResponse, http_get, http_get_with_headers};
use crate::metrics::metric_value;
use crate::util::{free_port, log_stdio, log_tail, stop_gracefully, terminate};

/// Name of the sidecar binary (and of its package).
pub const SIDECAR_BIN: &str = "creditgate-sidecar";

/// How long a starting sidecar gets to answer `GET /readyz` with 200.
pub const SIDECAR_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Sidecar::stop`] waits after SIGTERM before it kills the process: the sidecar
/// finishes its current step (one bounded batch) and exits.
pub const SIDECAR_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeout of each HTTP request the handle sends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports are tried when the sidecar reports its port already in use.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the sidecar log put in errors and panics.
const ERROR_LOG_LINES: usize = 40;

/// Which ledger a sidecar writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerTarget {
    /// An SQLite file (`--sqlite PATH`); created on first use.
    Sqlite(PathBuf),
    /// A Postgres database (`--postgres URL`).
    Postgres(String),
}

impl LedgerTarget {
    /// The command-line options naming this ledger: `--sqlite PATH` or `--postgres URL`.
    pub fn args(&self) -> Vec<String> {
        match self {
            Self::Sqlite(path) => vec!["--sqlite".into(), path.display().to_string()],
            Self::Postgres(url) => vec!["--postgres".into(), url.clone()],
        }
    }

    /// `"sqlite"` or `"postgres"`, for messages.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// How to start a [`Sidecar`].
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// `--redis URL`, unless `redis_cluster` is set.
    pub redis_url: String,
    /// `--redis-cluster URL,…`: seed nodes of a Redis Cluster, used instead of `redis_url`
    /// when not empty.
    pub redis_cluster: Vec<String>,
    /// The ledger.
    pub ledger: LedgerTarget,
    /// `--consumer NAME`: stable across restarts, so a restarted sidecar finds the stream
    /// entries it read but never acknowledged.
    pub consumer: String,
    /// Appended to the command line after the options the handle sets.
    pub extra_args: Vec<String>,
    /// Environment variables for the process. Every `CREDITGATE_*` variable of the test's
    /// environment is removed first.
    pub env: Vec<(String, String)>,
}

impl SidecarOptions {
    /// Options for a sidecar on the Redis Cluster with these seed nodes writing `ledger`,
    /// as consumer `sidecar-test`.
    pub fn on_cluster(seeds: Vec<String>, ledger: LedgerTarget) -> Self {
        Self {
            redis_cluster: seeds,
            ..Self::new(String::new(), ledger)
        }
    }

    /// Options for a sidecar on `redis_url` writing `ledger`, as consumer `sidecar-test`.
    pub fn new(redis_url: impl Into<String>, ledger: LedgerTarget) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_cluster: Vec::new(),
            ledger,
            consumer: "sidecar-test".to_string(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A `creditgate-sidecar run` process on a free loopback port.
///
/// [`Sidecar::start`] runs `creditgate-sidecar run --redis URL (--sqlite PATH | --postgres
/// URL) --consumer NAME --listen 127.0.0.1:P [extra args]` with its stdout and stderr
/// appended to `sidecar.log` in its own temp dir, and returns once `GET /readyz` answers
/// 200. The process is killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Sidecar {
    binary: PathBuf,
    options: SidecarOptions,
    child: Option<Child>,
    port: u16,
    starts: u32,
    /// A `readonly` admin token for the customer-data routes, made on first use.
    read_token: std::sync::OnceLock<String>,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

/// Paths of the HTTP listener that answer without a token.
const OPEN_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Makes the names of the handles' read tokens unique within the test process.
static READ_TOKEN_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why one launch attempt failed.
enum LaunchError {
    /// The listen port was taken; retry with another one.
    PortInUse(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl Sidecar {
    /// Starts the sidecar and waits (up to [`SIDECAR_READY_TIMEOUT`]) until it is ready.
    ///
    /// Fails when the binary is missing (with the `cargo build` hint), when the process
    /// exits during startup or when it is not ready in time; those errors include the tail
    /// of its log.
    pub fn start(options: SidecarOptions) -> anyhow::Result<Self> {
        let binary = try_cargo_bin(SIDECAR_BIN)?;
        let dir = tempfile::Builder::new()
            .prefix("creditgate-sidecar-")
            .tempdir()
            .context("creating a temp dir for the sidecar")?;
        let mut sidecar = Self {
            binary,
            options,
            child: None,
            port: free_port(),
            starts: 0,
            read_token: std::sync::OnceLock::new(),
            dir,
        };
        sidecar.launch_with_retries()?;
        Ok(sidecar)
    }

    /// Launches on the current port, moving to fresh ports while it is taken.
    fn launch_with_retries(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for attempt in 0..PORT_ATTEMPTS {
            if attempt > 0 {
                self.port = free_port();
            }
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(LaunchError::PortInUse(e)) => last = Some(e),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!("sidecar: ports in use on {PORT_ATTEMPTS} attempts")))
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let log = self.log_path();
        self.starts += 1;
        // A marker between runs, so the log of a restarted sidecar reads in order.
        if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(&log) {
            let _ = writeln!(
                file,
                "--- creditgate-testkit: start #{} on port {} ---",
                self.starts, self.port
            );
        }
        let (out, err) = log_stdio(&log)
            .context("opening the sidecar log")
            .map_err(LaunchError::Other)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run");
        if self.options.redis_cluster.is_empty() {
            cmd.arg("--redis").arg(&self.options.redis_url);
        } else {
            cmd.arg("--redis-cluster")
                .arg(self.options.redis_cluster.join(","));
        }
        cmd.args(self.options.ledger.args())
            .arg("--consumer")
            .arg(&self.options.consumer)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.options.extra_args);
        clean_env(&mut cmd);
        for (name, value) in &self.options.env {
            cmd.env(name, value);
        }
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))
            .map_err(LaunchError::Other)?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let tail = log_tail(&log, ERROR_LOG_LINES);
                let e = anyhow!(
                    "creditgate-sidecar exited during startup ({status}); log tail ({}):\n{tail}",
                    log.display()
                );
                let in_use = tail.contains("Address already in use") || tail.contains("AddrInUse");
                return Err(if in_use {
                    LaunchError::PortInUse(e)
                } else {
                    LaunchError::Other(e)
                });
            }
            let last = match self.http_get("/readyz") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("/readyz answered {}: {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > SIDECAR_READY_TIMEOUT {
                if let Some(mut child) = self.child.take() {
                    terminate(&mut child, None, Duration::ZERO);
                }
                return Err(LaunchError::Other(anyhow!(
                    "creditgate-sidecar not ready within {SIDECAR_READY_TIMEOUT:?} (last: {last}); \
                     log tail ({}):\n{}",
                    log.display(),
                    log_tail(&log, ERROR_LOG_LINES)
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The options it was started with.
    pub fn options(&self) -> &SidecarOptions {
        &self.options
    }

    /// Base URL of the HTTP listener, `http://127.0.0.1:P` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP listener's port (it may change on a restart when the old one was taken).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many times the process was launched (1 after [`start`](Self::start)).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Path of the file receiving the sidecar's stdout and stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sidecar.log")
    }

    /// The last `lines` lines of the sidecar's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// OS process id, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `GET path` on the HTTP listener (`path` starts with `/`). Customer-data paths (all
    /// but `/metrics`, `/healthz`, `/readyz`) carry [`Sidecar::read_token`].
    pub fn http_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let open = OPEN_PATHS.iter().any(|p| path.starts_with(p));
        if open {
            return self.http_get_anonymous(path);
        }
        let auth = format!("Bearer {}", self.read_token()?);
        http_get_with_headers(
            &format!("{}{path}", self.url()),
            &[("Authorization", &auth)],
            REQUEST_TIMEOUT,
        )
    }

    /// `GET path` without a token.
    pub fn http_get_anonymous(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(&format!("{}{path}", self.url()), REQUEST_TIMEOUT)
    }

    /// A `readonly` admin token in this sidecar's ledger, made by the real `admin token
    /// create` command on first use: the customer-data routes answer only with a token.
    pub fn read_token(&self) -> anyhow::Result<&str> {
        if let Some(token) = self.read_token.get() {
            return Ok(token);
        }
        let name = format!(
            "testkit-reader-{}-{}",
            std::process::id(),
            READ_TOKEN_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let token = create_admin_token(&self.options.ledger, self.dir.path(), &name, "readonly")?;
        Ok(self.read_token.get_or_init(|| token))
    }

    /// `GET path`, which must answer 200: the body.
    ///
    /// # Panics
    /// Panics (with the sidecar's log tail) on a transport error or another status.
    pub fn get_ok(&self, path: &str) -> String {
        match self.http_get(path) {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => panic!(
                "GET {path} answered {}: {}\nsidecar log tail:\n{}",
                r.status,
                r.body,
                self.log_tail(ERROR_LOG_LINES)
            ),
            Err(e) => panic!(
                "GET {path} failed: {e:#}\nsidecar log tail:\n{}",
                self.log_tail(ERROR_LOG_LINES)
            ),
        }
    }

    /// `GET /metrics`: the Prometheus text exposition.
    ///
    /// # Panics
    /// Panics (with the log tail) if it does not answer 200.
    pub fn metrics(&self) -> String {
        self.get_ok("/metrics")
    }

    /// The sum of the series of metric `name` whose labels include `labels`; 0 when no
    /// series matches.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Kills the process at once (SIGKILL, like a crash) and reaps it. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, Duration::ZERO);
        }
    }

    /// Sends SIGTERM and waits for the process to exit, for at most
    /// [`SIDECAR_STOP_TIMEOUT`]; past that it is killed and this returns an error with the
    /// log tail. Returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the sidecar is not running"))?;
        stop_gracefully(child, "sidecar", SIDECAR_STOP_TIMEOUT, || {
            self.log_tail(ERROR_LOG_LINES)
        })
    }

    /// Starts the process again with the same options (same consumer, same ledger; the same
    /// port unless it was taken meanwhile) and waits until it is ready. A running process
    /// is stopped with SIGTERM first.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.child = None;
        self.launch_with_retries()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Removes every `CREDITGATE_*` variable of the test's environment from `cmd`, so a
/// developer's shell cannot change what the test runs.
fn clean_env(cmd: &mut Command) {
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("CREDITGATE_") {
            cmd.env_remove(name);
        }
    }
}

/// Runs a one-shot `creditgate-sidecar` subcommand (`grant …`, `ledger verify …`,
/// `reconcile …`) to completion in `dir` and returns its exit status and output.
///
/// Fails only when the binary is missing or cannot be spawned; a failing command is an
/// `Ok` with a non-zero status, for the test to judge.
pub fn sidecar_command<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    dir: &Path,
) -> anyhow::Result<Output> {
    let binary = try_cargo_bin(SIDECAR_BIN)?;
    let mut cmd = Command::new(&binary);
    cmd.args(args);
    clean_env(&mut cmd);
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", binary.display()))
}

/// The smallest operations file `run --operations` accepts. The admin listener needs one;
/// fleet control and usage events use none of its credit-operation settings.
pub const MINIMAL_OPERATIONS: &str = "credit_types = [\"api\"]\n";

/// Writes [`MINIMAL_OPERATIONS`] into `dir`, adds `--admin-listen 127.0.0.1:PORT
/// --operations FILE` to `options` and returns the admin API's base URL
/// (`http://127.0.0.1:PORT`).
pub fn add_admin_listener(options: &mut SidecarOptions, dir: &Path) -> anyhow::Result<String> {
    let ops = dir.join("operations.toml");
    fs::write(&ops, MINIMAL_OPERATIONS).with_context(|| format!("writing {}", ops.display()))?;
    let port = free_port();
    options.extra_args.extend([
        "--admin-listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--operations".to_string(),
        ops.display().to_string(),
    ]);
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Creates an admin token named `name` with `role` in `ledger`'s database, by the real
/// `creditgate-sidecar admin token create` command run in `dir`; returns the token.
pub fn create_admin_token(
    ledger: &LedgerTarget,
    dir: &Path,
    name: &str,
    role: &str,
) -> anyhow::Result<String> {
    let mut args = vec!["admin".to_string(), "token".into(), "create".into()];
    args.extend(ledger.args());
    args.extend(["--name".into(), name.into(), "--role".into(), role.into()]);
    let out = sidecar_command(&args, dir)?;
    if !out.status.success() {
        return Err(anyhow!(
            "admin token create --name {name} --role {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// How long each probe of [`wait_for_admin_api`] waits for an answer.
const ADMIN_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the admin API at `admin_url` answers at all (any status, `GET
/// /v1/admin/whoami` without a token): the admin listener starts just after the sidecar
/// reports ready, so a test calls this before its first admin call.
///
/// Fails after `timeout` with the last connection error.
pub fn wait_for_admin_api(admin_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let url = format!("{admin_url}/v1/admin/whoami");
    let started = Instant::now();
    loop {
        let error = match http_get(&url, ADMIN_PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            return Err(error.context(format!("admin API at {admin_url} not up in {timeout:?}")));
        }
        thread::sleep(crate::POLL_INTERVAL);
    }
}
