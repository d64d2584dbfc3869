//! The `local` driver: several sheep on one machine, no external service.
//!
//! Design: the ordered stream is an append-only log file. Appends happen
//! under an exclusive `flock` on `<path>.lock`, as one `write` of a
//! length-prefixed record, so every member reads the same records in the
//! same order. Each member reads the log from the start (so a joiner learns
//! the cluster's history by replay), then waits for it to grow (inotify,
//! so an idle member sleeps instead of polling) and holds an exclusive
//! `flock` on its own file in `<path>.members/`; the kernel drops that lock
//! the instant the process dies. Every other member has a thread blocked
//! on a shared `flock` of that file, which it gets at that instant, and
//! appends a LEAVE (duplicates are harmless: the daemon ignores a LEAVE of
//! an incarnation that is not a member). Nothing polls. The exclusive section of
//! cluster operations (`block`) is an `flock` on `<path>.block`, likewise
//! released by the kernel if its holder dies. When a node starts and no
//! member of the log is alive, the log is reset.

use crate::event::*;
use crate::{now_secs, ClusterError, Result};
use sd_proto::*;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the log is read for new records where inotify is not
/// available.
const POLL: Duration = Duration::from_millis(2);
/// How long the reader sleeps at most (to notice that it was stopped).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The local cluster driver of one sheep.
pub struct LocalDriver {
    log_path: PathBuf,
    lock_path: PathBuf,
    block_path: PathBuf,
    members_dir: PathBuf,
    me: Mutex<Option<(NodeId, u64)>>,
    member_lock: Mutex<Option<File>>,
    stopped: Arc<AtomicBool>,
}

/// Holds the cluster-wide exclusive section until dropped.
pub struct BlockGuard {
    _file: File,
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Parses complete records from `buf`, returning them with their end
/// offsets relative to `base`, and the number of bytes consumed.
fn parse_records(buf: &[u8], base: u64) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 4 {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        if len > MAX_EVENT_SIZE || buf.len() - pos - 4 < len {
            break;
        }
        let rec = buf[pos + 4..pos + 4 + len].to_vec();
        pos += 4 + len;
        out.push((base + pos as u64, rec));
    }
    (out, pos)
}

impl LocalDriver {
    /// `option` is the path given after `local:` (default `/tmp/sheepdog_shm`).
    pub fn new(option: &str) -> Result<Self> {
        let p = if option.is_empty() {
            "/tmp/sheepdog_shm"
        } else {
            option
        };
        let base = PathBuf::from(p);
        let name = base
            .file_name()
            .ok_or_else(|| ClusterError::Option(p.to_string()))?
            .to_string_lossy()
            .into_owned();
        let dir = base
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        fs::create_dir_all(&dir)?;
        let members_dir = dir.join(format!("{name}.members"));
        fs::create_dir_all(&members_dir)?;
        Ok(LocalDriver {
            log_path: base.clone(),
            lock_path: dir.join(format!("{name}.lock")),
            block_path: dir.join(format!("{name}.block")),
            members_dir,
            me: Mutex::new(None),
            member_lock: Mutex::new(None),
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    fn append_locked(&self, rec: &[u8]) -> Result<u64> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)?;
        flock(&lock, libc::LOCK_EX)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut b = Vec::with_capacity(rec.len() + 4);
        b.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        b.extend_from_slice(rec);
        log.write_all(&b)?;
        let end = log.metadata()?.len();
        Ok(end)
    }

    /// Waits (on its own thread) until member `inc` is gone, then says
    /// so in the log.
    fn watch_member(self: Arc<Self>, inc: u64, nid: NodeId) {
        let path = self.members_dir.join(format!("{inc:016x}"));
        if let Ok(f) = File::open(&path) {
            // Granted once its holder's process is gone.
            if flock(&f, libc::LOCK_SH).is_err() {
                return;
            }
            let _ = fs::remove_file(&path);
        }
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            "member {} (incarnation {inc:x}) is gone",
            nid.to_addr_string()
        );
        let _ = self.append_locked(
            &Event::Leave {
                nid,
                incarnation: inc,
            }
            .encode(now_secs()),
        );
    }

