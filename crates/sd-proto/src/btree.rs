//! The index of a hyper volume (store_policy 1, PROTOCOL.md §5.8).
//!
//! A plain VDI maps object index → owning vid with a flat array of 2^20
//! entries in the inode. A hyper volume addresses 2^32 objects, so the same
//! 4 MiB area holds the root of a two-level B-tree instead: at depth 1 the
//! root itself is a sorted list of `{idx, vid}` records; when it fills up it
//! is split into two leaf objects (`vid<<32 | VDI_BTREE_BIT | n`) and the
//! root becomes a sorted list of `{max_idx, oid}` records pointing at them.
//!
//! [`HyperIndex`] is the decoded tree held in memory. Changes are made in
//! memory with [`HyperIndex::set`], which remembers what became dirty;
//! [`HyperIndex::take_writes`] then turns that into object writes ordered
//! so that a crash between any two of them never hides a record that was
//! reachable before: new leaves first, then additions to existing leaves,
//! then the root, and last the leaves a split shrank. A shrunken leaf may
//! therefore still hold records beyond its `max_idx` on disk; decoding
//! ignores records outside a leaf's key range, which is also what the
//! original's lookup does.

use crate::le::{put_u32, put_u64, u32_at, u64_at};
use std::collections::{BTreeMap, BTreeSet};

/// `sd_index_header.magic` ("bt").
pub const BTREE_MAGIC: u16 = 0x6274;
/// Bytes of a node header `{u16 magic, u16 depth, u32 entries}`.
pub const NODE_HEADER_SIZE: usize = 8;
/// Bytes of a node: the inode's `data_vdi_id` area, and a btree object.
pub const NODE_SIZE: usize = 4 << 20;
const RECORD_SIZE: usize = 8;
const INDIRECT_SIZE: usize = 16;
/// Records of a full leaf-level node (depth-1 root or leaf object).
pub const MAX_RECORDS: usize = (NODE_SIZE - NODE_HEADER_SIZE) / RECORD_SIZE;
/// Indirect records of a full depth-2 root.
pub const MAX_INDIRECT: usize = (NODE_SIZE - NODE_HEADER_SIZE) / INDIRECT_SIZE;

/// Why a B-tree node could not be decoded or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtreeError {
    #[error("bad B-tree magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported B-tree depth {0}")]
    BadDepth(u16),
    #[error("B-tree node claims {0} entries, more than fit")]
    TooManyEntries(u32),
    #[error("B-tree node is truncated")]
    Truncated,
    #[error("B-tree records are not in ascending order")]
    Unsorted,
    #[error("the B-tree is full")]
    Full,
    #[error("object index {0} is beyond the VDI's index")]
    OutOfRange(u64),
}

/// The 8-byte header every node starts with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NodeHeader {
    pub magic: u16,
    pub depth: u16,
    pub entries: u32,
}

impl NodeHeader {
    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() >= NODE_HEADER_SIZE).then(|| NodeHeader {
            magic: u16::from_le_bytes([b[0], b[1]]),
            depth: u16::from_le_bytes([b[2], b[3]]),
            entries: u32_at(b, 4),
        })
    }

    pub fn encode(&self) -> [u8; NODE_HEADER_SIZE] {
        let mut b = [0u8; NODE_HEADER_SIZE];
        b[0..2].copy_from_slice(&self.magic.to_le_bytes());
        b[2..4].copy_from_slice(&self.depth.to_le_bytes());
        put_u32(&mut b, 4, self.entries);
        b
    }

    /// True for an area that was never initialised (first u32 zero): an
    /// empty index.
    pub fn is_uninitialised(&self) -> bool {
        self.magic == 0 && self.depth == 0
    }

    /// Checks magic, depth and entry count; returns the bytes the node
    /// occupies (header and records).
    pub fn used_len(&self) -> Result<usize, BtreeError> {
        if self.magic != BTREE_MAGIC {
            return Err(BtreeError::BadMagic(self.magic));
        }
        let (size, max) = match self.depth {
            1 => (RECORD_SIZE, MAX_RECORDS),
            2 => (INDIRECT_SIZE, MAX_INDIRECT),
            d => return Err(BtreeError::BadDepth(d)),
        };
        if self.entries as usize > max {
            return Err(BtreeError::TooManyEntries(self.entries));
        }
        Ok(NODE_HEADER_SIZE + size * self.entries as usize)
    }
}

