//! The scale-out topology under failover: three real gateways and two real sidecars on one
//! Postgres ledger, over a Redis Cluster of three primaries with one replica each, all on
//! loopback. Steady traffic and concurrent bursts against small balances run while a primary
//! is failed over by `CLUSTER FAILOVER` (its replica's script cache flushed first, so the
//! promoted node answers `NOSCRIPT`), another primary is killed so its replica takes over
//! (the loss window of asynchronous replication is measured with a probe), a slot range
//! holding a busy shard moves to another primary, a sidecar is killed and restarted and a
//! gateway is restarted. Then: nobody burned more than was granted, every request the
//! upstream served has exactly one burn in the ledger (or was lost with the killed
//! primary's last writes, counted and bounded), and the ledger equals Redis.
//!
//! The short run is part of the test suite; a longer one repeats the fault cycle:
//! `CREDITGATE_TOPOLOGY_SECS=300 cargo test -p creditgate-e2e --test topology -- --nocapture`.
//! Needs `redis-server`, `redis-cli`, PostgreSQL and the built binaries
//! (`cargo build -p creditgate-gateway -p creditgate-sidecar`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use creditgate_sidecar::ledger::{EntryKind, EntryQuery, Ledger};
use creditgate_testkit::{
    Gateway, GatewayOptions, LedgerTarget, PREFIX, Postgres, RedisCluster, Sidecar, SidecarOptions,
    Upstream, base_config, http_client, open_ledger, sha256_hex, sidecar_command,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Environment variable with the run's length in seconds; without it one fault cycle runs.
const SECS_ENV: &str = "CREDITGATE_TOPOLOGY_SECS";

/// Customers that never run out, and their opening grant.
const BIG: [(&str, u64); 2] = [("topo-big-0", 1_000_000), ("topo-big-1", 1_000_000)];

/// Customers the bursts drain, their opening grant and each top-up: small, so concurrent
/// requests race for the last credits all the time.
const SMALL: [&str; 3] = ["topo-small-0", "topo-small-1", "topo-small-2"];
const SMALL_OPENING: u64 = 20;
const TOP_UP: u64 = 10;

/// Concurrent requests of one burst, and the pause between bursts.
const BURST: usize = 8;
const BURST_PAUSE: Duration = Duration::from_millis(150);

/// Gateways and sidecars of the topology.
const GATEWAYS: usize = 3;
const SIDECARS: usize = 2;

/// The cluster's node timeout: a killed primary's replica takes over about 1-2 s later.
const NODE_TIMEOUT_MS: u64 = 1_000;

/// The gateways' store timeout and hold TTL (the base config's 100 ms is missed now and
/// then on a busy 2-core machine; holds of a restarted gateway expire soon).
const STORE_TIMEOUT_MS: u64 = 1_000;
const HOLD_TTL_MS: u64 = 3_000;

/// How long the cluster gets to fail over or converge, and the end checks to catch up.
const CONVERGE: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(60);

/// Traffic between two faults.
const BETWEEN_FAULTS: Duration = Duration::from_millis(1_500);

fn api_key(customer: &str) -> String {
    format!("cg_topo_{customer}_key")
}

fn customers() -> Vec<&'static str> {
    BIG.iter().map(|(c, _)| *c).chain(SMALL).collect()
}

/// The gateways' pricing config: one route, `GET /v1/search` at 1 credit, fail closed.
fn gateway_config(upstream: std::net::SocketAddr) -> String {
    let mut config = base_config(upstream).replace(
        "store_timeout_ms = 100",
        &format!("store_timeout_ms = {STORE_TIMEOUT_MS}\nhold_ttl_ms = {HOLD_TTL_MS}"),
    );
    for customer in customers() {
        config.push_str(&format!(
            "\n[[api_keys]]\ncustomer = \"{customer}\"\nsha256 = \"{}\"\n",
            sha256_hex(&api_key(customer))
        ));
    }
    config.push_str(
        "\n[[routes]]\nname = \"search\"\nmethod = \"GET\"\npath = \"/v1/search\"\nfeature = \"search\"\n",
    );
    config
}

