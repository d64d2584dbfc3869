//! A real, standalone ZooKeeper server for tests, in a temporary directory.
//!
//! It runs Debian's packaged ZooKeeper (`apt-get install zookeeper`, which
//! pulls in `libzookeeper-java`) on the system Java:
//!
//! ```text
//! java -Xmx64m -cp <dir>/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
//!     org.apache.zookeeper.server.quorum.QuorumPeerMain <dir>/conf/zoo.cfg
//! ```
//!
//! `zookeeper.jar`'s manifest `Class-Path` names the rest (jute, netty,
//! slf4j-api, jetty, ...); `slf4j-simple` only makes the server log to
//! `<dir>/zookeeper.log`. A small `sh` watchdog runs java and kills it when
//! the test process goes away. `SD_ZK_CLASSPATH` overrides the jar list for
//! other installations. The server listens on 127.0.0.1 (or the address
//! given to [`ZkServer::start_on`]) on a free port, ticks every 200 ms (so sessions of 400 ms .. 60 s are allowed) and keeps
//! its data across [`ZkServer::restart`].

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The jars after the config directory on the class path.
pub const ZK_JARS: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";
/// Server tick; the session timeout range is 2..300 ticks.
pub const TICK_MS: u32 = 200;

/// Runs `java "$@"` and SIGKILLs it when stdin reaches end of file: when
/// [`ZkServer::stop`] closes the pipe, or when the test process dies
/// without running destructors (a timeout, a SIGKILL), so no server is left
/// behind. Exits when java does.
const WATCHDOG: &str = "exec 3<&0
\"$@\" </dev/null 3<&- &
j=$!
{ read _ <&3; kill -9 $j; } &
w=$!
wait $j
kill $w 2>/dev/null
wait $w 2>/dev/null
exit 0";

/// A running standalone ZooKeeper, killed and removed on drop.
pub struct ZkServer {
    dir: tempfile::TempDir,
    ip: IpAddr,
    port: u16,
    child: Option<Child>,
}

fn jars() -> String {
    std::env::var("SD_ZK_CLASSPATH").unwrap_or_else(|_| ZK_JARS.to_string())
}

impl ZkServer {
    /// Starts a server, or says why it cannot (ZooKeeper or Java missing,
    /// or the server did not come up).
    pub fn try_start() -> Result<ZkServer, String> {
        Self::try_start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`ZkServer::try_start`], listening on `ip` (e.g. the bridge
    /// address of [`crate::netns::Hosts`], so sheep in other network
    /// namespaces reach it).
    pub fn try_start_on(ip: IpAddr) -> Result<ZkServer, String> {
        let cp = jars();
        if let Some(missing) = cp.split(':').find(|j| !Path::new(j).exists()) {
            return Err(format!(
                "{missing} not found (apt-get install zookeeper, or set SD_ZK_CLASSPATH)"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("sdzk")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // Not an ephemeral port: a restart on it must find it free.
        let port = crate::free_ports(1, crate::PORTS);
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).map_err(|e| e.to_string())?;
        let cfg = format!(
            "tickTime={TICK_MS}\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress={ip}\n\
             minSessionTimeout={min}\n\
             maxSessionTimeout=60000\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,cons\n\
             forceSync=no\n\
             snapshot.trust.empty=true\n",
            data = dir.path().join("data").display(),
            min = 2 * TICK_MS,
        );
        std::fs::write(conf.join("zoo.cfg"), cfg).map_err(|e| e.to_string())?;
        let mut s = ZkServer {
            dir,
            ip,
            port,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts a server; panics if it cannot.
    pub fn start() -> ZkServer {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start ZooKeeper: {e}"))
    }

    /// Starts a server listening on `ip`; panics if it cannot.
    pub fn start_on(ip: IpAddr) -> ZkServer {
        Self::try_start_on(ip).unwrap_or_else(|e| panic!("cannot start ZooKeeper: {e}"))
    }

    /// `<ip>:<port>` (`127.0.0.1:<port>` by default), for a `zookeeper:`
    /// option.
    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// The address the server listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the server process is running (not [`ZkServer::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts a stopped server again on the same address and port with
    /// the same data; does nothing if it is running. Panics if it does not
    /// come up.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn()
                .unwrap_or_else(|e| panic!("cannot start ZooKeeper again: {e}"));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// Kills the server (SIGKILL: a crash; the data directory stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing the pipe makes the watchdog SIGKILL java and exit.
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }

    /// Stops the server if running and starts it again on the same port
    /// with the same data; panics if it does not come back.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|e| panic!("cannot restart ZooKeeper: {e}"));
    }

    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let child = Command::new("sh")
            .args(["-c", WATCHDOG, "sh", "java"])
            .args(["-Xmx64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-cp")
            .arg(format!("{}:{}", conf.display(), jars()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(conf.join("zoo.cfg"))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the server answers `ruok` with `imok`.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ruok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                self.stop();
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "ZooKeeper did not come up on port {}:\n{}",
                    self.port,
                    tail.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ruok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.ip, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        s.write_all(b"ruok").is_ok() && s.read_to_string(&mut out).is_ok() && out == "imok"
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
    }
}
