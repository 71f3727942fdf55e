//! `ExistenceCache`: remembers which digests the backend has, so `has` can answer without
//! asking it (NativeLink's `existence_cache` store, §5.8).
//!
//! - **What is remembered.** Digests the backend reported present in a `has_many`, and
//!   digests this wrapper uploaded successfully, with their sizes. Name keys are never
//!   remembered (a name's value can change) and always go to the backend.
//! - **`has_many`** answers known digests from the cache *without* refreshing their recency
//!   (a peek, so `max_seconds` is a time-to-live from when the answer was learnt) and sends
//!   the rest to the backend in one batch, in input order.
//! - **`put`** of a known digest reads the body to its end (checking its declared size) and
//!   skips the backend, but only while the backend reports every removal (see below); any
//!   other `put` goes to the backend.
//! - **`get`** goes to the backend unchanged.
//! - **Never a stale positive** (peers.md items 4 and 17). At construction the cache
//!   subscribes to the backend's removal notifications and forgets every key the backend
//!   drops. A `has` racing with a removal could still learn "present" from the backend
//!   *after* the removal notification for that key arrived; so every notification bumps a
//!   removal epoch, and an answer is remembered only if no removal arrived while it was being
//!   fetched (the epoch check and the insert happen under the lock that notifications take).
//!   A removal during a query costs only a missed chance to cache, never a wrong answer.
//! - **Backends that do not report every removal.** The cache asks
//!   [`Store::reports_all_removals`] on every call. While it is `false` (an `S3` store, whose
//!   objects expire or are deleted by lifecycle rules; a `Dedup` store, whose lost chunks are
//!   announced under the chunks' digests; a `Redis` store without keyspace events, or while its
//!   subscription is down) a `put` always goes to the backend, and `has` answers from the
//!   cache only if `eviction_policy.max_seconds` is set, i.e. trusts an answer at most that
//!   long; without it every `has` goes to the backend. A layout built with
//!   [`from_spec`](crate::spec) refuses such a backend without `max_seconds`, since the cache
//!   would do nothing. When a backend that was not reporting starts again (a `Redis` store
//!   resubscribing after a gap), it says it may have missed removals and the cache forgets
//!   everything.
//! - The cache's own evictions (its policy) only make it ask the backend again.
//!
//! Layout (TOML):
//! ```toml
//! [existence_cache.eviction_policy]
//! max_count = 1000000
//! max_seconds = 600
//!
//! [existence_cache.backend.memory]
//! ```
//!
//! Failure codes: those of the backend; `InvalidArgument` if `out` is shorter than `keys`, if
//! the body of a skipped upload does not match its declared size, or (when built from a
//! layout) if the backend does not report every removal and `max_seconds` is not set.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::{Deserialize, Serialize};

use crate::body::{Body, drain_body};
use crate::error::Result;
use crate::eviction::{EvictingMap, EvictionPolicy};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;

/// Settings of an [`ExistenceCache`].
///
/// ```
/// use casstack::{EvictionPolicy, ExistenceCacheConfig};
/// let config = ExistenceCacheConfig {
///     eviction_policy: EvictionPolicy { max_count: 100_000, max_seconds: 600, ..Default::default() },
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExistenceCacheConfig {
    /// When the cache forgets answers: `max_count` entries, `max_bytes` of remembered blob
    /// sizes, `max_seconds` since the answer was learnt. Default: never (unbounded).
    /// `max_seconds` is required (in a layout) over a backend that does not report every
    /// removal, such as `S3`: it is then how long a "present" answer may be stale.
    pub eviction_policy: EvictionPolicy,
}

/// Answers `has` for digests the backend is known to hold.
///
/// ```
/// use casstack::{Digest, ExistenceCache, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let backend = Memory::default();
/// let store = ExistenceCache::new(backend.clone(), Default::default());
/// let d = Digest::of(b"x");
/// store.put_bytes(d, "x".into()).await?;
/// assert!(store.is_cached(&d.into()));
/// backend.remove(&d.into());
/// assert!(!store.is_cached(&d.into()), "the backend's removal reached the cache");
/// assert_eq!(store.has(d).await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ExistenceCache<S> {
    inner: S,
    cache: Arc<Cache>,
}

