//! The disks of a node, and which disk holds which object.
//!
//! As the original's multi-disk store: every disk is a directory that
//! holds objects directly (stale copies in its `.stale`), under the same
//! file names whatever the disk, so an original multi-disk store works
//! unchanged. A disk's weight is its space, recorded in the directory's
//! `user.md.size` attribute the first time it is used (its free space
//! then). The disks are cut into virtual disks of 16 MiB of that space,
//! placed on a ring at `sd_hash_next` steps from the FNV-1a hash of the
//! disk's path; an object lives on the disk of the first virtual disk at
//! or after the hash of its oid (wrapping around). Adding or removing a
//! disk so moves only the objects whose virtual disk changed.
//!
//! A node started with one directory (no disks) keeps its objects in
//! `<dir>/obj`, a disk of its own, as the original does.

use sd_proto::{sd_hash, sd_hash_next, sd_hash_oid};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Space per virtual disk.
pub const VDISK_SIZE: u64 = 16 << 20;
/// The attribute that records a disk's space.
const SPACE_XATTR: &str = "user.md.size";

/// One disk: a directory of objects.
#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    /// Where its stale copies are.
    pub stale: PathBuf,
    /// Its weight: the space it had when first used.
    pub space: u64,
    /// Group commit of its directory syncs.
    pub(crate) dir_sync: crate::DirSync,
}

impl Disk {
    pub fn new(path: &Path, space: u64) -> Disk {
        Disk {
            path: path.to_path_buf(),
            stale: path.join(".stale"),
            space,
            dir_sync: Default::default(),
        }
    }
}

/// The node's disks (sorted by path, as the original reports them) and
/// their virtual-disk ring.
#[derive(Debug, Default)]
pub struct Disks {
    list: Vec<Arc<Disk>>,
    /// (hash, index into `list`), sorted by hash.
    ring: Vec<(u64, usize)>,
}

impl Disks {
    pub fn new(mut list: Vec<Arc<Disk>>) -> Disks {
        list.sort_by(|a, b| a.path.cmp(&b.path));
        let mut ring = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let mut h = sd_hash(d.path.as_os_str().as_encoded_bytes());
            for _ in 0..d.space.div_ceil(VDISK_SIZE).max(1) {
                h = sd_hash_next(h);
                ring.push((h, i));
            }
        }
        ring.sort_unstable();
        Disks { list, ring }
    }

    pub fn list(&self) -> &[Arc<Disk>] {
        &self.list
    }

    /// The disk `oid` lives on (None with no disk left).
    pub fn place(&self, oid: u64) -> Option<&Arc<Disk>> {
        let h = sd_hash_oid(oid);
        let at = self.ring.partition_point(|(v, _)| *v < h);
        let (_, i) = self.ring.get(at).or_else(|| self.ring.first())?;
        Some(&self.list[*i])
    }

    /// The disk whose directory is `path`.
    pub fn find(&self, path: &Path) -> Option<&Arc<Disk>> {
        self.list.iter().find(|d| d.path == path)
    }

    /// These disks without the one at `path`.
    pub fn without(&self, path: &Path) -> Disks {
        Disks::new(
            self.list
                .iter()
                .filter(|d| d.path != path)
                .cloned()
                .collect(),
        )
    }

    /// These disks and `disk`.
    pub fn with(&self, disk: Disk) -> Disks {
        let mut list = self.list.clone();
        list.push(Arc::new(disk));
        Disks::new(list)
    }
}

/// The space recorded for the disk at `path`, recording its free space
/// now if none is; None if the directory takes no attributes.
pub fn recorded_space(path: &Path, free_now: u64) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let name = std::ffi::CString::new(SPACE_XATTR).unwrap();
    let mut v = [0u8; 8];
    // SAFETY: valid NUL-terminated strings and an 8-byte buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    if n == 8 {
        return Some(u64::from_le_bytes(v));
    }
    let v = free_now.to_le_bytes();
    // SAFETY: as above.
    let set = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    (set == 0).then_some(free_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disks(specs: &[(&str, u64)]) -> Disks {
        Disks::new(
            specs
                .iter()
                .map(|(p, s)| Arc::new(Disk::new(Path::new(p), *s)))
                .collect(),
        )
    }

    #[test]
    fn objects_spread_in_proportion_to_space() {
        let d = disks(&[
            ("/d/a", 100 << 30),
            ("/d/b", 100 << 30),
            ("/d/c", 200 << 30),
        ]);
        let mut count = [0usize; 3];
        for i in 0..40_000u64 {
            let disk = d.place(0x0012_3400_0000_0000 | i).unwrap();
            count[d.list().iter().position(|x| x.path == disk.path).unwrap()] += 1;
        }
        assert!(
            count[2] > count[0] * 3 / 2 && count[2] > count[1] * 3 / 2,
            "{count:?}"
        );
        assert!(count[0] > 8000 && count[1] > 8000, "{count:?}");
    }

    #[test]
    fn removing_a_disk_moves_only_its_objects() {
        let all = disks(&[("/d/a", 10 << 30), ("/d/b", 10 << 30), ("/d/c", 10 << 30)]);
        let less = all.without(Path::new("/d/b"));
        assert_eq!(less.list().len(), 2);
        for i in 0..10_000u64 {
            let oid = 0x0055_0000_0000_0000 | i;
            let before = &all.place(oid).unwrap().path;
            let after = &less.place(oid).unwrap().path;
            if before != Path::new("/d/b") {
                assert_eq!(before, after);
            }
        }
        assert!(Disks::default().place(1).is_none());
    }

    #[test]
    fn placement_is_the_originals() {
        // The ring of one disk wraps: every object lands on it.
        let one = disks(&[("/x", 1)]);
        assert_eq!(one.place(u64::MAX).unwrap().path, Path::new("/x"));
        // Virtual disks follow sd_hash_next from the path's hash.
        let d = disks(&[("/d0", 3 * VDISK_SIZE)]);
        let h1 = sd_hash_next(sd_hash(b"/d0"));
        let h2 = sd_hash_next(h1);
        let h3 = sd_hash_next(h2);
        let mut want = vec![h1, h2, h3];
        want.sort_unstable();
        assert_eq!(d.ring.iter().map(|r| r.0).collect::<Vec<_>>(), want);
    }
}
