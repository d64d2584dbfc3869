//! `sdload`: a verifying load generator for Sheepdog VDIs.
//!
//! ```text
//! sdload write  --addr IP:PORT[,IP:PORT...] --vdi NAME --journal FILE
//!               [--duration S] [--blocks N] [--stride BYTES] [--first BYTES]
//!               [--workers W] [--op-timeout S] [--give-up S] [--report S]
//! sdload verify --addr IP:PORT[,...] --vdi NAME --journal FILE [--retry-for S]
//! sdload watch  --addr IP:PORT[,...] --vdi NAME --journal FILE --duration S [--op-timeout S]
//! sdload check  --journal FILE --store DIR [--store DIR...] [--copies N]
//!               (DIR: a sheep's directory, or one disk of a multi-disk node)
//! ```
//!
//! **Blocks.** The load is `N` blocks of 4 KiB at VDI offsets
//! `first + b * stride` (defaults: 1024 blocks, stride 4 KiB, first 0).
//! Every block written is self-describing:
//!
//! ```text
//!   0..8     magic "SDLOAD01"
//!   8..12    vid (LE)                 12..16  block number b (LE)
//!   16..24   VDI offset (LE)          24..32  generation (LE, >= 1)
//!   32..40   wall clock of the write, ns since the epoch (LE)
//!   40..104  VDI name, zero padded
//!   104..4092 pseudo-random bytes from (vid, offset, generation)
//!   4092..4096 crc32c of bytes 0..4092 (LE)
//! ```
//!
//! **Journal.** A text file: a header line naming the layout, then one
//! line per event, each appended with a single `write(2)` so a killed
//! `sdload` leaves whole lines: `I b g` before generation `g` of block `b`
//! is first sent, `A b g` once it was acknowledged, `F b g` when it was
//! given up (never acknowledged). Generations of a block are consecutive
//! and keep increasing across runs on the same journal (one writer per
//! journal at a time).
//!
//! **Writes.** `W` workers (one connection each) own disjoint blocks
//! (`b % W`), so a block never has two writes in flight. A failed or
//! timed-out write is retried with the *same* generation (identical bytes,
//! so a late copy of an earlier attempt is harmless) on a fresh connection,
//! rotating through `--addr`, until it is acknowledged or `--give-up`
//! seconds pass. Objects the load touches that are not allocated yet are
//! allocated first by one task, so concurrent workers never race to create
//! an object. SIGTERM/SIGINT stop the load after the current writes.
//!
//! **Verification.** For every block, with `acked` the newest acknowledged
//! generation and `sent` the newest generation ever sent, the block must
//! read back as a well-formed block of generation `g` with
//! `acked <= g <= sent` (an unacknowledged in-flight write may or may not
//! have landed), or as zeros if nothing was ever acknowledged. `verify`
//! reads through a sheep; `check` reads the object files of the given
//! store directories directly (every replica, plus a copy count); `watch`
//! keeps reading random blocks through one sheep while the journal grows
//! and checks every successful read against what was acknowledged before
//! the read started (no stale reads).
//!
//! Exit status: 0 all good, 1 a verification failure, 2 usage or setup error.

use sd_client::conn::{Connection, Endpoint};
use sd_client::vdi;
use sd_proto::*;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes per block.
const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"SDLOAD01";
const HEADER_LINE: &str = "sdload-journal 1";

// ---------------------------------------------------------------- crc32c

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC_TABLE: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli), as iSCSI and ext4 use it.
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------- layout

/// Where the load's blocks live; recorded in the journal's header line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    vid: u32,
    name: String,
    first: u64,
    stride: u64,
    blocks: u32,
    /// Object size shift of the VDI.
    shift: u8,
}

impl Layout {
    fn offset(&self, b: u32) -> u64 {
        self.first + b as u64 * self.stride
    }

    fn header(&self) -> String {
        format!(
            "{HEADER_LINE} vid={:08x} first={} stride={} blocks={} shift={} name={}\n",
            self.vid, self.first, self.stride, self.blocks, self.shift, self.name
        )
    }

    fn parse(line: &str) -> Option<Layout> {
        let rest = line.strip_prefix(HEADER_LINE)?;
        let mut kv: HashMap<&str, &str> = HashMap::new();
        let (fields, name) = rest.split_once(" name=")?;
        for f in fields.split_whitespace() {
            let (k, v) = f.split_once('=')?;
            kv.insert(k, v);
        }
        Some(Layout {
            vid: u32::from_str_radix(kv.get("vid")?, 16).ok()?,
            name: name.to_string(),
            first: kv.get("first")?.parse().ok()?,
            stride: kv.get("stride")?.parse().ok()?,
            blocks: kv.get("blocks")?.parse().ok()?,
            shift: kv.get("shift")?.parse().ok()?,
        })
    }

