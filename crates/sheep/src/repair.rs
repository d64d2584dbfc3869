//! Repair of copies whose bytes fail their checksums.
//!
//! A replica or erasure-coded strip that fails its checksums is never
//! served (the store refuses to read it; gateways read another copy, or
//! decode around the strip) and is repaired here, by the node that holds
//! it, block by block: from another current holder of a replica, or
//! decoded from the same range of `d` other strips.
//!
//! Why this is safe against writes in flight: the repair holds the
//! object's stripe exclusively, so no write lands on this node's copy
//! meanwhile, and it first checks again which blocks are still bad. A
//! block a write has rewritten since verifies, and is left alone. A block
//! still bad has had no write since it went bad on this node; any write
//! to it in flight is applied here after the repair (it waits for the
//! stripe), so fetching the block from a holder that has or has not
//! applied that write yet converges to the same bytes. Whole-object
//! replacement would not be safe: a write already applied here but not
//! yet at the source would be undone.
//!
//! A strip's range decoded while a stripe write is half applied mixes
//! generations, but only in the stripes that write covers, and it sends
//! every strip the same range: its part for this strip, waiting for the
//! stripe here, then overwrites exactly those bytes. (A gateway that dies
//! before sending it has left those stripes inconsistent on every node
//! anyway: no decode of them is right, and the write was never
//! acknowledged.)

use crate::daemon::Sheep;
use sd_proto::*;
use sd_store::{csum, ObjKey, StoreError, Verdict};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What this node found and did about corruption since it started
/// (reported by `dog node scrub status`).
#[derive(Default)]
pub struct Integrity {
    /// Blocks found not matching their checksums.
    pub bad_blocks: AtomicU64,
    /// Blocks rewritten from another copy.
    pub repaired: AtomicU64,
    /// Blocks no other copy could provide (yet).
    pub unrepaired: AtomicU64,
    /// Objects whose other replicas differ from this node's copy (found
    /// by the scrub; see [`crate::scrub`]).
    pub differing: AtomicU64,
    /// Objects with a repair scheduled or running.
    repairing: Mutex<HashSet<ObjKey>>,
}

impl Integrity {
    /// Holds the lock of the repair set (for the test that no request
    /// waits for it).
    #[cfg(test)]
    pub fn hold(&self) -> impl Sized + '_ {
        self.repairing.lock().unwrap()
    }
}

/// Records blocks of `key` found failing their checksums, and logs it.
pub fn found(sheep: &Sheep, key: &ObjKey, blocks: &[usize]) {
    sheep
        .integrity
        .bad_blocks
        .fetch_add(blocks.len() as u64, Relaxed);
    tracing::error!(
        "object {}: blocks {blocks:?} (of {} bytes) fail their checksums; not served, repairing",
        key.file_name(),
        csum::BLOCK
    );
}

/// Repairs `key` in the background (once, however often it is asked).
pub fn spawn(sheep: &Arc<Sheep>, key: ObjKey) {
    if !sheep.integrity.repairing.lock().unwrap().insert(key) {
        return;
    }
    let s = sheep.clone();
    tokio::spawn(async move {
        repair(&s, key).await;
        s.integrity.repairing.lock().unwrap().remove(&key);
    });
}

/// Rewrites the blocks of `key` that fail their checksums with the bytes
/// of another current holder; how many blocks were still bad.
pub async fn repair(sheep: &Arc<Sheep>, key: ObjKey) -> usize {
    let _exclusive = sheep.obj_locks.stripe(key.oid).write_owned().await;
    let s = sheep.clone();
    let checked = sheep
        .on_store(move || Ok::<_, StoreError>((s.store.verify(&key)?, s.store.size(&key)?)))
        .await;
    let (blocks, size) = match checked {
        Ok(Ok((Verdict::Bad(b), size))) => (b, size),
        Ok(Ok(_)) => return 0,
        Ok(Err(e)) => {
            sheep.disk_failed(&e);
            return 0;
        }
        Err(_) => return 0,
    };
    let bad = blocks.len();
    let view = sheep.view();
    let targets = Sheep::targets(&view, key.oid);
    for run in runs(&blocks) {
        let (start, _) = csum::block_range(run.start, size);
        let (_, end) = csum::block_range(run.end - 1, size);
        let mut fixed = false;
        if let Some(data) = fetch_run(sheep, view.epoch, &targets, key, start, end).await {
            let s = sheep.clone();
            match sheep
                .on_store(move || s.store.write(&key, start, &data))
                .await
            {
                Ok(Ok(())) => fixed = true,
                Ok(Err(e)) => {
                    sheep.disk_failed(&e);
                }
                Err(_) => {}
            }
        }
        let n = run.len() as u64;
        if fixed {
            sheep.integrity.repaired.fetch_add(n, Relaxed);
            tracing::warn!(
                "object {}: repaired bytes {start}..{end} from another copy",
                key.file_name()
            );
        } else {
            sheep.integrity.unrepaired.fetch_add(n, Relaxed);
            tracing::error!(
                "object {}: bytes {start}..{end} fail their checksums on every copy this node could reach",
                key.file_name()
            );
        }
    }
    bad
}

