//! Bit rot is never served: a byte flipped in an object file on disk (as
//! a failing disk or a stray write does) is caught by the object's
//! checksums, the read is answered from another copy, and the bad copy is
//! repaired, by the read that found it or by the scrub.

use sd_testkit::*;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Flips one byte of `file` at `at`.
fn flip(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
}

/// A 3-node, 3-copy cluster with an 8 MiB VDI `v` written whole; the
/// names of its two data objects.
fn cluster() -> (Cluster, Vec<u8>, Vec<String>) {
    let c = Cluster::start_with(3, PORTS, &["-n"]);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    let data = pattern(7, 8 * MIB);
    c.vdi_write(0, "v", 0, &data);
    let objects: Vec<String> = c.nodes[0]
        .objects()
        .into_iter()
        .filter(|n| n.starts_with("00"))
        .collect();
    assert_eq!(objects.len(), 2, "{objects:?}");
    (c, data, objects)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `i`'s line of `dog node scrub -r`: state, done, total, passes,
/// bad blocks, repaired, unrepaired, differing.
fn scrub_status(c: &Cluster, i: usize) -> (String, Vec<u64>) {
    let out = c.dog_ok(&["node", "scrub", "status", "-r"]);
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{i} ")))
        .unwrap_or_else(|| panic!("no line for node {i}: {out}"));
    let f: Vec<&str> = line.split(' ').collect();
    (
        f[2].to_string(),
        f[3..].iter().map(|v| v.parse().unwrap()).collect(),
    )
}

fn same_file(c: &Cluster, name: &str, a: usize, b: usize) -> bool {
    std::fs::read(c.nodes[a].obj_dir().join(name)).ok()
        == std::fs::read(c.nodes[b].obj_dir().join(name)).ok()
}

fn log(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.nodes[i].dir.join("sheep.log")).unwrap()
}

#[test]
fn a_flipped_byte_is_never_served_and_the_read_repairs_it() {
    let (c, data, objects) = cluster();
    let obj = &objects[0];
    flip(&c.nodes[1].obj_dir().join(obj), 5000);
    assert!(!same_file(&c, obj, 0, 1));
    // Node 1 holds a copy and reads its own first: its bad block is not
    // returned, the bytes come from another copy.
    assert_eq!(c.vdi_read(1, "v", 0, 8 * MIB), data);
    wait_until("the copy on node 1 is repaired", || {
        same_file(&c, obj, 0, 1)
    });
    assert!(log(&c, 1).contains("fail their checksums"));
    assert!(log(&c, 1).contains("repaired bytes 4096..8192"));
    let (_, n) = scrub_status(&c, 1);
    assert_eq!((n[3], n[4], n[5]), (1, 1, 0), "bad, repaired, unrepaired");
    // The other nodes saw nothing wrong.
    assert_eq!(scrub_status(&c, 0).1[3], 0);
}

#[test]
fn the_scrub_finds_rot_nobody_read_and_repairs_it() {
    let (c, data, objects) = cluster();
    flip(&c.nodes[2].obj_dir().join(&objects[0]), 100);
    flip(&c.nodes[2].obj_dir().join(&objects[1]), 3 * MIB as u64 + 1);
    // An object written before checksums (its checksum file gone) gets
    // them from the scrub.
    std::fs::remove_file(c.nodes[0].obj_dir().join(format!(".{}.csum", objects[1]))).unwrap();
    c.dog_ok(&["node", "scrub", "start"]);
    wait_until("every scrub finished a pass", || {
        (0..3).all(|i| {
            let (state, n) = scrub_status(&c, i);
            state == "idle" && n[2] == 1
        })
    });
    let (_, n) = scrub_status(&c, 2);
    assert_eq!(n[0], n[1], "checked every object");
    assert_eq!((n[3], n[4], n[5]), (2, 2, 0), "bad, repaired, unrepaired");
    for o in &objects {
        assert!(same_file(&c, o, 0, 2), "{o} repaired");
    }
    assert!(c.nodes[0]
        .obj_dir()
        .join(format!(".{}.csum", objects[1]))
        .exists());
    assert!(log(&c, 2).contains("scrub finished"));
    // Through node 2, whose copies were bad, the bytes are right.
    assert_eq!(c.vdi_read(2, "v", 0, 8 * MIB), data);
    assert_eq!(scrub_status(&c, 2).1[3], 2, "no new bad blocks");
}

