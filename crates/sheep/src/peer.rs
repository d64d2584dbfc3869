//! Peer operations: requests executed against this node's own store, and
//! the connection pool used to send them to other nodes.

use crate::daemon::Sheep;
use crate::server::{reply, reply_data, Reply};
use crossbeam_queue::ArrayQueue;
use futures::future::BoxFuture;
use sd_client::{Connection, Endpoint};
use sd_proto::*;
use sd_store::ObjKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How requests reach other sheep: the object service sends through this,
/// so component tests can put fake peers (that time out, answer
/// OLD_NODE_VER or return wrong data) in place of real ones.
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends one request to the sheep at `addr`; transport failures read as
    /// NETWORK_ERROR.
    fn exec<'a>(
        &'a self,
        addr: SocketAddr,
        req: &'a SdReq,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Reply>;
}

/// Idle connections to other sheep, reused across requests. A connection
/// carries one request at a time; concurrency opens more connections.
///
/// No lock is shared between requests: the map of peers is replaced
/// whole (copy on write) when a new peer is first contacted, and each
/// peer's idle connections sit in a lock-free queue.
#[derive(Default)]
pub struct PeerPool {
    peers: arc_swap::ArcSwap<HashMap<SocketAddr, Arc<ArrayQueue<Connection>>>>,
}

/// Idle connections kept per peer.
const MAX_IDLE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl PeerPool {
    fn idle(&self, addr: SocketAddr) -> Arc<ArrayQueue<Connection>> {
        if let Some(q) = self.peers.load().get(&addr) {
            return q.clone();
        }
        self.peers.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(addr)
                .or_insert_with(|| Arc::new(ArrayQueue::new(MAX_IDLE)));
            m
        });
        self.peers.load()[&addr].clone()
    }

    async fn exec_now(&self, addr: SocketAddr, req: &SdReq, payload: &[u8]) -> Reply {
        let idle = self.idle(addr);
        let mut conn = match idle.pop() {
            Some(c) => c,
            None => match tokio::time::timeout(
                CONNECT_TIMEOUT,
                Connection::connect(&Endpoint::Tcp(addr)),
            )
            .await
            {
                Ok(Ok(c)) => c,
                _ => return reply(req, SdRes::NETWORK_ERROR),
            },
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, conn.exec(req, payload)).await {
            Ok(Ok(r)) => {
                // A full queue drops the connection.
                let _ = idle.push(conn);
                r
            }
            _ => reply(req, SdRes::NETWORK_ERROR),
        }
    }
}

impl PeerTransport for PeerPool {
    fn exec<'a>(
        &'a self,
        addr: SocketAddr,
        req: &'a SdReq,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Reply> {
        Box::pin(self.exec_now(addr, req, payload))
    }
}

/// Executes a peer request on the local store.
pub async fn handle(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let len = payload.len();
    sheep
        .stats
        .count(true, req.opcode, len, execute(sheep, req, payload))
        .await
}

/// Per-object ordering of what changes an object on this node.
///
/// Writes (and recovery storing what it fetched) hold their object's
/// stripe shared and check the epoch while holding it. A recovery read
/// (another node copying the object for a newer epoch) holds it
/// exclusively: once it has been served, no write of an older epoch can
/// still land here; it either finished before the copy was taken or is
/// refused (OLD_NODE_VER) and retried by its gateway against the new
/// placement. The marking of a new epoch holds every stripe exclusively
/// while it retires the copies the new placement no longer wants, so no
/// copy decided under an older placement lands after that. Requests on
/// objects of different stripes never share a lock.
pub struct ObjLocks {
    stripes: Vec<Arc<tokio::sync::RwLock<()>>>,
}

impl Default for ObjLocks {
    fn default() -> Self {
        ObjLocks {
            stripes: (0..1024).map(|_| Arc::default()).collect(),
        }
    }
}

impl ObjLocks {
    pub fn stripe(&self, oid: u64) -> Arc<tokio::sync::RwLock<()>> {
        self.stripes[(sd_hash_oid(oid) % self.stripes.len() as u64) as usize].clone()
    }

    /// Every stripe, exclusively (taken in one order, so two such callers
    /// cannot deadlock; requests hold one stripe at a time).
    pub async fn all_exclusive(&self) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let mut all = Vec::with_capacity(self.stripes.len());
        for s in &self.stripes {
            all.push(s.write().await);
        }
        all
    }
}