    fn is_alive(members_dir: &Path, incarnation: u64) -> bool {
        let path = members_dir.join(format!("{incarnation:016x}"));
        let Ok(f) = File::open(&path) else {
            return false;
        };
        match flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                false
            }
            Err(_) => true,
        }
    }

    /// Replays the log, returning the members (incarnation → nid) it lists.
    fn replay_members(&self) -> Result<HashMap<u64, NodeId>> {
        let mut m = HashMap::new();
        let buf = match fs::read(&self.log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(e.into()),
        };
        for (_, rec) in parse_records(&buf, 0).0 {
            track(&mut m, &rec);
        }
        Ok(m)
    }

    /// Joins: takes the member lock, resets a log nobody is alive in,
    /// appends our JOIN and starts delivering every event from the start.
    pub async fn join(
        self: &Arc<Self>,
        node: SdNode,
        opaque: Vec<u8>,
    ) -> Result<mpsc::UnboundedReceiver<Delivered>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.join_blocking(node, opaque))
            .await
            .map_err(|_| ClusterError::Stopped)?
    }

    fn join_blocking(
        self: Arc<Self>,
        node: SdNode,
        opaque: Vec<u8>,
    ) -> Result<mpsc::UnboundedReceiver<Delivered>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let incarnation =
            ((std::process::id() as u64) << 32) ^ (nanos as u64) ^ ((node.nid.port as u64) << 48);
        let mf = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.members_dir.join(format!("{incarnation:016x}")))?;
        flock(&mf, libc::LOCK_EX)?;
        *self.member_lock.lock().unwrap() = Some(mf);
        *self.me.lock().unwrap() = Some((node.nid, incarnation));

        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)?;
        flock(&lock, libc::LOCK_EX)?;
        let members = self.replay_members()?;
        if !members
            .keys()
            .any(|&inc| Self::is_alive(&self.members_dir, inc))
        {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.log_path)?;
        }
        let rec = Event::Join {
            node,
            incarnation,
            opaque,
        }
        .encode(now_secs());
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut b = (rec.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&rec);
        log.write_all(&b)?;
        drop(lock);

        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        std::thread::Builder::new()
            .name("local-driver".into())
            .spawn(move || me.reader(tx, incarnation))?;
        Ok(rx)
    }

    fn reader(self: Arc<Self>, tx: mpsc::UnboundedSender<Delivered>, my_inc: u64) {
        let mut members: HashMap<u64, NodeId> = HashMap::new();
        let mut watched = std::collections::HashSet::new();
        let mut off = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        // Watched before the first read: an append between a read and the
        // wait that follows it is still seen.
        let watch = LogWatch::new(&self.log_path);
        let Ok(mut f) = File::open(&self.log_path) else {
            return;
        };
        while !self.stopped.load(Ordering::Relaxed) {
            let mut chunk = Vec::new();
            if f.seek(SeekFrom::Start(off + pending.len() as u64)).is_ok() {
                let _ = f.read_to_end(&mut chunk);
            }
            if !chunk.is_empty() {
                pending.extend_from_slice(&chunk);
                let (recs, used) = parse_records(&pending, off);
                pending.drain(..used);
                off += used as u64;
                for (seq, rec) in recs {
                    track(&mut members, &rec);
                    if let Some((time, event)) = Event::decode(&rec) {
                        if tx.send(Delivered { seq, time, event }).is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            for (&inc, &nid) in &members {
                if inc != my_inc && watched.insert(inc) {
                    let me = self.clone();
                    let _ = std::thread::Builder::new()
                        .name("local-member".into())
                        .spawn(move || me.watch_member(inc, nid));
                }
            }
            match &watch {
                Some(w) => w.wait(IDLE_WAKE),
                None => std::thread::sleep(POLL),
            }
        }
    }

    /// Broadcasts `msg` in total order; returns its stream position.
    pub async fn notify(self: &Arc<Self>, msg: Vec<u8>) -> Result<u64> {
        let sender = self.me.lock().unwrap().map(|m| m.0).unwrap_or_default();
        let rec = Event::Notify { sender, msg }.encode(now_secs());
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_locked(&rec))
            .await
            .map_err(|_| ClusterError::Stopped)?
    }

    /// Broadcasts a changed node record.
    pub async fn update_node(self: &Arc<Self>, node: SdNode) -> Result<u64> {
        let rec = Event::UpdateNode { node }.encode(now_secs());
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_locked(&rec))
            .await
            .map_err(|_| ClusterError::Stopped)?
    }

    /// Enters the cluster-wide exclusive section.
    pub async fn block(self: &Arc<Self>) -> Result<BlockGuard> {
        let path = self.block_path.clone();
        tokio::task::spawn_blocking(move || -> Result<BlockGuard> {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            flock(&f, libc::LOCK_EX)?;
            Ok(BlockGuard { _file: f })
        })
        .await
        .map_err(|_| ClusterError::Stopped)?
    }

    /// The current end of the stream: once a member has applied events up
    /// to here it has seen everything appended before this call.
    pub async fn stream_end(&self) -> Result<u64> {
        Ok(fs::metadata(&self.log_path)?.len())
    }

    /// Leaves cleanly: appends our LEAVE and drops the member lock.
    pub async fn leave(self: &Arc<Self>) -> Result<()> {
        let me = *self.me.lock().unwrap();
        if let Some((nid, incarnation)) = me {
            let rec = Event::Leave { nid, incarnation }.encode(now_secs());
            let d = self.clone();
            tokio::task::spawn_blocking(move || d.append_locked(&rec))
                .await
                .map_err(|_| ClusterError::Stopped)??;
        }
        self.stopped.store(true, Ordering::Relaxed);
        if let Some((_, inc)) = me {
            let _ = fs::remove_file(self.members_dir.join(format!("{inc:016x}")));
        }
        self.member_lock.lock().unwrap().take();
        Ok(())
    }

    /// Our incarnation id (unique per process start), once joined.
    pub fn incarnation(&self) -> Option<u64> {
        self.me.lock().unwrap().map(|m| m.1)
    }
}

