//! The two body adapters between hyper and casstack, both streaming chunk by chunk.
//!
//! - [`IncomingStream`]: a request body (hyper's `Incoming`) as a casstack `Body`, for `put`.
//!   A connection that closes before the declared length arrived is an `Aborted` error, so
//!   the store's atomic `put` stores nothing.
//! - [`ReaderBody`]: a store's reader as a hyper response body of a known length. A reader
//!   that yields more or fewer bytes than announced ends with an error, which makes hyper
//!   close the connection: the client sees a short response, never a wrong one.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use casstack::{Code, Error};
use futures_core::Stream;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

/// A request body as a stream of `Bytes` chunks (trailers are skipped).
#[derive(Debug)]
pub struct IncomingStream {
    body: Incoming,
}

impl IncomingStream {
    /// Adapts `body`.
    pub fn new(body: Incoming) -> Self {
        IncomingStream { body }
    }
}

impl Stream for IncomingStream {
    type Item = casstack::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    return Poll::Ready(Some(Err(Error::new(
                        Code::Aborted,
                        format!("the upload body was cut short: {e}"),
                    )
                    .with_source(e))));
                }
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Poll::Ready(Some(Ok(data)));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}

/// A store's reader as a response body of exactly `len` bytes.
#[derive(Debug)]
pub struct ReaderBody<R> {
    reader: R,
    remaining: u64,
}

impl<R> ReaderBody<R> {
    /// Streams `reader`, which must yield exactly `len` bytes.
    pub fn new(reader: R, len: u64) -> Self {
        ReaderBody {
            reader,
            remaining: len,
        }
    }
}

impl<R> HttpBody for ReaderBody<R>
where
    R: Stream<Item = casstack::Result<Bytes>> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.reader).poll_next(cx)) {
            Some(Ok(chunk)) => {
                let len = chunk.len() as u64;
                if len > this.remaining {
                    return Poll::Ready(Some(Err(Error::new(
                        Code::DataLoss,
                        "the stored object is longer than its announced length",
                    ))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None if this.remaining == 0 => Poll::Ready(None),
            None => Poll::Ready(Some(Err(Error::new(
                Code::DataLoss,
                format!(
                    "the stored object ended {} bytes short of its announced length",
                    this.remaining
                ),
            )))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Every response body the server sends: an object, or a short text (errors, empty hits).
#[derive(Debug)]
pub enum ResponseBody<R> {
    /// A hit, streamed from the store.
    Object(ReaderBody<R>),
    /// A fixed text (or nothing).
    Text(Option<Bytes>),
}

impl<R> ResponseBody<R> {
    /// No body at all (HEAD, empty objects).
    pub fn empty() -> Self {
        ResponseBody::Text(None)
    }

    /// A fixed text.
    pub fn text(text: impl Into<Bytes>) -> Self {
        let text = text.into();
        ResponseBody::Text((!text.is_empty()).then_some(text))
    }
}

impl<R> HttpBody for ResponseBody<R>
where
    R: Stream<Item = casstack::Result<Bytes>> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            ResponseBody::Object(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Object(body) => body.remaining == 0,
            ResponseBody::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Object(body) => body.size_hint(),
            ResponseBody::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
