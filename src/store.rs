//! The [`Store`] trait, its conveniences ([`StoreExt`]) and the small types its methods take.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt as _;

use crate::body::{Body, OneChunk};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;

/// A content-addressable blob store.
///
/// Every store and wrapper in casstack implements this trait, with static dispatch: wrappers
/// are generic over their children (`FastSlow<Memory, Filesystem>`), and [`BoxStore`] is the
/// one opt-in point of type erasure. Stores are cheap to clone (an `Arc` inside) and every
/// method takes `&self`, so the idiom to run an operation on another task is
/// clone-then-spawn:
///
/// ```
/// use casstack::{Digest, Memory, Store, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Memory::default();
/// let copy = store.clone();
/// let d = Digest::of(b"spawned");
/// tokio::spawn(async move { copy.put_bytes(d, "spawned".into()).await })
///     .await
///     .unwrap()?;
/// assert_eq!(store.get_bytes(d).await?, "spawned");
/// # Ok(()) }
/// ```
///
/// Contract, checked for every store by [`testing`](crate#features):
/// - `put` is atomic: a reader sees the whole object or nothing. A body that yields an error,
///   a future dropped before it completes, or a failed check leaves nothing behind.
/// - `get` never returns wrong or partial bytes: a reader either yields exactly the requested
///   bytes, or ends with an error.
/// - The empty blob ([`Digest::EMPTY`](crate::Digest::EMPTY)) is always present, is never
///   stored, and reads as empty.
/// - A store that drops entries on its own (eviction, expiry) tells the listeners registered
///   with [`subscribe_removals`](Store::subscribe_removals).
///
/// [`BoxStore`]: crate::BoxStore
pub trait Store: Clone + Send + Sync + 'static {
    /// What `get` streams back: `Bytes` chunks, zero-copy where the store allows it.
    type Reader: Stream<Item = Result<Bytes>> + Send + Unpin + 'static;

    /// Writes the size of each of `keys` into the same position of `out` (`None` = absent).
    ///
    /// One round trip where the backend allows it. The whole call fails on an error; there
    /// are no per-key errors. `out` must be as long as `keys` (`InvalidArgument` otherwise).
    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Streams bytes `range` of the object. `NotFound` if it is absent; `OutOfRange` if the
    /// range starts past its end. A range longer than the object is cut at its end.
    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send;

    /// Stores the object streamed by `body` and returns its size.
    ///
    /// `size` says how many bytes the body will yield: exactly, or at most. A body that yields
    /// a different amount is `InvalidArgument` and nothing is stored.
    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Registers `listener` to learn every key this store drops on its own (eviction, expiry,
    /// replacement). Wrappers forward it to their children.
    ///
    /// The default does nothing, which is right only for stores that never drop an entry.
    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        let _ = listener;
    }

    /// True if, right now, every key that leaves this store is announced to the listeners of
    /// [`subscribe_removals`](Store::subscribe_removals), so a cache above may trust its
    /// "present" answers until it hears otherwise.
    ///
    /// The default, `false`, is the safe answer for any store that cannot promise it:
    /// [`ExistenceCache`](crate::ExistenceCache) then never skips an upload and only keeps
    /// answers for its configured time-to-live. `Memory` and `Filesystem` report every
    /// removal; `Redis` does only while its keyspace-event subscription is live (it can change
    /// at any time, so ask each time); `S3` (expiry, lifecycle rules), `Dedup` (a lost chunk
    /// is announced under the chunk's digest) and `Noop` do not. Wrappers answer `true` only
    /// if every child whose removals they forward does.
    ///
    /// ```
    /// use casstack::{FastSlow, Memory, Noop, Store};
    ///
    /// assert!(Memory::default().reports_all_removals());
    /// assert!(!Noop.reports_all_removals());
    /// let tiers = FastSlow::new(Memory::default(), Memory::default(), Default::default());
    /// assert!(tiers.reports_all_removals());
    /// ```
    fn reports_all_removals(&self) -> bool {
        false
    }

    /// Checks that the store works, and for a wrapper that every child does (see
    /// [`HealthStatus`] for what each store checks).
    ///
    /// The default is a round trip of a small fixed blob under its digest: `put`, `has`,
    /// `get`, compare. Leaves with a cheaper or more telling check override it (`Filesystem`
    /// stats its directories, a Redis store sends `PING`, an S3 store a `HEAD` of its
    /// bucket); wrappers override it to check all their children.
    ///
    /// ```
    /// use casstack::{FastSlow, Memory, Noop, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = FastSlow::new(Memory::default(), Noop, Default::default());
    /// assert!(store.check_health().await.is_ok());
    /// # }
    /// ```
    fn check_health(&self) -> impl Future<Output = HealthStatus> + Send {
        crate::health::round_trip(self)
    }

    /// True if this store keeps nothing it is given: every upload is read, checked and
    /// dropped, and `has` finds nothing but the empty blob, as [`Noop`](crate::Noop) does.
    ///
    /// [`FastSlow`](crate::FastSlow) asks its slow tier, and treats its fast tier as the whole
    /// store when the answer is true. The default is false; `Noop` says true, and wrappers
    /// that only pass operations through (`Metrics`, [`Ref`](crate::Ref),
    /// [`BoxStore`](crate::BoxStore)) answer for their child.
    ///
    /// ```
    /// use casstack::{BoxStore, Memory, Noop, Ref, Store};
    ///
    /// assert!(Noop.discards_writes());
    /// assert!(BoxStore::new(Ref::new("nothing", Noop)).discards_writes());
    /// assert!(!Memory::default().discards_writes());
    /// ```
    fn discards_writes(&self) -> bool {
        false
    }
}

