//! `dog node md info|plug|unplug` (CLI.md §2.2.5): the disks of a
//! multi-disk sheep, and adding or removing disks at run time.
//!
//! MD_INFO answers with the original's `struct sd_md_info`: 64 fixed
//! entries of `{idx i32 @0, free u64 @8, used u64 @16, path[4096] @24}`
//! (4120 bytes each), then the count `nr` (C `int`). MD_PLUG / MD_UNPLUG
//! carry the comma-separated directory list as a NUL-terminated string.

use super::node::use_pct;
use super::ret;
use crate::app::{confirm, Ctx};
use crate::out::Msg;
use crate::text::strnumber;
use crate::{err, out, Res};
use sd_proto::le::{cstr, u32_at, u64_at};
use sd_proto::{flag, op, NodeId, SdReq};
use std::net::SocketAddr;

/// Most disks one reply describes (`MD_MAX_DISK`).
const MD_MAX_DISK: usize = 64;
/// Bytes of one `struct md_info` entry.
const MD_ENTRY_SIZE: usize = 4120;
/// Bytes of the path field of an entry.
const MD_PATH_LEN: usize = 4096;
/// Offset of `nr` after the entries.
const MD_NR_OFFSET: usize = MD_MAX_DISK * MD_ENTRY_SIZE;
/// `sizeof(struct sd_md_info)`: the entries, `nr` and the tail padding.
const MD_INFO_SIZE: usize = MD_NR_OFFSET + 8;

const PLUG_PROMPT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The directories to be plugged will be purged.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

const UNPLUG_PROMPT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! Recovery will be triggered after unplugging.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

/// One disk of a node as MD_INFO reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MdDisk {
    pub idx: i32,
    pub free: u64,
    pub used: u64,
    /// The directory, up to the first NUL of its field.
    pub path: Vec<u8>,
}

/// Decodes an MD_INFO reply. Like the original, which reads the reply
/// into a zeroed `struct sd_md_info`, a short reply counts as zeros past
/// its end; `nr` is clamped to 0..=64.
pub fn decode_md_info(data: &[u8]) -> Vec<MdDisk> {
    let mut b = data[..data.len().min(MD_INFO_SIZE)].to_vec();
    b.resize(MD_INFO_SIZE, 0);
    let nr = (u32_at(&b, MD_NR_OFFSET) as i32).clamp(0, MD_MAX_DISK as i32) as usize;
    b.chunks_exact(MD_ENTRY_SIZE)
        .take(nr)
        .map(|e| MdDisk {
            idx: u32_at(e, 0) as i32,
            free: u64_at(e, 8),
            used: u64_at(e, 16),
            path: cstr(&e[24..24 + MD_PATH_LEN]).to_vec(),
        })
        .collect()
}

/// One `md info` line: `%2d⇥<size>⇥<used>⇥<avail>⇥%3d%⇥<path>`, or raw
/// `<addr> <idx> <size> <used> <avail> <pct>% <path>`; size = used + free.
pub fn md_line(addr: &str, d: &MdDisk, raw: bool) -> Vec<u8> {
    let size = d.used.wrapping_add(d.free);
    let pct = if size == 0 { 0 } else { use_pct(size, d.free) };
    let (s, u, a) = (
        strnumber(size, raw),
        strnumber(d.used, raw),
        strnumber(d.free, raw),
    );
    let head = if raw {
        format!("{addr} {} {s} {u} {a} {pct}% ", d.idx)
    } else {
        format!("{:2}\t{s}\t{u}\t{a}\t{pct:3}%\t", d.idx)
    };
    Msg::new().s(&head).b(&d.path).s("\n").0
}

/// Prints the disks of the sheep at `to`. `Err` carries the original's
/// status: 1 for a refused request, 2 when the exchange failed.
async fn node_md_info(ctx: &mut Ctx, to: SocketAddr) -> Result<(), i32> {
    let mut req = SdReq::new(op::MD_INFO);
    req.data_length = MD_INFO_SIZE as u32;
    let (rsp, data) = ctx.net.exec(to, &req, &[]).await.map_err(|_| 2)?;
    if !rsp.result.is_success() {
        err!("failed to get multi-disk information: {}", rsp.result);
        return Err(1);
    }
    let addr = NodeId::new(to.ip(), to.port()).to_addr_string();
    for d in decode_md_info(&data) {
        Msg(md_line(&addr, &d, ctx.opts.raw)).out();
    }
    Ok(())
}

/// `node md info [-A]`: the disks of the target node, or of every node
/// (each under a `Node <n>:` line in human mode).
pub async fn info(ctx: &mut Ctx) -> Res<()> {
    let raw = ctx.opts.raw;
    if !raw {
        out!("Id\tSize\tUsed\tAvail\tUse%\tPath\n");
    }
    if !ctx.opts.node.all {
        let target = ctx.target();
        return node_md_info(ctx, target).await.or_else(ret);
    }
    for (i, n) in ctx.nodes.clone().iter().enumerate() {
        if !raw {
            out!("Node {i}:\n");
        }
        if node_md_info(ctx, n.nid.socket_addr()).await.is_err() {
            return ret(1);
        }
    }
    Ok(())
}

