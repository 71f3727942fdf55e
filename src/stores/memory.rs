//! `Memory`: blobs in RAM, with optional LRU eviction (NativeLink's `memory` store, §5.1).
//!
//! - **Zero-copy reads.** A hit is a slice of the stored `Bytes`: no copy, no allocation.
//! - **Concurrent readers** share a read lock and never wait on each other; see
//!   [`EvictingMap`] for how recency is kept without a write lock.
//! - **Copy on write.** A `put` copies the body into a fresh buffer, so a stored blob never
//!   pins a larger buffer the caller sliced it from (NativeLink issue #289).
//! - **Refusal up front.** A `put` that declares an exact size that can never fit (`>=
//!   max_bytes`) is refused with `ResourceExhausted` before a byte of its body is read; a
//!   body of unknown length (`AtMost`) is refused as soon as it outgrows the store, so it is
//!   never held whole; neither evicts anything. NativeLink instead drains such a body and
//!   reports success without storing it.
//! - Both key kinds are stored. The empty blob is always present and never stored.
//!
//! Layout (TOML):
//! ```toml
//! [memory.eviction_policy]
//! max_bytes = 1073741824
//! ```
//!
//! Failure codes: `NotFound` (absent), `OutOfRange` (range past the end), `InvalidArgument`
//! (body longer or shorter than declared), `ResourceExhausted` (can never fit).

use std::future::{Future, ready};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::body::{Body, OneChunk, collect_body_within, drain_body};
use crate::error::{Code, Error, Result};
use crate::eviction::{EvictingMap, EvictionPolicy};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// Settings of a [`Memory`] store.
///
/// ```
/// use casstack::{EvictionPolicy, MemoryConfig};
/// let config = MemoryConfig {
///     eviction_policy: EvictionPolicy { max_bytes: 64 << 20, ..Default::default() },
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// When to drop least recently used blobs. Default: never.
    pub eviction_policy: EvictionPolicy,
}

/// An in-memory store. Cloning it shares the same blobs.
///
/// ```
/// use casstack::{Digest, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Memory::default();
/// let d = Digest::of(b"abc");
/// store.put_bytes(d, "abc".into()).await?;
/// assert_eq!(store.get_range_bytes(d, casstack::ByteRange::new(1, Some(1))).await?, "b");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Memory {
    index: Arc<EvictingMap<Bytes>>,
}

impl Memory {
    /// A store with `config`.
    ///
    /// ```
    /// let store = casstack::Memory::new(Default::default());
    /// assert_eq!(store.len(), 0);
    /// ```
    pub fn new(config: MemoryConfig) -> Self {
        Memory {
            index: Arc::new(EvictingMap::new(config.eviction_policy).labelled("memory")),
        }
    }

    /// Number of stored blobs.
    ///
    /// ```
    /// assert_eq!(casstack::Memory::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is stored.
    ///
    /// ```
    /// assert!(casstack::Memory::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Sum of the sizes of the stored blobs.
    ///
    /// ```
    /// assert_eq!(casstack::Memory::default().total_bytes(), 0);
    /// ```
    pub fn total_bytes(&self) -> u64 {
        self.index.total_bytes()
    }

    /// Removes `key`, telling removal listeners; true if it was present.
    ///
    /// ```
    /// assert!(!casstack::Memory::default().remove(&"k".into()));
    /// ```
    pub fn remove(&self, key: &Key) -> bool {
        self.index.remove(key).is_some()
    }

    fn read(&self, key: Key, range: ByteRange) -> Result<OneChunk> {
        if key.is_empty_blob() {
            return range.resolve(0).map(|_| OneChunk::default());
        }
        let slice = self
            .index
            .get_with(&key, |data| {
                range
                    .resolve(data.len() as u64)
                    .map(|span| data.slice(span.start as usize..span.end as usize))
            })
            .ok_or_else(|| Error::not_found(key.clone()))?;
        slice.map(OneChunk::new).map_err(|e| e.with_key(key))
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let policy = self.index.policy();
        if let UploadSize::Exact(n) = size {
            policy.check_fits(n).map_err(|e| e.with_key(key.clone()))?;
        }
        // An `AtMost` body is refused as soon as it outgrows the store, never held whole.
        let data = collect_body_within(&key, size, body, |n| policy.check_fits(n)).await?;
        let len = data.len() as u64;
        self.index.insert(key, data, len)?;
        Ok(len)
    }
}

