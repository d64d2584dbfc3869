//! Events of the ordered stream and their byte encoding.

use sd_proto::le::*;
use sd_proto::*;

/// One membership or broadcast event, as every member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node asks to join; `opaque` is the joiner's own view (its config
    /// and last epoch) that the daemon's join rule judges.
    Join {
        node: SdNode,
        incarnation: u64,
        opaque: Vec<u8>,
    },
    /// A node left (cleanly, or detected dead).
    Leave { nid: NodeId, incarnation: u64 },
    /// A broadcast message (a cluster operation's main phase).
    Notify { sender: NodeId, msg: Vec<u8> },
    /// A member's node record changed (space, vnodes).
    UpdateNode { node: SdNode },
}

/// An event with its position in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Strictly increasing position; `wait_applied(seq)`-style callers use it.
    pub seq: u64,
    /// Wall-clock seconds when the event was appended (same on all nodes).
    pub time: u64,
    pub event: Event,
}

const T_JOIN: u8 = 1;
const T_LEAVE: u8 = 2;
const T_NOTIFY: u8 = 3;
const T_UPDATE: u8 = 4;

/// Largest encoded event accepted (a cluster message is at most 128 KiB
/// plus headers; joins carry a small opaque).
pub const MAX_EVENT_SIZE: usize = 1 << 20;

impl Event {
    pub fn encode(&self, time: u64) -> Vec<u8> {
        let mut b = vec![0u8; 9];
        put_u64(&mut b, 0, time);
        match self {
            Event::Join {
                node,
                incarnation,
                opaque,
            } => {
                b[8] = T_JOIN;
                b.extend_from_slice(&node.encode());
                b.extend_from_slice(&incarnation.to_le_bytes());
                b.extend_from_slice(opaque);
            }
            Event::Leave { nid, incarnation } => {
                b[8] = T_LEAVE;
                let mut n = [0u8; NODE_ID_SIZE];
                nid.encode_into(&mut n);
                b.extend_from_slice(&n);
                b.extend_from_slice(&incarnation.to_le_bytes());
            }
            Event::Notify { sender, msg } => {
                b[8] = T_NOTIFY;
                let mut n = [0u8; NODE_ID_SIZE];
                sender.encode_into(&mut n);
                b.extend_from_slice(&n);
                b.extend_from_slice(msg);
            }
            Event::UpdateNode { node } => {
                b[8] = T_UPDATE;
                b.extend_from_slice(&node.encode());
            }
        }
        b
    }

    /// Decodes (time, event); None for anything malformed.
    pub fn decode(b: &[u8]) -> Option<(u64, Event)> {
        if b.len() < 9 {
            return None;
        }
        let time = u64_at(b, 0);
        let p = &b[9..];
        let ev = match b[8] {
            T_JOIN if p.len() >= SD_NODE_SIZE + 8 => Event::Join {
                node: SdNode::decode(&p[..SD_NODE_SIZE]),
                incarnation: u64_at(p, SD_NODE_SIZE),
                opaque: p[SD_NODE_SIZE + 8..].to_vec(),
            },
            T_LEAVE if p.len() == NODE_ID_SIZE + 8 => Event::Leave {
                nid: NodeId::decode(&p[..NODE_ID_SIZE]),
                incarnation: u64_at(p, NODE_ID_SIZE),
            },
            T_NOTIFY if p.len() >= NODE_ID_SIZE => Event::Notify {
                sender: NodeId::decode(&p[..NODE_ID_SIZE]),
                msg: p[NODE_ID_SIZE..].to_vec(),
            },
            T_UPDATE if p.len() == SD_NODE_SIZE => Event::UpdateNode {
                node: SdNode::decode(p),
            },
            _ => return None,
        };
        Some((time, ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let node = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000),
            nr_vnodes: 128,
            zone: 3,
            space: 7,
        };
        for ev in [
            Event::Join {
                node,
                incarnation: 9,
                opaque: vec![1, 2, 3],
            },
            Event::Leave {
                nid: node.nid,
                incarnation: 9,
            },
            Event::Notify {
                sender: node.nid,
                msg: vec![5; 100],
            },
            Event::UpdateNode { node },
        ] {
            assert_eq!(Event::decode(&ev.encode(42)), Some((42, ev)));
        }
    }

    proptest! {
        #[test]
        fn decode_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some((t, ev)) = Event::decode(&v) {
                prop_assert_eq!(Event::decode(&ev.encode(t)), Some((t, ev)));
            }
        }
    }
}
