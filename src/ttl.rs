//! A small map whose values expire: per-cgroup usage snapshots shared by every reader of that cgroup.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Values kept for `ttl` after they were computed; a zero TTL computes every time.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` keys (past it, expired entries go, then everything).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `key` if younger than the TTL, else `compute()`, which is then kept. The lock is
    /// not held while computing, so a slow kernel read never blocks readers of other keys.
    pub fn get_or_try_insert<E>(
        &self,
        key: &K,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if self.ttl.is_zero() {
            return compute();
        }
        if let Some((at, value)) = self.entries.lock().get(key) {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = compute()?;
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key.clone(), (Instant::now(), value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_values_are_reused_and_stale_ones_recomputed() {
        let cache = TtlCache::new(Duration::from_millis(20), 4);
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, ()>(10)), Ok(10));
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, ()>(11)), Ok(10));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, ()>(12)), Ok(12));
    }

    #[test]
    fn errors_are_not_kept_and_capacity_is_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60), 2);
        assert_eq!(
            cache.get_or_try_insert(&1, || Err::<u8, _>("gone")),
            Err("gone")
        );
        for key in 0..10 {
            cache.get_or_try_insert(&key, || Ok::<_, ()>(key)).unwrap();
        }
        assert!(cache.entries.lock().len() <= 2);
    }
}
