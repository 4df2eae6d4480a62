//! No credential of a connection string reaches a log or a terminal: the gateway and the
//! sidecar started (or failing to start) with `redis://user:PASSWORD@…`, and their
//! `--help` with the URLs in the environment, never print the password.
//!
//! Needs `redis-server` and the built binaries (`cargo build -p creditgate-gateway -p
//! creditgate-sidecar`).

use std::fs;
use std::process::{Command, Output};

use creditgate_testkit::{
    Gateway, GatewayOptions, LedgerTarget, RedisServer, Sidecar, SidecarOptions, Upstream,
    base_config, cargo_bin, sidecar_command,
};

/// The password every URL of these tests carries; nothing may print it.
const SECRET: &str = "pw-7c1f9e";

/// Log everything, so that a secret printed at any level is seen.
const LOG_LEVEL: (&str, &str) = ("RUST_LOG", "debug");

/// A URL to `port` with [`SECRET`] as the password of Redis' `default` user, which takes
/// any password while it has none.
fn url_with_secret(port: u16) -> String {
    format!("redis://default:{SECRET}@127.0.0.1:{port}/")
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} prints the password:\n{text}"
    );
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_gateway_never_prints_a_redis_password() {
    let redis = RedisServer::start().expect("redis");
    let upstream = Upstream::start().expect("upstream");
    let gateway = Gateway::start(GatewayOptions {
        config_toml: base_config(upstream.addr()),
        redis_url: Some(url_with_secret(redis.port())),
        env: vec![(LOG_LEVEL.0.into(), LOG_LEVEL.1.into())],
        ..GatewayOptions::default()
    })
    .expect("gateway on a Redis URL with a password");
    let log = fs::read_to_string(gateway.log_path()).expect("gateway log");
    assert_no_secret("the gateway's start-up log", &log);
    assert!(
        log.contains("default:***@127.0.0.1"),
        "the log still names the Redis it connected to:\n{log}"
    );

    // A Redis that is not there: the start-up error names the URL, not its password.
    let unreachable = url_with_secret(1);
    let binary = cargo_bin("creditgate-gateway");
    let config = gateway.config_path();
    let failed = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--redis", &unreachable])
        .env(LOG_LEVEL.0, LOG_LEVEL.1)
        .output()
        .expect("run the gateway");
    assert!(!failed.status.success(), "{}", printed(&failed));
    assert_no_secret(
        "the gateway's error on an unreachable Redis",
        &printed(&failed),
    );
    assert!(
        printed(&failed).contains("default:***@"),
        "{}",
        printed(&failed)
    );

    let help = Command::new(&binary)
        .args(["run", "--help"])
        .env("CREDITGATE_REDIS_URL", &unreachable)
        .output()
        .expect("gateway --help");
    assert!(help.status.success(), "{}", printed(&help));
    assert_no_secret("the gateway's --help", &printed(&help));
}

#[test]
fn the_sidecar_never_prints_a_redis_or_postgres_password() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = SidecarOptions::new(
        url_with_secret(redis.port()),
        LedgerTarget::Sqlite(dir.path().join("ledger.sqlite")),
    );
    options.env.push((LOG_LEVEL.0.into(), LOG_LEVEL.1.into()));
    let sidecar = Sidecar::start(options).expect("sidecar on a Redis URL with a password");
    let log = fs::read_to_string(sidecar.log_path()).expect("sidecar log");
    assert_no_secret("the sidecar's start-up log", &log);

    let unreachable = url_with_secret(1);
    let failed = sidecar_command(
        &["inspect", "balance", "--redis", &unreachable, "alice"],
        dir.path(),
    )
    .expect("sidecar inspect");
    assert!(!failed.status.success(), "{}", printed(&failed));
    assert_no_secret(
        "the sidecar's error on an unreachable Redis",
        &printed(&failed),
    );
    assert!(
        printed(&failed).contains("default:***@"),
        "{}",
        printed(&failed)
    );

    let postgres = format!("postgres://ledger:{SECRET}@127.0.0.1:1/ledger?password={SECRET}");
    let failed = sidecar_command(&["ledger", "verify", "--postgres", &postgres], dir.path())
        .expect("sidecar ledger verify");
    assert!(!failed.status.success(), "{}", printed(&failed));
    assert_no_secret(
        "the sidecar's error on an unreachable Postgres",
        &printed(&failed),
    );

    let help = Command::new(cargo_bin("creditgate-sidecar"))
        .args(["run", "--help"])
        .env("CREDITGATE_REDIS_URL", &unreachable)
        .env("CREDITGATE_LEDGER_POSTGRES", &postgres)
        .output()
        .expect("sidecar --help");
    assert!(help.status.success(), "{}", printed(&help));
    assert_no_secret("the sidecar's --help", &printed(&help));
}
