//! End-to-end checksums of object files, kept beside them.
//!
//! Every object file (and stale copy, and erasure-coded strip) may have a
//! *sidecar* in the same directory: `.<file name>.csum`. The object file
//! itself stays byte-identical to the original's layout, so a store
//! written by the original works unchanged (its objects have no sidecar
//! and are read unverified until the scrub computes one), and the
//! original, which skips dot files, can still read ours.
//!
//! A sidecar is a 16-byte header (magic, format version, block size, the
//! object file's size) and then one 8-byte entry per 4 KiB block of the
//! object: the CRC32C of what the block holds (`cur`) and of what it
//! held before the write in progress (`prev`). 4 KiB blocks keep aligned
//! writes free of read-modify-write; an entry never straddles a disk
//! sector, so it is written whole or not at all.
//!
//! Crash safety without a journal: a write makes the new entries durable
//! (`cur` = new, `prev` = old) before it writes the data, and only after
//! the data is durable forgets `prev`. Whatever a crash leaves, each block
//! then matches `cur` or `prev`: an unacknowledged write reads as the old
//! or the new bytes, never as corruption. Anything else is corruption: a
//! read never returns it. A create replaces the sidecar before the data
//! (both by rename) with `prev` taken from the old sidecar, so the old
//! file keeps verifying until the new one is in place.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes covered by one checksum.
pub const BLOCK: u64 = 4096;
const MAGIC: [u8; 4] = *b"SDCK";
const VERSION: u16 = 1;
const HEADER: usize = 16;
const ENTRY: usize = 8;

/// The sidecar of the object file at `data`.
pub fn sidecar_path(data: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(data.file_name().unwrap_or_default());
    name.push(".csum");
    data.with_file_name(name)
}

/// Whether a directory entry is a sidecar (so listings skip it).
pub fn is_sidecar(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".csum")
}

/// How many blocks an object file of `size` bytes has.
pub fn blocks(size: u64) -> usize {
    size.div_ceil(BLOCK) as usize
}

/// The byte range of block `b` in a file of `size` bytes.
pub fn block_range(b: usize, size: u64) -> (u64, u64) {
    let start = b as u64 * BLOCK;
    (start, (start + BLOCK).min(size))
}

/// One block's checksums (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub cur: u32,
    pub prev: u32,
}

impl Entry {
    pub fn settled(sum: u32) -> Entry {
        Entry {
            cur: sum,
            prev: sum,
        }
    }
    /// Whether a block whose CRC32C is `sum` is what this entry vouches for.
    pub fn accepts(&self, sum: u32) -> bool {
        sum == self.cur || sum == self.prev
    }
}

/// A digest of a copy's bytes from its blocks' checksums: equal bytes give
/// equal digests (and different bytes different ones, but for CRC32C's
/// collisions) without reading the bytes again.
pub fn digest(entries: &[Entry]) -> u32 {
    let sums: Vec<u8> = entries.iter().flat_map(|e| e.cur.to_le_bytes()).collect();
    crc32c::crc32c(&sums)
}

/// A decoded sidecar: the object's size and every block's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub size: u64,
    pub entries: Vec<Entry>,
}

/// Why a sidecar cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not a sidecar of this format (wrong magic, version or length).
    Format(String),
}

impl Sidecar {
    /// Checksums of `data`, a whole object file.
    pub fn of(data: &[u8]) -> Sidecar {
        Sidecar {
            size: data.len() as u64,
            entries: data
                .chunks(BLOCK as usize)
                .map(|c| Entry::settled(crc32c::crc32c(c)))
                .collect(),
        }
    }

