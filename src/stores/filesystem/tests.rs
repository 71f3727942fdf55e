//! Unit tests of `Filesystem`: one per rule, bad input, races, restarts.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};

use super::store::Fault;
use super::{Filesystem, FilesystemConfig};
use crate::error::{Code, Error};
use crate::eviction::EvictionPolicy;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, Store, StoreExt, UploadSize};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, sub: &str) -> String {
        self.dir.path().join(sub).to_str().unwrap().to_owned()
    }

    fn config(&self) -> FilesystemConfig {
        FilesystemConfig::new(self.path("content"), self.path("tmp"))
    }

    fn with_policy(&self, policy: EvictionPolicy) -> FilesystemConfig {
        FilesystemConfig {
            eviction_policy: policy,
            ..self.config()
        }
    }

    async fn open(&self) -> Filesystem {
        Filesystem::open(self.config()).await.unwrap()
    }

    fn content(&self) -> std::path::PathBuf {
        self.dir.path().join("content")
    }

    /// The files in `temp_path`, but the lock file and the trash directory.
    fn temp_files(&self) -> BTreeSet<String> {
        let mut files = files_in(&self.dir.path().join("tmp"));
        files.remove(super::scan::LOCK_FILE);
        files.remove(super::store::TRASH);
        files
    }

    /// The files in the trash, once the background unlinks are done.
    async fn trash_after_settling(&self) -> BTreeSet<String> {
        super::temp::settled().await;
        let trash = self.dir.path().join("tmp").join(super::store::TRASH);
        if trash.exists() {
            files_in(&trash)
        } else {
            BTreeSet::new()
        }
    }

    /// Every key whose file is on disk.
    fn keys_on_disk(&self) -> BTreeSet<Key> {
        let mut keys = BTreeSet::new();
        for f in files_in(&self.content().join("d")) {
            keys.insert(Key::from(f.parse::<Digest>().unwrap()));
        }
        for f in files_in(&self.content().join("s")) {
            keys.insert(Key::from(super::names::unescape_name(&f).unwrap()));
        }
        keys
    }
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn count(n: u64) -> EvictionPolicy {
    EvictionPolicy {
        max_count: n,
        ..Default::default()
    }
}

fn blob(tag: &str, len: usize) -> (Digest, Bytes) {
    let data: Bytes = tag.bytes().cycle().take(len).collect::<Vec<u8>>().into();
    (Digest::of(&data), data)
}

fn set_atime(path: &Path, ago: Duration) {
    // Read-only: objects are 0444, and the owner may set the times through any descriptor.
    let file = std::fs::File::open(path).unwrap();
    file.set_times(std::fs::FileTimes::new().set_accessed(SystemTime::now() - ago))
        .unwrap();
}

#[tokio::test]
async fn digests_and_names_round_trip_in_their_directories() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let (d, data) = blob("digest", 10_000);
    assert_eq!(store.put_bytes(d, data.clone()).await.unwrap(), 10_000);
    store.put_bytes("action/1", "result".into()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(store.get_bytes("action/1").await.unwrap(), "result");
    assert_eq!(
        files_in(&fx.content().join("d")),
        BTreeSet::from([d.to_string()])
    );
    assert_eq!(
        files_in(&fx.content().join("s")),
        BTreeSet::from(["action%2F1".to_owned()])
    );
    assert!(fx.temp_files().is_empty());
}

