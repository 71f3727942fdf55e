//! The named stream adapters of [`Compress`](super::Compress): [`CompressStream`] turns an
//! upload body into the stored format block by block, [`DecompressStream`] turns stored bytes
//! back into the original ones, checking every frame.

use std::fmt;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use pin_project::pin_project;

use super::format::{
    self, END_LEN, FOOTER_LEN, Footer, HEADER_LEN, Index, KIND_END, PREFIX_LEN, Prefix, corrupt,
};
use crate::body::Body;
use crate::error::{Code, Error, Result};
use crate::key::Key;
use crate::store::UploadSize;

/// The body a [`Compress`](super::Compress) hands to its inner store's `put`: the header,
/// then one frame per `block_size` bytes of the upload (zstd, or raw when that is not
/// smaller), then the end marker, the seek index and the footer.
///
/// It holds at most one block of the upload plus one compressed frame, whatever the upload's
/// size. It enforces the declared [`UploadSize`]: a body that yields more, or ends short of
/// an exact size, makes it yield `InvalidArgument` (so the inner store keeps nothing). Blocks
/// are compressed inside `poll_next`, on the task that drives the upload.
///
/// ```
/// use casstack::wrappers::compress::{Compress, CompressConfig};
/// use casstack::{Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// // `Compress::put` builds a `CompressStream` around the body; callers never name it.
/// let store = Compress::new(Memory::default(), CompressConfig::default())?;
/// store.put_bytes("k", bytes::Bytes::from(vec![b'a'; 100_000])).await?;
/// assert!(store.get_ref().total_bytes() < 1_000);
/// # Ok(()) }
/// ```
#[pin_project(project = CompressStreamProj)]
pub struct CompressStream<B> {
    #[pin]
    body: B,
    key: Key,
    size: UploadSize,
    block_size: u32,
    compressor: zstd::bulk::Compressor<'static>,
    /// The part of the current body chunk not yet taken into a block.
    input: Bytes,
    /// A block being filled from several body chunks.
    pending: BytesMut,
    received: u64,
    body_done: bool,
    stage: CompressStage,
    index: BytesMut,
    frame_count: u32,
    /// The raw block of a frame whose prefix was just yielded.
    queued: Option<Bytes>,
    /// Where the uncompressed size is reported once the footer has been yielded.
    written: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CompressStage {
    Header,
    Frames,
    Done,
}

impl<B> fmt::Debug for CompressStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompressStream")
            .field("key", &self.key)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("received", &self.received)
            .field("frame_count", &self.frame_count)
            .finish_non_exhaustive()
    }
}

impl<B: Body> CompressStream<B> {
    /// Wraps `body`; the uncompressed size is stored into `written` when the stream ends well.
    pub(crate) fn new(
        key: Key,
        size: UploadSize,
        body: B,
        block_size: u32,
        level: i32,
        written: Arc<AtomicU64>,
    ) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(level).map_err(|e| {
            Error::new(Code::Internal, "cannot create a zstd compressor").with_source(e)
        })?;
        Ok(CompressStream {
            body,
            key,
            size,
            block_size,
            compressor,
            input: Bytes::new(),
            pending: BytesMut::new(),
            received: 0,
            body_done: false,
            stage: CompressStage::Header,
            index: BytesMut::new(),
            frame_count: 0,
            queued: None,
            written,
        })
    }
}

/// Compresses one block into a frame; raw when zstd does not make it smaller. Returns the
/// frame (prefix and zstd payload; or the prefix alone, the raw block following it as a
/// second chunk without a copy) and the payload length.
fn encode_frame(
    compressor: &mut zstd::bulk::Compressor<'static>,
    block: &Bytes,
) -> (Bytes, Option<Bytes>, u32) {
    let crc = crc32fast::hash(block);
    // Room for a payload strictly smaller than the block: zstd fails when it cannot fit,
    // and the block is then stored raw.
    let mut out = Vec::with_capacity(PREFIX_LEN + block.len().saturating_sub(1));
    out.resize(PREFIX_LEN, 0);
    let mut cursor = Cursor::new(out);
    cursor.set_position(PREFIX_LEN as u64);
    let compressed = if block.len() > 1 {
        compressor.compress_to_buffer(&block[..], &mut cursor).ok()
    } else {
        None
    };
    match compressed {
        Some(n) => {
            let mut out = cursor.into_inner();
            let mut prefix = BytesMut::with_capacity(PREFIX_LEN);
            format::encode_prefix(&mut prefix, false, n as u32, crc);
            out[..PREFIX_LEN].copy_from_slice(&prefix);
            (Bytes::from(out), None, n as u32)
        }
        None => {
            let len = block.len() as u32;
            let mut prefix = BytesMut::with_capacity(PREFIX_LEN);
            format::encode_prefix(&mut prefix, true, len, crc);
            (prefix.freeze(), Some(block.clone()), len)
        }
    }
}

