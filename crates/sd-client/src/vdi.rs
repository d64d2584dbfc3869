//! The VDI-level client path shared by dog, the NBD server and tests:
//! looking a VDI up, reading its inode, reading and writing byte ranges with
//! the client-side copy-on-write of PROTOCOL.md §6.1, and the few cluster
//! queries every client needs (node list, cluster info, epoch log).
//!
//! Everything here is generic over [`Exchange`], the one request/response
//! round trip. A plain [`Connection`] is an `Exchange`; dog wraps its
//! connections in one that also prints the original's network diagnostics.
//! Keeping the protocol logic on this side of that seam means there is one
//! copy-on-write implementation, whoever sends the bytes.

use crate::conn::{ClientError, Connection, Result};
use sd_proto::*;
use std::future::Future;

/// One request/response exchange with a sheep.
///
/// `req.data_length` is set by the caller (payload length for writes, reply
/// buffer size for reads), exactly as for [`Connection::exec`]. A
/// non-success result is returned in the response, not as an error.
pub trait Exchange {
    fn exec(
        &mut self,
        req: &SdReq,
        payload: &[u8],
    ) -> impl Future<Output = Result<(SdRsp, Vec<u8>)>> + Send;
}

impl Exchange for Connection {
    fn exec(
        &mut self,
        req: &SdReq,
        payload: &[u8],
    ) -> impl Future<Output = Result<(SdRsp, Vec<u8>)>> + Send {
        Connection::exec(self, req, payload)
    }
}

/// Runs `req` and turns a non-success result into [`ClientError::Res`].
pub async fn exec_ok<E: Exchange>(
    ex: &mut E,
    req: &SdReq,
    payload: &[u8],
) -> Result<(SdRsp, Vec<u8>)> {
    let (rsp, data) = ex.exec(req, payload).await?;
    if !rsp.result.is_success() {
        return Err(ClientError::Res(rsp.result));
    }
    Ok((rsp, data))
}

/// Errors of the VDI data path. Object failures name the object, because
/// that is what dog reports (`Failed to read object <oid> <res>`).
#[derive(Debug, thiserror::Error)]
pub enum VdiError {
    /// Reading a data or inode object failed.
    #[error("failed to read object {oid:016x}: {source}")]
    Read { oid: u64, source: ClientError },
    /// Writing (or creating) a data object failed.
    #[error("failed to write object {oid:016x}: {source}")]
    Write { oid: u64, source: ClientError },
    /// Writing `data_vdi_id` entries into the inode failed.
    #[error("failed to update inode {oid:016x}: {source}")]
    UpdateIndex { oid: u64, source: ClientError },
    /// A hyper volume's B-tree node is corrupt, or the index cannot
    /// take the entry.
    #[error("index of {oid:016x}: {source}")]
    Index { oid: u64, source: BtreeError },
    /// The range does not lie inside the VDI.
    #[error("range {offset}+{len} is outside a VDI of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

impl VdiError {
    /// The result code to report for this failure.
    pub fn res(&self) -> SdRes {
        match self {
            VdiError::Read { source, .. }
            | VdiError::Write { source, .. }
            | VdiError::UpdateIndex { source, .. } => source.res(),
            VdiError::Index { .. } => SdRes::EIO,
            VdiError::OutOfRange { .. } => SdRes::INVALID_PARMS,
        }
    }
}

/// Copies `s` into a zero-padded field of `N` bytes, truncated to `N - 1`
/// bytes so it stays NUL-terminated (the original's `pstrcpy`).
fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = s.len().min(N - 1);
    b[..n].copy_from_slice(&s[..n]);
    b
}

/// The name payload of GET_VDI_INFO / DEL_VDI: 256 bytes of name, plus 256
/// bytes of tag when a tag is given (dog always sends the 512-byte form).
pub fn vdi_name_payload(name: &[u8], tag: Option<&[u8]>) -> Vec<u8> {
    let mut v = padded::<SD_MAX_VDI_LEN>(name).to_vec();
    if let Some(t) = tag {
        v.extend_from_slice(&padded::<SD_MAX_VDI_TAG_LEN>(t));
    }
    v
}

/// Looks a VDI up by name, optional tag and snapshot id (0 = the working
/// VDI) with GET_VDI_INFO and returns its vid.
pub async fn lookup_vdi<E: Exchange>(
    ex: &mut E,
    name: &[u8],
    tag: Option<&[u8]>,
    snapid: u32,
) -> Result<u32> {
    let payload = vdi_name_payload(name, tag);
    let mut req = SdReq::new(op::GET_VDI_INFO);
    req.flags = flag::CMD_WRITE;
    req.data_length = payload.len() as u32;
    req.set_vdi(VdiArgs {
        snapid,
        ..Default::default()
    });
    let (rsp, _) = exec_ok(ex, &req, &payload).await?;
    Ok(rsp.vdi_id())
}

