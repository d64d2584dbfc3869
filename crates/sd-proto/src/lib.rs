//! The Sheepdog wire protocol: headers, opcodes, result codes, object ids,
//! hashes and the fixed-layout structures of the original 1.0 line,
//! encoded and decoded exactly (little-endian, fixed offsets).
//!
//! Pure code: no I/O, no allocation beyond what a caller-sized buffer needs.

pub mod btree;
pub mod consts;
pub mod hash;
pub mod header;
pub mod inode;
pub mod le;
pub mod node;
pub mod oid;
pub mod structs;

pub use btree::{BtreeError, HyperIndex};
pub use consts::*;
pub use hash::*;
pub use header::*;
pub use inode::*;
pub use node::*;
pub use oid::*;
pub use structs::*;
