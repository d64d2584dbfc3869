//! VDI operations: the work phases of NEW_VDI, GET_VDI_INFO, LOCK_VDI,
//! RELEASE_VDI, DEL_VDI and FORCE_RECOVER (PROTOCOL.md §5.6, §6.2, §6.3),
//! plus how a node learns the VDI table (local scan, peers).

use crate::daemon::Sheep;
use crate::gateway;
use crate::state::{Status, VdiTable};
use sd_proto::le::cstr;
use sd_proto::*;
use sd_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of a VDI lookup.
#[derive(Debug, Default)]
struct Lookup {
    vid: u32,
    free_bit: u32,
    next_snapid: u32,
}

async fn read_header(sheep: &Arc<Sheep>, vid: u32) -> Result<InodeHeader, SdRes> {
    let b = gateway::read(sheep, vid_to_vdi_oid(vid), 0, INODE_FIELDS_SIZE, 0).await?;
    InodeHeader::decode(&b).ok_or(SdRes::EIO)
}

/// Finds `name` (and snapshot tag/id) as §5.6 describes.
async fn lookup(
    sheep: &Arc<Sheep>,
    name: &[u8],
    tag: &[u8],
    snapid: u32,
) -> Result<Lookup, (SdRes, Lookup)> {
    let view = sheep.view();
    let inuse = &view.vdis.inuse;
    let mut left = sd_hash_vdi(name);
    if left == 0 {
        left = 1;
    }
    let mut out = Lookup::default();
    let (right, wrapped) = match inuse.first_clear_from(left) {
        Some(r) => (r, false),
        None => match inuse.first_clear_from(1) {
            Some(r) => (r, true),
            None => return Err((SdRes::FULL_VDI, out)),
        },
    };
    out.free_bit = right;
    if left == right {
        return Err((SdRes::NO_VDI, out));
    }
    let slots: Vec<u32> = if wrapped {
        (1..right).rev().chain((left..SD_NR_VDIS).rev()).collect()
    } else {
        (left..right).rev().collect()
    };
    let has_tag = !tag.is_empty() || snapid != 0;
    let mut name_found = false;
    // A deleted VDI is gone, even where a delete cut off halfway left its
    // name in some copies of its inode.
    let deleted = &view.vdis.deleted;
    for vid in slots
        .into_iter()
        .filter(|&v| inuse.get(v) && !deleted.get(v))
    {
        let h = match read_header(sheep, vid).await {
            Ok(h) => h,
            Err(SdRes::NO_OBJ) => continue,
            Err(r) => return Err((r, out)),
        };
        if h.name_bytes() != name {
            continue;
        }
        if has_tag {
            if !h.is_snapshot() {
                name_found = true;
                continue;
            }
            if (!tag.is_empty() && cstr(&h.tag) == tag) || (snapid != 0 && h.snap_id == snapid) {
                out.vid = vid;
                return Ok(out);
            }
        } else {
            out.next_snapid = h.snap_id + 1;
            if !h.is_snapshot() {
                out.vid = vid;
                return Ok(out);
            }
            return Err((SdRes::NO_VDI, out));
        }
    }
    Err((
        if name_found {
            SdRes::NO_TAG
        } else {
            SdRes::NO_VDI
        },
        out,
    ))
}

/// Looks up the VDI a GET_VDI_INFO / LOCK_VDI / DEL_VDI request names.
async fn lookup_request(sheep: &Arc<Sheep>, req: &SdReq, payload: &[u8]) -> Result<Lookup, SdRes> {
    let (name, tag) = name_and_tag(payload).ok_or(SdRes::INVALID_PARMS)?;
    let snapid = req.vdi().snapid;
    match lookup(sheep, name, tag, snapid).await {
        // "No such VDI" only once this node has applied every VDI the
        // cluster created before the question (a creation's event may
        // still be on its way here) and, having joined a moment ago,
        // heard from every member.
        Err((SdRes::NO_VDI, _)) => {
            sheep.catch_up().await;
            sheep.wait_vdis_synced().await;
            lookup(sheep, name, tag, snapid).await.map_err(|e| e.0)
        }
        r => r.map_err(|e| e.0),
    }
}

