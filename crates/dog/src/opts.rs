//! Option values and their validation (CLI.md §1.2, §1.19).
//!
//! The original keeps one global struct of option values per command
//! (`vdi_cmd_data`, `cluster_cmd_data`, …) filled by a per-command parser
//! that may print an error and `exit()` on the spot. [`Opts`] holds the
//! values the implemented subcommands read; options of subcommands that
//! are not implemented yet are still validated exactly (so their errors
//! and exit codes are right) but their values are not kept.

use crate::cnum::{atoi, is_numeric, strtol, strtoull};
use crate::{err, End, Res};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// All option values of one invocation.
#[derive(Debug)]
pub struct Opts {
    /// The sheep dog talks to first (`-a`, `-p`, environment).
    pub target: SocketAddr,
    pub raw: bool,
    pub verbose: bool,
    pub elapsed: bool,
    pub vdi: VdiOpts,
    pub cluster: ClusterOpts,
    pub node: NodeOpts,
}

/// Values of `vdi` options.
#[derive(Debug)]
pub struct VdiOpts {
    /// `-i`; `u64::MAX` = not given (the original's `~0`).
    pub index: u64,
    /// `-s` as a number (0 = none); C `int`.
    pub snapshot_id: i32,
    /// `-s` as a tag (at most 255 bytes).
    pub snapshot_tag: Vec<u8>,
    pub prealloc: bool,
    pub writeback: bool,
    /// `-c`: total copies (0 = cluster default) and EC policy byte.
    pub nr_copies: u8,
    pub copy_policy: u8,
    /// `-z` (0 = cluster default).
    pub block_size_shift: u8,
    /// `-y`: 1 = hyper volume.
    pub store_policy: u8,
    /// `-o` (0 = not given).
    pub oid: u64,
    /// `-B` (0 = default 128).
    pub nr_batched_reclamation: i32,
    /// `-I` seconds (0 = none).
    pub reclamation_interval: i32,
    /// `-m` (0 = no limit).
    pub nr_max_reclaim: i32,
    /// `-n`: clone without sharing objects with the parent.
    pub no_share: bool,
    /// `-x`: setattr fails if the key exists.
    pub exclusive: bool,
    /// `-d`: setattr deletes the key.
    pub delete: bool,
    /// `-f`: no confirmation prompt.
    pub force: bool,
    /// `-F` as a number (0 = none); C `int`.
    pub from_snapshot_id: i32,
    /// `-F` as a tag (at most 255 bytes).
    pub from_snapshot_tag: Vec<u8>,
    /// `-e`: vdi check only looks for missing copies.
    pub exist: bool,
    /// `-R`: no snapshot of a VDI that owns no objects.
    pub reduce_identical_snapshots: bool,
}

/// Values of `cluster` options.
#[derive(Debug, Default)]
pub struct ClusterOpts {
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub force: bool,
    pub strict: bool,
    pub diff: bool,
    /// `-b` store name (at most 15 bytes).
    pub store: Vec<u8>,
    pub fixed_vnodes: bool,
    pub use_lock: bool,
    pub recycle_vid: bool,
    pub avoid_diskfull: bool,
}

/// Values of `node` options.
#[derive(Debug, Default)]
pub struct NodeOpts {
    pub progress: bool,
    pub local: bool,
    /// `-A`: md info of every node.
    pub all: bool,
    /// `-f`: md plug/unplug without the prompt.
    pub force: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            target: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sd_proto::SD_LISTEN_PORT),
            raw: false,
            verbose: false,
            elapsed: false,
            vdi: VdiOpts {
                index: u64::MAX,
                snapshot_id: 0,
                snapshot_tag: Vec::new(),
                prealloc: false,
                writeback: false,
                nr_copies: 0,
                copy_policy: 0,
                block_size_shift: 0,
                store_policy: 0,
                oid: 0,
                nr_batched_reclamation: 0,
                reclamation_interval: 0,
                nr_max_reclaim: 0,
                no_share: false,
                exclusive: false,
                delete: false,
                force: false,
                from_snapshot_id: 0,
                from_snapshot_tag: Vec::new(),
                exist: false,
                reduce_identical_snapshots: false,
            },
            cluster: ClusterOpts::default(),
            node: NodeOpts::default(),
        }
    }
}

