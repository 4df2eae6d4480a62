//! Integration tests for [`creditgate_testkit::RedisServer`] and the helpers.

use std::collections::HashSet;
use std::time::Instant;

use creditgate_testkit::{RedisServer, free_port, require, which};

fn connect(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("client")
        .get_connection()
        .expect("connect")
}

#[test]
fn set_get_roundtrip() {
    let t = Instant::now();
    let server = RedisServer::start().expect("start redis-server");
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );

    let mut con = connect(&server);
    redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .exec(&mut con)
        .unwrap();
    let v: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
    assert_eq!(v, "hello");
    assert_eq!(server.cli(&["GET", "greeting"]).unwrap(), "hello");
    // Persistence is off.
    assert_eq!(server.cli(&["CONFIG", "GET", "save"]).unwrap(), "save");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nno"
    );
    eprintln!("set_get_roundtrip took {:?}", t.elapsed());
}

#[test]
fn stop_and_restart_on_same_port() {
    let t = Instant::now();
    let mut server = RedisServer::start().expect("start redis-server");
    let port = server.port();
    let pid = server.pid().unwrap();
    server.cli(&["SET", "k", "v"]).unwrap();

    server.stop();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    assert!(
        redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .is_err()
    );

    server.restart().expect("restart");
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid().unwrap(), pid);
    // No persistence: the restarted server is empty.
    assert_eq!(server.cli(&["EXISTS", "k"]).unwrap(), "0");
    let mut con = connect(&server);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    eprintln!("stop_and_restart_on_same_port took {:?}", t.elapsed());
}

#[test]
fn start_with_args_overrides() {
    let server = RedisServer::start_with_args(&["--maxmemory", "10mb"]).expect("start");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]).unwrap(),
        "maxmemory\n10485760"
    );
}

#[test]
fn bad_args_error_includes_log() {
    let err = RedisServer::start_with_args(&["--no-such-directive", "1"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("no-such-directive"), "{msg}");
}

#[test]
fn process_is_killed_on_drop() {
    let server = RedisServer::start().expect("start");
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn process_is_killed_when_test_panics() {
    let pid = std::sync::Mutex::new(0);
    let result = std::panic::catch_unwind(|| {
        let server = RedisServer::start().expect("start");
        *pid.lock().unwrap() = server.pid().unwrap();
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let pid = *pid.lock().unwrap();
    assert_ne!(pid, 0);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn free_ports_are_unique() {
    let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    let unique: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len());
    assert!(ports.iter().all(|&p| p > 0));
}

#[test]
fn which_and_require() {
    assert!(which("sh").is_some());
    assert!(which("definitely-not-a-binary-xyz").is_none());
    let err = require("definitely-not-a-binary-xyz", "apt-get install -y xyz").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("apt-get install -y xyz"), "{msg}");
    assert!(msg.contains("definitely-not-a-binary-xyz"), "{msg}");
}
