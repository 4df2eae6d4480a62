//! Waiting for what the binaries do in the background: a condition polled until a deadline,
//! and the wall clock that deadlines and event times are written in.
//!
//! Every wait here is bounded, so a stuck binary fails its test instead of hanging it.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often [`wait_for`] checks its condition: short against every timeout the tests use,
/// long enough not to busy the two cores the binaries run on.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Milliseconds since the Unix epoch, the unit of every time the protocol and ledger store.
///
/// # Panics
/// Panics when the clock is before 1970.
pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_millis()).expect("ms fit u64")
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns true, for at most `timeout`.
///
/// # Panics
/// Panics naming `what` and showing `log()` (say, a process's log tail) when `check` is
/// still false after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\nlog:\n{}",
            log()
        );
        thread::sleep(POLL_INTERVAL);
    }
}
