//! Other fixed-layout structures: cluster_info, epoch_log, sheepdog_config,
//! vdi_state, recovery_state, recovery_throttling, vdi attributes (§10, §11).

use crate::le::*;
use crate::node::*;

pub const CLUSTER_INFO_SIZE: usize = 48 + crate::consts::SD_MAX_NODES * SD_NODE_SIZE;
pub const EPOCH_LOG_HEADER_SIZE: usize = 48;
pub const CONFIG_SIZE: usize = 40;
pub const VDI_STATE_SIZE: usize = 1428;
pub const RECOVERY_STATE_SIZE: usize = 24;
/// One record of WORKER_STATUS.
pub const WORKER_RECORD_SIZE: usize = 64;
pub const RECOVERY_THROTTLING_SIZE: usize = 24;
/// The reply of SCRUB.
pub const SCRUB_STATUS_SIZE: usize = 72;
pub const VDI_ATTR_SIZE: usize = 66_320;
pub const VDI_ATTR_VALUE_OFFSET: usize = 784;

/// Cluster status as carried in `cluster_info.status`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ClusterStatus {
    Ok = 1,
    Wait = 2,
    Shutdown = 3,
    Killed = 4,
}

impl ClusterStatus {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => ClusterStatus::Ok,
            3 => ClusterStatus::Shutdown,
            4 => ClusterStatus::Killed,
            _ => ClusterStatus::Wait,
        }
    }
}

/// `struct cluster_info`: the cluster-wide state a node reports (and that
/// the original exchanges at join).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClusterInfo {
    pub proto_ver: u8,
    pub disable_recovery: bool,
    pub epoch: u32,
    pub ctime: u64,
    pub flags: u16,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub status: ClusterStatus,
    pub block_size_shift: u8,
    pub default_store: [u8; 16],
    pub nodes: Vec<SdNode>,
}

impl ClusterInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CLUSTER_INFO_SIZE];
        b[0] = self.proto_ver;
        b[1] = self.disable_recovery as u8;
        put_u16(&mut b, 2, self.nodes.len() as u16);
        put_u32(&mut b, 4, self.epoch);
        put_u64(&mut b, 8, self.ctime);
        put_u16(&mut b, 16, self.flags);
        b[18] = self.nr_copies;
        b[19] = self.copy_policy;
        b[20] = self.status as u8;
        b[21] = self.block_size_shift;
        b[25..41].copy_from_slice(&self.default_store);
        for (i, n) in self
            .nodes
            .iter()
            .take(crate::consts::SD_MAX_NODES)
            .enumerate()
        {
            n.encode_into(&mut b[48 + i * SD_NODE_SIZE..48 + (i + 1) * SD_NODE_SIZE]);
        }
        b
    }

    /// Decodes from at least 48 bytes; the node count is bounded by what the
    /// buffer holds.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 48 {
            return None;
        }
        let nr = (u16_at(b, 2) as i16).max(0) as usize;
        let avail = (b.len() - 48) / SD_NODE_SIZE;
        Some(ClusterInfo {
            proto_ver: b[0],
            disable_recovery: b[1] != 0,
            epoch: u32_at(b, 4),
            ctime: u64_at(b, 8),
            flags: u16_at(b, 16),
            nr_copies: b[18],
            copy_policy: b[19],
            status: ClusterStatus::from_u8(b[20]),
            block_size_shift: b[21],
            default_store: b[25..41].try_into().unwrap(),
            nodes: decode_nodes(&b[48..48 + nr.min(avail) * SD_NODE_SIZE]),
        })
    }
}

/// One record of STAT_CLUSTER (`struct epoch_log`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EpochLog {
    pub ctime: u64,
    pub time: u64,
    pub epoch: u32,
    pub disable_recovery: bool,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub drv_name: [u8; 16],
    pub nodes: Vec<SdNode>,
}

