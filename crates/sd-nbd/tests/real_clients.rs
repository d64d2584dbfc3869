//! The server driven by real NBD clients that nobody here wrote: qemu-img,
//! qemu-io, qemu-nbd (qemu-utils), nbdinfo and nbdcopy (libnbd-bin) and
//! fio's nbd engine (fio). A missing tool skips its test with a note;
//! `tests/install-clients.sh` installs them all.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{pattern, sparse_export, TestServer};
use sd_nbd::mem::{MemExport, MemExports};

const MIB: u64 = 1 << 20;

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: {tool} is not installed (run crates/sd-nbd/tests/install-clients.sh)");
    }
    ok
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn server() -> TestServer {
    let exports = Arc::new(MemExports::new());
    exports.insert("src", sparse_export(64 * MIB));
    exports.insert("dst", Arc::new(MemExport::new(64 * MIB)));
    exports.insert(
        "ro",
        Arc::new(
            MemExport::new(8 * MIB)
                .read_only(true)
                .with_description("a snapshot"),
        ),
    );
    TestServer::start(exports)
}

fn export(s: &TestServer, name: &str) -> Vec<u8> {
    // Reaching into the backend directly: what did the clients really write?
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = rt
        .block_on(sd_nbd::Exports::open(s.exports.as_ref(), name))
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; e.size() as usize];
    rt.block_on(e.read(0, &mut buf)).unwrap();
    buf
}

/// A scratch directory removed when the test ends.
fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sd-nbd-")
        .tempdir()
        .unwrap()
}

fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn qemu_img_info_and_convert_round_trip() {
    if !have("qemu-img") {
        return;
    }
    let s = server();
    let info = run_ok(Command::new("qemu-img").args(["info", "--output=json", &s.uri("src")]));
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 64 * MIB)),
        "{info}"
    );

    // NBD → file → NBD → compare all three byte for byte.
    let dir = tmp();
    let file = dir.path().join("convert.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &s.uri("src")])
            .arg(&file),
    );
    let src = export(&s, "src");
    assert_same(&std::fs::read(&file).unwrap(), &src, "src → file");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&file)
            .arg(s.uri("dst")),
    );
    assert_same(&export(&s, "dst"), &src, "file → dst");
    // The target stayed sparse: qemu-img skipped (or zeroed) the holes.
    let cmp = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &s.uri("src"),
        &s.uri("dst"),
    ]));
    assert!(cmp.status.success());
}

#[test]
fn qemu_img_map_reports_holes() {
    if !have("qemu-img") {
        return;
    }
    let s = server();
    let map =
        run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &s.uri("src")]));
    // The first MiB is data, then a hole up to the middle of the export.
    assert!(
        map.contains("\"start\": 0, \"length\": 1048576,") && map.contains("\"data\": true"),
        "{map}"
    );
    assert!(
        map.contains("\"start\": 1048576, \"length\": 32505856,"),
        "{map}"
    );
    assert!(map.contains("\"data\": false"), "{map}");
}

#[test]
fn qemu_io_pattern_write_read_and_more() {
    if !have("qemu-io") {
        return;
    }
    let s = server();
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &s.uri("dst"),
        "-c",
        "write -P 0xab 4096 65536",
        "-c",
        "read -P 0xab 4096 65536",
        "-c",
        "write -z 8192 4096",
        "-c",
        "read -P 0 8192 4096",
        "-c",
        "write -z -u 16384 4096",
        "-c",
        "read -P 0 16384 4096",
        "-c",
        "write -P 0xcd -f 1048576 1048576",
        "-c",
        "discard 1048576 1048576",
        "-c",
        "flush",
        "-c",
        "aio_write -P 0x11 2097152 65536",
        "-c",
        "aio_write -P 0x22 2162688 65536",
        "-c",
        "aio_flush",
        "-c",
        "read -P 0x11 2097152 65536",
        "-c",
        "read -P 0x22 2162688 65536",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.contains("error"), "{out}");
    let d = export(&s, "dst");
    assert!(d[4096..8192].iter().all(|&b| b == 0xab));
    assert!(d[8192..12288].iter().all(|&b| b == 0));
    assert!(d[12288..16384].iter().all(|&b| b == 0xab));
    assert!(d[16384..20480].iter().all(|&b| b == 0));
    assert!(d[20480..69632].iter().all(|&b| b == 0xab));
    assert!(
        d[1 << 20..2 << 20].iter().all(|&b| b == 0),
        "discarded range reads as zero"
    );
    assert!(d[2 << 20..(2 << 20) + 65536].iter().all(|&b| b == 0x11));
}

