//! The 48-byte request and response headers (PROTOCOL.md §2).
//!
//! Both headers keep their opcode-specific union as raw bytes and expose
//! typed views (`obj()`, `vdi()`, …) that read and write fields at the exact
//! offsets of the original. Keeping the raw bytes means decode∘encode is the
//! identity for any 48 bytes, so nothing a peer sent is ever lost or
//! reinterpreted behind our back.

use crate::consts::*;
use crate::le::*;

/// A request header (`struct sd_req`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SdReq {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    /// Bytes 16..48: the opcode-specific union.
    pub args: [u8; 32],
}

/// Object I/O arguments (`sd_req.obj`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ObjArgs {
    pub oid: u64,
    pub cow_oid: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub ec_index: u8,
    pub tgt_epoch: u32,
    pub offset: u32,
}

/// VDI operation arguments (`sd_req.vdi`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VdiArgs {
    pub vdi_size: u64,
    pub base_vdi_id: u32,
    pub copies: u8,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub block_size_shift: u8,
    pub snapid: u32,
    pub lock_type: u32,
}

/// Cluster operation arguments (`sd_req.cluster`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ClusterArgs {
    pub oid: u64,
    pub ctime: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub tag: u32,
    pub nodes_nr: u32,
    pub block_size_shift: u8,
}

/// `sd_req.vdi_state` (NOTIFY_VDI_ADD, ALTER_VDI_COPY).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VdiStateArgs {
    pub old_vid: u32,
    pub new_vid: u32,
    pub copies: u8,
    pub set_bitmap: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
}

/// `sd_req.inode_coherence` (INODE_COHERENCE, §6.7).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct InodeCoherenceArgs {
    pub vid: u32,
    /// 1 = validate, 0 = invalidate.
    pub validate: u32,
}

/// `sd_req.ref` (DECREF_OBJ / DECREF_PEER): a ledger oid and the dropped
/// reference.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RefArgs {
    pub oid: u64,
    pub generation: u32,
    pub count: u32,
}

impl SdReq {
    /// A zeroed request with `proto_ver` chosen as dog does: 0x02 for public
    /// opcodes, 0x0a for internal ones.
    pub fn new(opcode: u8) -> Self {
        SdReq {
            proto_ver: if opcode >= 0x80 {
                SD_SHEEP_PROTO_VER
            } else {
                SD_PROTO_VER
            },
            opcode,
            flags: 0,
            epoch: 0,
            id: 0,
            data_length: 0,
            args: [0; 32],
        }
    }

    pub fn decode(b: &[u8; SD_HEADER_SIZE]) -> Self {
        SdReq {
            proto_ver: b[0],
            opcode: b[1],
            flags: u16_at(b, 2),
            epoch: u32_at(b, 4),
            id: u32_at(b, 8),
            data_length: u32_at(b, 12),
            args: b[16..48].try_into().unwrap(),
        }
    }

    pub fn encode(&self) -> [u8; SD_HEADER_SIZE] {
        let mut b = [0u8; SD_HEADER_SIZE];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        b[16..48].copy_from_slice(&self.args);
        b
    }

    /// True if a payload of `data_length` bytes follows the header.
    pub fn has_payload(&self) -> bool {
        self.flags & flag::CMD_WRITE != 0
    }

    pub fn obj(&self) -> ObjArgs {
        let a = &self.args;
        ObjArgs {
            oid: u64_at(a, 0),
            cow_oid: u64_at(a, 8),
            copies: a[16],
            copy_policy: a[17],
            ec_index: a[18],
            tgt_epoch: u32_at(a, 20),
            offset: u32_at(a, 24),
        }
    }
    pub fn set_obj(&mut self, o: ObjArgs) {
        let a = &mut self.args;
        put_u64(a, 0, o.oid);
        put_u64(a, 8, o.cow_oid);
        a[16] = o.copies;
        a[17] = o.copy_policy;
        a[18] = o.ec_index;
        put_u32(a, 20, o.tgt_epoch);
        put_u32(a, 24, o.offset);
    }

    pub fn vdi(&self) -> VdiArgs {
        let a = &self.args;
        VdiArgs {
            vdi_size: u64_at(a, 0),
            base_vdi_id: u32_at(a, 8),
            copies: a[12],
            copy_policy: a[13],
            store_policy: a[14],
            block_size_shift: a[15],
            snapid: u32_at(a, 16),
            lock_type: u32_at(a, 20),
        }
    }
    pub fn set_vdi(&mut self, v: VdiArgs) {
        let a = &mut self.args;
        put_u64(a, 0, v.vdi_size);
        put_u32(a, 8, v.base_vdi_id);
        a[12] = v.copies;
        a[13] = v.copy_policy;
        a[14] = v.store_policy;
        a[15] = v.block_size_shift;
        put_u32(a, 16, v.snapid);
        put_u32(a, 20, v.lock_type);
    }

