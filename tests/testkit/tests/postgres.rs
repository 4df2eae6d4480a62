//! Integration tests for [`creditgate_testkit::Postgres`].

use std::process::Command;
use std::time::Instant;

use creditgate_testkit::Postgres;

#[test]
fn postgres_starts_and_answers() {
    let t = Instant::now();
    let mut pg = Postgres::start().expect("start postgres");
    let started = t.elapsed();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/creditgate", pg.port())
    );
    assert_eq!(pg.psql("select 1").unwrap(), "1");
    assert_eq!(pg.psql("select current_database()").unwrap(), "creditgate");

    // A plain psql from PATH works with the URL too.
    let out = Command::new("psql")
        .args([pg.url().as_str(), "-X", "-A", "-t", "-c", "select 1"])
        .output()
        .expect("psql in PATH");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    pg.psql("create table t (x int); insert into t values (42)")
        .unwrap();
    pg.restart().expect("restart");
    assert_eq!(pg.psql("select x from t").unwrap(), "42");

    let url = pg.create_database("other").unwrap();
    assert!(url.ends_with("/other"));

    let dir = pg.data_dir();
    pg.stop();
    assert!(!pg.is_running());
    drop(pg);
    assert!(!dir.exists());
    eprintln!(
        "postgres_starts_and_answers: start {started:?}, total {:?}",
        t.elapsed()
    );
}
