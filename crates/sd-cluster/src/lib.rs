//! Cluster drivers: membership and a totally ordered event stream that is
//! identical on every member (PROTOCOL.md §10).
//!
//! A driver only transports events; it does not decide anything. Join
//! acceptance, epochs and cluster status are computed by the daemon from the
//! ordered stream, the same way on every node, so all members agree without
//! a master.
//!
//! Two drivers exist: [`LocalDriver`] (several sheep on one machine, no
//! external service) and [`ZkDriver`] (a real ZooKeeper ensemble). The
//! daemon holds a [`Driver`], chosen by the `-c` option through
//! [`Driver::from_option`].

pub mod event;
pub mod local;
#[cfg(feature = "memory")]
pub mod memory;
pub mod zookeeper;

pub use event::*;
pub use local::LocalDriver;
pub use zookeeper::{ZkDriver, ZkOptions};

use sd_proto::SdNode;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster driver I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid cluster driver option: {0}")]
    Option(String),
    /// The driver is not joined, or has left.
    #[error("cluster driver stopped")]
    Stopped,
    /// The ZooKeeper session expired (or was lost for longer than the
    /// session timeout): the rest of the cluster considers this node gone.
    #[error("cluster driver session expired")]
    SessionExpired,
    #[error("zookeeper: {0}")]
    Zookeeper(zookeeper_client::Error),
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// The accepted `-c` syntax, quoted in option errors.
pub const DRIVER_SYNTAX: &str =
    "local[:path] or zookeeper:host:port[,host:port...][/cluster_id][,timeout=ms]";

/// Wall-clock seconds, the `time` of an appended event.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The cluster driver a daemon runs on.
///
/// An enum rather than a trait object: the driver set is closed (the spec
/// knows `local` and `zookeeper`), the methods are `async` (a `dyn` trait
/// would need boxed futures on every call), and `join` takes
/// `self: &Arc<Self>`, which a trait object cannot express without more
/// boxing. Every method delegates to the driver with the same semantics
/// (see [`LocalDriver`] and [`ZkDriver`]). Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub enum Driver {
    Local(Arc<LocalDriver>),
    Zookeeper(Arc<ZkDriver>),
    /// Members in one process (simulation only).
    #[cfg(feature = "memory")]
    Memory(Arc<memory::MemoryDriver>),
}

/// Holds the cluster-wide exclusive section ([`Driver::block`]) until
/// dropped; also released if the holder dies.
pub enum BlockGuard {
    Local(local::BlockGuard),
    Zookeeper(zookeeper::ZkBlockGuard),
    #[cfg(feature = "memory")]
    Memory(memory::MemoryBlockGuard),
}

impl Driver {
    /// Builds a driver from the `-c` argument: `local`, `local:<path>`, or
    /// `zookeeper:host:port[,host:port...][/cluster_id][,timeout=ms]`.
    /// Does not contact ZooKeeper yet (that happens in [`Driver::join`]).
    pub fn from_option(s: &str) -> Result<Driver> {
        let (name, rest) = s.split_once(':').unwrap_or((s, ""));
        match name {
            "local" => Ok(Driver::Local(Arc::new(LocalDriver::new(rest)?))),
            "zookeeper" => Ok(Driver::Zookeeper(Arc::new(ZkDriver::new(
                ZkOptions::parse(rest)?,
            )))),
            _ => Err(ClusterError::Option(format!(
                "unknown cluster driver '{s}' (expected {DRIVER_SYNTAX})"
            ))),
        }
    }

