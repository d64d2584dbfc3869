//! Opcodes, request flags, cluster flags, limits and result codes
//! (PROTOCOL.md §3–§5.2), with the exact numeric values of the original.

/// Default TCP port of sheep.
pub const SD_LISTEN_PORT: u16 = 7000;
/// `proto_ver` of public opcodes as sent by dog.
pub const SD_PROTO_VER: u8 = 0x02;
/// `proto_ver` of internal opcodes (>= 0x80) and of `cluster_info`.
pub const SD_SHEEP_PROTO_VER: u8 = 0x0a;
/// Size of every request and response header.
pub const SD_HEADER_SIZE: usize = 48;

/// Largest `data_length` the server accepts. The original has no bound; the
/// largest legitimate sizes are the full inode (12,587,576 B) and multi-MiB
/// object lists, so 64 MiB leaves room while bounding what a bad client can
/// make us allocate.
pub const SD_MAX_DATA_LENGTH: u32 = 64 << 20;

pub const SD_NR_VDIS: u32 = 1 << 24;
pub const SD_MAX_VDI_LEN: usize = 256;
pub const SD_MAX_VDI_TAG_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_KEY_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_VALUE_LEN: usize = 65536;
pub const SD_INODE_DATA_INDEX: u32 = 1 << 20;
pub const SD_DEFAULT_COPIES: u8 = 3;
pub const SD_MAX_COPIES: u8 = 31;
pub const SD_DEFAULT_VNODES: u16 = 128;
pub const SD_MAX_NODES: usize = 6144;
pub const SD_DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
pub const SD_DATA_OBJ_SIZE: u64 = 1 << 22;
pub const SD_MAX_VDI_SIZE: u64 = 1 << 54;
/// Size of the in-use / deleted VDI bitmaps in bytes (2^24 bits).
pub const SD_VDI_BITMAP_SIZE: usize = (SD_NR_VDIS / 8) as usize;
pub const SD_FORMAT_VERSION: u16 = 0x0006;

/// Request opcodes.
pub mod op {
    pub const CREATE_AND_WRITE_OBJ: u8 = 0x01;
    pub const READ_OBJ: u8 = 0x02;
    pub const WRITE_OBJ: u8 = 0x03;
    pub const REMOVE_OBJ: u8 = 0x04;
    pub const DISCARD_OBJ: u8 = 0x05;

    pub const NEW_VDI: u8 = 0x11;
    pub const LOCK_VDI: u8 = 0x12;
    pub const RELEASE_VDI: u8 = 0x13;
    pub const GET_VDI_INFO: u8 = 0x14;
    pub const READ_VDIS: u8 = 0x15;
    pub const FLUSH_VDI: u8 = 0x16;
    pub const DEL_VDI: u8 = 0x17;
    pub const GET_CLUSTER_DEFAULT: u8 = 0x18;

