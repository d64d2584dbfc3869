//! Peer operations: requests executed against this node's own store, and
//! the connection pool used to send them to other nodes.

use crate::core::ClusterView;
use crate::daemon::Sheep;
use crate::server::{reply, reply_data, Reply};
use sd_client::{Connection, Endpoint};
use sd_proto::*;
use sd_store::ObjKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Idle connections to other sheep, reused across requests. A connection
/// carries one request at a time; concurrency opens more connections.
pub struct PeerPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    /// This node's view: a request of an older epoch is abandoned.
    view: watch::Receiver<Arc<ClusterView>>,
}

/// Idle connections kept per peer.
const MAX_IDLE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl PeerPool {
    pub fn new(view: watch::Receiver<Arc<ClusterView>>) -> PeerPool {
        PeerPool {
            idle: Mutex::default(),
            view,
        }
    }

    /// Sends one request to `addr`; transport failures read as NETWORK_ERROR.
    ///
    /// A request that carries an epoch is abandoned (NETWORK_ERROR, so its
    /// sender retries with the new view) as soon as this node's epoch moves
    /// past it: a target that left the view (crashed, partitioned) must not
    /// hold a request until the transport timeouts. The connection is
    /// dropped, so the peer, if it is still there, abandons it too.
    pub async fn exec(&self, addr: SocketAddr, req: &SdReq, payload: &[u8]) -> Reply {
        if req.epoch == 0 {
            return self.exec_now(addr, req, payload).await;
        }
        let mut view = self.view.clone();
        let newer = view.wait_for(|v| (v.epoch.wrapping_sub(req.epoch) as i32) > 0);
        tokio::select! {
            r = self.exec_now(addr, req, payload) => r,
            _ = newer => reply(req, SdRes::NETWORK_ERROR),
        }
    }

    async fn exec_now(&self, addr: SocketAddr, req: &SdReq, payload: &[u8]) -> Reply {
        let conn = self
            .idle
            .lock()
            .unwrap()
            .get_mut(&addr)
            .and_then(|v| v.pop());
        let mut conn = match conn {
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
                let mut idle = self.idle.lock().unwrap();
                let v = idle.entry(addr).or_default();
                if v.len() < MAX_IDLE {
                    v.push(conn);
                }
                r
            }
            _ => reply(req, SdRes::NETWORK_ERROR),
        }
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

/// Per-object ordering between writes and recovery reads on this node.
///
/// Writes hold their object's stripe shared and check the epoch while
/// holding it; a recovery read (another node copying the object for a
/// newer epoch) holds it exclusively. So once a recovery read has been
/// served, no write of an older epoch can still land here: it either
/// finished before the copy was taken or is refused (OLD_NODE_VER) and
/// retried by its gateway against the new placement.
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
    fn stripe(&self, oid: u64) -> Arc<tokio::sync::RwLock<()>> {
        self.stripes[(sd_hash_oid(oid) % self.stripes.len() as u64) as usize].clone()
    }
}

/// A lock guard that lives as long as the store operation it protects.
type Held = Option<Box<dyn Send>>;

