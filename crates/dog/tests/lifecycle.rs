//! The VDI lifecycle through dog against a real 3-node cluster:
//! snapshot, clone, rollback, resize, tree/graph/list views, object
//! inspection, backup/restore, attributes, locks, check and repair, and
//! the original's error messages and exit codes for bad input (with
//! nothing changed).
//!
//! Needs the `sheep` binary next to `dog` (`cargo build --release
//! --bins`); skipped with a note when it is missing.

use sd_proto::*;
use sd_testkit::{pattern, sheep_bin, Cluster};
use std::process::Output;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cluster(copies: &str) -> Option<Cluster> {
    if !sheep_bin().exists() {
        eprintln!("skipped: {} not built", sheep_bin().display());
        return None;
    }
    let c = Cluster::start(3);
    c.format(copies);
    Some(c)
}

/// Writes `data` at `offset` of `vdi`.
fn write(c: &Cluster, vdi: &str, offset: usize, data: &[u8]) {
    c.vdi_write(0, vdi, offset as u64, data);
}

/// Reads `len` bytes at `offset` of `vdi` (extra args select a snapshot).
fn read(c: &Cluster, vdi: &str, extra: &[&str], offset: usize, len: usize) -> Vec<u8> {
    let (o, l) = (offset.to_string(), len.to_string());
    let mut args = vec!["vdi", "read", vdi, &o, &l];
    args.extend_from_slice(extra);
    let out = c.dog(&args);
    assert!(out.status.success(), "read {vdi}: {}", err(&out));
    out.stdout
}

/// The vid of a VDI row of `vdi list -r` (`snapid` 0 = working VDI).
fn vid_of(c: &Cluster, name: &str, snapid: u32) -> u32 {
    let list = c.dog_ok(&["vdi", "list", "-r", name]);
    let row = list
        .lines()
        .find(|l| l.split(' ').nth(2) == Some(&snapid.to_string()))
        .unwrap_or_else(|| panic!("no {name}:{snapid} in {list}"));
    u32::from_str_radix(row.split(' ').nth(7).unwrap(), 16).unwrap()
}

/// Data object files (oid without type bits) on every node, with their
/// number of copies.
fn data_objects(c: &Cluster) -> std::collections::BTreeMap<u64, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in &c.nodes {
        for f in n.objects() {
            let oid = u64::from_str_radix(&f[..16], 16).unwrap();
            if is_data_obj(oid) {
                *m.entry(oid).or_insert(0) += 1;
            }
        }
    }
    m
}