#[tokio::test]
async fn has_reports_true_size_while_eviction_counts_blocks() {
    let fx = Fixture::new();
    let store = Filesystem::open(FilesystemConfig {
        block_size: 100,
        ..fx.with_policy(EvictionPolicy {
            max_bytes: 300,
            ..Default::default()
        })
    })
    .await
    .unwrap();
    store
        .put_bytes("a", Bytes::from(vec![1; 101]))
        .await
        .unwrap();
    assert_eq!(store.has("a").await.unwrap(), Some(101));
    assert_eq!(
        store.total_bytes(),
        200,
        "101 bytes are two 100-byte blocks"
    );
    // 200 + 100 reaches max_bytes (300): "a" is evicted although 101 + 1 bytes would fit.
    store.put_bytes("b", Bytes::from(vec![2; 1])).await.unwrap();
    assert_eq!(store.has("a").await.unwrap(), None);
    assert!(
        !fx.content().join("s/a").exists(),
        "eviction deleted the file"
    );
    // An exact size that rounds up to max_bytes can never fit: refused unread.
    let body = stream::iter(vec![Err(Error::new(Code::Internal, "body was read"))]);
    let err = store
        .put("c".into(), UploadSize::Exact(201), body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn ranges_and_read_buffer_size_shape_the_stream() {
    let fx = Fixture::new();
    let store = Filesystem::open(FilesystemConfig {
        read_buffer_size: 3,
        ..fx.config()
    })
    .await
    .unwrap();
    store.put_bytes("k", "0123456789".into()).await.unwrap();
    let chunks: Vec<Bytes> = store
        .get("k".into(), ByteRange::FULL)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(chunks, ["012", "345", "678", "9"]);
    let part = store
        .get_range_bytes("k", ByteRange::new(2, Some(5)))
        .await
        .unwrap();
    assert_eq!(part, "23456");
    let tail = store
        .get_range_bytes("k", ByteRange::new(8, Some(50)))
        .await
        .unwrap();
    assert_eq!(tail, "89");
    let end = store
        .get_range_bytes("k", ByteRange::from_offset(10))
        .await
        .unwrap();
    assert_eq!(end, "");
    let err = store
        .get_range_bytes("k", ByteRange::from_offset(11))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = store.get_bytes("missing").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.key(), Some(&Key::from("missing")));
}

#[tokio::test]
async fn empty_blob_is_virtual() {
    let fx = Fixture::new();
    let store = fx.open().await;
    assert_eq!(store.has(Digest::EMPTY).await.unwrap(), Some(0));
    assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
    store.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(store.is_empty());
    assert!(files_in(&fx.content().join("d")).is_empty());
    let err = store
        .put_bytes(Digest::EMPTY, "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An empty *name* value is a real object.
    store.put_bytes("", Bytes::new()).await.unwrap();
    assert_eq!(store.has("").await.unwrap(), Some(0));
    assert_eq!(store.get_bytes("").await.unwrap(), "");
}

#[tokio::test]
async fn names_never_escape_the_store_and_overlong_names_are_refused() {
    let fx = Fixture::new();
    let store = fx.open().await;
    for name in ["../escape", "/etc/passwd", "..", ".", "a/../../b", "nul\0"] {
        store.put_bytes(name, name.into()).await.unwrap();
        assert_eq!(store.get_bytes(name).await.unwrap(), name);
    }
    assert_eq!(files_in(&fx.content().join("s")).len(), 6);
    assert_eq!(
        files_in(fx.dir.path()),
        BTreeSet::from(["content".into(), "tmp".into()])
    );
    assert_eq!(
        files_in(&fx.content()),
        BTreeSet::from(["d".into(), "s".into(), super::scan::LOCK_FILE.into()])
    );

    let long = "x".repeat(300);
    let err = store
        .put_bytes(long.as_str(), "v".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.key(), Some(&Key::from(long.as_str())));
    assert_eq!(store.has(long.as_str()).await.unwrap(), None);
    let err = store.get_bytes(long.as_str()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(fx.temp_files().is_empty());
}

#[tokio::test]
async fn bodies_that_lie_or_fail_leave_nothing() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let (d, data) = blob("size", 100);
    // Declared size is not the digest's size: refused before reading.
    let err = store
        .put(
            d.into(),
            UploadSize::Exact(99),
            crate::OneChunk::new(data.slice(..99)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // At most N, but the body is shorter than the digest.
    let err = store
        .put(
            d.into(),
            UploadSize::AtMost(1000),
            crate::OneChunk::new(data.slice(..50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Longer than declared.
    let err = store
        .put(
            "n".into(),
            UploadSize::Exact(2),
            crate::OneChunk::new("abc".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A body that fails after more than one write batch reached the temp file.
    let big = Bytes::from(vec![7u8; 600 * 1024]);
    let failing = stream::iter(vec![
        Ok(big.clone()),
        Err(Error::new(Code::Aborted, "client went away")),
    ]);
    let err = store
        .put("n".into(), UploadSize::AtMost(1 << 30), failing)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(store.is_empty());
    assert!(fx.temp_files().is_empty());
    assert!(fx.keys_on_disk().is_empty());
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_put_deletes_its_temp_file() {
    let fx = Fixture::new();
    let store = fx.open().await;
    // The body yields one chunk larger than a write batch, then stalls; the put asks for the
    // next chunk only after that batch is in the temp file, and the stall tells the test so.
    let first = Bytes::from(vec![1u8; 300 * 1024]);
    let stalled = Arc::new(tokio::sync::Notify::new());
    let signal = stalled.clone();
    let stall = stream::poll_fn(move |_| -> std::task::Poll<Option<crate::Result<Bytes>>> {
        signal.notify_one();
        std::task::Poll::Pending
    });
    let body = stream::iter(vec![Ok(first)]).chain(stall);
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .put("k".into(), UploadSize::AtMost(1 << 30), body)
                .await
        }
    });
    stalled.notified().await;
    assert_eq!(
        fx.temp_files().len(),
        1,
        "the first batch is in a temp file"
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // Dropped on an async worker, the temp file is deleted on the blocking pool.
    super::temp::settled().await;
    assert!(fx.temp_files().is_empty(), "the dropped upload cleaned up");
    assert_eq!(store.has("k").await.unwrap(), None);
    store.put_bytes("k", "fine".into()).await.unwrap();
}

#[tokio::test]
async fn disk_full_and_permission_errors_fail_cleanly_and_the_store_recovers() {
    // ENOSPC cannot be produced on the test machine's disk without filling it, so it is
    // injected at the write and sync steps (tests/filesystem_enospc.rs fills a real tmpfs).
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put_bytes("k", "old".into()).await.unwrap();
    let cases = [
        (
            Fault::Write,
            io::ErrorKind::StorageFull,
            Code::ResourceExhausted,
        ),
        (
            Fault::Sync,
            io::ErrorKind::StorageFull,
            Code::ResourceExhausted,
        ),
        (
            Fault::Write,
            io::ErrorKind::PermissionDenied,
            Code::PermissionDenied,
        ),
        (
            Fault::Rename,
            io::ErrorKind::PermissionDenied,
            Code::PermissionDenied,
        ),
    ];
    for (at, kind, code) in cases {
        store.inject_fault(at, kind);
        let err = store.put_bytes("k", "new value".into()).await.unwrap_err();
        assert_eq!(err.code(), code, "{at:?} {kind:?}: {err}");
        assert_eq!(err.key(), Some(&Key::from("k")));
        assert!(fx.temp_files().is_empty(), "{at:?}: temp file left");
        assert_eq!(store.get_bytes("k").await.unwrap(), "old", "{at:?}");
        assert_eq!(store.has("k").await.unwrap(), Some(3));
    }
    store.put_bytes("k", "recovered".into()).await.unwrap();
    assert_eq!(store.get_bytes("k").await.unwrap(), "recovered");
}

#[tokio::test]
async fn a_temp_path_that_became_a_file_fails_puts_without_harm() {
    // Root ignores directory permissions, so "cannot create the temp file" is produced by
    // putting a regular file where the temp directory was.
    let fx = Fixture::new();
    let store = fx.open().await;
    let tmp = fx.dir.path().join("tmp");
    let moved = fx.dir.path().join("tmp-moved");
    std::fs::rename(&tmp, &moved).unwrap();
    std::fs::write(&tmp, "not a directory").unwrap();
    let err = store.put_bytes("k", "v".into()).await.unwrap_err();
    assert!(err.message().contains("creating a temp file"), "{err}");
    assert_eq!(store.has("k").await.unwrap(), None);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&moved, &tmp).unwrap();
    store.put_bytes("k", "v".into()).await.unwrap();
    assert_eq!(store.get_bytes("k").await.unwrap(), "v");
}

#[tokio::test]
async fn a_rename_that_fails_indexes_nothing() {
    let fx = Fixture::new();
    let store = fx.open().await;
    std::fs::remove_dir(fx.content().join("s")).unwrap();
    let err = store.put_bytes("k", "v".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("renaming"), "{err}");
    assert_eq!(store.has("k").await.unwrap(), None);
    assert!(fx.temp_files().is_empty());
}

#[tokio::test]
async fn eviction_deletes_the_file_before_listeners_hear_of_it() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(count(2))).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let path_a = store.path_of(&"a".into()).unwrap();
    store.subscribe_removals(Arc::new(move |k: &Key| {
        log.lock().unwrap().push((k.clone(), path_a.exists()));
    }));
    for k in ["a", "b", "c"] {
        store.put_bytes(k, k.into()).await.unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![(Key::from("a"), false)]);
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["b".into(), "c".into()]));
    assert!(store.remove(&"b".into()).await.unwrap());
    assert!(!store.remove(&"b".into()).await.unwrap());
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["c".into()]));
}

#[tokio::test]
async fn room_for_an_upload_is_made_before_it_so_the_newcomer_is_kept() {
    let fx = Fixture::new();
    // Two blocks reach max_bytes; making room evicts down to the low watermark, 0. The room
    // is made when the upload reserves its block, so the newcomer itself is never evicted
    // (before reservations, its own insert evicted it along with everything else).
    let store = Filesystem::open(fx.with_policy(EvictionPolicy {
        max_bytes: 8192,
        evict_bytes: 8192,
        ..Default::default()
    }))
    .await
    .unwrap();
    store.put_bytes("a", "1".into()).await.unwrap();
    assert_eq!(store.put_bytes("b", "2".into()).await.unwrap(), 1);
    assert_eq!(store.has("a").await.unwrap(), None);
    assert_eq!(store.has("b").await.unwrap(), Some(1));
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["b".into()]));
    // Of unknown size: the room is made when the size is known, before the commit.
    store
        .put(
            "c".into(),
            UploadSize::AtMost(10),
            crate::OneChunk::new("3".into()),
        )
        .await
        .unwrap();
    assert_eq!(store.get_bytes("c").await.unwrap(), "3");
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["c".into()]));
    assert!(fx.trash_after_settling().await.is_empty());
}

