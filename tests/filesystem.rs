//! The conformance checker on `Filesystem`: plain, evicting, and reopened between steps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use casstack::testing::Conformance;
use casstack::{EvictionPolicy, Filesystem, FilesystemConfig};

/// A fresh pair of directories per generated case, under one temp dir per test.
struct Dirs {
    root: tempfile::TempDir,
    next: AtomicU64,
}

impl Dirs {
    fn new() -> Self {
        Dirs {
            root: tempfile::tempdir().unwrap(),
            next: AtomicU64::new(0),
        }
    }

    fn config(&self, policy: EvictionPolicy) -> FilesystemConfig {
        let case: PathBuf = self
            .root
            .path()
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        FilesystemConfig {
            eviction_policy: policy,
            // Small chunks, so ranged reads cross chunk boundaries.
            read_buffer_size: 1000,
            ..FilesystemConfig::new(
                case.join("content").to_str().unwrap(),
                case.join("tmp").to_str().unwrap(),
            )
        }
    }
}

fn evicting() -> EvictionPolicy {
    EvictionPolicy {
        max_bytes: 40 << 10,
        max_count: 6,
        ..Default::default()
    }
}

/// Closes `store` and opens the same directories again, with the same policy.
async fn reopen(store: Filesystem, policy: EvictionPolicy) -> Filesystem {
    let content = store.content_path().to_str().unwrap().to_owned();
    let temp = store.temp_path().to_str().unwrap().to_owned();
    drop(store);
    Filesystem::open(FilesystemConfig {
        eviction_policy: policy,
        read_buffer_size: 1000,
        ..FilesystemConfig::new(content, temp)
    })
    .await
    .unwrap()
}

#[test]
fn filesystem_conforms() {
    let dirs = Dirs::new();
    Conformance::new().check(|| {
        let config = dirs.config(EvictionPolicy::default());
        async move { Filesystem::open(config).await.unwrap() }
    });
}

#[test]
fn filesystem_with_eviction_conforms() {
    let dirs = Dirs::new();
    Conformance::new().may_forget(true).check(|| {
        let config = dirs.config(evicting());
        async move { Filesystem::open(config).await.unwrap() }
    });
}

#[test]
fn filesystem_conforms_across_reopen() {
    let dirs = Dirs::new();
    Conformance::new().check_with_reopen(
        || {
            let config = dirs.config(EvictionPolicy::default());
            async move { Filesystem::open(config).await.unwrap() }
        },
        |store| reopen(store, EvictionPolicy::default()),
    );
}

#[test]
fn filesystem_with_eviction_conforms_across_reopen() {
    let dirs = Dirs::new();
    Conformance::new().may_forget(true).check_with_reopen(
        || {
            let config = dirs.config(evicting());
            async move { Filesystem::open(config).await.unwrap() }
        },
        |store| reopen(store, evicting()),
    );
}