impl<B: Body> Stream for CompressStream<B> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let mut this = self.project();
        let block = *this.block_size as usize;
        loop {
            match *this.stage {
                CompressStage::Done => return Poll::Ready(None),
                CompressStage::Header => {
                    *this.stage = CompressStage::Frames;
                    let header = format::encode_header(*this.block_size);
                    return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&header))));
                }
                CompressStage::Frames => {}
            }
            if let Some(raw) = this.queued.take() {
                return Poll::Ready(Some(Ok(raw)));
            }
            // A whole block straight from the body chunk, without copying it.
            if this.pending.is_empty() && this.input.len() >= block {
                let data = this.input.split_to(block);
                return Poll::Ready(Some(Ok(this.frame(data))));
            }
            if !this.input.is_empty() {
                let take = (block - this.pending.len()).min(this.input.len());
                this.pending.extend_from_slice(&this.input.split_to(take));
                if this.pending.len() == block {
                    let data = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(this.frame(data))));
                }
                continue;
            }
            if *this.body_done {
                if !this.pending.is_empty() {
                    let data = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(this.frame(data))));
                }
                *this.stage = CompressStage::Done;
                return Poll::Ready(Some(Ok(this.trailer())));
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    *this.received += chunk.len() as u64;
                    if let Err(e) = this.size.check_progress(*this.received) {
                        *this.stage = CompressStage::Done;
                        return Poll::Ready(Some(Err(e.with_key(this.key.clone()))));
                    }
                    *this.input = chunk;
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.stage = CompressStage::Done;
                    return Poll::Ready(Some(Err(e.context("reading the upload body"))));
                }
                Poll::Ready(None) => {
                    if let Err(e) = this.size.check_end(*this.received) {
                        *this.stage = CompressStage::Done;
                        return Poll::Ready(Some(Err(e.with_key(this.key.clone()))));
                    }
                    *this.body_done = true;
                }
            }
        }
    }
}

impl<B> CompressStreamProj<'_, B> {
    fn frame(&mut self, data: Bytes) -> Bytes {
        let (frame, raw, payload_len) = encode_frame(self.compressor, &data);
        *self.queued = raw;
        self.index.put_u32_le(payload_len);
        *self.frame_count += 1;
        frame
    }

    fn trailer(&mut self) -> Bytes {
        let footer = Footer {
            uncompressed_size: *self.received,
            frame_count: *self.frame_count,
            block_size: *self.block_size,
            index_crc: crc32fast::hash(self.index),
        };
        let mut out = BytesMut::with_capacity(END_LEN + self.index.len() + FOOTER_LEN);
        out.put_u8(KIND_END);
        out.extend_from_slice(self.index);
        out.extend_from_slice(&footer.encode());
        self.written.store(*self.received, Ordering::Release);
        out.freeze()
    }
}

/// The reader of [`Compress`](super::Compress): decodes stored frames back into the original
/// bytes, checking each frame's kind, length and crc32, and bounding each frame's decoded
/// size (a zstd frame that would decode past its block is refused without allocating more).
///
/// It holds at most one stored frame and one decoded frame. Anything that does not decode is
/// a `DataLoss` error naming the key, after which the stream ends; every byte it yields
/// before that belongs to a frame whose checksum matched.
///
/// ```
/// use casstack::wrappers::compress::{Compress, CompressConfig};
/// use casstack::{ByteRange, Memory, Store, StoreExt};
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Compress::new(Memory::default(), CompressConfig::default())?;
/// store.put_bytes("k", "hello, world".into()).await?;
/// let mut reader = store.get("k".into(), ByteRange::new(7, Some(5))).await?;
/// assert_eq!(reader.next().await.unwrap()?, "world");
/// # Ok(()) }
/// ```
pub struct DecompressStream<R> {
    source: Option<R>,
    source_done: bool,
    key: Key,
    max_frame_size: u32,
    input: Bytes,
    carry: BytesMut,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    mode: Mode,
}

impl<R> fmt::Debug for DecompressStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecompressStream")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("source_done", &self.source_done)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Mode {
    /// A whole object, read from its start to its end.
    Whole(Whole),
    /// Some frames in the middle, located with the index.
    Frames(Frames),
    Done,
}

#[derive(Debug)]
struct Whole {
    stage: WholeStage,
    block_size: u32,
    consumed: u64,
    yielded: u64,
    payload_lens: Vec<u32>,
    /// A frame shorter than a block was seen: it must be the last.
    short_seen: bool,
}

