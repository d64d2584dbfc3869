//! The cluster state machine: membership, epochs, cluster status and VDI
//! bookkeeping, advanced only by the ordered event stream of the driver.
//!
//! Every member applies the same events in the same order to this pure
//! structure, so join acceptance, epoch numbers and format parameters are
//! agreed without a master. What a node must *do* about a change (write an
//! epoch file, start recovery, wipe its store) comes back as [`Effect`]s
//! that the daemon executes; the state machine itself never touches disk.

use sd_cluster::{Delivered, Event};
use sd_proto::le::*;
use sd_proto::*;
use sd_ring::auto_vnodes;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Cluster status as dog sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    WaitForFormat,
    WaitForJoin,
    Ok,
    Shutdown,
}

impl Status {
    /// The result code a non-force operation gets in this status.
    pub fn refusal(self) -> Option<SdRes> {
        match self {
            Status::Ok => None,
            Status::WaitForFormat => Some(SdRes::WAIT_FOR_FORMAT),
            Status::WaitForJoin => Some(SdRes::WAIT_FOR_JOIN),
            Status::Shutdown => Some(SdRes::SHUTDOWN),
        }
    }
    pub fn cluster_status(self) -> ClusterStatus {
        match self {
            Status::Ok => ClusterStatus::Ok,
            Status::Shutdown => ClusterStatus::Shutdown,
            _ => ClusterStatus::Wait,
        }
    }
}

/// A member of the current view.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Member {
    pub node: SdNode,
    pub incarnation: u64,
}

/// What a joining node tells the cluster about itself (the JOIN opaque).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct JoinInfo {
    /// Its stored config; `ctime == 0` means never formatted.
    pub config: SheepdogConfig,
    /// Its latest epoch and that epoch's members.
    pub epoch: u32,
    pub epoch_nodes: Vec<SdNode>,
}

impl JoinInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.config.encode().to_vec();
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&encode_nodes(&self.epoch_nodes));
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < CONFIG_SIZE + 4 {
            return None;
        }
        Some(JoinInfo {
            config: SheepdogConfig::decode(&b[..CONFIG_SIZE])?,
            epoch: u32_at(b, CONFIG_SIZE),
            epoch_nodes: decode_nodes(&b[CONFIG_SIZE + 4..]),
        })
    }
}

/// A cluster operation's main phase as broadcast: request header, response
/// header and data (the original's message layout).
#[derive(Clone, Debug)]
pub struct OpMessage {
    pub req: SdReq,
    pub rsp: SdRsp,
    pub data: Vec<u8>,
}

impl OpMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.data.len());
        b.extend_from_slice(&self.req.encode());
        b.extend_from_slice(&self.rsp.encode());
        b.extend_from_slice(&self.data);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 96 {
            return None;
        }
        Some(OpMessage {
            req: SdReq::decode(b[..48].try_into().unwrap()),
            rsp: SdRsp::decode(b[48..96].try_into().unwrap()),
            data: b[96..].to_vec(),
        })
    }
}

/// What NEW_VDI's work phase decided, carried to every node in the
/// broadcast response (beyond the client-visible fields, in bytes the
/// client never sees: the daemon clears them before replying).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NewVdiOutcome {
    pub vid: u32,
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub parent: u32,
    /// The working VDI that became a snapshot (0 if none).
    pub snapshotted: u32,
}

impl NewVdiOutcome {
    pub fn write_into(&self, rsp: &mut SdRsp) {
        rsp.set_vdi(
            self.vid,
            self.snapshotted,
            self.copies,
            self.block_size_shift,
        );
        rsp.args[14] = self.copy_policy;
        put_u32(&mut rsp.args, 16, self.parent);
    }
    pub fn from_rsp(rsp: &SdRsp) -> Self {
        NewVdiOutcome {
            vid: rsp.vdi_id(),
            copies: rsp.vdi_copies(),
            copy_policy: rsp.args[14],
            block_size_shift: rsp.vdi_block_size_shift(),
            parent: u32_at(&rsp.args, 16),
            snapshotted: rsp.attr_id(),
        }
    }
    /// The response the client gets: vid, copies and shift only.
    pub fn client_rsp(rsp: &mut SdRsp) {
        let o = Self::from_rsp(rsp);
        rsp.args = [0; 28];
        rsp.set_vdi(o.vid, 0, o.copies, o.block_size_shift);
    }
}

