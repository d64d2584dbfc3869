//! Files kept open by path, so an object's read or write costs no `open`,
//! `close` or path lookup: object files and their checksum sidecars.
//!
//! Whoever replaces, renames or removes a file forgets its handle while it
//! holds the object's lock (a handle to a replaced file would take writes
//! no one can read back). A handle opened before such a change must not be
//! kept after it either: [`OpenFiles::ticket`] is taken before opening and
//! [`OpenFiles::put`] keeps the handle only if nothing of its shard was
//! forgotten since. Sharded by path (a shard's lock is held only for a map
//! lookup); a full shard gives up one handle.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;
const PER_SHARD: usize = 16;

/// A path's bytes: hashed and compared as they are (a `Path` hashes its
/// components one by one).
type Key = Box<[u8]>;

fn key(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

struct Shard<V> {
    open: HashMap<Key, Arc<V>>,
    /// How many times a handle of this shard was forgotten.
    forgets: u64,
}

/// See the module documentation.
pub struct OpenFiles<V> {
    shards: Vec<Mutex<Shard<V>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// What [`OpenFiles::put`] needs to know that nothing was forgotten
/// since the handle was opened.
pub struct Ticket(u64);

impl<V> Default for OpenFiles<V> {
    fn default() -> Self {
        OpenFiles {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        open: HashMap::new(),
                        forgets: 0,
                    })
                })
                .collect(),
            hasher: Default::default(),
        }
    }
}

impl<V> OpenFiles<V> {
    fn shard(&self, p: &Path) -> &Mutex<Shard<V>> {
        &self.shards[self.hasher.hash_one(key(p)) as usize % SHARDS]
    }

    pub fn get(&self, p: &Path) -> Option<Arc<V>> {
        self.shard(p).lock().unwrap().open.get(key(p)).cloned()
    }

    /// Taken before opening what [`OpenFiles::put`] will keep.
    pub fn ticket(&self, p: &Path) -> Ticket {
        Ticket(self.shard(p).lock().unwrap().forgets)
    }

    /// Keeps `v`, open at `p`, unless a handle of its shard was forgotten
    /// since `t` was taken (it may be of a file replaced meanwhile); the
    /// handle to use for the operation at hand either way.
    pub fn put(&self, p: &Path, v: V, t: Ticket) -> Arc<V> {
        let v = Arc::new(v);
        let mut s = self.shard(p).lock().unwrap();
        if s.forgets == t.0 {
            if s.open.len() >= PER_SHARD {
                if let Some(old) = s.open.keys().next().cloned() {
                    s.open.remove(&old);
                }
            }
            s.open.insert(key(p).into(), v.clone());
        }
        v
    }

    pub fn forget(&self, p: &Path) {
        let mut s = self.shard(p).lock().unwrap();
        s.open.remove(key(p));
        s.forgets += 1;
    }

    pub fn clear(&self) {
        for s in &self.shards {
            let mut s = s.lock().unwrap();
            s.open.clear();
            s.forgets += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_handle_opened_before_a_forget_is_not_kept() {
        let c = OpenFiles::<u32>::default();
        let p = Path::new("/x/obj");
        let t = c.ticket(p);
        // The file is replaced (and its handle forgotten) while the
        // handle of the old one was being opened.
        c.forget(p);
        assert_eq!(*c.put(p, 1, t), 1, "used once");
        assert!(c.get(p).is_none(), "but not kept");
        let t = c.ticket(p);
        c.put(p, 2, t);
        assert_eq!(c.get(p).as_deref(), Some(&2));
        c.clear();
        assert!(c.get(p).is_none());
    }

    #[test]
    fn a_full_shard_gives_up_one_handle_not_all() {
        let c = OpenFiles::<usize>::default();
        let paths: Vec<PathBuf> = (0..SHARDS * PER_SHARD * 4)
            .map(|i| PathBuf::from(format!("/o/{i}")))
            .collect();
        for (i, p) in paths.iter().enumerate() {
            let t = c.ticket(p);
            c.put(p, i, t);
        }
        let kept = paths.iter().filter(|p| c.get(p).is_some()).count();
        assert_eq!(kept, SHARDS * PER_SHARD);
    }
}
