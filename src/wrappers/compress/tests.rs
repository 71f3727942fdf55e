use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use futures_util::stream;
use proptest::prelude::*;

use super::format::{
    END_LEN, ENTRY_LEN, FOOTER_LEN, HEADER_LEN, KIND_END, KIND_ZSTD, PREFIX_LEN, encode_header,
};
use super::*;
use crate::key::Digest;
use crate::stores::memory::Memory;

use crate::sample_data::{noise, text};

fn config(block_size: u32) -> CompressConfig {
    CompressConfig {
        block_size,
        ..Default::default()
    }
}

fn store(block_size: u32) -> Compress<Memory> {
    Compress::new(Memory::default(), config(block_size)).unwrap()
}

/// Text and noise alternating, so both frame kinds appear.
fn mixed(len: usize, block: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        let part = if i % 2 == 0 {
            text(block, i as u64 + 1)
        } else {
            noise(block, i as u64 + 1)
        };
        let take = part.len().min(len - out.len());
        out.extend_from_slice(&part[..take]);
        i += 1;
    }
    out.freeze()
}

#[tokio::test]
async fn round_trips_every_size_around_block_boundaries() {
    let s = store(1024);
    for len in [0, 1, 2, 1023, 1024, 1025, 2048, 5000] {
        let blob = mixed(len, 1024);
        let key = Key::from(format!("k{len}"));
        assert_eq!(
            s.put_bytes(key.clone(), blob.clone()).await.unwrap(),
            len as u64
        );
        assert_eq!(s.has(key.clone()).await.unwrap(), Some(len as u64), "{len}");
        assert_eq!(s.get_bytes(key.clone()).await.unwrap(), blob, "{len}");
        for offset in [0, 1, 511, 1023, 1024, 1025, 2047, 4999, 5000] {
            if offset > len {
                continue;
            }
            for want in [None, Some(0), Some(1), Some(4), Some(1024), Some(3000)] {
                let got = s
                    .get_range_bytes(key.clone(), ByteRange::new(offset as u64, want))
                    .await
                    .unwrap();
                let end = want.map_or(len, |w| (offset + w as usize).min(len));
                assert_eq!(
                    got,
                    blob.slice(offset..end),
                    "len {len} at {offset} for {want:?}"
                );
            }
        }
        let err = s
            .get_range_bytes(key.clone(), ByteRange::from_offset(len as u64 + 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        assert_eq!(err.key(), Some(&key));
    }
}

#[tokio::test]
async fn large_objects_round_trip_through_the_ranged_path() {
    let s = store(4096);
    let blob = mixed(300_000, 10_000);
    s.put_bytes("big", blob.clone()).await.unwrap();
    assert!(
        s.get_ref().total_bytes() > SMALL_OBJECT,
        "exercises the index path"
    );
    assert_eq!(s.get_bytes("big").await.unwrap(), blob);
    for (offset, len) in [
        (0, 1),
        (4095, 2),
        (100_000, 50_000),
        (299_999, 10),
        (1, 299_999),
    ] {
        let got = s
            .get_range_bytes("big", ByteRange::new(offset, Some(len)))
            .await
            .unwrap();
        let end = (offset + len).min(300_000) as usize;
        assert_eq!(got, blob.slice(offset as usize..end), "{offset}+{len}");
    }
}

#[tokio::test]
async fn compressible_data_shrinks_and_incompressible_grows_by_a_few_bytes_per_block() {
    let s = store(64 << 10);
    let t = text(1 << 20, 7);
    s.put_bytes("text", t.clone()).await.unwrap();
    let text_stored = s.get_ref().total_bytes();
    assert!(text_stored < t.len() as u64 / 2, "{text_stored}");

    let s = store(64 << 10);
    let n = noise(1 << 20, 7);
    s.put_bytes("noise", n.clone()).await.unwrap();
    let blocks = 16u64;
    let overhead = s.get_ref().total_bytes() - n.len() as u64;
    assert_eq!(
        overhead,
        (HEADER_LEN + END_LEN + FOOTER_LEN) as u64 + blocks * (PREFIX_LEN + ENTRY_LEN) as u64
    );
    assert_eq!(s.get_bytes("noise").await.unwrap(), n);
}

#[tokio::test]
async fn uploads_stream_in_any_chunking() {
    let s = store(1024);
    let blob = mixed(10_000, 1024);
    // Tiny chunks, chunks straddling blocks, and one big chunk all store the same bytes.
    // `AtMost(u64::MAX)` is how a body of unknown length (chunked HTTP) is declared.
    let limits = [20_000, u64::MAX, 10_000];
    for ((name, piece), limit) in [("tiny", 7usize), ("odd", 1500), ("one", 10_000)]
        .into_iter()
        .zip(limits)
    {
        let chunks: Vec<Result<Bytes>> = blob
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let n = s
            .put(name.into(), UploadSize::AtMost(limit), stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(s.get_bytes(name).await.unwrap(), blob);
    }
    let a = s.get_ref().get_bytes("tiny").await.unwrap();
    let b = s.get_ref().get_bytes("one").await.unwrap();
    assert_eq!(
        a, b,
        "the stored bytes do not depend on how the body was chunked"
    );
}

#[tokio::test]
async fn bodies_that_lie_or_fail_store_nothing() {
    let s = store(1024);
    let blob = text(5000, 1);
    let long = s.put(
        "a".into(),
        UploadSize::Exact(4000),
        OneChunk::new(blob.clone()),
    );
    assert_eq!(long.await.unwrap_err().code(), Code::InvalidArgument);
    let short = s.put(
        "a".into(),
        UploadSize::Exact(6000),
        OneChunk::new(blob.clone()),
    );
    assert_eq!(short.await.unwrap_err().code(), Code::InvalidArgument);
    let over = s.put(
        "a".into(),
        UploadSize::AtMost(10),
        OneChunk::new(blob.clone()),
    );
    assert_eq!(over.await.unwrap_err().code(), Code::InvalidArgument);
    let failing = stream::iter(vec![
        Ok(blob.slice(0..3000)),
        Err(Error::new(Code::Aborted, "client went away")),
    ]);
    let err = s
        .put("a".into(), UploadSize::AtMost(9000), failing)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(s.has("a").await.unwrap(), None);
    assert!(s.get_ref().is_empty());
}

#[tokio::test]
async fn empty_blob_is_present_and_never_stored() {
    let s = store(1024);
    let mut out = [None, None];
    s.has_many(&[Digest::EMPTY.into(), "x".into()], &mut out)
        .await
        .unwrap();
    assert_eq!(out, [Some(0), None]);
    assert_eq!(s.get_bytes(Digest::EMPTY).await.unwrap(), "");
    s.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(s.get_ref().is_empty());
    let err = s.put_bytes(Digest::EMPTY, "x".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An empty name value is stored (header, end marker, footer) and reads as empty.
    s.put_bytes("empty", Bytes::new()).await.unwrap();
    assert_eq!(s.has("empty").await.unwrap(), Some(0));
    assert_eq!(s.get_bytes("empty").await.unwrap(), "");
    assert_eq!(
        s.get_ref().total_bytes(),
        (HEADER_LEN + END_LEN + FOOTER_LEN) as u64
    );
}

#[tokio::test]
async fn misses_are_not_found_and_bad_configs_are_refused() {
    let s = store(1024);
    let err = s.get_bytes("nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = s
        .get_range_bytes("nope", ByteRange::new(1, Some(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut short = [None];
    let err = s
        .has_many(&["a".into(), "b".into()], &mut short)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for bad in [
        CompressConfig {
            level: 99,
            ..Default::default()
        },
        CompressConfig {
            block_size: 100,
            ..Default::default()
        },
        CompressConfig {
            block_size: 8 << 20,
            ..Default::default()
        },
        CompressConfig {
            max_frame_size: 2 << 30,
            block_size: 1 << 20,
            ..Default::default()
        },
    ] {
        let err = Compress::new(Memory::default(), bad).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
}

/// Puts `bytes` straight into the inner store, as if it held them.
async fn plant(s: &Compress<Memory>, key: &str, bytes: Bytes) {
    s.get_ref().put_bytes(key, bytes).await.unwrap();
}

async fn assert_data_loss(s: &Compress<Memory>, key: &str, what: &str) {
    let err = s.get_bytes(key).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{what}: {err}");
    assert_eq!(err.key(), Some(&Key::from(key)), "{what}");
    let err = s
        .get_range_bytes(key, ByteRange::new(1, Some(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{what} (ranged): {err}");
    assert_eq!(err.key(), Some(&Key::from(key)), "{what}");
}

#[tokio::test]
async fn truncated_objects_are_data_loss_naming_the_key() {
    let s = store(1024);
    let blob = mixed(5000, 1024);
    s.put_bytes("k", blob).await.unwrap();
    let stored = s.get_ref().get_bytes("k").await.unwrap();
    for cut in [
        0,
        5,
        HEADER_LEN,
        100,
        stored.len() - FOOTER_LEN,
        stored.len() - 1,
    ] {
        plant(&s, "t", stored.slice(..cut)).await;
        assert_data_loss(&s, "t", &format!("cut at {cut}")).await;
        assert_eq!(s.has("t").await.unwrap(), None, "cut at {cut}");
    }
    // Bytes after the footer are refused too.
    let mut longer = BytesMut::from(&stored[..]);
    longer.put_u8(0);
    plant(&s, "t", longer.freeze()).await;
    assert_data_loss(&s, "t", "trailing byte").await;
    // Not a compressed object at all.
    plant(&s, "t", Bytes::from(vec![7u8; 200])).await;
    assert_data_loss(&s, "t", "garbage").await;
}

/// Builds a stored object by hand: `frames` are (kind, payload, crc of the uncompressed
/// bytes); the footer claims `size` uncompressed bytes in `block`-byte blocks.
fn craft(version: u32, block: u32, size: u64, frames: &[(u8, Vec<u8>, u32)]) -> Bytes {
    let mut out = BytesMut::new();
    let mut header = encode_header(block);
    header[4..8].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    let mut index = BytesMut::new();
    for (kind, payload, crc) in frames {
        out.put_u8(*kind);
        out.put_u32_le(payload.len() as u32);
        out.put_u32_le(*crc);
        out.extend_from_slice(payload);
        index.put_u32_le(payload.len() as u32);
    }
    out.put_u8(KIND_END);
    out.extend_from_slice(&index);
    let mut footer = Footer {
        uncompressed_size: size,
        frame_count: frames.len() as u32,
        block_size: block,
        index_crc: crc32fast::hash(&index),
    }
    .encode();
    footer[24..28].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&footer[4..32]);
    footer[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&footer);
    out.freeze()
}

#[tokio::test]
async fn crafted_objects_decode_and_wrong_versions_are_named() {
    let s = store(1024);
    let data = text(1500, 3);
    let z = zstd::bulk::compress(&data[..1024], 3).unwrap();
    let frames = [
        (KIND_ZSTD, z, crc32fast::hash(&data[..1024])),
        (1, data[1024..].to_vec(), crc32fast::hash(&data[1024..])),
    ];
    plant(&s, "ok", craft(1, 1024, 1500, &frames)).await;
    assert_eq!(
        s.get_bytes("ok").await.unwrap(),
        data,
        "the crafting is right"
    );
    plant(&s, "v2", craft(2, 1024, 1500, &frames)).await;
    assert_data_loss(&s, "v2", "version 2").await;
    let err = s.get_bytes("v2").await.unwrap_err();
    assert!(err.message().contains("version 2"), "{err}");
    assert_eq!(s.has("v2").await.unwrap(), None);
}

#[tokio::test]
async fn a_frame_decoding_past_its_block_is_data_loss() {
    let s = store(1024);
    // 1 MiB of zeros in a 1 KiB block: a decompression bomb, with a crc that would match.
    let zeros = vec![0u8; 1 << 20];
    let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
    let crc = crc32fast::hash(&zeros);
    plant(
        &s,
        "bomb",
        craft(1, 1024, 1024, &[(KIND_ZSTD, bomb.clone(), crc)]),
    )
    .await;
    assert_data_loss(&s, "bomb", "bomb").await;
    // The same in the last, shorter frame.
    let first = text(1024, 1);
    let frames = [
        (1, first.to_vec(), crc32fast::hash(&first)),
        (KIND_ZSTD, bomb, crc),
    ];
    plant(&s, "bomb2", craft(1, 1024, 1030, &frames)).await;
    let err = s
        .get_range_bytes("bomb2", ByteRange::from_offset(1024))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
}

#[tokio::test]
async fn a_block_size_above_max_frame_size_is_refused_before_allocating() {
    let inner = Memory::default();
    let writer = Compress::new(inner.clone(), config(1 << 20)).unwrap();
    let blob = mixed(3 << 20, 1 << 20);
    writer.put_bytes("k", blob.clone()).await.unwrap();
    let reader = Compress::new(
        inner,
        CompressConfig {
            block_size: 64 << 10,
            max_frame_size: 256 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    for err in [
        reader.get_bytes("k").await.unwrap_err(),
        reader
            .get_range_bytes("k", ByteRange::new(5, Some(5)))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::DataLoss);
        assert!(err.message().contains("max_frame_size"), "{err}");
    }
    assert_eq!(writer.get_bytes("k").await.unwrap(), blob);
}

#[tokio::test]
async fn inner_put_is_told_a_tight_upper_bound() {
    let spy = Spy::default();
    let s = Compress::new(spy.clone(), config(1024)).unwrap();
    s.put_bytes("k", noise(5000, 1)).await.unwrap();
    let size = spy.put_sizes.lock().unwrap()[0];
    let stored = spy.inner.total_bytes();
    assert_eq!(
        size,
        UploadSize::AtMost(stored),
        "noise fills the bound exactly"
    );
    s.put_bytes("t", text(5000, 1)).await.unwrap();
    assert_eq!(spy.put_sizes.lock().unwrap()[1], UploadSize::AtMost(stored));
}

/// A store that records what it was asked and counts the bytes its readers return.
#[derive(Clone, Default)]
struct Spy {
    inner: Memory,
    put_sizes: Arc<Mutex<Vec<UploadSize>>>,
    bytes_read: Arc<AtomicU64>,
    gets: Arc<Mutex<Vec<ByteRange>>>,
}

struct CountingReader {
    inner: OneChunk,
    count: Arc<AtomicU64>,
}

impl Stream for CountingReader {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &item {
            self.count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        item
    }
}

impl Store for Spy {
    type Reader = CountingReader;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        self.inner.has_many(keys, out).await
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<CountingReader> {
        self.gets.lock().unwrap().push(range);
        Ok(CountingReader {
            inner: self.inner.get(key, range).await?,
            count: self.bytes_read.clone(),
        })
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        self.put_sizes.lock().unwrap().push(size);
        self.inner.put(key, size, body).await
    }
}

#[tokio::test]
async fn a_small_read_in_a_64_mib_blob_fetches_at_most_two_frames() {
    let spy = Spy::default();
    let s = Compress::new(spy.clone(), CompressConfig::default()).unwrap();
    let blob = text(64 << 20, 11);
    s.put_bytes("big", blob.clone()).await.unwrap();
    let stored = spy.inner.get_bytes("big").await.unwrap();
    // The largest stored frame (prefix + payload), from the index.
    let footer = Footer::decode(
        &stored[stored.len() - FOOTER_LEN..],
        stored.len() as u64,
        4 << 20,
    )
    .unwrap();
    let index_len = footer.index_len() as usize;
    let index_at = stored.len() - FOOTER_LEN - index_len;
    let index = Index::decode(
        &stored[index_at..index_at + index_len],
        footer,
        stored.len() as u64,
    )
    .unwrap();
    let largest_frame = index
        .payload_lens
        .iter()
        .max()
        .map_or(0, |&l| l as usize + PREFIX_LEN);

    for offset in [32 << 20, (32 << 20) - 2] {
        spy.bytes_read.store(0, Ordering::Relaxed);
        spy.gets.lock().unwrap().clear();
        let got = s
            .get_range_bytes("big", ByteRange::new(offset as u64, Some(4)))
            .await
            .unwrap();
        assert_eq!(got, blob.slice(offset..offset + 4));
        let read = spy.bytes_read.load(Ordering::Relaxed) as usize;
        let budget = 2 * largest_frame + index_len + FOOTER_LEN;
        assert!(
            read <= budget,
            "read {read} inner bytes for 4, budget {budget} ({} stored)",
            stored.len()
        );
        // Footer, index, frames: three ranged gets, none of them of the whole object.
        let gets = spy.gets.lock().unwrap().clone();
        assert_eq!(gets.len(), 3, "{gets:?}");
        assert!(gets.iter().all(|r| !r.is_full()), "{gets:?}");
    }
}

#[tokio::test]
async fn a_corrupt_footer_reads_as_absent_in_has() {
    let s = store(1024);
    s.put_bytes("k", mixed(100_000, 1024)).await.unwrap();
    let stored = s.get_ref().get_bytes("k").await.unwrap();
    let mut bad = BytesMut::from(&stored[..]);
    let at = bad.len() - 10;
    bad[at] ^= 1;
    plant(&s, "k", bad.freeze()).await;
    assert_eq!(s.has("k").await.unwrap(), None);
    assert_data_loss(&s, "k", "footer bit flip").await;
}

#[tokio::test]
async fn removals_of_the_inner_store_reach_listeners() {
    let inner = Memory::new(crate::stores::memory::MemoryConfig {
        eviction_policy: crate::eviction::EvictionPolicy {
            max_bytes: 200,
            ..Default::default()
        },
    });
    let s = Compress::new(inner, config(1024)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    s.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
    s.put_bytes("a", text(100, 1)).await.unwrap();
    s.put_bytes("b", text(100, 2)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Key::from("a")]);
}

/// The fixture: a 2560-byte object in 1 KiB blocks with a zstd frame, a raw frame and a
/// short last frame.
fn fixture_input() -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&text(1024, 42));
    out.extend_from_slice(&noise(1024, 42));
    out.extend_from_slice(&text(512, 43));
    out.freeze()
}

const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/compress-v1.bin");

#[tokio::test]
async fn the_checked_in_version_1_fixture_still_decodes_and_re_encodes_identically() {
    let input = fixture_input();
    let s = Compress::new(Memory::default(), config(1024)).unwrap();
    if std::env::var_os("CASSTACK_BLESS").is_some() {
        s.put_bytes("fixture", input.clone()).await.unwrap();
        let bytes = s.get_ref().get_bytes("fixture").await.unwrap();
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/compress-v1.bin"
            ),
            &bytes,
        )
        .unwrap();
        return;
    }
    // Decoding is the stability promise: these bytes must read back forever.
    plant(&s, "fixture", Bytes::from_static(FIXTURE)).await;
    assert_eq!(s.has("fixture").await.unwrap(), Some(2560));
    assert_eq!(s.get_bytes("fixture").await.unwrap(), input);
    let part = s
        .get_range_bytes("fixture", ByteRange::new(1000, Some(1100)))
        .await
        .unwrap();
    assert_eq!(part, input.slice(1000..2100));
    assert_eq!(FIXTURE[16], KIND_ZSTD, "first frame is zstd");
    // Encoding too, as long as the bundled zstd compresses the same (regenerate with
    // CASSTACK_BLESS=1 if a zstd upgrade changes its output; decoding must not change).
    let fresh = Compress::new(Memory::default(), config(1024)).unwrap();
    fresh.put_bytes("fixture", input).await.unwrap();
    assert_eq!(fresh.get_ref().get_bytes("fixture").await.unwrap(), FIXTURE);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any damage to the stored bytes gives the right bytes or `DataLoss`: never a panic,
    /// a hang, or wrong bytes.
    #[test]
    fn corruption_gives_data_loss_or_the_right_bytes(
        len in 0usize..6000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
        offset in 0u64..6000,
        want in proptest::option::of(0u64..3000),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let s = store(1024);
            let blob = mixed(len, 700);
            s.put_bytes("k", blob.clone()).await.unwrap();
            let stored = s.get_ref().get_bytes("k").await.unwrap();
            let mut bad = BytesMut::from(&stored[..]);
            for (at, mask) in &flips {
                let i = at.index(bad.len());
                bad[i] ^= mask;
            }
            if let Some(cut) = truncate {
                let n = cut.index(bad.len());
                bad.truncate(n);
            }
            plant(&s, "k", bad.freeze()).await;
            let offset = offset.min(len as u64);
            for range in [ByteRange::FULL, ByteRange::new(offset, want)] {
                match s.get_range_bytes("k", range).await {
                    Ok(got) => {
                        let span = range.resolve(len as u64).unwrap();
                        prop_assert_eq!(got, blob.slice(span.start as usize..span.end as usize));
                    }
                    Err(e) => prop_assert_eq!(e.code(), Code::DataLoss, "{}", e),
                }
            }
            if let Some(n) = s.has("k").await.unwrap() {
                prop_assert_eq!(n, len as u64);
            }
            Ok(())
        })?;
    }
}
