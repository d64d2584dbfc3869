//! Every VDI served over NBD (`sheep --nbd [ADDR:]PORT`): export name =
//! VDI name, snapshots read-only as `name@tag` or `name@id`.
//!
//! Requests become object I/O through the shared client path
//! (`sd_client::vdi`) executed in-process against this node's own request
//! handler, so NBD gets exactly the gateway semantics (fan-out, retries,
//! copy-on-write) of every other client without a socket hop.

use crate::daemon::Sheep;
use sd_client::vdi::{self as cv, Exchange, Redundancy, WriteKind};
use sd_client::ClientError;
use sd_nbd::{BlockSize, BoxFuture, Export, Exports, Extent, IoResult, NbdError, ZeroFlags};
use sd_proto::*;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Requests executed by this node's own handler, as if they came in over
/// a connection.
#[derive(Clone)]
pub struct InProcess(pub Arc<Sheep>);

impl Exchange for InProcess {
    fn exec(
        &mut self,
        req: &SdReq,
        payload: &[u8],
    ) -> impl Future<Output = sd_client::Result<(SdRsp, Vec<u8>)>> + Send {
        let sheep = self.0.clone();
        let req = *req;
        let payload = payload.to_vec();
        // Boxed: the handler itself uses this path (DEL_VDI of a hyper
        // volume reads its B-tree through it), which makes it recursive.
        let fut: sd_nbd::BoxFuture<'static, _> =
            Box::pin(async move { Ok(crate::server::handle(&sheep, req, payload).await) });
        fut
    }
}

fn nbd_err(e: impl std::fmt::Display, res: SdRes) -> NbdError {
    match res {
        SdRes::NO_SPACE => NbdError::no_space(e.to_string()),
        SdRes::READONLY => NbdError::perm(e.to_string()),
        _ => NbdError::io(e.to_string()),
    }
}

/// The NBD export table: one shared [`VdiExport`] per open VDI, so every
/// connection (multi-conn) sees the same index and allocations never race.
pub struct VdiExports {
    sheep: Arc<Sheep>,
    open: Mutex<HashMap<String, Weak<VdiExport>>>,
}

impl VdiExports {
    pub fn new(sheep: Arc<Sheep>) -> Self {
        VdiExports {
            sheep,
            open: Mutex::default(),
        }
    }

