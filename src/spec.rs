//! Layouts: the serde model of a store stack ([`StoreSpec`]), read from TOML (or JSON, for
//! people coming from NativeLink), and [`FromSpec`], which builds a store from it.
//!
//! The shape and field names mirror NativeLink's store spec: one key per store
//! (`memory`, `fast_slow`, ...), children as nested tables. Sizes are written as integers or
//! human strings (`"1mib"` is binary, `"1mb"` decimal, as NativeLink), durations as seconds or
//! strings (`"90s"`, `"30m"`, `"12h"`, `"7d"`).
//!
//! ```
//! use casstack::{FromSpec, Memory, StoreSpec};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
//! let spec = StoreSpec::from_toml(r#"
//! [memory.eviction_policy]
//! max_bytes = "64mib"
//! max_seconds = "1h"
//! "#)?;
//! let store = Memory::from_spec(&spec).await?;
//! # let _ = store;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use crate::boxed::BoxStore;
use crate::error::{Code, Error, Result};
use crate::store::Store;
use crate::stores::filesystem::FilesystemConfig;
use crate::stores::memory::{Memory, MemoryConfig};
use crate::stores::noop::Noop;
use crate::wrappers::{
    ExistenceCache, ExistenceCacheConfig, FastSlow, FastSlowConfig, Ref, Registry, Shard,
    SizePartition, SizePartitionConfig, Verify, VerifyConfig,
};

/// One node of a layout: a store and, for wrappers, its children.
///
/// Each variant's doc gives its TOML form; the field names follow NativeLink's store spec.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml("noop = {}").unwrap();
/// assert_eq!(spec.kind(), "noop");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreSpec {
    /// [`Memory`]: `memory = { eviction_policy = { max_bytes = "1gib" } }`.
    Memory(MemoryConfig),
    /// [`Noop`]: `noop = {}`.
    Noop(NoopSpec),
    /// `Filesystem` (feature `fs`):
    /// `filesystem = { content_path = "~/.cache/cas/content", temp_path = "~/.cache/cas/tmp" }`.
    Filesystem(FilesystemConfig),
    /// `S3` (feature `s3`): `s3_store = { bucket = "cas", region = "eu-west-1" }`; see
    /// [`S3Config`](crate::S3Config) for the other fields.
    S3Store(Box<crate::stores::s3::S3Config>),
    /// [`FastSlow`]: `fast_slow = { fast = { memory = {} }, slow = { filesystem = {..} } }`,
    /// plus `fast_direction`, `slow_direction` (`both`, `update`, `get`, `read_only`).
    FastSlow(FastSlowSpec),
    /// [`SizePartition`]:
    /// `size_partitioning = { size = "1mib", lower_store = {..}, upper_store = {..} }`.
    SizePartitioning(SizePartitioningSpec),
    /// `Compress` (feature `zstd`): `compression = { backend = {..}, level = 3 }`.
    Compression(CompressionSpec),
    /// `Dedup` (feature `dedup`): `dedup = { index_store = {..}, content_store = {..} }`.
    Dedup(DedupSpec),
    /// [`Verify`]: `verify = { backend = {..}, verify_size = true, verify_hash = true }`.
    Verify(VerifySpec),
    /// [`ExistenceCache`]: `existence_cache = { backend = {..}, eviction_policy = {..} }`.
    ExistenceCache(ExistenceCacheSpec),
    /// [`Shard`]: `shard = { stores = [{ store = {..}, weight = 1 }, ..] }`.
    Shard(ShardSpec),
    /// [`Ref`]: `ref_store = { name = "CAS" }`, a store registered under that name in the
    /// [`Registry`] the layout is built with.
    RefStore(RefStoreSpec),
    /// `Metrics` (feature `metrics`): `metrics = { name = "cas", backend = {..} }`, counts
    /// and latencies of the store inside under the label `name`.
    Metrics(MetricsSpec),
    /// `Redis` (feature `redis`):
    /// `redis_store = { addresses = ["redis://127.0.0.1:6379"], key_prefix = "cas:" }`.
    RedisStore(crate::stores::redis::RedisConfig),
    /// [`BoxStore`] around the store inside: `boxed = { memory = {} }`. Cuts the static type
    /// of a deep subtree, at the cost of dynamic dispatch at this one level.
    Boxed(Box<StoreSpec>),
}

