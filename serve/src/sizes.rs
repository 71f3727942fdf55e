//! The size of each CAS object, by hash.
//!
//! The HTTP protocol names a CAS object by its sha256 alone (`GET /cas/{hash}`), while a
//! casstack digest key is the hash *and* the size. Every successful CAS upload therefore also
//! records its size in the AC store, under the name `cas/{hash}` (the decimal size as text),
//! and a read looks it up there first. The index lives in the AC store so that it survives a
//! restart whenever the AC does; a bounded in-process map in front of it saves the lookup on
//! repeated reads.
//!
//! Consistency: an index entry only says which digest to ask for. The persisted entry is the
//! truth and is rewritten by every upload; the in-process map is a cache of it that may hold
//! less (never a size the persisted entry does not have), so dropping a map entry is always
//! safe. Neither can serve wrong bytes: the CAS store is read by exact digest.
//!
//! Objects the CAS store drops: it tells its removal listeners ([`SizeIndex::watch`]). A
//! removal is only a suspicion (a `FastSlow` store reports what its fast tier evicted while
//! the slow tier still holds it), so a background task asks the CAS store, in batches, whether
//! each suspect is really gone, and drops the map entries of those that are. Each map entry
//! carries the stamp of its insertion, and a check drops only entries older than the check:
//! a re-upload that lands while the CAS store is being asked records a newer entry, which
//! that check's (stale) "absent" answer leaves alone. Persisted entries are not removed (the
//! `Store` trait has no delete): a stale one costs one CAS `has` on a read, which then
//! answers 404 and drops the map entry again, and it leaves the AC store with its own
//! eviction. If the AC store loses an entry while the CAS store still holds the object, the
//! object reads as a miss until it is uploaded again.
//!
//! The map holds two generations of at most half the capacity each: a lookup that finds an
//! entry in the older one moves it to the newer one, and when the newer one is full the older
//! one is dropped. Entries in use survive; only those unused for a generation are forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use casstack::{Code, Digest, Key, RemovalListener, Result, Store, StoreExt};
use tokio::sync::Notify;

/// Entries the in-process map holds at most (about 16 MiB when full).
const MAX_CACHED: usize = 256 * 1024;

/// Removed digests waiting for a check at most; past this a removal drops its entry at once.
const MAX_SUSPECTS: usize = 64 * 1024;

/// Digests asked about in one `has_many`.
const CHECK_BATCH: usize = 1024;

/// Hash → size of CAS objects, persisted in a name-keyed store.
#[derive(Debug)]
pub struct SizeIndex<A> {
    store: A,
    cache: Arc<Cache>,
}

/// The in-process map and what the removal listener left for the checker.
#[derive(Debug)]
struct Cache {
    state: Mutex<State>,
    /// Wakes the checker when a removal is reported (and when the index is dropped).
    suspected: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    /// Half the capacity, at least 1.
    generation_len: usize,
    current: HashMap<[u8; 32], Entry>,
    previous: HashMap<[u8; 32], Entry>,
    /// The stamp of the next insertion.
    clock: u64,
    /// Digests the CAS store reported removed, not yet checked.
    suspects: Vec<Digest>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    stamp: u64,
}

/// One round of checking: the suspects taken, and the clock when they were taken.
#[derive(Debug)]
pub struct Check {
    suspects: Vec<Digest>,
    stamp: u64,
}

/// The name under which the size of the CAS object `hash` is kept.
pub fn index_key(hash_hex: &str) -> Key {
    Key::from(format!("cas/{hash_hex}"))
}

impl<A: Store> SizeIndex<A> {
    /// An index kept in `store` (which must take name keys).
    pub fn new(store: A) -> Self {
        Self::with_capacity(store, MAX_CACHED)
    }

    /// An index whose in-process map holds at most `capacity` entries.
    pub fn with_capacity(store: A, capacity: usize) -> Self {
        SizeIndex {
            store,
            cache: Arc::new(Cache {
                state: Mutex::new(State {
                    generation_len: (capacity / 2).max(1),
                    ..State::default()
                }),
                suspected: Arc::new(Notify::new()),
            }),
        }
    }

