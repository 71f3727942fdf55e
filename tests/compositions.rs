//! Compositions across stores built in different modules: each must pass the conformance
//! checker as a whole.

mod support;

use casstack::testing::Conformance;
use casstack::wrappers::compress::{Compress, CompressConfig};
use casstack::{Code, Digest, EvictionPolicy, Filesystem, StoreExt};
use support::Dirs;

fn small_frames() -> CompressConfig {
    CompressConfig {
        block_size: 1024,
        ..Default::default()
    }
}

#[test]
fn compress_over_filesystem_conforms_across_reopen() {
    let dirs = Dirs::new();
    let open = |config| async move {
        Compress::new(Filesystem::open(config).await.unwrap(), small_frames()).unwrap()
    };
    let reopen = |store: Compress<Filesystem>| async move {
        let fs = store.get_ref();
        let mut config = casstack::FilesystemConfig::new(
            fs.content_path().to_str().unwrap(),
            fs.temp_path().to_str().unwrap(),
        );
        config.check_digest_sizes = false;
        drop(store);
        Compress::new(Filesystem::open(config).await.unwrap(), small_frames()).unwrap()
    };
    Conformance::new().check_with_reopen(
        || {
            let mut config = dirs.config(EvictionPolicy::default());
            config.check_digest_sizes = false;
            open(config)
        },
        reopen,
    );
}

#[tokio::test]
async fn compress_over_a_size_checking_filesystem_fails_loudly_and_stores_nothing() {
    let dirs = Dirs::new();
    let fs = Filesystem::open(dirs.config(EvictionPolicy::default()))
        .await
        .unwrap();
    let store = Compress::new(fs.clone(), small_frames()).unwrap();
    let data = bytes::Bytes::from(vec![b'a'; 10_000]);
    let digest = Digest::of(&data);
    let err = store.put_bytes(digest, data).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("check_digest_sizes"), "{err}");
    assert_eq!(fs.has(digest).await.unwrap(), None);
}

#[test]
fn fast_slow_memory_over_filesystem_conforms_across_reopen() {
    use casstack::{FastSlow, FastSlowConfig, Memory};
    let dirs = Dirs::new();
    let open = |config| async move {
        let slow = Filesystem::open(config).await.unwrap();
        FastSlow::new(Memory::default(), slow, FastSlowConfig::default())
    };
    // A restart loses the memory tier and keeps the filesystem.
    let reopen = |store: FastSlow<Memory, Filesystem>| async move {
        let fs = store.slow();
        let config = casstack::FilesystemConfig::new(
            fs.content_path().to_str().unwrap(),
            fs.temp_path().to_str().unwrap(),
        );
        drop(store);
        let slow = Filesystem::open(config).await.unwrap();
        FastSlow::new(Memory::default(), slow, FastSlowConfig::default())
    };
    Conformance::new().check_with_reopen(|| open(dirs.config(EvictionPolicy::default())), reopen);
}

#[test]
fn verify_over_compress_over_dedup_conforms() {
    use casstack::wrappers::dedup::{Dedup, DedupConfig};
    use casstack::{Memory, Verify, VerifyConfig};
    let dedup_config = DedupConfig {
        min_size: 64,
        normal_size: 256,
        max_size: 1024,
        small_blob_threshold: 512,
        max_concurrent_fetches: 3,
    };
    Conformance::new().name_keys(false).check(|| async move {
        let dedup = Dedup::new(Memory::default(), Memory::default(), dedup_config).unwrap();
        let compress = Compress::new(dedup, small_frames()).unwrap();
        Verify::new(
            compress,
            VerifyConfig {
                verify_on_get: true,
                ..Default::default()
            },
        )
    });
}