#[derive(Clone, Copy, Debug)]
enum WholeStage {
    Header,
    Kind,
    PrefixRest { raw: bool },
    Payload(Prefix),
    Trailer,
    ExpectEnd,
}

#[derive(Debug)]
struct Frames {
    /// (payload length, uncompressed length) of the frames still to read.
    frames: std::vec::IntoIter<(u32, u32)>,
    current: Option<(u32, u32)>,
    prefix: Option<Prefix>,
    skip: usize,
    remaining: u64,
}

enum Step {
    Yield(Bytes),
    NeedInput,
    Continue,
    Finished,
}

impl<R> DecompressStream<R> {
    /// A stream that yields nothing: the empty blob, or an empty range.
    pub(crate) fn empty(key: Key) -> Self {
        DecompressStream {
            source: None,
            source_done: true,
            key,
            max_frame_size: 0,
            input: Bytes::new(),
            carry: BytesMut::new(),
            decompressor: None,
            mode: Mode::Done,
        }
    }

    /// Decodes a whole stored object read from its first byte.
    pub(crate) fn whole(key: Key, source: R, max_frame_size: u32) -> Self {
        DecompressStream {
            source: Some(source),
            source_done: false,
            key,
            max_frame_size,
            input: Bytes::new(),
            carry: BytesMut::new(),
            decompressor: None,
            mode: Mode::Whole(Whole {
                stage: WholeStage::Header,
                block_size: 0,
                consumed: 0,
                yielded: 0,
                payload_lens: Vec::new(),
                short_seen: false,
            }),
        }
    }

    /// Decodes frames `frames` of `index` from `source`, which starts at the first of them,
    /// and yields uncompressed bytes `skip..skip + len` of what they hold.
    pub(crate) fn frames(
        key: Key,
        source: R,
        index: &Index,
        frames: std::ops::Range<u32>,
        skip: usize,
        len: u64,
    ) -> Self {
        let mut list = Vec::with_capacity(frames.len());
        for i in frames {
            list.push((index.payload_lens[i as usize], index.footer.frame_len(i)));
        }
        DecompressStream {
            source: Some(source),
            source_done: false,
            key,
            max_frame_size: index.footer.block_size,
            input: Bytes::new(),
            carry: BytesMut::new(),
            decompressor: None,
            mode: Mode::Frames(Frames {
                frames: list.into_iter(),
                current: None,
                prefix: None,
                skip,
                remaining: len,
            }),
        }
    }

    /// Exactly `n` more bytes of the stored object, if they have arrived.
    fn take(&mut self, n: usize) -> Option<Bytes> {
        if self.carry.is_empty() && self.input.len() >= n {
            return Some(self.input.split_to(n));
        }
        let want = (n - self.carry.len()).min(self.input.len());
        self.carry.extend_from_slice(&self.input.split_to(want));
        (self.carry.len() == n).then(|| self.carry.split().freeze())
    }

    fn step(&mut self) -> Result<Step> {
        match &mut self.mode {
            Mode::Done => Ok(Step::Finished),
            Mode::Whole(_) => self.step_whole(),
            Mode::Frames(_) => self.step_frames(),
        }
    }

