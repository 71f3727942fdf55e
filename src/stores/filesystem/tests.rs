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

    /// The files in `temp_path`, but the lock file.
    fn temp_files(&self) -> BTreeSet<String> {
        let mut files = files_in(&self.dir.path().join("tmp"));
        files.remove(super::scan::LOCK_FILE);
        files
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
    let file = std::fs::File::options().write(true).open(path).unwrap();
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
async fn an_object_evicted_by_its_own_insert_is_deleted_without_deadlock() {
    let fx = Fixture::new();
    // Two blocks fit below max_bytes; reaching it evicts down to 0, including the newcomer.
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
    assert_eq!(store.has("b").await.unwrap(), None);
    assert!(fx.keys_on_disk().is_empty());
    store.put_bytes("c", "3".into()).await.unwrap();
    assert_eq!(store.get_bytes("c").await.unwrap(), "3");
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
