//! `Verify`: checks the size and sha256 of uploads, and optionally of whole-object reads
//! (NativeLink's `verify` store, §5.7, plus read verification).
//!
//! - **Uploads.** A `put` whose declared size cannot match the digest (`Exact(n)` with
//!   `n != size`, or `AtMost(n)` with `n < size`) is refused before a byte is read. The body
//!   then passes through a [`VerifyStream`] on its way to the inner store: more bytes than the
//!   digest's size fail at once, fewer fail at the end, and a sha256 mismatch fails at the
//!   end. The failure replaces the end of the body, so the inner store aborts its write and
//!   **nothing is stored**. The code is `InvalidArgument` (the caller sent bad data).
//! - **Reads** (`verify_on_get`). A `get` of a whole object streams through a `VerifyStream`
//!   too; a copy whose size or hash is wrong ends with `DataLoss` instead of its end, so a
//!   corrupt object is never taken for a good one. Ranged reads are not checked (the hash
//!   covers the whole object).
//! - **Digests only.** Name keys are `InvalidArgument` in every operation (their content is
//!   not their hash).
//! - `has_many` and unchecked reads forward the inner store's futures unchanged.
//!
//! Layout (TOML):
//! ```toml
//! [verify]
//! verify_size = true
//! verify_hash = true
//! verify_on_get = false
//! backend.memory = {}
//! ```
//!
//! Failure codes: `InvalidArgument` (name key, size or hash mismatch on `put`), `DataLoss`
//! (size or hash mismatch on `get`), and whatever the inner store returns.

mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use serde::{Deserialize, Serialize};

pub use stream::VerifyStream;

use crate::body::Body;
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::wrappers::route::Checked;

/// Settings of a [`Verify`] wrapper.
///
/// ```
/// let config = casstack::VerifyConfig { verify_on_get: true, ..Default::default() };
/// assert!(config.verify_hash && config.verify_size);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Check that an upload has exactly the digest's size. Default: true (NativeLink's
    /// default is false; a `Verify` layer that checks nothing unless told is a trap).
    pub verify_size: bool,
    /// Check that an upload's sha256 is the digest's hash. Default: true.
    pub verify_hash: bool,
    /// Also check size and hash of every whole-object `get`. Default: false.
    pub verify_on_get: bool,
}

impl Default for VerifyConfig {
    /// Size and hash checked on `put`; reads not checked.
    fn default() -> Self {
        VerifyConfig {
            verify_size: true,
            verify_hash: true,
            verify_on_get: false,
        }
    }
}

impl VerifyConfig {
    /// A config that checks nothing: only the digest-only key rule applies.
    ///
    /// ```
    /// assert!(!casstack::VerifyConfig::OFF.verify_hash);
    /// ```
    pub const OFF: VerifyConfig = VerifyConfig {
        verify_size: false,
        verify_hash: false,
        verify_on_get: false,
    };
}

/// Checks uploads (and optionally reads) against their digest.
///
/// ```
/// use casstack::{Code, Digest, Memory, StoreExt, Verify};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let inner = Memory::default();
/// let store = Verify::new(inner.clone(), Default::default());
/// store.put_bytes(Digest::of(b"123"), "123".into()).await?;
/// let err = store.put_bytes(Digest::of(b"123"), "124".into()).await.unwrap_err();
/// assert_eq!(err.code(), Code::InvalidArgument);
/// assert_eq!(inner.len(), 1, "the bad upload stored nothing");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Verify<S> {
    inner: S,
    config: VerifyConfig,
}

impl<S> Verify<S> {
    /// Wraps `inner`.
    ///
    /// ```
    /// let v = casstack::Verify::new(casstack::Noop, Default::default());
    /// assert!(v.config().verify_hash);
    /// ```
    pub fn new(inner: S, config: VerifyConfig) -> Self {
        Verify { inner, config }
    }

    /// The settings.
    ///
    /// ```
    /// let v = casstack::Verify::new(casstack::Noop, casstack::VerifyConfig::OFF);
    /// assert!(!v.config().verify_size);
    /// ```
    pub fn config(&self) -> &VerifyConfig {
        &self.config
    }

