//! FNV-1a hashing as used for VDI ids, placement and attributes (§5.3, §7.2).

pub const FNV1A_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a-64 over `bytes`, continuing from state `h`.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_64_PRIME);
    }
    h
}

/// FNV-1a-64 over the 8 little-endian bytes of `v`, from state `h`.
pub fn fnv64(v: u64, h: u64) -> u64 {
    fnv1a(&v.to_le_bytes(), h)
}

/// `sd_hash`: FNV-1a of the bytes, then mixed once more with itself.
pub fn sd_hash(bytes: &[u8]) -> u64 {
    let h = fnv1a(bytes, FNV1A_64_INIT);
    fnv64(h, h)
}

/// `sd_hash_next`: the next hash of a vnode chain.
pub fn sd_hash_next(h: u64) -> u64 {
    fnv64(h, h)
}

/// `sd_hash_oid`: ring position of an object.
pub fn sd_hash_oid(oid: u64) -> u64 {
    let h = fnv64(oid, FNV1A_64_INIT);
    fnv64(h, h)
}

/// The starting slot of the VDI-id probe for `name` (without NUL).
pub fn sd_hash_vdi(name: &[u8]) -> u32 {
    (fnv1a(name, FNV1A_64_INIT) & 0xFF_FFFF) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_vectors() {
        let v: &[(&str, u64, u32)] = &[
            ("", 0xcbf29ce484222325, 0x222325),
            ("a", 0xaf63dc4c8601ec8c, 0x01ec8c),
            ("test", 0xf9e6e6ef197c2b25, 0x7c2b25),
            ("alice", 0x508b2abb65a03907, 0xa03907),
            ("vm1", 0x68f65f194ec59887, 0xc59887),
            ("debian", 0xab12efedabb1f0b0, 0xb1f0b0),
        ];
        for &(name, h, vid) in v {
            assert_eq!(fnv1a(name.as_bytes(), FNV1A_64_INIT), h, "{name}");
            assert_eq!(sd_hash_vdi(name.as_bytes()), vid, "{name}");
        }
    }

    #[test]
    fn secondary_hash_vectors() {
        assert_eq!(sd_hash(&[]), 0xf4ed18ebf16aa5cc);
        assert_eq!(sd_hash_oid(0x807c2b2500000000), 0x8b4b18c243befa1a);
        assert_eq!(sd_hash_oid(0x007c2b2500000000), 0x387358f0fb5c1275);
        assert_eq!(sd_hash_oid(0x007c2b2500000001), 0xed0c37b076d586ac);
        assert_eq!(sd_hash_oid(0x0000000100000000), 0xf27b40bf0478ff08);
        let mut id = [0u8; 18];
        id[12..16].copy_from_slice(&[127, 0, 0, 1]);
        id[16..18].copy_from_slice(&7000u16.to_le_bytes());
        let h = sd_hash(&id);
        assert_eq!(h, 0x9cb3d6dd0a4c0f9f);
        let v0 = sd_hash_next(h);
        let v1 = sd_hash_next(v0);
        let v2 = sd_hash_next(v1);
        assert_eq!(
            [v0, v1, v2],
            [0x3af2cba6e538cdf3, 0xfd38432fd111924b, 0x2ad2bef8f506e35d]
        );
    }
}
