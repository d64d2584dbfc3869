//! Sheepdog's erasure code (PROTOCOL.md §5.5, §8, §14): a systematic
//! Reed–Solomon code over GF(2^8) (polynomial 0x11D, generator 2) that is
//! byte-compatible with the original's zfec-derived encoder, plus the
//! stripe layout the gateway and recovery use.
//!
//! An object is cut into 512-byte stripes; each stripe into d data strips
//! of 512/d bytes; p parity strips are computed per stripe. Target j
//! stores strip j of every stripe back to back. Because the code works
//! byte by byte, a strip file as a whole is the same linear combination of
//! the data strip files as each stripe's strip is of that stripe's data,
//! so encoding and decoding run over whole strip buffers at once.
//!
//! ```
//! use sd_ec::{Codec, EcPolicy};
//!
//! let policy = EcPolicy::from_copy_policy(0x22).unwrap(); // 4:2
//! let codec = Codec::new(policy).unwrap();
//! let object: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
//! let mut strips = vec![Vec::new(); policy.nr_copies()];
//! codec.encode(&object, &mut strips).unwrap();
//!
//! // Lose two strips, rebuild them, read the object back.
//! let mut stored: Vec<Option<Vec<u8>>> = strips.into_iter().map(Some).collect();
//! stored[0] = None;
//! stored[5] = None;
//! codec.reconstruct(&mut stored).unwrap();
//! let data: Vec<&[u8]> = stored[..4].iter().map(|s| s.as_deref().unwrap()).collect();
//! assert_eq!(codec.join(&data).unwrap(), object);
//! ```

mod codec;
mod gf;
mod kernel;
mod policy;

pub use codec::Codec;
pub use kernel::Kernel;
pub use policy::{EcPolicy, StripeRange, STRIPE_SIZE};

/// Why an erasure-code operation was refused. Every size or index problem
/// in the caller's buffers is reported here rather than panicking, since
/// strip buffers come from the network and from disk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EcError {
    /// d is not 2, 4, 8 or 16, or p is not in 1..=15.
    #[error("invalid erasure-code policy {d}:{p}")]
    InvalidPolicy { d: u8, p: u8 },
    /// The requested kernel cannot run on this CPU.
    #[error("kernel {0:?} is not supported by this CPU")]
    UnsupportedKernel(Kernel),
    /// A buffer length is not a whole number of stripes (objects) or
    /// strips (strip buffers being joined).
    #[error("length {len} is not a multiple of {unit}")]
    Unaligned { len: usize, unit: usize },
    /// The wrong number of strip buffers was passed.
    #[error("expected {expected} strips, got {got}")]
    StripCount { expected: usize, got: usize },
    /// Strip buffers of one call must all have the same length.
    #[error("strip {index} has {got} bytes, expected {expected}")]
    StripLength {
        index: usize,
        expected: usize,
        got: usize,
    },
    /// The object buffer does not match the strips' total size.
    #[error("object buffer has {got} bytes, expected {expected}")]
    ObjectLength { expected: usize, got: usize },
    /// A strip index is not below d + p.
    #[error("strip index {index} out of range for {nr} strips")]
    IndexOutOfRange { index: usize, nr: usize },
    /// The same strip was passed twice as a survivor.
    #[error("strip {0} given twice")]
    DuplicateStrip(usize),
    /// Fewer than d strips survive; the object is lost.
    #[error("{have} strips available, {need} needed to decode")]
    NotEnoughStrips { have: usize, need: usize },
    /// offset + len does not fit in a u64.
    #[error("byte range overflows u64")]
    RangeOverflow,
}