/// Something the local node must do because of an applied event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Our own JOIN was accepted; persist the cluster's config and the
    /// epochs of this stream (before `epoch`, the one we joined at).
    Joined {
        config: SheepdogConfig,
        history: Vec<(u32, Vec<SdNode>, u64)>,
        epoch: u32,
    },
    /// Our own JOIN was refused.
    JoinRefused(SdRes),
    /// What we hold may have missed writes (the cluster ran, or resumes,
    /// past our latest epoch `epoch`): retire every working copy to a
    /// stale copy current through `epoch`, before the new view is served.
    Retire { epoch: u32 },
    /// A new epoch began with these members.
    /// A new epoch began with these members; `recover` is false for the
    /// epoch a format creates (there is nothing to recover).
    NewEpoch {
        epoch: u32,
        nodes: Vec<SdNode>,
        time: u64,
        recover: bool,
    },
    /// The cluster was (re)formatted: wipe the store, write the config.
    Formatted,
    /// The cluster shuts down: every node exits.
    Shutdown,
    /// Every member finished recovery of `epoch`: purge stale copies.
    RecoveryGathered(u32),
    /// Cluster parameters changed: rewrite the config file.
    ConfigChanged,
    /// Recovery was re-enabled.
    RecoveryEnabled,
    /// A VDI's copy count changed: place its objects anew.
    RedundancyChanged,
    /// A VDI was deleted: its family may be dead, so sweep for its objects.
    VdiDeleted,
    /// A node other than us joined; fetch its VDI state.
    PeerJoined(SdNode),
    /// `cluster reweight`: a node whose space changed by 1 % or more
    /// tells the cluster (an `UpdateNode` event, a new epoch).
    Reweight,
}

/// `vdi_state.lock_state` values (§6.6).
pub const LOCK_UNLOCKED: u32 = 1;
pub const LOCK_LOCKED: u32 = 2;
pub const LOCK_SHARED: u32 = 3;
/// Participant states of a shared lock.
pub const PART_MODIFIED: u32 = 1;
pub const PART_SHARED: u32 = 2;
pub const PART_INVALIDATED: u32 = 3;
/// LOCK_VDI / RELEASE_VDI `vdi.type`.
pub const LOCK_TYPE_SHARED: u32 = 1;

/// A set over the 2^24 VDI ids, with the wire form of a bitmap.
///
/// Kept sparse (a cluster has thousands of VDIs, not millions) so that
/// every published [`crate::core::ClusterView`] can carry its own copy.
#[derive(Clone, Default)]
pub struct VidBitmap(BTreeSet<u32>);

impl VidBitmap {
    pub fn get(&self, vid: u32) -> bool {
        self.0.contains(&(vid & (SD_NR_VDIS - 1)))
    }
    pub fn set(&mut self, vid: u32) {
        self.0.insert(vid & (SD_NR_VDIS - 1));
    }
    /// The wire form of READ_VDIS: byte v/8, bit v%8.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_VDI_BITMAP_SIZE];
        for &v in &self.0 {
            b[v as usize / 8] |= 1 << (v % 8);
        }
        b
    }
    /// First clear bit in `[from, SD_NR_VDIS)`.
    pub fn first_clear_from(&self, from: u32) -> Option<u32> {
        (from..SD_NR_VDIS).find(|&v| !self.get(v))
    }
}

/// What every node knows about VDIs: the in-use and deleted bitmaps and the
/// per-vid redundancy (needed to place any object of that vid).
#[derive(Clone, Default)]
pub struct VdiTable {
    pub inuse: VidBitmap,
    pub deleted: VidBitmap,
    pub states: BTreeMap<u32, VdiState>,
}

impl VdiTable {
    /// Whether `node` may take the lock of `vid` of `lock_type` now.
    pub fn can_lock(&self, vid: u32, lock_type: u32, node: &NodeId) -> bool {
        let Some(s) = self.states.get(&vid) else {
            return true;
        };
        if lock_type == LOCK_TYPE_SHARED {
            s.lock_state != LOCK_LOCKED
                && (s.participants.len() < 31 || s.participants.iter().any(|p| p.1 == *node))
        } else {
            s.lock_state == LOCK_UNLOCKED
        }
    }

    /// Applies a granted LOCK_VDI.
    pub fn lock(&mut self, vid: u32, lock_type: u32, node: NodeId) {
        let Some(s) = self.states.get_mut(&vid) else {
            return;
        };
        if lock_type == LOCK_TYPE_SHARED {
            if s.participants.iter().any(|p| p.1 == node) {
                return;
            }
            let state = match s.participants.is_empty() {
                true => PART_MODIFIED,
                false if s.participants.iter().any(|p| p.0 == PART_MODIFIED) => PART_INVALIDATED,
                false => PART_SHARED,
            };
            s.participants.push((state, node));
            s.lock_state = LOCK_SHARED;
        } else {
            s.lock_state = LOCK_LOCKED;
            s.lock_owner = node;
        }
    }

    /// Applies RELEASE_VDI (the owner of a normal lock is not checked, as
    /// in the original).
    pub fn release(&mut self, vid: u32, lock_type: u32, node: &NodeId) {
        let Some(s) = self.states.get_mut(&vid) else {
            return;
        };
        if lock_type == LOCK_TYPE_SHARED {
            s.participants.retain(|p| p.1 != *node);
            if s.participants.is_empty() {
                s.lock_state = LOCK_UNLOCKED;
            }
        } else if s.lock_state == LOCK_LOCKED {
            s.lock_state = LOCK_UNLOCKED;
            s.lock_owner = NodeId::default();
        }
    }

