//! The seam between the protocol and the storage: the daemon implements
//! [`Exports`] (name → volume) and [`Export`] (one opened volume).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::NbdError;
use crate::proto::MAX_PAYLOAD;

/// A boxed, `Send` future borrowing from its receiver.
///
/// The backend traits return these instead of using `async fn` in the
/// trait because the server holds exports as `Arc<dyn Export>`: one
/// daemon serves different kinds of volumes (writable VDIs, read-only
/// snapshots) behind one [`Exports`] table, and a trait with `async fn`
/// is not object safe. The cost is one allocation per request, which is
/// noise next to the network round trip and the data buffer itself.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a backend operation.
pub type IoResult<T> = Result<T, NbdError>;

/// Size constraints advertised in `NBD_INFO_BLOCK_SIZE`.
///
/// A plain value type because the server must check every request
/// against it without calling into the backend again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest addressable unit and alignment (power of two, ≤ 64 KiB).
    pub min: u32,
    /// Smallest size with efficient I/O (power of two, ≥ max(min, 512)).
    pub preferred: u32,
    /// Largest READ/WRITE payload (≥ preferred, ≤ 32 MiB here).
    pub max: u32,
}

impl Default for BlockSize {
    /// The spec's defaults: byte-addressable, 4 KiB preferred, 32 MiB max.
    fn default() -> Self {
        BlockSize {
            min: 1,
            preferred: 4096,
            max: MAX_PAYLOAD,
        }
    }
}

impl BlockSize {
    /// Forces the values into what the spec allows and what this server
    /// can buffer, so a misconfigured backend cannot make the server
    /// advertise nonsense or accept payloads beyond its memory bound.
    pub fn sanitized(self) -> Self {
        let min = self.min.clamp(1, 1 << 16).next_power_of_two();
        let preferred = self
            .preferred
            .clamp(min.max(512), 1 << 30)
            .next_power_of_two();
        let max = self.max.clamp(preferred.min(MAX_PAYLOAD), MAX_PAYLOAD);
        BlockSize {
            min,
            preferred: preferred.min(max),
            max,
        }
    }
}

/// One run of `base:allocation` status, as a backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (zero-length extents are ignored).
    pub length: u64,
    /// Not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Known to read as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// Allocated data of unknown content.
    pub fn data(length: u64) -> Self {
        Extent {
            length,
            hole: false,
            zero: false,
        }
    }

    /// Unallocated, reads as zeroes (an unallocated Sheepdog object).
    pub fn hole(length: u64) -> Self {
        Extent {
            length,
            hole: true,
            zero: true,
        }
    }
}

/// How `NBD_CMD_WRITE_ZEROES` may be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The client allows deallocation (`NBD_CMD_FLAG_NO_HOLE` was clear).
    pub may_trim: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail quickly with `ENOTSUP`, without
    /// changing anything, unless zeroing is faster than writing zeroes.
    pub fast_only: bool,
}

/// One opened volume. The server calls it from many tasks at once: one
/// connection pipelines requests, and clients such as `nbdcopy` open
/// several connections.
///
/// Contract, because the server advertises it to clients:
/// * `NBD_FLAG_CAN_MULTI_CONN`: once `write`, `trim`, `write_zeroes` or
///   `flush` completes, its effect is visible to every other connection
///   and opened instance of the same volume (Sheepdog acknowledges a write
///   only after every replica has it, so the gateway has nothing to share).
/// * a `write` with `fua` (and any completed operation before a `flush`
///   completes) is on stable storage when the future resolves.
/// * ranges passed in are already checked: inside `size()`, aligned to
///   `block_size().min`, READ/WRITE no longer than `block_size().max`.
pub trait Export: Send + Sync {
    /// Size in bytes; fixed for the life of the connection.
    fn size(&self) -> u64;

    /// Refuse every write with `EPERM` and advertise `NBD_FLAG_READ_ONLY`
    /// (snapshots).
    fn read_only(&self) -> bool;

    /// Size constraints; the spec's defaults unless overridden.
    fn block_size(&self) -> BlockSize {
        BlockSize::default()
    }

    /// Optional human-readable description (`NBD_INFO_DESCRIPTION`).
    fn description(&self) -> Option<String> {
        None
    }