    /// Data object indexes the blocks touch, ascending.
    fn objects(&self) -> Vec<u64> {
        let mut v: Vec<u64> = (0..self.blocks)
            .map(|b| self.offset(b) >> self.shift)
            .collect();
        v.dedup();
        v
    }
}

/// Builds generation `gen` of block `b`.
fn make_block(l: &Layout, b: u32, gen: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK];
    let off = l.offset(b);
    v[0..8].copy_from_slice(MAGIC);
    v[8..12].copy_from_slice(&l.vid.to_le_bytes());
    v[12..16].copy_from_slice(&b.to_le_bytes());
    v[16..24].copy_from_slice(&off.to_le_bytes());
    v[24..32].copy_from_slice(&gen.to_le_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    v[32..40].copy_from_slice(&now.to_le_bytes());
    let name = l.name.as_bytes();
    let n = name.len().min(64);
    v[40..40 + n].copy_from_slice(&name[..n]);
    let mut x = (l.vid as u64) ^ off.rotate_left(17) ^ gen.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in v[104..BLOCK - 4].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        c.copy_from_slice(&bytes[..c.len()]);
    }
    let crc = crc32c(&v[..BLOCK - 4]);
    v[BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
    v
}

/// What a block read back as.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    /// All zeros: never written.
    Zero,
    /// A well-formed block of this generation.
    Gen(u64),
    /// Anything else, with the reason.
    Bad(String),
}

fn parse_block(l: &Layout, b: u32, data: &[u8]) -> Content {
    if data.iter().all(|&x| x == 0) {
        return Content::Zero;
    }
    if data.len() != BLOCK || &data[0..8] != MAGIC {
        return Content::Bad("no sdload header".into());
    }
    let crc = u32::from_le_bytes(data[BLOCK - 4..].try_into().unwrap());
    if crc32c(&data[..BLOCK - 4]) != crc {
        return Content::Bad("checksum mismatch".into());
    }
    let vid = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let bn = u32::from_le_bytes(data[12..16].try_into().unwrap());
    let off = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let gen = u64::from_le_bytes(data[24..32].try_into().unwrap());
    if vid != l.vid || bn != b || off != l.offset(b) {
        return Content::Bad(format!(
            "block of vid {vid:x} block {bn} offset {off} (generation {gen}) in the wrong place"
        ));
    }
    if make_block(l, b, gen)[104..BLOCK - 4] != data[104..BLOCK - 4] {
        return Content::Bad(format!("payload of generation {gen} does not match"));
    }
    Content::Gen(gen)
}

/// When the client built the block found in `data` (UTC time of day), to
/// tell which write a stale block came from; empty if it has no header.
fn block_time(data: &[u8]) -> String {
    if data.len() < 40 || &data[0..8] != MAGIC {
        return String::new();
    }
    let ns = u64::from_le_bytes(data[32..40].try_into().unwrap());
    let (secs, ms) = (ns / 1_000_000_000, ns / 1_000_000 % 1000);
    let day = secs % 86400;
    format!(
        " (block built by the client at {:02}:{:02}:{:02}.{ms:03} UTC)",
        day / 3600,
        day / 60 % 60,
        day % 60
    )
}

/// Judges `data` read back for block `b`; None if acceptable, else why not.
fn judge_data(l: &Layout, st: &BlockState, b: u32, data: &[u8]) -> Option<String> {
    st.judge(&parse_block(l, b, data))
        .map(|why| format!("{why}{}", block_time(data)))
}

// ---------------------------------------------------------------- journal

/// Per-block knowledge from a journal.
#[derive(Clone, Copy, Default, Debug)]
struct BlockState {
    /// Newest acknowledged generation (0: none).
    acked: u64,
    /// Newest generation ever sent (0: none).
    sent: u64,
}

impl BlockState {
    /// Judges a block read back; None if it is acceptable.
    fn judge(&self, c: &Content) -> Option<String> {
        match *c {
            Content::Zero if self.acked == 0 => None,
            Content::Zero => Some(format!(
                "reads as zeros, generation {} was acknowledged",
                self.acked
            )),
            Content::Gen(g) if g >= self.acked && g <= self.sent && g > 0 => None,
            Content::Gen(g) if g < self.acked => Some(format!(
                "stale: generation {g}, generation {} was acknowledged",
                self.acked
            )),
            Content::Gen(g) => Some(format!(
                "generation {g} was never written (newest sent {})",
                self.sent
            )),
            Content::Bad(ref why) => Some(format!("corrupt: {why}")),
        }
    }
}

