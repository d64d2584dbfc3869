//! Fixed newstyle negotiation: greeting, client flags, then options until
//! the client enters transmission (`NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`)
//! or leaves.
//!
//! Options are strictly sequential (the client waits for the final reply
//! to each), so this is a plain loop over one connection; memory per option
//! is bounded by [`OPTION_DATA_MAX`].

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Errno, Error, NbdError};
use crate::export::{guarded, Export, Exports};
use crate::proto::{self, info, opt, rep, tflag, InfoRequest, MetaRequest, OptionHeader};

/// Largest option body read into memory. The biggest legitimate options
/// (`NBD_OPT_SET_META_CONTEXT` with a 4 KiB name and a few queries) are a
/// fraction of this.
pub const OPTION_DATA_MAX: u32 = 64 << 10;

/// Largest option body the server is willing to read and discard (without
/// buffering it) so it can answer with an error. Beyond this the client is
/// treated as hostile and the connection is closed.
pub const OPTION_DRAIN_MAX: u32 = 16 << 20;

/// Context id the server assigns to `base:allocation`.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// What option haggling settled for the transmission phase.
pub(crate) struct Negotiated {
    pub export: Arc<dyn Export>,
    pub structured: bool,
    /// `base:allocation` was selected for the export finally chosen.
    pub base_allocation: bool,
}

/// The transmission flags for `export`; a function of the export and of
/// whether structured replies were negotiated, so `NBD_OPT_INFO` and the
/// following `NBD_OPT_GO` agree as the spec requires.
pub(crate) fn transmission_flags(export: &dyn Export, structured: bool) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN;
    if export.read_only() {
        f |= tflag::READ_ONLY;
    } else {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO;
    }
    if structured {
        // Reads are always answered with a single content chunk.
        f |= tflag::SEND_DF;
    }
    f
}

/// The option reply used when `Exports` fails with `e`.
fn rep_for(e: &NbdError) -> u32 {
    match e.errno {
        Errno::Perm => rep::ERR_POLICY,
        Errno::Shutdown => rep::ERR_SHUTDOWN,
        Errno::Inval => rep::ERR_INVALID,
        _ => rep::ERR_UNKNOWN,
    }
}

/// The negotiation state of one connection. Borrowing the halves of the
/// stream (rather than owning them) lets the caller hand the very same
/// buffered reader and writer to the transmission phase afterwards, so no
/// byte read ahead during the handshake is lost.
struct Haggler<'a, R, W, E: ?Sized> {
    r: &'a mut R,
    w: &'a mut W,
    exports: &'a E,
    structured: bool,
    no_zeroes: bool,
    /// Export name for which `base:allocation` is selected.
    meta_for: Option<String>,
}

