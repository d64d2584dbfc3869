//! The daemon: one [`Sheep`] shared by every connection and worker.

use crate::clock::Clock;
use crate::core::{ClusterCore, ClusterView};
use crate::opts::Opts;
use crate::peer::PeerTransport;
use crate::recovery::Recovery;
use crate::server::Reply;
use crate::state::{ClusterState, Effect, JoinInfo, OpMessage};
use crate::worker::{Progress, Supervisor, Worker, WorkerState};
use anyhow::Context;
use sd_cluster::{Delivered, Driver};
use sd_proto::*;
use sd_ring::Ring;
use sd_store::{ObjectStore, Store};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The daemon's parts, shared by every connection and worker.
///
/// Cluster state lives in [`ClusterCore`], which alone changes it (from
/// the event loop here); requests read its published [`ClusterView`].
pub struct Sheep {
    pub opts: Opts,
    pub this: SdNode,
    pub store: Arc<dyn ObjectStore>,
    pub driver: Driver,
    pub core: ClusterCore,
    pub applied: watch::Sender<u64>,
    pub peers: Arc<dyn PeerTransport>,
    pub clock: Arc<dyn Clock>,
    pub recovery: Recovery,
    pub throttle: Mutex<RecoveryThrottling>,
    pub exit: watch::Sender<Option<i32>>,
    /// Work for the reclaim worker: releases left to retry, and sweeps.
    pub reclaim: mpsc::UnboundedSender<Reclaim>,
    /// Peers whose VDI tables the VDI-sync worker merges into ours
    /// (through [`Sheep::sync_vdis_with`]).
    vdi_sync: mpsc::UnboundedSender<SdNode>,
    /// How many of those merges are still to do: a lookup that finds
    /// nothing meanwhile waits for them before answering NO_VDI.
    vdi_syncs_pending: watch::Sender<usize>,
    /// Owns the background workers and the critical tasks.
    pub workers: Arc<Supervisor>,
    /// One codec per erasure-code policy byte, made on first use.
    codecs: Box<[OnceLock<Option<Arc<sd_ec::Codec>>>]>,
    pub stats: crate::server::Stats,
    /// Corruption found and repaired (see [`crate::repair`]).
    pub integrity: crate::repair::Integrity,
    /// The operator's control of the scrub (see [`crate::scrub`]).
    pub scrub: crate::scrub::ScrubControl,
    /// The store's disk generation the last recovery pass started at: a
    /// newer one means disks changed and objects may be missing here.
    pub disks_recovered: std::sync::atomic::AtomicU64,
    /// Set once this node leaves on purpose (the stream then ends).
    pub leaving: std::sync::atomic::AtomicBool,
    pub obj_locks: crate::peer::ObjLocks,
}

impl Sheep {
    pub fn view(&self) -> Arc<ClusterView> {
        self.core.view()
    }

    pub fn epoch(&self) -> u32 {
        self.core.view().epoch
    }

    /// Waits until the local epoch reaches `epoch` (or `timeout` passes).
    pub async fn wait_epoch(&self, epoch: u32, timeout: Duration) -> bool {
        let mut rx = self.core.subscribe();
        let reached = rx.wait_for(|v| v.epoch.wrapping_sub(epoch) as i32 >= 0);
        let ok = crate::clock::timeout(&*self.clock, timeout, reached)
            .await
            .is_some();
        ok
    }

    /// Sends one request to the sheep at `addr`; transport failures read
    /// as NETWORK_ERROR.
    ///
    /// A request that carries an epoch is abandoned (NETWORK_ERROR, so its
    /// sender retries with the new view) as soon as this node's epoch moves
    /// past it: a target that left the view (crashed, partitioned) must not
    /// hold a request until the transport timeouts. The connection is
    /// dropped, so the peer, if it is still there, abandons it too.
    pub async fn send_peer(
        &self,
        addr: std::net::SocketAddr,
        req: &SdReq,
        payload: &[u8],
    ) -> Reply {
        if req.epoch == 0 {
            return self.peers.exec(addr, req, payload).await;
        }
        let mut view = self.core.subscribe();
        let newer = view.wait_for(|v| (v.epoch.wrapping_sub(req.epoch) as i32) > 0);
        tokio::select! {
            biased;
            r = self.peers.exec(addr, req, payload) => r,
            _ = newer => crate::server::reply(req, SdRes::NETWORK_ERROR),
        }
    }

