//! `Compress<Memory>` vs calling the zstd crate directly on the same bytes, and ranged reads.
//!
//! - `4mib_text` / `4mib_noise`: put and full get of a 4 MiB blob through `Compress<Memory>`
//!   (level 3, default 256 KiB blocks) vs `zstd::bulk` compress / decompress of the same
//!   bytes in one frame (the hand-written baseline: no framing, no store, no crc).
//! - `ranged_64mib`: a 4 KiB read from the middle of a 64 MiB compressed blob vs a full read.
//! - `block_size`: the same 4 KiB ranged read with 64 KiB, 256 KiB and 1 MiB blocks; the
//!   stored size of each is printed at setup (the ratio half of the block-size choice).
//!
//! Memory's futures are ready at once, so everything runs without an executor
//! (`now_or_never`): the comparison is of the work, not of a runtime.
//!
//! Run: `cargo bench --features zstd,testing --bench compress -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use casstack::testing::{noise, text};
use casstack::wrappers::compress::{Compress, CompressConfig};
use casstack::{ByteRange, Memory, StoreExt};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;

fn store(block_size: u32) -> Compress<Memory> {
    Compress::new(
        Memory::default(),
        CompressConfig {
            block_size,
            ..Default::default()
        },
    )
    .unwrap()
}

fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never()
        .expect("Memory-backed futures are ready at once")
}

fn put_get_vs_zstd(c: &mut Criterion, name: &str, blob: Bytes) {
    let s = store(256 << 10);
    ready(s.put_bytes("k", blob.clone())).unwrap();
    let stored = s.get_ref().total_bytes();
    let raw = zstd::bulk::compress(&blob, 3).unwrap();
    println!(
        "{name}: Compress stores {stored} bytes ({:.3}x), zstd::bulk one frame {} bytes ({:.3}x)",
        blob.len() as f64 / stored as f64,
        raw.len(),
        blob.len() as f64 / raw.len() as f64
    );
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("compress_put", |b| {
        b.iter(|| ready(s.put_bytes("k", black_box(blob.clone()))).unwrap())
    });
    g.bench_function("zstd_bulk_compress", |b| {
        let mut ctx = zstd::bulk::Compressor::new(3).unwrap();
        b.iter(|| ctx.compress(black_box(&blob)).unwrap())
    });
    g.bench_function("compress_get", |b| {
        b.iter(|| ready(s.get_bytes("k")).unwrap())
    });
    g.bench_function("zstd_bulk_decompress", |b| {
        let mut ctx = zstd::bulk::Decompressor::new().unwrap();
        b.iter(|| ctx.decompress(black_box(&raw), blob.len()).unwrap())
    });
    g.finish();
}

fn four_mib(c: &mut Criterion) {
    put_get_vs_zstd(c, "4mib_text", text(4 << 20, 1));
    put_get_vs_zstd(c, "4mib_noise", noise(4 << 20, 1));
}

fn ranged(c: &mut Criterion) {
    let blob = text(64 << 20, 2);
    let middle = ByteRange::new(32 << 20, Some(4096));
    let mut g = c.benchmark_group("ranged_64mib");
    let s = store(256 << 10);
    ready(s.put_bytes("k", blob.clone())).unwrap();
    g.bench_function("get_4kib_in_the_middle", |b| {
        b.iter(|| ready(s.get_range_bytes("k", middle)).unwrap())
    });
    g.sample_size(10);
    g.bench_function("get_full", |b| b.iter(|| ready(s.get_bytes("k")).unwrap()));
    g.finish();

    let mut g = c.benchmark_group("block_size");
    for block in [64u32 << 10, 256 << 10, 1 << 20] {
        let s = store(block);
        ready(s.put_bytes("k", blob.clone())).unwrap();
        let stored = s.get_ref().total_bytes();
        println!(
            "block {} KiB: 64 MiB text stored in {stored} bytes ({:.4}x)",
            block >> 10,
            blob.len() as f64 / stored as f64
        );
        g.bench_function(format!("get_4kib_{}kib_blocks", block >> 10), |b| {
            b.iter(|| ready(s.get_range_bytes("k", middle)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, four_mib, ranged);
criterion_main!(benches);
