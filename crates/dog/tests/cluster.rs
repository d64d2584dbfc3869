//! dog against a real 3-node cluster of `sheep` processes: the VDI data
//! path (ranged writes and reads, the short-stdin zero fill, preallocation,
//! deletion), object placement as `vdi object location` reports it versus
//! where the objects really are, and the cluster/node commands' outputs.
//!
//! Needs the `sheep` binary next to `dog` (`cargo build --workspace
//! --bins`); skipped with a note when it is missing.

use sd_testkit::{pattern, sheep_bin, Cluster};
use std::process::Output;

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cluster() -> Option<Cluster> {
    if !sheep_bin().exists() {
        eprintln!("skipped: {} not built", sheep_bin().display());
        return None;
    }
    let c = Cluster::start(3);
    c.format("2");
    Some(c)
}

#[test]
fn vdi_data_path_and_placement() {
    let Some(c) = cluster() else { return };
    c.dog_ok(&["vdi", "create", "v", "20M"]);

    // A write across an object boundary, read back exactly.
    let data = pattern(1, 5 << 20);
    let at = (4 << 20) - 1000;
    let out = c.dog_stdin(
        0,
        &[
            "vdi",
            "write",
            "v",
            &at.to_string(),
            &data.len().to_string(),
        ],
        &data,
    );
    assert!(out.status.success(), "{}", err(&out));
    let out = c.dog(&["vdi", "read", "v", &at.to_string(), &data.len().to_string()]);
    assert!(out.status.success(), "{}", err(&out));
    assert!(out.stdout == data, "read back differs");

    // Unwritten ranges read as zeros; the whole VDI has its size.
    let out = c.dog(&["vdi", "read", "v", "16M", "1M"]);
    assert_eq!(out.stdout, vec![0u8; 1 << 20]);
    assert_eq!(c.dog(&["vdi", "read", "v"]).stdout.len(), 20 << 20);

    // QUIRK: short stdin zero-fills the rest of the piece it was writing.
    let out = c.dog_stdin(0, &["vdi", "write", "v", "0", "16"], b"hello-sheepdog\n");
    assert!(out.status.success());
    assert_eq!(
        c.dog(&["vdi", "read", "v", "0", "16"]).stdout,
        b"hello-sheepdog\n\0"
    );

    // Objects 0, 1 and 2 are allocated: 12 MB used.
    let list = text(&c.dog(&["vdi", "list", "-r"]));
    let f: Vec<&str> = list.trim_end().split(' ').collect();
    assert_eq!(
        (f[0], f[1], f[3], f[4], f[5]),
        ("=", "v", "20971520", "12582912", "0"),
        "{list}"
    );
    let vid = u32::from_str_radix(f[7], 16).unwrap();

    // object location names the nodes that really hold the object.
    let loc = text(&c.dog(&["vdi", "object", "location", "-i", "1", "v"]));
    let oid = format!("{:016x}", (vid as u64) << 32 | 1);
    assert!(
        loc.starts_with(&format!(
            "Looking for the object {oid} (vid 0x{vid:x} idx 1, 2 copies) with 3 nodes\n\n"
        )),
        "{loc}"
    );
    let expected = loc.lines().last().unwrap().to_string();
    for (i, n) in c.nodes.iter().enumerate() {
        let addr = format!("127.0.0.1:{}", n.port);
        let has = n.objects().contains(&oid);
        let line = if has {
            format!("{addr} has the object")
        } else {
            format!("{addr} doesn't have the object")
        };
        assert!(loc.contains(&line), "node {i}: {loc}");
        assert_eq!(expected.split(' ').any(|a| a == addr), has, "{loc}");
    }
    let out = c.dog(&["vdi", "object", "location", "-i", "4", "v"]);
    assert_eq!(
        text(&out),
        format!("The inode object 0x{vid:x} idx 4 is not allocated\n")
    );

    // Deleting releases the data objects everywhere.
    let out = c.dog(&["vdi", "delete", "v"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        err(&out)
    );
    for n in &c.nodes {
        assert!(
            !n.objects()
                .iter()
                .any(|o| o.starts_with(&format!("00{vid:06x}"))),
            "{:?}",
            n.objects()
        );
    }
    let out = c.dog(&["vdi", "delete", "v"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        err(&out),
        "Failed to open VDI v (snapshot id: 0 snapshot tag: ): No VDI found\n"
    );
}

#[test]
fn create_options_and_cluster_views() {
    let Some(mut c) = cluster() else { return };
    let out = c.dog(&["vdi", "create", "-P", "-v", "pre", "12M"]);
    assert!(out.status.success(), "{}", err(&out));
    let vid = text(&out)
        .strip_prefix("VDI ID of newly created VDI: ")
        .map(|s| s.trim().to_string())
        .unwrap();
    let list = text(&c.dog(&["vdi", "list"]));
    assert!(
        list.contains("  pre          0   12 MB   12 MB  0.0 MB "),
        "{list}"
    );
    assert!(
        list.contains(&format!("  {vid:>7}      2                22\n")),
        "{list}"
    );
    let out = c.dog(&["vdi", "create", "pre", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err(&out), "Failed to create VDI pre: VDI exists already\n");
    let out = c.dog(&["vdi", "create", "-c", "2:1", "-r", "-v", "ec", "8M"]);
    assert!(out.status.success(), "{}", err(&out));
    let raw = text(&c.dog(&["vdi", "list", "-r", "ec"]));
    assert!(raw.ends_with(" 2:1  22\n"), "{raw}");
    let out = c.dog(&["vdi", "create", "big", "5T"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(err(&out).starts_with("VDI size is larger than 4.0 TB bytes"));

    let info = text(&c.dog(&["cluster", "info", "-v"]));
    assert!(info.starts_with("Cluster status: running, auto-recovery enabled\nCluster store: "));
    assert!(info.contains("\nCluster vnodes strategy: auto\nCluster vnode mode: node\n"));

    // Kill the last node by id; the epoch history shows it leave.
    let out = c.dog(&["node", "kill", "2"]);
    assert!(out.status.success(), "{}", err(&out));
    if let Some(mut ch) = c.nodes[2].child.take() {
        let _ = ch.wait();
    }
    c.wait_nodes(2);
    let diff = text(&c.dog(&["cluster", "info", "-d"]));
    let last = diff.lines().rev().take(2).collect::<Vec<_>>();
    assert!(last[0].ends_with("      1 [formated]"), "{diff}");
    assert!(
        last[1].ends_with(&format!("      2 [-127.0.0.1:{}]", c.nodes[2].port)),
        "{diff}"
    );
    let out = c.dog(&["node", "kill", "5"]);
    assert_eq!(
        (out.status.code(), err(&out).as_str()),
        (Some(64), "Invalid node id '5'\n")
    );
}
