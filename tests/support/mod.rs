//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use casstack::{EvictionPolicy, FilesystemConfig};

/// A fresh pair of directories per generated case, under one temp dir per test.
pub struct Dirs {
    root: tempfile::TempDir,
    next: AtomicU64,
}

impl Dirs {
    pub fn new() -> Self {
        Dirs {
            root: tempfile::tempdir().unwrap(),
            next: AtomicU64::new(0),
        }
    }

    pub fn config(&self, policy: EvictionPolicy) -> FilesystemConfig {
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
