//! Sheepdog across hosts: one sheep per network namespace (see
//! `sd_testkit::netns`) on a real ZooKeeper on the bridge, under faults,
//! with `sdload` writing self-describing blocks and verifying every
//! acknowledged write afterwards:
//!
//! * 20 rounds of SIGKILL of a random sheep during writes, restart,
//!   recovery: no acknowledged write lost, 3 copies on distinct zones.
//! * a host partitioned mid-write: its session expires, the rest carries
//!   on, it never serves stale data, and after healing it rejoins.
//! * ZooKeeper restarted within and beyond the session timeout.
//! * `dog cluster shutdown` and restart of every node (WAIT_FOR_JOIN), and
//!   `cluster recover force` without a node that is gone for good.
//! * zones spanning hosts, a gateway-only host, and `-i` on a separate
//!   data network that carries all peer traffic.
//!
//! Needs root (network namespaces) and ZooKeeper (`./scripts/test.sh`
//! installs it). The tests run one at a time: each starts several sheep and
//! a JVM. A failing test prints the tail of every sheep's log; `SD_KEEP=1`
//! keeps the stores, logs and sdload journals and prints where.

use sd_testkit::load::{self, field, sdload_bin, Load};
use sd_testkit::netns::*;
use sd_testkit::*;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn vid_of(name: &str) -> u32 {
    sd_proto::sd_hash_vdi(name.as_bytes())
}

/// Formats with 3 copies and creates VDI `name` of `size`.
fn format_and_create(c: &NetCluster, name: &str, size: &str) {
    c.dog_ok(0, &["cluster", "format", "-c", "3"]);
    c.dog_ok(0, &["vdi", "create", name, size]);
}

/// A background load on `vdi` through the hosts `at`.
fn start_load(c: &NetCluster, at: &[usize], vdi: &str, journal: &Path, tag: &str) -> Load {
    let addrs: Vec<_> = at.iter().map(|&i| c.addr(i)).collect();
    Load::start(c.root.path(), &addrs, vdi, journal, tag)
}

/// `sdload verify` through host `at`.
fn try_verify(c: &NetCluster, at: usize, vdi: &str, journal: &Path) -> Result<String, String> {
    load::try_verify(c.addr(at), vdi, journal).map_err(|e| format!("host {at}: {e}"))
}

fn verify(c: &NetCluster, at: usize, vdi: &str, journal: &Path) -> String {
    try_verify(c, at, vdi, journal).unwrap_or_else(|e| panic!("{e}"))
}

fn try_check_files(c: &NetCluster, journal: &Path, copies: usize) -> Result<(), String> {
    load::try_check_files(&c.store_dirs(), journal, copies)
}

fn check_files(c: &NetCluster, journal: &Path, copies: usize) {
    try_check_files(c, journal, copies).unwrap_or_else(|e| panic!("{e}"))
}

/// Every object of `vdi` has exactly `copies` copies on distinct zones.
fn try_redundancy(c: &NetCluster, vdi: &str, copies: usize) -> Result<(), String> {
    let bad = c.redundancy_problems(vid_of(vdi), copies);
    if c.copies_of_vdi(vid_of(vdi)).is_empty() {
        return Err(format!("no object of {vdi} found"));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "objects without {copies} copies on distinct zones:\n{}",
            bad.join("\n")
        ))
    }
}

fn assert_redundancy(c: &NetCluster, vdi: &str, copies: usize) {
    try_redundancy(c, vdi, copies).unwrap_or_else(|e| panic!("{e}"))
}

