//! Component tests' harness: one real node — its cluster core, gateway,
//! peer executor and recovery — among fake peers, on an in-memory store
//! and a [`SteppingClock`], with no sockets and no other process.
//!
//! The fake peers keep their objects in [`MemStore`]s and can be told to
//! misbehave ([`Mode`]): answer an error, stay silent (a timeout), or
//! return reads of the wrong length. Membership changes are the real
//! driver events applied through the node's real event path
//! ([`Sheep::apply_one`]), so the node's view, epochs and effects are
//! those the daemon would have.

use crate::clock::SteppingClock;
use crate::daemon::{Parts, Sheep};
use crate::peer::PeerTransport;
use crate::recovery::{recovery_source, Source};
use crate::server::{reply, reply_data, Reply};
use crate::state::{ClusterState, JoinInfo, OpMessage};
use futures::future::BoxFuture;
use sd_cluster::{Delivered, Driver, Event};
use sd_proto::*;
use sd_store::mem::MemStore;
use sd_store::{ObjKey, ObjectStore};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// How a fake peer answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Executes requests on its store.
    Serve,
    /// Answers every request with this result.
    Answer(SdRes),
    /// Answers the next request with this result, then serves.
    Once(SdRes),
    /// Never answers in time (the transport reports NETWORK_ERROR).
    Silent,
    /// Silent for object reads only (lists and writes are served).
    SilentReads,
    /// Serves, but returns reads one byte short.
    ShortReads,
    /// Serves, but a byte of every object read's payload changes on its
    /// way (after the sender took its checksum).
    GarbledReads,
}

/// One fake sheep.
pub struct FakePeer {
    pub node: SdNode,
    pub store: MemStore,
    mode: Mutex<Mode>,
    /// Every request it was sent, in order.
    calls: Mutex<Vec<SdReq>>,
    /// While set, object writes wait for it before they are served.
    write_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl FakePeer {
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn calls(&self) -> Vec<SdReq> {
        self.calls.lock().unwrap().clone()
    }

    /// Holds object writes sent from now on until the returned gate is
    /// notified (once per write).
    pub fn hold_writes(&self) -> Arc<tokio::sync::Notify> {
        let gate = Arc::new(tokio::sync::Notify::new());
        *self.write_gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    fn answer(&self, req: &SdReq, payload: &[u8]) -> Reply {
        self.calls.lock().unwrap().push(*req);
        let mode = {
            let mut m = self.mode.lock().unwrap();
            let now = *m;
            if let Mode::Once(_) = now {
                *m = Mode::Serve;
            }
            now
        };
        match mode {
            Mode::Answer(r) | Mode::Once(r) => return reply(req, r),
            Mode::Silent => return reply(req, SdRes::NETWORK_ERROR),
            Mode::SilentReads if req.opcode == op::READ_PEER => {
                return reply(req, SdRes::NETWORK_ERROR)
            }
            Mode::Serve | Mode::ShortReads | Mode::SilentReads | Mode::GarbledReads => {}
        }
        let mut r = self.serve(req, payload);
        match r.1.first_mut() {
            Some(_) if mode == Mode::ShortReads => {
                r.1.pop();
            }
            Some(b) if mode == Mode::GarbledReads && req.opcode == op::READ_PEER => *b ^= 1,
            _ => {}
        }
        r
    }

    fn serve(&self, req: &SdReq, payload: &[u8]) -> Reply {
        let o = req.obj();
        let st: &dyn ObjectStore = &self.store;
        let key = ObjKey::replica(o.oid);
        let len = req.data_length as usize;
        let done = match req.opcode {
            op::READ_PEER if req.flags & flag::CMD_RECOVERY != 0 => {
                match recovery_source(st, &key, req.flags, o.tgt_epoch) {
                    Some(Source::Working) => st.read(&key, 0, len),
                    Some(Source::Stale(e)) => st.read_stale(&key, e, 0, len),
                    None => Err(sd_store::StoreError::NoObj),
                }
            }
            op::READ_PEER => st.read(&key, o.offset as u64, len),
            op::WRITE_PEER => st.write(&key, o.offset as u64, payload).map(|_| vec![]),
            op::CREATE_AND_WRITE_PEER => st
                .create_and_write(&key, 0, o.offset as u64, payload)
                .map(|_| vec![]),
            op::REMOVE_PEER => st.remove(&key).map(|_| vec![]),
            op::GET_OBJ_LIST => Ok(st
                .list()
                .unwrap_or_default()
                .iter()
                .flat_map(|k| k.oid.to_le_bytes())
                .collect()),
            _ => Ok(vec![]),
        };
        match done {
            Ok(d) if req.flags & flag::CMD_RECOVERY != 0 => crate::peer::recovery_reply(req, d),
            Ok(d) if d.is_empty() => reply(req, SdRes::SUCCESS),
            Ok(d) => reply_data(req, d),
            Err(e) => reply(req, e.res()),
        }
    }
}

/// The fake network: requests to a fake peer's address reach it.
#[derive(Default)]
pub struct FakePeers {
    peers: Mutex<Vec<Arc<FakePeer>>>,
}

impl FakePeers {
    fn add(&self, node: SdNode) -> Arc<FakePeer> {
        let p = Arc::new(FakePeer {
            node,
            store: MemStore::default(),
            mode: Mutex::new(Mode::Serve),
            calls: Mutex::default(),
            write_gate: Mutex::default(),
        });
        self.peers.lock().unwrap().push(p.clone());
        p
    }
}

impl PeerTransport for FakePeers {
    fn exec<'a>(
        &'a self,
        addr: SocketAddr,
        req: &'a SdReq,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Reply> {
        let peer = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.node.nid.io_socket_addr() == addr)
            .cloned();
        Box::pin(async move {
            // A request takes a scheduling round, as a network hop does.
            tokio::task::yield_now().await;
            let gate = match &peer {
                Some(p) if req.opcode == op::WRITE_PEER => p.write_gate.lock().unwrap().clone(),
                _ => None,
            };
            if let Some(g) = gate {
                g.notified().await;
            }
            match peer {
                Some(p) => p.answer(req, payload),
                None => reply(req, SdRes::NETWORK_ERROR),
            }
        })
    }
}

