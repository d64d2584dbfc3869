//! Recovery (PROTOCOL.md §9): after every epoch change, each node makes
//! sure it holds every object the new ring assigns to it, fetching from the
//! holders of earlier epochs, and tells the cluster when it is done.
//!
//! One worker per node walks the list of objects it lacks. A request that
//! touches an object still on that list recovers it first ([`Recovery::ensure`]),
//! and a create claims it ([`Recovery::claim`]) so the worker never overwrites
//! newer data with what it fetched. A newer epoch supersedes the running pass.

use crate::daemon::Sheep;
use crate::state::OpMessage;
use crate::worker::WorkerState;
use sd_proto::*;
use sd_ring::Ring;
use sd_store::{ObjKey, ObjectStore};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Phases reported by STAT_RECOVERY.
const PHASE_PREPARE: u32 = 0;
const PHASE_RECOVER: u32 = 1;
const PHASE_NOTIFY: u32 = 2;

#[derive(Default)]
struct Inner {
    epoch: u32,
    in_recovery: bool,
    phase: u32,
    finished: u64,
    total: u64,
    /// Last epoch whose ring was used to retire objects to `.stale`.
    marked_epoch: u32,
    /// Bumped by every (re)start; a pass whose generation is old stops.
    generation: u64,
    /// Whether the VDI table was merged from every member since start.
    vdis_synced: bool,
    /// The newest epoch whose pass finished here: every object this node
    /// must hold under that epoch's ring is in its working directory.
    recovered_epoch: u32,
}

/// The objects of the running pass not recovered yet.
///
/// Every peer request asks whether its object is among them, so the set
/// is split into shards by object (two requests contend only when their
/// objects share a shard), and an empty set is seen without any lock.
/// Filled and cleared only under [`Recovery`]'s state lock (so the
/// pass's generation and its set change together).
struct Pending {
    shards: Box<[Mutex<HashSet<u64>>]>,
    len: AtomicUsize,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            shards: (0..64).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

impl Pending {
    fn shard(&self, oid: u64) -> &Mutex<HashSet<u64>> {
        &self.shards[(sd_hash_oid(oid) % self.shards.len() as u64) as usize]
    }
    fn contains(&self, oid: u64) -> bool {
        self.len.load(Ordering::SeqCst) != 0 && self.shard(oid).lock().unwrap().contains(&oid)
    }
    fn remove(&self, oid: u64) -> bool {
        let removed =
            self.len.load(Ordering::SeqCst) != 0 && self.shard(oid).lock().unwrap().remove(&oid);
        if removed {
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        removed
    }
    fn replace(&self, oids: &BTreeSet<u64>) {
        for s in self.shards.iter() {
            s.lock().unwrap().clear();
        }
        for &o in oids {
            self.shard(o).lock().unwrap().insert(o);
        }
        self.len.store(oids.len(), Ordering::SeqCst);
    }
}

/// The recovery worker's shared state.
pub struct Recovery {
    inner: Mutex<Inner>,
    pending: Pending,
    /// Epoch whose object list is ready; requests wait for it.
    prepared: watch::Sender<u32>,
    /// The same, read without a lock by requests that need not wait.
    prepared_epoch: AtomicU32,
    /// Objects being fetched right now (so two fetchers never race).
    inflight: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
    /// Told when a new pass is asked for.
    requested: Notify,
    /// When this node last served client data I/O (ms since `born`):
    /// while clients are active, the background pass yields half of its
    /// time to them.
    client_seen_ms: AtomicU64,
    born: Instant,
}

/// Client I/O more recent than this makes the background pass yield.
const CLIENT_ACTIVE: Duration = Duration::from_millis(100);

impl Recovery {
    /// Recovery state of a node started at `born` (on its clock).
    pub fn new(born: Instant) -> Self {
        Recovery {
            inner: Mutex::default(),
            pending: Pending::default(),
            prepared: watch::Sender::new(0),
            prepared_epoch: AtomicU32::new(0),
            inflight: Mutex::default(),
            wake: Notify::new(),
            requested: Notify::new(),
            client_seen_ms: AtomicU64::new(0),
            born,
        }
    }
    /// What STAT_RECOVERY reports while this node is at `epoch` (0 when it
    /// serves no epoch yet). A node is recovering from the moment it
    /// enters an epoch until its pass for that epoch has finished, even
    /// before the pass has started: `dog node recovery` must never show
    /// a node idle while an object it is responsible for is missing.
    pub fn state(&self, epoch: u32) -> RecoveryState {
        let i = self.inner.lock().unwrap();
        let behind = epoch != 0 && (i.recovered_epoch.wrapping_sub(epoch) as i32) < 0;
        RecoveryState {
            in_recovery: i.in_recovery || behind,
            state: i.phase,
            nr_finished: i.finished,
            nr_total: i.total,
        }
    }

    pub fn busy(&self) -> bool {
        self.inner.lock().unwrap().in_recovery
    }

