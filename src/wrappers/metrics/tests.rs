use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use tokio::sync::Semaphore;

use super::*;
use crate::body::OneChunk;
use crate::error::Code;
use crate::eviction::EvictionPolicy;
use crate::key::Digest;
use crate::store::StoreExt;
use crate::stores::memory::{Memory, MemoryConfig};
use crate::wrappers::test_util::{Counting, blob};
use crate::wrappers::{ExistenceCache, FastSlow, Verify, VerifyConfig};

/// A recorder for one test, with the totals of every snapshot taken so far (a snapshot
/// drains the counters it reads).
struct Recorded {
    snapshotter: Snapshotter,
    totals: HashMap<(String, Vec<(String, String)>), u64>,
    histograms: HashMap<(String, Vec<(String, String)>), usize>,
    gauges: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Recorded {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Recorded {
            snapshotter: recorder.snapshotter(),
            totals: HashMap::new(),
            histograms: HashMap::new(),
            gauges: HashMap::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let id = id(&key);
            match value {
                DebugValue::Counter(n) => *self.totals.entry(id).or_default() += n,
                DebugValue::Histogram(values) => {
                    *self.histograms.entry(id).or_default() += values.len()
                }
                // A snapshot also drains gauges: keep the last value set.
                DebugValue::Gauge(v) if v.into_inner() != 0.0 => {
                    self.gauges.insert(id, v.into_inner());
                }
                DebugValue::Gauge(_) => {}
            }
        }
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.refresh();
        self.totals.get(&wanted(name, labels)).copied().unwrap_or(0)
    }

    /// How many values a histogram received.
    fn samples(&mut self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.refresh();
        self.histograms
            .get(&wanted(name, labels))
            .copied()
            .unwrap_or(0)
    }

    fn gauge(&mut self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.refresh();
        self.gauges.get(&wanted(name, labels)).copied()
    }

    fn op(&mut self, op: &str, outcome: &str) -> u64 {
        self.counter(
            "casstack_operations_total",
            &[("store", "cas"), ("op", op), ("outcome", outcome)],
        )
    }
}

fn id(key: &CompositeKey) -> (String, Vec<(String, String)>) {
    let _: MetricKind = key.kind();
    let mut labels: Vec<(String, String)> = key
        .key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.key().name().to_owned(), labels)
}

