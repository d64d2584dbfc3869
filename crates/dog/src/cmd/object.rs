//! `dog vdi object {location|map|dump-inode}` and `dog vdi track`
//! (CLI.md §2.3.9, §2.3.10): where a VDI's objects are, should be, and
//! were in every epoch.

use super::ret;
use super::vdi::open_vdi;
use crate::app::Ctx;
use crate::text::cstr;
use crate::{err, out, Res};
use sd_client::vdi::{entry, stat_cluster};
use sd_proto::*;
use sd_ring::Ring;

/// `vdi object location <name> [-i index]`.
pub async fn object_location(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    let (snapid, tag, idx) = (o.snapshot_id, o.snapshot_tag.clone(), o.index);
    let inode = match open_vdi(ctx, &name, snapid, &tag, true).await {
        Ok(i) => i,
        Err(e) => {
            err!("FATAL: no inode objects");
            return Err(e);
        }
    };
    let h = &inode.header;
    let vid = h.vdi_id;
    let nodes = ctx.nodes.len();
    let oid = if idx == u64::MAX {
        out!("Looking for the inode object 0x{vid:x} with {nodes} nodes\n\n");
        vid_to_vdi_oid(vid)
    } else {
        if idx >= 1 << 32 {
            out!("The offset is too large!\n");
            return ret(1);
        }
        let owner = entry(&inode, idx);
        if owner == 0 {
            out!("The inode object 0x{vid:x} idx {idx} is not allocated\n");
            return Ok(());
        }
        let oid = vid_to_data_oid(owner, idx);
        out!(
            "Looking for the object {oid:016x} (vid 0x{vid:x} idx {idx}, {} copies) with {nodes} nodes\n\n",
            h.nr_copies
        );
        oid
    };
    let copies = h.nr_copies as usize;
    for n in ctx.nodes.clone() {
        let mut req = SdReq::new(op::EXIST);
        req.epoch = ctx.epoch;
        req.set_obj(ObjArgs {
            oid,
            ..Default::default()
        });
        let Ok((rsp, _)) = ctx.net.exec(n.nid.socket_addr(), &req, &[]).await else {
            continue;
        };
        let sheep = n.nid.to_addr_string();
        match rsp.result {
            SdRes::SUCCESS => out!("{sheep} has the object\n"),
            SdRes::NO_OBJ => out!("{sheep} doesn't have the object\n"),
            SdRes::OLD_NODE_VER | SdRes::NEW_NODE_VER => {
                err!("The node list has changed: please try again")
            }
            r => err!("{sheep}: hit an unexpected error ({r})"),
        }
    }
    if nodes < copies {
        out!("\nBecause number of nodes ({nodes}) is less than number of copies ({copies}), the object should be located at every nodes.\n");
    } else {
        let ring = Ring::new(&ctx.nodes);
        let targets: Vec<String> = ring
            .targets(oid, copies)
            .iter()
            .map(|n| n.nid.to_addr_string())
            .collect();
        out!(
            "\nAccording to sheepdog algorithm, the object should be located at:\n{}\n",
            targets.join(" ")
        );
    }
    Ok(())
}

/// `vdi object map <name> [-i index]`: the owner vid of every allocated
/// index (or of index `-i`, allocated or not).
pub async fn object_map(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    let (snapid, tag, idx) = (o.snapshot_id, o.snapshot_tag.clone(), o.index);
    let inode = match open_vdi(ctx, &name, snapid, &tag, true).await {
        Ok(i) => i,
        Err(e) => {
            crate::out::Msg::new()
                .s("FATAL: ")
                .b(&name)
                .s(" not found")
                .err();
            return Err(e);
        }
    };
    out!("Index       VID\n");
    if idx != u64::MAX {
        out!("{idx:08} {:8x}\n", entry(&inode, idx));
    } else {
        let n = sd_client::vdi::nr_index_entries(&inode.header);
        for (i, vid) in inode.allocated(n) {
            out!("{i:08} {vid:8x}\n");
        }
    }
    Ok(())
}

/// The `dump-inode` text of an inode object's bytes.
fn dump_inode_text(b: &[u8]) -> Vec<u8> {
    let ino = Inode::decode(b).expect("a whole inode");
    let h = &ino.header;
    let mut v = b"name: ".to_vec();
    v.extend_from_slice(h.name_bytes());
    v.extend_from_slice(b"\ntag: ");
    v.extend_from_slice(cstr(&h.tag));
    v.extend(
        format!(
            "\ncreate_time: {:x}\nsnap_ctime: {:x}\nvm_clock_nsec: {:x}\nvdi_size: {}\nvm_state_size: {}\ncopy_policy: {}\nstore_policy: {}\nnr_copies: {}\nblock_size_shift: {}\nsnap_id: {}\nvdi_id: {:x}\nparent_vdi_id: {:x}\nbtree_counter: {}\ndata_vdi_id:\n",
            h.create_time,
            h.snap_ctime,
            h.vm_clock_nsec,
            h.vdi_size,
            h.vm_state_size,
            h.copy_policy,
            h.store_policy,
            h.nr_copies,
            h.block_size_shift,
            h.snap_id,
            h.vdi_id,
            h.parent_vdi_id,
            h.btree_counter
        )
        .bytes(),
    );
    for (i, &e) in ino.data_vdi_id.iter().enumerate().filter(|(_, e)| **e != 0) {
        v.extend(format!("{i}: {e:x}\n").bytes());
    }
    v.extend_from_slice(b"gref:\n");
    for (i, (&e, g)) in ino.data_vdi_id.iter().zip(&ino.gref).enumerate() {
        let (gen, count) = (g.generation as i32, g.count as i32);
        if e != 0 {
            v.extend(format!("{i}: {e:x}, {gen}, {count}\n").bytes());
        } else if gen != 0 || count != 0 {
            v.extend(format!("WARNING: index {i} doesn't have data vdi ID but its generation and count is not zero({gen}, {count})").bytes());
        }
    }
    v
}

