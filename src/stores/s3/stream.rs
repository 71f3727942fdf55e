//! [`S3Stream`]: the reader of an `S3` get, which resumes a broken download where it stopped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{Code, Error, Result};
use crate::key::Key;

use super::client::{BodyStream, Client, Got, map_body_error, poll_body};
use super::retry::{backoff, gave_up, is_transient};
use crate::stores::redis::RetryConfig;

type Connecting = Pin<Box<dyn Future<Output = Result<Got>> + Send>>;

/// The reader of an `S3` store: streams one `GetObject` response, and when the connection
/// breaks, stalls past the request timeout or ends early, asks for the rest with a new ranged
/// `GetObject` pinned to the same object version (`If-Match` on its ETag), after the configured
/// backoff. Each break may be retried `max_retries` times; any progress resets the count.
///
/// It never yields bytes from two versions of an object: if the object was replaced while it
/// was read, the reader ends with `Aborted`. More bytes than requested end it with `DataLoss`.
///
/// ```
/// fn is_reader<R: futures_core::Stream<Item = casstack::Result<bytes::Bytes>> + Send + Unpin>() {}
/// is_reader::<casstack::stores::s3::S3Stream>();
/// ```
pub struct S3Stream {
    reading: Option<Box<Reading>>,
}

struct Reading {
    client: Client,
    key: Key,
    object: String,
    /// Absolute position of the next byte, and the end of the range (exclusive).
    pos: u64,
    end: u64,
    etag: Option<String>,
    retry: RetryConfig,
    /// Breaks since the last byte arrived.
    failures: u32,
    state: State,
    idle: Pin<Box<Sleep>>,
}

enum State {
    Body(BodyStream),
    Backoff(Pin<Box<Sleep>>),
    Connecting(Connecting),
}

impl fmt::Debug for S3Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reading {
            None => f.write_str("S3Stream(done)"),
            Some(r) => f
                .debug_struct("S3Stream")
                .field("key", &r.key)
                .field("pos", &r.pos)
                .field("end", &r.end)
                .field("failures", &r.failures)
                .finish(),
        }
    }
}

impl S3Stream {
    /// A reader that yields nothing.
    pub(crate) fn empty() -> Self {
        S3Stream { reading: None }
    }

    /// Streams `got`, the response to a request for bytes from `start` of `object`.
    pub(crate) fn new(
        client: Client,
        key: Key,
        object: String,
        start: u64,
        got: Got,
        retry: RetryConfig,
    ) -> Self {
        if got.len == 0 {
            return S3Stream::empty();
        }
        let idle = Box::pin(tokio::time::sleep(client.timeout()));
        S3Stream {
            reading: Some(Box::new(Reading {
                client,
                key,
                object,
                pos: start,
                end: start + got.len,
                etag: got.etag,
                retry,
                failures: 0,
                state: State::Body(got.body),
                idle,
            })),
        }
    }
}

impl Reading {
    /// Records a break; returns the error to end the stream with when retries are spent.
    fn broke(&mut self, error: Error) -> Option<Error> {
        if !is_transient(&error) {
            return Some(error);
        }
        if self.failures >= self.retry.max_retries {
            return Some(gave_up(error, self.failures + 1));
        }
        self.failures += 1;
        let wait = backoff(&self.retry, self.failures);
        self.state = State::Backoff(Box::pin(tokio::time::sleep(wait)));
        None
    }

    fn reconnect(&self) -> Connecting {
        let client = self.client.clone();
        let object = self.object.clone();
        let etag = self.etag.clone();
        let (start, last) = (self.pos, self.end - 1);
        Box::pin(async move {
            client
                .get(&object, start, Some(last), etag.as_deref())
                .await
        })
    }

