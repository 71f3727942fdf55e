//! Filesystem store vs plain `std::fs` doing the same work.
//!
//! - `put_4k`: a new 4 KiB blob per iteration. Baseline: create a temp file, write, fsync,
//!   rename into `d/{digest}`, fsync the directory (the same durability the store gives).
//! - `get_4k`: read a stored 4 KiB blob. Baseline: `std::fs::read` of the same file.
//! - `open`: open a store over 100 000 and 1 000 000 existing files. Baseline: one thread
//!   listing the two directories and stat-ing every entry (no index). The files are sparse
//!   (length set, no blocks: the scan never reads contents) and are created once, under
//!   `target/tmp`, then reused.
//!
//! - `eviction_under_load` (printed, not a criterion group: the event happens once): a store
//!   over `CASSTACK_EVICT_FILES` (default 10 000) small files, a low watermark that makes one
//!   put evict all of them, and a task that keeps replacing a few 4 KiB objects meanwhile. It
//!   prints that task's put latencies before (the baseline), during the evicting put, and
//!   after it until the evicted files are really gone, and the evicting put's own latency.
//!
//! Run: `cargo bench --bench filesystem -- --warm-up-time 1 --measurement-time 3`
//! (add `open` as a filter to run only the open-time group, `evict` for the eviction one).

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use casstack::{Digest, Filesystem, FilesystemConfig, StoreExt};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const BLOB: usize = 4096;
const GET_KEYS: usize = 256;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A 4 KiB blob no other iteration uses.
fn fresh_blob() -> (Digest, Bytes) {
    let mut data = vec![0x5a; BLOB];
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    data[..8].copy_from_slice(&n.to_le_bytes());
    data[8..16].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    let data = Bytes::from(data);
    (Digest::of(&data), data)
}

fn config(dir: &Path) -> FilesystemConfig {
    FilesystemConfig::new(
        dir.join("content").to_str().unwrap(),
        dir.join("tmp").to_str().unwrap(),
    )
}

/// The baseline's write path: temp file, write, fsync, rename, fsync of the directory.
struct PlainFiles {
    content: PathBuf,
    temp: PathBuf,
    dir: File,
}

impl PlainFiles {
    fn new(root: &Path) -> Self {
        let content = root.join("d");
        let temp = root.join("tmp");
        fs::create_dir_all(&content).unwrap();
        fs::create_dir_all(&temp).unwrap();
        PlainFiles {
            dir: File::open(&content).unwrap(),
            content,
            temp,
        }
    }

    fn put(&self, digest: Digest, data: &[u8]) {
        let temp = self
            .temp
            .join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
        let mut file = File::create_new(&temp).unwrap();
        file.write_all(data).unwrap();
        file.sync_all().unwrap();
        fs::rename(&temp, self.content.join(digest.to_string())).unwrap();
        self.dir.sync_all().unwrap();
    }

    fn get(&self, digest: Digest) -> Vec<u8> {
        fs::read(self.content.join(digest.to_string())).unwrap()
    }
}

fn put_and_get(c: &mut Criterion) {
    // Setup is not free: skip it when a filter leaves none of these benches.
    if !selected(
        "put_4k/get_4k/filesystem/std_fs_write_fsync_rename/std_fs_read/spawn_blocking_std_fs_read",
    ) {
        return;
    }
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(Filesystem::open(config(&root.path().join("store"))))
        .unwrap();
    let plain = PlainFiles::new(&root.path().join("plain"));

    let mut group = c.benchmark_group("put_4k");
    group.bench_function("filesystem", |b| {
        b.to_async(&rt).iter_batched(
            fresh_blob,
            |(d, data)| {
                let store = store.clone();
                async move { store.put_bytes(d, data).await.unwrap() }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("std_fs_write_fsync_rename", |b| {
        b.iter_batched(
            fresh_blob,
            |(d, data)| plain.put(d, &data),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let blobs: Vec<(Digest, Bytes)> = (0..GET_KEYS).map(|_| fresh_blob()).collect();
    for (d, data) in &blobs {
        rt.block_on(store.put_bytes(*d, data.clone())).unwrap();
        plain.put(*d, data);
    }
    let mut group = c.benchmark_group("get_4k");
    let mut i = 0;
    group.bench_function("filesystem", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % GET_KEYS;
            let (d, _) = blobs[i];
            let store = store.clone();
            async move { black_box(store.get_bytes(d).await.unwrap()) }
        })
    });
    let mut i = 0;
    group.bench_function("std_fs_read", |b| {
        b.iter(|| {
            i = (i + 1) % GET_KEYS;
            black_box(plain.get(blobs[i].0))
        })
    });
    // What the store's get costs over a read that also runs on tokio's blocking pool.
    let mut i = 0;
    let content = plain.content.clone();
    group.bench_function("spawn_blocking_std_fs_read", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % GET_KEYS;
            let path = content.join(blobs[i].0.to_string());
            async move { black_box(tokio::task::spawn_blocking(move || fs::read(path)).await) }
        })
    });
    group.finish();
}

/// A store directory of `n` sparse files (90 % digests, 10 % names), created once.
fn fixture(n: usize) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fs-open-{n}"));
    let done = root.join("complete");
    if done.exists() {
        return root;
    }
    let started = Instant::now();
    let _ = fs::remove_dir_all(&root);
    let d = root.join("content/d");
    let s = root.join("content/s");
    fs::create_dir_all(&d).unwrap();
    fs::create_dir_all(&s).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    let threads = 4;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (d, s) = (&d, &s);
            scope.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let size = 1 + (i as u64 * 7919) % 100_000;
                    let mut hash = [0u8; 32];
                    hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    hash[8..16]
                        .copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9).to_le_bytes());
                    let path = if i % 10 == 0 {
                        s.join(format!("action-{i}"))
                    } else {
                        d.join(Digest::new(hash, size).to_string())
                    };
                    File::create(path).unwrap().set_len(size).unwrap();
                }
            });
        }
    });
    File::create(&done).unwrap();
    eprintln!(
        "created {n} files under {} in {:.1} s",
        root.display(),
        started.elapsed().as_secs_f64()
    );
    root
}

