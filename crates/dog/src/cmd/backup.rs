//! `dog vdi backup` / `dog vdi restore` (CLI.md §2.3.16, §2.3.17): the
//! original's incremental backup stream between two snapshots, and its
//! application on top of a snapshot.
//!
//! Stream format (little-endian u32 fields): a header {version = 1,
//! magic = 0x11921192}; per changed object a record {index, offset,
//! length, reserved = 0} followed by `length` bytes of the object at
//! `offset`; an end marker record with index 0xFFFFFFFF and zeros.

use super::vdi::{do_vdi_create, do_vdi_delete, open_vdi, read_stdin};
use super::{report, ret};
use crate::app::Ctx;
use crate::out::{show_progress, write_raw};
use crate::{err, out, Res};
use sd_client::vdi::{
    entry, nr_index_entries, read_inode_header, read_object, write_object, NewVdi, Redundancy,
    VdiError, WriteKind,
};
use sd_proto::le::{put_u32, u32_at};
use sd_proto::*;

const BACKUP_VERSION: u32 = 1;
const BACKUP_MAGIC: u32 = 0x1192_1192;
/// Index of the end marker record.
const END_INDEX: u32 = u32::MAX;
/// Unchanged data is trimmed in units of this many bytes.
const SECTOR_SIZE: usize = 512;
const HEADER_SIZE: usize = 8;
const RECORD_SIZE: usize = 16;

/// The stream header.
fn stream_header() -> [u8; HEADER_SIZE] {
    let mut b = [0; HEADER_SIZE];
    put_u32(&mut b, 0, BACKUP_VERSION);
    put_u32(&mut b, 4, BACKUP_MAGIC);
    b
}

/// One record header: object index, byte range inside the object.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Record {
    idx: u32,
    offset: u32,
    length: u32,
}

impl Record {
    const END: Record = Record {
        idx: END_INDEX,
        offset: 0,
        length: 0,
    };

    fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0; RECORD_SIZE];
        put_u32(&mut b, 0, self.idx);
        put_u32(&mut b, 4, self.offset);
        put_u32(&mut b, 8, self.length);
        b
    }

    fn decode(b: &[u8; RECORD_SIZE]) -> Record {
        Record {
            idx: u32_at(b, 0),
            offset: u32_at(b, 4),
            length: u32_at(b, 8),
        }
    }
}

/// The part of object `to` that differs from `from` (same length, a
/// whole number of sectors): identical leading and trailing sectors are
/// trimmed (the original's `compact_obj_backup`). Returns (offset, length).
fn changed_range(to: &[u8], from: &[u8]) -> (usize, usize) {
    fn sector(b: &[u8], at: usize) -> &[u8] {
        &b[at..at + SECTOR_SIZE]
    }
    let (mut offset, mut length) = (0, to.len());
    while length > 0 && sector(to, offset) == sector(from, offset) {
        offset += SECTOR_SIZE;
        length -= SECTOR_SIZE;
    }
    let mut end = to.len();
    while length > 0 && sector(to, end - SECTOR_SIZE) == sector(from, end - SECTOR_SIZE) {
        end -= SECTOR_SIZE;
        length -= SECTOR_SIZE;
    }
    (offset, length)
}

/// Reads a whole data object for the backup; `None` (after the
/// original's messages) on failure.
async fn read_whole(ctx: &mut Ctx, vid: u32, idx: u32, size: u32) -> Option<Vec<u8>> {
    let target = ctx.target();
    let oid = vid_to_data_oid(vid, idx as u64);
    let at = &mut ctx.net.at(target);
    match read_object(at, oid, 0, size, Redundancy::default(), flag::CMD_DIRECT).await {
        Ok(d) => Some(d),
        Err(e) => {
            report(&e);
            err!("Failed to read object {vid:x}, {idx}");
            None
        }
    }
}

