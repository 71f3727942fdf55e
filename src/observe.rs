//! What only the wrappers and the eviction index know, reported through the `metrics` facade
//! (feature `metrics`); without the feature every function here is empty and inlined away.
//!
//! These counters carry no store name (a wrapper does not know where it sits in a layout);
//! the per-store counts with a name are [`Metrics`](crate::wrappers::metrics::Metrics)'s.
//! The names are listed in the `Metrics` module docs.

/// A `FastSlow` read served by `tier` (`"fast"` or `"slow"`).
#[inline]
pub(crate) fn fast_slow_hit(tier: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("casstack_fast_slow_reads_total", "tier" => tier).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = tier;
}

/// A `FastSlow` read miss became the leader of a fill of the fast tier.
#[inline]
pub(crate) fn fast_slow_fill() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("casstack_fast_slow_fills_total").increment(1);
}

/// A `FastSlow` read miss joined another reader's fill (single flight) instead of reading.
#[inline]
pub(crate) fn fast_slow_join() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("casstack_fast_slow_flight_joins_total").increment(1);
}

/// `ExistenceCache` answered `hits` keys from memory and asked the backend for `misses`.
#[inline]
pub(crate) fn existence_cache_lookups(hits: usize, misses: usize) {
    #[cfg(feature = "metrics")]
    {
        if hits > 0 {
            ::metrics::counter!("casstack_existence_cache_lookups_total", "outcome" => "hit")
                .increment(hits as u64);
        }
        if misses > 0 {
            ::metrics::counter!("casstack_existence_cache_lookups_total", "outcome" => "miss")
                .increment(misses as u64);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (hits, misses);
}

/// `Verify` refused an upload (`op` = `"put"`) or found a corrupt object (`"get"`).
#[inline]
pub(crate) fn verify_failure(op: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("casstack_verify_failures_total", "op" => op).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = op;
}

/// `Compress` stored an object of `uncompressed` bytes in `stored` bytes.
#[cfg(feature = "zstd")]
#[inline]
pub(crate) fn compressed(stored: u64, uncompressed: u64) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!("casstack_compress_stored_bytes_total").increment(stored);
        ::metrics::counter!("casstack_compress_uncompressed_bytes_total").increment(uncompressed);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (stored, uncompressed);
}

/// An eviction index of a `store` kind (`"memory"`, `"filesystem"`, `"existence_cache"`)
/// dropped `count` entries of `bytes` in total (size limits, age, count; not replacements).
#[inline]
pub(crate) fn evicted(store: &'static str, count: usize, bytes: u64) {
    #[cfg(feature = "metrics")]
    if count > 0 {
        ::metrics::counter!("casstack_evictions_total", "store" => store).increment(count as u64);
        ::metrics::counter!("casstack_evicted_bytes_total", "store" => store).increment(bytes);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (store, count, bytes);
}
