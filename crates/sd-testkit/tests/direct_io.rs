//! `sheep -D`: object data bypasses the page cache (O_DIRECT), and reads
//! and writes stay correct.

use sd_testkit::*;

const MIB: usize = 1 << 20;

/// Pages of `file` resident in the page cache (`fincore`, util-linux).
fn resident_pages(file: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--raw", "--noheadings", "--output", "PAGES"])
        .arg(file)
        .output()
        .expect("fincore (util-linux)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The data objects of VDI `v` on node 0 after it was written whole twice
/// (created, then overwritten) and read back: how many of their pages the
/// page cache holds.
fn cached_after_io(extra: &[&str]) -> u64 {
    let c = Cluster::start_with(1, PORTS, extra);
    c.format("1");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.vdi_write(0, "v", 0, &pattern(1, 8 * MIB));
    let data = pattern(2, 8 * MIB);
    c.vdi_write(0, "v", 0, &data);
    assert_eq!(c.vdi_read(0, "v", 0, 8 * MIB), data);
    // A sub-block write (through the page cache) and its neighbours.
    c.vdi_write(0, "v", 4096 + 100, b"small");
    let mut want = data;
    want[4196..4201].copy_from_slice(b"small");
    assert_eq!(c.vdi_read(0, "v", 0, 8 * MIB), want);
    let objects: Vec<String> = c.nodes[0]
        .objects()
        .into_iter()
        .filter(|n| n.starts_with("00"))
        .collect();
    assert_eq!(objects.len(), 2);
    // Only what the sub-block write touched may stay cached.
    c.vdi_write(0, "v", 0, &want[..8192]);
    objects
        .iter()
        .map(|o| resident_pages(&c.nodes[0].obj_dir().join(o)))
        .sum()
}

#[test]
fn direct_io_keeps_object_data_out_of_the_page_cache() {
    let buffered = cached_after_io(&[]);
    assert!(
        buffered >= 2048 - 16,
        "without -D the objects are cached: {buffered}"
    );
    let direct = cached_after_io(&["-D"]);
    assert!(direct <= 16, "with -D they are not: {direct} pages");
}