    /// Waits until the event loop has applied the stream up to `seq`.
    pub async fn wait_applied(&self, seq: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|&a| a >= seq).await;
    }

    /// Waits (at most 5 s) until this node has applied, with their
    /// effects, every event the cluster driver has ordered so far. A node
    /// already caught up returns at once.
    pub async fn catch_up(&self) {
        let caught_up = async {
            if let Ok(end) = self.driver.stream_end().await {
                self.wait_applied(end).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), caught_up).await;
    }

    /// The epoch rule for a request stamped `epoch` from a node ahead of
    /// us: wait (a bounded time) until this node has reached it. False if
    /// it did not (the sender gets NEW_NODE_VER and retries).
    pub async fn reach_epoch(&self, epoch: u32) -> bool {
        epoch == 0
            || (epoch.wrapping_sub(self.epoch()) as i32) <= 0
            || self.wait_epoch(epoch, Duration::from_secs(10)).await
    }

    /// Size of the file that holds `oid` (full object size).
    pub fn object_size(&self, oid: u64) -> u64 {
        self.view().object_size(oid)
    }

    /// The erasure code of `oid`, if it is an erasure-coded object:
    /// `hint` is the policy a request carried (0 = look up the VDI's).
    pub fn ec_codec(&self, oid: u64, hint: u8) -> Option<Arc<sd_ec::Codec>> {
        if !is_ec_capable(oid) {
            return None;
        }
        let policy = match hint {
            0 => self.view().vdi_redundancy(oid_to_vid(oid)).1,
            p => p,
        };
        self.codecs[policy as usize]
            .get_or_init(|| {
                let pol = sd_ec::EcPolicy::from_copy_policy(policy)?;
                sd_ec::Codec::new(pol).ok().map(Arc::new)
            })
            .clone()
    }

    /// The stored file of `oid` at this node: the replica, or strip
    /// `ec_index` of an erasure-coded object.
    pub fn obj_key(&self, oid: u64, hint: u8, ec_index: u8) -> sd_store::ObjKey {
        let ec = self.ec_codec(oid, hint).is_some();
        sd_store::ObjKey {
            oid,
            ec_index: ec.then_some(ec_index),
        }
    }

    /// The file this node should hold for `oid` under the current ring
    /// (its strip for an erasure-coded object), if it is a target.
    pub fn local_key(&self, oid: u64) -> Option<sd_store::ObjKey> {
        self.key_in(&self.view().ring, oid).map(|(_, k)| k)
    }

    /// This node's index in the placement of `oid` under `ring`, and the
    /// file it should hold there.
    pub fn key_in(&self, ring: &Ring, oid: u64) -> Option<(usize, sd_store::ObjKey)> {
        let idx = ring.target_index(oid, self.copies_of(oid), &self.this.nid)?;
        Some((idx, self.obj_key(oid, 0, idx as u8)))
    }

    /// Size of the file holding `key` (a strip is `1/d` of the object).
    pub fn file_size(&self, key: &sd_store::ObjKey, hint: u8) -> u64 {
        let size = self.object_size(key.oid);
        match (key.ec_index, self.ec_codec(key.oid, hint)) {
            (Some(_), Some(c)) => size / c.policy().data_strips() as u64,
            _ => size,
        }
    }

    /// Whether this node has the state of `vid`.
    pub fn knows_vdi(&self, vid: u32) -> bool {
        self.view().vdis.states.contains_key(&vid)
    }

    /// Whether `vid` is a snapshot (its data objects are read-only).
    pub fn is_snapshot(&self, vid: u32) -> bool {
        self.view().is_snapshot(vid)
    }

    /// Copies to keep of `oid` when the client did not say.
    pub fn copies_of(&self, oid: u64) -> usize {
        self.view().copies_of(oid)
    }

    /// The targets of `oid` in `view`'s placement, in order (strip `i` of
    /// an erasure-coded object at the `i`th).
    pub fn targets(view: &ClusterView, oid: u64) -> Vec<SdNode> {
        let targets = view.ring.targets(oid, view.copies_of(oid));
        targets.into_iter().copied().collect()
    }

    /// Broadcasts a cluster operation's main phase and waits until this
    /// node has applied it.
    pub async fn broadcast(&self, m: OpMessage) -> anyhow::Result<()> {
        let seq = self.driver.notify(m.encode()).await?;
        self.wait_applied(seq).await;
        Ok(())
    }

    /// Has the VDI-sync worker merge `node`'s VDI table into ours.
    pub fn sync_vdis_with(&self, node: SdNode) {
        self.vdi_syncs_pending.send_modify(|n| *n += 1);
        let _ = self.vdi_sync.send(node);
    }

    /// Waits (at most 10 s) until every VDI-table merge asked for so far
    /// is done; false if none was pending.
    pub async fn wait_vdis_synced(&self) -> bool {
        if *self.vdi_syncs_pending.borrow() == 0 {
            return false;
        }
        let mut rx = self.vdi_syncs_pending.subscribe();
        let synced = rx.wait_for(|&n| n == 0);
        let _ = crate::clock::timeout(&*self.clock, Duration::from_secs(10), synced).await;
        true
    }

    /// Runs a (blocking) store call: on the blocking pool, or at once for
    /// a store that runs inline (in memory, so that a simulation on one
    /// thread stays deterministic).
    pub async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        if self.store.runs_inline() {
            return Ok(f());
        }
        tokio::task::spawn_blocking(f).await
    }

    /// Reports the disks the store unplugged because they failed (found
    /// by any operation, even one that ignores errors) and recovers what
    /// they held; whether there were any.
    pub fn note_lost_disks(&self) -> bool {
        let lost = self.store.take_lost_disks();
        for (disk, why) in &lost {
            tracing::error!(
                "disk {} failed ({why}): unplugged; its objects are recovered from the other nodes",
                disk.display()
            );
        }
        if !lost.is_empty() {
            self.recover_again();
        }
        !lost.is_empty()
    }

    /// Runs a recovery pass for the current epoch again: this node lost
    /// objects without a membership change (a disk unplugged or failed)
    /// or holds new ones (copies raised). Requests for objects the pass
    /// finds missing here wait for them, as after an epoch change.
    pub fn recover_again(&self) {
        let v = self.view();
        if v.joined && v.epoch > 0 {
            self.disks_recovered.store(
                self.store.disk_generation(),
                std::sync::atomic::Ordering::SeqCst,
            );
            self.recovery.start(v.epoch);
        }
    }

    /// `cluster reweight` on this node (the original's rule): when the
    /// space of its disks (free + used) differs by 1 % or more from what
    /// the cluster knows, it tells the cluster, whose vnodes (automatic
    /// strategy) follow in a new epoch. Sent from a task of its own: the
    /// event loop that runs this must go on to apply the update.
    async fn reweight(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(known) = self
            .view()
            .nodes
            .iter()
            .find(|n| n.nid == self.this.nid)
            .copied()
        else {
            return Ok(());
        };
        if self.opts.gateway || known.space == 0 {
            return Ok(());
        }
        let store = self.store.clone();
        let space = self
            .on_store(move || store.fs_space().map(|(_, free)| free + store.used_bytes()))
            .await??;
        let diff = space.abs_diff(known.space) as f64 / known.space as f64;
        if diff < 0.01 {
            return Ok(());
        }
        tracing::info!(
            "reweight: space {} -> {space} bytes, telling the cluster",
            known.space
        );
        let driver = self.driver.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.update_node(SdNode { space, ..known }).await {
                tracing::error!("reweight: cannot tell the cluster: {e}");
            }
        });
        Ok(())
    }

    /// Schedules a clean exit (after the current response is sent).
    pub fn request_exit(&self, code: i32) {
        self.exit.send_replace(Some(code));
    }

    /// Judges a store error: an I/O error means this node's disk failed
    /// (EIO, or its object directory gone). Like the original's node with
    /// no disk left, it then leaves the cluster, so every gateway retries
    /// against a placement without it and the others recover what it
    /// held. True if so: the request is answered NETWORK_ERROR (its
    /// sender retries) rather than EIO.
    pub fn disk_failed(&self, e: &sd_store::StoreError) -> bool {
        if let sd_store::StoreError::DiskLost { .. } = e {
            // One disk of several: the node goes on without it (as the
            // original's md does) and recovers what it held.
            self.note_lost_disks();
            return true;
        }
        if !matches!(e, sd_store::StoreError::Io(_)) {
            return false;
        }
        let first = self.exit.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some(EXIT_DISK_FAILED);
            }
            first
        });
        if first {
            tracing::error!("the disk failed ({e}): leaving the cluster; its objects are recovered on the other nodes");
        }
        // Nothing this node holds is served from now on: a failed store
        // may have missed a change (a copy it could not retire must not
        // pass for current until the node is gone). Marked as leaving, so
        // a driver that regains contact does not resume it.
        self.leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.core.set_suspended(true);
        true
    }

    /// The config file's contents for the cluster config `config`, with
    /// this node's space as the cluster last agreed on it (`reweight`
    /// changes it) or, before that, as it started with.
    fn persisted_config(&self, config: &SheepdogConfig) -> SheepdogConfig {
        let space = self
            .view()
            .nodes
            .iter()
            .find(|n| n.nid == self.this.nid)
            .map_or(self.this.space, |n| n.space);
        SheepdogConfig {
            space,
            version: SD_FORMAT_VERSION,
            ..config.clone()
        }
    }

    /// Executes the effects of one applied event. A failed effect does not
    /// stop the ones after it, unless it put the node on its way out (a
    /// failed disk): then nothing more is recorded in its store.
    async fn execute(self: &Arc<Self>, fx: Vec<Effect>) {
        for f in fx {
            if self.exiting() {
                return;
            }
            if let Err(e) = self.execute_one(f).await {
                tracing::error!("failed to apply cluster event: {e:#}");
                if let Some(e) = e.downcast_ref::<sd_store::StoreError>() {
                    self.disk_failed(e);
                }
            }
        }
    }

    /// Whether this node is on its way out (its disk failed, its join was
    /// refused, ...): it applies no more effects to its store.
    fn exiting(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn execute_one(self: &Arc<Self>, f: Effect) -> anyhow::Result<()> {
        match f {
            Effect::Joined {
                config,
                history,
                epoch: cluster_epoch,
            } => {
                let cfg = self.persisted_config(&config);
                if cfg.ctime != 0 {
                    self.store.write_config(&cfg)?;
                    // The current epoch's file is written by its NewEpoch,
                    // once what it takes away has been retired.
                    for (e, nodes, t) in history.iter().filter(|h| h.0 < cluster_epoch) {
                        self.store.write_epoch(*e, nodes, *t)?;
                    }
                }
                tracing::info!("joined the cluster at epoch {cluster_epoch}");
            }
            Effect::Retire { epoch } => {
                // What we hold only serves as stale copies until recovery
                // brings current ones.
                let held = self.store.list()?;
                for k in &held {
                    self.store.move_to_stale(k, epoch)?;
                }
                let n = held.len();
                tracing::info!("the cluster ran past our epoch {epoch}: retired {n} objects");
            }
            Effect::JoinRefused(r) => {
                tracing::error!("the cluster refused our join: {}", r.describe());
                if r == SdRes::INVALID_EPOCH {
                    tracing::error!(
                        "this node ran epochs the running cluster never saw (it came back \
                         without the last nodes to stop): this node's objects are kept; \
                         stop the cluster and start the nodes of the newest epoch first"
                    );
                }
                self.request_exit(1);
            }
            Effect::Formatted => {
                let v = self.view();
                if v.joined {
                    self.store.wipe()?;
                    self.store.write_config(&self.persisted_config(&v.config))?;
                    tracing::info!("cluster formatted");
                }
            }
            Effect::ConfigChanged => {
                let v = self.view();
                if v.joined {
                    self.store.write_config(&self.persisted_config(&v.config))?;
                }
            }
            Effect::NewEpoch {
                epoch,
                nodes,
                time,
                recover,
            } => {
                if self.view().joined {
                    // A restart with the same members keeps the epoch
                    // file (and its time) it had.
                    let same = self
                        .store
                        .read_epoch(epoch)?
                        .is_some_and(|(n, _)| crate::state::same_members(&n, &nodes));
                    if recover {
                        // Retire what the new placement takes away before
                        // the epoch is on disk: a crash in between must
                        // not leave a copy that missed this epoch's writes
                        // looking current through it.
                        let generation = self.recovery.start(epoch);
                        let ring = Arc::new(sd_ring::Ring::new(&nodes));
                        crate::recovery::mark(self, epoch, &ring, generation).await?;
                    } else {
                        self.recovery.nothing_to_recover(epoch);
                    }
                    if !same {
                        self.store.write_epoch(epoch, &nodes, time)?;
                    }
                    tracing::info!("epoch {epoch}: {} nodes", nodes.len());
                }
            }
            Effect::RecoveryGathered(epoch) => {
                let _ = self.reclaim.send(Reclaim::Sweep);
                let _ = self.reclaim.send(Reclaim::ReconcileAll);
                if self.view().joined && !self.recovery.busy() {
                    let n = self.store.purge_stale()?;
                    tracing::info!(
                        "recovery of epoch {epoch} complete on all nodes; purged {n} stale objects"
                    );
                }
            }
            Effect::RecoveryEnabled => self.recovery.wake(),
            Effect::Reweight => self.reweight().await?,
            Effect::RedundancyChanged => self.recover_again(),
            Effect::Shutdown => {
                let v = self.view();
                if v.joined {
                    let mut cfg = self.persisted_config(&v.config);
                    cfg.shutdown = true;
                    if cfg.ctime != 0 {
                        self.store.write_config(&cfg)?;
                    }
                    self.request_exit(0);
                }
            }
            Effect::VdiDeleted => {
                let _ = self.reclaim.send(Reclaim::Sweep);
            }
            Effect::PeerJoined(node) => {
                self.sync_vdis_with(node);
            }
        }
        Ok(())
    }

    /// Stops serving I/O while the cluster driver has lost contact, and
    /// serves again once it is back.
    async fn follow_contact(self: Arc<Self>) {
        let mut contact = self.driver.contact();
        while contact.changed().await.is_ok() {
            let up = *contact.borrow_and_update();
            if self.leaving.load(std::sync::atomic::Ordering::SeqCst)
                || !self.core.set_suspended(!up)
            {
                continue;
            }
            if up {
                tracing::info!("the cluster driver is reachable again; resuming I/O");
            } else {
                tracing::error!("no word from the cluster driver; stopping I/O until it is back");
            }
            // (A lost stream never comes back up: the driver's session is
            // over and this process rejoins as a new one.)
        }
    }

    async fn event_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Delivered>) {
        self.apply_stream(&mut rx).await;
        if !self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            // The driver dropped us (e.g. a ZooKeeper session expired): the
            // rest of the cluster has moved on, so our view is stale and we
            // must not serve I/O with it.
            tracing::error!("lost the cluster driver's event stream; stopping I/O and rejoining");
            self.core.set_suspended(true);
            self.request_exit(EXIT_REJOIN);
        }
    }

    async fn apply_stream(self: &Arc<Self>, rx: &mut mpsc::UnboundedReceiver<Delivered>) {
        while let Some(d) = rx.recv().await {
            self.apply_one(&d).await;
        }
    }

    /// Applies one event of the driver's stream with its effects, and
    /// publishes the new view.
    pub async fn apply_one(self: &Arc<Self>, d: &Delivered) {
        let fx = self.core.apply(d);
        // Our own join retires what we hold to stale copies before the
        // new view is published: no peer may read it as current.
        // (So does a node whose copies the resumed cluster outran.)
        let joined = fx.iter().any(|f| matches!(f, Effect::Joined { .. }));
        let (mut first, rest): (Vec<Effect>, Vec<Effect>) = fx
            .into_iter()
            .partition(|f| matches!(f, Effect::Joined { .. } | Effect::Retire { .. }));
        // Retired before any newer epoch is recorded: a store whose epoch
        // files say it ran epoch `e` may hold no copy that missed the
        // writes of `e` as a working one. Once this node is on its way
        // out (its disk failed, say while retiring), it records nothing
        // more: at its next start it retires its copies with the epoch they
        // were current through, not one whose writes they missed (which
        // would let them win recovery over the newest copies).
        first.sort_by_key(|f| !matches!(f, Effect::Retire { .. }));
        self.execute(first).await;
        self.core.publish();
        if joined {
            // Placement needs every VDI's redundancy: learn the VDIs
            // whose inodes only others hold.
            for n in self.view().nodes.iter().filter(|n| n.nid != self.this.nid) {
                self.sync_vdis_with(*n);
            }
        }
        self.execute(rest).await;
        self.applied.send_replace(d.seq);
    }
}

