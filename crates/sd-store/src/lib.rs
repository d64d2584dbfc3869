//! The local object store of one sheep (PROTOCOL.md §11, plain store).
//!
//! Objects are plain files named by their oid in the object directory of
//! their disk (`<base>/obj/` on a node with one directory; see [`disks`]
//! for multi-disk nodes), stale copies in the disk's `.stale/` with an
//! epoch suffix, the cluster config and the epoch log under `<base>`. Every change that must survive a crash goes
//! through write-temp-then-rename (creates, config, epochs) or an in-place
//! write followed by `fdatasync` (object writes), unless the operator chose
//! `nosync`. All calls are blocking; the daemon runs them on its blocking
//! pool.

pub mod csum;
pub mod direct;
pub mod disks;
pub mod faults;
pub mod journal;
#[cfg(any(test, feature = "mem"))]
pub mod mem;
mod open_files;
mod ranges;

use sd_proto::*;
use sha1::{Digest, Sha1};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Errors of the store, each mapped to one wire result code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such object")]
    NoObj,
    #[error("no space left on device")]
    NoSpace,
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A metadata file that cannot be trusted (named in the message).
    #[error("{0}")]
    Corrupt(String),
    /// Bytes on disk that their checksums do not vouch for: never served.
    /// The disk itself may be fine; the copy is repaired from another.
    #[error("checksum mismatch in {file} (blocks {blocks:?})")]
    Checksum { file: PathBuf, blocks: Vec<usize> },
    /// A disk of a multi-disk node failed and was unplugged: what it held
    /// is to be recovered onto the others; the request may be retried.
    /// (The store keeps the news for [`ObjectStore::take_lost_disks`].)
    #[error("disk {} failed and was unplugged: {why}", disk.display())]
    DiskLost { disk: PathBuf, why: String },
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound => StoreError::NoObj,
            _ if e.raw_os_error() == Some(libc::ENOSPC)
                || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                StoreError::NoSpace
            }
            _ => StoreError::Io(e),
        }
    }
}

impl StoreError {
    pub fn res(&self) -> SdRes {
        match self {
            StoreError::NoObj => SdRes::NO_OBJ,
            StoreError::NoSpace => SdRes::NO_SPACE,
            // As the original: the sender retries (elsewhere, or here once
            // the object is recovered onto another disk).
            StoreError::DiskLost { .. } => SdRes::NETWORK_ERROR,
            StoreError::Io(_) | StoreError::Corrupt(_) | StoreError::Checksum { .. } => SdRes::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Identifies one stored file: an object, or one strip of an EC object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ObjKey {
    pub oid: u64,
    /// Strip index for erasure-coded objects, None for replicas.
    pub ec_index: Option<u8>,
}

impl ObjKey {
    pub fn replica(oid: u64) -> Self {
        ObjKey {
            oid,
            ec_index: None,
        }
    }
    /// `<oid as 16 hex>` or `<oid>_<idx>`.
    pub fn file_name(&self) -> String {
        match self.ec_index {
            None => format!("{:016x}", self.oid),
            Some(i) => format!("{:016x}_{}", self.oid, i),
        }
    }
    /// Parses a file name of the object directory; None for anything else
    /// (temporaries, dot files, foreign files).
    pub fn parse(name: &str) -> Option<Self> {
        let (hex, idx) = match name.split_once('_') {
            Some((h, i)) => (h, Some(i.parse::<u8>().ok()?)),
            None => (name, None),
        };
        if hex.len() != 16 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some(ObjKey {
            oid: u64::from_str_radix(hex, 16).ok()?,
            ec_index: idx,
        })
    }
}

/// What [`ObjectStore::verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every block matches its checksum.
    Good,
    /// The object had no checksums; they were computed from it now.
    Computed,
    /// These blocks do not match their checksums.
    Bad(Vec<usize>),
}

/// What is known of an object file's checksums.
enum Sums {
    /// Its sidecar, open.
    Good(std::sync::Arc<csum::SidecarFile>),
    /// A sidecar that is not one this store can read: it vouches for
    /// nothing.
    Bad(PathBuf),
}

/// One disk's use, as `dog node md info` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub path: PathBuf,
    pub free: u64,
    pub used: u64,
}

/// One node's store.
pub struct Store {
    base: PathBuf,
    epoch_dir: PathBuf,
    /// The disks objects live on (one, `<base>/obj`, unless the node was
    /// given disks); replaced whole when one is plugged, unplugged or fails.
    disks: arc_swap::ArcSwap<disks::Disks>,
    /// Whether the node was given disks (so may lose one and go on).
    multi_disk: bool,
    /// Serializes changes of the disk set.
    disk_change: std::sync::Mutex<()>,
    /// How many times the disk set changed (see
    /// [`ObjectStore::disk_generation`]).
    disk_generation: std::sync::atomic::AtomicU64,
    /// Disks that failed and were unplugged, not yet reported.
    lost: std::sync::Mutex<Vec<(PathBuf, String)>>,
    nosync: bool,
    /// Numbers temporaries, so concurrent replacements of one file (a
    /// recovery and a create, two fetches of one epoch) never share one.
    tmp_seq: std::sync::atomic::AtomicU64,
    /// Failures injected on purpose (`SHEEP_INJECT`, see [`faults`]).
    faults: faults::Faults,
    /// Writes to the same blocks of one object, one at a time (see
    /// [`ranges`]).
    ranges: ranges::RangeLocks,
    /// Open sidecar files, so a verified read costs no `open`.
    sums_open: open_files::OpenFiles<csum::SidecarFile>,
    /// Open object files (working and stale copies), so a read or write
    /// costs no `open`.
    files_open: open_files::OpenFiles<File>,
    /// Whether object checksums are kept and checked (see [`csum`]); off
    /// only to measure what they cost (`SHEEP_CHECKSUMS=off`).
    checksums: bool,
    /// Where overwrites are made durable, when the node has a journal
    /// (`-j`, see [`journal`]); without one each write syncs its files.
    journal: Option<journal::Journal>,
    /// Object data read and written with `O_DIRECT` (`-D`, see [`direct`]).
    direct: bool,
}

/// The environment variable that turns object checksums off (`off`) for a
/// benchmark's baseline; `on` is the default.
pub const CHECKSUMS_ENV: &str = "SHEEP_CHECKSUMS";

/// Renames into one directory become durable with one `fsync` of the
/// directory; concurrent creates share it. A caller takes a ticket after
/// its rename; whoever syncs records the last ticket issued before it
/// started, and every caller whose ticket is covered returns at once.
#[derive(Default, Debug)]
pub(crate) struct DirSync {
    issued: std::sync::atomic::AtomicU64,
    synced: std::sync::Mutex<u64>,
}

impl Store {
    /// Opens (creating if needed) the store under `base`, objects in
    /// `<base>/obj`, and removes temporaries left by a crash.
    pub fn open(base: &Path, nosync: bool) -> Result<Store> {
        Store::open_with_disks(base, &[], nosync)
    }

