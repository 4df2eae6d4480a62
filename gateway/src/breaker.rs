//! A circuit breaker for credit store calls, so a dead Redis costs each request at most
//! one timeout and most requests nothing at all.
//!
//! After [`FAILURES_TO_OPEN`] consecutive failures the circuit opens: calls are refused at
//! once for [`OPEN_MS`]. Then one call is let through as a probe; its success closes the
//! circuit, its failure opens it again. Every call holds a [`Permit`] that records its
//! outcome when resolved or dropped, so a probe can never stay in flight after its call
//! ended, whatever way it ended: the circuit is never shut for longer than its open period
//! plus one call. Lock-free; no I/O.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Consecutive store failures that open the circuit: more than a blip (one lost packet, one
/// failover), few enough that an outage costs only a handful of timeouts.
pub const FAILURES_TO_OPEN: u32 = 5;

/// How long an open circuit refuses calls before it probes again, in milliseconds: short
/// enough that a recovered Redis is used again within a second.
pub const OPEN_MS: u64 = 1_000;

/// What a call told the breaker about the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The store answered.
    Success,
    /// The store failed: a timeout, unreachable, or an error reply (OOM, LOADING,
    /// READONLY, MASTERDOWN, BUSY …).
    Failure,
    /// Nothing learned about the store's health (the call was dropped, or refused before
    /// it was sent): a probe is released so the next call may probe again.
    Unknown,
}

/// Where the breaker reads the time.
#[derive(Debug)]
enum Clock {
    Real(Instant),
    /// Milliseconds set by the tests, which drive time themselves.
    #[cfg(test)]
    Manual(AtomicU64),
}

/// The breaker's state, shared by every request.
#[derive(Debug)]
pub struct CircuitBreaker {
    clock: Clock,
    consecutive_failures: AtomicU32,
    /// Milliseconds on `clock` until which calls are refused; 0 while closed.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    failures_to_open: u32,
    open_ms: u64,
}

/// Leave to make one store call. Resolve it with the call's outcome; dropping it unresolved
/// (a cancelled request) counts as [`CallOutcome::Unknown`].
#[must_use = "a permit records the call's outcome when resolved or dropped"]
#[derive(Debug)]
pub struct Permit<'b> {
    breaker: &'b CircuitBreaker,
    probe: bool,
    outcome: CallOutcome,
}

