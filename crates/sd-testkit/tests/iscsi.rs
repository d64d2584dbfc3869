//! A VDI served over iSCSI by Debian's unmodified tgt through its built-in
//! sheepdog backing store (the original wire protocol), driven by libiscsi:
//! the iscsi-test-cu conformance suites, data written on one side (iSCSI or
//! `dog`) read back byte-identical on the other, the LUN through sheep's unix
//! socket, a snapshot taken behind tgt's back (READONLY, inode reload,
//! copy-on-write), and a node other than tgt's gateway lost.
//!
//! tgt keeps only four digits of a sheep port (`snprintf(port_s, 5, ..)`),
//! so the cluster runs on ports ≤ 9999.

use sd_testkit::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const IQN: &str = "iqn.2026-11.org.sheepdog.test:iv";
const IQN2: &str = "iqn.2026-11.org.sheepdog.test:iv-unix";
const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iscsi_rw.py");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` with `input` on stdin; kills it after `secs`.
fn run_for(cmd: &str, args: &[&str], input: &[u8], secs: u64) -> Output {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd} {args:?} did not finish in {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = w.join();
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

/// A private tgtd (own control port and portal), stopped and its control
/// socket files removed on drop, also when the test fails.
struct Tgtd {
    child: Option<Child>,
    control: u16,
    portal: u16,
    log: PathBuf,
    tids: Vec<u32>,
}

impl Tgtd {
    fn socket(control: u16) -> PathBuf {
        PathBuf::from(format!("/var/run/tgtd/socket.{control}"))
    }

    fn start(dir: &Path) -> Tgtd {
        for attempt in 0..5 {
            let control = loop {
                // tgtd takes control ports up to 32767 only.
                let p = 10000 + rand::random::<u16>() % 22768;
                let s = Self::socket(p);
                if !s.exists() && !s.with_extension(format!("{p}.lock")).exists() {
                    break p;
                }
            };
            let portal = free_ports(1, 3300..7000);
            let log = dir.join(format!("tgtd.{attempt}.log"));
            let f = std::fs::File::create(&log).unwrap();
            let child = Command::new("tgtd")
                .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{portal}")])
                .args(["--control-port", &control.to_string()])
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("spawn tgtd");
            let mut t = Tgtd {
                child: Some(child),
                control,
                portal,
                log,
                tids: Vec::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if t.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                    eprintln!("tgtd exited at start:\n{}", t.log_text());
                    break;
                }
                let up = std::net::TcpStream::connect(("127.0.0.1", portal)).is_ok()
                    && t.adm_raw(&["--mode", "system", "--op", "show"])
                        .status
                        .success();
                if up {
                    return t;
                }
                if Instant::now() > deadline {
                    eprintln!("tgtd did not come up:\n{}", t.log_text());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start tgtd");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn adm_raw(&self, args: &[&str]) -> Output {
        let c = self.control.to_string();
        let mut a = vec!["-C", &c, "--lld", "iscsi"];
        a.extend_from_slice(args);
        run_for("tgtadm", &a, &[], 30)
    }

    fn adm(&self, args: &[&str]) -> String {
        let o = self.adm_raw(args);
        assert!(
            o.status.success(),
            "tgtadm {args:?} failed: {}\ntgtd log:\n{}",
            text(&o),
            self.log_text()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Target `tid` named `iqn` with LUN 1 on a VDI; returns its URL.
    /// `backing` is tgt's sheepdog path: `tcp:HOST:PORT:VDI` or
    /// `unix:SOCKET:VDI`.
    fn export(&mut self, tid: u32, iqn: &str, backing: &str) -> String {
        self.tids.push(tid);
        let tid = tid.to_string();
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            &tid,
            "--targetname",
            iqn,
        ]);
        self.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &tid,
            "--lun",
            "1",
            "--bstype",
            "sheepdog",
            "--backing-store",
            backing,
        ]);
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            &tid,
            "--initiator-address",
            "ALL",
        ]);
        format!("iscsi://127.0.0.1:{}/{iqn}/1", self.portal)
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tgtd log:\n{}", self.log_text());
        }
        if let Some(mut child) = self.child.take() {
            // Graceful first: remove the targets (closes the LUNs, so tgt
            // sends RELEASE_VDI), then the system (tgtd exits), then SIGKILL.
            let c = self.control.to_string();
            let adm = |args: &[&str]| {
                // Bounded: a wedged tgtd must not hang the cleanup.
                let Ok(mut a) = Command::new("tgtadm")
                    .args(["-C", &c])
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                else {
                    return;
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                while a.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = a.kill();
                let _ = a.wait();
            };
            for tid in &self.tids {
                let t = tid.to_string();
                adm(&[
                    "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", &t,
                ]);
            }
            adm(&["--mode", "system", "--op", "delete"]);
            let deadline = Instant::now() + Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let s = Self::socket(self.control);
        let _ = std::fs::remove_file(&s);
        let _ = std::fs::remove_file(s.with_extension(format!("{}.lock", self.control)));
    }
}

