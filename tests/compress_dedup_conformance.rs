//! The conformance checker on the data-transforming wrappers: `Compress<Memory>`,
//! `Dedup<Memory, Memory>` and `Compress<Dedup<Memory, Memory>>`, with sizes small enough that
//! the generated blobs span many frames and chunks.

use casstack::testing::Conformance;
use casstack::wrappers::compress::{Compress, CompressConfig};
use casstack::wrappers::dedup::{Dedup, DedupConfig};
use casstack::{EvictionPolicy, Memory, MemoryConfig};

/// 1 KiB frames: a 16 KiB blob is up to 16 frames.
fn compress_config() -> CompressConfig {
    CompressConfig {
        block_size: 1024,
        ..Default::default()
    }
}

/// Chunks of 64 B to 1 KiB, averaging 256 B; blobs under 512 B are one chunk.
fn dedup_config() -> DedupConfig {
    DedupConfig {
        min_size: 64,
        normal_size: 256,
        max_size: 1024,
        small_blob_threshold: 512,
        max_concurrent_fetches: 3,
    }
}

fn dedup() -> Dedup<Memory, Memory> {
    Dedup::new(Memory::default(), Memory::default(), dedup_config()).unwrap()
}

#[test]
fn compress_over_memory_conforms() {
    Conformance::new()
        .check(|| async { Compress::new(Memory::default(), compress_config()).unwrap() });
}

#[test]
fn compress_conforms_on_objects_read_through_the_seek_index() {
    // Above 64 KiB stored, ranged reads go footer -> index -> frames.
    Conformance::new()
        .cases(12)
        .max_blob_size(200 << 10)
        .check(|| async { Compress::new(Memory::default(), compress_config()).unwrap() });
}

#[test]
fn compress_over_an_evicting_memory_conforms_as_a_forgetting_store() {
    Conformance::new().may_forget(true).check(|| async {
        let inner = Memory::new(MemoryConfig {
            eviction_policy: EvictionPolicy {
                max_bytes: 16 << 10,
                ..Default::default()
            },
        });
        Compress::new(inner, compress_config()).unwrap()
    });
}

#[test]
fn dedup_over_memory_conforms() {
    Conformance::new().check(|| async { dedup() });
}

#[test]
fn compress_over_dedup_conforms() {
    Conformance::new().check(|| async { Compress::new(dedup(), compress_config()).unwrap() });
}
