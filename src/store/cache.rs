//! A moka cache in front of a sled tree. Fills and invalidations both happen under the
//! store's lock (see `Store::lock`), so a cached value is never older than the tree.

use std::hash::Hash;
use std::sync::Arc;

use super::StoreError;

pub(super) struct ReadThrough<K, V> {
    cache: moka::sync::Cache<K, Arc<V>>,
}

impl<K, V> ReadThrough<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Send + Sync + 'static,
{
    pub(super) fn new(capacity: u64) -> Self {
        ReadThrough {
            cache: moka::sync::Cache::new(capacity),
        }
    }

    /// The cached value, or `load()`'s result cached. Absent keys are not cached.
    pub(super) fn get(
        &self,
        key: &K,
        lock: &std::sync::Mutex<()>,
        load: impl FnOnce() -> Result<Option<V>, StoreError>,
    ) -> Result<Option<Arc<V>>, StoreError> {
        if let Some(hit) = self.cache.get(key) {
            return Ok(Some(hit));
        }
        let _guard = crate::sync::lock(lock);
        if let Some(hit) = self.cache.get(key) {
            return Ok(Some(hit));
        }
        let loaded = load()?.map(Arc::new);
        if let Some(value) = &loaded {
            self.cache.insert(key.clone(), value.clone());
        }
        Ok(loaded)
    }

    /// Forgets `key`; call with the store's lock held, after the write.
    pub(super) fn invalidate(&self, key: &K) {
        self.cache.invalidate(key);
    }
}
