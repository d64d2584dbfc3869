//! The server driven byte by byte by a raw client over an in-memory pipe:
//! every option and command path, the errors the spec asks for, the
//! bounds, and the concurrency rules (completion-order replies, bounded
//! in-flight requests, DISC waiting for in-flight writes).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{info_data, meta_data, pipe, Raw, Reply};
use sd_nbd::mem::MemExport;
use sd_nbd::proto::{cflag, cmd, info, opt, rep, reply, state, tflag};
use sd_nbd::{
    BlockSize, BoxFuture, Config, Errno, Export, Exports, Extent, IoResult, NbdError, ZeroFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const SIZE: u64 = 1 << 20;
/// Reads and writes here wait for [`TestExport::gate`] permits.
const GATED: u64 = 0x8000;
/// Reads here panic inside the backend.
const PANICS: u64 = 0x9000;
/// Reads here fail with EIO.
const FAILS: u64 = 0xa000;

/// A [`MemExport`] with fault injection and a gate, to observe the
/// server's concurrency from the backend's side.
struct TestExport {
    inner: MemExport,
    gate: Semaphore,
    active: AtomicUsize,
    peak: AtomicUsize,
}

impl TestExport {
    fn new() -> Self {
        let inner = MemExport::new(SIZE);
        inner.fill(0, &[0x5a; 4096]);
        TestExport {
            inner,
            gate: Semaphore::new(0),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    async fn enter(&self, offset: u64) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if offset == GATED {
            self.gate.acquire().await.unwrap().forget();
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Export for TestExport {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, IoResult<()>> {
        Box::pin(async move {
            self.enter(offset).await;
            match offset {
                PANICS => panic!("injected backend bug"),
                FAILS => Err(NbdError::io("disk on fire")),
                _ => self.inner.read(offset, buf).await,
            }
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> BoxFuture<'a, IoResult<()>> {
        Box::pin(async move {
            self.enter(offset).await;
            self.inner.write(offset, data, fua).await
        })
    }
    fn flush(&self) -> BoxFuture<'_, IoResult<()>> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<()>> {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BoxFuture<'_, IoResult<()>> {
        if flags.fast_only {
            return Box::pin(async {
                Err(NbdError::not_supported("zeroing here is a plain write"))
            });
        }
        self.inner.write_zeroes(offset, len, flags)
    }
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<Vec<Extent>>> {
        self.inner.extents(offset, len)
    }
}

/// "t": [`TestExport`]; "mem": sparse writable; "ro": read-only with a
/// description; "aligned": 512-byte minimum block.
struct Table {
    t: Arc<TestExport>,
    others: BTreeMap<&'static str, Arc<MemExport>>,
}

impl Table {
    fn new() -> Arc<Self> {
        let ro = MemExport::new(SIZE)
            .read_only(true)
            .with_description("golden image");
        ro.fill(0, &[7u8; 4096]);
        let aligned = MemExport::new(SIZE).with_block_size(BlockSize {
            min: 512,
            preferred: 4096,
            max: 1 << 20,
        });
        let mut others = BTreeMap::new();
        others.insert("mem", Arc::new(MemExport::new(SIZE)));
        others.insert("ro", Arc::new(ro));
        others.insert("aligned", Arc::new(aligned));
        Arc::new(Table {
            t: Arc::new(TestExport::new()),
            others,
        })
    }
}

impl Exports for Table {
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, IoResult<Option<Arc<dyn Export>>>> {
        let e: Option<Arc<dyn Export>> = match name {
            "t" => Some(self.t.clone()),
            "broken" => return Box::pin(async { Err(NbdError::io("cluster is down")) }),
            _ => self.others.get(name).map(|e| e.clone() as Arc<dyn Export>),
        };
        Box::pin(async move { Ok(e) })
    }
    fn list(&self) -> BoxFuture<'_, IoResult<Vec<String>>> {
        let mut names: Vec<String> = self.others.keys().map(|s| s.to_string()).collect();
        names.push("t".into());
        Box::pin(async move { Ok(names) })
    }
}

type Server = tokio::task::JoinHandle<Result<(), sd_nbd::Error>>;

async fn connect(table: &Arc<Table>, config: Config) -> (Raw<DuplexStream>, Server) {
    let (c, h) = pipe(table.clone(), config);
    (Raw::greet(c, 3).await, h)
}

async fn finished(h: Server) -> Result<(), sd_nbd::Error> {
    timeout(Duration::from_secs(10), h)
        .await
        .expect("server finished")
        .expect("no panic")
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

// ---------------------------------------------------------------- handshake

#[tokio::test]
async fn unknown_client_flags_close_the_connection() {
    let (c, h) = pipe(Table::new(), Config::default());
    let mut c = Raw::greet(c, 0x4).await;
    let err = finished(h).await.unwrap_err();
    assert!(err.to_string().contains("client flags"), "{err}");
    assert_eq!(c.s.read(&mut [0u8; 1]).await.unwrap(), 0, "EOF");
}

#[tokio::test]
async fn unknown_options_get_unsup_and_negotiation_continues() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    let r = c.opt(99, b"whatever data").await;
    assert_eq!(r[0].kind, rep::ERR_UNSUP);
    assert!(String::from_utf8_lossy(&r[0].data).contains("99"));
    assert_eq!(c.opt(opt::STARTTLS, &[]).await[0].kind, rep::ERR_UNSUP);
    assert_eq!(
        c.opt(11 /* EXTENDED_HEADERS */, &[]).await[0].kind,
        rep::ERR_UNSUP
    );
    let all = tflag::HAS_FLAGS
        | tflag::SEND_FLUSH
        | tflag::SEND_FUA
        | tflag::SEND_TRIM
        | tflag::SEND_WRITE_ZEROES
        | tflag::SEND_FAST_ZERO
        | tflag::CAN_MULTI_CONN;
    assert_eq!(c.go("mem").await, Ok((SIZE, all)));
}

#[tokio::test]
async fn oversized_options_are_drained_or_hang_up() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    let big = vec![0u8; 1 << 20];
    // Unknown option: the length is how a server skips it.
    assert_eq!(c.opt(1234, &big).await[0].kind, rep::ERR_UNSUP);
    // Known option beyond the buffering bound.
    assert_eq!(c.opt(opt::GO, &big).await[0].kind, rep::ERR_TOO_BIG);
    assert_eq!(c.opt(opt::LIST, &[]).await.last().unwrap().kind, rep::ACK);
    // Beyond the drain cap: hard disconnect, nothing allocated.
    let hdr = sd_nbd::proto::OptionHeader {
        option: opt::SET_META_CONTEXT,
        length: u32::MAX,
    };
    c.s.write_all(&hdr.encode()).await.unwrap();
    let err = finished(h).await.unwrap_err();
    assert!(matches!(err, sd_nbd::Error::Protocol(_)), "{err}");
}

#[tokio::test]
async fn list_info_and_errors() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    assert_eq!(c.opt(opt::LIST, b"x").await[0].kind, rep::ERR_INVALID);
    let r = c.opt(opt::LIST, &[]).await;
    let names: Vec<String> = r
        .iter()
        .filter(|r| r.kind == rep::SERVER)
        .map(|r| {
            assert_eq!(be32(&r.data) as usize, r.data.len() - 4);
            String::from_utf8(r.data[4..].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(names, ["aligned", "mem", "ro", "t"]);

    let r = c
        .opt(
            opt::INFO,
            &info_data("ro", &[info::NAME, info::DESCRIPTION, info::BLOCK_SIZE]),
        )
        .await;
    assert_eq!(r.last().unwrap().kind, rep::ACK);
    let by_type = |t: u16| {
        r.iter()
            .find(|r| r.kind == rep::INFO && r.data[..2] == t.to_be_bytes())
            .unwrap()
    };
    let ex = &by_type(info::EXPORT).data;
    assert_eq!(ex.len(), 12);
    assert_eq!(u64::from_be_bytes(ex[2..10].try_into().unwrap()), SIZE);
    let flags = u16::from_be_bytes([ex[10], ex[11]]);
    assert_ne!(flags & tflag::READ_ONLY, 0);
    assert_eq!(
        flags & (tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO),
        0
    );
    assert_eq!(&by_type(info::NAME).data[2..], b"ro");
    assert_eq!(&by_type(info::DESCRIPTION).data[2..], b"golden image");
    let bs = &by_type(info::BLOCK_SIZE).data;
    assert_eq!(
        (be32(&bs[2..]), be32(&bs[6..]), be32(&bs[10..])),
        (1, 4096, 32 << 20)
    );

    let r = c
        .opt(opt::INFO, &info_data("aligned", &[info::BLOCK_SIZE]))
        .await;
    let bs = &r
        .iter()
        .find(|r| r.data[..2] == info::BLOCK_SIZE.to_be_bytes())
        .unwrap()
        .data;
    assert_eq!(
        (be32(&bs[2..]), be32(&bs[6..]), be32(&bs[10..])),
        (512, 4096, 1 << 20)
    );

    let r = c.opt(opt::INFO, &info_data("nope", &[])).await;
    assert_eq!((r.len(), r[0].kind), (1, rep::ERR_UNKNOWN));
    let r = c.opt(opt::GO, &info_data("broken", &[])).await;
    assert_eq!(r[0].kind, rep::ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].data).contains("cluster is down"));
    let mut bad = info_data("mem", &[1]);
    bad.push(0);
    assert_eq!(c.opt(opt::GO, &bad).await[0].kind, rep::ERR_INVALID);
    assert_eq!(
        c.opt(opt::STRUCTURED_REPLY, b"x").await[0].kind,
        rep::ERR_INVALID
    );
    // After all that, the same connection still gets its export.
    assert_eq!(c.go("mem").await.unwrap().0, SIZE);
}

#[tokio::test]
async fn export_name_old_style_with_and_without_zeroes() {
    for (client_flags, padding) in [(1u32, 124usize), (3, 0)] {
        let table = Table::new();
        let (c, h) = pipe(table.clone(), Config::default());
        let mut c = Raw::greet(c, client_flags).await;
        c.send_opt(opt::EXPORT_NAME, b"ro").await;
        assert_eq!(c.s.read_u64().await.unwrap(), SIZE);
        let flags = c.s.read_u16().await.unwrap();
        assert_ne!(flags & tflag::READ_ONLY, 0);
        let mut zeroes = vec![1u8; padding];
        c.s.read_exact(&mut zeroes).await.unwrap();
        assert!(zeroes.iter().all(|&b| b == 0));
        // Transmission starts right away: the next bytes are a reply.
        c.request(cmd::READ, 0, 5, 0, 16, &[]).await;
        let (r, data) = c.reply(16).await;
        assert_eq!((r.cookie(), r.error()), (5, 0));
        assert_eq!(data, [7u8; 16]);
        c.request(cmd::DISC, 0, 6, 0, 0, &[]).await;
        finished(h).await.unwrap();
    }
}

#[tokio::test]
async fn export_name_for_unknown_export_hangs_up() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    c.send_opt(opt::EXPORT_NAME, b"nope").await;
    assert!(matches!(finished(h).await, Err(sd_nbd::Error::Protocol(_))));
    assert_eq!(c.s.read(&mut [0u8; 1]).await.unwrap(), 0);
}

#[tokio::test]
async fn abort_is_acknowledged() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    assert_eq!(c.opt(opt::ABORT, b"ignored").await[0].kind, rep::ACK);
    finished(h).await.unwrap();
}

#[tokio::test]
async fn meta_context_negotiation() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    let r = c
        .opt(
            opt::SET_META_CONTEXT,
            &meta_data("mem", &["base:allocation"]),
        )
        .await;
    assert_eq!(
        r[0].kind,
        rep::ERR_INVALID,
        "needs structured replies first"
    );
    assert_eq!(c.opt(opt::STRUCTURED_REPLY, &[]).await[0].kind, rep::ACK);

    for queries in [
        &[][..],
        &["base:"][..],
        &["x-foo:bar", "base:allocation"][..],
    ] {
        let r = c
            .opt(opt::LIST_META_CONTEXT, &meta_data("mem", queries))
            .await;
        assert_eq!(r.len(), 2, "{queries:?}: {r:?}");
        assert_eq!(r[0].kind, rep::META_CONTEXT);
        assert_eq!(be32(&r[0].data), 0);
        assert_eq!(&r[0].data[4..], b"base:allocation");
    }
    let r = c
        .opt(
            opt::LIST_META_CONTEXT,
            &meta_data("mem", &["qemu:dirty-bitmap:x"]),
        )
        .await;
    assert_eq!((r.len(), r[0].kind), (1, rep::ACK));
    let r = c
        .opt(opt::SET_META_CONTEXT, &meta_data("mem", &["base:"]))
        .await;
    assert_eq!(
        (r.len(), r[0].kind),
        (1, rep::ACK),
        "base: alone selects nothing"
    );
    let mut bad = meta_data("mem", &["base:allocation"]);
    bad.truncate(bad.len() - 1);
    assert_eq!(
        c.opt(opt::SET_META_CONTEXT, &bad).await[0].kind,
        rep::ERR_INVALID
    );

    let r = c
        .opt(
            opt::SET_META_CONTEXT,
            &meta_data("mem", &["qemu:x", "base:allocation", "base:allocation"]),
        )
        .await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_ne!(be32(&r[0].data), 0);
    // Selected for "mem" but entering "t": BLOCK_STATUS must be refused.
    c.go("t").await.unwrap();
    c.request(cmd::BLOCK_STATUS, 0, 1, 0, 4096, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Inval.code());
}

// ------------------------------------------------------------- transmission

#[tokio::test]
async fn simple_replies_data_path_and_errors() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    let (_, flags) = c.go("mem").await.unwrap();
    assert_eq!(
        flags & tflag::SEND_DF,
        0,
        "no DF without structured replies"
    );
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    c.request(cmd::WRITE, cflag::FUA, 1, 4096, 8192, &data)
        .await;
    assert_eq!(c.reply(0).await.0.error(), 0);
    c.request(cmd::READ, 0, 2, 4096, 8192, &[]).await;
    let (r, got) = c.reply(8192).await;
    assert_eq!((r.cookie(), r.error()), (2, 0));
    assert_eq!(got, data);
    c.request(cmd::FLUSH, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), 0);
    c.request(cmd::TRIM, cflag::FUA, 4, 4096, 4096, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), 0);
    c.request(cmd::WRITE_ZEROES, cflag::NO_HOLE, 5, 8192, 100, &[])
        .await;
    assert_eq!(c.reply(0).await.0.error(), 0);
    let mem = table.others["mem"].contents();
    assert!(mem[4096..8292].iter().all(|&b| b == 0));
    assert_eq!(mem[8292..12288], data[4196..]);

    let cases: &[(u16, u16, u64, u32, Errno)] = &[
        (cmd::READ, 0, SIZE - 10, 11, Errno::Inval),
        (cmd::READ, 0, u64::MAX - 1, 4, Errno::Inval),
        (cmd::TRIM, 0, SIZE, 1, Errno::Inval),
        (cmd::WRITE_ZEROES, 0, SIZE - 1, 2, Errno::NoSpc),
        (cmd::READ, 0, 0, (32 << 20) + 1, Errno::Inval),
        (cmd::READ, cflag::DF, 0, 1, Errno::Inval),
        (cmd::BLOCK_STATUS, 0, 0, 4096, Errno::Inval),
        (cmd::FLUSH, 0, 1, 0, Errno::Inval),
        (42, 0, 0, 0, Errno::Inval),
        (cmd::WRITE_ZEROES, cflag::REQ_ONE, 0, 512, Errno::Inval),
    ];
    for (i, &(kind, flags, offset, len, want)) in cases.iter().enumerate() {
        c.request(kind, flags, 100 + i as u64, offset, len, &[])
            .await;
        let (r, _) = c.reply(0).await;
        assert_eq!(
            (r.cookie(), r.error()),
            (100 + i as u64, want.code()),
            "case {i}"
        );
    }
    // Failed writes consume their payload: the stream stays in sync.
    c.request(cmd::WRITE, 0, 200, SIZE - 1, 2, &[9, 9]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::NoSpc.code());
    let huge = vec![0xeeu8; (32 << 20) + 4096];
    c.request(cmd::WRITE, 0, 201, 0, huge.len() as u32, &huge)
        .await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Inval.code());
    c.request(cmd::READ, 0, 202, 0, 0, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), 0, "zero-length read");
    c.request(cmd::WRITE, 0, 203, 0, 0, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), 0, "zero-length write");
    c.request(cmd::READ, 0, 204, 12288, 4, &[]).await;
    assert_eq!(c.reply(4).await.1, [0, 0, 0, 0]);
    assert!(
        table.others["mem"].contents()[..4096]
            .iter()
            .all(|&b| b == 0),
        "nothing written by rejected writes"
    );
    c.request(cmd::DISC, 0, 205, 0, 0, &[]).await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn alignment_is_enforced_for_block_sized_exports() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    c.go("aligned").await.unwrap();
    c.request(cmd::WRITE, 0, 1, 100, 512, &[1u8; 512]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Inval.code());
    c.request(cmd::WRITE, 0, 2, 512, 1024, &[1u8; 1024]).await;
    assert_eq!(c.reply(0).await.0.error(), 0);
    c.request(cmd::READ, 0, 3, 0, (1 << 20) + 512, &[]).await;
    assert_eq!(
        c.reply(0).await.0.error(),
        Errno::Inval.code(),
        "beyond this export's max payload"
    );
}