    /// This node's participant state in the shared lock of `vid` (None
    /// when the VDI is not shared-locked by it).
    pub fn participant_state(&self, vid: u32, node: &NodeId) -> Option<u32> {
        let s = self.states.get(&vid)?;
        if s.lock_state != LOCK_SHARED {
            return None;
        }
        s.participants.iter().find(|p| p.1 == *node).map(|p| p.0)
    }

    /// Applies INODE_COHERENCE from `sender` (§6.7): validate makes every
    /// participant SHARED except others still INVALIDATED (they validate
    /// themselves by reloading); invalidate makes the sender the one
    /// MODIFIED participant and every other INVALIDATED.
    pub fn coherence(&mut self, vid: u32, validate: bool, sender: &NodeId) {
        let Some(s) = self.states.get_mut(&vid) else {
            return;
        };
        if s.lock_state != LOCK_SHARED || !s.participants.iter().any(|p| p.1 == *sender) {
            return;
        }
        for p in &mut s.participants {
            let me = p.1 == *sender;
            p.0 = match (validate, me) {
                (true, false) if p.0 == PART_INVALIDATED => PART_INVALIDATED,
                (true, _) => PART_SHARED,
                (false, true) => PART_MODIFIED,
                (false, false) => PART_INVALIDATED,
            };
        }
    }

    /// A node left: it no longer takes part in shared locks (normal locks
    /// stay, as in the original).
    pub fn forget_participant(&mut self, node: &NodeId) {
        for s in self.states.values_mut() {
            if s.lock_state == LOCK_SHARED {
                s.participants.retain(|p| p.1 != *node);
                if s.participants.is_empty() {
                    s.lock_state = LOCK_UNLOCKED;
                }
            }
        }
    }

    /// Records a VDI (from NEW_VDI, a scan of local inodes or a peer).
    pub fn add(&mut self, mut s: VdiState) {
        if s.lock_state == 0 {
            s.lock_state = LOCK_UNLOCKED;
        }
        self.inuse.set(s.vid);
        if s.deleted {
            self.deleted.set(s.vid);
        }
        let e = self.states.entry(s.vid).or_insert_with(|| s.clone());
        e.snapshot |= s.snapshot;
        e.deleted |= s.deleted;
        if e.nr_copies == 0 {
            *e = s;
        }
    }
    pub fn mark_snapshot(&mut self, vid: u32) {
        if let Some(s) = self.states.get_mut(&vid) {
            s.snapshot = true;
        }
    }
    pub fn mark_deleted(&mut self, vid: u32) {
        self.deleted.set(vid);
        if let Some(s) = self.states.get_mut(&vid) {
            s.deleted = true;
        }
    }

    /// The ancestors of `vid` by parent links, `vid` first, root last.
    fn lineage(&self, vid: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = Some(vid);
        std::iter::from_fn(move || {
            let v = next?;
            next = self
                .states
                .get(&v)
                .map(|s| s.parent_vid)
                .filter(|&p| p != 0 && p != v);
            Some(v)
        })
        // A corrupt table with a cycle must not loop forever.
        .take(self.states.len() + 1)
    }

    /// The root of `vid`'s family (the VDI it was cloned and snapshotted
    /// from, transitively).
    fn root_of(&self, vid: u32) -> u32 {
        self.lineage(vid).last().unwrap_or(vid)
    }

    /// The known VDIs of `vid`'s family: its root and all its descendants.
    pub fn family(&self, vid: u32) -> Vec<u32> {
        let root = self.root_of(vid);
        self.states
            .keys()
            .copied()
            .filter(|&v| self.root_of(v) == root)
            .collect()
    }

    /// The vids of every family whose VDIs are all deleted: nothing can
    /// reference their inodes or objects any more. A vid this node does
    /// not know is in none.
    pub fn dead_vids(&self) -> std::collections::HashSet<u32> {
        let mut live_roots = std::collections::HashSet::new();
        let roots: Vec<(u32, u32)> = self
            .states
            .values()
            .map(|s| {
                let root = self.root_of(s.vid);
                if !s.deleted {
                    live_roots.insert(root);
                }
                (s.vid, root)
            })
            .collect();
        roots
            .into_iter()
            .filter(|(_, root)| !live_roots.contains(root))
            .map(|(vid, _)| vid)
            .collect()
    }

    /// Whether `vid` is known and its family is dead (see
    /// [`VdiTable::dead_vids`]).
    pub fn family_dead(&self, vid: u32) -> bool {
        self.states.contains_key(&vid) && self.family(vid).iter().all(|v| self.states[v].deleted)
    }

