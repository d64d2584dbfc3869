//! The data-loss scenarios an operator of the original met weekly,
//! replayed exactly against real sheep processes: rolling replacement of
//! every node, the whole cluster crashing three times in a row, a node of
//! another cluster joining, and formatted nodes coming back to clean ones.
//! Each runs on the local driver and on a real ZooKeeper; the stopping
//! ones with clean stops (SIGTERM) and with crashes (SIGKILL). The waits
//! are those of an operator's script: `dog node list` and `dog node
//! recovery`, nothing longer.

use sd_testkit::zk::ZkServer;
use sd_testkit::*;
use std::time::Duration;

const MIB: usize = 1 << 20;
const OBJ: u64 = 4 << 20;

fn zk() -> ZkServer {
    ZkServer::try_start()
        .expect("ZooKeeper could not start: run ./scripts/test.sh, which installs it")
}

/// `n` nodes on the local driver, or on ZooKeeper under `/<name>`.
fn cluster(n: usize, zk: Option<&ZkServer>, name: &str) -> Cluster {
    match zk {
        None => Cluster::start(n),
        Some(z) => Cluster::start_driver(n, &format!("zookeeper:{}/{name},timeout=2000", z.addr())),
    }
}

/// Every object file of the nodes `on`, which must all hold the same set
/// with the same bytes (as many copies as nodes).
fn assert_identical_replicas(c: &Cluster, on: &[usize]) {
    let first = c.nodes[on[0]].objects();
    assert!(!first.is_empty());
    for &i in &on[1..] {
        assert_eq!(c.nodes[i].objects(), first, "object sets differ");
        for name in &first {
            let a = std::fs::read(c.nodes[on[0]].obj_dir().join(name)).unwrap();
            let b = std::fs::read(c.nodes[i].obj_dir().join(name)).unwrap();
            assert!(a == b, "replicas of {name} differ");
        }
    }
}

/// Brings node `new` up (a new node, or an old one with its old store),
/// waits until `dog node list` through it shows it, stops `old`, and
/// waits until `dog node recovery` through `new` lists nobody.
fn replace(c: &mut Cluster, old: usize, new: usize, how: Stop) {
    c.restart(new);
    c.wait_up(new);
    let members = c.alive().len();
    c.wait_nodes_at(new, members);
    c.stop(old, how);
    if how == Stop::Kill {
        // A crash is only known once the driver has noticed it.
        c.wait_nodes_at(new, members - 1);
    }
    c.wait_no_recovery_at(new);
}

/// Nodes A, B (2 copies) are replaced by C, D one at a time; the data is
/// overwritten through C; then C, D are replaced by A and B again, which
/// come back with their old stores. Both must serve the newest bytes and
/// hold identical replicas.
fn rolling_replacement(zk: Option<&ZkServer>, how: Stop) {
    let name = format!("rolling{how:?}");
    let mut c = cluster(2, zk, &name);
    c.format("2");
    c.dog_ok(&["vdi", "create", "demo", "100M"]);
    let write_all = |c: &Cluster, via: usize, seed: u64| -> Vec<Vec<u8>> {
        (0..25u64)
            .map(|k| {
                let d = pattern(seed * 1000 + k, 512);
                c.vdi_write(via, "demo", k * OBJ, &d);
                d
            })
            .collect()
    };
    write_all(&c, 0, 1);
    let port = free_ports(2, PORTS);
    let (a, b) = (0, 1);
    let cn = c.nodes.len();
    c.nodes.push(node(&c, port, 2));
    let dn = c.nodes.len();
    c.nodes.push(node(&c, port + 1, 3));
    replace(&mut c, a, cn, how);
    replace(&mut c, b, dn, how);
    let newest = write_all(&c, cn, 2);
    replace(&mut c, cn, a, how);
    replace(&mut c, dn, b, how);
    for via in [a, b] {
        for (k, want) in newest.iter().enumerate() {
            let got = c.vdi_read(via, "demo", k as u64 * OBJ, 512);
            assert!(
                got == *want,
                "object {k} through node {via}: not the newest write"
            );
        }
    }
    assert_identical_replicas(&c, &[a, b]);
    assert_eq!(
        c.nodes[a].objects().len(),
        26,
        "25 data objects and the inode"
    );
}

/// A node of this cluster, not started yet.
fn node(c: &Cluster, port: u16, zone: u32) -> Node {
    Node {
        port,
        zone,
        dir: c.root().join(port.to_string()),
        gateway: false,
        nbd_port: None,
        env: Vec::new(),
        child: None,
        disks: Vec::new(),
    }
}

#[test]
fn rolling_replacement_sigterm() {
    rolling_replacement(None, Stop::Term);
}

#[test]
fn rolling_replacement_sigkill() {
    rolling_replacement(None, Stop::Kill);
}

#[test]
fn rolling_replacement_sigterm_zookeeper() {
    rolling_replacement(Some(&zk()), Stop::Term);
}

#[test]
fn rolling_replacement_sigkill_zookeeper() {
    rolling_replacement(Some(&zk()), Stop::Kill);
}

