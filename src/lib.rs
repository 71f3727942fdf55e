//! Content-addressable blob stores for build caches and remote-execution systems, composed at
//! compile time.
//!
//! Every store is a plain generic type implementing [`Store`]; wrappers hold their children
//! by value, so a stack such as `FastSlow<Memory, Filesystem>` is dispatched statically, with
//! no `Arc<dyn _>` per layer and no boxed future per call. Where a layout is only known at run
//! time, [`BoxStore`] is the one opt-in point of type erasure, and it is itself a `Store`.
//!
//! ```
//! use casstack::{Digest, Memory, MemoryConfig, EvictionPolicy, StoreExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
//! let cas = Memory::new(MemoryConfig {
//!     eviction_policy: EvictionPolicy { max_bytes: 64 << 20, ..Default::default() },
//! });
//! let blob = bytes::Bytes::from_static(b"int main() { return 0; }");
//! let digest = Digest::of(&blob);
//! cas.put_bytes(digest, blob.clone()).await?;
//! assert_eq!(cas.has(digest).await?, Some(blob.len() as u64));
//! assert_eq!(cas.get_bytes(digest).await?, blob);
//! # Ok(()) }
//! ```
//!
//! # Stores
//!
//! | store | what it is | feature |
//! |---|---|---|
//! | [`Memory`] | blobs in RAM, LRU eviction, zero-copy reads | always |
//! | [`Noop`] | keeps nothing | always |
//! | [`Redis`](stores::redis) | a Redis server: pipelined `has_many`, `GETRANGE` windows, staged uploads renamed into place, keyspace-event removals | `redis` |
//! | [`Filesystem`] | files on a local disk, durable across restarts and crashes, LRU eviction | `fs` (default) |
//! | [`BoxStore`] | any store behind one pointer | always |
//! | [`S3`](stores::s3) | objects in an S3 bucket or S3-compatible server: multipart uploads, resumed ranged reads, retries | `s3` |
//!
//! ## Wrappers
//!
//! | wrapper | what it does | feature |
//! |---|---|---|
//! | [`FastSlow`] | fast tier in front of a slow one; reads fill fast, single flight | always |
//! | [`SizePartition`] | small digests to one store, large to another | always |
//! | [`Verify`] | size and sha256 checks on upload, optionally on read | always |
//! | [`ExistenceCache`] | remembers what the backend has; forgets on its removals (needs a TTL over a backend that cannot report them all) | always |
//! | [`Shard`] | weighted rendezvous hashing over stores of one type | always |
//! | [`Ref`] / [`Registry`] | one store shared by name between layouts | always |
//! | `Compress` | seekable zstd: independent frames + seek index, ranged reads decode only what they need | `zstd` |
//! | `Dedup` | content-defined chunking (FastCDC): chunks stored once by sha256, a chunk list per key | `dedup` |
//! | `Metrics` | operation counts, bytes and latencies per named store through the `metrics` facade; debug spans | `metrics`, `tracing` |
//!
//! # Features
//!
//! | feature | what it adds | cost |
//! |---|---|---|
//! | `zstd` | `Compress` | the zstd C library (built from source by `zstd-sys`), crc32fast |
//! | `dedup` | `Dedup` | fastcdc, crc32fast |
//! | `fs` (default) | [`Filesystem`] | tokio's `fs` feature |
//! | `metrics` | `Metrics`, and the counters of the wrappers and eviction index | the `metrics` facade crate |
//! | `tracing` | debug spans on every operation of a `Metrics` layer (turns on `metrics`) | `tracing` (no proc macro) |
//! | `s3` | [`S3`](stores::s3) | rusoto_s3 + rusoto_core (maintenance mode, RUSTSEC-2022-0071), hyper 0.14, rustls 0.20, hyper-rustls, httpdate: about 100 crates, the heaviest feature |
//! | `macros` | [`layout!`]: a TOML layout file turned into the store type at build time | syn, quote, toml (build time only) |
//! | `redis` | [`Redis`](stores::redis): a Redis backend (tests start `redis-server`) | deadpool-redis, redis (tokio, no TLS) |
//! | `testing` | [`testing`]: proptest strategies and the model-based conformance checker | proptest, tokio's multi-thread runtime |
//!
//! # Errors
//!
//! Every store and wrapper returns the same [`Error`], with a gRPC-style [`Code`]: a hash
//! mismatch on `put` is `InvalidArgument` (the caller sent bad data), on `get` it is
//! `DataLoss` (the store holds bad data).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod boxed;
mod error;
mod eviction;
pub mod health;
mod key;
mod observe;
pub mod spec;
mod store;
pub mod stores;
pub mod wrappers;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
// Compiled for the crate's own unit tests too, which use it without the `testing` feature.
#[cfg(any(test, feature = "testing"))]
mod sample_data;

/// Expands a TOML layout into the matching store type at build time (feature `macros`).
///
/// ```
/// casstack::layout!(type Cache = inline r#"
/// [boxed.memory.eviction_policy]
/// max_bytes = "1gib"
/// "#);
/// let _: Option<Cache> = None::<casstack::BoxStore>;
/// ```
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use casstack_macros::layout;

/// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use body::{Body, BoxStream, Either, OneChunk, collect_body, drain_body};
pub use boxed::BoxStore;
pub use error::{Code, Error, Result, ResultExt};
pub use eviction::{EvictingMap, EvictionPolicy};
pub use health::{HealthFailure, HealthStatus};
pub use key::{Digest, Key};
pub use spec::{FromSpec, NoopSpec, StoreSpec};
pub use store::{ByteRange, RemovalListener, Store, StoreExt, UploadSize};
#[cfg(feature = "fs")]
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
pub use stores::filesystem::Filesystem;
pub use stores::filesystem::FilesystemConfig;
pub use stores::memory::{Memory, MemoryConfig};
pub use stores::noop::Noop;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use stores::redis::Redis;
pub use stores::redis::{RedisConfig, RetryConfig};
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use stores::s3::S3;
pub use stores::s3::{S3Config, S3Credentials};
#[cfg(feature = "zstd")]
pub use wrappers::compress::{Compress, CompressConfig};
#[cfg(feature = "dedup")]
pub use wrappers::dedup::{Dedup, DedupConfig};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use wrappers::metrics::{Metrics, MetricsConfig};
pub use wrappers::{
    ExistenceCache, ExistenceCacheConfig, FastSlow, FastSlowConfig, Ref, Registry, Shard,
    SizePartition, SizePartitionConfig, StoreDirection, Verify, VerifyConfig,
};
