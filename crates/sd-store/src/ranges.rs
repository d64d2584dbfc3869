//! Per-object block-range locks of the file store.
//!
//! A write keeps an object's checksums true only if no other write
//! changes the same blocks between its read-modify-write of a partial
//! block, its checksum update and its data write. Writes to different
//! blocks of one object (a VM writing sequentially at queue depth 16)
//! must still run side by side, so what is locked is a block range of one
//! object, not the object; replacing or removing a file locks all of it.
//! The table is striped by object, and a stripe's mutex is held only to
//! look at the table, never across I/O.

use crate::ObjKey;
use std::sync::{Condvar, Mutex};

const STRIPES: usize = 64;

/// The ranges held on one stripe's objects, and their waiters.
type Stripe = (Mutex<Vec<(ObjKey, usize, usize)>>, Condvar);

/// See the module documentation.
pub struct RangeLocks {
    stripes: Vec<Stripe>,
}

impl Default for RangeLocks {
    fn default() -> Self {
        RangeLocks {
            stripes: (0..STRIPES).map(|_| Default::default()).collect(),
        }
    }
}

/// Blocks `first..end` of one object, held until dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    held: (ObjKey, usize, usize),
}

impl RangeLocks {
    fn stripe(&self, k: &ObjKey) -> &Stripe {
        &self.stripes[(k.oid.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % STRIPES]
    }

    /// Waits until no one holds a block of `first..end` of `k`, then holds it.
    pub fn lock(&self, k: &ObjKey, first: usize, end: usize) -> RangeGuard<'_> {
        let (m, cv) = self.stripe(k);
        let mut held = m.lock().unwrap();
        while overlaps(&held, k, first, end) {
            held = cv.wait(held).unwrap();
        }
        self.hold(&mut held, k, first, end)
    }

    /// Holds blocks `first..end` of `k` if no one holds any of them.
    pub fn try_lock(&self, k: &ObjKey, first: usize, end: usize) -> Option<RangeGuard<'_>> {
        let mut held = self.stripe(k).0.lock().unwrap();
        (!overlaps(&held, k, first, end)).then(|| self.hold(&mut held, k, first, end))
    }

    fn hold(
        &self,
        held: &mut Vec<(ObjKey, usize, usize)>,
        k: &ObjKey,
        first: usize,
        end: usize,
    ) -> RangeGuard<'_> {
        held.push((*k, first, end));
        RangeGuard {
            locks: self,
            held: (*k, first, end),
        }
    }

    /// Holds every block of `k`.
    pub fn lock_all(&self, k: &ObjKey) -> RangeGuard<'_> {
        self.lock(k, 0, usize::MAX)
    }
}

fn overlaps(held: &[(ObjKey, usize, usize)], k: &ObjKey, first: usize, end: usize) -> bool {
    held.iter()
        .any(|(hk, s, e)| hk == k && *s < end && first < *e)
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let (m, cv) = self.locks.stripe(&self.held.0);
        let mut held = m.lock().unwrap();
        if let Some(i) = held.iter().position(|h| *h == self.held) {
            held.swap_remove(i);
        }
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn overlapping_ranges_wait_and_others_do_not() {
        let locks = Arc::new(RangeLocks::default());
        let k = ObjKey::replica(7);
        let g = locks.lock(&k, 0, 4);
        // Disjoint blocks and other objects are free.
        drop(locks.lock(&k, 4, 8));
        drop(locks.lock(&ObjKey::replica(8), 0, 4));
        assert!(locks.try_lock(&k, 3, 5).is_none());
        assert!(locks.try_lock(&k, 4, 5).is_some());
        let entered = Arc::new(AtomicBool::new(false));
        let t = {
            let (locks, entered) = (locks.clone(), entered.clone());
            std::thread::spawn(move || {
                let _g = locks.lock_all(&k);
                entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst));
        drop(g);
        t.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }
}
