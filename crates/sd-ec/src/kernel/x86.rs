//! SSSE3 and AVX2 kernels: split-nibble table lookups with `pshufb`.
//!
//! For each vector of input bytes x, `lo = x & 15` and `hi = x >> 4` index
//! the two 16-entry tables of a coefficient c with one shuffle each, and
//! `c·x = lo_table[lo] ^ hi_table[hi]`. One generic loop ([`dot`]) is
//! instantiated per vector width and per number of outputs (so the
//! accumulators are a fixed-size array the compiler keeps in registers);
//! the `#[target_feature]` entry points make the intrinsics inline.

use core::arch::x86_64::*;

use super::{dot_scalar, Geometry, NibbleTable, MAX_GROUP, MAX_INPUTS};

/// One SIMD register of bytes and the handful of operations [`dot`] needs.
trait Vector: Copy {
    const LANES: usize;
    /// # Safety
    /// `p..p + LANES` readable; the CPU supports the instruction set.
    unsafe fn load(p: *const u8) -> Self;
    /// # Safety
    /// `p..p + LANES` writable; the CPU supports the instruction set.
    unsafe fn store(self, p: *mut u8);
    /// # Safety
    /// The CPU supports the instruction set.
    unsafe fn zero() -> Self;
    /// `(x & 15, x >> 4)` per byte.
    ///
    /// # Safety
    /// The CPU supports the instruction set.
    unsafe fn nibbles(self) -> (Self, Self);
    /// `self ^ t.lo[lo] ^ t.hi[hi]` per byte.
    ///
    /// # Safety
    /// The CPU supports the instruction set.
    unsafe fn mul_acc(self, t: &NibbleTable, lo: Self, hi: Self) -> Self;
}

#[derive(Clone, Copy)]
struct Sse(__m128i);

impl Vector for Sse {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        Sse(_mm_loadu_si128(p.cast()))
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        _mm_storeu_si128(p.cast(), self.0)
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        Sse(_mm_setzero_si128())
    }

    #[inline(always)]
    unsafe fn nibbles(self) -> (Self, Self) {
        let mask = _mm_set1_epi8(0x0f);
        (
            Sse(_mm_and_si128(self.0, mask)),
            Sse(_mm_and_si128(_mm_srli_epi16(self.0, 4), mask)),
        )
    }

    #[inline(always)]
    unsafe fn mul_acc(self, t: &NibbleTable, lo: Self, hi: Self) -> Self {
        // NibbleTable is 32-byte aligned and both halves start on a
        // 32-byte boundary, so aligned loads are valid.
        let tl = _mm_load_si128(t.lo.as_ptr().cast());
        let th = _mm_load_si128(t.hi.as_ptr().cast());
        let p = _mm_xor_si128(_mm_shuffle_epi8(tl, lo.0), _mm_shuffle_epi8(th, hi.0));
        Sse(_mm_xor_si128(self.0, p))
    }
}

#[derive(Clone, Copy)]
struct Avx2(__m256i);

impl Vector for Avx2 {
    const LANES: usize = 32;

    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        Avx2(_mm256_loadu_si256(p.cast()))
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        _mm256_storeu_si256(p.cast(), self.0)
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(_mm256_setzero_si256())
    }

    #[inline(always)]
    unsafe fn nibbles(self) -> (Self, Self) {
        let mask = _mm256_set1_epi8(0x0f);
        (
            Avx2(_mm256_and_si256(self.0, mask)),
            Avx2(_mm256_and_si256(_mm256_srli_epi16(self.0, 4), mask)),
        )
    }

    #[inline(always)]
    unsafe fn mul_acc(self, t: &NibbleTable, lo: Self, hi: Self) -> Self {
        // See Sse::mul_acc for alignment; each table is stored twice, once
        // per 128-bit lane, as vpshufb shuffles within lanes.
        let tl = _mm256_load_si256(t.lo.as_ptr().cast());
        let th = _mm256_load_si256(t.hi.as_ptr().cast());
        let p = _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo.0), _mm256_shuffle_epi8(th, hi.0));
        Avx2(_mm256_xor_si256(self.0, p))
    }
}

/// Raw base pointers of one kernel call, taken from slices whose bounds
/// the safe entry point has checked against the geometry.
struct Bases {
    inputs: [*const u8; MAX_INPUTS],
    nr_inputs: usize,
    copies: Option<[*mut u8; MAX_INPUTS]>,
    outputs: [*mut u8; MAX_GROUP],
    nr_outputs: usize,
}

/// The vector loop for exactly `G` outputs.
///
/// # Safety
/// The CPU supports `V`'s instructions; `b` has `G` outputs; `nib` has
/// `G × b.nr_inputs` tables; every segment of `geo` lies inside the
/// buffers behind `b` and `geo.seg_len` is a multiple of `V::LANES`.
#[inline(always)]
unsafe fn dot<V: Vector, const G: usize>(nib: &[NibbleTable], b: &Bases, geo: Geometry) {
    let n = b.nr_inputs;
    let inputs = &b.inputs[..n];
    let outputs: [*mut u8; G] = core::array::from_fn(|k| b.outputs[k]);
    for s in 0..geo.nsegs {
        let io = geo.in_off + s * geo.in_stride;
        let oo = geo.out_off + s * geo.out_stride;
        let mut v = 0;
        while v < geo.seg_len {
            let mut acc = [V::zero(); G];
            for (j, &input) in inputs.iter().enumerate() {
                let x = V::load(input.add(io + v));
                if let Some(copies) = &b.copies {
                    x.store(copies[j].add(oo + v));
                }
                let (lo, hi) = x.nibbles();
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = a.mul_acc(nib.get_unchecked(k * n + j), lo, hi);
                }
            }
            for (a, &out) in acc.iter().zip(&outputs) {
                a.store(out.add(oo + v));
            }
            v += V::LANES;
        }
    }
}