/// An inotify watch of the log: the reader sleeps until the log changes
/// (or a timeout), so an idle node costs nothing between liveness probes.
struct LogWatch {
    fd: std::os::fd::OwnedFd,
}

impl LogWatch {
    fn new(log: &Path) -> Option<LogWatch> {
        use std::os::fd::FromRawFd;
        let path = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid inotify descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_MODIFY | libc::IN_ATTRIB,
            )
        };
        (wd >= 0).then_some(LogWatch { fd })
    }

    /// Returns once the log changed since the last call, or after
    /// `timeout`.
    fn wait(&self, timeout: Duration) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, ms) } > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a local buffer; the descriptor does not
            // block, so this drains what is queued and returns.
            while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0
            {
            }
        }
    }
}

fn track(m: &mut HashMap<u64, NodeId>, rec: &[u8]) {
    match Event::decode(rec) {
        Some((
            _,
            Event::Join {
                node, incarnation, ..
            },
        )) => {
            m.insert(incarnation, node.nid);
        }
        Some((_, Event::Leave { incarnation, .. })) => {
            m.remove(&incarnation);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone: port as u32,
            space: 1,
        }
    }

    #[tokio::test]
    async fn two_members_see_the_same_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm").to_string_lossy().into_owned();
        let a = Arc::new(LocalDriver::new(&p).unwrap());
        let b = Arc::new(LocalDriver::new(&p).unwrap());
        let mut ra = a.join(node(7000), vec![1]).await.unwrap();
        let mut rb = b.join(node(7001), vec![2]).await.unwrap();
        a.notify(b"x".to_vec()).await.unwrap();
        b.notify(b"y".to_vec()).await.unwrap();
        let mut seen_a = vec![];
        let mut seen_b = vec![];
        for _ in 0..4 {
            seen_a.push(ra.recv().await.unwrap());
            seen_b.push(rb.recv().await.unwrap());
        }
        assert_eq!(seen_a, seen_b);
        assert!(matches!(seen_a[0].event, Event::Join { .. }));
        // b leaves: a sees the LEAVE
        b.leave().await.unwrap();
        let ev = ra.recv().await.unwrap();
        assert!(matches!(ev.event, Event::Leave { nid, .. } if nid.port == 7001));
    }

    #[tokio::test]
    async fn dead_member_detected_by_lock_probe() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm").to_string_lossy().into_owned();
        let a = Arc::new(LocalDriver::new(&p).unwrap());
        let b = Arc::new(LocalDriver::new(&p).unwrap());
        let mut ra = a.join(node(7000), vec![]).await.unwrap();
        let _rb = b.join(node(7001), vec![]).await.unwrap();
        ra.recv().await.unwrap();
        ra.recv().await.unwrap();
        // Simulate death: drop the member lock without appending LEAVE.
        b.stopped.store(true, Ordering::Relaxed);
        b.member_lock.lock().unwrap().take();
        let t = std::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(2), ra.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev.event, Event::Leave { nid, .. } if nid.port == 7001));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
