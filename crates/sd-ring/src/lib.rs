//! Consistent-hash placement (PROTOCOL.md §7): virtual nodes on a ring of
//! u64 FNV hashes, and oid → ordered target list with no two copies in one
//! zone. Pure and deterministic: every sheep and dog computes the same
//! targets from the same node list.

use sd_proto::*;

/// The ring built from one membership view.
///
/// Built once per epoch and shared read-only (behind an `Arc`) by every
/// request of that epoch, so lookups are a binary search plus a short walk
/// and never allocate more than the result.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<SdNode>,
    /// (vnode hash, index into `nodes`), sorted by hash.
    vnodes: Vec<(u64, u32)>,
    nr_zones: usize,
}

impl Ring {
    /// Builds the ring; gateways (0 vnodes) are members but own no vnodes.
    pub fn new(nodes: &[SdNode]) -> Ring {
        let mut nodes = nodes.to_vec();
        nodes.sort_by_key(|n| n.nid);
        let mut vnodes = Vec::with_capacity(nodes.iter().map(|n| n.nr_vnodes as usize).sum());
        for (i, n) in nodes.iter().enumerate() {
            let mut h = sd_hash(&n.nid.hash_key());
            for _ in 0..n.nr_vnodes {
                h = sd_hash_next(h);
                vnodes.push((h, i as u32));
            }
        }
        vnodes.sort_unstable();
        let mut zones: Vec<u32> = nodes
            .iter()
            .filter(|n| n.nr_vnodes > 0)
            .map(|n| n.zone)
            .collect();
        zones.sort_unstable();
        zones.dedup();
        Ring {
            nodes,
            vnodes,
            nr_zones: zones.len().min(SD_MAX_COPIES as usize),
        }
    }

    /// All members in node order (gateways included).
    pub fn nodes(&self) -> &[SdNode] {
        &self.nodes
    }

    /// Distinct zones among storage nodes, capped at 31.
    pub fn nr_zones(&self) -> usize {
        self.nr_zones
    }

    /// True if no node stores data.
    pub fn is_empty(&self) -> bool {
        self.vnodes.is_empty()
    }

    /// The ordered targets of `oid` for `copies` requested copies
    /// (capped by the number of zones).
    pub fn targets(&self, oid: u64, copies: usize) -> Vec<&SdNode> {
        let nr = copies.min(self.nr_zones);
        let mut out: Vec<&SdNode> = Vec::with_capacity(nr);
        if nr == 0 {
            return out;
        }
        let hv = sd_hash_oid(oid);
        let start = self.vnodes.partition_point(|&(h, _)| h < hv);
        let len = self.vnodes.len();
        for k in 0..len {
            let (_, ni) = self.vnodes[(start + k) % len];
            let n = &self.nodes[ni as usize];
            if out.iter().all(|o| o.zone != n.zone) {
                out.push(n);
                if out.len() == nr {
                    break;
                }
            }
        }
        out
    }

    /// Index of `nid` in the target list of `oid`, if it is a target.
    pub fn target_index(&self, oid: u64, copies: usize, nid: &NodeId) -> Option<usize> {
        self.targets(oid, copies).iter().position(|n| n.nid == *nid)
    }
}

/// Recomputes vnode counts for AUTO_VNODES clusters:
/// `round_half_even(128 × space / avg_space)` over nodes with space > 0.
pub fn auto_vnodes(nodes: &mut [SdNode]) {
    let storing: Vec<u64> = nodes
        .iter()
        .filter(|n| n.space > 0)
        .map(|n| n.space)
        .collect();
    if storing.is_empty() {
        return;
    }
    let avg = storing.iter().map(|&s| s as f64).sum::<f64>() / storing.len() as f64;
    for n in nodes.iter_mut().filter(|n| n.space > 0) {
        let v = (SD_DEFAULT_VNODES as f64 * n.space as f64 / avg).round_ties_even();
        n.nr_vnodes = v.clamp(1.0, u16::MAX as f64) as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(port: u16, zone: u32) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone,
            space: 1 << 30,
        }
    }

    #[test]
    fn placement_vectors() {
        let ring = Ring::new(&[node(7000, 0), node(7001, 1), node(7002, 2)]);
        assert_eq!(ring.vnodes.len(), 384);
        assert_eq!(ring.vnodes[0].0, 0x00b704b9ac372d87);
        assert_eq!(ring.vnodes[1].0, 0x01551faf632459d4);
        assert_eq!(ring.vnodes[2].0, 0x01a31d93db0e205c);
        let ports = |oid| {
            ring.targets(oid, 3)
                .iter()
                .map(|n| n.nid.port)
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(0x807c2b2500000000), [7002, 7001, 7000]);
        assert_eq!(ports(0x007c2b2500000000), [7001, 7000, 7002]);
        assert_eq!(ports(0x007c2b2500000001), [7000, 7001, 7002]);
        assert_eq!(ports(0x0000000100000000), [7002, 7001, 7000]);
    }

    #[test]
    fn auto_vnodes_equal_space() {
        let mut ns = vec![node(7000, 0), node(7001, 1)];
        ns[1].space = 3 << 30;
        auto_vnodes(&mut ns);
        assert_eq!(ns[0].nr_vnodes, 64);
        assert_eq!(ns[1].nr_vnodes, 192);
    }

    proptest! {
        #[test]
        fn distinct_zones_and_count(nr in 1usize..10, zones in 1u32..6, copies in 1usize..8, oid in any::<u64>()) {
            let nodes: Vec<SdNode> = (0..nr).map(|i| node(7000 + i as u16, i as u32 % zones)).collect();
            let ring = Ring::new(&nodes);
            let t = ring.targets(oid, copies);
            prop_assert_eq!(t.len(), copies.min(ring.nr_zones()));
            let mut z: Vec<u32> = t.iter().map(|n| n.zone).collect();
            z.sort();
            z.dedup();
            prop_assert_eq!(z.len(), t.len());
        }

        #[test]
        fn unrelated_join_moves_at_most_one_slot(nr in 3usize..8, oid in any::<u64>()) {
            // With every node in its own zone, a joining node can only take
            // over positions; the relative order of the old targets stays.
            let nodes: Vec<SdNode> = (0..nr).map(|i| node(7000 + i as u16, i as u32)).collect();
            let before: Vec<u16> = Ring::new(&nodes).targets(oid, 3).iter().map(|n| n.nid.port).collect();
            let mut more = nodes.clone();
            more.push(node(7100, 100));
            let after: Vec<u16> = Ring::new(&more).targets(oid, 3).iter().map(|n| n.nid.port).collect();
            let kept: Vec<u16> = after.iter().copied().filter(|p| *p != 7100).collect();
            prop_assert_eq!(&kept[..], &before[..kept.len()]);
            prop_assert!(before.len() - kept.len() <= 1);
        }
    }
}
