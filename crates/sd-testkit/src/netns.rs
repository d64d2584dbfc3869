//! Test hosts: Linux network namespaces on a private bridge, and a cluster
//! of `sheep` processes, one per namespace, on a real ZooKeeper.
//!
//! [`Hosts`] gives every "host" its own network namespace with a veth
//! pair whose root-namespace end sits on a bridge:
//!
//! ```text
//!   root namespace                         namespace sd<pid>-<X>-<i>
//!   sdbr<X> 10.213.X.1/24 ── sdh<X>-<i> ═══ eth0 10.213.X.(10+i)/24, lo up
//!   sdbd<X> 10.214.X.1/24 ── sdd<X>-<i> ═══ eth1 10.214.X.(10+i)/24  (data network, optional)
//! ```
//!
//! `X` is picked per [`Hosts`] under a file lock so that parallel tests (in
//! one process or several) never share a subnet or an interface name.
//! Every address is in 10.213.0.0/16 or 10.214.0.0/16, confined to this
//! machine (nothing is forwarded). A partition is the root-side end of a
//! host's veth set down: the host's own addresses stay configured, packets
//! to and from it are silently dropped, as with a pulled cable.
//!
//! Everything is removed on drop (processes in the namespaces are
//! SIGKILLed first), also when a test panics; what a killed test process
//! left behind (namespaces named after a dead pid, bridges whose alias
//! names a dead pid) is removed by the next [`Hosts::create`].
//!
//! [`NetCluster`] runs one sheep per host (`-b`/`-y` the host's address,
//! port 7000, zone per host) on a [`ZkServer`] listening on the bridge
//! address, and drives them with the real `dog` from the root namespace.
//!
//! Needs root and iproute2 (`ip`).

use crate::zk::ZkServer;
use crate::{dog_bin, sheep_bin};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Second octet of the control network (10.213.X.0/24).
pub const CONTROL_NET: u8 = 213;
/// Second octet of the data network (10.214.X.0/24).
pub const DATA_NET: u8 = 214;
/// Lock serialising subnet allocation and stale clean-up across processes.
const LOCK_PATH: &str = "/run/sd-netns.lock";
/// Alias on our bridges naming the owning process.
const ALIAS_PREFIX: &str = "sd-netns pid=";

/// Runs `ip` with `args`; the error carries the command and its stderr.
pub fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs every process in namespace `ns`.
fn kill_ns_pids(ns: &str) {
    for _ in 0..50 {
        let pids: Vec<i32> = ip_out(&["netns", "pids", ns])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            // SAFETY: plain kill(2) on a pid read from the kernel.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid in a namespace name `sd<pid>-<X>-<i>`.
fn ns_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sd")?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let x: Option<u8> = parts.next()?.parse().ok();
    let i: Option<usize> = parts.next()?.parse().ok();
    (x.is_some() && i.is_some() && parts.next().is_none()).then_some(pid)
}

/// Removes namespaces and bridges that processes which no longer exist
/// created (a test killed before its destructors ran).
pub fn cleanup_stale() {
    for line in ip_out(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = ns_owner(name) {
            if !pid_alive(pid) {
                kill_ns_pids(name);
                let _ = ip_cmd(&["netns", "del", name]);
            }
        }
    }
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("sdbr") || name.starts_with("sdbd")) {
            continue;
        }
        let alias = std::fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
        let owner = alias
            .trim()
            .strip_prefix(ALIAS_PREFIX)
            .and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| !pid_alive(p)) {
            let _ = ip_cmd(&["link", "del", &name]);
        }
    }
}

/// An exclusive `flock` on [`LOCK_PATH`], released on drop.
struct AllocLock(File);

impl AllocLock {
    fn take() -> Result<AllocLock, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(|e| format!("cannot open {LOCK_PATH}: {e}"))?;
        // SAFETY: flock on an fd we own for the lifetime of `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {LOCK_PATH}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(AllocLock(f))
    }
}

impl Drop for AllocLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the fd we locked.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Which of a host's networks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Net {
    /// eth0, 10.213.X.0/24: cluster driver, clients, dog.
    Control,
    /// eth1, 10.214.X.0/24: the separate data network (if created).
    Data,
}

/// One test host: a network namespace with its addresses.
#[derive(Debug)]
pub struct Host {
    /// Namespace name (`sd<pid>-<X>-<i>`).
    pub ns: String,
    /// Address on the control network.
    pub ip: Ipv4Addr,
    /// Address on the data network, if there is one.
    pub data_ip: Option<Ipv4Addr>,
    /// Root-namespace ends of the host's veth pairs (control, data).
    links: Vec<String>,
}