/// Resolves `-a` / `SHEEPDOG_DOG_ADDR` like the original's `str_to_addr`
/// (getaddrinfo, first result; hostnames allowed).
pub fn set_address(o: &mut Opts, arg: &[u8]) -> Res<()> {
    let ip = std::str::from_utf8(arg)
        .ok()
        .and_then(|h| (h, 0).to_socket_addrs().ok())
        .and_then(|mut it| it.next())
        .map(|a| a.ip());
    match ip {
        Some(ip) => {
            o.target.set_ip(ip);
            Ok(())
        }
        None => {
            crate::out::Msg::new().s("Invalid ip address ").b(arg).err();
            Err(End::Exit(1))
        }
    }
}

/// Validates `-p` / `SHEEPDOG_DOG_PORT`: all digits, and 1..65535 after
/// the original's `(int)strtol` (so `4294974296` is port 7000).
pub fn set_port(o: &mut Opts, arg: &[u8]) -> Res<()> {
    let v = strtol(arg, 10).0 as i32;
    if !is_numeric(arg) || !(1..=65535).contains(&v) {
        crate::out::Msg::new()
            .s("Invalid port number '")
            .b(arg)
            .s("'")
            .err();
        return Err(End::Exit(64));
    }
    o.target.set_port(v as u16);
    Ok(())
}

/// The original's `parse_copy`: `x` replicas (1..31) or `x:y` erasure
/// coding; returns (total copies, copy_policy). Tokens are split like
/// `strtok(":")` (empty tokens skipped). Arguments of 10 bytes or more
/// (which overflowed the original's buffer) are rejected.
pub fn parse_copy(s: &[u8]) -> Option<(u8, u8)> {
    if s.len() >= 10 {
        return None;
    }
    let mut toks = s.split(|&c| c == b':').filter(|t| !t.is_empty());
    let n1 = toks.next()?;
    let n2 = toks.next();
    if !is_numeric(n1) || n2.is_some_and(|t| !is_numeric(t)) {
        return None;
    }
    let copy = strtol(n1, 10).0 as u8;
    if copy > sd_proto::SD_MAX_COPIES {
        return None;
    }
    let Some(n2) = n2 else {
        return (copy != 0).then_some((copy, 0));
    };
    if ![2, 4, 8, 16].contains(&copy) {
        return None;
    }
    let parity = strtol(n2, 10).0 as u8;
    if parity == 0 || parity >= 16 {
        return None;
    }
    Some((copy + parity, ((copy / 2) << 4) + parity))
}

fn copies_error(arg: &[u8]) -> End {
    crate::out::Msg::new()
        .s("Invalid parameter ")
        .b(arg)
        .s("\nTo create replicated vdi, set -c x\n  x(1 to 31)   - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips")
        .err();
    End::Exit(1)
}

fn shift_error(shift: u32) -> Option<End> {
    if shift > 31 {
        err!("Object Size is limited to 2^31. Please set shift bit lower than 31");
        Some(End::Exit(1))
    } else if shift < 20 {
        err!("Object Size is larger than 2^20. Please set shift bit larger than 20");
        Some(End::Exit(1))
    } else {
        None
    }
}

/// A positive `-B`/`-I`/`-m` value (C `int` from `strtol`).
fn positive(arg: &[u8], what: &str) -> Res<i32> {
    let (v, n) = strtol(arg, 10);
    if n == 0 {
        crate::out::Msg::new()
            .s(&format!("The {what} is invalid: "))
            .b(arg)
            .err();
        return Err(End::Exit(1));
    }
    let v = v as i32;
    if v <= 0 {
        err!("The {what} must bepositive integer");
        return Err(End::Exit(1));
    }
    Ok(v)
}