    pub fn cluster(&self) -> ClusterArgs {
        let a = &self.args;
        ClusterArgs {
            oid: u64_at(a, 0),
            ctime: u64_at(a, 8),
            copies: a[16],
            copy_policy: a[17],
            flags: u16_at(a, 18),
            tag: u32_at(a, 20),
            nodes_nr: u32_at(a, 24),
            block_size_shift: a[28],
        }
    }
    pub fn set_cluster(&mut self, c: ClusterArgs) {
        let a = &mut self.args;
        put_u64(a, 0, c.oid);
        put_u64(a, 8, c.ctime);
        a[16] = c.copies;
        a[17] = c.copy_policy;
        put_u16(a, 18, c.flags);
        put_u32(a, 20, c.tag);
        put_u32(a, 24, c.nodes_nr);
        a[28] = c.block_size_shift;
    }

    pub fn ref_args(&self) -> RefArgs {
        let a = &self.args;
        RefArgs {
            oid: u64_at(a, 0),
            generation: u32_at(a, 8),
            count: u32_at(a, 12),
        }
    }
    pub fn set_ref(&mut self, r: RefArgs) {
        let a = &mut self.args;
        put_u64(a, 0, r.oid);
        put_u32(a, 8, r.generation);
        put_u32(a, 12, r.count);
    }

    pub fn vdi_state(&self) -> VdiStateArgs {
        let a = &self.args;
        VdiStateArgs {
            old_vid: u32_at(a, 0),
            new_vid: u32_at(a, 4),
            copies: a[8],
            set_bitmap: a[9],
            copy_policy: a[10],
            block_size_shift: a[11],
        }
    }
    pub fn set_vdi_state(&mut self, v: VdiStateArgs) {
        let a = &mut self.args;
        put_u32(a, 0, v.old_vid);
        put_u32(a, 4, v.new_vid);
        a[8] = v.copies;
        a[9] = v.set_bitmap;
        a[10] = v.copy_policy;
        a[11] = v.block_size_shift;
    }

    pub fn inode_coherence(&self) -> InodeCoherenceArgs {
        InodeCoherenceArgs {
            vid: u32_at(&self.args, 0),
            validate: u32_at(&self.args, 4),
        }
    }
    pub fn set_inode_coherence(&mut self, c: InodeCoherenceArgs) {
        put_u32(&mut self.args, 0, c.vid);
        put_u32(&mut self.args, 4, c.validate);
    }
}

/// A response header (`struct sd_rsp`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SdRsp {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    pub result: SdRes,
    /// Bytes 20..48: the opcode-specific union.
    pub args: [u8; 28],
}

impl SdRsp {
    /// The response skeleton for `req`: opcode and id echoed.
    pub fn for_req(req: &SdReq, result: SdRes) -> Self {
        SdRsp {
            proto_ver: req.proto_ver,
            opcode: req.opcode,
            flags: 0,
            epoch: 0,
            id: req.id,
            data_length: 0,
            result,
            args: [0; 28],
        }
    }

    pub fn decode(b: &[u8; SD_HEADER_SIZE]) -> Self {
        SdRsp {
            proto_ver: b[0],
            opcode: b[1],
            flags: u16_at(b, 2),
            epoch: u32_at(b, 4),
            id: u32_at(b, 8),
            data_length: u32_at(b, 12),
            result: SdRes(u32_at(b, 16)),
            args: b[20..48].try_into().unwrap(),
        }
    }

    pub fn encode(&self) -> [u8; SD_HEADER_SIZE] {
        let mut b = [0u8; SD_HEADER_SIZE];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        put_u32(&mut b, 16, self.result.0);
        b[20..48].copy_from_slice(&self.args);
        b
    }

