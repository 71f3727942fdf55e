//! Every example layout under `layouts/` is expanded by `layout!` into its static type AND
//! built from the same TOML at run time, then checked for conformance; so the macro's model,
//! the runtime spec and the stores cannot drift apart.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use casstack::testing::Conformance;
use casstack::{BoxStore, Code, FromSpec, Store, StoreSpec};

casstack::layout!(type Dev = "layouts/dev.toml");
casstack::layout!(type Local = "layouts/local.toml");
casstack::layout!(type SingleNode = "layouts/single-node.toml");
casstack::layout!(type Reliable = "layouts/reliable.toml");
casstack::layout!(type Tiered = "layouts/tiered.toml");
casstack::layout!(type RedisTier = "layouts/redis-tier.toml");
casstack::layout!(type Production = "layouts/production.toml");

/// Every layout file and whether the stack takes name keys (`verify` takes only digests).
const LAYOUTS: &[(&str, bool)] = &[
    ("dev.toml", true),
    ("local.toml", true),
    ("single-node.toml", false),
    ("reliable.toml", false),
    ("tiered.toml", false),
    ("redis-tier.toml", false),
    ("production.toml", false),
];

/// Where a layout's placeholders point: `$CASSTACK_DATA` at a fresh directory under `root`,
/// `$REDIS_URL` / `$KEY_PREFIX` at the test's Redis server and a fresh prefix.
struct Places<'a> {
    root: &'a Path,
    redis: Option<String>,
    s3: Option<&'a casstack::testing::S3Server>,
}

fn spec(file: &str, root: &Path) -> StoreSpec {
    spec_in(
        file,
        &Places {
            root,
            redis: None,
            s3: None,
        },
    )
}

fn spec_in(file: &str, places: &Places<'_>) -> StoreSpec {
    let root = places.root;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let case = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(case.to_string());
    let mut text = std::fs::read_to_string(Path::new("layouts").join(file)).unwrap();
    if let Some(url) = &places.redis {
        text = text
            .replace("$REDIS_URL", url)
            .replace("$KEY_PREFIX", &format!("case{case}:"));
    }
    if let Some(s3) = places.s3 {
        // A fresh bucket per case, created before the store is built from the layout.
        let config = s3.config();
        let bucket = config.bucket.clone();
        // On a thread of its own: this runs inside the checker's runtime.
        std::thread::scope(|t| {
            t.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(s3.fresh_store(config))
            });
        });
        text = text
            .replace("$S3_BUCKET", &bucket)
            .replace("$S3_ENDPOINT", s3.endpoint());
    }
    let text = text.replace("$CASSTACK_DATA", dir.to_str().unwrap());
    StoreSpec::from_toml(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn conforms<S: Store + FromSpec>(file: &str) {
    let root = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new("layouts").join(file)).unwrap();
    // Started only for layouts that use Redis, stopped when the test ends.
    let server = text
        .contains("$REDIS_URL")
        .then(casstack::testing::RedisServer::start);
    let s3 = text
        .contains("$S3_ENDPOINT")
        .then(casstack::testing::S3Server::start);
    let places = Places {
        root: root.path(),
        redis: server.as_ref().map(|s| s.url()),
        s3: s3.as_ref(),
    };
    let names = LAYOUTS.iter().find(|(f, _)| *f == file).unwrap().1;
    let checker = Conformance::new().cases(24).name_keys(names);
    checker.check(|| {
        let spec = spec_in(file, &places);
        async move { S::from_spec(&spec).await.unwrap() }
    });
    checker.check(|| {
        let spec = spec_in(file, &places);
        async move { BoxStore::from_spec(&spec).await.unwrap() }
    });
}

#[test]
fn every_layout_file_is_tested() {
    let mut files: Vec<String> = std::fs::read_dir("layouts")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".toml"))
        .collect();
    files.sort();
    let mut listed: Vec<&str> = LAYOUTS.iter().map(|(f, _)| *f).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn dev_layout_conforms() {
    conforms::<Dev>("dev.toml");
}

#[test]
fn local_layout_conforms() {
    conforms::<Local>("local.toml");
}

#[test]
fn single_node_layout_conforms() {
    conforms::<SingleNode>("single-node.toml");
}

#[test]
fn reliable_layout_conforms() {
    conforms::<Reliable>("reliable.toml");
}

#[test]
fn tiered_layout_conforms() {
    conforms::<Tiered>("tiered.toml");
}

#[test]
fn production_layout_conforms() {
    conforms::<Production>("production.toml");
}

#[test]
fn production_layout_reads_the_same_from_json() {
    let toml = std::fs::read_to_string("layouts/production.toml").unwrap();
    let json = std::fs::read_to_string("layouts/production.json").unwrap();
    assert_eq!(
        StoreSpec::from_json(&json).unwrap(),
        StoreSpec::from_toml(&toml).unwrap()
    );
}

#[test]
fn redis_tier_layout_conforms() {
    conforms::<RedisTier>("redis-tier.toml");
}

