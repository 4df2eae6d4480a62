//! The `creditgate-gateway` binary as a child process on free loopback ports, and the lookup
//! of workspace binaries next to the running test executable.
//!
//! This module starts and stops the real binary; it must not reach into the gateway's
//! library, so the tests see exactly what an operator would run.

use std::env;
use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tempfile::TempDir;

use crate::http::http_get;
use crate::metrics::metric_value;
use crate::util::{free_port, log_stdio, log_tail, stop_gracefully, terminate};

/// Name of the gateway binary (and of its package).
pub const GATEWAY_BIN: &str = "creditgate-gateway";

/// Environment variable naming a directory to look for workspace binaries in before the
/// test executable's own target directory (e.g. a release build's `target/release`).
pub const BIN_DIR_ENV: &str = "CREDITGATE_BIN_DIR";

/// How long a starting gateway gets to answer `GET /readyz` with 200.
pub const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Gateway::stop`] waits after SIGTERM before it kills the process: the test
/// environment gives requests in flight at most 5 s to finish (the gateway exits as soon as
/// they have) and the runtimes 2 s to stop, so a healthy gateway is gone well within this.
pub const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeout of each admin request (`/readyz`, `/metrics`) the handle sends.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh port pairs are tried when the gateway reports a port already in use.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the gateway log put in startup errors.
const ERROR_LOG_LINES: usize = 40;

/// Environment defaults for a gateway under test, applied before [`GatewayOptions::env`]
/// so a test can override them: a test stop does not need the production grace period
/// that lets a load balancer notice a failing readiness check.
const TEST_ENV: &[(&str, &str)] = &[
    ("CREDITGATE_SHUTDOWN_GRACE_S", "5"),
    ("CREDITGATE_SHUTDOWN_TIMEOUT_S", "2"),
];

/// Finds the workspace binary `name`, or says how to build it.
///
/// Looks in `$CREDITGATE_BIN_DIR` if set, then next to the running test executable: a test
/// runs as `target/<profile>/deps/<test>-<hash>`, and the binaries of the same build are
/// `target/<profile>/<name>`. Cargo does not build other packages' binaries for a test,
/// so run `cargo build -p <name>` (same profile and `CARGO_TARGET_DIR`) first.
pub fn try_cargo_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = env::current_exe().context("locating the running test executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Some(dir) = exe.parent() {
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(profile_dir) = dir.parent()
        {
            candidates.push(profile_dir.join(name));
        }
        candidates.push(dir.join(name));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(anyhow!(
        "binary `{name}` not found (looked at {}); run cargo build -p {name} first, \
         with the same profile and CARGO_TARGET_DIR as the tests",
        looked.join(", ")
    ))
}

/// Like [`try_cargo_bin`], for tests that cannot go on without the binary.
///
/// # Panics
/// Panics with the lookup's message ("… run cargo build -p creditgate-gateway …") when
/// the binary is missing.
pub fn cargo_bin(name: &str) -> PathBuf {
    try_cargo_bin(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// How to start a [`Gateway`].
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// The pricing config, written to `config.toml` in the gateway's temp dir.
    pub config_toml: String,
    /// `--redis URL`; `None` runs the gateway on its embedded in-process store.
    pub redis_url: Option<String>,
    /// Appended to the command line after the options the handle sets.
    pub extra_args: Vec<String>,
    /// Environment variables for the process, set after the test defaults (which they may
    /// override). Every other `CREDITGATE_*` variable of the test's environment is removed.
    pub env: Vec<(String, String)>,
}

/// A running `creditgate-gateway run` process on free loopback ports.
///
/// [`Gateway::start`] runs
/// `creditgate-gateway run --config FILE --listen 127.0.0.1:P1 --admin-listen 127.0.0.1:P2
/// [--redis URL] [extra args]` with its stdout and stderr appended to `gateway.log` in its
/// own temp dir, and returns once `GET /readyz` on the admin port answers 200 and the
/// proxy port accepts connections. The process is killed (SIGKILL) and reaped on drop;
/// [`stop`](Self::stop) shuts it down gracefully instead.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    proxy_port: u16,
    admin_port: u16,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

