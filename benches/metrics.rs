//! The cost of metering: the stack `Verify<ExistenceCache<FastSlow<Memory, Memory>>>`
//! (verification off, every read a fast hit, every `has` an existence-cache hit) bare vs with
//! a `Metrics` layer around every one of its five stores, with no recorder and with a
//! recorder installed, for 1 KiB `get` and one-key `has`; and the cost of one `debug` span
//! when the level is off (no subscriber, and a subscriber at `info`).
//!
//! The recorder is a registry of atomics (metrics-util's `Registry`, what the Prometheus
//! exporter keeps its handles in), whose histograms only count and sum: it costs what a real
//! exporter costs per operation, without keeping every sample.
//!
//! The hot paths are ready at once, so they run without an executor (`now_or_never`). Like
//! `benches/wrappers.rs`, it prints an interleaved best-of ratio table before criterion runs,
//! because sequential runs on a shared machine drift.
//!
//! Run: `cargo bench --bench metrics --features tracing -- --warm-up-time 1 --measurement-time 3`
//! (`--features metrics` instead measures the same stacks with the spans compiled out).

use std::hint::black_box;
use std::mem::size_of_val;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use casstack::{
    ByteRange, Digest, ExistenceCache, FastSlow, Key, Memory, Metrics, MetricsConfig, Store,
    StoreExt, Verify, VerifyConfig,
};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
#[cfg(feature = "tracing")]
use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt as _};

mod support;
#[cfg(feature = "tracing")]
use support::{BLOB, interleaved};
use support::{Case, Guard, KEYS, blobs, fill, print_ratios};

type Bare = Verify<ExistenceCache<FastSlow<Memory, Memory>>>;
type Metered =
    Metrics<Verify<Metrics<ExistenceCache<Metrics<FastSlow<Metrics<Memory>, Metrics<Memory>>>>>>>;

fn bare() -> Bare {
    Verify::new(
        ExistenceCache::new(
            FastSlow::new(Memory::default(), Memory::default(), Default::default()),
            Default::default(),
        ),
        VerifyConfig::OFF,
    )
}

fn named<S>(name: &str, inner: S) -> Metrics<S> {
    Metrics::new(inner, MetricsConfig { name: name.into() })
}

fn metered() -> Metered {
    named(
        "verify",
        Verify::new(
            named(
                "existence_cache",
                ExistenceCache::new(
                    named(
                        "fast_slow",
                        FastSlow::new(
                            named("fast", Memory::default()),
                            named("slow", Memory::default()),
                            Default::default(),
                        ),
                    ),
                    Default::default(),
                ),
            ),
            VerifyConfig::OFF,
        ),
    )
}