#[test]
fn qemu_io_reads_read_only_export_and_cannot_write_it() {
    if !have("qemu-io") {
        return;
    }
    let s = server();
    let out = run_ok(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        &s.uri("ro"),
        "-c",
        "read -P 0 0 65536",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // qemu sees NBD_FLAG_READ_ONLY and refuses to open the export for writing.
    let w =
        run(Command::new("qemu-io").args(["-f", "raw", &s.uri("ro"), "-c", "write -P 1 0 4096"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        !w.status.success() && text.contains("Permission denied"),
        "{text}"
    );
    assert!(export(&s, "ro").iter().all(|&b| b == 0));
}

#[test]
fn unknown_export_is_refused_and_server_keeps_serving() {
    if !have("qemu-img") {
        return;
    }
    let s = server();
    let bad = run(Command::new("qemu-img").args(["info", &s.uri("no-such-vdi")]));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no-such-vdi"), "{err}");
    run_ok(Command::new("qemu-img").args(["info", &s.uri("src")]));
}

#[test]
fn qemu_nbd_lists_exports() {
    if !have("qemu-nbd") {
        return;
    }
    let s = server();
    let out =
        run_ok(Command::new("qemu-nbd").args(["-L", "-b", "127.0.0.1", "-p", &s.port.to_string()]));
    for name in ["src", "dst", "ro"] {
        assert!(out.contains(&format!("export: '{name}'")), "{out}");
    }
    assert!(out.contains("base:allocation"), "{out}");
}

#[test]
fn nbdinfo_json_shows_size_and_capabilities() {
    if !have("nbdinfo") {
        return;
    }
    let s = server();
    let out = run_ok(Command::new("nbdinfo").args(["--json", &s.uri("src")]));
    let flat: String = out.split_whitespace().collect();
    for want in [
        format!("\"export-size\":{}", 64 * MIB),
        "\"can_trim\":true".into(),
        "\"can_zero\":true".into(),
        "\"can_fast_zero\":true".into(),
        "\"can_multi_conn\":true".into(),
        "\"can_flush\":true".into(),
        "\"can_fua\":true".into(),
        "\"is_read_only\":false".into(),
        "\"block_size_preferred\":4096".into(),
        "\"block_size_maximum\":33554432".into(),
        "\"base:allocation\"".into(),
    ] {
        assert!(flat.contains(&want), "missing {want} in {out}");
    }
    let ro = run_ok(Command::new("nbdinfo").args(["--json", &s.uri("ro")]));
    assert!(
        ro.split_whitespace()
            .collect::<String>()
            .contains("\"is_read_only\":true"),
        "{ro}"
    );
    let list =
        run_ok(Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{}", s.port)]));
    for name in ["src", "dst", "ro"] {
        assert!(list.contains(&format!("export=\"{name}\"")), "{list}");
    }
}

#[test]
fn nbdinfo_map_shows_holes() {
    if !have("nbdinfo") {
        return;
    }
    let s = server();
    let map = run_ok(Command::new("nbdinfo").args(["--map", &s.uri("src")]));
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..4], ["0", "1048576", "0", "data"], "{map}");
    assert_eq!(
        rows[1][..4],
        ["1048576", "32505856", "3", "hole,zero"],
        "{map}"
    );
    let total: u64 = rows.iter().map(|r| r[1].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 64 * MIB);
}

#[test]
fn nbdcopy_round_trip() {
    if !have("nbdcopy") {
        return;
    }
    let s = server();
    let dir = tmp();
    let file = dir.path().join("nbdcopy.raw");
    run_ok(Command::new("nbdcopy").arg(s.uri("src")).arg(&file));
    let src = export(&s, "src");
    assert_same(&std::fs::read(&file).unwrap(), &src, "nbdcopy src → file");
    // Scribble on dst first so the copy has to overwrite and zero.
    s.exports.insert("dst", Arc::new(MemExport::new(64 * MIB)));
    run_ok(Command::new("nbdcopy").arg(s.uri("src")).arg(s.uri("dst")));
    assert_same(&export(&s, "dst"), &src, "nbdcopy src → dst (multi-conn)");
    std::fs::write(&file, pattern(64 * MIB as usize, 9)).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .args(["--flush", "--connections=4", "--requests=32"])
            .arg(&file)
            .arg(s.uri("dst")),
    );
    assert_same(
        &export(&s, "dst"),
        &std::fs::read(&file).unwrap(),
        "nbdcopy file → dst",
    );
}

#[test]
fn fio_nbd_engine_verifies() {
    if !have("fio") || !Path::new("/usr/bin/fio").exists() {
        return;
    }
    let s = server();
    // Run in the temp dir, and without a verify state file, so fio leaves
    // nothing behind in the source tree.
    let dir = tmp();
    let out = run_ok(Command::new("fio").current_dir(dir.path()).args([
        "--verify_state_save=0",
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri("dst")),
        "--rw=randwrite",
        "--bs=4k,64k",
        "--size=16m",
        "--iodepth=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=terse",
    ]));
    // terse v3: field 5 is the error code of the job.
    let fields: Vec<&str> = out.lines().last().unwrap().split(';').collect();
    assert_eq!(fields[4], "0", "fio reported an error: {out}");
}