/// `vdi list` with dates masked, as golden files filter them.
fn list_masked(c: &Cluster) -> String {
    let mut out = String::new();
    for l in c.dog_ok(&["vdi", "list"]).lines() {
        if l.len() > 57 && !l.starts_with("  Name") {
            out.push_str(&l[..41]);
            out.push_str("DATE");
            out.push_str(&l[57..]);
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

fn mask_dates(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("[20") {
        out.push_str(&rest[..i]);
        out.push_str("[DATE]");
        rest = &rest[i + 18..];
    }
    out.push_str(rest);
    out
}

#[test]
fn snapshot_clone_rollback() {
    let Some(c) = cluster("3") else { return };
    c.dog_ok(&["vdi", "create", "v", "12M"]);
    let a = pattern(1, 8 * MIB);
    write(&c, "v", 0, &a);
    let before = data_objects(&c);
    assert_eq!(before.len(), 2);

    let out = c.dog(&["vdi", "snapshot", "-s", "snap1", "-v", "v"]);
    assert!(out.status.success(), "{}", err(&out));
    let snap = vid_of(&c, "v", 1);
    let cur = vid_of(&c, "v", 0);
    assert_eq!(
        text(&out),
        format!("new VID of original VDI: {cur:x}, VDI ID of newly created snapshot: {snap:x}\n")
    );
    // The snapshot is the old vid; its tag was written before NEW_VDI.
    assert_eq!(before.keys().map(|&o| oid_to_vid(o)).max(), Some(snap));

    let b = pattern(2, 4 * MIB);
    write(&c, "v", 4 * MIB, &b);
    let out = c.dog(&["vdi", "clone", "-s", "snap1", "v", "c", "-v", "-r"]);
    assert!(out.status.success(), "{}", err(&out));
    let clone = vid_of(&c, "c", 0);
    assert_eq!(text(&out), format!("{clone:x}\n"));

    // The clone reads A, the working VDI A then B, the snapshot A.
    assert!(read(&c, "c", &[], 0, 8 * MIB) == a);
    assert!(read(&c, "v", &["-s", "snap1"], 0, 8 * MIB) == a);
    let v = read(&c, "v", &[], 0, 8 * MIB);
    assert!(v[..4 * MIB] == a[..4 * MIB] && v[4 * MIB..] == b[..]);

    // Only the object written after the snapshot is new on disk, with
    // its three copies; the snapshot's objects are untouched.
    let after = data_objects(&c);
    let mut expect = before.clone();
    expect.insert(vid_to_data_oid(cur, 1), 3);
    assert_eq!(after, expect);
    assert!(before.values().all(|&n| n == 3));

    // Used/Shared and markers as the original prints them.
    let rows: Vec<(String, String)> = [
        (clone, "c c            0   12 MB  0.0 MB  8.0 MB DATE"),
        (snap, "s v            1   12 MB  8.0 MB  0.0 MB DATE"),
        (cur, "  v            0   12 MB  4.0 MB  4.0 MB DATE"),
    ]
    .iter()
    .map(|(vid, row)| (format!("{vid:08x}"), row.to_string()))
    .collect();
    let mut sorted = rows.clone();
    sorted.sort();
    let listed = list_masked(&c);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "{listed}");
    for (line, (vid, row)) in lines[1..].iter().zip(&sorted) {
        assert!(line.starts_with(row.as_str()), "{line:?} vs {row:?}");
        let vid = vid.trim_start_matches('0');
        assert!(line.contains(&format!("  {vid:>7}      3")), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains(" snap1  22")), "{listed}");

    // The tree: the clone is a family of its own.
    let tree = mask_dates(&c.dog_ok(&["vdi", "tree"]));
    let mut fams = [
        (clone, "c---(you are here)\n"),
        (snap.min(cur), "v---[DATE]---(you are here)\n"),
    ];
    fams.sort();
    assert_eq!(tree, format!("{}{}", fams[0].1, fams[1].1));
    let graph = c.dog_ok(&["vdi", "graph"]);
    assert!(graph.starts_with("digraph G {\n  node [shape = \"box\", fontname = \"Courier\"];\n\n  \"0\" [shape = \"ellipse\", label = \"root\"];\n\n"));
    assert!(graph.contains(&format!("  \"{snap:x}\" -> \"{cur:x}\";\n  \"{cur:x}\" [\n    group = \"v\",\n    label = \"Name:          v\\nTag:           0\\nSize:      12 MB\\nDate: ")));
    assert!(graph.ends_with("    color=\"red\"\n  ];\n\n}\n"));

    // object map: the working VDI's objects and their owners.
    assert_eq!(
        c.dog_ok(&["vdi", "object", "map", "v"]),
        format!("Index       VID\n00000000 {snap:8x}\n00000001 {cur:8x}\n")
    );

    // Rollback: refused prompt changes nothing, accepted one restores A.
    let out = c.dog_stdin(0, &["vdi", "rollback", "-s", "snap1", "v"], b"no\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out),
        "This operation discards any changes made since the previous\nsnapshot was taken.  Continue? [yes/no]: "
    );
    assert_eq!(vid_of(&c, "v", 0), cur);
    let out = c.dog_stdin(0, &["vdi", "rollback", "-s", "snap1", "-v", "v"], b"yes\n");
    assert!(out.status.success(), "{}", err(&out));
    let rolled = vid_of(&c, "v", 0);
    assert!(text(&out).ends_with(&format!("New VDI ID of rollbacked VDI: {rolled:x}\n")));
    assert!(read(&c, "v", &[], 0, 8 * MIB) == a);
    assert!(read(&c, "c", &[], 0, 8 * MIB) == a);
    // B's object is released (asynchronously) with the old working VDI.
    wait_until("B's object to be reclaimed", || {
        !data_objects(&c).contains_key(&vid_to_data_oid(cur, 1))
    });
    assert_eq!(data_objects(&c), before);

    // A second snapshot, -R skips a VDI that owns nothing.
    let out = c.dog(&["vdi", "snapshot", "-R", "-v", "v"]);
    assert!(out.status.success());
    assert_eq!(
        err(&out),
        "VDI v doesn't have its own objects, skipping creation of snapshot\n"
    );
    assert_eq!(vid_of(&c, "v", 0), rolled);
    write(&c, "v", 0, b"x");
    let out = c.dog(&["vdi", "snapshot", "-R", "-v", "-r", "v"]);
    assert!(out.status.success(), "{}", err(&out));
    assert_eq!(text(&out), format!("{:x} {rolled:x}\n", vid_of(&c, "v", 0)));

    // Resize grows the working VDI; reads past the old end are zeros.
    c.dog_ok(&["vdi", "resize", "v", "20M"]);
    assert_eq!(read(&c, "v", &[], 12 * MIB, MIB), vec![0; MIB]);
    assert!(c.dog_ok(&["vdi", "list", "-r", "v"]).contains(" 20971520 "));
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn backup_between_snapshots_restores_the_later_one() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "bk", "16M"]);
    write(&c, "bk", 0, &pattern(3, 10 * MIB));
    c.dog_ok(&["vdi", "snapshot", "-s", "s1", "bk"]);
    // Changes: a few sectors in object 0, a whole new object 3, and
    // object 1 overwritten with what it already holds (no record).
    write(&c, "bk", 1000, &pattern(4, 600));
    write(&c, "bk", 12 * MIB + 512, &pattern(5, 4096));
    write(&c, "bk", 4 * MIB, &read(&c, "bk", &[], 4 * MIB, 4 * MIB));
    c.dog_ok(&["vdi", "snapshot", "-s", "s2", "bk"]);

    let out = c.dog(&["vdi", "backup", "-F", "s1", "-s", "s2", "bk"]);
    assert!(out.status.success(), "{}", err(&out));
    let stream = out.stdout;
    // header, {idx 0: sectors 1..3}, {idx 3: 8 sectors}, end marker.
    assert_eq!(&stream[..8], &[1, 0, 0, 0, 0x92, 0x11, 0x92, 0x11]);
    assert_eq!(stream.len(), 8 + 16 + 1536 + 16 + 4096 + 16);
    assert_eq!(&stream[8..20], &[0, 0, 0, 0, 0, 2, 0, 0, 0, 6, 0, 0]);
    assert_eq!(
        &stream[stream.len() - 16..],
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );

    // A fresh VDI holding s1's content gets the stream applied.
    c.dog_ok(&["vdi", "clone", "-s", "s1", "bk", "fresh"]);
    c.dog_ok(&["vdi", "snapshot", "-s", "base", "fresh"]);
    let base = vid_of(&c, "fresh", 1);
    let out = c.dog_stdin(0, &["vdi", "restore", "-s", "base", "fresh"], &stream);
    assert!(out.status.success(), "{}", err(&out));
    assert_eq!((text(&out), err(&out)), (String::new(), String::new()));
    let want = read(&c, "bk", &["-s", "s2"], 0, 16 * MIB);
    assert!(read(&c, "fresh", &["-s", "2"], 0, 16 * MIB) == want);
    // The new current VDI is on the old current's parent (the base).
    let list = c.dog_ok(&["vdi", "list", "-r", "fresh"]);
    let cur: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("= ") || l.starts_with("c "))
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(cur[2], "0", "{list}");
    assert!(read(&c, "fresh", &[], 0, 16 * MIB) == read(&c, "fresh", &["-s", "base"], 0, 16 * MIB));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains(&format!(" {base:x} ")));

    // A bad stream is refused before anything changes (the original
    // deleted the current VDI first).
    let before = c.dog_ok(&["vdi", "list", "-r"]);
    let out = c.dog_stdin(0, &["vdi", "restore", "-s", "base", "fresh"], b"garbage!");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err(&out), "The backup file is corrupted\n");
    let out = c.dog_stdin(0, &["vdi", "restore", "-s", "base", "fresh"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        err(&out),
        "failed to read backup header, Success\nThe backup file is corrupted\n"
    );
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]), before);

    // Option checks.
    let out = c.dog(&["vdi", "backup", "-s", "s2", "bk"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        err(&out),
        "Please specify snapshots with '-F' and '-s' options\n"
    );
    let out = c.dog(&["vdi", "restore", "bk"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        err(&out),
        "We can restore a backup file only to snapshots\nPlease specify the '-s' option\n"
    );
    let out = c.dog_stdin(0, &["vdi", "restore", "-s", "nosuch", "bk"], &stream);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err(&out),
        "Failed to open VDI bk (snapshot id: 0 snapshot tag: nosuch): Failed to find requested tag\nSnapshot ID 0 or tag nosuch doesn't exist\n"
    );
}