/// What the traffic saw.
#[derive(Default)]
struct Counts {
    statuses: BTreeMap<u16, u64>,
    /// 200s answered while a killed primary's writes could still be lost (from just
    /// before the kill until its replica serves and the gateways' settle retries are over).
    served_in_loss_window: u64,
    /// The `x-request-id`s of those answers.
    loss_window_ids: BTreeSet<String>,
}

struct Traffic {
    stop: Arc<AtomicBool>,
    in_loss_window: Arc<AtomicBool>,
    endpoints: Arc<RwLock<Vec<String>>>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(endpoints: Vec<String>) -> Self {
        let mut traffic = Self {
            stop: Arc::new(AtomicBool::new(false)),
            in_loss_window: Arc::new(AtomicBool::new(false)),
            endpoints: Arc::new(RwLock::new(endpoints)),
            counts: Arc::default(),
            threads: Vec::new(),
        };
        for seed in 0..2 {
            let t = traffic.shared();
            traffic.threads.push(thread::spawn(move || t.steady(seed)));
        }
        let t = traffic.shared();
        traffic.threads.push(thread::spawn(move || t.bursts(7)));
        traffic
    }

    fn shared(&self) -> Sender {
        Sender {
            stop: self.stop.clone(),
            in_loss_window: self.in_loss_window.clone(),
            endpoints: self.endpoints.clone(),
            counts: self.counts.clone(),
        }
    }

    fn set_endpoints(&self, urls: Vec<String>) {
        *self.endpoints.write().unwrap() = urls;
    }

    fn finish(self) -> Counts {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("traffic thread");
        }
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

#[derive(Clone)]
struct Sender {
    stop: Arc<AtomicBool>,
    in_loss_window: Arc<AtomicBool>,
    endpoints: Arc<RwLock<Vec<String>>>,
    counts: Arc<Mutex<Counts>>,
}

impl Sender {
    /// One request of `customer` to a random gateway; counts its status (0: no answer).
    fn send(&self, client: &reqwest::blocking::Client, rng: &mut StdRng, customer: &str) {
        let url = {
            let endpoints = self.endpoints.read().unwrap();
            if endpoints.is_empty() {
                return;
            }
            endpoints[rng.random_range(0..endpoints.len())].clone()
        };
        let (status, request_id) = client
            .get(format!("{url}/v1/search"))
            .bearer_auth(api_key(customer))
            .send()
            .map_or((0, None), |r| {
                let id = r
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok());
                (r.status().as_u16(), id.map(str::to_string))
            });
        let mut counts = self.counts.lock().unwrap();
        *counts.statuses.entry(status).or_default() += 1;
        if status == 200 && self.in_loss_window.load(Ordering::SeqCst) {
            counts.served_in_loss_window += 1;
            counts.loss_window_ids.extend(request_id);
        }
        drop(counts);
        if status == 0 {
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn steady(&self, seed: u64) {
        let (client, mut rng) = (http_client(), StdRng::seed_from_u64(seed));
        while !self.stop.load(Ordering::SeqCst) {
            let customer = BIG[rng.random_range(0..BIG.len())].0;
            self.send(&client, &mut rng, customer);
        }
    }

    /// Every [`BURST_PAUSE`], [`BURST`] requests at once against one small customer.
    fn bursts(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while !self.stop.load(Ordering::SeqCst) {
            let customer = SMALL[rng.random_range(0..SMALL.len())];
            thread::scope(|s| {
                for i in 0..BURST {
                    let me = self.clone();
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(seed ^ i as u64);
                        me.send(&http_client(), &mut rng, customer)
                    });
                }
            });
            thread::sleep(BURST_PAUSE);
        }
    }
}