/// Splits a name (256 B) or name+tag (512 B) payload.
fn name_and_tag(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    match payload.len() {
        256 => Some((cstr(payload), &[][..])),
        512 => Some((cstr(&payload[..256]), cstr(&payload[256..]))),
        _ => None,
    }
}

fn now_ctime() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() << 32) | (d.subsec_micros() as u64 * 1000)
}

/// Runs the work phase of a cluster operation on this node. Returns the
/// response, its payload, and whether the main phase must be broadcast.
/// What a work phase produced: the response and its payload, and the data
/// of the main phase to broadcast (None: nothing to broadcast).
pub struct WorkDone {
    pub rsp: SdRsp,
    pub data: Vec<u8>,
    pub broadcast: Option<Vec<u8>>,
}

pub async fn work(sheep: &Arc<Sheep>, req: &SdReq, payload: &[u8]) -> WorkDone {
    let mut rsp = SdRsp::for_req(req, SdRes::SUCCESS);
    let mut data = Vec::new();
    let locking = sheep.view().config.flags & cluster_flag::USE_LOCK != 0;
    let me = sheep.this.nid;
    let nid_bytes = || {
        let mut b = vec![0u8; NODE_ID_SIZE];
        me.encode_into(&mut b);
        b
    };
    let res: Result<Option<Vec<u8>>, SdRes> = match req.opcode {
        op::NEW_VDI => new_vdi(sheep, req, payload, &mut rsp)
            .await
            .map(|_| Some(Vec::new())),
        op::GET_VDI_INFO => vdi_info(sheep, req, payload, &mut rsp).await.map(|_| None),
        op::LOCK_VDI => match vdi_info(sheep, req, payload, &mut rsp).await {
            Err(e) => Err(e),
            Ok(()) if !locking => Ok(None),
            Ok(()) => {
                let can = sheep
                    .view()
                    .vdis
                    .can_lock(rsp.vdi_id(), req.vdi().lock_type, &me);
                if can {
                    Ok(Some(nid_bytes()))
                } else {
                    Err(SdRes::VDI_LOCKED)
                }
            }
        },
        op::RELEASE_VDI => Ok(locking.then(nid_bytes)),
        op::DEL_VDI => del_vdi(sheep, req, payload, &mut rsp)
            .await
            .map(|_| Some(Vec::new())),
        op::GET_VDI_ATTR => vdi_attr(sheep, req, payload, &mut rsp).await.map(|_| None),
        op::FORCE_RECOVER => {
            let st = sheep.view();
            if st.status != Status::WaitForJoin {
                Err(SdRes::FORCE_RECOVER)
            } else {
                data = encode_nodes(&st.last_epoch_nodes);
                Ok(Some(Vec::new()))
            }
        }
        _ => Err(SdRes::INVALID_PARMS),
    };
    match res {
        Ok(broadcast) => WorkDone {
            rsp,
            data,
            broadcast,
        },
        Err(r) => WorkDone {
            rsp: SdRsp::for_req(req, r),
            data: Vec::new(),
            broadcast: None,
        },
    }
}