/// 8 nodes, 6 copies, four 100 MiB VDIs written concurrently; then three
/// times: every sheep stopped at once, every sheep started again at once.
/// Every node must list the four VDIs and serve their bytes.
fn whole_cluster_restarts(zk: Option<&ZkServer>, how: Stop) {
    let name = format!("crash{how:?}");
    let mut c = cluster(8, zk, &name);
    c.format("6");
    let vdis = ["v0", "v1", "v2", "v3"];
    for v in vdis {
        c.dog_ok(&["vdi", "create", v, "100M"]);
    }
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(40 + i, 100 * MIB)).collect();
    std::thread::scope(|s| {
        for (i, v) in vdis.iter().enumerate() {
            let (c, d) = (&c, &data[i]);
            s.spawn(move || c.vdi_write(i, v, 0, d));
        }
    });
    for _ in 0..3 {
        c.stop_all(how);
        for i in 0..8 {
            c.restart(i);
        }
        for i in 0..8 {
            c.wait_up(i);
        }
        c.wait_nodes(8);
    }
    c.wait_running();
    for i in 0..8 {
        let list = c.dog_at(i, &["vdi", "list", "-r"]);
        let text = String::from_utf8_lossy(&list.stdout);
        for v in vdis {
            assert!(
                text.lines().any(|l| l.split(' ').nth(1) == Some(v)),
                "node {i} does not list {v}:\n{text}"
            );
        }
    }
    for (k, v) in vdis.iter().enumerate() {
        let via = (k * 3) % 8;
        assert!(
            c.vdi_read(via, v, 0, 100 * MIB) == data[k],
            "{v} through node {via} lost data"
        );
    }
}

#[test]
fn whole_cluster_restarts_three_times_sigterm() {
    whole_cluster_restarts(None, Stop::Term);
}

#[test]
fn whole_cluster_restarts_three_times_sigkill() {
    whole_cluster_restarts(None, Stop::Kill);
}

#[test]
fn whole_cluster_restarts_three_times_sigterm_zookeeper() {
    whole_cluster_restarts(Some(&zk()), Stop::Term);
}

#[test]
fn whole_cluster_restarts_three_times_sigkill_zookeeper() {
    whole_cluster_restarts(Some(&zk()), Stop::Kill);
}

/// A sheep whose store belongs to another cluster (another creation time)
/// is refused and stops; our epoch history and its store stay untouched.
fn foreign_node_is_refused(zk: Option<&ZkServer>) {
    let mut c = cluster(2, zk, "home");
    c.format("2");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.vdi_write(0, "v", 0, b"home");
    let mut away = cluster(1, zk, "away");
    away.format("1");
    away.dog_ok(&["vdi", "create", "w", "8M"]);
    away.terminate(0);
    let foreign = away.nodes[0].dir.clone();
    let files = |d: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = ["config", "epoch/00000001"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(d.join(f)).unwrap()))
            .collect();
        v.push((
            "objects".into(),
            format!("{:?}", away.nodes[0].objects()).into_bytes(),
        ));
        v
    };
    let its_files = files(&foreign);
    let history = c.dog_ok(&["cluster", "info", "-r"]);

    let port = free_ports(1, PORTS);
    let mut n = node(&c, port, 9);
    n.dir = foreign.clone();
    c.nodes.push(n);
    let i = c.nodes.len() - 1;
    c.restart(i);
    let status = c.wait_exit(i, Duration::from_secs(30));
    assert!(
        !status.success(),
        "the foreign node must stop with an error"
    );
    let log = std::fs::read_to_string(c.root().join(format!("stderr.{port}"))).unwrap_or_default()
        + &std::fs::read_to_string(foreign.join("sheep.log")).unwrap_or_default();
    assert!(log.contains("refused"), "no reason given:\n{log}");
    c.wait_nodes(2);
    assert_eq!(c.dog_ok(&["cluster", "info", "-r"]), history);
    assert_eq!(files(&foreign), its_files, "the foreign store was changed");
    assert_eq!(c.vdi_read(1, "v", 0, 4), b"home");
}

#[test]
fn foreign_node_is_refused_local() {
    foreign_node_is_refused(None);
}

#[test]
fn foreign_node_is_refused_zookeeper() {
    foreign_node_is_refused(Some(&zk()));
}

/// Three formatted nodes, shut down, start while three clean nodes are
/// already up: the cluster comes back with all six (never "waiting for
/// format", which would invite a wiping format) and serves its data
/// through every node.
fn returning_cluster(zk: Option<&ZkServer>) {
    let mut c = cluster(3, zk, "back");
    c.format("2");
    c.dog_ok(&["vdi", "create", "demo", "40M"]);
    let data = pattern(7, 9 * MIB);
    c.vdi_write(0, "demo", 0, &data);
    c.dog_ok(&["cluster", "shutdown"]);
    for i in 0..3 {
        assert!(c.wait_exit(i, Duration::from_secs(30)).success());
    }
    if zk.is_some() {
        // "Shut down" means gone: a session that outlives its process by
        // up to the timeout (2 s) would let the clean nodes join the old,
        // shutting-down stream instead of a new one.
        std::thread::sleep(Duration::from_secs(3));
    }
    let port = free_ports(3, PORTS);
    for k in 0..3u16 {
        let n = node(&c, port + k, 10 + k as u32);
        c.nodes.push(n);
        c.restart(3 + k as usize);
    }
    for i in 3..6 {
        c.wait_up(i);
    }
    c.wait_nodes_at(3, 3);
    let info = String::from_utf8_lossy(&c.dog_at(3, &["cluster", "info"]).stdout).into_owned();
    assert!(
        info.contains("Waiting for cluster to be formatted"),
        "{info}"
    );
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_nodes_at(3, 6);
    c.wait_running();
    c.wait_recovery();
    for i in 0..6 {
        assert!(c.vdi_read(i, "demo", 0, data.len()) == data, "node {i}");
    }
    // Two copies of each of the 3 data objects and of the inode.
    let files: usize = (0..6).map(|i| c.nodes[i].objects().len()).sum();
    assert_eq!(files, 2 * 4);
}

#[test]
fn returning_cluster_local() {
    returning_cluster(None);
}

#[test]
fn returning_cluster_zookeeper() {
    returning_cluster(Some(&zk()));
}