#[test]
fn bad_input_changes_nothing() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    write(&c, "v", 0, b"hello");
    c.dog_ok(&["vdi", "snapshot", "-s", "s1", "v"]);
    let before = c.dog_ok(&["vdi", "list", "-r"]);
    let files: Vec<Vec<String>> = c.nodes.iter().map(|n| n.objects()).collect();
    let check = |args: &[&str], code: i32, stderr: &str| {
        let out = c.dog(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", err(&out));
        assert_eq!(err(&out), stderr, "{args:?}");
        text(&out)
    };

    check(
        &["vdi", "snapshot", "nosuch"],
        1,
        "Failed to create snapshot for nosuch: No VDI found\n",
    );
    check(
        &["vdi", "snapshot", "-s", "s1", "v"],
        1,
        "Failed to create snapshot for v, maybe snapshot id (0) or tag (s1) is existed\n",
    );
    let usage = check(
        &["vdi", "snapshot", "-s", "12", "v"],
        64,
        "Please specify a non-integer value for a snapshot tag name\n",
    );
    assert!(usage.starts_with("Usage: dog vdi snapshot [-s snapshot]"));
    // Clone from something that is not a snapshot.
    let usage = check(
        &["vdi", "clone", "v", "c"],
        64,
        "Only snapshot VDIs can be cloned\nPlease specify the '-s' option\n",
    );
    assert!(usage.starts_with("Usage: dog vdi clone"));
    check(
        &["vdi", "clone", "-s", "2", "v", "c"],
        1,
        "Failed to open VDI v (snapshot id: 2 snapshot tag: ): Failed to find requested tag\n",
    );
    check(
        &["vdi", "clone", "-s", "1", "v"],
        64,
        "Destination VDI name must be specified\n",
    );
    check(
        &["vdi", "clone", "-s", "1", "v", "v"],
        1,
        "Failed to create VDI v: VDI exists already\n",
    );
    // Rollback to a missing tag, without -s.
    check(
        &["vdi", "rollback", "-f", "-s", "nosuch", "v"],
        1,
        "Failed to open VDI v (snapshot id: 0 snapshot tag: nosuch): Failed to find requested tag\n",
    );
    check(
        &["vdi", "rollback", "-f", "v"],
        64,
        "Please specify the '-s' option\n",
    );
    // Resize smaller, too large, missing.
    let usage = check(
        &["vdi", "resize", "v", "4M"],
        64,
        "Shrinking VDIs is not implemented\n",
    );
    assert!(usage.starts_with("Usage: dog vdi resize"));
    check(
        &["vdi", "resize", "v", "5T"],
        64,
        "New VDI size is too large. This volume's max size is 4398046511104\n",
    );
    check(
        &["vdi", "resize", "nosuch", "10M"],
        1,
        "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\n",
    );
    check(
        &["vdi", "resize", "v"],
        64,
        "Please specify the new size for the VDI\n",
    );
    // An attribute value over 64 KiB.
    let big = "x".repeat(65537);
    check(
        &["vdi", "setattr", "v", "key", &big],
        1,
        "Failed to set attribute: Invalid parameters\n",
    );
    check(
        &["vdi", "setattr", "v"],
        64,
        "Please specify the attribute key\n",
    );
    check(
        &["vdi", "getattr", "v"],
        64,
        "Please specify the attribute key\n",
    );
    // Object and tracking commands on a missing VDI.
    check(
        &["vdi", "object", "map", "nosuch"],
        1,
        "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\nFATAL: nosuch not found\n",
    );
    check(
        &["vdi", "track", "nosuch"],
        1,
        "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\nFATAL: no inode objects\n",
    );
    check(
        &["vdi", "check", "nosuch"],
        1,
        "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\nFATAL: no inode objects\n",
    );
    check(
        &["vdi", "alter-copy", "-c", "2:1", "v"],
        64,
        "Changing redundancy level of erasure coded vdi is not supported yet.\n",
    );
    let out = check(
        &["vdi", "alter-copy", "-c", "2", "-f", "v"],
        1,
        "v's redundancy level is already set to 2, nothing changed.\n",
    );
    assert_eq!(out, "");
    check(
        &["vdi", "alter-copy", "-c", "3", "-f", "v"],
        1,
        "Only standalone vdi supports changing redundancy level.\nPlease clone v with -n (--no-share) option first.\n",
    );
    check(
        &["vdi", "lock", "unlock", "nosuch"],
        1,
        "Failed to find VDI nosuch: No VDI found\n",
    );
    check(
        &["vdi", "object", "dump-inode", "/nonexistent"],
        1,
        "failed to open inode object file: No such file or directory\n",
    );
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]), before);
    let now: Vec<Vec<String>> = c.nodes.iter().map(|n| n.objects()).collect();
    assert_eq!(now, files);
}

