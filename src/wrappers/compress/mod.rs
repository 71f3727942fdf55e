//! `Compress`: seekable zstd in front of any store (NativeLink's `compression` store, §5.5,
//! with random access that NativeLink's format allows but its code does not use).
//!
//! # Semantics
//!
//! - **Independent frames.** An upload is cut into blocks of `block_size` uncompressed bytes
//!   (the last may be shorter); each block becomes one zstd frame, or is stored raw when zstd
//!   does not make it smaller, so incompressible data grows by 13 bytes per block plus 49
//!   bytes per object.
//! - **Ranged reads decode only what they need.** A read of the whole object is one inner
//!   `get`, decoded as it streams. A ranged read asks the inner store for the stored size
//!   (`has`), the 32-byte footer, the seek index (4 bytes per frame), then one ranged `get` of
//!   just the frames that cover the range. Objects of at most 64 KiB stored are read whole
//!   in one `get` instead.
//! - **`has` reports the uncompressed size.** That costs one 32-byte ranged `get` of the
//!   footer per present key (at most 16 at a time), on top of the inner `has_many`. A stored
//!   object whose footer does not decode is reported absent, so a client uploads it again
//!   and the upload replaces it; `get` of it is `DataLoss`.
//! - **Streaming put.** The body is compressed block by block as it arrives (holding at most
//!   one block) and streamed to the inner `put`, announced as `UploadSize::AtMost` the
//!   largest stored size the declared size can give. Atomicity is the inner store's: a body
//!   that fails or lies about its size makes the inner `put` fail, and nothing is stored.
//!   Compression runs inside the stream's `poll_next`, on the uploading task.
//! - **Never wrong bytes.** Every frame carries a crc32 of its uncompressed bytes, the
//!   header, index and footer carry their own crc32, and a zstd frame is decoded into a
//!   buffer of exactly its block's size: a frame that would decode past it (a decompression
//!   bomb) fails without allocating more. Any mismatch is `DataLoss` naming the key. A
//!   block size above `max_frame_size` in a stored object is refused before anything is
//!   allocated for it.
//! - **Consistency.** A whole read is one inner `get`, so it sees one version of the object.
//!   A ranged read makes several inner reads; if a name key is overwritten with different
//!   bytes between them, the read is retried when the change is seen before any byte is
//!   returned, and fails with `DataLoss` when it is seen later (never mixing versions).
//!   Digest keys always hold the same bytes (compression is deterministic for a given
//!   config), so this only concerns name keys.
//! - The empty blob is present, reads as empty and is never stored. Both key kinds are
//!   accepted. The inner store keeps the compressed bytes under the original key, so it
//!   must not verify content against digests (put `Verify` outside `Compress`).
//! - Removal notifications of the inner store are forwarded unchanged.
//!
//! # Block size
//!
//! The default block size is 256 KiB, chosen by measurement (`benches/compress.rs`, 64 MiB
//! of word-like text at level 3, two runs on a shared 2-core machine):
//!
//! | block | ratio | 4 KiB ranged read |
//! |---|---|---|
//! | 64 KiB | 2.385 | 188–193 µs |
//! | 256 KiB | 2.426 | 255–433 µs |
//! | 1 MiB | 2.447 | 1600–1894 µs |
//! | (one zstd frame) | 2.448 | (whole blob: 200–250 ms) |
//!
//! 256 KiB stores within 1% of 1 MiB blocks and 1.7% less than 64 KiB blocks, while a small
//! ranged read costs 4 to 7 times less than with 1 MiB blocks (it fetches and decodes one
//! block). It is also `Dedup`'s average chunk size. Smaller blocks pay in ratio and in index
//! size (4 bytes per block); larger ones in the latency of every small ranged read.
//!
//! # Stored format (version 1)
//!
//! All integers are little-endian; crc32 is CRC-32/ISO-HDLC (the zlib one).
//!
//! ```text
//! HEADER  16 bytes   magic "cszs" | version u32 = 1 | block_size u32 | crc32 of the 12 bytes before
//! FRAME*  9 + n      kind u8 (0 = zstd frame, 1 = raw) | n: payload length u32
//!                    | crc32 of the block's uncompressed bytes u32 | payload (n bytes)
//! END     1 byte     0xFF
//! INDEX   4 × count  payload length of each frame, in order (u32)
//! FOOTER  32 bytes   crc32 of the 28 bytes after it u32 | uncompressed size u64
//!                    | frame count u32 | block_size u32 | crc32 of INDEX u32
//!                    | version u32 = 1 | magic "cszs"
//! ```
//!
//! Every frame holds `block_size` uncompressed bytes except the last, which holds the rest
//! (there are `ceil(size / block_size)` frames; none for an empty object). A zstd payload
//! is one zstd frame, shorter than its block; a raw payload is the block itself. Frame `i`
//! starts at `16 + Σ_{j<i} (9 + len_j)`, so a reader finds any frame from the footer (at
//! `stored_size - 32`) and the index (just before it) alone. Future versions keep the
//! magic and version in the last 8 bytes and the first 8 bytes, so a reader can always
//! tell which version it holds; an unknown version is `DataLoss` naming it.
//!
//! # Layout (TOML)
//!
//! ```toml
//! [compression]
//! level = 3
//! block_size = 262144
//! max_frame_size = 4194304
//!
//! [compression.backend.memory]
//! ```
//!
//! # Failure codes
//!
//! `NotFound` (absent), `OutOfRange` (range starts past the end), `InvalidArgument` (body
//! longer or shorter than declared; bad config), `DataLoss` (a stored object that does not
//! decode: bad magic, unknown version, checksum mismatch, truncation, a frame decoding past
//! its block), plus whatever the inner store returns.

