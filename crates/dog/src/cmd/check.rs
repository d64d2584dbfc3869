//! `dog vdi check` and `dog cluster check` (CLI.md §2.3.20, §2.1.7):
//! every copy of a VDI's inode and data objects is compared — replicas
//! by the SHA-1 each node computes (GET_HASH), erasure-coded strips by
//! re-encoding the parity (READ_PEER) — and bad or missing copies are
//! repaired: a replica from the majority (REPAIR_REPLICA, the target
//! pulls it), a strip rebuilt here and written to its node
//! (CREATE_AND_WRITE_PEER). `-e` only asks each node which of its objects
//! it lacks (OIDS_EXIST).
//!
//! The original checks objects on a pool of worker threads; this one
//! checks them one after the other, so its output order is fixed.

use super::vdi::{open_vdi, parse_vdi};
use super::{light, report, ret};
use crate::app::Ctx;
use crate::out::show_progress;
use crate::{err, out, End, Res};
use sd_client::vdi::{nr_index_entries, read_index_into};
use sd_ec::{Codec, EcPolicy};
use sd_proto::*;
use sd_ring::Ring;

/// What one target node has of an object.
struct Copy {
    node: SdNode,
    found: bool,
    /// SHA-1 of the replica (replicated objects).
    hash: [u8; 20],
    /// The strip (erasure-coded objects).
    strip: Vec<u8>,
    /// The node has the strip but cannot read it whole (an I/O error: its
    /// checksums found it corrupt); rebuilt like a missing one.
    unreadable: bool,
}

/// The original's `is_erasure_oid`: data objects of an EC VDI.
fn is_erasure_oid(oid: u64, copy_policy: u8) -> bool {
    copy_policy != 0 && !is_vdi_obj(oid) && !is_btree_obj(oid)
}

/// Asks target `i` of `oid` for its copy: the hash, or the strip of
/// `strip_len` bytes. A failure other than "no such object" ends dog.
async fn query(
    ctx: &mut Ctx,
    oid: u64,
    i: usize,
    node: SdNode,
    strip_len: Option<u32>,
) -> Res<Copy> {
    let mut req = match strip_len {
        Some(len) => {
            let mut r = SdReq::new(op::READ_PEER);
            r.data_length = len;
            r.epoch = ctx.epoch;
            r
        }
        None => SdReq::new(op::GET_HASH),
    };
    req.set_obj(ObjArgs {
        oid,
        ec_index: i as u8,
        tgt_epoch: ctx.epoch,
        ..Default::default()
    });
    let Ok((rsp, strip)) = ctx.net.exec(node.nid.socket_addr(), &req, &[]).await else {
        return Err(End::Exit(2));
    };
    let found = match rsp.result {
        SdRes::SUCCESS => true,
        SdRes::NO_OBJ => false,
        SdRes::EIO if strip_len.is_some() => {
            return Ok(Copy {
                node,
                found: false,
                hash: [0; 20],
                strip: Vec::new(),
                unreadable: true,
            })
        }
        r => {
            err!(
                "failed to read {oid:016x} from {}, {r}",
                node.nid.to_addr_string()
            );
            return Err(End::Exit(1));
        }
    };
    Ok(Copy {
        node,
        found,
        hash: rsp.hash_digest(),
        strip,
        unreadable: false,
    })
}

/// The original's `vote_majority_object` (Boyer–Moore majority over the
/// hashes of the copies found): the index of a copy holding the majority
/// content, `Err(true)` if no copy exists, `Err(false)` if there is no
/// majority.
fn vote_majority(copies: &[Copy]) -> Result<usize, bool> {
    let (mut count, mut live, mut majority) = (0i32, 0i32, None);
    for (i, c) in copies.iter().enumerate().filter(|(_, c)| c.found) {
        live += 1;
        if count == 0 {
            majority = Some(i);
        }
        if copies[majority.unwrap()].hash == c.hash {
            count += 1;
        } else {
            count -= 1;
        }
    }
    let m = majority.ok_or(true)?;
    if count > 0 && count <= live / 2 {
        count = copies
            .iter()
            .filter(|c| c.found && c.hash == copies[m].hash)
            .count() as i32;
    }
    if count > live / 2 {
        Ok(m)
    } else {
        Err(false)
    }
}