/// GET_VDI_ATTR (§5.7): find, create or delete the attribute object of
/// (name, tag, snap_id, key), probing from its hashed slot.
async fn vdi_attr(
    sheep: &Arc<Sheep>,
    req: &SdReq,
    payload: &[u8],
    rsp: &mut SdRsp,
) -> Result<(), SdRes> {
    if payload.len() < VDI_ATTR_VALUE_OFFSET || payload.len() > VDI_ATTR_SIZE {
        return Err(SdRes::INVALID_PARMS);
    }
    let (name, tag) = (cstr(&payload[..256]), cstr(&payload[256..512]));
    let snapid = req.vdi().snapid;
    let found = lookup(sheep, name, tag, snapid).await.map_err(|e| e.0)?;
    let h = read_header(sheep, found.vid)
        .await
        .map_err(|_| SdRes::VDI_READ)?;
    let mut attr = payload.to_vec();
    attr[512..520].copy_from_slice(&h.create_time.to_le_bytes());
    // The slot key: name and tag with padding, snap_id, key.
    let mut k = Vec::with_capacity(772);
    k.extend_from_slice(&payload[..512]);
    k.extend_from_slice(&payload[520..524]);
    k.extend_from_slice(&payload[528..784]);
    let first = (fnv1a(&k, FNV1A_64_INIT) & 0xFFFF_FFFF) as u32;
    let hvid = sd_hash_vdi(name);
    let copies = h.nr_copies;
    let (creat, excl, del) = (
        req.flags & flag::CMD_CREAT != 0,
        req.flags & flag::CMD_EXCL != 0,
        req.flags & flag::CMD_DEL != 0,
    );
    let mut id = first;
    loop {
        let oid = vid_to_attr_oid(hvid, id);
        if creat && !excl {
            gateway::create(sheep, oid, 0, attr, copies)
                .await
                .map_err(|_| SdRes::VDI_WRITE)?;
            break;
        }
        match gateway::read(sheep, oid, 0, VDI_ATTR_VALUE_OFFSET, copies).await {
            Err(SdRes::NO_OBJ) if creat => {
                gateway::create(sheep, oid, 0, attr, copies)
                    .await
                    .map_err(|_| SdRes::VDI_WRITE)?;
                break;
            }
            Err(r) => return Err(r),
            Ok(hdr) => {
                let same = hdr[..512] == payload[..512]
                    && hdr[520..524] == payload[520..524]
                    && hdr[528..784] == payload[528..784];
                if same {
                    if excl {
                        return Err(SdRes::VDI_EXIST);
                    } else if del {
                        gateway::write(sheep, oid, 0, vec![0], copies)
                            .await
                            .map_err(|_| SdRes::VDI_WRITE)?;
                    } else if creat {
                        gateway::create(sheep, oid, 0, attr, copies)
                            .await
                            .map_err(|_| SdRes::VDI_WRITE)?;
                    }
                    break;
                }
            }
        }
        id = id.wrapping_add(1);
        if id == first {
            return Err(SdRes::FULL_VDI);
        }
    }
    rsp.set_vdi(hvid, id, copies, h.block_size_shift);
    Ok(())
}

async fn vdi_info(
    sheep: &Arc<Sheep>,
    req: &SdReq,
    payload: &[u8],
    rsp: &mut SdRsp,
) -> Result<(), SdRes> {
    let found = lookup_request(sheep, req, payload).await?;
    let (copies, _) = sheep.view().vdi_redundancy(found.vid);
    let shift = sheep
        .object_size(vid_to_data_oid(found.vid, 0))
        .trailing_zeros() as u8;
    rsp.set_vdi(found.vid, 0, copies, shift);
    Ok(())
}

/// The data entries and grefs of the first `nr` indexes of an inode.
async fn read_entries(
    sheep: &Arc<Sheep>,
    vid: u32,
    nr: usize,
) -> Result<(Vec<u32>, Vec<Gref>), SdRes> {
    if nr == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let oid = vid_to_vdi_oid(vid);
    let e = gateway::read(sheep, oid, DATA_VDI_ID_OFFSET as u32, nr * 4, 0).await?;
    let g = gateway::read(sheep, oid, GREF_OFFSET as u32, nr * 8, 0).await?;
    let entries = e
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let grefs = g
        .chunks_exact(8)
        .map(|c| Gref {
            generation: u32::from_le_bytes(c[..4].try_into().unwrap()),
            count: u32::from_le_bytes(c[4..].try_into().unwrap()),
        })
        .collect();
    Ok((entries, grefs))
}

