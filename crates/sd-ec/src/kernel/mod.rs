//! Region arithmetic: `out[k] = Σ_j c[k][j] · in[j]` over byte buffers, the
//! only hot loop of the codec.
//!
//! Encoding and decoding are both one matrix–region product: encoding
//! multiplies the data strips by the parity rows of E, decoding multiplies
//! the d surviving strips by (rows of the lost strips) · inv(surviving rows).
//! The kernels therefore take a coefficient matrix and a [`Geometry`]
//! describing where the bytes are, and write every output byte exactly once
//! from accumulators held in registers.
//!
//! The geometry is strided so that encoding can read the object in its
//! on-wire stripe layout directly (segment = one strip of one stripe,
//! input stride = 512) while also writing the d data strips out
//! ("copies"), instead of first transposing the object into strip-major
//! buffers and reading it a second time.

use crate::gf::{Matrix, MUL};

#[cfg(target_arch = "x86_64")]
mod x86;

/// Most inputs a kernel call takes: d ≤ 16, and decoding uses exactly d
/// surviving strips.
pub(crate) const MAX_INPUTS: usize = 16;

/// Most outputs one SIMD pass accumulates at once. AVX2 and SSE have 16
/// vector registers; each pass needs G accumulators plus the nibble mask,
/// the two nibble vectors and two table registers, so G = 8 keeps
/// everything in registers. More outputs are done in several passes over
/// a cache-sized batch.
const MAX_GROUP: usize = 8;

/// Input bytes (summed over all inputs) processed per batch before moving
/// to the next group of outputs: small enough to stay in L1 so a second
/// pass re-reads from cache, large enough to amortise the call overhead.
const BATCH_BYTES: usize = 32 * 1024;

/// Which implementation of the region product a [`Codec`](crate::Codec)
/// uses.
///
/// All kernels produce identical bytes; the choice is only about speed.
/// It is explicit (rather than hidden behind detection) so tests and
/// benchmarks can pin each one and compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable byte-at-a-time code using a 256-entry product table per
    /// coefficient.
    Scalar,
    /// x86-64 SSSE3: split-nibble products with `pshufb`, 16 bytes at a
    /// time.
    Ssse3,
    /// x86-64 AVX2: split-nibble products with `vpshufb`, 32 bytes at a
    /// time.
    Avx2,
}

impl Kernel {
    /// The fastest kernel the running CPU supports.
    pub fn detect() -> Kernel {
        [Kernel::Avx2, Kernel::Ssse3]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernel::Scalar)
    }

    /// Whether the running CPU can execute this kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Ssse3 | Kernel::Avx2 => false,
        }
    }
}

/// Product tables of one coefficient c for the split-nibble method:
/// `c·x = lo[x & 15] ^ hi[x >> 4]`. Each 16-entry table is stored twice so
/// one aligned 32-byte load fills both 128-bit lanes of an AVX2 register
/// (SSSE3 loads the first half).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub(crate) struct NibbleTable {
    lo: [u8; 32],
    hi: [u8; 32],
}

impl NibbleTable {
    fn new(c: u8) -> NibbleTable {
        let row = &MUL[c as usize];
        let mut t = NibbleTable {
            lo: [0; 32],
            hi: [0; 32],
        };
        for i in 0..32 {
            t.lo[i] = row[i & 15];
            t.hi[i] = row[(i & 15) << 4];
        }
        t
    }
}

/// A coefficient matrix (one row per output, one column per input) with
/// the per-coefficient tables every kernel needs, built once so the hot
/// loop only indexes.
#[derive(Clone, Debug)]
pub(crate) struct Coefs {
    rows: usize,
    cols: usize,
    /// Row-major coefficients, for the scalar kernel.
    coef: Vec<u8>,
    /// Row-major nibble tables, for the SIMD kernels.
    nib: Vec<NibbleTable>,
}

impl Coefs {
    pub(crate) fn new(m: &Matrix) -> Coefs {
        Coefs {
            rows: m.rows(),
            cols: m.cols(),
            coef: m.as_slice().to_vec(),
            nib: m.as_slice().iter().map(|&c| NibbleTable::new(c)).collect(),
        }
    }
}

/// Where a kernel call finds its bytes: `nsegs` segments of `seg_len`
/// bytes. Segment s of every input starts at `in_off + s·in_stride`; of
/// every output (and copy) at `out_off + s·out_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub seg_len: usize,
    pub nsegs: usize,
    pub in_off: usize,
    pub in_stride: usize,
    pub out_off: usize,
    pub out_stride: usize,
}

impl Geometry {
    /// Contiguous buffers of `len` bytes, cut into cache-sized segments
    /// (plus a shorter last one) so outputs beyond [`MAX_GROUP`] re-read
    /// their inputs from cache.
    fn contiguous(len: usize, nr_inputs: usize) -> impl Iterator<Item = Geometry> {
        let block = (BATCH_BYTES / nr_inputs.max(1)).max(64) & !63;
        let full = len / block;
        let tail = len % block;
        let whole = Geometry {
            seg_len: block,
            nsegs: full,
            in_off: 0,
            in_stride: block,
            out_off: 0,
            out_stride: block,
        };
        let last = Geometry {
            seg_len: tail,
            nsegs: 1,
            in_off: full * block,
            in_stride: tail,
            out_off: full * block,
            out_stride: tail,
        };
        [whole, last]
            .into_iter()
            .filter(|g| g.nsegs * g.seg_len > 0)
    }

