//! The VDI lifecycle and data commands — `dog vdi create|snapshot|clone|
//! delete|rollback|list|resize|read|write|alter-copy` (CLI.md §2.3.1–6,
//! 2.3.13–15, 2.3.18) — and the lookup, create and delete steps the other
//! VDI commands share, on top of the client path in `sd_client::vdi`.

use super::{report, ret};
use crate::app::{confirm, Ctx};
use crate::out::{show_progress, Msg};
use crate::text::{cstr, escape_name, local_time, pad_right, parse_size, size_error, strnumber};
use crate::{err, out, End, Res};
use sd_client::vdi::{
    self, del_vdi, entry, get_cluster_info, lookup_vdi, new_vdi, read_index_into, read_inode,
    read_inode_header, read_range, set_entry, write_index, write_object, write_range, NewVdi,
    Redundancy, VdiError, WriteKind,
};
use sd_client::ClientError;
use sd_proto::*;

/// `Failed to open VDI <name> (snapshot id: <id> snapshot tag: <tag>): <res>`.
fn open_failed(name: &[u8], snapid: i32, tag: &[u8], res: SdRes) {
    Msg::new()
        .s("Failed to open VDI ")
        .b(name)
        .s(&format!(" (snapshot id: {snapid} snapshot tag: "))
        .b(tag)
        .s(&format!("): {res}"))
        .err();
}

/// Looks a VDI up (the original's `find_vdi_name`), printing
/// `Failed to open VDI …` on failure.
pub async fn find_vdi(ctx: &mut Ctx, name: &[u8], snapid: i32, tag: &[u8]) -> Res<u32> {
    let target = ctx.target();
    match lookup_vdi(&mut ctx.net.at(target), name, Some(tag), snapid as u32).await {
        Ok(v) => Ok(v),
        Err(e) => {
            open_failed(name, snapid, tag, e.res());
            ret(1)
        }
    }
}

/// The original's `read_vdi_obj`: looks the VDI up and reads its inode
/// (header, plus the index when `with_index`), printing the original's
/// messages on failure.
pub async fn open_vdi(
    ctx: &mut Ctx,
    name: &[u8],
    snapid: i32,
    tag: &[u8],
    with_index: bool,
) -> Res<Inode> {
    let vid = find_vdi(ctx, name, snapid, tag).await?;
    let at = &mut ctx.net.at(ctx.opts.target);
    let r = match read_inode_header(at, vid).await {
        Ok(h) if with_index => {
            let mut i = Inode::new(h);
            read_index_into(at, &mut i).await.map(|()| i)
        }
        r => r.map(Inode::new),
    };
    match r {
        Ok(i) => Ok(i),
        Err(e) => {
            report(&e);
            let m = Msg::new();
            let m = if snapid != 0 {
                m.s("Failed to read a snapshot ")
                    .b(name)
                    .s(&format!(":{snapid}"))
            } else if !tag.is_empty() {
                m.s("Failed to read a snapshot ").b(name).s(":").b(tag)
            } else {
                m.s("Failed to read a vdi ").b(name)
            };
            m.err();
            ret(1)
        }
    }
}

/// The original's `do_vdi_create`: NEW_VDI, with
/// `Failed to create VDI <name>: <res>` (status 1) on refusal and status 2
/// when the daemon cannot be reached.
pub async fn do_vdi_create(ctx: &mut Ctx, name: &[u8], v: &NewVdi) -> Res<u32> {
    let target = ctx.target();
    match new_vdi(&mut ctx.net.at(target), name, v).await {
        Ok(vid) => Ok(vid),
        Err(ClientError::Res(r)) => {
            Msg::new()
                .s("Failed to create VDI ")
                .b(name)
                .s(&format!(": {r}"))
                .err();
            ret(1)
        }
        Err(_) => ret(2),
    }
}

/// Reads a VDI bitmap (READ_VDIS / READ_DEL_VDIS). `Ok(None)` when the
/// daemon answered with an error (printed), `Err` on a network failure.
async fn read_bitmap(ctx: &mut Ctx, opcode: u8) -> Res<Option<Vec<u8>>> {
    let mut req = SdReq::new(opcode);
    req.data_length = SD_VDI_BITMAP_SIZE as u32;
    let target = ctx.target();
    let Ok((rsp, mut bits)) = ctx.net.exec(target, &req, &[]).await else {
        return ret(2);
    };
    if !rsp.result.is_success() {
        err!("{}", rsp.result);
        return Ok(None);
    }
    bits.resize(SD_VDI_BITMAP_SIZE, 0);
    Ok(Some(bits))
}