/// A journal being read: the layout and the per-block state, updated
/// incrementally as the file grows ([`JournalReader::refresh`]).
struct JournalReader {
    file: std::fs::File,
    pos: u64,
    partial: String,
    layout: Layout,
    blocks: Vec<BlockState>,
    lines: u64,
}

impl JournalReader {
    fn open(path: &PathBuf) -> Result<JournalReader, String> {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut s = String::new();
        file.read_to_string(&mut s)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let first = s.lines().next().unwrap_or_default();
        let layout = Layout::parse(first)
            .ok_or_else(|| format!("{}: not an sdload journal", path.display()))?;
        let mut r = JournalReader {
            file,
            pos: 0,
            partial: String::new(),
            blocks: vec![BlockState::default(); layout.blocks as usize],
            layout,
            lines: 0,
        };
        r.consume(&s);
        r.pos = s.len() as u64;
        Ok(r)
    }

    /// Reads what was appended since the last call.
    fn refresh(&mut self) {
        let mut buf = Vec::new();
        if self.file.seek(SeekFrom::Start(self.pos)).is_ok()
            && self.file.read_to_end(&mut buf).is_ok()
        {
            self.pos += buf.len() as u64;
            let s = String::from_utf8_lossy(&buf).into_owned();
            self.consume(&s);
        }
    }

    fn consume(&mut self, s: &str) {
        self.partial.push_str(s);
        let text = std::mem::take(&mut self.partial);
        let mut rest = text.as_str();
        while let Some(nl) = rest.find('\n') {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            self.line(line);
        }
        self.partial = rest.to_string();
    }

    fn line(&mut self, line: &str) {
        let mut it = line.split_whitespace();
        let (Some(k), Some(b), Some(g)) = (it.next(), it.next(), it.next()) else {
            return;
        };
        let (Ok(b), Ok(g)) = (b.parse::<usize>(), g.parse::<u64>()) else {
            return;
        };
        let Some(st) = self.blocks.get_mut(b) else {
            return;
        };
        self.lines += 1;
        match k {
            "I" => st.sent = st.sent.max(g),
            "A" => {
                st.acked = st.acked.max(g);
                st.sent = st.sent.max(g);
            }
            _ => {}
        }
    }
}

/// Appends whole lines to the journal.
struct JournalWriter(Mutex<std::fs::File>);

