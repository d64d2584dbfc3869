//! sheep on a real ZooKeeper: format, I/O, a SIGKILLed node leaving the
//! view, recovery to full redundancy, two clusters on one ensemble, and
//! clear errors for an unreachable ensemble or a malformed `-c`.

use sd_testkit::zk::ZkServer;
use sd_testkit::*;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn zk() -> ZkServer {
    ZkServer::try_start()
        .expect("ZooKeeper could not start: run ./scripts/test.sh, which installs it")
}

fn replicas(c: &Cluster, vid: u32) -> usize {
    let prefix = format!("00{vid:06x}");
    c.alive()
        .iter()
        .map(|&i| {
            c.nodes[i]
                .objects()
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .count()
        })
        .sum()
}

#[test]
fn cluster_on_zookeeper_survives_a_kill() {
    let z = zk();
    let mut c = Cluster::start_driver(4, &format!("zookeeper:{}/kill,timeout=2000", z.addr()));
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let data = pattern(1, 30 * MIB + 5);
    c.vdi_write(0, "v", 7, &data);
    let vid = sd_proto::sd_hash_vdi(b"v");
    let objects = (7 + data.len() - 1) / (4 * MIB) + 1;
    assert_eq!(replicas(&c, vid), 3 * objects);

    let t = Instant::now();
    c.kill(2);
    c.wait_nodes(3);
    let left_after = t.elapsed();
    assert!(
        left_after < Duration::from_secs(10),
        "leave took {left_after:?}"
    );
    c.wait_recovery();
    assert_eq!(
        replicas(&c, vid),
        3 * objects,
        "full redundancy after recovery"
    );
    let out = c.dog_at(3, &["vdi", "read", "v", "7", &data.len().to_string()]);
    assert!(out.stdout == data);

    // A second cluster on the same ensemble is independent.
    let other = Cluster::start_driver(2, &format!("zookeeper:{}/other,timeout=2000", z.addr()));
    assert!(other
        .dog_ok(&["cluster", "info"])
        .starts_with("Cluster status: Waiting for cluster to be formatted"));
    assert_eq!(other.dog_ok(&["node", "list", "-r"]).lines().count(), 2);
    assert_eq!(c.dog_ok(&["node", "list", "-r"]).lines().count(), 3);
}

#[test]
fn unreachable_zookeeper_and_malformed_driver() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(2, PORTS);
    // Nothing listens on port+1: the daemonized sheep fails and says so
    // through its exit status.
    let out = Command::new(sheep_bin())
        .arg(dir.path().join("s"))
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &format!("zookeeper:127.0.0.1:{},timeout=1000", port + 1),
        ])
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "sheep started without its ZooKeeper"
    );
    let out = Command::new(sheep_bin())
        .arg(dir.path().join("f"))
        .args([
            "-f",
            "-p",
            &port.to_string(),
            "-c",
            &format!("zookeeper:127.0.0.1:{},timeout=1000", port + 1),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !String::from_utf8_lossy(&out.stderr).is_empty(),
        "a foreground failure explains itself"
    );

    for bad in [
        "zookeeper",
        "zookeeper:",
        "zookeeper:host",
        "zookeeper:h:1,timeout=x",
    ] {
        let out = Command::new(sheep_bin())
            .arg(dir.path().join("m"))
            .args(["-c", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("zookeeper:host:port"), "{bad}: {err}");
    }
    let out = Command::new(sheep_bin())
        .arg(dir.path().join("m"))
        .args(["-c", "corosync"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Invalid cluster driver 'corosync'\n"
    );
}
