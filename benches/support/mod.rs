//! Scaffolding shared by the hot-path benches (`wrappers`, `metrics`): the blob set, the
//! warm-up fill, and the interleaved best-of ratio table.
//!
//! On a shared, loaded machine criterion's sequential runs drift by 2x between functions, so
//! these benches also print a table where every round times one batch of each case in turn
//! and keeps the fastest batch of each (noise only ever adds time).

use std::time::{Duration, Instant};

use bytes::Bytes;
use casstack::{Digest, Store, StoreExt};

/// The size of every blob, and how many distinct blobs each store holds.
pub const BLOB: usize = 1024;
pub const KEYS: usize = 1024;

/// `KEYS` distinct blobs of `BLOB` bytes with their digests.
pub fn blobs() -> Vec<(Digest, Bytes)> {
    (0..KEYS)
        .map(|i| {
            let mut bytes = vec![(i % 251) as u8; BLOB];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let data = Bytes::from(bytes);
            (Digest::of(&data), data)
        })
        .collect()
}

/// Puts every blob, then asks for it and reads it once, so that every later `has` is an
/// existence-cache hit and every later `get` a fast-tier hit.
pub fn fill<S: Store>(store: &S, blobs: &[(Digest, Bytes)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (d, data) in blobs {
            store.put_bytes(*d, data.clone()).await.unwrap();
            assert_eq!(store.has(*d).await.unwrap(), Some(BLOB as u64));
            assert_eq!(store.get_bytes(*d).await.unwrap(), *data);
        }
    });
}

/// Anything held for the duration of one timed batch (e.g. a thread-local recorder guard).
pub trait Guard {}
impl<T> Guard for T {}

/// One line of a ratio table: `op(i)` runs one operation on blob `i`.
pub struct Case<'a, 'g> {
    pub name: &'a str,
    /// Called before each batch; what it returns (borrowing for `'g`) is dropped after it.
    pub enter: Option<&'a dyn Fn() -> Box<dyn Guard + 'g>>,
    pub op: &'a mut dyn FnMut(usize),
}

impl<'a, 'g> Case<'a, 'g> {
    pub fn new(name: &'a str, op: &'a mut dyn FnMut(usize)) -> Self {
        Case {
            name,
            enter: None,
            op,
        }
    }
}

/// The fastest of `rounds` batches of `batch` operations, per case, interleaved; in ns/op.
pub fn interleaved(rounds: usize, batch: usize, cases: &mut [Case<'_, '_>]) -> Vec<f64> {
    let mut best = vec![Duration::MAX; cases.len()];
    for _ in 0..rounds {
        for (case, best) in cases.iter_mut().zip(best.iter_mut()) {
            let _guard = case.enter.map(|enter| enter());
            let start = Instant::now();
            for i in 0..batch {
                (case.op)(i % KEYS);
            }
            *best = (*best).min(start.elapsed());
        }
    }
    best.iter()
        .map(|d| d.as_nanos() as f64 / batch as f64)
        .collect()
}

/// Prints each case's ns/op and its ratio to the first case.
pub fn print_ratios(title: &str, cases: &mut [Case<'_, '_>]) {
    let ns = interleaved(200, 2000, cases);
    eprintln!("{title} (interleaved, best of 200 batches of 2000):");
    for (case, t) in cases.iter().zip(&ns) {
        eprintln!("  {t:>7.1} ns/op  {:>5.2}x  {}", t / ns[0], case.name);
    }
}