/// The processes. Fields drop in order: gateways and sidecars before the stores.
struct Topology {
    gateways: Vec<Gateway>,
    sidecars: Vec<Sidecar>,
    upstream: Upstream,
    cluster: RedisCluster,
    target: LedgerTarget,
    config: String,
    dir: tempfile::TempDir,
    _postgres: Postgres,
}

impl Topology {
    fn start() -> Self {
        let postgres = Postgres::start().expect("postgres starts");
        let cluster = RedisCluster::start_with_replicas(3, 1, NODE_TIMEOUT_MS)
            .expect("a Redis Cluster of 3 primaries with a replica each");
        let upstream = Upstream::start().expect("upstream");
        let config = gateway_config(upstream.addr());
        let target = LedgerTarget::Postgres(postgres.url());
        let mut topology = Self {
            gateways: Vec::new(),
            sidecars: Vec::new(),
            upstream,
            cluster,
            target,
            config,
            dir: tempfile::tempdir().expect("temp dir"),
            _postgres: postgres,
        };
        let pricing = topology.dir.path().join("pricing.toml");
        std::fs::write(&pricing, &topology.config).expect("pricing file");
        for i in 0..SIDECARS {
            let mut options =
                SidecarOptions::on_cluster(topology.cluster.urls(), topology.target.clone());
            options.consumer = format!("sidecar-{i}");
            // Both sidecars publish the gateways' pricing file to the fleet.
            options.extra_args = vec!["--config".into(), pricing.display().to_string()];
            topology
                .sidecars
                .push(Sidecar::start(options).expect("sidecar starts on the cluster"));
        }
        for _ in 0..GATEWAYS {
            let gateway = topology.start_gateway();
            topology.gateways.push(gateway);
        }
        topology
    }

    fn start_gateway(&self) -> Gateway {
        let mut extra_args = Vec::new();
        for url in self.cluster.urls() {
            extra_args.extend(["--redis".to_string(), url]);
        }
        extra_args.push("--redis-cluster".into());
        Gateway::start(GatewayOptions {
            config_toml: self.config.clone(),
            redis_url: None,
            extra_args,
            ..GatewayOptions::default()
        })
        .expect("gateway starts on the cluster")
    }

    fn endpoints(&self) -> Vec<String> {
        self.gateways.iter().map(Gateway::proxy_url).collect()
    }

    /// Runs a one-shot sidecar command against the cluster and the ledger.
    fn sidecar(&self, args: &[&str]) -> (bool, String) {
        one_shot(
            &self.cluster.urls(),
            Some(&self.target),
            self.dir.path(),
            args,
        )
    }

    /// The cluster slot of `shard`'s keys.
    fn shard_slot(&self, shard: u32) -> u16 {
        let key = format!("{PREFIX}:{{s{shard}}}:events");
        let live = self.live_node();
        self.cluster.nodes()[live]
            .cli(&["CLUSTER", "KEYSLOT", &key])
            .expect("CLUSTER KEYSLOT")
            .parse()
            .expect("a slot number")
    }

    fn live_node(&self) -> usize {
        (0..self.cluster.len())
            .find(|&i| {
                self.cluster.nodes()[i]
                    .cli(&["PING"])
                    .is_ok_and(|r| r == "PONG")
            })
            .expect("a live node")
    }
}

