//! Hyper volumes (`dog vdi create -y`, B-tree index, PROTOCOL.md §5.8)
//! against real sheep: a 16 TiB thin VDI written near its end through dog
//! and through NBD (qemu-io), read back by both, listed with the right
//! usage, refused as a snapshot, and deleted without leaving an object.

use sd_proto::*;
use sd_testkit::{pattern, sheep_bin, Cluster};
use std::process::Command;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Object files (name → nodes holding one) over every store.
fn objects(c: &Cluster) -> std::collections::BTreeMap<u64, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in &c.nodes {
        for f in n.objects() {
            *m.entry(u64::from_str_radix(&f[..16], 16).unwrap())
                .or_insert(0) += 1;
        }
    }
    m
}

fn qemu_io(c: &Cluster, node: usize, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, &c.nbd_uri(node, "hv")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("fail") && !text.contains("error"),
        "qemu-io {cmd}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn sixteen_tib_hyper_volume_written_near_its_end() {
    if !sheep_bin().exists() {
        eprintln!("skipped: {} not built", sheep_bin().display());
        return;
    }
    assert!(have("qemu-io"), "qemu-io is missing: run ./scripts/test.sh");
    let c = Cluster::start_nbd(3);
    c.format("2");
    c.dog_ok(&["vdi", "create", "-y", "hv", "16T"]);
    let row = c.dog_ok(&["vdi", "list", "-r", "hv"]);
    let f: Vec<&str> = row.split(' ').collect();
    assert_eq!(f[3], (16 * TIB).to_string(), "{row}");
    assert_eq!(f[4], "0", "a fresh hyper volume uses nothing: {row}");

    // Through dog: a range straddling the last two objects, one at the
    // start and one in the middle. The last objects' indexes (4194302,
    // 4194303) are far beyond what a flat index can hold (2^20).
    let end_off = 16 * TIB - 5 * MIB - 123;
    let end_data = pattern(1, (5 * MIB) as usize);
    let mid_off = 8 * TIB + 4096;
    let mid_data = pattern(2, 100_000);
    for (off, data) in [(end_off, &end_data), (0, &mid_data), (mid_off, &mid_data)] {
        c.vdi_write(0, "hv", off, data);
    }
    for node in 0..3 {
        for (off, data) in [(end_off, &end_data), (0, &mid_data), (mid_off, &mid_data)] {
            let got = c.vdi_read(node, "hv", off, data.len());
            assert!(got == *data, "bytes at {off} differ through node {node}");
        }
        // Never written: zeros, without any object behind them.
        assert_eq!(c.vdi_read(node, "hv", 12 * TIB, 4096), vec![0u8; 4096]);
    }
    let last = 16 * TIB / (4 * MIB) - 1;
    let vid = {
        let row = c.dog_ok(&["vdi", "list", "-r", "hv"]);
        u32::from_str_radix(row.split(' ').nth(7).unwrap(), 16).unwrap()
    };
    let mid_idx = mid_off / (4 * MIB);
    let want: Vec<u64> = [0, mid_idx, last - 1, last]
        .iter()
        .map(|&i| vid_to_data_oid(vid, i))
        .collect();
    let on_disk = objects(&c);
    let data: Vec<u64> = on_disk
        .keys()
        .copied()
        .filter(|&o| is_data_obj(o))
        .collect();
    assert_eq!(data, want, "exactly the written objects exist");
    assert!(
        data.iter().all(|o| on_disk[o] == 2),
        "2 copies each: {on_disk:x?}"
    );
    let map = c.dog_ok(&["vdi", "object", "map", "hv"]);
    assert_eq!(
        map,
        format!(
            "Index       VID\n{}",
            [0, mid_idx, last - 1, last]
                .iter()
                .map(|i| format!("{i:08} {vid:8x}\n"))
                .collect::<String>()
        )
    );
    let row = c.dog_ok(&["vdi", "list", "-r", "hv"]);
    assert_eq!(
        row.split(' ').nth(4),
        Some((4 * 4 * MIB).to_string().as_str()),
        "{row}"
    );

    // Through NBD: a pattern near the end written and verified by qemu-io
    // on one node, read back by another node and by dog.
    let nbd_off = 16 * TIB - 64 * MIB + 512;
    qemu_io(&c, 1, &format!("write -P 0x5a {nbd_off} 1M"));
    qemu_io(&c, 2, &format!("read -P 0x5a {nbd_off} 1M"));
    qemu_io(&c, 2, &format!("read -P 0 {} 512", nbd_off - 512));
    let tail = c.vdi_read(0, "hv", end_off, 4096);
    assert!(tail == end_data[..4096], "dog's data seen after NBD writes");
    let nbd = c.vdi_read(0, "hv", nbd_off, 1 << 20);
    assert!(nbd.iter().all(|&b| b == 0x5a));

    // A hyper volume cannot be snapshotted; nothing changes.
    let out = c.dog(&["vdi", "snapshot", "hv"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "creating a snapshot of hypervolume is not supported\n"
    );
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]).lines().count(), 1);

    // Deleting it leaves no object anywhere (data, B-tree nodes, inode).
    c.dog_ok(&["vdi", "delete", "hv"]);
    let left = objects(&c);
    assert!(left.is_empty(), "objects left after delete: {left:x?}");
}
