//! The write-ahead journal (`sheep -j dir=,size=`): writes acknowledged
//! from the journal survive SIGKILL at any point, its replay can run twice
//! with the same result, and a torn tail is discarded (the node then gets
//! what it lacks from its peers).

use sd_testkit::load::{self, field, Load};
use sd_testkit::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;
const JOURNAL: &[&str] = &["-j", "size=64M"];

fn addr(c: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], c.nodes[i].port))
}

fn log(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.nodes[i].dir.join("sheep.log")).unwrap_or_default()
}

/// How many writes the node's latest start replayed from its journal.
fn replayed(c: &Cluster, i: usize) -> u64 {
    let l = log(c, i);
    let line = l
        .lines()
        .rev()
        .find(|l| l.contains("writes replayed"))
        .unwrap_or_else(|| panic!("no journal line in the log:\n{l}"));
    let n = line.split(": ").last().unwrap().split(' ').next().unwrap();
    n.parse().unwrap()
}

#[test]
fn the_journal_is_in_sheep_help_and_bad_sizes_are_refused() {
    let out = std::process::Command::new(sheep_bin())
        .arg("-h")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("-j, --journal           use journal file to log all the write operations"),
        "{help}"
    );
    for (arg, msg) in [
        ("size=10M", "invalid size 10M, must be bigger than 64(M)"),
        ("dir=/tmp", "you must specify size for journal"),
        ("size=64M,bogus", "invalid option bogus"),
    ] {
        let out = std::process::Command::new(sheep_bin())
            .args(["-j", arg, "/tmp/never-created-by-this-test"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{arg}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(msg),
            "{arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!Path::new("/tmp/never-created-by-this-test").exists());
}

/// One node, one copy (nothing else holds the data): SIGKILLed again and
/// again while a verified load writes through it. Every acknowledged
/// write reads back; the node replayed journaled writes at its restarts.
/// Then the replay is run twice over the same journal (a crash during
/// replay): the bytes are the same.
#[test]
fn sigkill_during_journal_writes_loses_no_acknowledged_write_and_replay_is_idempotent() {
    let mut c = Cluster::start_with(1, PORTS, JOURNAL);
    c.format("1");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let jfile = c.nodes[0].dir.join("journal");
    assert_eq!(std::fs::metadata(&jfile).unwrap().len(), 64 << 20);
    let journal = c.root().join("acked");
    let load = Load::start(c.root(), &[addr(&c, 0)], "v", &journal, "j");
    let mut replays = 0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        c.kill(0);
        c.restart(0);
        c.wait_up(0);
        replays += replayed(&c, 0);
    }
    std::thread::sleep(Duration::from_secs(2));
    let summary = load.stop();
    assert!(field(&summary, "acked") > 50, "{summary}");
    assert!(replays > 0, "the kills found journaled writes to replay");
    load::verify(addr(&c, 0), "v", &journal);

    // Idempotent: the same records replayed onto files that already
    // hold them change nothing.
    let data = c.vdi_read(0, "v", 0, 64 * MIB);
    c.kill(0);
    let kept = c.root().join("journal.copy");
    std::fs::copy(&jfile, &kept).unwrap();
    c.restart(0);
    c.wait_up(0);
    let first = replayed(&c, 0);
    c.kill(0);
    std::fs::copy(&kept, &jfile).unwrap();
    c.restart(0);
    c.wait_up(0);
    assert_eq!(replayed(&c, 0), first, "the same records, again");
    c.wait_nodes(1);
    assert_eq!(c.vdi_read(0, "v", 0, 64 * MIB), data);
    load::verify(addr(&c, 0), "v", &journal);
}

/// The last position of a nonzero byte of `file` (past the header).
fn end_of_records(file: &Path) -> u64 {
    let b = std::fs::read(file).unwrap();
    b.iter().rposition(|&x| x != 0).unwrap() as u64 + 1
}

/// A node whose journal tail is torn (cut in the middle of its last
/// record) starts and discards that record (one fewer replayed than a
/// node that got the same writes), and gets what it lacks from its
/// peers: its copies end up equal to theirs.
#[test]
fn a_torn_journal_tail_is_discarded_and_the_node_recovers_from_peers() {
    let mut c = Cluster::start_with(3, PORTS, JOURNAL);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.vdi_write(0, "v", 0, &pattern(1, 8 * MIB));
    // Overwrites: journaled on every node.
    let newest = pattern(2, 64 * 1024);
    for k in 0..16u64 {
        c.vdi_write(0, "v", k * 512 * 1024, &newest);
    }
    let torn = c.nodes[1].dir.join("journal");
    c.kill(1);
    c.kill(2);
    let end = end_of_records(&torn);
    assert!(end > 4096 + 16 * 64 * 1024, "records were journaled: {end}");
    let f = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
    f.set_len(end - 1000).unwrap();
    drop(f);
    for i in [1, 2] {
        c.restart(i);
        c.wait_up(i);
    }
    c.wait_nodes(3);
    let whole = replayed(&c, 2);
    assert!(whole >= 16, "node 2 replayed every overwrite: {whole}");
    assert_eq!(replayed(&c, 1), whole - 1, "the torn record is discarded");
    assert_eq!(std::fs::metadata(&torn).unwrap().len(), 64 << 20);
    c.wait_recovery();
    let mut want = pattern(1, 8 * MIB);
    for k in 0..16usize {
        want[k * 512 * 1024..k * 512 * 1024 + newest.len()].copy_from_slice(&newest);
    }
    for i in 0..3 {
        assert_eq!(c.vdi_read(i, "v", 0, 8 * MIB), want, "through node {i}");
    }
    for o in c.nodes[0].objects() {
        let read = |i: usize| std::fs::read(c.nodes[i].obj_dir().join(&o)).ok();
        assert_eq!(read(1), read(0), "{o} on node 1");
    }
}

/// Three journaling nodes, two copies, a verified load through nodes 0
/// and 1; node 2 is SIGKILLed and restarted twice, then node 1 once
/// (rejoining nodes retire and recover what they hold, which empties
/// their journals of those objects first). Every acknowledged write reads
/// back through every node, and every object has its two copies.
#[test]
fn sigkill_rounds_on_journaling_replicas_lose_no_acknowledged_write() {
    let mut c = Cluster::start_with(3, PORTS, JOURNAL);
    c.format("2");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let journal = c.root().join("acked");
    let load = Load::start(c.root(), &[addr(&c, 0), addr(&c, 1)], "v", &journal, "jr");
    let mut replays = 0;
    for victim in [2, 2, 1] {
        std::thread::sleep(Duration::from_millis(2500));
        c.kill(victim);
        std::thread::sleep(Duration::from_millis(500));
        c.restart(victim);
        c.wait_up(victim);
        replays += replayed(&c, victim);
    }
    assert!(replays > 0, "the kills found journaled writes to replay");
    std::thread::sleep(Duration::from_secs(2));
    let summary = load.stop();
    assert!(field(&summary, "acked") > 50, "{summary}");
    c.wait_nodes(3);
    c.wait_recovery();
    for i in 0..3 {
        load::verify(addr(&c, i), "v", &journal);
    }
    let stores: Vec<_> = c.nodes.iter().map(|n| n.obj_dir()).collect();
    load::check_files(&stores, &journal, 2);
}
