//! Listeners, connection handling and request dispatch (PROTOCOL.md §1, §4).
//!
//! A connection is read by one task that validates each header, reads the
//! payload (bounded by [`SD_MAX_DATA_LENGTH`]) and spawns the request; a
//! writer task sends responses in completion order. At most
//! [`MAX_INFLIGHT`] requests per connection run at once, which bounds the
//! memory one client can pin.

use crate::daemon::Sheep;
use sd_proto::*;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, Semaphore};

/// Requests one connection may have in flight.
const MAX_INFLIGHT: usize = 64;

pub type Reply = (SdRsp, Vec<u8>);

/// A response with no payload.
pub fn reply(req: &SdReq, res: SdRes) -> Reply {
    (SdRsp::for_req(req, res), Vec::new())
}

/// A successful response carrying `data`, clipped to what the client asked.
pub fn reply_data(req: &SdReq, mut data: Vec<u8>) -> Reply {
    data.truncate(req.data_length as usize);
    let mut rsp = SdRsp::for_req(req, SdRes::SUCCESS);
    rsp.data_length = data.len() as u32;
    (rsp, data)
}

type Listener = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Binds the TCP port and `<dir>/sock`; returns the accept loops.
pub async fn listen(sheep: &Arc<Sheep>, dir: &Path) -> anyhow::Result<Vec<Listener>> {
    let mut out: Vec<Listener> = Vec::new();
    let bind = sheep
        .opts
        .bind
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let tcp = TcpListener::bind((bind, sheep.opts.port)).await?;
    let s = sheep.clone();
    out.push(Box::pin(async move {
        loop {
            if let Ok((sock, _)) = tcp.accept().await {
                let _ = sock.set_nodelay(true);
                let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
                tokio::spawn(serve(s.clone(), sock, Some(fd)));
            }
        }
    }));
    if let Some((ip, port)) = sheep.opts.io_addr {
        let io = TcpListener::bind((ip, port)).await?;
        let s = sheep.clone();
        out.push(Box::pin(async move {
            loop {
                if let Ok((sock, _)) = io.accept().await {
                    let _ = sock.set_nodelay(true);
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
                    tokio::spawn(serve(s.clone(), sock, Some(fd)));
                }
            }
        }));
    }
    let sock_path = dir.join("sock");
    let _ = std::fs::remove_file(&sock_path);
    let unix = UnixListener::bind(&sock_path)?;
    let s = sheep.clone();
    out.push(Box::pin(async move {
        loop {
            if let Ok((sock, _)) = unix.accept().await {
                tokio::spawn(serve(s.clone(), sock, None));
            }
        }
    }));
    Ok(out)
}

