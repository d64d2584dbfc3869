//! PROTOCOL.md §14 erasure-code vectors, checked exactly.

mod common;

use common::{policy, reference_encode};
use sd_ec::{Codec, EcPolicy};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn assert_row(d: u8, p: u8, row: usize, expected: &str) {
    let codec = Codec::new(policy(d, p)).unwrap();
    assert_eq!(
        codec.matrix_row(row).unwrap(),
        hex(expected),
        "{d}:{p} row {row}"
    );
}

#[test]
fn parity_rows_d2() {
    assert_row(2, 1, 2, "03 02");
    assert_row(2, 2, 2, "03 02");
    assert_row(2, 2, 3, "05 04");
}

#[test]
fn parity_rows_d4() {
    assert_row(4, 2, 4, "77 40 38 0e");
    assert_row(4, 2, 5, "c7 a7 0d 6c");
}

#[test]
fn parity_rows_d8() {
    assert_row(8, 3, 8, "89 18 d0 7d 92 a4 f5 fe");
    assert_row(8, 3, 9, "36 f8 d0 ce 25 19 fb 16");
    assert_row(8, 3, 10, "5f cd a3 40 50 48 f6 9e");
}

#[test]
fn parity_row_d16() {
    assert_row(
        16,
        15,
        16,
        "c5 3b 1f 2d 4f aa 83 c2 61 69 77 a6 e2 5f 37 3a",
    );
}

#[test]
fn rows_do_not_depend_on_p() {
    // A row of E depends only on d and its index, so a 4:2 object's parity
    // is a prefix of a 4:15 object's.
    for d in [2, 4, 8, 16] {
        let big = Codec::new(policy(d, 15)).unwrap();
        for p in 1..15 {
            let small = Codec::new(policy(d, p)).unwrap();
            for row in 0..(d + p) as usize {
                assert_eq!(small.matrix_row(row), big.matrix_row(row));
            }
            assert_eq!(small.matrix_row((d + p) as usize), None);
        }
    }
}

#[test]
fn systematic_rows() {
    let codec = Codec::new(policy(8, 3)).unwrap();
    for j in 0..8 {
        let row = codec.matrix_row(j).unwrap();
        for (c, &x) in row.iter().enumerate() {
            assert_eq!(x, u8::from(c == j));
        }
    }
}

#[test]
fn encoding_example_4_2() {
    let object: Vec<u8> = (0..512).map(|b| b as u8).collect();
    let codec = Codec::new(EcPolicy::from_copy_policy(0x22).unwrap()).unwrap();
    let mut strips = vec![Vec::new(); 6];
    codec.encode(&object, &mut strips).unwrap();
    for (j, s) in strips[..4].iter().enumerate() {
        assert_eq!(&s[..], &object[j * 128..(j + 1) * 128]);
    }
    assert_eq!(strips[4][..8], hex("d4 d5 d6 d7 d0 d1 d2 d3"));
    assert_eq!(strips[5][..8], hex("7d 7c 7f 7e 79 78 7b 7a"));
    assert_eq!(strips, reference_encode(&codec, &object));
}