    /// Notes client data I/O on this node (not recovery's own traffic).
    pub fn client_io(&self, now: Instant) {
        let now = now.saturating_duration_since(self.born).as_millis() as u64;
        self.client_seen_ms.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether clients did I/O here within [`CLIENT_ACTIVE`].
    pub fn clients_active(&self, now: Instant) -> bool {
        let seen = self.client_seen_ms.load(Ordering::Relaxed);
        let now = now.saturating_duration_since(self.born).as_millis() as u64;
        seen != 0 && now.saturating_sub(seen) < CLIENT_ACTIVE.as_millis() as u64
    }

    /// Resumes a pass suspended by DISABLE_RECOVER.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Starts (or restarts) recovery for `epoch`: the worker drops any
    /// pass of an older generation at its next step and begins this one.
    /// The pass's generation.
    pub fn start(&self, epoch: u32) -> u64 {
        {
            let mut i = self.inner.lock().unwrap();
            i.epoch = epoch;
            i.generation += 1;
            i.in_recovery = true;
            i.phase = PHASE_PREPARE;
            i.finished = 0;
            i.total = 0;
            self.pending.replace(&BTreeSet::new());
            if i.marked_epoch == 0 || i.marked_epoch >= epoch {
                i.marked_epoch = epoch - 1;
            }
        }
        // A pass again for the epoch whose list is known: requests wait
        // for the new list (objects may have gone missing here).
        let _ = self.prepared_epoch.compare_exchange(
            epoch,
            epoch.wrapping_sub(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.requested.notify_one();
        self.inner.lock().unwrap().generation
    }

    /// The pass asked for last: (epoch, generation), if one was asked for.
    fn requested_pass(&self) -> Option<(u32, u64)> {
        let i = self.inner.lock().unwrap();
        i.in_recovery.then_some((i.epoch, i.generation))
    }

    /// Marks `epoch` as needing no recovery (a freshly formatted cluster).
    pub fn nothing_to_recover(&self, epoch: u32) {
        {
            let mut i = self.inner.lock().unwrap();
            i.epoch = epoch;
            i.generation += 1;
            i.in_recovery = false;
            self.pending.replace(&BTreeSet::new());
            i.marked_epoch = epoch;
            i.recovered_epoch = epoch;
        }
        self.set_prepared(epoch);
    }

    /// The object list of `epoch` is ready.
    fn set_prepared(&self, epoch: u32) {
        self.prepared_epoch.store(epoch, Ordering::SeqCst);
        self.prepared.send_replace(epoch);
    }

    fn current(&self, generation: u64) -> bool {
        self.inner.lock().unwrap().generation == generation
    }

    /// Holds this node-wide state's locks (for the test that no request
    /// waits for them).
    #[cfg(test)]
    pub fn hold(&self) -> impl Sized + '_ {
        (self.inner.lock().unwrap(), self.inflight.lock().unwrap())
    }

    async fn wait_prepared(&self, sheep: &Sheep) {
        let epoch = sheep.epoch();
        if self
            .prepared_epoch
            .load(Ordering::SeqCst)
            .wrapping_sub(epoch) as i32
            >= 0
        {
            return;
        }
        let mut rx = self.prepared.subscribe();
        let prepared = rx.wait_for(|&e| e.wrapping_sub(epoch) as i32 >= 0);
        let _ = crate::clock::timeout(&*sheep.clock, Duration::from_secs(30), prepared).await;
    }

    fn slot(&self, oid: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.inflight
            .lock()
            .unwrap()
            .entry(oid)
            .or_default()
            .clone()
    }

    /// Recovers `oid` now if this node still lacks it.
    pub async fn ensure(&self, sheep: &Arc<Sheep>, oid: u64) {
        if sheep.opts.gateway {
            return;
        }
        self.wait_prepared(sheep).await;
        if !self.pending.contains(oid) {
            return;
        }
        recover_one(sheep, oid).await;
    }

    /// Takes `oid` off the list because a create is about to replace it.
    pub async fn claim(&self, sheep: &Arc<Sheep>, oid: u64) {
        if sheep.opts.gateway {
            return;
        }
        self.wait_prepared(sheep).await;
        if !self.pending.contains(oid) {
            return;
        }
        let slot = self.slot(oid);
        let _g = slot.lock().await;
        if self.pending.remove(oid) {
            self.inner.lock().unwrap().finished += 1;
        }
        self.release_slot(oid, &slot);
    }

    /// Forgets `oid`'s slot unless someone else waits on it too.
    fn release_slot(&self, oid: u64, slot: &Arc<tokio::sync::Mutex<()>>) {
        let mut inflight = self.inflight.lock().unwrap();
        // Clones are made under this lock: the map's and ours only.
        if Arc::strong_count(slot) == 2 {
            inflight.remove(&oid);
        }
    }
}

/// What a node knows of its copies of one file: enough to decide which
/// copy a recovery read is served (the store, or a simulated one).
pub trait CopyIndex {
    fn has_working(&self, k: &ObjKey) -> bool;
    /// The newest stale copy's epoch if it is `since` or later.
    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32>;
}

impl CopyIndex for dyn ObjectStore {
    fn has_working(&self, k: &ObjKey) -> bool {
        self.exists(k)
    }
    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32> {
        ObjectStore::newest_stale(self, k, since)
    }
}

/// A copy a node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Working,
    /// The stale copy retired with this epoch (current through it).
    Stale(u32),
}

/// The copy of `k` a recovery read of `tgt_epoch` is served: the working
/// copy, else the newest stale copy that was current through `tgt_epoch`
/// (any stale copy for a wildcard read).
pub fn recovery_source(
    copies: &(impl CopyIndex + ?Sized),
    k: &ObjKey,
    flags: u16,
    tgt_epoch: u32,
) -> Option<Source> {
    if copies.has_working(k) {
        return Some(Source::Working);
    }
    let floor = match flags & flag::CMD_WILDCARD {
        0 => tgt_epoch,
        _ => 0,
    };
    copies.newest_stale(k, floor).map(Source::Stale)
}

/// The holders of `oid` in an epoch whose ring was `ring`, in the order
/// to ask them (an erasure-coded object's strip `i` at the `i`th). This
/// node itself is one of them when it was a holder: skipping our own
/// stale copy of that epoch would let an older epoch's holder answer with
/// a copy that missed the writes of this one.
pub fn epoch_holders(ring: &Ring, oid: u64, copies: usize) -> Vec<SdNode> {
    ring.targets(oid, copies).into_iter().copied().collect()
}

/// Whether recovery, having found no copy among an epoch's holders, may
/// take an older epoch's copy: only if one of them answered that it has
/// none (a write of that epoch reached every holder, so it would have
/// it). A holder that did not answer (dead, partitioned, behind) may hold
/// the newest copy: then the object waits for it rather than come back
/// older than acknowledged.
pub fn may_walk_older(absent: usize, silent: usize) -> bool {
    absent > 0 || silent == 0
}

/// Whether a node joining at `cluster_epoch`, whose own latest epoch is
/// `my_epoch`, must retire everything it holds to stale copies: when the
/// cluster ran without it, what it holds may have missed writes.
pub fn retires_on_join(my_epoch: u32, cluster_epoch: u32, into_running: bool) -> bool {
    my_epoch != 0 && (into_running || my_epoch + 1 < cluster_epoch)
}

/// Whether this node should keep the local file `k` under `ring`.
fn keeps(sheep: &Sheep, ring: &Ring, k: &ObjKey) -> bool {
    match sheep.key_in(ring, k.oid) {
        Some((_, want)) => want == *k,
        None => false,
    }
}

/// Fetches and stores one object of the running pass unless someone else
/// already did. The copy is stored only while that pass is still the
/// current one: a fetch that a newer epoch (or placement) overtook leaves
/// the object to the newer pass. False when the object is still missing
/// here (no node could provide it, or storing failed): it stays pending.
async fn recover_one(sheep: &Arc<Sheep>, oid: u64) -> bool {
    let rec = &sheep.recovery;
    let slot = rec.slot(oid);
    let _g = slot.lock().await;
    let done = recover_locked(sheep, oid).await;
    rec.release_slot(oid, &slot);
    done
}

async fn recover_locked(sheep: &Arc<Sheep>, oid: u64) -> bool {
    let rec = &sheep.recovery;
    let (epoch, generation) = {
        let i = rec.inner.lock().unwrap();
        if !rec.pending.contains(oid) {
            return true;
        }
        (i.epoch, i.generation)
    };
    let view = sheep.view();
    if view.epoch != epoch {
        // A newer epoch is being set up; its pass takes over.
        return true;
    }
    if let Some((idx, key)) = sheep.key_in(&view.ring, oid) {
        if !sheep.store.exists(&key) {
            let Some(data) = fetch(sheep, &key, idx, epoch).await else {
                if view.vdis.family_dead(oid_to_vid(oid)) {
                    // Every VDI that could reference it is deleted, and
                    // the nodes that listed it have swept it meanwhile.
                    finish(rec, oid, generation);
                    return true;
                }
                tracing::error!("object {oid:016x} could not be recovered from any node yet");
                return false;
            };
            let shared = sheep.obj_locks.stripe(oid).read_owned().await;
            if !rec.current(generation) || sheep.epoch() != epoch {
                return true;
            }
            // The guard lives as long as the store, even if this task is
            // aborted (a peer request whose sender went away).
            let s = sheep.clone();
            let r = sheep
                .on_store(move || {
                    let _shared = shared;
                    s.store.create_and_write(&key, data.len() as u64, 0, &data)
                })
                .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("failed to store recovered object {oid:016x}: {e}");
                    sheep.disk_failed(&e);
                    return false;
                }
                Err(_) => return false,
            }
        }
    }
    finish(rec, oid, generation);
    true
}

/// Takes `oid` off the list of pass `generation` (if it still runs).
fn finish(rec: &Recovery, oid: u64, generation: u64) {
    let mut i = rec.inner.lock().unwrap();
    if i.generation == generation && rec.pending.remove(oid) {
        i.finished += 1;
    }
}

/// What a recovery read got from one node.
pub enum Fetched<T> {
    Data(T),
    /// The node answered that it has no copy that qualifies.
    Absent,
    /// The node did not answer (down, partitioned, behind this epoch): it
    /// may hold the newest copy, so nothing older may be taken instead.
    Unreachable,
}

/// A recovery read of file `key` (strip `key.ec_index` for EC objects)
/// from `node` as of `tgt_epoch`.
async fn read_peer(
    sheep: &Arc<Sheep>,
    node: &SdNode,
    key: &ObjKey,
    tgt_epoch: u32,
    flags: u16,
) -> Fetched<Vec<u8>> {
    let mut r = SdReq::new(op::READ_PEER);
    r.flags = flag::CMD_RECOVERY | flags;
    r.epoch = sheep.epoch();
    r.data_length = sheep.file_size(key, 0) as u32;
    r.set_obj(ObjArgs {
        oid: key.oid,
        tgt_epoch,
        ec_index: key.ec_index.unwrap_or(0),
        ..Default::default()
    });
    if node.nid == sheep.this.nid {
        // Our own working file or stale copy (e.g. a strip we held at
        // another index before).
        let st = &*sheep.store;
        let read = match recovery_source(st, key, flags, tgt_epoch) {
            None => return Fetched::Absent,
            Some(Source::Working) => st.read_all(key),
            Some(Source::Stale(e)) => st.read_stale(key, e, 0, r.data_length as usize),
        };
        return read.map_or(Fetched::Unreachable, Fetched::Data);
    }
    let (rsp, data) = sheep.send_peer(node.nid.io_socket_addr(), &r, &[]).await;
    match rsp.result {
        SdRes::SUCCESS
            if rsp
                .payload_crc()
                .is_some_and(|c| c != crc32c::crc32c(&data)) =>
        {
            // Changed on its way here: never stored; asked again later.
            tracing::error!(
                "{} from {}: the copy received does not match its sender's checksum",
                key.file_name(),
                node.nid.to_addr_string()
            );
            Fetched::Unreachable
        }
        SdRes::SUCCESS => Fetched::Data(data),
        SdRes::NO_OBJ => Fetched::Absent,
        _ => Fetched::Unreachable,
    }
}

/// The rings of past epochs, each read (or asked of a peer) once per
/// fetch: a rebuild walks several positions through the same epochs.
#[derive(Default)]
struct EpochRings(std::collections::HashMap<u32, Option<Ring>>);

impl EpochRings {
    async fn get(&mut self, sheep: &Arc<Sheep>, e: u32) -> Option<&Ring> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(e) {
            let ring = crate::vdi::epoch_nodes(sheep, e).await;
            v.insert(ring.map(|(nodes, _)| Ring::new(&nodes)));
        }
        self.0[&e].as_ref()
    }
}