/// The (empty) settings of a [`Noop`] store.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml("noop = {}").unwrap();
/// assert!(matches!(spec, casstack::StoreSpec::Noop(_)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopSpec {}

/// The fields of a wrapper node, read once, then taken apart into children and settings.
struct NodeFields(serde_json::Map<String, serde_json::Value>);

impl NodeFields {
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        serde_json::Map::deserialize(deserializer).map(NodeFields)
    }

    fn child<E: serde::de::Error>(&mut self, name: &str) -> std::result::Result<Box<StoreSpec>, E> {
        let value = self
            .0
            .remove(name)
            .ok_or_else(|| E::custom(format!("missing child store `{name}`")))?;
        serde_json::from_value(value)
            .map(Box::new)
            .map_err(|e| E::custom(format!("in `{name}`: {e}")))
    }

    /// The remaining fields as the wrapper's settings (`deny_unknown_fields` applies).
    fn config<C: DeserializeOwned, E: serde::de::Error>(self) -> std::result::Result<C, E> {
        serde_json::from_value(serde_json::Value::Object(self.0)).map_err(E::custom)
    }
}

/// Declares a wrapper node: named child stores plus the wrapper's settings, side by side in
/// one table (serde's `flatten` cannot reject unknown fields, so this reads them by hand).
macro_rules! wrapper_node {
    ($(#[$doc:meta])* $name:ident { $($child:ident),+ } $config:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize)]
        pub struct $name {
            $(
                #[doc = concat!("The `", stringify!($child), "` store.")]
                pub $child: Box<StoreSpec>,
            )+
            /// The wrapper's own settings, written beside the children.
            #[serde(flatten)]
            pub config: $config,
        }

        impl $name {
            /// The child stores, by field name.
            #[cfg_attr(not(any(feature = "zstd", feature = "dedup")), allow(dead_code))]
            fn children(&self) -> Vec<(&'static str, &StoreSpec)> {
                vec![$((stringify!($child), &*self.$child)),+]
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let mut fields = NodeFields::read(d)?;
                $(let $child = fields.child(stringify!($child))?;)+
                Ok($name { $($child,)+ config: fields.config()? })
            }
        }
    };
}

wrapper_node!(
    /// A `fast_slow` node.
    FastSlowSpec { fast, slow } FastSlowConfig
);
wrapper_node!(
    /// A `size_partitioning` node.
    SizePartitioningSpec { lower_store, upper_store } SizePartitionConfig
);
wrapper_node!(
    /// A `verify` node.
    VerifySpec { backend } VerifyConfig
);
wrapper_node!(
    /// An `existence_cache` node.
    ExistenceCacheSpec { backend } ExistenceCacheConfig
);
#[cfg(feature = "zstd")]
wrapper_node!(
    /// A `compression` node.
    CompressionSpec { backend } crate::wrappers::compress::CompressConfig
);
#[cfg(feature = "dedup")]
wrapper_node!(
    /// A `dedup` node.
    DedupSpec { index_store, content_store } crate::wrappers::dedup::DedupConfig
);
#[cfg(feature = "metrics")]
wrapper_node!(
    /// A `metrics` node.
    MetricsSpec { backend } crate::wrappers::metrics::MetricsConfig
);
/// A `metrics` node; this build lacks feature `metrics`, so it is kept unread.
#[cfg(not(feature = "metrics"))]
pub type MetricsSpec = DisabledSpec;
/// A `compression` node; this build lacks feature `zstd`, so it is kept unread.
#[cfg(not(feature = "zstd"))]
pub type CompressionSpec = DisabledSpec;
/// A `dedup` node; this build lacks feature `dedup`, so it is kept unread.
#[cfg(not(feature = "dedup"))]
pub type DedupSpec = DisabledSpec;

/// A node of a store whose cargo feature is off: parsed as any value, and building it is
/// `Unimplemented` naming the feature.
///
/// ```
/// let node: casstack::spec::DisabledSpec = serde_json::from_str("{\"a\": 1}").unwrap();
/// # let _ = node;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisabledSpec(serde_json::Value);

/// A `shard` node: the stores and their weights.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml(r#"
/// [[shard.stores]]
/// store.memory = {}
/// weight = 2
/// [[shard.stores]]
/// store.memory = {}
/// "#).unwrap();
/// let casstack::StoreSpec::Shard(shard) = spec else { unreachable!() };
/// assert_eq!(shard.stores[1].weight, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    /// The shards, at least one.
    pub stores: Vec<ShardEntry>,
}