impl JournalWriter {
    fn record(&self, kind: char, b: u32, gen: u64) {
        let line = format!("{kind} {b} {gen}\n");
        let mut f = self.0.lock().unwrap();
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("sdload: cannot write the journal: {e}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------- options

#[derive(Clone, Debug)]
struct Opts {
    mode: String,
    addrs: Vec<SocketAddr>,
    vdi: String,
    journal: PathBuf,
    duration: Option<f64>,
    blocks: u32,
    stride: u64,
    first: u64,
    workers: u32,
    op_timeout: f64,
    give_up: f64,
    report: Option<f64>,
    retry_for: f64,
    stores: Vec<PathBuf>,
    copies: Option<usize>,
}

const USAGE: &str = "usage:
  sdload write  --addr IP:PORT[,IP:PORT...] --vdi NAME --journal FILE [--duration S] [--blocks N]
                [--stride BYTES] [--first BYTES] [--workers W] [--op-timeout S] [--give-up S] [--report S]
  sdload verify --addr IP:PORT[,...] --vdi NAME --journal FILE [--retry-for S]
  sdload watch  --addr IP:PORT[,...] --vdi NAME --journal FILE --duration S [--op-timeout S]
  sdload check  --journal FILE --store DIR [--store DIR...] [--copies N]";

fn usage(msg: &str) -> ! {
    eprintln!("sdload: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        usage("no mode given");
    };
    if mode == "-h" || mode == "--help" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    if !["write", "verify", "watch", "check"].contains(&mode.as_str()) {
        usage(&format!("unknown mode '{mode}'"));
    }
    let mut o = Opts {
        mode,
        addrs: vec![],
        vdi: String::new(),
        journal: PathBuf::new(),
        duration: None,
        blocks: 1024,
        stride: BLOCK as u64,
        first: 0,
        workers: 4,
        op_timeout: 30.0,
        give_up: 60.0,
        report: None,
        retry_for: 60.0,
        stores: vec![],
        copies: None,
    };
    let mut i = 1;
    while i < args.len() {
        let k = args[i].as_str();
        let Some(v) = args.get(i + 1).cloned() else {
            usage(&format!("option '{k}' needs a value"));
        };
        i += 2;
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> T {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("invalid value '{v}' for {k}")))
        }
        match k {
            "--addr" | "-a" => {
                o.addrs = v
                    .split(',')
                    .map(|a| {
                        a.parse()
                            .unwrap_or_else(|_| usage(&format!("invalid address '{a}' (IP:PORT)")))
                    })
                    .collect()
            }
            "--vdi" => o.vdi = v,
            "--journal" => o.journal = PathBuf::from(v),
            "--duration" => o.duration = Some(num(k, &v)),
            "--blocks" => o.blocks = num(k, &v),
            "--stride" => o.stride = num(k, &v),
            "--first" => o.first = num(k, &v),
            "--workers" => o.workers = num(k, &v),
            "--op-timeout" => o.op_timeout = num(k, &v),
            "--give-up" => o.give_up = num(k, &v),
            "--report" => o.report = Some(num(k, &v)),
            "--retry-for" => o.retry_for = num(k, &v),
            "--store" => o.stores.push(PathBuf::from(v)),
            "--copies" => o.copies = Some(num(k, &v)),
            _ => usage(&format!("unknown option '{k}'")),
        }
    }
    if o.journal.as_os_str().is_empty() {
        usage("--journal is required");
    }
    if o.mode != "check" && (o.addrs.is_empty() || o.vdi.is_empty()) {
        usage("--addr and --vdi are required");
    }
    if o.mode == "check" && o.stores.is_empty() {
        usage("--store is required");
    }
    if o.mode == "watch" && o.duration.is_none() {
        usage("watch needs --duration");
    }
    if o.blocks == 0
        || o.workers == 0
        || o.stride < BLOCK as u64
        || !o.stride.is_multiple_of(BLOCK as u64)
        || !o.first.is_multiple_of(BLOCK as u64)
    {
        usage("--blocks and --workers must be positive, --stride and --first a multiple of 4096");
    }
    o
}

// ---------------------------------------------------------------- client

/// A connection to one of the addresses, re-established on failure.
struct Client {
    addrs: Vec<SocketAddr>,
    next: usize,
    conn: Option<Connection>,
    op_timeout: Duration,
}

impl Client {
    fn new(addrs: &[SocketAddr], start: usize, op_timeout: Duration) -> Client {
        Client {
            addrs: addrs.to_vec(),
            next: start % addrs.len(),
            conn: None,
            op_timeout,
        }
    }

    async fn conn(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            let a = self.addrs[self.next];
            let ep = Endpoint::Tcp(a);
            match tokio::time::timeout(Duration::from_secs(3), Connection::connect(&ep)).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => {
                    self.fail();
                    return Err(e.to_string());
                }
                Err(_) => {
                    self.fail();
                    return Err(format!("connecting to {a} timed out"));
                }
            }
        }
        Ok(self.conn.as_mut().unwrap())
    }

    /// Drops the connection and moves on to the next address.
    fn fail(&mut self) {
        self.conn = None;
        self.next = (self.next + 1) % self.addrs.len();
    }

    /// Runs `f` on the connection with the operation timeout; a failure
    /// drops the connection.
    async fn run<T, F>(&mut self, f: F) -> Result<T, String>
    where
        F: for<'c> FnOnce(
            &'c mut Connection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'c>,
        >,
    {
        let t = self.op_timeout;
        let c = self.conn().await?;
        match tokio::time::timeout(t, f(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.fail();
                Err(e)
            }
            Err(_) => {
                self.fail();
                Err(format!("no answer within {t:?}"))
            }
        }
    }

    /// Looks the VDI up and reads its inode.
    async fn inode(&mut self, name: &str) -> Result<Inode, String> {
        let name = name.to_string();
        self.run(move |c| {
            Box::pin(async move {
                let vid = vdi::lookup_vdi(c, name.as_bytes(), None, 0)
                    .await
                    .map_err(|e| format!("looking up VDI '{name}': {e}"))?;
                vdi::read_inode(c, vid).await.map_err(|e| e.to_string())
            })
        })
        .await
    }

    async fn read_block(&mut self, inode: &Inode, off: u64) -> Result<Vec<u8>, String> {
        let inode = inode.clone();
        self.run(move |c| {
            Box::pin(async move {
                let mut buf = vec![0u8; BLOCK];
                vdi::read_range(c, &inode, off, &mut buf, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(buf)
            })
        })
        .await
    }
}