/// `node md plug|unplug <dir[,dir…]>`: asks the target node to add or
/// remove the disks, after the prompt unless `-f`.
pub async fn plug(ctx: &mut Ctx, plug: bool) -> Res<()> {
    let disks = ctx.take_operand().unwrap_or_default();
    if !ctx.opts.node.force {
        confirm(if plug { PLUG_PROMPT } else { UNPLUG_PROMPT })?;
    }
    let mut req = SdReq::new(if plug { op::MD_PLUG } else { op::MD_UNPLUG });
    req.flags = flag::CMD_WRITE;
    let mut payload = disks;
    payload.push(0);
    req.data_length = payload.len() as u32;
    let target = ctx.target();
    let Ok((rsp, _)) = ctx.net.exec(target, &req, &payload).await else {
        return ret(2);
    };
    if !rsp.result.is_success() {
        err!("Failed to execute request, look for sheep.log for more information");
        return ret(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reply a sheep sends for `disks`, with `nr` as given.
    fn encode(disks: &[MdDisk], nr: i32) -> Vec<u8> {
        let mut b = vec![0u8; MD_INFO_SIZE];
        for (e, d) in b.chunks_exact_mut(MD_ENTRY_SIZE).zip(disks) {
            e[..4].copy_from_slice(&d.idx.to_le_bytes());
            e[8..16].copy_from_slice(&d.free.to_le_bytes());
            e[16..24].copy_from_slice(&d.used.to_le_bytes());
            e[24..24 + d.path.len()].copy_from_slice(&d.path);
        }
        b[MD_NR_OFFSET..MD_NR_OFFSET + 4].copy_from_slice(&nr.to_le_bytes());
        b
    }

    fn disk(idx: i32, free: u64, used: u64, path: &str) -> MdDisk {
        MdDisk {
            idx,
            free,
            used,
            path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reply_decodes_the_first_nr_entries() {
        let d = [
            disk(0, 85013458944, 4194304, "/tmp/sdref/extra0"),
            disk(1, 85013458944, 30474240, "/tmp/sdref/store0/obj"),
        ];
        assert_eq!(decode_md_info(&encode(&d, 2)), d.to_vec());
        assert_eq!(decode_md_info(&encode(&d, 1)), d[..1].to_vec());
        assert!(decode_md_info(&encode(&d, 0)).is_empty());
        assert!(decode_md_info(&encode(&d, -1)).is_empty());
        assert_eq!(decode_md_info(&encode(&d, 1000)).len(), 64);
    }

    #[test]
    fn short_replies_read_as_zeros() {
        assert!(decode_md_info(&[]).is_empty());
        let d = [disk(0, 1, 2, "/d")];
        let full = encode(&d, 1);
        assert!(decode_md_info(&full[..MD_NR_OFFSET]).is_empty());
        assert_eq!(decode_md_info(&full[..MD_NR_OFFSET + 4]), d.to_vec());
        let mut long = full.clone();
        long.extend([0xff; 100]);
        assert_eq!(decode_md_info(&long), d.to_vec());
    }

    #[test]
    fn lines_match_spec() {
        let d = disk(0, 85013458944, 30474240, "/tmp/sdref/store0/obj");
        assert_eq!(
            md_line("127.0.0.1:7000", &d, false),
            b" 0\t79 GB\t29 MB\t79 GB\t  0%\t/tmp/sdref/store0/obj\n"
        );
        let d1 = disk(1, 85013458944, 30474240, "/tmp/sdref/store0/obj");
        assert_eq!(
            md_line("127.0.0.1:7000", &d1, true),
            b"127.0.0.1:7000 1 85043933184 30474240 85013458944 0% /tmp/sdref/store0/obj\n"
        );
        let half = MdDisk {
            path: b"/x\xff".to_vec(),
            ..disk(12, 50, 50, "")
        };
        assert_eq!(
            md_line("a:1", &half, false),
            b"12\t0.0 MB\t0.0 MB\t0.0 MB\t 50%\t/x\xff\n"
        );
        assert_eq!(
            md_line("a:1", &half, true),
            b"a:1 12 100 50 50 50% /x\xff\n"
        );
        // Percentages truncate; an empty disk is 0%.
        assert_eq!(
            md_line("a:1", &disk(0, 1, 2, "/p"), true),
            b"a:1 0 3 2 1 66% /p\n"
        );
        assert_eq!(
            md_line("a:1", &disk(0, 0, 0, "/p"), true),
            b"a:1 0 0 0 0 0% /p\n"
        );
    }

    proptest! {
        /// Any reply decodes without panicking: at most 64 disks, as many
        /// as `nr` says when the reply reaches it, paths without NUL.
        #[test]
        fn decoder_takes_any_bytes(
            seed in proptest::collection::vec(any::<u8>(), 1..2000),
            len in 0..MD_INFO_SIZE + 64,
            nr in prop_oneof![any::<i32>(), 0..70i32],
        ) {
            let mut b: Vec<u8> = seed.iter().copied().cycle().take(len).collect();
            if len >= MD_NR_OFFSET + 4 {
                b[MD_NR_OFFSET..MD_NR_OFFSET + 4].copy_from_slice(&nr.to_le_bytes());
            }
            let disks = decode_md_info(&b);
            prop_assert!(disks.len() <= MD_MAX_DISK);
            if len >= MD_NR_OFFSET + 4 {
                prop_assert_eq!(disks.len(), nr.clamp(0, 64) as usize);
            } else if len <= MD_NR_OFFSET {
                prop_assert!(disks.is_empty());
            }
            for d in &disks {
                prop_assert!(d.path.len() < MD_PATH_LEN + 1 && !d.path.contains(&0));
                let _ = md_line("127.0.0.1:7000", d, false);
                let _ = md_line("127.0.0.1:7000", d, true);
            }
        }
    }
}
