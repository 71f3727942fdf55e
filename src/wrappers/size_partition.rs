//! `SizePartition`: small digests to one store, large ones to another (NativeLink's
//! `size_partitioning` store, §5.4).
//!
//! - **Routing** by the digest's declared size, without I/O: `size < config.size` goes to the
//!   lower store, `size >= config.size` to the upper one.
//! - **Digests only.** A name key is `InvalidArgument`; in `has_many` one name fails the whole
//!   batch, before either child is asked.
//! - **Batches.** `has_many` splits the batch, asks both children concurrently and writes the
//!   answers back in input order. A batch that falls wholly on one side is forwarded as is.
//! - `get` and `put` forward the chosen child's future unchanged (no state of their own); the
//!   reader is [`Either`].
//! - Consistency is the children's: each key lives in exactly one of them.
//!
//! Layout (TOML):
//! ```toml
//! [size_partitioning]
//! size = 65536
//! lower_store.memory = {}
//! upper_store.memory = {}
//! ```
//!
//! Failure codes: `InvalidArgument` (name key, or `out` shorter than `keys`), and whatever
//! the chosen child returns.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::body::{Body, Either};
use crate::error::Result;
use crate::health::HealthStatus;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;
use crate::wrappers::route::{Route, RouteReader};

/// Settings of a [`SizePartition`].
///
/// ```
/// let config = casstack::SizePartitionConfig { size: 64 << 10 };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizePartitionConfig {
    /// Digests smaller than this many bytes go to the lower store, the rest to the upper one.
    /// Default: 1 MiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub size: u64,
}

impl Default for SizePartitionConfig {
    /// `size` = 1 MiB.
    fn default() -> Self {
        SizePartitionConfig { size: 1 << 20 }
    }
}

/// Routes digests by size: `< size` to `L`, `>= size` to `U`.
///
/// ```
/// use casstack::{Digest, Memory, SizePartition, SizePartitionConfig, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let (small, large) = (Memory::default(), Memory::default());
/// let store = SizePartition::new(small.clone(), large.clone(), SizePartitionConfig { size: 4 });
/// store.put_bytes(Digest::of(b"abc"), "abc".into()).await?;
/// store.put_bytes(Digest::of(b"abcd"), "abcd".into()).await?;
/// assert_eq!((small.len(), large.len()), (1, 1));
/// assert!(store.has("a name").await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SizePartition<L, U> {
    lower: L,
    upper: U,
    size: u64,
}

impl<L, U> SizePartition<L, U> {
    /// Routes digests smaller than `config.size` to `lower`, the rest to `upper`.
    ///
    /// ```
    /// let s = casstack::SizePartition::new(casstack::Memory::default(), casstack::Noop, Default::default());
    /// assert_eq!(s.threshold(), 1 << 20);
    /// ```
    pub fn new(lower: L, upper: U, config: SizePartitionConfig) -> Self {
        SizePartition {
            lower,
            upper,
            size: config.size,
        }
    }

    /// The size from which digests go to the upper store.
    ///
    /// ```
    /// let config = casstack::SizePartitionConfig { size: 10 };
    /// let s = casstack::SizePartition::new(casstack::Noop, casstack::Noop, config);
    /// assert_eq!(s.threshold(), 10);
    /// ```
    pub fn threshold(&self) -> u64 {
        self.size
    }

    /// The store for small digests.
    ///
    /// ```
    /// let s = casstack::SizePartition::new(casstack::Noop, casstack::Memory::default(), Default::default());
    /// let _lower: &casstack::Noop = s.lower();
    /// ```
    pub fn lower(&self) -> &L {
        &self.lower
    }

    /// The store for large digests.
    ///
    /// ```
    /// let s = casstack::SizePartition::new(casstack::Noop, casstack::Memory::default(), Default::default());
    /// assert!(s.upper().is_empty());
    /// ```
    pub fn upper(&self) -> &U {
        &self.upper
    }

    fn is_lower(&self, digest: Digest) -> bool {
        digest.size() < self.size
    }
}

impl<L: Store, U: Store> SizePartition<L, U> {
    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        let mut lower_count = 0;
        for key in keys {
            if self.is_lower(key.require_digest()?) {
                lower_count += 1;
            }
        }
        if lower_count == keys.len() {
            return self.lower.has_many(keys, out).await;
        }
        if lower_count == 0 {
            return self.upper.has_many(keys, out).await;
        }
        let mut lower_keys = Vec::with_capacity(lower_count);
        let mut upper_keys = Vec::with_capacity(keys.len() - lower_count);
        for key in keys {
            match key {
                Key::Digest(d) if self.is_lower(*d) => lower_keys.push(key.clone()),
                _ => upper_keys.push(key.clone()),
            }
        }
        let mut lower_out = vec![None; lower_keys.len()];
        let mut upper_out = vec![None; upper_keys.len()];
        let (lower, upper) = tokio::join!(
            self.lower.has_many(&lower_keys, &mut lower_out),
            self.upper.has_many(&upper_keys, &mut upper_out),
        );
        lower?;
        upper?;
        let (mut lower_answers, mut upper_answers) = (lower_out.into_iter(), upper_out.into_iter());
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            let answers = match key {
                Key::Digest(d) if self.is_lower(*d) => &mut lower_answers,
                _ => &mut upper_answers,
            };
            *slot = answers.next().flatten();
        }
        Ok(())
    }
}