/// Why one launch attempt failed.
enum LaunchError {
    /// The listen or admin port was taken; retry with other ports.
    PortInUse(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl Gateway {
    /// Writes the config, starts the gateway and waits (up to 20 s) until it is ready.
    ///
    /// Fails when the binary is missing (with the `cargo build` hint), when the process
    /// exits during startup or when it is not ready in time; those errors include the tail
    /// of its log.
    pub fn start(options: GatewayOptions) -> anyhow::Result<Self> {
        let binary = try_cargo_bin(GATEWAY_BIN)?;
        let dir = tempfile::Builder::new()
            .prefix("creditgate-gateway-")
            .tempdir()
            .context("creating a temp dir for the gateway")?;
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, &options.config_toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut gateway = Self {
            child: None,
            proxy_port: 0,
            admin_port: 0,
            dir,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            gateway.proxy_port = free_port();
            gateway.admin_port = free_port();
            match gateway.launch(&binary, &config_path, &options) {
                Ok(()) => return Ok(gateway),
                Err(LaunchError::PortInUse(e)) => last = Some(e),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!("gateway: ports in use on {PORT_ATTEMPTS} attempts")))
    }

    fn launch(
        &mut self,
        binary: &Path,
        config_path: &Path,
        options: &GatewayOptions,
    ) -> Result<(), LaunchError> {
        let log = self.log_path();
        let (out, err) = log_stdio(&log)
            .context("opening the gateway log")
            .map_err(LaunchError::Other)?;
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.proxy_port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port));
        if let Some(url) = &options.redis_url {
            cmd.arg("--redis").arg(url);
        }
        cmd.args(&options.extra_args);
        for (name, _) in env::vars_os() {
            if name.to_string_lossy().starts_with("CREDITGATE_") {
                cmd.env_remove(name);
            }
        }
        for (name, value) in TEST_ENV {
            cmd.env(name, value);
        }
        for (name, value) in &options.env {
            cmd.env(name, value);
        }
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))
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
                    "creditgate-gateway exited during startup ({status}); log tail ({}):\n{tail}",
                    log.display()
                );
                let in_use = tail.contains("Address already in use") || tail.contains("AddrInUse");
                return Err(if in_use {
                    LaunchError::PortInUse(e)
                } else {
                    LaunchError::Other(e)
                });
            }
            let last = match self.ready() {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > GATEWAY_READY_TIMEOUT {
                if let Some(mut child) = self.child.take() {
                    terminate(&mut child, None, Duration::ZERO);
                }
                return Err(LaunchError::Other(anyhow!(
                    "creditgate-gateway not ready within {GATEWAY_READY_TIMEOUT:?} \
                     (last: {last}); log tail ({}):\n{}",
                    log.display(),
                    log_tail(&log, ERROR_LOG_LINES)
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Ok once `/readyz` answers 200 and the proxy port accepts connections.
    fn ready(&self) -> anyhow::Result<()> {
        let readyz = http_get(
            &format!("{}/readyz", self.admin_url()),
            ADMIN_REQUEST_TIMEOUT,
        )?;
        anyhow::ensure!(
            readyz.status == 200,
            "/readyz answered {}: {}",
            readyz.status,
            readyz.body
        );
        TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, self.proxy_port).into(),
            ADMIN_REQUEST_TIMEOUT,
        )
        .context("connecting to the proxy port")?;
        Ok(())
    }

    /// Base URL of the proxy listener, `http://127.0.0.1:P1` (no trailing slash).
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// Base URL of the admin listener, `http://127.0.0.1:P2` (no trailing slash).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The proxy listener's port.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Path of the config file the gateway was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Path of the file receiving the gateway's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The last `lines` lines of the gateway's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// OS process id, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `GET /metrics` on the admin listener: the Prometheus text exposition.
    ///
    /// # Panics
    /// Panics (with the gateway's log tail) if the admin listener does not answer 200.
    pub fn metrics(&self) -> String {
        match self.admin_get("/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!(
                "GET /metrics answered {status}: {body}\ngateway log tail:\n{}",
                self.log_tail(ERROR_LOG_LINES)
            ),
            Err(e) => panic!(
                "GET /metrics failed: {e:#}\ngateway log tail:\n{}",
                self.log_tail(ERROR_LOG_LINES)
            ),
        }
    }

    /// The sum of the series of metric `name` whose labels include `labels`, read from
    /// [`metrics`](Self::metrics); 0 when no series matches (a labelled counter appears
    /// only once it has been incremented).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// `GET path` on the admin listener: the status and the body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = http_get(
            &format!("{}{path}", self.admin_url()),
            ADMIN_REQUEST_TIMEOUT,
        )?;
        Ok((r.status, r.body))
    }

    /// Sends SIGTERM and waits for the process to exit (graceful shutdown), for at most
    /// [`GATEWAY_STOP_TIMEOUT`]; past that it is killed and this returns an error with the
    /// log tail. Returns the exit status; idempotent (a second call reports an error).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the gateway is not running"))?;
        stop_gracefully(child, "gateway", GATEWAY_STOP_TIMEOUT, || {
            self.log_tail(ERROR_LOG_LINES)
        })
    }

    /// Kills the process at once (SIGKILL, like a crash) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, Duration::ZERO);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