fn plain_scan(root: &Path) -> usize {
    let mut n = 0;
    for sub in ["content/d", "content/s"] {
        for entry in fs::read_dir(root.join(sub)).unwrap() {
            let meta = entry.unwrap().metadata().unwrap();
            n += usize::from(meta.len() > 0);
        }
    }
    n
}

fn open(c: &mut Criterion) {
    if !selected("open_100000_files/open_1000000_files/filesystem/std_fs_readdir_stat_one_thread") {
        return;
    }
    let rt = runtime();
    for n in [100_000usize, 1_000_000] {
        let root = fixture(n);
        let mut group = c.benchmark_group(format!("open_{n}_files"));
        group.sample_size(10);
        if n >= 1_000_000 {
            group.measurement_time(Duration::from_secs(20));
        }
        group.bench_function("filesystem", |b| {
            b.to_async(&rt).iter(|| {
                let config = config(&root);
                async move {
                    let store = Filesystem::open(config).await.unwrap();
                    assert_eq!(store.len(), n);
                    store
                }
            })
        });
        group.bench_function("std_fs_readdir_stat_one_thread", |b| {
            b.iter(|| assert_eq!(black_box(plain_scan(&root)), n))
        });
        group.finish();
    }
}

/// True when the command line names no filter or one that matches `name`.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(what: &str, mut lat: Vec<Duration>) {
    lat.sort();
    eprintln!(
        "  {what:<34} n={:<5} p50={:>9.2?} p99={:>9.2?} max={:>9.2?}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
}

/// Files directly or below `dir` (0 if it does not exist).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn eviction_under_load(_: &mut Criterion) {
    if !selected("eviction_under_load") {
        return;
    }
    let n: usize = std::env::var("CASSTACK_EVICT_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = runtime();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = root.path();
    let d = dir.join("content/d");
    fs::create_dir_all(&d).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    for i in 0..n {
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(d.join(Digest::new(hash, 100).to_string()), [0u8; 100]).unwrap();
    }
    // One block per file; the four hot objects and the trigger fit below max_bytes only
    // until the trigger's four blocks arrive, and then everything goes (low watermark 16).
    let block = 4096u64;
    let max_bytes = (n as u64 + 6) * block;
    let mut cfg = config(dir);
    cfg.eviction_policy = casstack::EvictionPolicy {
        max_bytes,
        evict_bytes: max_bytes - 16 * block,
        ..Default::default()
    };
    let store = rt.block_on(Filesystem::open(cfg)).unwrap();
    assert_eq!(store.len(), n);
    let hot = |i: usize| format!("hot-{}", i % 4);
    let value = Bytes::from(vec![7u8; BLOB]);
    rt.block_on(async {
        for i in 0..4 {
            store
                .put_bytes(hot(i).as_str(), value.clone())
                .await
                .unwrap();
        }
        let stop = Arc::new(AtomicU64::new(0));
        let putter = tokio::spawn({
            let (store, stop, value) = (store.clone(), stop.clone(), value.clone());
            async move {
                let mut puts: Vec<(Instant, Instant)> = Vec::new();
                let mut i = 0;
                while stop.load(Ordering::SeqCst) == 0 {
                    let started = Instant::now();
                    store
                        .put_bytes(hot(i).as_str(), value.clone())
                        .await
                        .unwrap();
                    puts.push((started, Instant::now()));
                    i += 1;
                }
                puts
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        let trigger = Bytes::from(vec![9u8; 4 * BLOB]);
        store
            .put_bytes(Digest::of(&trigger), trigger)
            .await
            .unwrap();
        let ended = Instant::now();
        let evicting = ended - started;
        let left = store.len();
        // Until the evicted files are deleted (at once before the fix, in the background
        // after it), and at least a second.
        let after = Instant::now();
        while count_files(&dir.join("tmp")) > 1 || after.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gone = started.elapsed();
        stop.store(1, Ordering::SeqCst);
        let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
        for (s, e) in putter.await.unwrap() {
            let phase = if e <= started {
                &mut before
            } else if s < ended {
                &mut during
            } else {
                &mut after
            };
            phase.push(e - s);
        }
        eprintln!(
            "eviction_under_load: {n} files evicted by one put ({left} objects left); \
             the evicting put took {evicting:.2?}, all evicted files deleted after {gone:.2?}"
        );
        summary("concurrent puts, no eviction", before);
        summary("concurrent puts, overlapping it", during);
        summary("concurrent puts, after it", after);
    });
}

criterion_group!(benches, put_and_get, open, eviction_under_load);
criterion_main!(benches);