/// A histogram that only counts and sums.
#[derive(Default)]
struct Summary {
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl HistogramFn for Summary {
    fn record(&self, value: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

struct Atomics;

impl Storage<metrics::Key> for Atomics {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Summary>;

    fn counter(&self, _: &metrics::Key) -> Self::Counter {
        Arc::default()
    }

    fn gauge(&self, _: &metrics::Key) -> Self::Gauge {
        Arc::default()
    }

    fn histogram(&self, _: &metrics::Key) -> Self::Histogram {
        Arc::default()
    }
}

/// A recorder that keeps its handles in a registry, as an exporter does.
struct Bench(Registry<metrics::Key, Atomics>);

impl Bench {
    fn new() -> Self {
        Bench(Registry::new(Atomics))
    }

    /// Sum of every counter named `name`.
    fn total(&self, name: &str) -> u64 {
        let mut total = 0;
        self.0.visit_counters(|key, counter| {
            if key.name() == name {
                total += counter.load(Ordering::Relaxed);
            }
        });
        total
    }
}

impl Recorder for Bench {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &metrics::Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
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

/// One span as `Metrics` opens it for a `get`, entered and left.
#[cfg(feature = "tracing")]
fn one_span(key: &Key, range: ByteRange) {
    let span = tracing::debug_span!(
        "casstack.get",
        store = "bench",
        key = %key,
        offset = range.offset,
        len = range.len,
        outcome = tracing::field::Empty,
    );
    let _entered = span.enter();
    black_box(&span);
}

fn ratio_tables() {
    let blobs = blobs();
    let recorder = Bench::new();
    let plain = bare();
    fill(&plain, &blobs);
    let quiet = metered();
    fill(&quiet, &blobs);
    let recorded = metrics::with_local_recorder(&recorder, metered);
    metrics::with_local_recorder(&recorder, || fill(&recorded, &blobs));
    let memory = Memory::default();
    fill(&memory, &blobs);
    let one = named("one", memory.clone());
    let one_recorded = metrics::with_local_recorder(&recorder, || named("one", memory.clone()));
    let record = || Box::new(metrics::set_default_local_recorder(&recorder)) as Box<dyn Guard + '_>;

    let d: Key = blobs[0].0.into();
    eprintln!("get future sizes:");
    eprintln!(
        "  bare stack             {:>4} bytes",
        size_of_val(&plain.get(d.clone(), ByteRange::FULL))
    );
    eprintln!(
        "  metered stack          {:>4} bytes",
        size_of_val(&quiet.get(d.clone(), ByteRange::FULL))
    );
    eprintln!(
        "  Metrics<Memory>        {:>4} bytes (Memory alone: {} bytes)",
        size_of_val(&named("m", Memory::default()).get(d.clone(), ByteRange::FULL)),
        size_of_val(&Memory::default().get(d, ByteRange::FULL)),
    );

    print_ratios(
        "get 1KiB",
        &mut [
            Case::new("bare stack, no recorder", &mut |i| {
                drop(black_box(get(&plain, blobs[i].0)))
            }),
            Case::new("metered stack (5 Metrics layers), no recorder", &mut |i| {
                drop(black_box(get(&quiet, blobs[i].0)))
            }),
            Case {
                name: "bare stack, recorder installed (wrapper counters only)",
                enter: Some(&record),
                op: &mut |i| drop(black_box(get(&plain, blobs[i].0))),
            },
            Case {
                name: "metered stack, recorder installed",
                enter: Some(&record),
                op: &mut |i| drop(black_box(get(&recorded, blobs[i].0))),
            },
            Case::new("Memory", &mut |i| drop(black_box(get(&memory, blobs[i].0)))),
            Case::new("Metrics<Memory>, no recorder", &mut |i| {
                drop(black_box(get(&one, blobs[i].0)))
            }),
            Case {
                name: "Metrics<Memory>, recorder installed",
                enter: Some(&record),
                op: &mut |i| drop(black_box(get(&one_recorded, blobs[i].0))),
            },
        ],
    );
    print_ratios(
        "has 1 key",
        &mut [
            Case::new("bare stack, no recorder", &mut |i| {
                black_box(has(&plain, blobs[i].0));
            }),
            Case::new("metered stack (5 Metrics layers), no recorder", &mut |i| {
                black_box(has(&quiet, blobs[i].0));
            }),
            Case {
                name: "bare stack, recorder installed (wrapper counters only)",
                enter: Some(&record),
                op: &mut |i| {
                    black_box(has(&plain, blobs[i].0));
                },
            },
            Case {
                name: "metered stack, recorder installed",
                enter: Some(&record),
                op: &mut |i| {
                    black_box(has(&recorded, blobs[i].0));
                },
            },
            Case::new("Memory", &mut |i| {
                black_box(has(&memory, blobs[i].0));
            }),
            Case::new("Metrics<Memory>, no recorder", &mut |i| {
                black_box(has(&one, blobs[i].0));
            }),
            Case {
                name: "Metrics<Memory>, recorder installed",
                enter: Some(&record),
                op: &mut |i| {
                    black_box(has(&one_recorded, blobs[i].0));
                },
            },
        ],
    );
    #[cfg(feature = "tracing")]
    spans(&blobs);
    eprintln!(
        "recorder saw {} operations, {} bytes read",
        recorder.total("casstack_operations_total"),
        recorder.total("casstack_read_bytes_total")
    );
}

/// The per-call cost of one debug span when debug is off.
#[cfg(feature = "tracing")]
fn spans(blobs: &[(Digest, Bytes)]) {
    let range = ByteRange::new(0, Some(BLOB as u64));
    let keys: Vec<Key> = blobs.iter().map(|(d, _)| Key::from(*d)).collect();
    let info = tracing_subscriber::registry().with(LevelFilter::INFO);
    let debug = tracing_subscriber::registry().with(LevelFilter::DEBUG);
    let mut no_span = |i: usize| {
        black_box(&keys[i]);
    };
    let mut span = |i: usize| one_span(&keys[i], range);
    let ns = interleaved(
        200,
        2000,
        &mut [
            Case::new("no span", &mut no_span),
            Case::new("span, no subscriber", &mut span),
        ],
    );
    let info_ns = tracing::subscriber::with_default(info, || {
        interleaved(200, 2000, &mut [Case::new("", &mut span)])
    });
    let debug_ns = tracing::subscriber::with_default(debug, || {
        interleaved(50, 2000, &mut [Case::new("", &mut span)])
    });
    eprintln!("one debug span (built, entered, left), interleaved best of 200 batches of 2000:");
    eprintln!("  {:>7.2} ns/op  no span", ns[0]);
    eprintln!("  {:>7.2} ns/op  span, no subscriber", ns[1]);
    eprintln!(
        "  {:>7.2} ns/op  span, subscriber at info (debug off)",
        info_ns[0]
    );
    eprintln!(
        "  {:>7.2} ns/op  span, subscriber at debug (span built: for scale)",
        debug_ns[0]
    );
}

fn hot_paths(c: &mut Criterion) {
    ratio_tables();
    let blobs = blobs();
    let recorder = Bench::new();
    let plain = bare();
    fill(&plain, &blobs);
    let quiet = metered();
    fill(&quiet, &blobs);
    let recorded = metrics::with_local_recorder(&recorder, metered);
    metrics::with_local_recorder(&recorder, || fill(&recorded, &blobs));

    let mut i = 0;
    let mut group = c.benchmark_group("metrics get 1KiB");
    group.bench_function("bare stack", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&plain, blobs[i].0))
        })
    });
    group.bench_function("metered stack, no recorder", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get(&quiet, blobs[i].0))
        })
    });
    {
        let _local = metrics::set_default_local_recorder(&recorder);
        group.bench_function("metered stack, recorder", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(get(&recorded, blobs[i].0))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("metrics has 1 key");
    group.bench_function("bare stack", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(has(&plain, blobs[i].0))
        })
    });
    group.bench_function("metered stack, no recorder", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(has(&quiet, blobs[i].0))
        })
    });
    {
        let _local = metrics::set_default_local_recorder(&recorder);
        group.bench_function("metered stack, recorder", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(has(&recorded, blobs[i].0))
            })
        });
    }
    group.finish();

    #[cfg(feature = "tracing")]
    {
        let key: Key = blobs[0].0.into();
        let range = ByteRange::FULL;
        let mut group = c.benchmark_group("debug span, level off");
        group.bench_function("no span", |b| b.iter(|| black_box(&key)));
        group.bench_function("span, no subscriber", |b| b.iter(|| one_span(&key, range)));
        group.finish();
    }
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