/// One store of a [`ShardSpec`].
///
/// ```
/// let entry: casstack::spec::ShardEntry = toml::from_str("store.noop = {}").unwrap();
/// assert_eq!(entry.weight, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The store.
    pub store: StoreSpec,
    /// Its share of the keys relative to the others. Default: 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A `ref_store` node.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml(r#"ref_store = { name = "CAS" }"#).unwrap();
/// assert_eq!(spec.kind(), "ref_store");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefStoreSpec {
    /// The name the store was registered under.
    pub name: String,
}

impl StoreSpec {
    /// Reads a layout from TOML text. Errors are `InvalidArgument` with the line and column.
    ///
    /// ```
    /// let err = casstack::StoreSpec::from_toml("[memroy]").unwrap_err();
    /// assert!(err.message().contains("memroy"));
    /// ```
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("invalid layout: {e}")))
    }

    /// Reads a layout from JSON text (NativeLink's format, one store node).
    ///
    /// ```
    /// let spec = casstack::StoreSpec::from_json(r#"{ "memory": {} }"#).unwrap();
    /// assert_eq!(spec.kind(), "memory");
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("invalid layout: {e}")))
    }

    /// The store key of this node (`"memory"`, `"fast_slow"`, ...).
    ///
    /// ```
    /// assert_eq!(casstack::StoreSpec::Noop(Default::default()).kind(), "noop");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Memory(_) => "memory",
            StoreSpec::Noop(_) => "noop",
            StoreSpec::Filesystem(_) => "filesystem",
            StoreSpec::S3Store(_) => "s3_store",
            StoreSpec::FastSlow(_) => "fast_slow",
            StoreSpec::SizePartitioning(_) => "size_partitioning",
            StoreSpec::Compression(_) => "compression",
            StoreSpec::Dedup(_) => "dedup",
            StoreSpec::Verify(_) => "verify",
            StoreSpec::ExistenceCache(_) => "existence_cache",
            StoreSpec::Shard(_) => "shard",
            StoreSpec::RefStore(_) => "ref_store",
            StoreSpec::Metrics(_) => "metrics",
            StoreSpec::RedisStore(_) => "redis_store",
            StoreSpec::Boxed(_) => "boxed",
        }
    }

    /// The children of a wrapper node written with named fields (none for the others).
    #[cfg(any(feature = "zstd", feature = "dedup"))]
    fn wrapper_children(&self) -> Vec<(&'static str, &StoreSpec)> {
        match self {
            StoreSpec::FastSlow(node) => node.children(),
            StoreSpec::SizePartitioning(node) => node.children(),
            #[cfg(feature = "zstd")]
            StoreSpec::Compression(node) => node.children(),
            #[cfg(feature = "dedup")]
            StoreSpec::Dedup(node) => node.children(),
            StoreSpec::Verify(node) => node.children(),
            StoreSpec::ExistenceCache(node) => node.children(),
            #[cfg(feature = "metrics")]
            StoreSpec::Metrics(node) => node.children(),
            _ => Vec::new(),
        }
    }
}

/// Where a node sits in the layout (for error messages) and what it is built with.
///
/// ```
/// let cx = casstack::spec::BuildContext::new(casstack::Registry::new());
/// assert_eq!(cx.path(), "");
/// ```
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    path: String,
    registry: Registry,
}

impl BuildContext {
    /// The root of a layout whose `ref_store` nodes resolve in `registry`.
    pub fn new(registry: Registry) -> Self {
        BuildContext {
            path: String::new(),
            registry,
        }
    }

    /// The path of the node in the layout (`fast_slow.slow`), empty at the root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The registry `ref_store` nodes resolve in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The context of the child `field` of a `kind` node.
    pub fn child(&self, kind: &str, field: &str) -> BuildContext {
        let path = match (self.path.is_empty(), field.is_empty()) {
            (true, true) => kind.to_string(),
            (true, false) => format!("{kind}.{field}"),
            (false, true) => format!("{}.{kind}", self.path),
            (false, false) => format!("{}.{kind}.{field}", self.path),
        };
        BuildContext {
            path,
            registry: self.registry.clone(),
        }
    }

