//! The stored byte format of [`Compress`](super::Compress), version 1 (described in the
//! module docs of [`compress`](super)). Everything here is synchronous and allocation-bounded:
//! the decoders never allocate more than the caller's `max_frame_size` or the bytes they are
//! given.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Code, Error, Result};

/// First four bytes of the header and last four of the footer.
pub(crate) const MAGIC: [u8; 4] = *b"cszs";
/// The format version this code writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Length of the header.
pub(crate) const HEADER_LEN: usize = 16;
/// Length of the fixed part in front of each frame's payload: kind, payload length, crc.
pub(crate) const PREFIX_LEN: usize = 9;
/// Length of the end-of-frames marker.
pub(crate) const END_LEN: usize = 1;
/// Length of one index entry (a frame's payload length).
pub(crate) const ENTRY_LEN: usize = 4;
/// Length of the footer.
pub(crate) const FOOTER_LEN: usize = 32;

/// Frame kind byte: a zstd frame.
pub(crate) const KIND_ZSTD: u8 = 0;
/// Frame kind byte: the block stored as is (it did not compress).
pub(crate) const KIND_RAW: u8 = 1;
/// The byte after the last frame.
pub(crate) const KIND_END: u8 = 0xFF;

/// A `DataLoss` error for a stored object that does not decode.
pub(crate) fn corrupt(message: impl Into<String>) -> Error {
    Error::new(
        Code::DataLoss,
        format!("compressed object is corrupt: {}", message.into()),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Checks `block_size` from a stored object against the reader's bound.
fn check_block_size(block_size: u32, max_frame_size: u32) -> Result<()> {
    if block_size == 0 || block_size > max_frame_size {
        return Err(corrupt(format!(
            "block size {block_size} is outside 1..={max_frame_size} (max_frame_size)"
        )));
    }
    Ok(())
}

/// The 16-byte header.
pub(crate) fn encode_header(block_size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&block_size.to_le_bytes());
    let crc = crc32fast::hash(&h[0..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Validates a header and returns its block size.
pub(crate) fn decode_header(h: &[u8], max_frame_size: u32) -> Result<u32> {
    if h.len() != HEADER_LEN || h[0..4] != MAGIC {
        return Err(corrupt("bad magic at the start (not a compressed object)"));
    }
    let version = u32_at(h, 4);
    if version != VERSION {
        return Err(corrupt(format!(
            "unsupported format version {version} (this build reads version {VERSION})"
        )));
    }
    if crc32fast::hash(&h[0..12]) != u32_at(h, 12) {
        return Err(corrupt("header checksum mismatch"));
    }
    let block_size = u32_at(h, 8);
    check_block_size(block_size, max_frame_size)?;
    Ok(block_size)
}

/// The fixed-size trailer: where to find the index and what the object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    /// Size of the original (uncompressed) object.
    pub(crate) uncompressed_size: u64,
    /// Number of frames (and of index entries).
    pub(crate) frame_count: u32,
    /// Uncompressed size of every frame but the last.
    pub(crate) block_size: u32,
    /// crc32 of the index bytes.
    pub(crate) index_crc: u32,
}

impl Footer {
    /// Length of the index the footer describes.
    pub(crate) fn index_len(&self) -> u64 {
        u64::from(self.frame_count) * ENTRY_LEN as u64
    }

    /// Uncompressed length of frame `i` (all `block_size` but the last).
    pub(crate) fn frame_len(&self, i: u32) -> u32 {
        let start = u64::from(i) * u64::from(self.block_size);
        (self.uncompressed_size - start).min(u64::from(self.block_size)) as u32
    }

    /// The 32 footer bytes.
    pub(crate) fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        f[4..12].copy_from_slice(&self.uncompressed_size.to_le_bytes());
        f[12..16].copy_from_slice(&self.frame_count.to_le_bytes());
        f[16..20].copy_from_slice(&self.block_size.to_le_bytes());
        f[20..24].copy_from_slice(&self.index_crc.to_le_bytes());
        f[24..28].copy_from_slice(&VERSION.to_le_bytes());
        f[28..32].copy_from_slice(&MAGIC);
        let crc = crc32fast::hash(&f[4..32]);
        f[0..4].copy_from_slice(&crc.to_le_bytes());
        f
    }

    /// Validates the last 32 bytes of an object of `stored_size` bytes.
    pub(crate) fn decode(f: &[u8], stored_size: u64, max_frame_size: u32) -> Result<Footer> {
        if f.len() != FOOTER_LEN || f[28..32] != MAGIC {
            return Err(corrupt("bad magic at the end (not a compressed object)"));
        }
        let version = u32_at(f, 24);
        if version != VERSION {
            return Err(corrupt(format!(
                "unsupported format version {version} (this build reads version {VERSION})"
            )));
        }
        if crc32fast::hash(&f[4..32]) != u32_at(f, 0) {
            return Err(corrupt("footer checksum mismatch"));
        }
        let footer = Footer {
            uncompressed_size: u64_at(f, 4),
            frame_count: u32_at(f, 12),
            block_size: u32_at(f, 16),
            index_crc: u32_at(f, 20),
        };
        check_block_size(footer.block_size, max_frame_size)?;
        let frames = footer
            .uncompressed_size
            .div_ceil(u64::from(footer.block_size));
        if frames != u64::from(footer.frame_count) {
            return Err(corrupt(format!(
                "footer says {} frames for {} bytes in {}-byte blocks",
                footer.frame_count, footer.uncompressed_size, footer.block_size
            )));
        }
        let fixed = (HEADER_LEN + END_LEN + FOOTER_LEN) as u64;
        let per_frame = (PREFIX_LEN + ENTRY_LEN) as u64;
        if stored_size < fixed + per_frame * u64::from(footer.frame_count) {
            return Err(corrupt(format!(
                "{stored_size} stored bytes cannot hold {} frames",
                footer.frame_count
            )));
        }
        Ok(footer)
    }
}

/// The decoded seek index: where each frame starts in the stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Index {
    /// The footer it came with.
    pub(crate) footer: Footer,
    /// Payload length of each frame.
    pub(crate) payload_lens: Vec<u32>,
}

impl Index {
    /// Validates `bytes` (exactly `footer.index_len()` of them) against the footer and the
    /// stored size. An object passes only if its frames exactly fill the space between the
    /// header and the end marker.
    pub(crate) fn decode(bytes: &[u8], footer: Footer, stored_size: u64) -> Result<Index> {
        if bytes.len() as u64 != footer.index_len() {
            return Err(corrupt("index has the wrong length"));
        }
        if crc32fast::hash(bytes) != footer.index_crc {
            return Err(corrupt("index checksum mismatch"));
        }
        let mut payload_lens = Vec::with_capacity(footer.frame_count as usize);
        let mut total = 0u64;
        for (i, entry) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
            let len = u32_at(entry, 0);
            if len > footer.frame_len(i as u32) {
                return Err(corrupt(format!(
                    "frame {i} stores {len} bytes for {} uncompressed",
                    footer.frame_len(i as u32)
                )));
            }
            total += PREFIX_LEN as u64 + u64::from(len);
            payload_lens.push(len);
        }
        let expected =
            stored_size - (HEADER_LEN + END_LEN + FOOTER_LEN) as u64 - footer.index_len();
        if total != expected {
            return Err(corrupt(format!(
                "frames take {total} bytes but the object has room for {expected}"
            )));
        }
        Ok(Index {
            footer,
            payload_lens,
        })
    }

    /// Byte offset of frame `i`'s prefix in the stored object (`i == frame_count` gives the
    /// offset of the end marker).
    pub(crate) fn frame_offset(&self, i: u32) -> u64 {
        HEADER_LEN as u64
            + self.payload_lens[..i as usize]
                .iter()
                .map(|&len| PREFIX_LEN as u64 + u64::from(len))
                .sum::<u64>()
    }
}

