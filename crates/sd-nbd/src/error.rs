//! Errors: what a backend reports for one request ([`NbdError`]), and why
//! a whole connection ended ([`Error`]).

use std::fmt;

/// The error values NBD allows on the wire. The protocol restricts replies
/// to this set (with Linux errno numbers for compatibility), so a backend
/// must pick one of them instead of passing arbitrary `errno`s through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted (writes to a read-only export).
    Perm = 1,
    /// Input/output error: the catch-all for backend failures.
    Io = 5,
    /// Cannot allocate memory (the spec asks servers to avoid it).
    NoMem = 12,
    /// Invalid argument: bad range, alignment, flags or command.
    Inval = 22,
    /// No space left (also for writes past the end of the export).
    NoSpc = 28,
    /// Value too large.
    Overflow = 75,
    /// Operation not supported: a fast zero that would not be fast.
    NotSup = 95,
    /// The server is shutting down.
    Shutdown = 108,
}

impl Errno {
    /// The value sent in the reply's error field.
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        })
    }
}

/// The failure of one request, as a backend reports it: the NBD error
/// value plus a human-readable message. When structured replies are
/// negotiated the message travels to the client in the error chunk (and
/// qemu prints it), so it should say what failed, e.g. which object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {message}")]
pub struct NbdError {
    pub errno: Errno,
    pub message: String,
}

impl NbdError {
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        NbdError {
            errno,
            message: message.into(),
        }
    }

    pub fn io(message: impl Into<String>) -> Self {
        Self::new(Errno::Io, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Errno::Inval, message)
    }

    pub fn no_space(message: impl Into<String>) -> Self {
        Self::new(Errno::NoSpc, message)
    }

    pub fn perm(message: impl Into<String>) -> Self {
        Self::new(Errno::Perm, message)
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(Errno::NotSup, message)
    }
}

/// Maps OS errors the way the spec asks (`EDQUOT`/`EFBIG` become
/// `ENOSPC`, read-only file systems `EPERM`); anything unrecognised is
/// `EIO`.
impl From<std::io::Error> for NbdError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let errno = match e.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => Errno::Perm,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Errno::NoSpc,
            K::InvalidInput => Errno::Inval,
            K::OutOfMemory => Errno::NoMem,
            K::Unsupported => Errno::NotSup,
            _ => Errno::Io,
        };
        NbdError::new(errno, e.to_string())
    }
}

/// Why a connection ended abnormally. A client that leaves cleanly
/// (`NBD_OPT_ABORT`, `NBD_CMD_DISC`, or closing between messages) is not
/// an error; these are for the daemon's log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed, or the client hung up in the middle of a message.
    #[error("NBD connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke a rule that leaves no way to continue (bad magic,
    /// unknown client flags, an export name the server cannot refuse, an
    /// option length beyond the hard cap).
    #[error("NBD protocol violation: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn errno_values_match_the_spec() {
        let all = [
            (Errno::Perm, 1),
            (Errno::Io, 5),
            (Errno::NoMem, 12),
            (Errno::Inval, 22),
            (Errno::NoSpc, 28),
            (Errno::Overflow, 75),
            (Errno::NotSup, 95),
            (Errno::Shutdown, 108),
        ];
        for (e, v) in all {
            assert_eq!(e.code(), v, "{e}");
        }
    }

    #[test]
    fn io_errors_map_per_spec() {
        let m = |k| NbdError::from(IoError::from(k)).errno;
        assert_eq!(m(ErrorKind::QuotaExceeded), Errno::NoSpc);
        assert_eq!(m(ErrorKind::FileTooLarge), Errno::NoSpc);
        assert_eq!(m(ErrorKind::StorageFull), Errno::NoSpc);
        assert_eq!(m(ErrorKind::ReadOnlyFilesystem), Errno::Perm);
        assert_eq!(m(ErrorKind::UnexpectedEof), Errno::Io);
        let e = NbdError::io("object 7 unreachable");
        assert_eq!(e.to_string(), "EIO: object 7 unreachable");
    }
}