    /// Opens the store under `base` with its objects on `disks` (as the
    /// original's `sheep DIR,DISK1,DISK2,...`), or in `<base>/obj` if none.
    pub fn open_with_disks(base: &Path, disk_dirs: &[PathBuf], nosync: bool) -> Result<Store> {
        let epoch_dir = base.join("epoch");
        fs::create_dir_all(&epoch_dir)?;
        remove_temporaries(&epoch_dir)?;
        let mut list = Vec::new();
        if disk_dirs.is_empty() {
            let d = base.join("obj");
            list.push(std::sync::Arc::new(open_disk(&d, None)?));
        }
        for d in disk_dirs {
            if d.join("config").exists() && d.join("epoch").exists() {
                return Err(StoreError::Corrupt(format!(
                    "{} is meta-store, abort",
                    d.display()
                )));
            }
            if list
                .iter()
                .any(|x: &std::sync::Arc<disks::Disk>| x.path == *d)
            {
                return Err(StoreError::Corrupt(format!(
                    "duplicate path {}",
                    d.display()
                )));
            }
            match open_disk(d, Some(false)) {
                Ok(disk) => list.push(std::sync::Arc::new(disk)),
                Err(StoreError::Corrupt(why)) => eprintln!("{why}"),
                Err(e) => return Err(e),
            }
        }
        if list.is_empty() {
            return Err(StoreError::Corrupt(
                "There isn't any available disk!".into(),
            ));
        }
        Ok(Store {
            base: base.to_path_buf(),
            epoch_dir,
            disks: arc_swap::ArcSwap::from_pointee(disks::Disks::new(list)),
            multi_disk: !disk_dirs.is_empty(),
            disk_change: Default::default(),
            disk_generation: Default::default(),
            lost: Default::default(),
            nosync,
            tmp_seq: Default::default(),
            faults: faults::Faults::from_env()
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?,
            ranges: Default::default(),
            sums_open: Default::default(),
            files_open: Default::default(),
            checksums: match std::env::var(CHECKSUMS_ENV).as_deref() {
                Err(_) | Ok("on") => true,
                Ok("off") => false,
                Ok(v) => {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "bad {CHECKSUMS_ENV}={v} (expected on or off)"
                    ))))
                }
            },
            journal: None,
            direct: false,
        })
    }

    /// Reads and writes object data with `O_DIRECT` from now on (`-D`).
    pub fn with_direct_io(mut self) -> Store {
        self.direct = true;
        self
    }

    /// `n` bytes of the file at `path` from `from` (a checksum block
    /// boundary), zeros past its end; how many it holds. Direct with `-D`.
    fn read_blocks(&self, path: &Path, from: u64, n: usize) -> Result<(Vec<u8>, usize)> {
        let mut buf = vec![0u8; n];
        if self.direct && direct::aligned(from, n) {
            if let Some(f) = direct::open(path, false)? {
                let mut b = direct::AlignedBuf::zeroed(n);
                let got = csum::pread_upto(&f, &mut b, from)?;
                buf[..got].copy_from_slice(&b[..got]);
                return Ok((buf, got));
            }
        }
        let got = csum::pread_upto(&*self.object_file(path)?, &mut buf, from)?;
        Ok((buf, got))
    }

    /// Writes `data` at `offset` of the object file `f` (at `path`):
    /// direct with `-D` when aligned, else through the page cache.
    fn write_data(&self, f: &File, path: &Path, offset: u64, data: &[u8]) -> Result<()> {
        self.faults.check(faults::Op::Write, path)?;
        if self.direct && direct::aligned(offset, data.len()) {
            if let Some(df) = direct::open(path, true)? {
                df.write_all_at(&direct::AlignedBuf::copy_of(data), offset)?;
                return Ok(());
            }
        }
        f.write_all_at(data, offset)?;
        Ok(())
    }

    /// Gives the store the journal in `dir` (`size` bytes), replaying the
    /// writes it holds first; how many it replayed.
    pub fn with_journal(mut self, dir: &Path, size: u64) -> Result<(Store, usize)> {
        let (j, records) = journal::Journal::open(dir, size, self.nosync)?;
        let mut touched = std::collections::HashSet::new();
        for r in &records {
            match self.located(&r.key) {
                Ok((d, path)) if path.exists() => {
                    self.judged(&d, self.apply_replayed(&path, r.offset, &r.data))?;
                    touched.insert(r.key);
                }
                // Gone with its disk (recovery brings it back), or removed
                // by a format cut short.
                Ok(_) | Err(StoreError::NoObj) => {}
                Err(e) => return Err(e),
            }
        }
        self.sync_objects(&touched)?;
        j.checkpoint(&|_| Ok(()))?;
        self.journal = Some(j);
        Ok((self, records.len()))
    }

    /// Makes the object files (and checksums) of `keys` durable; objects
    /// no longer here are skipped.
    fn sync_objects(&self, keys: &std::collections::HashSet<ObjKey>) -> Result<()> {
        for k in keys {
            let (d, path) = match self.located(k) {
                Ok(x) => x,
                Err(StoreError::NoObj) => continue,
                Err(e) => return Err(e),
            };
            self.judged(
                &d,
                (|| {
                    for p in [path.clone(), csum::sidecar_path(&path)] {
                        match File::open(&p) {
                            Ok(f) => self.sync_file(&f, &p)?,
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Ok(())
                })(),
            )?;
        }
        Ok(())
    }

    /// Before the file of `k` is replaced or removed: no journaled write
    /// may be replayed onto what takes its place.
    fn settle_journal(&self, k: &ObjKey) -> Result<()> {
        match &self.journal {
            Some(j) if j.is_dirty(k) => j.checkpoint(&|keys| self.sync_objects(keys)),
            _ => Ok(()),
        }
    }

    /// A journaled write applied again at start: the bytes, then the
    /// checksums of its blocks from what the file now holds (a crash may
    /// have left them apart).
    fn apply_replayed(&self, path: &Path, offset: u64, data: &[u8]) -> Result<()> {
        let f = OpenOptions::new().write(true).read(true).open(path)?;
        f.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        match self.open_sums(path)? {
            Some(Sums::Good(g)) if end <= g.size => {
                let first = (offset / csum::BLOCK) as usize;
                let last = end.div_ceil(csum::BLOCK) as usize;
                let mut sums = Vec::with_capacity(last - first);
                for b in first..last {
                    let (s, e) = csum::block_range(b, g.size);
                    let block = read_file_at(&f, s, (e - s) as usize)?;
                    sums.push(csum::Entry::settled(crc32c::crc32c(&block)));
                }
                self.write_sums(path, &g, first, &sums)
            }
            Some(_) => self.remove_sums(path),
            None => Ok(()),
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The disk `k` belongs on, and its working copy's path there.
    fn placed(&self, k: &ObjKey) -> Result<(std::sync::Arc<disks::Disk>, PathBuf)> {
        let ds = self.disks.load();
        let d = ds.place(k.oid).ok_or_else(no_disk)?;
        Ok((d.clone(), d.path.join(k.file_name())))
    }

    /// Where the working copy of `k` is: on the disk it belongs on, or
    /// (placed there before a disk was plugged or unplugged) on another;
    /// where it belongs if it is nowhere.
    fn located(&self, k: &ObjKey) -> Result<(std::sync::Arc<disks::Disk>, PathBuf)> {
        let (d, p) = self.placed(k)?;
        if !self.multi_disk || p.exists() {
            return Ok((d, p));
        }
        let ds = self.disks.load();
        for other in ds.list().iter().filter(|o| o.path != d.path) {
            let q = other.path.join(k.file_name());
            if q.exists() {
                return Ok((other.clone(), q));
            }
        }
        Ok((d, p))
    }

    /// The stale copy of `k` retired with `epoch`, on whichever disk.
    fn located_stale(
        &self,
        k: &ObjKey,
        epoch: u32,
    ) -> Result<(std::sync::Arc<disks::Disk>, PathBuf)> {
        let name = format!("{}.{}", k.file_name(), epoch);
        let (d, _) = self.placed(k)?;
        let p = d.stale.join(&name);
        if !self.multi_disk || p.exists() {
            return Ok((d, p));
        }
        let ds = self.disks.load();
        for other in ds.list() {
            let q = other.stale.join(&name);
            if q.exists() {
                return Ok((other.clone(), q));
            }
        }
        Ok((d, p))
    }

    /// Makes the file at `path`, open as `f`, durable.
    fn sync_file(&self, f: &File, path: &Path) -> Result<()> {
        if !self.nosync {
            self.faults.check(faults::Op::Fsync, path)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Makes the renames into directory `d` durable; the object
    /// directories of the disks share their syncs (see [`DirSync`]).
    fn sync_dir(&self, d: &Path) -> Result<()> {
        if self.nosync {
            return Ok(());
        }
        self.faults.check(faults::Op::Fsync, d)?;
        let ds = self.disks.load();
        let Some(disk) = ds.find(d) else {
            File::open(d)?.sync_all()?;
            return Ok(());
        };
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = disk.dir_sync.issued.fetch_add(1, SeqCst) + 1;
        let mut synced = disk.dir_sync.synced.lock().unwrap();
        if *synced >= ticket {
            return Ok(());
        }
        let covers = disk.dir_sync.issued.load(SeqCst);
        File::open(d)?.sync_all()?;
        *synced = covers;
        Ok(())
    }

    /// A temporary name beside `path`, unique among concurrent writers.
    /// A temporary a crash left under the same name is overwritten (the
    /// sequence starts again with every start), never an error.
    fn tmp_path(&self, path: &Path) -> PathBuf {
        let n = self
            .tmp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{n}.tmp"));
        path.with_file_name(name)
    }

    /// Writes `data` to `path` atomically: temp file, fsync, rename, fsync
    /// dir. With `sums`, the file's checksums are replaced with it: the old
    /// sidecar goes first and the new one follows the data, so a crash
    /// leaves the old or the new file with its own checksums or none
    /// (read unverified until the scrub computes them), never a file with
    /// another's checksums.
    fn atomic_write(
        &self,
        path: &Path,
        size: Option<u64>,
        sparse: bool,
        offset: u64,
        data: &[u8],
        sums: Option<&csum::Sidecar>,
    ) -> Result<()> {
        let tmp = self.tmp_path(path);
        let sum_tmp = sums.map(|_| self.tmp_path(&csum::sidecar_path(path)));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        let res = (|| {
            if let Some(sz) = size {
                f.set_len(sz)?;
                // SAFETY: fallocate on a valid descriptor; failure (e.g. a
                // filesystem without support) only loses the reservation.
                if !sparse
                    && unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, sz as libc::off_t) } != 0
                {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOSPC) {
                        return Err(e.into());
                    }
                }
            }
            self.faults.check(faults::Op::Write, path)?;
            f.write_all_at(data, offset)?;
            self.sync_file(&f, path)?;
            if let (Some(sc), Some(sum_tmp)) = (sums, &sum_tmp) {
                let g = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o640)
                    .open(sum_tmp)?;
                g.write_all_at(&sc.encode(), 0)?;
                self.sync_file(&g, sum_tmp)?;
                self.remove_sums(path)?;
                fs::rename(&tmp, path)?;
                fs::rename(sum_tmp, csum::sidecar_path(path))?;
            } else {
                fs::rename(&tmp, path)?;
            }
            self.forget_open(path);
            self.sync_dir(path.parent().unwrap())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
            if let Some(t) = &sum_tmp {
                let _ = fs::remove_file(t);
            }
        }
        res
    }

    /// The sidecar of the object file at `path`, open for reading and
    /// writing, its header checked: None if the file has none (written by
    /// the original, or before checksums) or checksums are off.
    fn open_sums(&self, path: &Path) -> Result<Option<Sums>> {
        if !self.checksums {
            return Ok(None);
        }
        let scp = csum::sidecar_path(path);
        if let Some(g) = self.sums_open.get(&scp) {
            return Ok(Some(Sums::Good(g)));
        }
        /// Why a sidecar is not kept open.
        enum NotKept {
            Missing,
            Bad,
            Failed(std::io::Error),
        }
        let opened = self.sums_open.get_or_open(&scp, || {
            let f = match OpenOptions::new().read(true).write(true).open(&scp) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(NotKept::Missing),
                Err(e) => return Err(NotKept::Failed(e)),
            };
            match csum::SidecarFile::check(f) {
                Ok(Ok(g)) => Ok(g),
                Ok(Err(_)) => Err(NotKept::Bad),
                Err(e) => Err(NotKept::Failed(e)),
            }
        });
        match opened {
            Ok(g) => Ok(Some(Sums::Good(g))),
            Err(NotKept::Missing) => Ok(None),
            Err(NotKept::Bad) => Ok(Some(Sums::Bad(scp))),
            Err(NotKept::Failed(e)) => Err(e.into()),
        }
    }

    /// Writes the entries of blocks `first..` of `g`, the sidecar of the
    /// object file at `path`: its file, then its copy in memory and that of
    /// any other handle of the same file kept open (one opened after `g`
    /// was dropped from the cache, which may have read the file before
    /// this write). Done holding the handle's shard, so no handle of the
    /// file is opened meanwhile.
    fn write_sums(
        &self,
        path: &Path,
        g: &csum::SidecarFile,
        first: usize,
        entries: &[csum::Entry],
    ) -> Result<()> {
        g.write_file(first, entries)?;
        self.sums_open.with_kept(&csum::sidecar_path(path), |kept| {
            g.set_entries(first, entries);
            if let Some(k) = kept.filter(|k| !std::ptr::eq(*k, g) && k.same_file(g)) {
                k.set_entries(first, entries);
            }
        });
        Ok(())
    }

    /// The object file at `path`, open for reading and writing: kept open
    /// (see [`open_files`]) unless it was removed or renamed meanwhile
    /// (its directory wiped, as a dead disk looks), which is found by its
    /// link count, not served.
    fn object_file(&self, path: &Path) -> Result<std::sync::Arc<File>> {
        if let Some(f) = self.files_open.get(path) {
            if linked(&f) {
                return Ok(f);
            }
            self.files_open.forget(path);
        }
        Ok(self.files_open.get_or_open(path, || {
            OpenOptions::new().read(true).write(true).open(path)
        })?)
    }

    /// [`Store::object_file`] if it is open already and its shard free:
    /// what an async caller may use without waiting.
    fn object_file_nowait(&self, path: &Path) -> Option<std::sync::Arc<File>> {
        self.files_open.try_get(path).filter(|f| linked(f))
    }

    /// Forgets the open handles of the object file at `path` and of its
    /// sidecar (it was replaced, renamed or removed).
    fn forget_open(&self, path: &Path) {
        self.files_open.forget(path);
        self.sums_open.forget(&csum::sidecar_path(path));
    }

    fn forget_all_open(&self) {
        self.files_open.clear();
        self.sums_open.clear();
    }

    /// Removes the sidecar of the object file at `path`, if any.
    fn remove_sums(&self, path: &Path) -> Result<()> {
        let scp = csum::sidecar_path(path);
        // Forgotten once gone: a handle opened before is not kept.
        let r = remove_if_present(&scp);
        self.sums_open.forget(&scp);
        r
    }

    /// [`Store::read_verified`] of object `k`, settled: blocks that still
    /// do not verify are read once more with writes to them held off, so
    /// a busy machine that keeps a writer between its data and its
    /// checksums longer than the retries wait is never taken for rot.
    fn read_settled(&self, k: &ObjKey, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
        match self.read_verified(path, offset, len) {
            Err(StoreError::Checksum { .. }) => {
                let first = (offset / csum::BLOCK) as usize;
                let end = (offset + len as u64).div_ceil(csum::BLOCK) as usize;
                let _blocks = self.ranges.lock(k, first, end.max(first + 1));
                self.read_verified(path, offset, len)
            }
            r => r,
        }
    }

    /// Reads `len` bytes at `offset` of the file at `path` (zeros past its
    /// end), verified against its checksums. A block that does not verify
    /// is read again a few times first: a write to it may be under way
    /// (its data is written after its checksum and its checksum settled
    /// after its data, so a reader can briefly see them apart; reading the
    /// data before the checksums keeps that window one-sided).
    fn read_verified(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
        let first = (offset / csum::BLOCK) as usize;
        let from = first as u64 * csum::BLOCK;
        let to = (offset + len as u64).div_ceil(csum::BLOCK) * csum::BLOCK;
        let mut bad = Vec::new();
        for attempt in 0..4 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(attempt));
            }
            let (buf, got) = self.read_blocks(path, from, (to - from) as usize)?;
            bad.clear();
            if attempt > 0 {
                // A handle opened before the sidecar was replaced.
                self.sums_open.forget(&csum::sidecar_path(path));
            }
            if let Some(g) = self.open_sums(path)? {
                let blocks = got.div_ceil(csum::BLOCK as usize);
                let read_to = from + got as u64;
                // The file must end where its checksums say it does.
                let ends_right = |size: u64| match got == buf.len() {
                    true => size >= read_to,
                    false => size == read_to || (got == 0 && size <= from),
                };
                match g {
                    Sums::Good(g) if ends_right(g.size) => {
                        let entries = g.entries(first, first + blocks);
                        bad = csum::bad_blocks(&entries, first, &buf[..got]);
                    }
                    _ => bad.extend(first..first + blocks.max(1)),
                }
            }
            if bad.is_empty() {
                return Ok(cut(buf, from, offset, len));
            }
        }
        Err(StoreError::Checksum {
            file: path.to_path_buf(),
            blocks: bad,
        })
    }

    /// Writes into the existing file at `path`, keeping its checksums true
    /// (see [`csum`] for the order that makes this crash-safe). The caller
    /// holds the written blocks' range lock.
    fn write_verified(&self, path: &Path, offset: u64, data: &[u8], sync: bool) -> Result<()> {
        let end = offset + data.len() as u64;
        let first = (offset / csum::BLOCK) as usize;
        let last = end.div_ceil(csum::BLOCK) as usize;
        let f = self.object_file(path)?;
        let sums = match self.open_sums(path)? {
            Some(Sums::Good(g)) if end <= g.size => {
                let old = g.entries(first, last);
                Some((g, old))
            }
            Some(Sums::Good(_)) | None => None,
            Some(Sums::Bad(file)) => {
                return Err(StoreError::Checksum {
                    file,
                    blocks: (first..last).collect(),
                })
            }
        };
        let sums = sums.as_ref().map(|(g, old)| (&**g, &old[..]));
        self.apply_write(&f, path, sums, offset, data, sync)
    }

    /// The write of [`Store::write_verified`] into the open file `f`,
    /// given its sidecar and the written blocks' entries as they were (or
    /// none: the checksums are dropped until the scrub computes new ones).
    fn apply_write(
        &self,
        f: &File,
        path: &Path,
        sums: Option<(&csum::SidecarFile, &[csum::Entry])>,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<()> {
        let sync_file = |f: &File| match sync {
            true => self.sync_file(f, path),
            false => Ok(()),
        };
        let end = offset + data.len() as u64;
        let first = (offset / csum::BLOCK) as usize;
        let last = end.div_ceil(csum::BLOCK) as usize;
        let Some((g, old)) = sums else {
            // Without checksums (or for a write that grows the file).
            self.remove_sums(path)?;
            self.write_data(f, path, offset, data)?;
            return sync_file(f);
        };
        let size = g.size;
        let mut new = Vec::with_capacity(last - first);
        for b in first..last {
            let (s, e) = csum::block_range(b, size);
            let sum = if offset <= s && e <= end {
                crc32c::crc32c(&data[(s - offset) as usize..(e - offset) as usize])
            } else {
                // Part of the block is kept: it must be good before new
                // checksums vouch for it.
                let mut block = read_file_at(f, s, (e - s) as usize)?;
                if !csum::bad_blocks(old.get(b - first..).unwrap_or(&[]), b, &block).is_empty() {
                    return Err(StoreError::Checksum {
                        file: path.to_path_buf(),
                        blocks: vec![b],
                    });
                }
                let (from, to) = (offset.max(s), end.min(e));
                block[(from - s) as usize..(to - s) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                crc32c::crc32c(&block)
            };
            new.push(csum::Entry {
                cur: sum,
                prev: old.get(b - first).map_or(sum, |o| o.cur),
            });
        }
        if sync {
            self.write_sums(path, g, first, &new)?;
            sync_file(g.file())?;
        }
        // A journaled write (not synced) skips that step: its record is
        // durable, so a crash during the apply is mended by its replay;
        // a reader racing with it finds the block not verifying for a
        // moment and reads it again holding the block (see
        // `read_settled`).
        self.write_data(f, path, offset, data)?;
        sync_file(f)?;
        // The old bytes no longer verify (a disk that drops this write is
        // caught); no sync needed: until this lands, both verify.
        let settled: Vec<_> = new.iter().map(|e| csum::Entry::settled(e.cur)).collect();
        self.write_sums(path, g, first, &settled)?;
        Ok(())
    }

    /// [`ObjectStore::write_nowait`]: a small whole-block overwrite,
    /// journaled, where everything it needs is at hand (its blocks not
    /// being written, its files open, its checksums cached, room in the
    /// journal).
    fn journaled_nowait<'a>(
        &'a self,
        j: &'a journal::Journal,
        k: &ObjKey,
        offset: u64,
        data: &'a [u8],
    ) -> Option<Result<JournaledWrite<'a>>> {
        let end = offset + data.len() as u64;
        let whole_blocks = offset.is_multiple_of(csum::BLOCK) && end.is_multiple_of(csum::BLOCK);
        if self.direct
            || !self.faults.is_empty()
            || data.is_empty()
            || data.len() >= journal::LARGE_WRITE
            || !whole_blocks
        {
            return None;
        }
        let (first, last) = (
            (offset / csum::BLOCK) as usize,
            (end / csum::BLOCK) as usize,
        );
        let blocks = self.ranges.try_lock(k, first, last)?;
        let (disk, path) = self.located(k).ok()?;
        let file = self.object_file_nowait(&path)?;
        let sums = match self.checksums {
            true => {
                let g = self.sums_open.try_get(&csum::sidecar_path(&path))?;
                if end > g.size {
                    return None;
                }
                let old = g.entries(first, last);
                if old.len() != last - first {
                    return None;
                }
                Some((g, old))
            }
            false => None,
        };
        let (applying, pending) = match j.try_append(k, offset, data) {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(JournaledWrite {
            store: self,
            disk,
            path,
            file,
            sums,
            offset,
            data,
            pending: Some(pending),
            applying: Some(applying),
            _blocks: blocks,
        }))
    }

    /// Judges the result of an operation on `disk`. A missing file reads
    /// as "no such object" unless the disk's directory itself is gone: a
    /// dead disk (or one unmounted or wiped under us) is an I/O error,
    /// never an answer about one object. An I/O error takes the disk out
    /// of a multi-disk node (as the original's md does), which goes on
    /// with the others; a node's last (or only) disk failing is the
    /// node's failure.
    fn judged<T>(&self, disk: &disks::Disk, r: Result<T>) -> Result<T> {
        let e = match r {
            Err(StoreError::NoObj) if !disk.path.is_dir() => {
                std::io::Error::other(format!("{} is gone", disk.path.display()))
            }
            Err(StoreError::Io(e)) => e,
            r => return r,
        };
        if !self.multi_disk {
            return Err(StoreError::Io(e));
        }
        let _change = self.disk_change.lock().unwrap();
        let ds = self.disks.load();
        if ds.find(&disk.path).is_some() {
            if ds.list().len() == 1 {
                return Err(StoreError::Io(e));
            }
            self.set_disks(ds.without(&disk.path));
            self.lost
                .lock()
                .unwrap()
                .push((disk.path.clone(), e.to_string()));
        }
        Err(StoreError::DiskLost {
            disk: disk.path.clone(),
            why: e.to_string(),
        })
    }

    /// Installs a new disk set.
    fn set_disks(&self, ds: disks::Disks) {
        self.forget_all_open();
        self.disks.store(std::sync::Arc::new(ds));
        self.disk_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Removes copies of `k` on disks other than `keep`.
    fn forget_elsewhere(&self, k: &ObjKey, keep: &disks::Disk) -> Result<()> {
        if !self.multi_disk {
            return Ok(());
        }
        for d in self
            .disks
            .load()
            .list()
            .iter()
            .filter(|d| d.path != keep.path)
        {
            let p = d.path.join(k.file_name());
            let r = remove_if_present(&p);
            self.files_open.forget(&p);
            r?;
            self.remove_sums(&p)?;
        }
        Ok(())
    }

    /// [`ObjectStore::verify`] of the working copy at `path`.
    fn verify_at(&self, k: &ObjKey, path: &Path) -> Result<Verdict> {
        let size = fs::metadata(path)?.len();
        match self.read_settled(k, path, 0, size as usize) {
            Err(StoreError::Checksum { blocks, .. }) => return Ok(Verdict::Bad(blocks)),
            r => {
                r?;
            }
        }
        if !self.checksums || csum::sidecar_path(path).exists() {
            return Ok(Verdict::Good);
        }
        // No checksums yet (an object the original wrote): computed once,
        // with every write to the object held off meanwhile.
        let _all = self.ranges.lock_all(k);
        let data = read_file_at(&File::open(path)?, 0, size as usize)?;
        let tmp = self.tmp_path(&csum::sidecar_path(path));
        let res = (|| {
            let g = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&tmp)?;
            g.write_all_at(&csum::Sidecar::of(&data).encode(), 0)?;
            self.sync_file(&g, &tmp)?;
            fs::rename(&tmp, csum::sidecar_path(path))?;
            self.sums_open.forget(&csum::sidecar_path(path));
            Ok(Verdict::Computed)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn reclaim_dir(&self) -> PathBuf {
        self.base.join("reclaim")
    }
}

/// A node's storage: its objects (working and stale copies), the pending
/// reclaims, the cluster config and the epoch log.
///
/// A trait so that the object service (gateway, peer executor, recovery)
/// can run against an in-memory store in component tests and the
/// simulation, and later against other layouts (several disks), without
/// knowing which. Every method is blocking; the daemon calls them on its
/// blocking pool. Object files are named by [`ObjKey`]; a stale copy is
/// the working copy retired with an epoch (current through that epoch).
pub trait ObjectStore: Send + Sync + 'static {
    /// The disks objects live on, for operators (`dog node md info`).
    fn disks(&self) -> Vec<DiskUsage>;
    fn exists(&self, k: &ObjKey) -> bool;
    /// Size of the stored file.
    fn size(&self, k: &ObjKey) -> Result<u64>;
    /// Reads `len` bytes at `offset`; bytes past the end of the file read
    /// as zeros (objects are sparse).
    fn read(&self, k: &ObjKey, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Reads the whole file.
    fn read_all(&self, k: &ObjKey) -> Result<Vec<u8>>;
    /// Writes into an existing object and makes it durable.
    fn write(&self, k: &ObjKey, offset: u64, data: &[u8]) -> Result<()>;
    /// Creates (or replaces) an object of `size` bytes, zero-filled, with
    /// `data` at `offset`, atomically and durably.
    fn create_and_write(&self, k: &ObjKey, size: u64, offset: u64, data: &[u8]) -> Result<()>;
    fn remove(&self, k: &ObjKey) -> Result<()>;
    /// Checks every block of the working copy against its checksums
    /// (computing them if it has none yet).
    fn verify(&self, k: &ObjKey) -> Result<Verdict>;
    /// Every object in the working directory.
    fn list(&self) -> Result<Vec<ObjKey>>;
    /// Every stale copy as (key, epoch).
    fn list_stale(&self) -> Result<Vec<(ObjKey, u32)>>;
    /// Retires the working copy, tagged with `epoch`.
    fn move_to_stale(&self, k: &ObjKey, epoch: u32) -> Result<()>;
    /// Reads the stale copy of `epoch`.
    fn read_stale(&self, k: &ObjKey, epoch: u32, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The newest stale copy's epoch if it is `since` or later: a copy
    /// retired with epoch `e` was current through epoch `e`.
    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32>;
    /// Records, durably, that the object `oid` is to be released (removed
    /// cluster-wide unless a VDI still references it), before the release
    /// starts, so a crash halfway leaves the work to be finished.
    fn reclaim_add(&self, oid: u64) -> Result<()>;
    /// The objects recorded by [`ObjectStore::reclaim_add`] and not yet done.
    fn reclaim_pending(&self) -> Result<Vec<u64>>;
    /// Forgets a reclaim that is done.
    fn reclaim_done(&self, oid: u64) -> Result<()>;
    /// Removes every stale copy; how many there were.
    fn purge_stale(&self) -> Result<usize>;
    /// Removes every object, stale copy, reclaim and epoch (cluster format).
    fn wipe(&self) -> Result<()>;
    /// SHA-1 of the working copy, or of the stale copy of `epoch`.
    fn sha1(&self, k: &ObjKey, stale_epoch: Option<u32>) -> Result<[u8; 20]>;
    /// [`csum::digest`] of the working copy of `k`: from its checksums
    /// where it has them, else from its bytes.
    fn digest(&self, k: &ObjKey) -> Result<u32>;
    fn read_config(&self) -> Result<Option<SheepdogConfig>>;
    fn write_config(&self, c: &SheepdogConfig) -> Result<()>;
    /// Writes epoch `epoch`'s members (stored in node order) and time.
    fn write_epoch(&self, epoch: u32, nodes: &[SdNode], time: u64) -> Result<()>;
    /// Reads epoch `epoch`: (nodes, creation time).
    fn read_epoch(&self, epoch: u32) -> Result<Option<(Vec<SdNode>, u64)>>;
    /// The largest epoch recorded, 0 if none.
    fn latest_epoch(&self) -> Result<u32>;
    /// (total, free) bytes of the space holding the objects.
    fn fs_space(&self) -> Result<(u64, u64)>;
    /// Bytes used by working objects.
    fn used_bytes(&self) -> u64;
    /// Adds disks (their directories purged first); how many were added.
    fn plug(&self, paths: &[PathBuf]) -> Result<usize>;
    /// Takes disks out (their objects are then recovered from other
    /// nodes); how many were removed.
    fn unplug(&self, paths: &[PathBuf]) -> Result<usize>;
    /// Moves the working copy of `k` to the disk it belongs on (it was
    /// placed before a disk was plugged); whether it moved.
    fn relocate(&self, k: &ObjKey) -> Result<bool>;
    /// Counts the changes of the disk set (plugs, unplugs, failures), so
    /// callers can tell that objects may have gone missing since.
    fn disk_generation(&self) -> u64 {
        0
    }
    /// The disks that failed (and were unplugged) since the last call,
    /// with why, whichever operation found them failing.
    fn take_lost_disks(&self) -> Vec<(PathBuf, String)> {
        Vec::new()
    }
    /// Whether calls return at memory speed, so callers may make them on
    /// their own thread instead of a blocking pool.
    fn runs_inline(&self) -> bool {
        false
    }
    /// [`ObjectStore::read`] if it can be answered at memory speed (from
    /// the page cache, verified, without waiting for a disk), so an async
    /// caller may make it on its own thread; None sends the caller to
    /// `read` on a blocking pool (not cached, an error, a block that does
    /// not verify at once).
    fn read_cached(&self, _k: &ObjKey, _offset: u64, _len: usize) -> Option<Vec<u8>> {
        None
    }
    /// [`ObjectStore::write`] if it can be made without waiting for a
    /// disk but for its journal batch, so an async caller may make it on
    /// its own thread ([`JournaledWrite::finish`]). None sends the caller
    /// to `write` on a blocking pool.
    fn write_nowait<'a>(
        &'a self,
        _k: &ObjKey,
        _offset: u64,
        _data: &'a [u8],
    ) -> Option<Result<JournaledWrite<'a>>> {
        None
    }
}

/// A small overwrite whose journal record is appended: it is applied to
/// its object file once the record is durable (as every journaled write:
/// a crash before that must leave the file as it was, since nothing could
/// replay the write's checksums over it), holding its blocks until then.
/// Made by [`ObjectStore::write_nowait`].
#[must_use = "a write is made by finish()"]
pub struct JournaledWrite<'a> {
    store: &'a Store,
    disk: std::sync::Arc<disks::Disk>,
    path: PathBuf,
    file: std::sync::Arc<File>,
    /// The sidecar and the written blocks' entries as they were.
    sums: Option<(std::sync::Arc<csum::SidecarFile>, Vec<csum::Entry>)>,
    offset: u64,
    data: &'a [u8],
    pending: Option<journal::Pending>,
    applying: Option<journal::Applying<'a>>,
    _blocks: ranges::RangeGuard<'a>,
}