impl EpochLog {
    /// Encodes into a record with room for `room` nodes.
    pub fn encode(&self, room: usize) -> Vec<u8> {
        let mut b = vec![0u8; EPOCH_LOG_HEADER_SIZE + room * SD_NODE_SIZE];
        put_u64(&mut b, 0, self.ctime);
        put_u64(&mut b, 8, self.time);
        put_u32(&mut b, 16, self.epoch);
        put_u32(&mut b, 20, self.nodes.len().min(room) as u32);
        b[24] = self.disable_recovery as u8;
        b[25] = self.nr_copies;
        b[26] = self.copy_policy;
        put_u16(&mut b, 30, self.flags);
        b[32..48].copy_from_slice(&self.drv_name);
        for (i, n) in self.nodes.iter().take(room).enumerate() {
            n.encode_into(&mut b[48 + i * SD_NODE_SIZE..48 + (i + 1) * SD_NODE_SIZE]);
        }
        b
    }

    /// Decodes a record that has room for `room` nodes.
    pub fn decode(b: &[u8], room: usize) -> Option<Self> {
        if b.len() < EPOCH_LOG_HEADER_SIZE {
            return None;
        }
        let nr = (u32_at(b, 20) as usize)
            .min(room)
            .min((b.len() - 48) / SD_NODE_SIZE);
        Some(EpochLog {
            ctime: u64_at(b, 0),
            time: u64_at(b, 8),
            epoch: u32_at(b, 16),
            disable_recovery: b[24] != 0,
            nr_copies: b[25],
            copy_policy: b[26],
            flags: u16_at(b, 30),
            drv_name: b[32..48].try_into().unwrap(),
            nodes: decode_nodes(&b[48..48 + nr * SD_NODE_SIZE]),
        })
    }
}

/// `struct sheepdog_config`: the 40-byte `<base>/config` file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SheepdogConfig {
    pub ctime: u64,
    pub flags: u16,
    pub copies: u8,
    pub default_store: [u8; 16],
    pub shutdown: bool,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub version: u16,
    pub space: u64,
}

impl SheepdogConfig {
    pub fn encode(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        put_u64(&mut b, 0, self.ctime);
        put_u16(&mut b, 8, self.flags);
        b[10] = self.copies;
        b[11..27].copy_from_slice(&self.default_store);
        b[27] = self.shutdown as u8;
        b[28] = self.copy_policy;
        b[29] = self.block_size_shift;
        put_u16(&mut b, 30, self.version);
        put_u64(&mut b, 32, self.space);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < CONFIG_SIZE {
            return None;
        }
        Some(SheepdogConfig {
            ctime: u64_at(b, 0),
            flags: u16_at(b, 8),
            copies: b[10],
            default_store: b[11..27].try_into().unwrap(),
            shutdown: b[27] != 0,
            copy_policy: b[28],
            block_size_shift: b[29],
            version: u16_at(b, 30),
            space: u64_at(b, 32),
        })
    }
}

/// `struct vdi_state`: what every node knows about a vid (GET_VDI_COPIES).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct VdiState {
    pub vid: u32,
    pub nr_copies: u8,
    pub snapshot: bool,
    pub deleted: bool,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub parent_vid: u32,
    pub lock_state: u32,
    pub lock_owner: NodeId,
    pub participants: Vec<(u32, NodeId)>,
}

impl VdiState {
    pub fn encode_into(&self, b: &mut [u8]) {
        b[..VDI_STATE_SIZE].fill(0);
        put_u32(b, 0, self.vid);
        b[4] = self.nr_copies;
        b[5] = self.snapshot as u8;
        b[6] = self.deleted as u8;
        b[7] = self.copy_policy;
        b[8] = self.block_size_shift;
        put_u32(b, 12, self.parent_vid);
        put_u32(b, 16, self.lock_state);
        self.lock_owner.encode_into(&mut b[20..60]);
        let n = self.participants.len().min(31);
        put_u32(b, 60, n as u32);
        for (i, (st, nid)) in self.participants.iter().take(31).enumerate() {
            put_u32(b, 64 + 4 * i, *st);
            nid.encode_into(&mut b[188 + 40 * i..188 + 40 * (i + 1)]);
        }
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < VDI_STATE_SIZE {
            return None;
        }
        let n = (u32_at(b, 60) as usize).min(31);
        Some(VdiState {
            vid: u32_at(b, 0),
            nr_copies: b[4],
            snapshot: b[5] != 0,
            deleted: b[6] != 0,
            copy_policy: b[7],
            block_size_shift: b[8],
            parent_vid: u32_at(b, 12),
            lock_state: u32_at(b, 16),
            lock_owner: NodeId::decode(&b[20..60]),
            participants: (0..n)
                .map(|i| {
                    (
                        u32_at(b, 64 + 4 * i),
                        NodeId::decode(&b[188 + 40 * i..228 + 40 * i]),
                    )
                })
                .collect(),
        })
    }
}