    fn restart_idle_timer(&mut self) {
        let deadline = Instant::now() + self.client.timeout();
        self.idle.as_mut().reset(deadline);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        loop {
            match &mut self.state {
                State::Body(body) => match poll_body(body, cx) {
                    Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {}
                    Poll::Ready(Some(Ok(chunk))) => {
                        let n = chunk.len() as u64;
                        if n > self.end - self.pos {
                            return Poll::Ready(Some(Err(Error::new(
                                Code::DataLoss,
                                format!(
                                    "GetObject sent more than the {} bytes asked for",
                                    self.end - self.pos
                                ),
                            ))));
                        }
                        self.pos += n;
                        self.failures = 0;
                        self.restart_idle_timer();
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(e) = self.broke(map_body_error(e)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Poll::Ready(None) if self.pos == self.end => return Poll::Ready(None),
                    Poll::Ready(None) => {
                        let e = Error::new(
                            Code::Unavailable,
                            format!(
                                "GetObject: the response ended {} bytes early",
                                self.end - self.pos
                            ),
                        );
                        if let Some(e) = self.broke(e) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Poll::Pending => {
                        ready!(self.idle.as_mut().poll(cx));
                        let e = Error::new(
                            Code::DeadlineExceeded,
                            format!("GetObject: no data for {:?}", self.client.timeout()),
                        );
                        if let Some(e) = self.broke(e) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                },
                State::Backoff(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.state = State::Connecting(self.reconnect());
                }
                State::Connecting(request) => match ready!(request.as_mut().poll(cx)) {
                    Ok(got) if got.len == self.end - self.pos => {
                        self.state = State::Body(got.body);
                        self.restart_idle_timer();
                    }
                    Ok(got) => {
                        return Poll::Ready(Some(Err(Error::new(
                            Code::DataLoss,
                            format!(
                                "GetObject: asked for the last {} bytes, the server offers {}",
                                self.end - self.pos,
                                got.len
                            ),
                        ))));
                    }
                    Err(e) if e.code() == Code::Aborted || e.code() == Code::NotFound => {
                        return Poll::Ready(Some(Err(Error::new(
                            Code::Aborted,
                            format!(
                                "the object was replaced or deleted while it was read ({})",
                                e.message()
                            ),
                        ))));
                    }
                    Err(e) => {
                        if let Some(e) = self.broke(e) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                },
            }
        }
    }
}

impl Stream for S3Stream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(reading) = self.reading.as_mut() else {
            return Poll::Ready(None);
        };
        match reading.poll(cx) {
            // An error or the end finishes the stream (and frees the connection).
            Poll::Ready(Some(Err(e))) => {
                let key = reading.key.clone();
                self.reading = None;
                let e = if e.key().is_none() {
                    e.with_key(key)
                } else {
                    e
                };
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.reading = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.reading {
            None => (0, Some(0)),
            Some(_) => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::s3::{S3Config, S3Credentials};
    use futures_util::StreamExt as _;

    /// A reader of bytes `start..start + len` whose response body yields `chunks`; a resume
    /// would go to a port where nothing listens, and is never retried.
    fn reader(start: u64, len: u64, chunks: Vec<std::io::Result<Bytes>>) -> S3Stream {
        let mut config = S3Config::new("b");
        config.endpoint = Some("http://127.0.0.1:1".into());
        config.credentials = S3Credentials::Environment;
        config.request_timeout = 5.0;
        let client = Client::new(&config).unwrap();
        let got = Got {
            body: BodyStream::new(futures_util::stream::iter(chunks)),
            len,
            etag: None,
        };
        let retry = RetryConfig {
            max_retries: 0,
            ..Default::default()
        };
        S3Stream::new(client, Key::from("k"), "k".into(), start, got, retry)
    }

    /// Polls `stream` to its first error, then asserts that it yields nothing more.
    async fn error_is_final(mut stream: S3Stream) -> Error {
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("ended without an error"),
            }
        };
        for _ in 0..3 {
            assert!(stream.next().await.is_none(), "polled again after {err}");
        }
        assert_eq!(stream.size_hint(), (0, Some(0)));
        assert_eq!(err.key(), Some(&Key::from("k")));
        err
    }

    #[tokio::test]
    async fn every_terminal_error_is_final() {
        // More bytes than asked for, with more queued behind them.
        let too_many = reader(
            0,
            4,
            vec![
                Ok(Bytes::from_static(b"abcdef")),
                Ok(Bytes::from_static(b"gh")),
            ],
        );
        assert_eq!(error_is_final(too_many).await.code(), Code::DataLoss);
        // A broken body, retries spent.
        let broken = reader(
            10,
            8,
            vec![
                Ok(Bytes::from_static(b"abcd")),
                Err(std::io::Error::other("reset")),
                Ok(Bytes::from_static(b"efgh")),
            ],
        );
        assert_eq!(error_is_final(broken).await.code(), Code::Unavailable);
        // A body that ends early, retries spent.
        let short = reader(0, 8, vec![Ok(Bytes::from_static(b"abcd"))]);
        assert_eq!(error_is_final(short).await.code(), Code::Unavailable);
    }
}