/// Runs a one-shot sidecar command against the cluster with these seeds and the ledger.
fn one_shot(
    seeds: &[String],
    ledger: Option<&LedgerTarget>,
    dir: &std::path::Path,
    args: &[&str],
) -> (bool, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--redis-cluster".into(), seeds.join(",")]);
    all.extend(ledger.map(LedgerTarget::args).unwrap_or_default());
    let out = sidecar_command(&all, dir).expect("sidecar binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A break-glass grant through the CLI on the cluster, retried under the same id (a grant
/// is recorded in the ledger first, so a retry applies nothing twice).
fn grant(
    seeds: &[String],
    target: &LedgerTarget,
    dir: &std::path::Path,
    to: (&str, u64),
    id: &str,
) {
    let amount = to.1.to_string();
    let args = [
        "grant",
        "--customer",
        to.0,
        "--credit-type",
        "api",
        "--amount",
        &amount,
        "--grant-id",
        id,
        "--actor",
        "topology",
        "--reason",
        "test credits",
    ];
    let mut last = String::new();
    for _ in 0..40 {
        let (ok, text) = one_shot(seeds, Some(target), dir, &args);
        if ok {
            return;
        }
        last = text;
        thread::sleep(Duration::from_millis(250));
    }
    panic!("grant {id} failed 40 times: {last}");
}

/// Tops up a random small customer every 700 ms through the CLI until `stop`.
fn top_ups(
    seeds: Vec<String>,
    target: LedgerTarget,
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(11);
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let customer = SMALL[rng.random_range(0..SMALL.len())];
            grant(
                &seeds,
                &target,
                &dir,
                (customer, TOP_UP),
                &format!("top-up-{n}"),
            );
            n += 1;
            thread::sleep(Duration::from_millis(700));
        }
        n
    })
}

/// What the faults measured.
#[derive(Default, Debug)]
struct Faults {
    log: Vec<String>,
    /// Per `CLUSTER FAILOVER` onto a replica with a flushed script cache, its
    /// `errorstat_NOSCRIPT` after [`BETWEEN_FAULTS`] of traffic (`count=N`).
    noscript: Vec<String>,
    /// Request ids whose holds a gateway gave up resolving (from the gateways' logs).
    given_up: BTreeSet<String>,
    /// Per kill: (probe writes acknowledged, lost, probe writes per second, ms to takeover).
    kills: Vec<(i64, i64, f64, u128)>,
}

/// `CLUSTER FAILOVER` on the replica of `primary`, whose script cache is flushed first (a
/// replica started after the clients loaded the scripts): the promoted node answers
/// `NOSCRIPT` and the clients must run the scripts by source.
fn manual_failover(t: &Topology, primary: usize, f: &mut Faults) -> usize {
    let replica = t.cluster.replica_of(primary).expect("a replica");
    t.cluster.nodes()[replica]
        .cli(&["SCRIPT", "FLUSH"])
        .expect("SCRIPT FLUSH");
    let started = Instant::now();
    t.cluster
        .failover(replica, CONVERGE)
        .expect("CLUSTER FAILOVER");
    // Again once it is primary: any client connecting meanwhile (a top-up's CLI call)
    // loaded the scripts on every node, the replica too.
    t.cluster.nodes()[replica]
        .cli(&["SCRIPT", "FLUSH"])
        .expect("SCRIPT FLUSH");
    f.log.push(format!(
        "CLUSTER FAILOVER: node {replica} took over from node {primary} in {} ms",
        started.elapsed().as_millis()
    ));
    replica
}

/// The primary owning the shard of the big customer of `cycle` now.
fn big_shard_owner(t: &Topology, cycle: usize) -> usize {
    let shard = creditgate_protocol::Keyspace::new(PREFIX, creditgate_testkit::SHARDS)
        .shard_of(BIG[cycle % BIG.len()].0)
        .0;
    let live = t.live_node();
    t.cluster
        .slot_owner(live, t.shard_slot(shard))
        .expect("the shard's owner")
}

/// A primary's shard (a key of it lives in one of its slots).
fn shard_on(t: &Topology, primary: usize) -> u32 {
    let live = t.live_node();
    (0..creditgate_testkit::SHARDS)
        .find(|&s| t.cluster.slot_owner(live, t.shard_slot(s)).ok() == Some(primary))
        .expect("every primary holds a shard")
}

