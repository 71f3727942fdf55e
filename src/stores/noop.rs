//! `Noop`: accepts every upload and keeps nothing (NativeLink's `noop` store, §5.12).
//!
//! Useful as the slow tier of a pure memory cache, or to switch a tier off in a layout.
//! Uploads are read to the end and checked against their declared size, then dropped; `has`
//! finds nothing and `get` is `NotFound`, except for the empty blob, which every casstack store
//! reports present and reads as empty (NativeLink's noop reports it absent).
//!
//! Layout (TOML): `noop = {}`

use std::future::{Future, ready};

use crate::body::{Body, OneChunk, drain_body};
use crate::error::{Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, Store, UploadSize};
use crate::stores::memory::{check_out_len, mark_empty_blobs};

/// A store that keeps nothing.
///
/// ```
/// use casstack::{Noop, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let store = Noop;
/// assert_eq!(store.put_bytes("k", "data".into()).await?, 4);
/// assert_eq!(store.has("k").await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Store for Noop {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        ready(check_out_len(keys, out).map(|()| {
            out.fill(None);
            mark_empty_blobs(keys, out);
        }))
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<OneChunk>> + Send {
        ready(if key.is_empty_blob() {
            range.resolve(0).map(|_| OneChunk::default())
        } else {
            Err(Error::not_found(key).context("the noop store keeps nothing"))
        })
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        drain_body(&key, size, body).await
    }

    /// Always ok: it keeps nothing, so nothing can break.
    fn check_health(&self) -> impl Future<Output = HealthStatus> + Send {
        ready(HealthStatus::Ok)
    }

    /// True: nothing is kept.
    fn discards_writes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::key::Digest;
    use crate::store::StoreExt;

    #[tokio::test]
    async fn keeps_nothing_but_checks_sizes() {
        assert_eq!(Noop.put_bytes("k", "abc".into()).await.unwrap(), 3);
        assert_eq!(
            Noop.get_bytes("k").await.unwrap_err().code(),
            Code::NotFound
        );
        let lying = Noop.put(
            "k".into(),
            UploadSize::Exact(9),
            OneChunk::new("abc".into()),
        );
        assert_eq!(lying.await.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(Noop.has(Digest::EMPTY).await.unwrap(), Some(0));
        assert_eq!(Noop.get_bytes(Digest::EMPTY).await.unwrap(), "");
        assert!(Noop.discards_writes());
    }
}