#[tokio::test]
async fn read_only_export_refuses_writes() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    let (_, flags) = c.go("ro").await.unwrap();
    assert_ne!(flags & tflag::READ_ONLY, 0);
    c.request(cmd::WRITE, 0, 1, 0, 4096, &[1u8; 4096]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Perm.code());
    c.request(cmd::TRIM, 0, 2, 0, 4096, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Perm.code());
    c.request(cmd::WRITE_ZEROES, 0, 3, 0, 4096, &[]).await;
    assert_eq!(c.reply(0).await.0.error(), Errno::Perm.code());
    c.request(cmd::READ, 0, 4, 0, 4096, &[]).await;
    let (r, data) = c.reply(4096).await;
    assert_eq!(r.error(), 0);
    assert_eq!(data, [7u8; 4096]);
    assert_eq!(table.others["ro"].contents()[..4096], [7u8; 4096]);
}

#[tokio::test]
async fn structured_replies() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    let (_, flags) = c.go_structured("t").await;
    assert_ne!(flags & tflag::SEND_DF, 0);

    c.request(cmd::READ, cflag::DF, 1, 0, 8192, &[]).await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!("simple reply to a structured READ")
    };
    assert_eq!(
        (ch.cookie, ch.kind, ch.flags),
        (1, reply::TYPE_OFFSET_DATA, reply::FLAG_DONE)
    );
    assert_eq!(u64::from_be_bytes(ch.data[..8].try_into().unwrap()), 0);
    assert_eq!(ch.data[8..8 + 4096], [0x5a; 4096]);
    assert_eq!(ch.data[8 + 4096..], [0u8; 4096]);

    c.request(cmd::READ, 0, 2, 65536, 4096, &[]).await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!()
    };
    assert_eq!(
        (ch.kind, ch.flags),
        (reply::TYPE_OFFSET_HOLE, reply::FLAG_DONE)
    );
    assert_eq!(ch.data.len(), 12);
    assert_eq!(u64::from_be_bytes(ch.data[..8].try_into().unwrap()), 65536);
    assert_eq!(be32(&ch.data[8..]), 4096);

    c.request(cmd::READ, 0, 3, FAILS, 512, &[]).await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!()
    };
    assert_eq!((ch.kind, ch.flags), (reply::TYPE_ERROR, reply::FLAG_DONE));
    assert_eq!(be32(&ch.data), Errno::Io.code());
    let msg_len = u16::from_be_bytes([ch.data[4], ch.data[5]]) as usize;
    assert_eq!(&ch.data[6..6 + msg_len], b"disk on fire");

    c.request(cmd::READ, 0, 4, 0, 0, &[]).await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!()
    };
    assert_eq!(
        (ch.kind, ch.flags, ch.data.len()),
        (reply::TYPE_NONE, reply::FLAG_DONE, 0)
    );

    c.request(cmd::BLOCK_STATUS, 0, 5, 0, SIZE as u32, &[])
        .await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!()
    };
    assert_eq!(
        (ch.kind, ch.flags),
        (reply::TYPE_BLOCK_STATUS, reply::FLAG_DONE)
    );
    assert_ne!(be32(&ch.data), 0, "the context id negotiated");
    let desc: Vec<(u32, u32)> = ch.data[4..]
        .chunks(8)
        .map(|d| (be32(d), be32(&d[4..])))
        .collect();
    assert_eq!(
        desc,
        [(4096, 0), (SIZE as u32 - 4096, state::HOLE | state::ZERO)]
    );

    c.request(cmd::BLOCK_STATUS, cflag::REQ_ONE, 6, 2048, 1000, &[])
        .await;
    let Reply::Chunk(ch) = c.reply(0).await.0 else {
        panic!()
    };
    assert_eq!(ch.data.len(), 12);
    assert_eq!((be32(&ch.data[4..]), be32(&ch.data[8..])), (1000, 0));

    c.request(cmd::BLOCK_STATUS, 0, 7, SIZE - 512, 1024, &[])
        .await;
    let (r, _) = c.reply(0).await;
    assert_eq!(r.error(), Errno::Inval.code());
    assert!(
        matches!(r, Reply::Chunk(ref ch) if ch.kind == reply::TYPE_ERROR),
        "errors use error chunks"
    );

    c.request(cmd::WRITE_ZEROES, cflag::FAST_ZERO, 8, 0, 4096, &[])
        .await;
    assert_eq!(c.reply(0).await.0.error(), Errno::NotSup.code());
    c.request(cmd::WRITE_ZEROES, cflag::FAST_ZERO, 9, 0, 4096, &[])
        .await;
    assert_eq!(
        c.reply(0).await.0.error(),
        Errno::NotSup.code(),
        "fast zero never falls back"
    );
    assert_eq!(
        table.t.inner.contents()[..4096],
        [0x5a; 4096],
        "failed fast zero changed nothing"
    );
}

