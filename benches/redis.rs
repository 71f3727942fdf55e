//! `Redis` vs the same work done with raw commands through the `redis` crate on one
//! multiplexed connection (what `redis-benchmark -P` measures): `has_many` of 1, 100 and 1000
//! keys vs a pipeline of `STRLEN`s, `get` vs one `GET` of the whole blob, `put` vs `SET`, for
//! 1 KiB, 1 MiB and (get only) 16 MiB blobs. The bench starts its own `redis-server` on a free
//! loopback port.
//!
//! For 1 MiB and more, `casstack_read_ahead_0` is the same store with `read_ahead = 0`: one
//! `GETRANGE` window per round trip, requested when the caller asks for it.
//!
//! The store pays for what the raw commands skip: a pooled connection checkout (no round trip),
//! `EXISTS`/`STRLEN` before a read (in the same round trip), a large blob read in
//! `read_chunk_size` windows each checked against the object's length, and a staged upload
//! committed by a Lua script (atomic length check + `RENAME`).
//!
//! Run: `cargo bench --features redis,testing --bench redis -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use casstack::testing::RedisServer;
use casstack::{Digest, Key, Redis, RedisConfig, Store, StoreExt};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use redis::aio::MultiplexedConnection;

fn blob(len: usize, seed: u64) -> Bytes {
    let mut data = vec![(seed % 251) as u8; len];
    data[..8].copy_from_slice(&seed.to_le_bytes());
    Bytes::from(data)
}

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = "b:".into();
    let store = runtime.block_on(Redis::connect(config.clone())).unwrap();
    // The same store reading one window at a time (as before read-ahead existed).
    config.read_ahead = 0;
    let one_at_a_time = runtime.block_on(Redis::connect(config)).unwrap();
    let raw: MultiplexedConnection = runtime.block_on(async {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });

    // has_many: digest keys, half present.
    let keys: Vec<Key> = (0..1000u64)
        .map(|i| Key::from(Digest::of(&blob(64, i))))
        .collect();
    let raw_keys: Vec<String> = keys.iter().map(|k| store.redis_key(k).unwrap()).collect();
    runtime.block_on(async {
        for (i, k) in keys.iter().enumerate().step_by(2) {
            store
                .put_bytes(k.clone(), blob(64, i as u64))
                .await
                .unwrap();
        }
    });
    for n in [1usize, 100, 1000] {
        let keys = &keys[..n];
        let raw_keys = &raw_keys[..n];
        let mut group = c.benchmark_group(format!("redis/has_many_{n}"));
        group.bench_function("casstack", |b| {
            let mut out = vec![None; keys.len()];
            b.iter(|| {
                runtime.block_on(store.has_many(keys, &mut out)).unwrap();
                black_box(&out);
            })
        });
        group.bench_function("raw_pipeline", |b| {
            b.iter(|| {
                let mut conn = raw.clone();
                let mut pipe = redis::pipe();
                for k in raw_keys {
                    pipe.cmd("STRLEN").arg(k);
                }
                let lens: Vec<u64> = runtime.block_on(pipe.query_async(&mut conn)).unwrap();
                black_box(lens);
            })
        });
        group.finish();
    }

    for (label, size) in [
        ("1KiB", 1usize << 10),
        ("1MiB", 1 << 20),
        ("16MiB", 16 << 20),
    ] {
        let data = blob(size, 7);
        let d = Digest::of(&data);
        let raw_key = format!("raw:{d}");
        let mut group = c.benchmark_group(format!("redis/get_{label}"));
        if size > 1 << 20 {
            group.sample_size(10);
        }
        runtime.block_on(async {
            store.put_bytes(d, data.clone()).await.unwrap();
            let mut conn = raw.clone();
            let _: () = redis::cmd("SET")
                .arg(&raw_key)
                .arg(data.as_ref())
                .query_async(&mut conn)
                .await
                .unwrap();
        });
        group.bench_function(BenchmarkId::new("casstack", label), |b| {
            b.iter(|| black_box(runtime.block_on(store.get_bytes(d)).unwrap()))
        });
        if size >= 1 << 20 {
            group.bench_function(BenchmarkId::new("casstack_read_ahead_0", label), |b| {
                b.iter(|| black_box(runtime.block_on(one_at_a_time.get_bytes(d)).unwrap()))
            });
        }
        group.bench_function(BenchmarkId::new("raw_GET", label), |b| {
            b.iter(|| {
                let mut conn = raw.clone();
                let v: Vec<u8> = runtime
                    .block_on(redis::cmd("GET").arg(&raw_key).query_async(&mut conn))
                    .unwrap();
                black_box(v)
            })
        });
        group.finish();
        if size > 1 << 20 {
            continue;
        }

        let mut group = c.benchmark_group(format!("redis/put_{label}"));
        group.bench_function(BenchmarkId::new("casstack", label), |b| {
            b.iter(|| black_box(runtime.block_on(store.put_bytes(d, data.clone())).unwrap()))
        });
        group.bench_function(BenchmarkId::new("raw_SET", label), |b| {
            b.iter(|| {
                let mut conn = raw.clone();
                let _: () = runtime
                    .block_on(
                        redis::cmd("SET")
                            .arg(&raw_key)
                            .arg(data.as_ref())
                            .query_async(&mut conn),
                    )
                    .unwrap();
            })
        });
        group.finish();
    }
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
