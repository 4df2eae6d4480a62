//! A throw-away PostgreSQL server on a free loopback port.

use std::env;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tempfile::TempDir;

use crate::POSTGRES_INSTALL_HINT;
use crate::util::{free_port, is_root, log_stdio, log_tail, terminate, which};

/// Name of the database created for the tests.
const DATABASE: &str = "creditgate";

/// How long a starting server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many fresh ports are tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// Environment variable that may point at a directory holding `initdb`,
/// `postgres`, `pg_isready` and `psql`, overriding the automatic lookup.
pub const PG_BIN_ENV: &str = "CREDITGATE_PG_BIN";

/// A PostgreSQL server child process listening on `127.0.0.1:<port>`.
///
/// [`Postgres::start`] runs `initdb -A trust -U postgres` into a fresh
/// directory under `/tmp`, starts `postgres` with `fsync=off` and a private
/// unix socket directory, waits until it accepts connections and creates
/// the database `creditgate`. When the test runs as root, `initdb` and
/// `postgres` run as the `postgres` system user (PostgreSQL refuses to run as
/// root) and the data directory is owned by that user.
///
/// On drop the server gets a fast shutdown (SIGINT; SIGKILL after 10 s) and
/// the directory is removed.
#[derive(Debug)]
pub struct Postgres {
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    // Declared last so it is removed after the process is gone.
    root: TempDir,
}

