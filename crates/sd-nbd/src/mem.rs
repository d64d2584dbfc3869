//! A sparse in-memory backend: the reference implementation of
//! [`Export`]/[`Exports`], used by this crate's tests and usable by other
//! crates' tests that need an NBD server without a cluster.
//!
//! Storage is a map of 4 KiB pages; a missing page is a hole that reads as
//! zeroes, so `base:allocation` has real holes to report and a large
//! export costs only what was written.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::NbdError;
use crate::export::{BlockSize, BoxFuture, Export, Exports, Extent, IoResult, ZeroFlags};

/// Granularity of allocation (and of the holes reported).
pub const PAGE: u64 = 4096;

/// A named table of [`MemExport`]s.
#[derive(Default)]
pub struct MemExports {
    exports: Mutex<BTreeMap<String, Arc<MemExport>>>,
}

impl MemExports {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the export `name`.
    pub fn insert(&self, name: &str, export: Arc<MemExport>) {
        self.exports
            .lock()
            .expect("not poisoned")
            .insert(name.to_owned(), export);
    }
}

impl Exports for MemExports {
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, IoResult<Option<Arc<dyn Export>>>> {
        let found = self
            .exports
            .lock()
            .expect("not poisoned")
            .get(name)
            .cloned();
        Box::pin(async move { Ok(found.map(|e| e as Arc<dyn Export>)) })
    }

    fn list(&self) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let names = self
            .exports
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        Box::pin(async move { Ok(names) })
    }
}

/// One sparse in-memory volume. Operations are synchronous under a mutex:
/// memory copies are short, and the point of this type is exact, simple
/// semantics (including what is a hole), not speed.
pub struct MemExport {
    size: u64,
    read_only: bool,
    block: BlockSize,
    description: Option<String>,
    pages: Mutex<BTreeMap<u64, Box<[u8]>>>,
}

impl MemExport {
    /// An empty (all-hole) writable export of `size` bytes.
    pub fn new(size: u64) -> Self {
        MemExport {
            size,
            read_only: false,
            block: BlockSize::default(),
            description: None,
            pages: Mutex::default(),
        }
    }

    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    pub fn with_block_size(mut self, block: BlockSize) -> Self {
        self.block = block;
        self
    }

    pub fn with_description(mut self, d: &str) -> Self {
        self.description = Some(d.to_owned());
        self
    }

    /// Fills the export with `data` at `offset` (test setup, bypassing
    /// read-only).
    pub fn fill(&self, offset: u64, data: &[u8]) {
        self.put(&mut self.lock(), offset, data);
    }

