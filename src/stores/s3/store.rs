//! The [`S3`] store: put (single or multipart), ranged get, has with expiry.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinSet;

use crate::body::{Body, collect_body, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::{check_out_len, mark_empty_blobs};

use super::client::Client;
use super::config::{MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, S3Config};
use super::retry::retry;
use super::stream::S3Stream;

/// An upload doubles its part size after this many parts: 800 parts of 5 MiB, then 800 of
/// 10 MiB, ... reach S3's 5 TiB object limit within its 10,000 parts.
const PARTS_PER_GROWTH: u32 = 800;

/// How often a read looks a refused range up again when the object changes in between.
const RANGE_RACE_ATTEMPTS: u32 = 3;

/// The longest object key S3 accepts, in bytes.
const MAX_OBJECT_KEY: usize = 1024;

/// A store of objects in an S3 bucket. Cloning it shares the client and its connections.
///
/// Construction makes no request; the first operation finds out whether the bucket and the
/// credentials work. See the [module docs](crate::stores::s3) for the semantics.
///
/// ```no_run
/// use casstack::{S3, S3Config, StoreExt};
///
/// # #[tokio::main] async fn main() -> casstack::Result<()> {
/// let cas = S3::new(S3Config {
///     key_prefix: "cas/".into(),
///     ..S3Config::new("build-cache")
/// })?;
/// let d = casstack::Digest::of(b"hello");
/// cas.put_bytes(d, "hello".into()).await?;
/// assert_eq!(cas.get_bytes(d).await?, "hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: S3Config,
    listeners: Mutex<Vec<Arc<dyn RemovalListener>>>,
}

impl fmt::Debug for S3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.inner.config.bucket)
            .field("endpoint", &self.inner.config.endpoint)
            .field("key_prefix", &self.inner.config.key_prefix)
            .finish_non_exhaustive()
    }
}

impl S3 {
    /// A store over `config`'s bucket. `InvalidArgument` for a config that cannot work (see
    /// [`S3Config::validate`]), `PermissionDenied` when the chosen credential source cannot be
    /// set up. Makes no request.
    ///
    /// ```
    /// let err = casstack::S3::new(casstack::S3Config::default()).unwrap_err();
    /// assert!(err.message().contains("bucket"));
    /// ```
    pub fn new(config: S3Config) -> Result<S3> {
        config.validate()?;
        let client = Client::new(&config)?;
        Ok(S3 {
            inner: Arc::new(Inner {
                client,
                config,
                listeners: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The config this store was built with.
    ///
    /// ```
    /// let s3 = casstack::S3::new(casstack::S3Config {
    ///     credentials: casstack::S3Credentials::Environment,
    ///     ..casstack::S3Config::new("b")
    /// }).unwrap();
    /// assert_eq!(s3.config().bucket, "b");
    /// ```
    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// Creates the bucket; fine if this account already owns it.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> casstack::Result<()> {
    /// casstack::S3::new(casstack::S3Config::new("cache"))?.create_bucket().await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_bucket(&self) -> Result<()> {
        retry(&self.inner.config.retry, || {
            self.inner.client.create_bucket()
        })
        .await
    }

    /// The object keys of the multipart uploads in progress under `key_prefix` (at most
    /// 1000): uploads this store left behind would show here (a crashed process cannot abort
    /// its uploads; a bucket lifecycle rule `AbortIncompleteMultipartUpload` cleans those).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> casstack::Result<()> {
    /// let s3 = casstack::S3::new(casstack::S3Config::new("cache"))?;
    /// assert!(s3.incomplete_uploads().await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn incomplete_uploads(&self) -> Result<Vec<String>> {
        let prefix = &self.inner.config.key_prefix;
        let uploads = retry(&self.inner.config.retry, || {
            self.inner.client.list_multipart_uploads(prefix)
        })
        .await?;
        Ok(uploads.into_iter().map(|(key, _)| key).collect())
    }

    fn object_key(&self, key: &Key) -> Result<String> {
        let object = format!("{}{key}", self.inner.config.key_prefix);
        if object.is_empty() || object.len() > MAX_OBJECT_KEY {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "an S3 object key is 1 to 1024 bytes, this one is {}",
                    object.len()
                ),
            )
            .with_key(key.clone()));
        }
        Ok(object)
    }

