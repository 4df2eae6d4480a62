//! An N-master Redis Cluster (no replicas) on free loopback ports.

use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::REDIS_INSTALL_HINT;
use crate::redis_server::{LaunchError, RedisServer};
use crate::util::{free_cluster_port, require, wait_until};

/// Number of hash slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// How many times the whole node set is re-created after a port collision.
const ATTEMPTS: usize = 5;

/// How long the nodes get to agree on `cluster_state:ok`.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of `masters` master nodes without replicas.
///
/// Each node is a [`RedisServer`] started with `--cluster-enabled yes
/// --cluster-config-file nodes.conf --cluster-node-timeout 5000` in its own
/// directory, on a port `p` whose bus port `p + 10000` is free too. The
/// slots are split evenly (node *i* gets the *i*-th contiguous range), the
/// nodes are joined with `CLUSTER MEET`, and [`RedisCluster::start`] returns
/// only once every node reports `cluster_state:ok`, all 16384 slots assigned
/// and knows all other nodes. All nodes are killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins a cluster of `masters` (at least 1) master nodes.
    ///
    /// Retries with fresh ports if a node's port or bus port is taken.
    /// Fails with an install hint when `redis-server` is missing.
    pub fn start(masters: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 1, "a Redis Cluster needs at least 1 master");
        anyhow::ensure!(masters <= SLOTS, "too many masters: {masters}");
        let binary = require("redis-server", REDIS_INSTALL_HINT)?;
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();

        let mut last = None;
        'attempt: for _ in 0..ATTEMPTS {
            let mut nodes = Vec::with_capacity(masters);
            for _ in 0..masters {
                let port = free_cluster_port();
                match RedisServer::start_on(&binary, port, &args, "creditgate-cluster-") {
                    Ok(node) => nodes.push(node),
                    Err(LaunchError::PortInUse(e)) => {
                        last = Some(e);
                        continue 'attempt; // drops (kills) the nodes started so far
                    }
                    Err(LaunchError::Other(e)) => return Err(e),
                }
            }
            let cluster = Self { nodes };
            cluster.join().context("forming the Redis Cluster")?;
            return Ok(cluster);
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "Redis Cluster: port collisions on {ATTEMPTS} attempts"
            )))
    }

    /// Assigns slots, introduces the nodes to each other and waits until the
    /// cluster is healthy on every node.
    fn join(&self) -> anyhow::Result<()> {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            // Distinct config epochs avoid the (harmless but slow) epoch
            // collision resolution; this is what `redis-cli --cluster create`
            // does too.
            node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?;
            let first = i * SLOTS / n;
            let end = (i + 1) * SLOTS / n;
            let slots: Vec<String> = (first..end).map(|s| s.to_string()).collect();
            let mut cmd = vec!["CLUSTER", "ADDSLOTS"];
            cmd.extend(slots.iter().map(String::as_str));
            node.cmd(&cmd)?;
        }
        let first = &self.nodes[0];
        for node in &self.nodes[1..] {
            first.cmd(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()])?;
        }
        self.wait_until_healthy(CONVERGE_TIMEOUT)
    }

    /// Waits until every node reports `cluster_state:ok` with all 16384
    /// slots assigned, knows all other nodes and has no pending handshakes
    /// (e.g. after [`restart`](RedisServer::restart)ing a node). On timeout
    /// the error includes the last `CLUSTER INFO` and the nodes' log tails.
    pub fn wait_until_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let wanted_nodes = n.to_string();
        wait_until(timeout, || {
            for node in &self.nodes {
                let info = node.cmd(&["CLUSTER", "INFO"])?;
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(str::trim)
                        .unwrap_or("")
                        .to_string()
                };
                let ok = field("cluster_state") == "ok"
                    && field("cluster_slots_assigned") == SLOTS.to_string()
                    && field("cluster_known_nodes") == wanted_nodes;
                if !ok {
                    anyhow::bail!("node {} not ready yet:\n{info}", node.port());
                }
                let nodes = node.cmd(&["CLUSTER", "NODES"])?;
                if nodes.lines().count() != n || nodes.contains("handshake") {
                    anyhow::bail!("node {} still handshaking:\n{nodes}", node.port());
                }
            }
            Ok(true)
        })
        .map_err(|e| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("--- node {} ---\n{}", n.port(), n.log_tail(10)))
                .collect();
            e.context(format!(
                "cluster not healthy; node logs:\n{}",
                logs.join("\n")
            ))
        })
    }

    /// Connection URLs of all nodes, `redis://127.0.0.1:PORT/`, in node
    /// order (suitable as initial nodes for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Client ports of all nodes, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Number of nodes (masters).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always `false`: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes, in order; node *i* owns the *i*-th slot range.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to node `i`, e.g. to [`stop`](RedisServer::stop) and
    /// [`restart`](RedisServer::restart) it in fault tests (a restarted
    /// node keeps its `nodes.conf` and rejoins with its slots, but empty).
    ///
    /// # Panics
    /// Panics if `i >= self.len()`.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }
}