    async fn open_vdi(&self, name: &str) -> IoResult<Option<Arc<VdiExport>>> {
        if let Some(e) = self.open.lock().unwrap().get(name).and_then(Weak::upgrade) {
            return Ok(Some(e));
        }
        let (base, snap) = match name.split_once('@') {
            Some((b, s)) => (b, Some(s)),
            None => (name, None),
        };
        let (tag, snapid) = match snap {
            None => (None, 0),
            Some(s) => match s.parse::<u32>() {
                Ok(id) if id > 0 => (None, id),
                _ => (Some(s.as_bytes()), 0),
            },
        };
        let mut ex = InProcess(self.sheep.clone());
        let vid = match cv::lookup_vdi(&mut ex, base.as_bytes(), tag, snapid).await {
            Ok(v) => v,
            Err(ClientError::Res(SdRes::NO_VDI | SdRes::NO_TAG | SdRes::INVALID_PARMS)) => {
                return Ok(None)
            }
            Err(e) => return Err(nbd_err(&e, e.res())),
        };
        let inode = cv::read_inode(&mut ex, vid)
            .await
            .map_err(|e| nbd_err(&e, e.res()))?;
        let export = Arc::new(VdiExport {
            sheep: self.sheep.clone(),
            name: base.to_string(),
            read_only: snap.is_some() || inode.header.is_snapshot(),
            size: inode.header.vdi_size,
            shift: inode.header.block_size_shift,
            hyper: inode.header.store_policy != 0,
            inode: RwLock::new(inode),
            index_writer: tokio::sync::Mutex::new(()),
            alloc: (0..ALLOC_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let mut open = self.open.lock().unwrap();
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(name.to_string(), Arc::downgrade(&export));
        Ok(Some(export))
    }
}

impl Exports for VdiExports {
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, IoResult<Option<Arc<dyn Export>>>> {
        Box::pin(async move { Ok(self.open_vdi(name).await?.map(|e| e as Arc<dyn Export>)) })
    }

    fn list(&self) -> BoxFuture<'_, IoResult<Vec<String>>> {
        Box::pin(async move {
            let vids: Vec<u32> = {
                let st = self.sheep.view();
                st.vdis
                    .states
                    .values()
                    .filter(|s| !s.deleted && !s.snapshot)
                    .map(|s| s.vid)
                    .collect()
            };
            let mut ex = InProcess(self.sheep.clone());
            let mut names = Vec::new();
            for vid in vids {
                if let Ok(h) = cv::read_inode_header(&mut ex, vid).await {
                    if !h.is_deleted() && !h.is_snapshot() {
                        names.push(h.name_str());
                    }
                }
            }
            Ok(names)
        })
    }
}

/// Allocation locks per export: creating an object (and recording it in
/// the index) for one index is serialised, overwrites are not.
const ALLOC_STRIPES: usize = 64;

/// One VDI as an NBD export.
pub struct VdiExport {
    sheep: Arc<Sheep>,
    name: String,
    read_only: bool,
    size: u64,
    shift: u8,
    /// A hyper volume (B-tree index).
    hyper: bool,
    /// Header and index; the index changes as objects get allocated, and
    /// the whole inode is replaced if the VDI was snapshotted meanwhile.
    inode: RwLock<Inode>,
    /// Held while a hyper volume's index changes are written: one change
    /// may split a node, and the next must not overtake those writes.
    index_writer: tokio::sync::Mutex<()>,
    alloc: Vec<tokio::sync::Mutex<()>>,
}

impl VdiExport {
    fn ex(&self) -> InProcess {
        InProcess(self.sheep.clone())
    }

    /// (vid, redundancy, entry of `idx`) as of now.
    fn snapshot_of(&self, idx: u64) -> (u32, Redundancy, u32) {
        let ino = self.inode.read().unwrap();
        (
            ino.header.vdi_id,
            Redundancy::of(&ino.header),
            cv::entry(&ino, idx),
        )
    }

    /// The VDI was snapshotted behind our back: follow the working VDI.
    async fn reload(&self) -> IoResult<()> {
        let mut ex = self.ex();
        let vid = cv::lookup_vdi(&mut ex, self.name.as_bytes(), None, 0)
            .await
            .map_err(|e| nbd_err(&e, e.res()))?;
        let inode = cv::read_inode(&mut ex, vid)
            .await
            .map_err(|e| nbd_err(&e, e.res()))?;
        *self.inode.write().unwrap() = inode;
        Ok(())
    }

    /// Writes one object-sized piece with copy-on-write (§6.1).
    async fn write_piece(&self, idx: u64, offset: u32, data: &[u8]) -> IoResult<()> {
        for _ in 0..3 {
            match self.try_write_piece(idx, offset, data).await {
                Err(ClientError::Res(SdRes::READONLY)) => self.reload().await?,
                Err(e) => return Err(nbd_err(&e, e.res())),
                Ok(()) => return Ok(()),
            }
        }
        Err(NbdError::io("the VDI keeps changing under this export"))
    }

    async fn try_write_piece(&self, idx: u64, offset: u32, data: &[u8]) -> sd_client::Result<()> {
        let (vid, red, e) = self.snapshot_of(idx);
        let mut ex = self.ex();
        if e == vid {
            return cv::write_object(
                &mut ex,
                vid_to_data_oid(vid, idx),
                WriteKind::Overwrite,
                offset,
                data,
                red,
                0,
            )
            .await;
        }
        let _g = self.alloc[idx as usize % ALLOC_STRIPES].lock().await;
        let (vid, red, e) = self.snapshot_of(idx);
        let oid = vid_to_data_oid(vid, idx);
        let kind = match e {
            x if x == vid => WriteKind::Overwrite,
            0 => WriteKind::Create,
            x => WriteKind::CopyOnWrite {
                cow_oid: vid_to_data_oid(x, idx),
            },
        };
        cv::write_object(&mut ex, oid, kind, offset, data, red, 0).await?;
        if kind != WriteKind::Overwrite {
            self.set_entry(idx, vid).await?;
        }
        Ok(())
    }

    /// Records `idx → value` in the in-memory index and persists it. If
    /// that fails the index is reloaded, so memory never claims an
    /// allocation the stored index lacks.
    async fn set_entry(&self, idx: u64, value: u32) -> sd_client::Result<()> {
        let _serial = match self.hyper {
            true => Some(self.index_writer.lock().await),
            false => None,
        };
        let (writes, red) = {
            let mut ino = self.inode.write().unwrap();
            if let Err(e) = ino.set_vid(idx, value) {
                tracing::error!("cannot record object {idx} of {}: {e}", self.name);
                return Err(ClientError::Res(SdRes::NO_SPACE));
            }
            (ino.take_index_writes(), Redundancy::of(&ino.header))
        };
        if let Err(e) = cv::apply_index_writes(&mut self.ex(), writes, red, 0).await {
            let _ = self.reload().await;
            return Err(match e {
                cv::VdiError::UpdateIndex { source, .. } => source,
                other => ClientError::Res(other.res()),
            });
        }
        Ok(())
    }

    /// Zeroes a range: whole objects are dropped from the index (the
    /// server frees them), partial ones get zeros written if allocated.
    /// A hyper volume keeps no reference counts that would free a dropped
    /// object, so its objects are zeroed, never dropped.
    async fn zero_range(&self, offset: u64, len: u64, may_trim: bool) -> IoResult<()> {
        let obj = 1u64 << self.shift;
        for c in cv::split_range(offset, len, self.shift) {
            let (vid, _, e) = self.snapshot_of(c.idx);
            if e == 0 {
                continue;
            }
            if may_trim && !self.hyper && c.len as u64 == obj && e == vid {
                let _g = self.alloc[c.idx as usize % ALLOC_STRIPES].lock().await;
                self.set_entry(c.idx, 0)
                    .await
                    .map_err(|e| nbd_err(&e, e.res()))?;
            } else {
                self.write_piece(c.idx, c.offset, &vec![0u8; c.len as usize])
                    .await?;
            }
        }
        Ok(())
    }
}

impl Export for VdiExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> BlockSize {
        BlockSize {
            min: 1,
            preferred: 4096,
            max: 32 << 20,
        }
    }

    fn description(&self) -> Option<String> {
        Some(format!("sheepdog VDI {}", self.name))
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, IoResult<()>> {
        Box::pin(async move {
            let mut ex = self.ex();
            for c in cv::split_range(offset, buf.len() as u64, self.shift) {
                let (_, red, e) = self.snapshot_of(c.idx);
                let dst = &mut buf[c.buf_offset..c.buf_offset + c.len as usize];
                if e == 0 {
                    dst.fill(0);
                    continue;
                }
                let d =
                    cv::read_object(&mut ex, vid_to_data_oid(e, c.idx), c.offset, c.len, red, 0)
                        .await
                        .map_err(|err| nbd_err(&err, err.res()))?;
                dst.copy_from_slice(&d);
            }
            Ok(())
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], _fua: bool) -> BoxFuture<'a, IoResult<()>> {
        // Every acknowledged write is already on stable storage on every
        // replica (unless the operator chose nosync), so FUA costs nothing.
        Box::pin(async move {
            let pieces = cv::split_range(offset, data.len() as u64, self.shift).map(|c| {
                self.write_piece(
                    c.idx,
                    c.offset,
                    &data[c.buf_offset..c.buf_offset + c.len as usize],
                )
            });
            for r in futures::future::join_all(pieces).await {
                r?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(self.zero_range(offset, len, true))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            let obj = 1u64 << self.shift;
            let whole = offset.is_multiple_of(obj) && len.is_multiple_of(obj);
            if flags.fast_only && !(flags.may_trim && whole) {
                return Err(NbdError::not_supported(
                    "zeroing this range means writing zeroes",
                ));
            }
            self.zero_range(offset, len, flags.may_trim).await
        })
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<Vec<Extent>>> {
        Box::pin(async move {
            let mut out: Vec<Extent> = Vec::new();
            for c in cv::split_range(offset, len, self.shift) {
                let (_, _, e) = self.snapshot_of(c.idx);
                let ext = if e == 0 {
                    Extent::hole(c.len as u64)
                } else {
                    Extent::data(c.len as u64)
                };
                match out.last_mut() {
                    Some(l) if l.hole == ext.hole && l.zero == ext.zero => l.length += ext.length,
                    _ => out.push(ext),
                }
            }
            Ok(out)
        })
    }
}