/// Where the walk back through the epochs for one object ended.
enum Walk {
    /// A replica, or this node's own strip.
    Mine(Vec<u8>),
    /// Enough other strips (by position) to decode this node's, all of
    /// one write.
    Strips(Vec<(usize, Vec<u8>)>),
    /// A holder of this epoch did not answer: it may hold a newer copy
    /// than any older epoch's holder, so nothing older may be taken.
    Blocked(u32),
    /// Every holder asked answered that it has none.
    Nowhere,
}

/// Walks back from epoch `newest` asking the holders of the object in
/// each epoch for their file as of that epoch: the first copies found
/// were current through the newest epoch any surviving copy was. Every
/// write of an epoch reaches every holder of the epoch (each replica;
/// each strip position of an erasure-coded object), so one holder that
/// answers it has none proves the epoch saw no write, and the walk goes
/// on to the one before; an epoch whose holders are silent stops it.
///
/// `want` strips are collected for an erasure-coded object (position
/// `mine`, this node's, ends the walk at once); strips found in
/// different epochs belong to one write, since the epochs between were
/// proven write-free. A replica is any one copy.
async fn walk(
    sheep: &Arc<Sheep>,
    rings: &mut EpochRings,
    oid: u64,
    mine: Option<usize>,
    want: usize,
    newest: u32,
) -> Walk {
    let copies = sheep.copies_of(oid);
    let alive: Vec<SdNode> = sheep.view().nodes.clone();
    let mut found: Vec<(usize, Vec<u8>)> = Vec::new();
    for e in (1..=newest).rev() {
        let Some(ring) = rings.get(sheep, e).await else {
            continue;
        };
        let (mut absent, mut silent) = (0, 0);
        for (p, t) in epoch_holders(ring, oid, copies).into_iter().enumerate() {
            let key = ObjKey {
                oid,
                ec_index: mine.map(|_| p as u8),
            };
            if found.iter().any(|f| f.0 == p && mine.is_some()) {
                continue;
            }
            if t.nid != sheep.this.nid && !alive.iter().any(|a| a.nid == t.nid) {
                silent += 1;
                continue;
            }
            match read_peer(sheep, &t, &key, e, 0).await {
                Fetched::Data(d) if mine.is_none() || Some(p) == mine => {
                    return Walk::Mine(d);
                }
                Fetched::Data(d) => {
                    if found.first().is_none_or(|f| f.1.len() == d.len()) {
                        found.push((p, d));
                    }
                    if found.len() == want {
                        return Walk::Strips(found);
                    }
                }
                Fetched::Absent => absent += 1,
                Fetched::Unreachable => silent += 1,
            }
        }
        if !may_walk_older(absent, silent) {
            return Walk::Blocked(e);
        }
    }
    Walk::Nowhere
}