    fn notify_removed(&self, key: &Key) {
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in listeners {
            listener.removed(key);
        }
    }

    /// The size of `key`'s object; `None` if absent or expired.
    async fn head(&self, key: &Key) -> Result<Option<u64>> {
        let object = self.object_key(key)?;
        let client = &self.inner.client;
        let head = retry(&self.inner.config.retry, || client.head(&object))
            .await
            .map_err(|e| e.with_key(key.clone()))?;
        let Some(head) = head else {
            return Ok(None);
        };
        let max_age = self.inner.config.consider_expired_after_s;
        if max_age != 0
            && let Some(modified) = head.last_modified
        {
            let expires = modified + Duration::from_secs(max_age);
            if expires <= SystemTime::now() {
                self.notify_removed(key);
                return Ok(None);
            }
        }
        Ok(Some(head.size))
    }

    async fn head_at(&self, i: usize, key: &Key) -> (usize, Result<Option<u64>>) {
        (i, self.head(key).await)
    }

    async fn has_many_impl(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        // A hand-rolled bounded fan-out: stream combinators with closures over borrowed keys
        // trip the compiler's `Send` inference.
        let max = self.inner.config.max_concurrent_heads;
        let mut todo = keys
            .iter()
            .enumerate()
            .filter(|(_, key)| !key.is_empty_blob());
        let mut heads = FuturesUnordered::new();
        loop {
            while heads.len() < max {
                let Some((i, key)) = todo.next() else { break };
                heads.push(self.head_at(i, key));
            }
            let Some((i, size)) = heads.next().await else {
                break;
            };
            out[i] = size?;
        }
        mark_empty_blobs(keys, out);
        Ok(())
    }

    async fn read(&self, key: Key, range: ByteRange) -> Result<S3Stream> {
        if key.is_empty_blob() {
            range.resolve(0).map_err(|e| e.with_key(key))?;
            return Ok(S3Stream::empty());
        }
        let object = self.object_key(&key)?;
        let config = &self.inner.config;
        let client = &self.inner.client;
        if range.len == Some(0) {
            // Never a range inside the object, so the answer is final.
            let nothing = self.read_nothing(&key, &object, range).await?;
            return Ok(nothing.unwrap_or_else(S3Stream::empty));
        }
        let last = range.len.map(|len| range.offset.saturating_add(len) - 1);
        // A 416 followed by a HEAD that finds the range inside the object means a larger
        // object replaced the one the GET saw: ask again.
        for _ in 0..RANGE_RACE_ATTEMPTS {
            let got = retry(&config.retry, || {
                client.get(&object, range.offset, last, None)
            })
            .await;
            match got {
                Ok(got) => {
                    return Ok(S3Stream::new(
                        client.clone(),
                        key,
                        object,
                        range.offset,
                        got,
                        config.retry.clone(),
                    ));
                }
                // S3 refuses a range that starts at or past the end; at the end it is empty.
                Err(e) if e.code() == Code::OutOfRange => {
                    if let Some(nothing) = self.read_nothing(&key, &object, range).await? {
                        return Ok(nothing);
                    }
                }
                Err(e) => return Err(e.with_key(key)),
            }
        }
        Err(Error::new(
            Code::Unavailable,
            "the object kept being replaced while its range was looked up",
        )
        .with_key(key))
    }