/// `vdi backup -F <from> -s <to> <name>`: the difference between two
/// snapshots of a VDI, to stdout.
pub async fn backup(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    let none = |id: i32, tag: &[u8]| id == 0 && tag.is_empty();
    if none(o.snapshot_id, &o.snapshot_tag) || none(o.from_snapshot_id, &o.from_snapshot_tag) {
        err!("Please specify snapshots with '-F' and '-s' options");
        return ret(64);
    }
    let (to_id, to_tag) = (o.snapshot_id, o.snapshot_tag.clone());
    let (from_id, from_tag) = (o.from_snapshot_id, o.from_snapshot_tag.clone());
    let from = open_vdi(ctx, &name, from_id, &from_tag, true).await?;
    let to = open_vdi(ctx, &name, to_id, &to_tag, true).await?;
    let object_size = from.header.object_size() as usize;
    if let Err(e) = write_raw(&stream_header()) {
        err!(
            "failed to write backup header, {}",
            crate::net::strerror(&e)
        );
        return ret(2);
    }
    for idx in 0..nr_index_entries(&to.header) as u32 {
        let (from_vid, to_vid) = (entry(&from, idx as u64), entry(&to, idx as u64));
        // The same object (or none) on both sides: nothing changed.
        if from_vid == to_vid {
            continue;
        }
        let new = match to_vid {
            0 => vec![0; object_size],
            v => match read_whole(ctx, v, idx, object_size as u32).await {
                Some(d) => d,
                None => return ret(1),
            },
        };
        let old = match from_vid {
            0 => vec![0; object_size],
            v => match read_whole(ctx, v, idx, object_size as u32).await {
                Some(d) => d,
                None => return ret(1),
            },
        };
        let (offset, length) = changed_range(&new, &old);
        if length == 0 {
            continue;
        }
        let rec = Record {
            idx,
            offset: offset as u32,
            length: length as u32,
        };
        let w = write_raw(&rec.encode()).and_then(|()| write_raw(&new[offset..offset + length]));
        if let Err(e) = w {
            err!("failed to write backup data, {}", crate::net::strerror(&e));
            return ret(2);
        }
    }
    if let Err(e) = write_raw(&Record::END.encode()) {
        err!("failed to write end marker, {}", crate::net::strerror(&e));
        return ret(2);
    }
    // SAFETY: fsync on fd 1; failures (pipes) are irrelevant.
    unsafe { libc::fsync(1) };
    Ok(())
}

/// Reads exactly `buf.len()` bytes from stdin; false on a short read.
fn read_exact_stdin(buf: &mut [u8]) -> std::io::Result<bool> {
    read_stdin(buf).map(|n| n == buf.len())
}

/// `vdi restore -s <snapshot> <name> < stream`: the current VDI is
/// replaced by a child of the snapshot with the stream applied, which is
/// then frozen as a new snapshot; a new current VDI is created on the
/// old current VDI's parent.
///
/// Unlike the original, the stream header is checked before the current
/// VDI is deleted, so a bad or empty stream changes nothing, and records
/// outside the VDI or its objects are refused as a corrupted stream
/// instead of being written past the buffer or the index.
pub async fn restore(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let o = &ctx.opts.vdi;
    if o.snapshot_id == 0 && o.snapshot_tag.is_empty() {
        err!("We can restore a backup file only to snapshots");
        err!("Please specify the '-s' option");
        return ret(64);
    }
    let (snapid, tag) = (o.snapshot_id, o.snapshot_tag.clone());
    if open_vdi(ctx, &name, snapid, &tag, false).await.is_err() {
        crate::out::Msg::new()
            .s(&format!("Snapshot ID {snapid} or tag "))
            .b(&tag)
            .s(" doesn't exist")
            .err();
        return ret(1);
    }
    let current = open_vdi(ctx, &name, 0, b"", false).await?.header;
    let target = ctx.target();
    if let Err(e) = read_inode_header(&mut ctx.net.at(target), current.parent_vdi_id).await {
        report(&e);
        out!("error\n");
        return ret(e.res().0 as i32);
    }
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } == 1 {
        err!("stdin must be pipe");
        return ret(64);
    }
    let mut hdr = [0u8; HEADER_SIZE];
    match read_exact_stdin(&mut hdr) {
        Ok(true) => {}
        Ok(false) => err!("failed to read backup header, Success"),
        Err(e) => err!("failed to read backup header, {}", crate::net::strerror(&e)),
    }
    if hdr != stream_header() {
        err!("The backup file is corrupted");
        return ret(2);
    }
    do_vdi_delete(ctx, &name, 0, None).await;
    let r = apply_stream(ctx, &name, snapid, &tag).await;
    // Recreate a current VDI on the old one's parent; the restored VDI
    // becomes a snapshot.
    let resume = NewVdi::like(&current, current.parent_vdi_id, true);
    if let Err(e) = do_vdi_create(ctx, &name, &resume).await {
        err!("failed to resume the current vdi");
        return Err(e);
    }
    r
}

