//! Recovery overtaken by the next epoch, on one machine (local driver):
//! a node is SIGKILLed during verified writes and restarted as soon as the
//! others run an epoch without it, so the epoch with it again follows
//! while they are still storing what they recover for the first. Every
//! replica file must then hold every acknowledged write, and every object
//! exactly three copies: a copy stored for the overtaken epoch must not
//! survive the next epoch's retiring of what a node no longer holds.
//!
//! Stores are synced (no `-n`), so storing a recovered 4 MiB object takes
//! long enough for the next epoch to begin meanwhile.

use sd_testkit::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sdload(args: &[&str], journal: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("sdload"));
    cmd.args(args).arg("--journal").arg(journal);
    cmd
}

/// Stops an `sdload write` (SIGTERM: current writes finish).
fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sdload did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overtaken_recovery_leaves_no_stale_or_extra_copy() {
    let mut c = Cluster::start_with(5, PORTS, &[]);
    c.format("3");
    // Preallocated: every object exists from the start (zeros read as
    // never written), so each round's copy count covers all 32, whichever
    // blocks the load reached before the kill.
    c.dog_ok(&["vdi", "create", "-P", "v", "128M"]);
    let journal = c.root().join("journal");
    let addr = format!("127.0.0.1:{}", c.nodes[0].port);
    let mut failures = Vec::new();
    for round in 0..6 {
        let load = sdload(&["write", "--addr", &addr, "--vdi", "v"], &journal)
            // 256 blocks, one every 512 KiB: all 32 objects of the VDI.
            .args(["--blocks", "256", "--stride", "524288", "--workers", "4"])
            .args([
                "--duration",
                "1000",
                "--op-timeout",
                "10",
                "--give-up",
                "60",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sdload");
        std::thread::sleep(Duration::from_millis(500));
        let victim = 1 + round % 4;
        c.kill(victim);
        // Restarted as soon as the others run an epoch without it, while
        // they store what they recover for that epoch.
        c.wait_nodes(4);
        c.restart(victim);
        c.wait_up(victim);
        c.wait_nodes(5);
        c.wait_recovery();
        stop(load);
        let mut check = sdload(&["check", "--copies", "3"], &journal);
        for n in &c.nodes {
            check.arg("--store").arg(&n.dir);
        }
        let out = check.output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "round {round} (killed node {victim}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    if !failures.is_empty() {
        // Keep the stores and logs for diagnosis.
        let root = std::mem::replace(&mut c.root, tempfile::tempdir().unwrap());
        panic!(
            "{}\n(stores and logs kept in {})",
            failures.join("\n"),
            root.keep().display()
        );
    }
    let out = sdload(&["verify", "--addr", &addr, "--vdi", "v"], &journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