/// Work for the [`ReclaimWorker`].
#[derive(Clone, Copy, Debug)]
pub enum Reclaim {
    /// A data object whose release failed: try it again.
    Release(u64),
    /// Families may have died, or recovery may have brought back their
    /// objects: remove what this node holds of them.
    Sweep,
    /// An index write to VDI `vid` failed: make its copies agree.
    Reconcile(u32),
    /// A recovery finished everywhere (perhaps after a gateway died in
    /// the middle of index writes): make the copies of every index this
    /// node is the first target of agree.
    ReconcileAll,
}

/// Removes objects nothing references any more, so deleting leaves
/// nothing behind.
///
/// - **Releases** that a gateway could not finish (see
///   [`crate::gateway::release`]), and those recorded in the store by a
///   node that crashed before finishing them (taken up again at start):
///   the release checks the inodes again, so running one twice is safe.
/// - **Sweeps** of the local store for objects of dead families (every
///   VDI of the family deleted): nothing can reference them, whatever a
///   gateway that crashed halfway left, or a node that was away while the
///   VDIs were deleted brought back. One runs at start, when a family
///   dies, and when a recovery is complete on every node.
/// - **Index reconciliation** ([`crate::gateway::reconcile_index`]) of
///   the VDIs whose index writes failed, and after every complete
///   recovery of those this node is the first target of.
struct ReclaimWorker {
    sheep: Arc<Sheep>,
    requests: mpsc::UnboundedReceiver<Reclaim>,
    queue: std::collections::VecDeque<u64>,
    sweep: bool,
    reconcile: std::collections::BTreeSet<u32>,
    reconcile_all: bool,
    progress: Progress,
}