    /// For a range S3 refused: an empty reader if the range starts exactly at the end,
    /// `NotFound` or `OutOfRange` if it should have been refused, `None` if it is inside the
    /// object (which must have changed since).
    async fn read_nothing(
        &self,
        key: &Key,
        object: &str,
        range: ByteRange,
    ) -> Result<Option<S3Stream>> {
        let client = &self.inner.client;
        let head = retry(&self.inner.config.retry, || client.head(object))
            .await
            .map_err(|e| e.with_key(key.clone()))?;
        let Some(head) = head else {
            return Err(Error::not_found(key.clone()));
        };
        let span = range
            .resolve(head.size)
            .map_err(|e| e.with_key(key.clone()))?;
        Ok(span.is_empty().then(S3Stream::empty))
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let object = self.object_key(&key)?;
        let config = &self.inner.config;
        if let UploadSize::Exact(n) = size {
            if n > MAX_OBJECT_SIZE {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!("S3 objects are at most 5 TiB; this upload declares {n} bytes"),
                )
                .with_key(key));
            }
            if n < config.multipart_threshold {
                let data = collect_body(&key, size, body).await?;
                self.put_whole(&key, &object, data).await?;
                return Ok(n);
            }
        }
        self.put_multipart(key, object, size, body).await
    }

    async fn put_whole(&self, key: &Key, object: &str, data: Bytes) -> Result<()> {
        let client = &self.inner.client;
        retry(&self.inner.config.retry, || {
            client.put(object, data.clone())
        })
        .await
        .map_err(|e| e.with_key(key.clone()))
    }

    /// The first part size for an upload of `size`: the configured one, raised so an exact
    /// size fits in 10,000 parts. (An upload of a size only bounded starts at the configured
    /// size and doubles it every 800 parts instead, so it buffers no more than it needs.)
    fn part_size(&self, size: UploadSize) -> u64 {
        let configured = self.inner.config.part_size;
        match size {
            UploadSize::Exact(n) => configured.max(n.div_ceil(MAX_PARTS)).min(MAX_PART_SIZE),
            UploadSize::AtMost(_) => configured,
        }
    }

    async fn put_multipart<B: Body>(
        &self,
        key: Key,
        object: String,
        size: UploadSize,
        body: B,
    ) -> Result<u64> {
        let config = &self.inner.config;
        let client = &self.inner.client;
        let mut parts = Parts::new(body, key.clone(), size, self.part_size(size));
        let first = parts.next().await?;
        if parts.done {
            // The whole body fit in one part: one request, no upload to clean up.
            let data = first.unwrap_or_default();
            let len = data.len() as u64;
            self.put_whole(&key, &object, data).await?;
            return Ok(len);
        }
        let upload_id = retry(&config.retry, || client.create_multipart(&object))
            .await
            .map_err(|e| e.with_key(key.clone()))?;
        let mut guard = AbortGuard {
            client: client.clone(),
            retry: config.retry.clone(),
            object,
            upload_id,
            armed: true,
        };
        let result = self.upload_parts(&guard, &mut parts, first).await;
        guard.armed = false;
        match result {
            Ok(total) => Ok(total),
            Err(e) => {
                let e = e.with_key(key);
                match guard.abort().await {
                    Ok(()) => Err(e),
                    Err(abort) => Err(e.context(format_args!(
                        "(and aborting the multipart upload failed: {abort})"
                    ))),
                }
            }
        }
    }

    /// Uploads `first` and the rest of `parts`, then completes the upload; returns its size.
    async fn upload_parts<B: Body>(
        &self,
        upload: &AbortGuard,
        parts: &mut Parts<B>,
        first: Option<Bytes>,
    ) -> Result<u64> {
        let max_in_flight = self.inner.config.multipart_max_concurrent_uploads;
        let mut tasks: JoinSet<Result<(u32, String)>> = JoinSet::new();
        let mut done: Vec<(u32, String)> = Vec::new();
        let mut next = first;
        let mut number = 0u32;
        while let Some(data) = next.take() {
            number += 1;
            if u64::from(number) > MAX_PARTS {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "the upload needs more than 10,000 parts (the last ones of {} bytes)",
                        parts.part_size
                    ),
                ));
            }
            let client = upload.client.clone();
            let retry_config = upload.retry.clone();
            let (object, upload_id) = (upload.object.clone(), upload.upload_id.clone());
            tasks.spawn(async move {
                let etag = retry(&retry_config, || {
                    client.upload_part(&object, &upload_id, number, data.clone())
                })
                .await
                .map_err(|e| e.context(format_args!("part {number}")))?;
                Ok((number, etag))
            });
            if number.is_multiple_of(PARTS_PER_GROWTH) {
                parts.part_size = (parts.part_size * 2).min(MAX_PART_SIZE);
            }
            // At most `max_in_flight` parts in memory: those in flight and the one being read.
            while tasks.len() >= max_in_flight {
                done.push(joined(tasks.join_next().await)?);
            }
            while let Some(result) = tasks.try_join_next() {
                done.push(joined(Some(result))?);
            }
            next = parts.next().await?;
        }
        while let Some(result) = tasks.join_next().await {
            done.push(joined(Some(result))?);
        }
        done.sort_unstable_by_key(|(number, _)| *number);
        let total = parts.received;
        let client = &upload.client;
        let mut attempts = 0;
        let completed = retry(&upload.retry, || {
            attempts += 1;
            client.complete_multipart(&upload.object, &upload.upload_id, &done)
        })
        .await;
        match completed {
            Ok(()) => Ok(total),
            // A retry after a completion whose answer was lost finds the upload gone.
            Err(e) if e.code() == Code::NotFound && attempts > 1 => {
                match retry(&upload.retry, || client.head(&upload.object)).await? {
                    Some(head) if head.size == total => Ok(total),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// The result of a part upload task.
fn joined(
    result: Option<std::result::Result<Result<(u32, String)>, tokio::task::JoinError>>,
) -> Result<(u32, String)> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(Error::new(
            Code::Internal,
            format!("a part upload task failed: {e}"),
        )),
        None => Err(Error::new(Code::Internal, "no part upload in flight")),
    }
}

/// Aborts a multipart upload if dropped while armed (the put future was dropped).
struct AbortGuard {
    client: Client,
    retry: crate::stores::redis::RetryConfig,
    object: String,
    upload_id: String,
    armed: bool,
}

impl AbortGuard {
    async fn abort(&self) -> Result<()> {
        retry(&self.retry, || {
            self.client.abort_multipart(&self.object, &self.upload_id)
        })
        .await
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let guard = AbortGuard {
            client: self.client.clone(),
            retry: self.retry.clone(),
            object: std::mem::take(&mut self.object),
            upload_id: std::mem::take(&mut self.upload_id),
            armed: false,
        };
        runtime.spawn(async move {
            // Best effort: nobody is left to tell. A lifecycle rule catches what this misses.
            let _ = guard.abort().await;
        });
    }
}

/// Cuts a body into parts of `part_size` bytes (the last one shorter), checking its size.
/// A chunk that covers a whole part is sliced, not copied.
struct Parts<B> {
    body: B,
    key: Key,
    size: UploadSize,
    part_size: u64,
    carry: Bytes,
    received: u64,
    done: bool,
}

impl<B: Body> Parts<B> {
    fn new(body: B, key: Key, size: UploadSize, part_size: u64) -> Self {
        Parts {
            body,
            key,
            size,
            part_size,
            carry: Bytes::new(),
            received: 0,
            done: false,
        }
    }

    /// The next part, `None` once the body has ended and everything was handed out. After a
    /// part, `done` tells whether the body has ended (so this was the last one).
    async fn next(&mut self) -> Result<Option<Bytes>> {
        let part_size = self.part_size as usize;
        let mut buf = BytesMut::new();
        loop {
            if !self.carry.is_empty() {
                let need = part_size - buf.len();
                if buf.is_empty() && self.carry.len() >= need {
                    let part = self.carry.split_to(need);
                    self.peek_end_if_empty().await?;
                    return Ok(Some(part));
                }
                if buf.capacity() == 0 {
                    buf.reserve(part_size);
                }
                let take = need.min(self.carry.len());
                buf.extend_from_slice(&self.carry.split_to(take));
                if buf.len() == part_size {
                    self.peek_end_if_empty().await?;
                    return Ok(Some(buf.freeze()));
                }
                continue;
            }
            if self.done {
                return Ok((!buf.is_empty()).then(|| buf.freeze()));
            }
            self.pull().await?;
        }
    }

    /// Reads the next chunk into `carry`, or marks the end.
    async fn pull(&mut self) -> Result<()> {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.received += chunk.len() as u64;
                self.size
                    .check_progress(self.received)
                    .map_err(|e| e.with_key(self.key.clone()))?;
                self.carry = chunk;
            }
            Some(Err(e)) => return Err(e.context("reading the upload body")),
            None => {
                self.size
                    .check_end(self.received)
                    .map_err(|e| e.with_key(self.key.clone()))?;
                self.done = true;
            }
        }
        Ok(())
    }

    /// After a full part with nothing carried over, reads ahead until there is more or the
    /// body ends, so `done` is exact (a body of exactly one part needs no multipart upload).
    async fn peek_end_if_empty(&mut self) -> Result<()> {
        while self.carry.is_empty() && !self.done {
            self.pull().await?;
        }
        Ok(())
    }
}