fn bit(map: &[u8], nr: usize) -> bool {
    map[nr / 8] & (1 << (nr % 8)) != 0
}

/// The original's `parse_vdi`: calls `f(vid, inode, snapid)` for every
/// live VDI in ascending vid order (snapid 0 for current VDIs), with the
/// index read when `with_index`. Unreadable inodes are reported and
/// skipped; only a failure to fetch the bitmaps ends the walk (status 2).
pub async fn parse_vdi(
    ctx: &mut Ctx,
    with_index: bool,
    mut f: impl FnMut(u32, &Inode, u32),
) -> Res<()> {
    let Some(inuse) = read_bitmap(ctx, op::READ_VDIS).await? else {
        return Ok(());
    };
    let Some(deleted) = read_bitmap(ctx, op::READ_DEL_VDIS).await? else {
        return Ok(());
    };
    let target = ctx.target();
    let mut inode = Inode::new(InodeHeader::default());
    for nr in 0..SD_NR_VDIS as usize {
        if inuse[nr / 8] == 0 {
            continue;
        }
        if !bit(&inuse, nr) || bit(&deleted, nr) {
            continue;
        }
        let vid = nr as u32;
        match read_inode_header(&mut ctx.net.at(target), vid).await {
            Ok(h) => inode.header = h,
            Err(e) => {
                report(&e);
                err!("Failed to read inode header");
                continue;
            }
        }
        if inode.header.is_deleted() {
            continue;
        }
        if with_index {
            if let Err(e) = read_index_into(&mut ctx.net.at(target), &mut inode).await {
                report(&e);
                err!("Failed to read inode");
                continue;
            }
        }
        let snapid = if inode.header.is_snapshot() {
            inode.header.snap_id
        } else {
            0
        };
        f(vid, &inode, snapid);
    }
    Ok(())
}

/// Objects of the VDI it owns and objects it shares with ancestors
/// (the original's `sd_inode_stat`).
fn inode_stat(i: &Inode) -> (u64, u64) {
    let own = i.header.vdi_id;
    i.allocated(vdi::nr_index_entries(&i.header))
        .fold((0, 0), |(my, cow), (_, e)| match e {
            e if e == own => (my + 1, cow),
            _ => (my, cow + 1),
        })
}

/// One `vdi list` row (CLI.md §2.3.6), human or raw.
pub fn list_row(vid: u32, i: &Inode, snapid: u32, raw: bool) -> Vec<u8> {
    let h = &i.header;
    let obj = 1u64 << h.block_size_shift.min(63);
    let (my, cow) = inode_stat(i);
    let is_clone = h.snap_id == 1 && h.parent_vdi_id != 0;
    let marker = if h.is_snapshot() {
        b's'
    } else if is_clone {
        b'c'
    } else if raw {
        b'='
    } else {
        b' '
    };
    let secs = (h.create_time >> 32) as i64;
    let (size, used, shared) = (
        strnumber(h.vdi_size, raw),
        strnumber(my.wrapping_mul(obj), raw),
        strnumber(cow.wrapping_mul(obj), raw),
    );
    let red = policy::redundancy_string(h.nr_copies, h.copy_policy);
    let tag = cstr(&h.tag);
    let mut v = vec![marker, b' '];
    if raw {
        v.extend(escape_name(h.name_bytes()));
        v.extend(format!(" {snapid} {size} {used} {shared} {secs} {vid:x} {red} ").bytes());
        v.extend_from_slice(tag);
        v.extend(format!(" {}\n", h.block_size_shift).bytes());
    } else {
        v.extend(pad_right(h.name_bytes(), 8));
        let date = local_time(secs, "%Y-%m-%d %H:%M");
        v.extend(
            format!(" {snapid:5} {size:>7} {used:>7} {shared:>7} {date}  {vid:7x} {red:>6} ")
                .bytes(),
        );
        v.extend(std::iter::repeat_n(b' ', 13usize.saturating_sub(tag.len())));
        v.extend_from_slice(tag);
        v.extend(format!(" {:3}\n", h.block_size_shift).bytes());
    }
    v
}