    /// Follows the removals of `cas`: registers the listener and spawns the task that checks
    /// what it reports (it ends when the index is dropped). Needs a Tokio runtime.
    pub fn watch<C: Store>(&self, cas: C) {
        self.listen(&cas);
        let cache = Arc::downgrade(&self.cache);
        let suspected = self.cache.suspected.clone();
        tokio::spawn(async move {
            loop {
                // A removal reported while a check runs leaves a permit: no wake-up is lost.
                suspected.notified().await;
                let Some(cache) = cache.upgrade() else { return };
                if let Some(check) = cache.begin_check() {
                    run_check(&cache, &cas, check).await;
                }
            }
        });
    }

    /// Registers the removal listener on `cas` (without the checker: see [`Self::watch`]).
    fn listen<C: Store>(&self, cas: &C) {
        cas.subscribe_removals(Arc::new(Suspect(Arc::downgrade(&self.cache))));
    }

    /// The recorded size of the object `hash`, `None` if none is recorded.
    pub async fn lookup(&self, hash: &[u8; 32], hash_hex: &str) -> Result<Option<u64>> {
        if let Some(size) = self.cache.lock().get(hash) {
            return Ok(Some(size));
        }
        let text = match self.store.get_bytes(index_key(hash_hex)).await {
            Ok(text) => text,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e.context("reading the CAS size index")),
        };
        let Some(size) = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            tracing::warn!(hash = hash_hex, "ignoring a corrupt CAS size index entry");
            return Ok(None);
        };
        self.cache.lock().insert(*hash, size);
        Ok(Some(size))
    }

    /// Records that the object `hash` has `size` bytes (after it was stored).
    pub async fn record(&self, hash: &[u8; 32], hash_hex: &str, size: u64) -> Result<()> {
        // Written every time, even when the map knows it: the store may have dropped it.
        // Persisted first: the map never knows a size the persisted index lacks.
        self.store
            .put_bytes(index_key(hash_hex), Bytes::from(size.to_string()))
            .await
            .map_err(|e| e.context("recording the object's size in the CAS size index"))?;
        self.cache.lock().insert(*hash, size);
        Ok(())
    }

    /// Drops the in-process entry of `hash` (the CAS store no longer has the object).
    pub fn forget(&self, hash: &[u8; 32]) {
        self.cache.lock().remove(hash);
    }
}

impl<A> Drop for SizeIndex<A> {
    fn drop(&mut self) {
        // Lets the checker task see that the index is gone.
        self.cache.suspected.notify_one();
    }
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the suspects to check, with the clock at this moment.
    fn begin_check(&self) -> Option<Check> {
        let mut state = self.lock();
        if state.suspects.is_empty() {
            return None;
        }
        Some(Check {
            suspects: std::mem::take(&mut state.suspects),
            stamp: state.clock,
        })
    }

    /// Drops the entries of the suspects the CAS store does not have (`sizes[i]` is `None`,
    /// answered after `check` began), unless they were recorded since. Returns how many.
    fn finish_check(&self, check: &Check, sizes: &[Option<u64>]) -> usize {
        let mut state = self.lock();
        let mut dropped = 0;
        for (digest, size) in check.suspects.iter().zip(sizes) {
            if size.is_none() && state.remove_if_older(digest, check.stamp) {
                dropped += 1;
            }
        }
        dropped
    }
}

/// Asks `cas` about the suspects of `check` and drops the entries of those it lost. A failed
/// question drops the entries it asked about (the persisted index still has them).
async fn run_check<C: Store>(cache: &Cache, cas: &C, check: Check) {
    let mut sizes = Vec::with_capacity(check.suspects.len());
    for batch in check.suspects.chunks(CHECK_BATCH) {
        let keys: Vec<Key> = batch.iter().map(|&d| Key::from(d)).collect();
        let mut out = vec![None; keys.len()];
        if let Err(e) = cas.has_many(&keys, &mut out).await {
            tracing::debug!("checking removed CAS objects failed, forgetting them: {e}");
            out.fill(None);
        }
        sizes.extend(out);
    }
    let dropped = cache.finish_check(&check, &sizes);
    tracing::debug!(
        "size index: the CAS store dropped {dropped} of {} reported objects; forgot their sizes",
        check.suspects.len()
    );
}

impl State {
    fn get(&mut self, hash: &[u8; 32]) -> Option<u64> {
        if let Some(entry) = self.current.get(hash) {
            return Some(entry.size);
        }
        // In use again: into the current generation.
        let entry = self.previous.remove(hash)?;
        self.put(*hash, entry);
        Some(entry.size)
    }

