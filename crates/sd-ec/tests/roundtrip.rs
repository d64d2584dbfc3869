//! Encode → lose strips → reconstruct → join, against the reference
//! encoder.

mod common;

use common::{bytes, policy, reference_encode};
use proptest::prelude::*;
use sd_ec::{Codec, EcPolicy, STRIPE_SIZE};

/// All `k`-element subsets of `0..n`, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(k);
    fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..=n - (k - cur.len()) {
            cur.push(i);
            rec(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    rec(0, n, k, &mut cur, &mut out);
    out
}

/// Keeps only `keep`, reconstructs, and checks every strip and the joined
/// object.
fn check_decode(codec: &Codec, object: &[u8], strips: &[Vec<u8>], keep: &[usize]) {
    let d = codec.policy().data_strips();
    let mut partial: Vec<Option<Vec<u8>>> = strips
        .iter()
        .enumerate()
        .map(|(i, s)| keep.contains(&i).then(|| s.clone()))
        .collect();
    codec.reconstruct(&mut partial).unwrap();
    for (i, s) in partial.iter().enumerate() {
        assert_eq!(
            s.as_deref(),
            Some(&strips[i][..]),
            "strip {i}, kept {keep:?}"
        );
    }
    let data: Vec<&[u8]> = partial[..d].iter().map(|s| s.as_deref().unwrap()).collect();
    assert_eq!(codec.join(&data).unwrap(), object);
}

fn encode(codec: &Codec, object: &[u8]) -> Vec<Vec<u8>> {
    let mut strips = vec![Vec::new(); codec.policy().nr_copies()];
    codec.encode(object, &mut strips).unwrap();
    assert_eq!(strips, reference_encode(codec, object));
    strips
}

fn object(max_stripes: usize) -> impl Strategy<Value = Vec<u8>> {
    (1..=max_stripes).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * STRIPE_SIZE))
}

fn every_subset(d: u8, p: u8, object: &[u8]) {
    let codec = Codec::new(policy(d, p)).unwrap();
    let strips = encode(&codec, object);
    let n = codec.policy().nr_copies();
    for keep in subsets(n, d as usize) {
        check_decode(&codec, object, &strips, &keep);
    }
}

proptest! {
    #[test]
    fn every_subset_2_1(object in object(4)) {
        every_subset(2, 1, &object);
    }

    #[test]
    fn every_subset_4_2(object in object(4)) {
        every_subset(4, 2, &object);
    }

    #[test]
    fn every_subset_8_3(object in object(3)) {
        every_subset(8, 3, &object);
    }

    #[test]
    fn random_subsets_16_15(
        object in object(3),
        keeps in proptest::collection::vec(
            proptest::sample::subsequence((0..31usize).collect::<Vec<_>>(), 16),
            1..8,
        ),
    ) {
        let codec = Codec::new(policy(16, 15)).unwrap();
        let strips = encode(&codec, &object);
        for keep in keeps {
            check_decode(&codec, &object, &strips, &keep);
        }
    }

    /// More than d survivors, in any order, and rebuilding only some of
    /// the missing strips.
    #[test]
    fn reconstruct_into_any_order(
        object in object(3),
        order in Just((0..11usize).collect::<Vec<_>>()).prop_shuffle(),
        extra in 0..=3usize,
        wanted in 1..=3usize,
    ) {
        let codec = Codec::new(policy(8, 3)).unwrap();
        let strips = encode(&codec, &object);
        let (present, rest) = order.split_at(8 + extra);
        let present: Vec<(usize, &[u8])> = present.iter().map(|&i| (i, &strips[i][..])).collect();
        let mut missing: Vec<(usize, Vec<u8>)> = rest
            .iter()
            .chain(&order[..1])
            .take(wanted)
            .map(|&i| (i, vec![0xAA; strips[0].len()]))
            .collect();
        codec.reconstruct_into(&present, &mut missing).unwrap();
        for (i, buf) in missing {
            prop_assert_eq!(&buf, &strips[i]);
        }
    }

    /// encode_strips on the strip-major buffers equals encode's parity.
    #[test]
    fn encode_strips_matches_encode(object in object(4), cp in prop::sample::select(vec![0x11u8, 0x22, 0x43, 0x84, 0x8f])) {
        let codec = Codec::new(EcPolicy::from_copy_policy(cp).unwrap()).unwrap();
        let strips = encode(&codec, &object);
        let d = codec.policy().data_strips();
        let mut parity = vec![vec![0u8; strips[0].len()]; codec.policy().parity_strips()];
        codec.encode_strips(&strips[..d], &mut parity).unwrap();
        prop_assert_eq!(&parity[..], &strips[d..]);
    }
}

/// Every valid policy: encoding matches the reference and one random set
/// of d survivors decodes.
#[test]
fn all_sixty_policies() {
    for d in [2u8, 4, 8, 16] {
        for p in 1..=15u8 {
            let codec = Codec::new(policy(d, p)).unwrap();
            let object = bytes(3 * STRIPE_SIZE, u64::from(d) * 100 + u64::from(p));
            let strips = encode(&codec, &object);
            // Keep the last d strips: loses as many data strips as possible.
            let n = codec.policy().nr_copies();
            let keep: Vec<usize> = (n - d as usize..n).collect();
            check_decode(&codec, &object, &strips, &keep);
        }
    }
}

#[test]
fn empty_object() {
    let codec = Codec::new(policy(4, 2)).unwrap();
    let mut strips = vec![vec![1u8; 9]; 6];
    codec.encode(&[], &mut strips).unwrap();
    assert!(strips.iter().all(Vec::is_empty));
    let mut partial: Vec<Option<Vec<u8>>> = vec![
        None,
        None,
        Some(vec![]),
        Some(vec![]),
        Some(vec![]),
        Some(vec![]),
    ];
    codec.reconstruct(&mut partial).unwrap();
    assert!(partial.iter().all(|s| s.as_deref() == Some(&[][..])));
    assert_eq!(codec.join(&[[0u8; 0]; 4]).unwrap(), Vec::<u8>::new());
}

/// Large enough to span several kernel batches and cache blocks.
#[test]
fn large_object_4_2() {
    let codec = Codec::new(policy(4, 2)).unwrap();
    let object = bytes(1 << 20, 7);
    let strips = encode(&codec, &object);
    check_decode(&codec, &object, &strips, &[1, 3, 4, 5]);
}

#[test]
fn encode_reuses_buffers() {
    let codec = Codec::new(policy(2, 1)).unwrap();
    let mut strips = vec![Vec::new(); 3];
    codec
        .encode(&bytes(4 * STRIPE_SIZE, 1), &mut strips)
        .unwrap();
    let object = bytes(2 * STRIPE_SIZE, 2);
    codec.encode(&object, &mut strips).unwrap();
    assert_eq!(strips, reference_encode(&codec, &object));
}