mod format;
mod stream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use crate::body::{Body, Either, OneChunk, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, StoreExt, UploadSize};
use crate::stores::memory::{check_out_len, mark_empty_blobs};

use format::{FOOTER_LEN, Footer, Index};
pub use stream::{CompressStream, DecompressStream};

/// Objects stored in at most this many bytes are read whole by a ranged read.
const SMALL_OBJECT: u64 = 64 << 10;
/// How many footers `has_many` reads at once.
const MAX_CONCURRENT_FOOTERS: usize = 16;
/// How many times a ranged read starts over when the object changes under it.
const MAX_ATTEMPTS: usize = 3;

/// Settings of a [`Compress`] wrapper.
///
/// ```
/// use casstack::wrappers::compress::CompressConfig;
///
/// let config = CompressConfig { level: 9, ..Default::default() };
/// assert_eq!(config.block_size, 256 << 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressConfig {
    /// zstd compression level (zstd's range, 1 to 22, negative for faster modes).
    /// Default: 3.
    pub level: i32,
    /// Uncompressed bytes per frame: the unit a ranged read fetches and decodes.
    /// Between 1 KiB and `max_frame_size`. Default: 256 KiB (262144).
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub block_size: u32,
    /// The largest block size a reader accepts in a stored object, which bounds the memory
    /// one frame can make it allocate. At most 1 GiB. Default: 4 MiB (4194304).
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub max_frame_size: u32,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            level: 3,
            block_size: 256 << 10,
            max_frame_size: 4 << 20,
        }
    }
}

impl CompressConfig {
    /// `InvalidArgument` unless the settings make sense together.
    ///
    /// ```
    /// use casstack::wrappers::compress::CompressConfig;
    ///
    /// assert!(CompressConfig::default().validate().is_ok());
    /// let too_big = CompressConfig { block_size: 8 << 20, ..Default::default() };
    /// assert!(too_big.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.level) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "compression level {} is outside zstd's {}..={}",
                    self.level,
                    levels.start(),
                    levels.end()
                ),
            ));
        }
        if self.max_frame_size > 1 << 30 {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("max_frame_size {} exceeds 1 GiB", self.max_frame_size),
            ));
        }
        if self.block_size < 1024 || self.block_size > self.max_frame_size {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "block_size {} is outside 1024..={} (max_frame_size)",
                    self.block_size, self.max_frame_size
                ),
            ));
        }
        Ok(())
    }
}

/// Stores objects zstd-compressed in its inner store, in independent frames with a seek
/// index, so a ranged read fetches and decodes only the frames it needs.
///
/// See the [module docs](self) for the semantics and the stored format.
///
/// ```
/// use casstack::wrappers::compress::{Compress, CompressConfig};
/// use casstack::{ByteRange, Digest, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Compress::new(Memory::default(), CompressConfig::default())?;
/// let blob = bytes::Bytes::from("all work and no play ".repeat(10_000));
/// let d = Digest::of(&blob);
/// store.put_bytes(d, blob.clone()).await?;
/// assert_eq!(store.has(d).await?, Some(blob.len() as u64));
/// assert!(store.get_ref().total_bytes() < blob.len() as u64 / 50);
/// assert_eq!(store.get_range_bytes(d, ByteRange::new(4, Some(4))).await?, "work");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Compress<S> {
    inner: S,
    config: CompressConfig,
}

