//! Wrappers: stores made of other stores.
//!
//! Each wrapper holds its children by value and is generic over them, so a stack such as
//! `Verify<ExistenceCache<FastSlow<Memory, Memory>>>` is dispatched statically. Wrappers that
//! only route forward the child's future as is (no `async` state of their own); stream work is
//! done by named adapters ([`VerifyStream`](verify::VerifyStream),
//! [`FillStream`](fast_slow::FillStream)), and readers compose with [`Either`](crate::Either).
//! Every wrapper forwards [`subscribe_removals`](crate::Store::subscribe_removals) to all its
//! children.
//!
//! | wrapper | what it does |
//! |---|---|
//! | [`FastSlow`] | a fast tier in front of a slow one: reads fill the fast tier, writes go to both |
//! | [`SizePartition`] | small digests to one store, large ones to another |
//! | [`Verify`] | checks size and sha256 of uploads (and optionally of whole-object reads) |
//! | [`ExistenceCache`] | remembers which digests the backend has, to answer `has` without asking |
//! | [`Shard`] | spreads keys over several stores by weighted rendezvous hashing |
//! | [`Ref`] | a store shared by name between layouts, looked up in a [`Registry`] |
//! | `Compress` | seekable zstd (feature `zstd`) |
//! | `Dedup` | content-defined chunking (feature `dedup`) |
//! | `Metrics` | counts operations, bytes and latencies under a name; debug spans (features `metrics`, `tracing`) |

#[cfg(feature = "zstd")]
#[cfg_attr(docsrs, doc(cfg(feature = "zstd")))]
pub mod compress;
#[cfg(feature = "dedup")]
#[cfg_attr(docsrs, doc(cfg(feature = "dedup")))]
pub mod dedup;
pub mod existence_cache;
pub mod fast_slow;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod ref_store;
mod route;
pub mod shard;
pub mod size_partition;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_util;

pub use existence_cache::{ExistenceCache, ExistenceCacheConfig};
pub use fast_slow::{FastSlow, FastSlowConfig, StoreDirection};
pub use ref_store::{Ref, Registry};
pub use shard::Shard;
pub use size_partition::{SizePartition, SizePartitionConfig};
pub use verify::{Verify, VerifyConfig};