/// `vdi list [name]` / `vdi list -o <oid>`.
pub async fn list(ctx: &mut Ctx) -> Res<()> {
    let raw = ctx.opts.raw;
    if !raw {
        out!("  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n");
    }
    let name = ctx.take_operand();
    let oid = ctx.opts.vdi.oid;
    if name.is_none() && oid != 0 && !is_data_obj(oid) {
        return ret(1);
    }
    let r = parse_vdi(ctx, true, |vid, i, snapid| {
        let show = match &name {
            Some(n) => i.header.name_bytes() == n.as_slice(),
            None if oid != 0 => {
                let owner = entry(i, data_oid_to_idx(oid) as u64);
                owner != 0 && owner == oid_to_vid(oid)
            }
            None => true,
        };
        if show {
            crate::out::out_bytes(&list_row(vid, i, snapid, raw));
        }
    })
    .await;
    match r {
        Err(End::Ret(_)) => ret(2),
        r => r,
    }
}

/// `vdi create <name> <size>`.
pub async fn create(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let Some(size_arg) = ctx.take_operand() else {
        err!("Please specify the VDI size");
        return ret(64);
    };
    let Some(size) = parse_size(&size_arg) else {
        size_error(&size_arg);
        return ret(64);
    };
    let raw = ctx.opts.raw;
    let o = &ctx.opts.vdi;
    let (copies, copy_policy, store_policy) = (o.nr_copies, o.copy_policy, o.store_policy);
    let mut shift = o.block_size_shift;
    let target = ctx.target();
    if shift == 0 && store_policy == 1 {
        shift = SD_DEFAULT_BLOCK_SIZE_SHIFT;
    }
    let object_size = if shift != 0 {
        1u64 << shift
    } else {
        let Ok((res, ci)) = get_cluster_info(&mut ctx.net.at(target)).await else {
            err!("Fail to execute request: SD_OP_CLUSTER_INFO");
            return ret(1);
        };
        if ci.ctime == 0 {
            Msg::new()
                .s("Failed to create VDI ")
                .b(&name)
                .s(&format!(": {}", SdRes::WAIT_FOR_FORMAT))
                .err();
            return ret(1);
        }
        if !res.is_success() {
            err!("{res}");
            return ret(1);
        }
        1u64 << ci.block_size_shift.min(63)
    };
    let max_plain = object_size.saturating_mul(1 << 20);
    if size > max_plain && store_policy == 0 {
        err!(
            "VDI size is larger than {} bytes, please use '-y' to create a hyper volume with size up to {} bytes or use '-z' to create larger object size volume",
            strnumber(max_plain, raw),
            strnumber(SD_MAX_VDI_SIZE, raw)
        );
        return ret(64);
    }
    if size > SD_MAX_VDI_SIZE {
        err!("VDI size is too large");
        return ret(64);
    }

    let v = NewVdi {
        size,
        copies,
        copy_policy,
        store_policy,
        block_size_shift: shift,
        ..Default::default()
    };
    let vid = do_vdi_create(ctx, &name, &v).await?;
    if ctx.opts.vdi.prealloc {
        preallocate(ctx, vid).await?;
    }
    if ctx.opts.verbose {
        if raw {
            out!("{vid:x}\n");
        } else {
            out!("VDI ID of newly created VDI: {vid:x}\n");
        }
    }
    Ok(())
}

/// `vdi create -P`: creates every data object (zero-filled) and records
/// it in the inode, one object at a time.
async fn preallocate(ctx: &mut Ctx, vid: u32) -> Res<()> {
    let target = ctx.target();
    let Ok(mut inode) = read_inode(&mut ctx.net.at(target), vid).await else {
        err!("Failed to read a newly created VDI object");
        return ret(1);
    };
    let obj = inode.header.object_size();
    let total = inode.header.vdi_size;
    let red = Redundancy::of(&inode.header);
    let n = vdi::nr_index_entries(&inode.header);
    for idx in 0..n {
        show_progress(idx * obj, total, false);
        let oid = vid_to_data_oid(vid, idx);
        let at = &mut ctx.net.at(target);
        if let Err(source) =
            write_object(at, oid, WriteKind::Create, 0, &[], red, flag::CMD_DIRECT).await
        {
            report(&VdiError::Write { oid, source });
            return ret(1);
        }
        if let Err(e) = set_entry(at, &mut inode, idx, vid, flag::CMD_DIRECT).await {
            report(&e);
            return ret(1);
        }
    }
    show_progress(n as u64 * obj, total, false);
    Ok(())
}