impl<S: Store> Compress<S> {
    /// Wraps `inner`; `InvalidArgument` if `config` does not
    /// [validate](CompressConfig::validate).
    ///
    /// ```
    /// use casstack::wrappers::compress::{Compress, CompressConfig};
    ///
    /// let bad = CompressConfig { level: 100, ..Default::default() };
    /// assert!(Compress::new(casstack::Memory::default(), bad).is_err());
    /// ```
    pub fn new(inner: S, config: CompressConfig) -> Result<Self> {
        config.validate()?;
        Ok(Compress { inner, config })
    }

    /// The inner store.
    ///
    /// ```
    /// # use casstack::wrappers::compress::Compress;
    /// let store = Compress::new(casstack::Memory::default(), Default::default()).unwrap();
    /// assert!(store.get_ref().is_empty());
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    ///
    /// ```
    /// # use casstack::wrappers::compress::Compress;
    /// let store = Compress::new(casstack::Memory::default(), Default::default()).unwrap();
    /// let memory: casstack::Memory = store.into_inner();
    /// # let _ = memory;
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The settings.
    ///
    /// ```
    /// # use casstack::wrappers::compress::Compress;
    /// let store = Compress::new(casstack::Memory::default(), Default::default()).unwrap();
    /// assert_eq!(store.config().level, 3);
    /// ```
    pub fn config(&self) -> &CompressConfig {
        &self.config
    }

    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        self.inner.has_many(keys, out).await?;
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            while pending.len() < MAX_CONCURRENT_FOOTERS && next < keys.len() {
                if let Some(stored) = out[next]
                    && !keys[next].is_empty_blob()
                {
                    pending.push(self.uncompressed_size(next, keys[next].clone(), stored));
                }
                next += 1;
            }
            let Some((i, size)) = pending.next().await else {
                break;
            };
            out[i] = size?;
        }
        mark_empty_blobs(keys, out);
        Ok(())
    }

    /// The uncompressed size of `key`, stored in `stored` bytes; `None` if it vanished or
    /// does not decode.
    async fn uncompressed_size(
        &self,
        slot: usize,
        key: Key,
        stored: u64,
    ) -> (usize, Result<Option<u64>>) {
        let mut stored = stored;
        for _ in 0..MAX_ATTEMPTS {
            match self.read_footer(&key, stored).await {
                Ok(footer) => return (slot, Ok(Some(footer.uncompressed_size))),
                Err(e) if e.code() == Code::NotFound => return (slot, Ok(None)),
                Err(e) if e.code() == Code::DataLoss => {
                    // Replaced between `has` and the footer read (perhaps by an object of
                    // the same stored size), or corrupt: size it again and retry; an object
                    // still unreadable after every attempt counts as absent.
                    match self.inner.has(key.clone()).await {
                        Ok(Some(now)) => stored = now,
                        Ok(None) => return (slot, Ok(None)),
                        Err(e) => return (slot, Err(e)),
                    }
                }
                Err(e) => return (slot, Err(e)),
            }
        }
        (slot, Ok(None))
    }

    async fn read_footer(&self, key: &Key, stored: u64) -> Result<Footer> {
        if stored < FOOTER_LEN as u64 {
            return Err(
                format::corrupt(format!("only {stored} bytes stored")).with_key(key.clone())
            );
        }
        let range = ByteRange::new(stored - FOOTER_LEN as u64, Some(FOOTER_LEN as u64));
        let bytes = self
            .inner
            .get_range_bytes(key.clone(), range)
            .await
            .map_err(shrank)?;
        Footer::decode(&bytes, stored, self.config.max_frame_size).map_err(keyed(key))
    }

    async fn read(
        &self,
        key: Key,
        range: ByteRange,
    ) -> Result<DecompressStream<Either<S::Reader, OneChunk>>> {
        if key.is_empty_blob() {
            range.resolve(0).map_err(keyed(&key))?;
            return Ok(DecompressStream::empty(key));
        }
        let max_frame_size = self.config.max_frame_size;
        if range.is_full() {
            let reader = self.inner.get(key.clone(), ByteRange::FULL).await?;
            return Ok(DecompressStream::whole(
                key,
                Either::Left(reader),
                max_frame_size,
            ));
        }
        let mut last_size = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored = match self.inner.has(key.clone()).await? {
                Some(stored) => stored,
                None => return Err(Error::not_found(key)),
            };
            match self.open_range(&key, stored, range).await {
                Err(e)
                    if e.code() == Code::DataLoss
                        && attempt < MAX_ATTEMPTS
                        && last_size != Some(stored) =>
                {
                    // Maybe replaced under us: start over if the size moves.
                    last_size = Some(stored);
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Reads the index of `key` (stored in `stored` bytes) and opens the frames covering
    /// `range`.
    async fn open_range(
        &self,
        key: &Key,
        stored: u64,
        range: ByteRange,
    ) -> Result<DecompressStream<Either<S::Reader, OneChunk>>> {
        let max_frame_size = self.config.max_frame_size;
        let (index, whole) = if stored <= SMALL_OBJECT {
            let all = self
                .inner
                .get_range_bytes(key.clone(), ByteRange::FULL)
                .await?;
            let stored = all.len() as u64;
            if stored < FOOTER_LEN as u64 {
                return Err(
                    format::corrupt(format!("only {stored} bytes stored")).with_key(key.clone())
                );
            }
            let footer_at = all.len() - FOOTER_LEN;
            let footer =
                Footer::decode(&all[footer_at..], stored, max_frame_size).map_err(keyed(key))?;
            let index_at = footer_at - footer.index_len() as usize;
            let index =
                Index::decode(&all[index_at..footer_at], footer, stored).map_err(keyed(key))?;
            (index, Some(all))
        } else {
            let footer = self.read_footer(key, stored).await?;
            let index_len = footer.index_len();
            let index_at = stored - FOOTER_LEN as u64 - index_len;
            let bytes = if index_len == 0 {
                Bytes::new()
            } else {
                let index_range = ByteRange::new(index_at, Some(index_len));
                self.inner
                    .get_range_bytes(key.clone(), index_range)
                    .await
                    .map_err(shrank)?
            };
            (
                Index::decode(&bytes, footer, stored).map_err(keyed(key))?,
                None,
            )
        };
        let footer = index.footer;
        let span = range
            .resolve(footer.uncompressed_size)
            .map_err(keyed(key))?;
        if span.is_empty() {
            return Ok(DecompressStream::empty(key.clone()));
        }
        let block = u64::from(footer.block_size);
        let first = (span.start / block) as u32;
        let last = ((span.end - 1) / block) as u32;
        let from = index.frame_offset(first);
        let to = index.frame_offset(last + 1);
        let source = match whole {
            Some(all) => Either::Right(OneChunk::new(all.slice(from as usize..to as usize))),
            None => {
                let frames = ByteRange::new(from, Some(to - from));
                Either::Left(self.inner.get(key.clone(), frames).await.map_err(shrank)?)
            }
        };
        let skip = (span.start - u64::from(first) * block) as usize;
        Ok(DecompressStream::frames(
            key.clone(),
            source,
            &index,
            first..last + 1,
            skip,
            span.end - span.start,
        ))
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let written = Arc::new(AtomicU64::new(0));
        let block = self.config.block_size;
        let stream = CompressStream::new(
            key.clone(),
            size,
            body,
            block,
            self.config.level,
            written.clone(),
        )?;
        let bound = format::stored_bound(size.limit(), block);
        let stored = self
            .inner
            .put(key, UploadSize::AtMost(bound), stream)
            .await?;
        let uncompressed = written.load(Ordering::Acquire);
        crate::observe::compressed(stored, uncompressed);
        Ok(uncompressed)
    }
}

/// An inner range past the end of an object sized a moment ago means it was replaced by a
/// shorter one: reported as `DataLoss`, which the readers retry with the new size.
fn shrank(e: Error) -> Error {
    if e.code() == Code::OutOfRange {
        Error::new(
            Code::DataLoss,
            "the stored object changed size while being read",
        )
        .with_source(e)
    } else {
        e
    }
}

impl<S: Store> Store for Compress<S> {
    type Reader = DecompressStream<Either<S::Reader, OneChunk>>;

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
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }

    /// The backend's health, then a round trip of the probe blob through this layer. The
    /// round trip also stores the probe in this layer's format, in case the backend's own
    /// check wrote it raw under the same digest.
    async fn check_health(&self) -> HealthStatus {
        let inner = self.inner.check_health().await.within("Compress");
        if !inner.is_ok() {
            return inner;
        }
        crate::health::round_trip(self).await
    }
}

/// Adds `key` to an error (a named function, so generic futures hold no closure type).
fn keyed(key: &Key) -> impl Fn(Error) -> Error + '_ {
    move |e| e.with_key(key.clone())
}

#[cfg(test)]
mod tests;
