//! The [`Redis`] store itself.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::task::AbortHandle;

use super::config::{REDIS_MAX_OBJECT_SIZE, RedisConfig, redact_url};
use super::conn::Connector;
use super::keys;
use super::notify::{self, Removals};
use super::stream::RedisStream;
use crate::body::{Body, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::{check_out_len, mark_empty_blobs};

/// Chunks smaller than this are copied together before they are sent, so a body of many tiny
/// chunks does not become many tiny `APPEND`s.
const COALESCE_BELOW: usize = 16 << 10;

/// Checks the staged length, then moves the temporary key onto the final key with the right
/// expiry, atomically. `KEYS = [temp, final]`, `ARGV = [expected length, ttl ms (0 = none)]`.
/// Returns the length, or `-1 - staged` when the staged length is wrong (the temporary key is
/// deleted then).
const COMMIT: &str = r"
local expected = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
if expected == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '')
else
  local staged = redis.call('STRLEN', KEYS[1])
  if staged ~= expected then
    redis.call('DEL', KEYS[1])
    return -1 - staged
  end
  redis.call('RENAME', KEYS[1], KEYS[2])
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[2])
end
return expected
";

/// A store in a Redis server. Cloning it shares the pool and the notification task. See the
/// [module docs](super) for semantics.
///
/// ```no_run
/// use casstack::{Digest, Redis, RedisConfig, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let mut config = RedisConfig::new("redis://127.0.0.1:6379");
/// config.key_prefix = "cas:".into();
/// let store = Redis::connect(config).await?;
/// let d = Digest::of(b"hello");
/// store.put_bytes(d, "hello".into()).await?;
/// assert_eq!(store.get_bytes(d).await?, "hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(super) connector: Arc<Connector>,
    pub(super) read_chunk_size: u64,
    pub(super) read_ahead: usize,
    prefix: String,
    address: String,
    max_batch: usize,
    key_ttl_ms: u64,
    temp_ttl_ms: u64,
    max_object_size: u64,
    removals: Arc<Removals>,
    notifier: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.notifier.abort();
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("address", &self.inner.address)
            .field("key_prefix", &self.inner.prefix)
            .field("notifies_removals", &self.notifies_removals())
            .finish()
    }
}

