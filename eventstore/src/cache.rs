//! An in-process cache of aggregate states, so a command on a hot aggregate skips reading its
//! stream.
//!
//! A cached state is only ever trusted for an append: the append carries the cached version as
//! its exact expected version, so if anyone else wrote to the stream since, the append fails
//! and the command reloads and decides again. A decision that appends nothing (a rejection, a
//! no-op) is never answered from the cache: it is re-made on a fresh load, because no append
//! would have caught a stale state.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use domain::Aggregate;
use lru::LruCache;

type Entry = (Arc<dyn Any + Send + Sync>, u64);

/// Least-recently-used states by stream id, bounded in count.
pub struct AggregateCache {
    entries: Mutex<LruCache<String, Entry>>,
}

impl std::fmt::Debug for AggregateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("AggregateCache")
            .field("entries", &len)
            .finish()
    }
}

impl AggregateCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn get<A: Aggregate>(&self, stream_id: &str) -> Option<(A, u64)> {
        let mut entries = self.entries.lock().ok()?;
        let (state, version) = entries.get(stream_id)?;
        let state = state.downcast_ref::<A>()?.clone();
        Some((state, *version))
    }

    pub fn put<A: Aggregate>(&self, stream_id: &str, state: &A, version: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(stream_id.to_owned(), (Arc::new(state.clone()), version));
        }
    }

    pub fn forget(&self, stream_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.pop(stream_id);
        }
    }
}