impl JournaledWrite<'_> {
    /// Waits, without blocking a thread, until the record is durable, then
    /// applies the write to the object file (unsynced).
    pub async fn finish(mut self) -> Result<()> {
        if let Some(p) = &self.pending {
            // Kept until durable: if this future is dropped meanwhile, the
            // drop applies the write.
            p.durable().await?;
            self.pending = None;
        }
        self.apply()
    }

    fn apply(&mut self) -> Result<()> {
        let st = self.store;
        let sums = self.sums.as_ref().map(|(g, old)| (&**g, &old[..]));
        let r = st.apply_write(&self.file, &self.path, sums, self.offset, self.data, false);
        self.applying = None;
        st.judged(&self.disk, r)
    }
}

impl Drop for JournaledWrite<'_> {
    /// A write whose waiter went away (its request was dropped) is still
    /// applied once durable: its record would be replayed at the next
    /// start anyway, and a checkpoint waits for it.
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            if p.wait().is_ok() {
                let _ = self.apply();
            }
        }
    }
}

impl ObjectStore for Store {
    fn disks(&self) -> Vec<DiskUsage> {
        self.disks
            .load()
            .list()
            .iter()
            .map(|d| DiskUsage {
                path: d.path.clone(),
                free: statvfs(&d.path).map(|(_, free)| free).unwrap_or(0),
                used: used_in(&d.path),
            })
            .collect()
    }