impl Redis {
    /// A store for the server in `config`. Must be called inside a tokio runtime.
    ///
    /// Checks the settings (`InvalidArgument` for a bad URL, more than one address, a zero
    /// size, `max_object_size` above 512 MiB) and, if the server is reachable, subscribes to
    /// its keyspace events. An unreachable server is not an error here: operations fail with
    /// `Unavailable` until it is up; use [`ping`](Redis::ping) to check.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// let store = casstack::Redis::connect(casstack::RedisConfig::new("redis://127.0.0.1")).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: RedisConfig) -> Result<Redis> {
        check_config(&config)?;
        let connector = Arc::new(Connector::new(&config)?);
        let removals = Arc::new(Removals::default());
        let prefix = config.key_prefix.clone();
        // Subscribe before returning when the server is up, so no event after `connect` is
        // missed; otherwise the task keeps trying.
        let first = notify::subscribe(&connector, &prefix).await.ok().flatten();
        removals.set_live(first.as_ref());
        let task = tokio::spawn(notify::run(
            connector.clone(),
            prefix.clone(),
            removals.clone(),
            first,
        ));
        let inner = Inner {
            connector,
            read_chunk_size: config.read_chunk_size,
            read_ahead: config.read_ahead,
            prefix,
            address: redact_url(&config.addresses[0]),
            max_batch: config.max_chunk_uploads_per_update,
            key_ttl_ms: config.key_ttl_s.saturating_mul(1000),
            temp_ttl_ms: config.temp_key_ttl_s.saturating_mul(1000),
            max_object_size: config.max_object_size,
            removals,
            notifier: task.abort_handle(),
        };
        Ok(Redis {
            inner: Arc::new(inner),
        })
    }

    /// `PING`s the server (with retries): `Ok` if it answers.
    ///
    /// ```no_run
    /// # async fn demo(store: casstack::Redis) {
    /// if let Err(e) = store.ping().await {
    ///     eprintln!("redis is down: {e}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let connector = &self.inner.connector;
        connector
            .retry(|| async {
                let mut conn = connector.get().await?;
                redis::cmd("PING")
                    .query_async::<()>(&mut **conn)
                    .await
                    .map_err(|e| connector.error(e, "redis: PING"))
            })
            .await
    }

    /// True while a keyspace-event subscription is live, i.e. removals are being reported.
    ///
    /// ```no_run
    /// # async fn demo(store: casstack::Redis) {
    /// if !store.notifies_removals() {
    ///     eprintln!("set notify-keyspace-events to Exe so caches above learn of evictions");
    /// }
    /// # }
    /// ```
    pub fn notifies_removals(&self) -> bool {
        self.inner.removals.is_active()
    }

    /// The Redis key an object is stored under (`key_prefix` + encoded key).
    ///
    /// ```no_run
    /// # async fn demo(store: casstack::Redis) {
    /// assert_eq!(store.redis_key(&"ac/1".into()).unwrap(), "ac/1");
    /// # }
    /// ```
    pub fn redis_key(&self, key: &Key) -> Result<String> {
        keys::final_key(&self.inner.prefix, key)
    }

    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        let mut pipe = redis::pipe();
        let mut asked = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            out[i] = None;
            if key.is_empty_blob() {
                continue;
            }
            let redis_key = self.redis_key(key)?;
            pipe.cmd("STRLEN").arg(&redis_key);
            // A digest's value is never empty, so STRLEN alone tells presence; a name's may be.
            let named = key.name().is_some();
            if named {
                pipe.cmd("EXISTS").arg(&redis_key);
            }
            asked.push((i, named));
        }
        if !asked.is_empty() {
            let connector = &self.inner.connector;
            let replies: Vec<u64> = connector
                .retry(|| async {
                    let mut conn = connector.get().await?;
                    pipe.query_async(&mut **conn)
                        .await
                        .map_err(|e| connector.error(e, "redis: has_many"))
                })
                .await?;
            let mut replies = replies.into_iter();
            for (i, named) in asked {
                let len = replies.next().unwrap_or(0);
                let exists = if named {
                    replies.next().unwrap_or(0) == 1
                } else {
                    len > 0
                };
                out[i] = exists.then_some(len);
            }
        }
        mark_empty_blobs(keys, out);
        Ok(())
    }

    async fn read(&self, key: Key, range: ByteRange) -> Result<RedisStream> {
        if key.is_empty_blob() {
            range.resolve(0).map_err(|e| e.with_key(key))?;
            return Ok(RedisStream::empty());
        }
        let redis_key: Arc<str> = self.redis_key(&key)?.into();
        // A name's value may be replaced by a different one at any time, so it is read in one
        // atomic round trip (a snapshot); a digest's bytes never change, so it streams.
        let chunk = match key {
            Key::Name(_) => u64::MAX,
            Key::Digest(_) => self.inner.read_chunk_size,
        };
        let first_len = range.len.unwrap_or(u64::MAX).min(chunk);
        let connector = &self.inner.connector;
        let (exists, size, first, conn) = connector
            .retry(|| async {
                let mut conn = connector.shared().await?;
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("EXISTS")
                    .arg(&*redis_key)
                    .cmd("STRLEN")
                    .arg(&*redis_key);
                let (exists, size, first): (bool, u64, Vec<u8>) = if first_len > 0 {
                    pipe.cmd("GETRANGE").arg(&*redis_key).arg(range.offset).arg(
                        range
                            .offset
                            .saturating_add(first_len - 1)
                            .min(i64::MAX as u64),
                    );
                    pipe.query_async(&mut conn).await
                } else {
                    pipe.query_async(&mut conn)
                        .await
                        .map(|(e, s): (bool, u64)| (e, s, Vec::new()))
                }
                .map_err(|e| connector.error(e, "redis: get"))?;
                Ok((exists, size, first, conn))
            })
            .await
            .map_err(|e| e.with_key(key.clone()))?;
        if !exists {
            return Err(Error::not_found(key));
        }
        let span = range.resolve(size).map_err(|e| e.with_key(key.clone()))?;
        let expected = (span.end - span.start).min(chunk);
        if first.len() as u64 != expected {
            return Err(Error::new(
                Code::Internal,
                format!(
                    "redis: GETRANGE returned {} bytes where {expected} were expected",
                    first.len()
                ),
            )
            .with_key(key));
        }
        Ok(RedisStream::new(
            self.inner.clone(),
            conn,
            redis_key,
            key,
            Bytes::from(first),
            span.start + expected,
            span.end,
            size,
        ))
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, mut body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let final_key = self.redis_key(&key)?;
        let inner = &*self.inner;
        if let UploadSize::Exact(n) = size
            && n > inner.max_object_size
        {
            return Err(too_large(n, inner.max_object_size).with_key(key));
        }
        let connector = &inner.connector;
        let mut conn = connector
            .retry(|| connector.shared())
            .await
            .map_err(|e| e.with_key(key.clone()))?;
        let mut staged = TempKey {
            conn: conn.clone(),
            key: keys::temp_key(&final_key),
            armed: false,
        };
        let mut limits = Limits {
            size,
            max: inner.max_object_size,
            received: 0,
            max_parts: inner.max_batch.max(1),
            max_bytes: (inner.read_chunk_size as usize).saturating_mul(inner.max_batch.max(1)),
        };
        let result = async {
            let mut batch = Batch::default();
            let mut ended = batch.fill(&mut body, &mut limits).await?;
            while !ended {
                staged.armed = true;
                let mut next = Batch::default();
                let (sent, filled) = tokio::join!(
                    self.append(&mut conn, &staged.key, &batch),
                    next.fill(&mut body, &mut limits)
                );
                // A failing body is the cause to report, even if the send failed too.
                let body_ended = filled?;
                sent?;
                ended = body_ended;
                batch = next;
            }
            limits.size.check_end(limits.received)?;
            staged.armed = true;
            self.commit(&mut conn, &staged.key, &final_key, &batch, limits.received)
                .await
        }
        .await;
        match result {
            Ok(len) => {
                staged.armed = false;
                Ok(len)
            }
            Err(e) => {
                staged.delete().await;
                Err(e.with_key(key))
            }
        }
    }

    /// Sends one batch of chunks and renews the temporary key's expiry, in one pipeline.
    async fn append(
        &self,
        conn: &mut MultiplexedConnection,
        temp: &str,
        batch: &Batch,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        for part in &batch.parts {
            pipe.cmd("APPEND").arg(temp).arg(part.as_ref()).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(temp)
            .arg(self.inner.temp_ttl_ms.max(1))
            .ignore();
        pipe.query_async::<()>(conn)
            .await
            .map_err(|e| self.inner.connector.error(e, "redis: APPEND"))
    }

    /// Sends the last batch and the commit script in one pipeline.
    async fn commit(
        &self,
        conn: &mut MultiplexedConnection,
        temp: &str,
        final_key: &str,
        batch: &Batch,
        len: u64,
    ) -> Result<u64> {
        let mut pipe = redis::pipe();
        for part in &batch.parts {
            pipe.cmd("APPEND").arg(temp).arg(part.as_ref()).ignore();
        }
        if !batch.parts.is_empty() {
            pipe.cmd("PEXPIRE")
                .arg(temp)
                .arg(self.inner.temp_ttl_ms.max(1))
                .ignore();
        }
        pipe.cmd("EVAL")
            .arg(COMMIT)
            .arg(2)
            .arg(temp)
            .arg(final_key)
            .arg(len)
            .arg(self.inner.key_ttl_ms);
        let (answer,): (i64,) = pipe
            .query_async(conn)
            .await
            .map_err(|e| self.inner.connector.error(e, "redis: committing an upload"))?;
        if answer < 0 {
            return Err(Error::new(
                Code::Aborted,
                format!(
                    "redis: {} of {len} staged bytes were left when the upload was committed \
                     (evicted or expired mid-upload, or the server restarted)",
                    -1 - answer
                ),
            ));
        }
        Ok(len)
    }
}