/// Kills `primary` (SIGKILL) while a probe increments a counter on it as fast as it
/// answers, waits for its replica to take over, counts the acknowledged increments the
/// promoted replica does not have, then restarts the killed node (it rejoins as a replica).
fn kill_failover(t: &mut Topology, traffic: &Traffic, primary: usize, f: &mut Faults) {
    let replica = t.cluster.replica_of(primary).expect("a replica");
    let key = format!("topo-probe:{{s{}}}", shard_on(t, primary));
    let url = t.cluster.nodes()[primary].url();
    let probe_key = key.clone();
    let probe = thread::spawn(move || {
        let client = redis::Client::open(url).expect("probe url");
        let mut con = client.get_connection().expect("probe connects");
        let (started, mut acked) = (Instant::now(), 0i64);
        while let Ok(v) = redis::cmd("INCR").arg(&probe_key).query::<i64>(&mut con) {
            acked = v;
        }
        (acked, started.elapsed())
    });
    thread::sleep(Duration::from_millis(500));
    traffic.in_loss_window.store(true, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(200));
    t.cluster.node_mut(primary).stop();
    let killed = Instant::now();
    let (acked, probed) = probe.join().expect("probe thread");
    creditgate_testkit::wait_for(
        "the replica of the killed primary takes over",
        CONVERGE,
        || t.cluster.is_primary(replica),
        || t.cluster.nodes()[replica].log_tail(20),
    );
    let takeover = killed.elapsed().as_millis();
    t.cluster
        .wait_serving(CONVERGE)
        .expect("cluster serves again");
    thread::sleep(Duration::from_millis(500));
    traffic.in_loss_window.store(false, Ordering::SeqCst);
    let kept: i64 = t.cluster.nodes()[replica]
        .cli(&["GET", &key])
        .expect("GET probe")
        .parse()
        .unwrap_or(0);
    let rate = acked as f64 / probed.as_secs_f64().max(0.001);
    // The probe's last increment may reach the replica without its reply reaching the
    // probe: the replica then holds one more than was acknowledged, and nothing is lost.
    let lost = (acked - kept).max(0);
    f.kills.push((acked, lost, rate, takeover));
    f.log.push(format!(
        "killed primary {primary}: replica {replica} took over after {takeover} ms; probe \
         acknowledged {acked} writes ({rate:.0}/s), the promoted replica has {kept}: {lost} \
         lost, a loss window of {:.2} ms",
        lost as f64 * 1_000.0 / rate.max(1.0)
    ));
    t.cluster
        .node_mut(primary)
        .restart()
        .expect("killed node restarts");
    t.cluster
        .wait_in_sync(primary, CONVERGE)
        .expect("the restarted node replicates");
}

/// Moves the slots around a busy shard's slot to another primary under traffic.
fn reshard(t: &Topology, f: &mut Faults) {
    let shard = creditgate_protocol::Keyspace::new(PREFIX, creditgate_testkit::SHARDS)
        .shard_of(BIG[0].0)
        .0;
    let slot = t.shard_slot(shard);
    let live = t.live_node();
    let from = t.cluster.slot_owner(live, slot).expect("slot owner");
    let to = (0..t.cluster.len())
        .find(|&i| i != from && t.cluster.is_primary(i))
        .expect("another primary");
    let range = slot.saturating_sub(8)..=slot.saturating_add(8).min(16_383);
    let started = Instant::now();
    let moved = t
        .cluster
        .migrate_slots(range.clone(), to)
        .expect("slots migrate");
    f.log.push(format!(
        "resharded slots {range:?} (shard s{shard}) from node {from} to node {to}: {moved} keys \
         in {} ms",
        started.elapsed().as_millis()
    ));
}