/// What a frame prefix says: its kind, payload length and the crc32 of its uncompressed
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    /// Stored as is (not zstd).
    pub(crate) raw: bool,
    /// Payload length.
    pub(crate) len: u32,
    /// crc32 of the uncompressed bytes.
    pub(crate) crc: u32,
}

/// Encodes a frame prefix.
pub(crate) fn encode_prefix(out: &mut BytesMut, raw: bool, len: u32, crc: u32) {
    out.put_u8(if raw { KIND_RAW } else { KIND_ZSTD });
    out.put_u32_le(len);
    out.put_u32_le(crc);
}

/// Decodes a frame's kind byte: `Some(raw)` for a frame, `None` for the end marker.
pub(crate) fn decode_kind(kind: u8) -> Result<Option<bool>> {
    match kind {
        KIND_END => Ok(None),
        KIND_ZSTD => Ok(Some(false)),
        KIND_RAW => Ok(Some(true)),
        other => Err(corrupt(format!("unknown frame kind {other:#04x}"))),
    }
}

/// Decodes the eight bytes after a frame's kind byte: payload length (at most
/// `max_payload`) and crc.
pub(crate) fn decode_prefix_rest(raw: bool, rest: &[u8], max_payload: u32) -> Result<Prefix> {
    let len = u32_at(rest, 0);
    if len > max_payload {
        return Err(corrupt(format!(
            "frame payload of {len} bytes exceeds its block of {max_payload}"
        )));
    }
    Ok(Prefix {
        raw,
        len,
        crc: u32_at(rest, 4),
    })
}

