//! The background workers of a node as `dog node worker` shows them, and
//! reclaim work that survives a restart: a removal recorded in the store
//! before a crash is carried out when the node starts again.

use sd_testkit::*;
use std::time::{Duration, Instant};

#[test]
fn node_worker_lists_the_workers_and_reclaim_survives_a_restart() {
    let mut c = Cluster::start(3);
    c.format("3");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.vdi_write(0, "v", 0, b"doomed");
    let vid = sd_proto::sd_hash_vdi(b"v");
    let name = format!("{:016x}", sd_proto::vid_to_data_oid(vid, 0));
    let holders = |c: &Cluster| {
        (0..3)
            .filter(|&i| c.nodes[i].objects().contains(&name))
            .count()
    };
    assert_eq!(holders(&c), 3);

    let raw = c.dog_ok(&["node", "worker", "-r"]);
    let names: Vec<&str> = raw.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["recovery", "reclaim", "scrub", "vdi_sync"], "{raw}");
    let human = c.dog_ok(&["node", "worker"]);
    assert!(human.starts_with("  Name              State"), "{human}");

    // A removal recorded before a crash is carried out after the restart.
    c.kill(0);
    let marks = c.nodes[0].dir.join("reclaim");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join(&name), b"").unwrap();
    c.restart(0);
    c.wait_up(0);
    c.wait_nodes(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while holders(&c) > 0 || marks.join(&name).exists() {
        assert!(
            Instant::now() < deadline,
            "the recorded reclaim was not carried out"
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
    assert_eq!(reclaim[1..4], ["idle", "1", "1"], "{raw}");
}

/// `sheep -R max=,interval=` sets the recovery throttle a node starts
/// with; `dog node recovery get-throttle|set-throttle` read and change it
/// with the original's messages and exit codes.
#[test]
fn recovery_throttle_from_the_command_line_and_dog() {
    let c = Cluster::start_with(1, 20000, 60000, &["-n", "-R", "max=5,interval=100"]);
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
