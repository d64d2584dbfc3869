//! An [`ObjectStore`] in memory, for component tests of the object service
//! (gateway, peer executor, recovery) without files or a daemon.
//!
//! It keeps exactly what the file store keeps (working and stale copies,
//! pending reclaims, config, epochs) with the same semantics, and can be
//! told to fail: [`MemStore::fail_next`] makes the next operations return
//! EIO, as a dying disk does, and [`MemStore::rot`] corrupts a block of a
//! working copy, which then reads as a checksum mismatch (as the file
//! store's checksums report it) until it is rewritten whole.

use crate::csum::BLOCK;
use crate::{DiskUsage, ObjKey, ObjectStore, Result, StoreError, Verdict};
use sd_proto::{SdNode, SheepdogConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Default)]
struct Contents {
    working: BTreeMap<ObjKey, Vec<u8>>,
    stale: BTreeMap<(ObjKey, u32), Vec<u8>>,
    reclaim: BTreeSet<u64>,
    config: Option<SheepdogConfig>,
    epochs: BTreeMap<u32, (Vec<SdNode>, u64)>,
    /// Operations still to fail with EIO.
    failing: u32,
    /// Blocks whose bytes rotted: (object, [`WORKING`] or the epoch of a
    /// stale copy, block). A stale copy keeps the marks of the working
    /// copy it was, as the file store's checksums go with it.
    rotten: BTreeSet<(ObjKey, u32, usize)>,
}

/// The copy a rot mark is on: the working copy (stale copies by epoch).
const WORKING: u32 = 0;

impl Contents {
    /// The rotten blocks of copy `at` of `k` in `offset..offset + len`.
    fn rotten_in(&self, k: &ObjKey, at: u32, offset: u64, len: usize) -> Vec<usize> {
        let first = (offset / BLOCK) as usize;
        let end = (offset + len as u64).div_ceil(BLOCK) as usize;
        self.rotten
            .range((*k, at, first)..(*k, at, end.max(first)))
            .map(|(_, _, b)| *b)
            .collect()
    }

    fn check(&self, k: &ObjKey, at: u32, offset: u64, len: usize) -> Result<()> {
        match self.rotten_in(k, at, offset, len) {
            b if b.is_empty() => Ok(()),
            blocks => Err(StoreError::Checksum {
                file: format!("(memory)/{}", k.file_name()).into(),
                blocks,
            }),
        }
    }

    /// Forgets the rot of copy `at` of `k`; with `moved_to`, moves it
    /// there instead.
    fn forget_rot(&mut self, k: &ObjKey, at: u32, moved_to: Option<u32>) {
        let marks: Vec<_> = self
            .rotten
            .range((*k, at, 0)..=(*k, at, usize::MAX))
            .copied()
            .collect();
        for m in marks {
            self.rotten.remove(&m);
            if let Some(e) = moved_to {
                self.rotten.insert((*k, e, m.2));
            }
        }
    }
}

/// One object's bytes as a store holds them: the working copy, and the
/// stale copies by the epoch they were retired with.
pub type Copies = (Option<Vec<u8>>, Vec<(u32, Vec<u8>)>);

/// See the module documentation.
#[derive(Default)]
pub struct MemStore {
    contents: Mutex<Contents>,
}

fn eio() -> StoreError {
    StoreError::Io(std::io::Error::other("injected disk error"))
}

impl MemStore {
    /// Makes the next `n` operations that touch objects fail with EIO.
    pub fn fail_next(&self, n: u32) {
        self.contents.lock().unwrap().failing = n;
    }

    /// The working copy of `k` and its stale copies by epoch, as they are
    /// (for a test's trace; no injected failure applies).
    pub fn peek(&self, k: &ObjKey) -> Copies {
        let c = self.contents.lock().unwrap();
        let stale = c
            .stale
            .range((*k, 0)..=(*k, u32::MAX))
            .map(|((_, e), d)| (*e, d.clone()))
            .collect();
        (c.working.get(k).cloned(), stale)
    }

    /// Flips the byte at `offset` of the working copy of `k`: its block
    /// reads as a checksum mismatch until rewritten whole.
    pub fn rot(&self, k: &ObjKey, offset: u64) {
        let mut c = self.contents.lock().unwrap();
        let d = c.working.get_mut(k).expect("rot of a missing object");
        d[offset as usize] ^= 0x55;
        c.rotten.insert((*k, WORKING, (offset / BLOCK) as usize));
    }

    /// Whether a block of any copy of `k` (working or stale) is rotten.
    pub fn rotten(&self, k: &ObjKey) -> bool {
        let c = self.contents.lock().unwrap();
        let marks = (*k, 0, 0)..=(*k, u32::MAX, usize::MAX);
        c.rotten.range(marks).next().is_some()
    }

    /// Runs `f` on the contents unless an injected failure is due.
    fn with<T>(&self, f: impl FnOnce(&mut Contents) -> Result<T>) -> Result<T> {
        let mut c = self.contents.lock().unwrap();
        if c.failing > 0 {
            c.failing -= 1;
            return Err(eio());
        }
        f(&mut c)
    }
}