impl ReclaimWorker {
    fn new(sheep: Arc<Sheep>, requests: mpsc::UnboundedReceiver<Reclaim>) -> anyhow::Result<Self> {
        let queue: std::collections::VecDeque<u64> = sheep
            .store
            .reclaim_pending()
            .context("reading pending reclaims")?
            .into();
        let progress = Progress {
            total: queue.len() as u64,
            ..Default::default()
        };
        Ok(ReclaimWorker {
            sheep,
            requests,
            queue,
            sweep: true,
            reconcile: Default::default(),
            reconcile_all: false,
            progress,
        })
    }

    fn take(&mut self, r: Reclaim) {
        match r {
            Reclaim::Release(oid) => {
                self.queue.push_back(oid);
                self.progress.total += 1;
            }
            Reclaim::Sweep => self.sweep = true,
            Reclaim::Reconcile(vid) => {
                self.reconcile.insert(vid);
            }
            Reclaim::ReconcileAll => self.reconcile_all = true,
        }
    }

    /// The live VDIs whose inodes this node holds as the first target.
    fn primary_inodes(&self) -> Vec<u32> {
        let view = self.sheep.view();
        let keys = self.sheep.store.list().unwrap_or_default();
        keys.into_iter()
            .filter(|k| is_vdi_obj(k.oid) && k.ec_index.is_none())
            .map(|k| oid_to_vid(k.oid))
            .filter(|vid| view.vdis.states.get(vid).is_some_and(|s| !s.deleted))
            .filter(|&vid| {
                let oid = vid_to_vdi_oid(vid);
                let first = view
                    .ring
                    .targets(oid, self.sheep.copies_of(oid))
                    .first()
                    .map(|n| n.nid);
                first == Some(self.sheep.this.nid)
            })
            .collect()
    }

