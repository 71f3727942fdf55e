//! `Dedup`: content-defined chunking over an index store and a content store (NativeLink's
//! `dedup` store, §5.6), so blobs that share long runs of bytes store them once.
//!
//! # Semantics
//!
//! - **Put** splits the upload with FastCDC (the 2020 algorithm of the `fastcdc` crate,
//!   normalization level 1) as the bytes stream in, holding at most `max_size` of them. Each
//!   chunk is stored in the content store under its sha256 [`Digest`], after a `has` that
//!   skips chunks already there. Then the chunk list is written to the index store under the
//!   object's own key. A body that fails or lies about its size stops the upload before the
//!   chunk list is written, so nothing is visible; chunks already written stay in the
//!   content store, which is harmless (they are content-addressed and shared).
//! - **Small blobs** (fewer than `small_blob_threshold` bytes) are one chunk, without running
//!   the chunker (NativeLink always chunks).
//! - **Get** reads the chunk list and fetches only the chunks that cover the range, the
//!   first and last of them with a ranged `get`, at most `max_concurrent_fetches` at a time,
//!   in order; memory stays under `max_concurrent_fetches × max_size`. A missing chunk is
//!   `NotFound` naming the object (it is incomplete); a chunk of the wrong length is
//!   `DataLoss`. Chunk contents are not re-hashed on read: use a `Verify` content store for
//!   that.
//! - **Has** is present only if the chunk list is present and every chunk is present in the
//!   content store (one `has_many` for all the chunks of a batch); it reports the original
//!   size. A chunk list that does not decode is reported absent (so a client uploads again
//!   and replaces it); `get` of it is `DataLoss`.
//! - The empty blob is present, reads as empty and is never stored. Both key kinds are
//!   accepted (the index store must take them; chunks are always digest keys).
//! - The index and content stores must be distinct (or at least never hold the same keys):
//!   a one-chunk digest object has the same key as its only chunk. The index store holds
//!   chunk lists under the objects' digests, so it must not verify content.
//! - Removal notifications of both stores are forwarded. A removed chunk is reported under
//!   the chunk's digest, which is the object's own key only for one-chunk objects; listeners
//!   are not told which larger objects a lost chunk made incomplete, so give `Dedup` a
//!   content store that does not evict if it sits under an existence cache.
//!
//! # Chunk list format (version 1)
//!
//! All integers little-endian; crc32 is CRC-32/ISO-HDLC (the zlib one).
//!
//! ```text
//! magic "csdx" | version u32 = 1 | object size u64 | chunk count u32
//! count × ( sha256 of the chunk [32 bytes] | chunk size u32 )
//! crc32 of everything before u32
//! ```
//!
//! Chunk sizes are non-zero and add up to the object size (no chunks for an empty object).
//! An unknown version, a checksum mismatch or sizes that do not add up are `DataLoss`.
//!
//! # Layout (TOML)
//!
//! ```toml
//! [dedup]
//! min_size = 65536
//! normal_size = 262144
//! max_size = 524288
//! small_blob_threshold = 262144
//! max_concurrent_fetches = 10
//!
//! [dedup.index_store.memory]
//! [dedup.content_store.memory]
//! ```
//!
//! # Failure codes
//!
//! `NotFound` (no chunk list, or a chunk missing), `OutOfRange` (range starts past the end),
//! `InvalidArgument` (body longer or shorter than declared; bad config), `DataLoss` (a chunk
//! list that does not decode, a chunk of the wrong length), plus whatever the two stores
//! return.

mod format;
mod stream;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use crate::body::{Body, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, StoreExt, UploadSize};
use crate::stores::memory::{check_out_len, mark_empty_blobs};

use format::{Chunk, ChunkList, Chunker};
use stream::ChunkRead;
pub use stream::DedupStream;

/// Settings of a [`Dedup`] wrapper. Sizes are in bytes.
///
/// ```
/// use casstack::wrappers::dedup::DedupConfig;
///
/// let config = DedupConfig { normal_size: 128 << 10, ..Default::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Smallest chunk (except an object's last). 64 B to 1 MiB. Default: 64 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub min_size: u32,
    /// The chunk size FastCDC aims for. 256 B to 4 MiB, above `min_size`.
    /// Default: 256 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub normal_size: u32,
    /// Largest chunk, and the most bytes a put holds at once. 1 KiB to 16 MiB, above
    /// `normal_size`. Default: 512 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub max_size: u32,
    /// Objects smaller than this are stored as one chunk, without chunking. At most
    /// `max_size`. Default: 256 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub small_blob_threshold: u32,
    /// Chunks one `get` fetches at once (and list reads one `has_many` makes at once).
    /// At least 1. Default: 10.
    pub max_concurrent_fetches: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            min_size: 64 << 10,
            normal_size: 256 << 10,
            max_size: 512 << 10,
            small_blob_threshold: 256 << 10,
            max_concurrent_fetches: 10,
        }
    }
}