impl Store for S3 {
    type Reader = S3Stream;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.has_many_impl(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<S3Stream>> + Send {
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
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Never: objects expire (`consider_expired_after_s`, which is noticed only by a `has`)
    /// or are deleted by lifecycle rules and other clients without a word.
    fn reports_all_removals(&self) -> bool {
        false
    }

    /// A `HEAD` of the bucket (with the store's retries): failed, naming the bucket and the
    /// error, when the server does not answer, the bucket is gone or access is denied.
    async fn check_health(&self) -> HealthStatus {
        let client = &self.inner.client;
        match retry(&self.inner.config.retry, || client.head_bucket()).await {
            Ok(()) => HealthStatus::Ok,
            Err(e) => HealthStatus::failed(
                "S3",
                format!("HEAD of bucket `{}` failed: {e}", self.inner.config.bucket),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::s3::config::MIN_PART_SIZE;

    fn body(chunks: &[Bytes]) -> impl Body {
        futures_util::stream::iter(chunks.iter().cloned().map(Ok).collect::<Vec<_>>())
    }

    async fn cut(chunks: &[Bytes], size: UploadSize, part: u64) -> Result<Vec<Bytes>> {
        let mut parts = Parts::new(body(chunks), Key::from("k"), size, part);
        let mut out = Vec::new();
        while let Some(p) = parts.next().await? {
            out.push(p);
        }
        assert!(parts.done);
        Ok(out)
    }

    #[tokio::test]
    async fn parts_are_cut_at_part_size_and_big_chunks_are_sliced() {
        let big = Bytes::from(vec![7u8; 25]);
        let parts = cut(std::slice::from_ref(&big), UploadSize::Exact(25), 10)
            .await
            .unwrap();
        let lens: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [10, 10, 5]);
        assert_eq!(
            parts[0].as_ptr(),
            big.as_ptr(),
            "a chunk covering a part is sliced"
        );
        let small: Vec<Bytes> = (0..7u8).map(|i| Bytes::from(vec![i; 3])).collect();
        let parts = cut(&small, UploadSize::AtMost(100), 10).await.unwrap();
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        let want: Vec<u8> = small.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(joined, want);
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            [10, 10, 1]
        );
    }

    #[tokio::test]
    async fn a_body_of_exactly_one_part_is_done_after_it() {
        let chunks = [Bytes::from(vec![1u8; 4]), Bytes::from(vec![2u8; 6])];
        let mut parts = Parts::new(body(&chunks), Key::from("k"), UploadSize::Exact(10), 10);
        assert_eq!(parts.next().await.unwrap().unwrap().len(), 10);
        assert!(parts.done, "the end is seen without another call");
        assert!(parts.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn parts_check_the_declared_size() {
        let chunks = [Bytes::from(vec![1u8; 30])];
        let long = cut(&chunks, UploadSize::AtMost(20), 10).await.unwrap_err();
        assert_eq!(long.code(), Code::InvalidArgument);
        let short = cut(&chunks, UploadSize::Exact(31), 10).await.unwrap_err();
        assert_eq!(short.code(), Code::InvalidArgument);
        assert_eq!(short.key(), Some(&Key::from("k")));
    }

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        let store = S3::new(S3Config {
            credentials: crate::stores::s3::S3Credentials::Environment,
            part_size: MIN_PART_SIZE,
            ..S3Config::new("b")
        })
        .unwrap();
        assert_eq!(store.part_size(UploadSize::Exact(1 << 30)), MIN_PART_SIZE);
        let huge = 100 << 30; // 100 GiB needs parts over 10 MiB
        assert_eq!(
            store.part_size(UploadSize::Exact(huge)),
            huge.div_ceil(10_000)
        );
        assert_eq!(store.part_size(UploadSize::AtMost(u64::MAX)), MIN_PART_SIZE);
        // Doubling every 800 parts from the smallest part reaches 5 TiB in 10,000 parts.
        let reach: u64 = (0..12)
            .map(|k| 800 * (MIN_PART_SIZE << k).min(MAX_PART_SIZE))
            .sum();
        assert!(reach >= MAX_OBJECT_SIZE, "{reach}");
    }
}
