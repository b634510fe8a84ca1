//! The daemon's one eviction policy: a map bounded by a number of entries (least recently used goes first)
//! whose entries also expire a fixed time after they were computed. Every per-reader and per-cgroup map
//! of the daemon is one of these (see [`crate::reader::Registry`] for their budgets), so nothing a
//! container does can grow the daemon without bound, and nothing is ever cleared wholesale.
//!
//! Expired entries are dropped lazily: on every insert from the least recently used end, and by
//! [`Lru::sweep`], which the daemon calls periodically. An entry is therefore gone at most one TTL after
//! its last use (plus a sweep period): whatever it holds (a pidfd) is released promptly.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// A bounded, expiring map behind a mutex. Values are cloned out (keep them small or in an `Arc`); the
/// lock is never held while a value is computed, so a slow kernel read blocks no reader of other keys.
#[derive(Debug)]
pub struct Lru<K: Hash + Eq, V> {
    ttl: Duration,
    entries: Mutex<LruCache<K, Slot<V>>>,
    /// Fresh entries pushed out to make room: a map at its budget (see [`Lru::evictions`]).
    evictions: AtomicU64,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    at: Instant,
}

impl<V> Slot<V> {
    fn is_fresh(&self, ttl: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < ttl
    }
}

/// A TTL for maps whose entries never expire (they leave only when the map is full).
pub const NO_EXPIRY: Duration = Duration::MAX;

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// At most `capacity` entries (at least 1), each kept for `ttl` after it was inserted. A zero TTL
    /// keeps nothing: every lookup computes.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Lru {
            ttl,
            entries: Mutex::new(LruCache::new(capacity)),
            evictions: AtomicU64::new(0),
        }
    }

    /// The fresh value for `key` that `valid` accepts; an expired or refused entry is dropped. `valid`
    /// runs outside the lock (it may ask the kernel).
    pub fn get_if(&self, key: &K, valid: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut entries = self.entries.lock();
        let slot = entries.get(key)?;
        let fresh = slot
            .is_fresh(self.ttl, Instant::now())
            .then(|| slot.value.clone());
        drop(entries);
        if let Some(value) = fresh {
            if valid(&value) {
                return Some(value);
            }
        }
        // Dropped outside the lock: a value may hold an fd to close.
        let dropped = self.entries.lock().pop(key);
        drop(dropped);
        None
    }

    /// The fresh value for `key`, if any.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_if(key, |_| true)
    }

    /// The fresh value for `key`, if any, without counting as a use (for reports: what an operator
    /// looks at must not keep an entry from going).
    pub fn peek(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock();
        let slot = entries.peek(key)?;
        slot.is_fresh(self.ttl, Instant::now())
            .then(|| slot.value.clone())
    }

    /// The fresh value for `key`, else `compute()`, which is kept unless it fails.
    pub fn get_or_try_insert<E>(
        &self,
        key: &K,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let value = compute()?;
        self.insert(key.clone(), value.clone());
        Ok(value)
    }

    /// Keeps `value` for `key`, evicting expired entries and then, if still full, the least recently
    /// used one.
    pub fn insert(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let expired = Self::drop_expired(&mut entries, self.ttl, now);
        let evicted = self.push(&mut entries, key, Slot { value, at: now });
        drop(entries);
        drop((expired, evicted));
    }

    /// Replaces the value of `key` with `update(previous fresh value)` and returns it: a read-modify-write
    /// under the lock (for counters that must never go backwards).
    pub fn update(&self, key: K, update: impl FnOnce(Option<&V>) -> V) -> V {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let previous = entries
            .get(&key)
            .filter(|slot| slot.is_fresh(self.ttl, now))
            .map(|slot| &slot.value);
        let value = update(previous);
        if !self.ttl.is_zero() {
            let expired = Self::drop_expired(&mut entries, self.ttl, now);
            let evicted = self.push(
                &mut entries,
                key,
                Slot {
                    value: value.clone(),
                    at: now,
                },
            );
            drop(entries);
            drop((expired, evicted));
        }
        value
    }

    /// The fresh entries, most recently used first, without touching their recency.
    pub fn snapshot(&self) -> Vec<(K, V)> {
        let now = Instant::now();
        self.entries
            .lock()
            .iter()
            .filter(|(_, slot)| slot.is_fresh(self.ttl, now))
            .map(|(key, slot)| (key.clone(), slot.value.clone()))
            .collect()
    }

    /// Changes the value of `key` in place, if it is there, without counting as a use (its recency and
    /// age stay): for background work on entries that readers keep alive.
    pub fn modify(&self, key: &K, change: impl FnOnce(&mut V)) {
        if let Some(slot) = self.entries.lock().peek_mut(key) {
            change(&mut slot.value);
        }
    }

    /// Drops `key`.
    pub fn remove(&self, key: &K) {
        let dropped = self.entries.lock().pop(key);
        drop(dropped);
    }

    /// Drops every expired entry that is not more recently used than a fresh one; returns how many went.
    /// Called periodically, so what an idle daemon holds is released too.
    pub fn sweep(&self) -> usize {
        let expired = Self::drop_expired(&mut self.entries.lock(), self.ttl, Instant::now());
        expired.len()
    }

    /// Entries held now (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries this map holds.
    pub fn capacity(&self) -> usize {
        self.entries.lock().cap().get()
    }

    /// Fresh entries pushed out since the map was made, because it was full: a count that grows
    /// means the budget is too small for the node (entries are computed again, correctly but slower).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Pushes `slot` for `key`, counting an entry of another key pushed out; returns what went.
    fn push(&self, entries: &mut LruCache<K, Slot<V>>, key: K, slot: Slot<V>) -> Option<V> {
        let replaced = entries.push(key.clone(), slot)?;
        if replaced.0 != key {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Some(replaced.1.value)
    }

    /// Pops expired entries from the least recently used end and returns them (to be dropped once the
    /// lock is released). Since an entry is inserted no later than it is last used, every entry unused
    /// for a TTL is reached: the ones behind it are older still.
    fn drop_expired(entries: &mut LruCache<K, Slot<V>>, ttl: Duration, now: Instant) -> Vec<V> {
        let mut dropped = Vec::new();
        while entries
            .peek_lru()
            .is_some_and(|(_, slot)| !slot.is_fresh(ttl, now))
        {
            if let Some((_, slot)) = entries.pop_lru() {
                dropped.push(slot.value);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_values_are_reused_and_stale_ones_recomputed() {
        let cache = Lru::new(4, Duration::from_secs(3600));
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, ()>(10)), Ok(10));
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, ()>(11)), Ok(10));

        let expiring = Lru::new(4, Duration::from_millis(1));
        assert_eq!(expiring.get_or_try_insert(&1, || Ok::<_, ()>(10)), Ok(10));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expiring.get_or_try_insert(&1, || Ok::<_, ()>(12)), Ok(12));
    }

    #[test]
    fn errors_are_not_kept() {
        let cache = Lru::new(4, NO_EXPIRY);
        assert_eq!(
            cache.get_or_try_insert(&1, || Err::<u8, _>("gone")),
            Err("gone")
        );
        assert!(cache.is_empty());
        assert_eq!(cache.get_or_try_insert(&1, || Ok::<_, &str>(7)), Ok(7));
        assert_eq!(cache.get(&1), Some(7));
    }

    #[test]
    fn a_full_map_evicts_the_least_recently_used_entry_only() {
        let cache = Lru::new(3, NO_EXPIRY);
        for key in 0..3 {
            cache.insert(key, key * 10);
        }
        assert_eq!(cache.get(&0), Some(0), "0 is now the most recently used");
        cache.insert(3, 30);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&1), None, "1 was the least recently used");
        assert_eq!(cache.get(&0), Some(0));
        assert_eq!(cache.get(&2), Some(20));
        assert_eq!(cache.get(&3), Some(30));
        assert_eq!(cache.evictions(), 1, "only 1 was pushed out");
        assert_eq!(cache.peek(&0), Some(0), "0 is the least recently used");
        cache.insert(4, 40);
        assert_eq!(cache.get(&0), None, "a peek is no use: 0 went first");
        assert_eq!(cache.evictions(), 2);
        cache.insert(3, 31);
        cache.update(2, |_| 21);
        assert_eq!(
            cache.evictions(),
            2,
            "a new value for a key held evicts nothing"
        );
    }

    #[test]
    fn a_sweep_drops_what_expired_and_keeps_what_is_fresh() {
        let cache = Lru::new(100, Duration::from_millis(50));
        for key in 0..10 {
            cache.insert(key, key);
        }
        std::thread::sleep(Duration::from_millis(60));
        cache.insert(10, 10);
        assert_eq!(cache.len(), 1, "the insert itself dropped the expired ones");
        assert_eq!(cache.sweep(), 0);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.sweep(), 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn update_sees_the_previous_value_and_a_zero_ttl_keeps_nothing() {
        let cache = Lru::new(4, NO_EXPIRY);
        assert_eq!(cache.update(1, |old| old.copied().unwrap_or(0) + 5), 5);
        assert_eq!(cache.update(1, |old| old.copied().unwrap_or(0) + 5), 10);

        let uncached = Lru::new(4, Duration::ZERO);
        assert_eq!(uncached.update(1, |old| old.copied().unwrap_or(0) + 5), 5);
        assert_eq!(uncached.update(1, |old| old.copied().unwrap_or(0) + 5), 5);
        assert_eq!(uncached.get_or_try_insert(&1, || Ok::<_, ()>(1)), Ok(1));
        assert!(uncached.is_empty());
    }

    #[test]
    fn a_refused_entry_is_dropped() {
        let cache = Lru::new(4, NO_EXPIRY);
        cache.insert(1, 1);
        assert_eq!(cache.get_if(&1, |v| *v == 2), None);
        assert!(cache.is_empty());
    }
}
