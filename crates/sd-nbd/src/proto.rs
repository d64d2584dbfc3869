//! Wire constants and pure codecs of the NBD protocol (fixed newstyle
//! handshake, simple and structured replies), as written down in
//! `doc/proto.md` of the NetworkBlockDevice/nbd repository.
//!
//! Everything here is free of I/O so that every decoder can be fed
//! arbitrary bytes by property tests. Decoders never trust a count or a
//! length from the wire to size an allocation: a collection only grows by
//! what the (already bounded) input actually contains.
//!
//! All integers on the wire are big-endian.

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second server magic, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply in fixed newstyle negotiation.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option codes the server understands.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (errors have bit 31 set).
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// Information types in `NBD_REP_INFO` (answers to `NBD_OPT_INFO`/`GO`).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits, sent in `NBD_INFO_EXPORT` or after
/// `NBD_OPT_EXPORT_NAME`).
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Request types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod reply {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const TYPE_NONE: u16 = 0;
    pub const TYPE_OFFSET_DATA: u16 = 1;
    pub const TYPE_OFFSET_HOLE: u16 = 2;
    pub const TYPE_BLOCK_STATUS: u16 = 5;
    pub const TYPE_ERROR: u16 = (1 << 15) + 1;
}

/// `base:allocation` status flags.
pub mod state {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

/// The only metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Longest string (export name, query, message) the spec allows.
pub const MAX_STRING: usize = 4096;

/// Largest READ/WRITE payload the server accepts and advertises (2^25,
/// the size the spec says no client may be refused as denial of service).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Why a byte string could not be decoded. The text goes back to the
/// client inside `NBD_REP_ERR_INVALID`, so it names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub &'static str);

/// A cursor over a borrowed, already length-bounded buffer. Every getter
/// returns `None` instead of reading past the end, so a lying length field
/// turns into a parse error, never into an over-read or a big allocation.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A protocol string: `len` bytes, at most [`MAX_STRING`], UTF-8,
    /// without NUL.
    fn string(&mut self, len: u32, what: &'static str) -> Result<String, ParseError> {
        let len = usize::try_from(len).map_err(|_| ParseError(what))?;
        if len > MAX_STRING {
            return Err(ParseError(what));
        }
        let bytes = self.take(len).ok_or(ParseError(what))?;
        check_string(bytes).ok_or(ParseError(what))
    }
}

/// Validates a protocol string: at most [`MAX_STRING`] bytes of UTF-8
/// without NUL.
pub fn check_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_STRING || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Header of a client option: `IHAVEOPT`, option code, data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub const SIZE: usize = 16;

    /// Decodes the header; `None` if the magic is wrong (the stream cannot
    /// be resynchronised after that, so the caller hangs up).
    pub fn decode(buf: &[u8; Self::SIZE]) -> Option<Self> {
        let magic = u64::from_be_bytes(buf[0..8].try_into().ok()?);
        (magic == IHAVEOPT).then(|| OptionHeader {
            option: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            length: u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]),
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Body of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and the list of
/// information types the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Decodes the option data. The request count must match the bytes
    /// that follow exactly (the spec defines no trailing data).
    pub fn decode(data: &[u8]) -> Result<Self, ParseError> {
        let mut c = Cursor { buf: data };
        let len = c
            .u32()
            .ok_or(ParseError("option too short for name length"))?;
        let name = c.string(len, "bad export name (length, UTF-8 or NUL)")?;
        let n = c
            .u16()
            .ok_or(ParseError("missing information request count"))?;
        if c.buf.len() != usize::from(n) * 2 {
            return Err(ParseError(
                "information request count does not match option length",
            ));
        }
        let requests = c
            .buf
            .chunks_exact(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .collect();
        Ok(InfoRequest { name, requests })
    }
}

/// Body of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`:
/// export name and the context queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaRequest {
    /// Decodes the option data. The query count comes from the wire, so it
    /// is only used to stop the loop; the vector grows with the queries
    /// actually present, each of which costs at least 4 input bytes.
    pub fn decode(data: &[u8]) -> Result<Self, ParseError> {
        let mut c = Cursor { buf: data };
        let len = c
            .u32()
            .ok_or(ParseError("option too short for name length"))?;
        let name = c.string(len, "bad export name (length, UTF-8 or NUL)")?;
        let n = c.u32().ok_or(ParseError("missing query count"))?;
        let mut queries = Vec::new();
        for _ in 0..n {
            let qlen = c
                .u32()
                .ok_or(ParseError("query count exceeds option length"))?;
            queries.push(c.string(qlen, "bad query (length, UTF-8 or NUL)")?);
        }
        if !c.buf.is_empty() {
            return Err(ParseError("trailing bytes after the last query"));
        }
        Ok(MetaRequest { name, queries })
    }
}

