//! The transmission phase: one reader loop per connection that validates
//! requests and spawns a task per request; tasks reply in completion order
//! through one [`ReplyWriter`].
//!
//! Bounds: a request is admitted only with a permit from the connection's
//! count semaphore and, for READ/WRITE, its payload size from the byte
//! semaphore, both taken *before* the payload buffer is allocated. When
//! the budget is spent the reader stops reading the socket, which pushes
//! back on the client instead of growing memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Mutex, Notify, Semaphore};
use tracing::Instrument;

use crate::error::{Error, NbdError};
use crate::export::{guarded, BlockSize, Export, Extent, ZeroFlags};
use crate::handshake::{drain, read_or_eof, Negotiated, BASE_ALLOCATION_ID};
use crate::proto::{self, cflag, cmd, reply, state, RequestHeader};
use crate::Config;

/// Most descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk. The spec
/// allows up to 2^20; a smaller cap bounds the reply (512 KiB) and the
/// client simply asks again from where the answer stopped.
pub const MAX_DESCRIPTORS: usize = 1 << 16;

/// What the server knows about the session when it validates a request.
/// Plain data, so [`classify`] is a pure function that property tests can
/// hammer with arbitrary headers.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub size: u64,
    pub block: BlockSize,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A request that passed validation: every range is inside the export,
/// aligned, and within the payload limit, so handlers and backends need
/// no further checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disc,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        flags: ZeroFlags,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