fn wanted(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn cas<S>(inner: S) -> Metrics<S> {
    Metrics::new(inner, MetricsConfig { name: "cas".into() })
}

#[tokio::test]
async fn counts_every_operation_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Recorded::new(&recorder);
    let store = cas(Memory::default());
    let (d, data) = blob(100, 1);
    let absent = Digest::of(b"absent");

    assert_eq!(store.put_bytes(d, data.clone()).await.unwrap(), 100);
    assert_eq!(seen.op("put", "ok"), 1);
    assert_eq!(
        seen.counter("casstack_written_bytes_total", &[("store", "cas")]),
        100
    );

    // A body shorter than declared: the put fails, having read its 3 bytes.
    let lying = store.put(
        absent.into(),
        UploadSize::Exact(9),
        OneChunk::new("abc".into()),
    );
    assert_eq!(lying.await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(seen.op("put", "error"), 1);
    assert_eq!(seen.op("put", "ok"), 1);
    assert_eq!(
        seen.counter("casstack_written_bytes_total", &[("store", "cas")]),
        103
    );

    // has: per key.
    let mut out = [None; 3];
    store
        .has_many(&[d.into(), absent.into(), Digest::EMPTY.into()], &mut out)
        .await
        .unwrap();
    assert_eq!(seen.op("has", "hit"), 2, "d and the empty blob");
    assert_eq!(seen.op("has", "miss"), 1);
    let mut short = [None; 1];
    let err = store
        .has_many(&[d.into(), absent.into()], &mut short)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(seen.op("has", "error"), 1);
    assert_eq!(seen.op("has", "hit"), 2, "a failed call counts no key");

    // get: hit (bytes counted as they stream), miss, error.
    assert_eq!(
        store
            .get_range_bytes(d, ByteRange::new(10, Some(20)))
            .await
            .unwrap(),
        data.slice(10..30)
    );
    assert_eq!(seen.op("get", "hit"), 1);
    assert_eq!(
        seen.counter("casstack_read_bytes_total", &[("store", "cas")]),
        20
    );
    assert_eq!(
        store.get_bytes(absent).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(seen.op("get", "miss"), 1);
    let past_end = store.get(d.into(), ByteRange::from_offset(101));
    assert_eq!(past_end.await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(seen.op("get", "error"), 1);
    assert_eq!(seen.op("get", "hit"), 1);

    // One latency sample per call.
    for (op, calls) in [("has", 2), ("get", 3), ("put", 2)] {
        let labels = [("store", "cas"), ("op", op)];
        assert_eq!(
            seen.samples("casstack_operation_seconds", &labels),
            calls,
            "{op}"
        );
    }
    let size = seen.gauge("casstack_get_future_bytes", &[("store", "cas")]);
    assert!(size.is_some_and(|s| s > 0.0), "{size:?}");
}

#[tokio::test]
async fn a_reader_that_breaks_counts_a_read_error_and_a_verify_failure() {
    let recorder = DebuggingRecorder::new();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Recorded::new(&recorder);
    let memory = Memory::default();
    let config = VerifyConfig {
        verify_on_get: true,
        ..Default::default()
    };
    let store = cas(Verify::new(memory.clone(), config));
    let d = Digest::of(b"right");
    memory.put_bytes(d, "wrong".into()).await.unwrap();
    let err = store.get_bytes(d).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(seen.op("get", "hit"), 1, "the reader opened");
    assert_eq!(
        seen.counter("casstack_read_errors_total", &[("store", "cas")]),
        1
    );
    assert_eq!(
        seen.counter("casstack_verify_failures_total", &[("op", "get")]),
        1
    );
    let bad = store.put_bytes(Digest::of(b"abc"), "abd".into()).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        seen.counter("casstack_verify_failures_total", &[("op", "put")]),
        1
    );
    assert_eq!(seen.op("put", "error"), 1);
}

#[tokio::test]
async fn fast_slow_reports_hits_fills_and_joins() {
    let recorder = DebuggingRecorder::new();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Recorded::new(&recorder);
    let gate = Arc::new(Semaphore::new(0));
    let slow = Counting::new(Memory::default()).gated(gate.clone());
    let store = FastSlow::new(Memory::default(), slow.clone(), Default::default());
    let (d, data) = blob(1000, 2);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();

    let leader = tokio::spawn({
        let store = store.clone();
        async move { store.get_bytes(d).await }
    });
    let follower = tokio::spawn({
        let store = store.clone();
        async move { store.get_bytes(d).await }
    });
    // Both readers run until they block: the leader at the gate, the other following it.
    while seen.counter("casstack_fast_slow_flight_joins_total", &[]) == 0 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(10);
    assert_eq!(leader.await.unwrap().unwrap(), data);
    assert_eq!(follower.await.unwrap().unwrap(), data);
    assert_eq!(seen.counter("casstack_fast_slow_fills_total", &[]), 1);
    assert_eq!(
        seen.counter("casstack_fast_slow_reads_total", &[("tier", "slow")]),
        1
    );
    assert_eq!(
        seen.counter("casstack_fast_slow_reads_total", &[("tier", "fast")]),
        1,
        "the follower read the filled fast tier"
    );
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(
        seen.counter("casstack_fast_slow_reads_total", &[("tier", "fast")]),
        2
    );
    assert_eq!(
        seen.counter("casstack_fast_slow_flight_joins_total", &[]),
        1
    );
}

#[tokio::test]
async fn existence_cache_and_eviction_counters_move() {
    let recorder = DebuggingRecorder::new();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Recorded::new(&recorder);
    let backend = Memory::new(MemoryConfig {
        eviction_policy: EvictionPolicy {
            max_count: 2,
            ..Default::default()
        },
    });
    let store = ExistenceCache::new(backend, Default::default());
    let blobs: Vec<(Digest, Bytes)> = (0..3).map(|i| blob(10, i)).collect();
    let (d0, _) = blobs[0].clone();
    let (d1, _) = blobs[1].clone();
    store.put_bytes(d0, blobs[0].1.clone()).await.unwrap();
    store.put_bytes(d1, blobs[1].1.clone()).await.unwrap();
    assert_eq!(store.has(d0).await.unwrap(), Some(10));
    assert_eq!(store.has(d1).await.unwrap(), Some(10));
    let lookups = "casstack_existence_cache_lookups_total";
    assert_eq!(seen.counter(lookups, &[("outcome", "hit")]), 2);
    assert_eq!(seen.counter(lookups, &[("outcome", "miss")]), 0);
    // A third blob evicts the least recently used one from the backend (count limit 2).
    store
        .put_bytes(blobs[2].0, blobs[2].1.clone())
        .await
        .unwrap();
    assert_eq!(
        seen.counter("casstack_evictions_total", &[("store", "memory")]),
        1
    );
    assert_eq!(
        seen.counter("casstack_evicted_bytes_total", &[("store", "memory")]),
        10
    );
    assert_eq!(store.has(d0).await.unwrap(), None, "the cache forgot it");
    assert_eq!(seen.counter(lookups, &[("outcome", "miss")]), 1);
}

#[cfg(feature = "zstd")]
#[tokio::test]
async fn compress_reports_stored_and_uncompressed_bytes() {
    let recorder = DebuggingRecorder::new();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Recorded::new(&recorder);
    let inner = Memory::default();
    let store =
        crate::wrappers::compress::Compress::new(inner.clone(), Default::default()).unwrap();
    let data = Bytes::from(vec![b'a'; 100_000]);
    let d = Digest::of(&data);
    store.put_bytes(d, data).await.unwrap();
    let stored = inner.total_bytes();
    assert_eq!(
        seen.counter("casstack_compress_uncompressed_bytes_total", &[]),
        100_000
    );
    assert_eq!(
        seen.counter("casstack_compress_stored_bytes_total", &[]),
        stored
    );
    assert!(stored < 10_000, "{stored}");
}

#[tokio::test]
async fn without_a_recorder_nothing_is_recorded_and_everything_works() {
    // Built outside any recorder: every handle is a no-op.
    let store = cas(Memory::default());
    let recorder = DebuggingRecorder::new();
    let mut seen = Recorded::new(&recorder);
    let d = Digest::of(b"x");
    store.put_bytes(d, "x".into()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), "x");
    assert_eq!(seen.op("put", "ok"), 0);
    assert!(seen.totals.is_empty());
}

#[tokio::test]
async fn health_is_the_inner_stores_under_the_name() {
    let store = cas(Memory::default());
    assert!(store.check_health().await.is_ok());
    let store = cas(Counting::new(Memory::default()));
    // Counting keeps the default check: a round trip through it.
    assert!(store.check_health().await.is_ok());
    assert!(store.get_ref().inner().len() == 1, "the probe is stored");
}