    /// `InvalidArgument` naming this node: it is not the store the type expects.
    fn mismatch(&self, expected: &str, found: &StoreSpec) -> Error {
        let at = if self.path.is_empty() {
            "layout"
        } else {
            &self.path
        };
        Error::new(
            Code::InvalidArgument,
            format!("{at}: expected `{expected}`, found `{}`", found.kind()),
        )
    }

    /// Puts this node's path in front of an error from building it.
    fn located(&self, e: Error) -> Error {
        let at = if self.path.is_empty() {
            "layout"
        } else {
            &self.path
        };
        e.context(at)
    }
}

/// Builds a store from its layout node.
///
/// Implemented structurally by every store and wrapper: a wrapper matches its own node and
/// recurses into its children's types. For a static type, a spec of another shape is an
/// `InvalidArgument` error that says where (`fast_slow.slow: expected memory, found noop`).
///
/// ```
/// use casstack::{FromSpec, Memory, StoreSpec};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let spec = StoreSpec::from_toml("noop = {}").unwrap();
/// let err = Memory::from_spec(&spec).await.unwrap_err();
/// assert_eq!(err.message(), "layout: expected `memory`, found `noop`");
/// # }
/// ```
pub trait FromSpec: Sized {
    /// Builds the store from `spec`, the node at `cx.path()` of a layout.
    fn from_spec_in(
        spec: &StoreSpec,
        cx: &BuildContext,
    ) -> impl Future<Output = Result<Self>> + Send;

    /// Builds the store from the root of a layout (with an empty registry).
    fn from_spec(spec: &StoreSpec) -> impl Future<Output = Result<Self>> + Send {
        async move { Self::from_spec_in(spec, &BuildContext::default()).await }
    }
}

impl FromSpec for Memory {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        match spec {
            StoreSpec::Memory(config) => Ok(Memory::new(config.clone())),
            other => Err(cx.mismatch("memory", other)),
        }
    }
}

impl FromSpec for Noop {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        match spec {
            StoreSpec::Noop(_) => Ok(Noop),
            other => Err(cx.mismatch("noop", other)),
        }
    }
}

#[cfg(feature = "fs")]
impl FromSpec for crate::stores::filesystem::Filesystem {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        match spec {
            StoreSpec::Filesystem(config) => {
                Self::open(config.clone()).await.map_err(|e| cx.located(e))
            }
            other => Err(cx.mismatch("filesystem", other)),
        }
    }
}

#[cfg(feature = "redis")]
impl FromSpec for crate::stores::redis::Redis {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        match spec {
            StoreSpec::RedisStore(config) => Self::connect(config.clone())
                .await
                .map_err(|e| cx.located(e)),
            other => Err(cx.mismatch("redis_store", other)),
        }
    }
}

#[cfg(feature = "s3")]
impl FromSpec for crate::stores::s3::S3 {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        match spec {
            StoreSpec::S3Store(config) => Self::new((**config).clone()).map_err(|e| cx.located(e)),
            other => Err(cx.mismatch("s3_store", other)),
        }
    }
}

impl<F: FromSpec + Store, S: FromSpec + Store> FromSpec for FastSlow<F, S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::FastSlow(node) = spec else {
            return Err(cx.mismatch("fast_slow", spec));
        };
        let fast = F::from_spec_in(&node.fast, &cx.child("fast_slow", "fast")).await?;
        let slow = S::from_spec_in(&node.slow, &cx.child("fast_slow", "slow")).await?;
        Ok(FastSlow::new(fast, slow, node.config))
    }
}

impl<L: FromSpec + Store, U: FromSpec + Store> FromSpec for SizePartition<L, U> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::SizePartitioning(node) = spec else {
            return Err(cx.mismatch("size_partitioning", spec));
        };
        let lower_cx = cx.child("size_partitioning", "lower_store");
        let lower = L::from_spec_in(&node.lower_store, &lower_cx).await?;
        let upper_cx = cx.child("size_partitioning", "upper_store");
        let upper = U::from_spec_in(&node.upper_store, &upper_cx).await?;
        Ok(SizePartition::new(lower, upper, node.config))
    }
}