    fn step_whole(&mut self) -> Result<Step> {
        let Mode::Whole(w) = &self.mode else {
            unreachable!("called in whole mode")
        };
        let stage = w.stage;
        let need = match stage {
            WholeStage::Header => HEADER_LEN,
            WholeStage::Kind => 1,
            WholeStage::PrefixRest { .. } => PREFIX_LEN - 1,
            WholeStage::Payload(p) => p.len as usize,
            WholeStage::Trailer => w.payload_lens.len() * format::ENTRY_LEN + FOOTER_LEN,
            WholeStage::ExpectEnd => {
                if !self.input.is_empty() {
                    return Err(corrupt("bytes after the footer"));
                }
                return Ok(if self.source_done {
                    Step::Finished
                } else {
                    Step::NeedInput
                });
            }
        };
        let Some(bytes) = self.take(need) else {
            return Ok(Step::NeedInput);
        };
        let max_frame_size = self.max_frame_size;
        let Mode::Whole(w) = &mut self.mode else {
            unreachable!("called in whole mode")
        };
        w.consumed += need as u64;
        match stage {
            WholeStage::Header => {
                w.block_size = format::decode_header(&bytes, max_frame_size)?;
                w.stage = WholeStage::Kind;
                Ok(Step::Continue)
            }
            WholeStage::Kind => {
                w.stage = match format::decode_kind(bytes[0])? {
                    Some(_) if w.short_seen => {
                        return Err(corrupt("a frame shorter than a block is not the last"));
                    }
                    Some(raw) => WholeStage::PrefixRest { raw },
                    None => WholeStage::Trailer,
                };
                Ok(Step::Continue)
            }
            WholeStage::PrefixRest { raw } => {
                let prefix = format::decode_prefix_rest(raw, &bytes, w.block_size)?;
                w.stage = WholeStage::Payload(prefix);
                Ok(Step::Continue)
            }
            WholeStage::Payload(p) => {
                let block = w.block_size;
                w.payload_lens.push(p.len);
                w.stage = WholeStage::Kind;
                let data = format::decode_frame(
                    &mut self.decompressor,
                    p.raw,
                    bytes,
                    p.crc,
                    block as usize,
                )?;
                let Mode::Whole(w) = &mut self.mode else {
                    unreachable!("called in whole mode")
                };
                if data.is_empty() {
                    return Err(corrupt("empty frame"));
                }
                w.short_seen = data.len() < block as usize;
                w.yielded += data.len() as u64;
                Ok(Step::Yield(data))
            }
            WholeStage::Trailer => {
                let (index_bytes, footer_bytes) = bytes.split_at(bytes.len() - FOOTER_LEN);
                let footer = Footer::decode(footer_bytes, w.consumed, max_frame_size)?;
                if footer.uncompressed_size != w.yielded
                    || footer.frame_count as usize != w.payload_lens.len()
                    || footer.block_size != w.block_size
                {
                    return Err(corrupt("footer does not match the frames"));
                }
                let index = Index::decode(index_bytes, footer, w.consumed)?;
                if index.payload_lens != w.payload_lens {
                    return Err(corrupt("index does not match the frames"));
                }
                w.stage = WholeStage::ExpectEnd;
                Ok(Step::Continue)
            }
            WholeStage::ExpectEnd => unreachable!("handled above"),
        }
    }

    fn step_frames(&mut self) -> Result<Step> {
        let Mode::Frames(f) = &mut self.mode else {
            unreachable!("called in frames mode")
        };
        if f.remaining == 0 {
            return Ok(Step::Finished);
        }
        let (payload_len, frame_len) = match f.current {
            Some(c) => c,
            None => match f.frames.next() {
                Some(c) => *f.current.insert(c),
                None => return Err(corrupt("frames end before the requested range")),
            },
        };
        let Some(prefix) = f.prefix else {
            let Some(bytes) = self.take(PREFIX_LEN) else {
                return Ok(Step::NeedInput);
            };
            let raw = format::decode_kind(bytes[0])?
                .ok_or_else(|| corrupt("end marker where a frame should be"))?;
            let prefix = format::decode_prefix_rest(raw, &bytes[1..], frame_len)?;
            if prefix.len != payload_len {
                return Err(corrupt(
                    "frame length differs from the index (corrupt, or replaced while reading)",
                ));
            }
            let Mode::Frames(f) = &mut self.mode else {
                unreachable!("called in frames mode")
            };
            f.prefix = Some(prefix);
            return Ok(Step::Continue);
        };
        let Some(payload) = self.take(payload_len as usize) else {
            return Ok(Step::NeedInput);
        };
        let data = format::decode_frame(
            &mut self.decompressor,
            prefix.raw,
            payload,
            prefix.crc,
            frame_len as usize,
        )?;
        if data.len() != frame_len as usize {
            return Err(corrupt(format!(
                "frame decodes to {} bytes instead of {frame_len}",
                data.len()
            )));
        }
        let Mode::Frames(f) = &mut self.mode else {
            unreachable!("called in frames mode")
        };
        f.current = None;
        f.prefix = None;
        let start = f.skip.min(data.len());
        f.skip -= start;
        let end = (start as u64 + f.remaining).min(data.len() as u64) as usize;
        f.remaining -= (end - start) as u64;
        if start == end {
            return Ok(Step::Continue);
        }
        Ok(Step::Yield(data.slice(start..end)))
    }

    fn finish(&mut self) {
        self.mode = Mode::Done;
        self.source = None;
        self.input = Bytes::new();
        self.carry = BytesMut::new();
    }
}

impl<R> Stream for DecompressStream<R>
where
    R: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Step::Yield(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Step::Continue) => continue,
                Ok(Step::Finished) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e.with_key(this.key.clone()))));
                }
                Ok(Step::NeedInput) => {}
            }
            if this.source_done {
                this.finish();
                let e = corrupt("stored object ends early (truncated)");
                return Poll::Ready(Some(Err(e.with_key(this.key.clone()))));
            }
            let Some(source) = this.source.as_mut() else {
                this.source_done = true;
                continue;
            };
            match Pin::new(source).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.input = chunk,
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.source_done = true,
            }
        }
    }
}