/// Repairs the replicas of `oid` that are missing or differ from the
/// majority: each such target pulls the object from a majority holder.
async fn check_replicated(ctx: &mut Ctx, oid: u64, copies: &[Copy]) -> Res<()> {
    let m = match vote_majority(copies) {
        Ok(m) => m,
        Err(true) => {
            err!("no node has {oid:016x}");
            return Ok(());
        }
        Err(false) => {
            err!("no majority of {oid:016x}");
            return Ok(());
        }
    };
    let src = copies[m].node.nid;
    for (i, c) in copies.iter().enumerate() {
        if i == m || (c.found && c.hash == copies[m].hash) {
            continue;
        }
        let mut req = SdReq::new(op::REPAIR_REPLICA);
        req.epoch = ctx.epoch;
        // forw: oid @16, addr[16] @24, port @40.
        req.args[0..8].copy_from_slice(&oid.to_le_bytes());
        req.args[8..24].copy_from_slice(&src.addr);
        req.args[24..26].copy_from_slice(&src.port.to_le_bytes());
        let dst = c.node.nid;
        if light(ctx, dst.socket_addr(), &req).await.is_err() {
            err!(
                "failed to repair object {oid:016x} from {} to {}",
                src.to_addr_string(),
                dst.to_addr_string()
            );
        }
        // As the original: reported once the attempt is over.
        if c.found {
            out!("fixed replica {oid:016x}\n");
        } else {
            out!("fixed missing {oid:016x}\n");
        }
    }
    Ok(())
}

/// Checks the strips of an erasure-coded object: with all present, the
/// parity must match the data; with at most `p` missing, they are rebuilt
/// and written back to their nodes.
async fn check_erasure(ctx: &mut Ctx, oid: u64, policy: EcPolicy, copies: &[Copy]) -> Res<()> {
    let (d, p) = (policy.data_strips(), policy.parity_strips());
    let codec = Codec::new(policy).expect("the VDI's policy is valid");
    let missing: Vec<usize> = (0..copies.len()).filter(|&i| !copies[i].found).collect();
    if missing.is_empty() {
        let data: Vec<&[u8]> = copies[..d].iter().map(|c| c.strip.as_slice()).collect();
        let mut parity = vec![vec![0u8; data[0].len()]; p];
        let consistent = codec.encode_strips(&data, &mut parity).is_ok()
            && parity.iter().zip(&copies[d..]).all(|(a, c)| *a == c.strip);
        if !consistent {
            err!("object {oid:016x} is inconsistent");
        }
        return Ok(());
    }
    if missing.len() > p {
        err!(
            "failed to rebuild object {oid:016x}. {} copies get lost, more than {p}",
            missing.len()
        );
        return Ok(());
    }
    let present: Vec<(usize, &[u8])> = copies
        .iter()
        .enumerate()
        .filter(|(_, c)| c.found)
        .map(|(i, c)| (i, c.strip.as_slice()))
        .collect();
    let len = present[0].1.len();
    for &m in &missing {
        let mut out = [(m, vec![0u8; len])];
        if codec.reconstruct_into(&present, &mut out).is_err() {
            err!("object {oid:016x} is inconsistent");
            return Ok(());
        }
        let mut req = SdReq::new(op::CREATE_AND_WRITE_PEER);
        req.epoch = ctx.epoch;
        req.flags = flag::CMD_WRITE;
        req.data_length = len as u32;
        req.set_obj(ObjArgs {
            oid,
            ec_index: m as u8,
            ..Default::default()
        });
        let node = copies[m].node.nid.socket_addr();
        let Ok((rsp, _)) = ctx.net.exec(node, &req, &out[0].1).await else {
            return Err(End::Exit(2));
        };
        if !rsp.result.is_success() {
            err!("FATAL: failed to write {oid:016x}, {}", rsp.result);
            return Err(End::Exit(1));
        }
        let what = if copies[m].unreadable {
            "unreadable"
        } else {
            "missing"
        };
        out!("fixed {what} {oid:016x}, copy index {m}\n");
    }
    Ok(())
}

