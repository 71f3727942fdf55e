//! `Metrics`: counts what passes through a store, under a name (NativeLink's `cache_metrics`
//! store, §5.13; Buildbarn wraps every backend in one), through the [`metrics`] facade
//! (feature `metrics`), so any exporter plugs in (Prometheus, StatsD, ...). With feature
//! `tracing`, every operation also runs in a debug-level span.
//!
//! # Semantics
//!
//! A pure pass-through: every operation, reader and upload body goes to the inner store
//! unchanged, and the answers come back unchanged. On the way it records, labelled
//! `store = <name>`:
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `casstack_operations_total` | counter | `op`, `outcome` | `has`: `hit` / `miss` per key, `error` per call; `get`: `hit` / `miss` (`NotFound`) / `error`; `put`: `ok` / `error` |
//! | `casstack_operation_seconds` | histogram | `op` | time of `has_many`, of `get` until the reader is open, of `put` until stored |
//! | `casstack_read_bytes_total` | counter | | bytes yielded by readers, counted as they stream |
//! | `casstack_read_errors_total` | counter | | readers that ended with an error after they opened |
//! | `casstack_written_bytes_total` | counter | | bytes the inner store read from upload bodies (a failed upload counts what it read) |
//! | `casstack_get_future_bytes` | gauge | | `size_of_val` of this layer's `get` future, set on the first `get` |
//!
//! The wrappers and the eviction index report what only they know, without a store label
//! (they do not know their place in a layout):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `casstack_fast_slow_reads_total` | `tier` = `fast` / `slow` | `FastSlow` reads served by each tier |
//! | `casstack_fast_slow_fills_total` | | read misses that filled the fast tier (as the single-flight leader) |
//! | `casstack_fast_slow_flight_joins_total` | | read misses that waited for another reader's fill |
//! | `casstack_existence_cache_lookups_total` | `outcome` = `hit` / `miss` | keys `ExistenceCache` answered itself / asked its backend for |
//! | `casstack_verify_failures_total` | `op` = `put` / `get` | uploads `Verify` refused, corrupt objects it caught on read |
//! | `casstack_compress_stored_bytes_total`, `casstack_compress_uncompressed_bytes_total` | | sizes of the objects `Compress` stored: their ratio is the compression ratio |
//! | `casstack_evictions_total`, `casstack_evicted_bytes_total` | `store` = `memory` / `filesystem` / `existence_cache` | entries (and their bytes) dropped by eviction or age, not replacements |
//!
//! Handles are registered when the layer is built, with the recorder installed then: install
//! the recorder (an exporter) first. A layer built without one (the facade's zero-sized no-op
//! recorder in its place) records nothing and skips the clock and the counting: what is
//! left is a branch per operation and per chunk, and the spans. A recorder of zero size is
//! taken for no recorder.
//!
//! # Tracing
//!
//! With feature `tracing`, each operation runs in a `debug` span, `casstack.has`,
//! `casstack.get` or `casstack.put`, with fields `store` (the name), the key (`key`, or
//! `keys` and `first_key` for `has_many`), the byte range (`offset`, `len`) or the upload's
//! declared `size`, and `outcome`. A reader's polls run in its `get` span, so one slow
//! request can be followed through every metered layer of a stack. When `debug` is off for
//! this crate, a span is never built (a level check per operation, measured in
//! `benches/metrics.rs`). The spans are written by hand, not with `#[instrument]`, which would
//! add `async` layers to every generic method.
//!
//! # Cost (`benches/metrics.rs`, 1 KiB reads of `Verify<ExistenceCache<FastSlow<Memory,
//! Memory>>>`, every read a fast hit)
//!
//! | | `get` | `has` |
//! |---|---|---|
//! | `Metrics` around each of the 5 stores, no recorder | 1.9x | 1.1x |
//! | the same with feature `tracing`, debug off | 2.35x | 1.8x |
//! | 5 layers, a registry-of-atomics recorder installed | 3.3x (3.8x with `tracing`) | 3.4x (4.1x) |
//! | one `Metrics<Memory>` layer, no recorder / recorder | +10 ns / +72 ns | +4 ns / +68 ns |
//!
//! A recorded operation reads the clock twice and bumps a counter and a histogram; a layer
//! around a store with a large `get` future also copies it once more. Meter the tiers you
//! watch, not every layer.
//!
//! # Consistency and health
//!
//! Whatever the inner store promises. [`check_health`](crate::Store::check_health) is the
//! inner store's, with this layer's name in front of any failure.
//!
//! Layout (TOML):
//! ```toml
//! [metrics]
//! name = "cas"
//! backend.memory = {}
//! ```
//!
//! Failure codes: none of its own; the inner store's errors pass unchanged.

