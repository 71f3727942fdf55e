//! Test stores for the wrappers' unit tests: a counting, optionally gated and re-chunking
//! wrapper around any store.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::error::Result;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// A blob of `len` bytes derived from `seed`, and its digest.
pub(crate) fn blob(len: usize, seed: u8) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (Digest::of(&data), Bytes::from(data))
}

#[derive(Debug, Default)]
struct Counts {
    has: AtomicUsize,
    get: AtomicUsize,
    put: AtomicUsize,
}

/// Counts calls into `S`; can hold `get`s at a gate and cut readers into small chunks.
#[derive(Clone, Debug)]
pub(crate) struct Counting<S> {
    inner: S,
    counts: Arc<Counts>,
    gate: Option<Arc<Semaphore>>,
    chunk: usize,
}

impl<S> Counting<S> {
    pub(crate) fn new(inner: S) -> Self {
        Counting {
            inner,
            counts: Arc::default(),
            gate: None,
            chunk: usize::MAX,
        }
    }

    /// Readers yield chunks of at most `chunk` bytes.
    pub(crate) fn chunked(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Every `get` waits for a permit of `gate` before it asks the inner store.
    pub(crate) fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    pub(crate) fn has_calls(&self) -> usize {
        self.counts.has.load(SeqCst)
    }

    pub(crate) fn get_calls(&self) -> usize {
        self.counts.get.load(SeqCst)
    }

    pub(crate) fn put_calls(&self) -> usize {
        self.counts.put.load(SeqCst)
    }
}

impl<S: Store> Store for Counting<S> {
    type Reader = Rechunk<S::Reader>;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        self.counts.has.fetch_add(1, SeqCst);
        self.inner.has_many(keys, out).await
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<Self::Reader> {
        self.counts.get.fetch_add(1, SeqCst);
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.expect("gate open");
        }
        let inner = self.inner.get(key, range).await?;
        Ok(Rechunk {
            inner,
            pending: Bytes::new(),
            chunk: self.chunk,
        })
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        self.counts.put.fetch_add(1, SeqCst);
        self.inner.put(key, size, body).await
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }
}

/// Re-cuts a reader's chunks to at most `chunk` bytes.
#[derive(Debug)]
pub(crate) struct Rechunk<R> {
    inner: R,
    pending: Bytes,
    chunk: usize,
}

impl<R: Stream<Item = Result<Bytes>> + Unpin> Stream for Rechunk<R> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => this.pending = chunk,
                other => return Poll::Ready(other),
            }
        }
        let n = this.chunk.min(this.pending.len());
        Poll::Ready(Some(Ok(this.pending.split_to(n))))
    }
}
