//! The inode object (`sd_inode`, §5.4).
//!
//! The inode is 12 MiB on disk but almost always read in prefixes (the
//! 4664-byte header, or header + data_vdi_id for legacy clients), so the
//! header is its own type and the two big arrays are decoded only on demand.

use crate::btree::{BtreeError, HyperIndex, NodeTarget};
use crate::le::*;
use std::collections::BTreeSet;

pub const SD_INODE_SIZE: usize = 12_587_576;
pub const SD_INODE_HEADER_SIZE: usize = 4664;
/// Offset of `data_vdi_id[0]`.
pub const DATA_VDI_ID_OFFSET: usize = 4664;
/// Offset of `store_policy`.
pub const STORE_POLICY_OFFSET: usize = 553;
/// Offset of `btree_counter` (hyper volumes).
pub const BTREE_COUNTER_OFFSET: usize = 568;
/// Offset of `gref[0]`; also the size of the legacy (QEMU/tgt) inode.
pub const GREF_OFFSET: usize = 4_198_968;
/// Entries of `data_vdi_id` as a length.
const NR_ENTRIES: usize = crate::consts::SD_INODE_DATA_INDEX as usize;
/// Bytes of the header fields that carry meaning (the rest up to 4664 is
/// the unused former child array).
pub const INODE_FIELDS_SIZE: usize = 572;

/// Offset of `data_vdi_id[idx]`.
pub fn data_vdi_id_offset(idx: u32) -> usize {
    DATA_VDI_ID_OFFSET + 4 * idx as usize
}
/// Offset of `gref[idx]`.
pub fn gref_offset(idx: u32) -> usize {
    GREF_OFFSET + 8 * idx as usize
}

/// The fixed header of an inode.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InodeHeader {
    pub name: [u8; 256],
    pub tag: [u8; 256],
    pub create_time: u64,
    pub snap_ctime: u64,
    pub vm_clock_nsec: u64,
    pub vdi_size: u64,
    pub vm_state_size: u64,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub nr_copies: u8,
    pub block_size_shift: u8,
    pub snap_id: u32,
    pub vdi_id: u32,
    pub parent_vdi_id: u32,
    pub btree_counter: u32,
}

impl Default for InodeHeader {
    fn default() -> Self {
        InodeHeader {
            name: [0; 256],
            tag: [0; 256],
            create_time: 0,
            snap_ctime: 0,
            vm_clock_nsec: 0,
            vdi_size: 0,
            vm_state_size: 0,
            copy_policy: 0,
            store_policy: 0,
            nr_copies: 0,
            block_size_shift: 0,
            snap_id: 0,
            vdi_id: 0,
            parent_vdi_id: 0,
            btree_counter: 0,
        }
    }
}

impl InodeHeader {
    /// Decodes from a buffer of at least [`INODE_FIELDS_SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < INODE_FIELDS_SIZE {
            return None;
        }
        Some(InodeHeader {
            name: b[0..256].try_into().unwrap(),
            tag: b[256..512].try_into().unwrap(),
            create_time: u64_at(b, 512),
            snap_ctime: u64_at(b, 520),
            vm_clock_nsec: u64_at(b, 528),
            vdi_size: u64_at(b, 536),
            vm_state_size: u64_at(b, 544),
            copy_policy: b[552],
            store_policy: b[553],
            nr_copies: b[554],
            block_size_shift: b[555],
            snap_id: u32_at(b, 556),
            vdi_id: u32_at(b, 560),
            parent_vdi_id: u32_at(b, 564),
            btree_counter: u32_at(b, 568),
        })
    }

    /// Writes the fields into the first 572 bytes of `b` (the rest of the
    /// 4664-byte header is left as is).
    pub fn encode_into(&self, b: &mut [u8]) {
        b[0..256].copy_from_slice(&self.name);
        b[256..512].copy_from_slice(&self.tag);
        put_u64(b, 512, self.create_time);
        put_u64(b, 520, self.snap_ctime);
        put_u64(b, 528, self.vm_clock_nsec);
        put_u64(b, 536, self.vdi_size);
        put_u64(b, 544, self.vm_state_size);
        b[552] = self.copy_policy;
        b[553] = self.store_policy;
        b[554] = self.nr_copies;
        b[555] = self.block_size_shift;
        put_u32(b, 556, self.snap_id);
        put_u32(b, 560, self.vdi_id);
        put_u32(b, 564, self.parent_vdi_id);
        put_u32(b, 568, self.btree_counter);
    }

    /// The full 4664-byte header.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_INODE_HEADER_SIZE];
        self.encode_into(&mut b);
        b
    }

    pub fn name_bytes(&self) -> &[u8] {
        cstr(&self.name)
    }
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }
    pub fn tag_str(&self) -> String {
        String::from_utf8_lossy(cstr(&self.tag)).into_owned()
    }
    pub fn is_snapshot(&self) -> bool {
        self.snap_ctime != 0
    }
    pub fn is_deleted(&self) -> bool {
        self.name[0] == 0
    }
    pub fn object_size(&self) -> u64 {
        1u64 << self.block_size_shift
    }
    /// Number of data objects that cover `vdi_size`.
    pub fn nr_objects(&self) -> u64 {
        self.vdi_size.div_ceil(self.object_size())
    }
}

