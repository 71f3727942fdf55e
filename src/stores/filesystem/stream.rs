//! [`FileStream`]: the reader of a `Filesystem` get.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use tokio::task::JoinHandle;

use crate::error::{Code, Error, Result};
use crate::key::Key;

/// Streams a byte range of one file in chunks of `read_buffer_size`, each read on tokio's
/// blocking pool straight into the chunk it yields (no intermediate buffer).
///
/// The file stays open for the life of the stream, so a read that has started keeps working
/// when its object is evicted or replaced (an unlinked file stays readable while open).
/// A file that turns out shorter than it was when opened ends the stream with `DataLoss`.
///
/// ```
/// use casstack::{Filesystem, FilesystemConfig, StoreExt, Store, ByteRange};
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let content = dir.path().join("c").to_str().unwrap().to_owned();
/// # let temp = dir.path().join("t").to_str().unwrap().to_owned();
/// let store = Filesystem::open(FilesystemConfig {
///     read_buffer_size: 2,
///     ..FilesystemConfig::new(content, temp)
/// }).await?;
/// store.put_bytes("k", "hello".into()).await?;
/// let chunks: Vec<_> = store.get("k".into(), ByteRange::FULL).await?.collect().await;
/// assert_eq!(chunks.len(), 3); // "he", "ll", "o"
/// # Ok(()) }
/// ```
pub struct FileStream {
    /// Bytes read while opening (the first chunk), yielded before any further read.
    first: Option<Bytes>,
    state: State,
    offset: u64,
    remaining: u64,
    chunk: usize,
    key: Key,
}

enum State {
    Idle(File),
    Reading(JoinHandle<(File, io::Result<Bytes>)>),
    Done,
}

impl FileStream {
    /// A stream that yields nothing (the empty blob, an empty range).
    pub(crate) fn empty(key: Key) -> Self {
        FileStream {
            first: None,
            state: State::Done,
            offset: 0,
            remaining: 0,
            chunk: 1,
            key,
        }
    }

    /// A stream of `remaining` bytes of `file` from `offset`, `first` already read from
    /// just before `offset`.
    pub(crate) fn new(
        key: Key,
        file: File,
        first: Bytes,
        offset: u64,
        remaining: u64,
        chunk: usize,
    ) -> Self {
        FileStream {
            first: (!first.is_empty()).then_some(first),
            state: if remaining == 0 {
                State::Done
            } else {
                State::Idle(file)
            },
            offset,
            remaining,
            chunk: chunk.max(1),
            key,
        }
    }

    fn truncated(&self) -> Error {
        Error::new(
            Code::DataLoss,
            format!(
                "file ended {} bytes early: it was changed behind the store's back",
                self.remaining
            ),
        )
        .with_key(self.key.clone())
    }
}

/// Reads up to `len` bytes of `file` at `offset` into a fresh buffer.
pub(crate) fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

impl Stream for FileStream {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Idle(file) => {
                    let (offset, len) = (this.offset, this.remaining.min(this.chunk as u64));
                    this.state = State::Reading(tokio::task::spawn_blocking(move || {
                        let read = read_chunk(&file, offset, len as usize);
                        (file, read)
                    }));
                }
                State::Reading(mut task) => {
                    let polled = Pin::new(&mut task).poll(cx);
                    let Poll::Ready(joined) = polled else {
                        this.state = State::Reading(task);
                        return Poll::Pending;
                    };
                    let (file, read) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            let err = Error::new(Code::Internal, "a file read task failed")
                                .with_key(this.key.clone())
                                .with_source(e);
                            return Poll::Ready(Some(Err(err)));
                        }
                    };
                    let bytes = match read {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            let err = Error::from(e)
                                .context("reading a stored file")
                                .with_key(this.key.clone());
                            return Poll::Ready(Some(Err(err)));
                        }
                    };
                    if bytes.is_empty() {
                        return Poll::Ready(Some(Err(this.truncated())));
                    }
                    this.offset += bytes.len() as u64;
                    this.remaining -= bytes.len() as u64;
                    if this.remaining > 0 {
                        this.state = State::Idle(file);
                    }
                    return Poll::Ready(Some(Ok(bytes)));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let later = self.remaining.div_ceil(self.chunk as u64);
        let n = usize::from(self.first.is_some()) + usize::try_from(later).unwrap_or(usize::MAX);
        (usize::from(n > 0), Some(n))
    }
}

impl fmt::Debug for FileStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStream")
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}
