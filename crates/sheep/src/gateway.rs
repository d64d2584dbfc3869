//! The gateway: client object I/O, placed by the ring and fanned out to
//! every target (PROTOCOL.md §7.5).
//!
//! A write is acknowledged only when every target has it on stable storage.
//! Transient failures (a target died, the epoch moved) are retried against
//! the new view until [`RETRY_FOR`] has passed, so a node loss is invisible
//! to clients beyond a short stall.

use crate::daemon::Sheep;
use crate::server::{reply, reply_data, Reply};
use futures::future::join_all;
use sd_proto::*;
use std::sync::Arc;
use std::time::Duration;

/// How long a request keeps retrying transient failures.
const RETRY_FOR: Duration = Duration::from_secs(60);

fn transient(r: SdRes) -> bool {
    matches!(
        r,
        SdRes::NETWORK_ERROR
            | SdRes::OLD_NODE_VER
            | SdRes::NEW_NODE_VER
            | SdRes::WAIT_FOR_JOIN
            | SdRes::KILLED
    )
}

/// This node's participant state in the shared lock of `vid` (§6.7).
fn my_part(sheep: &Sheep, vid: u32) -> Option<u32> {
    sheep.view().vdis.participant_state(vid, &sheep.this.nid)
}

/// Broadcasts INODE_COHERENCE for `vid` from this node (§6.7).
async fn coherence(sheep: &Arc<Sheep>, vid: u32, validate: bool) {
    let mut req = SdReq::new(op::INODE_COHERENCE);
    req.set_inode_coherence(InodeCoherenceArgs {
        vid,
        validate: validate as u32,
    });
    let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
    let mut data = vec![0u8; NODE_ID_SIZE];
    sheep.this.nid.encode_into(&mut data);
    let m = crate::state::OpMessage { req, rsp, data };
    if let Err(e) = sheep.broadcast(m).await {
        tracing::error!("INODE_COHERENCE of {vid:x} failed: {e:#}");
    }
}

/// Executes a client object request (0x01–0x04).
///
/// tgt's requests (`CMD_TGT`) on a VDI several tgt nodes share (iSCSI
/// multipath) keep their cached inodes coherent (§6.7): while another
/// participant has changed the index since this node's client last
/// reloaded it, every request but that reload answers INODE_INVALIDATED.
pub async fn handle(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    if out_of_bounds(sheep, &req).await {
        return reply(&req, SdRes::INVALID_PARMS);
    }
    let o = req.obj();
    let vid = oid_to_vid(o.oid);
    let refresh = req.opcode == op::READ_OBJ
        && is_vdi_obj(o.oid)
        && o.offset == 0
        && req.data_length as usize == GREF_OFFSET;
    if req.flags & flag::CMD_TGT != 0
        && req.opcode != op::REMOVE_OBJ
        && !refresh
        && my_part(sheep, vid) == Some(crate::state::PART_INVALIDATED)
    {
        return reply(&req, SdRes::INODE_INVALIDATED);
    }
    if refresh {
        let r = io(sheep, req, payload).await;
        if r.0.result == SdRes::SUCCESS
            && my_part(sheep, vid) == Some(crate::state::PART_INVALIDATED)
        {
            coherence(sheep, vid, true).await;
        }
        return r;
    }
    let writing = matches!(req.opcode, op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ);
    if writing && is_data_obj(o.oid) && sheep.is_snapshot(vid) {
        // The VDI became a snapshot: its objects are frozen (§6.1).
        return reply(&req, SdRes::READONLY);
    }
    if req.opcode == op::WRITE_OBJ && is_vdi_obj(o.oid) {
        return write_inode(sheep, req, payload).await;
    }
    if req.opcode == op::CREATE_AND_WRITE_OBJ && req.flags & flag::CMD_COW != 0 && o.cow_oid != 0 {
        let size = sheep.object_size(o.oid) as usize;
        if payload.len() < size {
            let mut full = match read(sheep, o.cow_oid, 0, size, 0).await {
                Ok(d) => d,
                Err(r) => return reply(&req, r),
            };
            let off = o.offset as usize;
            if off + payload.len() > size {
                return reply(&req, SdRes::INVALID_PARMS);
            }
            full[off..off + payload.len()].copy_from_slice(&payload);
            let mut r2 = req;
            r2.data_length = size as u32;
            r2.flags &= !flag::CMD_COW;
            r2.set_obj(ObjArgs {
                offset: 0,
                cow_oid: 0,
                ..o
            });
            return io(sheep, r2, full).await;
        }
    }
    io(sheep, req, payload).await
}