/// A lock guard that lives as long as the store operation it protects.
type Held = Option<Box<dyn Send>>;

async fn execute(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let o = req.obj();
    let recovery_read = req.opcode == op::READ_PEER && req.flags & flag::CMD_RECOVERY != 0;
    if !recovery_read && o.oid != 0 {
        sheep.recovery.client_io(sheep.clock.now());
    }
    let mutating = matches!(
        req.opcode,
        op::WRITE_PEER | op::CREATE_AND_WRITE_PEER | op::REMOVE_PEER
    );
    // Epoch rule (§1.7): newer requests wait for this node to catch up,
    // older ones are refused (here, and again under the object's lock).
    if o.oid != 0 && !sheep.reach_epoch(req.epoch).await {
        return reply(&req, SdRes::NEW_NODE_VER);
    }
    if stale(sheep, &req) {
        return reply(&req, SdRes::OLD_NODE_VER);
    }

    // Object I/O only once this node runs the cluster at this epoch: a
    // node that has the epoch's number but has not applied the cluster's
    // resumption yet has not retired what it missed, so nothing it holds
    // may be served or changed. NEW_NODE_VER: its sender retries (a
    // gateway) or waits for this node (recovery).
    if o.oid != 0
        && crate::server::refusal_after_catching_up(sheep)
            .await
            .is_some()
    {
        return reply(&req, SdRes::NEW_NODE_VER);
    }
    if sheep.opts.gateway {
        return reply(&req, SdRes::NO_OBJ);
    }
    let key = sheep.obj_key(o.oid, o.copy_policy, o.ec_index);
    if req.opcode == op::CREATE_AND_WRITE_PEER
        && !is_vdi_obj(o.oid)
        && !sheep.knows_vdi(oid_to_vid(o.oid))
    {
        // The object's size comes from its VDI: a VDI created a moment ago
        // may not be applied here yet, so catch up with the stream first.
        sheep.catch_up().await;
    }
    match req.opcode {
        // A create or remove replaces whatever recovery would bring back.
        op::CREATE_AND_WRITE_PEER | op::REMOVE_PEER => sheep.recovery.claim(sheep, o.oid).await,
        // An object this node should hold but has not recovered yet is
        // recovered first, so no request ever sees a hole.
        _ if !recovery_read => sheep.recovery.ensure(sheep, o.oid).await,
        _ => {}
    }
    let payload = Arc::new(payload);
    let mut res = store_op(sheep, &req, key, &payload, mutating, recovery_read).await;
    if let Some(Ok(Err(sd_store::StoreError::Checksum { blocks, .. }))) = &res {
        crate::repair::found(sheep, &key, blocks);
        if mutating {
            // A write that keeps part of a rotten block: the block is
            // repaired first, so the client's write never fails for it.
            crate::repair::repair(sheep, key).await;
            res = store_op(sheep, &req, key, &payload, mutating, recovery_read).await;
        } else {
            // The reader is answered at once (its gateway reads another
            // copy); the copy is repaired meanwhile.
            crate::repair::spawn(sheep, key);
        }
    }
    let write_missed =
        req.opcode == op::WRITE_PEER && matches!(&res, Some(Ok(Err(sd_store::StoreError::NoObj))));
    if write_missed {
        // On a node with several disks, a copy it should hold may have
        // gone with a disk before the disk is seen failing (its files
        // vanish first when it is wiped).
        let lost_here = !sheep.opts.disks.is_empty()
            && sheep
                .key_in(&sheep.view().ring, o.oid)
                .is_some_and(|(_, k)| k == key);
        let disks_changed = sheep.note_lost_disks()
            || sheep.store.disk_generation()
                != sheep
                    .disks_recovered
                    .load(std::sync::atomic::Ordering::SeqCst);
        let busy = sheep.recovery.busy();
        if disks_changed || busy || lost_here {
            // A copy this node lost and recovers (or is about to): the
            // sender retries once the pass knows what is missing here
            // (`ensure` then brings it back first).
            if !busy {
                sheep.recover_again();
            }
            return reply(&req, SdRes::NETWORK_ERROR);
        }
    }
    match res {
        None => reply(&req, SdRes::OLD_NODE_VER),
        Some(Ok(Ok(data))) if recovery_read => recovery_reply(&req, data),
        Some(Ok(Ok(data))) if req.opcode == op::READ_PEER => reply_data(&req, data),
        Some(Ok(Ok(_))) => reply(&req, SdRes::SUCCESS),
        Some(Ok(Err(e))) => {
            if !matches!(
                e,
                sd_store::StoreError::NoObj | sd_store::StoreError::Checksum { .. }
            ) {
                tracing::error!("peer op {:#x} on {:016x}: {e}", req.opcode, o.oid);
            }
            if sheep.disk_failed(&e) {
                return reply(&req, SdRes::NETWORK_ERROR);
            }
            reply(&req, e.res())
        }
        Some(Err(_)) => reply(&req, SdRes::EIO),
    }
}