async fn execute(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let o = req.obj();
    let recovery_read = req.opcode == op::READ_PEER && req.flags & flag::CMD_RECOVERY != 0;
    if !recovery_read && o.oid != 0 {
        sheep.recovery.client_io();
    }
    let mutating = matches!(
        req.opcode,
        op::WRITE_PEER | op::CREATE_AND_WRITE_PEER | op::REMOVE_PEER
    );
    // Epoch rule (§1.7): newer requests wait for this node to catch up,
    // older ones are refused (here, and again under the object's lock).
    let stale = |sheep: &Sheep| {
        o.oid != 0
            && (req.epoch.wrapping_sub(sheep.epoch()) as i32) < 0
            && req.flags & flag::CMD_RECOVERY == 0
    };
    if o.oid != 0 && !sheep.reach_epoch(req.epoch).await {
        return reply(&req, SdRes::NEW_NODE_VER);
    }
    if stale(sheep) {
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
    if req.opcode == op::DECREF_PEER {
        return decref(sheep, &req).await;
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
    // A write checked against this epoch lands before a newer epoch's
    // marking retires copies (see `Recovery::placement`).
    let placement: Held = if mutating {
        Some(Box::new(
            sheep.recovery.placement.clone().read_owned().await,
        ))
    } else {
        None
    };
    if stale(sheep) {
        return reply(&req, SdRes::OLD_NODE_VER);
    }
    let s = sheep.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, sd_store::StoreError> {
        let _held = (object, placement);
        let st = &s.store;
        match req.opcode {
            op::READ_PEER if recovery_read => {
                use crate::recovery::{recovery_source, Source};
                match recovery_source(st, &key, req.flags, o.tgt_epoch) {
                    Some(Source::Working) => {
                        let sz = st.size(&key)?;
                        st.read(&key, 0, sz.min(req.data_length as u64) as usize)
                    }
                    Some(Source::Stale(ep)) => st.read_stale(&key, ep, 0, req.data_length as usize),
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
    .await;
    match res {
        Ok(Ok(data)) if recovery_read => {
            let mut r = reply_data(&req, data);
            r.0.data_length = r.1.len() as u32;
            r
        }
        Ok(Ok(data)) if req.opcode == op::READ_PEER => reply_data(&req, data),
        Ok(Ok(_)) => reply(&req, SdRes::SUCCESS),
        Ok(Err(e)) => {
            if !matches!(e, sd_store::StoreError::NoObj) {
                tracing::error!("peer op {:#x} on {:016x}: {e}", req.opcode, o.oid);
            }
            reply(&req, e.res())
        }
        Err(_) => reply(&req, SdRes::EIO),
    }
}

/// Ledger generations read per update; deeper clone chains read the rest.
const LEDGER_HEAD: usize = 4096;

/// DECREF_PEER (§6.4): `ledger[generation] -= 1`, `ledger[generation+1] +=
/// count`; a ledger that reaches all zeros is deleted, and the node first
/// in the ledger's placement removes the data object it counted.
async fn decref(sheep: &Arc<Sheep>, req: &SdReq) -> Reply {
    let r = req.ref_args();
    let key = ObjKey::replica(r.oid);
    // The node first in the ledger's placement removes the data object
    // once nothing references it.
    let first = sheep
        .view()
        .ring
        .targets(r.oid, sheep.copies_of(r.oid))
        .first()
        .is_some_and(|n| n.nid == sheep.this.nid);
    let data_oid = ledger_oid_to_data_oid(r.oid);
    let _serial = sheep.ledger_lock.lock().await;
    let s = sheep.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<bool, sd_store::StoreError> {
        let st = &s.store;
        let full = SD_DATA_OBJ_SIZE as usize;
        let head = LEDGER_HEAD.max((r.generation as usize + 2) * 4).min(full);
        let existed = st.exists(&key);
        // Ledger files hold only their used prefix; a missing ledger is
        // the initial state: one root reference.
        let mut l = if existed {
            st.read_all(&key)?
        } else {
            1u32.to_le_bytes().to_vec()
        };
        if l.len() > full {
            l.truncate(full);
        }
        if l.len() < head {
            l.resize(head, 0);
        }
        let g = r.generation as usize * 4;
        if g + 8 > l.len() {
            return Err(sd_store::StoreError::Io(std::io::Error::other(
                "generation out of range",
            )));
        }
        let dec = u32::from_le_bytes(l[g..g + 4].try_into().unwrap()).wrapping_sub(1);
        l[g..g + 4].copy_from_slice(&dec.to_le_bytes());
        let inc = u32::from_le_bytes(l[g + 4..g + 8].try_into().unwrap()).wrapping_add(r.count);
        l[g + 4..g + 8].copy_from_slice(&inc.to_le_bytes());
        let all_zero = l.iter().all(|&b| b == 0);
        if all_zero {
            if first {
                // Recorded before the ledger goes: a crash in between
                // must not leak the object.
                st.reclaim_add(data_oid)?;
            }
            if existed {
                st.remove(&key)?;
            }
        } else {
            let used = l.len() - l.iter().rev().take_while(|&&b| b == 0).count();
            let used = (used.div_ceil(8) * 8).min(l.len());
            // Replaced whole (atomically), so a counter that dropped to
            // zero past the new end does not survive in the old file.
            st.create_and_write(&key, used as u64, 0, &l[..used])?;
        }
        Ok(all_zero)
    })
    .await;
    match res {
        Ok(Ok(true)) => {
            if first {
                // The removal fans out through the gateway; it must not
                // hold this peer reply, so the reclaim worker does it.
                let _ = sheep.reclaim.send(data_oid);
            }
            reply(req, SdRes::SUCCESS)
        }
        Ok(Ok(false)) => reply(req, SdRes::SUCCESS),
        Ok(Err(e)) => reply(req, e.res()),
        Err(_) => reply(req, SdRes::EIO),
    }
}
