//! Node identity (`node_id`, `sd_node`, §7.1).

use crate::le::*;
use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const NODE_ID_SIZE: usize = 40;
pub const SD_NODE_SIZE: usize = 80;

/// Where a sheep listens: its public address and, optionally, a separate
/// address for peer I/O. IPv4 is stored as 12 zero bytes + 4 address bytes,
/// exactly as the original, because the node hash covers these bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct NodeId {
    pub addr: [u8; 16],
    pub port: u16,
    pub io_addr: [u8; 16],
    pub io_port: u16,
}

/// Converts an IP address to the 16-byte on-wire form.
pub fn ip_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[12..].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Converts the 16-byte on-wire form back to an IP address.
pub fn bytes_to_ip(a: &[u8; 16]) -> IpAddr {
    if a[..12].iter().all(|&b| b == 0) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

impl NodeId {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        NodeId {
            addr: ip_to_bytes(ip),
            port,
            io_addr: [0; 16],
            io_port: 0,
        }
    }
    pub fn decode(b: &[u8]) -> Self {
        NodeId {
            addr: b[0..16].try_into().unwrap(),
            port: u16_at(b, 16),
            io_addr: b[18..34].try_into().unwrap(),
            io_port: u16_at(b, 34),
        }
    }
    pub fn encode_into(&self, b: &mut [u8]) {
        b[0..16].copy_from_slice(&self.addr);
        put_u16(b, 16, self.port);
        b[18..34].copy_from_slice(&self.io_addr);
        put_u16(b, 34, self.io_port);
        b[36..40].fill(0);
    }
    pub fn ip(&self) -> IpAddr {
        bytes_to_ip(&self.addr)
    }
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }
    /// The address peers use for I/O: the io address if one is advertised.
    pub fn io_socket_addr(&self) -> SocketAddr {
        if self.io_port != 0 && self.io_addr != [0; 16] {
            SocketAddr::new(bytes_to_ip(&self.io_addr), self.io_port)
        } else {
            self.socket_addr()
        }
    }
    /// The first 18 bytes (address + port) that feed the vnode hash.
    pub fn hash_key(&self) -> [u8; 18] {
        let mut k = [0u8; 18];
        k[..16].copy_from_slice(&self.addr);
        k[16..].copy_from_slice(&self.port.to_le_bytes());
        k
    }
    /// `<ip>:<port>` as dog prints it (IPv6 without brackets).
    pub fn to_addr_string(&self) -> String {
        format!("{}:{}", self.ip(), self.port)
    }
    /// `IPv4 ip:127.0.0.1 port:7000` form used in locks and znodes.
    pub fn to_node_string(&self) -> String {
        match self.ip() {
            IpAddr::V4(a) => format!("IPv4 ip:{} port:{}", a, self.port),
            IpAddr::V6(a) => format!("IPv6 ip:{} port:{}", a, self.port),
        }
    }
    /// The default zone: the last 4 address bytes read little-endian.
    pub fn default_zone(&self) -> u32 {
        u32_at(&self.addr, 12)
    }
}

impl Ord for NodeId {
    /// Node order of the original: memcmp of the address, then the port.
    fn cmp(&self, o: &Self) -> Ordering {
        self.addr.cmp(&o.addr).then(self.port.cmp(&o.port))
    }
}
impl PartialOrd for NodeId {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A cluster member as carried in node lists, epochs and cluster_info.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SdNode {
    pub nid: NodeId,
    pub nr_vnodes: u16,
    pub zone: u32,
    /// Bytes of storage; 0 for a gateway.
    pub space: u64,
}

impl SdNode {
    /// Decodes 80 bytes; the 24 leading bytes of tree linkage are ignored.
    pub fn decode(b: &[u8]) -> Self {
        SdNode {
            nid: NodeId::decode(&b[24..64]),
            nr_vnodes: u16_at(b, 64),
            zone: u32_at(b, 68),
            space: u64_at(b, 72),
        }
    }
    pub fn encode_into(&self, b: &mut [u8]) {
        b[..24].fill(0);
        self.nid.encode_into(&mut b[24..64]);
        put_u16(b, 64, self.nr_vnodes);
        b[66..68].fill(0);
        put_u32(b, 68, self.zone);
        put_u64(b, 72, self.space);
    }
    pub fn encode(&self) -> [u8; SD_NODE_SIZE] {
        let mut b = [0u8; SD_NODE_SIZE];
        self.encode_into(&mut b);
        b
    }
    pub fn is_gateway(&self) -> bool {
        self.nr_vnodes == 0
    }
}

/// Encodes a node list as consecutive 80-byte records.
pub fn encode_nodes(nodes: &[SdNode]) -> Vec<u8> {
    let mut v = vec![0u8; nodes.len() * SD_NODE_SIZE];
    for (i, n) in nodes.iter().enumerate() {
        n.encode_into(&mut v[i * SD_NODE_SIZE..(i + 1) * SD_NODE_SIZE]);
    }
    v
}

/// Decodes as many whole 80-byte node records as `b` holds.
pub fn decode_nodes(b: &[u8]) -> Vec<SdNode> {
    b.chunks_exact(SD_NODE_SIZE).map(SdNode::decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv4_layout_and_zone() {
        let n = NodeId::new("127.0.0.1".parse().unwrap(), 7000);
        assert_eq!(&n.hash_key()[12..], &[127, 0, 0, 1, 0x58, 0x1b]);
        assert_eq!(n.default_zone(), 0x0100007f);
        assert_eq!(n.to_addr_string(), "127.0.0.1:7000");
        assert_eq!(n.to_node_string(), "IPv4 ip:127.0.0.1 port:7000");
    }

    #[test]
    fn sd_node_offsets() {
        let n = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7001),
            nr_vnodes: 128,
            zone: 5,
            space: 1 << 40,
        };
        let b = n.encode();
        assert_eq!(&b[24 + 12..24 + 16], &[127, 0, 0, 1]);
        assert_eq!(u16_at(&b, 24 + 16), 7001);
        assert_eq!(u16_at(&b, 64), 128);
        assert_eq!(u32_at(&b, 68), 5);
        assert_eq!(u64_at(&b, 72), 1 << 40);
        assert_eq!(SdNode::decode(&b), n);
    }

    proptest! {
        #[test]
        fn decode_nodes_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..400)) {
            let nodes = decode_nodes(&v);
            prop_assert_eq!(nodes.len(), v.len() / SD_NODE_SIZE);
            let again = decode_nodes(&encode_nodes(&nodes));
            prop_assert_eq!(again, nodes);
        }
    }
}
