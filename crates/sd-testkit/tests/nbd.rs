//! VDIs served over NBD by sheep itself, driven by unmodified third-party
//! clients: qemu-img, qemu-io, nbdinfo, nbdcopy and fio.

use sd_client::{Connection, Endpoint};
use sd_proto::*;
use sd_testkit::*;
use std::process::Command;

const MIB: usize = 1 << 20;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let (s, out, err) = run(cmd, args);
    assert!(s, "{cmd} {args:?} failed:\n{out}\n{err}");
    out
}

/// Used bytes of `vdi` from `dog vdi list -r`.
fn used(c: &Cluster, vdi: &str) -> u64 {
    let out = c.dog_ok(&["vdi", "list", "-r", vdi]);
    out.lines()
        .find(|l| !l.starts_with('s'))
        .unwrap()
        .split(' ')
        .nth(4)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn qemu_img_qemu_io_nbdinfo_nbdcopy() {
    for t in ["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"] {
        assert!(
            have(t),
            "{t} is missing: run ./scripts/test.sh, which installs it"
        );
    }
    let c = Cluster::start_nbd(3);
    c.format("3");
    c.dog_ok(&["vdi", "create", "disk", "64M"]);
    let dir = c.root().to_path_buf();

    // qemu-img convert in and out: byte-identical.
    let img = dir.join("in.raw");
    let mut data = pattern(3, 64 * MIB);
    data[10 * MIB..30 * MIB].fill(0); // a hole qemu-img may skip
    std::fs::write(&img, &data).unwrap();
    let uri = c.nbd_uri(0, "disk");
    ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            img.to_str().unwrap(),
            &uri,
        ],
    );
    let back = dir.join("out.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &c.nbd_uri(1, "disk"),
            back.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "qemu-img round trip differs"
    );
    // ... and dog reads the same bytes.
    assert!(c.dog_at(2, &["vdi", "read", "disk"]).stdout == data);

    // qemu-io patterns at assorted offsets, read through another node.
    let writes = [
        (0u64, 512u64, 0x11u8),
        (4095, 7000, 0x22),
        (4 * MIB as u64 - 100, 300, 0x33),
        (40 * MIB as u64 + 1, 1 << 20, 0x44),
    ];
    for &(off, len, pat) in &writes {
        ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -P {pat} {off} {len}"),
                &c.nbd_uri(1, "disk"),
            ],
        );
    }
    for &(off, len, pat) in &writes {
        let out = ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("read -P {pat} {off} {len}"),
                &c.nbd_uri(2, "disk"),
            ],
        );
        assert!(!out.contains("Pattern verification failed"), "{out}");
    }

    // nbdinfo: size, trim, zero, multi-conn.
    let info = ok("nbdinfo", &["--json", &c.nbd_uri(0, "disk")]);
    for want in [
        "\"export-size\": 67108864",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_multi_conn\": true",
        "\"is_read_only\": false",
    ] {
        assert!(info.contains(want), "nbdinfo lacks {want}:\n{info}");
    }

    // nbdcopy round trip through two connections.
    let copy = dir.join("copy.raw");
    ok(
        "nbdcopy",
        &[
            "--connections=2",
            &c.nbd_uri(0, "disk"),
            copy.to_str().unwrap(),
        ],
    );
    c.dog_ok(&["vdi", "create", "disk2", "64M"]);
    ok("nbdcopy", &[copy.to_str().unwrap(), &c.nbd_uri(1, "disk2")]);
    assert!(c.dog_at(0, &["vdi", "read", "disk2"]).stdout == std::fs::read(&copy).unwrap());

    // Discard frees whole objects: Used shrinks, the range reads as zeros
    // and the map shows a hole.
    let before = used(&c, "disk");
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("discard 0 {}", 16 * MIB),
            &c.nbd_uri(0, "disk"),
        ],
    );
    let after = used(&c, "disk");
    // Objects 0..=2 hold data; object 3 lies in the zero range qemu-img
    // skipped, so it was never allocated.
    assert_eq!(
        before - after,
        3 * 4 * MIB as u64,
        "discarding whole objects frees them"
    );
    let out = c
        .dog_at(0, &["vdi", "read", "disk", "0", &(16 * MIB).to_string()])
        .stdout;
    assert!(out.iter().all(|&b| b == 0));
    let map = ok("nbdinfo", &["--map", &c.nbd_uri(2, "disk")]);
    assert!(map.lines().next().unwrap().contains("hole"), "{map}");

    // Unknown export: a clean error, and the server keeps serving.
    let (s, _, err) = run("qemu-img", &["info", &c.nbd_uri(0, "no-such-vdi")]);
    assert!(!s && !err.is_empty());
    ok("qemu-img", &["info", &c.nbd_uri(0, "disk")]);
}