    fn exists(&self, k: &ObjKey) -> bool {
        self.located(k).is_ok_and(|(_, p)| p.exists())
    }

    fn size(&self, k: &ObjKey) -> Result<u64> {
        let (d, path) = self.located(k)?;
        self.judged(&d, fs::metadata(path).map(|m| m.len()).map_err(Into::into))
    }

    fn read(&self, k: &ObjKey, offset: u64, len: usize) -> Result<Vec<u8>> {
        let (d, path) = self.located(k)?;
        self.judged(
            &d,
            (|| {
                self.faults.check(faults::Op::Read, &path)?;
                self.read_settled(k, &path, offset, len)
            })(),
        )
    }

    fn read_cached(&self, k: &ObjKey, offset: u64, len: usize) -> Option<Vec<u8>> {
        if self.direct || !self.faults.is_empty() {
            return None;
        }
        let (_, path) = self.located(k).ok()?;
        let first = (offset / csum::BLOCK) as usize;
        let from = first as u64 * csum::BLOCK;
        let to = (offset + len as u64).div_ceil(csum::BLOCK) * csum::BLOCK;
        let mut buf = vec![0u8; (to - from) as usize];
        let file = self.object_file_nowait(&path)?;
        if !self.checksums {
            let got = csum::pread_nowait(&file, &mut buf, from)?;
            // A short read may be the end of the file or what is cached.
            return (got == buf.len()).then(|| cut(buf, from, offset, len));
        }
        // Only with checksums already open, and inside the object (its
        // end, and anything unusual, is the blocking path's).
        let g = self.sums_open.try_get(&csum::sidecar_path(&path))?;
        if to > g.size {
            return None;
        }
        if csum::pread_nowait(&file, &mut buf, from)? != buf.len() {
            return None;
        }
        let entries = g.entries(first, first + buf.len() / csum::BLOCK as usize);
        csum::bad_blocks(&entries, first, &buf)
            .is_empty()
            .then(|| cut(buf, from, offset, len))
    }

