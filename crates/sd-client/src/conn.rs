//! A connection to a sheep (TCP or Unix socket) and the framing of one
//! request/response exchange.
//!
//! One outstanding request per connection: dog and the gateway's peer
//! fan-out open as many connections as they need concurrency, which keeps
//! the framing trivially correct (responses cannot interleave).

use sd_proto::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Errors of the client layer. `Io` means the exchange itself failed (the
/// connection is unusable); a non-success `SdRes` is not an error here, it
/// is returned in the response for the caller to judge.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("response payload of {got} bytes exceeds the {max} bytes requested")]
    Oversized { got: u32, max: u32 },
    #[error("{0}")]
    Res(SdRes),
}

impl ClientError {
    /// The result code a caller should report for this failure
    /// (connection problems read as EIO, as dog prints them).
    pub fn res(&self) -> SdRes {
        match self {
            ClientError::Res(r) => *r,
            _ => SdRes::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where a sheep can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port()),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open connection to one sheep.
pub struct Connection {
    stream: Box<dyn Stream>,
    pub endpoint: Endpoint,
}

impl Connection {
    pub async fn connect(endpoint: &Endpoint) -> Result<Self> {
        let stream: Box<dyn Stream> = match endpoint {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)
                    .await
                    .map_err(|e| ClientError::Connect {
                        addr: endpoint.to_string(),
                        source: e,
                    })?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Endpoint::Unix(p) => {
                Box::new(
                    UnixStream::connect(p)
                        .await
                        .map_err(|e| ClientError::Connect {
                            addr: endpoint.to_string(),
                            source: e,
                        })?,
                )
            }
        };
        Ok(Connection {
            stream,
            endpoint: endpoint.clone(),
        })
    }

    /// Sends `req` (with `payload` if it carries the WRITE flag) and reads
    /// the response. `req.data_length` must be set by the caller: the
    /// payload length for writes, the reply buffer size for reads.
    pub async fn exec(&mut self, req: &SdReq, payload: &[u8]) -> Result<(SdRsp, Vec<u8>)> {
        let mut buf = Vec::with_capacity(SD_HEADER_SIZE + payload.len());
        buf.extend_from_slice(&req.encode());
        if req.has_payload() {
            buf.extend_from_slice(payload);
        }
        self.stream.write_all(&buf).await?;
        let mut hdr = [0u8; SD_HEADER_SIZE];
        self.stream.read_exact(&mut hdr).await?;
        let rsp = SdRsp::decode(&hdr);
        let max = if req.has_payload() && req.flags & flag::CMD_PIGGYBACK == 0 {
            0
        } else {
            req.data_length
        };
        if rsp.data_length > max.max(req.data_length) {
            return Err(ClientError::Oversized {
                got: rsp.data_length,
                max: req.data_length,
            });
        }
        let mut data = vec![0u8; rsp.data_length as usize];
        self.stream.read_exact(&mut data).await?;
        Ok((rsp, data))
    }

    /// Like [`exec`](Self::exec) but turns a non-success result into
    /// [`ClientError::Res`].
    pub async fn exec_ok(&mut self, req: &SdReq, payload: &[u8]) -> Result<(SdRsp, Vec<u8>)> {
        let (rsp, data) = self.exec(req, payload).await?;
        if rsp.result != SdRes::SUCCESS {
            return Err(ClientError::Res(rsp.result));
        }
        Ok((rsp, data))
    }
}