/// The daemon's options for a node whose directory is `dir` (defaults).
pub fn opts(dir: &str) -> crate::opts::Opts {
    match crate::opts::parse(&[dir.to_string()]) {
        Ok(crate::opts::Parsed::Run(o)) => *o,
        _ => unreachable!("a directory alone is a valid command line"),
    }
}

/// Node `i` of a test cluster: loopback port 7000 + i, zone i.
pub fn node(i: u16) -> SdNode {
    SdNode {
        nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000 + i),
        nr_vnodes: SD_DEFAULT_VNODES,
        zone: i as u32,
        space: 1 << 40,
    }
}

/// The main phase of `dog cluster format -c copies`.
pub fn make_fs(copies: u8) -> OpMessage {
    let mut req = SdReq::new(op::MAKE_FS);
    req.set_cluster(ClusterArgs {
        ctime: 0x1234 << 32,
        copies,
        flags: cluster_flag::AUTO_VNODES,
        ..Default::default()
    });
    let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
    OpMessage {
        req,
        rsp,
        data: b"plain\0".to_vec(),
    }
}

/// A join of a node that was never formatted.
pub fn join(node: SdNode, incarnation: u64) -> Event {
    Event::Join {
        node,
        incarnation,
        opaque: JoinInfo {
            config: SheepdogConfig::default(),
            epoch: 0,
            epoch_nodes: vec![],
        }
        .encode(),
    }
}

/// One real node among fake ones; see the module documentation.
pub struct Harness {
    pub sheep: Arc<Sheep>,
    pub store: Arc<MemStore>,
    pub clock: Arc<SteppingClock>,
    pub peers: Vec<Arc<FakePeer>>,
    network: Arc<FakePeers>,
    seq: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A formatted cluster (`copies` copies) of this node (node 0; a
    /// gateway that stores nothing if `gateway`) and `fakes` fake ones.
    pub async fn new(fakes: u16, copies: u8, gateway: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts(&dir.path().display().to_string());
        opts.gateway = gateway;
        let mut this = node(0);
        if gateway {
            this.nr_vnodes = 0;
            this.space = 0;
        }
        let store = Arc::new(MemStore::default());
        let clock = Arc::new(SteppingClock::default());
        let network = Arc::new(FakePeers::default());
        let shm = dir.path().join("shm").display().to_string();
        let (sheep, _, _) = Sheep::new(Parts {
            opts,
            this,
            store: store.clone(),
            driver: Driver::from_option(&format!("local:{shm}")).unwrap(),
            state: ClusterState::new(this.nid, SheepdogConfig::default()),
            peers: network.clone(),
            clock: clock.clone(),
        });
        let mut h = Harness {
            sheep,
            store,
            clock,
            peers: vec![],
            network,
            seq: 0,
            _dir: dir,
        };
        h.event(join(this, 1)).await;
        for i in 1..=fakes {
            h.add_peer(node(i)).await;
        }
        let nid = this.nid;
        h.event(Event::Notify {
            sender: nid,
            msg: make_fs(copies).encode(),
        })
        .await;
        h
    }

    /// Applies one driver event through the node's event path.
    pub async fn event(&mut self, event: Event) {
        self.seq += 1;
        let d = Delivered {
            seq: self.seq,
            time: self.seq,
            event,
        };
        self.sheep.apply_one(&d).await;
    }

    /// A new fake node joins.
    pub async fn add_peer(&mut self, n: SdNode) -> Arc<FakePeer> {
        let p = self.network.add(n);
        self.peers.push(p.clone());
        self.event(join(n, 100 + self.peers.len() as u64)).await;
        p
    }

    /// Fake node `i` (1-based, as in [`node`]) leaves the cluster.
    pub async fn remove_peer(&mut self, i: u16) {
        let nid = node(i).nid;
        let incarnation = 100 + i as u64;
        self.event(Event::Leave { nid, incarnation }).await;
    }

    pub fn peer(&self, i: u16) -> &Arc<FakePeer> {
        &self.peers[i as usize - 1]
    }

    /// The fake peers that are targets of `oid` in the current view.
    pub fn targets(&self, oid: u64) -> Vec<u16> {
        let v = self.sheep.view();
        v.ring
            .targets(oid, v.copies_of(oid))
            .iter()
            .map(|n| n.nid.port - 7000)
            .collect()
    }
}

/// A soak of a simulation: runs the seeds the environment variable `var`
/// names (`A..B`, else `default`) through `run`, prints how many seeds
/// per second, and returns `run`'s failures.
pub fn soak<T>(
    var: &str,
    default: &str,
    run: impl FnOnce(std::ops::Range<u64>) -> Vec<T>,
) -> Vec<T> {
    let spec = std::env::var(var).unwrap_or_else(|_| default.into());
    let (a, b) = spec
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("{var}=A..B, not {spec}"));
    let t = std::time::Instant::now();
    let failures = run(a..b);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} seeds in {secs:.1} s: {:.2} seeds/s, {} failed",
        b - a,
        (b - a) as f64 / secs,
        failures.len()
    );
    failures
}
