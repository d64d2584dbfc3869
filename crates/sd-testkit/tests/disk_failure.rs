//! A node's disk dies — its object directory removed (as a dead or
//! unmounted disk looks to sheep), or its fsyncs failing with EIO
//! (`SHEEP_INJECT`): client I/O goes on through the other copies, the
//! node leaves the cluster saying why, and the others restore full
//! redundancy.

use sd_testkit::*;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// A 4-node, 3-copy cluster (sheep options `extra`) with a 16 MiB VDI
/// `v` written through node 0.
fn cluster_with_data(extra: &[&str]) -> (Cluster, Vec<u8>) {
    let c = Cluster::start_with(4, PORTS, extra);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "16M"]);
    let old = pattern(1, 16 * MIB);
    c.vdi_write(0, "v", 0, &old);
    (c, old)
}

/// Node 2's disk has failed: writes through node 0 still succeed, node 2
/// leaves saying why, and every object is back to three copies.
fn survives_the_failed_disk_of_node_2(mut c: Cluster) {
    let new = pattern(2, 16 * MIB);
    c.vdi_write(0, "v", 0, &new);
    let st = c.wait_exit(2, Duration::from_secs(30));
    assert!(!st.success(), "a node whose disk failed exits non-zero");
    let log = std::fs::read_to_string(c.nodes[2].dir.join("sheep.log")).unwrap();
    assert!(log.contains("the disk failed"), "{log}");
    c.wait_nodes(3);
    c.wait_recovery();
    for i in [0, 1, 3] {
        assert_eq!(c.vdi_read(i, "v", 0, 16 * MIB), new, "through node {i}");
    }
    let objects: Vec<Vec<String>> = [0, 1, 3].map(|i| c.nodes[i].objects()).to_vec();
    assert_eq!(objects[0], objects[1]);
    assert_eq!(objects[0], objects[2]);
    // The VDI's inode and its 4 data objects.
    assert_eq!(objects[0].len(), 5, "{:?}", objects[0]);
}

#[test]
fn a_vanished_object_directory_takes_its_node_out_and_no_client_io_fails() {
    let (c, old) = cluster_with_data(&["-n"]);
    std::fs::remove_dir_all(c.nodes[2].obj_dir()).unwrap();
    assert_eq!(c.vdi_read(0, "v", 0, 16 * MIB), old);
    survives_the_failed_disk_of_node_2(c);
}

#[test]
fn failing_fsyncs_take_their_node_out_and_no_client_write_fails() {
    // Synced stores (no -n): their fsyncs are what fails.
    let (mut c, _) = cluster_with_data(&[]);
    c.terminate(2);
    c.nodes[2]
        .env
        .push(("SHEEP_INJECT".into(), "fsync:always".into()));
    c.restart(2);
    survives_the_failed_disk_of_node_2(c);
}

#[test]
fn a_malformed_fault_plan_stops_sheep_at_start() {
    let (mut c, _) = cluster_with_data(&["-n"]);
    c.terminate(2);
    c.nodes[2]
        .env
        .push(("SHEEP_INJECT".into(), "fsync:sometimes".into()));
    c.restart(2);
    let st = c.wait_exit(2, Duration::from_secs(10));
    assert!(!st.success());
    let err =
        std::fs::read_to_string(c.root().join(format!("stderr.{}", c.nodes[2].port))).unwrap();
    assert!(err.contains("bad fault 'fsync:sometimes'"), "{err}");
}