#[test]
fn object_inspection() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "12M"]);
    write(&c, "v", 4 * MIB, b"data");
    let vid = vid_of(&c, "v", 0);
    assert_eq!(
        c.dog_ok(&["vdi", "object", "map", "v", "-i", "2"]),
        "Index       VID\n00000002        0\n"
    );
    // track: the placement of the object in the only epoch, as object
    // location computes it.
    let oid = vid_to_data_oid(vid, 1);
    let track = c.dog_ok(&["vdi", "track", "-i", "1", "v"]);
    let loc = c.dog_ok(&["vdi", "object", "location", "-i", "1", "v"]);
    let expected: Vec<&str> = loc.lines().last().unwrap().split(' ').collect();
    assert_eq!(
        track,
        format!(
            "Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx 1) with 3 nodes\n\nobj {oid:016x} locations at epoch 1, copies = 2\n---------------------------------------------------\n{}\n",
            expected.join("\n")
        )
    );
    assert!(c.dog_ok(&["vdi", "track", "v"]).starts_with(&format!(
        "Tracking the inode object 0x{vid:x} with 3 nodes\n\nobj {:016x} locations at epoch 1",
        vid_to_vdi_oid(vid)
    )));
    // dump-inode reads an inode object file of a store.
    let file = c
        .nodes
        .iter()
        .map(|n| n.obj_dir().join(format!("{:016x}", vid_to_vdi_oid(vid))))
        .find(|p| p.exists())
        .unwrap();
    let dump = c.dog_ok(&["vdi", "object", "dump-inode", file.to_str().unwrap()]);
    assert!(dump.starts_with("name: v\ntag: \ncreate_time: "), "{dump}");
    assert!(dump.contains(&format!(
        "vdi_size: 12582912\nvm_state_size: 0\ncopy_policy: 0\nstore_policy: 0\nnr_copies: 2\nblock_size_shift: 22\nsnap_id: 1\nvdi_id: {vid:x}\nparent_vdi_id: 0\nbtree_counter: 0\ndata_vdi_id:\n1: {vid:x}\ngref:\n1: {vid:x}, 0, 0\n"
    )), "{dump}");
}

