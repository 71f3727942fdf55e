//! `Faulty<S>`: a wrapper that fails, stalls or cuts streams on chosen operations, and counts
//! calls, for testing how a composition behaves when one of its parts misbehaves.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::body::Body;
use crate::error::{Code, Error, Result};
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// Which operation a fault applies to.
///
/// ```
/// let op = casstack::testing::Operation::Get;
/// # let _ = op;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `has_many`.
    Has,
    /// `get`.
    Get,
    /// `put`.
    Put,
}

/// What goes wrong.
///
/// ```
/// let fault = casstack::testing::Fault::Fail(casstack::Code::Unavailable);
/// # let _ = fault;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails at once with this code (a `put` reads none of its body).
    Fail(Code),
    /// The stream breaks after this many bytes: a `get` reader ends with an `Unavailable`
    /// error; a `put` body does, so the inner store sees an upload die midway.
    CutAfter(u64),
    /// The call never answers (until its future is dropped).
    Stall,
}

/// A store that misbehaves on demand: it fails, stalls or cuts the streams of chosen calls
/// and counts every call.
///
/// ```
/// use casstack::testing::{Fault, Faulty, Operation};
/// use casstack::{Code, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = Faulty::new(Memory::default());
/// store.inject(Operation::Put, Fault::Fail(Code::Unavailable), 1);
/// assert_eq!(store.put_bytes("k", "v".into()).await.unwrap_err().code(), Code::Unavailable);
/// store.put_bytes("k", "v".into()).await.unwrap(); // the fault was used up
/// assert_eq!(store.calls(Operation::Put), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct Faulty<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    planned: Mutex<VecDeque<(Operation, Fault)>>,
    calls: [AtomicU64; 3],
}

impl<S> Faulty<S> {
    /// Wraps `inner`, with no fault planned.
    ///
    /// ```
    /// let store = casstack::testing::Faulty::new(casstack::Noop);
    /// # let _ = store;
    /// ```
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            shared: Arc::new(Shared::default()),
        }
    }

    /// The next `times` calls of `operation` get `fault` (faults planned for one operation
    /// apply in the order they were planned).
    ///
    /// ```
    /// use casstack::testing::{Fault, Faulty, Operation};
    /// let store = Faulty::new(casstack::Noop);
    /// store.inject(Operation::Get, Fault::Stall, 2);
    /// ```
    pub fn inject(&self, operation: Operation, fault: Fault, times: usize) {
        let mut planned = self.planned();
        planned.extend(std::iter::repeat_n((operation, fault), times));
    }

    /// Drops every planned fault.
    ///
    /// ```
    /// let store = casstack::testing::Faulty::new(casstack::Noop);
    /// store.clear();
    /// ```
    pub fn clear(&self) {
        self.planned().clear();
    }

    /// How many calls of `operation` this store (and its clones) received.
    ///
    /// ```
    /// let store = casstack::testing::Faulty::new(casstack::Noop);
    /// assert_eq!(store.calls(casstack::testing::Operation::Has), 0);
    /// ```
    pub fn calls(&self, operation: Operation) -> u64 {
        self.shared.calls[operation as usize].load(Ordering::SeqCst)
    }

    /// The wrapped store.
    ///
    /// ```
    /// let store = casstack::testing::Faulty::new(casstack::Noop);
    /// let _inner: &casstack::Noop = store.get_ref();
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn planned(&self) -> std::sync::MutexGuard<'_, VecDeque<(Operation, Fault)>> {
        self.shared
            .planned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call and takes the next fault planned for `operation`, if any.
    fn next_fault(&self, operation: Operation) -> Option<Fault> {
        self.shared.calls[operation as usize].fetch_add(1, Ordering::SeqCst);
        let mut planned = self.planned();
        let index = planned.iter().position(|(op, _)| *op == operation)?;
        planned.remove(index).map(|(_, fault)| fault)
    }
}