impl<S: FromSpec + Store> FromSpec for Verify<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::Verify(node) = spec else {
            return Err(cx.mismatch("verify", spec));
        };
        let inner = S::from_spec_in(&node.backend, &cx.child("verify", "backend")).await?;
        Ok(Verify::new(inner, node.config))
    }
}

impl<S: FromSpec + Store> FromSpec for ExistenceCache<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::ExistenceCache(node) = spec else {
            return Err(cx.mismatch("existence_cache", spec));
        };
        let backend_cx = cx.child("existence_cache", "backend");
        let inner = S::from_spec_in(&node.backend, &backend_cx).await?;
        if node.config.eviction_policy.max_seconds == 0 && !inner.reports_all_removals() {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "{}: the backend ({}) does not report every removal (an s3_store, whose \
                     objects expire; a dedup, whose chunks may be lost; a redis_store without \
                     notify-keyspace-events \"Exe\" or unreachable at startup), so cached \
                     answers could outlive the blobs: set eviction_policy.max_seconds to \
                     bound how long an answer is trusted",
                    cx.child("existence_cache", "").path(),
                    node.backend.kind()
                ),
            ));
        }
        Ok(ExistenceCache::new(inner, node.config))
    }
}

#[cfg(any(feature = "zstd", feature = "dedup"))]
/// Below a store that keeps other bytes under digest keys (Compress; Dedup's index), a
/// filesystem that checks digest sizes or a verify that checks digests would refuse every
/// upload: say so when the layout is built, not on the first upload. Walks the whole subtree
/// (a `fast_slow`, `shard` or `existence_cache` in between changes nothing), except a Dedup's
/// content store, which gets chunks under their own true digests, and `ref_store`s, which are
/// built on their own.
fn refuse_digest_checks_below(spec: &StoreSpec, cx: &BuildContext) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::new(
            Code::InvalidArgument,
            format!(
                "{}.{}: under a store that changes the bytes, {what}",
                cx.path(),
                spec.kind()
            ),
        ))
    };
    match spec {
        StoreSpec::Filesystem(config) if config.check_digest_sizes => {
            refuse("a filesystem needs check_digest_sizes = false")
        }
        StoreSpec::Verify(node) if node.config.verify_size || node.config.verify_hash => refuse(
            "a verify store would refuse every upload (set verify_size and verify_hash to false, or move it above)",
        ),
        #[cfg(feature = "dedup")]
        StoreSpec::Dedup(node) => {
            refuse_digest_checks_below(&node.index_store, &cx.child("dedup", "index_store"))
        }
        StoreSpec::Shard(node) => node.stores.iter().try_for_each(|entry| {
            refuse_digest_checks_below(&entry.store, &cx.child("shard", "stores.store"))
        }),
        StoreSpec::Boxed(inner) => refuse_digest_checks_below(inner, &cx.child("boxed", "")),
        _ => spec
            .wrapper_children()
            .into_iter()
            .try_for_each(|(field, child)| {
                refuse_digest_checks_below(child, &cx.child(spec.kind(), field))
            }),
    }
}

#[cfg(feature = "zstd")]
impl<S: FromSpec + Store> FromSpec for crate::wrappers::compress::Compress<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::Compression(node) = spec else {
            return Err(cx.mismatch("compression", spec));
        };
        let backend_cx = cx.child("compression", "backend");
        refuse_digest_checks_below(&node.backend, &backend_cx)?;
        let inner = S::from_spec_in(&node.backend, &backend_cx).await?;
        Self::new(inner, node.config).map_err(|e| cx.located(e))
    }
}

#[cfg(feature = "dedup")]
impl<I: FromSpec + Store, C: FromSpec + Store> FromSpec for crate::wrappers::dedup::Dedup<I, C> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::Dedup(node) = spec else {
            return Err(cx.mismatch("dedup", spec));
        };
        let index_cx = cx.child("dedup", "index_store");
        refuse_digest_checks_below(&node.index_store, &index_cx)?;
        let index = I::from_spec_in(&node.index_store, &index_cx).await?;
        let content_cx = cx.child("dedup", "content_store");
        let content = C::from_spec_in(&node.content_store, &content_cx).await?;
        Self::new(index, content, node.config).map_err(|e| cx.located(e))
    }
}