/// N test hosts (network namespaces) on a private bridge; see the module
/// documentation. Everything is removed on drop.
pub struct Hosts {
    /// The `X` of 10.213.X.0/24 (and 10.214.X.0/24).
    pub subnet: u8,
    pub hosts: Vec<Host>,
    bridges: Vec<String>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Hosts {
    /// Creates `n` hosts on one bridge; panics with the reason if it cannot.
    pub fn create(n: usize) -> Hosts {
        Self::try_create(n, false).unwrap_or_else(|e| panic!("cannot create test hosts: {e}"))
    }

    /// Creates `n` hosts with a control network and, if `data_net`, a
    /// second network (eth1 on a second bridge) for `-i`.
    pub fn try_create(n: usize, data_net: bool) -> Result<Hosts, String> {
        assert!(n > 0 && n <= 200, "1..=200 hosts");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        let lock = AllocLock::take()?;
        cleanup_stale();
        let used: String = ip_out(&["-o", "-4", "addr"]);
        let start = (std::process::id() + SEQ.fetch_add(1, Ordering::SeqCst) * 7) % 254;
        let subnet = (0..254u32)
            .map(|k| ((start + k) % 254 + 1) as u8)
            .find(|x| {
                !Path::new(&format!("/sys/class/net/sdbr{x}")).exists()
                    && !Path::new(&format!("/sys/class/net/sdbd{x}")).exists()
                    && !used.contains(&format!("10.{CONTROL_NET}.{x}."))
                    && !used.contains(&format!("10.{DATA_NET}.{x}."))
            })
            .ok_or("no free 10.213.X.0/24 subnet")?;
        let mut h = Hosts {
            subnet,
            hosts: Vec::new(),
            bridges: Vec::new(),
        };
        let nets: &[Net] = if data_net {
            &[Net::Control, Net::Data]
        } else {
            &[Net::Control]
        };
        // Bridges first, with the owner alias, while holding the lock: from
        // then on the subnet is visibly taken.
        for &net in nets {
            let br = h.bridge(net);
            ip_cmd(&["link", "add", &br, "type", "bridge"])?;
            h.bridges.push(br.clone());
            let alias = format!("{ALIAS_PREFIX}{}", std::process::id());
            ip_cmd(&["link", "set", &br, "alias", &alias])?;
            ip_cmd(&[
                "addr",
                "add",
                &format!("{}/24", h.bridge_ip_of(net)),
                "dev",
                &br,
            ])?;
            ip_cmd(&["link", "set", &br, "up"])?;
        }
        drop(lock);
        for i in 0..n {
            let ns = format!("sd{}-{subnet}-{i}", std::process::id());
            ip_cmd(&["netns", "add", &ns])?;
            h.hosts.push(Host {
                ns: ns.clone(),
                ip: h.addr(Net::Control, i),
                data_ip: data_net.then(|| h.addr(Net::Data, i)),
                links: Vec::new(),
            });
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
            for (k, &net) in nets.iter().enumerate() {
                let outer = h.link_name(net, i);
                let inner = format!("eth{k}");
                ip_cmd(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
                ])?;
                h.hosts[i].links.push(outer.clone());
                ip_cmd(&["link", "set", &outer, "master", &h.bridge(net)])?;
                ip_cmd(&["link", "set", &outer, "up"])?;
                let a = format!("{}/24", h.addr(net, i));
                ip_cmd(&["-n", &ns, "addr", "add", &a, "dev", &inner])?;
                ip_cmd(&["-n", &ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(h)
    }

    fn bridge(&self, net: Net) -> String {
        match net {
            Net::Control => format!("sdbr{}", self.subnet),
            Net::Data => format!("sdbd{}", self.subnet),
        }
    }

    fn link_name(&self, net: Net, i: usize) -> String {
        match net {
            Net::Control => format!("sdh{}-{i}", self.subnet),
            Net::Data => format!("sdd{}-{i}", self.subnet),
        }
    }

    fn bridge_ip_of(&self, net: Net) -> Ipv4Addr {
        let b = if net == Net::Control {
            CONTROL_NET
        } else {
            DATA_NET
        };
        Ipv4Addr::new(10, b, self.subnet, 1)
    }

    fn addr(&self, net: Net, i: usize) -> Ipv4Addr {
        let b = if net == Net::Control {
            CONTROL_NET
        } else {
            DATA_NET
        };
        Ipv4Addr::new(10, b, self.subnet, 10 + i as u8)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The root namespace's address on the control bridge (where
    /// ZooKeeper listens).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip_of(Net::Control)
    }

    /// Host `i`'s control address.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].ip
    }

    /// Host `i`'s data address; panics without a data network.
    pub fn data_ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].data_ip.expect("hosts have a data network")
    }

    /// Host `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// A command running `program` inside host `i`
    /// (`ip netns exec <ns> <program>`; `ip` execs it, so the child's pid
    /// is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// Runs `program args` inside host `i` and returns its output.
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> Output {
        self.command(i, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// Sets host `i`'s link on `net` down (packets silently dropped) or up.
    pub fn set_link(&self, i: usize, net: Net, up: bool) {
        let k = if net == Net::Control { 0 } else { 1 };
        let l = &self.hosts[i].links[k];
        ip_cmd(&["link", "set", l, if up { "up" } else { "down" }]).unwrap();
    }

    /// Cuts every link of host `i`: a network partition of that host.
    pub fn partition(&self, i: usize) {
        for l in &self.hosts[i].links {
            ip_cmd(&["link", "set", l, "down"]).unwrap();
        }
    }

    /// Restores every link of host `i`.
    pub fn heal(&self, i: usize) {
        for l in &self.hosts[i].links {
            ip_cmd(&["link", "set", l, "up"]).unwrap();
        }
    }

    /// Makes `dst` unreachable from host `i` (an `unreachable` route), or
    /// reachable again: cuts one path without touching the others.
    pub fn set_route_to(&self, i: usize, dst: Ipv4Addr, reachable: bool) {
        let d = format!("{dst}/32");
        let verb = if reachable { "del" } else { "add" };
        ip_cmd(&["-n", &self.hosts[i].ns, "route", verb, "unreachable", &d]).unwrap();
    }

    /// Pids of the processes in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        ip_out(&["netns", "pids", &self.hosts[i].ns])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_ns_pids(&h.ns);
            let _ = ip_cmd(&["netns", "del", &h.ns]);
        }
        for h in &self.hosts {
            for l in &h.links {
                if Path::new(&format!("/sys/class/net/{l}")).exists() {
                    let _ = ip_cmd(&["link", "del", l]);
                }
            }
        }
        for b in &self.bridges {
            let _ = ip_cmd(&["link", "del", b]);
        }
    }
}

/// Makes the child (and what it execs) get SIGKILL when the spawning
/// thread's process dies, so a killed test leaves no process behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sheep port on every host (each host has its own addresses).
pub const SHEEP_PORT: u16 = 7000;
/// Port of the `-i` listener on the data network.
pub const IO_PORT: u16 = 7001;

/// How to start the sheep of a [`NetCluster`].
#[derive(Clone, Debug)]
pub struct NetOpts {
    /// Hosts (one sheep each).
    pub hosts: usize,
    /// Zone of each host's sheep (default: the host index).
    pub zones: Option<Vec<u32>>,
    /// Hosts whose sheep runs gateway-only (`-g`).
    pub gateways: Vec<usize>,
    /// ZooKeeper session timeout asked for, in ms.
    pub timeout_ms: u32,
    /// Give every host a data network and run sheep with
    /// `-i host=<data ip>,port=7001`.
    pub data_net: bool,
    /// Extra sheep arguments (default `-n`).
    pub extra: Vec<String>,
}

impl Default for NetOpts {
    fn default() -> Self {
        NetOpts {
            hosts: 3,
            zones: None,
            gateways: vec![],
            timeout_ms: 3000,
            data_net: false,
            extra: vec!["-n".into()],
        }
    }
}

/// One sheep of a [`NetCluster`], on host `index`.
pub struct NetNode {
    pub zone: u32,
    pub dir: PathBuf,
    pub gateway: bool,
    /// The running process (`ip netns exec` execs sheep: same pid).
    pub child: Option<Child>,
}

/// A cluster of sheep, one per [`Hosts`] namespace, on a [`ZkServer`] on
/// the bridge. Drop kills every sheep, then ZooKeeper, then the hosts.
pub struct NetCluster {
    pub nodes: Vec<NetNode>,
    pub zk: ZkServer,
    pub hosts: Hosts,
    /// Store directories and logs (`<root>/h<i>`, `<root>/stderr.<i>`).
    pub root: tempfile::TempDir,
    /// The `-c` argument every sheep gets.
    pub driver: String,
    pub opts: NetOpts,
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl NetCluster {
    /// Creates the hosts, starts ZooKeeper on the bridge and one sheep per
    /// host, and waits until all of them are in the view (not formatted).
    pub fn start(opts: NetOpts) -> NetCluster {
        let hosts = Hosts::try_create(opts.hosts, opts.data_net)
            .unwrap_or_else(|e| panic!("cannot create test hosts: {e}"));
        let zk = ZkServer::try_start_on(IpAddr::V4(hosts.bridge_ip())).unwrap_or_else(|e| {
            panic!("ZooKeeper could not start (./scripts/test.sh installs it): {e}")
        });
        let root = tempfile::Builder::new()
            .prefix("sdmh")
            .tempdir()
            .expect("tempdir");
        let driver = format!(
            "zookeeper:{}/mh{},timeout={}",
            zk.addr(),
            hosts.subnet,
            opts.timeout_ms
        );
        let mut c = NetCluster {
            nodes: Vec::new(),
            zk,
            hosts,
            driver,
            root,
            opts: opts.clone(),
        };
        for i in 0..opts.hosts {
            c.nodes.push(NetNode {
                zone: opts.zones.as_ref().map_or(i as u32, |z| z[i]),
                dir: c.root.path().join(format!("h{i}")),
                gateway: opts.gateways.contains(&i),
                child: None,
            });
            c.start_node(i);
        }
        for i in 0..opts.hosts {
            c.wait_up(i);
        }
        c.wait_nodes(opts.hosts);
        c
    }

    /// `<ip>:7000` of host `i`'s sheep.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.hosts.ip(i)), SHEEP_PORT)
    }

