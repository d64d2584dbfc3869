//! Direct I/O (`sheep -D`): object data read and written with `O_DIRECT`,
//! bypassing the page cache, as the original's `-D`. Reads are already
//! whole checksum blocks (4 KiB, aligned); writes go direct when they are
//! aligned to 4 KiB (what VMs send) and through the page cache otherwise
//! (a sub-block write must read the rest of its block anyway; the kernel
//! keeps the two paths coherent). A filesystem that refuses `O_DIRECT`
//! (tmpfs) is served through the page cache.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

/// The alignment of buffers, offsets and lengths for `O_DIRECT`.
pub const ALIGN: usize = 4096;

/// Whether an I/O of `len` bytes at `offset` can go direct.
pub fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && len > 0
}

/// Opens `path` with `O_DIRECT` (for reading, and writing if `write`);
/// None where the filesystem does not take it.
pub fn open(path: &Path, write: bool) -> std::io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A zeroed heap buffer aligned to [`ALIGN`], as `O_DIRECT` requires (a
/// `Vec<u8>` is only byte-aligned).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: it owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), ALIGN).expect("a buffer size fits a layout")
    }

    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// A copy of `data` in an aligned buffer.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b.copy_from_slice(data);
        b
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized (zeroed) bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn buffers_are_aligned_and_hold_their_bytes() {
        for len in [0, 1, 4096, 12345, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = AlignedBuf::copy_of(&data);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(&b[..], &data[..]);
        }
        assert!(aligned(8192, 4096) && !aligned(512, 4096) && !aligned(0, 512) && !aligned(0, 0));
    }

    #[test]
    fn direct_io_round_trips_where_the_filesystem_takes_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 3 * ALIGN]).unwrap();
        let Some(f) = open(&p, true).unwrap() else {
            return; // e.g. tmpfs: served through the page cache instead
        };
        let data = AlignedBuf::copy_of(&[9u8; ALIGN]);
        f.write_all_at(&data, ALIGN as u64).unwrap();
        let mut back = AlignedBuf::zeroed(3 * ALIGN);
        assert_eq!(
            crate::csum::pread_upto(&f, &mut back, 0).unwrap(),
            3 * ALIGN
        );
        assert!(back[..ALIGN].iter().all(|&b| b == 7));
        assert!(back[ALIGN..2 * ALIGN].iter().all(|&b| b == 9));
        assert!(back[2 * ALIGN..].iter().all(|&b| b == 7));
    }
}
