//! `check_health` through stacks: a broken directory or a failing child is reported, named by
//! its place in the stack; healthy stacks report ok.

use casstack::testing::{Fault, Faulty, Operation};
use casstack::{
    BoxStore, Code, ExistenceCache, FastSlow, Filesystem, FilesystemConfig, HealthStatus, Memory,
    Noop, Shard, SizePartition, Store, StoreExt, Verify,
};

async fn filesystem(dir: &std::path::Path) -> Filesystem {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_owned();
    Filesystem::open(FilesystemConfig::new(p("content"), p("tmp")))
        .await
        .unwrap()
}

fn failure(status: &HealthStatus) -> (String, String) {
    assert_eq!(status.failures().len(), 1, "{status}");
    let f = &status.failures()[0];
    (f.store.to_string(), f.message.clone())
}

#[tokio::test]
async fn a_filesystem_whose_temp_path_is_gone_or_a_file_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = filesystem(dir.path()).await;
    assert_eq!(store.check_health().await, HealthStatus::Ok);
    // Tests may run as root, where a read-only directory is still writable: replace the
    // directory by a file instead.
    std::fs::remove_dir_all(store.temp_path()).unwrap();
    std::fs::write(store.temp_path(), b"not a directory").unwrap();
    let status = store.check_health().await;
    let (who, message) = failure(&status);
    assert_eq!(who, "Filesystem");
    assert!(
        message.contains("temp_path") && message.contains("not a directory"),
        "{message}"
    );
    // Gone altogether.
    std::fs::remove_file(store.temp_path()).unwrap();
    let (_, message) = failure(&store.check_health().await);
    assert!(message.contains("temp_path"), "{message}");
    // Back: healthy again.
    std::fs::create_dir(store.temp_path()).unwrap();
    assert!(store.check_health().await.is_ok());
}

#[tokio::test]
async fn a_filesystem_missing_its_digest_directory_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = filesystem(dir.path()).await;
    std::fs::remove_dir_all(store.content_path().join("d")).unwrap();
    let (_, message) = failure(&store.check_health().await);
    assert!(message.contains("content_path/d"), "{message}");
}

#[tokio::test]
async fn a_wrapper_reports_which_child_failed() {
    let slow = Faulty::new(Memory::default());
    let store = Verify::new(
        ExistenceCache::new(
            FastSlow::new(Memory::default(), slow.clone(), Default::default()),
            Default::default(),
        ),
        Default::default(),
    );
    // The first check writes the probe: a failing put is reported, by path.
    slow.inject(Operation::Put, Fault::Fail(Code::Unavailable), 1);
    let status = store.check_health().await;
    let (who, message) = failure(&status);
    assert_eq!(who, "Verify > ExistenceCache > FastSlow.slow > Faulty");
    assert!(
        message.contains("put of the probe blob failed"),
        "{message}"
    );
    assert!(message.contains("Unavailable"), "{message}");
    assert!(store.check_health().await.is_ok(), "the fault was used up");
    // While the probe is there and intact, checks only read (peers.md item 35).
    let puts = slow.calls(Operation::Put);
    for _ in 0..3 {
        assert!(store.check_health().await.is_ok());
    }
    assert_eq!(slow.calls(Operation::Put), puts, "no write per check");
    // A read that fails is reported; the probe is rewritten and read again, and the second
    // read fails too.
    slow.inject(Operation::Get, Fault::Fail(Code::Unavailable), 2);
    let (who, message) = failure(&store.check_health().await);
    assert_eq!(who, "Verify > ExistenceCache > FastSlow.slow > Faulty");
    assert!(
        message.contains("get of the probe blob failed"),
        "{message}"
    );
    // Through a BoxStore too.
    slow.inject(Operation::Get, Fault::Fail(Code::Unavailable), 2);
    let boxed = BoxStore::new(store.clone());
    let (who, message) = failure(&boxed.check_health().await);
    assert_eq!(who, "Verify > ExistenceCache > FastSlow.slow > Faulty");
    assert!(
        message.contains("get of the probe blob failed"),
        "{message}"
    );
    assert!(boxed.check_health().await.is_ok(), "the fault was used up");
}

#[tokio::test]
async fn every_failing_child_is_reported() {
    let (a, b) = (Faulty::new(Memory::default()), Faulty::new(Noop));
    let store = SizePartition::new(a.clone(), b.clone(), Default::default());
    // Noop keeps nothing: its round trip through Faulty finds no probe.
    let status = store.check_health().await;
    let (who, message) = failure(&status);
    assert_eq!(who, "SizePartition.upper_store > Faulty");
    assert!(
        message.contains("has of the probe blob found None"),
        "{message}"
    );
    // Twice: the read-only pass and the rewrite both ask.
    a.inject(Operation::Has, Fault::Fail(Code::Internal), 2);
    let status = store.check_health().await;
    let stores: Vec<_> = status
        .failures()
        .iter()
        .map(|f| f.store.to_string())
        .collect();
    assert_eq!(
        stores,
        [
            "SizePartition.lower_store > Faulty",
            "SizePartition.upper_store > Faulty"
        ]
    );
    assert!(
        status
            .to_string()
            .starts_with("failed: SizePartition.lower_store > Faulty: ")
    );

    let shard = Shard::new(vec![
        (BoxStore::new(Memory::default()), 1),
        (BoxStore::new(Faulty::new(Noop)), 1),
    ])
    .unwrap();
    let (who, _) = failure(&shard.check_health().await);
    assert_eq!(who, "Shard[1] > Faulty");
}

#[tokio::test]
async fn healthy_leaves_and_the_default_round_trip() {
    assert!(Noop.check_health().await.is_ok());
    let memory = Memory::default();
    assert!(memory.check_health().await.is_ok());
    assert!(memory.is_empty(), "Memory's check stores nothing");
    // A store without a check of its own (Faulty) gets the round trip, which leaves the probe.
    let faulty = Faulty::new(memory.clone());
    assert!(faulty.check_health().await.is_ok());
    assert_eq!(memory.len(), 1);
}

/// The probe blob, as written by the default check.
fn probe_digest() -> casstack::Digest {
    casstack::Digest::of(b"casstack health check probe v1\n")
}

#[cfg(feature = "zstd")]
#[tokio::test]
async fn compress_checks_its_backend_then_leaves_the_probe_readable_through_itself() {
    use casstack::Compress;
    let backend = Faulty::new(Memory::default());
    let store = Compress::new(backend.clone(), Default::default()).unwrap();
    assert!(store.check_health().await.is_ok());
    // The backend's own round trip wrote the probe raw; Compress's rewrote it compressed.
    let probe = store.get_bytes(probe_digest()).await.unwrap();
    assert_eq!(probe, &b"casstack health check probe v1\n"[..]);
    backend.inject(Operation::Put, Fault::Fail(Code::Unavailable), 1);
    let (who, _) = failure(&store.check_health().await);
    assert_eq!(who, "Compress > Faulty");
}

#[cfg(feature = "dedup")]
#[tokio::test]
async fn dedup_checks_both_stores_then_leaves_the_probe_readable_through_itself() {
    use casstack::Dedup;
    let index = Faulty::new(Memory::default());
    let store = Dedup::new(index.clone(), Memory::default(), Default::default()).unwrap();
    assert!(store.check_health().await.is_ok());
    assert_eq!(
        store.get_bytes(probe_digest()).await.unwrap(),
        &b"casstack health check probe v1\n"[..]
    );
    index.inject(Operation::Get, Fault::Fail(Code::Unavailable), 1);
    let (who, _) = failure(&store.check_health().await);
    assert_eq!(who, "Dedup.index_store > Faulty");
}