    fn read_all(&self, k: &ObjKey) -> Result<Vec<u8>> {
        let (d, path) = self.located(k)?;
        self.judged(
            &d,
            (|| {
                self.faults.check(faults::Op::Read, &path)?;
                let size = fs::metadata(&path)?.len();
                self.read_settled(k, &path, 0, size as usize)
            })(),
        )
    }

    fn write(&self, k: &ObjKey, offset: u64, data: &[u8]) -> Result<()> {
        let first = (offset / csum::BLOCK) as usize;
        let last = (offset + data.len() as u64).div_ceil(csum::BLOCK) as usize;
        // Located under the lock: a relocation to another disk holds
        // every block.
        let _blocks = self.ranges.lock(k, first, last.max(first + 1));
        let (d, path) = self.located(k)?;
        // A large write costs less synced in place than written twice; it
        // may skip the journal only while no record of its object could be
        // replayed over it later (the range lock orders overlapping writes).
        let journal = match &self.journal {
            Some(j) if data.len() < journal::LARGE_WRITE || j.is_dirty(k) => Some(j),
            _ => None,
        };
        let Some(j) = journal else {
            return self.judged(&d, self.write_verified(&path, offset, data, true));
        };
        if !path.exists() {
            return self.judged(&d, Err(StoreError::NoObj));
        }
        // The blocks it keeps part of must verify before it is logged: a
        // write that fails on them must not be replayed over them later
        // (replay trusts what the file holds around a record).
        let end = offset + data.len() as u64;
        let partial =
            |edge: u64| (!edge.is_multiple_of(csum::BLOCK)).then(|| edge - edge % csum::BLOCK);
        let (head, tail) = (partial(offset), partial(end));
        for b in [head, tail.filter(|&t| Some(t) != head)]
            .into_iter()
            .flatten()
        {
            self.judged(&d, self.read_verified(&path, b, csum::BLOCK as usize))?;
        }
        // Durable once in the journal; then applied to the file unsynced.
        let (_applying, pending) = j.append(k, offset, data, &|keys| self.sync_objects(keys))?;
        pending.wait()?;
        self.judged(&d, self.write_verified(&path, offset, data, false))
    }