fn too_large(n: u64, max: u64) -> Error {
    Error::new(
        Code::ResourceExhausted,
        format!("redis: an object of {n} bytes is over max_object_size ({max} bytes)"),
    )
}

fn check_config(config: &RedisConfig) -> Result<()> {
    let bad = |what: String| Err(Error::new(Code::InvalidArgument, format!("redis: {what}")));
    if config.read_chunk_size == 0 {
        return bad("read_chunk_size must be at least 1".into());
    }
    if config.max_chunk_uploads_per_update == 0 {
        return bad("max_chunk_uploads_per_update must be at least 1".into());
    }
    if config.connection_pool_size == 0 {
        return bad("connection_pool_size must be at least 1".into());
    }
    if config.temp_key_ttl_s == 0 {
        return bad("temp_key_ttl_s must be at least 1".into());
    }
    if config.max_object_size > REDIS_MAX_OBJECT_SIZE {
        return bad(format!(
            "max_object_size {} is over Redis' limit of {REDIS_MAX_OBJECT_SIZE} bytes",
            config.max_object_size
        ));
    }
    if !(config.retry.delay.is_finite() && config.retry.delay >= 0.0) {
        return bad("retry.delay must be a number of seconds >= 0".into());
    }
    Ok(())
}

/// How much an upload may still take.
struct Limits {
    size: UploadSize,
    max: u64,
    received: u64,
    max_parts: usize,
    max_bytes: usize,
}

