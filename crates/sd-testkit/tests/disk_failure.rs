//! A node's disk dies (its object directory removed, as a dead or
//! unmounted disk looks to sheep): client I/O goes on through the other
//! copies, the node leaves the cluster saying why, and the others restore
//! full redundancy.

use sd_testkit::*;
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn a_dead_disk_takes_its_node_out_and_no_client_write_fails() {
    let mut c = Cluster::start(4);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "16M"]);
    let old = pattern(1, 16 * MIB);
    c.vdi_write(0, "v", 0, &old);

    // The disk of node 2 dies.
    std::fs::remove_dir_all(c.nodes[2].obj_dir()).unwrap();

    // Reads and writes through another node keep working.
    assert_eq!(c.vdi_read(0, "v", 0, 16 * MIB), old);
    let new = pattern(2, 16 * MIB);
    c.vdi_write(0, "v", 0, &new);

    // The node noticed, said why, and left.
    let st = c.wait_exit(2, Duration::from_secs(30));
    assert!(!st.success(), "a node whose disk failed exits non-zero");
    let log = std::fs::read_to_string(c.nodes[2].dir.join("sheep.log")).unwrap();
    assert!(log.contains("the disk failed"), "{log}");
    c.wait_nodes(3);
    c.wait_recovery();

    // Every node reads the newest bytes, and every object is back to
    // three copies on the three nodes left.
    for i in [0, 1, 3] {
        assert_eq!(c.vdi_read(i, "v", 0, 16 * MIB), new, "through node {i}");
    }
    let objects: Vec<Vec<String>> = [0, 1, 3].map(|i| c.nodes[i].objects()).to_vec();
    for o in &objects[0] {
        assert!(
            objects.iter().all(|held| held.contains(o)),
            "{o} on every node"
        );
    }
    assert_eq!(objects[0], objects[1]);
    assert_eq!(objects[0], objects[2]);
    // The VDI's inode and its 4 data objects.
    assert_eq!(objects[0].len(), 5, "{:?}", objects[0]);
}