/// A decoded root: the records themselves, or pointers to leaves.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RootNode {
    /// Depth 1: `(idx, vid)` records.
    Records(Vec<(u32, u32)>),
    /// Depth 2: `(max_idx, leaf oid)`.
    Indirect(Vec<(u32, u64)>),
}

fn node_records(b: &[u8]) -> Result<(NodeHeader, &[u8]), BtreeError> {
    let h = NodeHeader::decode(b).ok_or(BtreeError::Truncated)?;
    let len = h.used_len()?;
    let body = b.get(NODE_HEADER_SIZE..len).ok_or(BtreeError::Truncated)?;
    Ok((h, body))
}

fn sorted<K: Ord + Copy, V>(v: &[(K, V)]) -> bool {
    v.windows(2).all(|w| w[0].0 < w[1].0)
}

fn decode_records(body: &[u8]) -> Result<Vec<(u32, u32)>, BtreeError> {
    let v: Vec<(u32, u32)> = body
        .chunks_exact(RECORD_SIZE)
        .map(|c| (u32_at(c, 0), u32_at(c, 4)))
        .collect();
    if sorted(&v) {
        Ok(v)
    } else {
        Err(BtreeError::Unsorted)
    }
}

impl RootNode {
    /// Decodes the root from the start of the `data_vdi_id` area (at least
    /// its header; the records its header announces must follow).
    pub fn decode(b: &[u8]) -> Result<Self, BtreeError> {
        let h = NodeHeader::decode(b).ok_or(BtreeError::Truncated)?;
        if h.is_uninitialised() {
            return Ok(RootNode::Records(Vec::new()));
        }
        let (h, body) = node_records(b)?;
        if h.depth == 1 {
            return decode_records(body).map(RootNode::Records);
        }
        let v: Vec<(u32, u64)> = body
            .chunks_exact(INDIRECT_SIZE)
            .map(|c| (u32_at(c, 0), u64_at(c, 8)))
            .collect();
        if sorted(&v) {
            Ok(RootNode::Indirect(v))
        } else {
            Err(BtreeError::Unsorted)
        }
    }
}

/// Decodes a leaf object (header and the records it announces).
pub fn decode_leaf(b: &[u8]) -> Result<Vec<(u32, u32)>, BtreeError> {
    let (h, body) = node_records(b)?;
    if h.depth != 1 {
        return Err(BtreeError::BadDepth(h.depth));
    }
    decode_records(body)
}

/// Node capacities. [`Limits::ORIGINAL`] is what fits in 4 MiB nodes;
/// tests use small ones to exercise splits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Records per leaf-level node (a depth-1 root or a leaf object).
    pub records: usize,
    /// Indirect records of a depth-2 root.
    pub indirect: usize,
}

impl Limits {
    pub const ORIGINAL: Limits = Limits {
        records: MAX_RECORDS,
        indirect: MAX_INDIRECT,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    max_idx: u32,
    oid: u64,
    records: Vec<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Flat(Vec<(u32, u32)>),
    Split(Vec<Leaf>),
}

/// The first leaf whose key range reaches `idx` (leaves are sorted by
/// `max_idx`); `leaves.len()` when `idx` is beyond them all.
fn leaf_for(leaves: &[Leaf], idx: u32) -> usize {
    leaves.partition_point(|l| l.max_idx < idx)
}

/// What changed since the last [`HyperIndex::take_writes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Dirty {
    /// First root record that changed (the header is rewritten with it).
    root_from: Option<usize>,
    /// Leaves created: written whole.
    created: BTreeSet<u64>,
    /// Existing leaves → first record that changed.
    changed: BTreeMap<u64, usize>,
    /// Existing leaves that lost records to a split: rewritten only after
    /// the root stops pointing readers at those records.
    shrunk: BTreeSet<u64>,
}

/// Where one write of a changed index goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NodeTarget {
    /// The root: offsets are relative to the inode's `data_vdi_id` area.
    Root,
    /// A btree object; `create` for a new one.
    Leaf { oid: u64, create: bool },
}