/// One fault cycle: both failovers, the reshard, a sidecar and a gateway restarted.
fn fault_cycle(t: &mut Topology, traffic: &Traffic, cycle: usize, f: &mut Faults) -> u64 {
    let primaries: Vec<usize> = (0..t.cluster.len())
        .filter(|&i| t.cluster.is_primary(i))
        .collect();
    assert_eq!(primaries.len(), 3, "three primaries before cycle {cycle}");
    // The primary of a busy customer's shard, so the promoted node gets script calls.
    let busy = big_shard_owner(t, cycle);
    let promoted = manual_failover(t, busy, f);
    thread::sleep(BETWEEN_FAULTS);
    f.noscript.push(
        t.cluster
            .info_field(promoted, "errorstats", "errorstat_NOSCRIPT")
            .unwrap_or_default(),
    );
    let victim = primaries
        .iter()
        .copied()
        .filter(|&p| p != busy)
        .nth(cycle % 2)
        .expect("another primary");
    kill_failover(t, traffic, victim, f);
    thread::sleep(BETWEEN_FAULTS);
    reshard(t, f);
    thread::sleep(BETWEEN_FAULTS);
    let sidecar = cycle % SIDECARS;
    t.sidecars[sidecar].kill9();
    t.sidecars[sidecar].restart().expect("sidecar restarts");
    f.log
        .push(format!("sidecar {sidecar} killed (SIGKILL) and restarted"));
    thread::sleep(BETWEEN_FAULTS);
    restart_gateway(t, traffic, cycle % GATEWAYS, f)
}

/// Takes gateway `i` out of the traffic, stops it gracefully (it settles what is in
/// flight) and starts a new one in its place; returns the old one's fail-open count.
fn restart_gateway(t: &mut Topology, traffic: &Traffic, i: usize, f: &mut Faults) -> u64 {
    let others = t
        .gateways
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, g)| g.proxy_url())
        .collect();
    traffic.set_endpoints(others);
    thread::sleep(Duration::from_millis(300));
    let fail_open = fail_open(&t.gateways[i]);
    t.gateways[i].stop().expect("gateway stops");
    f.given_up.extend(given_up(&t.gateways[i]));
    t.gateways[i] = t.start_gateway();
    traffic.set_endpoints(t.endpoints());
    f.log
        .push(format!("gateway {i} stopped (SIGTERM) and replaced"));
    fail_open
}

/// The request ids whose hold the gateway gave up resolving after its settle retries (the
/// documented outcome: the hold expires and the request goes uncharged), from its log.
fn given_up(gateway: &Gateway) -> Vec<String> {
    let log = std::fs::read_to_string(gateway.log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("giving up resolving hold"))
        .filter_map(|l| {
            let rest = &l[l.find("request_id=")? + "request_id=".len()..];
            let id = rest.split_whitespace().next()?.trim_matches('"');
            Some(id.to_string())
        })
        .collect()
}

fn fail_open(gateway: &Gateway) -> u64 {
    gateway.metric(
        "creditgate_decisions_total",
        &[("route", "search"), ("outcome", "fail_open")],
    ) as u64
}

/// Σ |amount| and count of `kind` entries of `customer`.
fn ledger_sum(
    ledger: &dyn Ledger,
    rt: &tokio::runtime::Runtime,
    customer: &str,
    kind: EntryKind,
) -> (i64, Vec<Option<String>>) {
    let entries = rt
        .block_on(ledger.entries(&EntryQuery {
            customer: Some(customer.to_string()),
            kinds: vec![kind],
            ..EntryQuery::default()
        }))
        .expect("ledger entries");
    (
        entries.iter().map(|e| e.entry.amount.abs()).sum(),
        entries.into_iter().map(|e| e.entry.request_id).collect(),
    )
}

/// The kinds of the ledger entries of one request, in order.
fn ledger_trail(
    ledger: &dyn Ledger,
    rt: &tokio::runtime::Runtime,
    request_id: &str,
) -> Vec<EntryKind> {
    rt.block_on(ledger.entries(&EntryQuery {
        request_id: Some(request_id.to_string()),
        ..EntryQuery::default()
    }))
    .map(|entries| entries.into_iter().map(|e| e.entry.kind).collect())
    .unwrap_or_default()
}

