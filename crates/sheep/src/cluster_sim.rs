//! Deterministic simulation of whole clusters made of the daemon's real
//! components.
//!
//! Every node is a real [`Sheep`] — cluster core, gateway, peer executor,
//! recovery, reclaim and VDI-sync workers — on an in-memory store, joined
//! through the in-process cluster driver ([`MemoryBus`]), and reaching its
//! peers through a simulated network that calls their real request
//! handler. Everything runs on one thread with tokio's clock paused, so
//! time passes only when every task waits, and a seed replays exactly
//! (compared by the hash of everything that happened).
//!
//! A seeded workload writes and reads the objects of one VDI through
//! random nodes, while nodes crash (their disks kept; the driver notices
//! after a while), restart, stop cleanly, lose links (partitions) and get
//! disk errors (each takes its node out, as a failed disk does; the
//! errors are transient, so the node comes back later). Checked:
//! a read never returns an older generation than the newest acknowledged
//! before it began, nor one never written; once faults stop and recovery
//! settles, every object reads back through every node at its newest
//! acknowledged generation (or a later one whose write failed), and every
//! target of the final placement holds it.
//!
//! What the simulation of the cluster core and recovery rules alone
//! (`sim.rs`) covers in far more seeds, this covers with the real code.

use crate::clock::SystemClock;
use crate::daemon::{Parts, Sheep};
use crate::peer::PeerTransport;
use crate::server::{reply, Reply};
use crate::state::ClusterState;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sd_cluster::memory::{MemoryBus, MemoryDriver};
use sd_cluster::Driver;
use sd_proto::*;
use sd_store::mem::MemStore;
use sd_store::ObjectStore;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const OBJECTS: u64 = 12;
const COPIES: u8 = 3;

fn oid(k: u64) -> u64 {
    vid_to_data_oid(0x5eed, k)
}

/// The simulated network: which node runs at each address, and which
/// links are cut.
#[derive(Default)]
struct Net {
    running: Mutex<Vec<Option<Arc<Sheep>>>>,
    /// Requests each node is executing (its crash aborts them: a dead
    /// process finishes nothing).
    serving: Mutex<Vec<Vec<tokio::task::AbortHandle>>>,
    addrs: BTreeMap<SocketAddr, usize>,
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

impl Net {
    fn node(&self, i: usize) -> Option<Arc<Sheep>> {
        self.running.lock().unwrap()[i].clone()
    }
}

/// One node's way out onto the simulated network.
struct Port {
    net: Arc<Net>,
    from: usize,
}

impl PeerTransport for Port {
    fn exec<'a>(
        &'a self,
        addr: SocketAddr,
        req: &'a SdReq,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let Some(&to) = self.net.addrs.get(&addr) else {
                return reply(req, SdRes::NETWORK_ERROR);
            };
            let link = (self.from.min(to), self.from.max(to));
            if self.net.cut.lock().unwrap().contains(&link) {
                return reply(req, SdRes::NETWORK_ERROR);
            }
            let Some(target) = self.net.node(to) else {
                return reply(req, SdRes::NETWORK_ERROR);
            };
            let (r, p) = (*req, payload.to_vec());
            let served = tokio::spawn(async move { crate::server::handle(&target, r, p).await });
            {
                let mut serving = self.net.serving.lock().unwrap();
                serving[to].retain(|h| !h.is_finished());
                serving[to].push(served.abort_handle());
            }
            served
                .await
                .unwrap_or_else(|_| reply(req, SdRes::NETWORK_ERROR))
        })
    }
}

/// What the clients did to one object.
#[derive(Default)]
struct History {
    /// Newest acknowledged generation.
    acked: u64,
    /// Every generation ever sent (acknowledged or not).
    issued: BTreeSet<u64>,
    /// Whether a write is in flight (one at a time per object).
    writing: bool,
}

#[derive(Default)]
struct Book {
    objects: BTreeMap<u64, History>,
    log: Vec<String>,
    failures: Vec<String>,
}

struct Cluster {
    seed: u64,
    rng: StdRng,
    net: Arc<Net>,
    bus: Arc<MemoryBus>,
    nodes: Vec<SdNode>,
    stores: Vec<Arc<MemStore>>,
    book: Arc<Mutex<Book>>,
    /// In-flight client requests per gateway (a crash aborts them).
    clients: Vec<Vec<JoinHandle<()>>>,
    next_gen: u64,
}

