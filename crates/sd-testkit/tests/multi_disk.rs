//! Multi-disk nodes (`sheep DIR,DISK1,DISK2,...`, as the original): objects
//! spread over every disk of every node; a disk unplugged by the operator
//! or failing under load costs no client write, and the node recovers
//! what it held onto its other disks; a plugged disk takes the objects
//! that now belong on it.

use sd_testkit::load::{self, field, Load};
use sd_testkit::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn addr(c: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], c.nodes[i].port))
}

/// Every disk of every node but those in `except`.
fn disks(c: &Cluster, except: &[PathBuf]) -> Vec<PathBuf> {
    c.nodes
        .iter()
        .flat_map(|n| n.disks.clone())
        .filter(|d| !except.contains(d))
        .collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn objects_spread_over_every_disk_and_md_info_shows_them() {
    let c = Cluster::start_disks(6, 3, PORTS, &["-n"], None).serve_nbd();
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "256M"]);
    // Written through NBD (node 0's export), as a VM's disk is.
    let data = pattern(4, 256 * MIB);
    let file = c.root().join("data");
    std::fs::write(&file, &data).unwrap();
    let st = std::process::Command::new("nbdcopy")
        .arg(&file)
        .arg(c.nbd_uri(0, "v"))
        .status()
        .expect("nbdcopy (libnbd-bin)");
    assert!(st.success());
    for n in &c.nodes {
        for d in &n.disks {
            assert!(
                !object_files(d).is_empty(),
                "{} holds no object",
                d.display()
            );
        }
        assert!(n.objects().is_empty(), "DIR/obj is not used with disks");
    }
    let total: usize = disks(&c, &[]).iter().map(|d| object_files(d).len()).sum();
    assert_eq!(total, 3 * 64 + 3, "3 copies of 64 objects and the inode");

    let human = c.dog_ok(&["node", "md", "info"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines[0], "Id\tSize\tUsed\tAvail\tUse%\tPath", "{human}");
    assert_eq!(lines.len(), 4, "{human}");
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f[0], format!("{i:2}"), "{l}");
        assert_eq!(f[5], c.nodes[0].disks[i].display().to_string(), "{l}");
    }
    let raw = c.dog_ok(&["node", "md", "info", "-A", "-r"]);
    assert_eq!(raw.lines().count(), 18, "{raw}");
    for l in raw.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let (size, used, avail): (u64, u64, u64) = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        assert_eq!(size, used + avail, "{l}");
        assert!(used > 0, "every disk holds objects: {l}");
        assert!(f[6].contains(".d"), "{l}");
    }
    assert_eq!(c.vdi_read(5, "v", 0, 256 * MIB), data);
}

/// How a disk of node 1 fails in a test.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Every read and write on its first disk fails (EIO).
    Io,
    /// Every fsync on its first disk fails (EIO); the stores sync.
    Fsync,
    /// Its first disk's directory is removed under load.
    Removed,
}

/// A 4-node, 3-disk, 3-copy cluster with a load writing VDI `v`
/// through nodes 0 and 1, node 1's first disk failing as `fault` says;
/// the journal's path.
fn cluster_under_load(fault: Fault) -> (Cluster, Load, PathBuf) {
    let extra: &[&str] = match fault {
        Fault::Fsync => &[],
        _ => &["-n"],
    };
    let mut c = Cluster::start_disks(4, 3, PORTS, extra, None);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let plan = match fault {
        Fault::Io => Some("read:always,write:always"),
        Fault::Fsync => Some("fsync:always"),
        Fault::None | Fault::Removed => None,
    };
    if let Some(plan) = plan {
        c.terminate(1);
        c.wait_nodes(3);
        let plan = format!("{plan},disk={}", c.nodes[1].disks[0].display());
        c.nodes[1].env.push(("SHEEP_INJECT".into(), plan));
        c.restart(1);
        c.wait_up(1);
        c.wait_nodes(4);
        c.wait_recovery();
    }
    let journal = c.root().join("journal");
    let load = Load::start(c.root(), &[addr(&c, 0), addr(&c, 1)], "v", &journal, "md");
    std::thread::sleep(Duration::from_secs(2));
    if let Fault::Removed = fault {
        std::fs::remove_dir_all(&c.nodes[1].disks[0]).unwrap();
    }
    (c, load, journal)
}