/// `vdi delete <name>`. Always exits 0 (QUIRK, CLI.md §2.3.5).
pub async fn delete(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let (snapid, tag) = (ctx.opts.vdi.snapshot_id, ctx.opts.vdi.snapshot_tag.clone());
    do_vdi_delete(ctx, &name, snapid, Some(&tag)).await;
    Ok(())
}

/// The original's `do_vdi_delete`: releases the index entries in
/// batches of `-B` (pausing `-I` seconds in between, stopping after `-m`
/// entries), then deletes the VDI. Failures are reported, not returned
/// (the original's caller always sees success). Rollback and restore
/// pass no tag, which the original prints as `(null)`.
pub async fn do_vdi_delete(ctx: &mut Ctx, name: &[u8], snapid: i32, tag: Option<&[u8]>) {
    let o = &ctx.opts.vdi;
    let batch = if o.nr_batched_reclamation == 0 {
        128
    } else {
        o.nr_batched_reclamation as usize
    };
    let (interval, max_reclaim) = (o.reclamation_interval, o.nr_max_reclaim as usize);
    let target = ctx.target();
    let tag_bytes = tag.unwrap_or_default();
    let vid = match lookup_vdi(
        &mut ctx.net.at(target),
        name,
        Some(tag_bytes),
        snapid as u32,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            open_failed(name, snapid, tag.unwrap_or(b"(null)"), e.res());
            return;
        }
    };
    let inode_oid = vid_to_vdi_oid(vid);
    let mut inode = match read_inode(&mut ctx.net.at(target), vid).await {
        Ok(i) => i,
        Err(e) => {
            report(&e);
            err!("failed to read inode object: {inode_oid:016x}");
            return;
        }
    };
    // A hyper volume keeps no reference counts: DEL_VDI frees its objects.
    let n = match inode.header.store_policy {
        0 => vdi::nr_index_entries(&inode.header) as usize,
        _ => 0,
    };
    let (mut i, mut reclaimed) = (0usize, 0usize);
    while i < n {
        if max_reclaim != 0 && reclaimed >= max_reclaim {
            break;
        }
        while i < n && inode.data_vdi_id[i] == 0 {
            i += 1;
        }
        let start = i;
        let mut filled = 0;
        while i < n && filled < batch {
            if inode.data_vdi_id[i] != 0 {
                inode.data_vdi_id[i] = 0;
                filled += 1;
                reclaimed += 1;
            }
            i += 1;
            if max_reclaim != 0 && reclaimed >= max_reclaim {
                break;
            }
        }
        if i > start {
            let at = &mut ctx.net.at(target);
            let last = i as u32 - 1;
            if let Err(e) = write_index(at, &inode, start as u32, last, flag::CMD_DIRECT).await {
                report(&e);
                err!("failed to update inode for discarding objects: {inode_oid:016x}");
                return;
            }
        }
        if i < n && interval > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(interval as u64)).await;
        }
    }
    if max_reclaim != 0 {
        return;
    }
    let r = del_vdi(&mut ctx.net.at(target), name, tag_bytes, snapid as u32).await;
    if let Err(ClientError::Res(r)) = r {
        Msg::new()
            .s("Failed to delete ")
            .b(name)
            .s(&format!(": {r}"))
            .err();
    }
}