mod stream;

use std::fmt;
use std::future::Future;
use std::mem::size_of_val;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Unit};
use serde::{Deserialize, Serialize};

pub use stream::{MetricsBody, MetricsStream};

use self::stream::{MetricsGet, MetricsPut, OpSpan, TracedHas};
use crate::body::Body;
use crate::error::Result;
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// Settings of a [`Metrics`] layer.
///
/// ```
/// let config: casstack::MetricsConfig = toml::from_str(r#"name = "ac""#).unwrap();
/// assert_eq!(config.name, "ac");
/// assert_eq!(casstack::MetricsConfig::default().name, "store");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// The `store` label of every metric of this layer (`cas`, `ac`, `fast`, ...).
    /// Default: `"store"`.
    pub name: String,
}

impl Default for MetricsConfig {
    /// Named `store`.
    fn default() -> Self {
        MetricsConfig {
            name: "store".to_owned(),
        }
    }
}

/// Counts operations, bytes and latencies of the store inside, under a name.
///
/// See the [module docs](self) for the metric names.
///
/// ```
/// use casstack::{Digest, Memory, Metrics, MetricsConfig, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// // Install a recorder (e.g. metrics-exporter-prometheus) before building the store.
/// let store = Metrics::new(Memory::default(), MetricsConfig { name: "cas".into() });
/// let d = Digest::of(b"counted");
/// store.put_bytes(d, "counted".into()).await?;
/// assert_eq!(store.get_bytes(d).await?, "counted");
/// assert_eq!(store.name(), "cas");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

/// The layer's registered metric handles (no-ops when no recorder was installed).
pub(crate) struct Handles {
    name: Arc<str>,
    /// A recorder was installed when the layer was built: without one, every handle is a
    /// no-op, and the layer skips the clock and the counting altogether.
    live: bool,
    has_hit: Counter,
    has_miss: Counter,
    has_error: Counter,
    get_hit: Counter,
    get_miss: Counter,
    get_error: Counter,
    put_ok: Counter,
    put_error: Counter,
    read_bytes: Counter,
    read_errors: Counter,
    written_bytes: Counter,
    has_seconds: Histogram,
    get_seconds: Histogram,
    put_seconds: Histogram,
    get_future_bytes: Gauge,
    get_future_reported: AtomicBool,
}

impl Handles {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn register(name: &str) -> Handles {
        describe();
        let store = name.to_owned();
        let operation = |op: &'static str, outcome: &'static str| {
            ::metrics::counter!("casstack_operations_total",
                "store" => store.clone(), "op" => op, "outcome" => outcome)
        };
        let seconds = |op: &'static str| ::metrics::histogram!("casstack_operation_seconds", "store" => store.clone(), "op" => op);
        Handles {
            name: Arc::from(name),
            // The facade's stand-in when no recorder is installed is a zero-sized no-op.
            live: ::metrics::with_recorder(|recorder| size_of_val(recorder) != 0),
            has_hit: operation("has", "hit"),
            has_miss: operation("has", "miss"),
            has_error: operation("has", "error"),
            get_hit: operation("get", "hit"),
            get_miss: operation("get", "miss"),
            get_error: operation("get", "error"),
            put_ok: operation("put", "ok"),
            put_error: operation("put", "error"),
            read_bytes: ::metrics::counter!("casstack_read_bytes_total", "store" => store.clone()),
            read_errors: ::metrics::counter!("casstack_read_errors_total", "store" => store.clone()),
            written_bytes: ::metrics::counter!("casstack_written_bytes_total", "store" => store.clone()),
            has_seconds: seconds("has"),
            get_seconds: seconds("get"),
            put_seconds: seconds("put"),
            get_future_bytes: ::metrics::gauge!("casstack_get_future_bytes", "store" => store.clone()),
            get_future_reported: AtomicBool::new(false),
        }
    }
}

/// Units and help texts, for exporters that show them.
fn describe() {
    ::metrics::describe_counter!(
        "casstack_operations_total",
        "store operations by op and outcome"
    );
    ::metrics::describe_histogram!(
        "casstack_operation_seconds",
        Unit::Seconds,
        "time of has_many, of get until the reader opened, of put until stored"
    );
    ::metrics::describe_counter!(
        "casstack_read_bytes_total",
        Unit::Bytes,
        "bytes streamed out of the store by readers"
    );
    ::metrics::describe_counter!(
        "casstack_written_bytes_total",
        Unit::Bytes,
        "bytes read from upload bodies by the store"
    );
    ::metrics::describe_gauge!(
        "casstack_get_future_bytes",
        Unit::Bytes,
        "size of the get future of this layer"
    );
}