    /// Checksums of an object of `size` bytes that is all zeros except
    /// `data` at `offset` (what a create writes), without building it.
    pub fn of_sparse(size: u64, offset: u64, data: &[u8]) -> Sidecar {
        let zero_block = crc32c::crc32c(&[0u8; BLOCK as usize]);
        let end = offset + data.len() as u64;
        let entries = (0..blocks(size))
            .map(|b| {
                let (s, e) = block_range(b, size);
                let sum = if e <= offset || s >= end {
                    if e - s == BLOCK {
                        zero_block
                    } else {
                        crc32c::crc32c(&vec![0u8; (e - s) as usize])
                    }
                } else {
                    let mut block = vec![0u8; (e - s) as usize];
                    let from = offset.max(s);
                    let to = end.min(e);
                    block[(from - s) as usize..(to - s) as usize]
                        .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                    crc32c::crc32c(&block)
                };
                Entry::settled(sum)
            })
            .collect();
        Sidecar { size, entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.entries.len() * ENTRY);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(BLOCK.trailing_zeros() as u8);
        b.push(0);
        b.extend_from_slice(&self.size.to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&encode_entry(e));
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Sidecar, Bad> {
        let size = decode_header(b)?;
        let body = &b[HEADER..];
        if (body.len() as u64) != blocks(size) as u64 * ENTRY as u64 {
            return Err(Bad::Format(format!(
                "{} bytes of checksums for a {size}-byte object",
                body.len()
            )));
        }
        let entries = body.chunks(ENTRY).map(decode_entry).collect();
        Ok(Sidecar { size, entries })
    }
}

/// Blocks of a file range starting at block `first` whose bytes (`data`,
/// starting at that block) the entries (of blocks `first..`) do not vouch
/// for; a block without an entry is not vouched for.
pub fn bad_blocks(entries: &[Entry], first: usize, data: &[u8]) -> Vec<usize> {
    data.chunks(BLOCK as usize)
        .enumerate()
        .filter(|(i, c)| {
            entries
                .get(*i)
                .is_none_or(|e| !e.accepts(crc32c::crc32c(c)))
        })
        .map(|(i, _)| first + i)
        .collect()
}

fn decode_entry(c: &[u8]) -> Entry {
    Entry {
        cur: u32::from_le_bytes(c[..4].try_into().unwrap()),
        prev: u32::from_le_bytes(c[4..8].try_into().unwrap()),
    }
}

fn encode_entry(e: &Entry) -> [u8; ENTRY] {
    let mut b = [0u8; ENTRY];
    b[..4].copy_from_slice(&e.cur.to_le_bytes());
    b[4..].copy_from_slice(&e.prev.to_le_bytes());
    b
}

/// The object size a sidecar header states, if it is one of this format.
fn decode_header(b: &[u8]) -> Result<u64, Bad> {
    if b.len() < HEADER || b[..4] != MAGIC {
        return Err(Bad::Format("not a checksum file".into()));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != VERSION || b[6] as u32 != BLOCK.trailing_zeros() {
        return Err(Bad::Format(format!(
            "checksum format {version} with {}-byte blocks, this sheep knows {VERSION} with {BLOCK}",
            1u64.checked_shl(b[6] as u32).unwrap_or(0)
        )));
    }
    Ok(u64::from_le_bytes(b[8..16].try_into().unwrap()))
}

/// An open sidecar whose header was checked, the size of its object, and
/// a copy in memory of the entries its file holds, so a verified read or
/// a write reads no checksums from the file. The file is written first
/// and the copy after ([`SidecarFile::write_file`], then
/// [`SidecarFile::set_entries`]); the store updates every copy it keeps of
/// one file (see `Store::write_sums`), so a handle opened while a write
/// was under way never keeps older entries than the file.
pub struct SidecarFile {
    file: File,
    pub size: u64,
    /// Which file this is (device, inode), so copies of one file are known.
    id: (u64, u64),
    /// The entries the file holds (fewer than the object's blocks if it
    /// was cut short).
    entries: std::sync::Mutex<Vec<Entry>>,
}

impl SidecarFile {
    /// Checks the header of the open sidecar `file` and reads its entries.
    pub fn check(file: File) -> std::io::Result<Result<SidecarFile, Bad>> {
        use std::os::unix::fs::MetadataExt;
        let mut h = [0u8; HEADER];
        let n = pread_upto(&file, &mut h, 0)?;
        let size = match decode_header(&h[..n]) {
            Ok(size) => size,
            Err(bad) => return Ok(Err(bad)),
        };
        let mut b = vec![0u8; blocks(size) * ENTRY];
        let n = pread_upto(&file, &mut b, HEADER as u64)?;
        let entries = b[..n - n % ENTRY].chunks(ENTRY).map(decode_entry).collect();
        let m = file.metadata()?;
        Ok(Ok(SidecarFile {
            file,
            size,
            id: (m.dev(), m.ino()),
            entries: std::sync::Mutex::new(entries),
        }))
    }

    /// The entries of blocks `first..end` (fewer if the object has fewer
    /// blocks or the file was cut short).
    pub fn entries(&self, first: usize, end: usize) -> Vec<Entry> {
        let held = self.entries.lock().unwrap();
        let end = end.min(blocks(self.size)).min(held.len());
        held.get(first..end).unwrap_or_default().to_vec()
    }

    /// Writes the entries of blocks `first..` into the file (whole
    /// entries); [`SidecarFile::set_entries`] follows.
    pub fn write_file(&self, first: usize, entries: &[Entry]) -> std::io::Result<()> {
        write_entries(&self.file, first, entries)
    }

    /// Sets the entries of blocks `first..` in memory, as written to the
    /// file.
    pub fn set_entries(&self, first: usize, entries: &[Entry]) {
        let mut held = self.entries.lock().unwrap();
        let end = first + entries.len();
        if held.len() < end {
            // What the file now reads as: zeros up to `first`.
            held.resize(end, Entry { cur: 0, prev: 0 });
        }
        held[first..end].copy_from_slice(entries);
    }

    /// Whether `other` is a handle of the same file.
    pub fn same_file(&self, other: &SidecarFile) -> bool {
        self.id == other.id
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Reads into `buf` from `offset` of `f` until `buf` is full or the file
/// ends; how many bytes were read (the rest of `buf` is left as it is).
pub(crate) fn pread_upto(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// A `pread` that does not wait for the disk (`RWF_NOWAIT`): how many
/// bytes from `offset` the page cache held, up to `buf`'s length; None if
/// none (or on any error: the caller falls back to a blocking read).
pub(crate) fn pread_nowait(f: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; `f` is open.
    let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    usize::try_from(n).ok()
}

/// Writes the entries of blocks `first..` in place (whole entries only).
pub fn write_entries(f: &File, first: usize, entries: &[Entry]) -> std::io::Result<()> {
    let b: Vec<u8> = entries.iter().flat_map(encode_entry).collect();
    f.write_all_at(&b, (HEADER + first * ENTRY) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sparse_sums_equal_the_sums_of_the_built_object() {
        for (size, offset, len) in [
            (4 << 20, 0, 4096),
            (4 << 20, 4000, 300),
            (4 << 20, (4 << 20) - 10, 10),
            (10_000, 5000, 5000),
            (100, 0, 0),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let mut full = vec![0u8; size as usize];
            full[offset as usize..offset as usize + len].copy_from_slice(&data);
            assert_eq!(
                Sidecar::of_sparse(size, offset as u64, &data),
                Sidecar::of(&full)
            );
        }
    }

    #[test]
    fn a_flipped_bit_is_found_in_its_block() {
        let mut data = vec![7u8; 3 * BLOCK as usize + 100];
        let sc = Sidecar::of(&data);
        assert_eq!(Sidecar::decode(&sc.encode()), Ok(sc.clone()));
        assert!(bad_blocks(&sc.entries, 0, &data).is_empty());
        data[2 * BLOCK as usize + 5] ^= 1;
        assert_eq!(bad_blocks(&sc.entries, 0, &data), vec![2]);
        assert_eq!(
            bad_blocks(&sc.entries[2..], 2, &data[2 * BLOCK as usize..]),
            vec![2]
        );
        assert!(bad_blocks(&sc.entries[3..], 3, &data[3 * BLOCK as usize..]).is_empty());
    }

    #[test]
    fn the_previous_contents_still_verify_until_forgotten() {
        let old = vec![1u8; 4096];
        let new = vec![2u8; 4096];
        let e = Entry {
            cur: crc32c::crc32c(&new),
            prev: crc32c::crc32c(&old),
        };
        assert!(e.accepts(crc32c::crc32c(&old)) && e.accepts(crc32c::crc32c(&new)));
        assert!(!Entry::settled(e.cur).accepts(crc32c::crc32c(&old)));
    }

    #[test]
    fn foreign_files_are_refused() {
        let sc = Sidecar::of(&[1u8; 5000]).encode();
        assert!(Sidecar::decode(&sc[..sc.len() - 1]).is_err());
        let mut v = sc.clone();
        v[4] = 9;
        assert!(matches!(Sidecar::decode(&v), Err(Bad::Format(m)) if m.contains("format 9")));
        assert!(Sidecar::decode(b"0123456789abcdef").is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(sc) = Sidecar::decode(&b) {
                prop_assert_eq!(sc.encode(), b);
            }
        }
    }
}