#[cfg(feature = "metrics")]
impl<S: FromSpec + Store> FromSpec for crate::wrappers::metrics::Metrics<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::Metrics(node) = spec else {
            return Err(cx.mismatch("metrics", spec));
        };
        let inner = S::from_spec_in(&node.backend, &cx.child("metrics", "backend")).await?;
        Ok(Self::new(inner, node.config.clone()))
    }
}

impl<S: FromSpec + Store> FromSpec for Shard<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::Shard(node) = spec else {
            return Err(cx.mismatch("shard", spec));
        };
        let mut shards = Vec::with_capacity(node.stores.len());
        for (i, entry) in node.stores.iter().enumerate() {
            let store_cx = cx.child("shard", &format!("stores[{i}].store"));
            shards.push((
                S::from_spec_in(&entry.store, &store_cx).await?,
                entry.weight,
            ));
        }
        Shard::new(shards).map_err(|e| cx.located(e))
    }
}

impl<S: Store> FromSpec for Ref<S> {
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        let StoreSpec::RefStore(node) = spec else {
            return Err(cx.mismatch("ref_store", spec));
        };
        // A `Ref<BoxStore>` (what `layout!` emits for `ref_store`) takes any registered
        // store, type-erased; any other `Ref<S>` needs the store to be an `S`.
        let typed = cx.registry.get::<S>(&node.name);
        if typed.is_err()
            && let Ok(boxed) = cx.registry.get_boxed(&node.name)
            && let Some(boxed) = (&boxed as &dyn std::any::Any).downcast_ref::<Ref<S>>()
        {
            return Ok(boxed.clone());
        }
        typed.map_err(|e| cx.located(e))
    }
}

impl FromSpec for BoxStore {
    /// Any node (a `boxed` node builds the store inside it).
    async fn from_spec_in(spec: &StoreSpec, cx: &BuildContext) -> Result<Self> {
        BoxStore::build(spec, cx).await
    }
}

type BoxedBuild<'a> = Pin<Box<dyn Future<Output = Result<BoxStore>> + Send + 'a>>;

