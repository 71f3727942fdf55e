//! The chunk list [`Dedup`](super::Dedup) keeps in its index store (version 1, described in
//! the module docs of [`dedup`](super)), and the streaming chunker.

use bytes::{BufMut, Bytes, BytesMut};
use fastcdc::v2020::{self, Normalization};

use crate::error::{Code, Error, Result};
use crate::key::Digest;

/// First four bytes of a chunk list.
pub(crate) const MAGIC: [u8; 4] = *b"csdx";
/// The format version this code writes and reads.
pub(crate) const VERSION: u32 = 1;
/// magic, version, total size, chunk count.
pub(crate) const HEAD_LEN: usize = 20;
/// sha256 and size of one chunk.
pub(crate) const ENTRY_LEN: usize = 36;
/// The trailing crc32.
pub(crate) const CRC_LEN: usize = 4;

/// A `DataLoss` error for a chunk list that does not decode.
pub(crate) fn corrupt(message: impl Into<String>) -> Error {
    Error::new(
        Code::DataLoss,
        format!("dedup index is corrupt: {}", message.into()),
    )
}

/// One chunk of an object: its sha256 and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) hash: [u8; 32],
    pub(crate) size: u32,
}

impl Chunk {
    /// The chunk's key in the content store.
    pub(crate) fn digest(&self) -> Digest {
        Digest::new(self.hash, u64::from(self.size))
    }
}

/// The decoded chunk list of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkList {
    pub(crate) total: u64,
    pub(crate) chunks: Vec<Chunk>,
}

