//! `Metrics` in layouts (`metrics { name, backend }`) and under the conformance checker:
//! `Metrics<Memory>` and a stack with a `Metrics` layer around every store, recorded by a
//! real (debugging) recorder so the counting paths run too.

use std::sync::OnceLock;

use casstack::testing::Conformance;
use casstack::{
    BoxStore, Code, Digest, ExistenceCache, FastSlow, FromSpec, Memory, Metrics, MetricsConfig,
    Store, StoreExt, StoreSpec, Verify, VerifyConfig,
};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};

/// One global recorder for this test binary (installed before any store is built).
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

fn named<S>(name: &str, inner: S) -> Metrics<S> {
    Metrics::new(inner, MetricsConfig { name: name.into() })
}

type Metered =
    Metrics<Verify<Metrics<ExistenceCache<Metrics<FastSlow<Metrics<Memory>, Metrics<Memory>>>>>>>;

fn metered() -> Metered {
    named(
        "verify",
        Verify::new(
            named(
                "existence_cache",
                ExistenceCache::new(
                    named(
                        "fast_slow",
                        FastSlow::new(
                            named("fast", Memory::default()),
                            named("slow", Memory::default()),
                            Default::default(),
                        ),
                    ),
                    Default::default(),
                ),
            ),
            VerifyConfig::default(),
        ),
    )
}

#[test]
fn metrics_memory_conforms() {
    recorder();
    Conformance::new().check(|| async { named("cas", Memory::default()) });
}

#[test]
fn a_stack_metered_at_every_layer_conforms() {
    recorder();
    Conformance::new()
        .name_keys(false)
        .check(|| async { metered() });
    // The counting really ran: the snapshot holds operations of the inner layers.
    let snapshot = recorder().snapshot().into_vec();
    assert!(
        snapshot
            .iter()
            .any(|(key, ..)| key.key().name() == "casstack_operations_total"
                && key.key().labels().any(|l| l.value() == "slow")),
        "no operation of the slow tier was recorded"
    );
}

casstack::layout!(type Layout = inline r#"
[metrics]
name = "cas"
[metrics.backend.verify.backend.metrics]
name = "memory"
backend.memory = {}
"#);

#[tokio::test]
async fn a_metrics_node_builds_statically_and_boxed() {
    recorder();
    let text = r#"
        [metrics]
        name = "cas"
        [metrics.backend.verify.backend.metrics]
        name = "memory"
        backend.memory = {}
    "#;
    let spec = StoreSpec::from_toml(text).unwrap();
    assert_eq!(spec.kind(), "metrics");
    let store: Layout = Layout::from_spec(&spec).await.unwrap();
    let _: &Metrics<Verify<Metrics<Memory>>> = &store;
    assert_eq!(store.name(), "cas");
    assert_eq!(store.get_ref().get_ref().name(), "memory");
    let d = Digest::of(b"laid out");
    store.put_bytes(d, "laid out".into()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), "laid out");
    assert!(store.check_health().await.is_ok());

    let boxed = BoxStore::from_spec(&spec).await.unwrap();
    boxed.put_bytes(d, "laid out".into()).await.unwrap();
    assert_eq!(boxed.has(d).await.unwrap(), Some(8));
    assert!(format!("{boxed:?}").contains("Metrics"));
}

#[tokio::test]
async fn metrics_nodes_refuse_bad_settings_and_shapes() {
    let err = StoreSpec::from_toml("metrics = { name = \"x\", colour = 1, backend.memory = {} }")
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("colour"), "{err}");
    let err = StoreSpec::from_toml("metrics = { name = \"x\" }").unwrap_err();
    assert!(
        err.message().contains("missing child store `backend`"),
        "{err}"
    );
    let err = StoreSpec::from_toml("metrics = { name = 3, backend.memory = {} }").unwrap_err();
    assert!(err.message().contains("string"), "{err}");
    // The default name.
    let spec = StoreSpec::from_toml("metrics.backend.noop = {}").unwrap();
    let store = Metrics::<casstack::Noop>::from_spec(&spec).await.unwrap();
    assert_eq!(store.name(), "store");
    // A static type of another shape says where.
    let spec = StoreSpec::from_toml("verify.backend.metrics.backend.noop = {}").unwrap();
    let err = Verify::<Metrics<Memory>>::from_spec(&spec)
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "verify.backend.metrics.backend: expected `memory`, found `noop`"
    );
    let err = Metrics::<Memory>::from_spec(&StoreSpec::from_toml("memory = {}").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.message(), "layout: expected `metrics`, found `memory`");
}
