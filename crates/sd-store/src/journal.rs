//! The write-ahead journal (`sheep -j dir=,size=`): overwrites of existing
//! objects are appended to one preallocated file and acknowledged after one
//! `fdatasync` of it per batch (group commit), then applied to the object
//! files without a sync of their own. Without it every replica write costs
//! two flushes of the disk (checksums, then data); with it, all writes that
//! arrive together share one.
//!
//! **Group commit.** A writer appends its record to the batch being
//! gathered; the journal's committer thread writes each batch with one
//! `pwrite`, syncs once and tells the batch's writers, which then apply
//! their writes to the object files (unsynced) and acknowledge them. A
//! writer on an async task waits for that without a thread of its own
//! ([`Pending::durable`]), so a small write changes threads only for its
//! batch's sync. A write is applied only once its record is durable: a
//! crash before that leaves its object file as it was (had its new bytes
//! reached the disk before its checksums, with no record to replay, the
//! block would read as rot).
//!
//! **Generations.** The file starts with a header holding the current
//! generation; records are appended after it, each carrying the generation
//! and CRC32Cs of itself and its payload. When the file is full, a
//! checkpoint syncs every object file written since the last one, writes
//! the next generation into the header and starts again at the top, so the
//! bytes left past the newest record are always of older generations.
//!
//! **Replay.** At start, the records of the header's generation are read
//! up to the first that does not verify (a torn tail: a crash during a
//! commit, which acknowledged none of that batch) and applied again in
//! order. Applying a write twice gives the same bytes, so a crash during
//! replay is harmless. Only overwrites of existing objects are journaled,
//! and of those only small ones ([`LARGE_WRITE`]) where the object has no
//! records yet;
//! anything that replaces or removes an object file first checkpoints the
//! journal if that object has records in it ([`Journal::is_dirty`]), so a
//! record is never replayed onto a different file than it was written for.

use crate::{ObjKey, Result, StoreError};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// The journal's file name in its directory.
pub const FILE_NAME: &str = "journal";
/// The smallest journal the original accepted (64 MiB), ours too.
pub const MIN_SIZE: u64 = 64 << 20;
/// Writes this large or larger are synced in place instead (where their
/// object has no records in the journal): written twice they would cost
/// more than their own sync.
pub const LARGE_WRITE: usize = 256 << 10;

const FILE_MAGIC: &[u8; 8] = b"SDJRNL01";
/// The file header occupies the first block.
const HEADER: u64 = 4096;
const REC_MAGIC: u32 = 0x4a52_4543;
/// magic, header crc, generation, oid, ec index, offset, length, payload crc.
const REC_HEAD: usize = 4 + 4 + 8 + 8 + 4 + 8 + 4 + 4;

/// One journaled write: `data` at `offset` of object `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: ObjKey,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Appends the record of `data` at `offset` of `key` to `out`.
fn encode_into(key: &ObjKey, offset: u64, data: &[u8], generation: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&key.oid.to_le_bytes());
    out.extend_from_slice(&key.ec_index.map_or(u32::MAX, u32::from).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..start + REC_HEAD]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
}

impl Record {
    /// The record at the start of `b` if it is whole, verifies and belongs
    /// to `generation`; with its encoded length.
    pub fn decode(b: &[u8], generation: u64) -> Option<(Record, usize)> {
        let h = b.get(..REC_HEAD)?;
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        if u32_at(0) != REC_MAGIC || u32_at(4) != crc32c::crc32c(&h[8..]) {
            return None;
        }
        if u64_at(8) != generation {
            return None;
        }
        let ec = u32_at(24);
        let len = u32_at(36) as usize;
        let data = b.get(REC_HEAD..REC_HEAD + len)?;
        if crc32c::crc32c(data) != u32_at(40) {
            return None;
        }
        let key = ObjKey {
            oid: u64_at(16),
            ec_index: if ec == u32::MAX {
                None
            } else {
                Some(u8::try_from(ec).ok()?)
            },
        };
        let rec = Record {
            key,
            offset: u64_at(28),
            data: data.to_vec(),
        };
        Some((rec, REC_HEAD + len))
    }
}