/// Checks and repairs every copy of one object.
async fn check_object(
    ctx: &mut Ctx,
    ring: &Ring,
    h: &InodeHeader,
    oid: u64,
    nr_copies: usize,
) -> Res<()> {
    let targets: Vec<SdNode> = ring.targets(oid, nr_copies).into_iter().copied().collect();
    let ec =
        EcPolicy::from_copy_policy(h.copy_policy).filter(|_| is_erasure_oid(oid, h.copy_policy));
    let strip_len = ec.map(|e| (h.object_size() / e.data_strips() as u64) as u32);
    let mut copies = Vec::with_capacity(targets.len());
    for (i, n) in targets.into_iter().enumerate() {
        copies.push(query(ctx, oid, i, n, strip_len).await?);
    }
    match ec {
        Some(policy) => check_erasure(ctx, oid, policy, &copies).await,
        None => check_replicated(ctx, oid, &copies).await,
    }
}

/// The original's `do_vdi_check`: the inode, then every allocated data
/// object, with the progress bar on a terminal.
async fn do_vdi_check(ctx: &mut Ctx, inode: &Inode) -> Res<()> {
    let h = &inode.header;
    let nr_copies = (h.nr_copies as usize).min(ctx.nr_zones);
    if h.copy_policy != 0 && ctx.nr_zones < h.nr_copies as usize {
        err!("ABORT: Not enough active zones for consistency-checking erasure coded VDI");
        return ret(1);
    }
    let ring = Ring::new(&ctx.nodes);
    check_object(ctx, &ring, h, vid_to_vdi_oid(h.vdi_id), nr_copies).await?;
    let (obj, total) = (h.object_size(), h.vdi_size);
    let mut done = 0;
    show_progress(done, total, false);
    for (idx, vid) in inode.allocated(nr_index_entries(h)) {
        check_object(ctx, &ring, h, vid_to_data_oid(vid, idx), nr_copies).await?;
        done = ((idx + 1) * obj).min(total);
        show_progress(done, total, false);
    }
    if done < total {
        show_progress(total, total, false);
    }
    crate::out::Msg::new()
        .s("finish check&repair ")
        .b(h.name_bytes())
        .s("\n")
        .out();
    Ok(())
}

/// `vdi check -e`: asks every node which of the objects it should hold
/// it lacks.
async fn check_exist(ctx: &mut Ctx, inode: &Inode) -> Res<()> {
    let h = &inode.header;
    let copies = (h.nr_copies as usize).min(ctx.nr_zones);
    let ring = Ring::new(&ctx.nodes);
    let mut oids = vec![vid_to_vdi_oid(h.vdi_id)];
    oids.extend(
        inode
            .allocated(nr_index_entries(h))
            .map(|(i, vid)| vid_to_data_oid(vid, i)),
    );
    let mut per_node: Vec<(SdNode, Vec<u8>)> = ctx.nodes.iter().map(|n| (*n, Vec::new())).collect();
    for &oid in &oids {
        for t in ring.targets(oid, copies) {
            if let Some((_, list)) = per_node.iter_mut().find(|(n, _)| n.nid == t.nid) {
                list.extend_from_slice(&oid.to_le_bytes());
            }
        }
    }
    let mut total = 0;
    for (node, list) in per_node {
        let mut req = SdReq::new(op::OIDS_EXIST);
        req.flags = flag::CMD_WRITE | flag::CMD_PIGGYBACK;
        req.data_length = list.len() as u32;
        let Ok((_, missing)) = ctx.net.exec(node.nid.socket_addr(), &req, &list).await else {
            return Err(End::Exit(2));
        };
        for c in missing.chunks_exact(8) {
            let oid = u64::from_le_bytes(c.try_into().unwrap());
            out!(
                "[{}] oid {oid:016x} is missing.\n",
                node.nid.to_addr_string()
            );
            total += 1;
        }
    }
    let m = crate::out::Msg::new().b(h.name_bytes());
    if total == 0 {
        m.s(" is fine, no object is missing.\n").out();
        Ok(())
    } else {
        m.s(&format!(" lost {total} object(s).\n")).out();
        ret(1)
    }
}