#[test]
fn erasure_coded_check_rebuilds_a_lost_strip() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "ec", "8M", "-c", "2:1"]);
    let data = pattern(9, 8 * MIB);
    write(&c, "ec", 0, &data);
    let vid = vid_of(&c, "ec", 0);
    assert_eq!(
        c.dog_ok(&["vdi", "check", "ec"]),
        "finish check&repair ec\n"
    );
    let strip = c
        .nodes
        .iter()
        .flat_map(|n| n.objects().into_iter().map(move |f| n.obj_dir().join(f)))
        .find(|p| {
            p.file_name().unwrap().to_str().unwrap()
                == format!("{:016x}_1", vid_to_data_oid(vid, 0))
        })
        .unwrap();
    let saved = std::fs::read(&strip).unwrap();
    std::fs::remove_file(&strip).unwrap();
    assert_eq!(
        c.dog_ok(&["vdi", "check", "ec"]),
        format!(
            "fixed missing {:016x}, copy index 1\nfinish check&repair ec\n",
            vid_to_data_oid(vid, 0)
        )
    );
    assert_eq!(std::fs::read(&strip).unwrap(), saved);
    assert!(read(&c, "ec", &[], 0, 8 * MIB) == data);
    // A strip that rotted fails its checksums: it is rebuilt.
    let mut bad = saved.clone();
    bad[100] ^= 0xff;
    std::fs::write(&strip, &bad).unwrap();
    assert_eq!(
        c.dog_ok(&["vdi", "check", "ec"]),
        format!(
            "fixed unreadable {:016x}, copy index 1\nfinish check&repair ec\n",
            vid_to_data_oid(vid, 0)
        )
    );
    assert_eq!(std::fs::read(&strip).unwrap(), saved);
    // A strip changed behind the cluster's back without checksums (as a
    // store the original wrote) breaks the parity.
    std::fs::write(&strip, &bad).unwrap();
    let name = strip.file_name().unwrap().to_str().unwrap();
    std::fs::remove_file(strip.with_file_name(format!(".{name}.csum"))).unwrap();
    let out = c.dog(&["vdi", "check", "ec"]);
    assert!(out.status.success());
    assert_eq!(
        err(&out),
        format!("object {:016x} is inconsistent\n", vid_to_data_oid(vid, 0))
    );
}

/// `vdi check -e` asks each node for the strips it should hold.
#[test]
fn erasure_coded_exist_check() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "ec", "8M", "-c", "2:1"]);
    write(&c, "ec", 0, &pattern(9, 8 * MIB));
    assert_eq!(
        c.dog_ok(&["vdi", "check", "-e", "ec"]),
        "ec is fine, no object is missing.\n"
    );
    let vid = vid_of(&c, "ec", 0);
    let name = format!("{:016x}_1", vid_to_data_oid(vid, 0));
    let n = c
        .nodes
        .iter()
        .find(|n| n.objects().contains(&name))
        .unwrap();
    std::fs::remove_file(n.obj_dir().join(&name)).unwrap();
    let out = c.dog(&["vdi", "check", "-e", "ec"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out),
        format!(
            "[127.0.0.1:{}] oid {:016x} is missing.\nec lost 1 object(s).\n",
            n.port,
            vid_to_data_oid(vid, 0)
        )
    );
}