/// Reads `len` bytes at `offset` of object `oid`. `copies` and
/// `copy_policy` tell the gateway the object's redundancy (0 = the VDI's).
pub async fn read_object<E: Exchange>(
    ex: &mut E,
    oid: u64,
    offset: u32,
    len: u32,
    redundancy: Redundancy,
    flags: u16,
) -> std::result::Result<Vec<u8>, VdiError> {
    let mut req = SdReq::new(op::READ_OBJ);
    req.flags = flags;
    req.data_length = len;
    req.set_obj(ObjArgs {
        oid,
        offset,
        copies: redundancy.copies,
        copy_policy: redundancy.copy_policy,
        ..Default::default()
    });
    let (_, mut data) = exec_ok(ex, &req, &[])
        .await
        .map_err(|source| VdiError::Read { oid, source })?;
    // A short reply would desynchronise nothing (the framing carries the
    // length) but callers expect exactly what they asked for.
    data.resize(len as usize, 0);
    Ok(data)
}

/// How a write request should create its object.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteKind {
    /// WRITE_OBJ on an existing object.
    Overwrite,
    /// CREATE_AND_WRITE_OBJ of a fresh (zero-filled) object.
    Create,
    /// CREATE_AND_WRITE_OBJ filled first from `cow_oid`.
    CopyOnWrite { cow_oid: u64 },
}

/// The redundancy fields object requests carry (`obj.copies`,
/// `obj.copy_policy`), taken from the inode of the VDI the object
/// belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Redundancy {
    pub copies: u8,
    pub copy_policy: u8,
}

impl Redundancy {
    pub fn of(h: &InodeHeader) -> Self {
        Redundancy {
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
        }
    }
}

/// Writes `data` at `offset` of object `oid` (WRITE flag added here).
pub async fn write_object<E: Exchange>(
    ex: &mut E,
    oid: u64,
    kind: WriteKind,
    offset: u32,
    data: &[u8],
    redundancy: Redundancy,
    flags: u16,
) -> Result<()> {
    let (opcode, cow_oid, cow_flag) = match kind {
        WriteKind::Overwrite => (op::WRITE_OBJ, 0, 0),
        WriteKind::Create => (op::CREATE_AND_WRITE_OBJ, 0, 0),
        WriteKind::CopyOnWrite { cow_oid } => (op::CREATE_AND_WRITE_OBJ, cow_oid, flag::CMD_COW),
    };
    let mut req = SdReq::new(opcode);
    req.flags = flags | flag::CMD_WRITE | cow_flag;
    req.data_length = data.len() as u32;
    req.set_obj(ObjArgs {
        oid,
        cow_oid,
        offset,
        copies: redundancy.copies,
        copy_policy: redundancy.copy_policy,
        ..Default::default()
    });
    exec_ok(ex, &req, data).await.map(|_| ())
}

/// Reads the 4664-byte inode header of `vid`.
pub async fn read_inode_header<E: Exchange>(
    ex: &mut E,
    vid: u32,
) -> std::result::Result<InodeHeader, VdiError> {
    let oid = vid_to_vdi_oid(vid);
    let b = read_object(
        ex,
        oid,
        0,
        SD_INODE_HEADER_SIZE as u32,
        Redundancy::default(),
        flag::CMD_DIRECT,
    )
    .await?;
    // read_object pads to the requested length, which exceeds the fields.
    Ok(InodeHeader::decode(&b).expect("header buffer is 4664 bytes"))
}

/// Number of index entries that cover a VDI: one per object of
/// `vdi_size`, for a plain VDI capped at the array size (what the
/// original's `count_data_objs` bounds every index walk by).
pub fn nr_index_entries(h: &InodeHeader) -> u64 {
    let shift = h.block_size_shift.min(63);
    let n = h.vdi_size.div_ceil(1u64 << shift);
    if h.store_policy == 0 {
        n.min(SD_INODE_DATA_INDEX as u64)
    } else {
        n
    }
}

/// Reads what a client needs of an inode: the header and the object
/// index (the `data_vdi_id` entries that cover the VDI, or a hyper
/// volume's B-tree), not the reference counts. Entries beyond the VDI size
/// read as 0.
pub async fn read_inode<E: Exchange>(ex: &mut E, vid: u32) -> std::result::Result<Inode, VdiError> {
    let mut inode = Inode::new(read_inode_header(ex, vid).await?);
    read_index_into(ex, &mut inode).await?;
    Ok(inode)
}

/// Reads a node of a hyper volume's B-tree at `offset` of `oid`: its
/// header first, then as much as the header says it uses.
async fn read_node<E: Exchange>(
    ex: &mut E,
    oid: u64,
    offset: u32,
) -> std::result::Result<Vec<u8>, VdiError> {
    let direct = flag::CMD_DIRECT;
    let head = read_object(
        ex,
        oid,
        offset,
        btree::NODE_HEADER_SIZE as u32,
        Redundancy::default(),
        direct,
    )
    .await?;
    let h = btree::NodeHeader::decode(&head).expect("header-sized read");
    if h.is_uninitialised() {
        return Ok(head);
    }
    let len = h
        .used_len()
        .map_err(|source| VdiError::Index { oid, source })?;
    read_object(ex, oid, offset, len as u32, Redundancy::default(), direct).await
}

