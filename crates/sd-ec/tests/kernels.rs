//! Every SIMD kernel gives exactly the scalar kernel's bytes, including
//! lengths that are not whole vectors and unaligned buffers.

mod common;

use common::{policy, reference_encode};
use proptest::prelude::*;
use sd_ec::{Codec, EcPolicy, Kernel, STRIPE_SIZE};

const POLICIES: [(u8, u8); 6] = [(2, 1), (4, 2), (8, 3), (16, 4), (16, 9), (16, 15)];

/// Runs encode, encode_strips and reconstruct_into with `kernel` and with
/// the scalar kernel on the same input and compares all outputs.
fn compare(
    kernel: Kernel,
    p: EcPolicy,
    data: &[u8],
    skip: usize,
    strip_len: usize,
    lost: &[usize],
) {
    let fast = Codec::with_kernel(p, kernel).unwrap();
    let slow = Codec::with_kernel(p, Kernel::Scalar).unwrap();
    let (d, n) = (p.data_strips(), p.nr_copies());

    // encode: a whole number of stripes from an unaligned start.
    let stripes = (data.len() - skip) / STRIPE_SIZE;
    let object = &data[skip..skip + stripes * STRIPE_SIZE];
    let mut a = vec![Vec::new(); n];
    let mut b = vec![Vec::new(); n];
    fast.encode(object, &mut a).unwrap();
    slow.encode(object, &mut b).unwrap();
    assert_eq!(a, b, "encode {kernel:?} {p:?}");
    if stripes <= 4 {
        assert_eq!(b, reference_encode(&slow, object));
    }

    // encode_strips: arbitrary length, unaligned buffers.
    let len = strip_len.min((data.len() - skip) / d);
    let inputs: Vec<&[u8]> = (0..d)
        .map(|j| &data[skip + j * len..skip + (j + 1) * len])
        .collect();
    let mut pa = vec![vec![0u8; len + 1]; p.parity_strips()];
    let mut pb = pa.clone();
    let mut pa_view: Vec<&mut [u8]> = pa.iter_mut().map(|v| &mut v[1..]).collect();
    let mut pb_view: Vec<&mut [u8]> = pb.iter_mut().map(|v| &mut v[1..]).collect();
    fast.encode_strips(&inputs, &mut pa_view).unwrap();
    slow.encode_strips(&inputs, &mut pb_view).unwrap();
    assert_eq!(pa, pb, "encode_strips {kernel:?} {p:?} len {len}");

    // reconstruct_into from the first d strips not in `lost`.
    let mut all: Vec<&[u8]> = inputs.clone();
    all.extend(pb.iter().map(|v| &v[1..]));
    let present: Vec<(usize, &[u8])> = (0..n)
        .filter(|i| !lost.contains(i))
        .map(|i| (i, all[i]))
        .collect();
    let mut ma: Vec<(usize, Vec<u8>)> = lost.iter().map(|&i| (i, vec![0; len])).collect();
    let mut mb = ma.clone();
    fast.reconstruct_into(&present, &mut ma).unwrap();
    slow.reconstruct_into(&present, &mut mb).unwrap();
    assert_eq!(ma, mb, "reconstruct {kernel:?} {p:?} lost {lost:?}");
    for (i, buf) in &mb {
        assert_eq!(&buf[..], all[*i], "strip {i}");
    }
}

fn matches_scalar(kernel: Kernel) -> impl Strategy<Value = ()> {
    (
        prop::sample::select(POLICIES.to_vec()),
        prop::collection::vec(any::<u8>(), 0..40_000),
        0..64usize,
        0..12_000usize,
        any::<prop::sample::Index>(),
    )
        .prop_map(move |((d, p), mut data, skip, strip_len, which)| {
            let policy = policy(d, p);
            data.resize(data.len().max(skip), 0);
            let n = policy.nr_copies();
            // Lose up to p strips, starting somewhere.
            let first = which.index(n);
            let lost: Vec<usize> = (0..usize::from(p))
                .map(|i| (first + i * 3) % n)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            compare(kernel, policy, &data, skip, strip_len, &lost);
        })
}

fn skip_unless(kernel: Kernel) -> bool {
    if kernel.is_supported() {
        true
    } else {
        eprintln!("{kernel:?} not supported on this CPU; skipped");
        false
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn avx2_matches_scalar(_ in matches_scalar_if(Kernel::Avx2)) {}

    #[test]
    fn ssse3_matches_scalar(_ in matches_scalar_if(Kernel::Ssse3)) {}
}

fn matches_scalar_if(kernel: Kernel) -> BoxedStrategy<()> {
    if skip_unless(kernel) {
        matches_scalar(kernel).boxed()
    } else {
        Just(()).boxed()
    }
}

/// Lengths around the vector widths and batch sizes, exhaustively.
#[test]
fn boundary_lengths() {
    let data = common::bytes(70_000, 3);
    for kernel in [Kernel::Avx2, Kernel::Ssse3] {
        if !skip_unless(kernel) {
            continue;
        }
        for (d, p) in POLICIES {
            for len in [
                0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 2047, 2048, 2049, 4095, 4096, 4097,
            ] {
                let lost = [0, usize::from(d)];
                compare(
                    kernel,
                    policy(d, p),
                    &data,
                    5,
                    len,
                    &lost[..usize::from(p).min(2)],
                );
            }
        }
    }
}

#[test]
fn detect_is_supported() {
    assert!(Kernel::detect().is_supported());
    assert!(Kernel::Scalar.is_supported());
    assert_eq!(Codec::new(policy(4, 2)).unwrap().kernel(), Kernel::detect());
    #[cfg(target_arch = "x86_64")]
    eprintln!(
        "detected {:?} (avx2 {}, ssse3 {})",
        Kernel::detect(),
        Kernel::Avx2.is_supported(),
        Kernel::Ssse3.is_supported()
    );
}