/// Generational reference of one index (§6.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Gref {
    pub generation: u32,
    pub count: u32,
}

/// A whole inode, decoded from as long a prefix as was read: entries
/// missing from the prefix read as zero.
///
/// The object index (which vid owns each data object) is a flat array for
/// plain VDIs and a B-tree for hyper volumes; [`Inode::get_vid`],
/// [`Inode::set_vid`] and [`Inode::take_index_writes`] hide which, so every
/// client path handles both. `data_vdi_id` is the flat array (all zero for
/// a hyper volume, whose index is `hyper`).
#[derive(Clone, Debug)]
pub struct Inode {
    pub header: InodeHeader,
    pub data_vdi_id: Vec<u32>,
    pub gref: Vec<Gref>,
    /// The B-tree of a hyper volume, once loaded.
    pub hyper: Option<HyperIndex>,
    dirty: IndexDirty,
}

/// Index changes not yet written back.
#[derive(Clone, Debug, Default)]
struct IndexDirty {
    /// Flat entries set since the last write-back.
    entries: BTreeSet<u32>,
    /// `btree_counter` grew.
    counter: bool,
}

/// One object write that persists index changes (see
/// [`Inode::take_index_writes`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IndexWrite {
    pub oid: u64,
    pub offset: u32,
    pub data: Vec<u8>,
    /// A new btree object (CREATE_AND_WRITE rather than WRITE).
    pub create: bool,
}

impl Inode {
    /// An inode with an empty index as long as the VDI needs (a flat
    /// index grows on demand up to its 2^20 entries, so a small VDI's
    /// inode does not cost the full 12 MiB in memory).
    pub fn new(header: InodeHeader) -> Self {
        let hyper = (header.store_policy != 0).then(HyperIndex::default);
        let n = match hyper {
            Some(_) => 0,
            None => header.nr_objects().min(NR_ENTRIES as u64) as usize,
        };
        Inode {
            header,
            data_vdi_id: vec![0; n],
            gref: vec![Gref::default(); n],
            hyper,
            dirty: IndexDirty::default(),
        }
    }

    /// The vid owning data object `idx` (0 = not allocated).
    pub fn get_vid(&self, idx: u64) -> u32 {
        match &self.hyper {
            Some(h) => u32::try_from(idx).map_or(0, |i| h.get(i)),
            None => self.data_vdi_id.get(idx as usize).copied().unwrap_or(0),
        }
    }

    /// Records `idx → vid` in memory; [`Inode::take_index_writes`] says
    /// how to persist it.
    pub fn set_vid(&mut self, idx: u64, vid: u32) -> Result<(), BtreeError> {
        match &mut self.hyper {
            Some(h) => {
                let i = u32::try_from(idx).map_err(|_| BtreeError::OutOfRange(idx))?;
                let before = self.header.btree_counter;
                h.set(i, vid, self.header.vdi_id, &mut self.header.btree_counter)?;
                self.dirty.counter |= before != self.header.btree_counter;
            }
            None => {
                if idx >= NR_ENTRIES as u64 {
                    return Err(BtreeError::OutOfRange(idx));
                }
                let i = idx as usize;
                if i >= self.data_vdi_id.len() {
                    self.data_vdi_id.resize(i + 1, 0);
                }
                self.data_vdi_id[i] = vid;
                self.dirty.entries.insert(idx as u32);
            }
        }
        Ok(())
    }