/// Learns which keys a store dropped, so caches above it never report a blob that is gone.
///
/// Called synchronously, after the store's own locks are released; keep it short. Any
/// `Fn(&Key)` closure is a listener.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use casstack::{Key, RemovalListener};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let listener: Arc<dyn RemovalListener> = Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone()));
/// listener.removed(&Key::from("gone"));
/// assert_eq!(seen.lock().unwrap().len(), 1);
/// ```
pub trait RemovalListener: Send + Sync + 'static {
    /// `key` has left the store.
    fn removed(&self, key: &Key);

    /// The store may have dropped *any* key without telling (its notification channel was
    /// down for a while, as a `Redis` store's keyspace subscription after a reconnect):
    /// forget everything learnt about it. Called once the store reports removals again.
    ///
    /// The default does nothing, which is right only for listeners that keep no state.
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use casstack::{Key, RemovalListener};
    ///
    /// struct Known(Mutex<Vec<Key>>);
    /// impl RemovalListener for Known {
    ///     fn removed(&self, key: &Key) {
    ///         self.0.lock().unwrap().retain(|k| k != key);
    ///     }
    ///     fn removals_missed(&self) {
    ///         self.0.lock().unwrap().clear();
    ///     }
    /// }
    /// let known = Known(Mutex::new(vec![Key::from("a")]));
    /// known.removals_missed();
    /// assert!(known.0.lock().unwrap().is_empty());
    /// ```
    fn removals_missed(&self) {}
}

impl<F: Fn(&Key) + Send + Sync + 'static> RemovalListener for F {
    fn removed(&self, key: &Key) {
        self(key)
    }
}

/// A byte range of an object: `offset` and an optional length (`None` = to the end).
///
/// ```
/// use casstack::ByteRange;
///
/// assert_eq!(ByteRange::FULL.resolve(10).unwrap(), 0..10);
/// assert_eq!(ByteRange::new(2, Some(3)).resolve(10).unwrap(), 2..5);
/// assert_eq!(ByteRange::new(8, Some(5)).resolve(10).unwrap(), 8..10);
/// assert!(ByteRange::from_offset(11).resolve(10).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte to read.
    pub offset: u64,
    /// How many bytes to read at most; `None` reads to the end.
    pub len: Option<u64>,
}

impl ByteRange {
    /// The whole object.
    pub const FULL: ByteRange = ByteRange {
        offset: 0,
        len: None,
    };

    /// `len` bytes (or to the end) from `offset`.
    ///
    /// ```
    /// assert_eq!(casstack::ByteRange::new(1, Some(2)).len, Some(2));
    /// ```
    pub const fn new(offset: u64, len: Option<u64>) -> Self {
        ByteRange { offset, len }
    }

    /// From `offset` to the end.
    ///
    /// ```
    /// assert_eq!(casstack::ByteRange::from_offset(4).offset, 4);
    /// ```
    pub const fn from_offset(offset: u64) -> Self {
        ByteRange { offset, len: None }
    }

    /// True if this is the whole object.
    ///
    /// ```
    /// assert!(casstack::ByteRange::FULL.is_full());
    /// ```
    pub const fn is_full(&self) -> bool {
        self.offset == 0 && self.len.is_none()
    }

    /// The absolute byte positions this range covers in an object of `size` bytes, cut at the
    /// end. `OutOfRange` if `offset > size` (a range starting exactly at the end is empty).
    ///
    /// ```
    /// assert_eq!(casstack::ByteRange::from_offset(10).resolve(10).unwrap(), 10..10);
    /// ```
    pub fn resolve(&self, size: u64) -> Result<Range<u64>> {
        if self.offset > size {
            return Err(Error::new(
                Code::OutOfRange,
                format!(
                    "range starts at {} past the end of a {size}-byte object",
                    self.offset
                ),
            ));
        }
        let end = match self.len {
            Some(len) => self.offset.saturating_add(len).min(size),
            None => size,
        };
        Ok(self.offset..end)
    }
}

