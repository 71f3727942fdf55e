//! [`RedisStream`]: the reader of a `get`, one `GETRANGE` window at a time.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use futures_core::Stream;
use futures_util::future::MaybeDone;

use super::Inner;
use crate::error::{Code, Error, Result};
use crate::key::Key;

type Fetch = Pin<Box<dyn Future<Output = Result<(Bytes, MultiplexedConnection)>> + Send>>;

/// The reader of [`Redis`](super::Redis): yields the requested range in windows of
/// `read_chunk_size` bytes, each read with `GETRANGE` together with a `STRLEN` check (one
/// atomic round trip).
///
/// While the caller handles one window, the next `read_ahead` windows are already requested
/// (pipelined on the same connection), so a large object streams at the server's pace instead
/// of one round trip per window; at most `1 + read_ahead` windows are buffered. Dropping the
/// reader drops the requests in flight (their answers are discarded by the connection): no
/// task is left behind.
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
    /// The window read with the first round trip, not yielded yet.
    first: Option<Bytes>,
    /// What is needed to request further windows; `None` once every window is requested or
    /// the reader failed.
    read: Option<Read>,
    /// Windows requested and not yielded yet, in order.
    in_flight: VecDeque<MaybeDone<Fetch>>,
    /// `key`, `pos` and `end` for `Debug`.
    position: Option<(Key, u64, u64)>,
}

/// What a reader needs to request further windows.
struct Read {
    inner: Arc<Inner>,
    conn: MultiplexedConnection,
    redis_key: Arc<str>,
    key: Key,
    /// The start of the next window to request.
    next: u64,
    end: u64,
    size: u64,
    read_ahead: usize,
}

impl RedisStream {
    /// A reader that yields nothing (the empty blob, an empty range).
    pub(crate) fn empty() -> Self {
        RedisStream {
            first: None,
            read: None,
            in_flight: VecDeque::new(),
            position: None,
        }
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
        let read_ahead = inner.read_ahead;
        let position = Some((key.clone(), pos - first.len() as u64, end));
        let read = (pos < end).then(|| Read {
            inner,
            conn,
            redis_key,
            key,
            next: pos,
            end,
            size,
            read_ahead,
        });
        RedisStream {
            first: (!first.is_empty()).then_some(first),
            read,
            in_flight: VecDeque::new(),
            position,
        }
    }

    /// Requests windows until `limit` are in flight (or all are requested), and polls every
    /// request in flight once, so new ones are sent and finished ones are kept.
    fn fill(&mut self, limit: usize, cx: &mut Context<'_>) {
        if let Some(read) = &mut self.read {
            while self.in_flight.len() < limit && read.next < read.end {
                self.in_flight.push_back(MaybeDone::Future(read.start()));
            }
            if read.next >= read.end {
                self.read = None;
            }
        }
        for fetch in &mut self.in_flight {
            let _ = Pin::new(fetch).poll(cx);
        }
    }
}

impl Read {
    /// The request of the next window.
    fn start(&mut self) -> Fetch {
        let window = (self.end - self.next).min(self.inner.read_chunk_size);
        let pos = self.next;
        self.next += window;
        Box::pin(fetch_window(
            self.inner.clone(),
            self.conn.clone(),
            self.redis_key.clone(),
            self.key.clone(),
            pos,
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
        let read_ahead = this.read.as_ref().map_or(0, |read| read.read_ahead);
        if let Some(first) = this.first.take() {
            if let Some((_, pos, _)) = &mut this.position {
                *pos += first.len() as u64;
            }
            // The caller handles `first` while the next windows are on their way.
            this.fill(read_ahead, cx);
            return Poll::Ready(Some(Ok(first)));
        }
        // The window the caller waits for, and `read_ahead` more.
        this.fill(read_ahead.saturating_add(1), cx);
        let Some(front) = this.in_flight.front_mut() else {
            return Poll::Ready(None);
        };
        let Some(result) = Pin::new(front).take_output() else {
            return Poll::Pending;
        };
        this.in_flight.pop_front();
        match result {
            Ok((chunk, conn)) => {
                // A retried window may come back on a fresh connection: use it from now on.
                if let Some(read) = &mut this.read {
                    read.conn = conn;
                }
                if let Some((_, pos, _)) = &mut this.position {
                    *pos += chunk.len() as u64;
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Err(e) => {
                // An error ends the stream; the requests still in flight are dropped.
                this.read = None;
                this.in_flight.clear();
                this.position = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl fmt::Debug for RedisStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RedisStream");
        match &self.position {
            Some((key, pos, end)) if pos < end => s
                .field("key", key)
                .field("pos", pos)
                .field("end", end)
                .field("in_flight", &self.in_flight.len()),
            _ => s.field("done", &true),
        }
        .finish()
    }
}