    /// The live VDIs that may reference an object `vid` created: `vid`
    /// itself and every VDI cloned or snapshotted from it, transitively
    /// (an object is inherited only at its own index, only downwards).
    pub fn heirs(&self, vid: u32) -> Vec<u32> {
        self.states
            .values()
            .filter(|s| !s.deleted && self.lineage(s.vid).any(|a| a == vid))
            .map(|s| s.vid)
            .collect()
    }
}

/// Whether two node lists name the same nodes (in any order).
pub fn same_members(a: &[SdNode], b: &[SdNode]) -> bool {
    let ids = |v: &[SdNode]| {
        let mut ids: Vec<NodeId> = v.iter().map(|n| n.nid).collect();
        ids.sort();
        ids
    };
    ids(a) == ids(b)
}

/// The agreed cluster state.
pub struct ClusterState {
    pub me: NodeId,
    /// Our incarnation once joined: a JOIN is ours only if it carries it
    /// (a previous incarnation of the same address may still be replayed).
    pub my_incarnation: Option<u64>,
    pub members: Vec<Member>,
    pub joined: bool,
    pub status: Status,
    pub epoch: u32,
    pub config: SheepdogConfig,
    pub disable_recovery: bool,
    /// Members of the last epoch, awaited in WAIT_FOR_JOIN.
    pub last_epoch_nodes: Vec<SdNode>,
    /// Epochs created while this stream was alive: (epoch, nodes, time).
    pub history: Vec<(u32, Vec<SdNode>, u64)>,
    /// Nodes that completed recovery of the current epoch.
    pub recovered: HashSet<NodeId>,
    pub vdis: VdiTable,
    /// Position of the last applied event.
    pub applied: u64,
    /// Our own latest epoch when we joined (formatted stores only), until
    /// it has been judged against the epoch the cluster runs at.
    my_join_epoch: Option<u32>,
}

impl ClusterState {
    pub fn new(me: NodeId, config: SheepdogConfig) -> Self {
        ClusterState {
            me,
            my_incarnation: None,
            members: Vec::new(),
            joined: false,
            status: Status::WaitForFormat,
            epoch: 0,
            config,
            disable_recovery: false,
            last_epoch_nodes: Vec::new(),
            history: Vec::new(),
            recovered: HashSet::new(),
            vdis: VdiTable::default(),
            applied: 0,
            my_join_epoch: None,
        }
    }

    pub fn nodes(&self) -> Vec<SdNode> {
        self.members.iter().map(|m| m.node).collect()
    }

    pub fn is_member(&self, nid: &NodeId) -> bool {
        self.members.iter().any(|m| m.node.nid == *nid)
    }

    fn insert_member(&mut self, m: Member) {
        self.members.retain(|x| x.node.nid != m.node.nid);
        self.members.push(m);
        self.members.sort_by_key(|m| m.node.nid);
        self.recompute_vnodes();
    }

    fn recompute_vnodes(&mut self) {
        if self.config.flags & cluster_flag::AUTO_VNODES != 0 {
            let mut nodes = self.nodes();
            auto_vnodes(&mut nodes);
            for (m, n) in self.members.iter_mut().zip(nodes) {
                m.node.nr_vnodes = n.nr_vnodes;
            }
        }
    }

    fn new_epoch(&mut self, time: u64, fx: &mut Vec<Effect>) {
        self.epoch += 1;
        self.enter_epoch(time, fx);
    }

    fn enter_epoch(&mut self, time: u64, fx: &mut Vec<Effect>) {
        let nodes = self.nodes();
        self.history.retain(|h| h.0 < self.epoch);
        self.history.push((self.epoch, nodes.clone(), time));
        self.last_epoch_nodes = nodes.clone();
        self.recovered.clear();
        fx.push(Effect::NewEpoch {
            epoch: self.epoch,
            nodes,
            time,
            recover: true,
        });
    }

    fn all_awaited_present(&self) -> bool {
        self.last_epoch_nodes.iter().all(|n| self.is_member(&n.nid))
    }