/// How many bytes a `put` body will yield.
///
/// S3 chooses single-part or multipart upload from it; `Memory` refuses an exact size that
/// can never fit without reading the body.
///
/// ```
/// use casstack::UploadSize;
///
/// assert_eq!(UploadSize::Exact(5).limit(), 5);
/// assert!(UploadSize::AtMost(5).check_end(3).is_ok());
/// assert!(UploadSize::Exact(5).check_end(3).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UploadSize {
    /// The body yields exactly this many bytes.
    Exact(u64),
    /// The body yields at most this many bytes.
    AtMost(u64),
}

impl UploadSize {
    /// The most bytes the body may yield.
    ///
    /// ```
    /// assert_eq!(casstack::UploadSize::AtMost(7).limit(), 7);
    /// ```
    pub const fn limit(&self) -> u64 {
        match *self {
            UploadSize::Exact(n) | UploadSize::AtMost(n) => n,
        }
    }

    /// The exact size, if known.
    ///
    /// ```
    /// assert_eq!(casstack::UploadSize::AtMost(7).exact(), None);
    /// ```
    pub const fn exact(&self) -> Option<u64> {
        match *self {
            UploadSize::Exact(n) => Some(n),
            UploadSize::AtMost(_) => None,
        }
    }

    /// `InvalidArgument` once a body has yielded more than the limit: call it as bytes arrive.
    ///
    /// ```
    /// assert!(casstack::UploadSize::AtMost(4).check_progress(5).is_err());
    /// ```
    pub fn check_progress(&self, received: u64) -> Result<()> {
        if received > self.limit() {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "upload body is longer than its declared size {:?}: {received} bytes so far",
                    self
                ),
            ));
        }
        Ok(())
    }

    /// `InvalidArgument` if a finished body's length does not fit the declared size.
    ///
    /// ```
    /// assert!(casstack::UploadSize::Exact(4).check_end(4).is_ok());
    /// ```
    pub fn check_end(&self, received: u64) -> Result<()> {
        self.check_progress(received)?;
        if let UploadSize::Exact(n) = *self
            && received != n
        {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("upload body ended after {received} of its declared {n} bytes"),
            ));
        }
        Ok(())
    }
}

/// Conveniences on top of [`Store`], for every store.
///
/// ```
/// use casstack::{Digest, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Memory::default();
/// let d = Digest::of(b"hello");
/// store.put_bytes(d, "hello".into()).await?;
/// assert_eq!(store.has(d).await?, Some(5));
/// assert_eq!(store.get_bytes(d).await?, "hello");
/// # Ok(()) }
/// ```
pub trait StoreExt: Store {
    /// The size of one key, `None` if absent.
    fn has(&self, key: impl Into<Key>) -> impl Future<Output = Result<Option<u64>>> + Send {
        let keys = [key.into()];
        async move {
            let mut out = [None];
            self.has_many(&keys, &mut out).await?;
            Ok(out[0])
        }
    }

    /// The whole object, collected into one buffer (no copy when the store yields one chunk).
    fn get_bytes(&self, key: impl Into<Key>) -> impl Future<Output = Result<Bytes>> + Send {
        self.get_range_bytes(key, ByteRange::FULL)
    }

    /// Bytes `range` of the object, collected into one buffer.
    fn get_range_bytes(
        &self,
        key: impl Into<Key>,
        range: ByteRange,
    ) -> impl Future<Output = Result<Bytes>> + Send {
        let key = key.into();
        async move {
            let reader = self.get(key, range).await?;
            collect_reader(reader).await
        }
    }

    /// Stores `data` in one chunk with its exact size.
    fn put_bytes(
        &self,
        key: impl Into<Key>,
        data: Bytes,
    ) -> impl Future<Output = Result<u64>> + Send {
        let size = UploadSize::Exact(data.len() as u64);
        self.put(key.into(), size, OneChunk::new(data))
    }
}

impl<S: Store> StoreExt for S {}

/// Collects a reader into one buffer; a single chunk is returned as is, without copying.
async fn collect_reader<R>(mut reader: R) -> Result<Bytes>
where
    R: Stream<Item = Result<Bytes>> + Unpin,
{
    let Some(first) = reader.next().await.transpose()? else {
        return Ok(Bytes::new());
    };
    let Some(second) = reader.next().await.transpose()? else {
        return Ok(first);
    };
    let mut all = BytesMut::with_capacity(first.len() + second.len());
    all.extend_from_slice(&first);
    all.extend_from_slice(&second);
    while let Some(chunk) = reader.next().await.transpose()? {
        all.extend_from_slice(&chunk);
    }
    Ok(all.freeze())
}