fn log_tails(c: &NetCluster) -> String {
    (0..c.nodes.len())
        .map(|i| c.log_tail(i, 15))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tiny xorshift for reproducible random choices (seed printed).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("SD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

#[test]
fn kill_rounds_lose_no_acknowledged_write() {
    let _g = serial();
    let mut c = NetCluster::start(NetOpts {
        hosts: 5,
        timeout_ms: 2000,
        ..Default::default()
    });
    format_and_create(&c, "v", "64M");
    let journal = c.root.path().join("kill.journal");
    let s = seed();
    eprintln!("kill rounds: SD_SEED={s}");
    let mut rng = Rng(s);
    let mut total_acked = 0;
    let mut failures: Vec<String> = Vec::new();
    for round in 0..20 {
        let victim = rng.below(5);
        let gw = (victim + 1 + rng.below(4)) % 5;
        let load = start_load(&c, &[gw], "v", &journal, &format!("r{round}"));
        std::thread::sleep(Duration::from_millis(300 + rng.below(500) as u64));
        let t = Instant::now();
        c.kill(victim);
        let others: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
        if round % 2 == 0 {
            // Let the others notice (session expiry) before it comes back.
            c.wait_view(&others, 4, 30);
        } else {
            // Back while its old session may still be alive.
            std::thread::sleep(Duration::from_millis(rng.below(1000) as u64));
        }
        let left = t.elapsed();
        c.start_node(victim);
        c.wait_up(victim);
        c.wait_nodes(5);
        c.wait_recovery(90);
        let recovered = t.elapsed();
        let summary = load.stop();
        total_acked += field(&summary, "acked");
        eprintln!(
            "round {round}: killed host {victim} (load via {gw}), {} {left:.1?}, recovered after {recovered:.1?}; {summary}",
            if round % 2 == 0 { "left the view after" } else { "restarted after" },
        );
        // Every check runs every round; the failures are reported together
        // at the end (a later round may show what an earlier one caused).
        let checks = [
            try_verify(&c, rng.below(5), "v", &journal).map(|v| eprintln!("round {round}: {v}")),
            try_check_files(&c, &journal, 3),
            try_redundancy(&c, "v", 3),
        ];
        for e in checks.into_iter().filter_map(Result::err) {
            eprintln!("round {round}: FAILED: {e}");
            failures.push(format!("round {round} (killed host {victim}): {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed checks:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total_acked > 1000,
        "the load made progress ({total_acked} writes)"
    );
}

#[test]
fn partitioned_host_expires_never_serves_stale_and_rejoins() {
    let _g = serial();
    let mut c = NetCluster::start(NetOpts {
        hosts: 5,
        timeout_ms: 2500,
        ..Default::default()
    });
    format_and_create(&c, "v", "64M");
    let journal = c.root.path().join("part.journal");
    let load = start_load(&c, &[0], "v", &journal, "part");
    std::thread::sleep(Duration::from_secs(1));
    let p = 4;
    // A reader inside the partitioned host, through its own sheep, for
    // the whole partition: every read that succeeds must return at least
    // what was acknowledged before it started.
    let watch_out = c.root.path().join("watch.out");
    let mut watcher = c.hosts.command(p, sdload_bin());
    die_with_parent(&mut watcher);
    let watcher = watcher
        .args([
            "watch",
            "--addr",
            &c.addr(p).to_string(),
            "--vdi",
            "v",
            "--journal",
        ])
        .arg(&journal)
        .args(["--duration", "20", "--op-timeout", "0.3"])
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(std::fs::File::create(c.root.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    c.hosts.partition(p);
    let others = [0, 1, 2, 3];
    c.wait_view(&others, 4, 30);
    let left = t.elapsed();
    // The rest carries on without the partitioned host: writes resume
    // (at least 20 acknowledged within one second) soon after the others
    // evicted it.
    let mut failures: Vec<String> = Vec::new();
    let evicted = Instant::now();
    let mut last = journal_acks(&journal);
    let resumed = loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = journal_acks(&journal);
        if now - last >= 20 {
            break evicted.elapsed();
        }
        last = now;
        if evicted.elapsed() > Duration::from_secs(45) {
            break evicted.elapsed();
        }
    };
    if resumed > Duration::from_secs(5) {
        failures.push(format!(
            "writes through host 0 stalled {resumed:.1?} after the partitioned host left the view"
        ));
    }
    let acked_at = journal_acks(&journal);
    std::thread::sleep(Duration::from_secs(2));
    let acked_during = journal_acks(&journal) - acked_at;
    // The partitioned sheep stopped serving: its own dog cannot get a
    // node list with a running cluster from it.
    let own = c.hosts.run(
        p,
        dog_bin().to_str().unwrap(),
        &["cluster", "info", "-a", &c.hosts.ip(p).to_string()],
    );
    let own_info = String::from_utf8_lossy(&own.stdout).into_owned();
    assert!(
        !own.status.success() || !own_info.starts_with("Cluster status: running"),
        "the partitioned sheep still claims a running cluster {:.1?} after the others evicted it:\n{own_info}\n{}",
        t.elapsed(),
        c.log_tail(p, 30)
    );
    // The partitioned sheep must stop serving before the others can move
    // on without it (its session may expire at any time after it lost
    // contact): compare its "stopping I/O" with the others' next epoch.
    let stopped_at = log_time(&c, p, "stopping I/O");
    let moved_at = others
        .iter()
        .filter_map(|&i| log_time(&c, i, "epoch 2: 4 nodes"))
        .reduce(f64::min);
    match (stopped_at, moved_at) {
        (Some(s), Some(m)) if s > m => failures.push(format!(
            "the partitioned sheep stopped I/O {:.3}s after the others had moved to epoch 2 without it",
            s - m
        )),
        (Some(s), Some(m)) => eprintln!(
            "partitioned sheep stopped I/O {:.3}s before the others moved on",
            m - s
        ),
        (s, m) => failures.push(format!(
            "no 'stopping I/O' ({s:?}) or 'epoch 2' ({m:?}) in the logs"
        )),
    }
    let watched = watcher.wait_with_output().unwrap();
    let w = std::fs::read_to_string(&watch_out).unwrap_or_default()
        + &std::fs::read_to_string(c.root.path().join("watch.err")).unwrap_or_default();
    if !watched.status.success() {
        failures.push(format!(
            "the partitioned host served stale data:\n{w}\n{}",
            c.log_tail(p, 40)
        ));
    }
    assert!(
        field(
            w.lines()
                .find(|l| l.contains("reads_failed="))
                .unwrap_or_default(),
            "reads_failed"
        ) > 0,
        "reads through the partitioned host failed at some point: {w}"
    );
    c.hosts.heal(p);
    // It comes back on its own: it re-executed itself and keeps trying to
    // rejoin until ZooKeeper is reachable again.
    let healed = Instant::now();
    let mut exited = None;
    while healed.elapsed() < Duration::from_secs(30) {
        if let Some(st) = c.exit_status(p) {
            exited = Some(st);
            break;
        }
        if c.view_at(0).is_some_and(|v| v.len() == 5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = exited.is_none() && c.running(p);
    if !back {
        failures.push(format!(
            "the partitioned sheep did not rejoin by itself (exit {exited:?}):\n{}",
            c.log_tail(p, 40)
        ));
        c.start_node(p);
        c.wait_up(p);
    }
    c.wait_nodes(5);
    c.wait_recovery(90);
    let summary = load.stop();
    eprintln!(
        "partition: left the others' view after {left:.1?}, writes resumed {resumed:.1?} after that, {acked_during} acknowledged in the next 2 s, rejoined by itself: {back}; {summary}; watcher: {}",
        w.trim()
    );
    let checks = [
        try_verify(&c, p, "v", &journal).map(|_| ()),
        try_verify(&c, 1, "v", &journal).map(|_| ()),
        try_check_files(&c, &journal, 3),
        try_redundancy(&c, "v", 3),
    ];
    failures.extend(checks.into_iter().filter_map(Result::err));
    assert!(
        failures.is_empty(),
        "{} failed checks:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Seconds since midnight (UTC) of the first line of host `i`'s
/// sheep.log containing `needle` (its tracing timestamp).
fn log_time(c: &NetCluster, i: usize, needle: &str) -> Option<f64> {
    let log = std::fs::read_to_string(c.nodes[i].dir.join("sheep.log")).ok()?;
    let line = log.lines().find(|l| l.contains(needle))?;
    // 2026-11-21T11:43:23.101585Z
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.trim_end_matches('Z');
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Whether host `i`'s sheep answers `cluster info` with a running cluster
/// within a second (a sheep that is restarting may accept connections
/// before it answers them).
fn serving(c: &NetCluster, i: usize) -> bool {
    Command::new("timeout")
        .arg("1")
        .arg(dog_bin())
        .args(["cluster", "info", "-a", &c.hosts.ip(i).to_string()])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"Cluster status: running"))
}

/// Acknowledged writes in a journal so far.
fn journal_acks(journal: &Path) -> u64 {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("A "))
        .count() as u64
}

#[test]
fn zookeeper_restart_within_and_beyond_the_session_timeout() {
    let _g = serial();
    let timeout_ms = 8000;
    let mut c = NetCluster::start(NetOpts {
        hosts: 4,
        timeout_ms,
        ..Default::default()
    });
    format_and_create(&c, "v", "64M");
    let journal = c.root.path().join("zk.journal");
    let epoch = c.epoch_at(0);
    let load = start_load(&c, &[0, 1], "v", &journal, "zk1");
    std::thread::sleep(Duration::from_secs(1));

    // Within the timeout: nobody notices beyond a delay. The outage lasts
    // until the restarted ZooKeeper answers; a sheep gives its session up
    // 3/5 of the timeout after losing the connection. On a loaded machine
    // the JVM can take longer than that to start: such an outage was not
    // "within", and is tried again.
    let within = Duration::from_millis(timeout_ms as u64 * 3 / 5 - 1500);
    let mut epoch = epoch;
    let mut attempt = 0;
    let outage = loop {
        attempt += 1;
        let t = Instant::now();
        c.zk.stop();
        std::thread::sleep(Duration::from_millis(1000));
        c.zk.start_again();
        let outage = t.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            c.alive(),
            vec![0, 1, 2, 3],
            "every sheep rode out a {outage:.1?} ZooKeeper outage\n{}",
            log_tails(&c)
        );
        c.wait_nodes(4);
        if outage < within {
            assert_eq!(
                c.epoch_at(0),
                epoch,
                "no membership change after a {outage:.1?} outage\n{}",
                log_tails(&c)
            );
            break outage;
        }
        assert!(
            attempt < 3,
            "ZooKeeper never came back within {within:?}: {outage:.1?}"
        );
        eprintln!("ZooKeeper took {outage:.1?} to come back (more than {within:?}): again");
        c.wait_recovery(60);
        epoch = c.epoch_at(0);
    };
    let summary = load.stop();
    eprintln!("ZooKeeper down for {outage:.1?}: {summary}");
    verify(&c, 2, "v", &journal);

    // Beyond it: every sheep stops serving (and exits, or waits), then
    // the cluster comes back once ZooKeeper does.
    let load = start_load(&c, &[0, 1], "v", &journal, "zk2");
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    c.zk.stop();
    let limit = Duration::from_millis(timeout_ms as u64 * 2);
    let mut stopped = [None; 4];
    while t.elapsed() < limit && stopped.iter().any(|s| s.is_none()) {
        for (i, s) in stopped.iter_mut().enumerate() {
            if s.is_none() {
                let serving = c.running(i) && serving(&c, i);
                if !serving {
                    *s = Some(t.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stopped.iter().all(|s| s.is_some()),
        "sheep still serving {limit:?} after ZooKeeper went away: {stopped:?}\n{}",
        log_tails(&c)
    );
    std::thread::sleep(Duration::from_secs(1));
    let exits: Vec<_> = (0..4).map(|i| c.exit_status(i)).collect();
    c.zk.start_again();
    for i in 0..4 {
        if !c.running(i) {
            c.start_node(i);
        }
    }
    for i in 0..4 {
        c.wait_up(i);
    }
    wait_until(60, "the cluster running again", || {
        (0..4).all(|i| {
            c.dog_at(i, &["cluster", "info"])
                .stdout
                .starts_with(b"Cluster status: running")
        })
    });
    c.wait_nodes(4);
    c.wait_recovery(90);
    let summary = load.stop();
    eprintln!("ZooKeeper down beyond the timeout: stopped serving after {stopped:?}, exits {exits:?}; {summary}");
    verify(&c, 3, "v", &journal);
    check_files(&c, &journal, 3);
    assert_redundancy(&c, "v", 3);
}

#[test]
fn whole_cluster_shutdown_and_restart() {
    let _g = serial();
    let mut c = NetCluster::start(NetOpts {
        hosts: 4,
        timeout_ms: 3000,
        ..Default::default()
    });
    format_and_create(&c, "v", "64M");
    let journal = c.root.path().join("shutdown.journal");
    let load = start_load(&c, &[1], "v", &journal, "sd1");
    std::thread::sleep(Duration::from_secs(2));
    let summary = load.stop();
    assert!(field(&summary, "acked") > 0);

    assert_eq!(c.dog_ok(0, &["cluster", "shutdown"]), "");
    for i in 0..4 {
        let st = c.nodes[i].child.take().unwrap().wait().unwrap();
        assert!(st.success(), "host {i} exits with 0 after shutdown: {st}");
    }
    // Three of four back: the cluster waits for the last epoch's nodes.
    for i in [2, 0, 1] {
        c.start_node(i);
    }
    for i in [2, 0, 1] {
        c.wait_up(i);
    }
    wait_until(30, "WAIT_FOR_JOIN", || {
        String::from_utf8_lossy(&c.dog_at(0, &["cluster", "info"]).stdout)
            .starts_with("Cluster status: Waiting for other nodes to join cluster")
    });
    let out = c.dog_at(1, &["vdi", "read", "v", "0", "4096"]);
    assert!(
        !out.status.success(),
        "no I/O before every node of the last epoch is back"
    );
    c.start_node(3);
    c.wait_up(3);
    wait_until(30, "running", || {
        (0..4).all(|i| {
            c.dog_at(i, &["cluster", "info"])
                .stdout
                .starts_with(b"Cluster status: running")
        })
    });
    c.wait_nodes(4);
    c.wait_recovery(60);
    for i in 0..4 {
        verify(&c, i, "v", &journal);
    }
    check_files(&c, &journal, 3);
    assert_redundancy(&c, "v", 3);

    // Again, and host 3 is gone for good: force recovery on the rest.
    assert_eq!(c.dog_ok(0, &["cluster", "shutdown"]), "");
    for i in 0..4 {
        c.nodes[i].child.take().unwrap().wait().unwrap();
    }
    for i in 0..3 {
        c.start_node(i);
    }
    for i in 0..3 {
        c.wait_up(i);
    }
    wait_until(30, "WAIT_FOR_JOIN", || {
        c.dog_at(2, &["cluster", "info"])
            .stdout
            .starts_with(b"Cluster status: Waiting for other nodes")
    });
    let out = c.dog_stdin(0, &["cluster", "recover", "force"], b"yes\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_nodes(3);
    c.wait_recovery(60);
    verify(&c, 2, "v", &journal);
    let _ = std::fs::remove_dir_all(c.nodes[3].dir.join("obj"));
    check_files(&c, &journal, 3);
    assert_redundancy(&c, "v", 3);
}

#[test]
fn zones_gateway_and_data_network() {
    let _g = serial();
    // Six storage hosts in three zones, a gateway-only seventh, and a
    // second network for I/O between sheep.
    let mut c = NetCluster::start(NetOpts {
        hosts: 7,
        zones: Some(vec![0, 0, 1, 1, 2, 2, 9]),
        gateways: vec![6],
        timeout_ms: 3000,
        data_net: true,
        ..Default::default()
    });
    format_and_create(&c, "v", "64M");

    // -i is advertised: the node list carries every storage node's data
    // address and port.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nodes = rt.block_on(async {
        let ep = sd_client::Endpoint::Tcp(c.addr(0));
        let mut conn = sd_client::Connection::connect(&ep).await.unwrap();
        sd_client::vdi::get_node_list(&mut conn).await.unwrap()
    });
    assert_eq!(nodes.len(), 7);
    for i in 0..7 {
        let n = nodes
            .iter()
            .find(|n| n.nid.ip() == std::net::IpAddr::V4(c.hosts.ip(i)))
            .unwrap_or_else(|| panic!("host {i} in the node list {nodes:?}"));
        assert_eq!(
            n.nid.io_socket_addr(),
            std::net::SocketAddr::new(c.hosts.data_ip(i).into(), IO_PORT),
            "host {i} advertises its -i address"
        );
        assert_eq!(n.zone, c.nodes[i].zone);
        assert_eq!(n.nr_vnodes == 0, i == 6, "only host 6 is a gateway");
    }

    // Sheep cannot reach each other's main addresses any more; only the
    // data network connects them (clients and ZooKeeper are unaffected).
    for i in 0..7 {
        for j in 0..7 {
            if i != j {
                c.hosts.set_route_to(i, c.hosts.ip(j), false);
            }
        }
    }
    let journal = c.root.path().join("zones.journal");
    let load = start_load(&c, &[6], "v", &journal, "gw");
    std::thread::sleep(Duration::from_secs(3));
    let summary = load.stop();
    assert!(
        field(&summary, "acked") > 100,
        "I/O through the gateway over the data network: {summary}"
    );
    assert_eq!(field(&summary, "errors"), 0, "no errors: {summary}");
    verify(&c, 6, "v", &journal);
    verify(&c, 3, "v", &journal);
    assert!(
        c.objects(6).is_empty(),
        "the gateway stores nothing: {:?}",
        c.objects(6)
    );
    assert_redundancy(&c, "v", 3);
    check_files(&c, &journal, 3);

    // Losing a host: recovery (over the data network) restores three
    // copies on three zones from the five that are left.
    let load = start_load(&c, &[6], "v", &journal, "gw2");
    std::thread::sleep(Duration::from_millis(500));
    c.kill(2);
    c.wait_nodes(6);
    c.wait_recovery(60);
    let summary = load.stop();
    let _ = std::fs::remove_dir_all(c.nodes[2].dir.join("obj"));
    assert_redundancy(&c, "v", 3);
    check_files(&c, &journal, 3);
    verify(&c, 5, "v", &journal);
    eprintln!("zones/gateway/-i: {summary}");
}