/// The original's `do_restore` after the header: a new VDI on the
/// snapshot, each record written into it with copy-on-write.
async fn apply_stream(ctx: &mut Ctx, name: &[u8], snapid: i32, tag: &[u8]) -> Res<()> {
    let snap = open_vdi(ctx, name, snapid, tag, true).await?;
    let h = &snap.header;
    let vid = match do_vdi_create(ctx, name, &NewVdi::like(h, h.vdi_id, false)).await {
        Ok(v) => v,
        Err(e) => {
            err!("Failed to read VDI");
            return Err(e);
        }
    };
    let object_size = h.object_size() as usize;
    let nr = nr_index_entries(h);
    let mut data = vec![0u8; object_size];
    loop {
        let mut rb = [0u8; RECORD_SIZE];
        if !read_exact_stdin(&mut rb).unwrap_or(false) {
            err!("failed to read backup data");
            return ret(2);
        }
        let rec = Record::decode(&rb);
        if rec.idx == END_INDEX {
            show_progress(h.vdi_size, h.vdi_size, false);
            return Ok(());
        }
        let (off, len) = (rec.offset as usize, rec.length as usize);
        if u64::from(rec.idx) >= nr || off.checked_add(len).is_none_or(|end| end > object_size) {
            err!("The backup file is corrupted");
            return ret(2);
        }
        if !read_exact_stdin(&mut data[..len]).unwrap_or(false) {
            err!("failed to read backup data");
            return ret(2);
        }
        if let Err(e) = restore_obj(ctx, &snap, vid, rec, &data[..len]).await {
            report(&e);
            err!("failed to restore backup");
            do_vdi_delete(ctx, name, 0, None).await;
            return ret(1);
        }
        let done = (rec.idx as u64 + 1) * object_size as u64;
        show_progress(done.min(h.vdi_size), h.vdi_size, false);
    }
}

/// Writes one record into object `rec.idx` of `vid` (copy-on-write from
/// the snapshot's object) and records it in `vid`'s index.
async fn restore_obj(
    ctx: &mut Ctx,
    snap: &Inode,
    vid: u32,
    rec: Record,
    data: &[u8],
) -> Result<(), VdiError> {
    let target = ctx.target();
    let at = &mut ctx.net.at(target);
    let red = Redundancy::of(&snap.header);
    let kind = match entry(snap, rec.idx as u64) {
        0 => WriteKind::Create,
        p => WriteKind::CopyOnWrite {
            cow_oid: vid_to_data_oid(p, rec.idx as u64),
        },
    };
    let oid = vid_to_data_oid(vid, rec.idx as u64);
    write_object(at, oid, kind, rec.offset, data, red, flag::CMD_DIRECT)
        .await
        .map_err(|source| VdiError::Write { oid, source })?;
    let inode_oid = vid_to_vdi_oid(vid);
    let offset = data_vdi_id_offset(rec.idx) as u32;
    write_object(
        at,
        inode_oid,
        WriteKind::Overwrite,
        offset,
        &vid.to_le_bytes(),
        red,
        flag::CMD_DIRECT,
    )
    .await
    .map_err(|source| VdiError::UpdateIndex {
        oid: inode_oid,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_framing_matches_the_original() {
        assert_eq!(stream_header(), [1, 0, 0, 0, 0x92, 0x11, 0x92, 0x11]);
        let r = Record {
            idx: 3,
            offset: 512,
            length: 1024,
        };
        assert_eq!(Record::decode(&r.encode()), r);
        assert_eq!(&r.encode()[12..], &[0; 4]);
        assert_eq!(
            Record::END.encode(),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn changed_range_trims_identical_sectors() {
        let from = vec![0u8; 8 * SECTOR_SIZE];
        let mut to = from.clone();
        assert_eq!(changed_range(&to, &from), (8 * SECTOR_SIZE, 0));
        to[3 * SECTOR_SIZE + 7] = 1;
        assert_eq!(changed_range(&to, &from), (3 * SECTOR_SIZE, SECTOR_SIZE));
        to[5 * SECTOR_SIZE] = 1;
        assert_eq!(
            changed_range(&to, &from),
            (3 * SECTOR_SIZE, 3 * SECTOR_SIZE)
        );
        to[0] = 1;
        to[8 * SECTOR_SIZE - 1] = 1;
        assert_eq!(changed_range(&to, &from), (0, 8 * SECTOR_SIZE));
    }
}