impl<S> fmt::Debug for Faulty<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("planned", &*self.planned())
            .finish_non_exhaustive()
    }
}

fn injected(code: Code, what: &str) -> Error {
    Error::new(code, format!("injected fault: {what}"))
}

impl<S: Store> Store for Faulty<S> {
    type Reader = CutStream<S::Reader>;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        match self.next_fault(Operation::Has) {
            Some(Fault::Fail(code)) => Err(injected(code, "has_many failed")),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::CutAfter(_)) | None => self.inner.has_many(keys, out).await,
        }
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<Self::Reader> {
        match self.next_fault(Operation::Get) {
            Some(Fault::Fail(code)) => Err(injected(code, "get failed").with_key(key)),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::CutAfter(n)) => {
                Ok(CutStream::new(self.inner.get(key, range).await?, Some(n)))
            }
            None => Ok(CutStream::new(self.inner.get(key, range).await?, None)),
        }
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        match self.next_fault(Operation::Put) {
            Some(Fault::Fail(code)) => Err(injected(code, "put failed").with_key(key)),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::CutAfter(n)) => {
                self.inner
                    .put(key, size, CutStream::new(body, Some(n)))
                    .await
            }
            None => self.inner.put(key, size, body).await,
        }
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }
}

/// A stream that breaks with an `Unavailable` error after a number of bytes (or never).
///
/// ```
/// use futures_util::StreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut s = casstack::testing::CutStream::new(casstack::OneChunk::new("abcdef".into()), Some(2));
/// assert_eq!(s.next().await.unwrap().unwrap(), "ab");
/// assert!(s.next().await.unwrap().is_err());
/// # }
/// ```
#[pin_project::pin_project]
#[derive(Debug)]
pub struct CutStream<R> {
    #[pin]
    inner: R,
    remaining: Option<u64>,
    broken: bool,
}

impl<R> CutStream<R> {
    /// Passes `inner` through, breaking it after `cut_after` bytes (`None`: never).
    pub fn new(inner: R, cut_after: Option<u64>) -> Self {
        CutStream {
            inner,
            remaining: cut_after,
            broken: false,
        }
    }
}

impl<R: Stream<Item = Result<Bytes>>> Stream for CutStream<R> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.broken {
            return Poll::Ready(None);
        }
        let Some(remaining) = *this.remaining else {
            return this.inner.poll_next(cx);
        };
        if remaining == 0 {
            *this.broken = true;
            return Poll::Ready(Some(Err(injected(Code::Unavailable, "stream cut"))));
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(mut chunk))) => {
                if chunk.len() as u64 > remaining {
                    chunk.truncate(remaining as usize);
                }
                *this.remaining = Some(remaining - chunk.len() as u64);
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Memory, StoreExt};

    #[tokio::test]
    async fn a_cut_upload_stores_nothing_in_memory() {
        let store = Faulty::new(Memory::default());
        store.inject(Operation::Put, Fault::CutAfter(3), 1);
        let err = store.put_bytes("k", "abcdef".into()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(store.has("k").await.unwrap(), None);
        assert!(store.get_ref().is_empty());
    }

    #[tokio::test]
    async fn a_cut_read_ends_with_an_error_not_a_short_object() {
        let store = Faulty::new(Memory::default());
        store.put_bytes("k", "abcdef".into()).await.unwrap();
        store.inject(Operation::Get, Fault::CutAfter(4), 1);
        assert_eq!(
            store.get_bytes("k").await.unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(store.get_bytes("k").await.unwrap(), "abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_never_answers() {
        let store = Faulty::new(Memory::default());
        store.inject(Operation::Has, Fault::Stall, 1);
        let stalled = tokio::time::timeout(std::time::Duration::from_secs(5), store.has("k"));
        assert!(stalled.await.is_err());
        assert_eq!(store.has("k").await.unwrap(), None);
        assert_eq!(store.calls(Operation::Has), 2);
    }
}