#[test]
fn replica_check_repairs_a_lost_copy() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    write(&c, "v", 0, &pattern(7, MIB));
    let oid = vid_to_data_oid(vid_of(&c, "v", 0), 0);
    let name = format!("{oid:016x}");
    let holder = c
        .nodes
        .iter()
        .find(|n| n.objects().contains(&name))
        .unwrap();
    let addr = format!("127.0.0.1:{}", holder.port);
    std::fs::remove_file(holder.obj_dir().join(&name)).unwrap();
    let out = c.dog(&["vdi", "check", "-e", "v"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out),
        format!("[{addr}] oid {name} is missing.\nv lost 1 object(s).\n")
    );
    let out = c.dog(&["vdi", "check", "v"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out),
        format!("fixed missing {name}\nfinish check&repair v\n")
    );
    assert_eq!(err(&out), "", "needs server op REPAIR_REPLICA");
    assert_eq!(
        c.dog_ok(&["vdi", "check", "-e", "v"]),
        "v is fine, no object is missing.\n"
    );
    let out = c.dog_ok(&["cluster", "check"]);
    assert_eq!(out, "fix vdi v\nfinish check&repair v\n");
}

#[test]
fn attributes() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    let check = |args: &[&str], input: &[u8], code: i32, stdout: &[u8], stderr: &str| {
        let out = c.dog_stdin(0, args, input);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", err(&out));
        assert_eq!(out.stdout, stdout, "{args:?}");
        assert_eq!(err(&out), stderr, "{args:?}");
    };
    check(&["vdi", "setattr", "v", "k1", "value1"], b"", 0, b"", "");
    check(&["vdi", "getattr", "v", "k1"], b"", 0, b"value1", "");
    check(
        &["vdi", "setattr", "-x", "v", "k1", "v2"],
        b"",
        3,
        b"",
        "The attribute 'k1' already exists\n",
    );
    check(&["vdi", "setattr", "v", "k1", "v2"], b"", 0, b"", "");
    check(&["vdi", "getattr", "v", "k1"], b"", 0, b"v2", "");
    // From stdin, up to the first NUL; the largest value fits exactly.
    check(
        &["vdi", "setattr", "v", "k2"],
        b"from stdin\0ignored",
        0,
        b"",
        "",
    );
    check(&["vdi", "getattr", "v", "k2"], b"", 0, b"from stdin", "");
    let big = vec![b'y'; 65536];
    check(&["vdi", "setattr", "v", "k3"], &big, 0, b"", "");
    check(&["vdi", "getattr", "v", "k3"], b"", 0, &big, "");
    check(&["vdi", "setattr", "-d", "v", "k2"], b"", 0, b"", "");
    check(
        &["vdi", "getattr", "v", "k2"],
        b"",
        5,
        b"",
        "Attribute 'k2' not found\n",
    );
    check(
        &["vdi", "setattr", "-d", "v", "k9"],
        b"",
        5,
        b"",
        "Attribute 'k9' not found\n",
    );
    check(
        &["vdi", "getattr", "nosuch", "k1"],
        b"",
        5,
        b"",
        "VDI not found\n",
    );
    check(
        &["vdi", "setattr", "nosuch", "k1", "x"],
        b"",
        5,
        b"",
        "VDI not found\n",
    );
}

#[test]
fn locks_are_listed_and_released() {
    if !sheep_bin().exists() {
        return;
    }
    let c = Cluster::start(3);
    c.dog_ok(&["cluster", "format", "-c", "2", "-l"]);
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    let vid = vid_of(&c, "v", 0);
    assert_eq!(
        c.dog_ok(&["vdi", "lock", "list"]),
        "  Name         Id  VDI id  Tag            Owner node(s)\n"
    );
    // Lock it as QEMU does, through node 1.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep =
            sd_client::Endpoint::Tcp(format!("127.0.0.1:{}", c.nodes[1].port).parse().unwrap());
        let mut conn = sd_client::Connection::connect(&ep).await.unwrap();
        let payload = sd_client::vdi::vdi_name_payload(b"v", Some(b""));
        let mut req = SdReq::new(op::LOCK_VDI);
        req.flags = flag::CMD_WRITE;
        req.data_length = payload.len() as u32;
        let (rsp, _) = conn.exec(&req, &payload).await.unwrap();
        assert_eq!(rsp.result, SdRes::SUCCESS);
    });
    // Lock state is a cluster operation: node 1 answered once it applied
    // it, the node dog asks may apply it a moment later.
    let header = "  Name         Id  VDI id  Tag            Owner node(s)\n";
    let locked = format!(
        "{header}  v             0  {vid:6x}                 IPv4 ip:127.0.0.1 port:{}\n",
        c.nodes[1].port
    );
    wait_until("the lock to be listed", || {
        c.dog_ok(&["vdi", "lock", "list"]) == locked
    });
    c.dog_ok(&["vdi", "lock", "unlock", "v"]);
    assert_eq!(c.dog_ok(&["vdi", "lock", "list"]), header);
    let out = c.dog(&["vdi", "lock", "unlock", "v"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err(&out), format!("VDI v (vid={vid:x}) is not locked\n"));
}