/// `struct recovery_state` (STAT_RECOVERY reply).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RecoveryState {
    pub in_recovery: bool,
    pub state: u32,
    pub nr_finished: u64,
    pub nr_total: u64,
}

impl RecoveryState {
    pub fn encode(&self) -> [u8; RECOVERY_STATE_SIZE] {
        let mut b = [0u8; RECOVERY_STATE_SIZE];
        b[0] = self.in_recovery as u8;
        put_u32(&mut b, 4, self.state);
        put_u64(&mut b, 8, self.nr_finished);
        put_u64(&mut b, 16, self.nr_total);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RECOVERY_STATE_SIZE {
            return None;
        }
        Some(RecoveryState {
            in_recovery: b[0] != 0,
            state: u32_at(b, 4),
            nr_finished: u64_at(b, 8),
            nr_total: u64_at(b, 16),
        })
    }
}

/// `WorkerRecord.state` values.
pub mod worker_state {
    pub const IDLE: u32 = 0;
    pub const BUSY: u32 = 1;
    pub const THROTTLED: u32 = 2;
}

/// One background worker of a node, as WORKER_STATUS carries it: name
/// (NUL-padded, 32 bytes), state, then done/total/errors counters.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct WorkerRecord {
    pub name: String,
    pub state: u32,
    pub done: u64,
    pub total: u64,
    pub errors: u64,
}

impl WorkerRecord {
    pub fn encode(&self) -> [u8; WORKER_RECORD_SIZE] {
        let mut b = [0u8; WORKER_RECORD_SIZE];
        let n = self.name.len().min(31);
        b[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        put_u32(&mut b, 32, self.state);
        put_u64(&mut b, 40, self.done);
        put_u64(&mut b, 48, self.total);
        put_u64(&mut b, 56, self.errors);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < WORKER_RECORD_SIZE {
            return None;
        }
        let name = &b[..32];
        let end = name.iter().position(|&c| c == 0).unwrap_or(32);
        Some(WorkerRecord {
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            state: u32_at(b, 32),
            done: u64_at(b, 40),
            total: u64_at(b, 48),
            errors: u64_at(b, 56),
        })
    }
}

/// SCRUB's command, in `args[0]` of the request.
pub mod scrub_cmd {
    pub const STATUS: u8 = 0;
    pub const START: u8 = 1;
    pub const STOP: u8 = 2;
}

/// A node's scrub, as SCRUB reports it (this project's extension):
/// whether a pass runs, the objects of the current (or last) pass checked
/// and to check, finished passes, objects that got their first checksums,
/// and the node's corruption counters since it started (blocks found bad,
/// repaired from another copy, not repairable yet; objects whose other
/// replicas differ from this node's copy).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ScrubStatus {
    pub running: bool,
    pub done: u64,
    pub total: u64,
    pub passes: u64,
    pub computed: u64,
    pub bad_blocks: u64,
    pub repaired: u64,
    pub unrepaired: u64,
    pub differing: u64,
}

