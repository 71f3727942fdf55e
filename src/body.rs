//! The byte streams that flow between stores: the [`Body`] of a `put`, readers, and small
//! named adapters (named types, not closures, keep deep store types cheap to compile).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt as _;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::UploadSize;

/// What a `put` reads from: a stream of `Bytes` chunks that may fail.
///
/// Every `Stream<Item = Result<Bytes>> + Send + Unpin + 'static` is a `Body`; use
/// [`OneChunk`] for a buffer you already hold, and `Box::pin(stream)` for a stream that is not
/// `Unpin`.
///
/// ```
/// fn takes_body<B: casstack::Body>(_: B) {}
/// takes_body(casstack::OneChunk::new("abc".into()));
/// ```
pub trait Body: Stream<Item = Result<Bytes>> + Send + Unpin + 'static {}

impl<T: Stream<Item = Result<Bytes>> + Send + Unpin + 'static> Body for T {}

/// A type-erased body or reader, as [`BoxStore`](crate::BoxStore) passes them.
pub type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A stream of exactly one chunk (none if the chunk is empty).
///
/// The reader of `Memory`: a hit is a slice of the stored buffer, handed out without a copy.
///
/// ```
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut s = casstack::OneChunk::new("hi".into());
/// assert_eq!(s.next().await.unwrap().unwrap(), "hi");
/// assert!(s.next().await.is_none());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct OneChunk(Option<Bytes>);

impl OneChunk {
    /// A stream that yields `chunk` once, or nothing if it is empty.
    pub fn new(chunk: Bytes) -> Self {
        OneChunk((!chunk.is_empty()).then_some(chunk))
    }
}

impl Stream for OneChunk {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.take().map(Ok))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.0.is_some());
        (n, Some(n))
    }
}

/// One of two readers: what a wrapper returns when a `get` may come from either child.
///
/// ```
/// use casstack::{Either, OneChunk};
/// let r: Either<OneChunk, OneChunk> = Either::Left(OneChunk::new("a".into()));
/// # let _ = r;
/// ```
#[derive(Debug)]
pub enum Either<A, B> {
    /// The first child's reader.
    Left(A),
    /// The second child's reader.
    Right(B),
}

impl<A, B> Stream for Either<A, B>
where
    A: Stream<Item = Result<Bytes>> + Unpin,
    B: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Either::Left(a) => Pin::new(a).poll_next(cx),
            Either::Right(b) => Pin::new(b).poll_next(cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Either::Left(a) => a.size_hint(),
            Either::Right(b) => b.size_hint(),
        }
    }
}

/// Reads a whole `put` body into one buffer, enforcing the declared `size`.
///
/// A body that yields more than declared is refused as soon as it does (never buffered past
/// the limit); one that ends short of an exact size, or yields an error, fails. Every error
/// names `key`. The result is a fresh buffer, so a stored object never pins a larger buffer the
/// caller happened to slice it from.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use casstack::{collect_body, OneChunk, UploadSize};
/// let b = collect_body(&"k".into(), UploadSize::Exact(2), OneChunk::new("hi".into())).await;
/// assert_eq!(b.unwrap(), "hi");
/// let short = collect_body(&"k".into(), UploadSize::Exact(3), OneChunk::new("hi".into())).await;
/// assert!(short.is_err());
/// # }
/// ```
pub async fn collect_body<B: Body>(key: &Key, size: UploadSize, body: B) -> Result<Bytes> {
    collect_body_within(key, size, body, |_| Ok(())).await
}

/// [`collect_body`] that also hands the running byte count to `fits` before each chunk is
/// buffered, so a store whose capacity is smaller than the declared limit (an `AtMost` of
/// unknown length, say) refuses the body as soon as it outgrows the store, not after holding
/// all of it in memory.
pub(crate) async fn collect_body_within<B: Body>(
    key: &Key,
    size: UploadSize,
    mut body: B,
    fits: impl Fn(u64) -> Result<()>,
) -> Result<Bytes> {
    // Never trust a declared size for the allocation beyond a modest bound.
    const MAX_PREALLOCATION: u64 = 1 << 20;
    let mut buf = BytesMut::with_capacity(size.limit().min(MAX_PREALLOCATION) as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.context("reading the upload body"))?;
        let received = buf.len() as u64 + chunk.len() as u64;
        size.check_progress(received)
            .and_then(|()| fits(received))
            .map_err(|e| e.with_key(key.clone()))?;
        buf.extend_from_slice(&chunk);
    }
    size.check_end(buf.len() as u64)
        .map_err(|e: Error| e.with_key(key.clone()))?;
    Ok(buf.freeze())
}

/// Reads a body to its end and discards it, enforcing the declared `size`; returns the count.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use casstack::{drain_body, OneChunk, UploadSize};
/// let n = drain_body(&"k".into(), UploadSize::AtMost(9), OneChunk::new("abc".into())).await;
/// assert_eq!(n.unwrap(), 3);
/// # }
/// ```
pub async fn drain_body<B: Body>(key: &Key, size: UploadSize, mut body: B) -> Result<u64> {
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.context("reading the upload body"))?;
        received += chunk.len() as u64;
        size.check_progress(received)
            .map_err(|e| e.with_key(key.clone()))?;
    }
    size.check_end(received)
        .map_err(|e| e.with_key(key.clone()))?;
    Ok(received)
}