#[test]
fn the_scrub_finds_a_replica_that_differs_and_vdi_check_mends_it() {
    let (c, data, objects) = cluster();
    // A copy whose checksums vouch for different bytes (as a store of
    // the original's, whose checksums the scrub computes, may hold).
    let name = &objects[0];
    flip(&c.nodes[2].obj_dir().join(name), 100);
    std::fs::remove_file(c.nodes[2].obj_dir().join(format!(".{name}.csum"))).unwrap();
    c.dog_ok(&["node", "scrub", "start"]);
    let differing = || (0..3).map(|i| scrub_status(&c, i).1[6]).sum::<u64>();
    let passes_done = |passes: u64| {
        (0..3).all(|i| {
            let (state, n) = scrub_status(&c, i);
            state == "idle" && n[2] == passes
        })
    };
    // A start while a pass runs lets that pass go on: wait for all.
    wait_until("every scrub finished a pass", || passes_done(1));
    assert_eq!(differing(), 1, "the difference is reported once");
    assert!(
        (0..3).any(|i| log(&c, i).contains(&format!("object {name}: the copies on"))),
        "logged"
    );
    c.dog_ok(&["vdi", "check", "v"]);
    assert!(same_file(&c, name, 0, 2) && same_file(&c, name, 1, 2));
    assert_eq!(c.vdi_read(2, "v", 0, 8 * MIB), data);
    // A second pass finds the copies agree.
    c.dog_ok(&["node", "scrub", "start"]);
    wait_until("every scrub finished two passes", || passes_done(2));
    assert_eq!(differing(), 1);
}

#[test]
fn a_block_rotten_on_every_copy_fails_its_read_and_is_named() {
    let (c, data, objects) = cluster();
    for i in 0..3 {
        flip(
            &c.nodes[i].obj_dir().join(&objects[0]),
            8192 + 10 * i as u64,
        );
    }
    let out = c.dog_at(0, &["vdi", "read", "v", "8192", "4096"]);
    assert!(!out.status.success(), "wrong bytes were served");
    assert!(out.stdout.is_empty());
    // The rest of the VDI still reads.
    assert_eq!(c.vdi_read(0, "v", 12288, 4096), &data[12288..16384]);
    c.dog_ok(&["node", "scrub", "start"]);
    wait_until("every scrub finished a pass", || {
        (0..3).all(|i| scrub_status(&c, i).1[2] == 1)
    });
    for i in 0..3 {
        let (_, n) = scrub_status(&c, i);
        assert!(n[5] >= 1, "node {i} reports the block unrepaired: {n:?}");
        let l = log(&c, i);
        assert!(
            l.contains(&format!("object {}: bytes 8192..12288 fail", objects[0])),
            "node {i} names the object"
        );
    }
    let out = c.dog_at(1, &["vdi", "read", "v", "8192", "4096"]);
    assert!(!out.status.success());
}

#[test]
fn a_flipped_byte_in_an_erasure_coded_strip_is_not_served_and_is_repaired() {
    let c = Cluster::start_with(4, PORTS, &["-n"]);
    c.format("2:1");
    c.dog_ok(&["vdi", "create", "e", "4M"]);
    let data = pattern(9, 4 * MIB);
    c.vdi_write(0, "e", 0, &data);
    // Flip a byte in every strip file (data or parity) of a node that
    // holds a data strip (reads need only the data strips, so a node with
    // parity alone might never be read).
    let strips = |i: usize| -> Vec<String> {
        c.nodes[i]
            .objects()
            .into_iter()
            .filter(|n| n.starts_with("00") && n.contains('_'))
            .collect()
    };
    let holds_data = |i: usize| {
        strips(i)
            .iter()
            .any(|n| n.ends_with("_0") || n.ends_with("_1"))
    };
    let holder = (0..4).find(|&i| holds_data(i)).unwrap();
    let path = |s: &String| c.nodes[holder].obj_dir().join(s);
    let good: Vec<(String, Vec<u8>)> = strips(holder)
        .into_iter()
        .map(|s| (s.clone(), std::fs::read(path(&s)).unwrap()))
        .collect();
    for (s, _) in &good {
        flip(&path(s), 777);
    }
    for i in 0..4 {
        assert_eq!(c.vdi_read(i, "e", 0, 4 * MIB), data, "through node {i}");
    }
    assert!(log(&c, holder).contains("fail their checksums"));
    // The scrub finds what no read touched (a parity strip); the bad
    // blocks are decoded from the other strips and rewritten.
    c.dog_ok(&["node", "scrub", "start"]);
    wait_until("every strip repaired", || {
        good.iter()
            .all(|(s, b)| std::fs::read(path(s)).unwrap() == *b)
    });
    wait_until("the repairs counted", || {
        scrub_status(&c, holder).1[4] == good.len() as u64
    });
    let (_, st) = scrub_status(&c, holder);
    assert!(st[3] >= good.len() as u64 && st[5] == 0, "{st:?}");
    assert!(log(&c, holder).contains("repaired bytes"));
    assert_eq!(c.dog_ok(&["vdi", "check", "e"]), "finish check&repair e\n");
}