#[test]
fn redundancy_changes() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "alone", "8M"]);
    write(&c, "alone", 0, b"data");
    let out = c.dog(&["vdi", "alter-copy", "-c", "3", "-f", "alone"]);
    assert!(
        out.status.success(),
        "needs server op ALTER_VDI_COPY: {}",
        err(&out)
    );
    assert_eq!(
        err(&out),
        "alone's redundancy level is set to 3, the old one was 2.\n"
    );
    c.wait_recovery();
    let oid = format!("{:016x}", vid_to_data_oid(vid_of(&c, "alone", 0), 0));
    let copies = c
        .nodes
        .iter()
        .filter(|n| n.objects().contains(&oid))
        .count();
    assert_eq!(copies, 3);

    // The cluster default: prompt, refusal, change.
    let out = c.dog_stdin(0, &["cluster", "alter-copy", "-c", "3"], b"no\n");
    assert_eq!(out.status.code(), Some(0));
    let out = c.dog(&["cluster", "alter-copy", "-c", "3", "-f"]);
    assert!(out.status.success());
    assert_eq!(
        err(&out),
        "The cluster's redundancy level is set to 3, the old one was 2.\n"
    );
    let out = c.dog(&["cluster", "alter-copy", "-f"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out),
        "The cluster's redundancy level is not specified, use 3 as default.\n"
    );
    assert_eq!(
        err(&out),
        "The cluster's redundancy level is already set to 3, nothing changed.\n"
    );
}

/// An object shared by a snapshot chain and a clone of its first
/// snapshot (the smallest sequence a randomized model once found leaking):
/// it stays readable through the clone while the VDIs that created and
/// inherited it are deleted, and goes with the last of them.
#[test]
fn shared_object_is_reclaimed_after_snapshots_and_a_clone() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "-z", "20", "v", "4M"]);
    write(&c, "v", 0, b"hi");
    c.dog_ok(&["vdi", "snapshot", "-s", "t8", "v"]);
    c.dog_ok(&["vdi", "snapshot", "-s", "t9", "v"]);
    c.dog_ok(&["vdi", "clone", "-s", "t8", "v", "c9"]);
    for args in [
        &["vdi", "delete", "v"][..],
        &["vdi", "delete", "-s", "t8", "v"],
        &["vdi", "delete", "-s", "t9", "v"],
    ] {
        let out = c.dog(args);
        assert_eq!((out.status.code(), err(&out)), (Some(0), String::new()));
        assert_eq!(read(&c, "c9", &[], 0, 2), b"hi", "after {args:?}");
    }
    assert!(!data_objects(&c).is_empty());
    let out = c.dog(&["vdi", "delete", "c9"]);
    assert_eq!((out.status.code(), err(&out)), (Some(0), String::new()));
    wait_until("every object file to be removed", || {
        c.nodes.iter().all(|n| n.objects().is_empty())
    });
}

/// A client holding the inode of a working VDI that is snapshotted
/// behind its back: its next write answers READONLY, and the shared
/// client path reloads the working VDI by name and writes there with
/// copy-on-write, as QEMU does. The snapshot keeps the old data.
#[test]
fn write_follows_a_snapshot_taken_behind_the_clients_back() {
    use sd_client::vdi::{read_inode, read_range, write_range};
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "12M"]);
    let old = pattern(11, 4 * MIB);
    write(&c, "v", 0, &old);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = sd_client::Endpoint::Tcp(format!("127.0.0.1:{}", c.nodes[2].port).parse().unwrap());
    let mut conn = rt.block_on(sd_client::Connection::connect(&ep)).unwrap();
    let vid = vid_of(&c, "v", 0);
    let mut inode = rt.block_on(read_inode(&mut conn, vid)).unwrap();

    c.dog_ok(&["vdi", "snapshot", "-s", "snap", "v"]);
    // Object 0 is the (now read-only) VDI's own, object 1 unallocated.
    let new = pattern(12, 2 * MIB);
    let at = 3 * MIB;
    rt.block_on(write_range(&mut conn, &mut inode, at as u64, &new, 0))
        .unwrap();
    let cur = vid_of(&c, "v", 0);
    assert_ne!(cur, vid);
    assert_eq!(inode.header.vdi_id, cur);

    let mut want = old.clone();
    want.resize(8 * MIB, 0);
    want[at..at + new.len()].copy_from_slice(&new);
    assert!(read(&c, "v", &[], 0, 8 * MIB) == want);
    let mut snap = old;
    snap.resize(8 * MIB, 0);
    assert!(read(&c, "v", &["-s", "snap"], 0, 8 * MIB) == snap);
    // The client's reloaded inode reads the same.
    let mut buf = vec![0; 8 * MIB];
    rt.block_on(read_range(&mut conn, &inode, 0, &mut buf, 0))
        .unwrap();
    assert!(buf == want);
}