impl<S> Metrics<S> {
    /// Wraps `inner`, registering its metrics with the recorder installed now.
    ///
    /// ```
    /// let store = casstack::Metrics::new(casstack::Noop, Default::default());
    /// assert_eq!(store.name(), "store");
    /// ```
    pub fn new(inner: S, config: MetricsConfig) -> Self {
        Metrics {
            handles: Arc::new(Handles::register(&config.name)),
            inner,
        }
    }

    /// The `store` label.
    ///
    /// ```
    /// let store = casstack::Metrics::new(casstack::Noop, casstack::MetricsConfig { name: "ac".into() });
    /// assert_eq!(store.name(), "ac");
    /// ```
    pub fn name(&self) -> &str {
        &self.handles.name
    }

    /// The wrapped store.
    ///
    /// ```
    /// let store = casstack::Metrics::new(casstack::Memory::default(), Default::default());
    /// assert!(store.get_ref().is_empty());
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    ///
    /// ```
    /// let store = casstack::Metrics::new(casstack::Noop, Default::default());
    /// let _inner: casstack::Noop = store.into_inner();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Store> Metrics<S> {
    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        if !self.handles.live {
            return self.inner.has_many(keys, out).await;
        }
        let start = Instant::now();
        let result = self.inner.has_many(keys, out).await;
        let handles = &*self.handles;
        handles.has_seconds.record(start.elapsed());
        match &result {
            Ok(()) => {
                let mut hits = 0;
                for size in out.iter() {
                    hits += usize::from(size.is_some());
                }
                handles.has_hit.increment(hits as u64);
                handles.has_miss.increment((out.len() - hits) as u64);
            }
            Err(_) => handles.has_error.increment(1),
        }
        result
    }

    /// The handles, if there is a recorder to report to.
    fn live(&self) -> Option<&Arc<Handles>> {
        if self.handles.live {
            Some(&self.handles)
        } else {
            None
        }
    }

    fn report_future_size<F>(&self, future: &F) {
        if self.handles.live && !self.handles.get_future_reported.load(Relaxed) {
            self.handles.get_future_reported.store(true, Relaxed);
            self.handles
                .get_future_bytes
                .set(size_of_val(future) as f64);
        }
    }
}

#[cfg(feature = "tracing")]
fn has_span(name: &str, keys: &[Key]) -> OpSpan {
    OpSpan::new(tracing::debug_span!(
        "casstack.has",
        store = name,
        keys = keys.len(),
        first_key = keys.first().map(tracing::field::display),
        outcome = tracing::field::Empty,
    ))
}

#[cfg(feature = "tracing")]
fn get_span(name: &str, key: &Key, range: ByteRange) -> OpSpan {
    OpSpan::new(tracing::debug_span!(
        "casstack.get",
        store = name,
        key = %key,
        offset = range.offset,
        len = range.len,
        outcome = tracing::field::Empty,
    ))
}

#[cfg(feature = "tracing")]
fn put_span(name: &str, key: &Key, size: UploadSize) -> OpSpan {
    OpSpan::new(tracing::debug_span!(
        "casstack.put",
        store = name,
        key = %key,
        size = ?size,
        outcome = tracing::field::Empty,
    ))
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
fn has_span(_: &str, _: &[Key]) -> OpSpan {
    OpSpan
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
fn get_span(_: &str, _: &Key, _: ByteRange) -> OpSpan {
    OpSpan
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
fn put_span(_: &str, _: &Key, _: UploadSize) -> OpSpan {
    OpSpan
}

impl<S: Store> Store for Metrics<S> {
    type Reader = MetricsStream<S::Reader>;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        // An `async fn` underneath: the sizes in `out` are counted after the inner future,
        // which borrows `out`, has finished.
        TracedHas::new(self.sizes(keys, out), has_span(&self.handles.name, keys))
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send {
        let span = get_span(&self.handles.name, &key, range);
        let future = MetricsGet::new(self.inner.get(key, range), self.live(), span);
        self.report_future_size(&future);
        future
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        let span = put_span(&self.handles.name, &key, size);
        let body = MetricsBody::new(body, self.live().cloned());
        let handles = self.live().map(Arc::as_ref);
        MetricsPut::new(self.inner.put(key, size, body), handles, span)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }

    /// The inner store's health, failures named under this layer's name.
    async fn check_health(&self) -> HealthStatus {
        let status = self.inner.check_health().await;
        status.within(&format!("Metrics[{}]", self.handles.name))
    }

    /// The inner store's answer.
    fn discards_writes(&self) -> bool {
        self.inner.discards_writes()
    }
}

impl<S: fmt::Debug> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("name", &self.handles.name)
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests;
