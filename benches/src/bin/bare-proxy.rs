//! The load bench's baseline: a bare Pingora reverse proxy that forwards every request to
//! one upstream, with nothing else in the request path.
//!
//! It is what creditgate would cost with no credit logic at all: the same Pingora version,
//! features and worker-thread count as the gateway arm, and no identification, pricing,
//! store calls, header rewriting or logging. It must stay that way, or the ratios in
//! `benches/RESULTS.md` stop meaning anything.
//!
//! ```text
//! cargo run --release -p creditgate-benches --bin bare-proxy -- \
//!     --listen 127.0.0.1:18000 --upstream 127.0.0.1:18080 --threads 1 --work-stealing false
//! curl -i http://127.0.0.1:18000/bench
//! ```

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Server, Session};
use pingora::server::configuration::ServerConf;

/// The gateway's allocator, so the baseline differs from the gateway arm only in the
/// credit work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Options of `bare-proxy`.
#[derive(Debug, Parser)]
#[command(
    name = "bare-proxy",
    about = "A bare Pingora proxy to one upstream, the load bench's baseline."
)]
struct Args {
    /// Address the proxy listens on.
    #[arg(long)]
    listen: String,
    /// The upstream's `host:port` (plain HTTP).
    #[arg(long)]
    upstream: String,
    /// Worker threads of the proxy service; the bench gives the gateway the same number.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pingora's work stealing between worker threads (`true`/`false`); the bench gives
    /// the gateway the same setting.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    work_stealing: bool,
}

/// The proxy: every request goes to `upstream`.
struct BareProxy {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        // The bench kills the proxy at the end; there is nothing to drain.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        BareProxy {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    server.run_forever()
}