    /// Removes the working copies of dead families' objects this node
    /// holds; how many. (Their stale copies are never recovered, and go
    /// with the next purge.)
    async fn sweep(&self) -> Result<usize, sd_store::StoreError> {
        let view = self.sheep.view();
        let dead = view.vdis.dead_vids();
        if dead.is_empty() {
            return Ok(0);
        }
        let s = self.sheep.clone();
        self.sheep
            .on_store(move || -> Result<usize, sd_store::StoreError> {
                let mut n = 0;
                for k in s.store.list()? {
                    if dead.contains(&oid_to_vid(k.oid)) {
                        s.store.remove(&k)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await
            .unwrap_or(Ok(0))
    }
}

impl Worker for ReclaimWorker {
    fn name(&self) -> &'static str {
        "reclaim"
    }
    fn progress(&self) -> Progress {
        self.progress
    }
    async fn step(&mut self) -> WorkerState {
        while let Ok(r) = self.requests.try_recv() {
            self.take(r);
        }
        if self.sweep {
            // Only with the whole VDI table: a node that knows a deleted
            // snapshot but not yet the clone that lives on it must not
            // take the family for dead.
            if !self.sheep.view().joined || *self.sheep.vdi_syncs_pending.borrow() > 0 {
                return WorkerState::Throttled(Duration::from_secs(1));
            }
            self.sweep = false;
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} objects of deleted VDIs"),
                Err(e) => {
                    tracing::error!("failed to sweep objects of deleted VDIs: {e}");
                    self.sheep.disk_failed(&e);
                }
            }
            return WorkerState::Busy;
        }
        if std::mem::take(&mut self.reconcile_all) {
            let vids = self.primary_inodes();
            self.reconcile.extend(vids);
        }
        if let Some(vid) = self.reconcile.pop_first() {
            let view = self.sheep.view();
            if view.vdis.states.get(&vid).is_none_or(|s| s.deleted) {
                return WorkerState::Busy;
            }
            return match crate::gateway::reconcile_index(&self.sheep, vid).await {
                Ok(_) | Err(SdRes::NO_OBJ) => WorkerState::Busy,
                Err(e) => {
                    tracing::warn!(
                        "could not compare the copies of VDI {vid:x}'s index ({}); retrying",
                        e.describe()
                    );
                    self.reconcile.insert(vid);
                    WorkerState::Throttled(Duration::from_secs(1))
                }
            };
        }
        if self.queue.is_empty() {
            return WorkerState::Idle;
        }
        // Releases read and write through the cluster: not before this
        // node runs in it.
        let view = self.sheep.view();
        if !view.joined || view.status.refusal().is_some() {
            return WorkerState::Throttled(Duration::from_secs(1));
        }
        let Some(oid) = self.queue.pop_front() else {
            return WorkerState::Idle;
        };
        match crate::gateway::release(&self.sheep, oid).await {
            Ok(()) => {
                if let Err(e) = self.sheep.store.reclaim_done(oid) {
                    tracing::error!("failed to record the release of {oid:016x}: {e}");
                }
                self.progress.done += 1;
                WorkerState::Busy
            }
            Err(e) => {
                // Kept (and retried): the cluster may not serve I/O yet.
                tracing::warn!("failed to release {oid:016x}: {}; retrying", e.describe());
                self.queue.push_back(oid);
                self.progress.errors += 1;
                WorkerState::Throttled(Duration::from_secs(1))
            }
        }
    }
    async fn wait_for_work(&mut self) {
        match self.requests.recv().await {
            Some(r) => self.take(r),
            None => std::future::pending::<()>().await,
        }
    }
}

/// Merges the VDI tables of peers into ours (on joining, and when a peer
/// joins): placement needs every VDI's redundancy, and a VDI's inode may
/// live only on other nodes.
///
/// A peer that cannot answer yet is asked again while it is a member: a
/// table missing a VDI hides that VDI from `vdi list` and its lookups.
struct VdiSyncWorker {
    sheep: Arc<Sheep>,
    requests: mpsc::UnboundedReceiver<SdNode>,
    queue: std::collections::VecDeque<SdNode>,
    done: u64,
    errors: u64,
}

impl Worker for VdiSyncWorker {
    fn name(&self) -> &'static str {
        "vdi sync"
    }
    fn progress(&self) -> Progress {
        Progress {
            done: self.done,
            total: self.done + self.queue.len() as u64,
            errors: self.errors,
        }
    }
    async fn step(&mut self) -> WorkerState {
        while let Ok(n) = self.requests.try_recv() {
            self.queue.push_back(n);
        }
        let Some(node) = self.queue.pop_front() else {
            return WorkerState::Idle;
        };
        let done = |s: &Sheep| {
            s.vdi_syncs_pending
                .send_modify(|n| *n = n.saturating_sub(1))
        };
        if crate::vdi::sync_vdis_from(&self.sheep, &node).await {
            self.done += 1;
            done(&self.sheep);
            return WorkerState::Busy;
        }
        self.errors += 1;
        if self.sheep.view().nodes.iter().any(|n| n.nid == node.nid) {
            self.queue.push_back(node);
        } else {
            done(&self.sheep);
        }
        WorkerState::Throttled(Duration::from_millis(500))
    }
    async fn wait_for_work(&mut self) {
        match self.requests.recv().await {
            Some(n) => self.queue.push_back(n),
            None => std::future::pending::<()>().await,
        }
    }
}