/// `vdi snapshot <name> [-s tag] [-R]`: writes the tag into the working
/// VDI's inode, then NEW_VDI(snapshot) turns it into the snapshot and
/// creates a new working VDI on top (PROTOCOL.md §6.2).
pub async fn snapshot(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    if o.snapshot_id != 0 {
        err!("Please specify a non-integer value for a snapshot tag name");
        return ret(64);
    }
    let (tag, reduce) = (o.snapshot_tag.clone(), o.reduce_identical_snapshots);
    let target = ctx.target();
    let inode = match lookup_vdi(&mut ctx.net.at(target), &name, Some(&tag), 0).await {
        Err(ClientError::Res(SdRes::NO_TAG)) => open_vdi(ctx, &name, 0, b"", reduce).await?,
        Ok(vid) => {
            // Without a tag this is the working VDI; with one, a snapshot
            // already carries the tag.
            let at = &mut ctx.net.at(target);
            let mut i = match read_inode_header(at, vid).await {
                Ok(h) => Inode::new(h),
                Err(e) => {
                    report(&e);
                    return ret(e.res().0 as i32);
                }
            };
            if i.header.is_snapshot() {
                Msg::new()
                    .s("Failed to create snapshot for ")
                    .b(&name)
                    .s(", maybe snapshot id (0) or tag (")
                    .b(&tag)
                    .s(") is existed")
                    .err();
                return ret(1);
            }
            if reduce {
                if let Err(e) = read_index_into(at, &mut i).await {
                    report(&e);
                    return ret(e.res().0 as i32);
                }
            }
            i
        }
        Err(e) => {
            Msg::new()
                .s("Failed to create snapshot for ")
                .b(&name)
                .s(&format!(": {}", e.res()))
                .err();
            return ret(1);
        }
    };
    let h = &inode.header;
    if h.store_policy != 0 {
        err!("creating a snapshot of hypervolume is not supported");
        return ret(1);
    }
    if reduce && inode_stat(&inode).0 == 0 {
        if ctx.opts.verbose {
            Msg::new()
                .s("VDI ")
                .b(&name)
                .s(" doesn't have its own objects, skipping creation of snapshot")
                .err();
        }
        return Ok(());
    }
    let vid = h.vdi_id;
    let oid = vid_to_vdi_oid(vid);
    let mut tag_field = tag.clone();
    tag_field.resize(SD_MAX_VDI_TAG_LEN, 0);
    let at = &mut ctx.net.at(target);
    let red = Redundancy::of(h);
    if let Err(source) = write_object(at, oid, WriteKind::Overwrite, 256, &tag_field, red, 0).await
    {
        let e = VdiError::Write { oid, source };
        report(&e);
        return ret(e.res().0 as i32);
    }
    let new_vid = do_vdi_create(ctx, &name, &NewVdi::like(h, vid, true)).await?;
    if ctx.opts.verbose {
        if ctx.opts.raw {
            out!("{new_vid:x} {vid:x}\n");
        } else {
            out!(
                "new VID of original VDI: {new_vid:x}, VDI ID of newly created snapshot: {vid:x}\n"
            );
        }
    }
    Ok(())
}

/// `vdi clone -s <snapshot> <src> <dst> [-P] [-n]`: a new VDI whose
/// parent is the snapshot; `-n` copies the data instead of sharing it,
/// `-P` allocates every object of the clone.
pub async fn clone(ctx: &mut Ctx) -> Res<()> {
    let src = ctx.take_operand().unwrap_or_default();
    let Some(dst) = ctx.take_operand() else {
        err!("Destination VDI name must be specified");
        return ret(64);
    };
    let o = &ctx.opts.vdi;
    if o.snapshot_id == 0 && o.snapshot_tag.is_empty() {
        err!("Only snapshot VDIs can be cloned");
        err!("Please specify the '-s' option");
        return ret(64);
    }
    let (snapid, tag) = (o.snapshot_id, o.snapshot_tag.clone());
    let (prealloc, no_share) = (o.prealloc, o.no_share);
    let base = open_vdi(ctx, &src, snapid, &tag, true).await?;
    let base_vid = if no_share { 0 } else { base.header.vdi_id };
    let new_vid = do_vdi_create(ctx, &dst, &NewVdi::like(&base.header, base_vid, false)).await?;
    if prealloc || no_share {
        let mut new_inode = open_vdi(ctx, &dst, 0, b"", false).await?;
        copy_objects(ctx, &base, &mut new_inode, prealloc).await?;
    }
    if ctx.opts.verbose {
        if ctx.opts.raw {
            out!("{new_vid:x}\n");
        } else {
            out!("VDI ID of newly created clone: {new_vid:x}\n");
        }
    }
    Ok(())
}

/// Gives the clone `dst` its own copy of every object `src` has (and, with
/// `prealloc`, a zero-filled object where `src` has none), recording each
/// in its index, with the progress bar on a terminal.
async fn copy_objects(ctx: &mut Ctx, src: &Inode, dst: &mut Inode, prealloc: bool) -> Res<()> {
    let target = ctx.target();
    let h = &src.header;
    let obj = h.object_size();
    let red = Redundancy::of(h);
    let new_vid = dst.header.vdi_id;
    let n = vdi::nr_index_entries(h);
    for idx in 0..n {
        show_progress(idx * obj, h.vdi_size, false);
        let at = &mut ctx.net.at(target);
        let data = match entry(src, idx) {
            0 if !prealloc => continue,
            0 => Vec::new(),
            e => {
                let oid = vid_to_data_oid(e, idx);
                match vdi::read_object(
                    at,
                    oid,
                    0,
                    obj as u32,
                    Redundancy::default(),
                    flag::CMD_DIRECT,
                )
                .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        report(&e);
                        return ret(1);
                    }
                }
            }
        };
        let oid = vid_to_data_oid(new_vid, idx);
        if let Err(source) =
            write_object(at, oid, WriteKind::Create, 0, &data, red, flag::CMD_DIRECT).await
        {
            report(&VdiError::Write { oid, source });
            return ret(1);
        }
        if let Err(e) = set_entry(at, dst, idx, new_vid, flag::CMD_DIRECT).await {
            report(&e);
            return ret(1);
        }
    }
    show_progress(n as u64 * obj, h.vdi_size, false);
    Ok(())
}

