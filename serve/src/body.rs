//! The two body adapters between hyper and casstack, both streaming chunk by chunk.
//!
//! - [`IncomingStream`]: a request body (hyper's `Incoming`) as a casstack `Body`, for `put`.
//!   A connection that closes before the declared length arrived, or a client that sends
//!   nothing for the idle timeout (`--upload-idle-timeout`), is an `Aborted` error, so the
//!   store's atomic `put` stores nothing.
//! - [`ReaderBody`]: a store's reader as a hyper response body of a known length. A reader
//!   that yields more or fewer bytes than announced, or ends with an error (the server's
//!   `Verify` finding a corrupt CAS object at the end of a read), ends the body with an
//!   error, which makes hyper close the connection. The chunk that completes the length is
//!   held back until the reader's end, so the client sees a short response, never a wrong
//!   one.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use casstack::{Code, Error, Key};
use futures_core::Stream;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// A request body as a stream of `Bytes` chunks (trailers are skipped), which fails when the
/// client sends nothing for `idle`.
///
/// The idle clock runs only while the stream waits for the client: it starts when the store
/// asks for the next chunk and stops when a chunk arrives, so a store that takes its time
/// writing a chunk never makes an upload look idle. An idle upload ends with an `Aborted`
/// error (the store's atomic `put` stores nothing) and raises its [`IdleFlag`], so the
/// server answers 408 rather than blaming the data.
#[derive(Debug)]
pub struct IncomingStream<B = Incoming> {
    body: B,
    idle: Duration,
    /// The deadline of the current wait for the client (reset when a wait starts).
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    timed_out: IdleFlag,
}

/// Raised when an [`IncomingStream`] gave up on an idle client.
#[derive(Clone, Debug, Default)]
pub struct IdleFlag(Arc<AtomicBool>);

impl IdleFlag {
    /// Whether the upload was abandoned for idleness.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<B> IncomingStream<B> {
    /// Adapts `body`, giving up once no byte arrived for `idle` while the store waited for
    /// one. The flag tells afterwards whether that happened.
    pub fn new(body: B, idle: Duration) -> (Self, IdleFlag) {
        let flag = IdleFlag::default();
        let stream = IncomingStream {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            timed_out: flag.clone(),
        };
        (stream, flag)
    }
}

impl<B> Stream for IncomingStream<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Item = casstack::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.waiting {
            // A new wait for the client starts now (not when the previous chunk arrived).
            let deadline = Instant::now() + this.idle;
            this.timer.as_mut().reset(deadline);
            this.waiting = true;
        }
        loop {
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    this.timed_out.0.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Error::new(
                        Code::Aborted,
                        format!(
                            "the upload was abandoned: no body bytes for {:?}",
                            this.idle
                        ),
                    ))));
                }
                Poll::Ready(None) => {
                    this.waiting = false;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    this.waiting = false;
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
                this.waiting = false;
                return Poll::Ready(Some(Ok(data)));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}

/// A store's reader as a response body of exactly `len` bytes.
///
/// The chunk that completes the length is held back until the reader has ended: a reader
/// that ends with an error instead (a `Verify` read finding a corrupt object, a failed disk
/// read) cuts the response short by that chunk, so the client never receives the announced
/// length of wrong bytes. A failure is logged at warn level with the object's key.
#[derive(Debug)]
pub struct ReaderBody<R> {
    reader: R,
    key: Key,
    remaining: u64,
    /// The last chunk, until the reader's end is seen.
    held: Option<Bytes>,
    done: bool,
}

