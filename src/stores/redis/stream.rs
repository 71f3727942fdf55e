//! [`RedisStream`]: the reader of a `get`, one `GETRANGE` window at a time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use futures_core::Stream;

use super::Inner;
use crate::error::{Code, Error, Result};
use crate::key::Key;

type Fetch = Pin<Box<dyn Future<Output = Result<(Bytes, MultiplexedConnection)>> + Send>>;

/// The reader of [`Redis`](super::Redis): yields the requested range in windows of
/// `read_chunk_size` bytes, each read with `GETRANGE` together with a `STRLEN` check (one
/// atomic round trip).
///
/// It holds a clone of a multiplexed connection (not a pool slot), so a slow consumer does
/// not starve the pool. A window that fails transiently is retried on a fresh connection.
/// If the object vanishes or changes length while it is read, the reader ends with
/// `Aborted`: it never yields a short object.
///
/// ```no_run
/// # async fn demo(store: casstack::Redis) -> casstack::Result<()> {
/// use casstack::{ByteRange, Digest, Store};
/// use futures_util::StreamExt;
///
/// let mut reader: casstack::stores::redis::RedisStream =
///     store.get(Digest::of(b"x").into(), ByteRange::FULL).await?;
/// while let Some(chunk) = reader.next().await {
///     let _bytes = chunk?;
/// }
/// # Ok(()) }
/// ```
pub struct RedisStream {
    state: State,
}

enum State {
    /// Nothing more to yield.
    Done,
    /// Yield `first` (if any), then read windows from `pos` to `end`.
    Reading {
        first: Option<Bytes>,
        read: Option<Read>,
    },
    /// A window is on its way.
    Fetching { fetch: Fetch, read: Read },
}

/// What a reader needs to fetch further windows.
struct Read {
    inner: Arc<Inner>,
    conn: MultiplexedConnection,
    redis_key: Arc<str>,
    key: Key,
    pos: u64,
    end: u64,
    size: u64,
}

impl RedisStream {
    /// A reader that yields nothing (the empty blob, an empty range).
    pub(crate) fn empty() -> Self {
        RedisStream { state: State::Done }
    }

    /// A reader that yields `first`, then windows `[pos, end)` of an object of `size` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: Arc<Inner>,
        conn: MultiplexedConnection,
        redis_key: Arc<str>,
        key: Key,
        first: Bytes,
        pos: u64,
        end: u64,
        size: u64,
    ) -> Self {
        let read = (pos < end).then(|| Read {
            inner,
            conn,
            redis_key,
            key,
            pos,
            end,
            size,
        });
        RedisStream {
            state: State::Reading {
                first: (!first.is_empty()).then_some(first),
                read,
            },
        }
    }
}

impl Read {
    fn start(&self) -> Fetch {
        let window = (self.end - self.pos).min(self.inner.read_chunk_size);
        Box::pin(fetch_window(
            self.inner.clone(),
            self.conn.clone(),
            self.redis_key.clone(),
            self.key.clone(),
            self.pos,
            window,
            self.size,
        ))
    }
}

/// One window `[pos, pos + len)`, checked against the object's `size`; retried on transient
/// errors with a fresh connection.
async fn fetch_window(
    inner: Arc<Inner>,
    conn: MultiplexedConnection,
    redis_key: Arc<str>,
    key: Key,
    pos: u64,
    len: u64,
    size: u64,
) -> Result<(Bytes, MultiplexedConnection)> {
    let mut conn = Some(conn);
    let connector = &inner.connector;
    let result = connector
        .retry(|| {
            let given = conn.take();
            let redis_key = &redis_key;
            async move {
                let mut c = match given {
                    Some(c) => c,
                    None => connector.shared().await?,
                };
                let (data, now): (Vec<u8>, u64) = redis::pipe()
                    .atomic()
                    .cmd("GETRANGE")
                    .arg(&**redis_key)
                    .arg(pos)
                    .arg(pos + len - 1)
                    .cmd("STRLEN")
                    .arg(&**redis_key)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| connector.error(e, "redis: GETRANGE"))?;
                Ok((data, now, c))
            }
        })
        .await;
    let (data, now, conn) = result.map_err(|e| e.with_key(key.clone()))?;
    if now != size || data.len() as u64 != len {
        return Err(Error::new(
            Code::Aborted,
            format!(
                "redis: the object changed while it was read (was {size} bytes, now {now}; \
                 got {} of {len} bytes at offset {pos})",
                data.len()
            ),
        )
        .with_key(key));
    }
    Ok((Bytes::from(data), conn))
}

impl Stream for RedisStream {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Reading { first, read } => {
                    if let Some(first) = first {
                        this.state = State::Reading { first: None, read };
                        return Poll::Ready(Some(Ok(first)));
                    }
                    let Some(read) = read else {
                        return Poll::Ready(None);
                    };
                    this.state = State::Fetching {
                        fetch: read.start(),
                        read,
                    };
                }
                State::Fetching {
                    mut fetch,
                    mut read,
                } => {
                    let polled = fetch.as_mut().poll(cx);
                    let Poll::Ready(result) = polled else {
                        this.state = State::Fetching { fetch, read };
                        return Poll::Pending;
                    };
                    let (chunk, conn) = match result {
                        Ok(done) => done,
                        // State stays Done: an error ends the stream.
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    read.conn = conn;
                    read.pos += chunk.len() as u64;
                    let more = read.pos < read.end;
                    this.state = State::Reading {
                        first: None,
                        read: more.then_some(read),
                    };
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
        }
    }
}

impl fmt::Debug for RedisStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RedisStream");
        match &self.state {
            State::Done => s.field("done", &true),
            State::Reading {
                read: Some(read), ..
            }
            | State::Fetching { read, .. } => s
                .field("key", &read.key)
                .field("pos", &read.pos)
                .field("end", &read.end),
            State::Reading { read: None, .. } => s.field("done", &false),
        }
        .finish()
    }
}