    /// Segments `[first, first + n)` of this geometry.
    fn sub(self, first: usize, n: usize) -> Geometry {
        Geometry {
            nsegs: n,
            in_off: self.in_off + first * self.in_stride,
            out_off: self.out_off + first * self.out_stride,
            ..self
        }
    }

    /// Splits every segment into a prefix whose length is a multiple of
    /// `lanes` and the remaining tail.
    fn split_lanes(self, lanes: usize) -> (Geometry, Geometry) {
        let body = self.seg_len - self.seg_len % lanes;
        let head = Geometry {
            seg_len: body,
            ..self
        };
        let tail = Geometry {
            seg_len: self.seg_len - body,
            in_off: self.in_off + body,
            out_off: self.out_off + body,
            ..self
        };
        (head, tail)
    }

    fn is_empty(&self) -> bool {
        self.nsegs == 0 || self.seg_len == 0
    }

    /// Whether every segment lies inside the given buffers. Kernels check
    /// this once per call, which is what makes the unchecked SIMD loads
    /// and stores sound.
    fn fits(&self, inputs: &[&[u8]], copies: &[&mut [u8]], outputs: &[&mut [u8]]) -> bool {
        if self.is_empty() {
            return true;
        }
        let end = |off: usize, stride: usize| {
            (self.nsegs - 1)
                .checked_mul(stride)
                .and_then(|x| x.checked_add(off))
                .and_then(|x| x.checked_add(self.seg_len))
        };
        let (Some(in_end), Some(out_end)) = (
            end(self.in_off, self.in_stride),
            end(self.out_off, self.out_stride),
        ) else {
            return false;
        };
        inputs.iter().all(|b| b.len() >= in_end)
            && copies.iter().all(|b| b.len() >= out_end)
            && outputs.iter().all(|b| b.len() >= out_end)
    }
}

/// `outputs[k] = Σ_j coefs[k][j] · inputs[j]` over the segments of `geo`;
/// if `copies` is not empty, `copies[j]` also receives `inputs[j]` laid
/// out like the outputs.
///
/// Callers (the codec) validate sizes and report errors; a violation here
/// is a bug in this crate, hence the assertions.
pub(crate) fn run(
    kernel: Kernel,
    coefs: &Coefs,
    inputs: &[&[u8]],
    copies: &mut [&mut [u8]],
    outputs: &mut [&mut [u8]],
    geo: Geometry,
) {
    let n = inputs.len();
    assert!(n == coefs.cols && n <= MAX_INPUTS && outputs.len() == coefs.rows);
    assert!(copies.is_empty() || copies.len() == n);
    assert!(geo.fits(inputs, copies, outputs));
    if geo.is_empty() || n == 0 {
        return;
    }
    let per_batch = (BATCH_BYTES / (geo.seg_len * n)).max(1);
    let groups = outputs.len().div_ceil(MAX_GROUP);
    let mut first = 0;
    while first < geo.nsegs {
        let batch = geo.sub(first, per_batch.min(geo.nsegs - first));
        let mut row = 0;
        for g in 0..groups {
            // Balanced group sizes, e.g. 15 outputs → 8 + 7.
            let size = outputs.len() / groups + usize::from(g < outputs.len() % groups);
            let cells = row * n..(row + size) * n;
            let outs = &mut outputs[row..row + size];
            let copies: &mut [&mut [u8]] = if g == 0 { &mut *copies } else { &mut [] };
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::dot_avx2(
                    &coefs.coef[cells.clone()],
                    &coefs.nib[cells],
                    inputs,
                    copies,
                    outs,
                    batch,
                ),
                #[cfg(target_arch = "x86_64")]
                Kernel::Ssse3 => x86::dot_ssse3(
                    &coefs.coef[cells.clone()],
                    &coefs.nib[cells],
                    inputs,
                    copies,
                    outs,
                    batch,
                ),
                _ => dot_scalar(&coefs.coef[cells], inputs, copies, outs, batch),
            }
            row += size;
        }
        first += batch.nsegs;
    }
}

/// [`run`] over contiguous buffers of `len` bytes each.
pub(crate) fn run_contiguous(
    kernel: Kernel,
    coefs: &Coefs,
    inputs: &[&[u8]],
    outputs: &mut [&mut [u8]],
    len: usize,
) {
    for geo in Geometry::contiguous(len, inputs.len()) {
        run(kernel, coefs, inputs, &mut [], outputs, geo);
    }
}

/// The portable kernel, also used for the sub-vector tails of the SIMD
/// kernels. Each output segment is written once per input, but segments
/// are at most a batch, so the rewrites hit L1.
fn dot_scalar(
    coef: &[u8],
    inputs: &[&[u8]],
    copies: &mut [&mut [u8]],
    outputs: &mut [&mut [u8]],
    geo: Geometry,
) {
    let n = inputs.len();
    let len = geo.seg_len;
    for s in 0..geo.nsegs {
        let io = geo.in_off + s * geo.in_stride;
        let oo = geo.out_off + s * geo.out_stride;
        for (copy, input) in copies.iter_mut().zip(inputs) {
            copy[oo..oo + len].copy_from_slice(&input[io..io + len]);
        }
        for (out, row) in outputs.iter_mut().zip(coef.chunks_exact(n)) {
            let out = &mut out[oo..oo + len];
            let t = &MUL[row[0] as usize];
            for (o, &x) in out.iter_mut().zip(&inputs[0][io..io + len]) {
                *o = t[x as usize];
            }
            for (&c, input) in row.iter().zip(inputs).skip(1) {
                let t = &MUL[c as usize];
                for (o, &x) in out.iter_mut().zip(&input[io..io + len]) {
                    *o ^= t[x as usize];
                }
            }
        }
    }
}