/// Runs the handshake. `Ok(None)`: the client left (abort or hang-up).
pub(crate) async fn negotiate<R, W, E>(
    r: &mut R,
    w: &mut W,
    exports: &E,
) -> Result<Option<Negotiated>, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: Exports + ?Sized,
{
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting[16..18]
        .copy_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
    if client_flags & !known != 0 {
        return Err(Error::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let mut h = Haggler {
        r,
        w,
        exports,
        structured: false,
        no_zeroes: client_flags & proto::FLAG_C_NO_ZEROES != 0,
        meta_for: None,
    };
    loop {
        let mut hdr = [0u8; OptionHeader::SIZE];
        if !read_or_eof(h.r, &mut hdr).await? {
            return Ok(None);
        }
        let hdr =
            OptionHeader::decode(&hdr).ok_or_else(|| Error::Protocol("bad option magic".into()))?;
        let step = h.option(hdr).await?;
        h.w.flush().await?;
        match step {
            Step::Continue => {}
            Step::Leave => return Ok(None),
            Step::Go(n) => return Ok(Some(n)),
        }
    }
}

/// What the loop does after one option: only `NBD_OPT_GO`,
/// `NBD_OPT_EXPORT_NAME` and `NBD_OPT_ABORT` end negotiation.
enum Step {
    Continue,
    Leave,
    Go(Negotiated),
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the
/// first byte (the peer hung up between messages).
pub(crate) async fn read_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// Reads and discards `len` bytes without buffering them.
pub(crate) async fn drain<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

impl<R, W, E> Haggler<'_, R, W, E>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: Exports + ?Sized,
{
    async fn reply(&mut self, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other("option reply too large"))?;
        self.w
            .write_all(&proto::option_reply_header(option, kind, len))
            .await?;
        self.w.write_all(data).await
    }

    async fn error(&mut self, option: u32, kind: u32, msg: &str) -> std::io::Result<()> {
        tracing::debug!(option, kind, msg, "option refused");
        self.reply(
            option,
            kind,
            proto::truncate_str(msg, proto::MAX_STRING).as_bytes(),
        )
        .await
    }

    async fn option(&mut self, hdr: OptionHeader) -> Result<Step, Error> {
        let OptionHeader { option, length } = hdr;
        if option == opt::ABORT {
            // The spec asks servers to ignore (not reject) data here.
            if length > OPTION_DRAIN_MAX {
                return Err(Error::Protocol(format!(
                    "NBD_OPT_ABORT with {length} bytes"
                )));
            }
            drain(self.r, length.into()).await?;
            // The client may already be gone; a failed ACK changes nothing.
            let _ = self.reply(option, rep::ACK, &[]).await;
            return Ok(Step::Leave);
        }
        if length > OPTION_DATA_MAX {
            if option == opt::EXPORT_NAME || length > OPTION_DRAIN_MAX {
                return Err(Error::Protocol(format!(
                    "option {option} with {length} bytes of data"
                )));
            }
            drain(self.r, length.into()).await?;
            let kind = if Self::known(option) {
                rep::ERR_TOO_BIG
            } else {
                rep::ERR_UNSUP
            };
            self.error(
                option,
                kind,
                &format!("option data of {length} bytes is too large"),
            )
            .await?;
            return Ok(Step::Continue);
        }
        // Bounded by OPTION_DATA_MAX above.
        let mut data = vec![0u8; length as usize];
        self.r.read_exact(&mut data).await?;
        match option {
            opt::EXPORT_NAME => self.export_name(&data).await,
            opt::LIST => {
                self.list(&data).await?;
                Ok(Step::Continue)
            }
            opt::INFO | opt::GO => self.info_or_go(option, &data).await,
            opt::STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    self.reply(option, rep::ACK, &[]).await?;
                } else {
                    self.error(
                        option,
                        rep::ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                }
                Ok(Step::Continue)
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, &data).await?;
                Ok(Step::Continue)
            }
            opt::STARTTLS => {
                self.error(
                    option,
                    rep::ERR_UNSUP,
                    "TLS is not supported by this server",
                )
                .await?;
                Ok(Step::Continue)
            }
            _ => {
                self.error(
                    option,
                    rep::ERR_UNSUP,
                    &format!("option {option} is not supported"),
                )
                .await?;
                Ok(Step::Continue)
            }
        }
    }

    fn known(option: u32) -> bool {
        matches!(
            option,
            opt::LIST
                | opt::INFO
                | opt::GO
                | opt::STRUCTURED_REPLY
                | opt::LIST_META_CONTEXT
                | opt::SET_META_CONTEXT
        )
    }

    /// `NBD_OPT_EXPORT_NAME`: no way to report an error, so an unknown
    /// export closes the connection (as the spec demands).
    async fn export_name(&mut self, data: &[u8]) -> Result<Step, Error> {
        let name =
            proto::check_string(data).ok_or_else(|| Error::Protocol("bad export name".into()))?;
        let export = match guarded(|| self.exports.open(&name)).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(Error::Protocol(format!(
                    "NBD_OPT_EXPORT_NAME: no export {name:?}"
                )))
            }
            Err(e) => {
                return Err(Error::Protocol(format!(
                    "NBD_OPT_EXPORT_NAME {name:?}: {e}"
                )))
            }
        };
        let mut reply = Vec::with_capacity(10 + 124);
        reply.extend_from_slice(&export.size().to_be_bytes());
        reply
            .extend_from_slice(&transmission_flags(export.as_ref(), self.structured).to_be_bytes());
        if !self.no_zeroes {
            reply.resize(10 + 124, 0);
        }
        self.w.write_all(&reply).await?;
        Ok(Step::Go(self.negotiated(export, &name)))
    }

    fn negotiated(&self, export: Arc<dyn Export>, name: &str) -> Negotiated {
        Negotiated {
            export,
            structured: self.structured,
            base_allocation: self.meta_for.as_deref() == Some(name),
        }
    }

    async fn list(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !data.is_empty() {
            return self
                .error(opt::LIST, rep::ERR_INVALID, "NBD_OPT_LIST takes no data")
                .await;
        }
        let names = match guarded(|| self.exports.list()).await {
            Ok(n) => n,
            Err(e) => return self.error(opt::LIST, rep_for(&e), &e.to_string()).await,
        };
        for name in names.iter().filter(|n| n.len() <= proto::MAX_STRING) {
            let mut d = Vec::with_capacity(4 + name.len());
            d.extend_from_slice(&(name.len() as u32).to_be_bytes());
            d.extend_from_slice(name.as_bytes());
            self.reply(opt::LIST, rep::SERVER, &d).await?;
        }
        self.reply(opt::LIST, rep::ACK, &[]).await
    }

    async fn info_or_go(&mut self, option: u32, data: &[u8]) -> Result<Step, Error> {
        let req = match InfoRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                self.error(option, rep::ERR_INVALID, &e.to_string()).await?;
                return Ok(Step::Continue);
            }
        };
        let export = match guarded(|| self.exports.open(&req.name)).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.error(
                    option,
                    rep::ERR_UNKNOWN,
                    &format!("no export named {:?}", req.name),
                )
                .await?;
                return Ok(Step::Continue);
            }
            Err(e) => {
                self.error(option, rep_for(&e), &e.to_string()).await?;
                return Ok(Step::Continue);
            }
        };
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&info::EXPORT.to_be_bytes());
        d.extend_from_slice(&export.size().to_be_bytes());
        d.extend_from_slice(&transmission_flags(export.as_ref(), self.structured).to_be_bytes());
        self.reply(option, rep::INFO, &d).await?;

        // Sent even when not asked for (allowed): the constraints are
        // enforced either way, and clients that understand them benefit.
        let bs = export.block_size().sanitized();
        let mut d = Vec::with_capacity(14);
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        for v in [bs.min, bs.preferred, bs.max] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        self.reply(option, rep::INFO, &d).await?;

        if req.requests.contains(&info::NAME) {
            self.reply(option, rep::INFO, &info_string(info::NAME, &req.name))
                .await?;
        }
        if req.requests.contains(&info::DESCRIPTION) {
            if let Some(desc) = export.description() {
                self.reply(option, rep::INFO, &info_string(info::DESCRIPTION, &desc))
                    .await?;
            }
        }
        self.reply(option, rep::ACK, &[]).await?;
        if option == opt::GO {
            return Ok(Step::Go(self.negotiated(export, &req.name)));
        }
        Ok(Step::Continue)
    }

    async fn meta_context(&mut self, option: u32, data: &[u8]) -> std::io::Result<()> {
        let set = option == opt::SET_META_CONTEXT;
        if set {
            // Replaces the previous selection even if this request fails.
            self.meta_for = None;
        }
        if !self.structured {
            return self
                .error(
                    option,
                    rep::ERR_INVALID,
                    "negotiate NBD_OPT_STRUCTURED_REPLY first",
                )
                .await;
        }
        let req = match MetaRequest::decode(data) {
            Ok(r) => r,
            Err(e) => return self.error(option, rep::ERR_INVALID, &e.to_string()).await,
        };
        let wanted = if set {
            // `base:` alone selects nothing; unknown namespaces are ignored.
            req.queries.iter().any(|q| q == proto::BASE_ALLOCATION)
        } else {
            req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == "base:" || q == proto::BASE_ALLOCATION)
        };
        if wanted {
            // Listed contexts carry id 0 (the spec reserves it there).
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut d = Vec::with_capacity(4 + proto::BASE_ALLOCATION.len());
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
            self.reply(option, rep::META_CONTEXT, &d).await?;
            if set {
                self.meta_for = Some(req.name);
            }
        }
        self.reply(option, rep::ACK, &[]).await
    }
}

fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let s = proto::truncate_str(s, proto::MAX_STRING);
    let mut d = Vec::with_capacity(2 + s.len());
    d.extend_from_slice(&kind.to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    d
}
