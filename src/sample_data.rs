//! Deterministic sample blobs for tests and benchmarks: word-like text that compresses about
//! 3:1 with zstd, and noise that does not compress and has no repeated chunk.
//!
//! Both are pure functions of `(len, seed)`: a failing test prints its seed and the same blob
//! comes back on the next run. The output is stable across releases (the Compress format test
//! builds its fixture's contents with them), so do not change the generators.

#![cfg_attr(not(feature = "testing"), allow(dead_code, unreachable_pub))]

use bytes::{BufMut, Bytes, BytesMut};

/// The xorshift64 step both generators draw from.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `len` bytes of word-like text (keywords, punctuation, one random word in ten): compresses
/// about 3:1 with zstd level 3, like source code and logs.
///
/// ```
/// use casstack::testing::text;
///
/// let blob = text(1000, 7);
/// assert_eq!(blob.len(), 1000);
/// assert_eq!(blob, text(1000, 7));
/// assert_ne!(blob, text(1000, 8));
/// ```
pub fn text(len: usize, seed: u64) -> Bytes {
    const WORDS: &[&str] = &[
        "fn", "let", "mut", "self", "return", "match", "impl", "struct", "store", "key", "bytes",
        "error", "result", "async", "await", "digest", "frame", "block", "index", "(", ")", "{",
        "}", ";", "=", "->", "::", ".", ",", "\n", "    ",
    ];
    let mut x = seed | 1;
    let mut out = BytesMut::with_capacity(len + 16);
    while out.len() < len {
        let word = next(&mut x);
        if word.is_multiple_of(10) {
            out.put_u64_le(word);
        } else {
            out.extend_from_slice(WORDS[(word >> 8) as usize % WORDS.len()].as_bytes());
            out.put_u8(b' ');
        }
    }
    out.truncate(len);
    out.freeze()
}

/// `len` bytes that do not compress and never repeat a run long enough to be a shared chunk.
///
/// ```
/// use casstack::testing::noise;
///
/// let blob = noise(1 << 16, 1);
/// assert_eq!(blob.len(), 1 << 16);
/// assert_ne!(blob[..8], blob[8..16]);
/// ```
pub fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = BytesMut::with_capacity(len + 8);
    while out.len() < len {
        out.put_u64_le(next(&mut x));
    }
    out.truncate(len);
    out.freeze()
}
