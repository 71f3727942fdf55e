//! `Shard`: spreads keys over several stores of one type by weighted rendezvous hashing
//! (NativeLink's `shard` store, §5.11, with a better placement function).
//!
//! - **Placement.** For each key, every shard `i` gets a score `w_i / -ln(u_i)`, where `u_i`
//!   in (0, 1) comes from a 64-bit hash of the key mixed with `i`; the highest score wins
//!   (ties go to the lower index). Each shard receives its weight's share of keys, and
//!   changing one shard's weight moves keys only to or from that shard; NativeLink's cumulative
//!   thresholds instead shift every boundary after it.
//! - **Stable across Rust releases and machines.** A digest's hash is its first 8 bytes of
//!   sha256 mixed with its size; a name is hashed with 64-bit FNV-1a; both are finished with
//!   the splitmix64 mixer. Nothing uses std's `DefaultHasher` (§9 item 18). The score uses
//!   `f64::ln`, so two platforms could only disagree on a key whose two best scores are equal
//!   to the last bit.
//! - **Shard identity is its position**: keep the order of the list when editing weights;
//!   appending a shard moves only the keys the new shard takes.
//! - `has_many` buckets the batch per shard and asks the shards concurrently, writing answers
//!   back in input order; a batch on one shard is forwarded as is. `get` and `put` forward
//!   the chosen shard's future unchanged.
//!
//! Layout (TOML):
//! ```toml
//! [[shard.stores]]
//! weight = 2
//! store.memory = {}
//!
//! [[shard.stores]]
//! weight = 1
//! store.memory = {}
//! ```
//!
//! Failure codes: `InvalidArgument` from [`Shard::new`] for an empty list or all-zero
//! weights; otherwise whatever the chosen shard returns.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;

use crate::body::Body;
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;

/// Several stores of one type, each holding the keys that hash to it.
///
/// ```
/// use casstack::{Digest, Memory, Shard, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let shards = [Memory::default(), Memory::default(), Memory::default()];
/// let store = Shard::new(shards.iter().cloned().map(|m| (m, 1)))?;
/// let d = Digest::of(b"sharded");
/// store.put_bytes(d, "sharded".into()).await?;
/// assert_eq!(shards[store.shard_of(&d.into())].len(), 1);
/// assert_eq!(store.get_bytes(d).await?, "sharded");
/// # Ok(()) }
/// ```
pub struct Shard<S> {
    set: Arc<ShardSet<S>>,
}

struct ShardSet<S> {
    stores: Box<[S]>,
    weights: Box<[u32]>,
}

impl<S> Clone for Shard<S> {
    fn clone(&self) -> Self {
        Shard {
            set: self.set.clone(),
        }
    }
}

impl<S> Shard<S> {
    /// Shards over `(store, weight)` pairs; a shard of weight 0 receives nothing.
    ///
    /// `InvalidArgument` for an empty list or weights that are all 0.
    ///
    /// ```
    /// use casstack::{Code, Memory, Shard};
    /// assert!(Shard::new([(Memory::default(), 3), (Memory::default(), 1)]).is_ok());
    /// let none: [(Memory, u32); 0] = [];
    /// assert_eq!(Shard::new(none).unwrap_err().code(), Code::InvalidArgument);
    /// ```
    pub fn new(shards: impl IntoIterator<Item = (S, u32)>) -> Result<Self> {
        let (stores, weights): (Vec<S>, Vec<u32>) = shards.into_iter().unzip();
        if stores.is_empty() {
            return Err(Error::new(
                Code::InvalidArgument,
                "a shard store needs at least one shard",
            ));
        }
        if weights.iter().max() == Some(&0) {
            return Err(Error::new(
                Code::InvalidArgument,
                "every shard has weight 0, so no shard could hold anything",
            ));
        }
        Ok(Shard {
            set: Arc::new(ShardSet {
                stores: stores.into(),
                weights: weights.into(),
            }),
        })
    }

    /// Shards of equal weight.
    ///
    /// ```
    /// let s = casstack::Shard::even(vec![casstack::Noop, casstack::Noop]).unwrap();
    /// assert_eq!(s.shards().len(), 2);
    /// ```
    pub fn even(stores: impl IntoIterator<Item = S>) -> Result<Self> {
        Shard::new(stores.into_iter().zip(std::iter::repeat(1)))
    }

    /// The shards, in placement order.
    ///
    /// ```
    /// let s = casstack::Shard::even([casstack::Noop]).unwrap();
    /// assert_eq!(s.shards().len(), 1);
    /// ```
    pub fn shards(&self) -> &[S] {
        &self.set.stores
    }

    /// The weights, in placement order.
    ///
    /// ```
    /// let s = casstack::Shard::new([(casstack::Noop, 5)]).unwrap();
    /// assert_eq!(s.weights(), &[5]);
    /// ```
    pub fn weights(&self) -> &[u32] {
        &self.set.weights
    }