/// The reply to a recovery read: the copy, with its CRC32C for the
/// receiver to check before it stores it.
pub fn recovery_reply(req: &SdReq, data: Vec<u8>) -> Reply {
    let mut r = reply_data(req, data);
    r.0.data_length = r.1.len() as u32;
    r.0.set_payload_crc(crc32c::crc32c(&r.1));
    r
}

/// Whether an object request is of an epoch older than this node's (and
/// not a recovery read, which names its epoch on purpose).
fn stale(sheep: &Sheep, req: &SdReq) -> bool {
    req.obj().oid != 0
        && (req.epoch.wrapping_sub(sheep.epoch()) as i32) < 0
        && req.flags & flag::CMD_RECOVERY == 0
}

/// Runs the store half of a peer request under its object's stripe; None
/// if the request turned out to be of an older epoch once it held it.
async fn store_op(
    sheep: &Arc<Sheep>,
    req: &SdReq,
    key: ObjKey,
    payload: &Arc<Vec<u8>>,
    mutating: bool,
    recovery_read: bool,
) -> Option<Result<Result<Vec<u8>, sd_store::StoreError>, tokio::task::JoinError>> {
    let o = req.obj();
    // Taken after any recovery of this object (which may wait on other
    // nodes), so no lock is held across the network. The guards move into
    // the store operation: a request whose task is aborted (its sender
    // gone) must not release them while its write still runs.
    let stripe = sheep.obj_locks.stripe(o.oid);
    let object: Held = if mutating {
        Some(Box::new(stripe.read_owned().await))
    } else if recovery_read {
        Some(Box::new(stripe.write_owned().await))
    } else {
        None
    };
    if stale(sheep, req) {
        return None;
    }
    if req.opcode == op::READ_PEER && !recovery_read {
        // From the page cache, on this thread: no blocking-pool round trip.
        let (off, len) = (o.offset as u64, req.data_length as usize);
        if let Some(data) = sheep.store.read_cached(&key, off, len) {
            return Some(Ok(Ok(data)));
        }
    }
    if req.opcode == op::WRITE_PEER {
        // A small journaled write, on this thread: only its journal batch's
        // sync is waited for, without a blocking-pool round trip.
        if let Some(r) = sheep.store.write_nowait(&key, o.offset as u64, payload) {
            let r = match r {
                Ok(w) => w.finish().await,
                Err(e) => Err(e),
            };
            drop(object);
            return Some(Ok(r.map(|()| Vec::new())));
        }
    }
    let s = sheep.clone();
    let (req, payload) = (*req, payload.clone());
    Some(
        sheep
            .on_store(move || -> Result<Vec<u8>, sd_store::StoreError> {
                let _held = object;
                let st = &*s.store;
                match req.opcode {
                    op::READ_PEER if recovery_read => {
                        use crate::recovery::{recovery_source, Source};
                        match recovery_source(st, &key, req.flags, o.tgt_epoch) {
                            Some(Source::Working) => {
                                let sz = st.size(&key)?;
                                st.read(&key, 0, sz.min(req.data_length as u64) as usize)
                            }
                            Some(Source::Stale(ep)) => {
                                st.read_stale(&key, ep, 0, req.data_length as usize)
                            }
                            None => Err(sd_store::StoreError::NoObj),
                        }
                    }
                    op::READ_PEER => st.read(&key, o.offset as u64, req.data_length as usize),
                    op::WRITE_PEER => st
                        .write(&key, o.offset as u64, &payload)
                        .map(|_| Vec::new()),
                    op::CREATE_AND_WRITE_PEER => st
                        .create_and_write(
                            &key,
                            s.file_size(&key, o.copy_policy),
                            o.offset as u64,
                            &payload,
                        )
                        .map(|_| Vec::new()),
                    op::REMOVE_PEER => st.remove(&key).map(|_| Vec::new()),
                    _ => unreachable!(),
                }
            })
            .await,
    )
}