/// Applies one `vdi` option.
pub fn vdi_option(o: &mut VdiOpts, ch: u8, arg: &[u8]) -> Res<()> {
    match ch {
        b'P' => o.prealloc = true,
        b'i' => {
            let base = if arg.starts_with(b"0x") { 16 } else { 10 };
            let (v, n) = strtol(arg, base);
            if n == 0 {
                err!(
                    "The index must be a decimal integer or a hexadecimal integer started with 0x"
                );
                return Err(End::Exit(1));
            }
            o.index = v as u64;
        }
        b's' => {
            let (id, tag) = snapshot_arg(arg);
            (o.snapshot_id, o.snapshot_tag) = (id.unwrap_or(0), tag);
            if id == Some(0) {
                err!("The snapshot id must be larger than zero");
                return Err(End::Exit(1));
            }
        }
        b'F' => {
            let (id, tag) = snapshot_arg(arg);
            (o.from_snapshot_id, o.from_snapshot_tag) = (id.unwrap_or(0), tag);
        }
        b'n' => o.no_share = true,
        b'x' => o.exclusive = true,
        b'd' => o.delete = true,
        b'f' => o.force = true,
        b'e' => o.exist = true,
        b'R' => o.reduce_identical_snapshots = true,
        b'w' => o.writeback = true,
        b'c' => {
            let (c, p) = parse_copy(arg).ok_or_else(|| copies_error(arg))?;
            o.nr_copies = c;
            o.copy_policy = p;
        }
        b'y' => {
            o.store_policy = 1;
            if o.block_size_shift != 0 {
                err!("Don't specify both -y and -z options, please");
                return Err(End::Exit(1));
            }
        }
        b'o' => {
            let (v, n) = strtoull(arg, 16);
            if n == 0 {
                err!("object id must be a hex integer");
                return Err(End::Exit(1));
            }
            o.oid = v;
        }
        b'z' => {
            let shift = atoi(arg) as u8;
            if let Some(e) = shift_error(shift as u32) {
                return Err(e);
            }
            if o.store_policy == 1 {
                err!("Don't specify both -y and -z options, please");
                return Err(End::Exit(1));
            }
            o.block_size_shift = shift;
        }
        b'B' => o.nr_batched_reclamation = positive(arg, "number of batched reclamation")?,
        b'I' => o.reclamation_interval = positive(arg, "interval of batched reclamation")?,
        b'm' => o.nr_max_reclaim = positive(arg, "maximum number of reclamation")?,
        _ => {}
    }
    Ok(())
}

/// `-s` / `-F`: a whole decimal integer is a snapshot id (C `int` of
/// `strtol`), anything else a tag truncated to 255 bytes. Returns the id
/// (if the argument is one) and the tag (empty for an id).
fn snapshot_arg(arg: &[u8]) -> (Option<i32>, Vec<u8>) {
    let (v, n) = strtol(arg, 10);
    if n == 0 || n != arg.len() {
        let tag = &arg[..arg.len().min(sd_proto::SD_MAX_VDI_TAG_LEN - 1)];
        (None, tag.to_vec())
    } else {
        (Some(v as i32), Vec::new())
    }
}

/// Applies one `cluster` option.
pub fn cluster_option(o: &mut ClusterOpts, ch: u8, arg: &[u8]) -> Res<()> {
    match ch {
        b'b' => o.store = arg[..arg.len().min(15)].to_vec(),
        b'c' => {
            let (c, p) = parse_copy(arg).ok_or_else(|| copies_error(arg))?;
            o.copies = c;
            o.copy_policy = p;
        }
        b'f' => o.force = true,
        b'l' => o.use_lock = true,
        // QUIRK: -m (multithread) falls through to -t in the original.
        b'm' | b't' => o.strict = true,
        b'z' => {
            let shift = atoi(arg) as u32;
            if let Some(e) = shift_error(shift) {
                return Err(e);
            }
            o.block_size_shift = shift as u8;
        }
        b'V' => o.fixed_vnodes = true,
        b'R' => o.recycle_vid = true,
        b'd' => o.diff = true,
        b'F' => o.avoid_diskfull = true,
        _ => {}
    }
    Ok(())
}

