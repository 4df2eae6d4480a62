//! The soak and fault run (issue 13, point 9): two real gateways, the real sidecar on an
//! SQLite ledger, a real Redis with AOF and a counting upstream, driven with gateway traffic,
//! usage events and grants while the sidecar is killed with SIGKILL, Redis is killed and
//! restarted on its AOF, everything is flushed once, a lagging replica is promoted and a
//! gateway is killed; then the ledger must equal Redis with nothing pending, the streams
//! trimmed, no dead letter unexplained, nobody overspent, events and grants applied once and
//! memory flat.
//!
//! 60 s of traffic by default; run by hand (ignored until its open findings in
//! docs/RELIABILITY.md are fixed), longer with:
//! `CREDITGATE_SOAK_SECS=900 cargo test -p creditgate-e2e --test soak -- --ignored --nocapture`
//! (`CREDITGATE_SOAK_SEED` changes the random choices). Needs `redis-server` and the built
//! binaries (`cargo build -p creditgate-gateway -p creditgate-sidecar`).

use creditgate_testkit::{SoakConfig, run_soak};

#[test]
#[ignore = "open findings (docs/RELIABILITY.md): after a promoted lagging replica a customer's \
            Redis total can stay off the ledger's sum although rebuilt, and a grant can be \
            applied twice in Redis; run by hand with --ignored"]
fn the_ledger_holds_through_load_and_faults() {
    let config = SoakConfig::from_env();
    let report = run_soak(config);
    println!("{report}");
    assert!(
        report.failures().is_empty(),
        "the soak run failed {} checks:\n{report}",
        report.failures().len()
    );
}
