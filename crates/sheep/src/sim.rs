//! Deterministic simulation of the cluster core and of recovery.
//!
//! N nodes run in one thread, driven by a seeded random schedule: the
//! real [`ClusterState`] of every node applies a simulated driver's
//! totally ordered stream (delivered to each node at its own pace), the
//! real placement ([`Ring`]) and the real recovery rules (which copy a
//! node serves, in which order recovery asks, when a joiner retires what
//! it holds) act on simulated disks whose objects hold generation
//! numbers.
//!
//! Clients write and read objects through random gateways. A write is a
//! fan-out as the gateway's: one peer request per target of the
//! gateway's view, each executed at its target in its own step (so other
//! writes, deliveries, recovery steps and faults come in between, and a
//! request made at epoch E may reach its target several epochs later).
//! The target applies the peer's rules: a request of an older epoch than
//! the target's is refused (OLD_NODE_VER), one of a newer epoch waits for
//! the target to get there, one to a node not running the cluster is
//! refused (NEW_NODE_VER), an overwrite first recovers the object if the
//! target's pass still lists it, a create takes it off that list. The
//! write is acknowledged only once every target stored it. An attempt
//! fails on a target that is down or restarted, across a down link, on
//! EIO or on a refusal; it is abandoned when the gateway's epoch moves or
//! after a timeout (the targets then never execute what they had not yet:
//! the server aborts a gone client's requests). On a transient failure
//! (network, OLD/NEW_NODE_VER) the gateway retries the same generation
//! against its current view, up to four attempts (standing for its 60 s);
//! then, on EIO or NO_OBJ, or when the gateway dies, the client gets an
//! error and never retries that generation. A client has at most one
//! write of an object in flight.
//!
//! Faults: crashes at any moment (noticed by the driver some steps
//! later), clean stops (only when `dog node recovery` would list no
//! node), restarts with the disk kept, replacements by new empty nodes,
//! whole-cluster crashes, partitions (a link between two nodes, or all
//! links of one node, down for a while: requests across it fail, for
//! client writes, client reads, object lists and recovery reads; the
//! driver does not see partitions, so membership is unchanged) and disk
//! EIO (a node's next K disk operations fail: a write is not stored, a
//! read tries the next replica, a recovery read counts as no answer, a
//! recovered copy is not stored; the disk keeps what it had). Opt-in:
//! SIM_TORN=1 makes a crash interrupt an in-place overwrite now and then,
//! leaving a torn copy (neither generation; creates and recovered copies
//! are renamed into place and never tear); SIM_LAST_CRASH=1 lets a crash
//! take the last running node, so the cluster can die node by node. Both
//! fail seeds today (see the soak notes in the tests), so the default
//! seeds run without them.
//!
//! Checked, with "maybe" generations being those written after an
//! object's newest acknowledged one and not acknowledged (in flight, or
//! failed): every successful read returns the newest acknowledged
//! generation or a maybe generation of that object (never an older one,
//! never a torn copy; a later read may return the acknowledged one again,
//! as nothing repairs replicas that a failed write left apart). Once
//! faults stop and recovery settles: every object reads back through
//! every node and each of its targets holds a copy, all under the same
//! rule (for an object with no maybe generation: exactly its newest
//! acknowledged one, so the replicas agree; for one whose last write
//! failed: each replica holds the acknowledged generation or one of the
//! maybe ones, possibly different ones; an object never acknowledged may
//! also be absent); it has its full copy count on distinct zones; no node
//! keeps a copy it is not a target of; all nodes agree on each epoch's
//! members. A failing run names its seed; a seed replays the same
//! schedule and event log (the log's hash is compared).
//!
//! What is simulated rather than real: the network (a peer request is
//! received and executed in one step; a request a peer received but had
//! not executed when its sender gave up is not modelled beyond the abort),
//! the disks (generation numbers, not bytes: a write replaces the whole
//! object), the VDI layer (one VDI's objects, cluster-default redundancy,
//! no inode updates) and time (steps, not seconds). Not simulated: the
//! driver expelling a partitioned node, reads racing a write on the same
//! replica, erasure coding.

use crate::recovery::{epoch_holders, may_walk_older, recovery_source, CopyIndex, Fetched, Source};
use crate::state::{ClusterState, Effect, JoinInfo, OpMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sd_cluster::{Delivered, Event};
use sd_proto::*;
use sd_ring::Ring;
use sd_store::ObjKey;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

/// Objects of the simulated VDI.
const OBJECTS: u64 = 16;

/// A disk value is a generation, or `TORN | gen`: a copy an in-place
/// write of `gen` left half-written when its node crashed (neither the
/// old generation nor the new one).
const TORN: u64 = 1 << 63;

/// Steps after which a gateway abandons a request attempt (the peer
/// pool's 30 s request timeout).
const REQUEST_STEPS: u64 = 150;

/// Attempts of one client write before its gateway gives up and the
/// client gets an error (stands for the gateway's 60 s of retrying).
const ATTEMPTS: u32 = 4;

fn show(v: u64) -> String {
    match v & TORN {
        0 => v.to_string(),
        _ => format!("torn({})", v & !TORN),
    }
}

/// Why a peer request of a write failed, as its gateway sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerErr {
    /// Target down, restarted, across a down link, or the gateway gave
    /// the request up.
    Network,
    /// The target had moved past the request's epoch.
    OldNodeVer,
    /// The target does not run the cluster (yet).
    NewNodeVer,
    /// The target lacks the object it should overwrite.
    NoObj,
    Eio,
}

impl PeerErr {
    /// Whether the gateway retries (the real gateway's `transient`).
    fn transient(self) -> bool {
        matches!(
            self,
            PeerErr::Network | PeerErr::OldNodeVer | PeerErr::NewNodeVer
        )
    }
}

/// A client write in flight: its gateway fans one generation out, one
/// target per step, and acknowledges it once every target stored it.
struct Write {
    o: u64,
    gen: u64,
    create: bool,
    gw: usize,
    gw_inc: u64,
    attempts: u32,
    /// The running attempt's request epoch and first step.
    epoch: u32,
    started: u64,
    targets: Vec<usize>,
    /// Targets that have not answered, with the incarnation the request
    /// went to (None: the target was down).
    pending: Vec<(usize, Option<u64>)>,
    /// The attempt's failure so far (a final one wins over a transient).
    err: Option<PeerErr>,
    /// Waiting to start its next attempt.
    retry: bool,
}

fn oid(i: u64) -> u64 {
    vid_to_data_oid(0x5eed, i)
}

