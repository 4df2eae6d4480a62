//! The soak run's faults and their schedule: the sidecar killed with SIGKILL and restarted,
//! Redis killed and restarted on its AOF, a `FLUSHALL`, a gateway killed and replaced, and a
//! lagging replica promoted (synced, stopped with SIGSTOP while traffic goes on, the primary
//! killed, then `REPLICAOF NO ONE` and the gateways and the sidecar pointed at it).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::stack::{AOF_ARGS, SoakStack};
use crate::RedisServer;

/// One fault.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// `kill -9` the sidecar, restart it a second later.
    KillSidecar,
    /// `kill -9` Redis, restart it on the same port and AOF directory.
    RestartRedis,
    /// `FLUSHALL` on the running Redis.
    FlushAll,
    /// `kill -9` one gateway and start a new one.
    KillGateway,
    /// Promote a lagging replica and point everything at it.
    PromoteReplica,
}

/// The faults of one cycle, in order. The promotion comes last because it restarts every
/// process: the quiet time after the last fault measures memory on processes that lived
/// through load alone.
pub(crate) const FAULT_CYCLE: [Fault; 5] = [
    Fault::KillSidecar,
    Fault::RestartRedis,
    Fault::FlushAll,
    Fault::KillGateway,
    Fault::PromoteReplica,
];

/// A cycle per this many seconds of run (at least one).
const CYCLE_SECS: u64 = 150;

/// How long the promoted replica stays stopped while the primary takes writes it misses.
const REPLICA_LAG: Duration = Duration::from_secs(2);

/// How long a replica gets to finish its first sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// When each fault is due, from the start of the run: evenly over 10 %..60 % of it, so the
/// last 40 % runs without faults.
pub(crate) fn fault_times(duration: Duration) -> Vec<Duration> {
    let cycles = (duration.as_secs() / CYCLE_SECS).max(1) as usize;
    let n = cycles * FAULT_CYCLE.len();
    let (from, span) = (duration.mul_f64(0.1), duration.mul_f64(0.5));
    (0..n)
        .map(|i| from + span.mul_f64(i as f64 / (n - 1) as f64))
        .collect()
}

/// Injects `fault`; the description of what was done, or why it failed.
pub(crate) fn inject(stack: &mut SoakStack, fault: Fault) -> anyhow::Result<String> {
    match fault {
        Fault::KillSidecar => {
            let pid = stack.sidecar.pid();
            stack.sidecar.kill9();
            thread::sleep(Duration::from_secs(1));
            stack.sidecar.restart()?;
            Ok(format!("sidecar pid {pid:?} killed (SIGKILL), restarted"))
        }
        Fault::RestartRedis => {
            stack.redis.stop();
            thread::sleep(Duration::from_millis(500));
            stack.redis.restart()?;
            let keys = stack.redis.cli(&["DBSIZE"])?;
            Ok(format!(
                "redis killed (SIGKILL), restarted on its AOF with {keys} keys"
            ))
        }
        Fault::FlushAll => {
            let before = stack.redis.cli(&["DBSIZE"])?;
            stack.redis.cli(&["FLUSHALL"])?;
            Ok(format!("FLUSHALL ({before} keys)"))
        }
        Fault::KillGateway => {
            let pid = stack.gateways[0].pid();
            stack.gateways[0].kill();
            stack.publish_endpoints_without(0);
            thread::sleep(Duration::from_secs(1));
            stack.gateways[0] = stack.start_gateway();
            stack.publish_endpoints();
            Ok(format!("gateway pid {pid:?} killed (SIGKILL), replaced"))
        }
        Fault::PromoteReplica => promote_lagging_replica(stack),
    }
}

/// Starts a replica of the running Redis, lets it sync, stops it with SIGSTOP, lets the
/// primary take [`REPLICA_LAG`] of writes, kills the primary, resumes the replica, promotes
/// it with `REPLICAOF NO ONE` and restarts the gateways and the sidecar on it.
fn promote_lagging_replica(stack: &mut SoakStack) -> anyhow::Result<String> {
    let replica = RedisServer::start_with_args(&AOF_ARGS)?;
    let port = stack.redis.port().to_string();
    replica.cli(&["REPLICAOF", "127.0.0.1", &port])?;
    wait_synced(&replica)?;
    let pid = replica.pid().context("replica pid")?;
    signal(pid, "STOP")?;
    thread::sleep(REPLICA_LAG);
    let primary_offset = offset(&stack.redis, "master_repl_offset");
    stack.redis.stop();
    signal(pid, "CONT")?;
    replica.cli(&["REPLICAOF", "NO", "ONE"])?;
    let replica_offset = offset(&replica, "master_repl_offset");
    for g in &mut stack.gateways {
        g.kill();
    }
    stack.publish_endpoints_without(usize::MAX);
    stack.sidecar.kill9();
    stack.redis = replica;
    stack.repoint_sidecar();
    for i in 0..stack.gateways.len() {
        stack.gateways[i] = stack.start_gateway();
    }
    stack.publish_endpoints();
    Ok(format!(
        "replica stopped (SIGSTOP) for {REPLICA_LAG:?}, primary killed at offset \
         {primary_offset}, replica promoted at offset {replica_offset}; gateways and sidecar \
         restarted on it"
    ))
}

/// Waits until `replica` reports its link to the primary up and no sync in progress.
fn wait_synced(replica: &RedisServer) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let info = replica.cli(&["INFO", "replication"])?;
        if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0") {
            return Ok(());
        }
        if started.elapsed() > SYNC_TIMEOUT {
            bail!("replica not synced within {SYNC_TIMEOUT:?}: {info}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A numeric field of `INFO replication`, or `"?"`.
fn offset(server: &RedisServer, field: &str) -> String {
    let info = server.cli(&["INFO", "replication"]).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Sends `SIG<name>` to `pid`.
fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// The faults injected, with the second each started at and how it went.
pub(crate) struct Timeline {
    started: Instant,
    lines: Vec<String>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            lines: Vec::new(),
        }
    }

    /// Records `fault`, injected just now with `outcome`.
    pub fn record(&mut self, fault: Fault, outcome: anyhow::Result<String>) {
        let at = self.started.elapsed().as_secs_f64();
        let line = match outcome {
            Ok(what) => format!("{at:6.1} s {fault:?}: {what}"),
            Err(e) => format!("{at:6.1} s {fault:?} FAILED: {e:#}"),
        };
        // Printed as it happens too, so a run cut short still shows its timeline.
        println!("soak: {line}");
        self.lines.push(line);
    }

    /// Records a line that is not a fault.
    pub fn note(&mut self, line: String) {
        let at = self.started.elapsed().as_secs_f64();
        println!("soak: {at:6.1} s {line}");
        self.lines.push(format!("{at:6.1} s {line}"));
    }

    pub fn lines(self) -> Vec<String> {
        self.lines
    }

    /// Whether any fault could not be injected.
    pub fn any_failed(lines: &[String]) -> bool {
        lines.iter().any(|l| l.contains(" FAILED: "))
    }
}
