//! Encoding, decoding and re-interleaving for one policy.

use crate::gf::Matrix;
use crate::kernel::{self, Coefs, Geometry, Kernel};
use crate::{EcError, EcPolicy, STRIPE_SIZE};

/// A ready-to-use encoder/decoder for one [`EcPolicy`].
///
/// Holds the (d+p)×d encoding matrix E and the parity rows' product tables
/// so per-call work is only the region arithmetic. Building it (a d×d
/// inversion and p×d small tables) is cheap but not free, so make one per
/// policy and share it (it is immutable, `Send` and `Sync`). Decoding needs the inverse of the surviving rows,
/// which depends on which strips survive; that d×d inversion is done per
/// call (a few thousand field operations, negligible next to the data).
#[derive(Clone, Debug)]
pub struct Codec {
    policy: EcPolicy,
    kernel: Kernel,
    /// E: rows 0..d are the identity, rows d..d+p produce parity.
    matrix: Matrix,
    /// Rows d..d+p of E, prepared for the kernels.
    parity: Coefs,
}

impl Codec {
    /// A codec using the fastest kernel this CPU supports.
    pub fn new(policy: EcPolicy) -> Result<Codec, EcError> {
        Codec::with_kernel(policy, Kernel::detect())
    }

    /// A codec pinned to one kernel (for tests and benchmarks); errors if
    /// the CPU cannot run it.
    pub fn with_kernel(policy: EcPolicy, kernel: Kernel) -> Result<Codec, EcError> {
        policy.validate()?;
        if !kernel.is_supported() {
            return Err(EcError::UnsupportedKernel(kernel));
        }
        let (d, n) = (policy.data_strips(), policy.nr_copies());
        let matrix = Matrix::encoding(d, policy.parity_strips());
        let parity = Coefs::new(&matrix.select_rows(d..n));
        Ok(Codec {
            policy,
            kernel,
            matrix,
            parity,
        })
    }

    /// The policy this codec implements.
    pub fn policy(&self) -> EcPolicy {
        self.policy
    }

    /// The kernel doing the arithmetic.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Row `row` of the encoding matrix E (d coefficients; column j
    /// multiplies data strip j), or `None` if `row >= d + p`.
    pub fn matrix_row(&self, row: usize) -> Option<&[u8]> {
        (row < self.matrix.rows()).then(|| self.matrix.row(row))
    }

    /// Splits and encodes object bytes (a whole number of 512-byte
    /// stripes) into the d + p strip buffers of §8: `strips[j]` receives
    /// strip j of every stripe, `object.len() / d` bytes. `strips` must
    /// have d + p entries; each is resized, so passing the same buffers
    /// again avoids reallocation.
    ///
    /// The object is read once, in place: the kernel gathers each
    /// stripe's strips straight from the object, writes them to the data
    /// buffers and accumulates the parity in registers.
    pub fn encode(&self, object: &[u8], strips: &mut [Vec<u8>]) -> Result<(), EcError> {
        let (d, n) = (self.policy.data_strips(), self.policy.nr_copies());
        if !object.len().is_multiple_of(STRIPE_SIZE) {
            return Err(EcError::Unaligned {
                len: object.len(),
                unit: STRIPE_SIZE,
            });
        }
        if strips.len() != n {
            return Err(EcError::StripCount {
                expected: n,
                got: strips.len(),
            });
        }
        let strip = self.policy.strip_size();
        let len = object.len() / d;
        for s in strips.iter_mut() {
            s.resize(len, 0);
        }
        if object.is_empty() {
            return Ok(());
        }
        let (data, parity) = strips.split_at_mut(d);
        let inputs: Vec<&[u8]> = (0..d).map(|j| &object[j * strip..]).collect();
        let mut copies: Vec<&mut [u8]> = data.iter_mut().map(Vec::as_mut_slice).collect();
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        let geo = Geometry {
            seg_len: strip,
            nsegs: object.len() / STRIPE_SIZE,
            in_off: 0,
            in_stride: STRIPE_SIZE,
            out_off: 0,
            out_stride: strip,
        };
        kernel::run(
            self.kernel,
            &self.parity,
            &inputs,
            &mut copies,
            &mut outputs,
            geo,
        );
        Ok(())
    }

    /// Computes the p parity strips from d data strips that are already
    /// separate (strip-major) buffers, e.g. strip files read from disk.
    /// All buffers must have the same length, which may be anything: the
    /// code is applied byte by byte.
    pub fn encode_strips<D, P>(&self, data: &[D], parity: &mut [P]) -> Result<(), EcError>
    where
        D: AsRef<[u8]>,
        P: AsMut<[u8]>,
    {
        let (d, p) = (self.policy.data_strips(), self.policy.parity_strips());
        if data.len() != d {
            return Err(EcError::StripCount {
                expected: d,
                got: data.len(),
            });
        }
        if parity.len() != p {
            return Err(EcError::StripCount {
                expected: p,
                got: parity.len(),
            });
        }
        let inputs: Vec<&[u8]> = data.iter().map(AsRef::as_ref).collect();
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(AsMut::as_mut).collect();
        let len = inputs[0].len();
        let lens = inputs.iter().map(|s| s.len());
        check_lengths(len, lens.chain(outputs.iter().map(|s| s.len())).enumerate())?;
        kernel::run_contiguous(self.kernel, &self.parity, &inputs, &mut outputs, len);
        Ok(())
    }