    /// The arguments of host `i`'s sheep.
    pub fn sheep_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let ip = self.hosts.ip(i).to_string();
        let mut a: Vec<String> = vec![
            n.dir.display().to_string(),
            "-f".into(),
            "-c".into(),
            self.driver.clone(),
            "-b".into(),
            ip.clone(),
            "-y".into(),
            ip,
            "-p".into(),
            SHEEP_PORT.to_string(),
            "-z".into(),
            n.zone.to_string(),
        ];
        if self.opts.data_net {
            a.push("-i".into());
            a.push(format!("host={},port={IO_PORT}", self.hosts.data_ip(i)));
        }
        if n.gateway {
            a.push("-g".into());
        }
        a.extend(self.opts.extra.iter().cloned());
        a
    }

    /// Starts (or restarts) host `i`'s sheep with its original options.
    pub fn start_node(&mut self, i: usize) {
        self.kill(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("stderr.{i}")))
            .unwrap();
        let mut cmd = self.hosts.command(i, sheep_bin());
        die_with_parent(&mut cmd);
        let child = cmd
            .args(self.sheep_args(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sheep");
        self.nodes[i].child = Some(child);
    }

    /// SIGKILLs host `i`'s sheep (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether host `i`'s sheep process is running; reaps it if it exited.
    pub fn running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.nodes[i].child = None;
                false
            }
            None => false,
        }
    }

    /// Exit status of host `i`'s sheep if it has exited (and reaps it).
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let st = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        Some(st)
    }

    /// Whether something accepts connections on host `i`'s sheep port.
    pub fn accepts(&self, i: usize) -> bool {
        TcpStream::connect_timeout(&self.addr(i), Duration::from_millis(300)).is_ok()
    }

    /// Waits until host `i`'s sheep accepts connections.
    pub fn wait_up(&self, i: usize) {
        wait_until(30, &format!("sheep on host {i} accepting"), || {
            self.accepts(i)
        });
    }

    /// Indices of the hosts whose sheep process runs.
    pub fn alive(&mut self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.running(i)).collect()
    }

    /// Runs `dog args -a <ip> -p 7000` against host `i`.
    pub fn dog_at(&self, i: usize, args: &[&str]) -> Output {
        self.dog_stdin(i, args, &[])
    }

    /// Runs dog against host `i` feeding `input` on stdin.
    pub fn dog_stdin(&self, i: usize, args: &[&str], input: &[u8]) -> Output {
        let mut cmd = Command::new(dog_bin());
        cmd.args(args).args([
            "-a",
            &self.hosts.ip(i).to_string(),
            "-p",
            &SHEEP_PORT.to_string(),
        ]);
        crate::output_with_input(&mut cmd, input)
    }

    /// Runs dog against host `i`, asserts success, returns stdout.
    pub fn dog_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.dog_at(i, args);
        assert!(
            out.status.success(),
            "dog {args:?} at host {i} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dog node list -r` at host `i`: the advertised addresses
    /// (`ip:port`) in the view, or None if it cannot answer.
    pub fn view_at(&self, i: usize) -> Option<Vec<String>> {
        let out = self.dog_at(i, &["node", "list", "-r"]);
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .collect(),
        )
    }

    /// Waits until every running sheep shows `n` nodes in its view.
    pub fn wait_nodes(&mut self, n: usize) {
        let alive = self.alive();
        wait_until(60, &format!("every live sheep seeing {n} nodes"), || {
            alive
                .iter()
                .all(|&i| self.view_at(i).is_some_and(|v| v.len() == n))
        });
    }

    /// Waits until each of the sheep on `on` shows exactly `n` nodes.
    pub fn wait_view(&self, on: &[usize], n: usize, secs: u64) {
        wait_until(
            secs,
            &format!("sheep on hosts {on:?} seeing {n} nodes"),
            || {
                on.iter()
                    .all(|&i| self.view_at(i).is_some_and(|v| v.len() == n))
            },
        );
    }

    /// The newest epoch host `i` reports (`cluster info -r`), if any.
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

    /// Waits until every running sheep agrees on the epoch and none
    /// reports recovery in progress, twice in a row.
    pub fn wait_recovery(&mut self, secs: u64) {
        let alive = self.alive();
        let mut quiet = 0;
        wait_until(secs, "recovery to finish on every node", || {
            let epochs: Vec<Option<u32>> = alive.iter().map(|&i| self.epoch_at(i)).collect();
            let agreed = epochs[0].is_some() && epochs.windows(2).all(|w| w[0] == w[1]);
            let busy = alive.iter().any(|&i| {
                let out = self.dog_at(i, &["node", "recovery"]);
                !out.status.success() || String::from_utf8_lossy(&out.stdout).lines().count() != 2
            });
            quiet = if agreed && !busy { quiet + 1 } else { 0 };
            quiet >= 2
        });
    }

    /// Object file names (16 hex digits) in host `i`'s store.
    pub fn objects(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.nodes[i].dir.join("obj"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// For every object of VDI `vid` (data and inode) found in any store:
    /// the hosts holding a copy.
    pub fn copies_of_vdi(&self, vid: u32) -> BTreeMap<String, Vec<usize>> {
        let data = format!("00{vid:06x}");
        let inode = format!("80{vid:06x}");
        let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            for o in self.objects(i) {
                if o.starts_with(&data) || o.starts_with(&inode) {
                    m.entry(o).or_default().push(i);
                }
            }
        }
        m
    }

    /// Checks that every object of `vid` has exactly `copies` copies, on
    /// distinct zones; returns the problems found.
    pub fn redundancy_problems(&self, vid: u32, copies: usize) -> Vec<String> {
        let mut bad = Vec::new();
        for (o, holders) in self.copies_of_vdi(vid) {
            let mut zones: Vec<u32> = holders.iter().map(|&h| self.nodes[h].zone).collect();
            zones.sort();
            zones.dedup();
            if holders.len() != copies || zones.len() != copies {
                bad.push(format!("{o}: on hosts {holders:?} (zones {zones:?})"));
            }
        }
        bad
    }

    /// Store directories of every host (for `sdload check`).
    pub fn store_dirs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.dir.clone()).collect()
    }

    /// The last `lines` lines of host `i`'s sheep.log and stderr.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let mut s = String::new();
        for p in [
            self.nodes[i].dir.join("sheep.log"),
            self.root.path().join(format!("stderr.{i}")),
        ] {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            let v: Vec<&str> = t.lines().collect();
            s.push_str(&format!("--- {}\n", p.display()));
            for l in &v[v.len().saturating_sub(lines)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::env::var_os("SD_KEEP").is_some() {
            // Keep the stores and logs for diagnosis.
            let p = std::mem::replace(
                &mut self.root,
                tempfile::Builder::new()
                    .prefix("sdmh-empty")
                    .tempdir()
                    .unwrap(),
            );
            eprintln!("multi-host cluster files kept in {}", p.keep().display());
        } else if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("{}", self.log_tail(i, 20));
            }
            eprintln!("(SD_KEEP=1 keeps the stores, logs and journals of a run)");
        }
    }
}