/// Fetches this node's file of `oid` (position `idx` of epoch `epoch`)
/// by walking back through the epochs' holders; an erasure-coded strip
/// may instead be decoded from `d` others the walk finds. Only when the
/// walk was never stopped by a silent holder may any member's copy
/// serve, as a last resort.
async fn fetch(sheep: &Arc<Sheep>, key: &ObjKey, idx: usize, epoch: u32) -> Option<Vec<u8>> {
    let oid = key.oid;
    let mut rings = EpochRings::default();
    let codec = key.ec_index.and_then(|_| sheep.ec_codec(oid, 0));
    // A strip's other positions may already be recovered in this epoch;
    // a replica's other holders of this epoch are recovering it too.
    let (mine, want, newest) = match &codec {
        Some(c) => (Some(idx), c.policy().data_strips(), epoch),
        None => (None, 1, epoch - 1),
    };
    match walk(sheep, &mut rings, oid, mine, want, newest).await {
        Walk::Mine(d) => return Some(d),
        Walk::Strips(present) => {
            let codec = codec?;
            let mut out = vec![0u8; present[0].1.len()];
            let mut missing = [(idx, out.as_mut_slice())];
            codec.reconstruct_into(&present, &mut missing).ok()?;
            return Some(out);
        }
        Walk::Blocked(e) => {
            tracing::warn!("object {oid:016x}: no holder of epoch {e} answers; waiting for one");
            return None;
        }
        Walk::Nowhere => {}
    }
    let alive: Vec<SdNode> = sheep.view().nodes.clone();
    let e = epoch.saturating_sub(1);
    for n in alive.iter().filter(|n| n.nid != sheep.this.nid) {
        if let Fetched::Data(d) = read_peer(sheep, n, key, e, flag::CMD_WILDCARD).await {
            return Some(d);
        }
    }
    // Last resort: our own stale copy (better than nothing when it is the
    // only one left).
    match read_peer(sheep, &sheep.this, key, e, flag::CMD_WILDCARD).await {
        Fetched::Data(d) => Some(d),
        _ => None,
    }
}