/// What a [`Sheep`] is made of: its store, cluster driver and starting
/// state, and how it reaches peers and time. The daemon passes the real
/// ones; component tests pass an in-memory store and fake peers.
pub struct Parts {
    pub opts: Opts,
    pub this: SdNode,
    pub store: Arc<dyn ObjectStore>,
    pub driver: Driver,
    pub state: ClusterState,
    pub peers: Arc<dyn PeerTransport>,
    pub clock: Arc<dyn Clock>,
}

impl Sheep {
    /// Assembles a node; also the receiving ends of its reclaim and
    /// VDI-sync requests, for the workers that serve them.
    pub fn new(
        p: Parts,
    ) -> (
        Arc<Sheep>,
        mpsc::UnboundedReceiver<Reclaim>,
        mpsc::UnboundedReceiver<SdNode>,
    ) {
        let (reclaim_tx, reclaim_rx) = mpsc::unbounded_channel();
        let (vdi_sync_tx, vdi_sync_rx) = mpsc::unbounded_channel();
        let born = p.clock.now();
        let throttle = Mutex::new(p.opts.recovery_throttle);
        let sheep = Arc::new(Sheep {
            opts: p.opts,
            this: p.this,
            store: p.store,
            driver: p.driver,
            core: ClusterCore::new(p.state),
            applied: watch::Sender::new(0),
            peers: p.peers,
            clock: p.clock,
            recovery: Recovery::new(born),
            throttle,
            exit: watch::Sender::new(None),
            reclaim: reclaim_tx,
            vdi_sync: vdi_sync_tx,
            vdi_syncs_pending: watch::Sender::new(0),
            workers: Arc::default(),
            codecs: (0..=u8::MAX).map(|_| OnceLock::new()).collect(),
            stats: Default::default(),
            integrity: Default::default(),
            scrub: Default::default(),
            disks_recovered: Default::default(),
            leaving: Default::default(),
            obj_locks: Default::default(),
        });
        (sheep, reclaim_rx, vdi_sync_rx)
    }
}

