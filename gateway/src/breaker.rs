//! A circuit breaker for credit store calls, so a dead Redis costs each request at most
//! one timeout and most requests nothing at all.
//!
//! After [`FAILURES_TO_OPEN`] consecutive failures the circuit opens: calls are refused at
//! once for [`OPEN_MS`]. Then one call is let through as a probe; its success closes the
//! circuit, its failure opens it again. Lock-free; no I/O.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Consecutive store failures that open the circuit: more than a blip (one lost packet, one
/// failover), few enough that an outage costs only a handful of timeouts.
pub const FAILURES_TO_OPEN: u32 = 5;

/// How long an open circuit refuses calls before it probes again, in milliseconds: short
/// enough that a recovered Redis is used again within a second.
pub const OPEN_MS: u64 = 1_000;

/// The breaker's state, shared by every request.
#[derive(Debug)]
pub struct CircuitBreaker {
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are refused; 0 while closed.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    failures_to_open: u32,
    open_ms: u64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(FAILURES_TO_OPEN, OPEN_MS)
    }
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failures_to_open` failures for `open_ms`.
    pub fn new(failures_to_open: u32, open_ms: u64) -> Self {
        Self {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            failures_to_open: failures_to_open.max(1),
            open_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a call may go to the store now. While open it answers false, except for one
    /// probe once the open period has passed.
    pub fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        self.probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the circuit is open (calls refused).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// Records a successful call: the circuit closes.
    pub fn success(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probe_in_flight.store(false, Ordering::Release);
    }

    /// Records a failed call (timeout or unreachable store).
    pub fn failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.failures_to_open || self.is_open() {
            self.open_until_ms
                .store(self.now_ms() + self.open_ms, Ordering::Release);
            self.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let b = CircuitBreaker::new(3, 20);
        b.failure();
        b.failure();
        assert!(b.allow(), "two failures keep it closed");
        b.success();
        b.failure();
        b.failure();
        assert!(b.allow(), "success reset the count");
        b.failure();
        assert!(!b.allow(), "the third consecutive failure opened it");
        std::thread::sleep(std::time::Duration::from_millis(25));
        assert!(b.allow(), "one probe after the open period");
        assert!(!b.allow(), "only one probe at a time");
        b.failure();
        assert!(!b.allow(), "a failed probe opens it again");
        std::thread::sleep(std::time::Duration::from_millis(25));
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow() && !b.is_open());
    }
}
