//! Bad sizes, counts and indices are errors, never panics.

mod common;

use common::policy;
use proptest::prelude::*;
use sd_ec::{Codec, EcError, EcPolicy, Kernel};

fn codec() -> Codec {
    Codec::new(policy(4, 2)).unwrap()
}

#[test]
fn invalid_policy() {
    assert_eq!(
        Codec::new(EcPolicy { d: 3, p: 1 }).unwrap_err(),
        EcError::InvalidPolicy { d: 3, p: 1 }
    );
    assert!(Codec::with_kernel(EcPolicy { d: 4, p: 0 }, Kernel::Scalar).is_err());
}

#[test]
fn encode_errors() {
    let c = codec();
    let mut strips = vec![Vec::new(); 6];
    assert_eq!(
        c.encode(&[0; 100], &mut strips),
        Err(EcError::Unaligned {
            len: 100,
            unit: 512
        })
    );
    assert_eq!(
        c.encode(&[0; 512], &mut strips[..5]),
        Err(EcError::StripCount {
            expected: 6,
            got: 5
        })
    );
}

#[test]
fn encode_strips_errors() {
    let c = codec();
    let data = vec![vec![0u8; 8]; 4];
    let mut parity = vec![vec![0u8; 8]; 2];
    assert_eq!(
        c.encode_strips(&data[..3], &mut parity),
        Err(EcError::StripCount {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        c.encode_strips(&data, &mut parity[..1]),
        Err(EcError::StripCount {
            expected: 2,
            got: 1
        })
    );
    let mut short = data.clone();
    short[2].pop();
    assert_eq!(
        c.encode_strips(&short, &mut parity),
        Err(EcError::StripLength {
            index: 2,
            expected: 8,
            got: 7
        })
    );
    parity[1].push(0);
    assert_eq!(
        c.encode_strips(&data, &mut parity),
        Err(EcError::StripLength {
            index: 5,
            expected: 8,
            got: 9
        })
    );
}

#[test]
fn reconstruct_errors() {
    let c = codec();
    let s = vec![0u8; 16];
    let mut strips: Vec<Option<Vec<u8>>> = vec![
        None,
        None,
        None,
        Some(s.clone()),
        Some(s.clone()),
        Some(s.clone()),
    ];
    assert_eq!(
        c.reconstruct(&mut strips),
        Err(EcError::NotEnoughStrips { have: 3, need: 4 })
    );
    assert!(
        strips[..3].iter().all(Option::is_none),
        "untouched on error"
    );
    assert_eq!(
        c.reconstruct(&mut strips[..5]),
        Err(EcError::StripCount {
            expected: 6,
            got: 5
        })
    );
    strips[0] = Some(vec![0; 15]);
    assert_eq!(
        c.reconstruct(&mut strips),
        Err(EcError::StripLength {
            index: 3,
            expected: 15,
            got: 16
        })
    );

    let present = [(0, &s[..]), (1, &s), (2, &s), (2, &s)];
    assert_eq!(
        c.reconstruct_into(&present, &mut [(3, vec![0; 16])]),
        Err(EcError::DuplicateStrip(2))
    );
    let present = [(0, &s[..]), (1, &s), (2, &s), (6, &s)];
    assert_eq!(
        c.reconstruct_into(&present, &mut [(3, vec![0; 16])]),
        Err(EcError::IndexOutOfRange { index: 6, nr: 6 })
    );
    let present = [(0, &s[..]), (1, &s), (2, &s), (5, &s)];
    assert_eq!(
        c.reconstruct_into(&present, &mut [(9, vec![0; 16])]),
        Err(EcError::IndexOutOfRange { index: 9, nr: 6 })
    );
    assert_eq!(
        c.reconstruct_into(&present, &mut [(3, vec![0; 17])]),
        Err(EcError::StripLength {
            index: 3,
            expected: 16,
            got: 17
        })
    );
    assert_eq!(
        c.reconstruct_into(&present[..3], &mut [(3, vec![0; 16])]),
        Err(EcError::NotEnoughStrips { have: 3, need: 4 })
    );
    assert_eq!(
        c.reconstruct_into(&present, &mut [] as &mut [(usize, Vec<u8>)]),
        Ok(())
    );
}

#[test]
fn join_errors() {
    let c = codec();
    let s = vec![0u8; 256];
    assert_eq!(
        c.join(&[&s[..]; 3]),
        Err(EcError::StripCount {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        c.join(&[&s[..100]; 4]),
        Err(EcError::Unaligned {
            len: 100,
            unit: 128
        })
    );
    assert_eq!(
        c.join(&[&s[..], &s, &s, &s[..128]]),
        Err(EcError::StripLength {
            index: 3,
            expected: 256,
            got: 128
        })
    );
    assert_eq!(
        c.join_into(&[&s[..]; 4], &mut [0; 1000]),
        Err(EcError::ObjectLength {
            expected: 1024,
            got: 1000
        })
    );
}

proptest! {
    /// Arbitrary counts, lengths and indices: every call returns.
    #[test]
    fn no_panics(
        cp in any::<u8>(),
        lens in prop::collection::vec(0..1100usize, 0..34),
        present in prop::collection::vec(0..40usize, 0..34),
        missing in prop::collection::vec(0..40usize, 0..34),
        object_len in 0..5000usize,
    ) {
        let Some(policy) = EcPolicy::from_copy_policy(cp) else { return Ok(()) };
        let c = Codec::new(policy).unwrap();
        let bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![1; l]).collect();
        let mut outs = bufs.clone();
        let _ = c.encode(&vec![0; object_len], &mut outs);
        let _ = c.encode_strips(&bufs, &mut outs.clone());
        let mut opts: Vec<Option<Vec<u8>>> = bufs.iter().cloned().enumerate().map(|(i, b)| (i % 3 != 0).then_some(b)).collect();
        let _ = c.reconstruct(&mut opts);
        let pres: Vec<(usize, &[u8])> = present.iter().zip(&bufs).map(|(&i, b)| (i, &b[..])).collect();
        let mut miss: Vec<(usize, Vec<u8>)> = missing.iter().zip(&bufs).map(|(&i, b)| (i, b.clone())).collect();
        let _ = c.reconstruct_into(&pres, &mut miss);
        let _ = c.join(&bufs);
        let _ = c.join_into(&bufs, &mut vec![0; object_len]);
        let _ = policy.stripe_range(object_len as u64, u64::MAX - object_len as u64);
    }
}
