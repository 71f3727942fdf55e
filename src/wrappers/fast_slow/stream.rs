//! The streams of a fast/slow read that fills the fast tier, and of an upload fanned out to
//! both tiers.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_channel::mpsc;
use futures_core::Stream;
use tokio::task::JoinHandle;

use super::flight::{Arrival, FlightGuard};
use crate::error::{Code, Error, Result};

/// Chunks on their way to a tier's `put`; `None` marks the end of a complete object.
pub(crate) type ChunkSender = mpsc::Sender<Option<Bytes>>;

/// A bounded channel to a tier's `put`: `capacity` chunks in flight at most (plus one per
/// sender, futures-channel's rule).
pub(crate) fn chunk_channel(capacity: usize) -> (ChunkSender, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx, ended: false })
}

/// The body of a tier's `put`, fed through a channel.
///
/// It ends cleanly only after the explicit end marker. If the sender goes away without it
/// (the read was abandoned, the source failed, a check failed), it yields `Aborted` instead,
/// so the tier aborts its write and stores nothing.
#[derive(Debug)]
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Option<Bytes>>,
    ended: bool,
}

impl Stream for ChannelBody {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.rx).poll_next(cx)) {
            Some(Some(chunk)) => Poll::Ready(Some(Ok(chunk))),
            Some(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            None => {
                this.ended = true;
                Poll::Ready(Some(Err(Error::new(
                    Code::Aborted,
                    "the stream feeding this write stopped before the end of the object",
                ))))
            }
        }
    }
}

/// An upload body that tells the write's book-keeping when it has fully arrived (a clean
/// end), so `has` knows the write is committing and worth waiting for.
#[derive(Debug)]
pub(crate) struct ArrivalBody<B> {
    inner: B,
    arrival: Option<Arrival>,
}

impl<B> ArrivalBody<B> {
    pub(crate) fn new(inner: B, arrival: Option<Arrival>) -> Self {
        ArrivalBody { inner, arrival }
    }
}

impl<B> Stream for ArrivalBody<B>
where
    B: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        match &item {
            Some(Ok(_)) => {}
            // A failed body never completes: the write will fail, not commit.
            Some(Err(_)) => this.arrival = None,
            None => {
                if let Some(arrival) = this.arrival.take() {
                    arrival.arrived();
                }
            }
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// A spawned task that is aborted when its handle is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<Result<u64>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FillState {
    /// Reading the slow tier, sending every chunk to the fill and the wanted part to the
    /// caller.
    Reading,
    /// The slow read ended complete: send the end marker.
    Ending,
    /// Wait for the fast tier's `put` to finish.
    Waiting,
    Done,
}

/// The reader of a [`FastSlow`](super::FastSlow) read that missed the fast tier: streams the
/// slow tier's copy to the caller while filling the fast tier.
///
/// The whole object is read from the slow tier (a ranged read fills the whole object too);
/// every chunk goes into a bounded channel feeding the fast tier's `put`, which runs as its
/// own task, and the part inside the requested range goes to the caller. The slow read
/// waits when the fast tier falls behind (bounded memory).
///
/// - The fast entry appears only if the whole object arrived and its length is the expected
///   size: then the end marker is sent, and the caller's end of stream comes only after the
///   fast `put` finished, so a read that ended means the fill is done.
/// - A read the caller abandons (drops this stream), or a slow copy that fails or has the
///   wrong length, never sends the end marker: the fast `put` fails and stores nothing.
/// - If the fast tier refuses the object (too large, say), the caller's read goes on
///   unaffected; an error of the fill is never the caller's error.
/// - Concurrent readers of the same key wait for this one (single flight) and then read the
///   fast tier; the stream tells them how it ended.
pub struct FillStream<R> {
    inner: R,
    fill: Option<ChunkSender>,
    task: Option<AbortOnDrop>,
    flight: FlightGuard,
    want: Range<u64>,
    pos: u64,
    size: u64,
    state: FillState,
}

impl<R> FillStream<R> {
    pub(crate) fn new(
        inner: R,
        fill: ChunkSender,
        task: JoinHandle<Result<u64>>,
        flight: FlightGuard,
        want: Range<u64>,
        size: u64,
    ) -> Self {
        FillStream {
            inner,
            fill: Some(fill),
            task: Some(AbortOnDrop(task)),
            flight,
            want,
            pos: 0,
            size,
            state: FillState::Reading,
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Bytes>>> {
        self.fill = None;
        self.task = None;
        self.flight.abandon();
        self.state = FillState::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl<R> Stream for FillStream<R>
where
    R: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                FillState::Reading => {
                    if let Some(fill) = &mut this.fill
                        && ready!(fill.poll_ready(cx)).is_err()
                    {
                        // The fast put ended early (refused the object): read on for the
                        // caller only.
                        this.fill = None;
                    }
                    if this.fill.is_none() && this.pos >= this.want.end {
                        // Nothing left for the caller and nothing to fill.
                        this.task = None;
                        this.flight.finish(false);
                        this.state = FillState::Done;
                        return Poll::Ready(None);
                    }
                    match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                        Some(Ok(chunk)) => {
                            let start = this.pos;
                            let end = start + chunk.len() as u64;
                            if end > this.size {
                                return this.fail(Error::new(
                                    Code::DataLoss,
                                    format!(
                                        "the slow store's copy is longer than its {} bytes",
                                        this.size
                                    ),
                                ));
                            }
                            this.pos = end;
                            if let Some(fill) = &mut this.fill
                                && fill.start_send(Some(chunk.clone())).is_err()
                            {
                                this.fill = None;
                            }
                            let lo = this.want.start.max(start);
                            let hi = this.want.end.min(end);
                            if lo < hi {
                                let part =
                                    chunk.slice((lo - start) as usize..(hi - start) as usize);
                                return Poll::Ready(Some(Ok(part)));
                            }
                        }
                        Some(Err(e)) => return this.fail(e),
                        None if this.pos != this.size => {
                            let error = Error::new(
                                Code::DataLoss,
                                format!(
                                    "the slow store's copy ended after {} of its {} bytes",
                                    this.pos, this.size
                                ),
                            );
                            return this.fail(error);
                        }
                        None => this.state = FillState::Ending,
                    }
                }
                FillState::Ending => {
                    if let Some(fill) = &mut this.fill
                        && ready!(fill.poll_ready(cx)).is_ok()
                    {
                        // A refused send means the fill already failed; nothing to do.
                        let _ = fill.start_send(None);
                    }
                    this.fill = None;
                    this.state = FillState::Waiting;
                }
                FillState::Waiting => {
                    let filled = match &mut this.task {
                        Some(task) => matches!(ready!(Pin::new(&mut task.0).poll(cx)), Ok(Ok(_))),
                        None => false,
                    };
                    this.task = None;
                    this.flight.finish(filled);
                    this.state = FillState::Done;
                    return Poll::Ready(None);
                }
                FillState::Done => return Poll::Ready(None),
            }
        }
    }
}

use std::future::Future as _;

impl<R> fmt::Debug for FillStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillStream")
            .field("want", &self.want)
            .field("pos", &self.pos)
            .field("size", &self.size)
            .field("state", &self.state)
            .field("filling", &self.fill.is_some())
            .finish()
    }
}
