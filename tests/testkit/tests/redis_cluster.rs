//! Integration tests for [`creditgate_testkit::RedisCluster`].

use std::collections::HashSet;
use std::time::Instant;

use creditgate_testkit::RedisCluster;

/// Index of the node owning `slot` (the testkit splits slots evenly).
fn owner(slot: usize, nodes: usize) -> usize {
    (0..nodes)
        .find(|&i| slot < (i + 1) * 16384 / nodes)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_master_cluster_serves_all_slots() {
    let t = Instant::now();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .expect("start cluster");
    let started = t.elapsed();
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.urls().len(), 3);

    // Keys whose slots are spread over all three masters.
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    let first = &cluster.nodes()[0];
    let mut owners = HashSet::new();
    for k in &keys {
        let slot: usize = first
            .cli(&["CLUSTER", "KEYSLOT", k])
            .unwrap()
            .parse()
            .unwrap();
        owners.insert(owner(slot, 3));
    }
    assert_eq!(owners.len(), 3, "test keys should hit every master");

    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut con = client
        .get_async_connection()
        .await
        .expect("cluster connect");
    for k in &keys {
        redis::cmd("SET")
            .arg(k)
            .arg(format!("v-{k}"))
            .exec_async(&mut con)
            .await
            .unwrap();
    }
    for k in &keys {
        let v: String = redis::cmd("GET")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v, format!("v-{k}"));
    }

    // Every master holds some of the keys.
    for node in cluster.nodes() {
        let n: usize = node.cli(&["DBSIZE"]).unwrap().parse().unwrap();
        assert!(n > 0, "node {} holds no keys", node.port());
    }
    // redis-cli in cluster mode follows redirects.
    assert_eq!(first.cli(&["-c", "GET", "key:7"]).unwrap(), "v-key:7");
    eprintln!(
        "three_master_cluster_serves_all_slots: start {started:?}, total {:?}",
        t.elapsed()
    );
}

#[test]
fn cluster_node_restart_rejoins() {
    let t = Instant::now();
    let mut cluster = RedisCluster::start(3).expect("start cluster");
    let port = cluster.nodes()[1].port();
    cluster.node_mut(1).stop();
    cluster.node_mut(1).restart().expect("restart node");
    assert_eq!(cluster.nodes()[1].port(), port);
    // The restarted node re-reads nodes.conf and still knows the cluster.
    let info = cluster.nodes()[1].cli(&["CLUSTER", "INFO"]).unwrap();
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    cluster
        .wait_until_healthy(std::time::Duration::from_secs(20))
        .expect("healthy again");
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut con = client.get_connection().expect("cluster connect");
    for i in 0..10 {
        redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .exec(&mut con)
            .unwrap();
    }
    eprintln!("cluster_node_restart_rejoins took {:?}", t.elapsed());
}

#[test]
fn zero_masters_is_an_error() {
    assert!(RedisCluster::start(0).is_err());
}