/// One node's disk: the generation each object copy holds.
#[derive(Clone, Default)]
struct Disk {
    working: BTreeMap<u64, u64>,
    /// (oid, epoch it was retired with) → generation.
    stale: BTreeMap<(u64, u32), u64>,
    epochs: BTreeMap<u32, Vec<SdNode>>,
    config: SheepdogConfig,
}

impl CopyIndex for Disk {
    fn has_working(&self, k: &ObjKey) -> bool {
        self.working.contains_key(&k.oid)
    }
    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32> {
        self.stale
            .range((k.oid, since)..=(k.oid, u32::MAX))
            .map(|((_, e), _)| *e)
            .next_back()
    }
}

impl Disk {
    fn latest_epoch(&self) -> u32 {
        self.epochs.keys().next_back().copied().unwrap_or(0)
    }
    fn retire(&mut self, oid: u64, epoch: u32) {
        if let Some(g) = self.working.remove(&oid) {
            self.stale.insert((oid, epoch), g);
        }
    }
    /// The generation a recovery read of `tgt_epoch` is served.
    fn serve(&self, oid: u64, flags: u16, tgt_epoch: u32) -> Option<u64> {
        match recovery_source(self, &ObjKey::replica(oid), flags, tgt_epoch)? {
            Source::Working => self.working.get(&oid).copied(),
            Source::Stale(e) => self.stale.get(&(oid, e)).copied(),
        }
    }
}

/// A recovery pass in progress.
struct Pass {
    epoch: u32,
    prepared: bool,
    queue: VecDeque<u64>,
    missing: Vec<u64>,
}

/// A running sheep.
struct Proc {
    state: ClusterState,
    incarnation: u64,
    /// Next stream position to apply.
    cursor: usize,
    ring: Rc<Ring>,
    pass: Option<Pass>,
    recovered_epoch: u32,
    marked_epoch: u32,
}

struct SimNode {
    node: SdNode,
    disk: Disk,
    proc: Option<Proc>,
    /// Disk operations left that fail with EIO.
    eio: u32,
}

/// The simulated cluster driver: one ordered stream per generation.
#[derive(Default)]
struct Driver {
    log: Vec<Delivered>,
    /// (node index, incarnation) of processes the driver counts alive.
    alive: BTreeSet<(usize, u64)>,
    /// Crashes not noticed yet: (node index, incarnation, steps left).
    dying: Vec<(usize, u64, u32)>,
}

/// A run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub faults: usize,
    pub ops: usize,
}

/// What went wrong in a run.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "seed {}: {}", self.seed, self.what)
    }
}