#[cfg(test)]
mod tests {
    //! The peer executor on an in-memory store (see `crate::testing`).

    use super::*;
    use crate::testing::Harness;
    use sd_store::ObjectStore;

    const OID: u64 = 0x00ab_cd00_0000_0009;

    fn peer_req(opcode: u8, epoch: u32, len: usize) -> SdReq {
        let mut r = SdReq::new(opcode);
        r.epoch = epoch;
        r.data_length = len as u32;
        if opcode != op::READ_PEER {
            r.flags = flag::CMD_WRITE;
        }
        r.set_obj(ObjArgs {
            oid: OID,
            ..Default::default()
        });
        r
    }

    fn held(h: &Harness) -> Vec<u8> {
        h.store.read(&ObjKey::replica(OID), 0, 4).unwrap()
    }

    /// A node of a 2-node cluster (3 copies, so it holds everything) that
    /// holds `OID` = "old!", then a third node joins (epoch 2).
    async fn holder() -> Harness {
        let mut h = Harness::new(1, 3, false).await;
        let e = h.sheep.epoch();
        let r = handle(
            &h.sheep,
            peer_req(op::CREATE_AND_WRITE_PEER, e, 4),
            b"old!".to_vec(),
        )
        .await;
        assert_eq!(r.0.result, SdRes::SUCCESS);
        h.add_peer(crate::testing::node(2)).await;
        assert_eq!(h.sheep.epoch(), e + 1);
        h
    }

    #[tokio::test]
    async fn a_write_of_an_older_epoch_is_refused_and_changes_nothing() {
        let h = holder().await;
        let old = h.sheep.epoch() - 1;
        let r = handle(&h.sheep, peer_req(op::WRITE_PEER, old, 4), b"new!".to_vec()).await;
        assert_eq!(r.0.result, SdRes::OLD_NODE_VER);
        assert_eq!(held(&h), b"old!");
        // The same write stamped with the current epoch lands.
        let now = h.sheep.epoch();
        let r = handle(&h.sheep, peer_req(op::WRITE_PEER, now, 4), b"new!".to_vec()).await;
        assert_eq!(r.0.result, SdRes::SUCCESS);
        assert_eq!(held(&h), b"new!");
    }

    #[tokio::test]
    async fn a_write_from_a_newer_epoch_waits_for_it_then_is_refused() {
        let h = holder().await;
        let ahead = h.sheep.epoch() + 1;
        let before = h.clock.elapsed();
        let r = handle(
            &h.sheep,
            peer_req(op::WRITE_PEER, ahead, 4),
            b"new!".to_vec(),
        )
        .await;
        assert_eq!(r.0.result, SdRes::NEW_NODE_VER);
        assert_eq!(
            h.clock.elapsed() - before,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(held(&h), b"old!");
    }

    #[tokio::test]
    async fn a_disk_error_takes_the_node_out_and_its_sender_retries() {
        let h = holder().await;
        let e = h.sheep.epoch();
        h.store.fail_next(1);
        let r = handle(&h.sheep, peer_req(op::WRITE_PEER, e, 4), b"new!".to_vec()).await;
        // Not EIO: the sender retries against a placement without us.
        assert_eq!(r.0.result, SdRes::NETWORK_ERROR);
        assert_eq!(
            *h.sheep.exit.borrow(),
            Some(crate::daemon::EXIT_DISK_FAILED)
        );
        // It serves nothing more, even a read it could still do.
        assert!(h.sheep.view().status.refusal().is_some());
        let r = handle(&h.sheep, peer_req(op::READ_PEER, e, 4), vec![]).await;
        assert_ne!(r.0.result, SdRes::SUCCESS);
        assert_eq!(held(&h), b"old!");
    }
}