impl BoxStore {
    /// Builds any layout at run time; every wrapper's children are `BoxStore`s.
    ///
    /// ```
    /// use casstack::{BoxStore, StoreExt, StoreSpec};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// let spec = StoreSpec::from_toml("fast_slow = { fast.memory = {}, slow.memory = {} }")?;
    /// let store = BoxStore::from_spec(&spec).await?;
    /// store.put_bytes("k", "v".into()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_spec(spec: &StoreSpec) -> Result<BoxStore> {
        BoxStore::build(spec, &BuildContext::default()).await
    }

    /// As [`from_spec`](Self::from_spec), resolving `ref_store` nodes in `registry`.
    ///
    /// ```
    /// use casstack::{BoxStore, Memory, Registry, StoreSpec};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// let registry = Registry::new();
    /// registry.insert("CAS", Memory::default())?;
    /// let spec = StoreSpec::from_toml(r#"ref_store = { name = "CAS" }"#)?;
    /// let store = BoxStore::from_spec_with(&spec, registry).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn from_spec_with(spec: &StoreSpec, registry: Registry) -> Result<BoxStore> {
        BoxStore::build(spec, &BuildContext::new(registry)).await
    }

    /// The run-time factory: boxed because it recurses through layouts of any depth.
    fn build<'a>(spec: &'a StoreSpec, cx: &'a BuildContext) -> BoxedBuild<'a> {
        Box::pin(async move {
            Ok(match spec {
                StoreSpec::Memory(_) => BoxStore::new(Memory::from_spec_in(spec, cx).await?),
                StoreSpec::Noop(_) => BoxStore::new(Noop),
                #[cfg(feature = "fs")]
                StoreSpec::Filesystem(_) => BoxStore::new(
                    crate::stores::filesystem::Filesystem::from_spec_in(spec, cx).await?,
                ),
                #[cfg(not(feature = "fs"))]
                StoreSpec::Filesystem(_) => return Err(disabled(cx, "filesystem", "fs")),
                #[cfg(feature = "s3")]
                StoreSpec::S3Store(_) => {
                    BoxStore::new(crate::stores::s3::S3::from_spec_in(spec, cx).await?)
                }
                #[cfg(not(feature = "s3"))]
                StoreSpec::S3Store(_) => return Err(disabled(cx, "s3_store", "s3")),
                StoreSpec::FastSlow(_) => {
                    BoxStore::new(FastSlow::<BoxStore, BoxStore>::from_spec_in(spec, cx).await?)
                }
                StoreSpec::SizePartitioning(_) => BoxStore::new(
                    SizePartition::<BoxStore, BoxStore>::from_spec_in(spec, cx).await?,
                ),
                #[cfg(feature = "zstd")]
                StoreSpec::Compression(_) => BoxStore::new(
                    crate::wrappers::compress::Compress::<BoxStore>::from_spec_in(spec, cx).await?,
                ),
                #[cfg(not(feature = "zstd"))]
                StoreSpec::Compression(_) => return Err(disabled(cx, "compression", "zstd")),
                #[cfg(feature = "dedup")]
                StoreSpec::Dedup(_) => BoxStore::new(
                    crate::wrappers::dedup::Dedup::<BoxStore, BoxStore>::from_spec_in(spec, cx)
                        .await?,
                ),
                #[cfg(not(feature = "dedup"))]
                StoreSpec::Dedup(_) => return Err(disabled(cx, "dedup", "dedup")),
                StoreSpec::Verify(_) => {
                    BoxStore::new(Verify::<BoxStore>::from_spec_in(spec, cx).await?)
                }
                StoreSpec::ExistenceCache(_) => {
                    BoxStore::new(ExistenceCache::<BoxStore>::from_spec_in(spec, cx).await?)
                }
                StoreSpec::Shard(_) => {
                    BoxStore::new(Shard::<BoxStore>::from_spec_in(spec, cx).await?)
                }
                StoreSpec::RefStore(node) => BoxStore::new(
                    cx.registry
                        .get_boxed(&node.name)
                        .map_err(|e| cx.located(e))?,
                ),
                #[cfg(feature = "metrics")]
                StoreSpec::Metrics(_) => BoxStore::new(
                    crate::wrappers::metrics::Metrics::<BoxStore>::from_spec_in(spec, cx).await?,
                ),
                #[cfg(not(feature = "metrics"))]
                StoreSpec::Metrics(_) => return Err(disabled(cx, "metrics", "metrics")),
                #[cfg(feature = "redis")]
                StoreSpec::RedisStore(_) => {
                    BoxStore::new(crate::stores::redis::Redis::from_spec_in(spec, cx).await?)
                }
                #[cfg(not(feature = "redis"))]
                StoreSpec::RedisStore(_) => return Err(disabled(cx, "redis_store", "redis")),
                StoreSpec::Boxed(inner) => BoxStore::build(inner, &cx.child("boxed", "")).await?,
            })
        })
    }
}

/// `Unimplemented`: the layout names a store whose cargo feature this build lacks.
#[allow(dead_code)] // used only in builds that lack a feature
fn disabled(cx: &BuildContext, kind: &str, feature: &str) -> Error {
    cx.located(Error::new(
        Code::Unimplemented,
        format!("the layout uses `{kind}`, but casstack was built without feature `{feature}`"),
    ))
}

/// Deserializes a byte size: an integer, or a string with a unit (`"64kib"`, `"1.5gb"`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Limits { #[serde(deserialize_with = "casstack::spec::bytes")] max: u64 }
/// let limits: Limits = toml::from_str(r#"max = "2mib""#).unwrap();
/// assert_eq!(limits.max, 2 << 20);
/// ```
pub fn bytes<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = deserializer.deserialize_any(Quantity {
        parse: parse_bytes,
        what: "a byte size",
    })?;
    T::try_from(n).map_err(|_| D::Error::custom(format!("byte size {n} is too large here")))
}

/// Deserializes a duration in whole seconds: an integer, or a string (`"90s"`, `"7d"`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Ttl { #[serde(deserialize_with = "casstack::spec::seconds")] ttl: u64 }
/// let ttl: Ttl = toml::from_str(r#"ttl = "2h""#).unwrap();
/// assert_eq!(ttl.ttl, 7200);
/// ```
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<u64, D::Error> {
    deserializer.deserialize_any(Quantity {
        parse: parse_seconds,
        what: "a duration",
    })
}

