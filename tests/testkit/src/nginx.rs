//! A real `nginx` process for tests of the OpenResty module (`lua-compat/openresty/`): its
//! own prefix dir, a generated `nginx.conf`, free loopback ports and its own error log; one
//! process (`master_process off`), killed and reaped on drop.
//!
//! It knows nothing about credits: the test writes the `http { … }` block. A missing nginx
//! or Lua module is an error naming `.ci/run`, never a skipped test.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tempfile::TempDir;

use crate::util::{free_port, log_tail, which};

/// The Debian packages the module needs, as `.ci/run` installs them.
pub const NGINX_PACKAGES: &str = "nginx libnginx-mod-http-lua lua-nginx-redis lua-cjson";

/// Where Debian's `libnginx-mod-http-lua` puts the ngx_lua module.
pub const NGINX_LUA_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_lua_module.so";

/// Where Debian's `libnginx-mod-http-ndk` (a dependency of the Lua module) puts its module.
pub const NGINX_NDK_MODULE: &str = "/usr/lib/nginx/modules/ndk_http_module.so";

/// How long nginx gets to accept connections on every listen port after starting: 20 s,
/// generous for a loaded CI machine (it takes milliseconds when idle).
pub const NGINX_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running nginx; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    ports: Vec<u16>,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

/// The nginx binary and the Lua module, or an error saying how to install them.
pub fn require_nginx() -> anyhow::Result<PathBuf> {
    let missing = || {
        anyhow!(
            "nginx with the Lua module is not installed; run `.ci/run` (or \
             `apt-get install -y {NGINX_PACKAGES}`)"
        )
    };
    let binary = which("nginx").ok_or_else(missing)?;
    for module in [NGINX_LUA_MODULE, NGINX_NDK_MODULE] {
        if !Path::new(module).exists() {
            return Err(missing().context(format!("{module} is missing")));
        }
    }
    if !Path::new("/usr/share/lua/5.1/nginx/redis.lua").exists() {
        return Err(missing().context("resty.redis (lua-nginx-redis) is missing"));
    }
    Ok(binary)
}

impl Nginx {
    /// Starts nginx with the `http { … }` block `http(ports)` writes, `ports` being
    /// `listen_ports` free loopback ports (the first is [`Nginx::url`]'s); returns once
    /// every port accepts connections.
    pub fn start(listen_ports: usize, http: impl FnOnce(&[u16]) -> String) -> anyhow::Result<Self> {
        let binary = require_nginx()?;
        let dir = tempfile::Builder::new()
            .prefix("creditgate-nginx-")
            .tempdir()
            .context("creating nginx's prefix dir")?;
        fs::create_dir_all(dir.path().join("logs"))?;
        let ports: Vec<u16> = (0..listen_ports.max(1)).map(|_| free_port()).collect();
        let conf = format!(
            "load_module {NGINX_NDK_MODULE};\nload_module {NGINX_LUA_MODULE};\n\
             master_process off;\ndaemon off;\nworker_processes 1;\n\
             error_log {log} info;\npid {pid};\nevents {{ worker_connections 1024; }}\n\
             http {{\n{http}\n}}\n",
            log = dir.path().join("logs/error.log").display(),
            pid = dir.path().join("logs/nginx.pid").display(),
            http = http(&ports),
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("logs/stderr.log"))?)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Self {
            child: Some(child),
            ports,
            dir,
        };
        nginx.wait_ready()?;
        Ok(nginx)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + NGINX_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(anyhow!(
                    "nginx exited during start-up ({status}):\n{}\n{}",
                    log_tail(&self.dir.path().join("logs/stderr.log"), 20),
                    self.error_log_tail(20)
                ));
            }
            let up = self
                .ports
                .iter()
                .all(|port| TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).is_ok());
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "nginx not listening after {NGINX_READY_TIMEOUT:?}:\n{}",
                    self.error_log_tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The listen ports given to the `http` block, in order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `http://127.0.0.1:<first port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    /// The prefix dir (nginx.conf, logs/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the error log, for failure messages.
    pub fn error_log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("logs/error.log"), lines)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
