//! The scrub: a worker that reads every object this node holds and checks
//! it against its checksums, so rot is found and repaired while other
//! copies are still good, not when a VM finally reads the block.
//!
//! A pass is started by the operator (`dog node scrub start`) and can be
//! stopped. Objects that have no checksums yet (written by the original,
//! or before checksums) get them from this first full read. Bad blocks
//! are repaired from another copy (see [`crate::repair`]). While clients
//! do I/O here, the scrub pauses 19 times as long as each object took,
//! so it takes at most a twentieth of the disk (and CPU) from them.
//!
//! The first target of each replicated object also compares its copy with
//! the other replicas' by a digest of their block checksums (GET_DIGEST:
//! no copy is read again for it). Each copy verifies
//! against its own checksums, so which one is right cannot be told here:
//! a difference that holds across a settling pause (a write in flight
//! reaches the copies one by one) is counted and logged, and `dog vdi
//! check` makes the copies agree by majority, as the original's.

use crate::daemon::Sheep;
use crate::worker::{Progress, Worker, WorkerState};
use sd_proto::{op, ObjArgs, ScrubStatus, SdReq, SdRes};
use sd_store::{ObjKey, Verdict};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The operator's control of the scrub and its counters (shared between
/// the request handler and the worker).
#[derive(Default)]
pub struct ScrubControl {
    start: Notify,
    stop: AtomicBool,
    status: Mutex<ScrubStatus>,
}

impl ScrubControl {
    /// Holds the status lock (for the test that no request waits for it).
    #[cfg(test)]
    pub fn hold(&self) -> impl Sized + '_ {
        self.status.lock().unwrap()
    }

    /// Starts a pass (a running pass goes on).
    pub fn start(&self) {
        self.stop.store(false, SeqCst);
        if !self.status.lock().unwrap().running {
            self.start.notify_one();
        }
    }

    /// Ends the running pass after the object being checked.
    pub fn stop(&self) {
        if self.status.lock().unwrap().running {
            self.stop.store(true, SeqCst);
        }
    }

    /// The scrub's state, with the node's corruption counters.
    pub fn status(&self, sheep: &Sheep) -> ScrubStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let i = &sheep.integrity;
        ScrubStatus {
            bad_blocks: i.bad_blocks.load(Relaxed),
            repaired: i.repaired.load(Relaxed),
            unrepaired: i.unrepaired.load(Relaxed),
            differing: i.differing.load(Relaxed),
            ..*self.status.lock().unwrap()
        }
    }
}

/// See the module documentation.
pub struct ScrubWorker {
    sheep: Arc<Sheep>,
    queue: Vec<ObjKey>,
}

impl ScrubWorker {
    pub fn new(sheep: Arc<Sheep>) -> Self {
        ScrubWorker {
            sheep,
            queue: Vec::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ScrubStatus)) {
        f(&mut self.sheep.scrub.status.lock().unwrap());
    }
}

impl Worker for ScrubWorker {
    fn name(&self) -> &'static str {
        "scrub"
    }

    fn progress(&self) -> Progress {
        let s = self.sheep.scrub.status(&self.sheep);
        Progress {
            done: s.done,
            total: s.total,
            errors: s.bad_blocks,
        }
    }

    async fn wait_for_work(&mut self) {
        self.sheep.scrub.start.notified().await;
        let s = self.sheep.clone();
        let mut keys = match self.sheep.on_store(move || s.store.list()).await {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                self.sheep.disk_failed(&e);
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        // Checked in name order, popped from the end.
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let total = keys.len() as u64;
        self.queue = keys;
        self.update(|s| {
            s.running = true;
            s.done = 0;
            s.total = total;
        });
        tracing::info!("scrub started: {total} objects to check");
    }

    async fn step(&mut self) -> WorkerState {
        let stopped = self.sheep.scrub.stop.swap(false, SeqCst);
        if stopped {
            self.queue.clear();
        }
        let Some(key) = self.queue.pop() else {
            let mut finished = false;
            self.update(|s| {
                finished = s.running;
                if s.running && !stopped {
                    s.passes += 1;
                }
                s.running = false;
            });
            if finished {
                let st = self.sheep.scrub.status(&self.sheep);
                tracing::info!(
                    "scrub {}: {} of {} objects checked; {} bad blocks found, {} repaired, {} not repairable so far",
                    if stopped { "stopped" } else { "finished" },
                    st.done,
                    st.total,
                    st.bad_blocks,
                    st.repaired,
                    st.unrepaired
                );
            }
            return WorkerState::Idle;
        };
        let started = self.sheep.clock.now();
        let s = self.sheep.clone();
        match self.sheep.on_store(move || s.store.verify(&key)).await {
            Ok(Ok(Verdict::Good)) => compare_replicas(&self.sheep, key).await,
            Ok(Ok(Verdict::Computed)) => {
                self.update(|s| s.computed += 1);
                compare_replicas(&self.sheep, key).await;
            }
            Ok(Ok(Verdict::Bad(blocks))) => {
                crate::repair::found(&self.sheep, &key, &blocks);
                crate::repair::repair(&self.sheep, key).await;
            }
            // Removed or retired meanwhile.
            Ok(Err(sd_store::StoreError::NoObj)) => {}
            Ok(Err(e)) => {
                self.sheep.disk_failed(&e);
            }
            Err(_) => {}
        }
        self.update(|s| s.done += 1);
        let now = self.sheep.clock.now();
        if self.sheep.recovery.clients_active(now) || self.sheep.recovery.busy() {
            WorkerState::Throttled(now.saturating_duration_since(started) * 19)
        } else {
            WorkerState::Busy
        }
    }
}

/// How long a difference between replicas must hold to be reported.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Compares this node's copy of `key` with the other replicas' when this
/// node is the object's first target; a difference that holds across
/// [`SETTLE`] is counted and logged, naming the nodes.
async fn compare_replicas(sheep: &Arc<Sheep>, key: ObjKey) {
    let view = sheep.view();
    let targets = Sheep::targets(&view, key.oid);
    if key.ec_index.is_some() || targets.first().is_none_or(|t| t.nid != sheep.this.nid) {
        return;
    }
    let differing = || async {
        let s = sheep.clone();
        let Ok(Ok(mine)) = sheep.on_store(move || s.store.digest(&key)).await else {
            return Vec::new();
        };
        let mut differ = Vec::new();
        for t in &targets[1..] {
            let mut r = SdReq::new(op::GET_DIGEST);
            r.epoch = view.epoch;
            r.set_obj(ObjArgs {
                oid: key.oid,
                ..Default::default()
            });
            let (rsp, _) = sheep.send_peer(t.nid.io_socket_addr(), &r, &[]).await;
            if rsp.result == SdRes::SUCCESS && rsp.obj_digest() != mine {
                differ.push(t.nid.to_addr_string());
            }
        }
        differ
    };
    if differing().await.is_empty() {
        return;
    }
    sheep.clock.sleep(SETTLE).await;
    let differ = differing().await;
    if differ.is_empty() || sheep.view().epoch != view.epoch {
        return;
    }
    sheep
        .integrity
        .differing
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        "object {}: the copies on {} differ from this node's; `dog vdi check` makes them agree",
        key.file_name(),
        differ.join(", ")
    );
}
