//! Files kept open by path, so an object's read or write costs no `open`,
//! `close` or path lookup: object files and their checksum sidecars.
//!
//! Whoever replaces, renames or removes a file forgets its handle while it
//! holds the object's lock (a handle to a replaced file would take writes
//! no one can read back). A handle is opened holding its shard's lock
//! ([`OpenFiles::get_or_open`]), so it is never kept after its file was
//! forgotten, nor opened twice at once for one path. Sharded by path (a
//! shard's lock is held for a map lookup, or the open of one file); a full
//! shard gives up one handle.

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
}

/// See the module documentation.
pub struct OpenFiles<V> {
    shards: Vec<Mutex<Shard<V>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<V> Default for OpenFiles<V> {
    fn default() -> Self {
        OpenFiles {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        open: HashMap::new(),
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

    /// [`OpenFiles::get`] if that needs no waiting for the shard (an
    /// async caller's): None if another thread holds it.
    pub fn try_get(&self, p: &Path) -> Option<Arc<V>> {
        self.shard(p).try_lock().ok()?.open.get(key(p)).cloned()
    }

    /// The handle kept for `p`, else the one `open` opens (holding the
    /// shard's lock), kept; what `open` fails with is returned and nothing
    /// is kept.
    pub fn get_or_open<X>(
        &self,
        p: &Path,
        open: impl FnOnce() -> Result<V, X>,
    ) -> Result<Arc<V>, X> {
        let mut s = self.shard(p).lock().unwrap();
        if let Some(v) = s.open.get(key(p)) {
            return Ok(v.clone());
        }
        let v = Arc::new(open()?);
        if s.open.len() >= PER_SHARD {
            if let Some(old) = s.open.keys().next().cloned() {
                s.open.remove(&old);
            }
        }
        s.open.insert(key(p).into(), v.clone());
        Ok(v)
    }

    /// Runs `f` with the handle kept for `p`, if any, holding the shard's
    /// lock (no handle of `p` is opened meanwhile).
    pub fn with_kept<R>(&self, p: &Path, f: impl FnOnce(Option<&V>) -> R) -> R {
        let s = self.shard(p).lock().unwrap();
        f(s.open.get(key(p)).map(|v| &**v))
    }

    pub fn forget(&self, p: &Path) {
        self.shard(p).lock().unwrap().open.remove(key(p));
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap().open.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_handle_is_opened_once_and_forgotten_with_its_file() {
        let c = OpenFiles::<u32>::default();
        let p = Path::new("/x/obj");
        assert_eq!(*c.get_or_open(p, || Ok::<_, ()>(1)).unwrap(), 1);
        // Kept: not opened again.
        assert_eq!(*c.get_or_open(p, || Ok::<_, ()>(2)).unwrap(), 1);
        assert_eq!(c.try_get(p).as_deref(), Some(&1));
        assert_eq!(c.with_kept(p, |v| v.copied()), Some(1));
        c.forget(p);
        assert!(c.get(p).is_none());
        // A failed open keeps nothing.
        assert_eq!(
            c.get_or_open(p, || Err::<u32, _>("gone")).unwrap_err(),
            "gone"
        );
        assert!(c.get(p).is_none());
        assert_eq!(*c.get_or_open(p, || Ok::<_, ()>(3)).unwrap(), 3);
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
            c.get_or_open(p, || Ok::<_, ()>(i)).unwrap();
        }
        let kept = paths.iter().filter(|p| c.get(p).is_some()).count();
        assert_eq!(kept, SHARDS * PER_SHARD);
    }
}