    // Absolute offset N maps to args[N - 20].
    pub fn obj_copies(&self) -> u8 {
        self.args[0]
    }
    pub fn set_obj_copies(&mut self, c: u8) {
        self.args[0] = c;
    }
    pub fn vdi_id(&self) -> u32 {
        u32_at(&self.args, 4)
    }
    pub fn attr_id(&self) -> u32 {
        u32_at(&self.args, 8)
    }
    pub fn vdi_copies(&self) -> u8 {
        self.args[12]
    }
    pub fn vdi_block_size_shift(&self) -> u8 {
        self.args[13]
    }
    pub fn set_vdi(&mut self, vdi_id: u32, attr_id: u32, copies: u8, block_size_shift: u8) {
        put_u32(&mut self.args, 4, vdi_id);
        put_u32(&mut self.args, 8, attr_id);
        self.args[12] = copies;
        self.args[13] = block_size_shift;
    }
    pub fn node_nr_nodes(&self) -> u32 {
        u32_at(&self.args, 0)
    }
    pub fn node_store_size(&self) -> u64 {
        u64_at(&self.args, 12)
    }
    pub fn node_store_free(&self) -> u64 {
        u64_at(&self.args, 20)
    }
    pub fn set_node(&mut self, nr_nodes: u32, store_size: u64, store_free: u64) {
        put_u32(&mut self.args, 0, nr_nodes);
        put_u64(&mut self.args, 12, store_size);
        put_u64(&mut self.args, 20, store_free);
    }
    /// This project's extension on a recovery read's reply: the CRC32C of
    /// the payload as its sender read (and verified) it, so the receiver
    /// checks what it is about to store. None from a sender without it.
    pub fn payload_crc(&self) -> Option<u32> {
        (self.args[24] == 1).then(|| u32_at(&self.args, 20))
    }
    pub fn set_payload_crc(&mut self, crc: u32) {
        put_u32(&mut self.args, 20, crc);
        self.args[24] = 1;
    }
    /// GET_DIGEST's answer.
    pub fn obj_digest(&self) -> u32 {
        u32_at(&self.args, 4)
    }
    pub fn set_obj_digest(&mut self, d: u32) {
        put_u32(&mut self.args, 4, d);
    }
    pub fn hash_digest(&self) -> [u8; 20] {
        self.args[4..24].try_into().unwrap()
    }
    pub fn set_hash_digest(&mut self, d: &[u8; 20]) {
        self.args[4..24].copy_from_slice(d);
    }
    /// `cluster_default`: (nr_copies, copy_policy, block_size_shift).
    pub fn cluster_default(&self) -> (u8, u8, u8) {
        (self.args[0], self.args[1], self.args[2])
    }
    pub fn set_cluster_default(&mut self, copies: u8, policy: u8, shift: u8) {
        self.args[0] = copies;
        self.args[1] = policy;
        self.args[2] = shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn get_vdi_info_as_qemu_sends_it() {
        let mut r = SdReq::new(op::GET_VDI_INFO);
        r.proto_ver = 1;
        r.flags = flag::CMD_WRITE;
        r.data_length = 512;
        let mut want = hex("01140100 00000000 00000000 00020000");
        want.extend([0u8; 32]);
        assert_eq!(r.encode().to_vec(), want);
    }

    #[test]
    fn read_obj_vector() {
        let mut r = SdReq::new(op::READ_OBJ);
        r.proto_ver = 0;
        r.flags = flag::CMD_DIRECT;
        r.id = 7;
        r.data_length = 0x10000;
        r.set_obj(ObjArgs {
            oid: 0x007c2b2500000001,
            copies: 3,
            offset: 0x1000,
            ..Default::default()
        });
        let want = hex("00020800 00000000 07000000 00000100 01000000 252b7c00 00000000 00000000 03000000 00000000 00100000 00000000");
        assert_eq!(r.encode().to_vec(), want);
        let back = SdReq::decode(&r.encode());
        assert_eq!(back.obj().offset, 0x1000);
        assert_eq!(back.obj().oid, 0x007c2b2500000001);

        let mut rsp = SdRsp::for_req(&r, SdRes::SUCCESS);
        rsp.epoch = 5;
        rsp.data_length = 0x10000;
        let mut want = hex("00020000 05000000 07000000 00000100 00000000");
        want.extend([0u8; 28]);
        assert_eq!(rsp.encode().to_vec(), want);
    }

    #[test]
    fn response_field_offsets() {
        let mut rsp = SdRsp::for_req(&SdReq::new(op::NEW_VDI), SdRes::SUCCESS);
        rsp.set_vdi(0x7c2b25, 9, 3, 22);
        let b = rsp.encode();
        assert_eq!(u32_at(&b, 24), 0x7c2b25);
        assert_eq!(u32_at(&b, 28), 9);
        assert_eq!(b[32], 3);
        assert_eq!(b[33], 22);
        rsp.set_node(6, 100, 50);
        let b = rsp.encode();
        assert_eq!(u32_at(&b, 20), 6);
        assert_eq!(u64_at(&b, 32), 100);
        assert_eq!(u64_at(&b, 40), 50);
        rsp.set_cluster_default(3, 0, 22);
        assert_eq!(rsp.encode()[22], 22);
    }

    proptest! {
        #[test]
        fn req_roundtrip_any_bytes(v in proptest::collection::vec(any::<u8>(), 48)) {
            let b: [u8; 48] = v.clone().try_into().unwrap();
            let r = SdReq::decode(&b);
            prop_assert_eq!(r.encode().to_vec(), v);
            // typed views re-encode to the same union bytes
            let mut r2 = r;
            r2.set_vdi(r.vdi());
            prop_assert_eq!(r2.vdi(), r.vdi());
            let mut r3 = r;
            r3.set_obj(r.obj());
            prop_assert_eq!(r3.obj(), r.obj());
        }
        #[test]
        fn rsp_roundtrip_any_bytes(v in proptest::collection::vec(any::<u8>(), 48)) {
            let b: [u8; 48] = v.clone().try_into().unwrap();
            prop_assert_eq!(SdRsp::decode(&b).encode().to_vec(), v);
        }
    }
}