impl DedupConfig {
    /// `InvalidArgument` unless the sizes are in FastCDC's bounds and ordered.
    ///
    /// ```
    /// use casstack::wrappers::dedup::DedupConfig;
    ///
    /// let inverted = DedupConfig { min_size: 1 << 20, ..Default::default() };
    /// assert!(inverted.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::new(Code::InvalidArgument, what));
        if !(64..=1 << 20).contains(&self.min_size) {
            return bad(format!(
                "min_size {} is outside 64..=1048576",
                self.min_size
            ));
        }
        if !(256..=4 << 20).contains(&self.normal_size) {
            return bad(format!(
                "normal_size {} is outside 256..=4194304",
                self.normal_size
            ));
        }
        if !(1024..=16 << 20).contains(&self.max_size) {
            return bad(format!(
                "max_size {} is outside 1024..=16777216",
                self.max_size
            ));
        }
        if !(self.min_size < self.normal_size && self.normal_size < self.max_size) {
            return bad(format!(
                "need min_size < normal_size < max_size, got {} / {} / {}",
                self.min_size, self.normal_size, self.max_size
            ));
        }
        if self.small_blob_threshold > self.max_size {
            return bad(format!(
                "small_blob_threshold {} exceeds max_size {}",
                self.small_blob_threshold, self.max_size
            ));
        }
        if self.max_concurrent_fetches == 0 {
            return bad("max_concurrent_fetches must be at least 1".into());
        }
        Ok(())
    }
}

/// Stores objects as content-defined chunks: each distinct chunk once in the content store
/// `C`, and each object's chunk list in the index store `I`.
///
/// See the [module docs](self) for the semantics and the chunk list format.
///
/// ```
/// use casstack::wrappers::dedup::{Dedup, DedupConfig};
/// use casstack::{Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Dedup::new(Memory::default(), Memory::default(), DedupConfig::default())?;
/// let blob = bytes::Bytes::from(vec![7u8; 100]);
/// store.put_bytes("a", blob.clone()).await?;
/// store.put_bytes("b", blob.clone()).await?;
/// assert_eq!(store.content_store().len(), 1, "one chunk, shared");
/// assert_eq!(store.get_bytes("b").await?, blob);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Dedup<I, C> {
    index: I,
    content: C,
    config: DedupConfig,
}

impl<I: Store, C: Store> Dedup<I, C> {
    /// Wraps the two stores; `InvalidArgument` if `config` does not
    /// [validate](DedupConfig::validate).
    ///
    /// ```
    /// use casstack::wrappers::dedup::{Dedup, DedupConfig};
    /// use casstack::Memory;
    ///
    /// let bad = DedupConfig { max_concurrent_fetches: 0, ..Default::default() };
    /// assert!(Dedup::new(Memory::default(), Memory::default(), bad).is_err());
    /// ```
    pub fn new(index: I, content: C, config: DedupConfig) -> Result<Self> {
        config.validate()?;
        Ok(Dedup {
            index,
            content,
            config,
        })
    }

    /// The store of chunk lists.
    ///
    /// ```
    /// # use casstack::{Memory, wrappers::dedup::Dedup};
    /// let store = Dedup::new(Memory::default(), Memory::default(), Default::default()).unwrap();
    /// assert!(store.index_store().is_empty());
    /// ```
    pub fn index_store(&self) -> &I {
        &self.index
    }

    /// The store of chunks.
    ///
    /// ```
    /// # use casstack::{Memory, wrappers::dedup::Dedup};
    /// let store = Dedup::new(Memory::default(), Memory::default(), Default::default()).unwrap();
    /// assert!(store.content_store().is_empty());
    /// ```
    pub fn content_store(&self) -> &C {
        &self.content
    }

    /// The settings.
    ///
    /// ```
    /// # use casstack::{Memory, wrappers::dedup::Dedup};
    /// let store = Dedup::new(Memory::default(), Memory::default(), Default::default()).unwrap();
    /// assert_eq!(store.config().max_size, 512 << 10);
    /// ```
    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    /// Reads and decodes the chunk list of `key`.
    async fn read_list(&self, key: &Key) -> Result<ChunkList> {
        let bytes = self
            .index
            .get_range_bytes(key.clone(), ByteRange::FULL)
            .await?;
        ChunkList::decode(&bytes).map_err(|e| e.with_key(key.clone()))
    }

