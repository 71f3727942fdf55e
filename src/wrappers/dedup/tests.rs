use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures_util::stream;

use super::*;
use crate::body::OneChunk;
use crate::stores::memory::Memory;

use crate::sample_data::noise;

fn small_config() -> DedupConfig {
    DedupConfig {
        min_size: 2 << 10,
        normal_size: 8 << 10,
        max_size: 16 << 10,
        small_blob_threshold: 4 << 10,
        max_concurrent_fetches: 3,
    }
}

fn store() -> Dedup<Memory, Memory> {
    Dedup::new(Memory::default(), Memory::default(), small_config()).unwrap()
}

#[tokio::test]
async fn round_trips_and_ranges_across_chunk_boundaries() {
    let s = store();
    for len in [0usize, 1, 4095, 4096, 20_000, 200_000] {
        let blob = noise(len, len as u64);
        let key = Key::from(format!("k{len}"));
        assert_eq!(
            s.put_bytes(key.clone(), blob.clone()).await.unwrap(),
            len as u64
        );
        assert_eq!(s.has(key.clone()).await.unwrap(), Some(len as u64));
        assert_eq!(s.get_bytes(key.clone()).await.unwrap(), blob);
        let list = s.read_list(&key).await.unwrap();
        // Reads starting and ending at every chunk boundary, and one byte either side.
        let mut bounds = vec![0u64];
        for c in &list.chunks {
            bounds.push(bounds.last().unwrap() + u64::from(c.size));
        }
        for &b in &bounds {
            for offset in [b.saturating_sub(1), b, b + 1] {
                if offset > len as u64 {
                    continue;
                }
                for want in [None, Some(1), Some(2), Some(10_000)] {
                    let got = s
                        .get_range_bytes(key.clone(), ByteRange::new(offset, want))
                        .await
                        .unwrap();
                    let end = want.map_or(len as u64, |w| (offset + w).min(len as u64));
                    assert_eq!(got, blob.slice(offset as usize..end as usize));
                }
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
async fn small_blobs_are_one_chunk_and_large_ones_are_chunked_within_bounds() {
    let s = store();
    s.put_bytes("small", noise(4095, 1)).await.unwrap();
    assert_eq!(s.read_list(&"small".into()).await.unwrap().chunks.len(), 1);
    s.put_bytes("large", noise(200_000, 2)).await.unwrap();
    let list = s.read_list(&"large".into()).await.unwrap();
    assert!(list.chunks.len() > 8, "{}", list.chunks.len());
    let (last, rest) = list.chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| (2 << 10..=16 << 10).contains(&c.size)));
    assert!(last.size <= 16 << 10);
}

#[tokio::test]
async fn chunks_are_stored_once_and_only_when_absent() {
    let content = Spy::default();
    let s = Dedup::new(Memory::default(), content.clone(), small_config()).unwrap();
    let blob = noise(100_000, 3);
    s.put_bytes("a", blob.clone()).await.unwrap();
    let first = content.puts.load(Ordering::Relaxed);
    assert!(first > 1);
    assert_eq!(content.inner.len(), first);
    s.put_bytes("b", blob.clone()).await.unwrap();
    assert_eq!(
        content.puts.load(Ordering::Relaxed),
        first,
        "no chunk written twice"
    );
    assert_eq!(s.get_bytes("b").await.unwrap(), blob);
}

#[tokio::test]
async fn dedup_saves_space_on_an_insertion_in_the_middle() {
    // Two 16 MiB blobs, the second with 100 bytes inserted in the middle, default sizes.
    let s = Dedup::new(Memory::default(), Memory::default(), DedupConfig::default()).unwrap();
    let one = noise(16 << 20, 9);
    let mut two = BytesMut::with_capacity(one.len() + 100);
    two.extend_from_slice(&one[..8 << 20]);
    two.extend_from_slice(&[0xAB; 100]);
    two.extend_from_slice(&one[8 << 20..]);
    let two = two.freeze();
    s.put_bytes("one", one.clone()).await.unwrap();
    s.put_bytes("two", two.clone()).await.unwrap();
    let stored = s.content_store().total_bytes() + s.index_store().total_bytes();
    let ratio = stored as f64 / one.len() as f64;
    println!("two 16 MiB blobs one insertion apart: {stored} bytes stored, {ratio:.4}x one blob");
    assert!(ratio < 1.2, "{ratio}");
    assert_eq!(s.get_bytes("two").await.unwrap(), two);
    assert_eq!(s.get_bytes("one").await.unwrap(), one);
}

#[tokio::test]
async fn a_failed_upload_leaves_no_index_entry() {
    let s = store();
    let blob = noise(100_000, 4);
    let failing = stream::iter(vec![
        Ok(blob.slice(..60_000)),
        Err(Error::new(Code::Aborted, "client went away")),
    ]);
    let err = s
        .put("k".into(), UploadSize::AtMost(200_000), failing)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(s.index_store().is_empty());
    assert!(
        !s.content_store().is_empty(),
        "chunks written so far may stay"
    );
    assert_eq!(s.has("k").await.unwrap(), None);
    assert_eq!(s.get_bytes("k").await.unwrap_err().code(), Code::NotFound);

    for (size, body) in [
        (UploadSize::Exact(99_999), blob.clone()),
        (UploadSize::Exact(100_001), blob.clone()),
        (UploadSize::AtMost(10), blob.clone()),
    ] {
        let err = s
            .put("k".into(), size, OneChunk::new(body))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{size:?}");
        assert_eq!(err.key(), Some(&Key::from("k")));
    }
    assert!(s.index_store().is_empty());
}

#[tokio::test]
async fn has_needs_every_chunk_and_a_missing_chunk_fails_the_read() {
    let s = store();
    let blob = noise(50_000, 5);
    s.put_bytes("k", blob).await.unwrap();
    let list = s.read_list(&"k".into()).await.unwrap();
    let last = list.chunks.last().unwrap().digest();
    assert!(s.content_store().remove(&last.into()));
    assert_eq!(s.has("k").await.unwrap(), None);
    let err = s.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.key(), Some(&Key::from("k")));
    assert!(err.message().contains("missing"), "{err}");
    // A range that avoids the missing chunk still reads.
    let first = u64::from(list.chunks[0].size);
    s.get_range_bytes("k", ByteRange::new(0, Some(first)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_chunk_list_is_data_loss_and_absent_for_has() {
    let s = store();
    s.put_bytes("k", noise(50_000, 6)).await.unwrap();
    let list = s.index_store().get_bytes("k").await.unwrap();
    let mut bad = BytesMut::from(&list[..]);
    bad[30] ^= 1;
    s.index_store().put_bytes("k", bad.freeze()).await.unwrap();
    assert_eq!(s.has("k").await.unwrap(), None);
    let err = s.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(err.key(), Some(&Key::from("k")));
    s.index_store()
        .put_bytes("k", list.slice(..list.len() - 1))
        .await
        .unwrap();
    assert_eq!(s.get_bytes("k").await.unwrap_err().code(), Code::DataLoss);
}

#[tokio::test]
async fn a_chunk_of_the_wrong_length_is_data_loss() {
    let s = store();
    s.put_bytes("k", noise(3000, 7)).await.unwrap();
    let chunk = s.read_list(&"k".into()).await.unwrap().chunks[0].digest();
    s.content_store()
        .put_bytes(chunk, Bytes::from_static(b"short"))
        .await
        .unwrap();
    let err = s.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(err.key(), Some(&Key::from("k")));
}

#[tokio::test]
async fn reads_fetch_only_the_chunks_they_need_a_few_at_a_time() {
    let content = Spy::default();
    let s = Dedup::new(Memory::default(), content.clone(), small_config()).unwrap();
    let blob = noise(400_000, 8);
    s.put_bytes("k", blob.clone()).await.unwrap();
    let list = s.read_list(&"k".into()).await.unwrap();
    let first = u64::from(list.chunks[0].size);

    content.gets.lock().unwrap().clear();
    let got = s
        .get_range_bytes("k", ByteRange::new(first - 2, Some(4)))
        .await
        .unwrap();
    assert_eq!(got, blob.slice(first as usize - 2..first as usize + 2));
    let gets = content.gets.lock().unwrap().clone();
    assert_eq!(
        gets,
        vec![
            ByteRange::new(first - 2, Some(2)),
            ByteRange::new(0, Some(2))
        ],
        "two chunks, each only the part needed"
    );

    content.max_in_flight.store(0, Ordering::Relaxed);
    assert_eq!(s.get_bytes("k").await.unwrap(), blob);
    let peak = content.max_in_flight.load(Ordering::Relaxed);
    assert_eq!(
        peak, 3,
        "max_concurrent_fetches bounds the fetches and is reached"
    );
}

#[tokio::test]
async fn empty_blob_is_present_and_never_stored() {
    let s = store();
    let mut out = [None, None];
    s.has_many(&[Digest::EMPTY.into(), "x".into()], &mut out)
        .await
        .unwrap();
    assert_eq!(out, [Some(0), None]);
    assert_eq!(s.get_bytes(Digest::EMPTY).await.unwrap(), "");
    s.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(s.index_store().is_empty() && s.content_store().is_empty());
    let err = s.put_bytes(Digest::EMPTY, "x".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    s.put_bytes("empty", Bytes::new()).await.unwrap();
    assert_eq!(s.has("empty").await.unwrap(), Some(0));
    assert_eq!(s.get_bytes("empty").await.unwrap(), "");
    let mut short = [None];
    let err = s
        .has_many(&["a".into(), "b".into()], &mut short)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_configs_are_refused() {
    let ok = small_config();
    for bad in [
        DedupConfig { min_size: 10, ..ok },
        DedupConfig {
            normal_size: 100,
            ..ok
        },
        DedupConfig {
            max_size: 32 << 20,
            ..ok
        },
        DedupConfig {
            min_size: 8 << 10,
            ..ok
        },
        DedupConfig {
            normal_size: 16 << 10,
            ..ok
        },
        DedupConfig {
            small_blob_threshold: 17 << 10,
            ..ok
        },
        DedupConfig {
            max_concurrent_fetches: 0,
            ..ok
        },
    ] {
        let err = Dedup::new(Memory::default(), Memory::default(), bad).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
}

#[tokio::test]
async fn removals_of_both_stores_reach_listeners() {
    let s = store();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    s.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
    s.put_bytes("k", noise(100, 1)).await.unwrap();
    s.index_store().remove(&"k".into());
    let chunk = Digest::of(&noise(100, 1));
    s.content_store().remove(&chunk.into());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Key::from("k"), Key::from(chunk)]
    );
}

/// A content store that counts puts, records ranged gets, and measures how many gets run
/// at once (each get yields to the scheduler a few times before answering).
#[derive(Clone, Default)]
struct Spy {
    inner: Memory,
    puts: Arc<AtomicUsize>,
    gets: Arc<Mutex<Vec<ByteRange>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Store for Spy {
    type Reader = OneChunk;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        self.inner.has_many(keys, out).await
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<OneChunk> {
        self.gets.lock().unwrap().push(range);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.get(key, range).await
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put(key, size, body).await
    }
}

// Keep the reader's type small and `Unpin` whatever the content store is.
#[test]
fn reader_is_unpin_and_send() {
    fn check<T: Unpin + Send + 'static>() {}
    check::<DedupStream<Spy>>();
    let _ = Pin::new(&mut DedupStream::new(
        Memory::default(),
        "k".into(),
        Vec::new(),
        1,
    ));
}

#[tokio::test]
async fn an_existence_cache_above_never_hides_a_lost_chunk() {
    use crate::{ExistenceCache, StoreSpec};
    let s = store();
    assert!(!s.reports_all_removals());
    let cache = ExistenceCache::new(s.clone(), Default::default());
    let blob = noise(20_000, 7);
    let d = Digest::of(&blob);
    cache.put_bytes(d, blob.clone()).await.unwrap();
    assert_eq!(cache.has(d).await.unwrap(), Some(20_000));
    // The content store loses one chunk; it reports the chunk's digest, not the object's.
    let list = s.read_list(&d.into()).await.unwrap();
    assert!(list.chunks.len() > 1);
    s.content_store()
        .remove(&Key::Digest(list.chunks[1].digest()));
    assert_eq!(cache.has(d).await.unwrap(), None, "no stale positive");
    // Uploading the object again is not skipped, so it is whole again.
    cache.put_bytes(d, blob.clone()).await.unwrap();
    assert_eq!(s.get_bytes(d).await.unwrap(), blob);
    // A layout refuses the combination unless answers expire.
    let layout =
        "existence_cache.backend.dedup = { index_store.memory = {}, content_store.memory = {} }";
    let err = crate::BoxStore::from_spec(&StoreSpec::from_toml(layout).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("existence_cache: the backend (dedup) does not report")
            && err.message().contains("max_seconds"),
        "{err}"
    );
    let bounded = format!("{layout}\nexistence_cache.eviction_policy.max_seconds = 60");
    crate::BoxStore::from_spec(&StoreSpec::from_toml(&bounded).unwrap())
        .await
        .unwrap();
}
