//! [`VerifyStream`]: checks size and sha256 of the bytes passing through it.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use pin_project::pin_project;
use sha2::{Digest as _, Sha256};

use crate::error::{Code, Error, Result};
use crate::key::Digest;

/// Passes chunks through unchanged while checking them against a [`Digest`].
///
/// With a size check it fails as soon as more bytes than the digest's size pass, and at the
/// end if fewer did; with a hash check it compares the sha256 of everything that passed at
/// the end. A failed check is yielded as an error *instead of* the end of the stream, so a
/// store reading it as a `put` body aborts its write, and a caller reading it as a `get`
/// reader never mistakes a corrupt object for a complete one. The error's code is the one
/// given at construction (`InvalidArgument` for uploads, `DataLoss` for reads).
///
/// ```
/// use casstack::{Code, Digest, OneChunk, wrappers::verify::VerifyStream};
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let wrong = Digest::of(b"expected");
/// let mut s = VerifyStream::new(OneChunk::new("received".into()), wrong, true, true, Code::DataLoss);
/// assert_eq!(s.next().await.unwrap().unwrap(), "received");
/// assert_eq!(s.next().await.unwrap().unwrap_err().code(), Code::DataLoss);
/// assert!(s.next().await.is_none());
/// # }
/// ```
#[pin_project]
pub struct VerifyStream<B> {
    #[pin]
    inner: B,
    expected: Digest,
    hasher: Option<Sha256>,
    check_size: bool,
    seen: u64,
    code: Code,
    done: bool,
}

impl<B> VerifyStream<B> {
    /// Checks `inner` against `expected`: its size if `check_size`, its sha256 if
    /// `check_hash`; a failure is an error with `code`. With neither check it only forwards.
    ///
    /// ```
    /// use casstack::{Code, Digest, OneChunk, wrappers::verify::VerifyStream};
    /// let s = VerifyStream::new(OneChunk::new("x".into()), Digest::of(b"x"), true, false, Code::InvalidArgument);
    /// # let _ = s;
    /// ```
    pub fn new(inner: B, expected: Digest, check_size: bool, check_hash: bool, code: Code) -> Self {
        VerifyStream {
            inner,
            expected,
            hasher: check_hash.then(Sha256::new),
            check_size,
            seen: 0,
            code,
            done: false,
        }
    }

    /// A stream that forwards `inner` without checking anything.
    ///
    /// ```
    /// use casstack::{OneChunk, wrappers::verify::VerifyStream};
    /// let s = VerifyStream::unchecked(OneChunk::new("x".into()));
    /// # let _ = s;
    /// ```
    pub fn unchecked(inner: B) -> Self {
        VerifyStream::new(inner, Digest::EMPTY, false, false, Code::Internal)
    }
}

impl<B> Stream for VerifyStream<B>
where
    B: Stream<Item = Result<Bytes>>,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let item = ready!(this.inner.poll_next(cx));
        let failure = match item {
            Some(Ok(chunk)) => {
                *this.seen += chunk.len() as u64;
                if *this.check_size && *this.seen > this.expected.size() {
                    Error::new(
                        *this.code,
                        format!(
                            "more bytes than the digest's size {}: {} so far",
                            this.expected.size(),
                            this.seen
                        ),
                    )
                } else {
                    if let Some(hasher) = this.hasher {
                        hasher.update(&chunk);
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
            Some(Err(e)) => {
                *this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            None => {
                *this.done = true;
                if *this.check_size && *this.seen != this.expected.size() {
                    Error::new(
                        *this.code,
                        format!(
                            "{} bytes, but the digest says {}",
                            this.seen,
                            this.expected.size()
                        ),
                    )
                } else {
                    match this.hasher.take() {
                        Some(hasher) => {
                            let hash: [u8; 32] = hasher.finalize().into();
                            if &hash == this.expected.hash() {
                                return Poll::Ready(None);
                            }
                            Error::new(
                                *this.code,
                                format!(
                                    "sha256 mismatch: the data hashes to {}",
                                    Digest::new(hash, *this.seen)
                                ),
                            )
                        }
                        None => return Poll::Ready(None),
                    }
                }
            }
        };
        *this.done = true;
        Poll::Ready(Some(Err(failure.with_key(*this.expected))))
    }
}

impl<B> fmt::Debug for VerifyStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyStream")
            .field("expected", &self.expected)
            .field("check_hash", &self.hasher.is_some())
            .field("check_size", &self.check_size)
            .field("seen", &self.seen)
            .finish()
    }
}