/// Whether a read or write reaches past the end of its object: refused
/// before anything is read, sent or allocated.
async fn out_of_bounds(sheep: &Sheep, req: &SdReq) -> bool {
    if req.opcode == op::REMOVE_OBJ {
        return false;
    }
    let o = req.obj();
    let end = o.offset as u64 + req.data_length as u64;
    if end <= sheep.object_size(o.oid) {
        return false;
    }
    if is_data_obj(o.oid) && !sheep.knows_vdi(oid_to_vid(o.oid)) {
        // Its size comes from its VDI, which may be a moment old.
        sheep.catch_up().await;
        return end > sheep.object_size(o.oid);
    }
    true
}

/// Placement, fan-out and retry of one object request.
async fn io(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let mut o = req.obj();
    let codec = sheep.ec_codec(o.oid, o.copy_policy);
    let copies = match &codec {
        Some(c) => {
            o.copy_policy = c.policy().copy_policy();
            c.policy().nr_copies()
        }
        None if o.copies != 0 => o.copies as usize,
        None => sheep.copies_of(o.oid),
    };
    let peer_op = op::gateway_to_peer(req.opcode).expect("gateway opcode");
    let deadline = sheep.clock.now() + RETRY_FOR;
    loop {
        let view = sheep.view();
        if let Some(r) = view.status.refusal() {
            return reply(&req, r);
        }
        let targets: Vec<SdNode> = view
            .ring
            .targets(o.oid, copies)
            .into_iter()
            .copied()
            .collect();
        if targets.is_empty() {
            return reply(&req, SdRes::HALT);
        }
        let is_write = req.opcode != op::READ_OBJ;
        if is_write
            && view.config.flags & cluster_flag::STRICT != 0
            && view.ring.nr_zones() < copies
        {
            return reply(&req, SdRes::HALT);
        }
        let mut preq = req;
        preq.opcode = peer_op;
        preq.proto_ver = SD_SHEEP_PROTO_VER;
        preq.epoch = view.epoch;
        preq.flags &= !(flag::CMD_COW | flag::CMD_TGT);
        preq.set_obj(o);
        let r = match (&codec, req.opcode) {
            (Some(c), op::READ_OBJ) => {
                let r = crate::ec::read(
                    sheep,
                    c,
                    &targets,
                    preq,
                    o.offset as u64,
                    req.data_length as u64,
                )
                .await;
                crate::ec::read_reply(&req, r)
            }
            (Some(c), op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ) => {
                let size = sheep.object_size(o.oid);
                crate::ec::write(sheep, c, &targets, preq, o.offset as u64, &payload, size).await
            }
            _ if is_write => fan_out(sheep, &targets, preq, &payload).await,
            _ => read_any(sheep, &targets, preq).await,
        };
        if transient(r.0.result) && sheep.clock.now() < deadline {
            let _ = sheep
                .wait_epoch(view.epoch.wrapping_add(1), Duration::from_millis(500))
                .await;
            continue;
        }
        if req.opcode == op::READ_OBJ && r.0.result == SdRes::SUCCESS {
            return reply_data(&req, r.1);
        }
        return reply(&req, r.0.result);
    }
}

/// Sends a peer request to `node` (this node's own handler if it is us).
pub async fn send(sheep: &Arc<Sheep>, node: &SdNode, req: SdReq, payload: &[u8]) -> Reply {
    if node.nid == sheep.this.nid {
        crate::peer::handle(sheep, req, payload.to_vec()).await
    } else {
        sheep
            .send_peer(node.nid.io_socket_addr(), &req, payload)
            .await
    }
}

