//! Replicated I/O end to end with real processes: data written with
//! `dog vdi write` at unaligned offsets reads back identical through every
//! node; a SIGKILLed node changes nothing for clients; recovery restores
//! exactly three copies on distinct zones; a rejoining node gets its objects
//! back and stale copies are cleaned; a gateway stores nothing.

use sd_proto::*;
use sd_testkit::*;
use std::collections::HashMap;

const MIB: usize = 1 << 20;

/// For every object of `vid`, the zones holding a copy.
fn copies(c: &Cluster, vid: u32) -> HashMap<String, Vec<u32>> {
    let prefixes = [
        format!("{:016x}", vid_to_vdi_oid(vid))[..8].to_string(),
        format!("{:08x}", vid),
    ];
    let mut m: HashMap<String, Vec<u32>> = HashMap::new();
    for i in c.alive() {
        for name in c.nodes[i].objects() {
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                m.entry(name).or_default().push(c.nodes[i].zone);
            }
        }
    }
    m
}

fn assert_three_distinct(c: &Cluster, vid: u32, expect_objects: usize) {
    let m = copies(c, vid);
    assert_eq!(
        m.len(),
        expect_objects,
        "objects: {:?}",
        m.keys().collect::<Vec<_>>()
    );
    for (name, zones) in &m {
        let mut z = zones.clone();
        z.sort();
        z.dedup();
        assert_eq!(zones.len(), 3, "{name} has {} copies", zones.len());
        assert_eq!(z.len(), 3, "{name} copies share a zone");
    }
}

#[test]
fn replicated_io_survives_kill_and_rejoin() {
    let mut c = Cluster::start(4);
    c.format("3");
    c.dog_ok(&["vdi", "create", "-c", "3", "vol", "256M"]);
    let vid = sd_hash_vdi(b"vol");

    // 64 MiB of random data in pieces at unaligned offsets, through
    // different gateways.
    let mut model = vec![0u8; 256 * MIB];
    let pieces = [
        (4097usize, 10 * MIB + 333),
        (31 * MIB - 5, 9 * MIB),
        (100 * MIB + 1, 20 * MIB),
        (200 * MIB + 4095, 25 * MIB - 333),
    ];
    let mut total = 0;
    for (k, &(off, len)) in pieces.iter().enumerate() {
        let data = pattern(k as u64 + 1, len);
        c.vdi_write(k % 4, "vol", off as u64, &data);
        model[off..off + len].copy_from_slice(&data);
        total += len;
    }
    assert!(total >= 64 * MIB);
    for i in 0..4 {
        assert!(
            c.vdi_read(i, "vol", 0, 256 * MIB) == model,
            "read through node {i} differs"
        );
    }
    let objects = copies(&c, vid).len();
    let touched: std::collections::BTreeSet<usize> = pieces
        .iter()
        .flat_map(|&(off, len)| off / (4 * MIB)..=(off + len - 1) / (4 * MIB))
        .collect();
    assert_eq!(
        objects,
        1 + touched.len(),
        "inode + data objects touched by the writes"
    );
    assert_three_distinct(&c, vid, objects);

    // Crash one node: reads stay identical at once, through the others.
    c.kill(1);
    for i in [0, 2, 3] {
        assert!(
            c.vdi_read(i, "vol", 0, 256 * MIB) == model,
            "read through node {i} after kill differs"
        );
    }
    c.wait_nodes(3);
    c.wait_recovery();
    assert_three_distinct(&c, vid, objects);

    // Writes after the loss land on the new targets.
    let late = pattern(99, 3 * MIB + 7);
    c.vdi_write(2, "vol", (50 * MIB + 3) as u64, &late);
    model[50 * MIB + 3..50 * MIB + 3 + late.len()].copy_from_slice(&late);

    // The node comes back: it receives its share again and every stale
    // copy is purged once all nodes finished recovery.
    c.restart(1);
    c.wait_up(1);
    c.wait_nodes(4);
    c.wait_recovery();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c
        .alive()
        .iter()
        .any(|&i| !c.nodes[i].stale_objects().is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stale copies were not cleaned"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let objects = copies(&c, vid).len();
    assert_three_distinct(&c, vid, objects);
    assert!(
        !c.nodes[1].objects().is_empty(),
        "the rejoined node holds objects again"
    );
    for i in 0..4 {
        assert!(
            c.vdi_read(i, "vol", 0, 256 * MIB) == model,
            "read through node {i} after rejoin differs"
        );
    }
}

#[test]
fn gateway_serves_io_and_stores_nothing() {
    let mut c = Cluster::start(3);
    let port = free_ports(1, PORTS);
    let g = c.add_node(port, 99, true);
    c.wait_up(g);
    c.wait_nodes(4);
    let out = c.dog_ok(&["node", "list", "-r"]);
    assert!(
        out.lines()
            .any(|l| l.ends_with(&format!(" 127.0.0.1:{port} 0 99"))),
        "{out}"
    );
    c.format("2");
    let out = c.dog_at(g, &["vdi", "create", "gw", "64M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = pattern(7, 9 * MIB + 11);
    c.vdi_write(g, "gw", 123, &data);
    assert!(c.vdi_read(g, "gw", 123, data.len()) == data);
    assert!(c.vdi_read(0, "gw", 123, data.len()) == data);
    assert!(
        c.nodes[g].objects().is_empty(),
        "gateway stored {:?}",
        c.nodes[g].objects()
    );
    let vid = sd_hash_vdi(b"gw");
    let stored: usize = (0..3)
        .map(|i| {
            c.nodes[i]
                .objects()
                .iter()
                .filter(|n| n.contains(&format!("{vid:x}")))
                .count()
        })
        .sum();
    assert_eq!(stored, 2 * 4, "inode + 3 data objects, two copies each");
}