#[tokio::test]
async fn a_spec_of_another_shape_says_where() {
    let root = tempfile::tempdir().unwrap();
    let err = match Local::from_spec(&spec("reliable.toml", root.path())).await {
        Err(e) => e,
        Ok(_) => panic!("a verify layout built as a fast_slow type"),
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "layout: expected `fast_slow`, found `verify`"
    );

    let text = "[fast_slow.fast.memory]\n[fast_slow.slow.noop]\n";
    let err = match Local::from_spec(&StoreSpec::from_toml(text).unwrap()).await {
        Err(e) => e,
        Ok(_) => panic!("noop built as a filesystem"),
    };
    assert_eq!(
        err.message(),
        "fast_slow.slow: expected `filesystem`, found `noop`"
    );
}

#[tokio::test]
async fn a_size_checking_filesystem_under_compression_is_refused_at_build_time() {
    let root = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("layouts/single-node.toml")
        .unwrap()
        .replace("check_digest_sizes = false", "")
        .replace("$CASSTACK_DATA", root.path().to_str().unwrap());
    let spec = StoreSpec::from_toml(&text).unwrap();
    let err = BoxStore::from_spec(&spec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("check_digest_sizes = false"),
        "{err}"
    );
}

#[tokio::test]
async fn digest_checks_anywhere_below_a_byte_changing_store_are_refused_at_build_time() {
    let root = tempfile::tempdir().unwrap();
    let fs = format!(
        "filesystem = {{ content_path = '{0}/c', temp_path = '{0}/t' }}",
        root.path().display()
    );
    let build = |toml: String| async move {
        let spec = StoreSpec::from_toml(&toml).unwrap();
        BoxStore::from_spec(&spec).await.map(drop)
    };
    let refused = [
        (
            format!("[compression.backend.fast_slow]\nfast.memory = {{}}\nslow.{fs}"),
            "compression.backend.fast_slow.slow.filesystem: under a store that changes the bytes, \
             a filesystem needs check_digest_sizes = false",
        ),
        (
            format!(
                "[compression.backend.shard]\nstores = [{{ store.existence_cache.backend.{fs} }}]"
            ),
            "compression.backend.shard.stores.store.existence_cache.backend.filesystem",
        ),
        (
            "[compression.backend.verify]\nbackend.memory = {}".to_string(),
            "compression.backend.verify: under a store that changes the bytes, a verify store",
        ),
        (
            format!(
                "[dedup]\ncontent_store.memory = {{}}\nindex_store.metrics = {{ name = 'i', backend.{fs} }}"
            ),
            "dedup.index_store.metrics.backend.filesystem",
        ),
    ];
    for (toml, expected) in refused {
        let err = build(toml.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{toml}");
        assert!(err.message().contains(expected), "{toml}\n{err}");
    }
    // A dedup's content store gets chunks under their true digests, and a verify that checks
    // nothing is harmless: both build.
    let accepted = [
        format!("[dedup]\nindex_store.memory = {{}}\ncontent_store.{fs}"),
        "[compression.backend.verify]\nverify_size = false\nverify_hash = false\nbackend.memory = {}"
            .to_string(),
    ];
    for toml in accepted {
        build(toml.clone())
            .await
            .unwrap_or_else(|e| panic!("{toml}\n{e}"));
    }
}

// 16 levels: the deepest layout the macro accepts, built, spawned and used.
casstack::layout!(type Deepest = inline r#"
verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.verify.backend.existence_cache.backend.fast_slow = { fast.memory = {}, slow.memory = {} }
"#);

#[tokio::test]
async fn a_16_deep_layout_compiles_and_runs_on_a_spawned_task() {
    use casstack::{Digest, StoreExt};
    let mut text = String::from("fast_slow = { fast.memory = {}, slow.memory = {} }");
    for level in 0..14 {
        let kind = if level % 2 == 0 {
            "existence_cache"
        } else {
            "verify"
        };
        text = format!("{kind}.backend.{text}");
    }
    let spec = StoreSpec::from_toml(&text).unwrap();
    let store = Deepest::from_spec(&spec).await.unwrap();
    let d = Digest::of(b"deep");
    let copy = store.clone();
    tokio::spawn(async move { copy.put_bytes(d, "deep".into()).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), "deep");
}

casstack::layout!(type SharedCas = inline r#"existence_cache.backend.ref_store = { name = "CAS" }"#);

#[tokio::test]
async fn ref_store_nodes_share_a_registered_store() {
    use casstack::spec::BuildContext;
    use casstack::{Memory, Registry, StoreExt};
    let cas = Memory::default();
    let registry = Registry::new();
    registry.insert("CAS", cas.clone()).unwrap();
    let spec =
        StoreSpec::from_toml(r#"existence_cache.backend.ref_store = { name = "CAS" }"#).unwrap();
    let cx = BuildContext::new(registry.clone());
    let shared = SharedCas::from_spec_in(&spec, &cx).await.unwrap();
    shared.put_bytes("k", "shared".into()).await.unwrap();
    assert_eq!(cas.get_bytes("k").await.unwrap(), "shared");

    let missing = StoreSpec::from_toml(r#"ref_store = { name = "AC" }"#).unwrap();
    let err = BoxStore::from_spec_with(&missing, registry)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("AC"), "{err}");
}