impl Sheep {
    /// A node as its store left it (its last epoch, the inodes it holds),
    /// with its background workers started; also what it tells the
    /// cluster when it joins. `parts.state` is replaced by the one the
    /// store gives.
    pub fn boot(
        mut parts: Parts,
        config: SheepdogConfig,
    ) -> anyhow::Result<(Arc<Sheep>, JoinInfo)> {
        let store = &parts.store;
        let my_epoch = store.latest_epoch()?;
        let epoch_nodes = match my_epoch {
            0 => vec![],
            e => store.read_epoch(e)?.map(|e| e.0).unwrap_or_default(),
        };
        parts.state = ClusterState::new(parts.this.nid, config.clone());
        crate::vdi::scan_local_inodes(&**store, &mut parts.state.vdis);
        let (sheep, reclaim_rx, vdi_sync_rx) = Sheep::new(parts);
        // A disk the scan found failing is reported now; what it held is
        // recovered by the pass that follows the join.
        sheep.note_lost_disks();
        let workers = &sheep.workers;
        workers.spawn(crate::recovery::RecoveryWorker::new(sheep.clone()));
        workers.spawn(ReclaimWorker::new(sheep.clone(), reclaim_rx)?);
        workers.spawn(crate::scrub::ScrubWorker::new(sheep.clone()));
        workers.spawn(VdiSyncWorker {
            sheep: sheep.clone(),
            requests: vdi_sync_rx,
            queue: Default::default(),
            done: 0,
            errors: 0,
        });
        let join = JoinInfo {
            config: SheepdogConfig {
                shutdown: false,
                ..config
            },
            epoch: my_epoch,
            epoch_nodes,
        };
        Ok((sheep, join))
    }

    /// Follows the driver's stream once joined: the event loop and the
    /// watch on the driver's contact, both supervised.
    pub fn follow(self: &Arc<Self>, rx: mpsc::UnboundedReceiver<Delivered>) {
        self.core.set_incarnation(self.driver.incarnation());
        self.workers
            .task("the driver contact watch", self.clone().follow_contact());
        self.workers
            .task("the event loop", self.clone().event_loop(rx));
    }
}

/// Exit status of a node that left because its disk failed.
pub const EXIT_DISK_FAILED: i32 = 1;

/// Exit status asking `main` to restart this daemon in place (same pid,
/// same options) so it rejoins as a new incarnation.
pub const EXIT_REJOIN: i32 = 75;

/// Set in the environment of a sheep restarted in place to rejoin: the
/// cluster driver that dropped it may stay unreachable for a while (the
/// partition that expired its session may last), so it keeps trying to
/// join instead of failing as a fresh start does.
pub const REJOIN_ENV: &str = "SHEEP_REJOINING";