impl ChunkList {
    /// The stored bytes.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEAD_LEN + self.chunks.len() * ENTRY_LEN + CRC_LEN);
        out.extend_from_slice(&MAGIC);
        out.put_u32_le(VERSION);
        out.put_u64_le(self.total);
        out.put_u32_le(self.chunks.len() as u32);
        for chunk in &self.chunks {
            out.extend_from_slice(&chunk.hash);
            out.put_u32_le(chunk.size);
        }
        let crc = crc32fast::hash(&out);
        out.put_u32_le(crc);
        out.freeze()
    }

    /// Validates and decodes stored bytes.
    pub(crate) fn decode(b: &[u8]) -> Result<ChunkList> {
        if b.len() < HEAD_LEN + CRC_LEN || b[0..4] != MAGIC {
            return Err(corrupt("bad magic (not a dedup index)"));
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(corrupt(format!(
                "unsupported format version {version} (this build reads version {VERSION})"
            )));
        }
        let (body, crc) = b.split_at(b.len() - CRC_LEN);
        if crc32fast::hash(body) != u32_at(crc, 0) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut total = [0u8; 8];
        total.copy_from_slice(&b[8..16]);
        let total = u64::from_le_bytes(total);
        let count = u32_at(b, 16) as usize;
        let entries = &body[HEAD_LEN..];
        if entries.len() != count.saturating_mul(ENTRY_LEN) {
            return Err(corrupt(format!(
                "{count} chunks do not fit {} bytes",
                entries.len()
            )));
        }
        let mut chunks = Vec::with_capacity(count);
        let mut sum = 0u64;
        for entry in entries.chunks_exact(ENTRY_LEN) {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&entry[..32]);
            let size = u32_at(entry, 32);
            if size == 0 {
                return Err(corrupt("empty chunk"));
            }
            sum += u64::from(size);
            chunks.push(Chunk { hash, size });
        }
        if sum != total {
            return Err(corrupt(format!(
                "chunks add up to {sum} bytes, the object has {total}"
            )));
        }
        Ok(ChunkList { total, chunks })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits a stream of bytes into content-defined chunks (FastCDC 2020, normalization level
/// 1), holding at most `max` bytes.
///
/// A cut depends only on the bytes from the chunk's start to at most `max` bytes later, so
/// the chunks are the same however the input is split into pieces. An object of fewer than
/// `threshold` bytes is one chunk.
#[derive(Debug)]
pub(crate) struct Chunker {
    buf: BytesMut,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    threshold: u64,
    total: u64,
}

impl Chunker {
    pub(crate) fn new(min: u32, avg: u32, max: u32, threshold: u32) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(avg as usize, Normalization::Level1);
        Chunker {
            buf: BytesMut::new(),
            min: min as usize,
            avg: avg as usize,
            max: max as usize,
            mask_s,
            mask_l,
            threshold: u64::from(threshold),
            total: 0,
        }
    }

    fn cut(&self, data: &[u8]) -> usize {
        let (_, n) = v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }

    /// Takes bytes from `input` and returns the next complete chunk, if there is one.
    /// Call again (with what is left of `input`) until it returns `None`.
    pub(crate) fn feed(&mut self, input: &mut Bytes) -> Option<Bytes> {
        loop {
            if self.buf.len() >= self.max {
                let n = self.cut(&self.buf);
                return Some(self.buf.split_to(n).freeze());
            }
            if input.is_empty() {
                return None;
            }
            if self.buf.is_empty() && input.len() >= self.max {
                // A whole window in the caller's buffer: cut it without copying.
                let n = self.cut(&input[..self.max]);
                self.total += n as u64;
                return Some(input.split_to(n));
            }
            let take = (self.max - self.buf.len()).min(input.len());
            self.total += take as u64;
            self.buf.extend_from_slice(&input.split_to(take));
        }
    }

    /// After the input ended: the next of the remaining chunks, `None` when none is left.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        if self.total < self.threshold {
            return Some(self.buf.split().freeze());
        }
        let n = self.cut(&self.buf);
        Some(self.buf.split_to(n).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_and_reject_damage() {
        let list = ChunkList {
            total: 30,
            chunks: vec![
                Chunk {
                    hash: [1; 32],
                    size: 10,
                },
                Chunk {
                    hash: [2; 32],
                    size: 20,
                },
            ],
        };
        let bytes = list.encode();
        assert_eq!(bytes.len(), HEAD_LEN + 2 * ENTRY_LEN + CRC_LEN);
        assert_eq!(ChunkList::decode(&bytes).unwrap(), list);
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x40;
            assert_eq!(
                ChunkList::decode(&bad).unwrap_err().code(),
                Code::DataLoss,
                "{i}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(ChunkList::decode(&bytes[..cut]).is_err());
        }
        let empty = ChunkList {
            total: 0,
            chunks: vec![],
        };
        assert_eq!(ChunkList::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn a_future_version_is_named() {
        let mut bytes = ChunkList {
            total: 0,
            chunks: vec![],
        }
        .encode()
        .to_vec();
        bytes[4] = 2;
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = ChunkList::decode(&bytes).unwrap_err();
        assert!(err.message().contains("version 2"), "{err}");
    }

    fn split(data: &Bytes, piece: usize, chunker: &mut Chunker) -> Vec<Bytes> {
        let mut out = Vec::new();
        for part in data.chunks(piece) {
            let mut input = Bytes::copy_from_slice(part);
            while let Some(c) = chunker.feed(&mut input) {
                out.push(c);
            }
        }
        while let Some(c) = chunker.finish() {
            out.push(c);
        }
        out
    }

    #[test]
    fn chunks_do_not_depend_on_how_the_input_arrives_and_match_fastcdc() {
        let data: Bytes = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let whole: Vec<usize> = v2020::FastCDC::new(&data, 4096, 16384, 65536)
            .map(|c| c.length)
            .collect();
        for piece in [1000, 65536, 70_000, 300_000] {
            let mut chunker = Chunker::new(4096, 16384, 65536, 0);
            let chunks = split(&data, piece, &mut chunker);
            let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert_eq!(lens, whole, "pieces of {piece}");
            assert_eq!(chunks.concat(), data.to_vec());
            assert!(chunker.buf.capacity() <= 2 * 65536);
        }
    }

    #[test]
    fn objects_below_the_threshold_are_one_chunk() {
        let data: Bytes = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut chunker = Chunker::new(4096, 16384, 65536, 65536);
        let chunks = split(&data.slice(..60_000), 1000, &mut chunker);
        assert_eq!(chunks.len(), 1);
        let mut chunker = Chunker::new(4096, 16384, 65536, 65536);
        assert!(split(&data, 1000, &mut chunker).len() > 1);
    }
}