async fn obj_list(sheep: &Arc<Sheep>, node: &SdNode) -> Option<Vec<u64>> {
    let mut len = 4usize << 20;
    loop {
        let mut r = SdReq::new(op::GET_OBJ_LIST);
        r.data_length = len as u32;
        // Stamped with the pass's epoch, so an unreachable node does not
        // hold the pass once a newer epoch has superseded it.
        r.epoch = sheep.epoch();
        let (rsp, data) = if node.nid == sheep.this.nid {
            crate::ops::local(sheep, r, Vec::new()).await
        } else {
            sheep.send_peer(node.nid.io_socket_addr(), &r, &[]).await
        };
        match rsp.result {
            SdRes::SUCCESS => {
                return Some(
                    data.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }
            SdRes::BUFFER_SMALL if len < SD_MAX_DATA_LENGTH as usize / 2 => len *= 2,
            _ => return None,
        }
    }
}

/// Where a pass is.
enum Stage {
    /// Retire what this node no longer holds, then list what it lacks.
    Prepare,
    /// Fetch the listed objects one per step; `missing` failed so far.
    Recover {
        queue: std::collections::VecDeque<u64>,
        missing: Vec<u64>,
    },
    /// Retry what no node could provide yet, backing off.
    Retry { missing: Vec<u64>, delay: Duration },
    /// Tell the cluster this node holds everything for the epoch.
    Notify,
}

/// One pass of recovery for one epoch.
struct Pass {
    generation: u64,
    stage: Stage,
    since_pause: u32,
}

/// The recovery worker (PROTOCOL.md §9): walks the pass asked for last,
/// one object per step, yielding to client I/O and to the operator's
/// throttle between steps.
pub struct RecoveryWorker {
    sheep: Arc<Sheep>,
    pass: Option<Pass>,
}

/// The longest pause between retries of objects no node could provide:
/// short enough that a newer epoch is taken up promptly.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

impl RecoveryWorker {
    pub fn new(sheep: Arc<Sheep>) -> Self {
        RecoveryWorker { sheep, pass: None }
    }
}

impl crate::worker::Worker for RecoveryWorker {
    fn name(&self) -> &'static str {
        "recovery"
    }

    fn progress(&self) -> crate::worker::Progress {
        let i = self.sheep.recovery.inner.lock().unwrap();
        let errors = match self.pass.as_ref().map(|p| &p.stage) {
            Some(Stage::Recover { missing, .. } | Stage::Retry { missing, .. }) => missing.len(),
            _ => 0,
        };
        crate::worker::Progress {
            done: i.finished,
            total: i.total,
            errors: errors as u64,
        }
    }

    async fn wait_for_work(&mut self) {
        if self.sheep.recovery.requested_pass().is_none() {
            self.sheep.recovery.requested.notified().await;
        }
    }

    async fn step(&mut self) -> WorkerState {
        let sheep = self.sheep.clone();
        let rec = &sheep.recovery;
        let Some((epoch, generation)) = rec.requested_pass() else {
            self.pass = None;
            return WorkerState::Idle;
        };
        let pass = match &mut self.pass {
            Some(p) if p.generation == generation => p,
            slot => slot.insert(Pass {
                generation,
                stage: Stage::Prepare,
                since_pause: 0,
            }),
        };
        let stage = std::mem::replace(&mut pass.stage, Stage::Notify);
        let (next, state) = match stage {
            Stage::Prepare => match prepare(&sheep, epoch, generation).await {
                Ok(Some(wanted)) => match would_fill(&sheep, &wanted) {
                    Some((need, free)) => {
                        tracing::error!(
                            "recovery of epoch {epoch} cancelled: it needs {need} bytes here and the disks have {free} free (the cluster avoids full disks, format -F); checking again in 10 s"
                        );
                        (
                            Stage::Prepare,
                            WorkerState::Throttled(Duration::from_secs(10)),
                        )
                    }
                    None => (
                        Stage::Recover {
                            queue: wanted.into_iter().collect(),
                            missing: Vec::new(),
                        },
                        WorkerState::Busy,
                    ),
                },
                // Superseded: the next step starts the newer pass.
                Ok(None) => return WorkerState::Busy,
                Err(e) => {
                    tracing::error!("preparing recovery of epoch {epoch} failed: {e:#}");
                    (
                        Stage::Prepare,
                        WorkerState::Throttled(Duration::from_secs(1)),
                    )
                }
            },
            Stage::Recover {
                mut queue,
                mut missing,
            } => {
                if sheep.view().disable_recovery {
                    let stage = Stage::Recover { queue, missing };
                    pass.stage = stage;
                    return WorkerState::Throttled(Duration::from_millis(200));
                }
                match queue.pop_front() {
                    None if missing.is_empty() => (Stage::Notify, WorkerState::Busy),
                    None => {
                        let delay = Duration::from_millis(500);
                        tracing::warn!(
                            "{} objects not recovered yet, retrying in {delay:?}",
                            missing.len()
                        );
                        (
                            Stage::Retry { missing, delay },
                            WorkerState::Throttled(delay),
                        )
                    }
                    Some(oid) => {
                        let started = sheep.clock.now();
                        if !recover_one(&sheep, oid).await {
                            missing.push(oid);
                        }
                        (
                            Stage::Recover { queue, missing },
                            pause(&sheep, started, &mut pass.since_pause),
                        )
                    }
                }
            }
            // Never report the pass complete (which purges the stale
            // copies everywhere) while an object is missing: its last copy
            // may be one of them, on a node that is slow or briefly
            // unreachable.
            Stage::Retry { missing, delay } => {
                let mut still = Vec::new();
                for oid in missing {
                    if !rec.current(generation) {
                        return WorkerState::Busy;
                    }
                    if !recover_one(&sheep, oid).await {
                        still.push(oid);
                    }
                }
                if still.is_empty() {
                    (Stage::Notify, WorkerState::Busy)
                } else {
                    let delay = (delay * 2).min(MAX_RETRY_DELAY);
                    tracing::warn!(
                        "{} objects not recovered yet, retrying in {delay:?}",
                        still.len()
                    );
                    (
                        Stage::Retry {
                            missing: still,
                            delay,
                        },
                        WorkerState::Throttled(delay),
                    )
                }
            }
            Stage::Notify => {
                if let Err(e) = notify_complete(&sheep, epoch, generation).await {
                    tracing::error!("recovery of epoch {epoch}: {e:#}");
                }
                self.pass = None;
                return WorkerState::Busy;
            }
        };
        if let Some(p) = &mut self.pass {
            p.stage = next;
        }
        state
    }
}