/// One write of a changed index, in the order returned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeWrite {
    pub target: NodeTarget,
    /// Offset inside the node.
    pub offset: u32,
    pub data: Vec<u8>,
}

/// A hyper volume's index in memory. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HyperIndex {
    shape: Shape,
    limits: Limits,
    dirty: Dirty,
}

impl Default for HyperIndex {
    fn default() -> Self {
        Self::empty(Limits::ORIGINAL)
    }
}

impl HyperIndex {
    pub fn empty(limits: Limits) -> Self {
        HyperIndex {
            shape: Shape::Flat(Vec::new()),
            limits,
            dirty: Dirty::default(),
        }
    }

    /// Builds the index from a decoded root and, for a depth-2 root, the
    /// records of each leaf in root order. Records of a leaf outside its
    /// key range (left behind by an interrupted split) are dropped.
    pub fn assemble(
        root: RootNode,
        leaves: Vec<Vec<(u32, u32)>>,
        limits: Limits,
    ) -> Result<Self, BtreeError> {
        let shape = match root {
            RootNode::Records(r) => Shape::Flat(r),
            RootNode::Indirect(ptrs) => {
                if ptrs.len() != leaves.len() {
                    return Err(BtreeError::Truncated);
                }
                let mut low: Option<u32> = None;
                let mut out = Vec::with_capacity(ptrs.len());
                for ((max_idx, oid), mut records) in ptrs.into_iter().zip(leaves) {
                    records.retain(|&(i, _)| i <= max_idx && low.is_none_or(|l| i > l));
                    low = Some(max_idx);
                    out.push(Leaf {
                        max_idx,
                        oid,
                        records,
                    });
                }
                Shape::Split(out)
            }
        };
        Ok(HyperIndex {
            shape,
            limits,
            dirty: Dirty::default(),
        })
    }

    /// The vid recorded for `idx`, 0 when absent.
    pub fn get(&self, idx: u32) -> u32 {
        let records = match &self.shape {
            Shape::Flat(r) => r,
            Shape::Split(leaves) => match leaves.get(leaf_for(leaves, idx)) {
                Some(l) => &l.records,
                None => return 0,
            },
        };
        match records.binary_search_by_key(&idx, |r| r.0) {
            Ok(p) => records[p].1,
            Err(_) => 0,
        }
    }