/// The journal of one node: its file, the batch being gathered and the
/// objects written since the last checkpoint, shared with its committer
/// thread (which stops when the journal is dropped).
pub struct Journal {
    shared: Arc<Shared>,
    committer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    file: File,
    size: u64,
    nosync: bool,
    state: Mutex<State>,
    /// Signalled when a batch lands, a write is applied or a checkpoint
    /// ends.
    changed: Condvar,
    /// Signalled when the idle committer has records to write.
    work: Condvar,
    /// The batches landed so far, for async waiters.
    landed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    generation: u64,
    /// Where the next batch goes.
    pos: u64,
    /// Bytes of the batch being written (it lands at `pos`).
    inflight: u64,
    /// Records waiting for the committer (their bytes), and the batch
    /// number they will be in.
    queued: Vec<u8>,
    queued_batch: u64,
    /// The last batch written (made durable unless `failed`).
    done_batch: u64,
    /// The first batch whose write or sync failed, and why: it and every
    /// later one fail (a journal that cannot be written is a failed disk).
    failed: Option<(u64, String)>,
    /// A batch is being written.
    committing: bool,
    /// The committer waits for work (so only then is it woken).
    idle: bool,
    closing: bool,
    /// Writers whose record is appended but whose write is not yet applied
    /// to its object file: a checkpoint waits for them.
    applying: usize,
    checkpointing: bool,
    /// Objects with records in the current generation.
    dirty: HashSet<ObjKey>,
}

/// Held by a writer from appending its record until its write is applied
/// to the object file (a checkpoint waits for it).
pub struct Applying<'a>(&'a Journal);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        let sh = &self.0.shared;
        let mut s = sh.state.lock().unwrap();
        s.applying -= 1;
        if s.applying == 0 && s.checkpointing {
            sh.changed.notify_all();
        }
    }
}

/// A record appended to the journal: its write is durable once the
/// record's batch has landed.
#[must_use = "a write is acknowledged only once it is durable"]
pub struct Pending {
    shared: Arc<Shared>,
    batch: u64,
}

impl Pending {
    fn outcome(&self, s: &State) -> Result<()> {
        match &s.failed {
            Some((b, e)) if *b <= self.batch => {
                Err(StoreError::Io(std::io::Error::other(e.clone())))
            }
            _ => Ok(()),
        }
    }

    /// Blocks until the record is durable.
    pub fn wait(&self) -> Result<()> {
        let mut s = self.shared.state.lock().unwrap();
        while s.done_batch <= self.batch {
            s = self.shared.changed.wait(s).unwrap();
        }
        self.outcome(&s)
    }