struct Cache {
    map: EvictingMap<()>,
    /// Bumped by every removal notification; inserts check it under this lock.
    epoch: Mutex<u64>,
    /// Answers expire (`max_seconds` is set), so they may be used even while the backend
    /// does not report every removal.
    expires: bool,
}

impl Cache {
    fn epoch(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the present digests among `keys`, unless a removal arrived since `epoch`.
    fn remember(&self, keys: &[Key], sizes: &[Option<u64>], epoch: u64) {
        let current = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != epoch {
            return;
        }
        for (key, size) in keys.iter().zip(sizes) {
            if let (Key::Digest(_), Some(size)) = (key, size) {
                // A size the policy can never hold is simply not remembered.
                let _ = self.map.insert(key.clone(), (), *size);
            }
        }
    }

    fn forget(&self, key: &Key) {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        *epoch += 1;
        self.map.remove(key);
    }

    /// Forgets everything (the backend may have dropped anything), and refuses answers that
    /// were being fetched meanwhile.
    fn forget_all(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        *epoch += 1;
        // Under the epoch lock, so nothing is remembered while the map empties.
        for key in self.map.keys_lru_first() {
            self.map.remove(&key);
        }
    }
}

/// The listener the cache registers with its backend. Weak, so a backend shared with other
/// layouts does not keep a dropped cache alive.
struct Forget(Weak<Cache>);

impl RemovalListener for Forget {
    fn removed(&self, key: &Key) {
        if let Some(cache) = self.0.upgrade() {
            cache.forget(key);
        }
    }

    fn removals_missed(&self) {
        if let Some(cache) = self.0.upgrade() {
            cache.forget_all();
        }
    }
}

impl<S: Store> ExistenceCache<S> {
    /// Wraps `inner` and subscribes to its removals.
    ///
    /// Over a backend that does not [report every
    /// removal](Store::reports_all_removals), set `eviction_policy.max_seconds`: without it
    /// the cache answers nothing itself while that is so (see the [module docs](self)).
    ///
    /// ```
    /// use casstack::{EvictionPolicy, ExistenceCache, ExistenceCacheConfig, Memory};
    ///
    /// let store = ExistenceCache::new(Memory::default(), Default::default());
    /// assert_eq!(store.cached_len(), 0);
    /// // Over S3, say: trust an answer for at most ten minutes.
    /// let ttl = ExistenceCacheConfig {
    ///     eviction_policy: EvictionPolicy { max_seconds: 600, ..Default::default() },
    /// };
    /// let store = ExistenceCache::new(casstack::Noop, ttl);
    /// # let _ = store;
    /// ```
    pub fn new(inner: S, config: ExistenceCacheConfig) -> Self {
        let cache = Arc::new(Cache {
            map: EvictingMap::new(config.eviction_policy).labelled("existence_cache"),
            epoch: Mutex::new(0),
            expires: config.eviction_policy.max_seconds != 0,
        });
        inner.subscribe_removals(Arc::new(Forget(Arc::downgrade(&cache))));
        ExistenceCache { inner, cache }
    }
}

impl<S> ExistenceCache<S> {
    /// True if `key` is remembered as present (without asking the backend).
    ///
    /// ```
    /// let store = casstack::ExistenceCache::new(casstack::Noop, Default::default());
    /// assert!(!store.is_cached(&casstack::Digest::EMPTY.into()));
    /// ```
    pub fn is_cached(&self, key: &Key) -> bool {
        self.cache.map.peek(key).is_some()
    }

    /// How many digests are remembered.
    ///
    /// ```
    /// let store = casstack::ExistenceCache::new(casstack::Noop, Default::default());
    /// assert_eq!(store.cached_len(), 0);
    /// ```
    pub fn cached_len(&self) -> usize {
        self.cache.map.len()
    }

