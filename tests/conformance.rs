//! The conformance checker on the foundation stores, and on planted bugs it must catch.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use casstack::testing::Conformance;
use casstack::{
    Body, BoxStore, ByteRange, EvictionPolicy, Key, Memory, MemoryConfig, Noop, OneChunk, Result,
    Store, StoreExt, UploadSize,
};
use futures_util::StreamExt;

fn evicting(max_bytes: u64, max_count: u64) -> Memory {
    Memory::new(MemoryConfig {
        eviction_policy: EvictionPolicy {
            max_bytes,
            max_count,
            ..Default::default()
        },
    })
}

#[test]
fn memory_conforms() {
    Conformance::new().check(|| async { Memory::default() });
}

#[test]
fn memory_with_eviction_conforms() {
    Conformance::new()
        .may_forget(true)
        .check(|| async { evicting(20 << 10, 4) });
}

#[test]
fn noop_conforms_as_a_forgetting_store() {
    Conformance::new().may_forget(true).check(|| async { Noop });
}

#[test]
fn boxed_memory_conforms() {
    Conformance::new().check(|| async { BoxStore::new(Memory::default()) });
}

#[test]
fn memory_conforms_across_reopen_of_a_shared_handle() {
    // Memory survives "reopen" only because the same handle comes back: this exercises the
    // reopen steps of the checker itself.
    Conformance::new()
        .cases(16)
        .check_with_reopen(|| async { Memory::default() }, |store| async move { store });
}

/// A planted bug: the store returns every read one byte short.
#[derive(Clone, Default)]
struct TruncatingReads(Memory);

impl Store for TruncatingReads {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.0.has_many(keys, out)
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<OneChunk> {
        let data = self.0.get_range_bytes(key, range).await?;
        let cut = data.len().saturating_sub(1);
        Ok(OneChunk::new(data.slice(..cut)))
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.0.put(key, size, body)
    }
}

/// A planted bug: every third upload is acknowledged but silently dropped (along with what
/// the key held before, so it never serves a stale value).
#[derive(Clone, Default)]
struct ForgetsSomePuts {
    inner: Memory,
    puts: Arc<AtomicU64>,
    /// Says it reports every removal (it reports none).
    claims_to_report: bool,
}

impl Store for ForgetsSomePuts {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.has_many(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<OneChunk>> + Send {
        self.inner.get(key, range)
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if self.puts.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            self.inner.remove(&key);
            return casstack::drain_body(&key, size, body).await;
        }
        self.inner.put(key, size, body).await
    }

    fn reports_all_removals(&self) -> bool {
        self.claims_to_report
    }
}

/// A planted bug: an upload whose body fails keeps what arrived before the failure.
#[derive(Clone, Default)]
struct KeepsPartialUploads(Memory);

impl Store for KeepsPartialUploads {
    type Reader = OneChunk;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.0.has_many(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<OneChunk>> + Send {
        self.0.get(key, range)
    }

    async fn put<B: Body>(&self, key: Key, _size: UploadSize, mut body: B) -> Result<u64> {
        let mut data = Vec::new();
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.0.put_bytes(key, Bytes::from(data)).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

#[test]
fn checker_catches_truncated_reads() {
    let failure = Conformance::new()
        .run(|| async { TruncatingReads::default() })
        .expect_err("a store that cuts reads short must fail");
    assert!(failure.message().contains("get returned"), "{failure}");
}

#[test]
fn checker_catches_a_store_that_forgets_without_eviction() {
    let failure = Conformance::new()
        .run(|| async { ForgetsSomePuts::default() })
        .expect_err("a store that drops acknowledged uploads must fail");
    assert!(failure.message().contains("absent"), "{failure}");
    // The same store is legal when the layout allows forgetting.
    Conformance::new()
        .may_forget(true)
        .check(|| async { ForgetsSomePuts::default() });
}

#[test]
fn checker_catches_a_forgetting_store_that_claims_to_report_removals() {
    let failure = Conformance::new()
        .may_forget(true)
        .run(|| async {
            ForgetsSomePuts {
                claims_to_report: true,
                ..Default::default()
            }
        })
        .expect_err("a store that drops keys unannounced must not claim to report removals");
    assert!(failure.message().contains("announced none"), "{failure}");
}

#[test]
fn checker_catches_partial_uploads() {
    let failure = Conformance::new()
        .concurrent(false)
        .run(|| async { KeepsPartialUploads::default() })
        .expect_err("a store that keeps half an upload must fail");
    assert!(!failure.case().is_empty(), "{failure}");
}

#[test]
fn checker_catches_a_store_that_forgets_across_reopen() {
    let failure = Conformance::new()
        .run_with_reopen(
            || async { Memory::default() },
            |_| async { Memory::default() },
        )
        .expect_err("a reopen that loses everything must fail");
    assert!(failure.case().contains("Reopen"), "{failure}");
}