    /// The wrapped store.
    ///
    /// ```
    /// let v = casstack::Verify::new(casstack::Memory::default(), Default::default());
    /// assert!(v.get_ref().is_empty());
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    ///
    /// ```
    /// let v = casstack::Verify::new(casstack::Noop, Default::default());
    /// let _inner: casstack::Noop = v.into_inner();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn check_put(&self, key: &Key, size: UploadSize) -> Result<Digest> {
        let digest = key.require_digest()?;
        if self.config.verify_size {
            let possible = match size {
                UploadSize::Exact(n) => n == digest.size(),
                UploadSize::AtMost(n) => n >= digest.size(),
            };
            if !possible {
                crate::observe::verify_failure("put");
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!(
                        "declared upload size {size:?} cannot match the digest's size {}",
                        digest.size()
                    ),
                )
                .with_key(digest));
            }
        }
        Ok(digest)
    }
}

fn check_keys(keys: &[Key]) -> Result<()> {
    for key in keys {
        key.require_digest()?;
    }
    Ok(())
}

impl<S: Store> Store for Verify<S> {
    type Reader = VerifyStream<S::Reader>;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        match check_keys(keys) {
            Err(e) => Checked::Failed(Some(e)),
            Ok(()) => Checked::Running(self.inner.has_many(keys, out)),
        }
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send {
        match key.require_digest() {
            Err(e) => VerifyGet::Failed(Some(e)),
            Ok(digest) => VerifyGet::Running {
                // Boxed so that a layer that does not check adds one pointer to the future, not
                // a whole digest; a checked read hashes the object, which dwarfs the allocation.
                check: if self.config.verify_on_get && range.is_full() {
                    Some(Box::new(digest))
                } else {
                    None
                },
                inner: self.inner.get(key, range),
            },
        }
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        match self.check_put(&key, size) {
            Err(e) => Checked::Failed(Some(e)),
            Ok(digest) => {
                let body = VerifyStream::new(
                    body,
                    digest,
                    self.config.verify_size,
                    self.config.verify_hash,
                    Code::InvalidArgument,
                );
                Checked::Running(self.inner.put(key, size, body))
            }
        }
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }

    /// The inner store's health.
    async fn check_health(&self) -> HealthStatus {
        self.inner.check_health().await.within("Verify")
    }
}

/// The inner store's `get`, its reader wrapped in a [`VerifyStream`].
#[pin_project(project = VerifyGetProj)]
#[derive(Debug)]
enum VerifyGet<F> {
    Failed(Option<Error>),
    Running {
        #[pin]
        inner: F,
        check: Option<Box<Digest>>,
    },
}