    /// Bytes currently backed by memory (allocated pages × page size).
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().len() as u64 * PAGE
    }

    /// Reads the whole export (test assertions).
    pub fn contents(&self) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(self.size).expect("fits in memory")];
        self.get(&self.lock(), 0, &mut v);
        v
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        self.pages.lock().expect("not poisoned")
    }

    /// Visits `[offset, offset+len)` page by page: (page index, offset in
    /// page, offset in the range, length).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE - pos % PAGE).min(end - pos) as usize;
            let piece = (idx, in_page, (pos - offset) as usize, n);
            pos += n as u64;
            Some(piece)
        })
    }

    fn get(&self, pages: &BTreeMap<u64, Box<[u8]>>, offset: u64, buf: &mut [u8]) {
        for (idx, at, from, n) in Self::pieces(offset, buf.len() as u64) {
            match pages.get(&idx) {
                Some(p) => buf[from..from + n].copy_from_slice(&p[at..at + n]),
                None => buf[from..from + n].fill(0),
            }
        }
    }

    fn put(&self, pages: &mut BTreeMap<u64, Box<[u8]>>, offset: u64, data: &[u8]) {
        for (idx, at, from, n) in Self::pieces(offset, data.len() as u64) {
            let p = pages
                .entry(idx)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[at..at + n].copy_from_slice(&data[from..from + n]);
        }
    }

    /// Zeroes a range; whole pages are deallocated when `may_trim`.
    fn zero(&self, offset: u64, len: u64, may_trim: bool) {
        let mut pages = self.lock();
        for (idx, at, _, n) in Self::pieces(offset, len) {
            if may_trim && n as u64 == PAGE {
                pages.remove(&idx);
            } else if !may_trim {
                pages
                    .entry(idx)
                    .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice())
                    [at..at + n]
                    .fill(0);
            } else if let Some(p) = pages.get_mut(&idx) {
                p[at..at + n].fill(0);
            }
        }
    }

    fn check(&self, offset: u64, len: u64) -> IoResult<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(NbdError::invalid(format!(
                "range {offset}+{len} beyond size {}",
                self.size
            )));
        }
        Ok(())
    }

    fn check_write(&self, offset: u64, len: u64) -> IoResult<()> {
        if self.read_only {
            return Err(NbdError::perm("read-only export"));
        }
        self.check(offset, len)
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> BlockSize {
        self.block
    }

    fn description(&self) -> Option<String> {
        self.description.clone()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, IoResult<()>> {
        Box::pin(async move {
            self.check(offset, buf.len() as u64)?;
            self.get(&self.lock(), offset, buf);
            Ok(())
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], _fua: bool) -> BoxFuture<'a, IoResult<()>> {
        Box::pin(async move {
            self.check_write(offset, data.len() as u64)?;
            self.put(&mut self.lock(), offset, data);
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            self.check_write(offset, len)?;
            self.zero(offset, len, true);
            Ok(())
        })
    }

    /// Always fast (memory), so `fast_only` never fails.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            self.check_write(offset, len)?;
            self.zero(offset, len, flags.may_trim);
            Ok(())
        })
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<Vec<Extent>>> {
        Box::pin(async move {
            self.check(offset, len)?;
            let pages = self.lock();
            let mut out: Vec<Extent> = Vec::new();
            for (idx, _, _, n) in Self::pieces(offset, len) {
                let e = if pages.contains_key(&idx) {
                    Extent::data(n as u64)
                } else {
                    Extent::hole(n as u64)
                };
                match out.last_mut() {
                    Some(last) if last.hole == e.hole => last.length += e.length,
                    _ => out.push(e),
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn sparse_semantics() {
        let m = MemExport::new(10 * PAGE);
        m.write(100, &[7u8; 5000], false).await.unwrap();
        assert_eq!(m.allocated_bytes(), 2 * PAGE);
        let mut b = vec![1u8; 6000];
        m.read(0, &mut b).await.unwrap();
        assert!(b[..100].iter().all(|&x| x == 0));
        assert!(b[100..5100].iter().all(|&x| x == 7));
        assert!(b[5100..].iter().all(|&x| x == 0));
        let e = m.extents(0, 10 * PAGE).await.unwrap();
        assert_eq!(e, vec![Extent::data(2 * PAGE), Extent::hole(8 * PAGE)]);
        // Trim frees whole pages only, but the range reads as zero.
        m.trim(0, PAGE + 10).await.unwrap();
        assert_eq!(m.allocated_bytes(), PAGE);
        m.read(0, &mut b).await.unwrap();
        assert!(b[..PAGE as usize + 10].iter().all(|&x| x == 0));
        // NO_HOLE zeroing allocates.
        m.write_zeroes(
            5 * PAGE,
            PAGE,
            ZeroFlags {
                may_trim: false,
                fast_only: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(m.allocated_bytes(), 2 * PAGE);
        assert_eq!(
            m.read(10 * PAGE, &mut [0u8; 1]).await.unwrap_err().errno,
            crate::Errno::Inval
        );
        let ro = MemExport::new(PAGE).read_only(true);
        assert_eq!(
            ro.write(0, &[1], false).await.unwrap_err().errno,
            crate::Errno::Perm
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Trim(u64, u64),
        Zero(u64, u64, bool),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let size = 8 * PAGE;
        prop_oneof![
            (0..size, proptest::collection::vec(any::<u8>(), 0..9000)).prop_map(move |(o, d)| {
                let n = d.len().min((size - o) as usize);
                Op::Write(o, d[..n].to_vec())
            }),
            (0..size, 0..3 * PAGE).prop_map(move |(o, l)| Op::Trim(o, l.min(size - o))),
            (0..size, 0..3 * PAGE, any::<bool>()).prop_map(move |(o, l, t)| Op::Zero(
                o,
                l.min(size - o),
                t
            )),
        ]
    }

    proptest! {
        /// The sparse store behaves exactly like a flat byte array, and its
        /// extents are exact about which pages exist.
        #[test]
        fn matches_flat_model(ops in proptest::collection::vec(arb_op(), 0..20)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let size = 8 * PAGE;
            let m = MemExport::new(size);
            let mut model = vec![0u8; size as usize];
            rt.block_on(async {
                for op in &ops {
                    match op {
                        Op::Write(o, d) => {
                            m.write(*o, d, false).await.unwrap();
                            model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
                        }
                        Op::Trim(o, l) => {
                            m.trim(*o, *l).await.unwrap();
                            model[*o as usize..(*o + *l) as usize].fill(0);
                        }
                        Op::Zero(o, l, t) => {
                            m.write_zeroes(*o, *l, ZeroFlags { may_trim: *t, fast_only: false }).await.unwrap();
                            model[*o as usize..(*o + *l) as usize].fill(0);
                        }
                    }
                }
                let ext = m.extents(0, size).await.unwrap();
                prop_assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), size);
                let mut pos = 0usize;
                for e in ext {
                    if e.hole {
                        prop_assert!(model[pos..pos + e.length as usize].iter().all(|&b| b == 0));
                    }
                    pos += e.length as usize;
                }
                Ok(())
            })?;
            prop_assert_eq!(m.contents(), model);
        }
    }
}