/// The load stopped with no failed write; every acknowledged write reads
/// back through every node, and every object has three copies on the
/// disks still in use.
fn nothing_lost(c: &Cluster, load: Load, journal: &std::path::Path, gone: &PathBuf) {
    std::thread::sleep(Duration::from_secs(2));
    let summary = load.stop();
    assert!(field(&summary, "acked") > 50, "{summary}");
    assert_eq!(
        field(&summary, "errors"),
        0,
        "no client error: {summary}\n{}",
        std::fs::read_to_string(c.root().join("sdload.md.err")).unwrap_or_default()
    );
    for i in 0..4 {
        load::verify(addr(c, i), "v", journal);
    }
    c.wait_recovery();
    wait_until("three copies of every object", 60, || {
        load::try_check_files(&disks(c, std::slice::from_ref(gone)), journal, 3).is_ok()
    });
}

#[test]
fn unplugging_a_disk_under_load_loses_nothing_and_restores_redundancy() {
    let (c, load, journal) = cluster_under_load(Fault::None);
    let gone = c.nodes[2].disks[1].clone();
    let out = c.dog_at(2, &["node", "md", "unplug", "-f", gone.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    nothing_lost(&c, load, &journal, &gone);
    let info = c.dog_at(2, &["node", "md", "info", "-r"]).stdout;
    let info = String::from_utf8_lossy(&info);
    assert_eq!(info.lines().count(), 2, "{info}");
    assert!(!info.contains(gone.to_str().unwrap()));
    // An unknown disk changes nothing and says so.
    let out = c.dog_at(2, &["node", "md", "unplug", "-f", "/no/such/disk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed to execute request"));
}

/// Node 1's first disk fails as `fault` says: it is unplugged by the
/// node itself, no client write fails or is lost, and the node, still a
/// member, holds full copies on its other disks.
fn a_failing_disk_is_unplugged_by_itself(fault: Fault) {
    let (c, load, journal) = cluster_under_load(fault);
    let bad = c.nodes[1].disks[0].clone();
    nothing_lost(&c, load, &journal, &bad);
    let log = std::fs::read_to_string(c.nodes[1].dir.join("sheep.log")).unwrap();
    assert!(
        log.contains(&format!("disk {} failed", bad.display())) && log.contains("unplugged"),
        "{log}\n{:?}",
        c.nodes[1]
            .disks
            .iter()
            .map(|d| object_files(d).len())
            .collect::<Vec<_>>(),
    );
    let info = c.dog_at(1, &["node", "md", "info", "-r"]).stdout;
    assert_eq!(String::from_utf8_lossy(&info).lines().count(), 2);
    assert_eq!(c.dog_ok(&["node", "list", "-r"]).lines().count(), 4);
}

#[test]
fn a_disk_failing_reads_and_writes_is_unplugged_and_no_client_write_fails() {
    a_failing_disk_is_unplugged_by_itself(Fault::Io);
}

#[test]
fn a_disk_failing_fsyncs_is_unplugged_and_no_client_write_fails() {
    a_failing_disk_is_unplugged_by_itself(Fault::Fsync);
}

#[test]
fn a_disk_removed_under_load_is_unplugged_and_no_client_write_fails() {
    a_failing_disk_is_unplugged_by_itself(Fault::Removed);
}

#[test]
fn a_plugged_disk_takes_the_objects_that_now_belong_on_it() {
    let c = Cluster::start_disks(3, 2, PORTS, &["-n"], None);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let data = pattern(8, 64 * MIB);
    c.vdi_write(0, "v", 0, &data);
    let new = c.root().join("new-disk");
    let out = c.dog_at(0, &["node", "md", "plug", "-f", new.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let info =
        String::from_utf8_lossy(&c.dog_at(0, &["node", "md", "info", "-r"]).stdout).into_owned();
    assert_eq!(info.lines().count(), 3, "{info}");
    wait_until("objects move to the new disk", 30, || {
        !object_files(&new).is_empty()
    });
    // Each object once on node 0, wherever it lives now.
    wait_until("node 0 holds every object once", 30, || {
        let mut all: Vec<String> = c.nodes[0]
            .disks
            .iter()
            .chain([&new])
            .flat_map(|d| object_files(d))
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        n == all.len() && n == 17
    });
    for i in 0..3 {
        assert_eq!(c.vdi_read(i, "v", 0, 64 * MIB), data, "through node {i}");
    }
}

/// A multi-disk node SIGKILLed mid-load and restarted: every acknowledged
/// write reads back through every node, and every object has three
/// copies, on whichever disks.
#[test]
fn a_multi_disk_node_killed_under_load_loses_no_acknowledged_write() {
    let (mut c, load, journal) = cluster_under_load(Fault::None);
    c.kill(2);
    std::thread::sleep(Duration::from_secs(1));
    c.restart(2);
    c.wait_up(2);
    std::thread::sleep(Duration::from_secs(2));
    let summary = load.stop();
    assert!(field(&summary, "acked") > 50, "{summary}");
    c.wait_nodes(4);
    c.wait_recovery();
    for i in 0..4 {
        load::verify(addr(&c, i), "v", &journal);
    }
    wait_until("three copies of every object", 60, || {
        load::try_check_files(&disks(&c, &[]), &journal, 3).is_ok()
    });
}

/// Vnodes of each node (`node list -r`), in node order.
fn vnodes(c: &Cluster) -> Vec<u32> {
    let list = c.dog_ok(&["node", "list", "-r"]);
    c.nodes
        .iter()
        .map(|n| {
            let line = list
                .lines()
                .find(|l| l.contains(&format!(":{} ", n.port)))
                .unwrap_or_else(|| panic!("node {} not listed: {list}", n.port));
            line.split(' ').nth(2).unwrap().parse().unwrap()
        })
        .collect()
}

/// `cluster reweight` (the original's test 063): node 0 gets a second
/// disk, so twice the space of the others; after the reweight its vnodes
/// are twice theirs (192 / 96 / 96), recorded as a new epoch, its objects
/// follow, and the weight outlives a restart.
#[test]
fn reweight_gives_a_grown_node_vnodes_in_proportion_to_its_space() {
    let mut c = Cluster::start_disks(3, 1, PORTS, &["-n"], None);
    c.format("2");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let data = pattern(12, 64 * MIB);
    c.vdi_write(0, "v", 0, &data);
    assert_eq!(vnodes(&c), [128, 128, 128]);
    let epoch = c.epoch_at(0).unwrap();

    let new = c.root().join("new-disk");
    c.dog_ok(&["node", "md", "plug", "-f", new.to_str().unwrap()]);
    // (and on its command line from now on)
    c.nodes[0].disks.push(new);
    assert_eq!(vnodes(&c), [128, 128, 128], "a plug alone does not reweigh");
    assert_eq!(c.dog_ok(&["cluster", "reweight"]), "");
    let near = |got: &[u32], want: [u32; 3]| got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 2);
    wait_until("node 0 weighs twice the others", 30, || {
        near(&vnodes(&c), [192, 96, 96])
    });
    // (Where the disks share a filesystem with other tests, the others'
    // space moves too: more than one epoch may come.)
    let now = c.epoch_at(0).unwrap();
    assert!(now > epoch);
    c.wait_recovery();
    let info = c.dog_ok(&["cluster", "info"]);
    let newest = info.lines().find(|l| l.contains(&format!(" {now} [")));
    assert!(
        newest.is_some_and(|l| l.contains(&format!(":{}:19", c.nodes[0].port))),
        "{info}"
    );
    for i in 0..3 {
        assert_eq!(c.vdi_read(i, "v", 0, 64 * MIB), data, "through node {i}");
    }
    // The 17 objects end up with their two copies each where the new
    // placement puts them, no more (which node holds how many is left to
    // chance with so few objects).
    let held = |i: usize| -> usize { c.nodes[i].disks.iter().map(|d| object_files(d).len()).sum() };
    wait_until("two copies of each object, no more", 30, || {
        held(0) + held(1) + held(2) == 34
    });

    // Its weight is part of its config: a restart keeps it.
    c.kill(0);
    c.wait_nodes_at(1, 2);
    c.restart(0);
    c.wait_up(0);
    c.wait_nodes(3);
    assert!(near(&vnodes(&c), [192, 96, 96]), "{:?}", vnodes(&c));
}