    fn insert(&mut self, hash: [u8; 32], size: u64) {
        let stamp = self.clock;
        self.clock += 1;
        self.previous.remove(&hash);
        self.put(hash, Entry { size, stamp });
    }

    fn put(&mut self, hash: [u8; 32], entry: Entry) {
        if self.current.len() >= self.generation_len && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(hash, entry);
    }

    fn remove(&mut self, hash: &[u8; 32]) {
        self.current.remove(hash);
        self.previous.remove(hash);
    }

    fn entry(&self, hash: &[u8; 32]) -> Option<Entry> {
        self.current
            .get(hash)
            .or_else(|| self.previous.get(hash))
            .copied()
    }

    /// Removes the entry of `digest` if it has that size and was inserted before `stamp`.
    fn remove_if_older(&mut self, digest: &Digest, stamp: u64) -> bool {
        match self.entry(digest.hash()) {
            Some(entry) if entry.size == digest.size() && entry.stamp < stamp => {
                self.remove(digest.hash());
                true
            }
            _ => false,
        }
    }
}

/// The removal listener: queues the CAS digests the map knows for a check.
struct Suspect(Weak<Cache>);

impl RemovalListener for Suspect {
    fn removed(&self, key: &Key) {
        let Key::Digest(digest) = key else { return };
        let Some(cache) = self.0.upgrade() else {
            return;
        };
        let mut state = cache.lock();
        let known = state
            .entry(digest.hash())
            .is_some_and(|e| e.size == digest.size());
        if !known {
            return;
        }
        if state.suspects.len() < MAX_SUSPECTS {
            state.suspects.push(*digest);
            drop(state);
            cache.suspected.notify_one();
        } else {
            // Too many to check: forget it now (the persisted entry stays).
            state.remove(digest.hash());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casstack::Memory;

    fn blob(n: u8) -> (Digest, Bytes) {
        let data = Bytes::from(vec![n; 100 + n as usize]);
        (Digest::of(&data), data)
    }

    /// A CAS store, an index over its own AC store listening to it, and an object in both.
    async fn setup() -> (Memory, SizeIndex<Memory>, Digest, Bytes) {
        let cas = Memory::default();
        let index = SizeIndex::new(Memory::default());
        index.listen(&cas);
        let (d, data) = blob(1);
        cas.put_bytes(d, data.clone()).await.unwrap();
        index
            .record(d.hash(), &d.hash_hex(), d.size())
            .await
            .unwrap();
        (cas, index, d, data)
    }

    fn cached(index: &SizeIndex<Memory>, d: &Digest) -> Option<u64> {
        index.cache.lock().entry(d.hash()).map(|e| e.size)
    }

    #[tokio::test]
    async fn a_removed_object_leaves_the_map() {
        let (cas, index, d, _) = setup().await;
        let (kept, kept_data) = blob(2);
        cas.put_bytes(kept, kept_data).await.unwrap();
        index
            .record(kept.hash(), &kept.hash_hex(), kept.size())
            .await
            .unwrap();
        assert!(index.cache.begin_check().is_none(), "nothing removed yet");
        cas.remove(&d.into());
        let check = index.cache.begin_check().unwrap();
        assert_eq!(check.suspects, [d]);
        run_check(&index.cache, &cas, check).await;
        assert_eq!(cached(&index, &d), None);
        assert_eq!(cached(&index, &kept), Some(kept.size()));
        // The persisted entry is still there (no delete): a lookup finds the size, and the
        // read that follows is a miss.
        assert_eq!(
            index.lookup(d.hash(), &d.hash_hex()).await.unwrap(),
            Some(d.size())
        );
    }

    #[tokio::test]
    async fn a_removal_of_an_object_still_held_keeps_its_entry() {
        // A fast tier's eviction: reported, but the store still has the object.
        let (cas, index, d, data) = setup().await;
        cas.remove(&d.into());
        cas.put_bytes(d, data).await.unwrap();
        let check = index.cache.begin_check().unwrap();
        run_check(&index.cache, &cas, check).await;
        assert_eq!(cached(&index, &d), Some(d.size()));
    }

    #[tokio::test]
    async fn a_reupload_racing_a_check_keeps_its_entry() {
        let (cas, index, d, data) = setup().await;
        cas.remove(&d.into());
        // The check starts and the CAS store answers "absent"...
        let check = index.cache.begin_check().unwrap();
        let answer = [cas.has(d).await.unwrap()];
        assert_eq!(answer, [None]);
        // ...then the object is uploaded again and recorded, before the answer is applied.
        cas.put_bytes(d, data).await.unwrap();
        index
            .record(d.hash(), &d.hash_hex(), d.size())
            .await
            .unwrap();
        assert_eq!(index.cache.finish_check(&check, &answer), 0);
        assert_eq!(cached(&index, &d), Some(d.size()));
        assert_eq!(cas.has(d).await.unwrap(), Some(d.size()));
    }

    #[tokio::test]
    async fn a_reupload_before_a_check_is_seen_by_it() {
        let (cas, index, d, data) = setup().await;
        cas.remove(&d.into());
        cas.put_bytes(d, data).await.unwrap();
        index
            .record(d.hash(), &d.hash_hex(), d.size())
            .await
            .unwrap();
        let check = index.cache.begin_check().unwrap();
        run_check(&index.cache, &cas, check).await;
        assert_eq!(cached(&index, &d), Some(d.size()));
    }

    #[tokio::test]
    async fn removals_of_unknown_keys_are_ignored() {
        let (cas, index, d, data) = setup().await;
        let (other, other_data) = blob(3);
        cas.put_bytes(other, other_data).await.unwrap();
        cas.remove(&other.into());
        cas.put_bytes(Key::from("cas/x"), data).await.unwrap();
        cas.remove(&Key::from("cas/x"));
        assert!(index.cache.begin_check().is_none());
        assert_eq!(cached(&index, &d), Some(d.size()));
    }

    /// A CAS store that is down: every `has` fails.
    #[derive(Clone)]
    struct Down;

    impl Store for Down {
        type Reader = casstack::OneChunk;

        async fn has_many(&self, _: &[Key], _: &mut [Option<u64>]) -> Result<()> {
            Err(casstack::Error::new(Code::Unavailable, "down"))
        }

        async fn get(&self, key: Key, _: casstack::ByteRange) -> Result<Self::Reader> {
            Err(casstack::Error::not_found(key))
        }

        async fn put<B: casstack::Body>(
            &self,
            _: Key,
            _: casstack::UploadSize,
            _: B,
        ) -> Result<u64> {
            Err(casstack::Error::new(Code::Unavailable, "down"))
        }
    }

    #[tokio::test]
    async fn a_failed_check_forgets_what_it_asked_about() {
        let (cas, index, d, _) = setup().await;
        cas.remove(&d.into());
        let check = index.cache.begin_check().unwrap();
        run_check(&index.cache, &Down, check).await;
        assert_eq!(cached(&index, &d), None);
    }

    #[tokio::test]
    async fn the_watcher_checks_in_the_background() {
        let cas = Memory::default();
        let index = SizeIndex::new(Memory::default());
        index.watch(cas.clone());
        let (d, data) = blob(4);
        cas.put_bytes(d, data).await.unwrap();
        index
            .record(d.hash(), &d.hash_hex(), d.size())
            .await
            .unwrap();
        cas.remove(&d.into());
        for _ in 0..100 {
            if cached(&index, &d).is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cached(&index, &d), None);
        // The task holds no strong reference: the map goes with the index, and the wake-up
        // the drop sends ends the task.
        let cache = Arc::downgrade(&index.cache);
        drop(index);
        assert!(cache.upgrade().is_none());
    }

    #[test]
    fn the_map_keeps_entries_in_use_when_full() {
        let index = SizeIndex::with_capacity(Memory::default(), 4);
        let mut state = index.cache.lock();
        let h = |n: u8| [n; 32];
        state.insert(h(1), 1);
        state.insert(h(2), 2);
        // Full generation: 1 and 2 move to the previous one.
        state.insert(h(3), 3);
        assert_eq!(
            state.get(&h(1)),
            Some(1),
            "found in the previous generation"
        );
        // 3 and 1 are current; 2 goes with the previous generation at the next rollover.
        state.insert(h(4), 4);
        assert_eq!(state.get(&h(2)), None);
        assert_eq!(state.get(&h(1)), Some(1));
        assert_eq!(state.get(&h(3)), Some(3));
        assert_eq!(state.get(&h(4)), Some(4));
        assert!(state.current.len() + state.previous.len() <= 4);
        // Re-recording an entry does not roll the generation over.
        let before = state.previous.len();
        state.insert(h(4), 4);
        assert_eq!(state.previous.len(), before);
    }
}