/// Runs one iscsi-test-cu suite; asserts every test ran and none failed.
/// Returns the skip messages.
fn conformance(url: &str, test: &str) -> Vec<String> {
    let o = run_for(
        "iscsi-test-cu",
        &["--dataloss", &format!("--test={test}"), url],
        &[],
        300,
    );
    let out = text(&o);
    assert!(o.status.success(), "iscsi-test-cu {test} failed:\n{out}");
    // CUnit summary rows: "tests  <total> <ran> <passed> <failed> <inactive>".
    let row = |kind: &str| -> Vec<u64> {
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&kind))
            .unwrap_or_else(|| panic!("no '{kind}' summary from iscsi-test-cu {test}:\n{out}"))[1..]
            .iter()
            .map(|n| n.parse().unwrap_or(0))
            .collect()
    };
    let tests = row("tests");
    let asserts = row("asserts");
    assert!(
        tests[0] > 0 && tests[1] == tests[0] && tests[3] == 0 && asserts[3] == 0,
        "iscsi-test-cu {test}: tests {tests:?}, asserts {asserts:?}:\n{out}"
    );
    out.lines()
        .filter(|l| l.contains("[SKIPPED]"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Writes `data` at byte `off` of the LUN through libiscsi (WRITE16).
fn iscsi_write(url: &str, off: usize, data: &[u8]) {
    let o = run_for(
        "python3",
        &[HELPER, "write", url, &off.to_string()],
        data,
        120,
    );
    assert!(o.status.success(), "iSCSI write at {off}: {}", text(&o));
}

/// Reads `len` bytes at byte `off` of the LUN through libiscsi (READ16).
fn iscsi_read(url: &str, off: usize, len: usize) -> Vec<u8> {
    let o = run_for(
        "python3",
        &[HELPER, "read", url, &off.to_string(), &len.to_string()],
        &[],
        120,
    );
    assert!(o.status.success(), "iSCSI read at {off}: {}", text(&o));
    assert_eq!(o.stdout.len(), len, "short iSCSI read at {off}");
    o.stdout
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
}

#[test]
fn tgt_sheepdog_backing_store_over_iscsi() {
    for t in ["tgtd", "tgtadm", "iscsi-test-cu", "python3"] {
        assert!(
            have(t),
            "{t} is missing: run ./scripts/test.sh, which installs tgt and libiscsi-bin"
        );
    }
    let lib = Command::new("python3")
        .args(["-c", "import ctypes; ctypes.CDLL('libiscsi.so.7')"])
        .output()
        .unwrap();
    assert!(
        lib.status.success(),
        "libiscsi.so.7 cannot be loaded ({}): run ./scripts/test.sh, which installs libiscsi-bin",
        text(&lib)
    );

    let mut c = Cluster::start_with(3, 7100..9999, &["-n"]);
    assert!(c.nodes.iter().all(|n| n.port <= 9999));
    c.format("3");
    c.dog_ok(&["vdi", "create", "iv", "64M"]);

    // Written by dog before tgt opens the VDI (tgt caches the inode, so
    // objects allocated behind its back later are not seen until reopen).
    let early_off = 40 * MIB - 3 * 512;
    let early = pattern(11, 6 * MIB + 1024);
    c.vdi_write(1, "iv", early_off as u64, &early);

    let mut tgtd = Tgtd::start(c.root());
    let url = tgtd.export(1, IQN, &format!("tcp:127.0.0.1:{}:iv", c.nodes[0].port));
    let show = tgtd.adm(&["--mode", "target", "--op", "show"]);
    assert!(
        show.contains("Backing store type: sheepdog") && show.contains("Size: 67 MB"),
        "{show}"
    );

    // What dog wrote reads back through iSCSI.
    let got = iscsi_read(&url, early_off, early.len());
    assert!(
        got == early,
        "dog write -> iSCSI read differs at {:?}",
        first_diff(&got, &early)
    );

    // Conformance suites (they write all over the LUN: --dataloss).
    for t in ["SCSI.Read16", "SCSI.Write16", "SCSI.ReadCapacity16"] {
        let skipped = conformance(&url, t);
        assert!(skipped.is_empty(), "{t} skipped tests: {skipped:?}");
    }
    // tgt's sheepdog store has no UNMAP (the LU is fully provisioned):
    // libiscsi reports the Unmap tests as skipped, none may fail.
    let skipped = conformance(&url, "SCSI.Unmap");
    eprintln!("SCSI.Unmap skipped: {skipped:?}");

    // iSCSI WRITE16 across object boundaries; dog reads it through every
    // node, and iSCSI reads it back.
    let off = 3 * MIB + 512;
    let data = pattern(12, 5 * MIB + 1536);
    iscsi_write(&url, off, &data);
    // SYNCHRONIZE CACHE: tgt sends FLUSH_VDI (INVALID_PARMS = no object
    // cache, which tgt takes as success, as with the original).
    let o = run_for("python3", &[HELPER, "sync", &url], &[], 60);
    assert!(o.status.success(), "SYNCHRONIZE CACHE: {}", text(&o));
    for i in 0..3 {
        let got = c.vdi_read(i, "iv", off as u64, data.len());
        assert!(
            got == data,
            "iSCSI write -> dog read (node {i}) differs at {:?}",
            first_diff(&got, &data)
        );
    }
    let got = iscsi_read(&url, off, data.len());
    assert!(
        got == data,
        "iSCSI round trip differs at {:?}",
        first_diff(&got, &data)
    );

    // dog overwrites part of those (now allocated) objects; iSCSI sees it.
    let mut want = data.clone();
    let dog_off = 4 * MIB - 1000;
    let patch = pattern(13, 300_000);
    c.vdi_write(2, "iv", dog_off as u64, &patch);
    want[dog_off - off..dog_off - off + patch.len()].copy_from_slice(&patch);
    let got = iscsi_read(&url, off, want.len());
    assert!(
        got == want,
        "dog overwrite -> iSCSI read differs at {:?}",
        first_diff(&got, &want)
    );

    // The whole LUN equals the whole VDI.
    let all_iscsi = iscsi_read(&url, 0, 64 * MIB);
    let all_dog = c.dog_at(1, &["vdi", "read", "iv"]).stdout;
    assert_eq!(all_dog.len(), 64 * MIB);
    assert!(
        all_iscsi == all_dog,
        "LUN and VDI differ at {:?}",
        first_diff(&all_iscsi, &all_dog)
    );

    // The same VDI through sheep's unix socket (`<dir>/sock`) on node 2.
    let sock = c.nodes[2].dir.join("sock");
    let url2 = tgtd.export(2, IQN2, &format!("unix:{}:iv", sock.display()));
    let got = iscsi_read(&url2, 0, 64 * MIB);
    assert!(
        got == all_dog,
        "unix-socket LUN and VDI differ at {:?}",
        first_diff(&got, &all_dog)
    );

    // A snapshot taken behind tgt's back: its next write gets READONLY,
    // tgt reloads the inode and writes copy-on-write into the new working
    // VDI; the snapshot keeps the old bytes.
    c.dog_ok(&["vdi", "snapshot", "-s", "before", "iv"]);
    let cow_off = 9 * MIB + 4096;
    let cow = pattern(14, MIB + 512);
    iscsi_write(&url, cow_off, &cow);
    let now = c.vdi_read(0, "iv", cow_off as u64, cow.len());
    assert!(
        now == cow,
        "write after snapshot -> dog read differs at {:?}",
        first_diff(&now, &cow)
    );
    let out = c.dog_at(
        1,
        &[
            "vdi",
            "read",
            "-s",
            "before",
            "iv",
            &cow_off.to_string(),
            &cow.len().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "dog vdi read -s before: {}",
        text(&out)
    );
    let snap = out.stdout;
    let old = &all_dog[cow_off..cow_off + cow.len()];
    assert!(
        snap == old,
        "snapshot changed at {:?}",
        first_diff(&snap, old)
    );
    let got = iscsi_read(&url, cow_off, cow.len());
    assert!(
        got == cow,
        "iSCSI read after COW differs at {:?}",
        first_diff(&got, &cow)
    );

    // A node that is no LUN's gateway dies (node 0 serves tid 1, node 2
    // tid 2; tgt would retry a dead gateway forever): the gateway retries
    // against the new membership and tgt never sees an error.
    c.kill(1);
    let late_off = 30 * MIB + 512;
    let late = pattern(15, 3 * MIB);
    let t = Instant::now();
    iscsi_write(&url, late_off, &late);
    eprintln!(
        "3 MiB iSCSI write right after node loss took {:?}",
        t.elapsed()
    );
    let got = c.vdi_read(2, "iv", late_off as u64, late.len());
    assert!(
        got == late,
        "write after node loss -> dog read differs at {:?}",
        first_diff(&got, &late)
    );
    let got = iscsi_read(&url, late_off, late.len());
    assert!(
        got == late,
        "iSCSI read after node loss differs at {:?}",
        first_diff(&got, &late)
    );

    let control = tgtd.control;
    drop(tgtd);
    assert!(
        !Tgtd::socket(control).exists(),
        "tgtd control socket left behind"
    );
}

/// iSCSI multipath (§6.7): two tgtd serve one VDI through two different
/// sheep, each holding a shared lock. After one path allocates an object
/// the other path's cached inode is stale; its sheep answers
/// INODE_INVALIDATED until tgt reloads the inode, so the second path reads
/// the new data instead of the zeros its cache promises.
#[test]
fn multipath_paths_see_each_others_allocations() {
    for t in ["tgtd", "tgtadm", "python3"] {
        assert!(have(t), "{t} is missing: run ./scripts/test.sh");
    }
    let c = Cluster::start_with(3, 7100..9999, &["-n"]);
    c.dog_ok(&["cluster", "format", "-l", "-c", "2"]);
    c.dog_ok(&["vdi", "create", "mp", "64M"]);
    let first = pattern(31, MIB);
    c.vdi_write(2, "mp", 0, &first);

    let mut a = Tgtd::start(c.root());
    let url_a = a.export(1, IQN, &format!("tcp:127.0.0.1:{}:mp", c.nodes[0].port));
    let mut b = Tgtd::start(c.root());
    let url_b = b.export(1, IQN, &format!("tcp:127.0.0.1:{}:mp", c.nodes[1].port));
    let locks = c.dog_ok(&["vdi", "lock", "list"]);
    assert_eq!(
        locks.matches("shared").count(),
        2,
        "two participants: {locks}"
    );

    // Both paths have read the index; object 2 is unallocated for both.
    let off = 8 * MIB + 4096;
    assert!(iscsi_read(&url_a, 0, MIB) == first);
    assert_eq!(iscsi_read(&url_b, off, 8192), vec![0u8; 8192]);

    // Path A allocates object 2; path B must see it.
    let data = pattern(32, 64 * 1024);
    iscsi_write(&url_a, off, &data);
    let got = iscsi_read(&url_b, off, data.len());
    assert_eq!(first_diff(&got, &data), None, "path B served a stale index");
    // And the other way round, for another object.
    let off2 = 20 * MIB;
    let data2 = pattern(33, 64 * 1024);
    iscsi_write(&url_b, off2, &data2);
    assert_eq!(
        first_diff(&iscsi_read(&url_a, off2, data2.len()), &data2),
        None
    );
    assert!(c.vdi_read(0, "mp", off as u64, data.len()) == data);
}