#[tokio::test]
async fn reads_survive_eviction_and_replacement_of_their_object() {
    let fx = Fixture::new();
    let store = Filesystem::open(FilesystemConfig {
        read_buffer_size: 4,
        ..fx.config()
    })
    .await
    .unwrap();
    store.put_bytes("k", "old value here".into()).await.unwrap();
    let mut replaced = store.get("k".into(), ByteRange::FULL).await.unwrap();
    assert_eq!(replaced.next().await.unwrap().unwrap(), "old ");
    store.put_bytes("k", "NEW".into()).await.unwrap();
    let rest: Vec<Bytes> = replaced.map(Result::unwrap).collect().await;
    assert_eq!(rest.concat(), b"value here");
    assert_eq!(store.get_bytes("k").await.unwrap(), "NEW");

    let mut evicted = store.get("k".into(), ByteRange::FULL).await.unwrap();
    store.remove(&"k".into()).await.unwrap();
    assert!(!store.path_of(&"k".into()).unwrap().exists());
    assert_eq!(evicted.next().await.unwrap().unwrap(), "NEW");
    assert!(evicted.next().await.is_none());
}

#[tokio::test]
async fn a_file_deleted_behind_the_stores_back_is_forgotten() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let (d, data) = blob("gone", 10);
    store.put_bytes(d, data).await.unwrap();
    store.put_bytes("name", "v".into()).await.unwrap();
    for key in [Key::from(d), Key::from("name")] {
        std::fs::remove_file(store.path_of(&key).unwrap()).unwrap();
        assert_eq!(
            store.get_bytes(key.clone()).await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(store.has(key).await.unwrap(), None);
    }
    assert!(store.is_empty());
}

