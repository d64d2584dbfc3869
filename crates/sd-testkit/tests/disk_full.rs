//! A node's disk fills up: writes that need new space on it get the
//! original's NO_SPACE error, nothing already stored is harmed, the node
//! stays in the cluster, and once space is freed writes succeed again.

use sd_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// A small tmpfs mounted over a node's directory (its contents kept),
/// unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount_over(dir: &Path, size_mib: usize) -> SmallDisk {
        let saved = dir.with_extension("saved");
        std::fs::rename(dir, &saved).unwrap();
        std::fs::create_dir(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", saved.display()))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_new_objects_and_harms_nothing_else() {
    let mut c = Cluster::start(3);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let first = pattern(1, 8 * MIB);
    c.vdi_write(0, "v", 0, &first);
    // Node 2 moves onto a 32 MiB disk: its two data objects, the inode and
    // (while it recovers them) their retired copies fit, eight more
    // objects do not.
    c.terminate(2);
    c.wait_nodes(2);
    let _disk = SmallDisk::mount_over(&c.nodes[2].dir.clone(), 32);
    c.restart(2);
    c.wait_up(2);
    c.wait_nodes(3);
    c.wait_recovery();

    let more = pattern(2, 32 * MIB);
    let out = c.dog_stdin(
        0,
        &[
            "vdi",
            "write",
            "v",
            &(8 * MIB).to_string(),
            &(32 * MIB).to_string(),
        ],
        &more,
    );
    assert!(
        !out.status.success(),
        "a write with no space was acknowledged"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Server has no space for new objects"), "{err}");

    // What was stored is intact through every node, and overwriting
    // allocated objects still works.
    for i in 0..3 {
        assert_eq!(c.vdi_read(i, "v", 0, 8 * MIB), first, "through node {i}");
    }
    let again = pattern(3, 8 * MIB);
    c.vdi_write(2, "v", 0, &again);
    assert_eq!(c.vdi_read(1, "v", 0, 8 * MIB), again);
    assert_eq!(c.dog_ok(&["node", "list", "-r"]).lines().count(), 3);
    let log = std::fs::read_to_string(c.nodes[2].dir.join("sheep.log")).unwrap();
    assert!(
        !log.contains("the disk failed"),
        "a full disk is not a dead one"
    );

    // Space freed (another VDI's objects deleted is the usual way; here
    // the big VDI goes), new objects are written again.
    c.dog_ok(&["vdi", "delete", "v"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.nodes[2].objects().iter().any(|o| o.starts_with("00")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted VDI's objects stay"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    c.dog_ok(&["vdi", "create", "w", "64M"]);
    c.vdi_write(0, "w", 0, &more[..16 * MIB]);
    assert_eq!(c.vdi_read(2, "w", 0, 16 * MIB), &more[..16 * MIB]);
    c.stop_all(Stop::Kill);
}

/// A cluster formatted with `-F` (avoid full disks): a recovery that
/// would fill a node's disk is cancelled there and said in its log;
/// nothing fills the disk and every byte still reads through the others.
#[test]
fn recovery_that_would_fill_a_disk_is_cancelled_with_format_f() {
    let mut c = Cluster::start(3);
    // Node 2 stores on a 110 MiB disk: its share of a 120 MiB VDI with two
    // copies on three nodes (two thirds) fits, the whole VDI does not.
    c.terminate(2);
    c.wait_nodes(2);
    let _disk = SmallDisk::mount_over(&c.nodes[2].dir.clone(), 110);
    c.restart(2);
    c.wait_up(2);
    c.wait_nodes(3);
    c.dog_ok(&["cluster", "format", "-c", "2", "-F"]);
    c.dog_ok(&["vdi", "create", "v", "120M"]);
    let data = pattern(5, 120 * MIB);
    c.vdi_write(1, "v", 0, &data);
    // Node 0 goes: node 2 should now hold every object, which it cannot.
    c.kill(0);
    c.wait_nodes(2);
    let log = c.nodes[2].dir.join("sheep.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cancelled: it needs")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no cancelled recovery"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("no space"), "{text}");
    assert_eq!(c.vdi_read(1, "v", 0, 120 * MIB), data);
    c.stop_all(Stop::Kill);
}
