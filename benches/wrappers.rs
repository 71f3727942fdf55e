//! The cost of a wrapper stack on the hot path: `Memory` alone vs
//! `Verify<ExistenceCache<FastSlow<Memory, Memory>>>` (verification off, every read a fast
//! hit, every `has` an existence-cache hit) vs the same stack behind `BoxStore`, for 1 KiB
//! `get` and one-key `has`. Prints the size of each `get` future first.
//!
//! The hot paths are ready at once, so they run without an executor (`now_or_never`): the
//! comparison is of the stores, not of a runtime.
//!
//! Run: `cargo bench --bench wrappers -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::mem::size_of_val;

use bytes::Bytes;
use casstack::{
    BoxStore, ByteRange, Digest, ExistenceCache, FastSlow, Key, Memory, Store, StoreExt, Verify,
    VerifyConfig,
};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};

const BLOB: usize = 1024;
const KEYS: usize = 1024;

type Stack = Verify<ExistenceCache<FastSlow<Memory, Memory>>>;

fn stack() -> Stack {
    Verify::new(
        ExistenceCache::new(
            FastSlow::new(Memory::default(), Memory::default(), Default::default()),
            Default::default(),
        ),
        VerifyConfig::OFF,
    )
}

fn blobs() -> Vec<(Digest, Bytes)> {
    (0..KEYS)
        .map(|i| {
            let mut bytes = vec![(i % 251) as u8; BLOB];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let data = Bytes::from(bytes);
            (Digest::of(&data), data)
        })
        .collect()
}

fn fill<S: Store>(store: &S, blobs: &[(Digest, Bytes)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (d, data) in blobs {
            store.put_bytes(*d, data.clone()).await.unwrap();
            // Teach the existence cache (a put already did; a has hits it).
            assert_eq!(store.has(*d).await.unwrap(), Some(BLOB as u64));
        }
    });
}

fn get<S: Store>(store: &S, d: Digest) -> Bytes {
    let mut reader = store
        .get(Key::Digest(d), ByteRange::FULL)
        .now_or_never()
        .expect("a hit is ready at once")
        .unwrap();
    reader.next().now_or_never().unwrap().unwrap().unwrap()
}

fn has<S: Store>(store: &S, d: Digest) -> Option<u64> {
    store
        .has(d)
        .now_or_never()
        .expect("a cached has is ready at once")
        .unwrap()
}

fn print_future_sizes() {
    let d: Key = Digest::of(b"x").into();
    let memory = Memory::default();
    let stacked = stack();
    let boxed = BoxStore::new(stack());
    eprintln!("get future sizes:");
    eprintln!(
        "  Memory                 {:>4} bytes",
        size_of_val(&memory.get(d.clone(), ByteRange::FULL))
    );
    eprintln!(
        "  stack                  {:>4} bytes",
        size_of_val(&stacked.get(d.clone(), ByteRange::FULL))
    );
    eprintln!(
        "  BoxStore<stack>        {:>4} bytes (plus the boxed future)",
        size_of_val(&boxed.get(d, ByteRange::FULL))
    );
}

fn hot_paths(c: &mut Criterion) {
    print_future_sizes();
    let blobs = blobs();
    let memory = Memory::default();
    fill(&memory, &blobs);
    let stacked = stack();
    fill(&stacked, &blobs);
    let boxed = BoxStore::new(stacked.clone());
    let fast_slow = FastSlow::new(Memory::default(), Memory::default(), Default::default());
    fill(&fast_slow, &blobs);

    let mut i = 0;
    let mut group = c.benchmark_group("wrappers get 1KiB");
    group.bench_function("Memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&memory, blobs[i].0))
        })
    });
    group.bench_function("FastSlow<Memory, Memory>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&fast_slow, blobs[i].0))
        })
    });
    group.bench_function("Verify<ExistenceCache<FastSlow<Memory, Memory>>>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&stacked, blobs[i].0))
        })
    });
    group.bench_function("BoxStore<same stack>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&boxed, blobs[i].0))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("wrappers has 1 key");
    group.bench_function("Memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(has(&memory, blobs[i].0))
        })
    });
    group.bench_function("Verify<ExistenceCache<FastSlow<Memory, Memory>>>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(has(&stacked, blobs[i].0))
        })
    });
    group.bench_function("BoxStore<same stack>", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(has(&boxed, blobs[i].0))
        })
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