/// `len` bytes at `offset` of `data`, zeros past its end.
fn slice(data: &[u8], offset: u64, len: usize) -> Vec<u8> {
    let start = (offset as usize).min(data.len());
    let end = (offset as usize).saturating_add(len).min(data.len());
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&data[start..end]);
    out.resize(len, 0);
    out
}

fn put(dst: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let (offset, end) = (offset as usize, offset as usize + data.len());
    if dst.len() < offset {
        dst.resize(offset, 0);
    }
    // What lies past the end is appended, not zeroed first.
    let inside = dst.len().min(end) - offset;
    dst[offset..offset + inside].copy_from_slice(&data[..inside]);
    dst.extend_from_slice(&data[inside..]);
}

impl ObjectStore for MemStore {
    fn disks(&self) -> Vec<DiskUsage> {
        let used = self.used_bytes();
        vec![DiskUsage {
            path: "(memory)".into(),
            free: u64::MAX / 2 - used,
            used,
        }]
    }
    fn plug(&self, _: &[PathBuf]) -> Result<usize> {
        Ok(0)
    }
    fn unplug(&self, _: &[PathBuf]) -> Result<usize> {
        Ok(0)
    }
    fn relocate(&self, _: &ObjKey) -> Result<bool> {
        Ok(false)
    }
    fn exists(&self, k: &ObjKey) -> bool {
        self.contents.lock().unwrap().working.contains_key(k)
    }
    fn size(&self, k: &ObjKey) -> Result<u64> {
        self.with(|c| {
            c.working
                .get(k)
                .map(|d| d.len() as u64)
                .ok_or(StoreError::NoObj)
        })
    }
    fn read(&self, k: &ObjKey, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.with(|c| {
            let d = c.working.get(k).ok_or(StoreError::NoObj)?;
            c.check(k, WORKING, offset, len)?;
            Ok(slice(d, offset, len))
        })
    }
    fn read_all(&self, k: &ObjKey) -> Result<Vec<u8>> {
        self.with(|c| {
            let d = c.working.get(k).ok_or(StoreError::NoObj)?;
            c.check(k, WORKING, 0, d.len())?;
            Ok(d.clone())
        })
    }
    fn write(&self, k: &ObjKey, offset: u64, data: &[u8]) -> Result<()> {
        self.with(|c| {
            let d = c.working.get(k).ok_or(StoreError::NoObj)?;
            let size = d.len() as u64;
            let end = offset + data.len() as u64;
            for b in c.rotten_in(k, WORKING, offset, data.len()) {
                let (s, e) = crate::csum::block_range(b, size);
                if s < offset || e > end {
                    // A partial write keeps rotten bytes: refused, as the
                    // file store refuses it.
                    c.check(k, WORKING, s, (e - s) as usize)?;
                }
                c.rotten.remove(&(*k, WORKING, b));
            }
            put(c.working.get_mut(k).unwrap(), offset, data);
            Ok(())
        })
    }
    fn verify(&self, k: &ObjKey) -> Result<Verdict> {
        self.with(|c| {
            let d = c.working.get(k).ok_or(StoreError::NoObj)?;
            Ok(match c.rotten_in(k, WORKING, 0, d.len()) {
                b if b.is_empty() => Verdict::Good,
                b => Verdict::Bad(b),
            })
        })
    }
    fn create_and_write(&self, k: &ObjKey, size: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.with(|c| {
            let mut d = Vec::with_capacity(size as usize);
            put(&mut d, offset, data);
            d.resize((size as usize).max(d.len()), 0);
            c.working.insert(*k, d);
            c.forget_rot(k, WORKING, None);
            Ok(())
        })
    }
    fn remove(&self, k: &ObjKey) -> Result<()> {
        self.with(|c| {
            c.forget_rot(k, WORKING, None);
            c.working.remove(k).map(|_| ()).ok_or(StoreError::NoObj)
        })
    }
    fn list(&self) -> Result<Vec<ObjKey>> {
        self.with(|c| Ok(c.working.keys().copied().collect()))
    }
    fn list_stale(&self) -> Result<Vec<(ObjKey, u32)>> {
        self.with(|c| Ok(c.stale.keys().copied().collect()))
    }
    fn move_to_stale(&self, k: &ObjKey, epoch: u32) -> Result<()> {
        self.with(|c| {
            let d = c.working.remove(k).ok_or(StoreError::NoObj)?;
            c.forget_rot(k, epoch, None);
            c.forget_rot(k, WORKING, Some(epoch));
            c.stale.insert((*k, epoch), d);
            Ok(())
        })
    }
    fn read_stale(&self, k: &ObjKey, epoch: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.with(|c| {
            let d = c.stale.get(&(*k, epoch)).ok_or(StoreError::NoObj)?;
            c.check(k, epoch, offset, len)?;
            Ok(slice(d, offset, len))
        })
    }
    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32> {
        let c = self.contents.lock().unwrap();
        c.stale
            .range((*k, since)..=(*k, u32::MAX))
            .map(|((_, e), _)| *e)
            .next_back()
    }
    fn reclaim_add(&self, oid: u64) -> Result<()> {
        self.with(|c| {
            c.reclaim.insert(oid);
            Ok(())
        })
    }
    fn reclaim_pending(&self) -> Result<Vec<u64>> {
        self.with(|c| Ok(c.reclaim.iter().copied().collect()))
    }
    fn reclaim_done(&self, oid: u64) -> Result<()> {
        self.with(|c| {
            c.reclaim.remove(&oid);
            Ok(())
        })
    }
    fn purge_stale(&self) -> Result<usize> {
        self.with(|c| {
            c.rotten.retain(|m| m.1 == WORKING);
            Ok(std::mem::take(&mut c.stale).len())
        })
    }
    fn wipe(&self) -> Result<()> {
        self.with(|c| {
            c.working.clear();
            c.stale.clear();
            c.rotten.clear();
            c.reclaim.clear();
            c.epochs.clear();
            Ok(())
        })
    }
    fn sha1(&self, k: &ObjKey, stale_epoch: Option<u32>) -> Result<[u8; 20]> {
        use sha1::{Digest, Sha1};
        let data = match stale_epoch {
            None => self.read_all(k)?,
            Some(e) => self.with(|c| {
                let d = c.stale.get(&(*k, e)).ok_or(StoreError::NoObj)?;
                c.check(k, e, 0, d.len())?;
                Ok(d.clone())
            })?,
        };
        Ok(Sha1::digest(&data).into())
    }
    fn digest(&self, k: &ObjKey) -> Result<u32> {
        self.with(|c| {
            let d = c.working.get(k).ok_or(StoreError::NoObj)?;
            c.check(k, WORKING, 0, d.len())?;
            Ok(crate::csum::digest(&crate::csum::Sidecar::of(d).entries))
        })
    }
    fn read_config(&self) -> Result<Option<SheepdogConfig>> {
        Ok(self.contents.lock().unwrap().config.clone())
    }
    fn write_config(&self, cfg: &SheepdogConfig) -> Result<()> {
        self.contents.lock().unwrap().config = Some(cfg.clone());
        Ok(())
    }
    fn write_epoch(&self, epoch: u32, nodes: &[SdNode], time: u64) -> Result<()> {
        let mut sorted = nodes.to_vec();
        sorted.sort_by_key(|n| n.nid);
        self.contents
            .lock()
            .unwrap()
            .epochs
            .insert(epoch, (sorted, time));
        Ok(())
    }
    fn read_epoch(&self, epoch: u32) -> Result<Option<(Vec<SdNode>, u64)>> {
        Ok(self.contents.lock().unwrap().epochs.get(&epoch).cloned())
    }
    fn latest_epoch(&self) -> Result<u32> {
        let c = self.contents.lock().unwrap();
        Ok(c.epochs.keys().next_back().copied().unwrap_or(0))
    }
    fn fs_space(&self) -> Result<(u64, u64)> {
        Ok((1 << 40, 1 << 40))
    }
    fn used_bytes(&self) -> u64 {
        let c = self.contents.lock().unwrap();
        c.working.values().map(|d| d.len() as u64).sum()
    }
    fn runs_inline(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory store answers as the file store does.
    #[test]
    fn behaves_as_the_file_store() {
        let d = tempfile::tempdir().unwrap();
        let file = crate::Store::open(d.path(), true).unwrap();
        let mem = MemStore::default();
        let k = ObjKey::replica(0x007c_2b25_0000_0001);
        for s in [&file as &dyn ObjectStore, &mem] {
            assert!(matches!(s.read(&k, 0, 4), Err(StoreError::NoObj)));
            assert!(matches!(s.write(&k, 0, b"x"), Err(StoreError::NoObj)));
            s.create_and_write(&k, 64, 10, b"hello").unwrap();
            s.write(&k, 12, b"LL").unwrap();
            assert_eq!(s.read(&k, 8, 8).unwrap(), b"\0\0heLLo\0");
            assert_eq!(s.read(&k, 60, 8).unwrap(), b"\0\0\0\0\0\0\0\0");
            assert_eq!(s.size(&k).unwrap(), 64);
            s.move_to_stale(&k, 3).unwrap();
            assert!(!s.exists(&k));
            assert_eq!(s.newest_stale(&k, 2), Some(3));
            assert_eq!(s.newest_stale(&k, 4), None);
            assert_eq!(s.read_stale(&k, 3, 10, 5).unwrap(), b"heLLo");
            assert_eq!(s.list_stale().unwrap(), vec![(k, 3)]);
            assert_eq!(s.purge_stale().unwrap(), 1);
            s.reclaim_add(7).unwrap();
            assert_eq!(s.reclaim_pending().unwrap(), vec![7]);
            s.reclaim_done(7).unwrap();
            assert!(s.reclaim_pending().unwrap().is_empty());
        }
        mem.create_and_write(&k, 8, 0, b"x").unwrap();
        mem.fail_next(1);
        assert!(matches!(mem.read(&k, 0, 1), Err(StoreError::Io(_))));
        assert_eq!(mem.read(&k, 0, 1).unwrap(), b"x");
    }
}