    /// The driver's name as in `-c` (`local`, `zookeeper`).
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Local(_) => "local",
            Driver::Zookeeper(_) => "zookeeper",
            #[cfg(feature = "memory")]
            Driver::Memory(_) => "memory",
        }
    }

    /// The address a node should advertise when `-y` is not given: the
    /// local driver is single-host (127.0.0.1); for ZooKeeper it is the
    /// local address this host uses to reach the first ensemble member, so
    /// the advertised address is one the other hosts can route to.
    pub fn local_addr(&self) -> std::io::Result<IpAddr> {
        match self {
            Driver::Local(_) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Driver::Zookeeper(d) => d.local_addr(),
            #[cfg(feature = "memory")]
            Driver::Memory(_) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }
    }

    /// Joins the cluster and returns the ordered stream from its beginning
    /// (history replay, then our own JOIN, then everything after).
    ///
    /// The channel closes when the driver stops: after [`Driver::leave`],
    /// or — ZooKeeper only — when the session expired or was unreachable for
    /// a whole session timeout. A close that the daemon did not cause by
    /// `leave` means its view is stale and the cluster has dropped it: the
    /// daemon must stop serving (exit non-zero; a restart rejoins as a new
    /// incarnation).
    pub async fn join(
        &self,
        node: SdNode,
        opaque: Vec<u8>,
    ) -> Result<mpsc::UnboundedReceiver<Delivered>> {
        match self {
            Driver::Local(d) => d.join(node, opaque).await,
            Driver::Zookeeper(d) => d.join(node, opaque).await,
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.join(node, opaque).await,
        }
    }

    /// Broadcasts `msg` in total order; returns its stream position.
    pub async fn notify(&self, msg: Vec<u8>) -> Result<u64> {
        match self {
            Driver::Local(d) => d.notify(msg).await,
            Driver::Zookeeper(d) => d.notify(msg).await,
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.notify(msg).await,
        }
    }

    /// Broadcasts a changed node record; returns its stream position.
    pub async fn update_node(&self, node: SdNode) -> Result<u64> {
        match self {
            Driver::Local(d) => d.update_node(node).await,
            Driver::Zookeeper(d) => d.update_node(node).await,
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.update_node(node).await,
        }
    }

    /// Enters the cluster-wide exclusive section (released when the guard
    /// drops or the holder dies).
    pub async fn block(&self) -> Result<BlockGuard> {
        match self {
            Driver::Local(d) => d.block().await.map(BlockGuard::Local),
            Driver::Zookeeper(d) => d.block().await.map(BlockGuard::Zookeeper),
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.block().await.map(BlockGuard::Memory),
        }
    }

    /// A stream position such that once this member has applied events up
    /// to it, it has seen everything appended before the call.
    pub async fn stream_end(&self) -> Result<u64> {
        match self {
            Driver::Local(d) => d.stream_end().await,
            Driver::Zookeeper(d) => d.stream_end().await,
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.stream_end().await,
        }
    }

    /// Leaves cleanly: appends our LEAVE and stops the stream.
    pub async fn leave(&self) -> Result<()> {
        match self {
            Driver::Local(d) => d.leave().await,
            Driver::Zookeeper(d) => d.leave().await,
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.leave().await,
        }
    }

    /// Whether this member may trust its view to be current (see
    /// [`ZkDriver::contact`]); the local driver never loses contact.
    pub fn contact(&self) -> watch::Receiver<bool> {
        match self {
            Driver::Local(_) => watch::channel(true).1,
            Driver::Zookeeper(d) => d.contact(),
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.contact(),
        }
    }

    /// Our incarnation id (unique per join), once joined.
    pub fn incarnation(&self) -> Option<u64> {
        match self {
            Driver::Local(d) => d.incarnation(),
            Driver::Zookeeper(d) => d.incarnation(),
            #[cfg(feature = "memory")]
            Driver::Memory(d) => d.incarnation(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_option_picks_the_driver() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm");
        let drv = Driver::from_option(&format!("local:{}", p.display())).unwrap();
        assert_eq!(drv.name(), "local");
        assert_eq!(drv.local_addr().unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let drv = Driver::from_option("zookeeper:127.0.0.1:2181/c1,timeout=500").unwrap();
        assert_eq!(drv.name(), "zookeeper");
        // The route to a loopback ensemble starts at loopback.
        assert_eq!(drv.local_addr().unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(drv.incarnation().is_none());
    }

    #[test]
    fn from_option_rejects_unknown_drivers() {
        for bad in ["", "corosync", "zk:1.2.3.4:2181", "localx", "zookeeper"] {
            let Err(ClusterError::Option(msg)) = Driver::from_option(bad) else {
                panic!("'{bad}' accepted");
            };
            assert!(msg.contains("zookeeper:host:port"), "{bad}: {msg}");
        }
    }
}