    /// The chunk list of `key` for `has`: `None` if absent or undecodable.
    async fn list_for_has(&self, slot: usize, key: Key) -> (usize, Result<Option<ChunkList>>) {
        let result = match self.read_list(&key).await {
            Ok(list) => Ok(Some(list)),
            Err(e) if matches!(e.code(), Code::NotFound | Code::DataLoss) => Ok(None),
            Err(e) => Err(e),
        };
        (slot, result)
    }

    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        let mut lists: Vec<Option<ChunkList>> = vec![None; keys.len()];
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            while pending.len() < self.config.max_concurrent_fetches && next < keys.len() {
                if !keys[next].is_empty_blob() {
                    pending.push(self.list_for_has(next, keys[next].clone()));
                }
                next += 1;
            }
            let Some((i, list)) = pending.next().await else {
                break;
            };
            lists[i] = list?;
        }
        let mut chunk_keys = Vec::new();
        for list in lists.iter().flatten() {
            for chunk in &list.chunks {
                chunk_keys.push(Key::Digest(chunk.digest()));
            }
        }
        let mut chunk_sizes = vec![None; chunk_keys.len()];
        if !chunk_keys.is_empty() {
            self.content.has_many(&chunk_keys, &mut chunk_sizes).await?;
        }
        let mut at = 0;
        for (slot, list) in out.iter_mut().zip(&lists) {
            *slot = None;
            let Some(list) = list else { continue };
            let sizes = &chunk_sizes[at..at + list.chunks.len()];
            at += list.chunks.len();
            let complete = sizes
                .iter()
                .zip(&list.chunks)
                .all(|(size, chunk)| *size == Some(u64::from(chunk.size)));
            if complete {
                *slot = Some(list.total);
            }
        }
        mark_empty_blobs(keys, out);
        Ok(())
    }

    async fn read(&self, key: Key, range: ByteRange) -> Result<DedupStream<C>> {
        let window = self.config.max_concurrent_fetches;
        if key.is_empty_blob() {
            range.resolve(0).map_err(|e| e.with_key(key.clone()))?;
            return Ok(DedupStream::new(
                self.content.clone(),
                key,
                Vec::new(),
                window,
            ));
        }
        let list = self.read_list(&key).await?;
        let span = range
            .resolve(list.total)
            .map_err(|e| e.with_key(key.clone()))?;
        let mut reads = Vec::new();
        let mut start = 0u64;
        for chunk in &list.chunks {
            let end = start + u64::from(chunk.size);
            if end > span.start && start < span.end {
                let from = span.start.max(start) - start;
                let to = span.end.min(end) - start;
                reads.push(ChunkRead {
                    digest: chunk.digest(),
                    offset: from,
                    len: to - from,
                });
            }
            start = end;
        }
        Ok(DedupStream::new(self.content.clone(), key, reads, window))
    }

    async fn store_chunk(&self, data: Bytes, chunks: &mut Vec<Chunk>) -> Result<()> {
        let digest = Digest::of(&data);
        if self.content.has(digest).await?.is_none() {
            self.content.put_bytes(digest, data).await?;
        }
        chunks.push(Chunk {
            hash: *digest.hash(),
            size: digest.size() as u32,
        });
        Ok(())
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, mut body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let c = &self.config;
        let mut chunker = Chunker::new(
            c.min_size,
            c.normal_size,
            c.max_size,
            c.small_blob_threshold,
        );
        let mut chunks = Vec::new();
        let mut received = 0u64;
        while let Some(piece) = body.next().await {
            let mut piece = piece.map_err(|e| e.context("reading the upload body"))?;
            received += piece.len() as u64;
            size.check_progress(received)
                .map_err(|e| e.with_key(key.clone()))?;
            while let Some(chunk) = chunker.feed(&mut piece) {
                self.store_chunk(chunk, &mut chunks).await?;
            }
        }
        size.check_end(received)
            .map_err(|e| e.with_key(key.clone()))?;
        while let Some(chunk) = chunker.finish() {
            self.store_chunk(chunk, &mut chunks).await?;
        }
        let list = ChunkList {
            total: received,
            chunks,
        };
        self.index.put_bytes(key, list.encode()).await?;
        Ok(received)
    }
}

impl<I: Store, C: Store> Store for Dedup<I, C> {
    type Reader = DedupStream<C>;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send {
        self.read(key, range)
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
        self.index.subscribe_removals(listener.clone());
        self.content.subscribe_removals(listener);
    }

    /// Never: a lost chunk is announced under its own digest, not under the objects it
    /// leaves incomplete.
    fn reports_all_removals(&self) -> bool {
        false
    }

    /// The health of both stores, then a round trip of the probe blob through this layer
    /// (which also rewrites the probe's index entry, in case the index store's own check
    /// wrote the probe raw under the same digest).
    async fn check_health(&self) -> HealthStatus {
        let index = self.index.check_health().await.within("Dedup.index_store");
        let content = self.content.check_health().await;
        let children = index.and(content.within("Dedup.content_store"));
        if !children.is_ok() {
            return children;
        }
        crate::health::round_trip(self).await
    }
}

#[cfg(test)]
mod tests;