/// With the cluster formatted to avoid full disks (`-F`): the bytes the
/// objects `wanted` need here and the free bytes, if they do not fit. The
/// pass then waits instead (never reporting completion, which would purge
/// the stale copies some of them may only exist as).
fn would_fill(sheep: &Sheep, wanted: &BTreeSet<u64>) -> Option<(u64, u64)> {
    let view = sheep.view();
    if view.config.flags & cluster_flag::AVOID_DISKFULL == 0 {
        return None;
    }
    let need: u64 = wanted
        .iter()
        .filter_map(|&oid| sheep.key_in(&view.ring, oid))
        .map(|(_, k)| sheep.file_size(&k, 0))
        .sum();
    let (_, free) = sheep.store.fs_space().ok()?;
    (need > free).then_some((need, free))
}

/// The pause after recovering one object: while clients are active, as
/// long again as the object took, so recovery gets at most half of the
/// disk and network (objects clients touch are recovered at once anyway,
/// by `ensure`); and the operator's throttle (`max` objects, then
/// `interval` ms).
fn pause(sheep: &Sheep, started: Instant, since_pause: &mut u32) -> WorkerState {
    let mut d = Duration::ZERO;
    let now = sheep.clock.now();
    if sheep.recovery.clients_active(now) {
        d = now.saturating_duration_since(started);
    }
    let t = *sheep.throttle.lock().unwrap();
    if t.max_exec_count > 0 && t.queue_work_interval > 0 {
        *since_pause += 1;
        if *since_pause >= t.max_exec_count {
            *since_pause = 0;
            d += Duration::from_millis(t.queue_work_interval);
        }
    }
    match d.is_zero() {
        true => WorkerState::Busy,
        false => WorkerState::Throttled(d),
    }
}