/// A transmission request header as it appears on the wire, not yet
/// validated against the export (see `transmission::Command`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub const SIZE: usize = 28;

    /// Decodes a header; `None` if the magic is wrong (the only fatal
    /// error in transmission: the stream cannot be resynchronised).
    pub fn decode(b: &[u8; Self::SIZE]) -> Option<Self> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (magic == REQUEST_MAGIC).then(|| RequestHeader {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Encodes the 20-byte option reply header.
pub fn option_reply_header(option: u32, kind: u32, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&kind.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// Encodes a 16-byte simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Encodes a 20-byte structured reply chunk header.
pub fn structured_reply(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// Truncates `msg` to at most `max` bytes on a character boundary, so an
/// error message always satisfies the spec's string rules.
pub fn truncate_str(msg: &str, max: usize) -> &str {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info_bytes(name: &[u8], reqs: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    fn meta_bytes(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q);
        }
        v
    }

    #[test]
    fn info_request_round_trip() {
        let r = InfoRequest::decode(&info_bytes(b"vdi0", &[info::BLOCK_SIZE, 77])).unwrap();
        assert_eq!(r.name, "vdi0");
        assert_eq!(r.requests, vec![info::BLOCK_SIZE, 77]);
        let r = InfoRequest::decode(&info_bytes(b"", &[])).unwrap();
        assert_eq!(r.name, "");
    }

    #[test]
    fn info_request_rejects_lies() {
        // name length beyond the data
        let mut b = info_bytes(b"abc", &[]);
        b[3] = 200;
        assert!(InfoRequest::decode(&b).is_err());
        // request count beyond the data
        let mut b = info_bytes(b"abc", &[1]);
        let n = b.len();
        b[n - 3] = 2;
        assert!(InfoRequest::decode(&b).is_err());
        // trailing garbage
        let mut b = info_bytes(b"abc", &[1]);
        b.push(0);
        assert!(InfoRequest::decode(&b).is_err());
        // NUL in name, invalid UTF-8, overlong name
        assert!(InfoRequest::decode(&info_bytes(b"a\0b", &[])).is_err());
        assert!(InfoRequest::decode(&info_bytes(&[0xff, 0xfe], &[])).is_err());
        assert!(InfoRequest::decode(&info_bytes(&[b'x'; MAX_STRING + 1], &[])).is_err());
        assert!(InfoRequest::decode(&info_bytes(&[b'x'; MAX_STRING], &[])).is_ok());
        assert!(InfoRequest::decode(&[0, 0]).is_err());
    }

    #[test]
    fn meta_request_round_trip_and_lies() {
        let r = MetaRequest::decode(&meta_bytes(b"v", &[b"base:allocation", b"qemu:x"])).unwrap();
        assert_eq!(r.name, "v");
        assert_eq!(
            r.queries,
            vec!["base:allocation".to_string(), "qemu:x".to_string()]
        );
        // a count of 4 billion queries with no bytes behind it
        let mut b = meta_bytes(b"v", &[]);
        let n = b.len();
        b[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(MetaRequest::decode(&b).is_err());
        let mut b = meta_bytes(b"v", &[b"base:"]);
        b.push(1);
        assert!(MetaRequest::decode(&b).is_err());
    }

    #[test]
    fn request_header_round_trip() {
        let h = RequestHeader {
            flags: 3,
            kind: cmd::WRITE,
            cookie: 0x1122334455667788,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(RequestHeader::decode(&h.encode()), Some(h));
        let mut b = h.encode();
        b[0] ^= 1;
        assert_eq!(RequestHeader::decode(&b), None);
    }

    #[test]
    fn option_header_round_trip() {
        let h = OptionHeader {
            option: opt::GO,
            length: 12,
        };
        assert_eq!(OptionHeader::decode(&h.encode()), Some(h));
        let mut b = h.encode();
        b[7] ^= 1;
        assert_eq!(OptionHeader::decode(&b), None);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("héllo", 3), "hé");
        assert_eq!(truncate_str("abc", 10), "abc");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn info_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = InfoRequest::decode(&data) {
                prop_assert!(r.name.len() <= MAX_STRING);
                prop_assert_eq!(4 + r.name.len() + 2 + 2 * r.requests.len(), data.len());
            }
        }

        #[test]
        fn meta_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = MetaRequest::decode(&data) {
                prop_assert!(r.name.len() <= MAX_STRING);
                let used: usize = 8 + r.name.len() + r.queries.iter().map(|q| 4 + q.len()).sum::<usize>();
                prop_assert_eq!(used, data.len());
            }
        }

        #[test]
        fn meta_decoder_survives_structured_garbage(
            name in proptest::collection::vec(any::<u8>(), 0..40),
            count in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut data = (name.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(&name);
            data.extend_from_slice(&count.to_be_bytes());
            data.extend_from_slice(&tail);
            if let Ok(r) = MetaRequest::decode(&data) {
                prop_assert!(r.queries.len() <= tail.len() / 4);
            }
        }

        #[test]
        fn header_decoders_never_panic(data in proptest::array::uniform28(any::<u8>())) {
            if let Some(h) = RequestHeader::decode(&data) {
                prop_assert_eq!(h.encode(), data);
            }
            let opt: [u8; 16] = data[..16].try_into().unwrap();
            if let Some(h) = OptionHeader::decode(&opt) {
                prop_assert_eq!(h.encode(), opt);
            }
        }

        #[test]
        fn truncate_is_prefix_within_bound(s in ".{0,64}", max in 0usize..80) {
            let t = truncate_str(&s, max);
            prop_assert!(t.len() <= max);
            prop_assert!(s.starts_with(t));
        }
    }
}
