//! The cluster core: the one owner of membership, epochs, cluster status
//! and the VDI table.
//!
//! The agreed state ([`ClusterState`]) changes only here, by the driver's
//! ordered events (applied by the daemon's event loop) and by merging the
//! VDI tables of peers. Everything else reads an immutable
//! [`ClusterView`]: the request path loads the current one without a lock
//! (an atomic pointer swap), and waiters for a newer epoch subscribe to a
//! watch channel. The state's mutex is a private field of this module, so
//! no other module can lock it: that is enforced by the type, not by a
//! comment.

use crate::state::{ClusterState, Effect, Status, VdiTable};
use arc_swap::ArcSwap;
use sd_cluster::Delivered;
use sd_proto::*;
use sd_ring::Ring;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a node knows of the cluster at one moment: published whole after
/// every change and never modified, so a request sees one consistent
/// epoch, ring and VDI table from start to end.
pub struct ClusterView {
    pub epoch: u32,
    /// `Shutdown` also while the driver has lost contact (the view may be
    /// stale then, so it refuses I/O).
    pub status: Status,
    pub ring: Arc<Ring>,
    /// Members in node order.
    pub nodes: Vec<SdNode>,
    pub config: SheepdogConfig,
    pub disable_recovery: bool,
    /// Whether this node's own JOIN has been applied.
    pub joined: bool,
    /// Members of the last epoch, awaited in WAIT_FOR_JOIN.
    pub last_epoch_nodes: Vec<SdNode>,
    pub vdis: Arc<VdiTable>,
}

impl ClusterView {
    fn of(st: &ClusterState, suspended: bool) -> ClusterView {
        let nodes = st.nodes();
        ClusterView {
            epoch: st.epoch,
            status: if suspended {
                Status::Shutdown
            } else {
                st.status
            },
            ring: Arc::new(Ring::new(&nodes)),
            nodes,
            config: st.config.clone(),
            disable_recovery: st.disable_recovery,
            joined: st.joined,
            last_epoch_nodes: st.last_epoch_nodes.clone(),
            vdis: Arc::new(st.vdis.clone()),
        }
    }

    /// Redundancy of objects of `vid`: (copies, copy_policy).
    pub fn vdi_redundancy(&self, vid: u32) -> (u8, u8) {
        match self.vdis.states.get(&vid) {
            Some(s) if s.nr_copies > 0 => (s.nr_copies, s.copy_policy),
            _ => (self.config.copies.max(1), self.config.copy_policy),
        }
    }

    /// Copies to keep of `oid` when the client did not say.
    pub fn copies_of(&self, oid: u64) -> usize {
        self.vdi_redundancy(oid_to_vid(oid)).0 as usize
    }

    /// Whether `vid` is a snapshot (its data objects are read-only).
    pub fn is_snapshot(&self, vid: u32) -> bool {
        self.vdis.states.get(&vid).is_some_and(|s| s.snapshot)
    }

    /// Size of the file that holds `oid` (full object size).
    pub fn object_size(&self, oid: u64) -> u64 {
        if is_vdi_obj(oid) {
            SD_INODE_SIZE as u64
        } else if is_attr_obj(oid) {
            VDI_ATTR_SIZE as u64
        } else if is_btree_obj(oid) || is_ledger_obj(oid) {
            SD_DATA_OBJ_SIZE
        } else {
            let shift = self
                .vdis
                .states
                .get(&oid_to_vid(oid))
                .map(|s| s.block_size_shift)
                .filter(|&s| s != 0)
                .unwrap_or(self.config.block_size_shift);
            1u64 << if shift == 0 {
                SD_DEFAULT_BLOCK_SIZE_SHIFT
            } else {
                shift
            }
        }
    }

    /// The `cluster_info` this node reports.
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            proto_ver: SD_SHEEP_PROTO_VER,
            disable_recovery: self.disable_recovery,
            epoch: self.epoch,
            ctime: self.config.ctime,
            flags: self.config.flags,
            nr_copies: self.config.copies,
            copy_policy: self.config.copy_policy,
            status: self.status.cluster_status(),
            block_size_shift: self.config.block_size_shift,
            default_store: self.config.default_store,
            nodes: self.nodes.clone(),
        }
    }
}

/// The owner of the cluster state; see the module documentation.
pub struct ClusterCore {
    state: Mutex<ClusterState>,
    current: ArcSwap<ClusterView>,
    changes: watch::Sender<Arc<ClusterView>>,
    /// Set while the cluster driver has lost contact, or for good once its
    /// stream is lost: the published view then refuses I/O.
    suspended: AtomicBool,
}

impl ClusterCore {
    /// Holds the state's lock (for the test that no request waits for it).
    #[cfg(test)]
    pub fn hold(&self) -> impl Sized + '_ {
        self.state.lock().unwrap()
    }

    pub fn new(state: ClusterState) -> ClusterCore {
        let view = Arc::new(ClusterView::of(&state, false));
        ClusterCore {
            state: Mutex::new(state),
            current: ArcSwap::new(view.clone()),
            changes: watch::Sender::new(view),
            suspended: AtomicBool::new(false),
        }
    }

    /// The current view (lock-free).
    pub fn view(&self) -> Arc<ClusterView> {
        self.current.load_full()
    }

    /// Follows published views (to wait for a newer epoch).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.changes.subscribe()
    }

    /// Applies one delivered event; the caller publishes the result once
    /// it has executed what must happen before others see it.
    pub fn apply(&self, d: &Delivered) -> Vec<Effect> {
        self.state.lock().unwrap().apply(d)
    }

    /// Publishes the state as it is now. Built and stored under the
    /// state's lock, so two publishers can never store their views in the
    /// opposite order of the states they saw.
    pub fn publish(&self) {
        let st = self.state.lock().unwrap();
        let view = Arc::new(ClusterView::of(&st, self.suspended.load(Ordering::SeqCst)));
        self.current.store(view.clone());
        self.changes.send_replace(view);
    }

    /// Our incarnation, once the driver has taken our JOIN.
    pub fn set_incarnation(&self, incarnation: Option<u64>) {
        self.state.lock().unwrap().my_incarnation = incarnation;
    }

    /// Merges a peer's VDI table (its GET_VDI_COPIES states) into ours.
    pub fn merge_vdis(&self, states: Vec<VdiState>) {
        {
            let mut st = self.state.lock().unwrap();
            for s in states {
                st.vdis.add(s);
            }
        }
        self.publish();
    }

    /// Stops (or resumes) serving I/O; true if that changed anything.
    pub fn set_suspended(&self, suspended: bool) -> bool {
        let was = self.suspended.swap(suspended, Ordering::SeqCst);
        if was != suspended {
            self.publish();
        }
        was != suspended
    }
}