impl Permit<'_> {
    /// Whether this call is the half-open probe of an open circuit.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the call's outcome.
    pub fn resolve(mut self, outcome: CallOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.breaker.record(self.probe, self.outcome);
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(FAILURES_TO_OPEN, OPEN_MS)
    }
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failures_to_open` failures for `open_ms`.
    pub fn new(failures_to_open: u32, open_ms: u64) -> Self {
        Self::with_clock(Clock::Real(Instant::now()), failures_to_open, open_ms)
    }

    fn with_clock(clock: Clock, failures_to_open: u32, open_ms: u64) -> Self {
        Self {
            clock,
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            failures_to_open: failures_to_open.max(1),
            open_ms,
        }
    }

    /// Never 0, which `open_until_ms` reserves for "closed".
    fn now_ms(&self) -> u64 {
        match &self.clock {
            Clock::Real(epoch) => epoch.elapsed().as_millis() as u64 + 1,
            #[cfg(test)]
            Clock::Manual(ms) => ms.load(Ordering::Acquire) + 1,
        }
    }

    /// Leave for a call to the store now, or `None` while the circuit is open. Once the
    /// open period has passed, one call at a time gets a probe permit.
    pub fn allow(&self) -> Option<Permit<'_>> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            outcome: CallOutcome::Unknown,
        };
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Some(permit(false));
        }
        if self.now_ms() < until {
            return None;
        }
        self.probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| permit(true))
    }

    /// Whether the circuit is open (calls refused, but for the probe once the open period
    /// has passed).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// A call's outcome. A success closes the circuit (whichever call it was: the store
    /// answered). A failed probe opens it again for the open period; other failures count
    /// towards opening a closed circuit and do not extend an open one, so calls sent before
    /// it opened cannot push the next probe back.
    fn record(&self, probe: bool, outcome: CallOutcome) {
        match outcome {
            CallOutcome::Success => {
                self.consecutive_failures.store(0, Ordering::Release);
                self.open_until_ms.store(0, Ordering::Release);
            }
            CallOutcome::Failure if probe => {
                self.open_until_ms
                    .store(self.now_ms() + self.open_ms, Ordering::Release);
            }
            CallOutcome::Failure => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.failures_to_open {
                    let until = self.now_ms() + self.open_ms;
                    let _ = self.open_until_ms.compare_exchange(
                        0,
                        until,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
            CallOutcome::Unknown => {}
        }
        // Released last, after a failed probe moved the deadline, so no other call can slip
        // in as a probe between the two.
        if probe {
            self.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn manual(failures_to_open: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::with_clock(Clock::Manual(AtomicU64::new(0)), failures_to_open, open_ms)
    }

    fn advance(b: &CircuitBreaker, ms: u64) {
        let Clock::Manual(now) = &b.clock else {
            unreachable!("tests use the manual clock")
        };
        now.fetch_add(ms, Ordering::AcqRel);
    }

    fn call(b: &CircuitBreaker, outcome: CallOutcome) -> bool {
        b.allow().map(|p| p.resolve(outcome)).is_some()
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        use CallOutcome::{Failure, Success};
        let b = manual(3, 20);
        assert!(call(&b, Failure) && call(&b, Failure));
        assert!(
            b.allow().is_some_and(|p| !p.is_probe()),
            "two failures keep it closed"
        );
        assert!(call(&b, Success) && call(&b, Failure) && call(&b, Failure));
        assert!(b.allow().is_some(), "success reset the count");
        assert!(call(&b, Failure));
        assert!(
            b.allow().is_none(),
            "the third consecutive failure opened it"
        );
        advance(&b, 20);
        let probe = b.allow().expect("one probe after the open period");
        assert!(probe.is_probe());
        assert!(b.allow().is_none(), "only one probe at a time");
        probe.resolve(Failure);
        assert!(b.allow().is_none(), "a failed probe opens it again");
        advance(&b, 20);
        assert!(call(&b, Success));
        assert!(!b.is_open() && b.allow().is_some_and(|p| !p.is_probe()));
    }

    /// The bug this breaker was rebuilt for: a probe ended by an error reply, or whose
    /// request was dropped, stayed in flight for ever and the store was never used again.
    #[test]
    fn a_probe_ended_by_an_error_reply_or_dropped_is_resolved() {
        let b = manual(1, 10);
        assert!(call(&b, CallOutcome::Failure));
        advance(&b, 10);
        drop(b.allow().expect("probe"));
        assert!(
            b.allow().is_some(),
            "a dropped probe frees the slot at once"
        );
        advance(&b, 10);
        assert!(call(&b, CallOutcome::Unknown));
        assert!(call(&b, CallOutcome::Failure), "the slot is free again");
        assert!(
            b.allow().is_none(),
            "an error reply opened the circuit again"
        );
        advance(&b, 10);
        assert!(call(&b, CallOutcome::Success));
        assert!(!b.is_open());
    }

    #[derive(Clone, Debug)]
    enum Step {
        Allow,
        Resolve(usize, CallOutcome),
        Drop(usize),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let outcome = prop_oneof![
            Just(CallOutcome::Success),
            Just(CallOutcome::Failure),
            Just(CallOutcome::Unknown),
        ];
        prop_oneof![
            4 => Just(Step::Allow),
            4 => (any::<usize>(), outcome).prop_map(|(i, o)| Step::Resolve(i, o)),
            1 => any::<usize>().prop_map(Step::Drop),
            2 => (0u64..80).prop_map(Step::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random calls, outcomes, drops and clock advances: at most one probe is ever in
        /// flight, a free probe slot is never left marked taken, and a call is refused only
        /// while a probe is in flight or within the open period after the last failure.
        #[test]
        fn never_shut_longer_than_its_open_period(
            failures_to_open in 1u32..6,
            open_ms in 1u64..50,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let b = manual(failures_to_open, open_ms);
            let mut permits: Vec<Permit<'_>> = Vec::new();
            let mut last_failure_ms: Option<u64> = None;
            for step in steps {
                match step {
                    Step::Allow => {
                        let probe_alive = permits.iter().any(Permit::is_probe);
                        match b.allow() {
                            Some(p) => {
                                prop_assert!(!(p.is_probe() && probe_alive), "two probes in flight");
                                prop_assert!(!p.is_probe() || b.is_open(), "a probe of a closed circuit");
                                permits.push(p);
                            }
                            None => {
                                let in_open_period = last_failure_ms
                                    .is_some_and(|at| b.now_ms() < at + open_ms);
                                prop_assert!(
                                    probe_alive || in_open_period,
                                    "refused at {} ms with no probe in flight, last failure at {:?} ms, open period {} ms",
                                    b.now_ms(), last_failure_ms, open_ms
                                );
                            }
                        }
                    }
                    Step::Resolve(i, outcome) if !permits.is_empty() => {
                        let p = permits.swap_remove(i % permits.len());
                        if outcome == CallOutcome::Failure {
                            last_failure_ms = Some(b.now_ms());
                        }
                        p.resolve(outcome);
                    }
                    Step::Drop(i) if !permits.is_empty() => {
                        drop(permits.swap_remove(i % permits.len()));
                    }
                    Step::Advance(ms) => advance(&b, ms),
                    Step::Resolve(..) | Step::Drop(_) => {}
                }
                let probe_alive = permits.iter().any(Permit::is_probe);
                prop_assert_eq!(b.probe_in_flight.load(Ordering::Acquire), probe_alive);
            }
        }
    }
}