    /// Rebuilds strips from survivors: `present` lists `(index, strip)`
    /// pairs (at least d, distinct indices below d + p; the first d are
    /// used), `missing` lists `(index, buffer)` pairs to fill. All buffers
    /// must have the same length. Each wanted strip is computed directly
    /// from the d survivors with the combined row
    /// `E[index] · inv(E[survivors])`, so rebuilding data and parity
    /// strips costs the same and every output is written once.
    pub fn reconstruct_into<S, O>(
        &self,
        present: &[(usize, S)],
        missing: &mut [(usize, O)],
    ) -> Result<(), EcError>
    where
        S: AsRef<[u8]>,
        O: AsMut<[u8]>,
    {
        let (d, n) = (self.policy.data_strips(), self.policy.nr_copies());
        let mut seen = [false; 32];
        for &(index, _) in present {
            check_index(index, n)?;
            if std::mem::replace(&mut seen[index], true) {
                return Err(EcError::DuplicateStrip(index));
            }
        }
        for &(index, _) in missing.iter() {
            check_index(index, n)?;
        }
        if present.len() < d {
            return Err(EcError::NotEnoughStrips {
                have: present.len(),
                need: d,
            });
        }
        let len = present[0].1.as_ref().len();
        check_lengths(
            len,
            present
                .iter()
                .map(|(i, s)| (*i, s.as_ref().len()))
                .chain(missing.iter_mut().map(|(i, s)| (*i, s.as_mut().len()))),
        )?;
        if missing.is_empty() {
            return Ok(());
        }
        let survivors = &present[..d];
        let inverse = self
            .matrix
            .select_rows(survivors.iter().map(|&(i, _)| i))
            .invert()
            .expect("any d distinct rows of E are invertible (Vandermonde on distinct points)");
        let rows = self
            .matrix
            .select_rows(missing.iter().map(|&(i, _)| i))
            .mul(&inverse);
        let inputs: Vec<&[u8]> = survivors.iter().map(|(_, s)| s.as_ref()).collect();
        let mut outputs: Vec<&mut [u8]> = missing.iter_mut().map(|(_, s)| s.as_mut()).collect();
        kernel::run_contiguous(self.kernel, &Coefs::new(&rows), &inputs, &mut outputs, len);
        Ok(())
    }

    /// Fills every `None` in `strips` (d + p entries, indexed by strip
    /// number) from any d present ones, allocating the rebuilt buffers.
    pub fn reconstruct(&self, strips: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        let n = self.policy.nr_copies();
        if strips.len() != n {
            return Err(EcError::StripCount {
                expected: n,
                got: strips.len(),
            });
        }
        let present: Vec<(usize, &[u8])> = strips
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_deref()?)))
            .collect();
        if present.len() == n {
            return Ok(());
        }
        let len = present.first().map_or(0, |(_, s)| s.len());
        let mut missing: Vec<(usize, Vec<u8>)> = (0..n)
            .filter(|&i| strips[i].is_none())
            .map(|i| (i, Vec::new()))
            .collect();
        if present.len() >= self.policy.data_strips() {
            for (_, buf) in &mut missing {
                buf.resize(len, 0);
            }
        }
        self.reconstruct_into(&present, &mut missing)?;
        for (i, buf) in missing {
            strips[i] = Some(buf);
        }
        Ok(())
    }

    /// Re-interleaves the d data strips (strip-major, equal lengths that
    /// are whole strips) into object bytes: the inverse of the split done
    /// by [`Codec::encode`].
    pub fn join<S: AsRef<[u8]>>(&self, data: &[S]) -> Result<Vec<u8>, EcError> {
        let len = data.first().map_or(0, |s| s.as_ref().len());
        let mut object = vec![0; len.saturating_mul(self.policy.data_strips())];
        self.join_into(data, &mut object)?;
        Ok(object)
    }

    /// [`Codec::join`] into a caller-provided buffer of exactly
    /// d × strip-length bytes.
    pub fn join_into<S: AsRef<[u8]>>(&self, data: &[S], object: &mut [u8]) -> Result<(), EcError> {
        let d = self.policy.data_strips();
        let strip = self.policy.strip_size();
        if data.len() != d {
            return Err(EcError::StripCount {
                expected: d,
                got: data.len(),
            });
        }
        let data: Vec<&[u8]> = data.iter().map(AsRef::as_ref).collect();
        let len = data[0].len();
        check_lengths(len, data.iter().map(|s| s.len()).enumerate())?;
        if !len.is_multiple_of(strip) {
            return Err(EcError::Unaligned { len, unit: strip });
        }
        if object.len() != len * d {
            return Err(EcError::ObjectLength {
                expected: len * d,
                got: object.len(),
            });
        }
        for (s, stripe) in object.chunks_exact_mut(STRIPE_SIZE).enumerate() {
            for (piece, strip_buf) in stripe.chunks_exact_mut(strip).zip(&data) {
                piece.copy_from_slice(&strip_buf[s * strip..(s + 1) * strip]);
            }
        }
        Ok(())
    }
}

fn check_index(index: usize, nr: usize) -> Result<(), EcError> {
    if index < nr {
        Ok(())
    } else {
        Err(EcError::IndexOutOfRange { index, nr })
    }
}

/// Every `(strip index, length)` must have length `expected`.
fn check_lengths(
    expected: usize,
    lens: impl Iterator<Item = (usize, usize)>,
) -> Result<(), EcError> {
    for (index, got) in lens {
        if got != expected {
            return Err(EcError::StripLength {
                index,
                expected,
                got,
            });
        }
    }
    Ok(())
}