impl Postgres {
    /// Initialises and starts a PostgreSQL server on a free loopback port,
    /// and creates the database `creditgate`.
    ///
    /// Fails with an `apt-get install -y postgresql` hint when the server
    /// binaries are missing, and with the server log tail when it does not
    /// come up within 30 s.
    pub fn start() -> anyhow::Result<Self> {
        let bin_dir = pg_bin_dir()?;
        let run_as = if is_root() {
            Some(postgres_user().context(
                "running as root, so PostgreSQL must run as the `postgres` user, \
                 but that user does not exist (apt-get install -y postgresql creates it)",
            )?)
        } else {
            None
        };

        // The directory must be traversable by the postgres user: create it
        // under /tmp (world-traversable) and open it up to 0755.
        let base = if run_as.is_some() {
            PathBuf::from("/tmp")
        } else {
            env::temp_dir()
        };
        let root = tempfile::Builder::new()
            .prefix("creditgate-pg-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a temp dir under {}", base.display()))?;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))?;
        let mut pg = Self {
            bin_dir,
            port: 0,
            run_as,
            child: None,
            root,
        };
        for dir in [pg.data_dir(), pg.socket_dir()] {
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = run_as {
                chown(&dir, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to postgres", dir.display()))?;
            }
        }
        pg.initdb()?;

        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            pg.port = free_port();
            match pg.launch() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err((true, e)) => last = Some(e),
                Err((false, e)) => return Err(e),
            }
        }
        if let Some(e) = last {
            return Err(e.context(format!(
                "postgres: port collision on {PORT_ATTEMPTS} attempts"
            )));
        }
        pg.psql_on("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .context("creating the creditgate database")?;
        Ok(pg)
    }

    /// A command for one of the PostgreSQL server binaries, running as the
    /// `postgres` user when we are root.
    fn server_command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(binary));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", self.root.path()).env("USER", "postgres");
        }
        cmd.current_dir(self.root.path())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let log = self.root.path().join("initdb.log");
        let (out, err) = log_stdio(&log)?;
        let status = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync")
            .stdout(out)
            .stderr(err)
            .status()
            .context("running initdb")?;
        anyhow::ensure!(
            status.success(),
            "initdb failed ({status}); log tail:\n{}",
            log_tail(&log, 30)
        );
        Ok(())
    }

    /// Spawns `postgres` on `self.port` and waits until it accepts
    /// connections. On error, the flag tells whether the port was taken.
    fn launch(&mut self) -> Result<(), (bool, anyhow::Error)> {
        let port = self.port;
        let log = self.log_path();
        let (out, err) = log_stdio(&log).map_err(|e| (false, e.into()))?;
        let mut child = self
            .server_command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning postgres")
            .map_err(|e| (false, e))?;
        let started = Instant::now();
        let data_dir = self.data_dir();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = log_tail(&log, 30);
                let in_use = tail.contains("Address already in use")
                    || tail.contains("could not bind")
                    || tail.contains("could not create any TCP/IP sockets");
                return Err((
                    in_use,
                    anyhow!(
                        "postgres on 127.0.0.1:{port} exited during startup ({status}); \
                         log tail ({}):\n{tail}",
                        log.display()
                    ),
                ));
            }
            if self.is_ready() {
                // Make sure it is our server that answers, not one that
                // already occupied the port.
                if let Ok(dir) = self.psql_on("postgres", "SHOW data_directory")
                    && Path::new(&dir) == data_dir
                {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                terminate(&mut child, None, Duration::ZERO);
                return Err((
                    false,
                    anyhow!(
                        "postgres on 127.0.0.1:{port} did not accept connections within \
                         {START_TIMEOUT:?}; log tail ({}):\n{}",
                        log.display(),
                        log_tail(&log, 30)
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_isready` against our port.
    fn is_ready(&self) -> bool {
        let bin = self.bin_dir.join("pg_isready");
        let bin = if bin.exists() {
            bin
        } else {
            PathBuf::from("pg_isready")
        };
        Command::new(bin)
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL of the test database,
    /// `postgres://postgres@127.0.0.1:PORT/creditgate`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// Connection URL of database `db` on this server (trust auth, user
    /// `postgres`).
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Name of the database created by [`Postgres::start`] (`creditgate`).
    pub fn database(&self) -> &'static str {
        DATABASE
    }

    /// The PostgreSQL data directory (removed on drop).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    /// Directory of the PostgreSQL binaries in use (e.g.
    /// `/usr/lib/postgresql/15/bin`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Path of the server log (postgres stdout/stderr).
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Runs `sql` with `psql` against the `creditgate` database (unaligned,
    /// tuples only, stop on error) and returns the trimmed output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_on(DATABASE, sql)
    }

    /// Runs `sql` with `psql` against database `db`; see [`Postgres::psql`].
    pub fn psql_on(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let psql = self.bin_dir.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            which("psql").ok_or_else(|| {
                anyhow!("`psql` is not installed; install it with: {POSTGRES_INSTALL_HINT}")
            })?
        };
        let out = Command::new(psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        anyhow::ensure!(
            out.status.success(),
            "psql {sql:?} on {db} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates another database `name` (handy for isolating tests that share
    /// one server) and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.psql_on("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fast shutdown (SIGINT, SIGKILL after 10 s) and wait for the process.
    /// The data directory is kept, so [`restart`](Self::restart) can start
    /// the server again on the same port. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Some("INT"), Duration::from_secs(10));
        }
    }

    /// Stops the server if running and starts it again on the same port
    /// with the same data; waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().map_err(|(_, e)| e)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds the directory with `initdb` and `postgres`: `$CREDITGATE_PG_BIN`,
/// else the newest `/usr/lib/postgresql/<version>/bin`, else `$PATH`.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            has_server(&dir),
            "{PG_BIN_ENV}={} does not contain initdb and postgres; unset it or \
             install them with: {POSTGRES_INSTALL_HINT}",
            dir.display()
        );
        return Ok(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let (Some(initdb), Some(_)) = (which("initdb"), which("postgres"))
        && let Some(dir) = initdb.parent()
    {
        return Ok(dir.to_path_buf());
    }
    Err(anyhow!(
        "PostgreSQL server binaries (initdb, postgres) are not installed (looked in \
         /usr/lib/postgresql/*/bin and PATH); install them with: {POSTGRES_INSTALL_HINT}"
    ))
}

/// uid and gid of the `postgres` system user.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stderr(Stdio::null())
            .output()
            .context("running id")?;
        anyhow::ensure!(out.status.success(), "`id {flag} postgres` failed");
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}