fn encode_grefs(g: &[Gref]) -> Vec<u8> {
    g.iter()
        .flat_map(|g| {
            g.generation
                .to_le_bytes()
                .into_iter()
                .chain(g.count.to_le_bytes())
        })
        .collect()
}

/// NEW_VDI (§6.2): a fresh VDI, a clone of `base_vdi_id`, or (with
/// `snapid`) a snapshot of the working VDI, whose vid becomes the
/// read-only snapshot while the new vid becomes the writable VDI.
async fn new_vdi(
    sheep: &Arc<Sheep>,
    req: &SdReq,
    payload: &[u8],
    rsp: &mut SdRsp,
) -> Result<(), SdRes> {
    if payload.len() != SD_MAX_VDI_LEN {
        return Err(SdRes::INVALID_PARMS);
    }
    let name = cstr(payload);
    if name.is_empty() {
        return Err(SdRes::INVALID_PARMS);
    }
    let v = req.vdi();
    let t = now_ctime();
    let (free_bit, snap_id, base, snapshotted) = if v.snapid != 0 {
        let cur = lookup(sheep, name, &[], 0).await.map_err(|e| e.0)?;
        let cur_h = read_header(sheep, cur.vid)
            .await
            .map_err(|_| SdRes::BASE_VDI_READ)?;
        if cur_h.store_policy != 0 {
            // A hyper volume's objects carry no reference counts, so no
            // other VDI may share them (the original let this through and
            // left both VDIs writing the same objects).
            return Err(SdRes::NO_SUPPORT);
        }
        let base = if v.base_vdi_id == 0 {
            cur.vid
        } else {
            v.base_vdi_id
        };
        // The working VDI becomes a snapshot.
        gateway::write(
            sheep,
            vid_to_vdi_oid(cur.vid),
            520,
            t.to_le_bytes().to_vec(),
            0,
        )
        .await
        .map_err(|_| SdRes::BASE_VDI_WRITE)?;
        (cur.free_bit, cur_h.snap_id + 1, base, cur.vid)
    } else {
        let found = match lookup(sheep, name, &[], 0).await {
            Ok(_) => return Err(SdRes::VDI_EXIST),
            Err((SdRes::NO_VDI, l)) => l,
            Err((r, _)) => return Err(r),
        };
        (found.free_bit, found.next_snapid.max(1), v.base_vdi_id, 0)
    };

    let view = sheep.view();
    let base_h = match base {
        0 => None,
        b => Some(
            read_header(sheep, b)
                .await
                .map_err(|_| SdRes::BASE_VDI_READ)?,
        ),
    };
    if base_h.as_ref().is_some_and(|b| b.store_policy != 0) {
        return Err(SdRes::NO_SUPPORT);
    }
    let (mut copies, mut policy) = (v.copies, v.copy_policy);
    if copies == 0 {
        (copies, policy) = match &base_h {
            Some(h) => (h.nr_copies, h.copy_policy),
            None => (view.config.copies, view.config.copy_policy),
        };
    }
    if let Some((d, p)) = policy::decode(policy) {
        copies = d + p;
    }
    if copies == 0 || copies > SD_MAX_COPIES {
        return Err(SdRes::INVALID_PARMS);
    }
    let shift = match (&base_h, v.block_size_shift) {
        (Some(h), _) => h.block_size_shift,
        (None, 0) => view.config.block_size_shift,
        (None, s) => s,
    };
    if !(20..=31).contains(&shift) {
        return Err(SdRes::INVALID_PARMS);
    }
    let vid = free_bit;
    let mut h = InodeHeader {
        create_time: t,
        vdi_size: if v.vdi_size == 0 {
            base_h.as_ref().map_or(0, |b| b.vdi_size)
        } else {
            v.vdi_size
        },
        copy_policy: policy,
        store_policy: base_h.as_ref().map_or(v.store_policy, |b| b.store_policy),
        nr_copies: copies,
        block_size_shift: shift,
        snap_id,
        vdi_id: vid,
        parent_vdi_id: base,
        ..Default::default()
    };
    h.name = le::fixed_str::<256>(name);
    let mut body = h.encode();
    let mut child_grefs = Vec::new();
    if let Some(bh) = &base_h {
        // Every object the base references gains one inheriting child.
        let nr = bh.nr_objects().min(SD_INODE_DATA_INDEX as u64) as usize;
        let (entries, mut grefs) = read_entries(sheep, base, nr)
            .await
            .map_err(|_| SdRes::BASE_VDI_READ)?;
        child_grefs = vec![Gref::default(); entries.len()];
        for (i, &e) in entries.iter().enumerate() {
            if e != 0 {
                grefs[i].count += 1;
                child_grefs[i].generation = grefs[i].generation + 1;
            }
        }
        if entries.iter().any(|&e| e != 0) {
            gateway::write(
                sheep,
                vid_to_vdi_oid(base),
                GREF_OFFSET as u32,
                encode_grefs(&grefs),
                0,
            )
            .await
            .map_err(|_| SdRes::BASE_VDI_WRITE)?;
        }
        body.extend(entries.iter().flat_map(|e| e.to_le_bytes()));
    } else if h.store_policy != 0 {
        body.extend(HyperIndex::empty_root());
    }
    gateway::create(sheep, vid_to_vdi_oid(vid), 0, body, copies)
        .await
        .map_err(|e| {
            tracing::error!("failed to create the inode of {vid:x}: {}", e.describe());
            SdRes::VDI_WRITE
        })?;
    if child_grefs.iter().any(|g| g.generation != 0) {
        gateway::write(
            sheep,
            vid_to_vdi_oid(vid),
            GREF_OFFSET as u32,
            encode_grefs(&child_grefs),
            copies,
        )
        .await
        .map_err(|_| SdRes::VDI_WRITE)?;
    }
    crate::state::NewVdiOutcome {
        vid,
        copies,
        copy_policy: policy,
        block_size_shift: shift,
        parent: base,
        snapshotted,
    }
    .write_into(rsp);
    Ok(())
}

