//! Spawns real clusters of `sheep` processes in temporary directories for
//! integration tests and benchmarks, and runs the real `dog` against them.
//!
//! Every node runs in the foreground as a child process of the test (so a
//! SIGKILL is a real crash) with its own store directory and a per-cluster
//! local-driver path, on ports picked free at start.

pub mod load;
pub mod netns;
pub mod zk;
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the built `sheep` and `dog` (the test's own profile).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SD_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut d = exe.parent().unwrap().to_path_buf();
    if d.ends_with("deps") {
        d.pop();
    }
    d
}

pub fn sheep_bin() -> PathBuf {
    bin_dir().join("sheep")
}
pub fn dog_bin() -> PathBuf {
    bin_dir().join("dog")
}

/// Where tests put their listening ports: below Linux's ephemeral range
/// (32768..61000 by default), so no outgoing connection of a running
/// cluster can take a port between its pick and its node's start.
pub const PORTS: Range<u16> = 10000..32000;

/// `n` consecutive free TCP ports (checked by binding) in `ports`.
pub fn free_ports(n: usize, ports: Range<u16>) -> u16 {
    loop {
        let base = rand::random::<u16>() % (ports.end - ports.start - n as u16) + ports.start;
        if (0..n as u16).all(|i| TcpListener::bind(("0.0.0.0", base + i)).is_ok()) {
            return base;
        }
    }
}

/// One sheep of a test cluster.
pub struct Node {
    pub port: u16,
    pub zone: u32,
    pub dir: PathBuf,
    pub gateway: bool,
    /// Port of this node's NBD server, if it serves NBD.
    pub nbd_port: Option<u16>,
    /// Extra environment of its sheep (e.g. `SHEEP_INJECT`).
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    /// Its disks (`sheep DIR,DISK1,...`); none: objects in `DIR/obj`.
    pub disks: Vec<PathBuf>,
}

impl Node {
    pub fn obj_dir(&self) -> PathBuf {
        self.dir.join("obj")
    }
    /// Object file names in this node's working directory.
    pub fn objects(&self) -> Vec<String> {
        object_files(&self.obj_dir())
    }
    /// Stale copy names (`<object>.<epoch>`) in this node's store.
    pub fn stale_objects(&self) -> Vec<String> {
        std::fs::read_dir(self.obj_dir().join(".stale"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Object file names (no stale copies, checksum or other dot files) in
/// an object directory, sorted.
pub fn object_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| !n.starts_with('.'));
    v.sort();
    v
}

/// How a test stops a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the node leaves the cluster and exits.
    Term,
    /// SIGKILL: a crash; the cluster driver notices the death.
    Kill,
}

/// A cluster of sheep processes on this machine.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub shm: PathBuf,
    pub extra_args: Vec<String>,
    /// The `-c` argument; the cluster's private local driver by default.
    pub driver: String,
    /// Disks of each node added (see [`Cluster::start_disks`]).
    pub disks_per_node: usize,
}

