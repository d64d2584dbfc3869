//! dog's connections to sheep, with the original's network diagnostics.
//!
//! The original keeps one cached socket per node and, when a request
//! fails, prints what `lib/net.c` prints at the point of failure — the
//! connect failure twice (once from the cache, once from its fallback
//! connect), `failed to read a response`, … — before the command prints
//! its own follow-up line. [`Net`] reproduces both: it reuses one
//! [`Connection`] per address, drops it on failure, and prints the
//! network-layer lines itself, so commands only add their follow-up.

use crate::out::err_line;
use sd_client::vdi::Exchange;
use sd_client::{ClientError, Connection, Endpoint};
use sd_proto::{SdReq, SdRsp};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// The text of `%m` for an I/O error (C `strerror`).
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated
            // string that stays valid until the next call; dog is
            // single-threaded and copies it at once.
            unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) }
                .to_string_lossy()
                .into_owned()
        }
        None => e.to_string(),
    }
}

/// Prints the network-layer lines the original prints for `e` (CLI.md
/// §1.16). Which phase of an exchange failed is inferred from the error:
/// a broken pipe can only come from sending, anything else is reported
/// as a failed read of the response.
fn print_diagnostics(req: &SdReq, e: &ClientError) {
    match e {
        ClientError::Connect { addr, source } => {
            let line = format!("failed to connect to {addr}: {}", strerror(source));
            err_line(line.as_bytes());
            err_line(line.as_bytes());
        }
        ClientError::Io(source) if source.kind() == io::ErrorKind::BrokenPipe => {
            crate::err!("failed to write to socket: {}", strerror(source));
            let wlen = if req.has_payload() {
                req.data_length
            } else {
                0
            };
            crate::err!(
                "failed to send request {:x}, {}: {}",
                req.opcode,
                wlen,
                strerror(source)
            );
        }
        ClientError::Io(source) => {
            if source.kind() != io::ErrorKind::UnexpectedEof {
                crate::err!("failed to read from socket: -1, {}", strerror(source));
            }
            crate::err!("failed to read a response");
        }
        ClientError::Oversized { .. } => crate::err!("failed to read the response data"),
        ClientError::Res(_) => {}
    }
}

/// Cached connections, one per sheep address.
#[derive(Default)]
pub struct Net {
    conns: HashMap<SocketAddr, Connection>,
}

impl Net {
    /// One exchange with the sheep at `to`, connecting if needed. On
    /// failure the diagnostics are printed and the connection dropped.
    pub async fn exec(
        &mut self,
        to: SocketAddr,
        req: &SdReq,
        payload: &[u8],
    ) -> sd_client::Result<(SdRsp, Vec<u8>)> {
        let r = match self.conns.get_mut(&to) {
            Some(c) => c.exec(req, payload).await,
            None => match Connection::connect(&Endpoint::Tcp(to)).await {
                Ok(mut c) => {
                    let r = c.exec(req, payload).await;
                    self.conns.insert(to, c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &r {
            self.conns.remove(&to);
            print_diagnostics(req, e);
        }
        r
    }

    /// The sheep at `to` as an [`Exchange`] for the shared VDI code.
    pub fn at(&mut self, to: SocketAddr) -> At<'_> {
        At { net: self, to }
    }
}

/// A [`Net`] bound to one sheep.
pub struct At<'a> {
    net: &'a mut Net,
    to: SocketAddr,
}

impl Exchange for At<'_> {
    fn exec(
        &mut self,
        req: &SdReq,
        payload: &[u8],
    ) -> impl Future<Output = sd_client::Result<(SdRsp, Vec<u8>)>> + Send {
        self.net.exec(self.to, req, payload)
    }
}