/// Decodes one frame payload into its uncompressed bytes, at most `max_len` of them, and
/// checks its crc. A zstd frame that would decode past `max_len` fails without allocating
/// more than `max_len` (the decompression-bomb guard).
pub(crate) fn decode_frame(
    decompressor: &mut Option<zstd::bulk::Decompressor<'static>>,
    raw: bool,
    payload: Bytes,
    crc: u32,
    max_len: usize,
) -> Result<Bytes> {
    let data = if raw {
        if payload.len() > max_len {
            return Err(corrupt("raw frame longer than a block"));
        }
        payload
    } else {
        let dctx = match decompressor {
            Some(d) => d,
            None => decompressor.insert(zstd::bulk::Decompressor::new().map_err(|e| {
                Error::new(Code::Internal, "cannot create a zstd decompressor").with_source(e)
            })?),
        };
        let mut out = Vec::with_capacity(max_len);
        dctx.decompress_to_buffer(&payload[..], &mut out)
            .map_err(|e| {
                corrupt(format!(
                    "zstd frame does not decode within {max_len} bytes: {e}"
                ))
            })?;
        Bytes::from(out)
    };
    if crc32fast::hash(&data) != crc {
        return Err(corrupt("frame checksum mismatch"));
    }
    Ok(data)
}

