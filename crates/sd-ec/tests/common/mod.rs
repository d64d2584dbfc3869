//! Helpers shared by the integration tests: an independent, obviously
//! correct (and slow) reference encoder.

#![allow(dead_code)] // each test binary uses a different subset

use sd_ec::{Codec, EcPolicy, STRIPE_SIZE};

/// GF(2^8)/0x11D product by shift-and-add, sharing nothing with the crate.
pub fn slow_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

/// Encodes stripe by stripe, byte by byte, straight from the §8 text,
/// using the codec's matrix rows (themselves checked against §14).
pub fn reference_encode(codec: &Codec, object: &[u8]) -> Vec<Vec<u8>> {
    let policy = codec.policy();
    let (d, n, strip) = (
        policy.data_strips(),
        policy.nr_copies(),
        policy.strip_size(),
    );
    let mut strips = vec![Vec::new(); n];
    for stripe in object.chunks_exact(STRIPE_SIZE) {
        let data: Vec<&[u8]> = stripe.chunks_exact(strip).collect();
        for (j, s) in data.iter().enumerate() {
            strips[j].extend_from_slice(s);
        }
        for (k, out) in strips.iter_mut().enumerate().skip(d) {
            let row = codec.matrix_row(k).unwrap();
            out.extend(
                (0..strip).map(|b| (0..d).fold(0, |acc, j| acc ^ slow_mul(row[j], data[j][b]))),
            );
        }
    }
    strips
}

pub fn policy(d: u8, p: u8) -> EcPolicy {
    EcPolicy::new(d, p).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), for tests that are not
/// proptests.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
