//! A real "no space left on device": the store lives on a 1 MiB tmpfs.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Without it this test fails with a message saying so,
//! rather than skipping silently; the same failure path is also covered, without root, by
//! the injected-ENOSPC unit test in `src/stores/filesystem/tests.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use casstack::{Code, Digest, Filesystem, FilesystemConfig, StoreExt};

/// A tmpfs mounted for the life of the value.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running `mount`");
        assert!(
            output.status.success(),
            "this test mounts a {size} tmpfs to fill it and needs root (CAP_SYS_ADMIN) for that; \
             `mount` said: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs { path, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_put_cleanly_and_the_store_keeps_working() {
    let disk = Tmpfs::mount("1m");
    let content = disk.path().join("content");
    let temp = disk.path().join("tmp");
    let store = Filesystem::open(FilesystemConfig::new(
        content.to_str().unwrap(),
        temp.to_str().unwrap(),
    ))
    .await
    .unwrap();

    let first = Bytes::from(vec![1u8; 600 << 10]);
    let first_digest = Digest::of(&first);
    store.put_bytes(first_digest, first.clone()).await.unwrap();

    let second = Bytes::from(vec![2u8; 600 << 10]);
    let err = store
        .put_bytes(Digest::of(&second), second)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("No space left"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".casstack-lock")
        .collect();
    assert!(left.is_empty(), "the partial upload was deleted: {left:?}");
    assert_eq!(store.len(), 1);

    // The space the failed upload used is free again: the store keeps working.
    assert_eq!(store.get_bytes(first_digest).await.unwrap(), first);
    let small = Bytes::from(vec![3u8; 100 << 10]);
    store
        .put_bytes(Digest::of(&small), small.clone())
        .await
        .unwrap();
    assert_eq!(store.get_bytes(Digest::of(&small)).await.unwrap(), small);
    drop(store);
}