impl<F, R> Future for VerifyGet<F>
where
    F: Future<Output = Result<R>>,
{
    type Output = Result<VerifyStream<R>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            VerifyGetProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a VerifyGet future is not polled after it completed"))),
            VerifyGetProj::Running { inner, check } => {
                let reader = ready!(inner.poll(cx))?;
                Poll::Ready(Ok(match check.take() {
                    Some(digest) => VerifyStream::new(reader, *digest, true, true, Code::DataLoss),
                    None => VerifyStream::unchecked(reader),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::OneChunk;
    use crate::store::StoreExt;
    use crate::stores::memory::Memory;
    use crate::wrappers::test_util::{Counting, blob};
    use bytes::Bytes;
    use futures_util::stream;

    fn verify(config: VerifyConfig) -> (Memory, Verify<Memory>) {
        let inner = Memory::default();
        (inner.clone(), Verify::new(inner, config))
    }

    #[tokio::test]
    async fn sha256_of_123_succeeds_and_of_12_fails_storing_nothing() {
        let (inner, store) = verify(VerifyConfig {
            verify_size: false,
            ..Default::default()
        });
        let d = Digest::of(b"123");
        store.put_bytes(d, "123".into()).await.unwrap();
        assert_eq!(inner.has(d).await.unwrap(), Some(3));
        let d2 = Digest::new(*Digest::of(b"123").hash(), 2);
        let err = store.put_bytes(d2, "12".into()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        assert_eq!(inner.has(d2).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_hash_stores_nothing_even_in_a_chunked_upload() {
        let (inner, store) = verify(VerifyConfig::default());
        let (d, data) = blob(100, 7);
        let mut bad = data.to_vec();
        bad[99] ^= 1;
        let body = stream::iter(
            bad.chunks(7)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let err = store
            .put(d.into(), UploadSize::Exact(100), body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(inner.is_empty());
    }

    #[tokio::test]
    async fn size_check_off_accepts_a_wrong_declared_size() {
        let (_, store) = verify(VerifyConfig::OFF);
        let d = Digest::of(b"123");
        // The digest says 3 bytes; declared and sent are 4; nothing checks.
        let n = store
            .put(d.into(), UploadSize::Exact(4), OneChunk::new("1234".into()))
            .await
            .unwrap();
        assert_eq!(n, 4);
    }

    #[tokio::test]
    async fn size_check_refuses_impossible_declared_sizes_before_reading() {
        let (inner, store) = verify(VerifyConfig::default());
        let d = Digest::of(b"123");
        for size in [
            UploadSize::Exact(4),
            UploadSize::Exact(2),
            UploadSize::AtMost(2),
        ] {
            let unread = stream::iter(vec![Err(Error::new(Code::Internal, "body was read"))]);
            let err = store.put(d.into(), size, unread).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{size:?}");
        }
        assert!(inner.is_empty());
        store
            .put(
                d.into(),
                UploadSize::AtMost(10),
                OneChunk::new("123".into()),
            )
            .await
            .unwrap();
        assert_eq!(inner.has(d).await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn multi_chunk_upload_of_the_right_size_succeeds() {
        let (inner, store) = verify(VerifyConfig::default());
        let (d, data) = blob(64, 3);
        let body = stream::iter(
            data.chunks(5)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        store
            .put(d.into(), UploadSize::AtMost(64), body)
            .await
            .unwrap();
        assert_eq!(inner.get_bytes(d).await.unwrap(), data);
    }

    #[tokio::test]
    async fn too_much_data_fails_before_the_end_of_the_body() {
        let (inner, store) = verify(VerifyConfig {
            verify_hash: false,
            ..Default::default()
        });
        let d = Digest::of(b"12");
        // Three chunks of 2: the second already exceeds the size; the third must not be
        // needed to notice (it would fail with Internal if it were read).
        let body = stream::iter(vec![
            Ok(Bytes::from("12")),
            Ok(Bytes::from("34")),
            Err(Error::new(Code::Internal, "read past the point of failure")),
        ]);
        let err = store
            .put(d.into(), UploadSize::AtMost(6), body)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("more bytes"), "{err}");
        assert!(inner.is_empty());
    }

    #[tokio::test]
    async fn short_body_fails_with_size_check() {
        let (inner, store) = verify(VerifyConfig {
            verify_hash: false,
            ..Default::default()
        });
        let d = Digest::of(b"123");
        let err = store
            .put(d.into(), UploadSize::AtMost(3), OneChunk::new("12".into()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(inner.is_empty());
    }

    #[tokio::test]
    async fn names_are_refused_in_every_operation() {
        let inner = Counting::new(Memory::default());
        let store = Verify::new(inner.clone(), VerifyConfig::OFF);
        assert_eq!(
            store.put_bytes("n", "v".into()).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            store.get_bytes("n").await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            store.has("n").await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(inner.has_calls() + inner.get_calls() + inner.put_calls(), 0);
    }

    #[tokio::test]
    async fn corrupt_copy_is_data_loss_on_a_verified_read_only() {
        let inner = Memory::default();
        let d = Digest::of(b"good data");
        // Plant bad bytes under the digest, bypassing verification.
        inner.put_bytes(d, "bad  data".into()).await.unwrap();
        let checking = Verify::new(
            inner.clone(),
            VerifyConfig {
                verify_on_get: true,
                ..Default::default()
            },
        );
        let err = checking.get_bytes(d).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
        assert_eq!(err.key(), Some(&Key::from(d)));
        // A ranged read is not checked; an unchecked layer serves what is stored.
        let part = checking
            .get_range_bytes(d, ByteRange::new(0, Some(3)))
            .await
            .unwrap();
        assert_eq!(part, "bad");
        let plain = Verify::new(inner.clone(), VerifyConfig::default());
        assert_eq!(plain.get_bytes(d).await.unwrap(), "bad  data");
        // A good copy passes, and a truncated one fails on size.
        let (good, data) = blob(10, 1);
        inner.put_bytes(good, data.clone()).await.unwrap();
        assert_eq!(checking.get_bytes(good).await.unwrap(), data);
        let short = Digest::new(*good.hash(), 11);
        inner.put_bytes(short, data).await.unwrap();
        assert_eq!(
            checking.get_bytes(short).await.unwrap_err().code(),
            Code::DataLoss
        );
    }

    #[tokio::test]
    async fn empty_blob_passes_both_ways() {
        let (_, store) = verify(VerifyConfig {
            verify_on_get: true,
            ..Default::default()
        });
        store.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
        assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
        assert_eq!(store.has(Digest::EMPTY).await.unwrap(), Some(0));
    }
}
