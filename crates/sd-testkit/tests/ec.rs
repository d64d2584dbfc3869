//! Erasure-coded VDIs end to end: strip files on disk, unaligned writes,
//! degraded reads and writes right after losing `p` nodes, and recovery
//! back to one strip per index on distinct nodes.

use sd_testkit::*;
use std::collections::{BTreeMap, BTreeSet};

const MIB: usize = 1 << 20;

fn read_all(c: &Cluster, at: usize, vdi: &str) -> Vec<u8> {
    let out = c.dog_at(at, &["vdi", "read", vdi]);
    assert!(
        out.status.success(),
        "read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// oid → {strip index → nodes holding it} over the live nodes.
fn strips(c: &Cluster, vid: u32) -> BTreeMap<String, BTreeMap<u8, Vec<usize>>> {
    let prefix = format!("00{vid:06x}");
    let mut m: BTreeMap<String, BTreeMap<u8, Vec<usize>>> = BTreeMap::new();
    for i in c.alive() {
        for name in c.nodes[i].objects() {
            if let Some((oid, j)) = name.split_once('_') {
                if oid.starts_with(&prefix) {
                    m.entry(oid.to_string())
                        .or_default()
                        .entry(j.parse().unwrap())
                        .or_default()
                        .push(i);
                }
            }
        }
    }
    m
}

fn assert_full_strips(c: &Cluster, vid: u32, d: usize, p: usize, objects: usize) {
    let m = strips(c, vid);
    assert_eq!(m.len(), objects, "{m:?}");
    for (oid, by_idx) in &m {
        let idx: BTreeSet<u8> = by_idx.keys().copied().collect();
        assert_eq!(idx, (0..(d + p) as u8).collect(), "{oid} strips {by_idx:?}");
        let nodes: BTreeSet<usize> = by_idx.values().flatten().copied().collect();
        assert!(
            by_idx.values().all(|v| v.len() == 1),
            "{oid} has a duplicated strip: {by_idx:?}"
        );
        assert_eq!(nodes.len(), d + p, "{oid} strips share a node: {by_idx:?}");
    }
}

/// Writes random data at unaligned offsets/lengths, reads it back through
/// every node, and returns the model.
fn round_trip(c: &Cluster, vdi: &str, size: usize, total: usize) -> Vec<u8> {
    let mut model = vec![0u8; size];
    let mut off = 777;
    let mut k = 0;
    let mut written = 0;
    while written < total {
        let len = (3 * MIB + 12345 * k) % (6 * MIB) + 1000;
        let len = len.min(size - off);
        let data = pattern(k as u64 + 100, len);
        c.vdi_write(k % c.nodes.len(), vdi, off as u64, &data);
        model[off..off + len].copy_from_slice(&data);
        written += len;
        off = (off + len + 4093 * k + 1) % (size - 8 * MIB);
        k += 1;
    }
    for i in c.alive() {
        assert!(
            read_all(c, i, vdi) == model,
            "read through node {i} differs"
        );
    }
    model
}

#[test]
fn ec_4_2_on_6_nodes_degraded_and_recovered() {
    let mut c = Cluster::start(6);
    c.format("3");
    c.dog_ok(&["vdi", "create", "-c", "4:2", "ec", "96M"]);
    let list = c.dog_ok(&["vdi", "list"]);
    assert!(list.lines().nth(1).unwrap().contains("    4:2 "), "{list}");
    let vid = sd_proto::sd_hash_vdi(b"ec");
    let mut model = round_trip(&c, "ec", 96 * MIB, 64 * MIB);
    let objects = strips(&c, vid).len();
    assert_full_strips(&c, vid, 4, 2, objects);
    // Strip files are object_size / d bytes.
    let some = c.nodes[0]
        .objects()
        .into_iter()
        .find(|n| n.contains('_'))
        .unwrap();
    assert_eq!(
        std::fs::metadata(c.nodes[0].obj_dir().join(&some))
            .unwrap()
            .len(),
        (MIB) as u64
    );

    // Lose two nodes: reads and new writes keep working at once.
    c.kill(4);
    c.kill(5);
    assert!(read_all(&c, 0, "ec") == model, "degraded read differs");
    let late = pattern(9, 5 * MIB + 3);
    c.vdi_write(1, "ec", (33 * MIB + 11) as u64, &late);
    model[33 * MIB + 11..33 * MIB + 11 + late.len()].copy_from_slice(&late);
    assert!(
        read_all(&c, 2, "ec") == model,
        "read after degraded write differs"
    );
    c.wait_nodes(4);
    c.wait_recovery();
    assert!(read_all(&c, 3, "ec") == model);

    // The nodes come back: every object has all six strips on six nodes.
    c.restart(4);
    c.restart(5);
    c.wait_up(4);
    c.wait_up(5);
    c.wait_nodes(6);
    c.wait_recovery();
    let objects = strips(&c, vid).len();
    assert_full_strips(&c, vid, 4, 2, objects);
    for i in 0..6 {
        assert!(
            read_all(&c, i, "ec") == model,
            "read through node {i} after rejoin differs"
        );
    }
}

#[test]
fn ec_2_1_on_3_nodes_and_8_3_on_11_nodes() {
    let c = Cluster::start(3);
    c.format("2:1");
    c.dog_ok(&["vdi", "create", "e21", "48M"]);
    assert!(c.dog_ok(&["vdi", "list", "-r"]).contains(" 2:1 "));
    round_trip(&c, "e21", 48 * MIB, 20 * MIB);
    let vid = sd_proto::sd_hash_vdi(b"e21");
    let objects = strips(&c, vid).len();
    assert_full_strips(&c, vid, 2, 1, objects);
    drop(c);

    let c = Cluster::start(11);
    c.format("3");
    c.dog_ok(&["vdi", "create", "-c", "8:3", "e83", "64M"]);
    round_trip(&c, "e83", 64 * MIB, 24 * MIB);
    let vid = sd_proto::sd_hash_vdi(b"e83");
    let objects = strips(&c, vid).len();
    assert_full_strips(&c, vid, 8, 3, objects);
}

#[test]
fn ec_bad_input() {
    let c = Cluster::start(3);
    c.format("3");
    let help = "To create replicated vdi, set -c x\n  x(1 to 31)   - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips\n";
    for bad in ["3:2", "4:16", "32:1"] {
        let out = c.dog(&["vdi", "create", "-c", bad, "x", "1G"]);
        assert_eq!(out.status.code(), Some(1), "-c {bad}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("Invalid parameter {bad}\n{help}")
        );
    }
    // Fewer zones (3) than data strips (4): the VDI exists, but data
    // cannot be placed: the write fails with the original's error and the
    // VDI still reads as zeros.
    c.dog_ok(&["vdi", "create", "-c", "4:2", "wide", "16M"]);
    let out = c.dog_stdin(0, &["vdi", "write", "wide", "0", "4096"], &[7u8; 4096]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("System error"), "{err}");
    assert!(c
        .dog_at(1, &["vdi", "read", "wide", "0", "4096"])
        .stdout
        .iter()
        .all(|&b| b == 0));
}