    pub const GET_NODE_LIST: u8 = 0x82;
    pub const MAKE_FS: u8 = 0x84;
    pub const SHUTDOWN: u8 = 0x85;
    pub const STAT_SHEEP: u8 = 0x86;
    pub const STAT_CLUSTER: u8 = 0x87;
    pub const GET_VDI_ATTR: u8 = 0x89;
    pub const FORCE_RECOVER: u8 = 0x8A;
    pub const GET_STORE_LIST: u8 = 0x90;
    pub const CLEANUP: u8 = 0x94;
    pub const TRACE_STATUS: u8 = 0x95;
    pub const TRACE_READ_BUF: u8 = 0x96;
    pub const STAT_RECOVERY: u8 = 0x97;
    pub const FLUSH_DEL_CACHE: u8 = 0x98;
    pub const NOTIFY_VDI_DEL: u8 = 0x99;
    pub const KILL_NODE: u8 = 0x9A;
    pub const GET_OBJ_LIST: u8 = 0xA1;
    pub const GET_EPOCH: u8 = 0xA2;
    pub const CREATE_AND_WRITE_PEER: u8 = 0xA3;
    pub const READ_PEER: u8 = 0xA4;
    pub const WRITE_PEER: u8 = 0xA5;
    pub const REMOVE_PEER: u8 = 0xA6;
    pub const ENABLE_RECOVER: u8 = 0xA8;
    pub const DISABLE_RECOVER: u8 = 0xA9;
    pub const GET_VDI_COPIES: u8 = 0xAB;
    pub const COMPLETE_RECOVERY: u8 = 0xAC;
    pub const NOTIFY_VDI_ADD: u8 = 0xAF;
    pub const DELETE_CACHE: u8 = 0xB0;
    pub const MD_INFO: u8 = 0xB1;
    pub const MD_PLUG: u8 = 0xB2;
    pub const MD_UNPLUG: u8 = 0xB3;
    pub const GET_HASH: u8 = 0xB4;
    pub const REWEIGHT: u8 = 0xB5;
    pub const STAT: u8 = 0xB8;
    pub const GET_LOGLEVEL: u8 = 0xB9;
    pub const SET_LOGLEVEL: u8 = 0xBA;
    pub const EXIST: u8 = 0xBD;
    pub const CLUSTER_INFO: u8 = 0xBE;
    pub const ALTER_CLUSTER_COPY: u8 = 0xBF;
    pub const ALTER_VDI_COPY: u8 = 0xC0;
    pub const DECREF_OBJ: u8 = 0xC1;
    pub const DECREF_PEER: u8 = 0xC2;
    pub const REPAIR_REPLICA: u8 = 0xC5;
    pub const OIDS_EXIST: u8 = 0xC6;
    pub const VDI_STATE_CHECKPOINT_CTL: u8 = 0xC7;
    pub const INODE_COHERENCE: u8 = 0xC8;
    pub const READ_DEL_VDIS: u8 = 0xC9;
    pub const GET_RECOVERY: u8 = 0xCA;
    pub const SET_RECOVERY: u8 = 0xCB;
    pub const SET_VNODES: u8 = 0xCC;
    pub const GET_VNODES: u8 = 0xCD;
    /// This project's extension (not in the original): the node's
    /// background workers, an array of `WorkerRecord` (`dog node worker`).
    pub const WORKER_STATUS: u8 = 0xE0;
    /// This project's extension: start, stop or report the node's scrub
    /// (`args[0]`: `scrub_cmd`); replies a `ScrubStatus`.
    pub const SCRUB: u8 = 0xE1;
    /// This project's extension: the digest of a node's copy of `oid`
    /// from its blocks' checksums (`SdRsp::obj_digest`), for the scrub
    /// to compare replicas without reading them again.
    pub const GET_DIGEST: u8 = 0xE2;

    /// Maps a gateway object opcode to the peer opcode it is forwarded as.
    pub fn gateway_to_peer(opcode: u8) -> Option<u8> {
        Some(match opcode {
            CREATE_AND_WRITE_OBJ => CREATE_AND_WRITE_PEER,
            READ_OBJ => READ_PEER,
            WRITE_OBJ => WRITE_PEER,
            REMOVE_OBJ => REMOVE_PEER,
            DECREF_OBJ => DECREF_PEER,
            _ => return None,
        })
    }
}

/// Request flags (`sd_req.flags`).
pub mod flag {
    pub const CMD_WRITE: u16 = 0x0001;
    pub const CMD_COW: u16 = 0x0002;
    pub const CMD_CACHE: u16 = 0x0004;
    pub const CMD_DIRECT: u16 = 0x0008;
    pub const CMD_PIGGYBACK: u16 = 0x0010;
    pub const CMD_TGT: u16 = 0x0020;
    pub const CMD_FWD: u16 = 0x0040;
    pub const CMD_RECOVERY: u16 = 0x0080;
    pub const CMD_WILDCARD: u16 = 0x0100;
    pub const CMD_CREAT: u16 = 0x0100;
    pub const CMD_EXCL: u16 = 0x0200;
    pub const CMD_DEL: u16 = 0x0400;
}

/// Cluster flags (MAKE_FS `cluster.flags`, config, cluster_info).
pub mod cluster_flag {
    pub const STRICT: u16 = 0x0001;
    pub const DISKMODE: u16 = 0x0002;
    pub const AUTO_VNODES: u16 = 0x0004;
    pub const USE_LOCK: u16 = 0x0008;
    pub const RECYCLE_VID: u16 = 0x0010;
    pub const AVOID_DISKFULL: u16 = 0x0020;
}

/// A `SD_RES_*` result code as carried in `sd_rsp.result`.
///
/// A newtype rather than an enum: the wire may carry any u32 and dog must
/// print unknown codes as `Invalid error code <hex>`, so every value has to
/// be representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SdRes(pub u32);