pub struct Sim {
    rng: StdRng,
    cfg: Config,
    nodes: Vec<SimNode>,
    driver: Driver,
    copies: usize,
    /// Newest acknowledged generation of each object.
    acked: BTreeMap<u64, u64>,
    /// Generations of each object written after its newest acknowledged
    /// one and not acknowledged (in flight, or given up): "maybe" values.
    maybe: BTreeMap<u64, BTreeSet<u64>>,
    /// Client writes in flight, oldest first (at most one per object).
    writes: Vec<Write>,
    /// Links that are down, as (lower index, higher index) → the step
    /// they come back at.
    links_down: BTreeMap<(usize, usize), u64>,
    /// Crashes during in-place writes leave torn copies (SIM_TORN=1),
    /// until the faults stop.
    torn: bool,
    /// A single crash may take the last running node too, so the
    /// cluster can die node by node and come back in any order
    /// (SIM_LAST_CRASH=1).
    last_crash: bool,
    next_gen: u64,
    next_incarnation: u64,
    step: u64,
    rings: HashMap<Vec<u8>, Rc<Ring>>,
    /// FNV-1a of everything that happened, in order.
    hash: u64,
    pub ops_done: usize,
    pub faults_done: usize,
    /// Objects recovery copied.
    pub recovered: u64,
    pub acked_writes: u64,
    /// Client writes given up (the client got an error).
    pub failed_writes: u64,
    /// Peer requests refused because their target moved to a newer epoch.
    pub old_node_ver: u64,
    pub eio_hits: u64,
    pub torn_writes: u64,
    /// Objects whose replicas differ at the end (their last write was
    /// not acknowledged).
    pub diverged: u64,
    /// Print every event (SIM_TRACE=1), to follow a failing seed.
    trace: bool,
    /// With the trace: the object whose copies are shown after each event
    /// (SIM_FOCUS=<oid in hex>).
    focus: Option<u64>,
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let copies = if rng.gen_bool(0.7) { 2 } else { 3 };
        let nodes = (0..cfg.nodes).map(|i| new_node(i as u16)).collect();
        Sim {
            rng,
            cfg,
            nodes,
            driver: Driver::default(),
            copies,
            acked: BTreeMap::new(),
            maybe: BTreeMap::new(),
            writes: Vec::new(),
            links_down: BTreeMap::new(),
            torn: std::env::var_os("SIM_TORN").is_some_and(|v| v == "1"),
            last_crash: std::env::var_os("SIM_LAST_CRASH").is_some_and(|v| v == "1"),
            next_gen: 1,
            next_incarnation: 1,
            step: 0,
            rings: HashMap::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            ops_done: 0,
            faults_done: 0,
            recovered: 0,
            acked_writes: 0,
            failed_writes: 0,
            old_node_ver: 0,
            eio_hits: 0,
            torn_writes: 0,
            diverged: 0,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            focus: std::env::var("SIM_FOCUS")
                .ok()
                .and_then(|h| u64::from_str_radix(&h, 16).ok()),
        }
    }

    fn note(&mut self, what: impl std::fmt::Display) {
        if self.trace {
            eprintln!("[{}] {what}", self.step);
            if let Some(o) = self.focus {
                for (i, n) in self.nodes.iter().enumerate() {
                    let st: Vec<String> = n
                        .disk
                        .stale
                        .iter()
                        .filter(|((x, _), _)| *x == o)
                        .map(|((_, e), g)| format!("{g}@{e}"))
                        .collect();
                    let ep = n.proc.as_ref().map(|p| p.state.epoch);
                    eprintln!(
                        "      n{i} {:?} ep {ep:?} file {} working {:?} stale {st:?}",
                        n.proc.is_some(),
                        n.disk.latest_epoch(),
                        n.disk.working.get(&o).map(|&v| show(v))
                    );
                }
            }
        }
        for b in what.to_string().bytes().chain([b'\n']) {
            self.hash = (self.hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn ring(&mut self, nodes: &[SdNode]) -> Rc<Ring> {
        let key = encode_nodes(nodes);
        self.rings
            .entry(key)
            .or_insert_with(|| Rc::new(Ring::new(nodes)))
            .clone()
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            seed: self.cfg.seed,
            what: format!("step {}: {what}", self.step),
        }
    }

    /// Runs the whole scenario; the event-log hash on success.
    pub fn run(&mut self) -> Result<u64, Failure> {
        for i in 0..self.nodes.len() {
            self.start(i);
            self.settle(1000)?;
        }
        self.format();
        self.settle(100_000)?;
        while self.ops_done < self.cfg.ops || self.faults_done < self.cfg.faults {
            self.step += 1;
            let r = self.rng.gen_range(0..100);
            match r {
                0..=29 => self.deliver_one(),
                30..=49 => self.recovery_step()?,
                50..=67 => {
                    self.write_step();
                }
                68..=80 if self.ops_done < self.cfg.ops => self.client_write(),
                81..=93 if self.ops_done < self.cfg.ops => self.client_read()?,
                94..=99 if self.faults_done < self.cfg.faults => self.fault(),
                _ => self.deliver_one(),
            }
            self.notice_deaths();
            self.poll_writes();
        }
        self.heal();
        self.settle(1_000_000)?;
        self.check_final()?;
        Ok(self.hash)
    }

    // ---- the driver --------------------------------------------------

    fn append(&mut self, event: Event) {
        let seq = self.driver.log.last().map_or(0, |d| d.seq) + 1;
        self.note(format_args!("append {seq} {event:?}"));
        self.driver.log.push(Delivered {
            seq,
            time: self.step,
            event,
        });
    }

    fn start(&mut self, i: usize) {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        if self.driver.alive.is_empty() {
            // No member alive: the stream starts anew.
            self.driver.log.clear();
        }
        let disk = &self.nodes[i].disk;
        let epoch = disk.latest_epoch();
        let info = JoinInfo {
            config: disk.config.clone(),
            epoch,
            epoch_nodes: disk.epochs.get(&epoch).cloned().unwrap_or_default(),
        };
        let node = self.nodes[i].node;
        let mut state = ClusterState::new(node.nid, disk.config.clone());
        state.my_incarnation = Some(incarnation);
        let ring = self.ring(&[]);
        self.nodes[i].proc = Some(Proc {
            state,
            incarnation,
            cursor: 0,
            ring,
            pass: None,
            recovered_epoch: 0,
            marked_epoch: 0,
        });
        self.driver.alive.insert((i, incarnation));
        self.append(Event::Join {
            node,
            incarnation,
            opaque: info.encode(),
        });
    }

    fn format(&mut self) {
        let msg = crate::testing::make_fs(self.copies as u8);
        self.append(Event::Notify {
            sender: self.nodes[0].node.nid,
            msg: msg.encode(),
        });
    }

    /// Appends the LEAVEs of crashes the driver has noticed by now (and
    /// brings back the links whose partition is over).
    fn notice_deaths(&mut self) {
        let step = self.step;
        self.links_down.retain(|_, until| *until > step);
        let mut noticed = Vec::new();
        for d in &mut self.driver.dying {
            d.2 = d.2.saturating_sub(1);
            if d.2 == 0 {
                noticed.push((d.0, d.1));
            }
        }
        self.driver.dying.retain(|d| d.2 > 0);
        for (i, inc) in noticed {
            if self.driver.alive.remove(&(i, inc)) {
                let nid = self.nodes[i].node.nid;
                self.append(Event::Leave {
                    nid,
                    incarnation: inc,
                });
            }
        }
    }

    // ---- applying events ------------------------------------------------

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].proc.is_some())
            .collect()
    }

    fn deliver_one(&mut self) {
        let behind: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| self.nodes[i].proc.as_ref().unwrap().cursor < self.driver.log.len())
            .collect();
        if behind.is_empty() {
            return;
        }
        let i = behind[self.rng.gen_range(0..behind.len())];
        self.deliver_to(i);
    }

    fn deliver_to(&mut self, i: usize) {
        let p = self.nodes[i].proc.as_mut().unwrap();
        let d = self.driver.log[p.cursor].clone();
        p.cursor += 1;
        let fx = p.state.apply(&d);
        let nodes = p.state.nodes();
        let ring = self.ring(&nodes);
        self.nodes[i].proc.as_mut().unwrap().ring = ring;
        self.note(format_args!("node {i} applies {}: {fx:?}", d.seq));
        for f in fx {
            self.effect(i, f);
            if self.nodes[i].proc.is_none() {
                return;
            }
        }
    }

    fn effect(&mut self, i: usize, f: Effect) {
        match f {
            Effect::JoinRefused(_) => return self.crash(i, 1),
            Effect::Shutdown => return self.stop(i),
            Effect::NewEpoch {
                epoch,
                nodes,
                recover,
                ..
            } => return self.new_epoch(i, epoch, nodes, recover),
            _ => {}
        }
        let n = &mut self.nodes[i];
        let p = n.proc.as_mut().unwrap();
        match f {
            Effect::Joined {
                config,
                history,
                epoch,
            } if config.ctime != 0 => {
                n.disk.config = config;
                for (e, nodes, _) in history.into_iter().filter(|h| h.0 < epoch) {
                    n.disk.epochs.insert(e, nodes);
                }
            }
            Effect::Retire { epoch } => {
                let all: Vec<u64> = n.disk.working.keys().copied().collect();
                for o in all {
                    n.disk.retire(o, epoch);
                }
            }
            Effect::Formatted if p.state.joined => {
                n.disk = Disk {
                    config: p.state.config.clone(),
                    ..Default::default()
                };
            }
            Effect::ConfigChanged if p.state.joined => {
                n.disk.config = p.state.config.clone();
            }
            Effect::RecoveryGathered(_) if p.state.joined && p.pass.is_none() => {
                n.disk.stale.clear();
            }
            _ => {}
        }
    }

    /// A new epoch: as the daemon, the pass starts and what the new
    /// placement takes away is retired before the epoch file is written.
    fn new_epoch(&mut self, i: usize, epoch: u32, nodes: Vec<SdNode>, recover: bool) {
        let p = self.nodes[i].proc.as_mut().unwrap();
        if !p.state.joined {
            return;
        }
        if recover {
            if p.marked_epoch == 0 || p.marked_epoch >= epoch {
                p.marked_epoch = epoch - 1;
            }
            p.pass = Some(Pass {
                epoch,
                prepared: false,
                queue: VecDeque::new(),
                missing: Vec::new(),
            });
            let ring = self.ring(&nodes);
            self.mark(i, epoch, &ring);
        } else {
            p.pass = None;
            p.recovered_epoch = epoch;
            p.marked_epoch = epoch;
        }
        self.nodes[i].disk.epochs.insert(epoch, nodes);
    }

    /// Retires what node `i` stopped holding in the epochs since its last
    /// marking, up to `epoch` (whose ring is `ring`).
    fn mark(&mut self, i: usize, epoch: u32, ring: &Rc<Ring>) {
        let me = self.nodes[i].node.nid;
        let from = self.nodes[i].proc.as_ref().unwrap().marked_epoch + 1;
        for e in from..=epoch {
            let ring = match e == epoch {
                true => ring.clone(),
                false => match self.epoch_members(i, e) {
                    Some(members) => self.ring(&members),
                    None => continue,
                },
            };
            let copies = self.copies;
            let disk = &mut self.nodes[i].disk;
            let retire: Vec<u64> = disk
                .working
                .keys()
                .copied()
                .filter(|&o| ring.target_index(o, copies, &me).is_none())
                .collect();
            for o in retire {
                disk.retire(o, e - 1);
            }
            let p = self.nodes[i].proc.as_mut().unwrap();
            p.marked_epoch = p.marked_epoch.max(e);
        }
    }

    // ---- recovery -----------------------------------------------------------

    /// Members of `epoch` as some running node (or `i` itself) knows them.
    fn epoch_members(&self, i: usize, epoch: u32) -> Option<Vec<SdNode>> {
        if let Some(n) = self.nodes[i].disk.epochs.get(&epoch) {
            return Some(n.clone());
        }
        let p = self.nodes[i].proc.as_ref()?;
        p.state.nodes().iter().find_map(|m| {
            let j = self.index_of(&m.nid)?;
            self.nodes[j].proc.as_ref()?;
            self.nodes[j].disk.epochs.get(&epoch).cloned()
        })
    }

    fn index_of(&self, nid: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.node.nid == *nid)
    }

    /// Whether requests between nodes `a` and `b` fail (a partition).
    fn link_down(&self, a: usize, b: usize) -> bool {
        a != b && self.links_down.contains_key(&(a.min(b), a.max(b)))
    }

    /// Whether node `j`'s next disk operation fails (EIO; the disk keeps
    /// what it had).
    fn disk_fails(&mut self, j: usize) -> bool {
        if self.nodes[j].eio == 0 {
            return false;
        }
        self.nodes[j].eio -= 1;
        self.eio_hits += 1;
        self.note(format_args!("node {j} disk EIO"));
        true
    }

    /// Whether node `j` answers peers of node `i` (running, and a member
    /// of `i`'s view).
    fn answers(&self, i: usize, j: usize) -> bool {
        self.nodes[j].proc.is_some()
            && self.nodes[i]
                .proc
                .as_ref()
                .is_some_and(|p| p.state.is_member(&self.nodes[j].node.nid))
    }

    fn recovery_step(&mut self) -> Result<(), Failure> {
        let busy: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| self.nodes[i].proc.as_ref().unwrap().pass.is_some())
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let i = busy[self.rng.gen_range(0..busy.len())];
        self.recover_at(i)
    }

    fn recover_at(&mut self, i: usize) -> Result<(), Failure> {
        let p = self.nodes[i].proc.as_ref().unwrap();
        let pass = p.pass.as_ref().unwrap();
        let epoch = pass.epoch;
        if p.state.epoch != epoch {
            return Ok(());
        }
        if !pass.prepared {
            return self.prepare(i, epoch);
        }
        let me = self.nodes[i].node.nid;
        let p = self.nodes[i].proc.as_mut().unwrap();
        let pass = p.pass.as_mut().unwrap();
        if let Some(o) = pass.queue.pop_front() {
            if !self.recover_one(i, o) {
                self.nodes[i]
                    .proc
                    .as_mut()
                    .unwrap()
                    .pass
                    .as_mut()
                    .unwrap()
                    .missing
                    .push(o);
            }
            return Ok(());
        }
        if !pass.missing.is_empty() {
            let missing = std::mem::take(&mut pass.missing);
            let still: Vec<u64> = missing
                .into_iter()
                .filter(|&o| !self.recover_one(i, o))
                .collect();
            let p = self.nodes[i].proc.as_mut().unwrap();
            p.pass.as_mut().unwrap().missing = still;
            return Ok(());
        }
        // Complete: tell everyone.
        p.pass = None;
        p.recovered_epoch = epoch;
        let mut req = SdReq::new(op::COMPLETE_RECOVERY);
        req.flags = flag::CMD_WRITE;
        req.set_obj(ObjArgs {
            tgt_epoch: epoch,
            ..Default::default()
        });
        let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
        let data = self.nodes[i].node.encode().to_vec();
        self.append(Event::Notify {
            sender: me,
            msg: OpMessage { req, rsp, data }.encode(),
        });
        Ok(())
    }

    fn prepare(&mut self, i: usize, epoch: u32) -> Result<(), Failure> {
        let me = self.nodes[i].node.nid;
        let ring = self.nodes[i].proc.as_ref().unwrap().ring.clone();
        self.mark(i, epoch, &ring);
        // Every member's list is needed (a dead member not yet noticed
        // holds the pass until it is).
        let p = self.nodes[i].proc.as_ref().unwrap();
        let members = p.state.nodes();
        let ring = p.ring.clone();
        let mut wanted = BTreeSet::new();
        for m in &members {
            let Some(j) = self.index_of(&m.nid) else {
                continue;
            };
            // A member behind our epoch does not list yet (the daemon's
            // object list waits for the asker's epoch).
            // Nor does one across a down link.
            let behind = |p: &Proc| p.state.epoch < epoch;
            if self.nodes[j].proc.as_ref().is_none_or(behind) || self.link_down(i, j) {
                return Ok(());
            }
            let d = &self.nodes[j].disk;
            for o in d.working.keys().chain(d.stale.keys().map(|(o, _)| o)) {
                if ring.target_index(*o, self.copies, &me).is_some()
                    && !self.nodes[i].disk.working.contains_key(o)
                {
                    wanted.insert(*o);
                }
            }
        }
        self.note(format_args!(
            "node {i} prepared epoch {epoch}: wants {wanted:x?}"
        ));
        let pass = self.nodes[i].proc.as_mut().unwrap().pass.as_mut().unwrap();
        pass.prepared = true;
        pass.queue = wanted.into_iter().collect();
        Ok(())
    }

    /// Fetches `o` for node `i` if it still lacks it; false if no node
    /// could provide it.
    fn recover_one(&mut self, i: usize, o: u64) -> bool {
        if self.nodes[i].disk.working.contains_key(&o) {
            return true;
        }
        let epoch = self.nodes[i].proc.as_ref().unwrap().state.epoch;
        let mut found = None;
        'walk: for e in (1..epoch).rev() {
            let Some(members) = self.epoch_members(i, e) else {
                continue;
            };
            let ring = self.ring(&members);
            let (mut absent, mut silent) = (0, 0);
            for t in epoch_holders(&ring, o, self.copies) {
                let j = self.index_of(&t.nid).unwrap();
                if j != i && !self.answers(i, j) {
                    silent += 1;
                    continue;
                }
                match self.recovery_read(i, j, o, 0, e) {
                    Fetched::Data(g) => {
                        found = Some(g);
                        break 'walk;
                    }
                    Fetched::Absent => absent += 1,
                    Fetched::Unreachable => silent += 1,
                }
            }
            if !may_walk_older(absent, silent) {
                return false;
            }
        }
        if found.is_none() {
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|&j| j != i && self.answers(i, j))
                .collect();
            for j in others.into_iter().chain([i]) {
                if let Fetched::Data(g) = self.recovery_read(i, j, o, flag::CMD_WILDCARD, 0) {
                    found = Some(g);
                    break;
                }
            }
        }
        match found {
            Some(_) if self.disk_fails(i) => false,
            Some(g) => {
                self.note(format_args!("node {i} recovers {o:x} gen {}", show(g)));
                self.recovered += 1;
                self.nodes[i].disk.working.insert(o, g);
                true
            }
            None => false,
        }
    }

    /// A recovery read by node `i` of `o` at node `j`: as the daemon's
    /// epoch rule has it, a node behind the asker's epoch does not answer
    /// (yet); nor does one across a down link, and a disk error reads as
    /// no answer (the real `read_peer` maps every failure but NO_OBJ to
    /// `Unreachable`).
    fn recovery_read(
        &mut self,
        i: usize,
        j: usize,
        o: u64,
        flags: u16,
        tgt_epoch: u32,
    ) -> Fetched<u64> {
        let epoch = |k: usize| self.nodes[k].proc.as_ref().map_or(0, |p| p.state.epoch);
        let running = |k: usize| {
            self.nodes[k]
                .proc
                .as_ref()
                .is_some_and(|p| p.state.status == crate::state::Status::Ok)
        };
        if j != i && (epoch(j) < epoch(i) || !running(j) || self.link_down(i, j)) {
            return Fetched::Unreachable;
        }
        match self.nodes[j].disk.serve(o, flags, tgt_epoch) {
            Some(_) if self.disk_fails(j) => Fetched::Unreachable,
            Some(g) => Fetched::Data(g),
            None => Fetched::Absent,
        }
    }

    /// What a peer request to node `j` does about `o` first: recover it if
    /// its pass still lists it. False when `j` cannot serve `o` yet.
    fn ensure(&mut self, j: usize, o: u64) -> bool {
        let p = self.nodes[j].proc.as_ref().unwrap();
        match &p.pass {
            Some(pass) if !pass.prepared => false,
            Some(pass) if pass.queue.contains(&o) || pass.missing.contains(&o) => {
                let ok = self.recover_one(j, o);
                if ok {
                    let pass = self.nodes[j].proc.as_mut().unwrap().pass.as_mut().unwrap();
                    pass.queue.retain(|&x| x != o);
                    pass.missing.retain(|&x| x != o);
                }
                ok
            }
            _ => true,
        }
    }

    // ---- clients -------------------------------------------------------------

    /// A running, joined node whose cluster is up, to serve as gateway.
    fn gateway(&mut self) -> Option<usize> {
        let ok: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| {
                let st = &self.nodes[i].proc.as_ref().unwrap().state;
                st.joined && st.status == crate::state::Status::Ok
            })
            .collect();
        (!ok.is_empty()).then(|| ok[self.rng.gen_range(0..ok.len())])
    }

    /// The targets of `o` under node `g`'s view.
    fn targets(&self, g: usize, o: u64) -> Vec<usize> {
        let p = self.nodes[g].proc.as_ref().unwrap();
        p.ring
            .targets(o, self.copies)
            .iter()
            .map(|n| self.index_of(&n.nid).unwrap())
            .collect()
    }

    /// A client writes the next generation of a random object through a
    /// random gateway (unless its previous write of that object is still
    /// in flight: one client writes one object in order).
    fn client_write(&mut self) {
        self.ops_done += 1;
        let Some(g) = self.gateway() else { return };
        let o = oid(self.rng.gen_range(0..OBJECTS));
        if self.writes.iter().any(|w| w.o == o) {
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.maybe.entry(o).or_default().insert(gen);
        let gw_inc = self.nodes[g].proc.as_ref().unwrap().incarnation;
        self.writes.push(Write {
            o,
            gen,
            // The client creates what it has no acknowledged write of
            // (its inode does not point at the object yet).
            create: !self.acked.contains_key(&o),
            gw: g,
            gw_inc,
            attempts: 0,
            epoch: 0,
            started: 0,
            targets: Vec::new(),
            pending: Vec::new(),
            err: None,
            retry: true,
        });
        self.attempt(self.writes.len() - 1);
    }

    /// Starts write `k`'s next attempt under its gateway's current view.
    fn attempt(&mut self, k: usize) {
        let g = self.writes[k].gw;
        let p = self.nodes[g].proc.as_ref().unwrap();
        if !p.state.joined || p.state.status != crate::state::Status::Ok {
            // The gateway refuses client I/O: an error, no retry.
            self.writes[k].err = Some(PeerErr::NewNodeVer);
            self.give_up(k);
            return;
        }
        let epoch = p.state.epoch;
        let o = self.writes[k].o;
        let targets = self.targets(g, o);
        let pending = targets
            .iter()
            .map(|&j| (j, self.nodes[j].proc.as_ref().map(|q| q.incarnation)))
            .collect();
        let w = &mut self.writes[k];
        w.attempts += 1;
        w.epoch = epoch;
        w.started = self.step;
        w.targets = targets;
        w.pending = pending;
        w.err = None;
        w.retry = false;
        let what = format!(
            "write {o:x} gen {} {} via {g} at epoch {epoch} to {:?} (attempt {})",
            w.gen,
            if w.create { "create" } else { "overwrite" },
            w.targets,
            w.attempts
        );
        self.note(what);
    }

    /// Whether the peer request of write `w` to `j` (which went to
    /// incarnation `inc`) can be executed now; false while the target
    /// waits (behind the request's epoch, as `reach_epoch`; its pass not
    /// prepared yet, as `wait_prepared`).
    fn send_ready(&self, w: &Write, j: usize, inc: Option<u64>) -> bool {
        let Some(p) = self.nodes[j].proc.as_ref() else {
            return true;
        };
        if Some(p.incarnation) != inc || self.link_down(w.gw, j) {
            return true;
        }
        if p.state.epoch < w.epoch {
            return false;
        }
        if p.state.epoch > w.epoch || !p.state.joined || p.state.status != crate::state::Status::Ok
        {
            return true;
        }
        !matches!(&p.pass, Some(pass) if !pass.prepared)
    }

    /// Moves one client write on: starts an attempt that waits for one,
    /// or executes one of its peer requests at its target. False if no
    /// write can move now.
    fn write_step(&mut self) -> bool {
        let mut ready: Vec<(usize, Option<usize>)> = Vec::new();
        for (k, w) in self.writes.iter().enumerate() {
            if w.retry {
                ready.push((k, None));
                continue;
            }
            for (x, &(j, inc)) in w.pending.iter().enumerate() {
                if self.send_ready(w, j, inc) {
                    ready.push((k, Some(x)));
                }
            }
        }
        if ready.is_empty() {
            return false;
        }
        match ready[self.rng.gen_range(0..ready.len())] {
            (k, None) => self.attempt(k),
            (k, Some(x)) => self.send(k, x),
        }
        true
    }

    /// Executes write `k`'s peer request `x` at its target.
    fn send(&mut self, k: usize, x: usize) {
        let (j, inc) = self.writes[k].pending.remove(x);
        let w = &self.writes[k];
        let (o, gen, create, gw, epoch) = (w.o, w.gen, w.create, w.gw, w.epoch);
        let r = self.execute_write(j, inc, gw, epoch, o, gen, create);
        self.note(format_args!(
            "node {j} write {o:x} gen {gen} at epoch {epoch}: {r:?}"
        ));
        if let Err(e) = r {
            if e == PeerErr::OldNodeVer {
                self.old_node_ver += 1;
            }
            let w = &mut self.writes[k];
            if w.err.is_none_or(|f| f.transient()) {
                w.err = Some(e);
            }
        }
        if self.writes[k].pending.is_empty() {
            self.resolve(k);
        }
    }

    /// A write's peer request as `peer::execute` runs it at node `j`.
    #[allow(clippy::too_many_arguments)]
    fn execute_write(
        &mut self,
        j: usize,
        inc: Option<u64>,
        gw: usize,
        epoch: u32,
        o: u64,
        gen: u64,
        create: bool,
    ) -> Result<(), PeerErr> {
        let Some(p) = self.nodes[j].proc.as_ref() else {
            return Err(PeerErr::Network);
        };
        if Some(p.incarnation) != inc || self.link_down(gw, j) {
            return Err(PeerErr::Network);
        }
        // The epoch rule: a request of an older epoch is refused.
        if p.state.epoch > epoch {
            return Err(PeerErr::OldNodeVer);
        }
        if !p.state.joined || p.state.status != crate::state::Status::Ok {
            return Err(PeerErr::NewNodeVer);
        }
        if create {
            // A create replaces whatever recovery would bring back.
            let p = self.nodes[j].proc.as_mut().unwrap();
            if let Some(pass) = p.pass.as_mut() {
                pass.queue.retain(|&x| x != o);
                pass.missing.retain(|&x| x != o);
            }
        } else if !self.ensure(j, o) || !self.nodes[j].disk.working.contains_key(&o) {
            return Err(PeerErr::NoObj);
        }
        if self.disk_fails(j) {
            return Err(PeerErr::Eio);
        }
        // A create is a temporary file renamed into place; an overwrite is
        // in place, and a crash in the middle of it tears the copy.
        let others = self.running().len() > 1 || self.last_crash;
        if self.torn && others && !create && self.rng.gen_ratio(1, 40) {
            self.nodes[j].disk.working.insert(o, gen | TORN);
            self.torn_writes += 1;
            self.note(format_args!(
                "node {j} crashes while writing {o:x} gen {gen}: torn"
            ));
            let after = self.rng.gen_range(1..20);
            self.crash(j, after);
            return Err(PeerErr::Network);
        }
        self.nodes[j].disk.working.insert(o, gen);
        Ok(())
    }

    /// Write `k`'s attempt is over: acknowledged, retried, or given up.
    /// True if the write is gone.
    fn resolve(&mut self, k: usize) -> bool {
        match self.writes[k].err {
            None => {
                let w = self.writes.remove(k);
                self.note(format_args!("ack {:x} gen {}", w.o, w.gen));
                self.acked.insert(w.o, w.gen);
                // Only one write of an object is in flight: every maybe
                // value of it is older now.
                self.maybe.remove(&w.o);
                self.acked_writes += 1;
                true
            }
            Some(e) if e.transient() && self.writes[k].attempts < ATTEMPTS => {
                self.writes[k].retry = true;
                false
            }
            Some(_) => {
                self.give_up(k);
                true
            }
        }
    }

    /// The client gets an error for write `k`; its generation stays a
    /// maybe value.
    fn give_up(&mut self, k: usize) {
        let w = self.writes.remove(k);
        self.failed_writes += 1;
        self.note(format_args!(
            "write {:x} gen {} failed: {:?}",
            w.o, w.gen, w.err
        ));
    }

    /// The gateways' side of the writes in flight: a write whose gateway
    /// died is lost with it; an attempt whose gateway moved to a newer
    /// epoch, or that ran out of time, is abandoned (the connections are
    /// dropped, so the targets abort what they have not executed yet:
    /// `server.rs` aborts a gone client's requests).
    fn poll_writes(&mut self) {
        let mut k = 0;
        while k < self.writes.len() {
            let w = &self.writes[k];
            let gw = self.nodes[w.gw].proc.as_ref();
            let Some(gw) = gw.filter(|p| p.incarnation == w.gw_inc) else {
                self.writes[k].err = Some(PeerErr::Network);
                self.give_up(k);
                continue;
            };
            if !w.retry && (gw.state.epoch != w.epoch || self.step - w.started > REQUEST_STEPS) {
                let w = &mut self.writes[k];
                w.pending.clear();
                if w.err.is_none_or(|e| e.transient()) {
                    w.err = Some(PeerErr::Network);
                }
                let what = format!("write {:x} gen {} abandoned", w.o, w.gen);
                self.note(what);
                if self.resolve(k) {
                    continue;
                }
            }
            k += 1;
        }
    }

    /// Whether a read of `o` may return `v` (None: nothing): the newest
    /// acknowledged generation, or a maybe value written after it.
    fn allowed(&self, o: u64, v: Option<u64>) -> bool {
        let acked = self.acked.get(&o).copied();
        match v {
            Some(v) => acked == Some(v) || self.maybe.get(&o).is_some_and(|m| m.contains(&v)),
            None => acked.is_none(),
        }
    }

    /// Reads `o` through gateway `g` as the gateway does (each target in
    /// turn, the first that serves it wins; a target across a down link,
    /// not at the gateway's epoch, or whose disk fails is skipped).
    fn read_through(&mut self, g: usize, o: u64) -> Option<u64> {
        let epoch = self.nodes[g].proc.as_ref()?.state.epoch;
        let targets = self.targets(g, o);
        let start = targets.iter().position(|&j| j == g).unwrap_or(0);
        for k in 0..targets.len() {
            let j = targets[(start + k) % targets.len()];
            let ok = self.nodes[j].proc.as_ref().is_some_and(|q| {
                q.state.epoch == epoch
                    && q.state.joined
                    && q.state.status == crate::state::Status::Ok
            });
            if !ok || self.link_down(g, j) || !self.ensure(j, o) {
                continue;
            }
            if let Some(&gen) = self.nodes[j].disk.working.get(&o) {
                if !self.disk_fails(j) {
                    return Some(gen);
                }
            }
        }
        None
    }

    fn client_read(&mut self) -> Result<(), Failure> {
        self.ops_done += 1;
        let Some(g) = self.gateway() else {
            return Ok(());
        };
        let o = oid(self.rng.gen_range(0..OBJECTS));
        let got = self.read_through(g, o);
        self.note(format_args!("read {o:x} via {g}: {:?}", got.map(show)));
        match got {
            Some(v) if !self.allowed(o, Some(v)) => Err(self.fail(format!(
                "read of {o:x} through node {g} returned {}; newest acknowledged is {:?}, maybe {:?}",
                show(v),
                self.acked.get(&o),
                self.maybe.get(&o)
            ))),
            _ => Ok(()),
        }
    }

    // ---- faults --------------------------------------------------------------

    /// Whether `dog node recovery` would list nobody: every member has
    /// applied the stream and finished its pass.
    fn quiet(&self) -> bool {
        self.running().iter().all(|&i| {
            let p = self.nodes[i].proc.as_ref().unwrap();
            p.cursor == self.driver.log.len() && p.pass.is_none()
        }) && self.driver.dying.is_empty()
    }

    fn crash(&mut self, i: usize, notice_after: u32) {
        if let Some(p) = self.nodes[i].proc.take() {
            self.note(format_args!("crash {i}"));
            self.driver.dying.push((i, p.incarnation, notice_after));
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            self.note(format_args!("stop {i}"));
            if self.driver.alive.remove(&(i, p.incarnation)) {
                let nid = self.nodes[i].node.nid;
                self.append(Event::Leave {
                    nid,
                    incarnation: p.incarnation,
                });
            }
        }
    }

    fn fault(&mut self) {
        let running = self.running();
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].proc.is_none() && !self.dying(i))
            .collect();
        let choice = self.rng.gen_range(0..15);
        match choice {
            // Restart a stopped node with its disk.
            0..=2 if !down.is_empty() => {
                let i = down[self.rng.gen_range(0..down.len())];
                self.note(format_args!("restart {i}"));
                self.start(i);
            }
            // A new node (a replacement, with an empty disk).
            3..=4 if self.nodes.len() < self.cfg.nodes + 6 => {
                let i = self.nodes.len();
                self.nodes.push(new_node(i as u16));
                self.note(format_args!("new node {i}"));
                self.start(i);
            }
            // The whole cluster crashes (at any moment: disks keep what
            // they have), and comes back in random order.
            5 if down.is_empty() => {
                for &i in &running {
                    self.crash(i, 1);
                }
                self.notice_deaths();
                let mut order = running.clone();
                for k in (1..order.len()).rev() {
                    order.swap(k, self.rng.gen_range(0..=k));
                }
                for i in order {
                    self.start(i);
                }
            }
            // One node crashes, at any moment.
            6..=7 if running.len() > 1 || (self.last_crash && !running.is_empty()) => {
                let i = running[self.rng.gen_range(0..running.len())];
                let after = self.rng.gen_range(1..20);
                self.crash(i, after);
            }
            // A partition: the link between two nodes goes down, or (one
            // time in three) every link of one node, for a while. The
            // cluster driver does not see it: membership is unchanged.
            8..=10 => {
                let n = self.nodes.len();
                let a = self.rng.gen_range(0..n);
                let cut: Vec<usize> = if self.rng.gen_ratio(1, 3) {
                    (0..n).filter(|&b| b != a).collect()
                } else {
                    let b = self.rng.gen_range(0..n - 1);
                    vec![if b >= a { b + 1 } else { b }]
                };
                let until = self.step + self.rng.gen_range(5..300);
                self.note(format_args!("partition {a} from {cut:?} until {until}"));
                for b in cut {
                    let l = self.links_down.entry((a.min(b), a.max(b))).or_default();
                    *l = (*l).max(until);
                }
            }
            // A disk fails its next few operations.
            11 => {
                let i = self.rng.gen_range(0..self.nodes.len());
                let k = self.rng.gen_range(1..=4);
                self.note(format_args!("node {i} disk fails {k} operations"));
                self.nodes[i].eio += k;
            }
            // The operator stops one node, once `dog node recovery` lists
            // nobody, keeping enough nodes for the copies.
            _ if self.quiet() && running.len() > self.copies => {
                let i = running[self.rng.gen_range(0..running.len())];
                self.stop(i);
            }
            _ => return,
        }
        self.faults_done += 1;
    }

    fn dying(&self, i: usize) -> bool {
        self.driver.dying.iter().any(|d| d.0 == i)
    }

    /// Brings back every node that is down (no disk is ever lost here, so
    /// no acknowledged write may be), every link and every disk.
    fn heal(&mut self) {
        self.torn = false;
        self.links_down.clear();
        self.nodes.iter_mut().for_each(|n| n.eio = 0);
        self.driver.dying.iter_mut().for_each(|d| d.2 = 1);
        self.notice_deaths();
        for i in 0..self.nodes.len() {
            if self.nodes[i].proc.is_none() {
                self.note(format_args!("heal {i}"));
                self.start(i);
            }
        }
    }

    /// Runs deliveries, death notices, writes in flight and recovery
    /// until nothing is left.
    fn settle(&mut self, max_steps: u32) -> Result<(), Failure> {
        for _ in 0..max_steps {
            self.step += 1;
            self.notice_deaths();
            self.poll_writes();
            let behind = self
                .running()
                .into_iter()
                .any(|i| self.nodes[i].proc.as_ref().unwrap().cursor < self.driver.log.len());
            if behind {
                self.deliver_one();
                continue;
            }
            if self.write_step() {
                continue;
            }
            let busy = self
                .running()
                .into_iter()
                .any(|i| self.nodes[i].proc.as_ref().unwrap().pass.is_some());
            if busy {
                self.recovery_step()?;
                continue;
            }
            if self.driver.dying.is_empty() && self.writes.is_empty() {
                return Ok(());
            }
        }
        Err(self.fail("the cluster did not settle".into()))
    }

    fn check_final(&mut self) -> Result<(), Failure> {
        let running = self.running();
        // Everyone agrees on the epoch and on each epoch's members.
        let epochs: BTreeSet<u32> = running
            .iter()
            .map(|&i| self.nodes[i].proc.as_ref().unwrap().state.epoch)
            .collect();
        if epochs.len() != 1 {
            return Err(self.fail(format!("nodes disagree on the epoch: {epochs:?}")));
        }
        for &a in &running {
            for &b in &running {
                for (e, na) in &self.nodes[a].disk.epochs {
                    if let Some(nb) = self.nodes[b].disk.epochs.get(e) {
                        if na != nb {
                            return Err(self.fail(format!(
                                "nodes {a} and {b} disagree on the members of epoch {e}"
                            )));
                        }
                    }
                }
            }
        }
        let ring = self.nodes[running[0]].proc.as_ref().unwrap().ring.clone();
        let objects: BTreeSet<u64> = self
            .acked
            .keys()
            .chain(self.maybe.keys())
            .copied()
            .collect();
        for o in objects {
            let want = self.acked.get(&o).copied();
            let maybe = self.maybe.get(&o).cloned().unwrap_or_default();
            for &g in &running {
                let got = self.read_through(g, o);
                if !self.allowed(o, got) {
                    return Err(self.fail(format!(
                        "{o:x} through node {g}: {:?}, newest acknowledged is {want:?}, maybe {maybe:?}",
                        got.map(show)
                    )));
                }
            }
            let targets = ring.targets(o, self.copies);
            let zones: BTreeSet<u32> = targets.iter().map(|n| n.zone).collect();
            if targets.len() != self.copies || zones.len() != self.copies {
                return Err(self.fail(format!("{o:x} has {} targets", targets.len())));
            }
            let mut held_set = BTreeSet::new();
            for t in targets {
                let j = self.index_of(&t.nid).unwrap();
                let held = self.nodes[j].disk.working.get(&o).copied();
                if !self.allowed(o, held) {
                    return Err(self.fail(format!(
                        "replica of {o:x} on node {j}: {:?}, newest acknowledged is {want:?}, maybe {maybe:?}",
                        held.map(show)
                    )));
                }
                held_set.insert(held);
            }
            if held_set.len() > 1 {
                self.diverged += 1;
            }
        }
        for &i in &running {
            let me = self.nodes[i].node.nid;
            if let Some(o) = self.nodes[i]
                .disk
                .working
                .keys()
                .find(|&&o| ring.target_index(o, self.copies, &me).is_none())
            {
                return Err(self.fail(format!("node {i} keeps {o:x} it is no target of")));
            }
        }
        Ok(())
    }
}