const ROLLBACK_PROMPT: &str = "This operation discards any changes made since the previous\nsnapshot was taken.  Continue? [yes/no]: ";

/// `vdi rollback -s <snapshot> <name>`: deletes the working VDI and
/// creates a new one whose parent is the snapshot.
pub async fn rollback(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    if o.snapshot_id == 0 && o.snapshot_tag.is_empty() {
        err!("Please specify the '-s' option");
        return ret(64);
    }
    let (snapid, tag, force) = (o.snapshot_id, o.snapshot_tag.clone(), o.force);
    let snap = open_vdi(ctx, &name, snapid, &tag, false).await?.header;
    if !force {
        confirm(ROLLBACK_PROMPT)?;
    }
    do_vdi_delete(ctx, &name, 0, None).await;
    let new_vid = do_vdi_create(ctx, &name, &NewVdi::like(&snap, snap.vdi_id, false)).await?;
    if ctx.opts.verbose {
        if ctx.opts.raw {
            out!("{new_vid:x}\n");
        } else {
            out!("New VDI ID of rollbacked VDI: {new_vid:x}\n");
        }
    }
    Ok(())
}

/// `vdi resize <name> <new size>`: grows the working VDI.
pub async fn resize(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let Some(size_arg) = ctx.take_operand() else {
        err!("Please specify the new size for the VDI");
        return ret(64);
    };
    let Some(new_size) = parse_size(&size_arg) else {
        size_error(&size_arg);
        return ret(64);
    };
    let mut h = open_vdi(ctx, &name, 0, b"", false).await?.header;
    let max_plain = h.object_size().saturating_mul(1 << 20);
    if h.store_policy == 0 {
        if new_size > max_plain {
            err!("New VDI size is too large. This volume's max size is {max_plain}");
            return ret(64);
        }
    } else if new_size > SD_MAX_VDI_SIZE {
        err!("New VDI size is too large This volume's max size is {SD_MAX_VDI_SIZE}");
        return ret(64);
    }
    if new_size < h.vdi_size {
        err!("Shrinking VDIs is not implemented");
        return ret(64);
    }
    h.vdi_size = new_size;
    let oid = vid_to_vdi_oid(h.vdi_id);
    let at = &mut ctx.net.at(ctx.opts.target);
    let red = Redundancy::of(&h);
    if let Err(source) = write_object(
        at,
        oid,
        WriteKind::Overwrite,
        0,
        &h.encode(),
        red,
        flag::CMD_DIRECT,
    )
    .await
    {
        report(&VdiError::Write { oid, source });
        err!("Failed to update an inode header");
        return ret(1);
    }
    Ok(())
}

const ALTER_VDI_COPY_PROMPT: &str = "    __\n   ()'`;\n   /\\|`  Caution! Changing VDI's redundancy level will affect\n  /  |   the VDI itself only and trigger recovery.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

/// The prompt of both alter-copy commands when there are fewer nodes
/// than the requested copies.
pub fn confirm_copies(copies: u8, nodes: usize) -> Res<()> {
    confirm(&format!(
        "Number of copies ({copies}) is larger than number of nodes ({nodes}).\nAre you sure you want to continue? [yes/no]: "
    ))
}