    /// Every record `(idx, vid)` in index order (vid may be 0 for a
    /// cleared entry).
    pub fn records(&self) -> Box<dyn Iterator<Item = (u32, u32)> + '_> {
        match &self.shape {
            Shape::Flat(r) => Box::new(r.iter().copied()),
            Shape::Split(leaves) => Box::new(leaves.iter().flat_map(|l| l.records.iter().copied())),
        }
    }

    /// Sets `idx → vid`. New leaves take their ids from `counter` (the
    /// inode's `btree_counter`) and are named after `owner`.
    pub fn set(
        &mut self,
        idx: u32,
        vid: u32,
        owner: u32,
        counter: &mut u32,
    ) -> Result<(), BtreeError> {
        while !self.try_set(idx, vid, owner, counter)? {}
        Ok(())
    }

    fn mark_root(&mut self, from: usize) {
        let d = &mut self.dirty.root_from;
        *d = Some(d.map_or(from, |f| f.min(from)));
    }

    fn mark_leaf(&mut self, oid: u64, from: usize) {
        if !self.dirty.created.contains(&oid) {
            let e = self.dirty.changed.entry(oid).or_insert(from);
            *e = (*e).min(from);
        }
    }

    fn new_leaf_oid(owner: u32, counter: &mut u32) -> Result<u64, BtreeError> {
        let id = *counter;
        *counter = counter.checked_add(1).ok_or(BtreeError::Full)?;
        Ok(crate::oid::vid_to_btree_oid(owner, id))
    }

    /// One step of [`HyperIndex::set`]; `false` when a split was made and
    /// the insertion has to be retried.
    fn try_set(
        &mut self,
        idx: u32,
        vid: u32,
        owner: u32,
        counter: &mut u32,
    ) -> Result<bool, BtreeError> {
        let limits = self.limits;
        match &mut self.shape {
            Shape::Flat(records) => match records.binary_search_by_key(&idx, |r| r.0) {
                Ok(p) => {
                    records[p].1 = vid;
                    self.mark_root(p);
                }
                Err(p) if records.len() < limits.records => {
                    records.insert(p, (idx, vid));
                    self.mark_root(p);
                }
                Err(_) => {
                    // The root is full: it becomes two leaves.
                    let right = records.split_off(records.len() / 2);
                    let left = std::mem::take(records);
                    let mut leaves = Vec::new();
                    for half in [left, right] {
                        let oid = Self::new_leaf_oid(owner, counter)?;
                        self.dirty.created.insert(oid);
                        leaves.push(Leaf {
                            max_idx: half.last().map_or(0, |r| r.0),
                            oid,
                            records: half,
                        });
                    }
                    self.shape = Shape::Split(leaves);
                    self.mark_root(0);
                    return Ok(false);
                }
            },
            Shape::Split(leaves) => {
                let found = Some(leaf_for(leaves, idx))
                    .filter(|&li| li < leaves.len())
                    .or_else(|| leaves.len().checked_sub(1));
                let full_last = |li: usize| {
                    let l = &leaves[li];
                    idx > l.max_idx && l.records.len() >= limits.records
                };
                let Some(li) = found.filter(|&li| !full_last(li)) else {
                    // Past the last leaf, which is full (or there is
                    // none): a new leaf continues the tree.
                    if leaves.len() >= limits.indirect {
                        return Err(BtreeError::Full);
                    }
                    let oid = Self::new_leaf_oid(owner, counter)?;
                    self.dirty.created.insert(oid);
                    leaves.push(Leaf {
                        max_idx: idx,
                        oid,
                        records: vec![(idx, vid)],
                    });
                    let at = leaves.len() - 1;
                    self.mark_root(at);
                    return Ok(true);
                };
                let leaf = &mut leaves[li];
                match leaf.records.binary_search_by_key(&idx, |r| r.0) {
                    Ok(p) => {
                        leaf.records[p].1 = vid;
                        let oid = leaf.oid;
                        self.mark_leaf(oid, p);
                    }
                    Err(p) if leaf.records.len() < limits.records => {
                        leaf.records.insert(p, (idx, vid));
                        let oid = leaf.oid;
                        if idx > leaf.max_idx {
                            // Appended past the last leaf: the root's key grows.
                            leaf.max_idx = idx;
                            self.mark_root(li);
                        }
                        self.mark_leaf(oid, p);
                    }
                    Err(_) => {
                        // A full leaf: its upper half moves to a new leaf.
                        if leaves.len() >= limits.indirect {
                            return Err(BtreeError::Full);
                        }
                        let oid = Self::new_leaf_oid(owner, counter)?;
                        let leaf = &mut leaves[li];
                        let upper = leaf.records.split_off(leaf.records.len() / 2);
                        let new = Leaf {
                            max_idx: leaf.max_idx,
                            oid,
                            records: upper,
                        };
                        leaf.max_idx = leaf.records.last().map_or(0, |r| r.0);
                        let old = leaf.oid;
                        leaves.insert(li + 1, new);
                        self.dirty.created.insert(oid);
                        self.dirty.shrunk.insert(old);
                        self.mark_leaf(old, 0);
                        self.mark_root(li);
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Writes of one node whose records from `from` on changed: the
    /// header and those records, as one write when the unchanged records
    /// in between are few (they are resent), else as two.
    fn node_writes<R>(
        target: NodeTarget,
        depth: u16,
        records: &[R],
        from: usize,
        encode: impl Fn(&R, &mut [u8]),
    ) -> Vec<NodeWrite> {
        let rec = if depth == 1 {
            RECORD_SIZE
        } else {
            INDIRECT_SIZE
        };
        let from = from.min(records.len());
        let start = if from * rec <= 4096 { 0 } else { from };
        let mut body = vec![0u8; rec * (records.len() - start)];
        for (r, b) in records[start..].iter().zip(body.chunks_exact_mut(rec)) {
            encode(r, b);
        }
        let header = NodeHeader {
            magic: BTREE_MAGIC,
            depth,
            entries: records.len() as u32,
        }
        .encode()
        .to_vec();
        if start == 0 {
            let mut data = header;
            data.extend_from_slice(&body);
            return vec![NodeWrite {
                target,
                offset: 0,
                data,
            }];
        }
        vec![
            NodeWrite {
                target,
                offset: 0,
                data: header,
            },
            NodeWrite {
                target,
                offset: (NODE_HEADER_SIZE + start * rec) as u32,
                data: body,
            },
        ]
    }

    fn encode_record(r: &(u32, u32), b: &mut [u8]) {
        put_u32(b, 0, r.0);
        put_u32(b, 4, r.1);
    }

    fn leaf_writes(leaf: &Leaf, create: bool, from: usize) -> Vec<NodeWrite> {
        let target = NodeTarget::Leaf {
            oid: leaf.oid,
            create,
        };
        Self::node_writes(target, 1, &leaf.records, from, Self::encode_record)
    }

    /// True when changes are waiting for [`HyperIndex::take_writes`].
    pub fn is_dirty(&self) -> bool {
        self.dirty != Dirty::default()
    }

    /// The writes that persist every change made since the last call, in
    /// a crash-safe order (see the module documentation), and forgets
    /// them. The caller persists `btree_counter` before these when it
    /// changed.
    pub fn take_writes(&mut self) -> Vec<NodeWrite> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut early = Vec::new();
        let mut late = Vec::new();
        let mut root = Vec::new();
        match &self.shape {
            Shape::Flat(records) => {
                if let Some(from) = dirty.root_from {
                    root =
                        Self::node_writes(NodeTarget::Root, 1, records, from, Self::encode_record);
                }
            }
            Shape::Split(leaves) => {
                for leaf in leaves {
                    if dirty.created.contains(&leaf.oid) {
                        early.extend(Self::leaf_writes(leaf, true, 0));
                    } else if let Some(&from) = dirty.changed.get(&leaf.oid) {
                        let w = Self::leaf_writes(leaf, false, from);
                        if dirty.shrunk.contains(&leaf.oid) {
                            late.extend(w);
                        } else {
                            early.extend(w);
                        }
                    }
                }
                if let Some(from) = dirty.root_from {
                    root = Self::node_writes(NodeTarget::Root, 2, leaves, from, |l, b| {
                        put_u32(b, 0, l.max_idx);
                        put_u64(b, 8, l.oid);
                    });
                }
            }
        }
        early.extend(root);
        early.extend(late);
        early
    }

    /// Encodes the root as written by a fresh create: an initialised,
    /// empty depth-1 node.
    pub fn empty_root() -> [u8; NODE_HEADER_SIZE] {
        NodeHeader {
            magic: BTREE_MAGIC,
            depth: 1,
            entries: 0,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const OWNER: u32 = 0x7c2b25;

    /// Nodes as stored: the root area and the btree objects.
    #[derive(Clone, Default)]
    struct Disk {
        root: Vec<u8>,
        leaves: HashMap<u64, Vec<u8>>,
    }

    impl Disk {
        fn apply(&mut self, w: &NodeWrite) {
            let node = match w.target {
                NodeTarget::Root => &mut self.root,
                NodeTarget::Leaf { oid, create } => {
                    if create {
                        assert!(
                            !self.leaves.contains_key(&oid),
                            "leaf {oid:x} created twice"
                        );
                    } else {
                        assert!(
                            self.leaves.contains_key(&oid),
                            "write to missing leaf {oid:x}"
                        );
                    }
                    self.leaves.entry(oid).or_default()
                }
            };
            let end = w.offset as usize + w.data.len();
            if node.len() < end {
                node.resize(end, 0);
            }
            node[w.offset as usize..end].copy_from_slice(&w.data);
        }

        fn load(&self, limits: Limits) -> HyperIndex {
            let mut root = self.root.clone();
            root.resize(root.len().max(NODE_HEADER_SIZE), 0);
            let root = RootNode::decode(&root).unwrap();
            let leaves = match &root {
                RootNode::Records(_) => Vec::new(),
                RootNode::Indirect(p) => p
                    .iter()
                    .map(|(_, oid)| decode_leaf(&self.leaves[oid]).unwrap())
                    .collect(),
            };
            HyperIndex::assemble(root, leaves, limits).unwrap()
        }
    }

    /// An empty tree with small nodes.
    fn small(records: usize, indirect: usize) -> (HyperIndex, Limits) {
        let limits = Limits { records, indirect };
        (HyperIndex::empty(limits), limits)
    }

    fn records(h: &HyperIndex) -> Vec<(u32, u32)> {
        h.records().collect()
    }

    #[test]
    fn empty_and_uninitialised_roots_read_as_no_objects() {
        let h = Disk::default().load(Limits::ORIGINAL);
        assert_eq!(h.get(0), 0);
        assert_eq!(h.get(u32::MAX), 0);
        let d = Disk {
            root: HyperIndex::empty_root().to_vec(),
            ..Default::default()
        };
        assert_eq!(records(&d.load(Limits::ORIGINAL)), vec![]);
        assert_eq!(HyperIndex::empty_root(), [0x74, 0x62, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn depth_one_layout_is_the_originals() {
        let mut h = HyperIndex::default();
        let mut counter = 0;
        h.set(4_194_303, OWNER, OWNER, &mut counter).unwrap();
        h.set(7, OWNER, OWNER, &mut counter).unwrap();
        let w = h.take_writes();
        assert_eq!(counter, 0);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].target, NodeTarget::Root);
        assert_eq!(w[0].offset, 0);
        let mut want = vec![0x74, 0x62, 1, 0, 2, 0, 0, 0];
        for (i, v) in [(7u32, OWNER), (4_194_303, OWNER)] {
            want.extend(i.to_le_bytes());
            want.extend(v.to_le_bytes());
        }
        assert_eq!(w[0].data, want);
        assert!(!h.is_dirty());
        assert!(h.take_writes().is_empty());
    }

    #[test]
    fn only_the_changed_tail_of_a_big_node_is_written() {
        let mut h = HyperIndex::default();
        let mut counter = 0;
        for i in 0..1000 {
            h.set(i * 2, OWNER, OWNER, &mut counter).unwrap();
        }
        let first = h.take_writes();
        assert_eq!(first.len(), 1, "a fresh node is written whole, once");
        assert_eq!(first[0].data.len(), NODE_HEADER_SIZE + 1000 * RECORD_SIZE);
        // A record inserted near the end moves only the records after it.
        h.set(1901, OWNER, OWNER, &mut counter).unwrap();
        let w = h.take_writes();
        let at = 951; // records 0..951 have idx < 1901
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].offset, w[0].data.len()), (0, NODE_HEADER_SIZE));
        assert_eq!(w[0].data, header(1, 1001));
        assert_eq!(
            (w[1].offset as usize, w[1].data.len()),
            (
                NODE_HEADER_SIZE + at * RECORD_SIZE,
                (1001 - at) * RECORD_SIZE
            )
        );
        assert_eq!(&w[1].data[..8], &[0x6d, 7, 0, 0, 0x25, 0x2b, 0x7c, 0]);
    }

    #[test]
    fn full_root_splits_into_two_leaves_named_by_the_counter() {
        let (mut h, limits) = small(4, 8);
        let mut counter = 5;
        for i in 0..4 {
            h.set(i * 10, OWNER, OWNER, &mut counter).unwrap();
        }
        let mut disk = Disk::default();
        h.take_writes().iter().for_each(|w| disk.apply(w));
        h.set(15, OWNER, OWNER, &mut counter).unwrap();
        assert_eq!(counter, 7);
        let w = h.take_writes();
        let left = vid_to_btree_oid_for_test(5);
        let right = vid_to_btree_oid_for_test(6);
        let targets: Vec<_> = w.iter().map(|w| w.target).collect();
        assert_eq!(
            targets,
            vec![
                NodeTarget::Leaf {
                    oid: left,
                    create: true
                },
                NodeTarget::Leaf {
                    oid: right,
                    create: true
                },
                NodeTarget::Root
            ]
        );
        w.iter().for_each(|w| disk.apply(w));
        assert_eq!(
            RootNode::decode(&disk.root).unwrap(),
            RootNode::Indirect(vec![(10, left), (30, right)])
        );
        assert_eq!(
            decode_leaf(&disk.leaves[&right]).unwrap(),
            vec![(15, OWNER), (20, OWNER), (30, OWNER)]
        );
        assert_eq!(records(&disk.load(limits)), records(&h));
    }

    fn vid_to_btree_oid_for_test(id: u32) -> u64 {
        crate::oid::vid_to_btree_oid(OWNER, id)
    }

    #[test]
    fn records_beyond_a_leafs_key_range_are_ignored() {
        // An interrupted split leaves the old leaf's upper half behind.
        let root = RootNode::Indirect(vec![(10, 1), (30, 2)]);
        let leaves = vec![vec![(5, 9), (10, 9), (20, 8)], vec![(20, 7), (30, 7)]];
        let h = HyperIndex::assemble(root, leaves, Limits::ORIGINAL).unwrap();
        assert_eq!(records(&h), vec![(5, 9), (10, 9), (20, 7), (30, 7)]);
        assert_eq!(h.get(20), 7);
        assert_eq!(h.get(31), 0);
    }

    #[test]
    fn a_full_tree_is_an_error_not_a_panic() {
        let (mut h, _) = small(2, 2);
        let mut counter = 0;
        let mut res = Ok(());
        for i in 0..10 {
            res = h.set(i, 1, OWNER, &mut counter);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(BtreeError::Full));
    }

    fn header(depth: u16, entries: u32) -> [u8; NODE_HEADER_SIZE] {
        NodeHeader {
            magic: BTREE_MAGIC,
            depth,
            entries,
        }
        .encode()
    }

    #[test]
    fn bad_nodes_are_rejected() {
        let mut b = HyperIndex::empty_root().to_vec();
        b[0] = 0x75;
        assert_eq!(RootNode::decode(&b), Err(BtreeError::BadMagic(0x6275)));
        let b = header(3, 0);
        assert_eq!(RootNode::decode(&b), Err(BtreeError::BadDepth(3)));
        let b = header(1, 2);
        assert_eq!(RootNode::decode(&b), Err(BtreeError::Truncated));
        let mut b = header(1, 2).to_vec();
        b.extend([5, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(decode_leaf(&b), Err(BtreeError::Unsorted));
        let b = header(2, MAX_INDIRECT as u32 + 1);
        assert_eq!(
            RootNode::decode(&b),
            Err(BtreeError::TooManyEntries(MAX_INDIRECT as u32 + 1))
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(RootNode::Records(r)) = RootNode::decode(&b) {
                prop_assert!(r.windows(2).all(|w| w[0].0 < w[1].0));
            }
            if let Ok(r) = decode_leaf(&b) {
                prop_assert!(r.windows(2).all(|w| w[0].0 < w[1].0));
            }
        }

        /// Random batches of sets against a map: after each batch the
        /// tree in memory and the tree reloaded from the written nodes
        /// both equal the map, and a crash after any prefix of a batch's
        /// writes loses no record that existed before the batch.
        #[test]
        fn matches_a_map_and_survives_crashes(
            records_limit in 2usize..7,
            batches in proptest::collection::vec(
                (proptest::collection::vec((0u32..200, 0u32..4), 1..12), any::<prop::sample::Index>()),
                1..25,
            ),
        ) {
            let (mut h, limits) = small(records_limit, 1000);
            let mut disk = Disk::default();
            let mut counter = 0u32;
            let mut model = BTreeMap::new();
            for (sets, cut) in batches {
                let before = model.clone();
                for (idx, vid) in sets {
                    h.set(idx, vid, OWNER, &mut counter).unwrap();
                    model.insert(idx, vid);
                }
                let want: Vec<(u32, u32)> = model.iter().map(|(&k, &v)| (k, v)).collect();
                prop_assert_eq!(records(&h), want.clone());
                for (&k, &v) in &model {
                    prop_assert_eq!(h.get(k), v);
                }
                let writes = h.take_writes();
                let mut crashed = disk.clone();
                for w in &writes[..cut.index(writes.len() + 1)] {
                    crashed.apply(w);
                }
                let partial = crashed.load(limits);
                for (&k, &v) in &before {
                    let got = partial.get(k);
                    prop_assert!(got == v || got == model[&k], "idx {} lost: {} not {} or {}", k, got, v, model[&k]);
                }
                for w in &writes {
                    disk.apply(w);
                }
                prop_assert_eq!(records(&disk.load(limits)), want);
            }
        }
    }
}
