//! The `memory` driver: members in one process, for deterministic
//! simulation of whole clusters (feature `memory`).
//!
//! One [`MemoryBus`] is the ordered stream every member of a simulated
//! cluster reads: an event is appended under the bus's lock and handed to
//! every member's channel in the same order. Crashes are the simulation's
//! to declare ([`MemoryBus::crash`] drops a member's stream at once;
//! [`MemoryBus::notice_death`] appends its LEAVE when the simulated driver
//! notices). Nothing here uses threads or timers, so a simulation on a
//! single-threaded runtime replays exactly.

use crate::event::*;
use crate::{ClusterError, Result};
use sd_proto::*;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct Bus {
    log: Vec<Delivered>,
    /// Members whose stream is open: (nid, incarnation, their channel).
    open: Vec<(NodeId, u64, mpsc::UnboundedSender<Delivered>)>,
    /// Members the stream counts alive (joined, not yet LEAVE'd).
    alive: Vec<(NodeId, u64)>,
    next_incarnation: u64,
    /// The simulated wall clock stamped on events.
    time: u64,
}

/// The stream of one simulated cluster; see the module documentation.
#[derive(Default)]
pub struct MemoryBus {
    bus: Mutex<Bus>,
    block: Arc<tokio::sync::Mutex<()>>,
}

impl MemoryBus {
    fn append(&self, event: Event) -> u64 {
        let mut b = self.bus.lock().unwrap();
        let seq = b.log.last().map_or(0, |d| d.seq) + 1;
        b.time += 1;
        let d = Delivered {
            seq,
            time: b.time,
            event,
        };
        match &d.event {
            Event::Join {
                node, incarnation, ..
            } => b.alive.push((node.nid, *incarnation)),
            Event::Leave { nid, incarnation } => {
                b.alive.retain(|m| m != &(*nid, *incarnation));
            }
            _ => {}
        }
        b.open.retain(|(_, _, tx)| tx.send(d.clone()).is_ok());
        b.log.push(d);
        seq
    }

    /// A member dies: its stream ends now (the driver notices later).
    pub fn crash(&self, nid: &NodeId, incarnation: u64) {
        let mut b = self.bus.lock().unwrap();
        b.open.retain(|m| (m.0, m.1) != (*nid, incarnation));
    }

    /// The driver noticed the death of `nid`'s `incarnation`: its LEAVE.
    pub fn notice_death(&self, nid: NodeId, incarnation: u64) {
        let counted = self.bus.lock().unwrap().alive.contains(&(nid, incarnation));
        if counted {
            self.append(Event::Leave { nid, incarnation });
        }
    }
}

/// One member's handle on a [`MemoryBus`].
pub struct MemoryDriver {
    bus: Arc<MemoryBus>,
    me: Mutex<Option<(NodeId, u64)>>,
}

/// Holds the bus-wide exclusive section until dropped.
pub type MemoryBlockGuard = tokio::sync::OwnedMutexGuard<()>;

impl MemoryDriver {
    pub fn new(bus: Arc<MemoryBus>) -> Self {
        MemoryDriver {
            bus,
            me: Mutex::new(None),
        }
    }

    /// Joins: the stream from its beginning, then everything after. A
    /// member joining a bus where nobody is alive starts a new stream.
    pub async fn join(
        &self,
        node: SdNode,
        opaque: Vec<u8>,
    ) -> Result<mpsc::UnboundedReceiver<Delivered>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let incarnation = {
            let mut b = self.bus.bus.lock().unwrap();
            if b.alive.is_empty() {
                b.log.clear();
            }
            b.next_incarnation += 1;
            let incarnation = b.next_incarnation;
            for d in &b.log {
                let _ = tx.send(d.clone());
            }
            b.open.push((node.nid, incarnation, tx));
            incarnation
        };
        *self.me.lock().unwrap() = Some((node.nid, incarnation));
        self.bus.append(Event::Join {
            node,
            incarnation,
            opaque,
        });
        Ok(rx)
    }

    fn member(&self) -> Result<(NodeId, u64)> {
        self.me.lock().unwrap().ok_or(ClusterError::Stopped)
    }

    pub async fn notify(&self, msg: Vec<u8>) -> Result<u64> {
        let (sender, _) = self.member()?;
        Ok(self.bus.append(Event::Notify { sender, msg }))
    }

    pub async fn update_node(&self, node: SdNode) -> Result<u64> {
        Ok(self.bus.append(Event::UpdateNode { node }))
    }

    pub async fn block(&self) -> Result<MemoryBlockGuard> {
        Ok(self.bus.block.clone().lock_owned().await)
    }

    pub async fn stream_end(&self) -> Result<u64> {
        Ok(self.bus.bus.lock().unwrap().log.last().map_or(0, |d| d.seq))
    }

    pub async fn leave(&self) -> Result<()> {
        if let Some((nid, incarnation)) = self.me.lock().unwrap().take() {
            self.bus.append(Event::Leave { nid, incarnation });
            self.bus.crash(&nid, incarnation);
        }
        Ok(())
    }

    pub fn contact(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    pub fn incarnation(&self) -> Option<u64> {
        self.me.lock().unwrap().map(|m| m.1)
    }
}