fn new_node(i: u16) -> SimNode {
    SimNode {
        node: crate::testing::node(i),
        disk: Disk::default(),
        proc: None,
        eio: 0,
    }
}

/// Runs the seeds `seeds` with the given shape; the failures.
pub fn run_seeds(
    seeds: std::ops::Range<u64>,
    nodes: usize,
    faults: usize,
    ops: usize,
) -> Vec<Failure> {
    seeds
        .filter_map(|seed| {
            Sim::new(Config {
                seed,
                nodes,
                faults,
                ops,
            })
            .run()
            .err()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> Config {
        Config {
            seed,
            nodes: 5,
            faults: 12,
            ops: 800,
        }
    }

    #[test]
    fn a_thousand_seeds_keep_every_acknowledged_write() {
        let failures = run_seeds(0..1000, 5, 12, 800);
        assert!(failures.is_empty(), "{}", report(&failures));
    }

    #[test]
    fn a_seed_replays_identically() {
        for seed in [3, 17, 101] {
            let a = Sim::new(cfg(seed)).run().unwrap();
            let b = Sim::new(cfg(seed)).run().unwrap();
            assert_eq!(a, b, "seed {seed} did not replay");
        }
        assert_ne!(
            Sim::new(cfg(1)).run().unwrap(),
            Sim::new(cfg(2)).run().unwrap()
        );
    }

    #[test]
    fn runs_do_what_they_claim() {
        let (mut acked, mut epochs, mut recovered) = (0, 0, 0);
        let (mut failed, mut old, mut eio, mut diverged) = (0, 0, 0, 0);
        for seed in 0..20 {
            let mut s = Sim::new(cfg(seed));
            s.run().unwrap();
            assert!(s.ops_done >= 800 && s.faults_done >= 12);
            assert!(s.nodes.len() >= 5);
            acked += s.acked_writes;
            failed += s.failed_writes;
            old += s.old_node_ver;
            eio += s.eio_hits;
            diverged += s.diverged;
            epochs += s.nodes.iter().map(|n| n.disk.latest_epoch()).max().unwrap() as u64;
            recovered += s.recovered;
        }
        eprintln!(
            "20 runs: {acked} acknowledged writes, {failed} given up, {old} OLD_NODE_VER, \
             {eio} EIOs, {diverged} objects left diverged, {epochs} epochs, \
             {recovered} objects recovered"
        );
        assert!(acked > 20 * 50, "the workload acknowledges writes");
        assert!(epochs > 20 * 5, "the faults change the membership");
        assert!(recovered > 20 * 10, "recovery moves objects");
        assert!(failed > 20, "some writes fail");
        assert!(old > 20, "slow fan-outs meet newer epochs");
        assert!(eio > 20, "disks fail");
    }

    /// `SIM_SEEDS=a..b cargo test --release -p sheep soak -- --ignored`
    /// (see scripts/soak.sh).
    ///
    /// Known failures of the opt-in faults: SIM_TORN=1 fails 69 of seeds
    /// 0..1000 (a torn copy is served: no checksum tells it from a good
    /// one yet); SIM_TORN=1 SIM_LAST_CRASH=1 also loses acknowledged
    /// writes (seeds 334, 1276 of 0..3000): a cluster that died node by
    /// node resumes once the members of its first restarted node's older
    /// epoch are back, and the last survivor, whose epoch is newer, then
    /// joins the running cluster and retires the only copies of writes
    /// acknowledged after that older epoch.
    #[test]
    #[ignore]
    fn soak() {
        let failures =
            crate::testing::soak("SIM_SEEDS", "0..1000", |seeds| run_seeds(seeds, 5, 12, 800));
        assert!(failures.is_empty(), "{}", report(&failures));
    }

    fn report(failures: &[Failure]) -> String {
        let lines: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        format!("{} failing seeds:\n{}", failures.len(), lines.join("\n"))
    }
}