#[tokio::test]
async fn backend_panic_is_eio_and_the_connection_survives() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    c.go("t").await.unwrap();
    c.request(cmd::READ, 0, 1, PANICS, 512, &[]).await;
    let (r, _) = c.reply(512).await;
    assert_eq!((r.cookie(), r.error()), (1, Errno::Io.code()));
    c.request(cmd::READ, 0, 2, 0, 4, &[]).await;
    assert_eq!(c.reply(4).await.1, [0x5a; 4]);
}

#[tokio::test]
async fn replies_leave_in_completion_order() {
    let table = Table::new();
    let (mut c, _h) = connect(&table, Config::default()).await;
    c.go_structured("t").await;
    c.request(cmd::READ, 0, 1, GATED, 512, &[]).await; // blocks in the backend
    c.request(cmd::READ, 0, 2, 0, 512, &[]).await;
    c.request(cmd::WRITE, 0, 3, 4096, 512, &[3u8; 512]).await;
    let mut first = vec![c.reply(0).await.0.cookie(), c.reply(0).await.0.cookie()];
    first.sort();
    assert_eq!(first, [2, 3], "later requests overtake the blocked one");
    table.t.gate.add_permits(1);
    assert_eq!(c.reply(0).await.0.cookie(), 1);
}

#[tokio::test]
async fn in_flight_requests_are_bounded() {
    let table = Table::new();
    let (mut c, _h) = connect(
        &table,
        Config {
            max_in_flight: 2,
            ..Config::default()
        },
    )
    .await;
    c.go("t").await.unwrap();
    for cookie in 0..6 {
        c.request(cmd::READ, 0, cookie, GATED, 512, &[]).await;
    }
    timeout(Duration::from_secs(10), async {
        while table.t.active.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("two requests reach the backend");
    // Give a third request every chance to slip through, then check.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        table.t.active.load(Ordering::SeqCst),
        2,
        "only two admitted"
    );
    table.t.gate.add_permits(6);
    let mut cookies: Vec<u64> = Vec::new();
    for _ in 0..6 {
        cookies.push(c.reply(512).await.0.cookie());
    }
    cookies.sort();
    assert_eq!(cookies, [0, 1, 2, 3, 4, 5]);
    assert_eq!(table.t.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn disconnect_waits_for_in_flight_writes() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    c.go("t").await.unwrap();
    c.request(cmd::WRITE, 0, 1, GATED, 4096, &[0x77; 4096])
        .await;
    c.request(cmd::DISC, 0, 2, 0, 0, &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.is_finished(), "DISC must wait for the write");
    table.t.gate.add_permits(1);
    let (r, _) = c.reply(0).await;
    assert_eq!((r.cookie(), r.error()), (1, 0));
    finished(h).await.unwrap();
    assert_eq!(
        table.t.inner.contents()[GATED as usize..GATED as usize + 4096],
        [0x77; 4096]
    );
    assert_eq!(
        c.s.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "closed after the last reply"
    );
}

#[tokio::test]
async fn bad_request_magic_hangs_up_and_eof_is_clean() {
    let table = Table::new();
    let (mut c, h) = connect(&table, Config::default()).await;
    c.go("mem").await.unwrap();
    c.s.write_all(&[0u8; 28]).await.unwrap();
    assert!(matches!(finished(h).await, Err(sd_nbd::Error::Protocol(_))));

    let (mut c, h) = connect(&table, Config::default()).await;
    c.go("mem").await.unwrap();
    drop(c);
    finished(h).await.unwrap();

    let (mut c, h) = connect(&table, Config::default()).await;
    c.go("mem").await.unwrap();
    c.s.write_all(&[0x25, 0x60]).await.unwrap();
    drop(c);
    assert!(
        matches!(finished(h).await, Err(sd_nbd::Error::Io(_))),
        "EOF inside a header"
    );
}

#[tokio::test]
async fn many_connections_share_one_export() {
    let table = Table::new();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, h) = connect(&table, Config::default()).await;
            c.go("mem").await.unwrap();
            let off = u64::from(i) * 65536;
            for k in 0..16u64 {
                c.request(cmd::WRITE, 0, k, off + k * 4096, 4096, &[i; 4096])
                    .await;
            }
            for _ in 0..16 {
                assert_eq!(c.reply(0).await.0.error(), 0);
            }
            c.request(cmd::DISC, 0, 99, 0, 0, &[]).await;
            finished(h).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mem = table.others["mem"].contents();
    for i in 0..8usize {
        assert!(mem[i * 65536..(i + 1) * 65536]
            .iter()
            .all(|&b| b == i as u8));
    }
}