/// Retires the objects this node stopped holding in any epoch since the
/// last marking, up to `epoch` (whose ring is `ring`): such copies may
/// miss writes and must not be served as current. The daemon marks a new
/// epoch before it records the epoch's file, so after a crash every
/// working copy is current through the newest epoch file (the tag a
/// joining node gives what it retires). False if the pass `generation`
/// was superseded meanwhile.
pub async fn mark(
    sheep: &Arc<Sheep>,
    epoch: u32,
    ring: &Arc<Ring>,
    generation: u64,
) -> anyhow::Result<bool> {
    let from = sheep.recovery.inner.lock().unwrap().marked_epoch + 1;
    for e in from..=epoch {
        let ring = match e == epoch {
            true => ring.clone(),
            false => match crate::vdi::epoch_nodes(sheep, e).await {
                Some((n, _)) => Arc::new(Ring::new(&n)),
                None => continue,
            },
        };
        // Exclusive: every store decided under an older placement has
        // landed (and is retired here) or will see the newer epoch.
        let _exclusive = sheep.obj_locks.all_exclusive().await;
        if !sheep.recovery.current(generation) {
            return Ok(false);
        }
        let s = sheep.clone();
        sheep
            .on_store(move || -> anyhow::Result<()> {
                for k in s.store.list()? {
                    if !keeps(&s, &ring, &k) {
                        s.store.move_to_stale(&k, e - 1)?;
                    }
                }
                Ok(())
            })
            .await??;
        let mut i = sheep.recovery.inner.lock().unwrap();
        if i.generation == generation {
            i.marked_epoch = i.marked_epoch.max(e);
        }
    }
    Ok(true)
}