    /// Forgets `key`; the next `has` asks the backend.
    ///
    /// ```
    /// let store = casstack::ExistenceCache::new(casstack::Noop, Default::default());
    /// store.forget(&"k".into());
    /// ```
    pub fn forget(&self, key: &Key) {
        self.cache.forget(key);
    }

    /// The backend.
    ///
    /// ```
    /// let store = casstack::ExistenceCache::new(casstack::Memory::default(), Default::default());
    /// assert!(store.get_ref().is_empty());
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> ExistenceCache<S> {
    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        if !self.usable() {
            // A removal may go untold and answers never expire: the backend answers all.
            return self.inner.has_many(keys, out).await;
        }
        self.cache.map.sizes(keys, out, false);
        let mut misses = 0;
        for slot in out.iter() {
            misses += usize::from(slot.is_none());
        }
        crate::observe::existence_cache_lookups(keys.len() - misses, misses);
        if misses == 0 {
            return Ok(());
        }
        let epoch = self.cache.epoch();
        if misses == keys.len() {
            self.inner.has_many(keys, out).await?;
            self.cache.remember(keys, out, epoch);
            return Ok(());
        }
        let mut miss_keys = Vec::with_capacity(misses);
        for (key, slot) in keys.iter().zip(out.iter()) {
            if slot.is_none() {
                miss_keys.push(key.clone());
            }
        }
        let mut miss_out = vec![None; misses];
        self.inner.has_many(&miss_keys, &mut miss_out).await?;
        self.cache.remember(&miss_keys, &miss_out, epoch);
        let mut answers = miss_out.into_iter();
        for slot in out.iter_mut() {
            if slot.is_none() {
                *slot = answers.next().flatten();
            }
        }
        Ok(())
    }