/// Runs `reconcile` until it reports no drift; after half of [`CATCH_UP`] repairs what is
/// left once. Returns the first drift count seen and whether a repair was needed.
fn reconcile_until_equal(t: &Topology) -> (usize, bool) {
    let drifted = |text: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_suffix(" drifted"))
            .and_then(|l| l.rsplit(", ").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("reconcile said: {text}"))
    };
    let started = Instant::now();
    let mut first = None;
    let mut repaired = false;
    loop {
        let (ok, text) = t.sidecar(&["reconcile"]);
        assert!(ok, "reconcile failed: {text}");
        let n = drifted(&text);
        first.get_or_insert(n);
        if n == 0 {
            return (first.unwrap_or(0), repaired);
        }
        if !repaired && started.elapsed() > CATCH_UP / 2 {
            let (ok, text) = t.sidecar(&["reconcile", "--repair"]);
            assert!(ok, "reconcile --repair failed: {text}");
            println!("reconcile --repair:\n{text}");
            repaired = true;
        }
        assert!(
            started.elapsed() < CATCH_UP,
            "the ledger still differs from Redis:\n{text}"
        );
        thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn money_holds_across_failovers_reshards_and_restarts() {
    let run_for = std::env::var(SECS_ENV)
        .ok()
        .map(|s| Duration::from_secs(s.parse().expect("CREDITGATE_TOPOLOGY_SECS: seconds")));
    let started = Instant::now();
    let mut t = Topology::start();
    let seeds = t.cluster.urls();
    for (i, (customer, amount)) in BIG.iter().enumerate() {
        grant(
            &seeds,
            &t.target,
            t.dir.path(),
            (customer, *amount),
            &format!("open-big-{i}"),
        );
    }
    for (i, customer) in SMALL.iter().enumerate() {
        grant(
            &seeds,
            &t.target,
            t.dir.path(),
            (customer, SMALL_OPENING),
            &format!("open-small-{i}"),
        );
    }
    let set_up = started.elapsed();
    let traffic = Traffic::start(t.endpoints());
    let stop_top_ups = Arc::new(AtomicBool::new(false));
    let top_ups = top_ups(
        seeds.clone(),
        t.target.clone(),
        t.dir.path().into(),
        stop_top_ups.clone(),
    );
    let mut faults = Faults::default();
    let mut fail_open_total = 0;
    let driven = Instant::now();
    thread::sleep(BETWEEN_FAULTS);
    let mut cycle = 0;
    loop {
        fail_open_total += fault_cycle(&mut t, &traffic, cycle, &mut faults);
        cycle += 1;
        if run_for.is_none_or(|d| driven.elapsed() >= d) {
            break;
        }
    }
    thread::sleep(BETWEEN_FAULTS);
    let counts = traffic.finish();
    stop_top_ups.store(true, Ordering::SeqCst);
    let top_ups_granted = top_ups.join().expect("top-up thread");
    let driven = driven.elapsed();
    fail_open_total += t.gateways.iter().map(fail_open).sum::<u64>();
    // The gateways' settle retries of the last answers end within 7.6 s (a settle given up
    // then is in their logs), then the end checks.
    thread::sleep(Duration::from_secs(9));
    let (first_drift, repaired) = reconcile_until_equal(&t);
    faults.given_up.extend(t.gateways.iter().flat_map(given_up));
    check_money(&t, &counts, &faults, fail_open_total);
    check_control(&t);
    let noscript = &faults.noscript;
    println!(
        "topology run: set-up {set_up:?}, {cycle} fault cycles over {driven:?}; statuses {:?}, \
         {} served in loss windows, {fail_open_total} fail-open, {top_ups_granted} top-ups; \
         first reconcile {first_drift} drifted, repair needed: {repaired}; NOSCRIPT on the \
         promoted nodes: {noscript:?}; load average {}\n{}",
        counts.statuses,
        counts.served_in_loss_window,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        faults.log.join("\n")
    );
    assert!(
        noscript.iter().all(|n| n.starts_with("count=")),
        "a promoted node with a flushed script cache answered no NOSCRIPT: {noscript:?}"
    );
    assert!(
        !repaired,
        "the sidecars left Redis different from the ledger; reconcile --repair was needed"
    );
}

/// Nobody overspent; every request the upstream served has one burn in the ledger, or was
/// served fail-open, or is among the answers of a kill's loss window; no burn twice.
fn check_money(t: &Topology, counts: &Counts, faults: &Faults, fail_open: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ledger = rt.block_on(open_ledger(&t.target));
    let mut burned_requests: BTreeMap<String, u32> = BTreeMap::new();
    for customer in customers() {
        let (granted, _) = ledger_sum(ledger.as_ref(), &rt, customer, EntryKind::GrantAdded);
        let (burned, ids) = ledger_sum(ledger.as_ref(), &rt, customer, EntryKind::HoldPosted);
        assert!(
            burned <= granted,
            "{customer} overspent: burned {burned} > granted {granted}"
        );
        println!(
            "{customer}: granted {granted}, burned {burned} in {} burns",
            ids.len()
        );
        for id in ids.into_iter().flatten() {
            *burned_requests.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = burned_requests.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "requests burned more than once: {twice:?}"
    );
    let served: BTreeSet<String> = t
        .upstream
        .requests()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    let unburned: Vec<&String> = served
        .iter()
        .filter(|id| !burned_requests.contains_key(*id))
        .collect();
    let (in_window, given_up) = (&counts.loss_window_ids, &faults.given_up);
    let unexplained: Vec<&&String> = unburned
        .iter()
        .filter(|id| !in_window.contains(**id) && !given_up.contains(**id))
        .collect();
    let lost_probe: i64 = faults.kills.iter().map(|k| k.1).sum();
    println!(
        "upstream served {} requests, {} burns in the ledger, {} served without a burn: {} \
         answered in a loss window, {} whose hold the gateway gave up resolving, {} else \
         ({fail_open} fail-open); {} answered in loss windows; probe writes lost: {lost_probe}",
        served.len(),
        burned_requests.len(),
        unburned.len(),
        unburned
            .iter()
            .filter(|id| in_window.contains(**id))
            .count(),
        unburned.iter().filter(|id| given_up.contains(**id)).count(),
        unexplained.len(),
        counts.served_in_loss_window
    );
    for id in unburned.iter().take(20) {
        println!(
            "  unburned {id}: ledger {:?}",
            ledger_trail(ledger.as_ref(), &rt, id)
        );
    }
    assert!(
        unexplained.len() as u64 <= fail_open,
        "{} requests served without a burn, neither fail-open ({fail_open}), nor answered while \
         a killed primary's writes could be lost, nor given up by a gateway: {unexplained:?}",
        unexplained.len()
    );
    let stray = burned_requests
        .keys()
        .filter(|id| !served.contains(*id))
        .count();
    assert_eq!(stray, 0, "burns of requests the upstream never served");
}

/// Fleet control on the cluster through the CLI: a mode change (a script on the `{control}`
/// slot that also publishes the notice) and `mode show`, which must list the config the
/// sidecars published and the gateways' heartbeats.
fn check_control(t: &Topology) {
    let seeds = t.cluster.urls();
    let set = [
        "mode",
        "set",
        "enforce",
        "--actor",
        "topology",
        "--reason",
        "cluster check",
    ];
    let (ok, text) = one_shot(&seeds, None, t.dir.path(), &set);
    assert!(ok, "mode set on the cluster: {text}");
    let (ok, text) = one_shot(&seeds, None, t.dir.path(), &["mode", "show"]);
    assert!(ok, "mode show on the cluster: {text}");
    let start = text.find('{').expect("mode show prints JSON");
    // stdout's JSON first; the command's log lines (stderr) may follow it.
    let shown: serde_json::Value = serde_json::Deserializer::from_str(&text[start..])
        .into_iter()
        .next()
        .expect("a JSON value")
        .expect("JSON");
    assert!(
        shown["config"]["version"].as_u64() >= Some(1),
        "the sidecars published no config: {shown:#}"
    );
    let gateways = shown["gateways"].as_array().map_or(0, Vec::len);
    assert!(
        gateways >= GATEWAYS,
        "{gateways} gateways in mode show: {shown:#}"
    );
}