impl Cluster {
    fn new(seed: u64, n: usize) -> Cluster {
        let nodes: Vec<SdNode> = (0..n as u16).map(crate::testing::node).collect();
        let net = Net {
            running: Mutex::new(vec![None; n]),
            serving: Mutex::new(vec![Vec::new(); n]),
            addrs: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.nid.socket_addr(), i))
                .collect(),
            cut: Mutex::default(),
        };
        Cluster {
            seed,
            rng: StdRng::seed_from_u64(seed),
            net: Arc::new(net),
            bus: Arc::default(),
            nodes,
            stores: (0..n).map(|_| Arc::default()).collect(),
            book: Arc::default(),
            clients: (0..n).map(|_| Vec::new()).collect(),
            next_gen: 1,
        }
    }

    fn note(&self, what: String) {
        self.book.lock().unwrap().log.push(what);
        if let Some(k) = std::env::var("CLUSTER_SIM_FOCUS")
            .ok()
            .and_then(|k| k.parse().ok())
        {
            let key = sd_store::ObjKey::replica(oid(k));
            let gen = |d: Vec<u8>| u64::from_le_bytes(d[..8].try_into().unwrap());
            for (i, st) in self.stores.iter().enumerate() {
                let (working, stale) = st.peek(&key);
                let working = working.map(gen);
                let stale: Vec<(u32, u64)> = stale.into_iter().map(|(e, d)| (e, gen(d))).collect();
                let epoch = self.net.node(i).map(|s| s.epoch());
                self.book.lock().unwrap().log.push(format!(
                    "    node {i} epoch {epoch:?}: working {working:?} stale {stale:?}"
                ));
            }
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.net.node(i).is_some())
            .collect()
    }

    async fn start(&mut self, i: usize) {
        let store: Arc<dyn ObjectStore> = self.stores[i].clone();
        let config = store.read_config().unwrap().unwrap_or_default();
        let driver = Driver::Memory(Arc::new(MemoryDriver::new(self.bus.clone())));
        let opts = crate::testing::opts("/nonexistent");
        let this = self.nodes[i];
        let (sheep, join) = Sheep::boot(
            Parts {
                opts,
                this,
                store,
                driver: driver.clone(),
                state: ClusterState::new(this.nid, SheepdogConfig::default()),
                peers: Arc::new(Port {
                    net: self.net.clone(),
                    from: i,
                }),
                clock: Arc::new(SystemClock),
            },
            config,
        )
        .unwrap();
        let rx = driver.join(this, join.encode()).await.unwrap();
        sheep.follow(rx);
        self.net.running.lock().unwrap()[i] = Some(sheep);
        self.note(format!("start {i}"));
    }

    /// The process dies at once; its disk stays; the driver notices later.
    fn crash(&mut self, i: usize) {
        let Some(sheep) = self.net.running.lock().unwrap()[i].take() else {
            return;
        };
        sheep.workers.stop();
        for c in self.clients[i].drain(..) {
            c.abort();
        }
        for h in self.net.serving.lock().unwrap()[i].drain(..) {
            h.abort();
        }
        let nid = sheep.this.nid;
        let incarnation = sheep.driver.incarnation().unwrap_or(0);
        self.bus.crash(&nid, incarnation);
        let bus = self.bus.clone();
        let after = Duration::from_millis(self.rng.gen_range(50..3000));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            bus.notice_death(nid, incarnation);
        });
        self.note(format!("crash {i}"));
    }

    /// A clean stop (SIGTERM): the node leaves the cluster.
    async fn stop(&mut self, i: usize) {
        let Some(sheep) = self.net.running.lock().unwrap()[i].take() else {
            return;
        };
        sheep
            .leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        sheep.workers.stop();
        for c in self.clients[i].drain(..) {
            c.abort();
        }
        let _ = sheep.driver.leave().await;
        self.note(format!("stop {i}"));
    }

    /// Nodes that asked to exit (their disk failed) are stopped.
    async fn reap(&mut self) {
        for i in self.running() {
            let asked = self.net.node(i).is_some_and(|s| s.exit.borrow().is_some());
            if asked {
                self.stop(i).await;
            }
        }
    }

    fn gateway(&mut self) -> Option<usize> {
        let up: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| {
                let v = self.net.node(i).unwrap().view();
                v.joined && v.status == crate::state::Status::Ok
            })
            .collect();
        (!up.is_empty()).then(|| up[self.rng.gen_range(0..up.len())])
    }

    fn client_write(&mut self) {
        let Some(g) = self.gateway() else { return };
        let k = self.rng.gen_range(0..OBJECTS);
        let gen = self.next_gen;
        let create = {
            let mut b = self.book.lock().unwrap();
            let h = b.objects.entry(k).or_default();
            if h.writing {
                return;
            }
            h.writing = true;
            h.issued.insert(gen);
            h.acked == 0
        };
        self.next_gen += 1;
        let sheep = self.net.node(g).unwrap();
        let book = self.book.clone();
        self.clients[g].push(tokio::spawn(async move {
            let data = gen.to_le_bytes().to_vec();
            let r = match create {
                true => crate::gateway::create(&sheep, oid(k), 0, data, 0).await,
                false => crate::gateway::write(&sheep, oid(k), 0, data, 0).await,
            };
            let mut b = book.lock().unwrap();
            let h = b.objects.get_mut(&k).unwrap();
            h.writing = false;
            if r.is_ok() {
                h.acked = gen;
            }
            b.log.push(format!("write {k} gen {gen} via {g}: {r:?}"));
        }));
    }

    fn client_read(&mut self) {
        let Some(g) = self.gateway() else { return };
        let k = self.rng.gen_range(0..OBJECTS);
        let floor = self
            .book
            .lock()
            .unwrap()
            .objects
            .get(&k)
            .map_or(0, |h| h.acked);
        let sheep = self.net.node(g).unwrap();
        let book = self.book.clone();
        self.clients[g].push(tokio::spawn(async move {
            let r = crate::gateway::read(&sheep, oid(k), 0, 8, 0).await;
            let mut b = book.lock().unwrap();
            if let Ok(d) = &r {
                let got = u64::from_le_bytes(d[..8].try_into().unwrap());
                let issued = b.objects.get(&k).is_some_and(|h| h.issued.contains(&got));
                if got < floor || !issued {
                    let what = format!(
                        "read of object {k} via node {g} returned generation {got}; \
                         newest acknowledged before the read: {floor}"
                    );
                    b.failures.push(what);
                }
            }
            b.log.push(format!("read {k} via {g}: {r:?}"));
        }));
    }

    async fn fault(&mut self) {
        let running = self.running();
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !running.contains(i))
            .collect();
        match self.rng.gen_range(0..6) {
            0 | 1 if !down.is_empty() => {
                let i = down[self.rng.gen_range(0..down.len())];
                self.start(i).await;
            }
            2 if running.len() > COPIES as usize => {
                let i = running[self.rng.gen_range(0..running.len())];
                self.crash(i);
            }
            3 if running.len() > COPIES as usize => {
                let i = running[self.rng.gen_range(0..running.len())];
                self.stop(i).await;
            }
            4 => {
                let a = self.rng.gen_range(0..self.nodes.len());
                let b = self.rng.gen_range(0..self.nodes.len());
                if a != b {
                    let link = (a.min(b), a.max(b));
                    self.net.cut.lock().unwrap().insert(link);
                    self.note(format!("cut {link:?}"));
                    let net = self.net.clone();
                    let heal = Duration::from_millis(self.rng.gen_range(100..2000));
                    tokio::spawn(async move {
                        tokio::time::sleep(heal).await;
                        net.cut.lock().unwrap().remove(&link);
                    });
                }
            }
            5 if !running.is_empty() => {
                let i = running[self.rng.gen_range(0..running.len())];
                let n = self.rng.gen_range(1..3);
                self.stores[i].fail_next(n);
                self.note(format!("disk errors on {i}: {n}"));
            }
            _ => {}
        }
    }

    /// Whether every node runs, at one epoch, with nothing to recover.
    fn settled(&self) -> bool {
        let all: Vec<Arc<Sheep>> = (0..self.nodes.len())
            .filter_map(|i| self.net.node(i))
            .collect();
        all.len() == self.nodes.len()
            && all.iter().all(|s| {
                let v = s.view();
                v.status == crate::state::Status::Ok
                    && v.epoch == all[0].view().epoch
                    && v.nodes.len() == self.nodes.len()
                    && !s.recovery.state(v.epoch).in_recovery
            })
            && self.clients.iter().flatten().all(|c| c.is_finished())
    }

    async fn run(&mut self, ops: usize) -> Result<u64, String> {
        for i in 0..self.nodes.len() {
            self.start(i).await;
        }
        let first = self.net.node(0).unwrap();
        let mut fs = crate::testing::make_fs(COPIES);
        let mut args = fs.req.cluster();
        args.block_size_shift = 16;
        fs.req.set_cluster(args);
        first.driver.notify(fs.encode()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..ops {
            match self.rng.gen_range(0..100) {
                0..=49 => self.client_write(),
                50..=89 => self.client_read(),
                _ => self.fault().await,
            }
            let pause = Duration::from_millis(self.rng.gen_range(0..30));
            tokio::time::sleep(pause).await;
            self.reap().await;
        }
        // Faults stop: every node comes back, links heal.
        self.net.cut.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.reap().await;
        for i in 0..self.nodes.len() {
            if self.net.node(i).is_none() {
                self.start(i).await;
            }
        }
        let mut waited = 0;
        while !self.settled() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // A node whose disk failed meanwhile is replaced by its
            // restart (the disk errors injected here are transient).
            self.reap().await;
            for i in 0..self.nodes.len() {
                if self.net.node(i).is_none() {
                    self.start(i).await;
                }
            }
            waited += 1;
            if waited > 3000 {
                return Err("the cluster did not settle within 10 minutes".into());
            }
        }
        self.note("settled".into());
        self.check_final().await?;
        if let Some(f) = self.book.lock().unwrap().failures.first() {
            return Err(f.clone());
        }
        if let Ok(path) = std::env::var("CS_DUMP") {
            let n = std::fs::read_dir("/tmp").unwrap().count();
            std::fs::write(
                format!("{path}.{n}"),
                self.book.lock().unwrap().log.join("\n"),
            )
            .unwrap();
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.book.lock().unwrap().log {
            for b in line.bytes().chain([b'\n']) {
                hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        Ok(hash)
    }

    async fn check_final(&self) -> Result<(), String> {
        let objects: Vec<(u64, u64, BTreeSet<u64>)> = self
            .book
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(_, h)| h.acked > 0)
            .map(|(&k, h)| (k, h.acked, h.issued.clone()))
            .collect();
        for (k, acked, issued) in objects {
            for i in 0..self.nodes.len() {
                let sheep = self.net.node(i).unwrap();
                let got = crate::gateway::read(&sheep, oid(k), 0, 8, 0)
                    .await
                    .map(|d| u64::from_le_bytes(d[..8].try_into().unwrap()));
                match got {
                    Ok(g) if g >= acked && issued.contains(&g) => {}
                    other => {
                        return Err(format!(
                            "object {k} through node {i}: {other:?}, newest acknowledged {acked}"
                        ))
                    }
                }
            }
            let v = self.net.node(0).unwrap().view();
            for t in v.ring.targets(oid(k), COPIES as usize) {
                let i = self.net.addrs[&t.nid.socket_addr()];
                if !self.stores[i].exists(&sd_store::ObjKey::replica(oid(k))) {
                    return Err(format!("object {k} missing on its target node {i}"));
                }
            }
        }
        Ok(())
    }
}

/// Runs seed `seed`: the hash of its history, or what went wrong.
fn run_seed(seed: u64, nodes: usize, ops: usize) -> Result<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .unwrap();
    let mut c = Cluster::new(seed, nodes);
    let r = rt.block_on(c.run(ops));
    if r.is_err() && std::env::var_os("CLUSTER_SIM_TRACE").is_some() {
        for line in &c.book.lock().unwrap().log {
            eprintln!("{line}");
        }
    }
    r.map_err(|e| format!("seed {}: {e}", c.seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_nodes_keep_every_acknowledged_write() {
        let failures: Vec<String> = (0..20).filter_map(|s| run_seed(s, 5, 300).err()).collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// `CLUSTER_SIM_SEEDS=A..B CLUSTER_SIM_TRACE=1 cargo test -p sheep
    /// cluster_sim::tests::soak -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn soak() {
        let seeds = std::env::var("CLUSTER_SIM_SEEDS").unwrap_or("0..100".into());
        let (a, b) = seeds.split_once("..").unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let failures: Vec<String> = (a..b).filter_map(|s| run_seed(s, 5, 300).err()).collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn a_seed_replays_identically() {
        assert_eq!(run_seed(7, 5, 200), run_seed(7, 5, 200));
    }
}