async fn del_vdi(
    sheep: &Arc<Sheep>,
    req: &SdReq,
    payload: &[u8],
    rsp: &mut SdRsp,
) -> Result<(), SdRes> {
    let found = lookup_request(sheep, req, payload).await?;
    let vid = found.vid;
    let ino_oid = vid_to_vdi_oid(vid);
    let h = read_header(sheep, vid).await.map_err(|_| SdRes::VDI_READ)?;
    let nr = h.nr_objects().min(SD_INODE_DATA_INDEX as u64) as usize;
    if h.store_policy != 0 {
        remove_hyper_objects(sheep, vid).await?;
    } else if nr > 0 {
        // Unlike the original (which left such a VDI in place), release
        // what the clients did not: every entry still set is dropped
        // through the same reference path as a client's inode write.
        let entries = gateway::read(sheep, ino_oid, DATA_VDI_ID_OFFSET as u32, nr * 4, 0)
            .await
            .map_err(|_| SdRes::VDI_READ)?;
        if let Some(first) = entries.chunks_exact(4).position(|c| c != [0; 4]) {
            let last = entries.chunks_exact(4).rposition(|c| c != [0; 4]).unwrap();
            let zeros = vec![0u8; (last - first + 1) * 4];
            gateway::write(
                sheep,
                ino_oid,
                data_vdi_id_offset(first as u32) as u32,
                zeros,
                0,
            )
            .await
            .map_err(|_| SdRes::VDI_WRITE)?;
        }
    }
    remove_vmstate(sheep, &h).await;
    let mut cleared = h.clone();
    cleared.name = [0; 256];
    cleared.vdi_size = 0;
    gateway::create(sheep, ino_oid, 0, cleared.encode(), 0)
        .await
        .map_err(|_| SdRes::VDI_WRITE)?;
    remove_dead_family(sheep, vid).await;
    rsp.set_vdi(vid, 0, h.nr_copies, h.block_size_shift);
    Ok(())
}

