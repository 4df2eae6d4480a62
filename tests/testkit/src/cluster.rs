//! An N-master Redis Cluster on free loopback ports, optionally with replicas, and the
//! operations the topology tests put it through: a manual or forced failover, a primary
//! killed, a slot range moved to another primary.

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

/// The node timeout of [`RedisCluster::start`], in milliseconds.
const DEFAULT_NODE_TIMEOUT_MS: u64 = 5_000;

/// Keys moved per `MIGRATE` while a slot moves.
const MIGRATE_BATCH: usize = 100;

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
    masters: usize,
}

impl RedisCluster {
    /// Starts and joins a cluster of `masters` (at least 1) master nodes.
    ///
    /// Retries with fresh ports if a node's port or bus port is taken.
    /// Fails with an install hint when `redis-server` is missing.
    pub fn start(masters: usize) -> anyhow::Result<Self> {
        Self::start_with_replicas(masters, 0, DEFAULT_NODE_TIMEOUT_MS)
    }

    /// Starts a cluster of `masters` primaries with `replicas` replicas each, the nodes
    /// declaring a peer failed after `node_timeout_ms` (a replica of a killed primary takes
    /// over about then). Nodes `0..masters` are the primaries; the replicas of primary *m*
    /// are the nodes `masters + m * replicas ..`. Returns once every replica is in sync.
    pub fn start_with_replicas(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 1, "a Redis Cluster needs at least 1 master");
        anyhow::ensure!(masters <= SLOTS, "too many masters: {masters}");
        let binary = require("redis-server", REDIS_INSTALL_HINT)?;
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &node_timeout_ms.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let total = masters * (1 + replicas);
        let mut last = None;
        'attempt: for _ in 0..ATTEMPTS {
            let mut nodes = Vec::with_capacity(total);
            for _ in 0..total {
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
            let cluster = Self { nodes, masters };
            cluster.join().context("forming the Redis Cluster")?;
            cluster
                .attach_replicas(replicas)
                .context("attaching the replicas")?;
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
        let n = self.masters;
        for (i, node) in self.nodes[..n].iter().enumerate() {
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

    /// Number of nodes (primaries and replicas).
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

    /// Number of primaries the cluster was started with.
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// Makes the nodes after the primaries replicas, `replicas` per primary in order, and
    /// waits until each is in sync with its primary.
    fn attach_replicas(&self, replicas: usize) -> anyhow::Result<()> {
        for m in 0..self.masters {
            let id = self.node_id(m)?;
            for r in 0..replicas {
                let node = &self.nodes[self.masters + m * replicas + r];
                node.cmd(&["CLUSTER", "REPLICATE", &id])?;
            }
        }
        for i in self.masters..self.nodes.len() {
            self.wait_in_sync(i, CONVERGE_TIMEOUT)?;
        }
        Ok(())
    }

    /// The cluster node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> anyhow::Result<String> {
        self.nodes[i].cmd(&["CLUSTER", "MYID"])
    }

    /// A field of node `i`'s `INFO <section>`, empty when absent.
    pub fn info_field(&self, i: usize, section: &str, name: &str) -> anyhow::Result<String> {
        let info = self.nodes[i].cmd(&["INFO", section])?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
            .to_string())
    }

    /// Whether node `i` answers and is a primary now.
    pub fn is_primary(&self, i: usize) -> bool {
        self.info_field(i, "replication", "role")
            .is_ok_and(|role| role == "master")
    }

    /// The node that replicates node `primary` now (the first found), if any.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let port = self.nodes[primary].port().to_string();
        (0..self.nodes.len()).find(|&i| {
            i != primary
                && self
                    .info_field(i, "replication", "master_port")
                    .is_ok_and(|p| p == port)
        })
    }

    /// Waits until replica `i` reports its link to its primary up.
    pub fn wait_in_sync(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, || {
            Ok(self.info_field(i, "replication", "master_link_status")? == "up")
        })
        .with_context(|| format!("replica {} not in sync", self.nodes[i].port()))
    }

    /// `CLUSTER FAILOVER` on replica `i` (coordinated with its primary, which must be up:
    /// no acknowledged write is lost), then waits until it is a primary and the cluster
    /// serves every slot again.
    pub fn failover(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.nodes[i].cmd(&["CLUSTER", "FAILOVER"])?;
        wait_until(timeout, || Ok(self.is_primary(i)))
            .with_context(|| format!("node {} did not take over", self.nodes[i].port()))?;
        self.wait_serving(timeout)
    }

    /// Waits until every node that answers reports `cluster_state:ok` with all slots served
    /// (a killed node is skipped: the others decide without it).
    pub fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, || {
            let mut answered = 0;
            for node in &self.nodes {
                let Ok(info) = node.cmd(&["CLUSTER", "INFO"]) else {
                    continue;
                };
                answered += 1;
                let ok = info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_slots_ok:{SLOTS}"));
                if !ok {
                    anyhow::bail!("node {} not serving every slot:\n{info}", node.port());
                }
            }
            Ok(answered > 0)
        })
    }

    /// The node that owns `slot` now, as the node `via` sees it.
    pub fn slot_owner(&self, via: usize, slot: u16) -> anyhow::Result<usize> {
        let nodes = self.nodes[via].cmd(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            let port = fields[1].split(['@', ':']).nth(1).unwrap_or("");
            if owns {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port().to_string() == port)
                    .ok_or_else(|| anyhow!("slot {slot}'s owner {port} is not ours"));
            }
        }
        anyhow::bail!("no live primary owns slot {slot}:\n{nodes}")
    }

    /// Moves every slot of `slots` to primary `to`, the way `redis-cli --cluster reshard`
    /// does: `SETSLOT IMPORTING` / `MIGRATING`, `MIGRATE` of the keys in batches, then
    /// `SETSLOT NODE` on every primary. Clients see `ASK` and `TRYAGAIN` meanwhile.
    pub fn migrate_slots(
        &self,
        slots: std::ops::RangeInclusive<u16>,
        to: usize,
    ) -> anyhow::Result<u64> {
        let to_id = self.node_id(to)?;
        let mut moved = 0;
        for slot in slots {
            let from = self.slot_owner(to, slot)?;
            if from == to {
                continue;
            }
            moved += self.migrate_slot(slot, from, to, &to_id)?;
        }
        Ok(moved)
    }

    /// Moves one slot from primary `from` to primary `to` (id `to_id`); returns the keys
    /// moved.
    fn migrate_slot(&self, slot: u16, from: usize, to: usize, to_id: &str) -> anyhow::Result<u64> {
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let slot_s = slot.to_string();
        let from_id = self.node_id(from)?;
        dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])?;
        src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", to_id])?;
        let mut moved = 0;
        loop {
            let keys = src.cli(&[
                "CLUSTER",
                "GETKEYSINSLOT",
                &slot_s,
                &MIGRATE_BATCH.to_string(),
            ])?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = dst.port().to_string();
            let mut cmd = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            cmd.extend(&keys);
            let reply = src.cli(&cmd)?;
            anyhow::ensure!(
                reply == "OK" || reply == "NOKEY",
                "MIGRATE of slot {slot}: {reply}"
            );
            moved += keys.len() as u64;
        }
        // The destination first, then the source, then the other primaries, as the
        // cluster specification orders it: no node redirects to one that refuses the slot.
        let others = (0..self.nodes.len()).filter(|&i| i != to && i != from && self.is_primary(i));
        for i in [to, from].into_iter().chain(others) {
            self.nodes[i].cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", to_id])?;
        }
        Ok(moved)
    }
}