/// Fills the object index of `inode` for the VDI its header describes:
/// for a plain VDI only the `data_vdi_id` entries that cover the VDI (the
/// rest are zeroed), for a hyper volume the root and every leaf of its
/// B-tree. Lets a caller that walks many VDIs reuse one 4 MiB buffer.
pub async fn read_index_into<E: Exchange>(
    ex: &mut E,
    inode: &mut Inode,
) -> std::result::Result<(), VdiError> {
    let ino_oid = vid_to_vdi_oid(inode.header.vdi_id);
    if inode.header.store_policy != 0 {
        let bad = |source| VdiError::Index {
            oid: ino_oid,
            source,
        };
        let root =
            btree::RootNode::decode(&read_node(ex, ino_oid, DATA_VDI_ID_OFFSET as u32).await?)
                .map_err(bad)?;
        let mut leaves = Vec::new();
        if let btree::RootNode::Indirect(ptrs) = &root {
            for &(_, oid) in ptrs {
                let b = read_node(ex, oid, 0).await?;
                leaves.push(
                    btree::decode_leaf(&b).map_err(|source| VdiError::Index { oid, source })?,
                );
            }
        }
        inode.hyper =
            Some(HyperIndex::assemble(root, leaves, btree::Limits::ORIGINAL).map_err(bad)?);
        return Ok(());
    }
    inode.hyper = None;
    let n = nr_index_entries(&inode.header);
    inode.data_vdi_id.clear();
    inode.data_vdi_id.resize(n as usize, 0);
    if n > 0 {
        let entries = read_object(
            ex,
            ino_oid,
            DATA_VDI_ID_OFFSET as u32,
            4 * n as u32,
            Redundancy::default(),
            flag::CMD_DIRECT,
        )
        .await?;
        for (e, c) in inode.data_vdi_id.iter_mut().zip(entries.chunks_exact(4)) {
            *e = u32::from_le_bytes(c.try_into().unwrap());
        }
    }
    Ok(())
}

/// Reads the whole 12,587,576-byte inode (index and reference counts).
pub async fn read_inode_full<E: Exchange>(
    ex: &mut E,
    vid: u32,
) -> std::result::Result<Inode, VdiError> {
    let b = read_object(
        ex,
        vid_to_vdi_oid(vid),
        0,
        SD_INODE_SIZE as u32,
        Redundancy::default(),
        flag::CMD_DIRECT,
    )
    .await?;
    Ok(Inode::decode(&b).expect("full inode buffer"))
}

/// One object-sized piece of a byte range of a VDI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Chunk {
    /// Data object index.
    pub idx: u64,
    /// Byte offset inside the object.
    pub offset: u32,
    /// Bytes in this piece.
    pub len: u32,
    /// Offset of this piece in the caller's buffer.
    pub buf_offset: usize,
}

/// Splits `len` bytes at VDI offset `offset` into per-object pieces for
/// objects of `1 << shift` bytes.
pub fn split_range(offset: u64, len: u64, shift: u8) -> impl Iterator<Item = Chunk> {
    let obj = 1u64 << shift;
    let end = offset.saturating_add(len);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_obj = pos % obj;
        let n = (obj - in_obj).min(end - pos);
        let c = Chunk {
            idx: pos / obj,
            offset: in_obj as u32,
            len: n as u32,
            buf_offset: (pos - offset) as usize,
        };
        pos += n;
        Some(c)
    })
}

/// The vid owning object `idx`, 0 when not allocated or beyond the index.
pub fn entry(inode: &Inode, idx: u64) -> u32 {
    inode.get_vid(idx)
}

/// What a write to index `idx` of the working VDI must do (§6.1): its own
/// object is overwritten, a missing one created, an inherited one copied.
pub fn write_kind(inode: &Inode, idx: u64) -> WriteKind {
    let e = entry(inode, idx);
    if e == inode.header.vdi_id {
        WriteKind::Overwrite
    } else if e == 0 {
        WriteKind::Create
    } else {
        WriteKind::CopyOnWrite {
            cow_oid: vid_to_data_oid(e, idx),
        }
    }
}

