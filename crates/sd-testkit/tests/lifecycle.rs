//! Cluster lifecycle with real processes: recovery disable/enable and its
//! progress report, `node kill`, whole-cluster shutdown and restart, and
//! `cluster recover force` when a node is gone for good.

use sd_proto::*;
use sd_testkit::*;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn replicas(c: &Cluster, oid_prefix: &str) -> usize {
    c.alive()
        .iter()
        .map(|&i| {
            c.nodes[i]
                .objects()
                .iter()
                .filter(|n| n.starts_with(oid_prefix))
                .count()
        })
        .sum()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn recovery_disable_enable_and_progress() {
    let mut c = Cluster::start(4);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "64M"]);
    let data = pattern(5, 40 * MIB);
    c.vdi_write(0, "v", 0, &data);
    let prefix = format!("{:08x}", sd_hash_vdi(b"v"));
    assert_eq!(replicas(&c, &prefix), 3 * 10);

    assert_eq!(
        c.dog_ok(&["cluster", "recover", "disable"]),
        "Cluster recovery: disable\n"
    );
    assert!(c
        .dog_ok(&["cluster", "info"])
        .starts_with("Cluster status: running, auto-recovery disabled\n"));
    c.kill(3);
    c.wait_nodes(3);
    // Recovery is suspended: the lost copies are not recreated, and the
    // nodes report themselves in recovery.
    std::thread::sleep(Duration::from_millis(500));
    let lost = 3 * 10 - replicas(&c, &prefix);
    assert!(lost > 0, "node 3 held no copy");
    let out = c.dog_ok(&["node", "recovery"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Nodes In Recovery:");
    assert_eq!(
        lines[1],
        "  Id   Host:Port         V-Nodes       Zone       Progress"
    );
    assert!(lines.len() > 2, "{out}");
    assert!(lines[2..].iter().all(|l| l.ends_with('%')), "{out}");
    let raw = c.dog_ok(&["node", "recovery", "-r"]);
    assert!(raw.lines().all(|l| l.split(' ').count() == 6), "{raw}");
    // Reads are still served from the surviving copies.
    let out = c.dog_at(1, &["vdi", "read", "v", "0", &data.len().to_string()]);
    assert!(out.stdout == data);

    assert_eq!(
        c.dog_ok(&["cluster", "recover", "enable"]),
        "Cluster recovery: enable\n"
    );
    c.wait_recovery();
    assert_eq!(replicas(&c, &prefix), 3 * 10);
    assert_eq!(c.dog_ok(&["node", "recovery"]).lines().count(), 2);
}

#[test]
fn node_kill_shutdown_restart_and_force_recover() {
    let mut c = Cluster::start(4);
    c.format("2");
    c.dog_ok(&["vdi", "create", "v", "32M"]);
    let data = pattern(11, 20 * MIB + 77);
    c.vdi_write(0, "v", 99, &data);

    // node kill by id: that node exits cleanly and leaves the view.
    let list = c.dog_ok(&["node", "list", "-r"]);
    let victim_port = c.nodes[3].port;
    let id = list
        .lines()
        .position(|l| l.contains(&format!(":{victim_port} ")))
        .unwrap();
    assert_eq!(c.dog_ok(&["node", "kill", &id.to_string()]), "");
    let mut child = c.nodes[3].child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "killed node exits with 0");
    c.wait_nodes(3);
    c.wait_recovery();

    // Whole-cluster shutdown: every daemon exits with 0.
    assert_eq!(c.dog_ok(&["cluster", "shutdown"]), "");
    for i in 0..3 {
        let st = c.nodes[i].child.take().unwrap().wait().unwrap();
        assert!(st.success());
    }
    // Restart two of the three: the cluster waits for the third.
    c.restart(0);
    c.restart(1);
    c.wait_up(0);
    c.wait_up(1);
    wait_until("WAIT_FOR_JOIN", || {
        String::from_utf8_lossy(&c.dog_at(0, &["cluster", "info"]).stdout)
            .starts_with("Cluster status: Waiting for other nodes to join cluster\n")
    });
    let out = c.dog_at(0, &["vdi", "read", "v"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no I/O before the cluster is complete"
    );
    c.restart(2);
    c.wait_up(2);
    wait_until("running", || {
        String::from_utf8_lossy(&c.dog_at(0, &["cluster", "info"]).stdout)
            .starts_with("Cluster status: running")
    });
    let out = c.dog_at(2, &["vdi", "read", "v", "99", &data.len().to_string()]);
    assert!(out.stdout == data, "data intact after restart");

    // Shut down again and lose node 2 for good: force recovery.
    assert_eq!(c.dog_ok(&["cluster", "shutdown"]), "");
    for i in 0..3 {
        c.nodes[i].child.take().unwrap().wait().unwrap();
    }
    c.restart(0);
    c.restart(1);
    c.wait_up(0);
    c.wait_up(1);
    wait_until("WAIT_FOR_JOIN", || {
        String::from_utf8_lossy(&c.dog_at(1, &["cluster", "info"]).stdout)
            .contains("Waiting for other nodes")
    });
    let out = c.dog_stdin(0, &["cluster", "recover", "force"], b"yes\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("running after force", || {
        String::from_utf8_lossy(&c.dog_at(0, &["cluster", "info"]).stdout)
            .starts_with("Cluster status: running")
    });
    c.wait_recovery();
    let out = c.dog_at(1, &["vdi", "read", "v", "99", &data.len().to_string()]);
    assert!(out.stdout == data, "data intact after forced recovery");
    let prefix = format!("{:08x}", sd_hash_vdi(b"v"));
    let objects = (99 + data.len() - 1) / (4 * MIB) + 1;
    let listing: Vec<(u16, Vec<String>, Vec<String>)> = c
        .alive()
        .iter()
        .map(|&i| {
            (
                c.nodes[i].port,
                c.nodes[i].objects(),
                c.nodes[i].stale_objects(),
            )
        })
        .collect();
    assert_eq!(
        replicas(&c, &prefix),
        2 * objects,
        "two copies of every data object: {listing:?}"
    );
    let again = c.dog_stdin(0, &["cluster", "recover", "force"], b"yes\n");
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        "failed to execute request, Cluster is running/halted and cannot be force recovered\n"
    );
}