/// Upper bound of the stored size of an object of at most `limit` uncompressed bytes
/// (saturating: a body of unknown length declares `u64::MAX`).
pub(crate) fn stored_bound(limit: u64, block_size: u32) -> u64 {
    let frames = limit.div_ceil(u64::from(block_size));
    ((HEADER_LEN + END_LEN + FOOTER_LEN) as u64)
        .saturating_add(frames.saturating_mul((PREFIX_LEN + ENTRY_LEN) as u64))
        .saturating_add(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_bound_of_an_unknown_length_saturates() {
        assert_eq!(stored_bound(u64::MAX, 1024), u64::MAX);
        assert_eq!(stored_bound(u64::MAX - 10, 1 << 20), u64::MAX);
        let small = stored_bound(1000, 1024);
        assert!(small > 1000 && small < 1200, "{small}");
    }

    fn footer(size: u64, block: u32) -> Footer {
        Footer {
            uncompressed_size: size,
            frame_count: size.div_ceil(u64::from(block)) as u32,
            block_size: block,
            index_crc: 7,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = encode_header(4096);
        assert_eq!(decode_header(&h, 1 << 20).unwrap(), 4096);
        for i in 0..HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert_eq!(
                decode_header(&bad, 1 << 20).unwrap_err().code(),
                Code::DataLoss
            );
        }
        let err = decode_header(&h, 1024).unwrap_err();
        assert!(err.message().contains("max_frame_size"), "{err}");
    }

    #[test]
    fn footer_round_trips_and_rejects_damage() {
        let f = footer(10_000, 4096);
        let stored = stored_bound(10_000, 4096);
        let bytes = f.encode();
        assert_eq!(Footer::decode(&bytes, stored, 1 << 20).unwrap(), f);
        for i in 0..FOOTER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            assert_eq!(
                Footer::decode(&bad, stored, 1 << 20).unwrap_err().code(),
                Code::DataLoss
            );
        }
        assert_eq!(f.frame_len(0), 4096);
        assert_eq!(f.frame_len(2), 10_000 - 8192);
    }

    #[test]
    fn footer_with_a_future_version_names_it() {
        let mut bytes = footer(1, 4096).encode();
        bytes[24..28].copy_from_slice(&2u32.to_le_bytes());
        let err = Footer::decode(&bytes, 1000, 1 << 20).unwrap_err();
        assert!(err.message().contains("version 2"), "{err}");
    }

    #[test]
    fn footer_that_cannot_fit_in_the_object_is_refused() {
        // 2^32-1 frames claimed in a 100-byte object: refused before any allocation.
        let f = Footer {
            uncompressed_size: u64::from(u32::MAX) * 1024,
            frame_count: u32::MAX,
            block_size: 1024,
            index_crc: 0,
        };
        let err = Footer::decode(&f.encode(), 100, 1 << 20).unwrap_err();
        assert!(err.message().contains("cannot hold"), "{err}");
        let wrong_count = Footer {
            frame_count: 1,
            ..footer(10_000, 4096)
        };
        assert!(Footer::decode(&wrong_count.encode(), 1 << 20, 1 << 20).is_err());
    }

    #[test]
    fn index_must_fill_the_object_exactly() {
        let lens = [100u32, 4096, 3];
        let bytes: Vec<u8> = lens.iter().flat_map(|l| l.to_le_bytes()).collect();
        let f = Footer {
            index_crc: crc32fast::hash(&bytes),
            ..footer(8195, 4096)
        };
        let stored = (HEADER_LEN + END_LEN + FOOTER_LEN + bytes.len()) as u64
            + lens
                .iter()
                .map(|&l| (PREFIX_LEN as u64) + u64::from(l))
                .sum::<u64>();
        let index = Index::decode(&bytes, f, stored).unwrap();
        assert_eq!(index.frame_offset(0), HEADER_LEN as u64);
        assert_eq!(
            index.frame_offset(1),
            (HEADER_LEN + PREFIX_LEN + 100) as u64
        );
        assert!(Index::decode(&bytes, f, stored + 1).is_err());
        let too_long: Vec<u8> = [100u32, 4097, 3]
            .iter()
            .flat_map(|l| l.to_le_bytes())
            .collect();
        let f2 = Footer {
            index_crc: crc32fast::hash(&too_long),
            ..f
        };
        assert!(Index::decode(&too_long, f2, stored + 1).is_err());
    }

    #[test]
    fn prefixes_are_bounded() {
        let mut p = BytesMut::new();
        encode_prefix(&mut p, true, 10, 99);
        assert_eq!(decode_kind(p[0]).unwrap(), Some(true));
        assert_eq!(
            decode_prefix_rest(true, &p[1..], 10).unwrap(),
            Prefix {
                raw: true,
                len: 10,
                crc: 99
            }
        );
        assert!(decode_prefix_rest(true, &p[1..], 9).is_err());
        assert_eq!(decode_kind(KIND_END).unwrap(), None);
        assert_eq!(decode_kind(KIND_ZSTD).unwrap(), Some(false));
        assert_eq!(decode_kind(7).unwrap_err().code(), Code::DataLoss);
    }

    #[test]
    fn a_decompression_bomb_is_refused_within_its_bound() {
        let zeros = vec![0u8; 1 << 20];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(bomb.len() < 1024);
        let mut d = None;
        let crc = crc32fast::hash(&zeros);
        let err = decode_frame(&mut d, false, bomb.clone().into(), crc, 4096).unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
        let ok = decode_frame(&mut d, false, bomb.into(), crc, 1 << 20).unwrap();
        assert_eq!(ok.len(), 1 << 20);
    }
}
