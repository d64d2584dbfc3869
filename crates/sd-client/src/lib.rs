//! Async client of the sheep protocol: one request/response exchange on a
//! stream, a connection that carries them, and (in `vdi`) the VDI-level
//! read/write path with copy-on-write that dog, the NBD server and tests share.

pub mod conn;
pub mod vdi;

pub use conn::*;
