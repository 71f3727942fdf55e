//! Crash test: a child process (this same binary, started with `CASSTACK_CRASH_WRITER` set)
//! uploads blobs with 8 concurrent writers and is killed with SIGKILL at a random moment, at
//! least 60 times. After each kill a reopened store must hold only whole, correct objects
//! (every object it lists hashes to its digest), keep every upload the child saw acknowledged
//! (in runs without eviction), have no file that is not indexed, and an empty `temp_path`.
//!
//! `harness = false`: `main` is either the parent (the test) or the child (the writer).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use casstack::{Digest, EvictionPolicy, Filesystem, FilesystemConfig, Key, StoreExt};

const WRITER_ENV: &str = "CASSTACK_CRASH_WRITER";
const KILLS: u64 = 60;
/// A fresh store directory every this many kills, so verification stays fast.
const KILLS_PER_DIR: u64 = 10;

/// xorshift64*: small, seedable, good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(dir: &Path, evict: bool) -> FilesystemConfig {
    FilesystemConfig {
        eviction_policy: if evict {
            EvictionPolicy {
                max_bytes: 4 << 20,
                evict_bytes: 1 << 20,
                ..Default::default()
            }
        } else {
            EvictionPolicy::default()
        },
        ..FilesystemConfig::new(
            dir.join("content").to_str().unwrap(),
            dir.join("tmp").to_str().unwrap(),
        )
    }
}

fn main() {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        writer(&spec);
    } else {
        parent();
    }
}

/// The child: `spec` is `{dir}|{seed}|{evict}`. Prints `ready`, then `ok {key}` per
/// acknowledged upload, until killed.
fn writer(spec: &str) {
    let mut parts = spec.split('|');
    let dir = Path::new(parts.next().unwrap()).to_owned();
    let seed: u64 = parts.next().unwrap().parse().unwrap();
    let evict = parts.next().unwrap() == "1";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Filesystem::open(config(&dir, evict)).await.unwrap();
        println!("ready");
        let _writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(w) | 1);
                    loop {
                        let len = match rng.below(10) {
                            0 => 300_000 + rng.below(500_000),
                            1 => rng.below(16),
                            _ => rng.below(64 << 10),
                        } as usize;
                        let data: Bytes = (0..len).map(|_| rng.next() as u8).collect();
                        let digest = Digest::of(&data);
                        let key: Key = if rng.below(2) == 0 {
                            digest.into()
                        } else {
                            format!("n-{digest}").into()
                        };
                        if let Err(e) = store.put_bytes(key.clone(), data).await {
                            eprintln!("writer: upload of {key} failed: {e}");
                            std::process::exit(1);
                        }
                        // The parent stops reading once it has killed enough writers;
                        // a writer that cannot report any more just stops.
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "ok {key}")
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            std::process::exit(0);
                        }
                    }
                })
            })
            .collect();
        // Write until killed (a failed upload ends the process, and the parent fails).
        std::future::pending::<()>().await;
    });
}

/// Files in `temp_path`, but the store's lock file.
fn temp_files(temp: &Path) -> usize {
    std::fs::read_dir(temp)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".casstack-lock")
        .count()
}

fn key_from_line(text: &str) -> Key {
    if let Some(name) = text.strip_prefix("n-") {
        name.parse::<Digest>().expect("a digest in the name");
        Key::from(text)
    } else {
        Key::from(text.parse::<Digest>().unwrap())
    }
}

/// The digest a key's bytes must hash to.
fn expected_digest(key: &Key) -> Digest {
    match key {
        Key::Digest(d) => *d,
        Key::Name(name) => name
            .strip_prefix("n-")
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("unexpected name {name:?} in the store")),
    }
}

fn parent() {
    let started = Instant::now();
    let seed = std::env::var("CASSTACK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("filesystem crash test: seed {seed} (set CASSTACK_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let (mut leftover_temp_files, mut verified, mut acked_total) = (0usize, 0usize, 0usize);

    for kill in 0..KILLS {
        let dir = root.path().join(format!("store-{}", kill / KILLS_PER_DIR));
        let evict = kill % 3 == 2;
        let mut child = Command::new(&exe)
            .env(
                WRITER_ENV,
                format!("{}|{}|{}", dir.display(), rng.next(), u8::from(evict)),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The moment: right away (during startup), right after startup, or after some
        // acknowledged uploads, with 8 more in flight at every stage of their upload.
        let mode = rng.below(10);
        let wanted_acks = if mode < 2 { 0 } else { rng.below(40) };
        let mut acked = Vec::new();
        if mode != 0 {
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let ready = lines
                .next()
                .expect("child exited before it was ready")
                .unwrap();
            assert_eq!(ready, "ready");
            while (acked.len() as u64) < wanted_acks {
                let line = lines.next().expect("child exited early").unwrap();
                acked.push(key_from_line(line.strip_prefix("ok ").unwrap()));
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked_total += acked.len();

        let temp = dir.join("tmp");
        if temp.exists() {
            leftover_temp_files += temp_files(&temp);
        }
        let store = runtime
            .block_on(Filesystem::open(config(&dir, false)))
            .unwrap();
        assert_eq!(
            temp_files(&temp),
            0,
            "kill {kill}: temp_path not empty after reopen"
        );
        let listed: BTreeSet<Key> = store.keys().into_iter().collect();
        let mut on_disk = BTreeSet::new();
        for entry in std::fs::read_dir(dir.join("content/d")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            on_disk.insert(Key::from(name.parse::<Digest>().unwrap()));
        }
        for entry in std::fs::read_dir(dir.join("content/s")).unwrap() {
            // Writer names need no escaping.
            on_disk.insert(Key::from(entry.unwrap().file_name().into_string().unwrap()));
        }
        assert_eq!(listed, on_disk, "kill {kill}: index and disk disagree");
        for key in &listed {
            let bytes = runtime.block_on(store.get_bytes(key.clone())).unwrap();
            assert_eq!(
                Digest::of(&bytes),
                expected_digest(key),
                "kill {kill}: {key} holds wrong or partial bytes"
            );
            verified += 1;
        }
        if !evict {
            for key in &acked {
                // `has`, not `listed`: the empty blob is acknowledged but never stored.
                let size = runtime.block_on(store.has(key.clone())).unwrap();
                assert_eq!(
                    size,
                    Some(expected_digest(key).size()),
                    "kill {kill}: acknowledged {key} was lost"
                );
            }
        }
    }
    println!(
        "filesystem crash test: {KILLS} SIGKILLs, {acked_total} acknowledged uploads kept, \
         {verified} object reads verified, {leftover_temp_files} partial uploads found in temp \
         and wiped, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