    /// The writes that persist every [`Inode::set_vid`] since the last
    /// call, to be applied in order: for a flat index one inode write per
    /// run of consecutive entries; for a B-tree `btree_counter` first,
    /// then the nodes in the order [`HyperIndex::take_writes`] gives.
    pub fn take_index_writes(&mut self) -> Vec<IndexWrite> {
        let ino = crate::oid::vid_to_vdi_oid(self.header.vdi_id);
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        if let Some(h) = &mut self.hyper {
            if dirty.counter {
                out.push(IndexWrite {
                    oid: ino,
                    offset: BTREE_COUNTER_OFFSET as u32,
                    data: self.header.btree_counter.to_le_bytes().to_vec(),
                    create: false,
                });
            }
            for w in h.take_writes() {
                let (oid, offset, create) = match w.target {
                    NodeTarget::Root => (ino, DATA_VDI_ID_OFFSET as u32 + w.offset, false),
                    NodeTarget::Leaf { oid, create } => (oid, w.offset, create),
                };
                out.push(IndexWrite {
                    oid,
                    offset,
                    data: w.data,
                    create,
                });
            }
            return out;
        }
        let idxs: Vec<u32> = dirty.entries.into_iter().collect();
        for run in idxs.chunk_by(|a, b| a + 1 == *b) {
            let (first, last) = (run[0], run[run.len() - 1]);
            out.push(IndexWrite {
                oid: ino,
                offset: data_vdi_id_offset(first) as u32,
                data: self.encode_entries(first, last + 1),
                create: false,
            });
        }
        out
    }

    /// Every allocated data object `(idx, vid)` in index order, of the
    /// first `nr` indexes of a flat index or the whole B-tree.
    pub fn allocated(&self, nr: u64) -> Box<dyn Iterator<Item = (u64, u32)> + '_> {
        match &self.hyper {
            Some(h) => Box::new(h.records().filter(|r| r.1 != 0).map(|(i, v)| (i as u64, v))),
            None => Box::new(
                self.data_vdi_id
                    .iter()
                    .take(nr.min(NR_ENTRIES as u64) as usize)
                    .enumerate()
                    .filter(|e| *e.1 != 0)
                    .map(|(i, &v)| (i as u64, v)),
            ),
        }
    }

    /// Decodes the prefix `b`. A hyper volume's B-tree is not decoded
    /// (its leaves are other objects): `hyper` is left empty.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let header = InodeHeader::decode(b)?;
        let mut ino = Inode::new(header);
        if b.len() > DATA_VDI_ID_OFFSET {
            let end = b.len().min(GREF_OFFSET);
            let entries = b[DATA_VDI_ID_OFFSET..end].chunks_exact(4);
            if ino.data_vdi_id.len() < entries.len() {
                ino.data_vdi_id.resize(entries.len(), 0);
            }
            for (i, c) in entries.enumerate() {
                ino.data_vdi_id[i] = u32::from_le_bytes(c.try_into().unwrap());
            }
        }
        if b.len() > GREF_OFFSET {
            let grefs = b[GREF_OFFSET..b.len().min(SD_INODE_SIZE)].chunks_exact(8);
            if ino.gref.len() < grefs.len() {
                ino.gref.resize(grefs.len(), Gref::default());
            }
            for (i, c) in grefs.enumerate() {
                ino.gref[i] = Gref {
                    generation: u32_at(c, 0),
                    count: u32_at(c, 4),
                };
            }
        }
        Some(ino)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_INODE_SIZE];
        self.header.encode_into(&mut b);
        for (i, v) in self.data_vdi_id.iter().enumerate() {
            put_u32(&mut b, DATA_VDI_ID_OFFSET + 4 * i, *v);
        }
        for (i, g) in self.gref.iter().enumerate() {
            put_u32(&mut b, GREF_OFFSET + 8 * i, g.generation);
            put_u32(&mut b, GREF_OFFSET + 8 * i + 4, g.count);
        }
        b
    }

    /// Encodes `data_vdi_id[start..end]` as the payload of an inode write.
    pub fn encode_entries(&self, start: u32, end: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 * (end - start) as usize);
        for i in start..end {
            let e = self.data_vdi_id.get(i as usize).copied().unwrap_or(0);
            v.extend_from_slice(&e.to_le_bytes());
        }
        v
    }
}