/// Parses `"1mib"`, `"10 MB"`, `"512"`: `k`/`m`/`g`/`t` + `b` are powers of 1000, + `ib` of 1024.
///
/// ```
/// assert_eq!(casstack::spec::parse_bytes("1mib"), Some(1_048_576));
/// assert_eq!(casstack::spec::parse_bytes("10MB"), Some(10_000_000));
/// assert_eq!(casstack::spec::parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(text: &str) -> Option<u64> {
    let (number, unit) = split_unit(text)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    scaled(number, scale)
}

/// Parses `"90s"`, `"30m"`, `"12h"`, `"7d"`, `"2w"`, `"120"` into seconds.
///
/// ```
/// assert_eq!(casstack::spec::parse_seconds("7d"), Some(604_800));
/// assert_eq!(casstack::spec::parse_seconds("1h"), Some(3600));
/// assert_eq!(casstack::spec::parse_seconds("soon"), None);
/// ```
pub fn parse_seconds(text: &str) -> Option<u64> {
    let (number, unit) = split_unit(text)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return None,
    };
    scaled(number, scale)
}

fn split_unit(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    (!number.is_empty()).then_some((number, unit.trim()))
}

fn scaled(number: &str, scale: u64) -> Option<u64> {
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale);
    }
    let value = number.parse::<f64>().ok()? * scale as f64;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then_some(value as u64)
}

struct Quantity {
    parse: fn(&str) -> Option<u64>,
    what: &'static str,
}

impl serde::de::Visitor<'_> for Quantity {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (an integer or a string such as \"64mib\" or \"7d\")",
            self.what
        )
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{} cannot be negative: {v}", self.what)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<u64, E> {
        (self.parse)(v).ok_or_else(|| E::custom(format!("not {}: {v:?}", self.what)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::EvictionPolicy;

    #[test]
    fn sizes_follow_nativelink_units() {
        assert_eq!(parse_bytes("1kb"), Some(1000));
        assert_eq!(parse_bytes("2gb"), Some(2_000_000_000));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5 kib"), Some(1536));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("kb"), None);
        assert_eq!(
            parse_bytes("99999999999tb"),
            None,
            "overflow is an error, not a wrap"
        );
    }

    #[test]
    fn memory_layout_reads_human_units() {
        let spec = StoreSpec::from_toml(
            "[memory.eviction_policy]\nmax_bytes = \"2gb\"\nevict_bytes = \"200mb\"\nmax_seconds = \"7d\"\n",
        )
        .unwrap();
        let StoreSpec::Memory(config) = spec else {
            panic!("{spec:?}")
        };
        assert_eq!(
            config.eviction_policy,
            EvictionPolicy {
                max_bytes: 2_000_000_000,
                evict_bytes: 200_000_000,
                max_seconds: 604_800,
                max_count: 0
            }
        );
    }

    #[test]
    fn bad_layouts_are_clear_errors() {
        for (text, needle) in [
            ("[memroy]", "memroy"),
            (
                "memory = { eviction_policy = { max_bytes = \"lots\" } }",
                "not a byte size",
            ),
            (
                "memory = { eviction_policy = { max_bytes = -1 } }",
                "negative",
            ),
            ("memory = { colour = 3 }", "colour"),
            ("memory = {}\nnoop = {}", ""),
            ("[memory", "invalid layout"),
        ] {
            let err = StoreSpec::from_toml(text).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(needle), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn static_types_say_where_the_shape_differs() {
        let spec = StoreSpec::from_toml("noop = {}").unwrap();
        let err = Memory::from_spec(&spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("expected `memory`, found `noop`"));
    }

    #[tokio::test]
    async fn box_store_builds_any_layout() {
        use crate::store::StoreExt;
        let spec = StoreSpec::from_toml("boxed.boxed.memory = {}").unwrap();
        let store = BoxStore::from_spec(&spec).await.unwrap();
        store.put_bytes("k", "v".into()).await.unwrap();
        assert_eq!(store.get_bytes("k").await.unwrap(), "v");
        let json = StoreSpec::from_json(r#"{"noop": {}}"#).unwrap();
        assert_eq!(json.kind(), "noop");
    }
}