/// Asks the kernel to acknowledge received data at once. A client that
/// writes a header and its payload separately without TCP_NODELAY (tgt)
/// otherwise waits for our delayed ACK before sending the payload.
fn quick_ack(fd: Option<std::os::fd::RawFd>) {
    if let Some(fd) = fd {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid int option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    sheep: Arc<Sheep>,
    sock: S,
    tcp_fd: Option<std::os::fd::RawFd>,
) {
    let (mut rd, mut wr) = tokio::io::split(sock);
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_INFLIGHT);
    let writer = {
        let sheep = sheep.clone();
        tokio::spawn(async move {
            while let Some((mut rsp, data)) = rx.recv().await {
                rsp.epoch = sheep.epoch();
                let mut buf = Vec::with_capacity(SD_HEADER_SIZE + data.len());
                buf.extend_from_slice(&rsp.encode());
                buf.extend_from_slice(&data);
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let mut hdr = [0u8; SD_HEADER_SIZE];
        if rd.read_exact(&mut hdr).await.is_err() {
            break;
        }
        let req = SdReq::decode(&hdr);
        if req.data_length > SD_MAX_DATA_LENGTH {
            // Never allocate what a client claims; skip its payload in
            // bounded chunks so the connection stays usable.
            if req.has_payload() && drain(&mut rd, req.data_length as u64).await.is_err() {
                break;
            }
            tracing::warn!(
                "refused request {:#x} with data_length {}",
                req.opcode,
                req.data_length
            );
            if tx.send(reply(&req, SdRes::INVALID_PARMS)).await.is_err() {
                break;
            }
            continue;
        }
        let mut payload = Vec::new();
        if req.has_payload() {
            quick_ack(tcp_fd);
            payload = vec![0u8; req.data_length as usize];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let sheep = sheep.clone();
        let tx = tx.clone();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let r = handle(&sheep, req, payload).await;
            let _ = tx.send(r).await;
            drop(permit);
        });
    }
    // The client is gone: its unanswered requests must not go on retrying
    // in the background, where an old write could land after newer ones
    // the client sent again on another connection.
    tasks.abort_all();
    drop(tx);
    let _ = writer.await;
}

async fn drain<R: AsyncRead + Unpin>(rd: &mut R, mut n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let k = (n as usize).min(buf.len());
        rd.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// How an opcode is executed (§4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    Gateway,
    Peer,
    Local { force: bool },
    Cluster { force: bool },
}

/// Why this node refuses non-force requests now, if it does. A node that
/// is waiting for a format or for members first applies every cluster
/// event already ordered (bounded to 5 s): a request sent right after
/// `cluster format` through another node must not fail only because this
/// node has not applied the format yet.
pub async fn refusal_after_catching_up(sheep: &Arc<Sheep>) -> Option<SdRes> {
    let r = sheep.view().status.refusal()?;
    if r == SdRes::SHUTDOWN {
        return Some(r);
    }
    sheep.catch_up().await;
    sheep.view().status.refusal()
}

/// The class of every implemented opcode; None = unknown or unimplemented.
pub fn class(opcode: u8) -> Option<Class> {
    use Class::*;
    Some(match opcode {
        op::CREATE_AND_WRITE_OBJ | op::READ_OBJ | op::WRITE_OBJ | op::REMOVE_OBJ => Gateway,
        op::CREATE_AND_WRITE_PEER | op::READ_PEER | op::WRITE_PEER | op::REMOVE_PEER => Peer,
        op::READ_VDIS | op::GET_CLUSTER_DEFAULT => Local { force: true },
        op::FLUSH_VDI | op::DISCARD_OBJ => Local { force: false },
        op::NEW_VDI
        | op::LOCK_VDI
        | op::RELEASE_VDI
        | op::GET_VDI_INFO
        | op::DEL_VDI
        | op::GET_VDI_ATTR => Cluster { force: false },
        op::GET_NODE_LIST
        | op::STAT_CLUSTER
        | op::GET_STORE_LIST
        | op::KILL_NODE
        | op::GET_VDI_COPIES
        | op::CLUSTER_INFO
        | op::READ_DEL_VDIS
        | op::GET_RECOVERY
        | op::SET_RECOVERY
        | op::GET_EPOCH
        | op::EXIST
        | op::OIDS_EXIST
        | op::GET_LOGLEVEL
        | op::WORKER_STATUS
        | op::SCRUB => Local { force: true },
        op::STAT_SHEEP
        | op::STAT_RECOVERY
        | op::GET_OBJ_LIST
        | op::GET_HASH
        | op::GET_DIGEST
        | op::FLUSH_DEL_CACHE => Local { force: false },
        op::MAKE_FS
        | op::SHUTDOWN
        | op::FORCE_RECOVER
        | op::COMPLETE_RECOVERY
        | op::NOTIFY_VDI_ADD
        | op::CLEANUP => Cluster { force: true },
        op::ENABLE_RECOVER
        | op::DISABLE_RECOVER
        | op::ALTER_CLUSTER_COPY
        | op::ALTER_VDI_COPY
        | op::REWEIGHT => Cluster { force: false },
        op::REPAIR_REPLICA | op::STAT | op::MD_INFO | op::MD_PLUG | op::MD_UNPLUG => {
            Local { force: false }
        }
        _ => return None,
    })
}

/// Request counters of this node (`struct sd_stat`, STAT / `dog node stat`).
#[derive(Default)]
pub struct Stats {
    counters: [std::sync::atomic::AtomicU64; 15],
}

// Indexes into `Stats::counters`, in `sd_stat` order.
const GWAY_ACTIVE: usize = 0;
const PEER_ACTIVE: usize = 1;
const GWAY_TOTAL: usize = 2;
const PEER_TOTAL: usize = 3;
const GWAY_RX: usize = 4;
const GWAY_TX: usize = 5;
const PEER_RX: usize = 6;
const PEER_TX: usize = 7;
const GWAY_REMOVE: usize = 8;
const GWAY_READ: usize = 9;
const GWAY_WRITE: usize = 10;
const PEER_REMOVE: usize = 12;
const PEER_READ: usize = 13;
const PEER_WRITE: usize = 14;

impl Stats {
    fn add(&self, i: usize, v: u64) {
        self.counters[i].fetch_add(v, std::sync::atomic::Ordering::Relaxed);
    }
    fn sub(&self, i: usize, v: u64) {
        self.counters[i].fetch_sub(v, std::sync::atomic::Ordering::Relaxed);
    }
    /// The 120-byte `sd_stat`.
    pub fn encode(&self) -> Vec<u8> {
        self.counters
            .iter()
            .flat_map(|c| c.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes())
            .collect()
    }
}

/// Validates and executes one request.
pub async fn handle(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    if class(req.opcode) != Some(Class::Gateway) {
        return execute(sheep, req, payload).await;
    }
    sheep
        .stats
        .count(
            false,
            req.opcode,
            payload.len(),
            execute(sheep, req, payload),
        )
        .await
}

impl Stats {
    /// Runs `fut` (a gateway or peer request) while counting it.
    pub async fn count(
        &self,
        peer: bool,
        opcode: u8,
        rx_len: usize,
        fut: impl std::future::Future<Output = Reply>,
    ) -> Reply {
        let (active, total, rx, tx, rd, wr, rm) = if peer {
            (
                PEER_ACTIVE,
                PEER_TOTAL,
                PEER_RX,
                PEER_TX,
                PEER_READ,
                PEER_WRITE,
                PEER_REMOVE,
            )
        } else {
            (
                GWAY_ACTIVE,
                GWAY_TOTAL,
                GWAY_RX,
                GWAY_TX,
                GWAY_READ,
                GWAY_WRITE,
                GWAY_REMOVE,
            )
        };
        let st = self;
        st.add(active, 1);
        st.add(total, 1);
        st.add(rx, rx_len as u64);
        st.add(
            match opcode {
                op::READ_OBJ | op::READ_PEER => rd,
                op::REMOVE_OBJ | op::REMOVE_PEER => rm,
                _ => wr,
            },
            1,
        );
        let r = fut.await;
        st.add(tx, r.1.len() as u64);
        st.sub(active, 1);
        r
    }
}

async fn execute(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    if req.opcode >= 0x80 {
        if req.proto_ver != SD_SHEEP_PROTO_VER {
            return reply(&req, SdRes::VER_MISMATCH);
        }
    } else if req.proto_ver > SD_PROTO_VER {
        return reply(&req, SdRes::VER_MISMATCH);
    }
    let Some(class) = class(req.opcode) else {
        return reply(&req, SdRes::INVALID_PARMS);
    };
    let force = matches!(
        class,
        Class::Local { force: true } | Class::Cluster { force: true }
    );
    if !force && !matches!(class, Class::Peer) {
        if let Some(r) = refusal_after_catching_up(sheep).await {
            return reply(&req, r);
        }
    }
    match class {
        Class::Gateway => crate::gateway::handle(sheep, req, payload).await,
        Class::Peer => crate::peer::handle(sheep, req, payload).await,
        Class::Local { .. } => crate::ops::local(sheep, req, payload).await,
        Class::Cluster { .. } => crate::ops::cluster(sheep, req, payload).await,
    }
}