impl<L: Store, U: Store> Store for SizePartition<L, U> {
    type Reader = Either<L::Reader, U::Reader>;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send {
        match key.require_digest() {
            Err(e) => RouteReader::Failed(Some(e)),
            Ok(d) if self.is_lower(d) => RouteReader::Left(self.lower.get(key, range)),
            Ok(_) => RouteReader::Right(self.upper.get(key, range)),
        }
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        match key.require_digest() {
            Err(e) => Route::Failed(Some(e)),
            Ok(d) if self.is_lower(d) => Route::Left(self.lower.put(key, size, body)),
            Ok(_) => Route::Right(self.upper.put(key, size, body)),
        }
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.lower.subscribe_removals(listener.clone());
        self.upper.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.lower.reports_all_removals() && self.upper.reports_all_removals()
    }

    /// The health of both children.
    async fn check_health(&self) -> HealthStatus {
        let lower = self.lower.check_health().await;
        let upper = self.upper.check_health().await;
        lower
            .within("SizePartition.lower_store")
            .and(upper.within("SizePartition.upper_store"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::store::StoreExt;
    use crate::stores::memory::Memory;
    use crate::wrappers::test_util::{Counting, blob};

    type Parts = (
        Counting<Memory>,
        Counting<Memory>,
        SizePartition<Counting<Memory>, Counting<Memory>>,
    );

    fn setup(size: u64) -> Parts {
        let lower = Counting::new(Memory::default());
        let upper = Counting::new(Memory::default());
        let store = SizePartition::new(lower.clone(), upper.clone(), SizePartitionConfig { size });
        (lower, upper, store)
    }

    #[tokio::test]
    async fn update_routes_below_threshold_to_lower_and_at_or_above_to_upper() {
        let (lower, upper, store) = setup(4);
        let (d3, b3) = blob(3, 1);
        let (d4, b4) = blob(4, 2);
        let (d5, b5) = blob(5, 3);
        store.put_bytes(d3, b3).await.unwrap();
        store.put_bytes(d4, b4).await.unwrap();
        store.put_bytes(d5, b5).await.unwrap();
        assert_eq!(lower.inner().len(), 1, "3 < 4 goes low");
        assert_eq!(upper.inner().len(), 2, "4 >= 4 goes high (inclusive)");
        assert_eq!(lower.inner().has(d3).await.unwrap(), Some(3));
        assert_eq!(upper.inner().has(d4).await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn get_and_has_are_routed_by_size() {
        let (lower, upper, store) = setup(4);
        let (small, small_bytes) = blob(2, 1);
        let (large, large_bytes) = blob(40, 2);
        lower
            .inner()
            .put_bytes(small, small_bytes.clone())
            .await
            .unwrap();
        upper
            .inner()
            .put_bytes(large, large_bytes.clone())
            .await
            .unwrap();
        assert_eq!(store.get_bytes(small).await.unwrap(), small_bytes);
        assert_eq!(store.get_bytes(large).await.unwrap(), large_bytes);
        // The same blobs in the wrong tier are not found.
        upper.inner().put_bytes(small, small_bytes).await.unwrap();
        lower.inner().remove(&small.into());
        assert_eq!(store.has(small).await.unwrap(), None);
    }

    #[tokio::test]
    async fn has_many_splits_queries_both_once_and_keeps_order() {
        let (lower, upper, store) = setup(10);
        let keys: Vec<(Digest, bytes::Bytes)> = [1, 20, 2, 30, 3, 40]
            .iter()
            .enumerate()
            .map(|(i, n)| blob(*n, i as u8))
            .collect();
        for (i, (d, b)) in keys.iter().enumerate() {
            if i % 3 != 2 {
                store.put_bytes(*d, b.clone()).await.unwrap();
            }
        }
        let (lh, uh) = (lower.has_calls(), upper.has_calls());
        let query: Vec<Key> = keys.iter().map(|(d, _)| Key::from(*d)).collect();
        let mut out = vec![Some(99); query.len()];
        store.has_many(&query, &mut out).await.unwrap();
        assert_eq!(out, [Some(1), Some(20), None, Some(30), Some(3), None]);
        assert_eq!(lower.has_calls() - lh, 1);
        assert_eq!(upper.has_calls() - uh, 1);
        // One-sided batches touch one child only.
        store.has_many(&query[..1], &mut out[..1]).await.unwrap();
        assert_eq!(upper.has_calls() - uh, 1);
    }

    #[tokio::test]
    async fn names_are_invalid_everywhere_and_store_nothing() {
        let (lower, upper, store) = setup(4);
        let err = store.put_bytes("name", "v".into()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            store.get_bytes("name").await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut out = [None, None];
        let err = store
            .has_many(&[Digest::of(b"x").into(), "name".into()], &mut out)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            lower.has_calls() + upper.has_calls(),
            0,
            "no child was asked"
        );
        assert!(lower.inner().is_empty() && upper.inner().is_empty());
    }

    #[tokio::test]
    async fn removals_of_both_children_reach_listeners() {
        let (lower, upper, store) = setup(4);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        store.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        let (a, ab) = blob(1, 1);
        let (b, bb) = blob(9, 2);
        store.put_bytes(a, ab).await.unwrap();
        store.put_bytes(b, bb).await.unwrap();
        lower.inner().remove(&a.into());
        upper.inner().remove(&b.into());
        assert_eq!(*seen.lock().unwrap(), vec![Key::from(a), Key::from(b)]);
    }
}
