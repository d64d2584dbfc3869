//! An NBD server (fixed newstyle) for serving Sheepdog VDIs to unmodified
//! clients: `qemu-img`, `qemu-io`, QEMU's block layer, `nbdcopy`,
//! `nbdinfo`, fio's nbd engine.
//!
//! Written from the protocol document (`doc/proto.md` of
//! NetworkBlockDevice/nbd). What is implemented:
//!
//! * handshake: `NBD_OPT_GO`/`INFO` (`NBD_INFO_EXPORT`, `BLOCK_SIZE`,
//!   `NAME`, `DESCRIPTION`), `LIST`, `ABORT`, `EXPORT_NAME`,
//!   `STRUCTURED_REPLY`, `LIST_META_CONTEXT`/`SET_META_CONTEXT` with
//!   `base:allocation`; everything else gets `NBD_REP_ERR_UNSUP`;
//! * transmission: READ, WRITE (+FUA), FLUSH, TRIM, WRITE_ZEROES (+NO_HOLE,
//!   FAST_ZERO), BLOCK_STATUS, DISC, with simple or structured replies,
//!   pipelined: requests run concurrently and replies leave in completion
//!   order.
//!
//! The daemon plugs in its storage through [`Exports`] and [`Export`];
//! [`mem`] holds an in-memory implementation used by the tests.
//!
//! Layout: [`proto`] is the pure wire format (fuzzed); `handshake` and
//! `transmission` are the two protocol phases; this file wires them to
//! sockets.

mod error;
mod export;
mod handshake;
pub mod mem;
pub mod proto;
mod transmission;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::{TcpListener, ToSocketAddrs};
use tracing::Instrument;

pub use error::{Errno, Error, NbdError};
pub use export::{BlockSize, BoxFuture, Export, Exports, Extent, IoResult, ZeroFlags};
pub use handshake::{OPTION_DATA_MAX, OPTION_DRAIN_MAX};

/// Per-connection limits. The defaults bound one connection to about
/// 64 MiB of buffered payload; a client that wants more in flight simply
/// waits (the server stops reading its socket).
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests being processed at once on one connection.
    pub max_in_flight: usize,
    /// READ/WRITE payload bytes buffered at once on one connection. Never
    /// less than one maximum payload (32 MiB), whatever is configured.
    pub max_in_flight_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight: 64,
            max_in_flight_bytes: 64 << 20,
        }
    }
}

/// Serves one client connection with default limits; see [`serve_with`].
pub async fn serve<S, E>(stream: S, exports: Arc<E>) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: Exports + ?Sized,
{
    serve_with(stream, exports, &Config::default()).await
}

/// Serves one client connection: handshake, then transmission until the
/// client disconnects. Returns `Ok(())` when the client leaves cleanly,
/// and only after every request it sent has been answered (or its reply
/// could not be delivered), so the export is idle afterwards.
///
/// Must run inside a tokio runtime: requests are spawned as tasks.
pub async fn serve_with<S, E>(stream: S, exports: Arc<E>, config: &Config) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: Exports + ?Sized,
{
    let (r, w) = tokio::io::split(stream);
    let mut r = BufReader::with_capacity(64 << 10, r);
    let mut w = BufWriter::with_capacity(64 << 10, w);
    match handshake::negotiate(&mut r, &mut w, exports.as_ref()).await? {
        None => Ok(()),
        Some(n) => transmission::run(r, w, n, config).await,
    }
}

/// Binds `addr` and serves every connection with default limits; see
/// [`serve_listener`].
pub async fn listen<A, E>(addr: A, exports: Arc<E>) -> std::io::Result<()>
where
    A: ToSocketAddrs,
    E: Exports + ?Sized,
{
    serve_listener(TcpListener::bind(addr).await?, exports, Config::default()).await
}

/// Accepts connections forever, one task per connection (`TCP_NODELAY`
/// set, as the spec recommends). Transient accept errors such as running
/// out of file descriptors are logged and retried after a pause rather
/// than ending the server. Dropping the future stops accepting; running
/// connections continue until their clients leave.
pub async fn serve_listener<E>(
    listener: TcpListener,
    exports: Arc<E>,
    config: Config,
) -> std::io::Result<()>
where
    E: Exports + ?Sized,
{
    let config = Arc::new(config);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "NBD accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let exports = exports.clone();
        let config = config.clone();
        tokio::spawn(
            async move { log_end(peer, serve_with(sock, exports, &config).await) }
                .instrument(tracing::info_span!("nbd", %peer)),
        );
    }
}

fn log_end(peer: SocketAddr, r: Result<(), Error>) {
    match r {
        Ok(()) => tracing::debug!(%peer, "NBD client left"),
        Err(e) => tracing::info!(%peer, error = %e, "NBD connection ended"),
    }
}