/// Validates a request header against the session (flags, bounds,
/// alignment, read-only, negotiated features). Errors carry the errno the
/// spec recommends for each case.
pub fn classify(h: &RequestHeader, p: &Params) -> Result<Command, NbdError> {
    let per_command = match h.kind {
        cmd::READ if p.structured => cflag::DF,
        cmd::WRITE_ZEROES => cflag::NO_HOLE | cflag::FAST_ZERO,
        cmd::BLOCK_STATUS => cflag::REQ_ONE,
        _ => 0,
    };
    // FUA is valid on every command once SEND_FUA is advertised.
    let allowed = cflag::FUA | per_command;
    if h.flags & !allowed != 0 {
        return Err(NbdError::invalid(format!(
            "command flags {:#x} not valid for command {}",
            h.flags & !allowed,
            h.kind
        )));
    }
    let fua = h.flags & cflag::FUA != 0;
    let (offset, len) = (h.offset, h.length);
    match h.kind {
        cmd::DISC => return Ok(Command::Disc),
        cmd::FLUSH if offset != 0 || len != 0 => {
            return Err(NbdError::invalid("NBD_CMD_FLUSH needs offset and length 0"))
        }
        cmd::FLUSH => return Ok(Command::Flush),
        cmd::READ | cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES | cmd::BLOCK_STATUS => {}
        other => return Err(NbdError::invalid(format!("unknown command {other}"))),
    }
    let writes = matches!(h.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && p.read_only {
        return Err(NbdError::perm("export is read-only"));
    }
    if matches!(h.kind, cmd::READ | cmd::WRITE) && len > p.block.max {
        return Err(NbdError::invalid(format!(
            "length {len} exceeds the maximum payload {}",
            p.block.max
        )));
    }
    if h.kind == cmd::BLOCK_STATUS {
        if !p.base_allocation {
            return Err(NbdError::invalid("no metadata context was negotiated"));
        }
        if len == 0 {
            return Err(NbdError::invalid("NBD_CMD_BLOCK_STATUS with length 0"));
        }
    }
    if offset
        .checked_add(len.into())
        .is_none_or(|end| end > p.size)
    {
        let msg = format!("range {offset}+{len} is beyond the export size {}", p.size);
        // The spec asks for ENOSPC on writes past the end, EINVAL otherwise.
        return Err(if matches!(h.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            NbdError::no_space(msg)
        } else {
            NbdError::invalid(msg)
        });
    }
    let min = u64::from(p.block.min);
    if offset % min != 0 || u64::from(len) % min != 0 {
        return Err(NbdError::invalid(format!(
            "range {offset}+{len} is not aligned to the minimum block size {min}"
        )));
    }
    Ok(match h.kind {
        cmd::READ => Command::Read { offset, len },
        cmd::WRITE => Command::Write { offset, len, fua },
        cmd::TRIM => Command::Trim { offset, len, fua },
        cmd::WRITE_ZEROES => Command::WriteZeroes {
            offset,
            len,
            fua,
            flags: ZeroFlags {
                may_trim: h.flags & cflag::NO_HOLE == 0,
                fast_only: h.flags & cflag::FAST_ZERO != 0,
            },
        },
        _ => Command::BlockStatus {
            offset,
            len,
            req_one: h.flags & cflag::REQ_ONE != 0,
        },
    })
}

/// Turns backend extents into `base:allocation` descriptors for a request
/// of `req_len` (> 0) bytes: clipped to the request, zero lengths dropped,
/// equal neighbours merged, at most [`MAX_DESCRIPTORS`] (one with
/// `req_one`). Never empty: if the backend said nothing, the whole range
/// is reported as allocated data, which is always a safe answer.
pub fn status_descriptors(extents: &[Extent], req_len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut covered: u32 = 0;
    for e in extents {
        if covered == req_len {
            break;
        }
        let len = e.length.min(u64::from(req_len - covered)) as u32;
        if len == 0 {
            continue;
        }
        let flags = if e.hole { state::HOLE } else { 0 } | if e.zero { state::ZERO } else { 0 };
        let full = out.len() == MAX_DESCRIPTORS;
        match out.last_mut() {
            Some((l, f)) if *f == flags => *l += len,
            _ if full => break,
            _ => out.push((len, flags)),
        }
        covered += len;
    }
    if out.is_empty() {
        out.push((req_len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// The single writer of reply frames for a connection.
///
/// Tasks finish in any order; each takes the lock, writes its whole frame
/// (header and payload), flushes and releases it, so frames never
/// interleave. After the first write error the stream is unusable (a frame
/// may be half sent), so the writer turns into a no-op and wakes the
/// reader, which stops taking requests.
pub(crate) struct ReplyWriter<W> {
    inner: Mutex<BufWriter<W>>,
    broken: AtomicBool,
    failed: Notify,
}

impl<W: AsyncWrite + Unpin> ReplyWriter<W> {
    pub fn new(w: BufWriter<W>) -> Self {
        ReplyWriter {
            inner: Mutex::new(w),
            broken: AtomicBool::new(false),
            failed: Notify::new(),
        }
    }

    async fn send(&self, parts: &[&[u8]]) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        let mut w = self.inner.lock().await;
        let mut res = Ok(());
        for p in parts {
            res = w.write_all(p).await;
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() {
            res = w.flush().await;
        }
        if let Err(e) = res {
            tracing::debug!(error = %e, "writing reply failed; closing connection");
            self.broken.store(true, Ordering::Release);
            self.failed.notify_one();
        }
    }

    pub async fn shutdown(&self) {
        let mut w = self.inner.lock().await;
        if !self.broken.load(Ordering::Acquire) {
            let _ = w.flush().await;
        }
        let _ = w.shutdown().await;
    }
}

/// State shared by the request tasks of one connection (behind an `Arc`,
/// since each request is its own task). It is read-only apart from the
/// writer, so tasks never wait on each other except to send a frame.
struct Session<W> {
    export: Arc<dyn Export>,
    structured: bool,
    writer: ReplyWriter<W>,
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn ok(&self, cookie: u64) {
        self.writer.send(&[&proto::simple_reply(0, cookie)]).await;
    }

    /// Errors go in a structured error chunk when possible, so the client
    /// can show the message.
    async fn error(&self, cookie: u64, e: &NbdError) {
        tracing::debug!(cookie, error = %e, "request failed");
        if self.structured {
            let msg = proto::truncate_str(&e.message, proto::MAX_STRING).as_bytes();
            let mut payload = Vec::with_capacity(6 + msg.len());
            payload.extend_from_slice(&e.errno.code().to_be_bytes());
            payload.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            payload.extend_from_slice(msg);
            let hdr = proto::structured_reply(
                reply::FLAG_DONE,
                reply::TYPE_ERROR,
                cookie,
                payload.len() as u32,
            );
            self.writer.send(&[&hdr, &payload]).await;
        } else {
            self.writer
                .send(&[&proto::simple_reply(e.errno.code(), cookie)])
                .await;
        }
    }

    async fn done(&self, cookie: u64, r: Result<(), NbdError>) {
        match r {
            Ok(()) => self.ok(cookie).await,
            Err(e) => self.error(cookie, &e).await,
        }
    }

    async fn handle(&self, cookie: u64, c: Command, payload: Vec<u8>) {
        let export = self.export.as_ref();
        match c {
            Command::Read { offset, len } => self.read(cookie, offset, len).await,
            Command::Write { len: 0, .. }
            | Command::Trim { len: 0, .. }
            | Command::WriteZeroes { len: 0, .. } => self.ok(cookie).await,
            Command::Write { offset, fua, .. } => {
                self.done(
                    cookie,
                    guarded(|| export.write(offset, &payload, fua)).await,
                )
                .await
            }
            Command::Flush => self.done(cookie, guarded(|| export.flush()).await).await,
            Command::Trim { offset, len, fua } => {
                let r = guarded(|| export.trim(offset, len.into())).await;
                self.done(cookie, self.then_flush(r, fua).await).await
            }
            Command::WriteZeroes {
                offset,
                len,
                fua,
                flags,
            } => {
                let r = guarded(|| export.write_zeroes(offset, len.into(), flags)).await;
                self.done(cookie, self.then_flush(r, fua).await).await
            }
            Command::BlockStatus {
                offset,
                len,
                req_one,
            } => self.block_status(cookie, offset, len, req_one).await,
            Command::Disc => unreachable!("the reader handles NBD_CMD_DISC"),
        }
    }

    /// FUA on TRIM and WRITE_ZEROES: the backend calls carry no FUA bit,
    /// so a flush after them provides the guarantee.
    async fn then_flush(&self, r: Result<(), NbdError>, fua: bool) -> Result<(), NbdError> {
        match r {
            Ok(()) if fua => guarded(|| self.export.flush()).await,
            other => other,
        }
    }

    async fn read(&self, cookie: u64, offset: u64, len: u32) {
        // Bounded by the payload limit (classify) and the byte budget.
        let mut buf = vec![0u8; len as usize];
        if len > 0 {
            if let Err(e) = guarded(|| self.export.read(offset, &mut buf)).await {
                return self.error(cookie, &e).await;
            }
        }
        if !self.structured {
            return self
                .writer
                .send(&[&proto::simple_reply(0, cookie), &buf])
                .await;
        }
        if len == 0 {
            let hdr = proto::structured_reply(reply::FLAG_DONE, reply::TYPE_NONE, cookie, 0);
            return self.writer.send(&[&hdr]).await;
        }
        if buf.iter().all(|&b| b == 0) {
            // A zero block costs 32 bytes on the wire instead of `len`.
            let mut p = [0u8; 12];
            p[..8].copy_from_slice(&offset.to_be_bytes());
            p[8..].copy_from_slice(&len.to_be_bytes());
            let hdr =
                proto::structured_reply(reply::FLAG_DONE, reply::TYPE_OFFSET_HOLE, cookie, 12);
            return self.writer.send(&[&hdr, &p]).await;
        }
        let hdr =
            proto::structured_reply(reply::FLAG_DONE, reply::TYPE_OFFSET_DATA, cookie, len + 8);
        self.writer.send(&[&hdr, &offset.to_be_bytes(), &buf]).await
    }

    async fn block_status(&self, cookie: u64, offset: u64, len: u32, req_one: bool) {
        let extents = match guarded(|| self.export.extents(offset, len.into())).await {
            Ok(e) => e,
            Err(e) => return self.error(cookie, &e).await,
        };
        let desc = status_descriptors(&extents, len, req_one);
        let mut p = Vec::with_capacity(4 + 8 * desc.len());
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (l, f) in desc {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        let hdr = proto::structured_reply(
            reply::FLAG_DONE,
            reply::TYPE_BLOCK_STATUS,
            cookie,
            p.len() as u32,
        );
        self.writer.send(&[&hdr, &p]).await
    }
}

/// Runs the transmission phase until `NBD_CMD_DISC`, EOF, a fatal
/// protocol error or a broken socket; always waits for in-flight requests
/// before returning, so the export is quiescent afterwards.
pub(crate) async fn run<R, W>(
    mut r: R,
    w: BufWriter<W>,
    n: Negotiated,
    config: &Config,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let params = Params {
        size: n.export.size(),
        block: n.export.block_size().sanitized(),
        read_only: n.export.read_only(),
        structured: n.structured,
        base_allocation: n.base_allocation,
    };
    let session = Arc::new(Session {
        export: n.export,
        structured: n.structured,
        writer: ReplyWriter::new(w),
    });
    let slots = config
        .max_in_flight
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let kib = config
        .max_in_flight_bytes
        .div_ceil(1024)
        .clamp(proto::MAX_PAYLOAD as usize / 1024, Semaphore::MAX_PERMITS);
    let count = Arc::new(Semaphore::new(slots));
    let bytes = Arc::new(Semaphore::new(kib));

    let result = loop {
        let mut hdr = [0u8; RequestHeader::SIZE];
        tokio::select! {
            res = read_or_eof(&mut r, &mut hdr) => match res {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
            () = session.writer.failed.notified() => {
                break Err(Error::Io(std::io::Error::other("writing a reply failed")));
            }
        }
        let Some(h) = RequestHeader::decode(&hdr) else {
            break Err(Error::Protocol("bad request magic".into()));
        };
        tracing::trace!(?h, "request");
        let c = match classify(&h, &params) {
            Ok(Command::Disc) => break Ok(()),
            Ok(c) => c,
            Err(e) => {
                if h.kind == cmd::WRITE {
                    // Keep the stream in sync; nothing is buffered.
                    if let Err(e) = drain(&mut r, h.length.into()).await {
                        break Err(e.into());
                    }
                }
                session.error(h.cookie, &e).await;
                continue;
            }
        };
        let cost = match c {
            Command::Read { len, .. } | Command::Write { len, .. } => len.div_ceil(1024),
            _ => 0,
        };
        let slot = count.clone().acquire_owned().await.expect("never closed");
        let budget = bytes
            .clone()
            .acquire_many_owned(cost)
            .await
            .expect("never closed");
        let mut payload = Vec::new();
        if let Command::Write { len, .. } = c {
            payload = vec![0u8; len as usize];
            if let Err(e) = r.read_exact(&mut payload).await {
                break Err(e.into());
            }
        }
        let s = session.clone();
        tokio::spawn(
            async move {
                s.handle(h.cookie, c, payload).await;
                drop((slot, budget));
            }
            .in_current_span(),
        );
    };
    // Every task holds a slot until its reply is written.
    let _all = count.acquire_many(slots as u32).await;
    session.writer.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;

    fn params() -> Params {
        Params {
            size: SIZE,
            block: BlockSize::default(),
            read_only: false,
            structured: true,
            base_allocation: true,
        }
    }

    fn hdr(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    fn errno(r: Result<Command, NbdError>) -> crate::Errno {
        r.unwrap_err().errno
    }

    use crate::Errno::*;

    #[test]
    fn classify_bounds_and_errnos() {
        let p = params();
        assert_eq!(
            classify(&hdr(cmd::READ, 0, 0, 4096), &p),
            Ok(Command::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(errno(classify(&hdr(cmd::READ, 0, SIZE - 1, 2), &p)), Inval);
        assert_eq!(errno(classify(&hdr(cmd::WRITE, 0, SIZE - 1, 2), &p)), NoSpc);
        assert_eq!(
            errno(classify(&hdr(cmd::WRITE_ZEROES, 0, SIZE, 1), &p)),
            NoSpc
        );
        assert_eq!(errno(classify(&hdr(cmd::TRIM, 0, SIZE, 1), &p)), Inval);
        assert_eq!(errno(classify(&hdr(cmd::READ, 0, u64::MAX, 1), &p)), Inval);
        assert_eq!(
            errno(classify(&hdr(cmd::READ, 0, 0, proto::MAX_PAYLOAD + 1), &p)),
            Inval
        );
        assert_eq!(errno(classify(&hdr(99, 0, 0, 0), &p)), Inval);
        assert_eq!(errno(classify(&hdr(cmd::FLUSH, 0, 1, 0), &p)), Inval);
        assert_eq!(
            errno(classify(&hdr(cmd::READ, cflag::NO_HOLE, 0, 1), &p)),
            Inval
        );
        assert_eq!(errno(classify(&hdr(cmd::BLOCK_STATUS, 0, 0, 0), &p)), Inval);
        // TRIM/WRITE_ZEROES may exceed the payload limit (no payload).
        assert!(classify(&hdr(cmd::TRIM, 0, 0, SIZE as u32), &p).is_ok());
        assert_eq!(classify(&hdr(cmd::DISC, 0, 0, 0), &p), Ok(Command::Disc));
        assert_eq!(
            classify(&hdr(cmd::FLUSH, cflag::FUA, 0, 0), &p),
            Ok(Command::Flush)
        );
        assert_eq!(
            classify(
                &hdr(
                    cmd::WRITE_ZEROES,
                    cflag::NO_HOLE | cflag::FAST_ZERO | cflag::FUA,
                    0,
                    512
                ),
                &p
            ),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 512,
                fua: true,
                flags: ZeroFlags {
                    may_trim: false,
                    fast_only: true
                }
            })
        );
    }

    #[test]
    fn classify_session_state() {
        let ro = Params {
            read_only: true,
            ..params()
        };
        assert_eq!(errno(classify(&hdr(cmd::WRITE, 0, 0, 1), &ro)), Perm);
        assert_eq!(errno(classify(&hdr(cmd::TRIM, 0, 0, 1), &ro)), Perm);
        assert_eq!(errno(classify(&hdr(cmd::WRITE_ZEROES, 0, 0, 1), &ro)), Perm);
        assert!(classify(&hdr(cmd::READ, 0, 0, 1), &ro).is_ok());
        let simple = Params {
            structured: false,
            base_allocation: false,
            ..params()
        };
        assert_eq!(
            errno(classify(&hdr(cmd::READ, cflag::DF, 0, 1), &simple)),
            Inval
        );
        assert_eq!(
            errno(classify(&hdr(cmd::BLOCK_STATUS, 0, 0, 1), &simple)),
            Inval
        );
        let aligned = Params {
            block: BlockSize {
                min: 512,
                preferred: 4096,
                max: 1 << 20,
            },
            ..params()
        };
        assert_eq!(errno(classify(&hdr(cmd::READ, 0, 1, 512), &aligned)), Inval);
        assert_eq!(
            errno(classify(&hdr(cmd::WRITE, 0, 0, 100), &aligned)),
            Inval
        );
        assert_eq!(
            errno(classify(&hdr(cmd::WRITE, 0, 0, (1 << 20) + 512), &aligned)),
            Inval
        );
        assert!(classify(&hdr(cmd::WRITE, 0, 512, 1024), &aligned).is_ok());
    }

    #[test]
    fn descriptors_clip_merge_and_default() {
        let e = [
            Extent::hole(100),
            Extent::hole(50),
            Extent::data(0),
            Extent::data(1000),
        ];
        assert_eq!(status_descriptors(&e, 500, false), vec![(150, 3), (350, 0)]);
        assert_eq!(status_descriptors(&e, 500, true), vec![(150, 3)]);
        assert_eq!(status_descriptors(&e, 120, true), vec![(120, 3)]);
        assert_eq!(status_descriptors(&[], 4096, false), vec![(4096, 0)]);
        assert_eq!(
            status_descriptors(&[Extent::data(0)], 9, true),
            vec![(9, 0)]
        );
    }

    #[test]
    fn descriptors_are_capped() {
        let e: Vec<Extent> = (0..MAX_DESCRIPTORS + 10)
            .map(|i| {
                if i % 2 == 0 {
                    Extent::hole(1)
                } else {
                    Extent::data(1)
                }
            })
            .collect();
        let d = status_descriptors(&e, u32::MAX, false);
        assert_eq!(d.len(), MAX_DESCRIPTORS);
    }

    fn arb_header() -> impl Strategy<Value = RequestHeader> {
        (
            any::<u16>(),
            0u16..10,
            any::<u64>(),
            prop_oneof![any::<u64>(), 0u64..2 * SIZE],
            any::<u32>(),
        )
            .prop_map(|(flags, kind, cookie, offset, length)| RequestHeader {
                flags,
                kind,
                cookie,
                offset,
                length,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn classify_never_admits_out_of_bounds(
            h in arb_header(),
            ro: bool, structured: bool, meta: bool, min_shift in 0u32..13,
        ) {
            let p = Params {
                read_only: ro,
                structured,
                base_allocation: meta && structured,
                block: BlockSize { min: 1 << min_shift, ..BlockSize::default() }.sanitized(),
                ..params()
            };
            match classify(&h, &p) {
                Ok(Command::Read { offset, len }) | Ok(Command::Write { offset, len, .. }) => {
                    prop_assert!(len <= p.block.max);
                    prop_assert!(offset + u64::from(len) <= p.size);
                    prop_assert_eq!(offset % u64::from(p.block.min), 0);
                }
                Ok(Command::Trim { offset, len, .. })
                | Ok(Command::WriteZeroes { offset, len, .. })
                | Ok(Command::BlockStatus { offset, len, .. }) => {
                    prop_assert!(offset + u64::from(len) <= p.size);
                    prop_assert_eq!(u64::from(len) % u64::from(p.block.min), 0);
                }
                Ok(_) | Err(_) => {}
            }
            if ro {
                let admitted_write = matches!(
                    classify(&h, &p),
                    Ok(Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. })
                );
                prop_assert!(!admitted_write);
            }
        }

        #[test]
        fn descriptors_are_valid(
            ext in proptest::collection::vec((0u64..10_000, any::<bool>(), any::<bool>()), 0..40),
            req_len in 1u32..50_000,
            req_one: bool,
        ) {
            let ext: Vec<Extent> = ext.into_iter().map(|(length, hole, zero)| Extent { length, hole, zero }).collect();
            let d = status_descriptors(&ext, req_len, req_one);
            prop_assert!(!d.is_empty());
            prop_assert!(d.iter().all(|&(l, _)| l > 0));
            prop_assert!(d.iter().map(|&(l, _)| u64::from(l)).sum::<u64>() <= u64::from(req_len));
            prop_assert!(d.windows(2).all(|w| w[0].1 != w[1].1));
            if req_one { prop_assert_eq!(d.len(), 1); }
        }
    }
}
