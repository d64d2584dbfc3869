//! Hostile input against the whole server (`serve`), with a global
//! allocator that records the largest single allocation: arbitrary bytes,
//! and structured-but-lying streams of options and requests, must never
//! panic, never hang, and never make the server allocate more than its
//! documented bounds (64 KiB per option, one 32 MiB payload per valid
//! WRITE/READ; lengths it refuses cost nothing).
//!
//! One `#[test]` only: the allocator's record is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sd_nbd::mem::{MemExport, MemExports};
use sd_nbd::proto::{cmd, opt, OptionHeader, RequestHeader, MAX_PAYLOAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Buffers the server always has: 64 KiB read and write buffers, one
/// option body of at most 64 KiB, plus task and runtime bookkeeping.
const HANDSHAKE_BOUND: usize = 192 << 10;

/// Feeds `input` to a fresh server as the whole client stream (then EOF),
/// discarding what it sends back; returns the largest allocation made.
fn largest_allocation(
    rt: &tokio::runtime::Runtime,
    exports: &Arc<MemExports>,
    input: &[u8],
) -> usize {
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let exports = exports.clone();
        LARGEST.store(0, Ordering::Relaxed);
        let srv = tokio::spawn(async move { sd_nbd::serve(server, exports).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let sink = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while rd.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        // The server may hang up early; that is fine.
        let _ = wr.write_all(input).await;
        let _ = wr.shutdown().await;
        let done = tokio::time::timeout(Duration::from_secs(20), srv).await;
        let peak = LARGEST.load(Ordering::Relaxed);
        assert!(done.expect("server hung").is_ok(), "server task panicked");
        drop(wr);
        sink.await.unwrap();
        peak
    })
}

#[derive(Debug, Clone)]
enum Msg {
    /// An option whose header length may lie about its data.
    Opt {
        code: u32,
        len: u32,
        data: Vec<u8>,
    },
    Go(&'static str),
    /// A request whose payload may not match its length.
    Req {
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: usize,
    },
    Raw(Vec<u8>),
}

fn arb_len(data_len: usize) -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(data_len as u32),
        1 => any::<u32>(),
        1 => Just(u32::MAX),
        1 => Just(MAX_PAYLOAD + 1),
        1 => 0u32..16,
    ]
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (0u32..14, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_flat_map(|(code, data)| (Just(code), arb_len(data.len()), Just(data)))
            .prop_map(|(code, len, data)| Msg::Opt { code, len, data }),
        prop_oneof![Just("mem"), Just("nope"), Just("")].prop_map(Msg::Go),
        (
            0u16..10,
            any::<u16>(),
            prop_oneof![0u64..(1 << 20), any::<u64>()],
            arb_len(4096),
            0usize..5000
        )
            .prop_map(|(kind, flags, offset, len, payload)| Msg::Req {
                kind,
                flags,
                offset,
                len,
                payload
            }),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Msg::Raw),
    ]
}

fn encode(client_flags: u32, msgs: &[Msg]) -> Vec<u8> {
    let mut v = client_flags.to_be_bytes().to_vec();
    for m in msgs {
        match m {
            Msg::Opt { code, len, data } => {
                v.extend_from_slice(
                    &OptionHeader {
                        option: *code,
                        length: *len,
                    }
                    .encode(),
                );
                v.extend_from_slice(data);
            }
            Msg::Go(name) => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                d.extend_from_slice(&0u16.to_be_bytes());
                v.extend_from_slice(
                    &OptionHeader {
                        option: opt::GO,
                        length: d.len() as u32,
                    }
                    .encode(),
                );
                v.extend_from_slice(&d);
            }
            Msg::Req {
                kind,
                flags,
                offset,
                len,
                payload,
            } => {
                let h = RequestHeader {
                    flags: *flags,
                    kind: *kind,
                    cookie: 1,
                    offset: *offset,
                    length: *len,
                };
                v.extend_from_slice(&h.encode());
                v.resize(v.len() + payload, 0xa5);
            }
            Msg::Raw(b) => v.extend_from_slice(b),
        }
    }
    v
}

#[test]
fn hostile_streams_stay_within_memory_bounds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exports = Arc::new(MemExports::new());
    exports.insert("mem", Arc::new(MemExport::new(1 << 20)));

    // Fixed worst cases first.
    let huge_opt = |len: u32| {
        encode(
            1,
            &[Msg::Opt {
                code: opt::GO,
                len,
                data: vec![],
            }],
        )
    };
    let go_then = |kind: u16, len: u32| {
        encode(
            3,
            &[
                Msg::Go("mem"),
                Msg::Req {
                    kind,
                    flags: 0,
                    offset: 0,
                    len,
                    payload: 0,
                },
            ],
        )
    };
    for (what, input) in [
        ("option length 4 GiB", huge_opt(u32::MAX)),
        ("option length 16 MiB, never sent", huge_opt(16 << 20)),
        (
            "unknown option 16 MiB, never sent",
            encode(
                1,
                &[Msg::Opt {
                    code: 77,
                    len: 16 << 20,
                    data: vec![],
                }],
            ),
        ),
        ("WRITE of 4 GiB", go_then(cmd::WRITE, u32::MAX)),
        ("READ of 4 GiB", go_then(cmd::READ, u32::MAX)),
        ("TRIM of 4 GiB", go_then(cmd::TRIM, u32::MAX)),
        (
            "BLOCK_STATUS of 4 GiB",
            go_then(cmd::BLOCK_STATUS, u32::MAX),
        ),
        ("WRITE beyond the end", go_then(cmd::WRITE, 2 << 20)),
    ] {
        let peak = largest_allocation(&rt, &exports, &input);
        assert!(
            peak <= HANDSHAKE_BOUND,
            "{what}: allocated {peak} bytes at once"
        );
    }
    // A valid maximum WRITE header may reserve its payload: the bound.
    let peak = largest_allocation(&rt, &exports, &go_then(cmd::WRITE, 1 << 20));
    assert!(
        peak <= (1 << 20) + HANDSHAKE_BOUND,
        "1 MiB WRITE allocated {peak}"
    );

    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..Default::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            let peak = largest_allocation(&rt, &exports, &bytes);
            prop_assert!(peak <= HANDSHAKE_BOUND, "random bytes: {} at once", peak);
            Ok(())
        })
        .unwrap();
    runner
        .run(
            &(
                prop_oneof![Just(1u32), Just(3), any::<u32>()],
                any::<bool>(),
                proptest::collection::vec(arb_msg(), 0..12),
            ),
            |(f, go, mut msgs)| {
                if go {
                    // Make sure a good share of cases reach transmission.
                    msgs.insert(0, Msg::Go("mem"));
                }
                let peak = largest_allocation(&rt, &exports, &encode(f, &msgs));
                prop_assert!(
                    peak <= MAX_PAYLOAD as usize + HANDSHAKE_BOUND,
                    "{} at once",
                    peak
                );
                Ok(())
            },
        )
        .unwrap();
}
