//! The background workers of a node as `dog node worker` shows them, and
//! reclaim work that survives a restart: a release recorded in the store
//! before a crash is carried out when the node starts again (and removes
//! only what no VDI references).

use sd_testkit::*;
use std::time::{Duration, Instant};

#[test]
fn node_worker_lists_the_workers_and_reclaim_survives_a_restart() {
    let mut c = Cluster::start(3);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.vdi_write(0, "v", 0, b"kept");
    let vid = sd_proto::sd_hash_vdi(b"v");
    let kept = format!("{:016x}", sd_proto::vid_to_data_oid(vid, 0));
    // An object of v that its index does not name (as a write cut off
    // between the object and the index leaves it).
    let name = format!("{:016x}", sd_proto::vid_to_data_oid(vid, 1));
    for n in &c.nodes {
        std::fs::copy(n.obj_dir().join(&kept), n.obj_dir().join(&name)).unwrap();
    }
    let holders = |c: &Cluster, name: &str| {
        (0..3)
            .filter(|&i| c.nodes[i].objects().iter().any(|o| o == name))
            .count()
    };
    assert_eq!((holders(&c, &kept), holders(&c, &name)), (3, 3));

    let raw = c.dog_ok(&["node", "worker", "-r"]);
    let names: Vec<&str> = raw.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["recovery", "reclaim", "scrub", "vdi_sync"], "{raw}");
    let human = c.dog_ok(&["node", "worker"]);
    assert!(human.starts_with("  Name              State"), "{human}");

    // Releases recorded before a crash are carried out after the restart:
    // the unreferenced object goes, the referenced one stays.
    c.kill(0);
    let marks = c.nodes[0].dir.join("reclaim");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join(&name), b"").unwrap();
    std::fs::write(marks.join(&kept), b"").unwrap();
    c.restart(0);
    c.wait_up(0);
    c.wait_nodes(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while holders(&c, &name) > 0 || marks.join(&name).exists() || marks.join(&kept).exists() {
        assert!(
            Instant::now() < deadline,
            "the recorded releases were not carried out: {} holders, marks {:?}; log: {}",
            holders(&c, &name),
            std::fs::read_dir(&marks).map(|d| d.count()).ok(),
            std::fs::read_to_string(c.nodes[0].dir.join("sheep.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let raw = String::from_utf8_lossy(&c.dog_at(0, &["node", "worker", "-r"]).stdout).into_owned();
    // name state done total errors (errors: tries while the cluster was
    // not running yet).
    let reclaim: Vec<&str> = raw
        .lines()
        .find(|l| l.starts_with("reclaim "))
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(reclaim[1..4], ["idle", "2", "2"], "{raw}");
    assert_eq!(holders(&c, &kept), 3);
    assert_eq!(c.vdi_read(1, "v", 0, 4), b"kept");
}

/// `sheep -R max=,interval=` sets the recovery throttle a node starts
/// with; `dog node recovery get-throttle|set-throttle` read and change it
/// with the original's messages and exit codes.
#[test]
fn recovery_throttle_from_the_command_line_and_dog() {
    let c = Cluster::start_with(1, PORTS, &["-n", "-R", "max=5,interval=100"]);
    c.format("1");
    let get = |c: &Cluster| {
        let out = c.dog(&["node", "recovery", "get-throttle"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(get(&c), "max (5), interval (100)\n");
    for (args, msg) in [
        (&["0", "1"][..], "Invalid interval max (0), interval (1)\n"),
        (&["4294967296", "1"][..], "Invalid max (4294967296)\n"),
        (
            &["7", "9223372036854775808"][..],
            "Invalid interval (9223372036854775808)\n",
        ),
        (&["7"][..], "Invalid interval max (7), interval ((null))\n"),
    ] {
        let mut a = vec!["node", "recovery", "set-throttle"];
        a.extend_from_slice(args);
        let out = c.dog(&a);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), msg);
    }
    assert_eq!(
        get(&c),
        "max (5), interval (100)\n",
        "errors change nothing"
    );
    c.dog_ok(&[
        "node",
        "recovery",
        "set-throttle",
        "4294967295",
        "9223372036854775807",
    ]);
    assert_eq!(
        get(&c),
        "max (4294967295), interval (9223372036854775807)\n"
    );
}
