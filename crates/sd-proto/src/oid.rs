//! Object id helpers (§5.1).

pub const VDI_BIT: u64 = 1 << 63;
pub const VMSTATE_BIT: u64 = 1 << 62;
pub const VDI_ATTR_BIT: u64 = 1 << 61;
pub const VDI_BTREE_BIT: u64 = 1 << 60;
pub const LEDGER_BIT: u64 = 1 << 59;
pub const VDI_SPACE_SHIFT: u32 = 32;
const TYPE_BITS: u64 = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT;

pub fn vid_to_vdi_oid(vid: u32) -> u64 {
    VDI_BIT | ((vid as u64) << VDI_SPACE_SHIFT)
}
pub fn vid_to_data_oid(vid: u32, idx: u64) -> u64 {
    ((vid as u64) << VDI_SPACE_SHIFT) | (idx & 0xFFFF_FFFF)
}
pub fn vid_to_vmstate_oid(vid: u32, idx: u32) -> u64 {
    VMSTATE_BIT | ((vid as u64) << VDI_SPACE_SHIFT) | idx as u64
}
pub fn vid_to_attr_oid(vid: u32, attr_id: u32) -> u64 {
    ((vid as u64) << VDI_SPACE_SHIFT) | VDI_ATTR_BIT | attr_id as u64
}
pub fn vid_to_btree_oid(vid: u32, btree_id: u32) -> u64 {
    ((vid as u64) << VDI_SPACE_SHIFT) | VDI_BTREE_BIT | btree_id as u64
}
pub fn data_oid_to_ledger_oid(oid: u64) -> u64 {
    LEDGER_BIT | oid
}
pub fn ledger_oid_to_data_oid(oid: u64) -> u64 {
    oid & !LEDGER_BIT
}
pub fn oid_to_vid(oid: u64) -> u32 {
    ((oid & 0x00FF_FFFF_0000_0000) >> VDI_SPACE_SHIFT) as u32
}
pub fn data_oid_to_idx(oid: u64) -> u32 {
    (oid & 0xFFFF_FFFF) as u32
}
pub fn is_vdi_obj(oid: u64) -> bool {
    oid & VDI_BIT != 0
}
pub fn is_vmstate_obj(oid: u64) -> bool {
    oid & VMSTATE_BIT != 0
}
pub fn is_attr_obj(oid: u64) -> bool {
    oid & VDI_ATTR_BIT != 0
}
pub fn is_btree_obj(oid: u64) -> bool {
    oid & VDI_BTREE_BIT != 0
}
pub fn is_ledger_obj(oid: u64) -> bool {
    oid & LEDGER_BIT != 0
}
pub fn is_data_obj(oid: u64) -> bool {
    oid & TYPE_BITS == 0
}
/// Objects that are erasure coded when their VDI is (§8): everything but
/// inode, btree and ledger objects.
pub fn is_ec_capable(oid: u64) -> bool {
    !is_vdi_obj(oid) && !is_btree_obj(oid) && !is_ledger_obj(oid)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn oid_vectors() {
        let vid = 0x7c2b25;
        assert_eq!(vid_to_vdi_oid(vid), 0x807c2b2500000000);
        assert_eq!(vid_to_data_oid(vid, 0), 0x007c2b2500000000);
        assert_eq!(vid_to_data_oid(vid, 1), 0x007c2b2500000001);
        assert_eq!(vid_to_vmstate_oid(vid, 0), 0x407c2b2500000000);
        assert_eq!(vid_to_btree_oid(vid, 0), 0x107c2b2500000000);
        assert_eq!(
            data_oid_to_ledger_oid(vid_to_data_oid(vid, 1)),
            0x087c2b2500000001
        );
        assert_eq!(
            ledger_oid_to_data_oid(0x087c2b2500000001),
            0x007c2b2500000001
        );
        assert_eq!(vid_to_attr_oid(vid, 0x74fca20e), 0x207c2b2574fca20e);
        for oid in [
            0x807c2b2500000000u64,
            0x407c2b2500000003,
            0x087c2b2500000001,
        ] {
            assert_eq!(oid_to_vid(oid), vid);
        }
        assert!(is_data_obj(0x007c2b2500000001));
        assert!(!is_data_obj(0x087c2b2500000001));
        assert_eq!(data_oid_to_idx(0x007c2b2500000009), 9);
    }
}
