//! Shared helpers: port allocation, binary lookup, process handling and a
//! minimal synchronous RESP client used for readiness checks.

use std::collections::HashSet;
use std::env;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Ports handed out by this process; never handed out twice.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Records `ports` as handed out if none of them has been handed out before.
fn claim(ports: &[u16]) -> bool {
    let mut set = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| set.contains(p)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

/// Returns a currently free TCP port on `127.0.0.1`.
///
/// The port is found by binding `127.0.0.1:0`; in addition, every returned
/// port is remembered process-wide and never returned again, so tests that
/// run in parallel threads do not receive the same port.
///
/// # Panics
/// Panics if no port can be bound at all (loopback unusable).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("creditgate-testkit: cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("creditgate-testkit: no local addr")
            .port();
        drop(listener);
        if claim(&[port]) {
            return port;
        }
    }
    panic!("creditgate-testkit: could not find a free port not handed out yet");
}

/// Returns a free port `p` for a Redis Cluster node such that `p + 10000`
/// (the cluster bus port) is free as well and below 65536.
///
/// Ports are drawn at random from `10000..22768`, so both `p` and `p + 10000`
/// lie below the kernel's usual ephemeral range (32768+) and are unlikely to
/// be grabbed by outgoing connections. Both ports are remembered
/// process-wide like in [`free_port`].
///
/// # Panics
/// Panics if no such pair is found after many attempts.
pub fn free_cluster_port() -> u16 {
    for _ in 0..10_000 {
        let port: u16 = rand::random_range(10_000..22_768);
        let bus = port + 10_000;
        let ok = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok();
        if ok && claim(&[port, bus]) {
            return port;
        }
    }
    panic!("creditgate-testkit: could not find a free (port, port+10000) pair");
}

/// Looks `binary` up like a shell would: if it contains a `/` it is checked
/// as a path, otherwise every directory of `$PATH` (plus `/usr/sbin` and
/// `/sbin`) is searched for an executable file of that name.
pub fn which(binary: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_exec(&p).then_some(p);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(binary))
        .find(|p| is_exec(p))
}

/// Like [`which`], but returns an error that names the package to install
/// when `binary` is missing, e.g.
/// `require("redis-server", "apt-get install -y redis-server redis-tools")`.
///
/// Test constructors use this so that a missing binary makes the test fail
/// with an actionable message instead of silently passing.
pub fn require(binary: &str, install_hint: &str) -> anyhow::Result<PathBuf> {
    which(binary).ok_or_else(|| {
        anyhow::anyhow!(
            "`{binary}` is not installed (not found in PATH); install it with: {install_hint}"
        )
    })
}

/// True when the current process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the effective uid of the process.
    if let Ok(m) = fs::metadata("/proc/self") {
        return m.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Last `lines` lines of a log file (or a note that it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Opens `path` for appending and returns two handles usable as a child's
/// stdout and stderr.
pub(crate) fn log_stdio(path: &Path) -> io::Result<(Stdio, Stdio)> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let err = file.try_clone()?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

/// Sends `signal` (e.g. `"INT"`) to `child`, waits up to `grace` for it to
/// exit, then kills it with SIGKILL and reaps it.
pub(crate) fn terminate(child: &mut Child, signal: Option<&str>, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(sig) = signal {
        let sent = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if sent {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends one command to the Redis server on `127.0.0.1:port` and returns the
/// reply as a string (simple string, bulk string or integer). Error replies
/// and transport errors are returned as `Err`.
pub(crate) fn redis_cmd(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req)?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => anyhow::bail!("redis error reply: {rest}"),
        "$" => {
            let len: i64 = rest.parse()?;
            if len < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; len as usize + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => anyhow::bail!("unexpected redis reply: {line:?}"),
    }
}

/// Polls `check` every 20 ms until it returns `Ok(true)` or `timeout`
/// elapses; returns the last error/false reason on timeout.
pub(crate) fn wait_until(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?}: {last}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to exit (a graceful shutdown);
/// past that it is killed and the error names `what` with the log tail `log` gives.
/// Returns the exit status.
pub(crate) fn stop_gracefully(
    mut child: Child,
    what: &str,
    timeout: Duration,
    log: impl FnOnce() -> String,
) -> anyhow::Result<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("running kill -TERM: {e}"))?;
    anyhow::ensure!(sent.success(), "kill -TERM {} failed", child.id());
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    terminate(&mut child, None, Duration::ZERO);
    Err(anyhow::anyhow!(
        "the {what} did not exit within {timeout:?} of SIGTERM and was killed; log tail:\n{}",
        log()
    ))
}