/// Instantiates [`dot`] for the actual number of outputs.
macro_rules! by_group_size {
    ($v:ty, $nib:expr, $b:expr, $geo:expr) => {
        match $b.nr_outputs {
            1 => dot::<$v, 1>($nib, $b, $geo),
            2 => dot::<$v, 2>($nib, $b, $geo),
            3 => dot::<$v, 3>($nib, $b, $geo),
            4 => dot::<$v, 4>($nib, $b, $geo),
            5 => dot::<$v, 5>($nib, $b, $geo),
            6 => dot::<$v, 6>($nib, $b, $geo),
            7 => dot::<$v, 7>($nib, $b, $geo),
            8 => dot::<$v, 8>($nib, $b, $geo),
            _ => unreachable!("checked by dot_simd"),
        }
    };
}

/// # Safety
/// As for [`dot`], with `V = Sse`.
#[target_feature(enable = "ssse3")]
unsafe fn body_ssse3(nib: &[NibbleTable], b: &Bases, geo: Geometry) {
    by_group_size!(Sse, nib, b, geo)
}

/// # Safety
/// As for [`dot`], with `V = Avx2`.
#[target_feature(enable = "avx2")]
unsafe fn body_avx2(nib: &[NibbleTable], b: &Bases, geo: Geometry) {
    by_group_size!(Avx2, nib, b, geo)
}

/// The SSSE3 kernel; same contract as `dot_scalar`, at most
/// [`MAX_GROUP`] outputs.
pub(super) fn dot_ssse3(
    coef: &[u8],
    nib: &[NibbleTable],
    inputs: &[&[u8]],
    copies: &mut [&mut [u8]],
    outputs: &mut [&mut [u8]],
    geo: Geometry,
) {
    assert!(std::arch::is_x86_feature_detected!("ssse3"));
    // SAFETY: the feature is present (asserted above); `Sse::LANES`
    // matches this body.
    unsafe {
        dot_simd(
            Sse::LANES,
            body_ssse3,
            coef,
            nib,
            inputs,
            copies,
            outputs,
            geo,
        )
    }
}

/// The AVX2 kernel; same contract as `dot_scalar`, at most
/// [`MAX_GROUP`] outputs.
pub(super) fn dot_avx2(
    coef: &[u8],
    nib: &[NibbleTable],
    inputs: &[&[u8]],
    copies: &mut [&mut [u8]],
    outputs: &mut [&mut [u8]],
    geo: Geometry,
) {
    assert!(std::arch::is_x86_feature_detected!("avx2"));
    // SAFETY: the feature is present (asserted above); `Avx2::LANES`
    // matches this body.
    unsafe {
        dot_simd(
            Avx2::LANES,
            body_avx2,
            coef,
            nib,
            inputs,
            copies,
            outputs,
            geo,
        )
    }
}

/// Checks every bound once, runs `body` on the whole vectors of each
/// segment and the scalar kernel on the remaining bytes.
///
/// # Safety
/// `body` must be callable on this CPU and process `lanes` bytes per
/// vector.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_simd(
    lanes: usize,
    body: unsafe fn(&[NibbleTable], &Bases, Geometry),
    coef: &[u8],
    nib: &[NibbleTable],
    inputs: &[&[u8]],
    copies: &mut [&mut [u8]],
    outputs: &mut [&mut [u8]],
    geo: Geometry,
) {
    let (n, m) = (inputs.len(), outputs.len());
    assert!((1..=MAX_INPUTS).contains(&n) && (1..=MAX_GROUP).contains(&m));
    assert!(nib.len() == n * m && coef.len() == n * m);
    assert!(copies.is_empty() || copies.len() == n);
    assert!(geo.fits(inputs, copies, outputs));
    let (whole, tail) = geo.split_lanes(lanes);
    if !whole.is_empty() {
        let mut b = Bases {
            inputs: [core::ptr::null(); MAX_INPUTS],
            nr_inputs: n,
            copies: None,
            outputs: [core::ptr::null_mut(); MAX_GROUP],
            nr_outputs: m,
        };
        for (p, s) in b.inputs.iter_mut().zip(inputs) {
            *p = s.as_ptr();
        }
        for (p, s) in b.outputs.iter_mut().zip(outputs.iter_mut()) {
            *p = s.as_mut_ptr();
        }
        if !copies.is_empty() {
            let mut c = [core::ptr::null_mut(); MAX_INPUTS];
            for (p, s) in c.iter_mut().zip(copies.iter_mut()) {
                *p = s.as_mut_ptr();
            }
            b.copies = Some(c);
        }
        // SAFETY: `fits` checked that every segment of `geo` (hence of
        // `whole`, a prefix of each segment) is inside its buffer; the
        // pointers come from those buffers, which stay mutably or shared
        // borrowed for this call, and outputs/copies are distinct `&mut`
        // slices so writes cannot alias the inputs. `whole.seg_len` is a
        // multiple of `lanes`, and `nib` has n × m tables (asserted). CPU
        // support is the caller's obligation.
        unsafe { body(nib, &b, whole) }
    }
    if !tail.is_empty() {
        dot_scalar(coef, inputs, copies, outputs, tail);
    }
}