/// `vdi check [-e] [-s snapshot] <name>`.
pub async fn vdi_check(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    let (snapid, tag, exist) = (o.snapshot_id, o.snapshot_tag.clone(), o.exist);
    let inode = match open_vdi(ctx, &name, snapid, &tag, true).await {
        Ok(i) => i,
        Err(e) => {
            err!("FATAL: no inode objects");
            return Err(e);
        }
    };
    if exist {
        check_exist(ctx, &inode).await
    } else {
        do_vdi_check(ctx, &inode).await
    }
}

/// `cluster check`: `vdi check` of every VDI, snapshots included.
pub async fn cluster_check(ctx: &mut Ctx) -> Res<()> {
    let mut vdis = Vec::new();
    parse_vdi(ctx, false, |_, i, snapid| {
        vdis.push((i.header.clone(), snapid))
    })
    .await
    .map_err(|_| End::Ret(2))?;
    for (h, snapid) in vdis {
        let mut inode = Inode::new(h);
        let target = ctx.target();
        if let Err(e) = read_index_into(&mut ctx.net.at(target), &mut inode).await {
            report(&e);
            err!("Failed to read inode");
            continue;
        }
        let h = &inode.header;
        let m = crate::out::Msg::new();
        if h.is_snapshot() {
            m.s("fix snapshot ")
                .b(h.name_bytes())
                .s(&format!(" (id: {snapid}, tag: \""))
                .b(crate::text::cstr(&h.tag))
                .s("\")\n")
                .out();
        } else {
            m.s("fix vdi ").b(h.name_bytes()).s("\n").out();
        }
        // As the original, a VDI that cannot be checked does not stop
        // the others (only the fatal errors that end dog do).
        if let Err(e @ End::Exit(_)) = do_vdi_check(ctx, &inode).await {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(found: bool, h: u8) -> Copy {
        Copy {
            node: SdNode::default(),
            found,
            hash: [h; 20],
            strip: Vec::new(),
            unreadable: false,
        }
    }

    #[test]
    fn majority_vote() {
        assert_eq!(
            vote_majority(&[copy(true, 1), copy(true, 1), copy(true, 2)]),
            Ok(0)
        );
        assert_eq!(
            vote_majority(&[copy(true, 2), copy(true, 1), copy(true, 1)]),
            Ok(2)
        );
        assert_eq!(
            vote_majority(&[copy(false, 0), copy(true, 1), copy(false, 0)]),
            Ok(1)
        );
        assert_eq!(vote_majority(&[copy(false, 0), copy(false, 0)]), Err(true));
        assert_eq!(vote_majority(&[copy(true, 1), copy(true, 2)]), Err(false));
        assert_eq!(
            vote_majority(&[copy(true, 1), copy(true, 2), copy(true, 3)]),
            Err(false)
        );
        assert_eq!(
            vote_majority(&[
                copy(true, 1),
                copy(true, 2),
                copy(true, 1),
                copy(true, 3),
                copy(true, 1)
            ]),
            Ok(4)
        );
    }
}
