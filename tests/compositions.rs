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