/// `vdi alter-copy -c <n> <name>`: changes a standalone VDI's replica
/// count (inode header, then ALTER_VDI_COPY, which triggers recovery).
pub async fn alter_copy(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    if o.copy_policy != 0 {
        err!("Changing redundancy level of erasure coded vdi is not supported yet.");
        return ret(64);
    }
    let (mut copies, force) = (o.nr_copies, o.force);
    if copies == 0 {
        copies = SD_DEFAULT_COPIES;
        out!("The vdi's redundancy level is not specified, use {copies} as default.\n");
    }
    if !force && copies as usize > ctx.nodes.len() {
        confirm_copies(copies, ctx.nodes.len())?;
    }
    let Ok(inode) = open_vdi(ctx, &name, 0, b"", false).await else {
        Msg::new()
            .s("Reading ")
            .b(&name)
            .s("'s vdi object failure.")
            .err();
        return ret(1);
    };
    let mut h = inode.header;
    if h.copy_policy != 0 {
        Msg::new()
            .b(&name)
            .s("'s copy policy is erasure code, changing it is not supported yet.")
            .err();
        return ret(1);
    }
    let old = h.nr_copies;
    if old == copies {
        Msg::new()
            .b(&name)
            .s(&format!(
                "'s redundancy level is already set to {old}, nothing changed."
            ))
            .err();
        return ret(1);
    }
    // QUIRK: when the VDI list cannot be read the original's check
    // answers "standalone".
    let standalone = match super::tree::load_tree(ctx).await {
        Ok(t) => t
            .is_standalone(h.vdi_id, h.name_bytes())
            .unwrap_or_else(|| {
                err!("failed to construct vdi tree");
                false
            }),
        Err(_) => true,
    };
    if !standalone {
        err!("Only standalone vdi supports changing redundancy level.");
        Msg::new()
            .s("Please clone ")
            .b(&name)
            .s(" with -n (--no-share) option first.")
            .err();
        return ret(1);
    }
    if !force {
        confirm(ALTER_VDI_COPY_PROMPT)?;
    }
    h.nr_copies = copies;
    let vid = h.vdi_id;
    let oid = vid_to_vdi_oid(vid);
    let target = ctx.target();
    let red = Redundancy {
        copies: old,
        copy_policy: h.copy_policy,
    };
    let at = &mut ctx.net.at(target);
    if let Err(source) = write_object(
        at,
        oid,
        WriteKind::Overwrite,
        0,
        &h.encode(),
        red,
        flag::CMD_DIRECT,
    )
    .await
    {
        report(&VdiError::Write { oid, source });
        Msg::new()
            .s("Overwrite the vdi object's header of ")
            .b(&name)
            .s(" failure while setting its redundancy level.")
            .err();
        return ret(1);
    }
    let mut req = SdReq::new(op::ALTER_VDI_COPY);
    req.set_vdi_state(VdiStateArgs {
        new_vid: vid,
        copies,
        block_size_shift: h.block_size_shift,
        ..Default::default()
    });
    if super::light(ctx, target, &req).await.is_ok() {
        Msg::new()
            .b(&name)
            .s(&format!(
                "'s redundancy level is set to {copies}, the old one was {old}."
            ))
            .err();
        return Ok(());
    }
    Msg::new()
        .s("Changing ")
        .b(&name)
        .s("'s redundancy level failure.")
        .err();
    ret(1)
}

/// The optional `<offset> [<len>]` operands of read and write; the
/// length defaults to "to the end".
fn range_operands(ctx: &mut Ctx) -> Res<(u64, u64)> {
    let parse = |a: Vec<u8>| {
        parse_size(&a).ok_or_else(|| {
            size_error(&a);
            End::Ret(64)
        })
    };
    let mut offset = 0;
    let mut len = u64::MAX;
    if let Some(a) = ctx.take_operand() {
        offset = parse(a)?;
        if let Some(b) = ctx.take_operand() {
            len = parse(b)?;
        }
    }
    Ok((offset, len))
}

/// `vdi read <name> [<offset> [<len>]]`: raw bytes to stdout.
pub async fn read(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let (offset, len) = range_operands(ctx)?;
    let o = &ctx.opts.vdi;
    let (snapid, tag) = (o.snapshot_id, o.snapshot_tag.clone());
    let inode = open_vdi(ctx, &name, snapid, &tag, true).await?;
    let size = inode.header.vdi_size;
    if offset > size {
        err!("Read offset is beyond the end of the VDI");
        return ret(1);
    }
    let total = len.min(size - offset);
    let target = ctx.target();
    let obj = inode.header.object_size();
    let mut buf = Vec::new();
    let mut pos = offset;
    while pos < offset + total {
        let n = (obj - pos % obj).min(offset + total - pos) as usize;
        buf.resize(n, 0);
        if let Err(e) = read_range(&mut ctx.net.at(target), &inode, pos, &mut buf, 0).await {
            report(&e);
            err!("Failed to read VDI");
            return ret(1);
        }
        if let Err(e) = crate::out::write_raw(&buf) {
            err!("Failed to write to stdout: {}", crate::net::strerror(&e));
            return ret(2);
        }
        pos += n as u64;
    }
    // SAFETY: fsync on fd 1; failures (pipes) are irrelevant.
    unsafe { libc::fsync(1) };
    Ok(())
}