    /// Fills `buf` with the bytes at `offset`. The server owns the buffer
    /// (and so bounds the memory of every request); the backend fills it.
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, IoResult<()>>;

    /// Writes `data` at `offset`; `fua` asks for stable storage before the
    /// future resolves.
    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> BoxFuture<'a, IoResult<()>>;

    /// Makes every completed write durable.
    fn flush(&self) -> BoxFuture<'_, IoResult<()>>;

    /// Discards a range (a hint: the backend may do nothing, or less).
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<()>>;

    /// Makes a range read back as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BoxFuture<'_, IoResult<()>>;

    /// Allocation status of the range starting at `offset`: consecutive
    /// extents from `offset`, covering at most `len` bytes (the server
    /// clips anything longer and reports "data" for anything not covered
    /// if the answer is empty). Holes should be whole objects.
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, IoResult<Vec<Extent>>>;
}

/// The table of volumes a server offers, looked up by export name.
///
/// `open` is async (and fallible beyond "not found") because for the
/// daemon it means a VDI lookup and an inode read over the cluster.
pub trait Exports: Send + Sync + 'static {
    /// Opens the export called `name` (`""` is the default export).
    /// `Ok(None)` means there is no such export (`NBD_REP_ERR_UNKNOWN`).
    /// An error is reported to the client: `EPERM` as
    /// `NBD_REP_ERR_POLICY`, `ESHUTDOWN` as `NBD_REP_ERR_SHUTDOWN`,
    /// anything else as `NBD_REP_ERR_UNKNOWN` with the message.
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, IoResult<Option<Arc<dyn Export>>>>;

    /// Names for `NBD_OPT_LIST`.
    fn list(&self) -> BoxFuture<'_, IoResult<Vec<String>>>;
}

/// Calls a backend method and runs its future, turning a panic in either
/// (some implementations do work before boxing their future) into `EIO`.
/// A backend bug then fails one request instead of silently dropping its
/// reply, which would leave the client waiting forever for that cookie.
pub(crate) async fn guarded<'a, T>(
    call: impl FnOnce() -> BoxFuture<'a, IoResult<T>>,
) -> IoResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(fut) => CatchPanic(fut).await,
        Err(panic) => Err(panicked(&panic)),
    }
}

/// Polls a boxed (hence `Unpin`, so no pin projection) backend future
/// inside `catch_unwind`.
struct CatchPanic<'a, T>(BoxFuture<'a, IoResult<T>>);

impl<T> Future for CatchPanic<'_, T> {
    type Output = IoResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(panic) => Poll::Ready(Err(panicked(&panic))),
        }
    }
}

fn panicked(p: &Box<dyn Any + Send>) -> NbdError {
    let msg = p
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string payload)");
    NbdError::io(format!("backend panicked: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid(b: BlockSize) -> bool {
        b.min.is_power_of_two()
            && b.min <= 1 << 16
            && b.preferred.is_power_of_two()
            && b.preferred >= b.min.max(512)
            && b.max >= b.preferred
            && b.max <= MAX_PAYLOAD
    }

    #[test]
    fn defaults_are_valid() {
        assert!(valid(BlockSize::default()));
        assert_eq!(BlockSize::default().sanitized(), BlockSize::default());
    }

    proptest! {
        #[test]
        fn sanitized_is_always_valid(min: u32, preferred: u32, max: u32) {
            let b = BlockSize { min, preferred, max }.sanitized();
            prop_assert!(valid(b), "{:?}", b);
        }
    }

    #[tokio::test]
    async fn panics_become_eio() {
        let err = guarded(|| -> BoxFuture<'_, IoResult<()>> { Box::pin(async { panic!("boom") }) })
            .await
            .unwrap_err();
        assert_eq!(err.errno, crate::Errno::Io);
        assert!(err.message.contains("boom"), "{}", err.message);
        let err =
            guarded(|| -> BoxFuture<'_, IoResult<()>> { panic!("{}", String::from("eager")) })
                .await
                .unwrap_err();
        assert!(err.message.contains("eager"), "{}", err.message);
        assert_eq!(
            guarded(|| -> BoxFuture<'_, IoResult<u8>> { Box::pin(async { Ok(3) }) }).await,
            Ok(3)
        );
    }
}