/// Applies one `node` option.
pub fn node_option(o: &mut NodeOpts, ch: u8) {
    match ch {
        b'P' => o.progress = true,
        b'l' => o.local = true,
        b'A' => o.all = true,
        b'f' => o.force = true,
        // w (stat): not implemented yet.
        _ => {}
    }
}

/// Validates one `upgrade` option (`-o v0.7|v0.8`).
pub fn upgrade_option(ch: u8, arg: &[u8]) -> Res<()> {
    if ch == b'o' && arg != b"v0.7" && arg != b"v0.8" {
        crate::out::Msg::new()
            .s("unknown original version: ")
            .b(arg)
            .err();
        err!("valid versions are v0.7 or v0.8");
        return Err(End::Exit(1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_rules() {
        assert_eq!(parse_copy(b"3"), Some((3, 0)));
        assert_eq!(parse_copy(b"31"), Some((31, 0)));
        assert_eq!(parse_copy(b"4:2"), Some((6, 0x22)));
        assert_eq!(parse_copy(b"16:15"), Some((31, 0x8f)));
        assert_eq!(parse_copy(b"2:1"), Some((3, 0x11)));
        assert_eq!(parse_copy(b"3:"), Some((3, 0)));
        for bad in [
            &b"0"[..],
            b"something",
            b"4:0",
            b"3:1",
            b"+3",
            b"32",
            b"",
            b":",
            b"4:16",
            b"4:x",
            b"1234567890",
        ] {
            assert_eq!(parse_copy(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // u8 truncation of strtol, as in the original.
        assert_eq!(parse_copy(b"257"), Some((1, 0)));
    }

    #[test]
    fn port_rules() {
        let mut o = Opts::default();
        assert!(set_port(&mut o, b"7001").is_ok());
        assert_eq!(o.target.port(), 7001);
        assert!(set_port(&mut o, b"4294974296").is_ok());
        assert_eq!(o.target.port(), 7000);
        for bad in [&b"0"[..], b"70000", b"+1", b"1a", b"", b"65536"] {
            assert!(matches!(set_port(&mut o, bad), Err(End::Exit(64))));
        }
    }

    #[test]
    fn snapshot_and_index() {
        let mut v = Opts::default().vdi;
        vdi_option(&mut v, b's', b"12").unwrap();
        assert_eq!((v.snapshot_id, v.snapshot_tag.as_slice()), (12, &b""[..]));
        vdi_option(&mut v, b's', b"12a").unwrap();
        assert_eq!((v.snapshot_id, v.snapshot_tag.as_slice()), (0, &b"12a"[..]));
        assert!(matches!(vdi_option(&mut v, b's', b"0"), Err(End::Exit(1))));
        assert!(matches!(
            vdi_option(&mut v, b's', b"4294967296"),
            Err(End::Exit(1))
        ));
        vdi_option(&mut v, b'i', b"0x1f").unwrap();
        assert_eq!(v.index, 31);
        vdi_option(&mut v, b'i', b"0X10").unwrap();
        assert_eq!(v.index, 0);
        vdi_option(&mut v, b'i', b"-1").unwrap();
        assert_eq!(v.index, u64::MAX);
        assert!(matches!(vdi_option(&mut v, b'i', b"x"), Err(End::Exit(1))));
        vdi_option(&mut v, b'z', b"276").unwrap();
        assert_eq!(v.block_size_shift, 20);
        assert!(matches!(vdi_option(&mut v, b'y', b""), Err(End::Exit(1))));
        assert!(matches!(vdi_option(&mut v, b'B', b"0"), Err(End::Exit(1))));
        vdi_option(&mut v, b'B', b"5x").unwrap();
        assert_eq!(v.nr_batched_reclamation, 5);
    }
}