/// Bytes `[start, end)` of `key` as the other current holders have
/// them: another replica's, or a strip's decoded from the same range of
/// `d` other strips.
async fn fetch_run(
    sheep: &Arc<Sheep>,
    epoch: u32,
    targets: &[SdNode],
    key: ObjKey,
    start: u64,
    end: u64,
) -> Option<Vec<u8>> {
    let read = |n: SdNode, ec_index: u8| {
        let mut r = SdReq::new(op::READ_PEER);
        r.epoch = epoch;
        r.data_length = (end - start) as u32;
        r.set_obj(ObjArgs {
            oid: key.oid,
            offset: start as u32,
            ec_index,
            ..Default::default()
        });
        async move {
            let (rsp, data) = sheep.send_peer(n.nid.io_socket_addr(), &r, &[]).await;
            (rsp.result == SdRes::SUCCESS && data.len() as u64 == end - start).then_some(data)
        }
    };
    let Some(j) = key.ec_index else {
        for n in targets.iter().filter(|n| n.nid != sheep.this.nid) {
            if let Some(data) = read(*n, 0).await {
                return Some(data);
            }
        }
        return None;
    };
    let codec = sheep.ec_codec(key.oid, 0)?;
    let mut present = Vec::new();
    for (k, n) in targets.iter().enumerate().filter(|(k, _)| *k != j as usize) {
        if let Some(data) = read(*n, k as u8).await {
            present.push((k, data));
        }
        if present.len() == codec.policy().data_strips() {
            let mut out = vec![0u8; (end - start) as usize];
            let mut missing = [(j as usize, out.as_mut_slice())];
            codec.reconstruct_into(&present, &mut missing).ok()?;
            return Some(out);
        }
    }
    None
}

/// Sorted block numbers as runs of consecutive blocks.
fn runs(blocks: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(r) if r.end == b => r.end += 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, Mode};
    use sd_store::ObjectStore;

    #[test]
    fn blocks_group_into_runs() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(runs(&[]).is_empty());
    }

    const OID: u64 = 0x00ab_cd00_0000_0042;

    /// Lets background repairs run until `done` holds.
    async fn settle(h: &Harness, done: impl Fn(&Integrity) -> bool) {
        for _ in 0..1000 {
            if done(&h.sheep.integrity) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the repair did not finish");
    }

    #[tokio::test]
    async fn a_rotten_block_is_never_served_and_is_repaired_from_a_peer() {
        let h = Harness::new(1, 2, false).await;
        let key = ObjKey::replica(OID);
        let good: Vec<u8> = (0..SD_DATA_OBJ_SIZE as usize)
            .map(|i| (i / 4096) as u8)
            .collect();
        // Both hold the good copy; then a block of ours rots.
        for st in [&*h.store, &h.peer(1).store] {
            st.create_and_write(&key, SD_DATA_OBJ_SIZE, 0, &good)
                .unwrap();
        }
        h.store.rot(&key, 5 * 4096 + 3);
        // A gateway read falls to the good copy.
        let r = crate::gateway::read(&h.sheep, OID, 5 * 4096, 4096, 0).await;
        assert_eq!(r.unwrap(), &good[5 * 4096..6 * 4096]);
        // The failed read scheduled the repair, which rewrites only the bad
        // block, from the peer.
        settle(&h, |i| i.repaired.load(Relaxed) == 1).await;
        assert_eq!(h.sheep.integrity.bad_blocks.load(Relaxed), 1);
        assert_eq!(h.store.verify(&key).unwrap(), Verdict::Good);
        assert_eq!(h.store.read_all(&key).unwrap(), good);
        assert_eq!(h.sheep.integrity.repaired.load(Relaxed), 1);
        assert_eq!(repair(&h.sheep, key).await, 0);
    }

    #[tokio::test]
    async fn a_write_into_a_rotten_block_repairs_it_first_and_lands() {
        let h = Harness::new(1, 2, false).await;
        let key = ObjKey::replica(OID);
        let good = vec![7u8; SD_DATA_OBJ_SIZE as usize];
        for st in [&*h.store, &h.peer(1).store] {
            st.create_and_write(&key, SD_DATA_OBJ_SIZE, 0, &good)
                .unwrap();
        }
        h.store.rot(&key, 10);
        let w = crate::gateway::write(&h.sheep, OID, 100, b"new".to_vec(), 0).await;
        assert_eq!(w, Ok(()));
        let mut want = good;
        want[100..103].copy_from_slice(b"new");
        assert_eq!(h.store.read_all(&key).unwrap(), want);
        assert_eq!(h.peer(1).store.read_all(&key).unwrap(), want);
        assert_eq!(h.sheep.integrity.repaired.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_block_rotten_everywhere_fails_the_read_and_stays_counted() {
        let h = Harness::new(1, 2, false).await;
        let key = ObjKey::replica(OID);
        h.store
            .create_and_write(&key, SD_DATA_OBJ_SIZE, 0, b"abc")
            .unwrap();
        h.peer(1).set_mode(Mode::Answer(SdRes::EIO));
        h.store.rot(&key, 1);
        let r = crate::gateway::read(&h.sheep, OID, 0, 512, 0).await;
        assert_eq!(r, Err(SdRes::EIO));
        settle(&h, |i| i.unrepaired.load(Relaxed) == 1).await;
        assert_eq!(repair(&h.sheep, key).await, 1);
        assert_eq!(h.sheep.integrity.repaired.load(Relaxed), 0);
        assert!(matches!(
            h.store.read(&key, 0, 3),
            Err(StoreError::Checksum { .. })
        ));
    }
}
