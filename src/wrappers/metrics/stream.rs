//! The named adapters of [`Metrics`](super::Metrics): the futures of `get` and `put`, the
//! reader ([`MetricsStream`]) and the upload body ([`MetricsBody`]) that count bytes as they
//! pass, and the span each operation runs in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures_core::Stream;
use pin_project::pin_project;

use super::Handles;
use crate::error::{Code, Result};

/// The span an operation runs in (feature `tracing`), or nothing.
#[cfg(feature = "tracing")]
pub(crate) type OpSpan = tracing::Span;

/// The span an operation runs in: this build has no `tracing`, so nothing.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct OpSpan;

/// What entering an [`OpSpan`] returns when there is no `tracing`: nothing to leave.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct NotEntered;

#[cfg(not(feature = "tracing"))]
impl OpSpan {
    #[inline(always)]
    pub(crate) fn enter(&self) -> NotEntered {
        NotEntered
    }

    #[inline(always)]
    pub(crate) fn record(&self, _field: &str, _value: &str) -> &Self {
        self
    }
}

/// Takes the span out of `span`, leaving an empty one (moves it to the reader, no clone).
#[cfg(feature = "tracing")]
fn take_span(span: &mut OpSpan) -> OpSpan {
    std::mem::replace(span, tracing::Span::none())
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
fn take_span(_: &mut OpSpan) -> OpSpan {
    OpSpan
}

/// A reader that counts the bytes (and a failure) passing through it.
///
/// It is the reader of every [`Metrics`](super::Metrics) layer; with feature `tracing` the
/// operation's span is entered while it is polled, so the inner store's reads show up in it.
///
/// ```
/// use casstack::{Memory, Metrics, MetricsConfig, Store, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Metrics::new(Memory::default(), MetricsConfig { name: "cas".into() });
/// store.put_bytes("k", "value".into()).await?;
/// let reader: casstack::wrappers::metrics::MetricsStream<casstack::OneChunk> =
///     store.get("k".into(), casstack::ByteRange::FULL).await?;
/// # let _ = reader;
/// # Ok(()) }
/// ```
#[pin_project]
pub struct MetricsStream<R> {
    #[pin]
    inner: R,
    handles: Arc<Handles>,
    span: OpSpan,
}

impl<R> MetricsStream<R> {
    pub(crate) fn new(inner: R, handles: Arc<Handles>, span: OpSpan) -> Self {
        MetricsStream {
            inner,
            handles,
            span,
        }
    }
}

impl<R: Stream<Item = Result<Bytes>>> Stream for MetricsStream<R> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let item = ready!(this.inner.poll_next(cx));
        match &item {
            Some(Ok(chunk)) => this.handles.read_bytes.increment(chunk.len() as u64),
            Some(Err(_)) => this.handles.read_errors.increment(1),
            None => {}
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<R> fmt::Debug for MetricsStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsStream")
            .field("store", &self.handles.name)
            .finish_non_exhaustive()
    }
}

/// An upload body that counts the bytes the inner store reads from it.
///
/// Bytes are counted as the inner store takes them, so an upload that fails half-way counts
/// the half it read.
///
/// ```
/// use casstack::{Memory, Metrics, MetricsConfig, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// // Every `put` through a `Metrics` layer passes its body through a `MetricsBody`.
/// let store = Metrics::new(Memory::default(), MetricsConfig { name: "cas".into() });
/// assert_eq!(store.put_bytes("k", "value".into()).await?, 5);
/// # Ok(()) }
/// ```
#[pin_project]
pub struct MetricsBody<B> {
    #[pin]
    inner: B,
    handles: Arc<Handles>,
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(inner: B, handles: Arc<Handles>) -> Self {
        MetricsBody { inner, handles }
    }
}

impl<B: Stream<Item = Result<Bytes>>> Stream for MetricsBody<B> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            this.handles.written_bytes.increment(chunk.len() as u64);
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody")
            .field("store", &self.handles.name)
            .finish_non_exhaustive()
    }
}

/// The inner store's `get`: times it, counts hit / miss / error, wraps the reader.
#[pin_project]
pub(crate) struct MetricsGet<'a, F> {
    #[pin]
    inner: F,
    handles: &'a Arc<Handles>,
    start: Instant,
    span: OpSpan,
}

impl<'a, F> MetricsGet<'a, F> {
    pub(crate) fn new(inner: F, handles: &'a Arc<Handles>, span: OpSpan) -> Self {
        MetricsGet {
            inner,
            handles,
            start: Instant::now(),
            span,
        }
    }
}

impl<F, R> Future for MetricsGet<'_, F>
where
    F: Future<Output = Result<R>>,
{
    type Output = Result<MetricsStream<R>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        let handles = *this.handles;
        handles.get_seconds.record(this.start.elapsed());
        let outcome = match &result {
            Ok(_) => {
                handles.get_hit.increment(1);
                "hit"
            }
            Err(e) if e.code() == Code::NotFound => {
                handles.get_miss.increment(1);
                "miss"
            }
            Err(_) => {
                handles.get_error.increment(1);
                "error"
            }
        };
        this.span.record("outcome", outcome);
        drop(entered);
        Poll::Ready(match result {
            Ok(reader) => Ok(MetricsStream::new(
                reader,
                handles.clone(),
                take_span(this.span),
            )),
            Err(e) => Err(e),
        })
    }
}

/// The inner store's `put`: times it and counts ok / error.
#[pin_project]
pub(crate) struct MetricsPut<'a, F> {
    #[pin]
    inner: F,
    handles: &'a Handles,
    start: Instant,
    span: OpSpan,
}

impl<'a, F> MetricsPut<'a, F> {
    pub(crate) fn new(inner: F, handles: &'a Handles, span: OpSpan) -> Self {
        MetricsPut {
            inner,
            handles,
            start: Instant::now(),
            span,
        }
    }
}

impl<F> Future for MetricsPut<'_, F>
where
    F: Future<Output = Result<u64>>,
{
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        this.handles.put_seconds.record(this.start.elapsed());
        let outcome = match &result {
            Ok(_) => {
                this.handles.put_ok.increment(1);
                "ok"
            }
            Err(_) => {
                this.handles.put_error.increment(1);
                "error"
            }
        };
        this.span.record("outcome", outcome);
        Poll::Ready(result)
    }
}

/// A `has_many` future run inside its span (entered on every poll), which records whether it
/// succeeded.
#[pin_project]
pub(crate) struct TracedHas<F> {
    #[pin]
    inner: F,
    span: OpSpan,
}

impl<F> TracedHas<F> {
    pub(crate) fn new(inner: F, span: OpSpan) -> Self {
        TracedHas { inner, span }
    }
}

impl<F: Future<Output = Result<()>>> Future for TracedHas<F> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        this.span.record("outcome", outcome);
        Poll::Ready(result)
    }
}
