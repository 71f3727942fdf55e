//! The eviction policy and the LRU index shared by `Memory`, `Filesystem` and
//! `ExistenceCache`.
//!
//! # Rules (NativeLink's `EvictingMap`, reference §2)
//!
//! Each limit is off when 0. After every insert the least recently used entries are evicted
//! while any of these holds:
//! - **bytes**: the total is `>= max_bytes` (so a store never sits at exactly `max_bytes`);
//! - **age**: the entry was last used more than `max_seconds` ago;
//! - **count**: there are more than `max_count` entries.
//!
//! Once an eviction starts and both `max_bytes` and `evict_bytes` are set, it goes on down to
//! the low watermark `max_bytes - evict_bytes`, so a full store does not evict on every insert.
//! Reading an entry (`get`, `sizes`) makes it the most recently used and restarts its age; a
//! read of an entry older than `max_seconds` finds nothing and removes it. Replacing a key
//! counts as removing the old entry. Every key that leaves is reported to the subscribed
//! [`RemovalListener`]s, after the index lock is released.
//!
//! # Concurrency
//!
//! Reads take a shared lock and mark recency in two atomics on the entry, so concurrent readers
//! never wait on each other. The LRU order is kept lazily: an ordered map from "position" ticks
//! to keys, where a read only bumps the entry's own tick. The eviction loop (under the write
//! lock) moves a touched entry to its new tick before judging it, so the entry it evicts is
//! exactly the least recently used one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Code, Error, Result};
use crate::key::Key;
use crate::store::RemovalListener;

/// When an evicting store drops its least recently used entries. Every limit is off when 0;
/// the default never evicts.
///
/// ```
/// use casstack::EvictionPolicy;
///
/// // Keep at most 1 GiB; once full, evict down to 768 MiB.
/// let policy = EvictionPolicy { max_bytes: 1 << 30, evict_bytes: 256 << 20, ..Default::default() };
/// assert!(policy.evicts());
/// assert!(!EvictionPolicy::default().evicts());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvictionPolicy {
    /// Evict once the total size is at or above this many bytes (`"1gib"` in a layout).
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub max_bytes: u64,
    /// Once evicting for size, go on down to `max_bytes - evict_bytes` (the low watermark).
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub evict_bytes: u64,
    /// Evict entries not used for more than this many seconds (`"7d"` in a layout).
    #[serde(deserialize_with = "crate::spec::seconds")]
    pub max_seconds: u64,
    /// Evict while there are more than this many entries.
    pub max_count: u64,
}

impl EvictionPolicy {
    /// True if any limit is set.
    ///
    /// ```
    /// let p = casstack::EvictionPolicy { max_count: 3, ..Default::default() };
    /// assert!(p.evicts());
    /// ```
    pub fn evicts(&self) -> bool {
        self.max_bytes != 0 || self.max_seconds != 0 || self.max_count != 0
    }

