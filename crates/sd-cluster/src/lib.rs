//! Cluster drivers: membership and a totally ordered event stream that is
//! identical on every member (PROTOCOL.md §10).
//!
//! A driver only transports events; it does not decide anything. Join
//! acceptance, epochs and cluster status are computed by the daemon from the
//! ordered stream, the same way on every node, so all members agree without
//! a master.

pub mod event;
pub mod local;

pub use event::*;
pub use local::LocalDriver;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster driver I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid cluster driver option: {0}")]
    Option(String),
    #[error("cluster driver stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, ClusterError>;