/// Chunks to send in one pipeline.
#[derive(Default)]
struct Batch {
    parts: Vec<Bytes>,
    small: BytesMut,
    bytes: usize,
}

impl Batch {
    /// Waits for one chunk, then takes the chunks the body has ready at once, until the batch
    /// is full; `Ok(true)` when the body has ended. A slow body thus never holds back what
    /// already arrived.
    async fn fill<B: Body>(&mut self, body: &mut B, limits: &mut Limits) -> Result<bool> {
        let mut first = true;
        while self.parts.len() < limits.max_parts && self.bytes < limits.max_bytes {
            let next = if std::mem::take(&mut first) {
                body.next().await
            } else {
                // Dropping a pending `next()` loses nothing: no chunk was taken.
                match body.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let Some(chunk) = next else {
                self.flush_small();
                return Ok(true);
            };
            let chunk = chunk.map_err(|e| e.context("reading the upload body"))?;
            limits.received += chunk.len() as u64;
            limits.size.check_progress(limits.received)?;
            if limits.received > limits.max {
                return Err(
                    too_large(limits.received, limits.max).context("the body passed the limit")
                );
            }
            self.bytes += chunk.len();
            if chunk.len() < COALESCE_BELOW {
                self.small.extend_from_slice(&chunk);
                if self.small.len() >= COALESCE_BELOW {
                    self.flush_small();
                }
            } else {
                self.flush_small();
                self.parts.push(chunk);
            }
        }
        self.flush_small();
        Ok(false)
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }
}

/// The temporary key of an upload; deleted (best effort) when the upload fails or its future
/// is dropped, and in any case expiring on its own.
struct TempKey {
    conn: MultiplexedConnection,
    key: String,
    armed: bool,
}

impl TempKey {
    async fn delete(&mut self) {
        if std::mem::take(&mut self.armed) {
            let _ = redis::cmd("DEL")
                .arg(&self.key)
                .query_async::<()>(&mut self.conn)
                .await;
        }
    }
}

impl Drop for TempKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut conn = self.conn.clone();
            let key = std::mem::take(&mut self.key);
            runtime.spawn(async move {
                let _ = redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await;
            });
        }
    }
}

impl Store for Redis {
    type Reader = RedisStream;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<RedisStream>> + Send {
        self.read(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.write(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.removals.subscribe(listener);
    }

    /// True while a keyspace-event subscription that hears both expiry and eviction is
    /// live; see [`notifies_removals`](Redis::notifies_removals).
    fn reports_all_removals(&self) -> bool {
        self.inner.removals.is_complete()
    }

    /// A `PING` (with the store's retries): failed, with the address and the error, when
    /// the server does not answer.
    async fn check_health(&self) -> HealthStatus {
        match self.ping().await {
            Ok(()) => HealthStatus::Ok,
            Err(e) => {
                HealthStatus::failed("Redis", format!("PING {} failed: {e}", self.inner.address))
            }
        }
    }
}