    /// Waits, without blocking a thread, until the record is durable.
    pub async fn durable(&self) -> Result<()> {
        let mut landed = self.shared.landed.subscribe();
        // The sender lives as long as `self.shared`.
        let _ = landed.wait_for(|&done| done > self.batch).await;
        let s = self.shared.state.lock().unwrap();
        self.outcome(&s)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closing = true;
        self.shared.work.notify_all();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn write_header(&self, generation: u64) -> Result<()> {
        let mut h = [0u8; 24];
        h[..8].copy_from_slice(FILE_MAGIC);
        h[8..16].copy_from_slice(&generation.to_le_bytes());
        let crc = crc32c::crc32c(&h[..16]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&h, 0)?;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        if !self.nosync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// The committer: writes each batch with one `pwrite` and makes it
    /// durable with one sync, until the journal is dropped.
    fn commit_batches(&self) {
        let mut s = self.state.lock().unwrap();
        loop {
            while s.queued.is_empty() && !s.closing {
                s.idle = true;
                s = self.work.wait(s).unwrap();
            }
            s.idle = false;
            if s.queued.is_empty() {
                return;
            }
            let bytes = std::mem::take(&mut s.queued);
            let batch = s.queued_batch;
            s.queued_batch += 1;
            s.committing = true;
            s.inflight = bytes.len() as u64;
            let at = s.pos;
            let failed_before = s.failed.is_some();
            drop(s);
            // After a failed batch nothing more is written: it would land
            // over the failed one, whose tail replay could then apply.
            let r = match failed_before {
                true => Err(StoreError::Io(std::io::Error::other("the journal failed"))),
                false => self
                    .file
                    .write_all_at(&bytes, at)
                    .map_err(StoreError::from)
                    .and_then(|()| self.sync()),
            };
            s = self.state.lock().unwrap();
            s.committing = false;
            s.inflight = 0;
            s.done_batch = batch + 1;
            match r {
                Ok(()) => s.pos = at + bytes.len() as u64,
                Err(e) => {
                    s.failed.get_or_insert((batch, e.to_string()));
                }
            }
            self.changed.notify_all();
            self.landed.send_replace(batch + 1);
        }
    }
}

impl Journal {
    /// Opens (creating and preallocating) the journal file in `dir`;
    /// returns it with the records of its current generation, to replay.
    pub fn open(dir: &Path, size: u64, nosync: bool) -> Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if fresh || file.metadata()?.len() < size {
            // Written, not just allocated: a sync of a record then changes
            // no metadata (no extent to convert, no size to grow).
            let zeros = vec![0u8; 1 << 20];
            let mut at = file.metadata()?.len().min(size);
            while at < size {
                let n = zeros.len().min((size - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
        }
        if fresh && !nosync {
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        let size = file.metadata()?.len();
        let mut h = [0u8; 24];
        let n = crate::csum::pread_upto(&file, &mut h, 0)?;
        let generation = if fresh || h[..8] == [0; 8] {
            0
        } else {
            if n < h.len() || &h[..8] != FILE_MAGIC {
                return Err(StoreError::Corrupt(format!(
                    "{}: not a journal file",
                    path.display()
                )));
            }
            let g = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
            if crc != crc32c::crc32c(&h[..16]) {
                return Err(StoreError::Corrupt(format!(
                    "{}: its header fails its checksum",
                    path.display()
                )));
            }
            g
        };
        let mut records = Vec::new();
        let mut pos = HEADER;
        if generation != 0 {
            let mut buf = vec![0u8; (size - HEADER) as usize];
            let got = crate::csum::pread_upto(&file, &mut buf, HEADER)?;
            let mut at = 0;
            while let Some((r, len)) = Record::decode(&buf[at..got], generation) {
                records.push(r);
                at += len;
            }
            pos += at as u64;
        }
        let shared = Arc::new(Shared {
            file,
            size,
            nosync,
            state: Mutex::new(State {
                generation,
                pos,
                ..Default::default()
            }),
            changed: Condvar::new(),
            work: Condvar::new(),
            landed: tokio::sync::watch::channel(0).0,
        });
        if fresh || generation == 0 {
            shared.write_header(1)?;
            shared.state.lock().unwrap().generation = 1;
        }
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || shared.commit_batches())?
        };
        let j = Journal {
            shared,
            committer: Some(committer),
        };
        Ok((j, records))
    }

    /// Bytes of records in the current generation.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.shared.state.lock().unwrap().pos - HEADER
    }

    #[cfg(test)]
    pub fn generation(&self) -> u64 {
        self.shared.state.lock().unwrap().generation
    }

    /// Whether `key` has records in the current generation (anything that
    /// replaces or removes its file must [`Journal::checkpoint`] first).
    pub fn is_dirty(&self, key: &ObjKey) -> bool {
        self.shared.state.lock().unwrap().dirty.contains(key)
    }

    /// Appends the record of `data` at `offset` of `key` if that needs no
    /// waiting (no checkpoint under way or needed first); None otherwise.
    /// The write must be applied to the object file before the returned
    /// guard is dropped; it is durable once the [`Pending`] says so.
    pub fn try_append(
        &self,
        key: &ObjKey,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<(Applying<'_>, Pending)>> {
        let len = (REC_HEAD + data.len()) as u64;
        let mut s = self.shared.state.lock().unwrap();
        if let Some((_, e)) = &s.failed {
            return Err(StoreError::Io(std::io::Error::other(e.clone())));
        }
        if s.checkpointing || s.pos + s.inflight + s.queued.len() as u64 + len > self.shared.size {
            return Ok(None);
        }
        Ok(Some(self.append_locked(&mut s, key, offset, data)))
    }

    fn append_locked(
        &self,
        s: &mut State,
        key: &ObjKey,
        offset: u64,
        data: &[u8],
    ) -> (Applying<'_>, Pending) {
        let generation = s.generation;
        encode_into(key, offset, data, generation, &mut s.queued);
        s.dirty.insert(*key);
        s.applying += 1;
        if s.idle {
            s.idle = false;
            self.shared.work.notify_one();
        }
        let pending = Pending {
            shared: self.shared.clone(),
            batch: s.queued_batch,
        };
        (Applying(self), pending)
    }

    /// [`Journal::try_append`], waiting for a checkpoint under way or
    /// making one when the journal is full. `sync_objects` makes the object
    /// files written since the last checkpoint durable (given their keys).
    pub fn append(
        &self,
        key: &ObjKey,
        offset: u64,
        data: &[u8],
        sync_objects: &dyn Fn(&HashSet<ObjKey>) -> Result<()>,
    ) -> Result<(Applying<'_>, Pending)> {
        let len = (REC_HEAD + data.len()) as u64;
        if HEADER + len > self.shared.size {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "a write of {} bytes does not fit the journal",
                data.len()
            ))));
        }
        let sh = &self.shared;
        let mut s = sh.state.lock().unwrap();
        // Appended only where this batch still fits; else the journal is
        // checkpointed first (by whoever finds it full).
        loop {
            if let Some((_, e)) = &s.failed {
                return Err(StoreError::Io(std::io::Error::other(e.clone())));
            }
            if s.checkpointing {
                s = sh.changed.wait(s).unwrap();
                continue;
            }
            if s.pos + s.inflight + s.queued.len() as u64 + len <= sh.size {
                break;
            }
            if s.committing || !s.queued.is_empty() {
                // A batch in flight or waiting: let it land first.
                s = sh.changed.wait(s).unwrap();
                continue;
            }
            s = self.checkpoint_locked(s, sync_objects)?;
        }
        Ok(self.append_locked(&mut s, key, offset, data))
    }

    /// Makes every journaled write durable in its object file and empties
    /// the journal (a new generation).
    pub fn checkpoint(&self, sync_objects: &dyn Fn(&HashSet<ObjKey>) -> Result<()>) -> Result<()> {
        let sh = &self.shared;
        let mut s = sh.state.lock().unwrap();
        while s.checkpointing {
            s = sh.changed.wait(s).unwrap();
        }
        drop(self.checkpoint_locked(s, sync_objects)?);
        Ok(())
    }

    /// The checkpoint, entered with the state locked: no new records from
    /// here; waits for the appended ones to land and be applied, then
    /// syncs unlocked.
    fn checkpoint_locked<'a>(
        &'a self,
        mut s: std::sync::MutexGuard<'a, State>,
        sync_objects: &dyn Fn(&HashSet<ObjKey>) -> Result<()>,
    ) -> Result<std::sync::MutexGuard<'a, State>> {
        let sh = &self.shared;
        s.checkpointing = true;
        while s.applying > 0 || s.committing || !s.queued.is_empty() {
            s = sh.changed.wait(s).unwrap();
        }
        let dirty = std::mem::take(&mut s.dirty);
        let next = s.generation + 1;
        drop(s);
        let header = sync_objects(&dirty).map(|()| sh.write_header(next));
        let mut s = sh.state.lock().unwrap();
        s.checkpointing = false;
        let r = match header {
            Ok(Ok(())) => {
                s.generation = next;
                s.pos = HEADER;
                Ok(())
            }
            // The header on disk may be either generation now: nothing
            // more may be appended (a failed disk).
            Ok(Err(e)) => {
                let first_failed = s.queued_batch;
                s.failed.get_or_insert((first_failed, e.to_string()));
                s.dirty.extend(dirty);
                Err(e)
            }
            // Still to be synced by the next checkpoint.
            Err(e) => {
                s.dirty.extend(dirty);
                Err(e)
            }
        };
        sh.changed.notify_all();
        r.map(|()| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(oid: u64, offset: u64, len: usize) -> Record {
        Record {
            key: ObjKey {
                oid,
                ec_index: None,
            },
            offset,
            data: (0..len).map(|i| (i as u64 * 7 + oid) as u8).collect(),
        }
    }

    fn no_sync(_: &HashSet<ObjKey>) -> Result<()> {
        Ok(())
    }

    /// Appends `r`, waits until it is durable; the write is then still
    /// being applied until the guard is dropped.
    fn log_with<'a>(
        j: &'a Journal,
        r: &Record,
        sync: &dyn Fn(&HashSet<ObjKey>) -> Result<()>,
    ) -> Result<Applying<'a>> {
        let (applying, pending) = j.append(&r.key, r.offset, &r.data, sync)?;
        pending.wait()?;
        Ok(applying)
    }

    fn log<'a>(j: &'a Journal, r: &Record) -> Result<Applying<'a>> {
        log_with(j, r, &no_sync)
    }

    #[test]
    fn records_come_back_in_order_after_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (j, old) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert!(old.is_empty());
        let recs = [rec(1, 0, 4096), rec(2, 512, 512), rec(1, 4096, 100)];
        for r in &recs {
            drop(log(&j, r).unwrap());
        }
        assert!(j.is_dirty(&recs[0].key) && !j.is_dirty(&rec(3, 0, 1).key));
        drop(j);
        let (_, back) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert_eq!(back, recs);
    }

    #[test]
    fn a_torn_tail_is_discarded_and_a_checkpoint_empties_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        drop(log(&j, &rec(1, 0, 4096)).unwrap());
        let end_of_first = HEADER + j.used();
        drop(log(&j, &rec(2, 0, 4096)).unwrap());
        drop(j);
        // Cut the second record short: its payload no longer verifies.
        let f = OpenOptions::new()
            .write(true)
            .open(d.path().join(FILE_NAME))
            .unwrap();
        f.write_all_at(&[0xff; 10], end_of_first + REC_HEAD as u64 + 100)
            .unwrap();
        let (j, back) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert_eq!(back, [rec(1, 0, 4096)]);
        let synced = std::cell::RefCell::new(Vec::new());
        j.checkpoint(&|keys| {
            synced.borrow_mut().extend(keys.iter().map(|k| k.oid));
            Ok(())
        })
        .unwrap();
        assert_eq!(j.used(), 0);
        // The replayed records are not dirty (the caller syncs them
        // itself); only what was logged since.
        assert!(synced.borrow().is_empty());
        drop(j);
        let (_, back) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert!(back.is_empty(), "an older generation is never replayed");
    }

    #[test]
    fn a_full_journal_checkpoints_the_objects_written_and_wraps() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        let synced = Mutex::new(Vec::new());
        let sync = |keys: &HashSet<ObjKey>| {
            synced.lock().unwrap().push(keys.len());
            Ok(())
        };
        let big = 1 << 20;
        let n = (MIN_SIZE / big as u64) as usize + 3;
        for i in 0..n {
            drop(log_with(&j, &rec(i as u64 % 5, 0, big), &sync).unwrap());
        }
        assert_eq!(
            *synced.lock().unwrap(),
            [5],
            "one checkpoint, of every object written"
        );
        assert_eq!(j.generation(), 2);
        drop(j);
        let (_, back) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert_eq!(back.len(), 4, "only the records since the wrap");
    }

    #[test]
    fn concurrent_writers_share_batches_and_all_land() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let j = &j;
                s.spawn(move || {
                    for i in 0..50 {
                        drop(log(j, &rec(t, i * 512, 512)).unwrap());
                    }
                });
            }
        });
        drop(j);
        let (_, back) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        assert_eq!(back.len(), 400);
        for t in 0..8u64 {
            let mine: Vec<u64> = back
                .iter()
                .filter(|r| r.key.oid == t)
                .map(|r| r.offset)
                .collect();
            assert_eq!(mine, (0..50).map(|i| i * 512).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_checkpoint_waits_until_landed_writes_are_applied() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        let applying = log(&j, &rec(1, 0, 512)).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                j.checkpoint(&no_sync).unwrap();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!done.load(std::sync::atomic::Ordering::SeqCst));
            drop(applying);
        });
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(j.generation(), 2);
    }

    #[test]
    fn appending_without_waiting_gives_way_to_a_checkpoint_and_a_full_journal() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(d.path(), MIN_SIZE, false).unwrap();
        let r = rec(1, 0, 4096);
        let (applying, pending) = j.try_append(&r.key, 0, &r.data).unwrap().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(pending.durable()).unwrap();
        std::thread::scope(|s| {
            let cp = s.spawn(|| j.checkpoint(&no_sync).unwrap());
            // The checkpoint waits for the write being applied; no record
            // may be appended meanwhile without waiting.
            while !j.shared.state.lock().unwrap().checkpointing {
                std::thread::yield_now();
            }
            assert!(j.try_append(&r.key, 0, &r.data).unwrap().is_none());
            drop(applying);
            cp.join().unwrap();
        });
        assert_eq!(j.generation(), 2);
        // Filled up to the last record that fits: the next one waits.
        let big = rec(2, 0, 1 << 20);
        while let Some((a, p)) = j.try_append(&big.key, 0, &big.data).unwrap() {
            drop(a);
            p.wait().unwrap();
        }
        assert!(j.used() + (REC_HEAD + big.data.len()) as u64 > MIN_SIZE - HEADER);
        let (a, p) = j.append(&big.key, 0, &big.data, &no_sync).unwrap();
        drop(a);
        p.wait().unwrap();
        assert_eq!(j.generation(), 3, "the blocking append checkpointed");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300), g in 0u64..3) {
            if let Some((r, len)) = Record::decode(&b, g) {
                prop_assert!(len <= b.len());
                prop_assert_eq!(len, REC_HEAD + r.data.len());
            }
        }
    }
}