/// Objects created right after their VDI (here by `clone -P`) must have
/// the VDI's object size on every replica; a node that has not applied
/// the new VDI yet falls back to the cluster default (4 MiB), and the
/// replicas' hashes then differ.
#[test]
fn new_vdi_objects_have_its_object_size_on_every_replica() {
    let Some(c) = cluster("2") else { return };
    for i in 0..40 {
        let (b, cl) = (format!("b{i}"), format!("c{i}"));
        c.dog_ok(&["vdi", "create", "-z", "20", &b, "4M"]);
        c.dog_ok(&["vdi", "snapshot", "-s", "t", &b]);
        c.dog_ok(&["vdi", "clone", "-P", "-s", "t", &b, &cl]);
    }
    for n in &c.nodes {
        for f in n.objects() {
            let oid = u64::from_str_radix(&f[..16], 16).unwrap();
            let len = std::fs::metadata(n.obj_dir().join(&f)).unwrap().len();
            if is_data_obj(oid) {
                assert_eq!(len, MIB as u64, "{f} on node {}", n.port);
            }
        }
    }
    let out = c.dog(&["cluster", "check"]);
    assert_eq!(err(&out), "");
}

/// On a terminal, `vdi check` draws the original's progress line (through
/// indicatif) and ends it with a newline; off a terminal it prints only
/// its result (the other tests).
#[test]
fn progress_bar_on_a_terminal() {
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "16M"]);
    write(&c, "v", 0, &pattern(3, 6 * MIB));
    let dog = sd_testkit::dog_bin();
    let cmd = format!(
        "stty cols 100 rows 40; {} vdi check v -p {}",
        dog.display(),
        c.nodes[0].port
    );
    // util-linux `script` runs the command on a pseudo-terminal.
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", err(&out));
    let tty = text(&out);
    let frames: Vec<&str> = tty
        .split(['\r', '\n'])
        .map(|f| f.trim_start_matches("\x1b[2K"))
        .filter(|f| f.contains("% ["))
        .collect();
    assert!(frames.len() >= 2, "no progress drawn: {tty:?}");
    assert!(frames[0].starts_with("  0.0 % [>"), "{:?}", frames[0]);
    let last = frames.last().unwrap();
    assert!(
        last.starts_with("100.0 % [====") && last.contains("] 16 MB / 16 MB"),
        "{last:?}"
    );
    assert!(last.len() <= 100, "never wider than the terminal: {last:?}");
    assert!(
        tty.ends_with("\r\nfinish check&repair v\r\n"),
        "the bar ends with a newline: {tty:?}"
    );
}

/// QEMU's `savevm` state (vmstate objects, §6.5) goes with its VDI:
/// written like QEMU does, then recorded in the snapshot's header, it is
/// read back, and deleting the snapshot and the VDI leaves no object.
#[test]
fn vm_state_is_removed_with_its_vdi() {
    use sd_client::vdi::{read_object, write_object, Redundancy, WriteKind};
    let Some(c) = cluster("2") else { return };
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    write(&c, "v", 0, b"disk");
    let vid = vid_of(&c, "v", 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = sd_client::Endpoint::Tcp(format!("127.0.0.1:{}", c.nodes[1].port).parse().unwrap());
    let mut conn = rt.block_on(sd_client::Connection::connect(&ep)).unwrap();
    let red = Redundancy::default();
    let state = pattern(21, 6 * MIB);
    rt.block_on(async {
        for (i, part) in state.chunks(4 * MIB).enumerate() {
            let oid = vid_to_vmstate_oid(vid, i as u32);
            write_object(&mut conn, oid, WriteKind::Create, 0, part, red, 0)
                .await
                .unwrap();
        }
        // QEMU records the size in the VDI it snapshots.
        let size = (state.len() as u64).to_le_bytes();
        write_object(
            &mut conn,
            vid_to_vdi_oid(vid),
            WriteKind::Overwrite,
            544,
            &size,
            red,
            0,
        )
        .await
        .unwrap();
        let back = read_object(
            &mut conn,
            vid_to_vmstate_oid(vid, 1),
            0,
            2 * MIB as u32,
            red,
            0,
        )
        .await
        .unwrap();
        assert!(back == state[4 * MIB..]);
    });
    c.dog_ok(&["vdi", "snapshot", "-s", "saved", "v"]);
    let vmstate = |c: &Cluster| {
        c.nodes
            .iter()
            .flat_map(|n| n.objects())
            .filter(|f| is_vmstate_obj(u64::from_str_radix(&f[..16], 16).unwrap()))
            .count()
    };
    assert_eq!(vmstate(&c), 2 * 2, "two objects, two copies each");
    c.dog_ok(&["vdi", "delete", "-s", "saved", "v"]);
    assert_eq!(vmstate(&c), 0, "the snapshot's VM state went with it");
    c.dog_ok(&["vdi", "delete", "v"]);
    wait_until("every object file to be removed", || {
        c.nodes.iter().all(|n| n.objects().is_empty())
    });
}