#[tokio::test]
async fn restart_keeps_everything_acknowledged() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let mut expected = Vec::new();
    for i in 0..50 {
        let (d, data) = blob(&format!("blob{i}"), i * 997);
        if d.is_empty_blob() {
            continue;
        }
        store.put_bytes(d, data.clone()).await.unwrap();
        expected.push((Key::from(d), data.clone()));
        let name = format!("name/{i}");
        store.put_bytes(name.as_str(), data.clone()).await.unwrap();
        expected.push((Key::from(name), data));
    }
    store.put_bytes("", Bytes::new()).await.unwrap();
    drop(store);
    let reopened = fx.open().await;
    assert_eq!(reopened.len(), expected.len() + 1);
    for (key, data) in expected {
        assert_eq!(
            reopened.has(key.clone()).await.unwrap(),
            Some(data.len() as u64)
        );
        assert_eq!(reopened.get_bytes(key).await.unwrap(), data);
    }
    assert_eq!(reopened.get_bytes("").await.unwrap(), "");
}

#[tokio::test]
async fn restart_orders_lru_by_access_time_and_expires_old_files() {
    let fx = Fixture::new();
    let store = fx.open().await;
    for k in ["newest", "middle", "oldest", "ancient"] {
        store.put_bytes(k, k.into()).await.unwrap();
    }
    let age = |k: &str, secs| {
        set_atime(
            &store.path_of(&k.into()).unwrap(),
            Duration::from_secs(secs),
        )
    };
    age("newest", 10);
    age("middle", 100);
    age("oldest", 1000);
    age("ancient", 10_000);
    drop(store);
    let reopened = Filesystem::open(fx.with_policy(EvictionPolicy {
        max_seconds: 3600,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        reopened.keys(),
        vec![Key::from("oldest"), "middle".into(), "newest".into()],
        "LRU first = oldest access first; the 10 000 s old file expired"
    );
    assert!(!fx.content().join("s/ancient").exists(), "and was deleted");
    // A read records the access in the file, so it counts after the next restart too.
    reopened.get_bytes("oldest").await.unwrap();
    drop(reopened);
    let again = fx.open().await;
    assert_eq!(again.keys().last(), Some(&Key::from("oldest")));
}

#[tokio::test]
async fn startup_deletes_invalid_files_and_wipes_temp() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let (good, data) = blob("good", 64);
    store.put_bytes(good, data.clone()).await.unwrap();
    store.put_bytes("name", "v".into()).await.unwrap();
    drop(store);
    let d = fx.content().join("d");
    let s = fx.content().join("s");
    let (truncated, full) = blob("truncated", 100);
    std::fs::write(d.join(truncated.to_string()), &full[..60]).unwrap();
    let (long, _) = blob("long", 10);
    std::fs::write(d.join(long.to_string()), [0u8; 11]).unwrap();
    std::fs::write(d.join("junk"), "x").unwrap();
    std::fs::write(d.join(good.to_string().to_uppercase()), &data).unwrap();
    std::fs::write(d.join(Digest::EMPTY.to_string()), "").unwrap();
    std::fs::create_dir(d.join(blob("dir", 3).0.to_string())).unwrap();
    std::fs::write(s.join("%61"), "non-canonical spelling of a").unwrap();
    std::fs::write(s.join(".hidden"), "a leading dot is always escaped").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", s.join("link")).unwrap();
    std::fs::write(fx.dir.path().join("tmp/123-4.upload"), "partial").unwrap();

    let reopened = fx.open().await;
    assert_eq!(
        fx.keys_on_disk(),
        BTreeSet::from([Key::from(good), Key::from("name")])
    );
    assert_eq!(reopened.len(), 2);
    assert_eq!(reopened.get_bytes(good).await.unwrap(), data);
    assert!(fx.temp_files().is_empty());
    assert!(
        std::fs::metadata("/etc/hostname").is_ok(),
        "a symlink's target is untouched"
    );
}

#[tokio::test]
async fn startup_refuses_temp_on_another_filesystem() {
    use std::os::unix::fs::MetadataExt as _;
    let fx = Fixture::new();
    let other = tempfile::tempdir_in("/dev/shm")
        .expect("this test needs /dev/shm (a tmpfs) for a second filesystem");
    assert_ne!(
        std::fs::metadata(other.path()).unwrap().dev(),
        std::fs::metadata(fx.dir.path()).unwrap().dev(),
        "this test needs the temp dir and /dev/shm on different filesystems"
    );
    let config = FilesystemConfig::new(fx.path("content"), other.path().to_str().unwrap());
    let err = Filesystem::open(config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("different filesystems"), "{err}");
}

#[tokio::test]
async fn startup_refuses_a_temp_path_among_the_objects() {
    let fx = Fixture::new();
    let config = FilesystemConfig::new(fx.path("content"), fx.path("content/d/tmp"));
    let err = Filesystem::open(config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("inside"), "{err}");
    let config = FilesystemConfig::new(fx.path("c"), "$CASSTACK_SURELY_UNSET_VARIABLE/tmp");
    let err = Filesystem::open(config).await.unwrap_err();
    assert!(
        err.message().contains("CASSTACK_SURELY_UNSET_VARIABLE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_concurrent_writes_all_complete() {
    let fx = Fixture::new();
    let store = Filesystem::open(FilesystemConfig {
        max_concurrent_writes: 1,
        ..fx.config()
    })
    .await
    .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let (d, data) = blob(&format!("w{i}"), 1000 + i);
                store.put_bytes(d, data.clone()).await.unwrap();
                assert_eq!(store.get_bytes(d).await.unwrap(), data);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.len(), 32);
}

/// Many tasks put, replace, read, remove and evict the same few keys; afterwards the index
/// and the disk must agree exactly and every object must read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_puts_reads_and_evictions_keep_index_and_disk_in_agreement() {
    let fx = Fixture::new();
    let store = Filesystem::open(FilesystemConfig {
        read_buffer_size: 512,
        ..fx.with_policy(EvictionPolicy {
            max_count: 5,
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let value = |name: &str, version: usize| -> Bytes {
        format!("{name}:{version}:")
            .repeat(100 + version % 7)
            .into()
    };
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..60usize {
                    let name = format!("k{}", (i * 7 + t) % 8);
                    match (i + t) % 4 {
                        0 | 1 => {
                            store
                                .put_bytes(name.as_str(), value(&name, i))
                                .await
                                .unwrap();
                        }
                        2 => match store.get_bytes(name.as_str()).await {
                            Ok(bytes) => {
                                let text = std::str::from_utf8(&bytes).unwrap();
                                let version: usize =
                                    text.split(':').nth(1).unwrap().parse().unwrap();
                                assert_eq!(bytes, value(&name, version), "whole, never mixed");
                            }
                            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e}"),
                        },
                        _ => {
                            store.remove(&name.as_str().into()).await.unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    store.evict_now().await.unwrap();
    let indexed: BTreeSet<Key> = store.keys().into_iter().collect();
    assert_eq!(indexed, fx.keys_on_disk());
    assert!(indexed.len() <= 5);
    for key in indexed {
        let bytes = store.get_bytes(key.clone()).await.unwrap();
        assert_eq!(store.has(key).await.unwrap(), Some(bytes.len() as u64));
    }
    assert!(fx.temp_files().is_empty());
}

/// Concurrent uploads of one digest and evictions of it: whatever the interleaving, a key the
/// index holds has its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_racing_an_eviction_of_the_same_digest_never_loses_the_file() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(count(1))).await.unwrap();
    let (hot, hot_data) = blob("hot", 5000);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let hot_data = hot_data.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    if t % 2 == 0 {
                        store.put_bytes(hot, hot_data.clone()).await.unwrap();
                    } else {
                        // Each of these evicts `hot` (max_count 1).
                        let (d, data) = blob(&format!("cold{t}-{i}"), 100);
                        store.put_bytes(d, data).await.unwrap();
                    }
                    if store.has(hot).await.unwrap().is_some() {
                        match store.get_bytes(hot).await {
                            Ok(bytes) => assert_eq!(bytes, hot_data),
                            Err(e) => assert_eq!(e.code(), Code::NotFound),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    store.evict_now().await.unwrap();
    let indexed: BTreeSet<Key> = store.keys().into_iter().collect();
    assert_eq!(indexed, fx.keys_on_disk());
    assert_eq!(indexed.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_objects_are_deleted() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(EvictionPolicy {
        max_seconds: 60,
        ..Default::default()
    }))
    .await
    .unwrap();
    store.put_bytes("a", "1".into()).await.unwrap();
    store.put_bytes("b", "2".into()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(store.evict_now().await.unwrap(), 2);
    assert!(fx.keys_on_disk().is_empty());
    store.put_bytes("c", "3".into()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    // A read of an expired key finds nothing; its file goes on the next commit.
    assert_eq!(store.has("c").await.unwrap(), None);
    store.put_bytes("d", "4".into()).await.unwrap();
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["d".into()]));
}

#[tokio::test]
async fn one_directory_serves_one_open_store() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put_bytes("k", "v".into()).await.unwrap();
    let err = Filesystem::open(fx.config()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("in use by another open store"),
        "{err}"
    );
    // Another content_path sharing the temp_path is refused too: it would wipe our uploads.
    let shared_temp = FilesystemConfig::new(fx.path("other"), fx.path("tmp"));
    let err = Filesystem::open(shared_temp).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        store.get_bytes("k").await.unwrap(),
        "v",
        "the first store is untouched"
    );
    drop(store);
    let reopened = fx.open().await;
    assert_eq!(reopened.get_bytes("k").await.unwrap(), "v");
}

/// Evicted files leave `content_path` at once (renamed into `temp_path/trash` under their
/// key's lock) and are unlinked in the background; a restart wipes what the trash still holds.
#[tokio::test]
async fn evicted_files_go_through_the_trash_and_a_restart_empties_it() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(count(3))).await.unwrap();
    for i in 0..10 {
        store
            .put_bytes(format!("k{i}").as_str(), "v".into())
            .await
            .unwrap();
    }
    // Gone from content_path as soon as the put that evicted them returned.
    assert_eq!(
        fx.keys_on_disk(),
        BTreeSet::from(["k7".into(), "k8".into(), "k9".into()])
    );
    assert!(fx.trash_after_settling().await.is_empty(), "unlinked");
    assert!(fx.temp_files().is_empty());
    drop(store);

    // A crash between the rename and the unlink leaves files in the trash.
    let trash = fx.dir.path().join("tmp").join(super::store::TRASH);
    std::fs::create_dir_all(trash.join("sub")).unwrap();
    std::fs::write(trash.join("17"), "evicted").unwrap();
    let store = Filesystem::open(fx.with_policy(count(3))).await.unwrap();
    assert!(!trash.exists(), "wiped at startup");
    assert_eq!(store.len(), 3);
}

/// An upload racing the eviction of its own key, many times over with a tiny store: the
/// trash rename checks the index under the key's lock, so it never takes the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trash_renames_never_take_a_newer_file_of_the_key() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(count(2))).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let name = format!("k{}", (i + t) % 3);
                    store
                        .put_bytes(name.as_str(), name.clone().into())
                        .await
                        .unwrap();
                    if let Ok(bytes) = store.get_bytes(name.as_str()).await {
                        assert_eq!(bytes, name.as_bytes());
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let indexed: BTreeSet<Key> = store.keys().into_iter().collect();
    assert_eq!(indexed, fx.keys_on_disk());
    assert!(fx.trash_after_settling().await.is_empty());
}

/// A body that sends `first` (if any), tells `sent`, then waits for `rest`.
fn held_body(
    first: Option<Bytes>,
    sent: Arc<tokio::sync::Notify>,
    rest: tokio::sync::oneshot::Receiver<Bytes>,
) -> impl crate::Body {
    let head = stream::iter(first.into_iter().map(Ok));
    let tail = stream::once(async move {
        sent.notify_one();
        Ok(rest.await.unwrap_or_default())
    });
    Box::pin(
        head.chain(tail)
            .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty()))),
    )
}

/// A put of `size` (declared as `declared`) held open by its body; returns the task, the
/// sender that completes it, after the body has been asked for data once more.
async fn held_put(
    store: &Filesystem,
    key: &str,
    declared: UploadSize,
    first: Option<Bytes>,
) -> (
    tokio::task::JoinHandle<crate::Result<u64>>,
    tokio::sync::oneshot::Sender<Bytes>,
) {
    let sent = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let body = held_body(first, sent.clone(), rx);
    let store = store.clone();
    let key = Key::from(key);
    let task = tokio::spawn(async move { store.put(key, declared, body).await });
    sent.notified().await;
    (task, tx)
}

const BLOCK: u64 = 4096;

/// Uploads of declared size reserve it before reading their bodies; the stored objects plus
/// the reservations stay below max_bytes, by evicting or, when even an empty store could not
/// hold them, by refusing the newcomer.
#[tokio::test]
async fn uploads_of_known_size_reserve_their_space_up_front() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(EvictionPolicy {
        max_bytes: 10 * BLOCK,
        ..Default::default()
    }))
    .await
    .unwrap();
    store.put_bytes("x", "x".into()).await.unwrap();
    store.put_bytes("y", "y".into()).await.unwrap();
    store.has("y").await.unwrap(); // y is the more recently used
    let a_data = Bytes::from(vec![b'a'; 3 * BLOCK as usize]);
    let (a, a_rest) = held_put(&store, "a", UploadSize::Exact(3 * BLOCK), None).await;
    assert_eq!(store.in_flight_bytes(), 3 * BLOCK);
    let (b, _b_rest) = held_put(&store, "b", UploadSize::Exact(4 * BLOCK), None).await;
    assert_eq!(store.in_flight_bytes(), 7 * BLOCK);
    assert_eq!(
        store.len(),
        2,
        "2 stored + 7 reserved < 10 blocks: nothing evicted"
    );

    // 2 + 7 + 1 reaches max_bytes: the least recently used object makes room.
    store.put_bytes("c", "c".into()).await.unwrap();
    assert_eq!(store.has("x").await.unwrap(), None);
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["y".into(), "c".into()]));
    assert_eq!(store.total_bytes() + store.in_flight_bytes(), 9 * BLOCK);

    // 7 reserved + 3 reaches max_bytes with nothing stored at all: refused before the body
    // is read, and nothing is evicted for it.
    let err = store
        .put(
            "d".into(),
            UploadSize::Exact(3 * BLOCK),
            stream::iter(vec![Ok::<_, Error>(Bytes::from(vec![
                0u8;
                3 * BLOCK as usize
            ]))]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("uploads in progress"), "{err}");
    assert_eq!(err.key(), Some(&Key::from("d")));
    assert_eq!(store.len(), 2);
    assert_eq!(store.in_flight_bytes(), 7 * BLOCK);

    // A commit turns its reservation into its object; a dropped upload frees its reservation.
    a_rest.send(a_data.clone()).unwrap();
    assert_eq!(a.await.unwrap().unwrap(), 3 * BLOCK);
    assert_eq!(store.in_flight_bytes(), 4 * BLOCK);
    assert_eq!(store.total_bytes(), 5 * BLOCK);
    b.abort();
    assert!(b.await.unwrap_err().is_cancelled());
    assert_eq!(store.in_flight_bytes(), 0);
    assert_eq!(store.get_bytes("a").await.unwrap(), a_data);
    // The space is usable again.
    store
        .put_bytes("d", vec![0u8; 3 * BLOCK as usize].into())
        .await
        .unwrap();
    assert_eq!(store.in_flight_bytes(), 0);
}

