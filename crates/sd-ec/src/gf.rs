//! Arithmetic in GF(2^8) with the primitive polynomial x^8+x^4+x^3+x^2+1
//! (0x11D) and generator α = 2, plus the few dense-matrix operations the
//! codec needs (product and Gauss–Jordan inversion).
//!
//! Everything here runs only when a codec or a decode plan is built (a few
//! hundred operations), so it favours clarity; the hot path lives in
//! `kernel`.

/// The field's reduction polynomial, including the x^8 term.
const POLY: u16 = 0x11D;

/// `EXP[i] = α^i`, doubled in length so `EXP[log a + log b]` needs no modulo.
const EXP: [u8; 510] = build_exp();

/// `LOG[α^i] = i`; `LOG[0]` is unused (0 has no logarithm).
const LOG: [u8; 256] = build_log();

/// Full product table: `MUL[a][b] = a·b`. 64 KiB, built at compile time;
/// the scalar kernel indexes one 256-byte row per coefficient and the SIMD
/// kernels derive their 16-entry nibble tables from it.
pub(crate) static MUL: [[u8; 256]; 256] = build_mul();

const fn build_exp() -> [u8; 510] {
    let mut t = [0u8; 510];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        t[i] = x as u8;
        t[i + 255] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    t
}

const fn build_log() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        t[EXP[i] as usize] = i as u8;
        i += 1;
    }
    t
}

const fn build_mul() -> [[u8; 256]; 256] {
    let mut t = [[0u8; 256]; 256];
    let mut a = 1;
    while a < 256 {
        let mut b = 1;
        while b < 256 {
            t[a][b] = EXP[LOG[a] as usize + LOG[b] as usize];
            b += 1;
        }
        a += 1;
    }
    t
}

/// a · b in GF(2^8).
pub(crate) fn mul(a: u8, b: u8) -> u8 {
    MUL[a as usize][b as usize]
}

/// Multiplicative inverse; `None` for 0.
fn inv(a: u8) -> Option<u8> {
    (a != 0).then(|| EXP[255 - LOG[a as usize] as usize])
}

/// α^e.
fn alpha_pow(e: usize) -> u8 {
    EXP[e % 255]
}

/// A dense row-major matrix over GF(2^8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Matrix {
    fn zero(rows: usize, cols: usize) -> Matrix {
        Matrix {
            rows,
            cols,
            data: vec![0; rows * cols],
        }
    }

    fn identity(n: usize) -> Matrix {
        let mut m = Matrix::zero(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1;
        }
        m
    }

    /// The systematic encoding matrix E = V · inv(V[0..d]) of PROTOCOL.md
    /// §8, `(d + p) × d`. V's row 0 is [1, 0, …, 0] and row r ≥ 1 is
    /// [α^((r−1)·c)]; these are Vandermonde rows at the distinct points
    /// 0, α^0, α^1, …, so every d-row subset of V (and hence of E) is
    /// invertible as long as d + p ≤ 256.
    pub(crate) fn encoding(d: usize, p: usize) -> Matrix {
        let n = d + p;
        let mut v = Matrix::zero(n, d);
        v.data[0] = 1;
        for r in 1..n {
            for c in 0..d {
                v.data[r * d + c] = alpha_pow((r - 1) * c);
            }
        }
        let top = v.select_rows(0..d);
        let top_inv = top
            .invert()
            .expect("a Vandermonde matrix on distinct points is invertible");
        v.mul(&top_inv)
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// The row-major coefficients.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// A new matrix made of the given rows of `self`, in order.
    pub(crate) fn select_rows(&self, rows: impl IntoIterator<Item = usize>) -> Matrix {
        let mut data = Vec::new();
        for r in rows {
            data.extend_from_slice(self.row(r));
        }
        Matrix {
            rows: data.len() / self.cols,
            cols: self.cols,
            data,
        }
    }

    /// self · other. The caller guarantees `self.cols == other.rows`.
    pub(crate) fn mul(&self, other: &Matrix) -> Matrix {
        debug_assert_eq!(self.cols, other.rows);
        let mut out = Matrix::zero(self.rows, other.cols);
        for r in 0..self.rows {
            for (k, &a) in self.row(r).iter().enumerate() {
                let b = other.row(k);
                for (o, &b) in out.data[r * other.cols..(r + 1) * other.cols]
                    .iter_mut()
                    .zip(b)
                {
                    *o ^= mul(a, b);
                }
            }
        }
        out
    }

    /// Inverse by Gauss–Jordan elimination; `None` if singular (or not
    /// square).
    pub(crate) fn invert(&self) -> Option<Matrix> {
        let n = self.rows;
        if self.cols != n {
            return None;
        }
        let mut a = self.clone();
        let mut out = Matrix::identity(n);
        for col in 0..n {
            let pivot = (col..n).find(|&r| a.data[r * n + col] != 0)?;
            a.swap_rows(pivot, col);
            out.swap_rows(pivot, col);
            let f = inv(a.data[col * n + col])?;
            a.scale_row(col, f);
            out.scale_row(col, f);
            for r in (0..n).filter(|&r| r != col) {
                let g = a.data[r * n + col];
                if g != 0 {
                    a.add_scaled_row(r, col, g);
                    out.add_scaled_row(r, col, g);
                }
            }
        }
        Some(out)
    }

    fn swap_rows(&mut self, a: usize, b: usize) {
        if a != b {
            for c in 0..self.cols {
                self.data.swap(a * self.cols + c, b * self.cols + c);
            }
        }
    }

    fn scale_row(&mut self, r: usize, f: u8) {
        for x in &mut self.data[r * self.cols..(r + 1) * self.cols] {
            *x = mul(*x, f);
        }
    }

    /// `row[dst] ^= g · row[src]`.
    fn add_scaled_row(&mut self, dst: usize, src: usize, g: u8) {
        for c in 0..self.cols {
            let v = mul(self.data[src * self.cols + c], g);
            self.data[dst * self.cols + c] ^= v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carry-less multiply with reduction, independent of the tables.
    fn slow_mul(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            let carry = a & 0x80 != 0;
            a <<= 1;
            if carry {
                a ^= (POLY & 0xff) as u8;
            }
            b >>= 1;
        }
        r
    }

    #[test]
    fn mul_table_matches_shift_and_add() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), slow_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn alpha_generates_the_whole_group() {
        let mut seen = [false; 256];
        for e in 0..255 {
            seen[alpha_pow(e) as usize] = true;
        }
        assert!(!seen[0]);
        assert!(seen[1..].iter().all(|&s| s));
    }

    #[test]
    fn inverses() {
        assert_eq!(inv(0), None);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a).unwrap()), 1);
        }
    }

    #[test]
    fn invert_round_trips_and_detects_singular() {
        let e = Matrix::encoding(4, 4);
        let sub = e.select_rows([1, 4, 6, 7]);
        let inv = sub.invert().unwrap();
        assert_eq!(sub.mul(&inv), Matrix::identity(4));
        let singular = e.select_rows([1, 1, 4, 5]);
        assert_eq!(singular.invert(), None);
        assert_eq!(e.invert(), None, "non-square");
    }

    #[test]
    fn encoding_matrix_is_systematic() {
        for d in [2, 4, 8, 16] {
            let e = Matrix::encoding(d, 31 - d);
            assert_eq!(e.select_rows(0..d), Matrix::identity(d));
        }
    }
}