/// Advertised address: `-y`, else the bind address, else what the driver
/// suggests (127.0.0.1 for the local driver; for ZooKeeper, the address
/// that routes to the ensemble).
fn advertised(o: &Opts, driver: &Driver) -> IpAddr {
    o.myaddr
        .or(o.bind.filter(|b| !b.is_unspecified()))
        .or_else(|| driver.local_addr().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Runs the daemon; `ready` is told 0 once the node has joined the cluster
/// (the launching command of a daemonized sheep exits with it).
pub async fn run(o: Opts, dir: PathBuf, ready: impl FnOnce(i32)) -> anyhow::Result<()> {
    let mut store =
        Store::open_with_disks(&dir, &o.disks, o.nosync).context("opening the store")?;
    if o.direct_io {
        store = store.with_direct_io();
    }
    for why in &o.without_effect {
        tracing::warn!("option {why}");
    }
    if let Some(j) = &o.journal {
        if j.skip_asked {
            tracing::warn!("journal: 'skip' ignored: the journal is always replayed (skipping it would lose acknowledged writes)");
        }
        let jdir = j.dir.clone().unwrap_or_else(|| dir.clone());
        let replayed;
        (store, replayed) = store
            .with_journal(&jdir, j.size)
            .with_context(|| format!("replaying the journal in {}", jdir.display()))?;
        tracing::info!(
            "journal {} ({} MiB): {replayed} writes replayed",
            jdir.join(sd_store::journal::FILE_NAME).display(),
            j.size >> 20
        );
    }
    let mut config = store.read_config()?.unwrap_or_default();
    if config.ctime == 0 && o.vnodes.is_none() {
        // An unformatted node advertises its vnode strategy, which dog
        // checks before formatting.
        config.flags |= cluster_flag::AUTO_VNODES;
    }
    if config.space == 0 && !o.gateway {
        let (_, free) = store.fs_space()?;
        config.space = free + store.used_bytes();
    }
    let driver = Driver::from_option(&o.cluster)?;
    let mut nid = NodeId::new(advertised(&o, &driver), o.port);
    if let Some((a, p)) = o.io_addr {
        nid.io_addr = ip_to_bytes(a);
        nid.io_port = p;
    }
    let this = SdNode {
        nid,
        nr_vnodes: if o.gateway {
            0
        } else {
            o.vnodes.unwrap_or(SD_DEFAULT_VNODES)
        },
        zone: o.zone.unwrap_or_else(|| nid.default_zone()),
        space: if o.gateway { 0 } else { config.space },
    };
    let (sheep, join) = Sheep::boot(
        Parts {
            opts: o.clone(),
            this,
            store: Arc::new(store),
            driver: driver.clone(),
            state: ClusterState::new(nid, config.clone()),
            peers: Arc::new(crate::peer::PeerPool::default()),
            clock: Arc::new(crate::clock::SystemClock),
        },
        config,
    )?;
    let workers = sheep.workers.clone();
    if !o.disks.is_empty() {
        // A disk pulled while no request touches it is still found, and
        // what it held recovered, within a second.
        let watched = sheep.clone();
        workers.task("disk watch", async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = watched.clone();
                let _ = watched.on_store(move || s.note_lost_disks()).await;
            }
        });
    }

    // A fresh start binds its ports first (a port in use is an error at
    // once); a rejoining one binds only once it is back in the cluster, so
    // clients meanwhile get a refused connection rather than a silent one.
    let rejoining = std::env::var_os(REJOIN_ENV).is_some();
    let early = match rejoining {
        false => Some(crate::server::listen(&sheep, &dir).await?),
        true => None,
    };
    let mut backoff = Duration::from_millis(500);
    let rx = loop {
        match driver.join(this, join.encode()).await {
            Ok(rx) => break rx,
            Err(e) if rejoining => {
                tracing::warn!("cannot rejoin yet ({e:#}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e).context("joining the cluster"),
        }
    };
    let listeners = match early {
        Some(l) => l,
        None => crate::server::listen(&sheep, &dir).await?,
    };
    ready(0);
    sheep.follow(rx);
    for l in listeners {
        tokio::spawn(l);
    }
    if let Some(addr) = o.nbd {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding NBD on {addr}"))?;
        let exports = Arc::new(crate::nbd::VdiExports::new(sheep.clone()));
        tokio::spawn(sd_nbd::serve_listener(
            listener,
            exports,
            sd_nbd::Config::default(),
        ));
        tracing::info!("serving VDIs over NBD on {addr}");
    }
    if let Some(p) = &o.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("failed to pid file '{p}'"))?;
    }
    tracing::info!("sheepdog daemon (version {}) started", crate::opts::VERSION);

    let mut exit = sheep.exit.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let code = tokio::select! {
        r = exit.wait_for(|c| c.is_some()) => r.map(|c| c.unwrap_or(0)).unwrap_or(0),
        _ = term.recv() => 0,
        _ = int.recv() => 0,
    };
    // Let in-flight responses (e.g. to KILL_NODE) reach their clients.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sheep
        .leaving
        .store(true, std::sync::atomic::Ordering::SeqCst);
    workers.stop();
    let _ = driver.leave().await;
    let _ = std::fs::remove_file(dir.join("sock"));
    tracing::info!("shutdown");
    match code {
        0 => Ok(()),
        EXIT_REJOIN => Err(Rejoin.into()),
        _ => anyhow::bail!("exiting with status {code}"),
    }
}

/// The daemon stopped because the cluster dropped it; `main` re-executes.
#[derive(Debug, thiserror::Error)]
#[error("rejoining the cluster")]
pub struct Rejoin;
