//! Shared by the integration tests: a server on a random loopback port
//! backed by [`MemExports`], and a raw protocol client that speaks the
//! wire format byte by byte (so tests can also send what real clients
//! never would).

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use sd_nbd::mem::{MemExport, MemExports};
use sd_nbd::proto::{self, OptionHeader, RequestHeader};
use sd_nbd::{Config, Exports};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A server running on its own runtime thread, listening on 127.0.0.1.
pub struct TestServer {
    pub port: u16,
    pub exports: Arc<MemExports>,
    _rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(exports: Arc<MemExports>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(sd_nbd::serve_listener(
            listener,
            exports.clone(),
            Config::default(),
        ));
        TestServer {
            port,
            exports,
            _rt: rt,
        }
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, name)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An export of `size` bytes with data in a few places and holes elsewhere.
pub fn sparse_export(size: u64) -> Arc<MemExport> {
    let e = MemExport::new(size);
    e.fill(0, &pattern(1 << 20, 1));
    e.fill(size / 2, &pattern(300_000, 2));
    e.fill(size - 4096, &pattern(4096, 3));
    Arc::new(e)
}

/// A raw NBD client over any byte stream.
pub struct Raw<S> {
    pub s: S,
}

#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub data: Vec<u8>,
}

/// Either kind of transmission reply, decoded by its magic.
#[derive(Debug)]
pub enum Reply {
    Simple { error: u32, cookie: u64 },
    Chunk(Chunk),
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } => *cookie,
            Reply::Chunk(c) => c.cookie,
        }
    }

    /// The error value: simple error field or error chunk's errno.
    pub fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk(c) if c.kind & 0x8000 != 0 => {
                u32::from_be_bytes(c.data[..4].try_into().unwrap())
            }
            Reply::Chunk(_) => 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Reads the greeting and sends `client_flags`.
    pub async fn greet(s: S, client_flags: u32) -> Self {
        let mut c = Raw { s };
        assert_eq!(c.s.read_u64().await.unwrap(), proto::NBD_MAGIC);
        assert_eq!(c.s.read_u64().await.unwrap(), proto::IHAVEOPT);
        let flags = c.s.read_u16().await.unwrap();
        assert_eq!(flags, proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
        c.s.write_u32(client_flags).await.unwrap();
        c
    }

    pub async fn send_opt(&mut self, option: u32, data: &[u8]) {
        let h = OptionHeader {
            option,
            length: data.len() as u32,
        };
        self.s.write_all(&h.encode()).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    pub async fn opt_reply(&mut self) -> OptReply {
        assert_eq!(self.s.read_u64().await.unwrap(), proto::OPTION_REPLY_MAGIC);
        let option = self.s.read_u32().await.unwrap();
        let kind = self.s.read_u32().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        OptReply { option, kind, data }
    }

    /// Sends an option and collects replies up to the final one (ACK or
    /// error).
    pub async fn opt(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(option, data).await;
        let mut v = Vec::new();
        loop {
            let r = self.opt_reply().await;
            assert_eq!(r.option, option);
            let last = r.kind == proto::rep::ACK || r.kind & 0x8000_0000 != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    /// `NBD_OPT_GO`; returns (size, transmission flags) on success, the
    /// final reply type on failure.
    pub async fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        let replies = self.opt(proto::opt::GO, &info_data(name, &[])).await;
        let last = replies.last().unwrap();
        if last.kind != proto::rep::ACK {
            return Err(last.kind);
        }
        let export = replies
            .iter()
            .find(|r| r.kind == proto::rep::INFO && r.data[..2] == [0, 0])
            .unwrap();
        Ok((
            u64::from_be_bytes(export.data[2..10].try_into().unwrap()),
            u16::from_be_bytes([export.data[10], export.data[11]]),
        ))
    }

    /// Structured replies + `base:allocation` + GO.
    pub async fn go_structured(&mut self, name: &str) -> (u64, u16) {
        assert_eq!(
            self.opt(proto::opt::STRUCTURED_REPLY, &[]).await[0].kind,
            proto::rep::ACK
        );
        let r = self
            .opt(
                proto::opt::SET_META_CONTEXT,
                &meta_data(name, &["base:allocation"]),
            )
            .await;
        assert_eq!(r.len(), 2, "{r:?}");
        self.go(name).await.unwrap()
    }

    pub async fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let h = RequestHeader {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&h.encode()).await.unwrap();
        self.s.write_all(payload).await.unwrap();
    }

    /// Reads one reply; for a successful simple reply, `read_len` bytes of
    /// data follow (the client must know, which is the simple reply's flaw).
    pub async fn reply(&mut self, read_len: usize) -> (Reply, Vec<u8>) {
        let magic = self.s.read_u32().await.unwrap();
        if magic == proto::SIMPLE_REPLY_MAGIC {
            let error = self.s.read_u32().await.unwrap();
            let cookie = self.s.read_u64().await.unwrap();
            let mut data = vec![0u8; if error == 0 { read_len } else { 0 }];
            self.s.read_exact(&mut data).await.unwrap();
            return (Reply::Simple { error, cookie }, data);
        }
        assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC);
        let flags = self.s.read_u16().await.unwrap();
        let kind = self.s.read_u16().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        (
            Reply::Chunk(Chunk {
                flags,
                kind,
                cookie,
                data,
            }),
            Vec::new(),
        )
    }
}

pub fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// Starts `serve` on one end of an in-memory pipe; returns the client end
/// and the server's result.
pub fn pipe<E: Exports>(
    exports: Arc<E>,
    config: Config,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<(), sd_nbd::Error>>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let h = tokio::spawn(async move { sd_nbd::serve_with(server, exports, &config).await });
    (client, h)
}