macro_rules! results {
    ($($name:ident = $val:expr, $msg:expr;)*) => {
        impl SdRes {
            $(pub const $name: SdRes = SdRes($val);)*
            /// The message dog prints for this code (CLI.md §1.17), if any.
            pub fn message(self) -> Option<&'static str> {
                match self.0 {
                    $($val => $msg,)*
                    _ => None,
                }
            }
            /// The symbolic name, for logs.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => stringify!($name),)*
                    _ => "UNKNOWN_CODE",
                }
            }
        }
    };
}

results! {
    SUCCESS = 0x00, Some("Success");
    UNKNOWN = 0x01, Some("Unknown error");
    NO_OBJ = 0x02, Some("No object found");
    EIO = 0x03, Some("I/O error");
    VDI_EXIST = 0x04, Some("VDI exists already");
    INVALID_PARMS = 0x05, Some("Invalid parameters");
    SYSTEM_ERROR = 0x06, Some("System error");
    VDI_LOCKED = 0x07, Some("VDI is already locked");
    NO_VDI = 0x08, Some("No VDI found");
    NO_BASE_VDI = 0x09, Some("No base VDI found");
    VDI_READ = 0x0A, Some("Failed to read from requested VDI");
    VDI_WRITE = 0x0B, Some("Failed to write to requested VDI");
    BASE_VDI_READ = 0x0C, Some("Failed to read from base VDI");
    BASE_VDI_WRITE = 0x0D, Some("Failed to write to base VDI");
    NO_TAG = 0x0E, Some("Failed to find requested tag");
    STARTUP = 0x0F, Some("System is still booting");
    VDI_NOT_LOCKED = 0x10, Some("VDI is not locked");
    SHUTDOWN = 0x11, Some("System is shutting down");
    NO_MEM = 0x12, Some("Out of memory on server");
    FULL_VDI = 0x13, Some("Maximum number of VDIs reached");
    VER_MISMATCH = 0x14, Some("Protocol version mismatch");
    NO_SPACE = 0x15, Some("Server has no space for new objects");
    WAIT_FOR_FORMAT = 0x16, Some("Waiting for cluster to be formatted");
    WAIT_FOR_JOIN = 0x17, Some("Waiting for other nodes to join cluster");
    JOIN_FAILED = 0x18, Some("Node has failed to join cluster");
    HALT = 0x19, Some("IO has halted as there are not enough living nodes");
    READONLY = 0x1A, Some("Object is read-only");
    INODE_INVALIDATED = 0x1D, Some("Inode object is invalidated");
    OLD_NODE_VER = 0x81, Some("Request has an old epoch");
    NEW_NODE_VER = 0x82, Some("Request has a new epoch");
    NOT_FORMATTED = 0x83, Some("Cluster has not been formatted");
    INVALID_CTIME = 0x84, Some("Creation times differ");
    INVALID_EPOCH = 0x85, Some("Invalid epoch");
    NETWORK_ERROR = 0x86, Some("Network error between sheep");
    NO_CACHE = 0x87, Some("No cache object found");
    BUFFER_SMALL = 0x88, Some("The buffer is too small");
    FORCE_RECOVER = 0x89, Some("Cluster is running/halted and cannot be force recovered");
    NO_STORE = 0x8A, Some("Targeted backend store is not found");
    NO_SUPPORT = 0x8B, Some("Operation is not supported");
    NODE_IN_RECOVERY = 0x8C, Some("Targeted node is in recovery");
    KILLED = 0x8D, Some("Node is killed");
    OID_EXIST = 0x8E, Some("Object ID exists already");
    AGAIN = 0x8F, Some("Ask to try again");
    STALE_OBJ = 0x90, Some("Object may be stale");
    CLUSTER_ERROR = 0x91, Some("Cluster driver error");
    VDI_NOT_EMPTY = 0x92, None;
    NOT_FOUND = 0x93, None;
    INCOMPLETE = 0x94, None;
    COLLECTING_CINFO = 0x95, None;
    GATEWAY_MODE = 0x97, Some("Targeted node is gateway mode");
    INVALID_VNODES_STRATEGY = 0x98, Some("Invalid cluster vnodes strategy");
    NO_CHECKPOINT_ENTRY = 0x99, None;
}

impl SdRes {
    pub fn is_success(self) -> bool {
        self == SdRes::SUCCESS
    }
    /// The text dog prints for this code: the message, or
    /// `Invalid error code <hex>` for codes without one.
    pub fn describe(self) -> String {
        match self.message() {
            Some(m) => m.to_string(),
            None => format!("Invalid error code {:x}", self.0),
        }
    }
}

impl std::fmt::Display for SdRes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}