/// Prepares the pass of `epoch`: retires what this node stopped holding,
/// then lists the objects it must hold and lacks. None if a newer pass
/// superseded this one meanwhile.
async fn prepare(
    sheep: &Arc<Sheep>,
    epoch: u32,
    generation: u64,
) -> anyhow::Result<Option<BTreeSet<u64>>> {
    let view = sheep.view();
    if view.epoch != epoch {
        return Ok(None);
    }
    let mut wanted = BTreeSet::new();
    if sheep.opts.gateway {
        sheep.recovery.set_prepared(epoch);
        return Ok(Some(wanted));
    }
    // Placement depends on each VDI's copy count: before the first
    // marking, learn the VDIs whose inodes other nodes hold.
    if !sheep.recovery.inner.lock().unwrap().vdis_synced {
        for n in view.ring.nodes().iter().filter(|n| n.nid != sheep.this.nid) {
            let _ = crate::vdi::sync_vdis_from(sheep, n).await;
        }
        sheep.recovery.inner.lock().unwrap().vdis_synced = true;
    }
    if !mark(sheep, epoch, &view.ring, generation).await? {
        return Ok(None);
    }

    for n in view.ring.nodes().iter().filter(|n| !n.is_gateway()) {
        // Every member's list is needed: an object only a slow member
        // lists (a stale copy it keeps) would otherwise be skipped,
        // and completing the pass purges the stale copies everywhere.
        // A member that never answers leaves the view, and the newer
        // epoch supersedes this pass.
        let mut delay = Duration::from_millis(200);
        let list = loop {
            if let Some(l) = obj_list(sheep, n).await {
                break l;
            }
            if !sheep.recovery.current(generation) {
                return Ok(None);
            }
            tracing::warn!(
                "no object list from {} yet; retrying in {delay:?}",
                n.nid.socket_addr()
            );
            sheep.clock.sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        for oid in list {
            if sheep
                .key_in(&view.ring, oid)
                .is_some_and(|(_, k)| !sheep.store.exists(&k))
            {
                wanted.insert(oid);
            }
        }
    }
    {
        let mut i = sheep.recovery.inner.lock().unwrap();
        if i.generation != generation {
            return Ok(None);
        }
        i.total = wanted.len() as u64;
        sheep.recovery.pending.replace(&wanted);
        i.phase = PHASE_RECOVER;
    }
    sheep.recovery.set_prepared(epoch);
    Ok(Some(wanted))
}

/// Tells the cluster this node has recovered everything for `epoch`.
async fn notify_complete(sheep: &Arc<Sheep>, epoch: u32, generation: u64) -> anyhow::Result<()> {
    {
        let mut i = sheep.recovery.inner.lock().unwrap();
        if i.generation != generation {
            return Ok(());
        }
        i.phase = PHASE_NOTIFY;
    }
    let mut req = SdReq::new(op::COMPLETE_RECOVERY);
    req.flags = flag::CMD_WRITE;
    req.data_length = SD_NODE_SIZE as u32;
    req.set_obj(ObjArgs {
        tgt_epoch: epoch,
        ..Default::default()
    });
    let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
    {
        // Checked and cleared under one lock: a pass asked for meanwhile
        // keeps the node in recovery.
        let mut i = sheep.recovery.inner.lock().unwrap();
        if i.generation == generation {
            i.in_recovery = false;
            i.recovered_epoch = epoch;
        }
    }
    sheep
        .broadcast(OpMessage {
            req,
            rsp,
            data: sheep.this.encode().to_vec(),
        })
        .await?;
    tracing::info!("recovery of epoch {epoch} finished on this node");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Recovery on an in-memory store among fake peers (see
    //! `crate::testing`).

    use super::*;
    use crate::testing::{Harness, Mode};
    use crate::worker::Worker;

    /// An object of a 3-node, 2-copy cluster that this node (node 0) does
    /// not hold at epoch 1: fake peers 1 and 2 do, with `data`.
    fn held_by_peers(h: &Harness, data: &[u8]) -> u64 {
        let oid = (0..)
            .map(|i| vid_to_data_oid(0xabcd, i))
            .find(|&o| !h.targets(o).contains(&0))
            .unwrap();
        for i in [1, 2] {
            h.peer(i)
                .store
                .create_and_write(&ObjKey::replica(oid), 0, 0, data)
                .unwrap();
        }
        oid
    }

    /// Runs the recovery worker until this node holds `oid` (at most
    /// `steps` steps); whether it does.
    async fn recover(h: &Harness, w: &mut RecoveryWorker, oid: u64, steps: usize) -> bool {
        for _ in 0..steps {
            if h.store.exists(&ObjKey::replica(oid)) {
                return true;
            }
            w.step().await;
        }
        h.store.exists(&ObjKey::replica(oid))
    }

    #[tokio::test]
    async fn a_new_target_recovers_the_copy_its_holders_had() {
        let mut h = Harness::new(2, 2, false).await;
        let oid = held_by_peers(&h, b"acknowledged");
        // Node 2 leaves: this node becomes a target of the object.
        h.remove_peer(2).await;
        let epoch = h.sheep.epoch();
        assert!(h.targets(oid).contains(&0));
        assert!(h.sheep.recovery.state(epoch).in_recovery);
        let mut w = RecoveryWorker::new(h.sheep.clone());
        assert!(recover(&h, &mut w, oid, 50).await);
        let got = h.store.read(&ObjKey::replica(oid), 0, 12).unwrap();
        assert_eq!(got, b"acknowledged");
    }

    /// The only live holder of an object this node must recover answers
    /// as `mode` says: the object stays missing and the node keeps
    /// reporting recovery (it must not look idle); once the holder serves,
    /// the acknowledged copy arrives.
    async fn waits_while_the_holder(mode: Mode) {
        let mut h = Harness::new(2, 2, false).await;
        let oid = held_by_peers(&h, b"acknowledged");
        h.peer(1).set_mode(mode);
        h.remove_peer(2).await;
        let epoch = h.sheep.epoch();
        let mut w = RecoveryWorker::new(h.sheep.clone());
        assert!(!recover(&h, &mut w, oid, 30).await);
        assert!(h.sheep.recovery.state(epoch).in_recovery);
        h.peer(1).set_mode(Mode::Serve);
        assert!(recover(&h, &mut w, oid, 30).await);
        let got = h.store.read(&ObjKey::replica(oid), 0, 12).unwrap();
        assert_eq!(got, b"acknowledged");
    }

    #[tokio::test]
    async fn an_object_whose_holder_does_not_answer_is_waited_for() {
        waits_while_the_holder(Mode::SilentReads).await;
    }

    #[tokio::test]
    async fn a_copy_changed_on_its_way_is_not_stored() {
        // Its CRC32C does not match what arrives: never stored.
        waits_while_the_holder(Mode::GarbledReads).await;
    }
}
