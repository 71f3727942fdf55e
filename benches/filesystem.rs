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
//! Run: `cargo bench --bench filesystem -- --warm-up-time 1 --measurement-time 3`
//! (add `open` as a filter to run only the open-time group).

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
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

criterion_group!(benches, put_and_get, open);
criterion_main!(benches);
