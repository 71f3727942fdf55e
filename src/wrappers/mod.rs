//! Wrappers: stores that hold other stores and add behaviour on the way through.

#[cfg(feature = "zstd")]
#[cfg_attr(docsrs, doc(cfg(feature = "zstd")))]
pub mod compress;
#[cfg(feature = "dedup")]
#[cfg_attr(docsrs, doc(cfg(feature = "dedup")))]
pub mod dedup;
