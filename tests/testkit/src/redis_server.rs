//! A single `redis-server` process on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tempfile::TempDir;

use crate::REDIS_INSTALL_HINT;
use crate::util::{free_port, log_stdio, log_tail, redis_cmd, require, terminate};

/// How long a starting server gets to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports are tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// Why launching a server failed.
pub(crate) enum LaunchError {
    /// The port (or cluster bus port) was already in use; retry elsewhere.
    PortInUse(anyhow::Error),
    /// Any other failure; retrying will not help.
    Other(anyhow::Error),
}

impl From<LaunchError> for anyhow::Error {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::PortInUse(e) | LaunchError::Other(e) => e,
        }
    }
}

/// A `redis-server` child process listening on `127.0.0.1:<port>`.
///
/// Started with `--save ""`, `--appendonly no`, `--daemonize no` and its own
/// temporary `--dir`. The process is killed and reaped when the value is
/// dropped (also during a test panic); the directory is removed afterwards.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port and waits (up to
    /// 10 s) until it answers `PING`.
    ///
    /// Fails with an `apt-get install -y redis-server redis-tools` hint when
    /// `redis-server` is not installed, and with the server's log tail when
    /// it does not come up.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_args(&[])
    }

    /// Like [`RedisServer::start`], but appends `args` to the command line
    /// (later arguments override the defaults), e.g.
    /// `&["--maxmemory", "10mb"]`.
    pub fn start_with_args(args: &[&str]) -> anyhow::Result<Self> {
        let binary = require("redis-server", REDIS_INSTALL_HINT)?;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on(&binary, free_port(), &args, "creditgate-redis-") {
                Ok(server) => return Ok(server),
                Err(LaunchError::PortInUse(e)) => last = Some(e),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "redis-server: port collision on {PORT_ATTEMPTS} attempts"
            )))
    }

    /// Starts a server on exactly `port` (used by the cluster, which picks
    /// its own ports).
    pub(crate) fn start_on(
        binary: &Path,
        port: u16,
        args: &[String],
        prefix: &str,
    ) -> Result<Self, LaunchError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temp dir for redis-server")
            .map_err(LaunchError::Other)?;
        let mut server = Self {
            binary: binary.to_path_buf(),
            port,
            extra_args: args.to_vec(),
            child: None,
            dir,
        };
        server.launch()?;
        Ok(server)
    }

    /// Spawns the process on `self.port` and waits until it answers.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let port = self.port;
        let log = self.log_path();
        let (out, err) = log_stdio(&log)
            .context("opening the redis-server log file")
            .map_err(LaunchError::Other)?;
        let mut child = Command::new(&self.binary)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))
            .map_err(LaunchError::Other)?;
        let pid = child.id();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = log_tail(&log, 30);
                let e = anyhow!(
                    "redis-server on 127.0.0.1:{port} exited during startup ({status}); \
                     log tail ({}):\n{tail}",
                    log.display()
                );
                return Err(if tail.contains("Address already in use") {
                    LaunchError::PortInUse(e)
                } else {
                    LaunchError::Other(e)
                });
            }
            if answers_as(port, pid) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                terminate(&mut child, None, Duration::ZERO);
                return Err(LaunchError::Other(anyhow!(
                    "redis-server on 127.0.0.1:{port} did not answer PING within {START_TIMEOUT:?}; \
                     log tail ({}):\n{}",
                    log.display(),
                    log_tail(&log, 30)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCP port the server listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory (`--dir`), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the file receiving the server's stdout/stderr (its log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// OS process id of the running server, `None` after [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    /// Its port and directory are kept so that [`restart`](Self::restart)
    /// can bring it back on the same port. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, Duration::ZERO);
        }
    }

    /// Stops the server if it is running and starts it again on the same
    /// port, with the same arguments and directory (data is not persisted,
    /// so the new instance starts empty unless it is a cluster node, which
    /// re-reads its `nodes.conf`). Waits until it answers `PING`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()?;
        Ok(())
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT <args>` and returns its trimmed
    /// stdout. Fails if `redis-cli` is missing or exits unsuccessfully
    /// (note that redis-cli exits with 0 on Redis error replies).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let cli = require("redis-cli", REDIS_INSTALL_HINT)?;
        let out = Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sends one command over a raw connection (used by the cluster setup).
    pub(crate) fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        redis_cmd(self.port, args).with_context(|| format!("{args:?} on port {}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True if the server on `port` answers PING and is the process `pid` (and
/// not some other server that already occupied the port).
fn answers_as(port: u16, pid: u32) -> bool {
    if !matches!(redis_cmd(port, &["PING"]).as_deref(), Ok("PONG")) {
        return false;
    }
    let Ok(info) = redis_cmd(port, &["INFO", "server"]) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .is_some_and(|p| p.trim() == pid.to_string())
}