/// Evaluates `$op` (an async `Result<_, String>`; the client reconnects
/// after a failure) until it succeeds or `$secs` seconds have passed.
macro_rules! retrying {
    ($secs:expr, $what:expr, $op:expr) => {{
        let deadline = Instant::now() + Duration::from_secs_f64($secs);
        loop {
            match $op.await {
                Ok(v) => break Ok(v),
                Err(e) if Instant::now() >= deadline => break Err(format!("{}: {e}", $what)),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }};
}

// ---------------------------------------------------------------- write

#[derive(Default)]
struct Stats {
    /// Longest time from first sending a write to its acknowledgement, µs.
    max_latency_us: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    given_up: AtomicU64,
    retried_ok: AtomicU64,
}

struct Shared {
    layout: Layout,
    journal: JournalWriter,
    stats: Stats,
    stop: AtomicBool,
    opts: Opts,
    last_error: Mutex<Option<(Instant, String)>>,
}

impl Shared {
    fn error(&self, msg: String) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut le = self.last_error.lock().unwrap();
        // At most one message a second, so a long fault does not flood.
        if le
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() > Duration::from_secs(1))
        {
            eprintln!("sdload: {msg} (retrying)");
            *le = Some((Instant::now(), msg));
        }
    }
}

/// Writes generation `gen` of block `b` until acknowledged, given up, or
/// stopped. `reload` re-reads the inode before each retry (needed while
/// objects are being allocated). Returns whether it was acknowledged.
async fn write_one(
    sh: &Shared,
    cl: &mut Client,
    inode: &mut Inode,
    b: u32,
    gen: u64,
    reload: bool,
) -> bool {
    let l = &sh.layout;
    let data = make_block(l, b, gen);
    let off = l.offset(b);
    sh.journal.record('I', b, gen);
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs_f64(sh.opts.give_up);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if reload && attempt > 1 {
            match cl.inode(&l.name).await {
                Ok(i) if i.header.vdi_id == l.vid => *inode = i,
                Ok(_) => {
                    eprintln!("sdload: VDI '{}' is no longer vid {:x}", l.name, l.vid);
                    std::process::exit(2);
                }
                Err(e) => {
                    sh.error(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if Instant::now() > deadline || sh.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
            }
        }
        let mut ino = inode.clone();
        let d = data.clone();
        let r = cl
            .run(move |c| {
                Box::pin(async move {
                    vdi::write_range(c, &mut ino, off, &d, 0)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(ino)
                })
            })
            .await;
        match r {
            Ok(ino) => {
                *inode = ino;
                sh.journal.record('A', b, gen);
                sh.stats.acked.fetch_add(1, Ordering::Relaxed);
                sh.stats
                    .max_latency_us
                    .fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                if attempt > 1 {
                    sh.stats.retried_ok.fetch_add(1, Ordering::Relaxed);
                }
                return true;
            }
            Err(e) => sh.error(format!("write of block {b} generation {gen}: {e}")),
        }
        if Instant::now() > deadline || sh.stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt.min(5) as u64)).await;
    }
    sh.journal.record('F', b, gen);
    sh.stats.given_up.fetch_add(1, Ordering::Relaxed);
    false
}

async fn worker(
    sh: Arc<Shared>,
    w: u32,
    mut inode: Inode,
    mut next: HashMap<u32, u64>,
    end: Option<Instant>,
) {
    use rand::{Rng, SeedableRng};
    let mine: Vec<u32> = (0..sh.layout.blocks)
        .filter(|b| b % sh.opts.workers == w)
        .collect();
    if mine.is_empty() {
        return;
    }
    let mut cl = Client::new(
        &sh.opts.addrs,
        w as usize,
        Duration::from_secs_f64(sh.opts.op_timeout),
    );
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut pass_pos = 0usize;
    loop {
        if sh.stop.load(Ordering::Relaxed) || end.is_some_and(|e| Instant::now() >= e) {
            return;
        }
        let b = if end.is_some() {
            mine[rng.gen_range(0..mine.len())]
        } else {
            // Without --duration: one pass over the blocks.
            if pass_pos == mine.len() {
                return;
            }
            pass_pos += 1;
            mine[pass_pos - 1]
        };
        let g = next.entry(b).or_insert(1);
        let gen = *g;
        *g += 1;
        write_one(&sh, &mut cl, &mut inode, b, gen, false).await;
    }
}