    /// The index of the shard that holds `key`.
    ///
    /// ```
    /// let s = casstack::Shard::new([(casstack::Noop, 1), (casstack::Noop, 0)]).unwrap();
    /// assert_eq!(s.shard_of(&"anything".into()), 0);
    /// ```
    pub fn shard_of(&self, key: &Key) -> usize {
        place(key_hash(key), &self.set.weights)
    }
}

/// The index with the highest weighted rendezvous score for a key hashed to `hash`.
fn place(hash: u64, weights: &[u32]) -> usize {
    let mut best = 0;
    let mut best_score = f64::NEG_INFINITY;
    for (i, &weight) in weights.iter().enumerate() {
        if weight == 0 {
            continue;
        }
        let h = mix(hash ^ mix(i as u64 ^ SHARD_SEED));
        // 53 random bits, moved off 0 so ln is finite: u in (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(weight) / -u.ln();
        if score > best_score {
            best = i;
            best_score = score;
        }
    }
    best
}

const SHARD_SEED: u64 = 0x6a09_e667_f3bc_c908;
const NAME_SEED: u64 = 0xbb67_ae85_84ca_a73b;

/// A stable 64-bit hash of a key (the same on every platform and Rust release).
fn key_hash(key: &Key) -> u64 {
    match key {
        Key::Digest(d) => {
            let mut first = [0u8; 8];
            first.copy_from_slice(&d.hash()[..8]);
            mix(u64::from_le_bytes(first) ^ mix(d.size()))
        }
        Key::Name(name) => mix(fnv1a(name.as_bytes()) ^ NAME_SEED),
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: a bijective mix of 64 bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl<S: Store> Shard<S> {
    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        let stores = &self.set.stores;
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let first_shard = self.shard_of(first);
        let mut route = Vec::with_capacity(keys.len());
        let mut one_shard = true;
        for key in keys {
            let shard = self.shard_of(key);
            one_shard &= shard == first_shard;
            route.push(shard);
        }
        if one_shard {
            return stores[first_shard].has_many(keys, out).await;
        }
        let mut bucket_keys: Vec<Vec<Key>> = vec![Vec::new(); stores.len()];
        for (key, &shard) in keys.iter().zip(&route) {
            bucket_keys[shard].push(key.clone());
        }
        let mut bucket_out: Vec<Vec<Option<u64>>> = Vec::with_capacity(stores.len());
        for bucket in &bucket_keys {
            bucket_out.push(vec![None; bucket.len()]);
        }
        let mut queries = Vec::new();
        for ((store, keys), out) in stores.iter().zip(&bucket_keys).zip(bucket_out.iter_mut()) {
            if !keys.is_empty() {
                queries.push(store.has_many(keys, out));
            }
        }
        for result in join_all(queries).await {
            result?;
        }
        let mut cursor = vec![0usize; stores.len()];
        for (slot, shard) in out.iter_mut().zip(route) {
            *slot = bucket_out[shard][cursor[shard]];
            cursor[shard] += 1;
        }
        Ok(())
    }
}

impl<S: Store> Store for Shard<S> {
    type Reader = S::Reader;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<S::Reader>> + Send {
        self.set.stores[self.shard_of(&key)].get(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.set.stores[self.shard_of(&key)].put(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        for store in self.set.stores.iter() {
            store.subscribe_removals(listener.clone());
        }
    }

    fn reports_all_removals(&self) -> bool {
        self.set.stores.iter().all(Store::reports_all_removals)
    }

    /// Every shard's health (one after another), each named by its position.
    async fn check_health(&self) -> HealthStatus {
        let mut status = HealthStatus::Ok;
        for (i, store) in self.set.stores.iter().enumerate() {
            let shard = store.check_health().await;
            if !shard.is_ok() {
                status = status.and(shard.within(&format!("Shard[{i}]")));
            }
        }
        status
    }
}

impl<S: fmt::Debug> fmt::Debug for Shard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("stores", &self.set.stores)
            .field("weights", &self.set.weights)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Digest;
    use crate::store::StoreExt;
    use crate::stores::memory::Memory;
    use crate::wrappers::test_util::{Counting, blob};

    /// `n` reproducible pseudo-random digests.
    fn digests(n: u64) -> Vec<Key> {
        (0..n)
            .map(|i| {
                let mut hash = [0u8; 32];
                for (j, chunk) in hash.chunks_mut(8).enumerate() {
                    chunk.copy_from_slice(&mix(i * 4 + j as u64).to_le_bytes());
                }
                Key::from(Digest::new(hash, i % 1000))
            })
            .collect()
    }

    fn counts(weights: &[u32], keys: &[Key]) -> Vec<usize> {
        let mut counts = vec![0; weights.len()];
        for key in keys {
            counts[place(key_hash(key), weights)] += 1;
        }
        counts
    }

    #[test]
    fn placement_is_pinned() {
        // Golden values: a change here re-homes every stored blob of every user.
        let weights = [1, 1, 1, 1];
        let keys = [
            Key::from(Digest::of(b"")),
            Key::from(Digest::of(b"hello")),
            Key::from("ac/0"),
            Key::from("ac/1"),
        ];
        let placed: Vec<usize> = keys.iter().map(|k| place(key_hash(k), &weights)).collect();
        assert_eq!(placed, PINNED);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a test vector");
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf, "splitmix64 test vector");
    }

    const PINNED: [usize; 4] = [3, 0, 0, 3];

    #[test]
    fn weights_share_the_keys() {
        let keys = digests(100_000);
        let even = counts(&[1, 1, 1], &keys);
        for c in &even {
            assert!((*c as f64 / 100_000.0 - 1.0 / 3.0).abs() < 0.01, "{even:?}");
        }
        let biased = counts(&[1, 1, 1, 100, 1, 1], &keys);
        let share = biased[3] as f64 / 100_000.0;
        assert!((share - 100.0 / 105.0).abs() < 0.01, "{biased:?}");
        let heavy = counts(&[100_000, 1], &keys[..1000]);
        assert!(heavy[0] >= 995, "{heavy:?}");
        assert_eq!(counts(&[0, 1], &keys[..1000]), vec![0, 1000]);
    }

    #[test]
    fn changing_one_weight_moves_only_that_shards_share() {
        let keys = digests(100_000);
        let before: Vec<usize> = keys
            .iter()
            .map(|k| place(key_hash(k), &[1, 1, 1]))
            .collect();
        let after: Vec<usize> = keys
            .iter()
            .map(|k| place(key_hash(k), &[2, 1, 1]))
            .collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                assert_eq!(*a, 0, "keys only move to the shard whose weight grew");
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        // Shard 0's share grows from 1/3 to 1/2: exactly 1/6 of the keys must move.
        eprintln!(
            "weights [1,1,1] -> [2,1,1]: {:.4} of keys moved (ideal 0.1667)",
            fraction
        );
        assert!((fraction - 1.0 / 6.0).abs() < 0.01, "{fraction}");
        // Adding a fourth shard of weight 1 moves 1/4 of the keys, all to it.
        let grown: Vec<usize> = keys
            .iter()
            .map(|k| place(key_hash(k), &[1, 1, 1, 1]))
            .collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&grown) {
            if b != a {
                moved += 1;
                assert_eq!(*a, 3);
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        eprintln!(
            "adding a 4th shard: {:.4} of keys moved (ideal 0.25)",
            fraction
        );
        assert!((fraction - 0.25).abs() < 0.01, "{fraction}");
    }

    fn three() -> (Vec<Counting<Memory>>, Shard<Counting<Memory>>) {
        let shards: Vec<_> = (0..3).map(|_| Counting::new(Memory::default())).collect();
        let store = Shard::even(shards.clone()).unwrap();
        (shards, store)
    }

    #[tokio::test]
    async fn uploads_and_reads_go_to_the_placed_shard() {
        let (shards, store) = three();
        for i in 0..30u8 {
            let (d, data) = blob(20, i);
            store.put_bytes(d, data.clone()).await.unwrap();
            let home = store.shard_of(&d.into());
            assert_eq!(shards[home].inner().has(d).await.unwrap(), Some(20));
            assert_eq!(store.get_bytes(d).await.unwrap(), data);
        }
        store.put_bytes("name", "v".into()).await.unwrap();
        let home = store.shard_of(&"name".into());
        assert_eq!(shards[home].inner().has("name").await.unwrap(), Some(1));
        let total: usize = shards.iter().map(|s| s.inner().len()).sum();
        assert_eq!(total, 31);
    }

    #[tokio::test]
    async fn has_many_asks_each_shard_once_and_keeps_order() {
        let (shards, store) = three();
        let mut keys = Vec::new();
        let mut expected = Vec::new();
        for i in 0..12u8 {
            let (d, data) = blob(usize::from(i) + 1, i);
            if i % 2 == 0 {
                store.put_bytes(d, data).await.unwrap();
                expected.push(Some(u64::from(i) + 1));
            } else {
                expected.push(None);
            }
            keys.push(Key::from(d));
        }
        let before: Vec<usize> = shards.iter().map(Counting::has_calls).collect();
        let mut out = vec![None; keys.len()];
        store.has_many(&keys, &mut out).await.unwrap();
        assert_eq!(out, expected);
        for (s, b) in shards.iter().zip(before) {
            assert!(s.has_calls() - b <= 1);
        }
        let mut one = [None];
        store.has_many(&keys[..1], &mut one).await.unwrap();
        assert_eq!(one, [Some(1)]);
        store.has_many(&[], &mut []).await.unwrap();
    }

    #[tokio::test]
    async fn removals_of_every_shard_reach_listeners() {
        let (shards, store) = three();
        let seen = Arc::new(std::sync::Mutex::new(0));
        let log = seen.clone();
        store.subscribe_removals(Arc::new(move |_: &Key| *log.lock().unwrap() += 1));
        for (i, shard) in shards.iter().enumerate() {
            shard.inner().put_bytes("k", "v".into()).await.unwrap();
            assert!(shard.inner().remove(&"k".into()), "{i}");
        }
        assert_eq!(*seen.lock().unwrap(), 3);
    }
}