impl<R> ReaderBody<R> {
    /// Streams `reader`, the object `key`, which must yield exactly `len` bytes.
    pub fn new(reader: R, key: Key, len: u64) -> Self {
        ReaderBody {
            reader,
            key,
            remaining: len,
            held: None,
            done: false,
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        let held = self.held.take().map_or(0, |c| c.len() as u64);
        tracing::warn!(
            "a response of {} was cut short ({} bytes unsent): {e}",
            self.key,
            self.remaining + held
        );
        Poll::Ready(Some(Err(e)))
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
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.reader).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let len = chunk.len() as u64;
                    if this.held.is_some() || len > this.remaining {
                        let e = Error::new(
                            Code::DataLoss,
                            "the stored object is longer than its announced length",
                        )
                        .with_key(this.key.clone());
                        return this.fail(e);
                    }
                    this.remaining -= len;
                    if this.remaining > 0 {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    // Complete: send it once the reader confirms its end.
                    this.held = Some(chunk);
                }
                Some(Err(e)) => return this.fail(e),
                None => match this.held.take() {
                    Some(chunk) => {
                        this.done = true;
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    None if this.remaining == 0 => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    None => {
                        let e = Error::new(
                            Code::DataLoss,
                            format!(
                                "the stored object ended {} bytes short of its announced length",
                                this.remaining
                            ),
                        )
                        .with_key(this.key.clone());
                        return this.fail(e);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |c| c.len() as u64);
        SizeHint::with_exact(self.remaining + held)
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
            ResponseBody::Object(body) => body.is_end_stream(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A request body fed by the test, chunk by chunk.
    struct Fed(mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    const IDLE: Duration = Duration::from_secs(60);

    /// A reader that yields what the test scripted.
    struct Script(std::collections::VecDeque<casstack::Result<Bytes>>);

    impl Stream for Script {
        type Item = casstack::Result<Bytes>;

        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    /// What a response body of `len` bytes over `script` sends: its chunks, and whether it
    /// ended with an error.
    async fn send(len: u64, script: Vec<casstack::Result<Bytes>>) -> (Vec<Bytes>, bool) {
        let mut body = ReaderBody::new(Script(script.into()), Key::from("k"), len);
        let mut sent = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame {
                Ok(frame) => sent.push(frame.into_data().unwrap()),
                Err(_) => {
                    assert!(body.is_end_stream());
                    return (sent, true);
                }
            }
        }
        assert!(body.is_end_stream());
        (sent, false)
    }

    #[tokio::test]
    async fn a_reader_failing_at_its_end_never_sends_the_whole_length() {
        let (a, b) = (Bytes::from_static(b"ab"), Bytes::from_static(b"cd"));
        let corrupt = Error::new(Code::DataLoss, "sha256 mismatch");
        let (sent, failed) = send(4, vec![Ok(a.clone()), Ok(b.clone()), Err(corrupt)]).await;
        assert_eq!((sent, failed), (vec![a.clone()], true));
        // The same reader ending well sends everything.
        let (sent, failed) = send(4, vec![Ok(a.clone()), Ok(b.clone())]).await;
        assert_eq!((sent, failed), (vec![a.clone(), b.clone()], false));
        // Too long, too short.
        let (sent, failed) = send(4, vec![Ok(a.clone()), Ok(b.clone()), Ok(a.clone())]).await;
        assert_eq!((sent, failed), (vec![a.clone()], true));
        let (sent, failed) = send(6, vec![Ok(a.clone()), Ok(b.clone())]).await;
        assert_eq!((sent, failed), (vec![a.clone(), b], true));
        let (sent, failed) = send(1, vec![Ok(a)]).await;
        assert_eq!((sent, failed), (vec![], true));
    }

    fn fed() -> (mpsc::Sender<Bytes>, IncomingStream<Fed>, IdleFlag) {
        let (tx, rx) = mpsc::channel(16);
        let (stream, flag) = IncomingStream::new(Fed(rx), IDLE);
        (tx, stream, flag)
    }

    async fn next(s: &mut IncomingStream<Fed>) -> Option<casstack::Result<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_is_abandoned_after_the_idle_timeout() {
        let (tx, mut s, flag) = fed();
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap().unwrap(), "first");
        let start = Instant::now();
        let e = next(&mut s).await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), IDLE);
        assert_eq!(e.code(), Code::Aborted);
        assert!(e.message().contains("no body bytes for 60s"), "{e}");
        assert!(flag.is_raised());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_client_is_not() {
        let (tx, mut s, flag) = fed();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(IDLE * 9 / 10).await;
                tx.send(Bytes::from_static(b"tick")).await.unwrap();
            }
        });
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(next(&mut s).await.unwrap().unwrap(), "tick");
        }
        assert!(next(&mut s).await.is_none());
        assert!(start.elapsed() > IDLE * 4);
        assert!(!flag.is_raised());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_does_not_make_the_client_look_idle() {
        let (tx, mut s, flag) = fed();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap().unwrap(), "a");
        // The client sends "b" 3.5 idle periods later; the store takes 3 of them to write
        // "a" before it asks for more, so it waits half a period for "b".
        tokio::spawn(async move {
            tokio::time::sleep(IDLE * 7 / 2).await;
            tx.send(Bytes::from_static(b"b")).await.unwrap();
        });
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(next(&mut s).await.unwrap().unwrap(), "b");
        assert!(next(&mut s).await.is_none());
        assert!(!flag.is_raised());
    }
}