    /// True if remembered answers may be used: the backend reports every removal, or
    /// answers expire.
    fn usable(&self) -> bool {
        self.cache.expires || self.inner.reports_all_removals()
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if let Key::Digest(_) = key {
            let mut known = [None];
            self.cache
                .map
                .sizes(std::slice::from_ref(&key), &mut known, false);
            // Skipped only if a removal would have made the cache forget the key.
            if known[0].is_some() && self.inner.reports_all_removals() {
                return drain_body(&key, size, body).await;
            }
        }
        let epoch = self.cache.epoch();
        let usable = self.usable();
        let stored = self.inner.put(key.clone(), size, body).await?;
        if usable {
            self.cache
                .remember(std::slice::from_ref(&key), &[Some(stored)], epoch);
        }
        Ok(stored)
    }
}

impl<S: Store> Store for ExistenceCache<S> {
    type Reader = S::Reader;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<S::Reader>> + Send {
        self.inner.get(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.write(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }

    /// The backend's health.
    async fn check_health(&self) -> HealthStatus {
        self.inner.check_health().await.within("ExistenceCache")
    }
}

impl<S: fmt::Debug> fmt::Debug for ExistenceCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExistenceCache")
            .field("inner", &self.inner)
            .field("cached", &self.cache.map.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::key::Digest;
    use crate::store::StoreExt;
    use crate::stores::memory::{Memory, MemoryConfig};
    use crate::wrappers::test_util::{Counting, blob};
    use std::time::Duration;

    fn cache_over(backend: Memory) -> (Counting<Memory>, ExistenceCache<Counting<Memory>>) {
        let counting = Counting::new(backend);
        (
            counting.clone(),
            ExistenceCache::new(counting, ExistenceCacheConfig::default()),
        )
    }

    #[tokio::test]
    async fn has_result_is_cached_after_the_first_query() {
        let (backend, store) = cache_over(Memory::default());
        let (d, data) = blob(10, 1);
        backend.inner().put_bytes(d, data).await.unwrap();
        assert_eq!(store.has(d).await.unwrap(), Some(10));
        assert_eq!(store.has(d).await.unwrap(), Some(10));
        assert_eq!(
            backend.has_calls(),
            1,
            "the second answer came from the cache"
        );
        // Absent keys are not cached.
        let (missing, _) = blob(11, 1);
        assert_eq!(store.has(missing).await.unwrap(), None);
        assert_eq!(store.has(missing).await.unwrap(), None);
        assert_eq!(backend.has_calls(), 3);
    }

    #[tokio::test]
    async fn mixed_batch_asks_only_for_misses_in_order() {
        let (backend, store) = cache_over(Memory::default());
        let blobs: Vec<_> = (0..4).map(|i| blob(5 + i, i as u8)).collect();
        store
            .put_bytes(blobs[0].0, blobs[0].1.clone())
            .await
            .unwrap();
        backend
            .inner()
            .put_bytes(blobs[2].0, blobs[2].1.clone())
            .await
            .unwrap();
        let keys: Vec<Key> = blobs.iter().map(|(d, _)| Key::from(*d)).collect();
        let mut out = [None; 4];
        store.has_many(&keys, &mut out).await.unwrap();
        assert_eq!(out, [Some(5), None, Some(7), None]);
        assert_eq!(backend.has_calls(), 1);
        assert!(store.is_cached(&keys[2]));
    }

    #[tokio::test]
    async fn upload_flags_the_cache_and_a_second_upload_skips_the_backend() {
        let (backend, store) = cache_over(Memory::default());
        let (d, data) = blob(10, 1);
        store.put_bytes(d, data.clone()).await.unwrap();
        assert!(store.is_cached(&d.into()));
        assert_eq!(store.put_bytes(d, data).await.unwrap(), 10);
        assert_eq!(backend.put_calls(), 1);
        // The skipped body is still checked against its declared size.
        let err = store
            .put(
                d.into(),
                UploadSize::Exact(3),
                crate::OneChunk::new("ab".into()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn names_are_never_cached() {
        let (backend, store) = cache_over(Memory::default());
        store.put_bytes("ac/1", "v1".into()).await.unwrap();
        store.put_bytes("ac/1", "v22".into()).await.unwrap();
        assert_eq!(
            backend.put_calls(),
            2,
            "a name's new value reaches the backend"
        );
        assert_eq!(store.has("ac/1").await.unwrap(), Some(3));
        assert_eq!(store.cached_len(), 0);
    }

    #[tokio::test]
    async fn backend_eviction_makes_the_cache_forget() {
        let backend = Memory::new(MemoryConfig {
            eviction_policy: EvictionPolicy {
                max_count: 1,
                ..Default::default()
            },
        });
        let (_, store) = cache_over(backend);
        let (a, ab) = blob(10, 1);
        let (b, bb) = blob(10, 2);
        store.put_bytes(a, ab).await.unwrap();
        assert_eq!(store.has(a).await.unwrap(), Some(10));
        store.put_bytes(b, bb).await.unwrap();
        assert!(
            !store.is_cached(&a.into()),
            "evicted from the backend, forgotten"
        );
        assert_eq!(store.has(a).await.unwrap(), None);
        assert_eq!(store.has(b).await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn copes_with_a_backend_that_drops_the_write_at_once() {
        let inner = Memory::default();
        let store = ExistenceCache::new(
            RacingBackend::dropping_writes(inner.clone()),
            Default::default(),
        );
        let (d, data) = blob(10, 1);
        store.put_bytes(d, data).await.unwrap();
        assert!(
            !store.is_cached(&d.into()),
            "the removal during the put prevented caching"
        );
        assert_eq!(store.has(d).await.unwrap(), None);
    }

    /// A backend that drops keys right after answering for them: after a `has` that found
    /// them (`race_has`), or right after storing them (`drop_writes`). Either way the removal
    /// notification arrives while the cache's call is still in flight.
    #[derive(Clone)]
    struct RacingBackend {
        inner: Memory,
        drop_writes: bool,
    }

    impl RacingBackend {
        fn racing_has(inner: Memory) -> Self {
            RacingBackend {
                inner,
                drop_writes: false,
            }
        }

        fn dropping_writes(inner: Memory) -> Self {
            RacingBackend {
                inner,
                drop_writes: true,
            }
        }
    }

    impl Store for RacingBackend {
        type Reader = crate::OneChunk;

        async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
            // Answer first (the blob is there), then drop it (telling the listeners): the
            // answer the cache receives is already stale.
            self.inner.has_many(keys, out).await?;
            if !self.drop_writes {
                for key in keys {
                    self.inner.remove(key);
                }
            }
            Ok(())
        }

        fn get(
            &self,
            key: Key,
            range: ByteRange,
        ) -> impl Future<Output = Result<Self::Reader>> + Send {
            self.inner.get(key, range)
        }

        async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
            let n = self.inner.put(key.clone(), size, body).await?;
            if self.drop_writes {
                self.inner.remove(&key);
            }
            Ok(n)
        }

        fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
            self.inner.subscribe_removals(listener);
        }

        fn reports_all_removals(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn a_positive_answer_racing_a_removal_is_not_cached() {
        let inner = Memory::default();
        let store =
            ExistenceCache::new(RacingBackend::racing_has(inner.clone()), Default::default());
        let (d, data) = blob(10, 1);
        inner.put_bytes(d, data).await.unwrap();
        assert_eq!(
            store.has(d).await.unwrap(),
            Some(10),
            "the backend's answer is passed on"
        );
        assert!(!store.is_cached(&d.into()), "but not remembered");
        assert_eq!(store.has(d).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_is_counted_from_when_the_answer_was_learnt() {
        let backend = Counting::new(Memory::default());
        let store = ExistenceCache::new(
            backend.clone(),
            ExistenceCacheConfig {
                eviction_policy: EvictionPolicy {
                    max_seconds: 10,
                    ..Default::default()
                },
            },
        );
        let (d, data) = blob(4, 4);
        backend.inner().put_bytes(d, data).await.unwrap();
        store.has(d).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        store.has(d).await.unwrap();
        assert_eq!(backend.has_calls(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        // 11 s after it was learnt (a peek does not refresh it): asked again.
        store.has(d).await.unwrap();
        assert_eq!(backend.has_calls(), 2);
    }

    /// A backend that drops keys without telling anyone (S3 expiry, Redis without keyspace
    /// events): it forwards no listener and keeps the trait's default `reports_all_removals`.
    #[derive(Clone)]
    struct Silent(Counting<Memory>);

    impl Store for Silent {
        type Reader = <Counting<Memory> as Store>::Reader;

        fn has_many(
            &self,
            keys: &[Key],
            out: &mut [Option<u64>],
        ) -> impl Future<Output = Result<()>> + Send {
            self.0.has_many(keys, out)
        }

        fn get(
            &self,
            key: Key,
            range: ByteRange,
        ) -> impl Future<Output = Result<Self::Reader>> + Send {
            self.0.get(key, range)
        }

        fn put<B: Body>(
            &self,
            key: Key,
            size: UploadSize,
            body: B,
        ) -> impl Future<Output = Result<u64>> + Send {
            self.0.put(key, size, body)
        }
    }

    #[tokio::test]
    async fn over_a_silent_backend_without_ttl_every_has_and_put_reaches_it() {
        let backend = Counting::new(Memory::default());
        let store = ExistenceCache::new(Silent(backend.clone()), Default::default());
        let (d, data) = blob(10, 1);
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(store.has(d).await.unwrap(), Some(10));
        // Dropped behind the cache's back.
        backend.inner().remove(&d.into());
        assert_eq!(store.has(d).await.unwrap(), None, "no stale positive");
        // A new upload of the digest is not skipped: the blob is back.
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(backend.put_calls(), 2);
        assert_eq!(backend.inner().get_bytes(d).await.unwrap(), data);
        assert_eq!(
            store.cached_len(),
            0,
            "nothing is remembered that is never used"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_silent_backend_answers_live_for_the_ttl_and_uploads_still_reach_it() {
        let backend = Counting::new(Memory::default());
        let store = ExistenceCache::new(
            Silent(backend.clone()),
            ExistenceCacheConfig {
                eviction_policy: EvictionPolicy {
                    max_seconds: 10,
                    ..Default::default()
                },
            },
        );
        let (d, data) = blob(10, 1);
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(store.has(d).await.unwrap(), Some(10));
        assert_eq!(backend.has_calls(), 0, "answered from the cache");
        backend.inner().remove(&d.into());
        // Within the TTL the answer may be stale (the configured bound), but an upload of
        // the digest is never thrown away.
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(backend.put_calls(), 2);
        assert_eq!(backend.inner().get_bytes(d).await.unwrap(), data);
        backend.inner().remove(&d.into());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.has(d).await.unwrap(), None, "expired, asked again");
    }

    /// A backend whose removal reports can stop, and that says so when they resume.
    #[derive(Clone)]
    struct Gappy {
        inner: Memory,
        live: Arc<std::sync::atomic::AtomicBool>,
        listeners: Arc<Mutex<Vec<Arc<dyn RemovalListener>>>>,
    }

    impl Gappy {
        fn resume(&self) {
            for listener in self.listeners.lock().unwrap().iter() {
                listener.removals_missed();
            }
            self.live.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Store for Gappy {
        type Reader = crate::OneChunk;

        fn has_many(
            &self,
            keys: &[Key],
            out: &mut [Option<u64>],
        ) -> impl Future<Output = Result<()>> + Send {
            self.inner.has_many(keys, out)
        }

        fn get(
            &self,
            key: Key,
            range: ByteRange,
        ) -> impl Future<Output = Result<Self::Reader>> + Send {
            self.inner.get(key, range)
        }

        fn put<B: Body>(
            &self,
            key: Key,
            size: UploadSize,
            body: B,
        ) -> impl Future<Output = Result<u64>> + Send {
            self.inner.put(key, size, body)
        }

        fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
            self.listeners.lock().unwrap().push(listener);
        }

        fn reports_all_removals(&self) -> bool {
            self.live.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_gap_in_removal_reports_is_bridged_by_forgetting_everything() {
        let backend = Gappy {
            inner: Memory::default(),
            live: Arc::new(true.into()),
            listeners: Default::default(),
        };
        let store = ExistenceCache::new(backend.clone(), Default::default());
        let (a, ab) = blob(10, 1);
        let (b, bb) = blob(10, 2);
        store.put_bytes(a, ab).await.unwrap();
        store.put_bytes(b, bb.clone()).await.unwrap();
        assert_eq!(store.cached_len(), 2);
        // Reports stop; meanwhile both blobs go, unannounced.
        backend
            .live
            .store(false, std::sync::atomic::Ordering::SeqCst);
        backend.inner.remove(&a.into());
        backend.inner.remove(&b.into());
        assert_eq!(store.has(a).await.unwrap(), None, "not trusted in the gap");
        store.put_bytes(b, bb.clone()).await.unwrap();
        assert_eq!(backend.inner.get_bytes(b).await.unwrap(), bb, "not skipped");
        backend.inner.remove(&b.into());
        // Reports resume: everything learnt before is dropped.
        backend.resume();
        assert_eq!(store.cached_len(), 0);
        assert_eq!(store.has(a).await.unwrap(), None);
        assert_eq!(store.has(b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cache_policy_bounds_what_is_remembered() {
        let backend = Memory::default();
        let store = ExistenceCache::new(
            backend.clone(),
            ExistenceCacheConfig {
                eviction_policy: EvictionPolicy {
                    max_count: 2,
                    ..Default::default()
                },
            },
        );
        for i in 0..5u8 {
            let (d, data) = blob(3, i);
            store.put_bytes(d, data).await.unwrap();
        }
        assert_eq!(store.cached_len(), 2);
        assert_eq!(backend.len(), 5);
        let mut out = [None];
        store
            .has_many(&[Digest::EMPTY.into()], &mut out)
            .await
            .unwrap();
        assert_eq!(out, [Some(0)]);
    }
}
