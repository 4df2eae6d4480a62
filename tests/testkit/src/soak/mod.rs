//! The soak and fault run: real gateways, the real sidecar on an SQLite ledger, a real Redis
//! with AOF (`appendfsync everysec`) and a counting upstream, driven with gateway traffic,
//! usage events and grants for a set time while faults are injected on a schedule (the
//! sidecar killed with SIGKILL, Redis killed and restarted on its AOF, one `FLUSHALL`, a
//! lagging replica promoted, a gateway killed), then checked: the ledger equals Redis,
//! nothing pending, streams bounded, dead letters counted, nobody overspent, events and
//! grants applied exactly once, memory flat.
//!
//! It drives everything from outside (HTTP, signals, `redis-cli`, the CLI) and reads the
//! money back from Redis and the ledger; it must never call the sidecar's jobs itself, and
//! it must not fix what it finds: a failed check is reported with its figures.

mod check;
mod faults;
mod load;
mod stack;

use std::env;
use std::fmt;
use std::time::{Duration, Instant};

pub use check::Findings;

use faults::{FAULT_CYCLE, Timeline, fault_times};
use load::Load;
use stack::SoakStack;

/// Environment variable with the run's length in seconds (the test's default is 60).
pub const SOAK_SECS_ENV: &str = "CREDITGATE_SOAK_SECS";

/// Environment variable with the seed of the run's random choices (default 13).
pub const SOAK_SEED_ENV: &str = "CREDITGATE_SOAK_SEED";

/// Environment variable naming a directory the run copies its ledger, the sidecar's log
/// and Redis's AOF directory into at the end, for a look after a failure.
pub const SOAK_KEEP_ENV: &str = "CREDITGATE_SOAK_KEEP";

/// The length of a run when [`SOAK_SECS_ENV`] is not set: short enough for the test suite on
/// two busy cores, long enough for every fault to happen once with traffic around it.
pub const DEFAULT_SOAK_SECS: u64 = 60;

/// The seed when [`SOAK_SEED_ENV`] is not set.
pub const DEFAULT_SOAK_SEED: u64 = 13;

/// How often the run samples the processes' resident memory and the sidecar's counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// What a run does: how long it drives load and the seed of its random choices.
#[derive(Clone, Copy, Debug)]
pub struct SoakConfig {
    /// How long traffic runs (faults are spread over its first 60 %).
    pub duration: Duration,
    /// Seed of the traffic's and the events' random choices.
    pub seed: u64,
}

impl SoakConfig {
    /// The config from [`SOAK_SECS_ENV`] and [`SOAK_SEED_ENV`], or the defaults.
    ///
    /// # Panics
    /// Panics naming the variable when one is set but is not a whole number (or the
    /// duration is under 30 s, too short for the fault schedule).
    pub fn from_env() -> Self {
        let read = |name: &str, default: u64| match env::var(name) {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
            Err(_) => default,
        };
        let secs = read(SOAK_SECS_ENV, DEFAULT_SOAK_SECS);
        assert!(
            secs >= 30,
            "{SOAK_SECS_ENV}={secs}: at least 30 s are needed"
        );
        Self {
            duration: Duration::from_secs(secs),
            seed: read(SOAK_SEED_ENV, DEFAULT_SOAK_SEED),
        }
    }
}

/// The figures of one run and every check that failed.
#[derive(Debug)]
pub struct SoakReport {
    /// What the run was asked to do.
    pub config: SoakConfig,
    /// Every fault injected, with the second of the run it happened at.
    pub timeline: Vec<String>,
    /// What the load generators counted.
    pub load: load::LoadCounts,
    /// What the end checks found.
    pub findings: Findings,
}

impl SoakReport {
    /// The checks that failed, one line each; empty when the run held.
    pub fn failures(&self) -> &[String] {
        &self.findings.failures
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.config.duration.as_secs_f64();
        writeln!(f, "soak run: {secs:.0} s, seed {}", self.config.seed)?;
        writeln!(f, "faults:")?;
        for line in &self.timeline {
            writeln!(f, "  {line}")?;
        }
        self.load.write(f, secs)?;
        write!(f, "{}", self.findings)
    }
}

/// Starts the deployment, drives it for `config.duration` with the fault schedule, stops the
/// load and checks the end state. Returns the report; the caller asserts on
/// [`SoakReport::failures`].
///
/// # Panics
/// Panics when a process cannot be started at all (a missing binary, no ports).
pub fn run_soak(config: SoakConfig) -> SoakReport {
    let mut stack = SoakStack::start();
    let load = Load::start(&stack, config.seed);
    let started = Instant::now();
    let mut timeline = Timeline::new(started);
    let mut due = fault_times(config.duration).into_iter().peekable();
    let mut next_fault = 0usize;
    let mut samples = check::Samples::default();
    while started.elapsed() < config.duration {
        if due.peek().is_some_and(|at| started.elapsed() >= *at) {
            due.next();
            let fault = FAULT_CYCLE[next_fault % FAULT_CYCLE.len()];
            next_fault += 1;
            samples.take(&stack);
            let outcome = faults::inject(&mut stack, fault);
            timeline.record(fault, outcome);
        } else {
            samples.take(&stack);
            std::thread::sleep(SAMPLE_EVERY);
        }
    }
    let stopping = Instant::now();
    let counts = load.stop(stack.upstream.count());
    let stopped_in = stopping.elapsed();
    println!(
        "soak: load stopped; gateway answers {:?}, event results {:?}",
        counts.gateway_statuses, counts.event_results
    );
    let mut findings = check::check(&stack, &counts, &samples);
    timeline.note(format!(
        "load stopped in {:.1} s, end checks took {:.1} s",
        stopped_in.as_secs_f64(),
        (stopping.elapsed() - stopped_in).as_secs_f64()
    ));
    if let Ok(dir) = env::var(SOAK_KEEP_ENV) {
        timeline.note(keep(&stack, std::path::Path::new(&dir)));
    }
    let timeline = timeline.lines();
    if Timeline::any_failed(&timeline) {
        findings
            .failures
            .push("a fault could not be injected (see the timeline)".into());
    }
    SoakReport {
        config,
        timeline,
        load: counts,
        findings,
    }
}

/// Copies the ledger, the sidecar's log and Redis's data directory into `to`.
fn keep(stack: &SoakStack, to: &std::path::Path) -> String {
    let copy = || -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for file in ["ledger.db", "ledger.db-wal", "ledger.db-shm"] {
            let from = stack.dir.path().join(file);
            if from.exists() {
                std::fs::copy(from, to.join(file))?;
            }
        }
        std::fs::copy(stack.sidecar.log_path(), to.join("sidecar.log"))?;
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(stack.redis.dir())
            .arg(to.join("redis"))
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("cp -r of the Redis directory failed"));
        }
        Ok(())
    };
    match copy() {
        Ok(()) => format!(
            "kept the ledger, the sidecar log and Redis's data in {}",
            to.display()
        ),
        Err(e) => format!("could not keep the run's data in {}: {e}", to.display()),
    }
}