impl ScrubStatus {
    pub fn encode(&self) -> [u8; SCRUB_STATUS_SIZE] {
        let mut b = [0u8; SCRUB_STATUS_SIZE];
        put_u32(&mut b, 0, self.running as u32);
        for (i, v) in [
            self.done,
            self.total,
            self.passes,
            self.computed,
            self.bad_blocks,
            self.repaired,
            self.unrepaired,
            self.differing,
        ]
        .into_iter()
        .enumerate()
        {
            put_u64(&mut b, 8 + 8 * i, v);
        }
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < SCRUB_STATUS_SIZE {
            return None;
        }
        Some(ScrubStatus {
            running: u32_at(b, 0) != 0,
            done: u64_at(b, 8),
            total: u64_at(b, 16),
            passes: u64_at(b, 24),
            computed: u64_at(b, 32),
            bad_blocks: u64_at(b, 40),
            repaired: u64_at(b, 48),
            unrepaired: u64_at(b, 56),
            differing: u64_at(b, 64),
        })
    }
}

/// `struct recovery_throttling` (GET/SET_RECOVERY).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RecoveryThrottling {
    pub max_exec_count: u32,
    pub queue_work_interval: u64,
    pub throttling: bool,
}

impl RecoveryThrottling {
    pub fn encode(&self) -> [u8; RECOVERY_THROTTLING_SIZE] {
        let mut b = [0u8; RECOVERY_THROTTLING_SIZE];
        put_u32(&mut b, 0, self.max_exec_count);
        put_u64(&mut b, 8, self.queue_work_interval);
        b[16] = self.throttling as u8;
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RECOVERY_THROTTLING_SIZE {
            return None;
        }
        Some(RecoveryThrottling {
            max_exec_count: u32_at(b, 0),
            queue_work_interval: u64_at(b, 8),
            throttling: b[16] != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!(CLUSTER_INFO_SIZE, 491_568);
        let ci = ClusterInfo {
            proto_ver: 0x0a,
            disable_recovery: false,
            epoch: 3,
            ctime: 42,
            flags: 4,
            nr_copies: 3,
            copy_policy: 0,
            status: ClusterStatus::Ok,
            block_size_shift: 22,
            default_store: fixed_str::<16>(b"plain"),
            nodes: vec![SdNode {
                nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000),
                nr_vnodes: 128,
                zone: 0,
                space: 9,
            }],
        };
        let b = ci.encode();
        assert_eq!(b.len(), 491_568);
        assert_eq!(b[21], 22);
        assert_eq!(&b[25..30], b"plain");
        assert_eq!(ClusterInfo::decode(&b).unwrap(), ci);
        let c = SheepdogConfig {
            ctime: 1,
            flags: 2,
            copies: 3,
            version: 6,
            space: 7,
            block_size_shift: 22,
            ..Default::default()
        };
        let cb = c.encode();
        assert_eq!(u16_at(&cb, 30), 6);
        assert_eq!(SheepdogConfig::decode(&cb).unwrap(), c);
    }

    proptest! {
        #[test]
        fn decoders_take_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = ClusterInfo::decode(&v);
            let _ = EpochLog::decode(&v, 5);
            let _ = SheepdogConfig::decode(&v);
            let _ = VdiState::decode(&v);
            let _ = RecoveryState::decode(&v);
            let _ = RecoveryThrottling::decode(&v);
            if let Some(w) = WorkerRecord::decode(&v) {
                prop_assert!(w.name.len() <= 32 * 3);
                if w.name.len() < 32 && !w.name.contains('\0') && w.name.is_ascii() {
                    prop_assert_eq!(WorkerRecord::decode(&w.encode()).unwrap(), w);
                }
            }
            if let Some(s) = ScrubStatus::decode(&v) {
                prop_assert_eq!(ScrubStatus::decode(&s.encode()).unwrap(), s);
            }
            if let Some(e) = EpochLog::decode(&v, 3) {
                prop_assert!(e.nodes.len() <= 3);
            }
            if let Some(s) = VdiState::decode(&v) {
                let mut b = vec![0u8; VDI_STATE_SIZE];
                s.encode_into(&mut b);
                prop_assert_eq!(VdiState::decode(&b).unwrap(), s);
            }
        }
    }
}