/// copy_policy helpers (§5.5).
pub mod policy {
    /// Encodes `d` data and `p` parity strips.
    pub fn encode(d: u8, p: u8) -> u8 {
        ((d / 2) << 4) | p
    }
    /// Decodes into (data strips, parity strips); None for plain replication.
    pub fn decode(policy: u8) -> Option<(u8, u8)> {
        if policy == 0 {
            None
        } else {
            Some(((policy >> 4) * 2, policy & 0x0f))
        }
    }
    /// Human redundancy string: `3` or `4:2`.
    pub fn redundancy_string(copies: u8, policy: u8) -> String {
        match decode(policy) {
            Some((d, p)) => format!("{d}:{p}"),
            None => copies.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flat_index_changes_are_written_as_runs() {
        let mut ino = Inode::new(InodeHeader {
            vdi_id: 0xab,
            ..Default::default()
        });
        for i in [3, 4, 5, 9] {
            ino.set_vid(i, 0xab).unwrap();
        }
        assert_eq!(
            ino.set_vid(1 << 20, 1),
            Err(BtreeError::OutOfRange(1 << 20))
        );
        let w = ino.take_index_writes();
        let got: Vec<(u64, u32, usize)> =
            w.iter().map(|w| (w.oid, w.offset, w.data.len())).collect();
        let oid = crate::oid::vid_to_vdi_oid(0xab);
        assert_eq!(
            got,
            vec![
                (oid, data_vdi_id_offset(3) as u32, 12),
                (oid, data_vdi_id_offset(9) as u32, 4)
            ]
        );
        assert!(ino.take_index_writes().is_empty());
        assert_eq!(ino.get_vid(4), 0xab);
        assert_eq!(
            ino.allocated(10).collect::<Vec<_>>(),
            vec![(3, 0xab), (4, 0xab), (5, 0xab), (9, 0xab)]
        );
    }

    #[test]
    fn hyper_index_writes_go_to_the_root_area() {
        let mut ino = Inode::new(InodeHeader {
            vdi_id: 0xab,
            store_policy: 1,
            ..Default::default()
        });
        ino.set_vid(4_000_000_000, 0xab).unwrap();
        assert_eq!(ino.get_vid(4_000_000_000), 0xab);
        assert_eq!(ino.get_vid(1 << 33), 0);
        let w = ino.take_index_writes();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].offset as usize, DATA_VDI_ID_OFFSET);
        assert!(ino.data_vdi_id.iter().all(|&e| e == 0));
    }

    #[test]
    fn layout() {
        let mut h = InodeHeader::default();
        h.name[..4].copy_from_slice(b"test");
        h.vdi_size = 20 << 30;
        h.nr_copies = 3;
        h.block_size_shift = 22;
        h.vdi_id = 0x7c2b25;
        h.snap_id = 1;
        let mut ino = Inode::new(h.clone());
        ino.data_vdi_id[1] = 0x7c2b25;
        ino.gref[1] = Gref {
            generation: 2,
            count: 3,
        };
        let b = ino.encode();
        assert_eq!(b.len(), SD_INODE_SIZE);
        assert_eq!(b[554], 3);
        assert_eq!(b[555], 22);
        assert_eq!(u32_at(&b, 560), 0x7c2b25);
        assert_eq!(u32_at(&b, data_vdi_id_offset(1)), 0x7c2b25);
        assert_eq!(u32_at(&b, gref_offset(1)), 2);
        assert_eq!(u32_at(&b, gref_offset(1) + 4), 3);
        let back = Inode::decode(&b).unwrap();
        assert_eq!(back.header, h);
        assert_eq!(back.data_vdi_id[1], 0x7c2b25);
        assert_eq!(
            back.gref[1],
            Gref {
                generation: 2,
                count: 3
            }
        );
        assert_eq!(h.nr_objects(), 5120);
    }

    #[test]
    fn policies() {
        assert_eq!(policy::encode(4, 2), 0x22);
        assert_eq!(policy::encode(2, 1), 0x11);
        assert_eq!(policy::encode(8, 3), 0x43);
        assert_eq!(policy::encode(16, 15), 0x8f);
        assert_eq!(policy::decode(0x8f), Some((16, 15)));
        assert_eq!(policy::redundancy_string(6, 0x22), "4:2");
        assert_eq!(policy::redundancy_string(3, 0), "3");
    }

    proptest! {
        #[test]
        fn header_decode_any_prefix(v in proptest::collection::vec(any::<u8>(), 0..5000)) {
            match InodeHeader::decode(&v) {
                None => prop_assert!(v.len() < INODE_FIELDS_SIZE),
                Some(h) => {
                    let mut b = v.clone();
                    h.encode_into(&mut b);
                    prop_assert_eq!(b, v);
                }
            }
        }
    }
}
