//! Listeners, connection handling and request dispatch (PROTOCOL.md §1, §4).
//!
//! A connection is served by one task that reads each request (its payload
//! bounded by [`SD_MAX_DATA_LENGTH`]), runs the requests concurrently
//! inside itself and queues each response for the socket as it completes. At most
//! [`MAX_INFLIGHT`] requests per connection run at once, which bounds the
//! memory one client can pin.

use crate::daemon::Sheep;
use sd_proto::*;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

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

/// What the reading half of a connection produced.
enum Incoming {
    /// A request with its payload.
    Request(SdReq, Vec<u8>),
    /// A request refused unread (its payload skipped): too long.
    Oversized(SdReq),
    /// The client is gone (or broke the stream).
    Closed,
}

/// What a connection reads at most in one go: a small write's header and
/// payload, and the next request's header, usually come in one `recv`.
const READ_BUFFER: usize = 64 << 10;

/// Reads the next request of a connection; gives the reader back with it,
/// so the read can live across the connection loop's turns (a read cut
/// off halfway would lose the stream's framing).
async fn read_request<R: AsyncRead + Unpin>(
    mut rd: BufReader<R>,
    tcp_fd: Option<std::os::fd::RawFd>,
) -> (BufReader<R>, Incoming) {
    let mut hdr = [0u8; SD_HEADER_SIZE];
    if rd.read_exact(&mut hdr).await.is_err() {
        return (rd, Incoming::Closed);
    }
    let req = SdReq::decode(&hdr);
    if req.data_length > SD_MAX_DATA_LENGTH {
        // Never allocate what a client claims; skip its payload in
        // bounded chunks so the connection stays usable.
        if req.has_payload() && drain(&mut rd, req.data_length as u64).await.is_err() {
            return (rd, Incoming::Closed);
        }
        return (rd, Incoming::Oversized(req));
    }
    let mut payload = Vec::new();
    if req.has_payload() {
        if rd.buffer().len() < req.data_length as usize {
            // Part of the payload is still to come.
            quick_ack(tcp_fd);
        }
        payload = vec![0u8; req.data_length as usize];
        if rd.read_exact(&mut payload).await.is_err() {
            return (rd, Incoming::Closed);
        }
    }
    (rd, Incoming::Request(req, payload))
}

type Running = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Answers waiting to be written beyond which a connection stops reading
/// new requests (a client that does not read its answers). Its running
/// requests still run to their end: a request must never stall half done
/// (a journaled write holds its blocks and the journal's checkpoint until
/// it is applied), so the answers of those (at most [`MAX_INFLIGHT`]) may
/// go past this.
const MAX_UNSENT: usize = 8 << 20;

/// Serves one connection in one task: its requests run inside it,
/// concurrently (up to [`MAX_INFLIGHT`]), and each answer is queued for
/// the socket as it completes. No request changes tasks or threads on its
/// way through here, and a client slow to read its answers does not stop
/// its other requests; past [`MAX_UNSENT`] bytes of answers it is sent no
/// more until it reads.
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    sheep: Arc<Sheep>,
    sock: S,
    tcp_fd: Option<std::os::fd::RawFd>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let (rd, mut wr) = tokio::io::split(sock);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut reading = Box::pin(read_request(
        BufReader::with_capacity(READ_BUFFER, rd),
        tcp_fd,
    ));
    // Encoded answers not yet written, and how much of them was.
    let mut unsent: Vec<u8> = Vec::new();
    let mut sent = 0;
    loop {
        tokio::select! {
            biased;
            w = wr.write(&unsent[sent..]), if sent < unsent.len() => match w {
                Ok(n) if n > 0 => {
                    sent += n;
                    if sent == unsent.len() {
                        unsent.clear();
                        sent = 0;
                    }
                }
                _ => break,
            },
            Some((mut rsp, data)) = running.next(), if !running.is_empty() => {
                rsp.epoch = sheep.epoch();
                unsent.extend_from_slice(&rsp.encode());
                unsent.extend_from_slice(&data);
            }
            (rd, incoming) = &mut reading, if running.len() < MAX_INFLIGHT && unsent.len() < MAX_UNSENT => {
                match incoming {
                    Incoming::Request(req, payload) => {
                        let sheep = sheep.clone();
                        running.push(Box::pin(async move { handle(&sheep, req, payload).await }));
                    }
                    Incoming::Oversized(req) => {
                        tracing::warn!(
                            "refused request {:#x} with data_length {}",
                            req.opcode,
                            req.data_length
                        );
                        running.push(Box::pin(std::future::ready(reply(&req, SdRes::INVALID_PARMS))));
                    }
                    Incoming::Closed => break,
                }
                reading = Box::pin(read_request(rd, tcp_fd));
            }
        }
    }
    // The client is gone: its unanswered requests are dropped with this
    // task, so none retries in the background, where an old write could
    // land after newer ones the client sent again on another connection
    // (a store call already under way finishes, holding its locks).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Harness;
    use sd_store::{ObjKey, ObjectStore};
    use tokio::io::AsyncWriteExt;

    const OID: u64 = 0x00ab_cd00_0000_0005;

    const OTHER: u64 = 0x00ab_cd00_0000_0006;

    fn obj_req(opcode: u8, oid: u64, len: usize) -> SdReq {
        let mut r = SdReq::new(opcode);
        r.data_length = len as u32;
        if opcode == op::WRITE_OBJ {
            r.flags = flag::CMD_WRITE;
        }
        r.set_obj(ObjArgs {
            oid,
            ..Default::default()
        });
        r
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_still_has_its_running_requests_finished() {
        // A gateway whose 2 copies are on two fake nodes; one of them
        // holds the write back.
        let h = Harness::new(2, 2, true).await;
        let size = 4 << 20;
        for oid in [OID, OTHER] {
            crate::gateway::create(&h.sheep, oid, 0, vec![1u8; size], 0)
                .await
                .unwrap();
        }
        let gate = h.peer(1).hold_writes();
        let (mut client, conn) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(serve(h.sheep.clone(), conn, None));
        // A write, then reads whose answers (8 MiB and their headers) the
        // client never takes: more than the connection queues.
        let mut sent = obj_req(op::WRITE_OBJ, OID, 4096).encode().to_vec();
        sent.extend_from_slice(&[2u8; 4096]);
        for _ in 0..2 {
            sent.extend_from_slice(&obj_req(op::READ_OBJ, OTHER, size).encode());
        }
        client.write_all(&sent).await.unwrap();
        let reads_done = || {
            (1..=2)
                .flat_map(|i| h.peer(i).calls())
                .filter(|r| r.opcode == op::READ_PEER)
                .count()
        };
        while reads_done() < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        // The write, held until now, still completes on both copies.
        gate.notify_one();
        let key = ObjKey::replica(OID);
        for _ in 0..100_000 {
            if h.peer(1).store.read(&key, 0, 1).unwrap() == [2u8] {
                break;
            }
            tokio::task::yield_now().await;
        }
        for i in 1..=2 {
            let held = h.peer(i).store.read(&key, 0, 4096).unwrap();
            assert!(held == [2u8; 4096], "node {i} holds the write");
        }
        drop(client);
        served.await.unwrap();
    }
}