async fn run_write(o: Opts) -> i32 {
    let t0 = Instant::now();
    let mut cl = Client::new(&o.addrs, 0, Duration::from_secs_f64(o.op_timeout));
    let inode = match retrying!(o.retry_for, "reading the VDI", cl.inode(&o.vdi)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("sdload: {e}");
            return 2;
        }
    };
    let h = &inode.header;
    let layout = Layout {
        vid: h.vdi_id,
        name: o.vdi.clone(),
        first: o.first,
        stride: o.stride,
        blocks: o.blocks,
        shift: h.block_size_shift,
    };
    if layout.offset(o.blocks - 1) + BLOCK as u64 > h.vdi_size {
        eprintln!(
            "sdload: {} blocks of stride {} from {} do not fit in VDI '{}' of {} bytes",
            o.blocks, o.stride, o.first, o.vdi, h.vdi_size
        );
        return 2;
    }
    // Continue an existing journal (same layout), or start one.
    let mut next: HashMap<u32, u64> = HashMap::new();
    if o.journal.exists() && std::fs::metadata(&o.journal).map(|m| m.len()).unwrap_or(0) > 0 {
        match JournalReader::open(&o.journal) {
            Ok(r) if r.layout == layout => {
                for (b, st) in r.blocks.iter().enumerate() {
                    if st.sent > 0 {
                        next.insert(b as u32, st.sent + 1);
                    }
                }
            }
            Ok(r) => {
                eprintln!(
                    "sdload: journal {} describes another load ({:?}); use a new journal",
                    o.journal.display(),
                    r.layout
                );
                return 2;
            }
            Err(e) => {
                eprintln!("sdload: {e}");
                return 2;
            }
        }
    } else if let Err(e) = std::fs::write(&o.journal, layout.header()) {
        eprintln!("sdload: {}: {e}", o.journal.display());
        return 2;
    }
    let file = match std::fs::OpenOptions::new().append(true).open(&o.journal) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sdload: {}: {e}", o.journal.display());
            return 2;
        }
    };
    let sh = Arc::new(Shared {
        layout: layout.clone(),
        journal: JournalWriter(Mutex::new(file)),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        opts: o.clone(),
        last_error: Mutex::new(None),
    });
    {
        let sh = sh.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).unwrap();
            let mut int = signal(SignalKind::interrupt()).unwrap();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            sh.stop.store(true, Ordering::SeqCst);
        });
    }
    if let Some(every) = o.report {
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let a = sh.stats.acked.load(Ordering::Relaxed);
                println!(
                    "sdload: t={:.1} acked={a} rate={:.2}MiB/s errors={}",
                    t0.elapsed().as_secs_f64(),
                    (a - last) as f64 * BLOCK as f64 / (1 << 20) as f64 / every,
                    sh.stats.errors.load(Ordering::Relaxed)
                );
                last = a;
            }
        });
    }
    // Allocate the objects the load touches, one at a time.
    let mut inode = inode;
    let mut cl0 = Client::new(&o.addrs, 0, Duration::from_secs_f64(o.op_timeout));
    for idx in layout.objects() {
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        if vdi::entry(&inode, idx) == layout.vid {
            continue;
        }
        let b = (0..layout.blocks)
            .find(|&b| layout.offset(b) >> layout.shift == idx)
            .unwrap();
        let g = next.entry(b).or_insert(1);
        let gen = *g;
        *g += 1;
        if !write_one(&sh, &mut cl0, &mut inode, b, gen, true).await {
            eprintln!(
                "sdload: could not allocate object {idx} of '{}'",
                layout.name
            );
        }
    }
    let start = Instant::now();
    let end = o.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut tasks = Vec::new();
    for w in 0..o.workers {
        let mine: HashMap<u32, u64> = next
            .iter()
            .filter(|(b, _)| *b % o.workers == w)
            .map(|(b, g)| (*b, *g))
            .collect();
        tasks.push(tokio::spawn(worker(
            sh.clone(),
            w,
            inode.clone(),
            mine,
            end,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = &sh.stats;
    let acked = s.acked.load(Ordering::Relaxed);
    println!(
        "sdload write: vdi={} vid={:x} blocks={} acked={acked} unacked={} retried_ok={} errors={} max_latency={:.2}s elapsed={secs:.1}s rate={:.2}MiB/s",
        layout.name,
        layout.vid,
        layout.blocks,
        s.given_up.load(Ordering::Relaxed),
        s.retried_ok.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
        s.max_latency_us.load(Ordering::Relaxed) as f64 / 1e6,
        acked as f64 * BLOCK as f64 / (1 << 20) as f64 / secs.max(1e-9),
    );
    0
}

// ---------------------------------------------------------------- verify

/// Collects verification problems and prints the first ones.
#[derive(Default)]
struct Report {
    problems: u64,
    shown: u32,
}

impl Report {
    fn problem(&mut self, msg: String) {
        self.problems += 1;
        if self.shown < 30 {
            self.shown += 1;
            println!("FAIL {msg}");
        }
    }
}

async fn open_vdi(o: &Opts, j: &JournalReader) -> Result<(Client, Inode), String> {
    let mut cl = Client::new(&o.addrs, 0, Duration::from_secs_f64(o.op_timeout.min(10.0)));
    let inode = retrying!(o.retry_for, "reading the VDI", cl.inode(&o.vdi))?;
    if inode.header.vdi_id != j.layout.vid {
        return Err(format!(
            "VDI '{}' is vid {:x}, the journal was written to vid {:x}",
            o.vdi, inode.header.vdi_id, j.layout.vid
        ));
    }
    Ok((cl, inode))
}

async fn run_verify(o: Opts) -> i32 {
    let j = match JournalReader::open(&o.journal) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("sdload: {e}");
            return 2;
        }
    };
    let (mut cl, inode) = match open_vdi(&o, &j).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sdload: {e}");
            return 2;
        }
    };
    let l = j.layout.clone();
    let mut rep = Report::default();
    let (mut zero, mut acked_ok, mut newer) = (0u64, 0u64, 0u64);
    for b in 0..l.blocks {
        let st = j.blocks[b as usize];
        let data = match retrying!(
            o.retry_for,
            format!("reading block {b}"),
            cl.read_block(&inode, l.offset(b))
        ) {
            Ok(d) => d,
            Err(e) => {
                rep.problem(format!("block {b} (offset {}): {e}", l.offset(b)));
                continue;
            }
        };
        let c = parse_block(&l, b, &data);
        match judge_data(&l, &st, b, &data) {
            Some(why) => rep.problem(format!("block {b} (offset {}): {why}", l.offset(b))),
            None => match c {
                Content::Zero => zero += 1,
                Content::Gen(g) if g == st.acked => acked_ok += 1,
                _ => newer += 1,
            },
        }
    }
    println!(
        "sdload verify: vdi={} blocks={} newest_acked={acked_ok} unacked_landed={newer} never_written={zero} problems={}",
        l.name, l.blocks, rep.problems
    );
    i32::from(rep.problems > 0)
}

