//! Encode and decode throughput on a 4 MiB object (object bytes / time),
//! for sd-ec and, for comparison only, `reed-solomon-simd` (a different,
//! incompatible code: Leopard-style FFT over GF(2^16)).
//!
//! "decode" loses data strips 0 and 1 and rebuilds them from the first d
//! survivors, as recovery would. `reed-solomon-simd` is fed the object as
//! d contiguous shards (its native layout), so it skips the stripe
//! gather that sd-ec's encode includes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use sd_ec::{Codec, EcPolicy, Kernel};

const OBJECT: usize = 4 << 20;
const POLICIES: [(u8, u8); 3] = [(4, 2), (8, 3), (16, 4)];

fn object() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..OBJECT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn name((d, p): (u8, u8)) -> String {
    format!("{d}:{p}")
}

fn encode(c: &mut Criterion) {
    let object = object();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::BytesDecimal(OBJECT as u64));
    for (d, p) in POLICIES {
        let codec = Codec::new(EcPolicy::new(d, p).unwrap()).unwrap();
        let mut strips = vec![Vec::new(); usize::from(d + p)];
        g.bench_function(BenchmarkId::new("sd-ec", name((d, p))), |b| {
            b.iter(|| codec.encode(black_box(&object), &mut strips).unwrap())
        });

        let shard = OBJECT / usize::from(d);
        let mut enc = ReedSolomonEncoder::new(d.into(), p.into(), shard).unwrap();
        g.bench_function(BenchmarkId::new("reed-solomon-simd", name((d, p))), |b| {
            b.iter(|| {
                for s in black_box(&object).chunks_exact(shard) {
                    enc.add_original_shard(s).unwrap();
                }
                let result = enc.encode().unwrap();
                black_box(result.recovery(0).unwrap()[0]);
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let object = object();
    let mut g = c.benchmark_group("decode-2-lost");
    g.throughput(Throughput::BytesDecimal(OBJECT as u64));
    for (d, p) in POLICIES {
        let (d, p) = (usize::from(d), usize::from(p));
        let codec = Codec::new(EcPolicy::new(d as u8, p as u8).unwrap()).unwrap();
        let mut strips = vec![Vec::new(); d + p];
        codec.encode(&object, &mut strips).unwrap();
        let present: Vec<(usize, &[u8])> = (2..d + 2).map(|i| (i, &strips[i][..])).collect();
        let mut missing: Vec<(usize, Vec<u8>)> = (0..2).map(|i| (i, vec![0; OBJECT / d])).collect();
        g.bench_function(BenchmarkId::new("sd-ec", name((d as u8, p as u8))), |b| {
            b.iter(|| {
                codec
                    .reconstruct_into(black_box(&present), &mut missing)
                    .unwrap()
            })
        });
        assert_eq!(missing[0].1, strips[0]);
        assert_eq!(missing[1].1, strips[1]);

        let shard = OBJECT / d;
        let shards: Vec<&[u8]> = object.chunks_exact(shard).collect();
        let recovery: Vec<Vec<u8>> = {
            let mut enc = ReedSolomonEncoder::new(d, p, shard).unwrap();
            for s in &shards {
                enc.add_original_shard(s).unwrap();
            }
            let result = enc.encode().unwrap();
            result.recovery_iter().map(<[u8]>::to_vec).collect()
        };
        let mut dec = ReedSolomonDecoder::new(d, p, shard).unwrap();
        g.bench_function(
            BenchmarkId::new("reed-solomon-simd", name((d as u8, p as u8))),
            |b| {
                b.iter(|| {
                    for (i, s) in shards.iter().enumerate().skip(2) {
                        dec.add_original_shard(i, s).unwrap();
                    }
                    for (i, s) in recovery.iter().enumerate().take(2) {
                        dec.add_recovery_shard(i, s).unwrap();
                    }
                    let result = dec.decode().unwrap();
                    black_box(result.restored_original(0).unwrap()[0]);
                })
            },
        );
    }
    g.finish();
}

/// The same 4:2 encode on each kernel the CPU supports.
fn kernels(c: &mut Criterion) {
    let object = object();
    let mut g = c.benchmark_group("encode-4:2-kernel");
    g.throughput(Throughput::BytesDecimal(OBJECT as u64));
    for kernel in [Kernel::Scalar, Kernel::Ssse3, Kernel::Avx2] {
        let Ok(codec) = Codec::with_kernel(EcPolicy::new(4, 2).unwrap(), kernel) else {
            continue;
        };
        let mut strips = vec![Vec::new(); 6];
        g.bench_function(format!("{kernel:?}"), |b| {
            b.iter(|| codec.encode(black_box(&object), &mut strips).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = encode, decode, kernels
}
criterion_main!(benches);
