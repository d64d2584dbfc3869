//! Deterministic simulation of the cluster core and of recovery.
//!
//! N nodes run in one thread, driven by a seeded random schedule: the
//! real [`ClusterState`] of every node applies a simulated driver's
//! totally ordered stream (delivered to each node at its own pace), the
//! real placement ([`Ring`]) and the real recovery rules (which copy a
//! node serves, in which order recovery asks, when a joiner retires what
//! it holds) act on simulated disks. Clients write and read objects
//! through random gateways while nodes crash, stop cleanly, restart with
//! their disks, get replaced by new ones, and the whole cluster crashes at
//! once. Crashes come at any moment; clean stops follow an operator's
//! discipline: a node is stopped only when `dog node recovery` would
//! list no node (every member finished its pass for the epoch it is in).
//! No disk is ever lost, so no acknowledged write may be.
//!
//! Checked: every successful read returns the newest acknowledged write;
//! once faults stop and recovery settles, every object reads back through
//! every node, has its full copy count on distinct zones, every replica
//! agrees, no node keeps a copy it is not a target of, and all nodes agree
//! on each epoch's members. A failing run names its seed; a seed replays
//! the same schedule and event log (the log's hash is compared).
//!
//! What is simulated rather than real: the network (a read or write is
//! one atomic step), the disks (generation numbers, not bytes) and the
//! VDI layer (one VDI's objects, cluster-default redundancy).

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
            next_gen: 1,
            next_incarnation: 1,
            step: 0,
            rings: HashMap::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            ops_done: 0,
            faults_done: 0,
            recovered: 0,
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
                        n.disk.working.get(&o)
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
                0..=39 => self.deliver_one(),
                40..=64 => self.recovery_step()?,
                65..=79 if self.ops_done < self.cfg.ops => self.client_write(),
                80..=93 if self.ops_done < self.cfg.ops => self.client_read()?,
                94..=99 if self.faults_done < self.cfg.faults => self.fault(),
                _ => self.deliver_one(),
            }
            self.notice_deaths();
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
        let mut req = SdReq::new(op::MAKE_FS);
        req.set_cluster(ClusterArgs {
            ctime: 0x1234 << 32,
            copies: self.copies as u8,
            flags: cluster_flag::AUTO_VNODES,
            ..Default::default()
        });
        let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
        let msg = OpMessage {
            req,
            rsp,
            data: b"plain\0".to_vec(),
        };
        self.append(Event::Notify {
            sender: self.nodes[0].node.nid,
            msg: msg.encode(),
        });
    }

    /// Appends the LEAVEs of crashes the driver has noticed by now.
    fn notice_deaths(&mut self) {
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
            let behind = |p: &Proc| p.state.epoch < epoch;
            if self.nodes[j].proc.as_ref().is_none_or(behind) {
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
            for t in epoch_holders(&ring, o, self.copies, None) {
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
            found = others.into_iter().chain([i]).find_map(|j| {
                match self.recovery_read(i, j, o, flag::CMD_WILDCARD, 0) {
                    Fetched::Data(g) => Some(g),
                    _ => None,
                }
            });
        }
        match found {
            Some(g) => {
                self.note(format_args!("node {i} recovers {o:x} gen {g}"));
                self.recovered += 1;
                self.nodes[i].disk.working.insert(o, g);
                true
            }
            None => false,
        }
    }

    /// A recovery read by node `i` of `o` at node `j`: as the daemon's
    /// epoch rule has it, a node behind the asker's epoch does not answer
    /// (yet).
    fn recovery_read(
        &self,
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
        if j != i && (epoch(j) < epoch(i) || !running(j)) {
            return Fetched::Unreachable;
        }
        match self.nodes[j].disk.serve(o, flags, tgt_epoch) {
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

    /// The targets of `o` under gateway `g`'s view, if all can take a
    /// request of its epoch now.
    fn targets(&self, g: usize, o: u64) -> Option<Vec<usize>> {
        let p = self.nodes[g].proc.as_ref().unwrap();
        let t: Vec<usize> = p
            .ring
            .targets(o, self.copies)
            .iter()
            .map(|n| self.index_of(&n.nid).unwrap())
            .collect();
        let ready = t.iter().all(|&j| {
            self.nodes[j].proc.as_ref().is_some_and(|q| {
                q.state.epoch == p.state.epoch
                    && q.state.joined
                    && q.state.status == crate::state::Status::Ok
            })
        });
        ready.then_some(t)
    }

    fn client_write(&mut self) {
        self.ops_done += 1;
        let Some(g) = self.gateway() else { return };
        let o = oid(self.rng.gen_range(0..OBJECTS));
        let Some(targets) = self.targets(g, o) else {
            return;
        };
        let create = !self.acked.contains_key(&o);
        for &j in &targets {
            if create {
                // A create replaces whatever recovery would bring back.
                if let Some(pass) = self.nodes[j].proc.as_mut().unwrap().pass.as_mut() {
                    if !pass.prepared {
                        return;
                    }
                    pass.queue.retain(|&x| x != o);
                    pass.missing.retain(|&x| x != o);
                }
            } else if !self.ensure(j, o) || !self.nodes[j].disk.working.contains_key(&o) {
                return;
            }
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        for &j in &targets {
            self.nodes[j].disk.working.insert(o, gen);
        }
        self.acked.insert(o, gen);
        self.note(format_args!("write {o:x} gen {gen} via {g} to {targets:?}"));
    }

    /// Reads `o` through gateway `g` as the gateway does (each target in
    /// turn, the first that has it wins).
    fn read_through(&mut self, g: usize, o: u64) -> Option<u64> {
        let targets = self.targets(g, o)?;
        let start = targets.iter().position(|&j| j == g).unwrap_or(0);
        for k in 0..targets.len() {
            let j = targets[(start + k) % targets.len()];
            if self.ensure(j, o) {
                if let Some(&gen) = self.nodes[j].disk.working.get(&o) {
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
        self.note(format_args!("read {o:x} via {g}: {got:?}"));
        match (got, self.acked.get(&o)) {
            (Some(gen), Some(&want)) if gen != want => Err(self.fail(format!(
                "read of {o:x} through node {g} returned generation {gen}, newest acknowledged is {want}"
            ))),
            (Some(gen), None) => Err(self.fail(format!(
                "read of {o:x} returned generation {gen} that was never acknowledged"
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
        let choice = self.rng.gen_range(0..10);
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
            6..=7 if running.len() > 1 => {
                let i = running[self.rng.gen_range(0..running.len())];
                let after = self.rng.gen_range(1..20);
                self.crash(i, after);
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
    /// no acknowledged write may be).
    fn heal(&mut self) {
        self.driver.dying.iter_mut().for_each(|d| d.2 = 1);
        self.notice_deaths();
        for i in 0..self.nodes.len() {
            if self.nodes[i].proc.is_none() {
                self.note(format_args!("heal {i}"));
                self.start(i);
            }
        }
    }

    /// Runs deliveries, death notices and recovery until nothing is left.
    fn settle(&mut self, max_steps: u32) -> Result<(), Failure> {
        for _ in 0..max_steps {
            self.step += 1;
            self.notice_deaths();
            let behind = self
                .running()
                .into_iter()
                .any(|i| self.nodes[i].proc.as_ref().unwrap().cursor < self.driver.log.len());
            if behind {
                self.deliver_one();
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
            if self.driver.dying.is_empty() {
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
        for (&o, &want) in &self.acked.clone() {
            for &g in &running {
                let got = self.read_through(g, o);
                if got != Some(want) {
                    return Err(self.fail(format!(
                        "{o:x} through node {g}: {got:?}, newest acknowledged is {want}"
                    )));
                }
            }
            let targets = ring.targets(o, self.copies);
            let zones: BTreeSet<u32> = targets.iter().map(|n| n.zone).collect();
            if targets.len() != self.copies || zones.len() != self.copies {
                return Err(self.fail(format!("{o:x} has {} targets", targets.len())));
            }
            for t in targets {
                let j = self.index_of(&t.nid).unwrap();
                let held = self.nodes[j].disk.working.get(&o);
                if held != Some(&want) {
                    return Err(self.fail(format!(
                        "replica of {o:x} on node {j}: {held:?}, want {want}"
                    )));
                }
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
        node: SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000 + i),
            nr_vnodes: SD_DEFAULT_VNODES,
            zone: i as u32,
            space: 1 << 40,
        },
        disk: Disk::default(),
        proc: None,
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
        for seed in 0..20 {
            let mut s = Sim::new(cfg(seed));
            s.run().unwrap();
            assert!(s.ops_done >= 800 && s.faults_done >= 12);
            assert!(s.nodes.len() >= 5);
            acked += s.next_gen - 1;
            epochs += s.nodes.iter().map(|n| n.disk.latest_epoch()).max().unwrap() as u64;
            recovered += s.recovered;
        }
        eprintln!(
            "20 runs: {acked} acknowledged writes, {epochs} epochs, {recovered} objects recovered"
        );
        assert!(acked > 20 * 50, "the workload acknowledges writes");
        assert!(epochs > 20 * 5, "the faults change the membership");
        assert!(recovered > 20 * 10, "recovery moves objects");
    }

    /// `SIM_SEEDS=a..b cargo test --release -p sheep soak -- --ignored`
    /// (see scripts/soak.sh).
    #[test]
    #[ignore]
    fn soak() {
        let spec = std::env::var("SIM_SEEDS").unwrap_or_else(|_| "0..1000".into());
        let (a, b) = spec.split_once("..").expect("SIM_SEEDS=a..b");
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let t = std::time::Instant::now();
        let failures = run_seeds(a..b, 5, 12, 800);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{} seeds in {secs:.1} s: {:.1} seeds/s, {} failed",
            b - a,
            (b - a) as f64 / secs,
            failures.len()
        );
        assert!(failures.is_empty(), "{}", report(&failures));
    }

    fn report(failures: &[Failure]) -> String {
        let lines: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        format!("{} failing seeds:\n{}", failures.len(), lines.join("\n"))
    }
}