impl Cluster {
    /// Starts `n` storage nodes in zones 0..n (not formatted).
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, PORTS, &["-n"])
    }

    /// Starts `n` nodes on ports in `ports` with extra sheep args.
    pub fn start_with(n: usize, ports: Range<u16>, extra: &[&str]) -> Cluster {
        Self::start_full(n, ports, extra, None)
    }

    /// Starts `n` nodes on ports in `ports` with extra sheep args on
    /// `driver` (the cluster's private local driver if None).
    pub fn start_full(
        n: usize,
        ports: Range<u16>,
        extra: &[&str],
        driver: Option<&str>,
    ) -> Cluster {
        Self::start_disks(n, 0, ports, extra, driver)
    }

    /// Starts `n` storage nodes with `disks` disks each (multi-disk
    /// stores, `DIR,DIR.d0,DIR.d1,...`; 0: objects in `DIR/obj`).
    pub fn start_disks(
        n: usize,
        disks: usize,
        ports: Range<u16>,
        extra: &[&str],
        driver: Option<&str>,
    ) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("sdtest")
            .tempdir()
            .expect("tempdir");
        let shm = root.path().join("shm");
        let base = free_ports(n + 4, ports);
        let driver = driver.map_or_else(|| format!("local:{}", shm.display()), str::to_string);
        let mut c = Cluster {
            root,
            nodes: Vec::new(),
            shm,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            driver,
            disks_per_node: disks,
        };
        for i in 0..n {
            c.add_node(base + i as u16, i as u32, false);
        }
        for i in 0..n {
            c.wait_up(i);
        }
        c.wait_nodes(n);
        c
    }

    /// Starts `n` storage nodes on the cluster driver `driver` (e.g.
    /// `zookeeper:127.0.0.1:2181/test1,timeout=2000`).
    pub fn start_driver(n: usize, driver: &str) -> Cluster {
        Self::start_full(n, PORTS, &["-n"], Some(driver))
    }

    /// Starts `n` storage nodes that also serve NBD (see [`Cluster::nbd_uri`]).
    pub fn start_nbd(n: usize) -> Cluster {
        Self::start_with(n, PORTS, &["-n"]).serve_nbd()
    }

    /// Restarts every node (not formatted yet) serving NBD too (see
    /// [`Cluster::nbd_uri`]).
    pub fn serve_nbd(mut self) -> Cluster {
        let n = self.nodes.len();
        let base = free_ports(n, PORTS);
        for i in 0..n {
            self.nodes[i].nbd_port = Some(base + i as u16);
            self.kill(i);
            self.restart(i);
        }
        for i in 0..n {
            self.wait_up(i);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", base + i as u16)).is_err() {
                assert!(Instant::now() < deadline, "NBD of node {i} did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.wait_nodes(n);
        self
    }

    /// `nbd://127.0.0.1:<port>/<export>` of node `i`.
    pub fn nbd_uri(&self, i: usize, export: &str) -> String {
        format!(
            "nbd://127.0.0.1:{}/{export}",
            self.nodes[i].nbd_port.expect("node serves NBD")
        )
    }

    /// Adds and starts a node; returns its index.
    pub fn add_node(&mut self, port: u16, zone: u32, gateway: bool) -> usize {
        let dir = self.root.path().join(format!("{port}"));
        let disks = (0..self.disks_per_node)
            .map(|d| self.root.path().join(format!("{port}.d{d}")))
            .collect();
        self.nodes.push(Node {
            port,
            zone,
            dir,
            gateway,
            nbd_port: None,
            env: Vec::new(),
            child: None,
            disks,
        });
        let i = self.nodes.len() - 1;
        self.restart(i);
        i
    }

    /// (Re)starts node `i` with its original options.
    pub fn restart(&mut self, i: usize) {
        let n = &self.nodes[i];
        let mut cmd = Command::new(sheep_bin());
        let mut dirs = n.dir.clone().into_os_string();
        for d in &n.disks {
            dirs.push(",");
            dirs.push(d);
        }
        cmd.arg(dirs)
            .args(["-f", "-c", &self.driver])
            .args(["-p", &n.port.to_string(), "-z", &n.zone.to_string()])
            .args(&self.extra_args);
        if n.gateway {
            cmd.arg("-g");
        }
        cmd.envs(n.env.iter().map(|(k, v)| (k, v)));
        if let Some(p) = n.nbd_port {
            cmd.args(["--nbd", &format!("127.0.0.1:{p}")]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("stderr.{}", n.port)))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().expect("spawn sheep");
        self.nodes[i].child = Some(child);
    }

    /// Waits until node `i` accepts connections.
    pub fn wait_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].port)).is_err() {
            if Instant::now() >= deadline {
                let port = self.nodes[i].port;
                let log = std::fs::read_to_string(self.root.path().join(format!("stderr.{port}")));
                panic!(
                    "node {port} did not come up; its log:\n{}",
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs node `i` (a crash, no goodbye).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `i` (a clean stop: it leaves the cluster) and waits
    /// until it has exited.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Stops every running node at once the way `how` says (all signalled
    /// before any is waited for), as a power cut or `killall sheep` does.
    pub fn stop_all(&mut self, how: Stop) {
        let sig = match how {
            Stop::Term => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .collect();
        for c in &children {
            // SAFETY: signalling our own children, not reaped yet.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
        for c in &mut children {
            let _ = c.wait();
        }
    }

    /// Waits until every running node reports the cluster running.
    pub fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in self.alive() {
            loop {
                let out = self.dog_at(i, &["cluster", "info"]);
                let text = String::from_utf8_lossy(&out.stdout);
                if text.starts_with("Cluster status: running") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} does not run: {text}",
                    self.nodes[i].port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stops node `i` the way `how` says.
    pub fn stop(&mut self, i: usize, how: Stop) {
        match how {
            Stop::Term => self.terminate(i),
            Stop::Kill => self.kill(i),
        }
    }

    /// Waits until node `i` has exited by itself; its exit status.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.nodes[i].child.as_mut().expect("node runs");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.nodes[i].child = None;
                return st;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.nodes[i].dir.join("sheep.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "node {} did not exit; the end of its log:\n{}",
                    self.nodes[i].port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `dog node list` through node `i` shows `n` nodes.
    pub fn wait_nodes_at(&self, i: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.dog_at(i, &["node", "list", "-r"]);
            let count = String::from_utf8_lossy(&out.stdout).lines().count();
            if out.status.success() && count == n {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let log =
                            std::fs::read_to_string(n.dir.join("sheep.log")).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(6).collect();
                        format!(
                            "--- {}:\n{}",
                            n.port,
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "node {i} did not see {n} nodes (sees {count}):\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits, as an operator's script would, until `dog node recovery`
    /// through node `i` lists no recovering node (once).
    pub fn wait_no_recovery_at(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.dog_at(i, &["node", "recovery"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "recovery did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `dog` against node `i` with `args` (then `-p <port>`).
    pub fn dog_at(&self, i: usize, args: &[&str]) -> Output {
        self.dog_stdin(i, args, &[])
    }

    pub fn dog(&self, args: &[&str]) -> Output {
        self.dog_at(self.first_alive(), args)
    }

    /// Runs `dog` feeding `input` on stdin.
    pub fn dog_stdin(&self, i: usize, args: &[&str], input: &[u8]) -> Output {
        let mut cmd = Command::new(dog_bin());
        cmd.args(args).args(["-p", &self.nodes[i].port.to_string()]);
        output_with_input(&mut cmd, input)
    }

    /// `dog vdi write` of `data` at `offset` through node `i`; panics
    /// with dog's message if it fails.
    pub fn vdi_write(&self, i: usize, vdi: &str, offset: u64, data: &[u8]) {
        let (o, l) = (offset.to_string(), data.len().to_string());
        let out = self.dog_stdin(i, &["vdi", "write", vdi, &o, &l], data);
        assert!(
            out.status.success(),
            "vdi write {vdi} at {offset} through node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `dog vdi read` of `len` bytes at `offset` through node `i`; panics
    /// with dog's message if it fails.
    pub fn vdi_read(&self, i: usize, vdi: &str, offset: u64, len: usize) -> Vec<u8> {
        let out = self.dog_at(
            i,
            &["vdi", "read", vdi, &offset.to_string(), &len.to_string()],
        );
        assert!(
            out.status.success(),
            "vdi read {vdi} at {offset} through node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Runs dog and asserts success; returns stdout as text.
    pub fn dog_ok(&self, args: &[&str]) -> String {
        let out = self.dog(args);
        assert!(
            out.status.success(),
            "dog {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn first_alive(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("a live node")
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// Waits until `dog node list` on a live node shows `n` nodes.
    pub fn wait_nodes(&self, n: usize) {
        self.wait_nodes_at(self.first_alive(), n)
    }

    /// Formats the cluster with `copies`.
    pub fn format(&self, copies: &str) {
        self.dog_ok(&["cluster", "format", "-c", copies]);
    }

    /// The newest epoch node `i` reports (`cluster info -r`), if any.
    pub fn epoch_at(&self, i: usize) -> Option<u32> {
        let out = self.dog_at(i, &["cluster", "info", "-r"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(2)?
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    }

    /// Waits until every live node agrees on the epoch and none reports
    /// recovery in progress, twice in a row.
    pub fn wait_recovery(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet = 0;
        while quiet < 2 {
            let epochs: Vec<Option<u32>> = self.alive().iter().map(|&i| self.epoch_at(i)).collect();
            let agreed = epochs.windows(2).all(|w| w[0] == w[1]);
            let busy = self.alive().iter().any(|&i| {
                let out = self.dog_at(i, &["node", "recovery"]);
                !out.status.success() || String::from_utf8_lossy(&out.stdout).lines().count() != 2
            });
            quiet = if agreed && !busy { quiet + 1 } else { 0 };
            assert!(Instant::now() < deadline, "recovery did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Runs `cmd` with `input` on its stdin (written from a thread, so a
/// child that answers before reading everything cannot deadlock us) and
/// collects its output.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("child output");
    let _ = w.join();
    out
}

/// Deterministic pseudo-random bytes for test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
