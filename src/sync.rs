//! Locks over plain in-memory state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, also after a panic elsewhere poisoned it: what asmux keeps behind a
/// std mutex (maps of live connections, timestamps, a store's write turn) is changed in
/// single steps, so a panic cannot leave it half-changed.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