/// Sends to every target; the first failure decides the result.
async fn fan_out(sheep: &Arc<Sheep>, targets: &[SdNode], req: SdReq, payload: &[u8]) -> Reply {
    let sends = targets.iter().enumerate().map(|(i, n)| {
        let mut r = req;
        let mut o = r.obj();
        o.ec_index = i as u8;
        r.set_obj(o);
        send(sheep, n, r, payload)
    });
    let results = join_all(sends).await;
    let removing = req.opcode == op::REMOVE_PEER;
    let mut out = reply(&req, SdRes::SUCCESS);
    for r in results {
        if r.0.result != SdRes::SUCCESS {
            // Removing: a replica already gone is reported, the rest removed.
            if out.0.result == SdRes::SUCCESS || (removing && out.0.result == SdRes::NO_OBJ) {
                out = r;
            }
        }
    }
    out
}

/// Reads from this node if it is a target, else from the others starting
/// at one chosen by the object (so reads of different objects spread over
/// the replicas, and a simulation replays); the first success wins.
async fn read_any(sheep: &Arc<Sheep>, targets: &[SdNode], req: SdReq) -> Reply {
    let start = targets
        .iter()
        .position(|n| n.nid == sheep.this.nid)
        .unwrap_or_else(|| (sd_hash_oid(req.obj().oid) % targets.len() as u64) as usize);
    let mut last = reply(&req, SdRes::NO_OBJ);
    for k in 0..targets.len() {
        let n = &targets[(start + k) % targets.len()];
        let mut r = send(sheep, n, req, &[]).await;
        if r.0.result == SdRes::SUCCESS && r.1.len() == req.data_length as usize {
            return r;
        }
        if r.0.result == SdRes::SUCCESS {
            // A replica that answers with other than what was asked is
            // broken: its bytes are not served; the next one is asked.
            tracing::error!(
                "{} answered {} bytes of {:016x} for {} asked; not served",
                n.nid.socket_addr(),
                r.1.len(),
                req.obj().oid,
                req.data_length
            );
            r = reply(&req, SdRes::EIO);
        }
        // A transient failure must win over NO_OBJ so the caller retries.
        if !(transient(last.0.result) && r.0.result == SdRes::NO_OBJ) {
            last = r;
        }
    }
    last
}

fn internal(opcode: u8, oid: u64, offset: u32, len: usize, copies: u8) -> SdReq {
    let mut r = SdReq::new(opcode);
    r.data_length = len as u32;
    if opcode != op::READ_OBJ && opcode != op::REMOVE_OBJ {
        r.flags = flag::CMD_WRITE;
    }
    r.set_obj(ObjArgs {
        oid,
        offset,
        copies,
        ..Default::default()
    });
    r
}

fn result(r: Reply) -> Result<Vec<u8>, SdRes> {
    if r.0.result == SdRes::SUCCESS {
        Ok(r.1)
    } else {
        Err(r.0.result)
    }
}

/// Reads `len` bytes of `oid` through the gateway (copies 0 = the VDI's).
pub async fn read(
    sheep: &Arc<Sheep>,
    oid: u64,
    offset: u32,
    len: usize,
    copies: u8,
) -> Result<Vec<u8>, SdRes> {
    result(
        io(
            sheep,
            internal(op::READ_OBJ, oid, offset, len, copies),
            Vec::new(),
        )
        .await,
    )
}

/// Writes into an existing object through the gateway.
pub async fn write(
    sheep: &Arc<Sheep>,
    oid: u64,
    offset: u32,
    data: Vec<u8>,
    copies: u8,
) -> Result<(), SdRes> {
    let req = internal(op::WRITE_OBJ, oid, offset, data.len(), copies);
    result(handle(sheep, req, data).await).map(|_| ())
}

