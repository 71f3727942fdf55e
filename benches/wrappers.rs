//! The cost of a wrapper stack on the hot path: `Memory` alone vs
//! `Verify<ExistenceCache<FastSlow<Memory, Memory>>>` (verification off, every read a fast
//! hit, every `has` an existence-cache hit) vs the same stack behind `BoxStore`, for 1 KiB
//! `get` and one-key `has`. Prints the size of each `get` future first.
//!
//! The hot paths are ready at once, so they run without an executor (`now_or_never`): the
//! comparison is of the stores, not of a runtime.
//!
//! On a shared, loaded machine criterion's sequential runs drift by 2x between functions, so
//! the bench also prints an interleaved ratio table: every round times a batch of each store
//! in turn, and the fastest batch of each is kept (noise only ever adds time).
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

mod support;
use support::{Case, KEYS, blobs, fill, print_ratios};

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

fn ratio_tables() {
    let blobs = blobs();
    let memory = Memory::default();
    fill(&memory, &blobs);
    let verify = Verify::new(memory.clone(), VerifyConfig::OFF);
    let cache = ExistenceCache::new(memory.clone(), Default::default());
    let fast_slow = FastSlow::new(Memory::default(), Memory::default(), Default::default());
    fill(&fast_slow, &blobs);
    let stacked = stack();
    fill(&stacked, &blobs);
    let boxed = BoxStore::new(stacked.clone());
    let boxed_memory = BoxStore::new(memory.clone());
    print_ratios(
        "get 1KiB",
        &mut [
            Case::new("Memory", &mut |i| drop(black_box(get(&memory, blobs[i].0)))),
            Case::new("Verify<Memory>", &mut |i| {
                drop(black_box(get(&verify, blobs[i].0)))
            }),
            Case::new("ExistenceCache<Memory>", &mut |i| {
                drop(black_box(get(&cache, blobs[i].0)))
            }),
            Case::new("FastSlow<Memory, Memory>", &mut |i| {
                drop(black_box(get(&fast_slow, blobs[i].0)))
            }),
            Case::new(
                "Verify<ExistenceCache<FastSlow<Memory, Memory>>>",
                &mut |i| drop(black_box(get(&stacked, blobs[i].0))),
            ),
            Case::new("BoxStore<same stack>", &mut |i| {
                drop(black_box(get(&boxed, blobs[i].0)))
            }),
            Case::new("BoxStore<Memory>", &mut |i| {
                drop(black_box(get(&boxed_memory, blobs[i].0)))
            }),
        ],
    );
    print_ratios(
        "has 1 key",
        &mut [
            Case::new("Memory", &mut |i| {
                black_box(has(&memory, blobs[i].0));
            }),
            Case::new(
                "Verify<ExistenceCache<FastSlow<Memory, Memory>>>",
                &mut |i| {
                    black_box(has(&stacked, blobs[i].0));
                },
            ),
            Case::new("BoxStore<same stack>", &mut |i| {
                black_box(has(&boxed, blobs[i].0));
            }),
        ],
    );
}

fn hot_paths(c: &mut Criterion) {
    print_future_sizes();
    ratio_tables();
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
