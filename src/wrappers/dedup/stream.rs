//! [`DedupStream`]: the reader of [`Dedup`](super::Dedup).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;

use crate::error::{Code, Error, Result};
use crate::key::{Digest, Key};
use crate::store::{ByteRange, Store, StoreExt};

type ChunkFuture = Pin<Box<dyn Future<Output = Result<Bytes>> + Send>>;

/// The part of one chunk a read needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkRead {
    pub(crate) digest: Digest,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Streams the chunks covering a range, in order, fetching at most `max_concurrent_fetches`
/// of them from the content store at once (so it holds at most that many chunks).
///
/// A missing chunk ends the stream with `NotFound` naming the object's key (the object is
/// incomplete); a chunk of the wrong length with `DataLoss`.
///
/// ```
/// use casstack::wrappers::dedup::{Dedup, DedupConfig};
/// use casstack::{ByteRange, Memory, Store, StoreExt};
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Dedup::new(Memory::default(), Memory::default(), DedupConfig::default())?;
/// store.put_bytes("k", "hello, world".into()).await?;
/// let mut reader = store.get("k".into(), ByteRange::new(7, None)).await?;
/// assert_eq!(reader.next().await.unwrap()?, "world");
/// # Ok(()) }
/// ```
pub struct DedupStream<C> {
    content: C,
    key: Key,
    todo: std::vec::IntoIter<ChunkRead>,
    in_flight: FuturesOrdered<ChunkFuture>,
    window: usize,
    done: bool,
}

// Nothing in it is ever pinned in place (the fetches are boxed), whatever `C` is.
impl<C> Unpin for DedupStream<C> {}

impl<C> fmt::Debug for DedupStream<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupStream")
            .field("key", &self.key)
            .field("chunks_left", &(self.todo.len() + self.in_flight.len()))
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<C: Store> DedupStream<C> {
    pub(crate) fn new(content: C, key: Key, chunks: Vec<ChunkRead>, window: usize) -> Self {
        DedupStream {
            content,
            key,
            todo: chunks.into_iter(),
            in_flight: FuturesOrdered::new(),
            window: window.max(1),
            done: false,
        }
    }

    fn refill(&mut self) {
        while self.in_flight.len() < self.window {
            let Some(chunk) = self.todo.next() else {
                return;
            };
            let fetch = fetch_chunk(self.content.clone(), self.key.clone(), chunk);
            self.in_flight.push_back(Box::pin(fetch));
        }
    }
}

/// Bytes `chunk.offset..+chunk.len` of one chunk.
async fn fetch_chunk<C: Store>(content: C, key: Key, chunk: ChunkRead) -> Result<Bytes> {
    let range = ByteRange::new(chunk.offset, Some(chunk.len));
    let bytes = match content.get_range_bytes(chunk.digest, range).await {
        Ok(bytes) => bytes,
        Err(e) if e.code() == Code::NotFound => {
            return Err(Error::new(
                Code::NotFound,
                format!("chunk {} of the object is missing", chunk.digest),
            )
            .with_key(key));
        }
        Err(e) => return Err(e.context(format_args!("reading chunk {}", chunk.digest))),
    };
    if bytes.len() as u64 != chunk.len {
        return Err(Error::new(
            Code::DataLoss,
            format!(
                "chunk {} returned {} bytes instead of {}",
                chunk.digest,
                bytes.len(),
                chunk.len
            ),
        )
        .with_key(key));
    }
    Ok(bytes)
}

impl<C: Store> Stream for DedupStream<C> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.refill();
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => {
                this.refill();
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.in_flight = FuturesOrdered::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}