/// Uploads of unknown size reserve what they have written so far, batch by batch; one that
/// outgrows the room left fails with ResourceExhausted and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_unknown_size_reserve_as_their_bytes_reach_the_disk() {
    let fx = Fixture::new();
    let store = Filesystem::open(fx.with_policy(EvictionPolicy {
        max_bytes: 100 * BLOCK,
        ..Default::default()
    }))
    .await
    .unwrap();
    let chunk = Bytes::from(vec![1u8; 75 * BLOCK as usize]); // more than a write batch
    let (held, _rest) = held_put(
        &store,
        "held",
        UploadSize::AtMost(1 << 30),
        Some(chunk.clone()),
    )
    .await;
    assert_eq!(store.in_flight_bytes(), 75 * BLOCK);
    assert_eq!(fx.temp_files().len(), 1);

    // 75 + 75 blocks would reach max_bytes: the second upload fails once its first batch
    // is ready to be written.
    let err = store
        .put(
            "second".into(),
            UploadSize::AtMost(1 << 30),
            stream::iter(vec![Ok::<_, Error>(chunk.clone()), Ok(chunk.clone())]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(store.in_flight_bytes(), 75 * BLOCK);
    assert_eq!(
        fx.temp_files().len(),
        1,
        "the refused upload left no temp file"
    );
    assert_eq!(store.has("second").await.unwrap(), None);

    // A small upload of unknown size still fits: 75 + 1 < 100.
    store
        .put(
            "small".into(),
            UploadSize::AtMost(1 << 30),
            crate::OneChunk::new("s".into()),
        )
        .await
        .unwrap();
    held.abort();
    assert!(held.await.unwrap_err().is_cancelled());
    assert_eq!(store.in_flight_bytes(), 0);
    super::temp::settled().await;
    assert!(fx.temp_files().is_empty());
    assert_eq!(store.len(), 1);
}

/// Objects are read-only files (0444), so a hard link to one cannot change the store; being
/// read-only stops none of replacement, removal, eviction or the startup scan.
#[tokio::test]
async fn objects_are_read_only_files_that_can_still_be_replaced_and_evicted() {
    use std::os::unix::fs::PermissionsExt as _;
    let fx = Fixture::new();
    let mode = |key: &str| {
        std::fs::metadata(fx.content().join("s").join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let store = Filesystem::open(fx.with_policy(count(2))).await.unwrap();
    let (d, data) = blob("ro", 1000);
    store.put_bytes(d, data.clone()).await.unwrap();
    let digest_file = store.path_of(&d.into()).unwrap();
    assert_eq!(
        std::fs::metadata(&digest_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o444
    );
    store.put_bytes("k", "old".into()).await.unwrap();
    assert_eq!(mode("k"), 0o444);
    store.put_bytes("k", "new".into()).await.unwrap();
    assert_eq!(store.get_bytes("k").await.unwrap(), "new");
    assert_eq!(mode("k"), 0o444);
    // The digest is evicted (count 2) by a third key.
    store.put_bytes("j", "j".into()).await.unwrap();
    assert!(!digest_file.exists());
    assert!(fx.trash_after_settling().await.is_empty());
    assert!(store.remove(&"j".into()).await.unwrap());
    assert_eq!(fx.keys_on_disk(), BTreeSet::from(["k".into()]));
    drop(store);

    // The startup scan indexes read-only objects and deletes read-only invalid files.
    let junk = fx.content().join("d").join("not-a-digest");
    std::fs::write(&junk, "junk").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o444)).unwrap();
    let store = Filesystem::open(fx.with_policy(count(2))).await.unwrap();
    assert!(!junk.exists());
    assert_eq!(store.get_bytes("k").await.unwrap(), "new");
}