impl Default for Memory {
    /// A store that never evicts.
    fn default() -> Self {
        Memory::new(MemoryConfig::default())
    }
}

impl Store for Memory {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        ready(check_out_len(keys, out).map(|()| {
            self.index.sizes(keys, out, true);
            mark_empty_blobs(keys, out);
        }))
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<OneChunk>> + Send {
        ready(self.read(key, range))
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
        self.index.subscribe(listener);
    }

    /// Always: every eviction and removal is announced.
    fn reports_all_removals(&self) -> bool {
        true
    }

    /// Always ok: there is nothing to check in RAM (a round trip would only store a probe).
    fn check_health(&self) -> impl Future<Output = HealthStatus> + Send {
        ready(HealthStatus::Ok)
    }
}

/// `InvalidArgument` unless `out` has one slot per key.
pub(crate) fn check_out_len(keys: &[Key], out: &[Option<u64>]) -> Result<()> {
    if keys.len() != out.len() {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "has_many got {} keys but {} result slots",
                keys.len(),
                out.len()
            ),
        ));
    }
    Ok(())
}

/// Reports the empty blob present with size 0, whatever the store holds.
pub(crate) fn mark_empty_blobs(keys: &[Key], out: &mut [Option<u64>]) {
    for (key, slot) in keys.iter().zip(out.iter_mut()) {
        if key.is_empty_blob() {
            *slot = Some(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Digest;
    use crate::store::StoreExt;
    use futures_util::{StreamExt as _, stream};

    fn limited(max_bytes: u64) -> Memory {
        Memory::new(MemoryConfig {
            eviction_policy: EvictionPolicy {
                max_bytes,
                ..Default::default()
            },
        })
    }

    #[tokio::test]
    async fn hit_is_a_slice_of_the_stored_buffer() {
        let store = Memory::default();
        let d = Digest::of(b"zero copy please");
        store.put_bytes(d, "zero copy please".into()).await.unwrap();
        let first = store.get_bytes(d).await.unwrap();
        let second = store.get_bytes(d).await.unwrap();
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "both reads share one buffer"
        );
        let part = store
            .get_range_bytes(d, ByteRange::new(5, Some(4)))
            .await
            .unwrap();
        assert_eq!(part, "copy");
        assert_eq!(part.as_ptr(), first[5..].as_ptr(), "a range is a slice too");
    }

    #[tokio::test]
    async fn put_copies_so_the_callers_buffer_is_not_pinned() {
        let store = Memory::default();
        let big = Bytes::from(vec![7u8; 4096]);
        let small = big.slice(0..16);
        store.put_bytes("k", small.clone()).await.unwrap();
        let stored = store.get_bytes("k").await.unwrap();
        assert_eq!(stored, small);
        assert_ne!(stored.as_ptr(), small.as_ptr());
    }

    #[tokio::test]
    async fn overwrite_replaces_the_value() {
        let store = Memory::default();
        store.put_bytes("k", "one".into()).await.unwrap();
        store.put_bytes("k", "three".into()).await.unwrap();
        assert_eq!(store.has("k").await.unwrap(), Some(5));
        assert_eq!(store.get_bytes("k").await.unwrap(), "three");
    }

    #[tokio::test]
    async fn exact_size_that_can_never_fit_is_refused_unread() {
        let store = limited(100);
        store
            .put_bytes("small", Bytes::from(vec![1; 10]))
            .await
            .unwrap();
        // A body that would fail if it were ever polled proves it is not read.
        let body = stream::iter(vec![Err(Error::new(Code::Internal, "body was read"))]);
        let err = store
            .put("big".into(), UploadSize::Exact(100), body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            store.has("small").await.unwrap(),
            Some(10),
            "nothing was evicted"
        );
    }

    #[tokio::test]
    async fn at_most_size_over_budget_with_small_content_is_stored() {
        let store = limited(100);
        let body = OneChunk::new(Bytes::from(vec![1; 10]));
        store
            .put("k".into(), UploadSize::AtMost(1000), body)
            .await
            .unwrap();
        assert_eq!(store.has("k").await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn too_large_content_is_refused_without_evicting() {
        let store = limited(100);
        store
            .put_bytes("small", Bytes::from(vec![1; 10]))
            .await
            .unwrap();
        let body = OneChunk::new(Bytes::from(vec![1; 100]));
        let err = store
            .put("k".into(), UploadSize::AtMost(1000), body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(store.has("small").await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_refused_once_it_outgrows_the_store() {
        let store = limited(100);
        // 50 chunks of 10 bytes, declared only as "at most u64::MAX".
        let polled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = polled.clone();
        let body = stream::repeat_with(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Bytes::from_static(&[1; 10]))
        })
        .take(50);
        let err = store
            .put("k".into(), UploadSize::AtMost(u64::MAX), body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(err.key(), Some(&Key::from("k")));
        // 10 chunks make 100 bytes, which is refused: nothing past the budget was read.
        assert_eq!(polled.load(std::sync::atomic::Ordering::Relaxed), 10);
        assert_eq!(store.has("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn bodies_that_lie_about_their_size_store_nothing() {
        let store = Memory::default();
        let long = store.put(
            "a".into(),
            UploadSize::Exact(2),
            OneChunk::new("abc".into()),
        );
        assert_eq!(long.await.unwrap_err().code(), Code::InvalidArgument);
        let short = store.put(
            "a".into(),
            UploadSize::Exact(4),
            OneChunk::new("abc".into()),
        );
        assert_eq!(short.await.unwrap_err().code(), Code::InvalidArgument);
        let failing = stream::iter(vec![
            Ok(Bytes::from("ab")),
            Err(Error::new(Code::Aborted, "client went away")),
        ]);
        let err = store
            .put("a".into(), UploadSize::AtMost(9), failing)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        assert_eq!(store.has("a").await.unwrap(), None);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn empty_blob_is_present_readable_and_never_stored() {
        let store = Memory::default();
        let mut out = [None, None];
        store
            .has_many(&[Digest::EMPTY.into(), "x".into()], &mut out)
            .await
            .unwrap();
        assert_eq!(out, [Some(0), None]);
        assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
        store.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
        assert!(store.is_empty());
        let err = store
            .put_bytes(Digest::EMPTY, "not empty".into())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn empty_name_values_can_be_stored() {
        let store = Memory::default();
        store.put_bytes("empty", Bytes::new()).await.unwrap();
        assert_eq!(store.has("empty").await.unwrap(), Some(0));
        assert_eq!(store.get_bytes("empty").await.unwrap(), "");
    }

    #[tokio::test]
    async fn misses_and_bad_ranges_are_clear_errors() {
        let store = Memory::default();
        let err = store.get_bytes("nope").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.key(), Some(&Key::from("nope")));
        store.put_bytes("k", "1234".into()).await.unwrap();
        let partial = store
            .get_range_bytes("k", ByteRange::new(1, Some(2)))
            .await
            .unwrap();
        assert_eq!(partial, "23");
        let end = store
            .get_range_bytes("k", ByteRange::from_offset(4))
            .await
            .unwrap();
        assert_eq!(end, "");
        let err = store
            .get_range_bytes("k", ByteRange::from_offset(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        let mut short = [None];
        let err = store
            .has_many(&["a".into(), "b".into()], &mut short)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn evictions_reach_removal_listeners() {
        let store = limited(10);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        store.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        store.put_bytes("a", Bytes::from(vec![0; 6])).await.unwrap();
        store.put_bytes("b", Bytes::from(vec![0; 6])).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Key::from("a")]);
        assert_eq!(store.has("a").await.unwrap(), None);
    }
}
