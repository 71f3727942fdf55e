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
    /// Boxed: a stream that checks nothing is one word larger than its inner stream (the
    /// check state is over 150 bytes, and only streams that hash everything need it).
    check: Option<Box<Check>>,
    done: bool,
}

struct Check {
    expected: Digest,
    hasher: Option<Sha256>,
    check_size: bool,
    seen: u64,
    code: Code,
}

impl Check {
    /// Accounts for a chunk; the error if it makes the stream too long.
    fn chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.seen += chunk.len() as u64;
        if self.check_size && self.seen > self.expected.size() {
            return Err(self.error(format!(
                "more bytes than the digest's size {}: {} so far",
                self.expected.size(),
                self.seen
            )));
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(chunk);
        }
        Ok(())
    }

    /// The verdict at the end of the stream.
    fn end(&mut self) -> Result<()> {
        if self.check_size && self.seen != self.expected.size() {
            return Err(self.error(format!(
                "{} bytes, but the digest says {}",
                self.seen,
                self.expected.size()
            )));
        }
        if let Some(hasher) = self.hasher.take() {
            let hash: [u8; 32] = hasher.finalize().into();
            if &hash != self.expected.hash() {
                return Err(self.error(format!(
                    "sha256 mismatch: the data hashes to {}",
                    Digest::new(hash, self.seen)
                )));
            }
        }
        Ok(())
    }

    fn error(&self, message: String) -> Error {
        crate::observe::verify_failure(if self.code == Code::DataLoss {
            "get"
        } else {
            "put"
        });
        Error::new(self.code, message).with_key(self.expected)
    }
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
        let check = if check_size || check_hash {
            Some(Box::new(Check {
                expected,
                hasher: if check_hash {
                    Some(Sha256::new())
                } else {
                    None
                },
                check_size,
                seen: 0,
                code,
            }))
        } else {
            None
        };
        VerifyStream {
            inner,
            check,
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
        VerifyStream {
            inner,
            check: None,
            done: false,
        }
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
        let verdict = match (item, this.check.as_deref_mut()) {
            (Some(Ok(chunk)), Some(check)) => match check.chunk(&chunk) {
                Ok(()) => return Poll::Ready(Some(Ok(chunk))),
                Err(e) => e,
            },
            (Some(Ok(chunk)), None) => return Poll::Ready(Some(Ok(chunk))),
            (Some(Err(e)), _) => e,
            (None, Some(check)) => match check.end() {
                Ok(()) => {
                    *this.done = true;
                    return Poll::Ready(None);
                }
                Err(e) => e,
            },
            (None, None) => {
                *this.done = true;
                return Poll::Ready(None);
            }
        };
        // After an error (the inner stream's or a failed check) the stream is over.
        *this.done = true;
        Poll::Ready(Some(Err(verdict)))
    }
}

impl<B> fmt::Debug for VerifyStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.check {
            Some(check) => f
                .debug_struct("VerifyStream")
                .field("expected", &check.expected)
                .field("check_hash", &check.hasher.is_some())
                .field("check_size", &check.check_size)
                .field("seen", &check.seen)
                .finish(),
            None => f.debug_struct("VerifyStream").finish_non_exhaustive(),
        }
    }
}