    fn write_nowait<'a>(
        &'a self,
        k: &ObjKey,
        offset: u64,
        data: &'a [u8],
    ) -> Option<Result<JournaledWrite<'a>>> {
        self.journaled_nowait(self.journal.as_ref()?, k, offset, data)
    }

    fn create_and_write(&self, k: &ObjKey, size: u64, offset: u64, data: &[u8]) -> Result<()> {
        let size = size.max(offset + data.len() as u64);
        let sparse = is_vdi_obj(k.oid) || is_ledger_obj(k.oid) || data.len() as u64 >= size;
        let sums = self
            .checksums
            .then(|| csum::Sidecar::of_sparse(size, offset, data));
        let _all = self.ranges.lock_all(k);
        self.settle_journal(k)?;
        let (d, path) = self.placed(k)?;
        self.judged(
            &d,
            (|| {
                if sums.is_none() {
                    self.remove_sums(&path)?;
                }
                self.atomic_write(&path, Some(size), sparse, offset, data, sums.as_ref())
            })(),
        )?;
        // A copy left on another disk (placed there before a disk change)
        // is replaced by this one.
        self.forget_elsewhere(k, &d)
    }

    fn remove(&self, k: &ObjKey) -> Result<()> {
        let _all = self.ranges.lock_all(k);
        self.settle_journal(k)?;
        let (d, path) = self.located(k)?;
        self.judged(
            &d,
            (|| {
                let r = fs::remove_file(&path);
                self.files_open.forget(&path);
                r?;
                self.remove_sums(&path)
            })(),
        )
    }

    fn verify(&self, k: &ObjKey) -> Result<Verdict> {
        let (d, path) = self.located(k)?;
        self.judged(&d, self.verify_at(k, &path))
    }

    fn list(&self) -> Result<Vec<ObjKey>> {
        let mut v = Vec::new();
        for d in self.disks.load().list() {
            self.judged(
                d,
                (|| {
                    for e in fs::read_dir(&d.path)? {
                        if let Some(k) = ObjKey::parse(&e?.file_name().to_string_lossy()) {
                            v.push(k);
                        }
                    }
                    Ok(())
                })(),
            )?;
        }
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    fn list_stale(&self) -> Result<Vec<(ObjKey, u32)>> {
        let mut v = Vec::new();
        for d in self.disks.load().list() {
            for e in fs::read_dir(&d.stale)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if let Some((obj, ep)) = name.rsplit_once('.') {
                    if let (Some(k), Ok(ep)) = (ObjKey::parse(obj), ep.parse::<u32>()) {
                        v.push((k, ep));
                    }
                }
            }
        }
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    fn move_to_stale(&self, k: &ObjKey, epoch: u32) -> Result<()> {
        let _all = self.ranges.lock_all(k);
        self.settle_journal(k)?;
        let (d, from) = self.located(k)?;
        let to = d.stale.join(format!("{}.{}", k.file_name(), epoch));
        self.judged(
            &d,
            (|| {
                fs::rename(&from, &to)?;
                let r = match fs::rename(csum::sidecar_path(&from), csum::sidecar_path(&to)) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                };
                self.forget_open(&from);
                self.forget_open(&to);
                r
            })(),
        )
    }

    fn read_stale(&self, k: &ObjKey, epoch: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let (d, path) = self.located_stale(k, epoch)?;
        self.judged(
            &d,
            (|| {
                self.faults.check(faults::Op::Read, &path)?;
                self.read_verified(&path, offset, len)
            })(),
        )
    }

    fn newest_stale(&self, k: &ObjKey, since: u32) -> Option<u32> {
        let prefix = format!("{}.", k.file_name());
        self.disks
            .load()
            .list()
            .iter()
            .filter_map(|d| fs::read_dir(&d.stale).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(&prefix)?
                    .parse::<u32>()
                    .ok()
            })
            .filter(|&e| e >= since)
            .max()
    }

    fn reclaim_add(&self, oid: u64) -> Result<()> {
        let d = self.reclaim_dir();
        fs::create_dir_all(&d)?;
        File::create(d.join(format!("{oid:016x}")))?;
        self.sync_dir(&d)
    }

    fn reclaim_pending(&self) -> Result<Vec<u64>> {
        let rd = match fs::read_dir(self.reclaim_dir()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut v = Vec::new();
        for e in rd {
            let name = e?.file_name();
            if let Some(k) = ObjKey::parse(&name.to_string_lossy()) {
                v.push(k.oid);
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    fn reclaim_done(&self, oid: u64) -> Result<()> {
        remove_if_present(&self.reclaim_dir().join(format!("{oid:016x}")))
    }

    fn purge_stale(&self) -> Result<usize> {
        let mut n = 0;
        let removed = (|| {
            for d in self.disks.load().list() {
                for e in fs::read_dir(&d.stale)? {
                    let e = e?;
                    fs::remove_file(e.path())?;
                    n += usize::from(!csum::is_sidecar(&e.file_name().to_string_lossy()));
                }
            }
            Ok(())
        })();
        // Once gone: a handle opened before is not kept.
        self.forget_all_open();
        removed.map(|()| n)
    }

    fn wipe(&self) -> Result<()> {
        // Nothing journaled may be replayed onto objects created anew
        // (what the files hold is being thrown away: no need to sync it).
        if let Some(j) = &self.journal {
            j.checkpoint(&|_| Ok(()))?;
        }
        let _ = fs::create_dir_all(self.reclaim_dir());
        let ds = self.disks.load();
        let dirs = ds
            .list()
            .iter()
            .flat_map(|d| [d.path.clone(), d.stale.clone()])
            .chain([self.epoch_dir.clone(), self.reclaim_dir()]);
        let removed = (|| {
            for d in dirs {
                for e in fs::read_dir(&d)? {
                    let e = e?;
                    if e.file_type()?.is_file() {
                        fs::remove_file(e.path())?;
                    }
                }
            }
            Ok::<_, StoreError>(())
        })();
        // Once gone: a handle opened before is not kept.
        self.forget_all_open();
        removed?;
        for d in ds.list() {
            self.sync_dir(&d.path)?;
        }
        Ok(())
    }

    fn sha1(&self, k: &ObjKey, stale_epoch: Option<u32>) -> Result<[u8; 20]> {
        let (_, p) = match stale_epoch {
            None => self.located(k)?,
            Some(e) => self.located_stale(k, e)?,
        };
        let mut f = File::open(p)?;
        let mut h = Sha1::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().into())
    }

    fn digest(&self, k: &ObjKey) -> Result<u32> {
        let (d, path) = self.located(k)?;
        let sums = self.judged(&d, self.open_sums(&path))?;
        let entries = match sums {
            Some(Sums::Good(g)) => {
                let size = self
                    .judged(&d, fs::metadata(&path).map_err(Into::into))?
                    .len();
                g.entries(0, csum::blocks(size))
            }
            _ => csum::Sidecar::of(&self.read_all(k)?).entries,
        };
        Ok(csum::digest(&entries))
    }

    fn read_config(&self) -> Result<Option<SheepdogConfig>> {
        let path = self.base.join("config");
        match fs::read(&path) {
            Ok(b) => decode_config(&b).map(Some).map_err(|why| {
                StoreError::Corrupt(format!("config file {}: {why}", path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_config(&self, c: &SheepdogConfig) -> Result<()> {
        let mut b = c.encode().to_vec();
        b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        self.atomic_write(&self.base.join("config"), None, true, 0, &b, None)
    }

    fn write_epoch(&self, epoch: u32, nodes: &[SdNode], time: u64) -> Result<()> {
        let mut sorted = nodes.to_vec();
        sorted.sort_by_key(|n| n.nid);
        let mut b = encode_nodes(&sorted);
        b.extend_from_slice(&time.to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        self.atomic_write(
            &self.epoch_dir.join(format!("{epoch:08}")),
            None,
            true,
            0,
            &b,
            None,
        )
    }

    fn read_epoch(&self, epoch: u32) -> Result<Option<(Vec<SdNode>, u64)>> {
        let path = self.epoch_dir.join(format!("{epoch:08}"));
        match fs::read(&path) {
            Ok(b) => decode_epoch(&b).map(Some).map_err(|why| {
                StoreError::Corrupt(format!("epoch file {}: {why}", path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn latest_epoch(&self) -> Result<u32> {
        let mut max = 0;
        for e in fs::read_dir(&self.epoch_dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if name.len() == 8 {
                if let Ok(n) = name.parse::<u32>() {
                    max = max.max(n);
                }
            }
        }
        Ok(max)
    }

    fn fs_space(&self) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for d in self.disks.load().list() {
            let (t, f) = statvfs(&d.path)?;
            total = (total.0 + t, total.1 + f);
        }
        Ok(total)
    }

    fn used_bytes(&self) -> u64 {
        self.disks
            .load()
            .list()
            .iter()
            .map(|d| used_in(&d.path))
            .sum()
    }

    fn plug(&self, paths: &[PathBuf]) -> Result<usize> {
        let _change = self.disk_change.lock().unwrap();
        let mut ds = disks::Disks::new(self.disks.load().list().to_vec());
        let mut added = 0;
        for p in paths {
            if ds.find(p).is_some() {
                continue;
            }
            // Plugged directories are purged, as the original does.
            if p.is_dir() {
                fs::remove_dir_all(p)?;
            }
            match open_disk(p, Some(true)) {
                Ok(d) => {
                    ds = ds.with(d);
                    added += 1;
                }
                Err(StoreError::Corrupt(why)) => eprintln!("{why}"),
                Err(e) => return Err(e),
            }
        }
        self.set_disks(ds);
        Ok(added)
    }

    fn unplug(&self, paths: &[PathBuf]) -> Result<usize> {
        let _change = self.disk_change.lock().unwrap();
        let mut ds = disks::Disks::new(self.disks.load().list().to_vec());
        let before = ds.list().len();
        for p in paths {
            ds = ds.without(p);
        }
        let removed = before - ds.list().len();
        self.set_disks(ds);
        Ok(removed)
    }

    fn disk_generation(&self) -> u64 {
        self.disk_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn take_lost_disks(&self) -> Vec<(PathBuf, String)> {
        // A disk whose directory vanished (pulled, unmounted, wiped) is
        // found here even if no request touched it: open files of a
        // removed directory still take writes that no one can read back.
        if self.multi_disk {
            for d in self.disks.load().list() {
                if !d.path.is_dir() {
                    let _ = self.judged(d, Err::<(), _>(StoreError::NoObj));
                }
            }
        }
        std::mem::take(&mut self.lost.lock().unwrap())
    }

    fn relocate(&self, k: &ObjKey) -> Result<bool> {
        let _all = self.ranges.lock_all(k);
        let (placed, to) = self.placed(k)?;
        let (from_disk, from) = self.located(k)?;
        if from_disk.path == placed.path {
            return Ok(false);
        }
        // Across filesystems: copied whole (checksums with it), then the
        // old copy goes.
        let data = self.judged(&from_disk, fs::read(&from).map_err(Into::into))?;
        let sums = match fs::read(csum::sidecar_path(&from)) {
            Ok(b) => csum::Sidecar::decode(&b).ok(),
            Err(_) => None,
        };
        self.judged(
            &placed,
            self.atomic_write(&to, None, true, 0, &data, sums.as_ref()),
        )?;
        self.forget_elsewhere(k, &placed)?;
        Ok(true)
    }
}

/// The config file: the original's 40 bytes, then (as this store writes
/// it) their CRC32C; the original reads the first 40 and ignores the rest,
/// and a 40-byte file written by the original is accepted as it is. Any
/// other length, a wrong checksum or another format version is refused.
fn decode_config(b: &[u8]) -> std::result::Result<SheepdogConfig, String> {
    let (cfg, sum) = b.split_at(b.len().min(CONFIG_SIZE));
    match sum.len() {
        _ if cfg.len() < CONFIG_SIZE => return Err(format!("truncated ({} bytes)", b.len())),
        0 => {}
        4 if crc32c::crc32c(cfg).to_le_bytes() == sum => {}
        4 => return Err("checksum mismatch".into()),
        n => return Err(format!("corrupt ({} bytes)", CONFIG_SIZE + n)),
    }
    let c = SheepdogConfig::decode(cfg).expect("40 bytes");
    if c.version != SD_FORMAT_VERSION {
        return Err(format!(
            "format version {:#06x}, this sheep knows {SD_FORMAT_VERSION:#06x}",
            c.version
        ));
    }
    Ok(c)
}

/// An epoch file: whole node records, the epoch's time, then (as this
/// store writes it) the CRC32C of both. A file the original wrote (no
/// checksum) is accepted as it is; anything else is refused.
fn decode_epoch(b: &[u8]) -> std::result::Result<(Vec<SdNode>, u64), String> {
    let body = match b.len() {
        n if n >= 12 && (n - 12) % SD_NODE_SIZE == 0 => {
            let (body, sum) = b.split_at(n - 4);
            if crc32c::crc32c(body).to_le_bytes() != sum {
                return Err("checksum mismatch".into());
            }
            body
        }
        n if n >= 8 && (n - 8) % SD_NODE_SIZE == 0 => b,
        n => return Err(format!("truncated or corrupt ({n} bytes)")),
    };
    let (nodes, time) = body.split_at(body.len() - 8);
    Ok((
        decode_nodes(nodes),
        u64::from_le_bytes(time.try_into().unwrap()),
    ))
}

/// Bytes the object files in `dir` occupy.
fn used_in(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| ObjKey::parse(&e.file_name().to_string_lossy()).is_some())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn no_disk() -> StoreError {
    StoreError::Io(std::io::Error::other("no disk left"))
}

/// (total, free) bytes of the filesystem holding `path`.
fn statvfs(path: &Path) -> Result<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| StoreError::Io(std::io::Error::other("NUL in a path")))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((
        s.f_blocks as u64 * s.f_frsize as u64,
        s.f_bavail as u64 * s.f_frsize as u64,
    ))
}

/// Removes the temporaries a crash left in `dir`.
fn remove_temporaries(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Opens (creating) the object directory `path` as a disk. `weighed`:
/// None for a node's only directory (its space is not recorded), else
/// a disk of a multi-disk node, whose recorded space is its weight
/// (recorded now if it has none; `Corrupt` if the directory takes no
/// attributes, so the disk is skipped).
fn open_disk(path: &Path, weighed: Option<bool>) -> Result<disks::Disk> {
    let stale = path.join(".stale");
    fs::create_dir_all(&stale)?;
    remove_temporaries(path)?;
    remove_temporaries(&stale)?;
    let (_, free) = statvfs(path)?;
    let space = match weighed {
        None => free,
        Some(_) => disks::recorded_space(path, free).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "multi-disk support need xattr feature for path: {}",
                path.display()
            ))
        })?,
    };
    Ok(disks::Disk::new(path, space))
}

/// Whether the open file `f` still has a name (was not removed or
/// renamed over).
fn linked(f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    f.metadata().is_ok_and(|m| m.nlink() > 0)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `len` bytes at `offset` out of `buf`, which holds the file from `from`.
fn cut(mut buf: Vec<u8>, from: u64, offset: u64, len: usize) -> Vec<u8> {
    let at = (offset - from) as usize;
    if at == 0 && buf.len() == len {
        return buf;
    }
    buf.truncate(at + len);
    buf.drain(..at);
    buf
}

/// Reads `len` bytes at `offset` of `f`; past its end, zeros.
fn read_file_at(f: &File, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    csum::pread_upto(f, &mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Store {
        /// Where the working copy of `k` is.
        fn path(&self, k: &ObjKey) -> PathBuf {
            self.located(k).unwrap().1
        }
    }

    #[test]
    fn create_write_read_stale() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), false).unwrap();
        let k = ObjKey::replica(0x007c2b2500000001);
        assert!(matches!(s.read(&k, 0, 4), Err(StoreError::NoObj)));
        assert!(matches!(s.write(&k, 0, b"x"), Err(StoreError::NoObj)));
        s.create_and_write(&k, 4 << 20, 10, b"hello").unwrap();
        assert_eq!(s.size(&k).unwrap(), 4 << 20);
        assert_eq!(s.read(&k, 8, 9).unwrap(), b"\0\0hello\0\0");
        s.write(&k, 12, b"LL").unwrap();
        assert_eq!(s.read(&k, 10, 5).unwrap(), b"heLLo");
        assert_eq!(s.list().unwrap(), vec![k]);
        let sum = s.sha1(&k, None).unwrap();
        s.move_to_stale(&k, 3).unwrap();
        assert!(!s.exists(&k));
        assert_eq!(s.list_stale().unwrap(), vec![(k, 3)]);
        assert_eq!(s.newest_stale(&k, 0), Some(3));
        assert_eq!(s.newest_stale(&k, 3), Some(3));
        assert_eq!(s.newest_stale(&k, 4), None);
        assert_eq!(s.sha1(&k, Some(3)).unwrap(), sum);
        assert_eq!(s.read_stale(&k, 3, 10, 5).unwrap(), b"heLLo");
        assert_eq!(s.purge_stale().unwrap(), 1);
        assert!(!s.exists(&k));
    }

    #[test]
    fn temporaries_a_crash_left_do_not_fail_a_restart() {
        let d = tempfile::tempdir().unwrap();
        // A killed node left its temporaries under the names a new
        // process takes first.
        for n in 0..4 {
            std::fs::write(d.path().join(format!("config.{n}.tmp")), b"junk").unwrap();
        }
        let s = Store::open(d.path(), true).unwrap();
        let c = SheepdogConfig {
            ctime: 7,
            version: SD_FORMAT_VERSION,
            ..Default::default()
        };
        s.write_config(&c).unwrap();
        assert_eq!(s.read_config().unwrap().unwrap(), c);
    }

    #[test]
    fn config_and_epochs() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        assert!(s.read_config().unwrap().is_none());
        let c = SheepdogConfig {
            ctime: 5,
            copies: 3,
            version: SD_FORMAT_VERSION,
            ..Default::default()
        };
        s.write_config(&c).unwrap();
        assert_eq!(s.read_config().unwrap().unwrap(), c);
        let n = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000),
            nr_vnodes: 128,
            zone: 1,
            space: 2,
        };
        s.write_epoch(1, &[n], 99).unwrap();
        s.write_epoch(12, &[n, n], 100).unwrap();
        assert_eq!(s.latest_epoch().unwrap(), 12);
        assert_eq!(s.read_epoch(1).unwrap().unwrap(), (vec![n], 99));
        assert_eq!(
            fs::metadata(d.path().join("epoch/00000012")).unwrap().len(),
            172
        );
        s.wipe().unwrap();
        assert_eq!(s.latest_epoch().unwrap(), 0);
    }

    #[test]
    fn concurrent_replacements_of_one_file() {
        // Two writers of one epoch file (or object) at once: each rename
        // installs a whole file of its own, none fails.
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(d.path(), true).unwrap());
        let k = ObjKey::replica(0x007c2b2500000001);
        let writers: Vec<_> = (0..8u8)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        s.create_and_write(&k, 4096, 0, &[w; 4096]).unwrap();
                        s.write_epoch(1, &[], w as u64).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let data = s.read_all(&k).unwrap();
        assert!(data.iter().all(|&b| b == data[0]) && data.len() == 4096);
        assert!(s.read_epoch(1).unwrap().is_some());
    }

    #[test]
    fn a_vanished_object_directory_is_an_io_error() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x007c_2b25_0000_0001);
        s.create_and_write(&k, 8, 0, b"x").unwrap();
        assert_eq!(s.read(&k, 0, 1).unwrap(), b"x");
        assert!(matches!(
            s.read(&ObjKey::replica(5), 0, 1),
            Err(StoreError::NoObj)
        ));
        fs::remove_dir_all(d.path().join("obj")).unwrap();
        for r in [
            s.read(&k, 0, 1).map(|_| ()),
            s.write(&k, 0, b"y"),
            s.create_and_write(&k, 8, 0, b"y"),
            s.remove(&k),
            s.list().map(|_| ()),
        ] {
            assert!(matches!(r, Err(StoreError::Io(_))), "{r:?}");
        }
    }

    #[test]
    fn metadata_files_that_cannot_be_trusted_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let cfg = SheepdogConfig {
            ctime: 77,
            copies: 3,
            version: SD_FORMAT_VERSION,
            ..Default::default()
        };
        s.write_config(&cfg).unwrap();
        assert_eq!(s.read_config().unwrap(), Some(cfg.clone()));
        let path = d.path().join("config");
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), CONFIG_SIZE + 4);
        // The original's 40 bytes alone are accepted.
        fs::write(&path, &good[..CONFIG_SIZE]).unwrap();
        assert_eq!(s.read_config().unwrap(), Some(cfg.clone()));
        let refused = |bytes: &[u8], why: &str| {
            fs::write(&path, bytes).unwrap();
            match s.read_config() {
                Err(StoreError::Corrupt(m)) => assert!(m.contains(why), "{m}"),
                r => panic!("{r:?}"),
            }
        };
        refused(&good[..20], "truncated (20 bytes)");
        refused(&[], "truncated (0 bytes)");
        let mut flipped = good.clone();
        flipped[3] ^= 1;
        refused(&flipped, "checksum mismatch");
        let old = SheepdogConfig { version: 5, ..cfg };
        refused(&old.encode(), "format version 0x0005");
        let node = SdNode::default();
        s.write_epoch(2, &[node], 9).unwrap();
        assert_eq!(s.read_epoch(2).unwrap(), Some((vec![node], 9)));
        let ep = d.path().join("epoch").join("00000002");
        let b = fs::read(&ep).unwrap();
        fs::write(&ep, &b[..50]).unwrap();
        assert!(matches!(s.read_epoch(2), Err(StoreError::Corrupt(m)) if m.contains("00000002")));
        // A flipped bit is caught; the original's file (no checksum) reads.
        let mut flipped = b.clone();
        flipped[20] ^= 4;
        fs::write(&ep, &flipped).unwrap();
        assert!(matches!(s.read_epoch(2), Err(StoreError::Corrupt(m)) if m.contains("checksum")));
        fs::write(&ep, &b[..b.len() - 4]).unwrap();
        assert_eq!(s.read_epoch(2).unwrap(), Some((vec![node], 9)));
    }

    /// Flips one byte of the file at `path`, as a disk's bit rot does.
    fn flip(path: &Path, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }

    /// The store in `d` with its journal in `jd`, and how many records
    /// it replayed.
    fn journaled(d: &Path, jd: &Path, nosync: bool) -> (Store, usize) {
        Store::open(d, nosync)
            .unwrap()
            .with_journal(jd, journal::MIN_SIZE)
            .unwrap()
    }

    #[test]
    fn large_writes_skip_the_journal_only_where_no_record_could_overwrite_them() {
        let (d, jd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = || journaled(d.path(), jd.path(), true);
        let (s, _) = open();
        let used = |s: &Store| s.journal.as_ref().unwrap().used();
        let k = ObjKey::replica(0x0001_0000_0000_0004);
        s.create_and_write(&k, 4 << 20, 0, &[1u8; 4096]).unwrap();
        let big = vec![2u8; journal::LARGE_WRITE];
        s.write(&k, 0, &big).unwrap();
        assert_eq!(used(&s), 0, "synced in place");
        s.write(&k, 0, &[3u8; 4096]).unwrap();
        let small = used(&s);
        assert!(small > 0, "a small write is journaled");
        s.write(&k, 0, &big).unwrap();
        assert!(
            used(&s) > small,
            "so is a large one after it, on that object"
        );
        drop(s);
        // Replayed in order: the large write, the last, is what stays.
        let (s, n) = open();
        assert_eq!(n, 2);
        assert_eq!(s.read(&k, 0, big.len()).unwrap(), big);
    }

    #[test]
    fn small_journaled_writes_are_made_without_blocking_and_replayed() {
        let (d, jd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = || journaled(d.path(), jd.path(), false);
        let (s, _) = open();
        let k = ObjKey::replica(0x0001_0000_0000_0005);
        s.create_and_write(&k, 4 << 20, 0, &[1u8; 8192]).unwrap();
        // Nothing open yet: the blocking path opens it.
        assert!(s.write_nowait(&k, 0, &[2u8; 4096]).is_none());
        s.write(&k, 0, &[2u8; 4096]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let three = [3u8; 4096];
        let w = s.write_nowait(&k, 4096, &three).unwrap().unwrap();
        rt.block_on(w.finish()).unwrap();
        assert_eq!(s.read(&k, 4096, 4096).unwrap(), [3u8; 4096]);
        // One whose waiter goes away is applied all the same.
        let w = s.write_nowait(&k, 3 * 4096, &three).unwrap().unwrap();
        drop(w);
        assert_eq!(s.read(&k, 3 * 4096, 4096).unwrap(), [3u8; 4096]);
        // Only whole blocks, and not while another write holds them.
        assert!(s.write_nowait(&k, 100, &[4u8; 4096]).is_none());
        let held = s.ranges.lock(&k, 2, 3);
        assert!(s.write_nowait(&k, 8192, &[5u8; 4096]).is_none());
        drop(held);
        // A write waiting for its batch holds its blocks.
        let w = s.write_nowait(&k, 8192, &[6u8; 4096]).unwrap().unwrap();
        assert!(s.write_nowait(&k, 8192, &[5u8; 4096]).is_none());
        rt.block_on(w.finish()).unwrap();
        let held = s.ranges.lock(&k, 2, 3);
        drop(held);
        let five = [5u8; 4096];
        let w = s.write_nowait(&k, 8192, &five).unwrap().unwrap();
        rt.block_on(w.finish()).unwrap();
        drop(s);
        let (s, replayed) = open();
        assert_eq!(replayed, 5);
        let want = [[2u8; 4096], [3u8; 4096], [5u8; 4096], [3u8; 4096]].concat();
        assert_eq!(s.read(&k, 0, 4 * 4096).unwrap(), want);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
    }

    #[test]
    fn open_files_follow_replacements_and_a_wiped_directory() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0006);
        s.create_and_write(&k, 1 << 20, 0, &[1u8; 4096]).unwrap();
        s.write(&k, 0, &[2u8; 4096]).unwrap();
        // Replaced: later writes and reads are of the new file.
        s.create_and_write(&k, 1 << 20, 0, &[3u8; 4096]).unwrap();
        s.write(&k, 4096, &[4u8; 4096]).unwrap();
        assert_eq!(
            s.read(&k, 0, 8192).unwrap(),
            [[3u8; 4096], [4u8; 4096]].concat()
        );
        assert_eq!(
            fs::read(s.path(&k)).unwrap()[..8192],
            [[3u8; 4096], [4u8; 4096]].concat()
        );
        // Retired and created again.
        s.move_to_stale(&k, 1).unwrap();
        assert!(matches!(s.write(&k, 0, &[5u8; 10]), Err(StoreError::NoObj)));
        s.create_and_write(&k, 1 << 20, 0, &[6u8; 4096]).unwrap();
        assert_eq!(s.read(&k, 0, 4).unwrap(), [6u8; 4]);
        assert_eq!(s.read_stale(&k, 1, 4096, 4).unwrap(), [4u8; 4]);
        // A wiped directory (a dead disk) takes no write into a file
        // kept open: the write fails instead of vanishing.
        s.write(&k, 0, &[7u8; 4096]).unwrap();
        fs::remove_dir_all(d.path().join("obj")).unwrap();
        assert!(matches!(
            s.write(&k, 0, &[8u8; 4096]),
            Err(StoreError::Io(_))
        ));
        assert!(s.read(&k, 0, 4).is_err());
    }

    #[test]
    fn checksums_written_through_a_dropped_handle_reach_the_kept_one() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0009);
        s.create_and_write(&k, 1 << 20, 0, &[1u8; 8192]).unwrap();
        let path = s.path(&k);
        let sums = |s: &Store| match s.open_sums(&path).unwrap() {
            Some(Sums::Good(g)) => g,
            _ => panic!("no checksums"),
        };
        // A writer holds a handle that the cache drops (a disk change
        // empties it), and a reader opens the file again meanwhile.
        let held = sums(&s);
        s.forget_all_open();
        let kept = sums(&s);
        assert!(!std::sync::Arc::ptr_eq(&held, &kept));
        let e = [csum::Entry::settled(crc32c::crc32c(&[2u8; 4096]))];
        s.write_sums(&path, &held, 1, &e).unwrap();
        assert_eq!(kept.entries(1, 2), e, "the kept copy follows the file");
        assert_eq!(held.entries(1, 2), e);
        // A handle of another file (the object replaced) is left alone.
        s.create_and_write(&k, 1 << 20, 0, &[3u8; 8192]).unwrap();
        let new = sums(&s);
        s.write_sums(&path, &held, 0, &e).unwrap();
        assert_eq!(
            new.entries(0, 1),
            [csum::Entry::settled(crc32c::crc32c(&[3u8; 4096]))]
        );
    }

    #[test]
    fn cached_reads_serve_only_verified_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0003);
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        s.create_and_write(&k, 4 << 20, 0, &data).unwrap();
        // The first read opens the checksums; then the page cache serves.
        assert_eq!(s.read(&k, 0, 4096).unwrap(), &data[..4096]);
        for (off, len) in [
            (0, 4096),
            (100, 5000),
            (8192, 1 << 20),
            ((4 << 20) - 10, 10),
        ] {
            let want = &data[off..off + len];
            assert_eq!(s.read_cached(&k, off as u64, len).as_deref(), Some(want));
        }
        s.write(&k, 4096 * 7 + 3, b"new").unwrap();
        assert_eq!(
            s.read_cached(&k, 4096 * 7, 6).unwrap(),
            [&data[4096 * 7..4096 * 7 + 3], b"new"].concat()
        );
        // Rot is not served from memory either: the blocking read names it.
        flip(&s.path(&k), 3 * 4096 + 7);
        assert_eq!(s.read_cached(&k, 3 * 4096, 1), None);
        assert!(matches!(
            s.read(&k, 3 * 4096, 1),
            Err(StoreError::Checksum { .. })
        ));
        assert_eq!(s.read_cached(&k, 0, 4096).as_deref(), Some(&data[..4096]));
        assert_eq!(s.read_cached(&ObjKey::replica(7), 0, 1), None);
    }

    #[test]
    fn rotten_bytes_are_never_read_and_the_block_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0002);
        s.create_and_write(&k, 4 << 20, 8192, &[9u8; 10000])
            .unwrap();
        // The object file is the original's: no header, no trailer.
        assert_eq!(fs::metadata(s.path(&k)).unwrap().len(), 4 << 20);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
        flip(&s.path(&k), 3 * 4096 + 7);
        let bad = |r: Result<Vec<u8>>| match r {
            Err(StoreError::Checksum { blocks, .. }) => blocks,
            r => panic!("{r:?}"),
        };
        assert_eq!(bad(s.read(&k, 3 * 4096, 1)), vec![3]);
        assert_eq!(bad(s.read(&k, 0, 4 << 20)), vec![3]);
        assert_eq!(bad(s.read_all(&k)), vec![3]);
        // Other blocks still read.
        assert_eq!(s.read(&k, 8192, 4096).unwrap(), vec![9u8; 4096]);
        assert_eq!(s.read(&k, 4 * 4096, 10).unwrap(), vec![9u8; 10]);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Bad(vec![3]));
        // A write that keeps part of the rotten block is refused; one that
        // rewrites it whole repairs it.
        assert!(matches!(
            s.write(&k, 3 * 4096 + 100, b"x"),
            Err(StoreError::Checksum { .. })
        ));
        s.write(&k, 3 * 4096, &[9u8; 4096]).unwrap();
        assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
        // Stale copies keep their checksums.
        flip(&s.path(&k), 5);
        s.move_to_stale(&k, 4).unwrap();
        assert!(matches!(
            s.read_stale(&k, 4, 0, 4096),
            Err(StoreError::Checksum { .. })
        ));
        assert_eq!(s.read_stale(&k, 4, 8192, 3).unwrap(), vec![9u8; 3]);
        assert_eq!(s.list_stale().unwrap(), vec![(k, 4)]);
        assert_eq!(s.purge_stale().unwrap(), 1);
    }

    #[test]
    fn partial_writes_keep_checksums_true() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0003);
        s.create_and_write(&k, 3 * 4096 + 100, 0, b"").unwrap();
        for (off, len) in [
            (10, 3),
            (4000, 200),
            (4096, 8192),
            (3 * 4096 + 50, 50),
            (0, 12388),
        ] {
            let data: Vec<u8> = (0..len).map(|i| ((i + off) % 251) as u8).collect();
            s.write(&k, off, &data).unwrap();
            assert_eq!(s.read(&k, off, len as usize).unwrap(), data);
            assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
        }
        // Ledger-sized files (not a multiple of the block) too.
        let l = ObjKey::replica(0x0001_0000_0000_0004);
        s.create_and_write(&l, 12, 0, b"abcdefghijkl").unwrap();
        assert_eq!(s.read_all(&l).unwrap(), b"abcdefghijkl");
        assert_eq!(s.read(&l, 10, 4).unwrap(), b"kl\0\0");
        assert_eq!(s.read(&l, 9000, 4).unwrap(), vec![0u8; 4]);
        s.write(&l, 4, b"XY").unwrap();
        assert_eq!(s.read_all(&l).unwrap(), b"abcdXYghijkl");
        assert_eq!(s.verify(&l).unwrap(), Verdict::Good);
    }

    #[test]
    fn a_truncated_object_file_does_not_read_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0008);
        s.create_and_write(&k, 4 << 20, 0, &[3u8; 4 << 20]).unwrap();
        let f = OpenOptions::new().write(true).open(s.path(&k)).unwrap();
        f.set_len(10_000).unwrap();
        assert_eq!(s.read(&k, 0, 8192).unwrap(), vec![3u8; 8192]);
        for (off, len) in [(9000, 10), (20_000, 4096), (0, 4 << 20)] {
            assert!(
                matches!(s.read(&k, off, len), Err(StoreError::Checksum { .. })),
                "{off}+{len}"
            );
        }
    }

    #[test]
    fn what_a_crash_in_a_write_leaves_verifies_as_old_or_new() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0005);
        s.create_and_write(&k, 8192, 0, &[1u8; 8192]).unwrap();
        let sc = csum::sidecar_path(&s.path(&k));
        let settled = fs::read(&sc).unwrap();
        // The crash came after the new checksums were durable and before
        // the data was: the old bytes still read.
        s.write(&k, 0, &[2u8; 4096]).unwrap();
        let after = fs::read(&sc).unwrap();
        let f = OpenOptions::new().write(true).open(s.path(&k)).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        let g = OpenOptions::new().write(true).open(&sc).unwrap();
        csum::write_entries(
            &g,
            0,
            &[csum::Entry {
                cur: crc32c::crc32c(&[2u8; 4096]),
                prev: crc32c::crc32c(&[1u8; 4096]),
            }],
        )
        .unwrap();
        // What a sheep started after the crash reads.
        let restarted = || Store::open(d.path(), true).unwrap();
        assert_eq!(restarted().read(&k, 0, 4096).unwrap(), vec![1u8; 4096]);
        // ... or after the data too: the new bytes read.
        f.write_all_at(&[2u8; 4096], 0).unwrap();
        assert_eq!(restarted().read(&k, 0, 4096).unwrap(), vec![2u8; 4096]);
        // Once settled, the old bytes are a lost write, not accepted.
        fs::write(&sc, &after).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        assert!(restarted().read(&k, 0, 4096).is_err());
        assert_ne!(settled, after);
    }

    #[test]
    fn objects_without_checksums_read_and_get_them_from_the_scrub() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let k = ObjKey::replica(0x0001_0000_0000_0006);
        // As the original writes it: the object file alone.
        fs::write(s.path(&k), vec![5u8; 10_000]).unwrap();
        assert_eq!(s.read(&k, 0, 3).unwrap(), vec![5u8; 3]);
        s.write(&k, 0, b"ab").unwrap();
        assert_eq!(s.list().unwrap(), vec![k]);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Computed);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
        flip(&s.path(&k), 9000);
        assert_eq!(s.verify(&k).unwrap(), Verdict::Bad(vec![2]));
        // A sidecar that is itself damaged vouches for nothing.
        fs::write(csum::sidecar_path(&s.path(&k)), b"junk").unwrap();
        assert_eq!(s.verify(&k).unwrap(), Verdict::Bad(vec![0, 1, 2]));
        s.remove(&k).unwrap();
        assert!(!csum::sidecar_path(&s.path(&k)).exists());
    }

    #[test]
    fn concurrent_writes_and_reads_of_one_block_never_see_a_mismatch() {
        let d = tempfile::tempdir().unwrap();
        concurrent_writes_and_reads(Store::open(d.path(), true).unwrap());
        // Journaled writes apply their data before their checksums.
        let (d, jd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        concurrent_writes_and_reads(journaled(d.path(), jd.path(), true).0);
    }

    fn concurrent_writes_and_reads(s: Store) {
        let s = std::sync::Arc::new(s);
        let k = ObjKey::replica(0x0001_0000_0000_0007);
        s.create_and_write(&k, 16384, 0, b"").unwrap();
        let threads: Vec<_> = (0..6u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        if t % 2 == 0 {
                            // 512-byte writes sharing 4 KiB blocks.
                            let off = ((i * 7 + t as u32) % 32) as u64 * 512;
                            s.write(&k, off, &[t + i as u8; 512]).unwrap();
                        } else {
                            s.read(&k, 0, 16384).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.verify(&k).unwrap(), Verdict::Good);
    }

    #[test]
    fn ec_names() {
        let k = ObjKey {
            oid: 0x7c2b2500000001,
            ec_index: Some(4),
        };
        assert_eq!(k.file_name(), "007c2b2500000001_4");
        assert_eq!(ObjKey::parse("007c2b2500000001_4"), Some(k));
        assert_eq!(ObjKey::parse("007c2b2500000001.tmp"), None);
        assert_eq!(ObjKey::parse(".stale"), None);
    }

    proptest! {
        #[test]
        fn parse_any_name(s in ".{0,40}") {
            if let Some(k) = ObjKey::parse(&s) {
                prop_assert_eq!(ObjKey::parse(&k.file_name()), Some(k));
            }
        }

        #[test]
        fn metadata_decoders_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok((nodes, _)) = decode_epoch(&b) {
                prop_assert!(nodes.len() * SD_NODE_SIZE <= b.len());
            }
            if let Ok(c) = decode_config(&b) {
                prop_assert_eq!(c.version, SD_FORMAT_VERSION);
            }
        }
    }
}
