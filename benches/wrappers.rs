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
use std::time::{Duration, Instant};

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

/// The fastest of `rounds` batches of `batch` operations, per store, interleaved; in ns/op.
fn interleaved(rounds: usize, batch: usize, ops: &mut [(&str, &mut dyn FnMut(usize))]) -> Vec<f64> {
    let mut best = vec![Duration::MAX; ops.len()];
    for _ in 0..rounds {
        for ((_, op), best) in ops.iter_mut().zip(best.iter_mut()) {
            let start = Instant::now();
            for i in 0..batch {
                op(i % KEYS);
            }
            *best = (*best).min(start.elapsed());
        }
    }
    best.iter()
        .map(|d| d.as_nanos() as f64 / batch as f64)
        .collect()
}

fn print_ratios(title: &str, ops: &mut [(&str, &mut dyn FnMut(usize))]) {
    let ns = interleaved(200, 2000, ops);
    eprintln!("{title} (interleaved, best of 200 batches of 2000):");
    for ((name, _), t) in ops.iter().zip(&ns) {
        eprintln!("  {t:>7.1} ns/op  {:>5.2}x  {name}", t / ns[0]);
    }
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
            ("Memory", &mut |i| drop(black_box(get(&memory, blobs[i].0)))),
            ("Verify<Memory>", &mut |i| {
                drop(black_box(get(&verify, blobs[i].0)))
            }),
            ("ExistenceCache<Memory>", &mut |i| {
                drop(black_box(get(&cache, blobs[i].0)))
            }),
            ("FastSlow<Memory, Memory>", &mut |i| {
                drop(black_box(get(&fast_slow, blobs[i].0)))
            }),
            (
                "Verify<ExistenceCache<FastSlow<Memory, Memory>>>",
                &mut |i| drop(black_box(get(&stacked, blobs[i].0))),
            ),
            ("BoxStore<same stack>", &mut |i| {
                drop(black_box(get(&boxed, blobs[i].0)))
            }),
            ("BoxStore<Memory>", &mut |i| {
                drop(black_box(get(&boxed_memory, blobs[i].0)))
            }),
        ],
    );
    print_ratios(
        "has 1 key",
        &mut [
            ("Memory", &mut |i| {
                black_box(has(&memory, blobs[i].0));
            }),
            (
                "Verify<ExistenceCache<FastSlow<Memory, Memory>>>",
                &mut |i| {
                    black_box(has(&stacked, blobs[i].0));
                },
            ),
            ("BoxStore<same stack>", &mut |i| {
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
