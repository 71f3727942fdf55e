//! The conformance checker on `Filesystem`: plain, evicting, and reopened between steps.

mod support;

use casstack::testing::Conformance;
use casstack::{EvictionPolicy, Filesystem, FilesystemConfig};
use support::Dirs;

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