    /// `ResourceExhausted` if an object of `size` bytes could never be kept: alone it would
    /// already reach `max_bytes`.
    ///
    /// ```
    /// let p = casstack::EvictionPolicy { max_bytes: 10, ..Default::default() };
    /// assert!(p.check_fits(9).is_ok());
    /// assert!(p.check_fits(10).is_err());
    /// ```
    pub fn check_fits(&self, size: u64) -> Result<()> {
        if self.max_bytes != 0 && size >= self.max_bytes {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!(
                    "an object of {size} bytes can never fit a store of max_bytes {}",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// An LRU index of keys to values with sizes, under an [`EvictionPolicy`].
///
/// The building block of every evicting store: it decides what leaves and tells listeners;
/// the store keeps the bytes (in the value, or on disk).
///
/// ```
/// use casstack::{EvictingMap, EvictionPolicy, Key};
///
/// let map = EvictingMap::new(EvictionPolicy { max_count: 1, ..Default::default() });
/// map.insert(Key::from("a"), 1u32, 10).unwrap();
/// let evicted = map.insert(Key::from("b"), 2u32, 10).unwrap();
/// assert_eq!(evicted, vec![(Key::from("a"), 1)]);
/// assert_eq!(map.get(&Key::from("b")), Some(2));
/// ```
pub struct EvictingMap<V> {
    policy: EvictionPolicy,
    anchor: Instant,
    ticks: AtomicU64,
    state: RwLock<State<V>>,
    listeners: RwLock<Vec<Arc<dyn RemovalListener>>>,
    /// The kind of store this index serves, as the `store` label of its eviction counters.
    label: &'static str,
}

struct State<V> {
    entries: HashMap<Key, Entry<V>>,
    /// Position tick -> key; the first entry is the least recently positioned.
    order: BTreeMap<u64, Key>,
    bytes: u64,
}

struct Entry<V> {
    value: V,
    size: u64,
    /// The tick under which the entry sits in `order` (changed only under the write lock).
    position: u64,
    /// The tick of the last use; newer than `position` if read since it was positioned.
    last_tick: AtomicU64,
    /// Milliseconds from the map's anchor to the last use (negative for entries older than
    /// the map, as found by a startup scan).
    last_used_ms: AtomicI64,
}

impl<V: Clone> EvictingMap<V> {
    /// An empty map under `policy`.
    ///
    /// ```
    /// let map: casstack::EvictingMap<()> = casstack::EvictingMap::new(Default::default());
    /// assert!(map.is_empty());
    /// ```
    pub fn new(policy: EvictionPolicy) -> Self {
        EvictingMap {
            policy,
            anchor: Instant::now(),
            ticks: AtomicU64::new(1),
            state: RwLock::new(State {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                bytes: 0,
            }),
            listeners: RwLock::new(Vec::new()),
            label: "evicting_map",
        }
    }

    /// Names the kind of store this index serves (`"memory"`), for its eviction counters.
    pub(crate) fn labelled(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    /// The policy this map evicts by.
    ///
    /// ```
    /// let map: casstack::EvictingMap<()> = casstack::EvictingMap::new(Default::default());
    /// assert!(!map.policy().evicts());
    /// ```
    pub fn policy(&self) -> &EvictionPolicy {
        &self.policy
    }

    /// Registers a listener for every key that leaves the map.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// use casstack::{EvictingMap, Key};
    ///
    /// let map = EvictingMap::new(Default::default());
    /// let n = Arc::new(AtomicUsize::new(0));
    /// let counter = n.clone();
    /// map.subscribe(Arc::new(move |_: &Key| { counter.fetch_add(1, Ordering::SeqCst); }));
    /// map.insert(Key::from("a"), (), 1).unwrap();
    /// map.remove(&Key::from("a"));
    /// assert_eq!(n.load(Ordering::SeqCst), 1);
    /// ```
    pub fn subscribe(&self, listener: Arc<dyn RemovalListener>) {
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// The value of `key`, marking it used. `None` if absent or older than `max_seconds`.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// map.insert("a".into(), 7u8, 1).unwrap();
    /// assert_eq!(map.get(&"a".into()), Some(7));
    /// ```
    pub fn get(&self, key: &Key) -> Option<V> {
        self.get_with(key, V::clone)
    }

    /// As [`get`](Self::get), applying `f` to the value under the lock instead of cloning it.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// map.insert("a".into(), vec![1u8, 2, 3], 3).unwrap();
    /// assert_eq!(map.get_with(&"a".into(), |v| v.len()), Some(3));
    /// ```
    pub fn get_with<R>(&self, key: &Key, f: impl FnOnce(&V) -> R) -> Option<R> {
        let now = self.read_clock();
        let expired = {
            let state = self.read();
            match state.entries.get(key) {
                None => return None,
                Some(entry) if !self.too_old(entry, now) => {
                    self.touch(entry, now);
                    return Some(f(&entry.value));
                }
                Some(_) => true,
            }
        };
        if expired {
            self.remove_if_too_old(key);
        }
        None
    }

    /// The value of `key` without marking it used.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// assert_eq!(map.peek(&"a".into()), None::<u8>);
    /// ```
    pub fn peek(&self, key: &Key) -> Option<V> {
        let now = self.read_clock();
        let state = self.read();
        state
            .entries
            .get(key)
            .filter(|entry| !self.too_old(entry, now))
            .map(|entry| entry.value.clone())
    }

    /// Writes the size of each key into `out` (`None` = absent), under one lock.
    /// With `touch`, every present key is marked used (what `has` does in Memory and
    /// Filesystem); without, nothing changes (what an existence cache does).
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// map.insert("a".into(), (), 3).unwrap();
    /// let mut out = [None, None];
    /// map.sizes(&["a".into(), "b".into()], &mut out, true);
    /// assert_eq!(out, [Some(3), None]);
    /// ```
    pub fn sizes(&self, keys: &[Key], out: &mut [Option<u64>], touch: bool) {
        let now = self.read_clock();
        let mut expired = Vec::new();
        {
            let state = self.read();
            for (key, slot) in keys.iter().zip(out.iter_mut()) {
                *slot = match state.entries.get(key) {
                    Some(entry) if self.too_old(entry, now) => {
                        expired.push(key.clone());
                        None
                    }
                    Some(entry) => {
                        if touch {
                            self.touch(entry, now);
                        }
                        Some(entry.size)
                    }
                    None => None,
                };
            }
        }
        for key in expired {
            self.remove_if_too_old(&key);
        }
    }

    /// Inserts (or replaces) `key`, then evicts per the policy. Returns every entry that left,
    /// the replaced one first, for the caller to clean up (delete a file, say).
    ///
    /// `ResourceExhausted`, changing nothing, if `size` alone would reach `max_bytes`.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(casstack::EvictionPolicy { max_bytes: 10, ..Default::default() });
    /// assert!(map.insert("big".into(), (), 10).is_err());
    /// assert!(map.insert("ok".into(), (), 9).unwrap().is_empty());
    /// ```
    pub fn insert(&self, key: Key, value: V, size: u64) -> Result<Vec<(Key, V)>> {
        self.insert_used_ago(key, value, size, Duration::ZERO)
    }

    /// As [`insert`](Self::insert), for an entry last used `ago` (a startup scan reads it from
    /// the file's access time). Insert oldest first so the LRU order follows the ages.
    ///
    /// ```
    /// use std::time::Duration;
    /// let map = casstack::EvictingMap::new(casstack::EvictionPolicy { max_seconds: 60, ..Default::default() });
    /// map.insert_used_ago("old".into(), (), 1, Duration::from_secs(61)).unwrap();
    /// assert_eq!(map.get(&"old".into()), None);
    /// ```
    pub fn insert_used_ago(
        &self,
        key: Key,
        value: V,
        size: u64,
        ago: Duration,
    ) -> Result<Vec<(Key, V)>> {
        self.policy
            .check_fits(size)
            .map_err(|e| e.with_key(key.clone()))?;
        let used_ms = self.read_clock() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        let tick = self.next_tick();
        // Without a policy nothing is ever evicted, so the LRU order is not kept at all.
        let ordered = self.policy.evicts();
        let mut removed = Vec::new();
        {
            let mut state = self.write();
            let entry = Entry {
                value,
                size,
                position: tick,
                last_tick: AtomicU64::new(tick),
                last_used_ms: AtomicI64::new(used_ms),
            };
            if let Some(old) = state.entries.insert(key.clone(), entry) {
                if ordered {
                    state.order.remove(&old.position);
                }
                state.bytes -= old.size;
                removed.push((key.clone(), old.value));
            }
            if ordered {
                state.order.insert(tick, key);
            }
            state.bytes += size;
            self.evict(&mut state, &mut removed);
        }
        self.notify(&removed);
        Ok(removed)
    }

    /// Removes `key`, telling listeners; returns its value if it was present.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// map.insert("a".into(), 1u8, 1).unwrap();
    /// assert_eq!(map.remove(&"a".into()), Some(1));
    /// assert_eq!(map.remove(&"a".into()), None);
    /// ```
    pub fn remove(&self, key: &Key) -> Option<V> {
        let value = {
            let mut state = self.write();
            let entry = state.entries.remove(key)?;
            state.order.remove(&entry.position);
            state.bytes -= entry.size;
            entry.value
        };
        self.notify(std::slice::from_ref(key));
        Some(value)
    }

    /// Runs the eviction rules now (time-based expiry happens otherwise only on inserts and
    /// on reads of the expired entry); returns what left.
    ///
    /// ```
    /// let map: casstack::EvictingMap<()> = casstack::EvictingMap::new(Default::default());
    /// assert!(map.evict_now().is_empty());
    /// ```
    pub fn evict_now(&self) -> Vec<(Key, V)> {
        let mut removed = Vec::new();
        self.evict(&mut self.write(), &mut removed);
        self.notify(&removed);
        removed
    }

    /// Runs the eviction rules as if `reserved` more bytes were indexed (space promised to
    /// uploads in progress), so the entries plus the reservation stay below `max_bytes`;
    /// returns what left, after telling the listeners.
    #[cfg(feature = "fs")]
    pub(crate) fn evict_reserving(&self, reserved: u64) -> Vec<(Key, V)> {
        let mut removed = Vec::new();
        self.evict_with(&mut self.write(), &mut removed, reserved);
        self.notify(&removed);
        removed
    }

    /// Number of entries.
    ///
    /// ```
    /// let map: casstack::EvictingMap<()> = casstack::EvictingMap::new(Default::default());
    /// assert_eq!(map.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// True when there are no entries.
    ///
    /// ```
    /// let map: casstack::EvictingMap<()> = casstack::EvictingMap::new(Default::default());
    /// assert!(map.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the sizes of all entries.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(Default::default());
    /// map.insert("a".into(), (), 5).unwrap();
    /// assert_eq!(map.total_bytes(), 5);
    /// ```
    pub fn total_bytes(&self) -> u64 {
        self.read().bytes
    }

    /// The keys from least to most recently used (for tests and diagnostics; O(n log n)).
    /// Recency is kept only under a policy that evicts; otherwise the order is insertion order.
    ///
    /// ```
    /// let map = casstack::EvictingMap::new(casstack::EvictionPolicy { max_count: 9, ..Default::default() });
    /// map.insert("a".into(), (), 1).unwrap();
    /// map.insert("b".into(), (), 1).unwrap();
    /// map.get(&"a".into());
    /// assert_eq!(map.keys_lru_first(), vec!["b".into(), "a".into()]);
    /// ```
    pub fn keys_lru_first(&self) -> Vec<Key> {
        let state = self.read();
        let mut keys: Vec<(u64, Key)> = state
            .entries
            .iter()
            .map(|(k, e)| (e.last_tick.load(Relaxed), k.clone()))
            .collect();
        keys.sort_unstable_by_key(|(tick, _)| *tick);
        keys.into_iter().map(|(_, k)| k).collect()
    }

    fn evict(&self, state: &mut State<V>, removed: &mut Vec<(Key, V)>) {
        self.evict_with(state, removed, 0);
    }

    /// The eviction rules, counting `reserved` bytes on top of the entries.
    fn evict_with(&self, state: &mut State<V>, removed: &mut Vec<(Key, V)>, reserved: u64) {
        if !self.policy.evicts() {
            return;
        }
        let now = self.now_ms();
        let mut byte_target = self.policy.max_bytes;
        let mut evicting = false;
        let (mut evicted, mut evicted_bytes) = (0, 0);
        while let Some((&position, key)) = state.order.first_key_value() {
            let entry = &state.entries[key];
            let last = entry.last_tick.load(Relaxed);
            if last != position {
                // Used since it was positioned: move it to where its last use puts it.
                let key = state.order.remove(&position).expect("first key exists");
                state.order.insert(last, key.clone());
                state.entries.get_mut(&key).expect("indexed").position = last;
                continue;
            }
            let over_bytes =
                self.policy.max_bytes != 0 && state.bytes.saturating_add(reserved) >= byte_target;
            let over_count =
                self.policy.max_count != 0 && state.entries.len() as u64 > self.policy.max_count;
            if !(over_bytes || over_count || self.too_old(entry, now)) {
                break;
            }
            if !evicting && self.policy.max_bytes != 0 && self.policy.evict_bytes != 0 {
                byte_target = self
                    .policy
                    .max_bytes
                    .saturating_sub(self.policy.evict_bytes);
            }
            evicting = true;
            let key = state.order.remove(&position).expect("first key exists");
            let entry = state.entries.remove(&key).expect("indexed");
            state.bytes -= entry.size;
            evicted += 1;
            evicted_bytes += entry.size;
            removed.push((key, entry.value));
        }
        crate::observe::evicted(self.label, evicted, evicted_bytes);
    }

    fn remove_if_too_old(&self, key: &Key) {
        let now = self.now_ms();
        let removed = {
            let mut state = self.write();
            match state.entries.get(key) {
                Some(entry) if self.too_old(entry, now) => {
                    let entry = state.entries.remove(key).expect("present");
                    state.order.remove(&entry.position);
                    state.bytes -= entry.size;
                    crate::observe::evicted(self.label, 1, entry.size);
                    true
                }
                _ => false,
            }
        };
        if removed {
            self.notify(std::slice::from_ref(key));
        }
    }

    fn too_old(&self, entry: &Entry<V>, now_ms: i64) -> bool {
        self.policy.max_seconds != 0
            && now_ms - entry.last_used_ms.load(Relaxed)
                > i64::try_from(self.policy.max_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn touch(&self, entry: &Entry<V>, now_ms: i64) {
        // Recency matters only to a policy that evicts, and the clock only to one with an age
        // limit: skipping them keeps reads of a non-evicting map to a lock and a lookup.
        if !self.policy.evicts() {
            return;
        }
        entry.last_tick.store(self.next_tick(), Relaxed);
        if self.policy.max_seconds != 0 {
            entry.last_used_ms.store(now_ms, Relaxed);
        }
    }

    /// The clock for reads: only read when an age limit needs it.
    fn read_clock(&self) -> i64 {
        if self.policy.max_seconds == 0 {
            0
        } else {
            self.now_ms()
        }
    }

    fn next_tick(&self) -> u64 {
        self.ticks.fetch_add(1, Relaxed)
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(Instant::now().duration_since(self.anchor).as_millis()).unwrap_or(i64::MAX)
    }

    fn notify<T: RemovedKey>(&self, removed: &[T]) {
        if removed.is_empty() {
            return;
        }
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for item in removed {
            for listener in listeners.iter() {
                listener.removed(item.key());
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<V>> {
        // A panic while holding the lock cannot leave the state half-updated in a way later
        // operations trip over (every update completes before any call that could panic), so
        // a poisoned lock is used as is.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<V>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

trait RemovedKey {
    fn key(&self) -> &Key;
}

impl RemovedKey for Key {
    fn key(&self) -> &Key {
        self
    }
}

impl<V> RemovedKey for (Key, V) {
    fn key(&self) -> &Key {
        &self.0
    }
}

impl<V> fmt::Debug for EvictingMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("EvictingMap")
            .field("policy", &self.policy)
            .field("entries", &state.entries.len())
            .field("bytes", &state.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn key(i: u32) -> Key {
        Key::from(format!("k{i}"))
    }

    fn policy(
        max_bytes: u64,
        evict_bytes: u64,
        max_seconds: u64,
        max_count: u64,
    ) -> EvictionPolicy {
        EvictionPolicy {
            max_bytes,
            evict_bytes,
            max_seconds,
            max_count,
        }
    }

    fn keys(map: &EvictingMap<u32>) -> Vec<Key> {
        map.keys_lru_first()
    }

    #[test]
    fn default_policy_never_evicts() {
        let map = EvictingMap::new(EvictionPolicy::default());
        for i in 0..1000 {
            assert!(map.insert(key(i), i, 1 << 20).unwrap().is_empty());
        }
        assert_eq!(map.len(), 1000);
    }

    #[test]
    fn bytes_limit_evicts_at_or_above_max_bytes() {
        // Two 5-byte entries reach exactly max_bytes 10: `>=` evicts the older one.
        let map = EvictingMap::new(policy(10, 0, 0, 0));
        map.insert(key(1), 1, 5).unwrap();
        let evicted = map.insert(key(2), 2, 5).unwrap();
        assert_eq!(evicted, vec![(key(1), 1)]);
        assert_eq!(map.total_bytes(), 5);
    }

    #[test]
    fn low_watermark_example_from_the_reference() {
        // max_bytes 17, evict_bytes 9, three 8-byte inserts: the third evicts all three
        // (24 -> 16 -> 8 -> 0, because the watermark 8 is also compared with `>=`); a fourth
        // insert leaves only itself.
        let map = EvictingMap::new(policy(17, 9, 0, 0));
        assert!(map.insert(key(1), 1, 8).unwrap().is_empty());
        assert!(map.insert(key(2), 2, 8).unwrap().is_empty());
        let evicted = map.insert(key(3), 3, 8).unwrap();
        assert_eq!(evicted, vec![(key(1), 1), (key(2), 2), (key(3), 3)]);
        assert!(map.is_empty());
        assert!(map.insert(key(4), 4, 8).unwrap().is_empty());
        assert_eq!(keys(&map), vec![key(4)]);
    }

    #[test]
    fn count_limit_keeps_max_count_entries() {
        let map = EvictingMap::new(policy(0, 0, 0, 2));
        for i in 1..=3 {
            map.insert(key(i), i, 1).unwrap();
        }
        assert_eq!(keys(&map), vec![key(2), key(3)]);
    }

    #[test]
    fn reads_refresh_recency_but_peek_does_not() {
        let map = EvictingMap::new(policy(0, 0, 0, 2));
        map.insert(key(1), 1, 1).unwrap();
        map.insert(key(2), 2, 1).unwrap();
        assert_eq!(map.peek(&key(1)), Some(1));
        let mut out = [None];
        map.sizes(&[key(1)], &mut out, false);
        assert_eq!(keys(&map), vec![key(1), key(2)], "peeks change nothing");
        assert_eq!(map.get(&key(1)), Some(1));
        map.insert(key(3), 3, 1).unwrap();
        assert_eq!(
            keys(&map),
            vec![key(1), key(3)],
            "get made 1 recent, so 2 left"
        );
        map.sizes(&[key(1)], &mut out, true);
        map.insert(key(4), 4, 1).unwrap();
        assert_eq!(
            keys(&map),
            vec![key(1), key(4)],
            "has made 1 recent, so 3 left"
        );
    }

    #[test]
    fn replacement_counts_as_removal() {
        let map = EvictingMap::new(policy(100, 0, 0, 0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        map.subscribe(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        map.insert(key(1), 1, 10).unwrap();
        let removed = map.insert(key(1), 2, 20).unwrap();
        assert_eq!(removed, vec![(key(1), 1)]);
        assert_eq!(map.total_bytes(), 20, "old size is no longer counted");
        assert_eq!(map.get(&key(1)), Some(2));
        assert_eq!(*seen.lock().unwrap(), vec![key(1)]);
    }

    #[test]
    fn listeners_hear_every_eviction() {
        let map = EvictingMap::new(policy(0, 0, 0, 1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        map.subscribe(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        for i in 1..=4 {
            map.insert(key(i), i, 1).unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![key(1), key(2), key(3)]);
    }

    #[test]
    fn oversized_insert_is_refused_and_evicts_nothing() {
        let map = EvictingMap::new(policy(10, 0, 0, 0));
        map.insert(key(1), 1, 4).unwrap();
        let err = map.insert(key(2), 2, 10).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(keys(&map), vec![key(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn age_limit_is_strict_and_restarts_on_read() {
        let map = EvictingMap::new(policy(0, 0, 10, 0));
        map.insert(key(1), 1, 1).unwrap();
        map.insert(key(2), 2, 1).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        // Exactly max_seconds old is not yet too old.
        assert_eq!(map.get(&key(1)), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        // key 2 is now 11 s old; key 1 was used 1 s ago.
        assert_eq!(map.get(&key(2)), None, "a read of an expired entry misses");
        assert_eq!(keys(&map), vec![key(1)], "and removes it");
        assert_eq!(map.get(&key(1)), Some(1), "each read restarts the age");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(map.get(&key(1)), Some(1));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(map.get(&key(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn insert_evicts_expired_entries_and_tells_listeners() {
        let map = EvictingMap::new(policy(0, 0, 5, 0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        map.subscribe(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        map.insert(key(1), 1, 1).unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        let evicted = map.insert(key(2), 2, 1).unwrap();
        assert_eq!(evicted, vec![(key(1), 1)]);
        assert_eq!(*seen.lock().unwrap(), vec![key(1)]);
        let mut out = [None];
        tokio::time::advance(Duration::from_secs(6)).await;
        map.sizes(&[key(2)], &mut out, true);
        assert_eq!(out, [None], "has of an expired entry misses");
        assert_eq!(*seen.lock().unwrap(), vec![key(1), key(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_ages_order_the_lru() {
        let map = EvictingMap::new(policy(0, 0, 100, 2));
        map.insert_used_ago(key(1), 1, 1, Duration::from_secs(300))
            .unwrap();
        map.insert_used_ago(key(2), 2, 1, Duration::from_secs(50))
            .unwrap();
        map.insert_used_ago(key(3), 3, 1, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            keys(&map),
            vec![key(2), key(3)],
            "the 300 s old entry expired"
        );
        tokio::time::advance(Duration::from_secs(51)).await;
        assert_eq!(map.evict_now(), vec![(key(2), 2)]);
    }

    #[test]
    fn concurrent_readers_and_writers_keep_the_totals_right() {
        let map = Arc::new(EvictingMap::new(policy(1000, 100, 0, 0)));
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let map = map.clone();
                s.spawn(move || {
                    for i in 0..2000u32 {
                        let k = key((i * 7 + t) % 300);
                        if i % 3 == 0 {
                            map.insert(k, i, u64::from(i % 17) + 1).unwrap();
                        } else {
                            map.get(&k);
                        }
                    }
                });
            }
        });
        let state = map.read();
        let sum: u64 = state.entries.values().map(|e| e.size).sum();
        assert_eq!(sum, state.bytes);
        assert!(state.bytes < 1000);
        assert_eq!(state.order.len(), state.entries.len());
        for (position, key) in &state.order {
            assert_eq!(state.entries[key].position, *position);
        }
    }
}