/// Reads from stdin until `buf` is full or EOF (the original's `xread`);
/// returns the number of bytes read.
pub fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of a live buffer.
        let n = unsafe { libc::read(0, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    Ok(got)
}

/// `vdi write <name> [<offset> [<len>]]`: stdin into the VDI, object by
/// object. On a short read the rest of the current piece is written as
/// zeros and dog stops (QUIRK, CLI.md §2.3.15). A write of several
/// objects shows the progress bar on a terminal.
pub async fn write(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let (offset, len) = range_operands(ctx)?;
    let mut inode = open_vdi(ctx, &name, 0, b"", true).await?;
    let size = inode.header.vdi_size;
    if offset > size {
        err!("Write offset is beyond the end of the VDI");
        return ret(1);
    }
    let flags = if ctx.opts.vdi.writeback {
        flag::CMD_CACHE
    } else {
        0
    };
    let mut total = len.min(size - offset);
    let target = ctx.target();
    let obj = inode.header.object_size();
    let mut buf = Vec::new();
    let mut done = 0u64;
    while done < total {
        let pos = offset + done;
        let n = (obj - pos % obj).min(total - done) as usize;
        buf.resize(n, 0);
        let got = match read_stdin(&mut buf) {
            Ok(g) => g,
            Err(e) => {
                err!("Failed to read from stdin: {}", crate::net::strerror(&e));
                return ret(2);
            }
        };
        if got < n {
            buf[got..].fill(0);
            total = done + n as u64;
        }
        if let Err(e) = write_range(&mut ctx.net.at(target), &mut inode, pos, &buf, flags).await {
            report(&e);
            if matches!(e, VdiError::Write { .. }) {
                err!("Failed to write VDI");
            }
            return ret(1);
        }
        done += n as u64;
        // Writes of more than one object show their progress (stdout is
        // free: the data comes from stdin).
        if total > obj {
            show_progress(done, total, false);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(name: &[u8], vid: u32, snap: bool) -> Inode {
        let mut h = InodeHeader {
            vdi_id: vid,
            vdi_size: 20 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 1,
            create_time: 1795252331u64 << 32,
            snap_ctime: snap as u64,
            ..Default::default()
        };
        h.name[..name.len()].copy_from_slice(name);
        Inode::new(h)
    }

    #[test]
    fn list_rows_match_spec() {
        // SAFETY: test setup of the process time zone; tests that read
        // TZ all set the same value.
        unsafe { std::env::set_var("TZ", "UTC") };
        crate::text::init_timezone();
        let mut i = inode(b"replica", 0xc52127, true);
        i.header.tag[..3].copy_from_slice(b"tag");
        i.data_vdi_id[0] = 0xc52127;
        i.data_vdi_id[1] = 0xc52127;
        i.data_vdi_id[2] = 0xc52127;
        assert_eq!(
            String::from_utf8(list_row(0xc52127, &i, 1, false)).unwrap(),
            "s replica      1   20 GB   12 MB  0.0 MB 2026-11-21 09:12   c52127      3           tag  22\n"
        );
        let mut e = inode(b"erasure", 0xd2130, false);
        e.header.copy_policy = 0x22;
        e.header.nr_copies = 6;
        assert_eq!(
            String::from_utf8(list_row(0xd2130, &e, 0, false)).unwrap(),
            "  erasure      0   20 GB  0.0 MB  0.0 MB 2026-11-21 09:12    d2130    4:2                22\n"
        );
        let mut c = inode(b"c2", 0x4a6340, false);
        c.header.parent_vdi_id = 0x709129;
        c.header.vdi_size = 1 << 30;
        c.header.nr_copies = 2;
        c.data_vdi_id[0] = 0x709129;
        assert_eq!(
            String::from_utf8(list_row(0x4a6340, &c, 0, true)).unwrap(),
            "c c2 0 1073741824 0 4194304 1795252331 4a6340 2  22\n"
        );
        let mut s = inode(b"sp ace\\x", 0xd242bd, false);
        s.header.snap_id = 2;
        s.header.vdi_size = 10 << 20;
        assert_eq!(
            list_row(0xd242bd, &s, 0, true),
            b"= sp\\ ace\\\\x 0 10485760 0 0 1795252331 d242bd 3  22\n"
        );
    }
}
