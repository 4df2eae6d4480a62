//! The fake model server of the SSE load bench (`benches/run-sse.sh`): the testkit's
//! `ModelServer` on a given port, serving until killed.
//!
//! ```text
//! model-server --listen-port 8081 &
//! curl -N 'http://127.0.0.1:8081/v1/stream?chunks=3'
//! ```

use clap::Parser;
use creditgate_testkit::ModelServer;

/// Command line.
#[derive(Parser)]
struct Args {
    /// The loopback port to listen on.
    #[arg(long)]
    listen_port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ModelServer::start_on(args.listen_port)?;
    eprintln!("model server on {}", server.addr());
    server.wait();
    Ok(())
}