/// Removes the VM state a VDI holds (QEMU's `savevm`, §6.5): objects
/// `vid_to_vmstate_oid(vid, i)` written from index 0 on. The header's
/// `vm_state_size` says how many a completed savevm left; an interrupted
/// one may have left more without recording them, so removal goes on
/// until an index has no object.
async fn remove_vmstate(sheep: &Arc<Sheep>, h: &InodeHeader) {
    let recorded = h.vm_state_size.div_ceil(h.object_size());
    for i in 0..u32::MAX {
        let oid = vid_to_vmstate_oid(h.vdi_id, i);
        match gateway::remove(sheep, oid, 0).await {
            Ok(()) => {}
            Err(SdRes::NO_OBJ) if u64::from(i) >= recorded => return,
            Err(SdRes::NO_OBJ) => {}
            Err(e) => {
                tracing::error!("failed to remove VM state {oid:016x}: {}", e.describe());
                return;
            }
        }
    }
}

/// Removes what a hyper volume owns: the data objects its B-tree records
/// and every btree object its counter ever named (including leaves an
/// interrupted split left unreferenced). Its objects are never shared
/// (NEW_VDI refuses hyper bases), so no reference counts are involved.
async fn remove_hyper_objects(sheep: &Arc<Sheep>, vid: u32) -> Result<(), SdRes> {
    use futures::StreamExt;
    let mut ex = crate::nbd::InProcess(sheep.clone());
    let inode = sd_client::vdi::read_inode(&mut ex, vid)
        .await
        .map_err(|e| {
            tracing::error!("cannot read the index of hyper volume {vid:x}: {e}");
            SdRes::VDI_READ
        })?;
    let mut oids: Vec<u64> = inode
        .allocated(u64::MAX)
        .filter(|&(_, owner)| owner == vid)
        .map(|(idx, _)| vid_to_data_oid(vid, idx))
        .collect();
    oids.extend((0..inode.header.btree_counter).map(|id| vid_to_btree_oid(vid, id)));
    let failed = futures::stream::iter(oids)
        .map(|oid| async move {
            match gateway::remove(sheep, oid, 0).await {
                Ok(()) | Err(SdRes::NO_OBJ) => false,
                Err(e) => {
                    tracing::error!("failed to remove {oid:016x}: {}", e.describe());
                    true
                }
            }
        })
        .buffer_unordered(16)
        .filter(|&f| std::future::ready(f))
        .count()
        .await;
    if failed > 0 {
        return Err(SdRes::EIO);
    }
    Ok(())
}

/// Once every VDI of a family (a root and all its descendants) is deleted,
/// nothing can reference their inodes or objects any more: the inodes go,
/// so deleting everything leaves no object behind. While any member lives,
/// all inodes stay, which keeps their vids (and the objects named after
/// them) from being reused after a restart.
async fn remove_dead_family(sheep: &Arc<Sheep>, deleting: u32) {
    let family: Vec<u32> = {
        let st = sheep.view();
        let members = st.vdis.family(deleting);
        let dead = members
            .iter()
            .all(|&m| m == deleting || st.vdis.states[&m].deleted);
        if dead {
            members
        } else {
            Vec::new()
        }
    };
    for m in family {
        match gateway::remove(sheep, vid_to_vdi_oid(m), 0).await {
            Ok(()) | Err(SdRes::NO_OBJ) => {}
            Err(e) => tracing::error!(
                "failed to remove the inode of deleted VDI {m:x}: {}",
                e.describe()
            ),
        }
    }
}

