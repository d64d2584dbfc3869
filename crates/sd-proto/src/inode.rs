//! The inode object (`sd_inode`, §5.4).
//!
//! The inode is 12 MiB on disk but almost always read in prefixes (the
//! 4664-byte header, or header + data_vdi_id for legacy clients), so the
//! header is its own type and the two big arrays are decoded only on demand.

use crate::le::*;

pub const SD_INODE_SIZE: usize = 12_587_576;
pub const SD_INODE_HEADER_SIZE: usize = 4664;
/// Offset of `data_vdi_id[0]`.
pub const DATA_VDI_ID_OFFSET: usize = 4664;
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
#[derive(Clone, Debug)]
pub struct Inode {
    pub header: InodeHeader,
    pub data_vdi_id: Vec<u32>,
    pub gref: Vec<Gref>,
}

impl Inode {
    pub fn new(header: InodeHeader) -> Self {
        Inode {
            header,
            data_vdi_id: vec![0; NR_ENTRIES],
            gref: vec![Gref::default(); NR_ENTRIES],
        }
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let header = InodeHeader::decode(b)?;
        let mut ino = Inode::new(header);
        if b.len() > DATA_VDI_ID_OFFSET {
            let end = b.len().min(GREF_OFFSET);
            for (i, c) in b[DATA_VDI_ID_OFFSET..end].chunks_exact(4).enumerate() {
                ino.data_vdi_id[i] = u32::from_le_bytes(c.try_into().unwrap());
            }
        }
        if b.len() > GREF_OFFSET {
            for (i, c) in b[GREF_OFFSET..b.len().min(SD_INODE_SIZE)]
                .chunks_exact(8)
                .enumerate()
            {
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
            v.extend_from_slice(&self.data_vdi_id[i as usize].to_le_bytes());
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