    /// Applies one delivered event and returns what this node must do.
    pub fn apply(&mut self, d: &Delivered) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.applied = d.seq;
        match &d.event {
            Event::Join {
                node,
                incarnation,
                opaque,
            } => {
                let info = JoinInfo::decode(opaque).unwrap_or_default();
                self.apply_join(
                    Member {
                        node: *node,
                        incarnation: *incarnation,
                    },
                    info,
                    d.time,
                    &mut fx,
                )
            }
            Event::Leave { nid, incarnation } => {
                let before = self.members.len();
                self.members
                    .retain(|m| !(m.node.nid == *nid && m.incarnation == *incarnation));
                if self.members.len() != before {
                    self.vdis.forget_participant(nid);
                    self.recompute_vnodes();
                    if self.status == Status::Ok {
                        self.new_epoch(d.time, &mut fx);
                    }
                }
            }
            Event::UpdateNode { node } => {
                if let Some(m) = self.members.iter_mut().find(|m| m.node.nid == node.nid) {
                    m.node = *node;
                    self.recompute_vnodes();
                    if node.nid == self.me {
                        // Our space is part of the config file.
                        fx.push(Effect::ConfigChanged);
                    }
                    if self.status == Status::Ok {
                        self.new_epoch(d.time, &mut fx);
                    }
                }
            }
            Event::Notify { msg, .. } => {
                if let Some(m) = OpMessage::decode(msg) {
                    self.apply_op(&m, d.time, &mut fx);
                }
            }
        }
        fx
    }

    fn apply_join(&mut self, m: Member, info: JoinInfo, time: u64, fx: &mut Vec<Effect>) {
        let is_me = m.node.nid == self.me && self.my_incarnation.is_none_or(|i| i == m.incarnation);
        let into_running = self.status == Status::Ok && !self.members.is_empty();
        if is_me && info.config.ctime != 0 && info.epoch != 0 {
            self.my_join_epoch = Some(info.epoch);
        }
        let refuse = |st: &mut Self, fx: &mut Vec<Effect>, r: SdRes| {
            if is_me {
                fx.push(Effect::JoinRefused(r));
            }
            let _ = st;
        };
        if self.members.is_empty() {
            // First member of this stream: its own view seeds the cluster.
            // A store that has a config but no epoch (it stopped between
            // taking a cluster's config and its first epoch) knows no
            // members to wait for: it waits like a clean one, and the
            // first formatted node to join brings the cluster back.
            self.config = info.config.clone();
            self.members.clear();
            if info.config.ctime == 0 || info.epoch == 0 {
                self.config.ctime = 0;
                self.status = Status::WaitForFormat;
                self.epoch = 0;
                self.insert_member(m);
            } else {
                self.epoch = info.epoch;
                self.last_epoch_nodes = info.epoch_nodes.clone();
                self.insert_member(m);
                self.status = Status::WaitForJoin;
                self.try_leave_wait(time, fx);
            }
        } else {
            match self.status {
                Status::WaitForFormat if info.config.ctime != 0 && info.epoch > 0 => {
                    // A formatted node joins nodes that never were: its
                    // cluster is coming back. Take its config and wait for
                    // the members of its last epoch, as the original did;
                    // reporting "waiting for format" here would invite a
                    // format that wipes the volumes.
                    self.config = info.config.clone();
                    self.epoch = info.epoch;
                    self.last_epoch_nodes = info.epoch_nodes.clone();
                    self.status = Status::WaitForJoin;
                    self.insert_member(m);
                    fx.push(Effect::ConfigChanged);
                    self.try_leave_wait(time, fx);
                }
                Status::WaitForFormat => self.insert_member(m),
                Status::Shutdown => return refuse(self, fx, SdRes::SHUTDOWN),
                Status::Ok => {
                    if info.config.ctime != 0 && info.config.ctime != self.config.ctime {
                        return refuse(self, fx, SdRes::INVALID_CTIME);
                    }
                    if info.config.ctime != 0 && self.diverges(&info) {
                        return refuse(self, fx, SdRes::INVALID_EPOCH);
                    }
                    self.insert_member(m);
                    self.new_epoch(time, fx);
                }
                Status::WaitForJoin => {
                    if info.config.ctime != 0 && info.config.ctime != self.config.ctime {
                        return refuse(self, fx, SdRes::INVALID_CTIME);
                    }
                    if info.epoch > self.epoch {
                        self.epoch = info.epoch;
                        self.last_epoch_nodes = info.epoch_nodes.clone();
                    }
                    self.insert_member(m);
                    self.try_leave_wait(time, fx);
                }
            }
        }
        if is_me {
            self.joined = true;
            if into_running {
                if let Some(r) = self.judge_my_copies(self.epoch, true) {
                    fx.insert(0, r);
                }
            }
            let joined = Effect::Joined {
                config: self.config.clone(),
                history: self.history.clone(),
                epoch: self.epoch,
            };
            fx.insert(0, joined);
        } else if self.joined {
            fx.push(Effect::PeerJoined(m.node));
        }
    }

    /// Whether a formatted node joining the running cluster saw epochs this
    /// cluster never ran: an epoch newer than ours, or one of ours with
    /// other members. That happens when a whole cluster died node by node
    /// and came back without the last nodes to die: it resumed from an
    /// older epoch, and the joiner may hold the only copies of writes
    /// acknowledged after it. Letting it in would retire those copies as
    /// stale and recovery would purge them; refused, it keeps them (the
    /// operator restarts the cluster with the newest epoch's nodes).
    /// (The original let such a node in.)
    fn diverges(&self, info: &JoinInfo) -> bool {
        if info.epoch > self.epoch {
            return true;
        }
        self.history
            .iter()
            .find(|h| h.0 == info.epoch)
            .is_some_and(|h| !same_members(&h.1, &info.epoch_nodes))
    }

    /// Leaves WAIT_FOR_JOIN once every node of the last epoch is back.
    fn try_leave_wait(&mut self, time: u64, fx: &mut Vec<Effect>) {
        if self.status != Status::WaitForJoin || !self.all_awaited_present() {
            return;
        }
        let same = same_members(&self.last_epoch_nodes, &self.nodes());
        self.resume(same, time, fx);
    }

    /// The cluster runs again (at the last epoch if its members are all
    /// back, else at a new one). A member whose own store stopped at an
    /// older epoch than the one resumed missed writes: it retires what it
    /// holds first.
    fn resume(&mut self, same: bool, time: u64, fx: &mut Vec<Effect>) {
        self.status = Status::Ok;
        let resumed = if same { self.epoch } else { self.epoch + 1 };
        if let Some(r) = self.judge_my_copies(resumed, false) {
            fx.push(r);
        }
        if same {
            self.enter_epoch(time, fx);
        } else {
            self.new_epoch(time, fx);
        }
    }

    /// Whether our own copies (of the store we joined with) must be
    /// retired now that the cluster runs at `cluster_epoch`; judged once.
    fn judge_my_copies(&mut self, cluster_epoch: u32, into_running: bool) -> Option<Effect> {
        let mine = self.my_join_epoch.take()?;
        crate::recovery::retires_on_join(mine, cluster_epoch, into_running)
            .then_some(Effect::Retire { epoch: mine })
    }

    fn apply_op(&mut self, m: &OpMessage, time: u64, fx: &mut Vec<Effect>) {
        if m.rsp.result != SdRes::SUCCESS {
            return;
        }
        match m.req.opcode {
            op::MAKE_FS => {
                let c = m.req.cluster();
                let store = cstr(&m.data);
                self.config = SheepdogConfig {
                    ctime: c.ctime,
                    flags: c.flags,
                    copies: if c.copies == 0 {
                        SD_DEFAULT_COPIES
                    } else {
                        c.copies
                    },
                    default_store: fixed_str::<16>(if store.is_empty() { b"plain" } else { store }),
                    shutdown: false,
                    copy_policy: c.copy_policy,
                    block_size_shift: if c.block_size_shift == 0 {
                        SD_DEFAULT_BLOCK_SIZE_SHIFT
                    } else {
                        c.block_size_shift
                    },
                    version: SD_FORMAT_VERSION,
                    space: 0,
                };
                self.vdis = VdiTable::default();
                self.disable_recovery = false;
                self.history.clear();
                self.status = Status::Ok;
                self.epoch = 0;
                self.recompute_vnodes();
                fx.push(Effect::Formatted);
                self.new_epoch(time, fx);
                if let Some(Effect::NewEpoch { recover, .. }) = fx.last_mut() {
                    *recover = false;
                }
            }
            op::SHUTDOWN => {
                self.status = Status::Shutdown;
                fx.push(Effect::Shutdown);
            }
            op::ENABLE_RECOVER => {
                self.disable_recovery = false;
                fx.push(Effect::RecoveryEnabled);
            }
            op::DISABLE_RECOVER => self.disable_recovery = true,
            op::FORCE_RECOVER if self.status == Status::WaitForJoin => {
                self.resume(false, time, fx);
            }
            op::ALTER_CLUSTER_COPY => {
                self.config.copies = m.req.cluster().copies;
                fx.push(Effect::ConfigChanged);
            }
            op::REWEIGHT if self.status == Status::Ok => fx.push(Effect::Reweight),
            op::COMPLETE_RECOVERY
                if m.req.obj().tgt_epoch == self.epoch && m.data.len() >= SD_NODE_SIZE =>
            {
                self.recovered.insert(SdNode::decode(&m.data).nid);
                if self
                    .members
                    .iter()
                    .all(|x| self.recovered.contains(&x.node.nid))
                {
                    fx.push(Effect::RecoveryGathered(self.epoch));
                }
            }
            op::CLEANUP => fx.push(Effect::RecoveryGathered(self.epoch)),
            op::NEW_VDI => {
                let new = NewVdiOutcome::from_rsp(&m.rsp);
                if new.snapshotted != 0 {
                    self.vdis.mark_snapshot(new.snapshotted);
                }
                self.vdis.add(VdiState {
                    vid: new.vid,
                    nr_copies: new.copies,
                    copy_policy: new.copy_policy,
                    block_size_shift: new.block_size_shift,
                    parent_vid: new.parent,
                    ..Default::default()
                });
            }
            op::DEL_VDI => {
                self.vdis.mark_deleted(m.rsp.vdi_id());
                fx.push(Effect::VdiDeleted);
            }
            op::LOCK_VDI if m.data.len() >= NODE_ID_SIZE => self.vdis.lock(
                m.rsp.vdi_id(),
                m.req.vdi().lock_type,
                NodeId::decode(&m.data),
            ),
            op::RELEASE_VDI if m.data.len() >= NODE_ID_SIZE => self.vdis.release(
                m.req.vdi().base_vdi_id,
                m.req.vdi().lock_type,
                &NodeId::decode(&m.data),
            ),
            op::INODE_COHERENCE if m.data.len() >= NODE_ID_SIZE => {
                let c = m.req.inode_coherence();
                self.vdis
                    .coherence(c.vid, c.validate != 0, &NodeId::decode(&m.data));
            }
            op::ALTER_VDI_COPY => {
                let a = m.req.vdi_state();
                if let Some(s) = self.vdis.states.get_mut(&a.new_vid) {
                    s.nr_copies = a.copies;
                    fx.push(Effect::RedundancyChanged);
                }
            }
            op::NOTIFY_VDI_ADD => {
                let s = m.req.vdi_state();
                if s.old_vid != 0 {
                    self.vdis.mark_snapshot(s.old_vid);
                }
                self.vdis.add(VdiState {
                    vid: s.new_vid,
                    nr_copies: s.copies,
                    copy_policy: s.copy_policy,
                    block_size_shift: s.block_size_shift,
                    ..Default::default()
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone: port as u32,
            space: 1 << 30,
        }
    }
    fn join(seq: u64, port: u16, info: &JoinInfo) -> Delivered {
        Delivered {
            seq,
            time: 100 + seq,
            event: Event::Join {
                node: node(port),
                incarnation: port as u64,
                opaque: info.encode(),
            },
        }
    }
    fn format(seq: u64) -> Delivered {
        let mut req = SdReq::new(op::MAKE_FS);
        req.set_cluster(ClusterArgs {
            ctime: 77,
            copies: 3,
            flags: cluster_flag::AUTO_VNODES,
            ..Default::default()
        });
        let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
        Delivered {
            seq,
            time: 200,
            event: Event::Notify {
                sender: node(7000).nid,
                msg: OpMessage {
                    req,
                    rsp,
                    data: b"plain\0".to_vec(),
                }
                .encode(),
            },
        }
    }

    #[test]
    fn inode_coherence_moves_participants_as_the_original() {
        let mut t = VdiTable::default();
        t.add(VdiState {
            vid: 7,
            nr_copies: 2,
            ..Default::default()
        });
        let (a, b, c) = (node(7000).nid, node(7001).nid, node(7002).nid);
        for n in [a, b, c] {
            t.lock(7, LOCK_TYPE_SHARED, n);
        }
        // The first participant owns the index; later ones see it changed.
        let parts = |t: &VdiTable| [a, b, c].map(|n| t.participant_state(7, &n).unwrap());
        assert_eq!(
            parts(&t),
            [PART_MODIFIED, PART_INVALIDATED, PART_INVALIDATED]
        );
        t.coherence(7, true, &b);
        assert_eq!(parts(&t), [PART_SHARED, PART_SHARED, PART_INVALIDATED]);
        t.coherence(7, false, &c);
        assert_eq!(
            parts(&t),
            [PART_INVALIDATED, PART_INVALIDATED, PART_MODIFIED]
        );
        // A node that is not a participant changes nothing.
        t.coherence(7, false, &node(7009).nid);
        assert_eq!(
            parts(&t),
            [PART_INVALIDATED, PART_INVALIDATED, PART_MODIFIED]
        );
        t.release(7, LOCK_TYPE_SHARED, &c);
        assert_eq!(t.participant_state(7, &c), None);
    }

    #[test]
    fn format_join_leave_epochs() {
        let mut s = ClusterState::new(node(7000).nid, Default::default());
        let fresh = JoinInfo::default();
        let fx = s.apply(&join(1, 7000, &fresh));
        assert!(matches!(&fx[..], [Effect::Joined { .. }]));
        assert_eq!(s.status, Status::WaitForFormat);
        s.apply(&join(2, 7001, &fresh));
        let fx = s.apply(&format(3));
        assert_eq!(fx[0], Effect::Formatted);
        assert!(
            matches!(&fx[1], Effect::NewEpoch { epoch: 1, nodes, recover: false, .. } if nodes.len() == 2)
        );
        assert_eq!(s.status, Status::Ok);
        let fx = s.apply(&join(4, 7002, &fresh));
        assert!(matches!(&fx[0], Effect::NewEpoch { epoch: 2, nodes, .. } if nodes.len() == 3));
        let fx = s.apply(&Delivered {
            seq: 5,
            time: 300,
            event: Event::Leave {
                nid: node(7001).nid,
                incarnation: 7001,
            },
        });
        assert!(matches!(&fx[0], Effect::NewEpoch { epoch: 3, nodes, .. } if nodes.len() == 2));
        // a duplicate LEAVE changes nothing
        assert!(s
            .apply(&Delivered {
                seq: 6,
                time: 300,
                event: Event::Leave {
                    nid: node(7001).nid,
                    incarnation: 7001
                }
            })
            .is_empty());
        assert_eq!(s.epoch, 3);
    }

    #[test]
    fn restart_waits_for_last_epoch_members() {
        let cfg = SheepdogConfig {
            ctime: 77,
            copies: 3,
            ..Default::default()
        };
        let info = JoinInfo {
            config: cfg.clone(),
            epoch: 5,
            epoch_nodes: vec![node(7000), node(7001)],
        };
        let mut s = ClusterState::new(node(7001).nid, Default::default());
        s.apply(&join(1, 7000, &info));
        assert_eq!(s.status, Status::WaitForJoin);
        let fx = s.apply(&join(2, 7001, &info));
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.epoch, 5);
        assert!(fx
            .iter()
            .any(|f| matches!(f, Effect::NewEpoch { epoch: 5, .. })));
        // a node of another cluster is refused
        let other = JoinInfo {
            config: SheepdogConfig { ctime: 1, ..cfg },
            epoch: 1,
            epoch_nodes: vec![],
        };
        let mut s2 = ClusterState::new(node(7009).nid, Default::default());
        s2.apply(&join(1, 7000, &info));
        s2.apply(&join(2, 7001, &info));
        assert_eq!(
            s2.apply(&join(3, 7009, &other)),
            vec![Effect::JoinRefused(SdRes::INVALID_CTIME)]
        );
        assert!(!s2.is_member(&node(7009).nid));
    }

    #[test]
    fn a_node_that_ran_epochs_the_cluster_never_saw_is_refused() {
        let cfg = SheepdogConfig {
            ctime: 77,
            copies: 3,
            ..Default::default()
        };
        let at = |epoch, ports: &[u16]| JoinInfo {
            config: cfg.clone(),
            epoch,
            epoch_nodes: ports.iter().map(|&p| node(p)).collect(),
        };
        // The cluster came back at epoch 5 ({7000, 7001}).
        let resumed = |me: u16| {
            let mut s = ClusterState::new(node(me).nid, Default::default());
            s.apply(&join(1, 7000, &at(5, &[7000, 7001])));
            s.apply(&join(2, 7001, &at(5, &[7000, 7001])));
            assert_eq!((s.status, s.epoch), (Status::Ok, 5));
            s
        };
        // A node that ran on alone to epoch 7 holds writes the cluster
        // never saw: refused (it keeps them), and nobody takes it in.
        let mut s = resumed(7002);
        let fx = s.apply(&join(3, 7002, &at(7, &[7002])));
        assert_eq!(fx, vec![Effect::JoinRefused(SdRes::INVALID_EPOCH)]);
        let mut member = resumed(7000);
        member.apply(&join(3, 7002, &at(7, &[7002])));
        assert!(!member.is_member(&node(7002).nid));
        assert_eq!(member.epoch, 5);
        // So is one whose epoch 5 had other members than ours.
        let fx = member.apply(&join(4, 7003, &at(5, &[7000, 7003])));
        assert!(fx.is_empty() && !member.is_member(&node(7003).nid));
        // A node that stopped at an older epoch joins as ever.
        member.apply(&join(5, 7004, &at(3, &[7000, 7001, 7004])));
        assert!(member.is_member(&node(7004).nid));
        assert_eq!(member.epoch, 6);
    }

    #[test]
    fn formatted_nodes_returning_to_clean_ones_bring_their_cluster_back() {
        let cfg = SheepdogConfig {
            ctime: 77,
            copies: 2,
            ..Default::default()
        };
        let old = [node(7000), node(7001)];
        let info = JoinInfo {
            config: cfg,
            epoch: 4,
            epoch_nodes: old.to_vec(),
        };
        let mut s = ClusterState::new(node(7005).nid, Default::default());
        s.apply(&join(1, 7005, &JoinInfo::default()));
        assert_eq!(s.status, Status::WaitForFormat);
        let fx = s.apply(&join(2, 7000, &info));
        assert_eq!(s.status, Status::WaitForJoin);
        assert_eq!((s.epoch, s.config.ctime), (4, 77));
        assert!(fx.contains(&Effect::ConfigChanged));
        let fx = s.apply(&join(3, 7001, &info));
        assert_eq!(s.status, Status::Ok);
        // The clean node is a member of the new epoch.
        assert!(fx
            .iter()
            .any(|f| matches!(f, Effect::NewEpoch { epoch: 5, nodes, .. } if nodes.len() == 3)));
    }

    #[test]
    fn bitmap_wire_layout() {
        let mut b = VidBitmap::default();
        b.set(0x7c2b25);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), SD_VDI_BITMAP_SIZE);
        assert_eq!(bytes[1_017_188], 1 << 5);
        assert_eq!(b.first_clear_from(0x7c2b25), Some(0x7c2b26));
    }
}