/// Builds the VDI table from the inode objects this node stores.
pub fn scan_local_inodes(store: &dyn ObjectStore, t: &mut VdiTable) {
    // Stale copies count too: a node that crashed while recovering may
    // hold a VDI's inode only there, and if every holder did, a scan of
    // working copies alone would lose the VDI from the cluster's table.
    let working = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|k| (k, None));
    let stale = store
        .list_stale()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, e)| (k, Some(e)));
    for (k, epoch) in working
        .chain(stale)
        .filter(|(k, _)| is_vdi_obj(k.oid) && k.ec_index.is_none())
    {
        let b = match epoch {
            None => store.read(&k, 0, INODE_FIELDS_SIZE),
            Some(e) => store.read_stale(&k, e, 0, INODE_FIELDS_SIZE),
        };
        if let Some(h) = b.ok().and_then(|b| InodeHeader::decode(&b)) {
            t.add(VdiState {
                vid: oid_to_vid(k.oid),
                nr_copies: h.nr_copies,
                snapshot: h.is_snapshot(),
                deleted: h.is_deleted(),
                copy_policy: h.copy_policy,
                block_size_shift: h.block_size_shift,
                parent_vid: h.parent_vdi_id,
                ..Default::default()
            });
        }
    }
}

/// How long a query to a peer (its VDI table, an epoch) may take: an
/// unreachable or partitioned peer must not stall the caller.
const PEER_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `node` (through the peer transport) for the payload of `req`,
/// growing the buffer on BUFFER_SMALL; None if it does not answer in
/// [`PEER_QUERY_TIMEOUT`] or answers an error.
async fn query(sheep: &Sheep, node: &SdNode, mut req: SdReq) -> Option<Vec<u8>> {
    let asked = async {
        loop {
            let (rsp, data) = sheep.send_peer(node.nid.socket_addr(), &req, &[]).await;
            match rsp.result {
                SdRes::SUCCESS => return Some(data),
                SdRes::BUFFER_SMALL if req.data_length < SD_MAX_DATA_LENGTH / 2 => {
                    req.data_length *= 2
                }
                _ => return None,
            }
        }
    };
    crate::clock::timeout(&*sheep.clock, PEER_QUERY_TIMEOUT, asked)
        .await
        .flatten()
}

fn table_req(opcode: u8, len: usize) -> SdReq {
    let mut r = SdReq::new(opcode);
    r.data_length = len as u32;
    r
}

/// Merges another node's VDI table into ours (after a join, both ways).
/// Its VDI states are the whole table (every in-use vid has one, with its
/// deleted flag), so the 2 MiB bitmaps are not fetched: and READ_VDIS,
/// which waits for this node's own merges, is never asked by a peer.
pub async fn sync_vdis_from(sheep: &Arc<Sheep>, node: &SdNode) -> bool {
    let Some(states) = query(sheep, node, table_req(op::GET_VDI_COPIES, 1 << 20)).await else {
        tracing::warn!(
            "could not fetch the VDI table of {}",
            node.nid.socket_addr()
        );
        return false;
    };
    let states = states
        .chunks_exact(VDI_STATE_SIZE)
        .filter_map(VdiState::decode)
        .collect();
    sheep.core.merge_vdis(states);
    true
}

/// Members and creation time of `epoch`: from our epoch file, else from
/// any member that has it.
pub async fn epoch_nodes(sheep: &Arc<Sheep>, epoch: u32) -> Option<(Vec<SdNode>, u64)> {
    if let Ok(Some(e)) = sheep.store.read_epoch(epoch) {
        return Some(e);
    }
    let view = sheep.view();
    for n in view.nodes.iter().filter(|n| n.nid != sheep.this.nid) {
        let mut r = table_req(op::GET_EPOCH, SD_MAX_NODES * SD_NODE_SIZE + 8);
        r.set_obj(ObjArgs {
            tgt_epoch: epoch,
            ..Default::default()
        });
        match query(sheep, n, r).await {
            Some(data) if data.len() >= 8 => {
                let (nb, t) = data.split_at(data.len() - 8);
                let time = u64::from_le_bytes(t.try_into().unwrap());
                let _ = sheep.store.write_epoch(epoch, &decode_nodes(nb), time);
                return Some((decode_nodes(nb), time));
            }
            _ => continue,
        }
    }
    None
}