#[test]
fn snapshot_exports_are_read_only() {
    assert!(have("qemu-io"), "qemu-io is missing");
    let c = Cluster::start_nbd(2);
    c.format("2");
    c.dog_ok(&["vdi", "create", "base", "16M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 8192",
            &c.nbd_uri(0, "base"),
        ],
    );
    // Snapshot with the raw protocol (tag at inode offset 256, NEW_VDI snapid 1).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = Endpoint::Tcp(format!("127.0.0.1:{}", c.nodes[0].port).parse().unwrap());
        let mut conn = Connection::connect(&ep).await.unwrap();
        let vid = sd_client::vdi::lookup_vdi(&mut conn, b"base", None, 0)
            .await
            .unwrap();
        let mut w = SdReq::new(op::WRITE_OBJ);
        w.flags = flag::CMD_WRITE;
        w.data_length = 256;
        w.set_obj(ObjArgs {
            oid: vid_to_vdi_oid(vid),
            offset: 256,
            ..Default::default()
        });
        conn.exec_ok(&w, &le::fixed_str::<256>(b"snap1"))
            .await
            .unwrap();
        let mut r = SdReq::new(op::NEW_VDI);
        r.flags = flag::CMD_WRITE;
        r.data_length = 256;
        r.set_vdi(VdiArgs {
            vdi_size: 16 << 20,
            base_vdi_id: vid,
            snapid: 1,
            ..Default::default()
        });
        conn.exec_ok(&r, &le::fixed_str::<256>(b"base"))
            .await
            .unwrap();
    });
    for name in ["base@snap1", "base@1"] {
        let info = ok("nbdinfo", &["--json", &c.nbd_uri(1, name)]);
        assert!(info.contains("\"is_read_only\": true"), "{info}");
        let (s, _, _) = run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 1 0 512", &c.nbd_uri(1, name)],
        );
        assert!(!s, "a snapshot export accepted a write");
        let out = ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-r",
                "-c",
                "read -P 0x5a 0 8192",
                &c.nbd_uri(1, name),
            ],
        );
        assert!(!out.contains("verification failed"), "{out}");
    }
    // The working VDI is writable and copy-on-write keeps the snapshot intact.
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x77 0 4096",
            &c.nbd_uri(0, "base"),
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0x5a 0 8192",
            &c.nbd_uri(1, "base@snap1"),
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0x77 0 4096",
            &c.nbd_uri(1, "base"),
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0x5a 4096 4096",
            &c.nbd_uri(0, "base"),
        ],
    );
}

#[test]
fn fio_verify_and_node_loss_under_load() {
    assert!(have("fio"), "fio is missing");
    let mut c = Cluster::start_nbd(4);
    c.format("3");
    c.dog_ok(&["vdi", "create", "vol", "128M"]);
    let uri = c.nbd_uri(0, "vol");
    let fio_dir = c.root().to_path_buf();
    let fio = |extra: &[&str]| {
        let mut args = vec![
            "--name=t",
            "--ioengine=nbd",
            "--uri",
            &uri,
            "--rw=randwrite",
            "--bs=4k,64k",
            "--iodepth=16",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--output-format=terse",
        ];
        args.extend_from_slice(extra);
        let o = Command::new("fio")
            .args(&args)
            .current_dir(&fio_dir)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (s, out) = fio(&[]);
    assert!(s && !out.contains("verify: bad"), "{out}");

    // Kill a node while fio writes and verifies: the client is not
    // interrupted and every block verifies.
    let victim = 3;
    let h = std::thread::spawn({
        let uri = uri.clone();
        let dir = c.root().to_path_buf();
        move || {
            let o = Command::new("fio")
                .current_dir(dir)
                .args([
                    "--name=load",
                    "--ioengine=nbd",
                    "--uri",
                    &uri,
                    "--rw=randwrite",
                    "--bs=64k",
                    "--iodepth=8",
                    "--size=64M",
                    "--offset=64M",
                    "--verify=crc32c",
                    "--do_verify=1",
                    "--output-format=terse",
                ])
                .output()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            )
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.kill(victim);
    let (s, out) = h.join().unwrap();
    assert!(
        s && !out.contains("verify: bad"),
        "fio under node loss failed: {out}"
    );
    c.wait_nodes(3);
    c.wait_recovery();
    let (s, out) = fio(&["--verify_only"]);
    assert!(s && !out.contains("verify: bad"), "{out}");
}
