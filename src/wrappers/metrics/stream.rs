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
use metrics::Counter;
use pin_project::pin_project;

use super::Handles;
use crate::error::{Code, Error, Result};

/// The span an operation runs in (feature `tracing`): boxed, and only when enabled, so a
/// disabled span costs one word in the futures and readers that carry it (every `Metrics`
/// layer of a stack carries one, and futures are moved layer by layer).
#[cfg(feature = "tracing")]
#[derive(Debug)]
pub(crate) struct OpSpan(Option<Box<tracing::Span>>);

#[cfg(feature = "tracing")]
impl OpSpan {
    pub(crate) fn new(span: tracing::Span) -> Self {
        OpSpan((!span.is_disabled()).then(|| Box::new(span)))
    }

    #[inline]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_deref().map(tracing::Span::enter)
    }

    /// Records how the operation ended.
    #[inline]
    pub(crate) fn record_outcome(&self, outcome: &'static str) {
        if let Some(span) = &self.0 {
            span.record("outcome", outcome);
        }
    }

    /// Moves the span out (to the reader), leaving none.
    #[inline]
    pub(crate) fn take(&mut self) -> OpSpan {
        OpSpan(self.0.take())
    }
}

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
    pub(crate) fn record_outcome(&self, _: &'static str) {}

    #[inline(always)]
    pub(crate) fn take(&mut self) -> OpSpan {
        OpSpan
    }
}

/// The store name, if the handles are there (a plain function: no closure in generic code).
fn name_of(handles: &Option<Arc<Handles>>) -> Option<&str> {
    handles.as_deref().map(Handles::name)
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
    /// `None` when no recorder was installed: nothing to count.
    handles: Option<Arc<Handles>>,
    span: OpSpan,
}

impl<R> MetricsStream<R> {
    pub(crate) fn new(inner: R, handles: Option<Arc<Handles>>, span: OpSpan) -> Self {
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
        if let Some(handles) = this.handles {
            match &item {
                Some(Ok(chunk)) => handles.read_bytes.increment(chunk.len() as u64),
                Some(Err(_)) => handles.read_errors.increment(1),
                None => {}
            }
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
            .field("store", &name_of(&self.handles))
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
    /// `None` when no recorder was installed: nothing to count.
    handles: Option<Arc<Handles>>,
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(inner: B, handles: Option<Arc<Handles>>) -> Self {
        MetricsBody { inner, handles }
    }
}

impl<B: Stream<Item = Result<Bytes>>> Stream for MetricsBody<B> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        if let (Some(Ok(chunk)), Some(handles)) = (&item, this.handles) {
            handles.written_bytes.increment(chunk.len() as u64);
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
            .field("store", &name_of(&self.handles))
            .finish_non_exhaustive()
    }
}

/// The inner store's `get`: times it, counts hit / miss / error, wraps the reader.
#[pin_project]
pub(crate) struct MetricsGet<'a, F> {
    #[pin]
    inner: F,
    /// The handles and the start time; `None` (and no clock read) without a recorder.
    meter: Option<(&'a Arc<Handles>, Instant)>,
    span: OpSpan,
}

impl<'a, F> MetricsGet<'a, F> {
    pub(crate) fn new(inner: F, handles: Option<&'a Arc<Handles>>, span: OpSpan) -> Self {
        MetricsGet {
            inner,
            meter: start(handles),
            span,
        }
    }
}

/// The handles and the time now, if there is anything to record.
fn start<H>(handles: Option<H>) -> Option<(H, Instant)> {
    // `H` is a reference to the handles, never a store type: the closure stays small.
    handles.map(|handles| (handles, Instant::now()))
}

impl<F, R> Future for MetricsGet<'_, F>
where
    F: Future<Output = Result<R>>,
{
    type Output = Result<MetricsStream<R>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let outcome = GetOutcome::of(result.as_ref().err());
        let mut handles = None;
        if let Some((h, start)) = *this.meter {
            h.get_seconds.record(start.elapsed());
            outcome.counter(h).increment(1);
            handles = Some(h.clone());
        }
        this.span.record_outcome(outcome.name());
        Poll::Ready(match result {
            Ok(reader) => Ok(MetricsStream::new(reader, handles, this.span.take())),
            Err(e) => Err(e),
        })
    }
}

/// How a `get` ended.
#[derive(Clone, Copy, Debug)]
enum GetOutcome {
    Hit,
    Miss,
    Error,
}

impl GetOutcome {
    fn of(error: Option<&Error>) -> Self {
        match error {
            None => GetOutcome::Hit,
            Some(e) if e.code() == Code::NotFound => GetOutcome::Miss,
            Some(_) => GetOutcome::Error,
        }
    }

    fn name(self) -> &'static str {
        match self {
            GetOutcome::Hit => "hit",
            GetOutcome::Miss => "miss",
            GetOutcome::Error => "error",
        }
    }

    fn counter(self, handles: &Handles) -> &Counter {
        match self {
            GetOutcome::Hit => &handles.get_hit,
            GetOutcome::Miss => &handles.get_miss,
            GetOutcome::Error => &handles.get_error,
        }
    }
}

/// The inner store's `put`: times it and counts ok / error.
#[pin_project]
pub(crate) struct MetricsPut<'a, F> {
    #[pin]
    inner: F,
    /// The handles and the start time; `None` (and no clock read) without a recorder.
    meter: Option<(&'a Handles, Instant)>,
    span: OpSpan,
}

impl<'a, F> MetricsPut<'a, F> {
    pub(crate) fn new(inner: F, handles: Option<&'a Handles>, span: OpSpan) -> Self {
        MetricsPut {
            inner,
            meter: start(handles),
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
        if let Some((handles, start)) = *this.meter {
            handles.put_seconds.record(start.elapsed());
            match &result {
                Ok(_) => handles.put_ok.increment(1),
                Err(_) => handles.put_error.increment(1),
            }
        }
        this.span
            .record_outcome(if result.is_ok() { "ok" } else { "error" });
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
        this.span.record_outcome(outcome);
        Poll::Ready(result)
    }
}