/// What one `watch` reader saw.
#[derive(Default)]
struct Watched {
    ok: u64,
    failed: u64,
    last_ok: Option<f64>,
    first_fail: Option<f64>,
    problems: Vec<String>,
    errors: HashMap<String, u64>,
}

/// One `watch` reader: its own connection and journal view, random blocks
/// until `end`.
async fn watch_task(o: Opts, k: usize, t0: Instant, end: Instant) -> Watched {
    use rand::{Rng, SeedableRng};
    let mut w = Watched::default();
    let mut j = match JournalReader::open(&o.journal) {
        Ok(j) => j,
        Err(e) => {
            w.problems.push(e);
            return w;
        }
    };
    let l = j.layout.clone();
    let mut cl = Client::new(&o.addrs, k, Duration::from_secs_f64(o.op_timeout));
    let mut inode: Option<Inode> = None;
    let mut rng = rand::rngs::StdRng::from_entropy();
    while Instant::now() < end {
        let ino = match &inode {
            Some(i) => i.clone(),
            None => match cl.inode(&o.vdi).await {
                Ok(i) if i.header.vdi_id == l.vid => {
                    inode = Some(i.clone());
                    i
                }
                Ok(_) => {
                    w.problems
                        .push(format!("VDI '{}' is no longer vid {:x}", o.vdi, l.vid));
                    return w;
                }
                Err(e) => {
                    w.failed += 1;
                    *w.errors.entry(e).or_default() += 1;
                    w.first_fail.get_or_insert(t0.elapsed().as_secs_f64());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let b = rng.gen_range(0..l.blocks);
        j.refresh();
        let before = j.blocks[b as usize];
        let started = t0.elapsed().as_secs_f64();
        match cl.read_block(&ino, l.offset(b)).await {
            Ok(data) => {
                j.refresh();
                let st = BlockState {
                    acked: before.acked,
                    sent: j.blocks[b as usize].sent,
                };
                w.ok += 1;
                w.last_ok = Some(t0.elapsed().as_secs_f64());
                if let Some(why) = judge_data(&l, &st, b, &data) {
                    w.problems.push(format!(
                        "read of block {b} started at t={started:.2}s: {why}"
                    ));
                }
            }
            Err(e) => {
                // The inode is kept: the blocks' objects are allocated, and
                // reads must keep trying the sheep's own copies.
                w.failed += 1;
                *w.errors.entry(e).or_default() += 1;
                w.first_fail.get_or_insert(started);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    w
}

/// `watch`: four readers through `--addr` for `--duration` seconds.
async fn run_watch(o: Opts) -> i32 {
    if let Err(e) = JournalReader::open(&o.journal) {
        eprintln!("sdload: {e}");
        return 2;
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(o.duration.unwrap());
    let tasks: Vec<_> = (0..4)
        .map(|k| tokio::spawn(watch_task(o.clone(), k, t0, end)))
        .collect();
    let mut all = Watched::default();
    for t in tasks {
        let Ok(w) = t.await else { continue };
        all.ok += w.ok;
        all.failed += w.failed;
        all.last_ok = match (all.last_ok, w.last_ok) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        all.first_fail = match (all.first_fail, w.first_fail) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.problems.extend(w.problems);
        for (e, n) in w.errors {
            *all.errors.entry(e).or_default() += n;
        }
    }
    let mut rep = Report::default();
    for p in all.problems {
        rep.problem(p);
    }
    let f = |v: Option<f64>| v.map_or("-".to_string(), |t| format!("{t:.2}"));
    println!(
        "sdload watch: reads_ok={} reads_failed={} last_ok_at={} first_fail_at={} problems={}",
        all.ok,
        all.failed,
        f(all.last_ok),
        f(all.first_fail),
        rep.problems
    );
    let mut errors: Vec<_> = all.errors.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    for (e, n) in errors.iter().take(5) {
        eprintln!("sdload watch: {n} reads failed: {e}");
    }
    i32::from(rep.problems > 0)
}

fn run_check(o: Opts) -> i32 {
    let j = match JournalReader::open(&o.journal) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("sdload: {e}");
            return 2;
        }
    };
    let l = &j.layout;
    let mut rep = Report::default();
    let mut replicas = 0u64;
    for idx in l.objects() {
        let oid = vid_to_data_oid(l.vid, idx);
        let mut found = 0usize;
        for dir in &o.stores {
            // A store (objects in its obj/) or one disk's directory.
            let objects = dir.join("obj");
            let objects = if objects.is_dir() {
                objects
            } else {
                dir.clone()
            };
            let path = objects.join(format!("{oid:016x}"));
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            found += 1;
            replicas += 1;
            for b in (0..l.blocks).filter(|&b| l.offset(b) >> l.shift == idx) {
                let at = l.offset(b) - (idx << l.shift);
                let mut data = vec![0u8; BLOCK];
                let n = f
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| f.read(&mut data))
                    .unwrap_or(0);
                if n < BLOCK {
                    // A short object file reads as zeros past its end.
                    data[n..].fill(0);
                }
                if let Some(why) = judge_data(l, &j.blocks[b as usize], b, &data) {
                    rep.problem(format!(
                        "{}: block {b} (offset {at}): {why}",
                        path.display()
                    ));
                }
            }
        }
        if let Some(want) = o.copies {
            if found != want {
                rep.problem(format!("object {oid:016x}: {found} copies, want {want}"));
            }
        }
    }
    println!(
        "sdload check: objects={} replicas={replicas} problems={}",
        l.objects().len(),
        rep.problems
    );
    i32::from(rep.problems > 0)
}

fn main() {
    let o = parse_opts();
    if o.mode == "check" {
        std::process::exit(run_check(o));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match o.mode.as_str() {
            "write" => run_write(o).await,
            "verify" => run_verify(o).await,
            _ => run_watch(o).await,
        }
    });
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            vid: 0xabc,
            name: "v".into(),
            first: 8192,
            stride: 1 << 20,
            blocks: 10,
            shift: 22,
        }
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn blocks_round_trip_and_are_judged() {
        let l = layout();
        let blk = make_block(&l, 3, 7);
        assert_eq!(parse_block(&l, 3, &blk), Content::Gen(7));
        assert!(matches!(parse_block(&l, 4, &blk), Content::Bad(_)));
        let mut bad = blk.clone();
        bad[2000] ^= 1;
        assert!(matches!(parse_block(&l, 3, &bad), Content::Bad(_)));
        assert_eq!(parse_block(&l, 3, &[0u8; BLOCK]), Content::Zero);
        let st = BlockState { acked: 7, sent: 9 };
        assert!(st.judge(&Content::Gen(7)).is_none());
        assert!(st.judge(&Content::Gen(9)).is_none());
        assert!(st.judge(&Content::Gen(6)).unwrap().starts_with("stale"));
        assert!(st.judge(&Content::Gen(10)).is_some());
        assert!(st.judge(&Content::Zero).is_some());
        assert!(BlockState::default().judge(&Content::Zero).is_none());
    }

    #[test]
    fn layout_header_round_trips() {
        let l = layout();
        assert_eq!(Layout::parse(l.header().trim_end()), Some(l.clone()));
        assert_eq!(l.objects(), vec![0, 1, 2]);
    }
}