/// Creates (or replaces) an object through the gateway.
pub async fn create(
    sheep: &Arc<Sheep>,
    oid: u64,
    offset: u32,
    data: Vec<u8>,
    copies: u8,
) -> Result<(), SdRes> {
    result(
        io(
            sheep,
            internal(op::CREATE_AND_WRITE_OBJ, oid, offset, data.len(), copies),
            data,
        )
        .await,
    )
    .map(|_| ())
}

/// Removes every replica of an object.
pub async fn remove(sheep: &Arc<Sheep>, oid: u64, copies: u8) -> Result<(), SdRes> {
    result(
        io(
            sheep,
            internal(op::REMOVE_OBJ, oid, 0, 0, copies),
            Vec::new(),
        )
        .await,
    )
    .map(|_| ())
}

/// DISCARD_OBJ (old QEMU): unmaps a whole data object by clearing its
/// entry in the inode named by the oid's vid (the reference path then
/// frees the object).
pub async fn discard(sheep: &Arc<Sheep>, req: SdReq) -> Reply {
    let oid = req.obj().oid;
    if !is_data_obj(oid) {
        return reply(&req, SdRes::INVALID_PARMS);
    }
    let ino = vid_to_vdi_oid(oid_to_vid(oid));
    let off = data_vdi_id_offset(data_oid_to_idx(oid)) as u32;
    let entry = match read(sheep, ino, off, 4, 0).await {
        Ok(e) => e,
        Err(r) => return reply(&req, r),
    };
    if entry != [0; 4] {
        if let Err(r) = write(sheep, ino, off, vec![0; 4], 0).await {
            return reply(&req, r);
        }
    }
    reply(&req, SdRes::SUCCESS)
}

