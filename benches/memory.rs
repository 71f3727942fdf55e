//! Memory store vs a hand-written baseline doing the same work: a `hashbrown` map of
//! `Digest -> Bytes` behind one `Mutex`. Also `BoxStore<Memory>`, and two threads reading at
//! once (where a single mutex serializes readers and `Memory` should not).
//!
//! Memory's futures are ready at once, so both sides run without an executor
//! (`now_or_never`): the comparison is of the stores, not of a runtime.
//!
//! Run: `cargo bench --bench memory -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use casstack::{BoxStore, ByteRange, Digest, Key, Memory, OneChunk, Store, StoreExt};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};

const BLOB: usize = 1024;
const KEYS: usize = 1024;

type Baseline = Arc<Mutex<hashbrown::HashMap<Digest, Bytes>>>;

/// The baseline map behind the `Store` trait, to separate the cost of the trait's shape
/// (key enum, reader stream, futures) from the cost of Memory's index.
#[derive(Clone)]
struct MutexMapStore(Baseline);

impl Store for MutexMapStore {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl std::future::Future<Output = casstack::Result<()>> + Send {
        let map = self.0.lock().unwrap();
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = k.digest().and_then(|d| map.get(&d)).map(|v| v.len() as u64);
        }
        std::future::ready(Ok(()))
    }

    fn get(
        &self,
        key: Key,
        _range: ByteRange,
    ) -> impl std::future::Future<Output = casstack::Result<OneChunk>> + Send {
        let hit = key
            .digest()
            .and_then(|d| self.0.lock().unwrap().get(&d).cloned());
        std::future::ready(
            hit.map(OneChunk::new)
                .ok_or_else(|| casstack::Error::not_found(key)),
        )
    }

    async fn put<B: casstack::Body>(
        &self,
        key: Key,
        size: casstack::UploadSize,
        body: B,
    ) -> casstack::Result<u64> {
        let data = casstack::collect_body(&key, size, body).await?;
        let len = data.len() as u64;
        self.0.lock().unwrap().insert(key.require_digest()?, data);
        Ok(len)
    }
}

fn blobs() -> Vec<(Digest, Bytes)> {
    (0..KEYS)
        .map(|i| {
            let data = Bytes::from(vec![(i % 251) as u8; BLOB]);
            let mut bytes = data.to_vec();
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let data = Bytes::from(bytes);
            (Digest::of(&data), data)
        })
        .collect()
}

fn filled_memory(blobs: &[(Digest, Bytes)]) -> Memory {
    let store = Memory::default();
    for (d, data) in blobs {
        store
            .put_bytes(*d, data.clone())
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    store
}

fn filled_baseline(blobs: &[(Digest, Bytes)]) -> Baseline {
    let map = Arc::new(Mutex::new(hashbrown::HashMap::new()));
    for (d, data) in blobs {
        map.lock().unwrap().insert(*d, data.clone());
    }
    map
}

fn store_get<S: Store>(store: &S, d: Digest) -> Bytes {
    let mut reader = store
        .get(Key::Digest(d), ByteRange::FULL)
        .now_or_never()
        .unwrap()
        .unwrap();
    reader.next().now_or_never().unwrap().unwrap().unwrap()
}

fn baseline_get(map: &Baseline, d: Digest) -> Bytes {
    map.lock().unwrap().get(&d).cloned().unwrap()
}

fn single_thread(c: &mut Criterion) {
    let blobs = blobs();
    let memory = filled_memory(&blobs);
    let boxed = BoxStore::new(memory.clone());
    let baseline = filled_baseline(&blobs);
    let baseline_store = MutexMapStore(baseline.clone());

    let mut i = 0;
    let mut group = c.benchmark_group("get 1KiB");
    group.bench_function("baseline Mutex<HashMap> as a Store", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(store_get(&baseline_store, blobs[i].0))
        })
    });
    group.bench_function("baseline Mutex<HashMap>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(baseline_get(&baseline, blobs[i].0))
        })
    });
    group.bench_function("Memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(store_get(&memory, blobs[i].0))
        })
    });
    group.bench_function("BoxStore<Memory>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(store_get(&boxed, blobs[i].0))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("has 1 key");
    group.bench_function("baseline Mutex<HashMap>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(baseline.lock().unwrap().get(&blobs[i].0).map(|v| v.len()))
        })
    });
    group.bench_function("Memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(memory.has(blobs[i].0).now_or_never().unwrap().unwrap())
        })
    });
    group.finish();

    // Both sides copy the body into a fresh buffer, as Memory does to avoid pinning.
    let mut group = c.benchmark_group("put 1KiB");
    group.bench_function("baseline Mutex<HashMap>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let (d, data) = &blobs[i];
            let copy = Bytes::copy_from_slice(data);
            black_box(baseline.lock().unwrap().insert(*d, copy));
        })
    });
    group.bench_function("baseline Mutex<HashMap> as a Store", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let (d, data) = &blobs[i];
            black_box(
                baseline_store
                    .put_bytes(*d, data.clone())
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            );
        })
    });
    group.bench_function("Memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let (d, data) = &blobs[i];
            black_box(
                memory
                    .put_bytes(*d, data.clone())
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            );
        })
    });
    group.finish();
}

/// Two threads reading at once: total time for `iters` reads per thread.
fn two_readers(iters: u64, read: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let read = &read;
            s.spawn(move || {
                for n in 0..iters as usize {
                    read((n * 2 + t) % KEYS);
                }
            });
        }
    });
    start.elapsed()
}

fn concurrent(c: &mut Criterion) {
    let blobs = blobs();
    let memory = filled_memory(&blobs);
    let baseline = filled_baseline(&blobs);
    let mut group = c.benchmark_group("get 1KiB, 2 threads");
    group.bench_function("baseline Mutex<HashMap>", |b| {
        b.iter_custom(|iters| {
            two_readers(iters, |i| {
                black_box(baseline_get(&baseline, blobs[i].0));
            })
        })
    });
    group.bench_function("Memory", |b| {
        b.iter_custom(|iters| {
            two_readers(iters, |i| {
                black_box(store_get(&memory, blobs[i].0));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, single_thread, concurrent);
criterion_main!(benches);