/// `vdi object dump-inode <file>`: decodes an inode object file of a
/// store (offline; the operand is a path, not a VDI name).
pub fn dump_inode(ctx: &mut Ctx) -> Res<()> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let path = ctx.take_operand().unwrap_or_default();
    let mut f = match std::fs::File::open(std::ffi::OsStr::from_bytes(&path)) {
        Ok(f) => f,
        Err(e) => {
            err!(
                "failed to open inode object file: {}",
                crate::net::strerror(&e)
            );
            return ret(1);
        }
    };
    let mut b = Vec::with_capacity(SD_INODE_SIZE);
    let r = f.by_ref().take(SD_INODE_SIZE as u64).read_to_end(&mut b);
    match r {
        Ok(n) if n == SD_INODE_SIZE => {}
        // A short file leaves errno as it was: "Success".
        Ok(_) => {
            err!("failed to read inode object file: Success");
            return ret(1);
        }
        Err(e) => {
            err!(
                "failed to read inode object file: {}",
                crate::net::strerror(&e)
            );
            return ret(1);
        }
    }
    crate::out::out_bytes(&dump_inode_text(&b));
    Ok(())
}

/// `vdi track <name> [-i index | -o oid]`: where the object was placed
/// in every epoch, newest first.
pub async fn track(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    // The original keeps -i in an `unsigned`: its "too large" check
    // never fires.
    let (snapid, tag, idx, oid) = (o.snapshot_id, o.snapshot_tag.clone(), o.index as u32, o.oid);
    let inode = match open_vdi(ctx, &name, snapid, &tag, true).await {
        Ok(i) => i,
        Err(e) => {
            err!("FATAL: no inode objects");
            return Err(e);
        }
    };
    let vid = inode.header.vdi_id;
    let nodes = ctx.nodes.len();
    let oid = if oid != 0 {
        out!("Tracking the object {oid:016x} (the inode vid 0x{vid:x}) with {nodes} nodes\n");
        oid
    } else if idx == u32::MAX {
        out!("Tracking the inode object 0x{vid:x} with {nodes} nodes\n");
        vid_to_vdi_oid(vid)
    } else {
        let oid = vid_to_data_oid(entry(&inode, idx as u64), idx as u64);
        out!("Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx {idx}) with {nodes} nodes\n");
        oid
    };
    let copies = inode.header.nr_copies as usize;
    let target = ctx.target();
    let Ok(stat) = stat_cluster(&mut ctx.net.at(target), nodes as u32, ctx.epoch).await else {
        return ret(2);
    };
    if !stat.result.is_success() {
        out!("{}\n", stat.result);
        return ret(2);
    }
    // QUIRK: after an epoch with fewer nodes than copies the original
    // stops advancing and prints that epoch again for every older one.
    let mut cur = 0;
    for _ in 0..stat.logs.len() {
        let log = &stat.logs[cur];
        out!(
            "\nobj {oid:016x} locations at epoch {}, copies = {copies}\n---------------------------------------------------\n",
            log.epoch
        );
        if log.nodes.len() < copies {
            for n in &log.nodes {
                out!("{}\n", n.nid.to_addr_string());
            }
            continue;
        }
        for n in Ring::new(&log.nodes).targets(oid, copies) {
            out!("{}\n", n.nid.to_addr_string());
        }
        cur += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_inode_lists_entries_and_grefs() {
        let mut h = InodeHeader {
            create_time: 0x6b0167452f06c5c8,
            snap_ctime: 0x6b01674831ce0bb8,
            vdi_size: 1 << 30,
            nr_copies: 2,
            block_size_shift: 22,
            snap_id: 1,
            vdi_id: 0xed202b,
            ..Default::default()
        };
        h.name[..5].copy_from_slice(b"alpha");
        h.tag[..5].copy_from_slice(b"snap1");
        let mut ino = Inode::new(h);
        ino.data_vdi_id[0] = 0xed202b;
        ino.gref[0] = Gref {
            generation: 0,
            count: 3,
        };
        ino.gref[7] = Gref {
            generation: 1,
            count: 0,
        };
        let text = String::from_utf8(dump_inode_text(&ino.encode())).unwrap();
        assert_eq!(
            text,
            "name: alpha\ntag: snap1\ncreate_time: 6b0167452f06c5c8\nsnap_ctime: 6b01674831ce0bb8\nvm_clock_nsec: 0\nvdi_size: 1073741824\nvm_state_size: 0\ncopy_policy: 0\nstore_policy: 0\nnr_copies: 2\nblock_size_shift: 22\nsnap_id: 1\nvdi_id: ed202b\nparent_vdi_id: 0\nbtree_counter: 0\ndata_vdi_id:\n0: ed202b\ngref:\n0: ed202b, 0, 3\nWARNING: index 7 doesn't have data vdi ID but its generation and count is not zero(1, 0)"
        );
    }
}