/// Removes data object `oid` unless a live inode still references it.
///
/// An object VDI `v` created at index `i` can be referenced only at index
/// `i`, and only by `v` and the VDIs cloned or snapshotted from it
/// ([`crate::state::VdiTable::heirs`]), so their entries say whether it is
/// still needed. Asking them, where the original counted references in
/// ledger objects, makes a release idempotent: a resent inode write, a
/// retried fan-out or a crash halfway may release an object twice, which
/// never frees one something still points to, while a counter decremented
/// twice did (the whole-cluster simulation found such counts diverging
/// between a ledger's replicas). The cost is a 4-byte read of every copy
/// of each heir's inode, paid once per object per snapshot (on
/// copy-on-write) and on discard.
pub async fn release(sheep: &Arc<Sheep>, oid: u64) -> Result<(), SdRes> {
    // A clone made a moment ago through another node inherits the object
    // too: learn every VDI created before this release began.
    sheep.catch_up().await;
    let vid = oid_to_vid(oid);
    let off = data_vdi_id_offset(data_oid_to_idx(oid)) as u32;
    let heirs = sheep.view().vdis.heirs(vid);
    for heir in heirs {
        // Every copy of the inode is asked: one that a cut-off index
        // write left behind (see [`reconcile_index`]) still counts.
        for copy in read_replicas(sheep, vid_to_vdi_oid(heir), off, 4).await {
            match copy {
                Ok(e) if e == vid.to_le_bytes() => return Ok(()),
                Ok(_) | Err(SdRes::NO_OBJ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    match remove(sheep, oid, 0).await {
        Ok(()) | Err(SdRes::NO_OBJ) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads `len` bytes at `offset` of `oid` from each of its replicas (not
/// erasure coded): every target's answer.
async fn read_replicas(
    sheep: &Arc<Sheep>,
    oid: u64,
    offset: u32,
    len: usize,
) -> Vec<Result<Vec<u8>, SdRes>> {
    let view = sheep.view();
    let mut req = internal(op::READ_OBJ, oid, offset, len, 0);
    req.opcode = op::READ_PEER;
    req.proto_ver = SD_SHEEP_PROTO_VER;
    req.epoch = view.epoch;
    let targets = view.ring.targets(oid, sheep.copies_of(oid));
    let answers = join_all(targets.iter().map(|n| send(sheep, n, req, &[]))).await;
    answers
        .into_iter()
        .map(|r| match result(r) {
            Ok(d) if d.len() == len => Ok(d),
            Ok(_) => Err(SdRes::EIO),
            Err(e) => Err(e),
        })
        .collect()
}

/// Makes the copies of VDI `vid`'s index agree again; how many entries
/// it rewrote.
///
/// An index write is fanned out to every copy of the inode, and a gateway
/// that dies halfway (or gives up on an unreachable copy) leaves them
/// different. Nothing else would ever compare them, and a client that
/// opens the VDI through one copy and writes into the object it names,
/// then later reads through another copy, loses that acknowledged write.
/// So after every recovery (a gateway's death is a membership change) and
/// after a failed index write, the copies are compared, twice some time
/// apart so that a write still in flight is not taken for a cut-off one,
/// and each entry that still differs is set on every copy to a value whose
/// object exists, preferring the VDI's own object: the data objects are
/// written before the index entry that names them and are removed only
/// after every copy of the entry changed, so the value chosen is one the
/// VDI had (an unacknowledged write or discard is kept or undone, both
/// allowed).
pub async fn reconcile_index(sheep: &Arc<Sheep>, vid: u32) -> Result<usize, SdRes> {
    let ino = vid_to_vdi_oid(vid);
    let h = read(sheep, ino, 0, INODE_FIELDS_SIZE, 0).await?;
    let Some(h) = InodeHeader::decode(&h) else {
        return Ok(0);
    };
    let n = h.nr_objects().min(SD_INODE_DATA_INDEX as u64) as usize;
    if h.store_policy != 0 || n == 0 {
        return Ok(0);
    }
    let differing = || async {
        let copies: Vec<Vec<u8>> = read_replicas(sheep, ino, DATA_VDI_ID_OFFSET as u32, 4 * n)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let entry =
            |c: &Vec<u8>, i: usize| u32::from_le_bytes(c[4 * i..4 * i + 4].try_into().unwrap());
        (0..n)
            .filter_map(|i| {
                let mut vals: Vec<u32> = copies.iter().map(|c| entry(c, i)).collect();
                vals.sort_unstable();
                vals.dedup();
                (vals.len() > 1).then_some((i, vals))
            })
            .collect::<Vec<_>>()
    };
    let first = differing().await;
    if first.is_empty() {
        return Ok(0);
    }
    sheep.clock.sleep(RECONCILE_SETTLE).await;
    let stable: Vec<(usize, Vec<u32>)> = differing()
        .await
        .into_iter()
        .filter(|d| first.contains(d))
        .collect();
    let mut fixes = Vec::new();
    for (i, mut vals) in stable {
        vals.retain(|&v| v != 0);
        vals.sort_by_key(|&v| v != vid);
        let mut chosen = 0;
        for v in vals {
            match read(sheep, vid_to_data_oid(v, i as u64), 0, 1, 0).await {
                Ok(_) => {
                    chosen = v;
                    break;
                }
                Err(SdRes::NO_OBJ) => {}
                Err(e) => return Err(e),
            }
        }
        fixes.push((i, chosen));
    }
    for run in fixes.chunk_by(|a, b| a.0 + 1 == b.0) {
        let data = run.iter().flat_map(|f| f.1.to_le_bytes()).collect();
        write(
            sheep,
            ino,
            data_vdi_id_offset(run[0].0 as u32) as u32,
            data,
            0,
        )
        .await?;
    }
    if !fixes.is_empty() {
        tracing::warn!(
            "the copies of VDI {vid:x}'s index differed in {} entries (a cut-off write); made them agree",
            fixes.len()
        );
    }
    Ok(fixes.len())
}

/// How long [`reconcile_index`] waits before comparing again.
const RECONCILE_SETTLE: Duration = Duration::from_secs(2);

/// Releases `oid` before the inode write that dropped it is answered (so
/// a client rewriting the same index next cannot race the removal), with
/// the work recorded in the store first: after a crash the reclaim worker
/// finishes it. A release that fails is left to that worker.
async fn release_dropped(sheep: &Arc<Sheep>, oid: u64) {
    let durable = !sheep.opts.gateway;
    if durable {
        let s = sheep.clone();
        if let Ok(Err(e)) = sheep.on_store(move || s.store.reclaim_add(oid)).await {
            tracing::error!("failed to record the release of {oid:016x}: {e}");
        }
    }
    match release(sheep, oid).await {
        Ok(()) if durable => {
            let s = sheep.clone();
            if let Ok(Err(e)) = sheep.on_store(move || s.store.reclaim_done(oid)).await {
                tracing::error!("failed to record the release of {oid:016x}: {e}");
            }
        }
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(
                "release of {oid:016x} failed ({}); retrying later",
                e.describe()
            );
            let _ = sheep.reclaim.send(crate::daemon::Reclaim::Release(oid));
        }
    }
}

/// WRITE_OBJ on an inode: when the range lies inside `data_vdi_id`,
/// release the objects the overwritten entries pointed to.
async fn write_inode(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let o = req.obj();
    let start = o.offset as usize;
    let end = start + payload.len();
    let in_entries = start >= DATA_VDI_ID_OFFSET
        && end <= GREF_OFFSET
        && start.is_multiple_of(4)
        && end.is_multiple_of(4)
        && end > start;
    if !in_entries {
        return io(sheep, req, payload).await;
    }
    // A hyper volume's index area is its B-tree root: no references.
    match read(sheep, o.oid, STORE_POLICY_OFFSET as u32, 1, o.copies).await {
        Ok(policy) if policy[0] != 0 => return io(sheep, req, payload).await,
        Ok(_) => {}
        Err(r) => return reply(&req, r),
    }
    // A participant changing the index invalidates the others' copies.
    let vid = oid_to_vid(o.oid);
    if my_part(sheep, vid).is_some_and(|p| p != crate::state::PART_MODIFIED) {
        coherence(sheep, vid, false).await;
    }
    let first = ((start - DATA_VDI_ID_OFFSET) / 4) as u32;
    let n = (end - start) / 4;
    let old = match read(sheep, o.oid, o.offset, payload.len(), o.copies).await {
        Ok(d) => d,
        Err(r) => return reply(&req, r),
    };
    let r = io(sheep, req, payload.clone()).await;
    if r.0.result != SdRes::SUCCESS {
        // Some copies of the index may have the write, others not.
        let _ = sheep.reclaim.send(crate::daemon::Reclaim::Reconcile(vid));
        return r;
    }
    for i in 0..n {
        let entry = |d: &[u8]| u32::from_le_bytes(d[4 * i..4 * i + 4].try_into().unwrap());
        let (old_vid, new_vid) = (entry(&old), entry(&payload));
        if old_vid != 0 && old_vid != new_vid {
            release_dropped(sheep, vid_to_data_oid(old_vid, (first as usize + i) as u64)).await;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    //! The gateway against fake peers (see `crate::testing`).

    use super::*;
    use crate::testing::{Harness, Mode};
    use std::time::Duration;

    const OID: u64 = 0x00ab_cd00_0000_0007;

    fn bytes(seed: u8) -> Vec<u8> {
        (0..512)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// The bytes fake peer `i` holds at the start of `OID`.
    fn held(h: &Harness, i: u16) -> Option<Vec<u8>> {
        use sd_store::ObjectStore;
        h.peer(i)
            .store
            .read(&sd_store::ObjKey::replica(OID), 0, 512)
            .ok()
    }

    #[tokio::test]
    async fn a_write_is_acknowledged_once_every_target_has_it() {
        let h = Harness::new(4, 3, true).await;
        let epoch = h.sheep.epoch();
        let targets = h.targets(OID);
        assert_eq!(targets.len(), 3);
        create(&h.sheep, OID, 0, bytes(1), 0).await.unwrap();
        for i in 1..=4u16 {
            let calls = h.peer(i).calls();
            if targets.contains(&i) {
                assert_eq!(held(&h, i), Some(bytes(1)), "target {i}");
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0].opcode, op::CREATE_AND_WRITE_PEER);
                assert_eq!(calls[0].epoch, epoch);
            } else {
                assert!(calls.is_empty(), "node {i} is no target");
            }
        }
        assert_eq!(read(&h.sheep, OID, 0, 512, 0).await.unwrap(), bytes(1));
    }

    #[tokio::test]
    async fn a_target_that_fails_the_write_fails_it_for_the_client() {
        let h = Harness::new(4, 3, true).await;
        let t = h.targets(OID);
        h.peer(t[1]).set_mode(Mode::Answer(SdRes::EIO));
        assert_eq!(create(&h.sheep, OID, 0, bytes(2), 0).await, Err(SdRes::EIO));
    }

    #[tokio::test]
    async fn a_silent_target_is_retried_until_the_deadline_then_reported() {
        let h = Harness::new(4, 3, true).await;
        let t = h.targets(OID);
        h.peer(t[0]).set_mode(Mode::Silent);
        let r = create(&h.sheep, OID, 0, bytes(3), 0).await;
        assert_eq!(r, Err(SdRes::NETWORK_ERROR));
        // One attempt every 500 ms (waiting for a newer epoch), for 60 s.
        assert_eq!(h.clock.elapsed(), RETRY_FOR);
        assert_eq!(h.peer(t[0]).calls().len(), 121);
    }

    #[tokio::test]
    async fn a_write_whose_target_left_lands_on_the_new_placement() {
        let mut h = Harness::new(4, 3, true).await;
        let old_epoch = h.sheep.epoch();
        let gone = h.targets(OID)[0];
        h.peer(gone).set_mode(Mode::Silent);
        let s = h.sheep.clone();
        let write = tokio::spawn(async move { create(&s, OID, 0, bytes(4), 0).await });
        while h.peer(gone).calls().is_empty() {
            tokio::task::yield_now().await;
        }
        h.remove_peer(gone).await;
        assert_eq!(write.await.unwrap(), Ok(()));
        let now = h.targets(OID);
        assert!(!now.contains(&gone) && now.len() == 3);
        for i in now {
            assert_eq!(held(&h, i), Some(bytes(4)), "new target {i}");
        }
        assert!(h.peer(gone).calls().iter().all(|c| c.epoch == old_epoch));
        assert!(h.clock.elapsed() < RETRY_FOR);
    }

    #[tokio::test]
    async fn old_node_ver_is_retried_and_the_write_completes() {
        let h = Harness::new(3, 3, true).await;
        let t = h.targets(OID);
        h.peer(t[2]).set_mode(Mode::Once(SdRes::OLD_NODE_VER));
        create(&h.sheep, OID, 0, bytes(5), 0).await.unwrap();
        assert_eq!(h.peer(t[2]).calls().len(), 2);
        for i in t {
            assert_eq!(held(&h, i), Some(bytes(5)));
        }
        assert_eq!(h.clock.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn io_past_the_end_of_an_object_is_refused_and_reaches_no_peer() {
        let h = Harness::new(3, 3, true).await;
        let size = h.sheep.object_size(OID) as u32;
        for (opcode, offset, len) in [
            (op::WRITE_OBJ, 512 << 20, 4),
            (op::CREATE_AND_WRITE_OBJ, size - 2, 4),
            (op::READ_OBJ, size, 1),
        ] {
            let mut req = internal(opcode, OID, offset, len, 0);
            req.data_length = len as u32;
            let payload = if opcode == op::READ_OBJ {
                vec![]
            } else {
                vec![7; len]
            };
            let r = handle(&h.sheep, req, payload).await;
            assert_eq!(r.0.result, SdRes::INVALID_PARMS, "opcode {opcode:#x}");
        }
        assert!((1..=3).all(|i| h.peer(i).calls().is_empty()));
        // The last bytes of the object are fine.
        create(&h.sheep, OID, size - 4, vec![1, 2, 3, 4], 0)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_read_of_the_wrong_length_is_never_served() {
        let h = Harness::new(3, 3, true).await;
        create(&h.sheep, OID, 0, bytes(6), 0).await.unwrap();
        let t = h.targets(OID);
        h.peer(t[0]).set_mode(Mode::ShortReads);
        h.peer(t[1]).set_mode(Mode::ShortReads);
        // Whichever replica a read starts at, the answer is the good one.
        for _ in 0..20 {
            assert_eq!(read(&h.sheep, OID, 0, 512, 0).await.unwrap(), bytes(6));
        }
        h.peer(t[2]).set_mode(Mode::ShortReads);
        assert_eq!(read(&h.sheep, OID, 0, 512, 0).await, Err(SdRes::EIO));
    }

    /// The hot path takes no lock shared across connections: a create,
    /// a write and a read (this node one of the targets) complete while
    /// another thread holds every node-wide lock the node has (the
    /// cluster state's, recovery's, the throttle's, the scrub's, the
    /// repair set's and the supervisor's). What remains on the path is
    /// per object: the striped object and block-range locks.
    #[test]
    fn the_hot_path_takes_no_node_wide_lock() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = rt.block_on(Harness::new(2, 3, false));
        assert!(h.targets(OID).contains(&0), "this node holds a copy");
        let s = h.sheep.clone();
        let held = (
            s.core.hold(),
            s.recovery.hold(),
            s.throttle.lock().unwrap(),
            s.scrub.hold(),
            s.integrity.hold(),
            s.workers.hold(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let sheep = h.sheep.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let got = rt.block_on(async {
                create(&sheep, OID, 0, bytes(8), 0).await?;
                write(&sheep, OID, 512, bytes(9), 0).await?;
                read(&sheep, OID, 0, 1024, 0).await
            });
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a request waited for a node-wide lock");
        drop(held);
        assert_eq!(got, Ok([bytes(8), bytes(9)].concat()));
    }

    /// Copies of an index that a cut-off write left different are made to
    /// agree: an entry naming the VDI's own object that exists wins over
    /// the old value; one naming an object that does not exist is reset.
    #[tokio::test]
    async fn copies_of_an_index_that_differ_are_made_to_agree() {
        use sd_store::{ObjKey, ObjectStore};
        let h = Harness::new(3, 3, true).await;
        const VID: u32 = 0x00ab_cd00;
        let header = InodeHeader {
            vdi_size: 3 << 22,
            block_size_shift: 22,
            nr_copies: 3,
            vdi_id: VID,
            ..Default::default()
        };
        let ino = ObjKey::replica(vid_to_vdi_oid(VID));
        let entries = |e: [u32; 3]| e.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let mut body = header.encode();
        body.extend(entries([0, 0, VID]));
        for i in 1..=3u16 {
            let st = &h.peer(i).store;
            st.create_and_write(&ino, body.len() as u64, 0, &body)
                .unwrap();
            st.create_and_write(&ObjKey::replica(vid_to_data_oid(VID, 0)), 4, 0, b"data")
                .unwrap();
        }
        // Entry 0: written on two copies (its object exists); entry 1: on
        // one copy only, naming an object that is not there.
        for (i, e) in [(1, [VID, VID, VID]), (2, [VID, 0, VID])] {
            h.peer(i)
                .store
                .write(&ino, DATA_VDI_ID_OFFSET as u64, &entries(e))
                .unwrap();
        }
        assert_eq!(reconcile_index(&h.sheep, VID).await, Ok(2));
        for i in 1..=3u16 {
            let got = h
                .peer(i)
                .store
                .read(&ino, DATA_VDI_ID_OFFSET as u64, 12)
                .unwrap();
            assert_eq!(got, entries([VID, 0, VID]), "copy on node {i}");
        }
        assert_eq!(reconcile_index(&h.sheep, VID).await, Ok(0));
    }
}