fn check_range(inode: &Inode, offset: u64, len: u64) -> std::result::Result<(), VdiError> {
    let size = inode.header.vdi_size;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(VdiError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset` of the VDI described by `inode`.
/// Unallocated objects read as zeros without a request.
pub async fn read_range<E: Exchange>(
    ex: &mut E,
    inode: &Inode,
    offset: u64,
    buf: &mut [u8],
    flags: u16,
) -> std::result::Result<(), VdiError> {
    check_range(inode, offset, buf.len() as u64)?;
    let red = Redundancy::of(&inode.header);
    for c in split_range(offset, buf.len() as u64, inode.header.block_size_shift) {
        let dst = &mut buf[c.buf_offset..c.buf_offset + c.len as usize];
        match entry(inode, c.idx) {
            0 => dst.fill(0),
            e => {
                let oid = vid_to_data_oid(e, c.idx);
                dst.copy_from_slice(&read_object(ex, oid, c.offset, c.len, red, flags).await?);
            }
        }
    }
    Ok(())
}

/// Persists the index changes made with [`Inode::set_vid`] since the
/// last call, in the order [`Inode::take_index_writes`] gives. For a plain
/// VDI the server releases the references of replaced entries (§6.4), so
/// only entries that changed may have been set.
///
/// If a write fails, `inode` is reloaded from the cluster (best effort),
/// so that it never claims an allocation the stored index lacks.
pub async fn write_index_changes<E: Exchange>(
    ex: &mut E,
    inode: &mut Inode,
    flags: u16,
) -> std::result::Result<(), VdiError> {
    let writes = inode.take_index_writes();
    let r = apply_index_writes(ex, writes, Redundancy::of(&inode.header), flags).await;
    if r.is_err() {
        if let Ok(fresh) = read_inode(ex, inode.header.vdi_id).await {
            *inode = fresh;
        }
    }
    r
}

/// Sends the writes [`Inode::take_index_writes`] returned, in order,
/// stopping at the first failure.
pub async fn apply_index_writes<E: Exchange>(
    ex: &mut E,
    writes: Vec<IndexWrite>,
    redundancy: Redundancy,
    flags: u16,
) -> std::result::Result<(), VdiError> {
    for w in writes {
        let kind = match w.create {
            true => WriteKind::Create,
            false => WriteKind::Overwrite,
        };
        write_object(ex, w.oid, kind, w.offset, &w.data, redundancy, flags)
            .await
            .map_err(|source| VdiError::UpdateIndex { oid: w.oid, source })?;
    }
    Ok(())
}

/// Writes the entries `data_vdi_id[first..=last]` of a plain VDI's
/// `inode` into its inode object as they are in memory (WRITE_OBJ at
/// `4664 + 4*first`): the batched release of `vdi delete`. The server
/// releases the references of replaced entries (§6.4).
pub async fn write_index<E: Exchange>(
    ex: &mut E,
    inode: &Inode,
    first: u32,
    last: u32,
    flags: u16,
) -> std::result::Result<(), VdiError> {
    let oid = vid_to_vdi_oid(inode.header.vdi_id);
    write_object(
        ex,
        oid,
        WriteKind::Overwrite,
        data_vdi_id_offset(first) as u32,
        &inode.encode_entries(first, last + 1),
        Redundancy::of(&inode.header),
        flags,
    )
    .await
    .map_err(|source| VdiError::UpdateIndex { oid, source })
}

/// Records `idx → vid` in `inode` and persists it.
pub async fn set_entry<E: Exchange>(
    ex: &mut E,
    inode: &mut Inode,
    idx: u64,
    vid: u32,
    flags: u16,
) -> std::result::Result<(), VdiError> {
    let oid = vid_to_vdi_oid(inode.header.vdi_id);
    inode
        .set_vid(idx, vid)
        .map_err(|source| VdiError::Index { oid, source })?;
    write_index_changes(ex, inode, flags).await
}

/// Reloads the working VDI by name after a write found `inode`'s VDI
/// read-only (it was snapshotted behind the client's back, PROTOCOL.md
/// §6.1): GET_VDI_INFO by the inode's name, then its inode. `Ok(false)`
/// when the name still resolves to the same VDI, i.e. there is nothing
/// newer to write to.
pub async fn reload_working_vdi<E: Exchange>(
    ex: &mut E,
    inode: &mut Inode,
) -> std::result::Result<bool, VdiError> {
    let oid = vid_to_vdi_oid(inode.header.vdi_id);
    let vid = lookup_vdi(ex, inode.header.name_bytes(), None, 0)
        .await
        .map_err(|source| VdiError::Read { oid, source })?;
    if vid == inode.header.vdi_id {
        return Ok(false);
    }
    *inode = read_inode(ex, vid).await?;
    Ok(true)
}

/// How many times a write follows a working VDI that keeps being
/// snapshotted under it before the READONLY error is returned.
const READONLY_RETRIES: usize = 8;

/// Writes `data` at `offset` of the working VDI described by `inode` with
/// copy-on-write (§6.1), then records the objects it created in the
/// inode's index. `inode` is updated to match.
///
/// If a data write answers READONLY, the VDI became a snapshot behind the
/// client's back (QEMU's case): the objects already created are recorded
/// in that VDI (their names make it their owner), the working VDI is
/// reloaded by name into `inode`, and the whole range is written again,
/// copying on write from the snapshot.
pub async fn write_range<E: Exchange>(
    ex: &mut E,
    inode: &mut Inode,
    offset: u64,
    data: &[u8],
    flags: u16,
) -> std::result::Result<(), VdiError> {
    check_range(inode, offset, data.len() as u64)?;
    let mut retries = 0;
    loop {
        let vid = inode.header.vdi_id;
        let red = Redundancy::of(&inode.header);
        let mut readonly = None;
        for c in split_range(offset, data.len() as u64, inode.header.block_size_shift) {
            let kind = write_kind(inode, c.idx);
            let oid = vid_to_data_oid(vid, c.idx);
            let piece = &data[c.buf_offset..c.buf_offset + c.len as usize];
            match write_object(ex, oid, kind, c.offset, piece, red, flags).await {
                Ok(()) => {}
                Err(ClientError::Res(SdRes::READONLY)) if retries < READONLY_RETRIES => {
                    readonly = Some(oid);
                    break;
                }
                Err(source) => return Err(VdiError::Write { oid, source }),
            }
            if kind != WriteKind::Overwrite {
                let ino = vid_to_vdi_oid(vid);
                inode
                    .set_vid(c.idx, vid)
                    .map_err(|source| VdiError::Index { oid: ino, source })?;
            }
        }
        write_index_changes(ex, inode, flags).await?;
        let Some(oid) = readonly else {
            return Ok(());
        };
        if !reload_working_vdi(ex, inode).await? {
            return Err(VdiError::Write {
                oid,
                source: ClientError::Res(SdRes::READONLY),
            });
        }
        check_range(inode, offset, data.len() as u64)?;
        retries += 1;
    }
}

/// What NEW_VDI creates (PROTOCOL.md §6.2): a fresh VDI, a clone of
/// `base_vid`, or (with `snapshot`) a snapshot of the working VDI
/// `base_vid` / a rebase of the working VDI onto `base_vid`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NewVdi {
    pub size: u64,
    pub base_vid: u32,
    pub snapshot: bool,
    /// 0 = cluster default (copies and policy).
    pub copies: u8,
    pub copy_policy: u8,
    pub store_policy: u8,
    /// 0 = cluster default.
    pub block_size_shift: u8,
}

impl NewVdi {
    /// A VDI shaped like `h` (size and redundancy), derived from `base_vid`.
    pub fn like(h: &InodeHeader, base_vid: u32, snapshot: bool) -> Self {
        NewVdi {
            size: h.vdi_size,
            base_vid,
            snapshot,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            store_policy: h.store_policy,
            block_size_shift: h.block_size_shift,
        }
    }
}

/// NEW_VDI named `name`; returns the new vid. A refusal is
/// [`ClientError::Res`].
pub async fn new_vdi<E: Exchange>(ex: &mut E, name: &[u8], v: &NewVdi) -> Result<u32> {
    let payload = vdi_name_payload(name, None);
    let mut req = SdReq::new(op::NEW_VDI);
    req.flags = flag::CMD_WRITE;
    req.data_length = payload.len() as u32;
    req.set_vdi(VdiArgs {
        vdi_size: v.size,
        base_vdi_id: v.base_vid,
        copies: v.copies,
        copy_policy: v.copy_policy,
        store_policy: v.store_policy,
        block_size_shift: v.block_size_shift,
        snapid: v.snapshot as u32,
        ..Default::default()
    });
    let (rsp, _) = exec_ok(ex, &req, &payload).await?;
    Ok(rsp.vdi_id())
}

/// DEL_VDI of `name` (working VDI, or the snapshot `tag` / `snapid`).
/// The caller releases the index entries first (§6.3).
pub async fn del_vdi<E: Exchange>(ex: &mut E, name: &[u8], tag: &[u8], snapid: u32) -> Result<()> {
    let payload = vdi_name_payload(name, Some(tag));
    let mut req = SdReq::new(op::DEL_VDI);
    req.flags = flag::CMD_WRITE;
    req.data_length = payload.len() as u32;
    req.set_vdi(VdiArgs {
        snapid,
        ..Default::default()
    });
    exec_ok(ex, &req, &payload).await.map(|_| ())
}

/// Fetches the node list (GET_NODE_LIST with room for the maximum number
/// of nodes), in the order the server sends it.
pub async fn get_node_list<E: Exchange>(ex: &mut E) -> Result<Vec<SdNode>> {
    let mut req = SdReq::new(op::GET_NODE_LIST);
    req.data_length = (SD_NODE_SIZE * SD_MAX_NODES) as u32;
    let (_, data) = exec_ok(ex, &req, &[]).await?;
    Ok(decode_nodes(&data))
}

/// Fetches `cluster_info` (CLUSTER_INFO). The result code is returned with
/// it because callers look at the data even on failure (dog checks
/// `ctime` before the result); missing bytes decode as zeros.
pub async fn get_cluster_info<E: Exchange>(ex: &mut E) -> Result<(SdRes, ClusterInfo)> {
    let mut req = SdReq::new(op::CLUSTER_INFO);
    req.data_length = CLUSTER_INFO_SIZE as u32;
    let (rsp, mut data) = ex.exec(&req, &[]).await?;
    data.resize(data.len().max(EPOCH_LOG_HEADER_SIZE), 0);
    let ci = ClusterInfo::decode(&data).expect("padded to the header size");
    Ok((rsp.result, ci))
}

/// The answer to STAT_CLUSTER: the cluster status (as a result code), the
/// responding node's epoch and the epoch records it returned, newest first.
#[derive(Clone, Debug)]
pub struct ClusterStat {
    pub result: SdRes,
    pub epoch: u32,
    /// Bytes of record data the server returned (0 = no records).
    pub data_length: u32,
    pub logs: Vec<EpochLog>,
}

/// STAT_CLUSTER asking for up to `nr_records` records with room for
/// `nodes_nr` nodes each; on BUFFER_SMALL the room is doubled and the
/// request retried (bounded by the maximum node count).
pub async fn stat_cluster<E: Exchange>(
    ex: &mut E,
    mut nodes_nr: u32,
    nr_records: u32,
) -> Result<ClusterStat> {
    loop {
        let record = EPOCH_LOG_HEADER_SIZE as u64 + nodes_nr as u64 * SD_NODE_SIZE as u64;
        let mut req = SdReq::new(op::STAT_CLUSTER);
        req.data_length = (nr_records as u64 * record).min(u32::MAX as u64) as u32;
        req.set_cluster(ClusterArgs {
            nodes_nr,
            ..Default::default()
        });
        let (rsp, data) = ex.exec(&req, &[]).await?;
        if rsp.result == SdRes::BUFFER_SMALL && nodes_nr > 0 && (nodes_nr as usize) < SD_MAX_NODES {
            nodes_nr = (nodes_nr * 2).min(SD_MAX_NODES as u32);
            continue;
        }
        let logs = data
            .chunks_exact(record as usize)
            .filter_map(|r| EpochLog::decode(r, nodes_nr as usize))
            .collect();
        return Ok(ClusterStat {
            result: rsp.result,
            epoch: rsp.epoch,
            data_length: rsp.data_length,
            logs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn split_inside_one_object() {
        let v: Vec<Chunk> = split_range(100, 50, 22).collect();
        assert_eq!(
            v,
            [Chunk {
                idx: 0,
                offset: 100,
                len: 50,
                buf_offset: 0
            }]
        );
    }

    #[test]
    fn split_across_objects() {
        let obj = 1u64 << 20;
        let v: Vec<Chunk> = split_range(obj - 10, obj + 20, 20).collect();
        assert_eq!(
            v,
            [
                Chunk {
                    idx: 0,
                    offset: (obj - 10) as u32,
                    len: 10,
                    buf_offset: 0
                },
                Chunk {
                    idx: 1,
                    offset: 0,
                    len: obj as u32,
                    buf_offset: 10
                },
                Chunk {
                    idx: 2,
                    offset: 0,
                    len: 10,
                    buf_offset: 10 + obj as usize
                },
            ]
        );
        assert_eq!(split_range(5, 0, 22).count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn split_covers_range_exactly(off in 0u64..1 << 40, len in 0u64..1 << 24, shift in 20u8..32) {
            let mut pos = off;
            for c in split_range(off, len, shift) {
                proptest::prop_assert_eq!(c.idx * (1 << shift) + c.offset as u64, pos);
                proptest::prop_assert_eq!(c.buf_offset as u64, pos - off);
                proptest::prop_assert!(c.len > 0);
                proptest::prop_assert!(c.offset as u64 + c.len as u64 <= 1 << shift);
                pos += c.len as u64;
            }
            proptest::prop_assert_eq!(pos, off + len);
        }
    }

    fn inode(vid: u32, size: u64) -> Inode {
        Inode::new(InodeHeader {
            vdi_id: vid,
            vdi_size: size,
            block_size_shift: 22,
            nr_copies: 3,
            ..Default::default()
        })
    }

    #[test]
    fn write_kinds_follow_cow_rules() {
        let mut ino = inode(0xabc, 64 << 20);
        ino.data_vdi_id[1] = 0xabc;
        ino.data_vdi_id[2] = 0x123;
        assert_eq!(write_kind(&ino, 0), WriteKind::Create);
        assert_eq!(write_kind(&ino, 1), WriteKind::Overwrite);
        assert_eq!(
            write_kind(&ino, 2),
            WriteKind::CopyOnWrite {
                cow_oid: 0x0000_0123_0000_0002
            }
        );
        assert_eq!(entry(&ino, 1 << 21), 0);
    }

    #[test]
    fn index_entries_cover_size() {
        let ino = inode(1, (4 << 20) + 1);
        assert_eq!(nr_index_entries(&ino.header), 2);
        assert_eq!(nr_index_entries(&inode(1, 0).header), 0);
        assert_eq!(nr_index_entries(&inode(1, 1 << 60).header), 1 << 20);
    }

    /// An in-memory sheep good enough to check the request sequence.
    #[derive(Default)]
    struct Fake {
        objects: HashMap<u64, Vec<u8>>,
        log: Vec<(u8, u16, u64, u64, u32, u32)>,
        /// After this many more data writes, the working VDI is
        /// snapshotted: it turns read-only and `(old, new)` becomes the
        /// new working VDI, derived from its inode at that moment.
        snapshot_after: Option<(usize, u32, u32)>,
        readonly: Vec<u32>,
        /// What GET_VDI_INFO answers.
        working: u32,
    }

    impl Fake {
        fn data_write(&mut self, oid: u64) -> bool {
            if let Some((n, old, new)) = self.snapshot_after {
                if n == 0 {
                    let mut ino = Inode::decode(&self.objects[&vid_to_vdi_oid(old)]).unwrap();
                    ino.header.vdi_id = new;
                    ino.header.parent_vdi_id = old;
                    self.objects.insert(vid_to_vdi_oid(new), ino.encode());
                    self.readonly.push(old);
                    self.working = new;
                    self.snapshot_after = None;
                } else {
                    self.snapshot_after = Some((n - 1, old, new));
                }
            }
            is_vdi_obj(oid) || !self.readonly.contains(&oid_to_vid(oid))
        }
    }

    impl Exchange for Fake {
        async fn exec(&mut self, req: &SdReq, payload: &[u8]) -> Result<(SdRsp, Vec<u8>)> {
            let o = req.obj();
            self.log.push((
                req.opcode,
                req.flags,
                o.oid,
                o.cow_oid,
                o.offset,
                req.data_length,
            ));
            let size = if is_vdi_obj(o.oid) {
                SD_INODE_SIZE
            } else {
                1 << 22
            };
            let mut rsp = SdRsp::for_req(req, SdRes::SUCCESS);
            let off = o.offset as usize;
            let writes = matches!(req.opcode, op::CREATE_AND_WRITE_OBJ | op::WRITE_OBJ);
            if writes && !self.data_write(o.oid) {
                rsp.result = SdRes::READONLY;
                return Ok((rsp, vec![]));
            }
            match req.opcode {
                op::GET_VDI_INFO => rsp.set_vdi(self.working, 0, 0, 0),
                op::READ_OBJ => match self.objects.get(&o.oid) {
                    Some(obj) => {
                        let d = obj[off..off + req.data_length as usize].to_vec();
                        rsp.data_length = d.len() as u32;
                        return Ok((rsp, d));
                    }
                    None => rsp.result = SdRes::NO_OBJ,
                },
                op::CREATE_AND_WRITE_OBJ => {
                    let mut obj = if req.flags & flag::CMD_COW != 0 {
                        self.objects[&o.cow_oid].clone()
                    } else {
                        vec![0; size]
                    };
                    obj[off..off + payload.len()].copy_from_slice(payload);
                    self.objects.insert(o.oid, obj);
                }
                op::WRITE_OBJ => match self.objects.get_mut(&o.oid) {
                    Some(obj) => obj[off..off + payload.len()].copy_from_slice(payload),
                    None => rsp.result = SdRes::NO_OBJ,
                },
                _ => rsp.result = SdRes::INVALID_PARMS,
            }
            Ok((rsp, vec![]))
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn write_then_read_with_cow() {
        run(async {
            let mut fake = Fake::default();
            let parent = 0x100;
            let vid = 0x101;
            // The parent owns object 1; the working VDI inherited it.
            let mut pobj = vec![7u8; 1 << 22];
            pobj[0] = 1;
            fake.objects.insert(vid_to_data_oid(parent, 1), pobj);
            let mut ino = inode(vid, 16 << 20);
            ino.data_vdi_id[1] = parent;
            fake.objects.insert(vid_to_vdi_oid(vid), ino.encode());

            // Write 10 bytes straddling objects 0 and 1.
            let at = (4 << 20) - 4;
            write_range(&mut fake, &mut ino, at, b"0123456789", 0)
                .await
                .unwrap();
            let ops: Vec<_> = fake
                .log
                .iter()
                .map(|l| (l.0, l.1, l.2, l.3, l.4, l.5))
                .collect();
            assert_eq!(
                ops,
                [
                    (
                        op::CREATE_AND_WRITE_OBJ,
                        flag::CMD_WRITE,
                        vid_to_data_oid(vid, 0),
                        0,
                        (4 << 20) - 4,
                        4
                    ),
                    (
                        op::CREATE_AND_WRITE_OBJ,
                        flag::CMD_WRITE | flag::CMD_COW,
                        vid_to_data_oid(vid, 1),
                        vid_to_data_oid(parent, 1),
                        0,
                        6
                    ),
                    (
                        op::WRITE_OBJ,
                        flag::CMD_WRITE,
                        vid_to_vdi_oid(vid),
                        0,
                        4664,
                        8
                    ),
                ]
            );
            assert_eq!(&ino.data_vdi_id[..3], &[vid, vid, 0]);

            // The inode on the "server" agrees, and a re-read sees the data,
            // the copied-on-write rest and zeros for the hole.
            let back = read_inode(&mut fake, vid).await.unwrap();
            assert_eq!(&back.data_vdi_id[..4], &[vid, vid, 0, 0]);
            let mut buf = vec![0xffu8; 16];
            read_range(&mut fake, &back, at, &mut buf, 0).await.unwrap();
            assert_eq!(&buf[..10], b"0123456789");
            assert_eq!(&buf[10..], &[7u8; 6]);
            let mut hole = vec![0xffu8; 8];
            read_range(&mut fake, &back, 8 << 20, &mut hole, 0)
                .await
                .unwrap();
            assert_eq!(hole, [0u8; 8]);

            // A second write to owned objects is a plain overwrite and
            // touches no index.
            fake.log.clear();
            let mut ino = back;
            write_range(&mut fake, &mut ino, 0, b"x", 0).await.unwrap();
            assert_eq!(fake.log.len(), 1);
            assert_eq!(fake.log[0].0, op::WRITE_OBJ);
        });
    }

    /// A snapshot taken between the two pieces of a write: the first
    /// piece's object is recorded in the old VDI (now the snapshot), the
    /// working VDI is reloaded by name and the whole write redone on it.
    #[test]
    fn readonly_reloads_the_working_vdi_and_rewrites() {
        run(async {
            let (old, new) = (0x101, 0x102);
            let mut fake = Fake {
                snapshot_after: Some((1, old, new)),
                working: old,
                ..Default::default()
            };
            let mut ino = inode(old, 16 << 20);
            ino.header.name[..1].copy_from_slice(b"v");
            ino.data_vdi_id[1] = old;
            fake.objects
                .insert(vid_to_data_oid(old, 1), vec![7u8; 1 << 22]);
            fake.objects.insert(vid_to_vdi_oid(old), ino.encode());

            let at = (4 << 20) - 4;
            write_range(&mut fake, &mut ino, at, b"0123456789", 0)
                .await
                .unwrap();
            assert_eq!(ino.header.vdi_id, new);
            assert_eq!(&ino.data_vdi_id[..3], &[new, new, 0]);
            let ops: Vec<_> = fake.log.iter().map(|l| (l.0, l.2, l.3)).collect();
            assert_eq!(
                ops,
                [
                    (op::CREATE_AND_WRITE_OBJ, vid_to_data_oid(old, 0), 0),
                    (op::WRITE_OBJ, vid_to_data_oid(old, 1), 0),
                    // The object created before the snapshot joins it.
                    (op::WRITE_OBJ, vid_to_vdi_oid(old), 0),
                    (op::GET_VDI_INFO, 0, 0),
                    (op::READ_OBJ, vid_to_vdi_oid(new), 0),
                    (op::READ_OBJ, vid_to_vdi_oid(new), 0),
                    (op::CREATE_AND_WRITE_OBJ, vid_to_data_oid(new, 0), 0),
                    (
                        op::CREATE_AND_WRITE_OBJ,
                        vid_to_data_oid(new, 1),
                        vid_to_data_oid(old, 1)
                    ),
                    (op::WRITE_OBJ, vid_to_vdi_oid(new), 0),
                ]
            );
            let snap = read_inode(&mut fake, old).await.unwrap();
            assert_eq!(&snap.data_vdi_id[..3], &[old, old, 0]);
            let cur = read_inode(&mut fake, new).await.unwrap();
            let mut buf = vec![0u8; 12];
            read_range(&mut fake, &cur, at - 1, &mut buf, 0)
                .await
                .unwrap();
            assert_eq!(&buf, b"\x000123456789\x07");

            // A VDI that is read-only by itself (nothing newer under its
            // name) gives the error back.
            fake.working = new;
            fake.readonly.push(new);
            let e = write_range(&mut fake, &mut ino, 0, b"x", 0)
                .await
                .unwrap_err();
            assert_eq!(e.res(), SdRes::READONLY);
        });
    }

    #[test]
    fn ranges_are_bounded_by_vdi_size() {
        run(async {
            let mut fake = Fake::default();
            let mut ino = inode(1, 100);
            let e = write_range(&mut fake, &mut ino, 99, b"ab", 0)
                .await
                .unwrap_err();
            assert!(matches!(e, VdiError::OutOfRange { .. }));
            let mut buf = [0u8; 1];
            let e = read_range(&mut fake, &ino, u64::MAX, &mut buf, 0)
                .await
                .unwrap_err();
            assert!(matches!(e, VdiError::OutOfRange { .. }));
            assert!(fake.log.is_empty());
        });
    }
}
