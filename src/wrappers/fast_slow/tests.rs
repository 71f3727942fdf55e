use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::Semaphore;

use super::flight::WriteState;
use super::*;
use crate::body::OneChunk;
use crate::eviction::EvictionPolicy;
use crate::key::Digest;
use crate::store::StoreExt;
use crate::stores::memory::{Memory, MemoryConfig};
use crate::stores::noop::Noop;
use crate::wrappers::test_util::{Counting, blob};

type Tiers = (
    Counting<Memory>,
    Counting<Memory>,
    FastSlow<Counting<Memory>, Counting<Memory>>,
);

fn tiers(config: FastSlowConfig) -> Tiers {
    let fast = Counting::new(Memory::default());
    let slow = Counting::new(Memory::default());
    let store = FastSlow::new(fast.clone(), slow.clone(), config);
    (fast, slow, store)
}

fn chunks(data: &Bytes, n: usize) -> impl Body + use<> {
    let parts: Vec<Result<Bytes>> = data
        .chunks(n)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(parts)
}

/// Starts a put of `key` whose body the test feeds through the returned sender, and waits
/// until the slow tier has begun storing it.
async fn held_put(
    store: &FastSlow<Counting<Memory>, Counting<Memory>>,
    slow: &Counting<Memory>,
    key: Key,
    size: u64,
) -> (
    futures_channel::mpsc::Sender<Result<Bytes>>,
    tokio::task::JoinHandle<Result<u64>>,
) {
    let (body_tx, body_rx) = futures_channel::mpsc::channel::<Result<Bytes>>(4);
    let store = store.clone();
    let calls = slow.put_calls();
    let put = tokio::spawn(async move { store.put(key, UploadSize::Exact(size), body_rx).await });
    while slow.put_calls() == calls {
        tokio::task::yield_now().await;
    }
    (body_tx, put)
}

#[tokio::test]
async fn write_large_amount_to_both_stores() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, data) = blob(100_000, 1);
    let n = store
        .put(d.into(), UploadSize::Exact(100_000), chunks(&data, 1000))
        .await
        .unwrap();
    assert_eq!(n, 100_000);
    assert_eq!(fast.inner().get_bytes(d).await.unwrap(), data);
    assert_eq!(slow.inner().get_bytes(d).await.unwrap(), data);
    assert_eq!(
        store.shared.writes_for(&[d.into()]).len(),
        0,
        "no write left in flight"
    );
}

#[tokio::test]
async fn fetch_slow_store_puts_in_fast_store() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, data) = blob(1000, 2);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(
        fast.inner().get_bytes(d).await.unwrap(),
        data,
        "filled before the caller's end"
    );
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(slow.get_calls(), 1, "the second read was a fast hit");
}

#[tokio::test]
async fn partial_reads_copy_full_to_fast_store() {
    let (fast, slow, store) = tiers(Default::default());
    let slow_chunked = Counting::new(slow.inner().clone()).chunked(7);
    let store2 = FastSlow::new(fast.clone(), slow_chunked, Default::default());
    let (d, data) = blob(100, 3);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();
    let part = store2
        .get_range_bytes(d, ByteRange::new(10, Some(25)))
        .await
        .unwrap();
    assert_eq!(part, data.slice(10..35));
    assert_eq!(fast.inner().get_bytes(d).await.unwrap(), data);
    // Out of range is an error before anything is read or filled.
    let (d2, data2) = blob(10, 4);
    slow.inner().put_bytes(d2, data2).await.unwrap();
    let err = store
        .get_range_bytes(d2, ByteRange::from_offset(11))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(fast.inner().has(d2).await.unwrap(), None);
    assert_eq!(store.shared.flights(), 0);
}

#[tokio::test]
async fn has_ignores_a_blob_only_in_fast_and_does_not_ask_fast() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, data) = blob(10, 5);
    fast.inner().put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), None);
    slow.inner().put_bytes(d, data).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(10));
    assert_eq!(fast.has_calls(), 0);
}

#[tokio::test]
async fn has_checks_fast_store_when_slow_is_noop() {
    let fast = Memory::default();
    let store = FastSlow::new(fast.clone(), Noop, Default::default());
    let (d, data) = blob(10, 6);
    store.put_bytes(d, data).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(10));
}

#[tokio::test]
async fn direction_matrix() {
    use StoreDirection::*;
    // (fast_direction, slow_direction) -> (put writes fast, put writes slow, read fills fast)
    let cases = [
        (Both, Both, true, true, true),
        (Update, Both, true, true, false),
        (Get, Both, false, true, true),
        (ReadOnly, Both, false, true, false),
        (Both, Update, true, true, true),
        (Both, Get, true, false, true),
        (Both, ReadOnly, true, false, true),
        (ReadOnly, ReadOnly, false, false, false),
    ];
    for (i, (fd, sd, put_fast, put_slow, fills)) in cases.into_iter().enumerate() {
        let config = FastSlowConfig {
            fast_direction: fd,
            slow_direction: sd,
            ..Default::default()
        };
        let (fast, slow, store) = tiers(config);
        let (d, data) = blob(50, i as u8);
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(
            fast.inner().has(d).await.unwrap().is_some(),
            put_fast,
            "{fd:?}/{sd:?} put fast"
        );
        assert_eq!(
            slow.inner().has(d).await.unwrap().is_some(),
            put_slow,
            "{fd:?}/{sd:?} put slow"
        );
        let (d2, data2) = blob(60, i as u8);
        slow.inner().put_bytes(d2, data2.clone()).await.unwrap();
        assert_eq!(store.get_bytes(d2).await.unwrap(), data2);
        assert_eq!(
            fast.inner().has(d2).await.unwrap().is_some(),
            fills,
            "{fd:?}/{sd:?} fill"
        );
        // Reads from fast happen whatever its direction.
        let (d3, data3) = blob(70, i as u8);
        fast.inner().put_bytes(d3, data3.clone()).await.unwrap();
        assert_eq!(store.get_bytes(d3).await.unwrap(), data3);
    }
}

#[tokio::test]
async fn twenty_concurrent_misses_share_one_slow_read() {
    let gate = Arc::new(Semaphore::new(0));
    let fast = Counting::new(Memory::default());
    let slow = Counting::new(Memory::default())
        .chunked(100)
        .gated(gate.clone());
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (d, data) = blob(1000, 7);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        readers.push(tokio::spawn(async move { store.get_bytes(d).await }));
    }
    // Let every reader run until it blocks: one at the slow tier's gate, 19 following it.
    while store.shared.followers(&d.into()) < 19 {
        tokio::task::yield_now().await;
    }
    assert_eq!(slow.get_calls(), 1);
    gate.add_permits(100);
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), data);
    }
    assert_eq!(
        slow.get_calls(),
        1,
        "one slow read for 20 concurrent misses"
    );
    assert_eq!(
        fast.get_calls(),
        20 + 19,
        "each reader tried fast; followers tried again"
    );
    assert_eq!(store.shared.flights(), 0);
}

#[tokio::test]
async fn concurrent_reads_bypass_single_flight_at_and_above_the_threshold() {
    let gate = Arc::new(Semaphore::new(0));
    let fast = Counting::new(Memory::default());
    let slow = Counting::new(Memory::default()).gated(gate.clone());
    let config = FastSlowConfig {
        bypass_dedup_threshold_bytes: 100,
        ..Default::default()
    };
    let store = FastSlow::new(fast.clone(), slow.clone(), config);
    let (huge, huge_data) = blob(100, 8);
    slow.inner()
        .put_bytes(huge, huge_data.clone())
        .await
        .unwrap();
    let mut readers = Vec::new();
    for _ in 0..5 {
        let store = store.clone();
        readers.push(tokio::spawn(async move { store.get_bytes(huge).await }));
    }
    while slow.get_calls() < 5 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), huge_data);
    }
    assert_eq!(
        slow.get_calls(),
        5,
        "size == threshold bypasses (inclusive)"
    );
    assert!(fast.inner().is_empty(), "a bypassed read does not fill");
    // Just below the threshold: shared and filled.
    let (small, small_data) = blob(99, 8);
    slow.inner()
        .put_bytes(small, small_data.clone())
        .await
        .unwrap();
    assert_eq!(store.get_bytes(small).await.unwrap(), small_data);
    assert_eq!(fast.inner().has(small).await.unwrap(), Some(99));
}

#[tokio::test]
async fn dropping_a_follower_does_not_cancel_the_leader() {
    let gate = Arc::new(Semaphore::new(0));
    let fast = Counting::new(Memory::default());
    let slow = Counting::new(Memory::default()).gated(gate.clone());
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (d, data) = blob(300, 9);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();
    let leader = tokio::spawn({
        let store = store.clone();
        async move { store.get_bytes(d).await }
    });
    let follower = tokio::spawn({
        let store = store.clone();
        async move { store.get_bytes(d).await }
    });
    while store.shared.followers(&d.into()) < 1 {
        tokio::task::yield_now().await;
    }
    follower.abort();
    assert!(follower.await.unwrap_err().is_cancelled());
    gate.add_permits(10);
    assert_eq!(leader.await.unwrap().unwrap(), data);
    assert_eq!(fast.inner().has(d).await.unwrap(), Some(300));
}

#[tokio::test]
async fn an_abandoned_read_leaves_fast_empty_and_followers_retry() {
    let fast = Counting::new(Memory::default());
    let slow = Counting::new(Memory::default()).chunked(10);
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (d, data) = blob(100, 10);
    slow.inner().put_bytes(d, data.clone()).await.unwrap();
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap(), data.slice(0..10));
    assert_eq!(reader.next().await.unwrap().unwrap(), data.slice(10..20));
    let follower = tokio::spawn({
        let store = store.clone();
        async move { store.get_bytes(d).await }
    });
    while store.shared.followers(&d.into()) < 1 {
        tokio::task::yield_now().await;
    }
    drop(reader);
    // The follower learns the leader is gone and leads a new, complete fill.
    assert_eq!(follower.await.unwrap().unwrap(), data);
    assert_eq!(slow.get_calls(), 2);
    assert_eq!(fast.inner().get_bytes(d).await.unwrap(), data);

    // Alone: the abandoned fill's task is aborted or fails; either way nothing is stored.
    let (d2, data2) = blob(100, 11);
    slow.inner().put_bytes(d2, data2.clone()).await.unwrap();
    let mut reader = store.get(d2.into(), ByteRange::FULL).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap(), data2.slice(0..10));
    drop(reader);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fast.inner().has(d2).await.unwrap(), None);
    assert_eq!(store.shared.flights(), 0);
}

#[tokio::test]
async fn the_fill_body_aborts_without_its_end_marker() {
    let (tx, mut body) = chunk_channel(4);
    let mut tx = tx;
    tx.try_send(Some(Bytes::from("part"))).unwrap();
    drop(tx);
    assert_eq!(body.next().await.unwrap().unwrap(), "part");
    assert_eq!(
        body.next().await.unwrap().unwrap_err().code(),
        Code::Aborted
    );
    assert!(body.next().await.is_none());
    let fast = Memory::default();
    let (tx, body) = chunk_channel(4);
    let mut tx = tx;
    tx.try_send(Some(Bytes::from("part"))).unwrap();
    drop(tx);
    let err = fast
        .put("k".into(), UploadSize::AtMost(100), body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(fast.is_empty());
}

/// A fast tier whose index lists everything but whose `get` finds nothing (a phantom entry).
#[derive(Clone, Debug)]
struct Phantom;

impl Store for Phantom {
    type Reader = OneChunk;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            *slot = key.digest().map(|d| d.size());
        }
        Ok(())
    }

    async fn get(&self, key: Key, _range: ByteRange) -> Result<OneChunk> {
        Err(Error::not_found(key))
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        drain_body(&key, size, body).await
    }
}

#[tokio::test]
async fn falls_through_to_slow_on_a_stale_fast_entry() {
    let slow = Memory::default();
    let store = FastSlow::new(Phantom, slow.clone(), Default::default());
    let (d, data) = blob(40, 12);
    slow.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
}

#[tokio::test]
async fn not_in_either_tier_is_not_found() {
    let (_, _, store) = tiers(Default::default());
    let (d, _) = blob(5, 13);
    let err = store.get_bytes(d).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.key(), Some(&Key::from(d)));
    assert_eq!(
        store.get_bytes("no such name").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(store.shared.flights(), 0);
}

#[tokio::test]
async fn name_keys_live_in_the_slow_tier_only() {
    let (fast, slow, store) = tiers(Default::default());
    store.put_bytes("ac/1", "value".into()).await.unwrap();
    assert_eq!(
        store
            .get_range_bytes("ac/1", ByteRange::new(1, Some(3)))
            .await
            .unwrap(),
        "alu"
    );
    assert_eq!(slow.inner().get_bytes("ac/1").await.unwrap(), "value");
    assert!(
        fast.inner().is_empty(),
        "neither the put nor the read wrote fast"
    );
    assert_eq!(fast.get_calls() + fast.put_calls(), 0);
    // A stale fast copy (planted) is never served.
    fast.inner()
        .put_bytes("ac/1", "stale".into())
        .await
        .unwrap();
    store.put_bytes("ac/1", "fresh".into()).await.unwrap();
    assert_eq!(store.get_bytes("ac/1").await.unwrap(), "fresh");
    // With a Noop slow tier the fast tier is the store, names included.
    let only_fast = FastSlow::new(Memory::default(), Noop, Default::default());
    only_fast.put_bytes("ac/2", "v".into()).await.unwrap();
    assert_eq!(only_fast.get_bytes("ac/2").await.unwrap(), "v");
    assert_eq!(only_fast.has("ac/2").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_slow_copy_of_the_wrong_length_is_data_loss_and_not_filled() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, _) = blob(10, 14);
    slow.inner().put_bytes(d, "only 9 b.".into()).await.unwrap();
    let err = store.get_bytes(d).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    let (d2, _) = blob(4, 14);
    slow.inner().put_bytes(d2, "five!".into()).await.unwrap();
    assert_eq!(
        store.get_bytes(d2).await.unwrap_err().code(),
        Code::DataLoss
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(fast.inner().is_empty());
}

#[tokio::test]
async fn a_fast_tier_too_small_for_the_object_is_skipped() {
    let fast = Memory::new(MemoryConfig {
        eviction_policy: EvictionPolicy {
            max_bytes: 100,
            ..Default::default()
        },
    });
    let slow = Counting::new(Memory::default());
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (d, data) = blob(500, 15);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(slow.inner().has(d).await.unwrap(), Some(500));
    assert!(fast.is_empty());
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(slow.get_calls(), 2, "not filled, so each read goes to slow");
    assert!(fast.is_empty());
}

#[tokio::test]
async fn put_fails_if_the_slow_tier_fails_and_on_a_bad_body_stores_nothing() {
    let fast = Memory::default();
    let slow = Memory::new(MemoryConfig {
        eviction_policy: EvictionPolicy {
            max_bytes: 100,
            ..Default::default()
        },
    });
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (d, data) = blob(500, 16);
    let err = store.put_bytes(d, data).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(slow.is_empty());
    assert!(
        fast.is_empty(),
        "the fast tier keeps nothing the slow tier refused"
    );
    assert_eq!(store.get_bytes(d).await.unwrap_err().code(), Code::NotFound);
    let (d2, data2) = blob(50, 16);
    let body = stream::iter(vec![
        Ok(data2.slice(0..20)),
        Err(Error::new(Code::Aborted, "client went away")),
    ]);
    let err = store
        .put(d2.into(), UploadSize::Exact(50), body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("client went away"), "{err}");
    assert_eq!(fast.has(d2).await.unwrap(), None);
    assert_eq!(slow.has(d2).await.unwrap(), None);
}

#[tokio::test]
async fn dropping_an_update_future_cleans_up_its_in_flight_entry() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, data) = blob(40, 18);
    let (mut body_tx, body_rx) = futures_channel::mpsc::channel::<Result<Bytes>>(4);
    body_tx.try_send(Ok(data.slice(0..20))).unwrap();
    let writer = tokio::spawn({
        let store = store.clone();
        async move { store.put(d.into(), UploadSize::Exact(40), body_rx).await }
    });
    while store.shared.writes_for(&[d.into()]).is_empty() {
        tokio::task::yield_now().await;
    }
    writer.abort();
    assert!(writer.await.unwrap_err().is_cancelled());
    assert!(store.shared.writes_for(&[d.into()]).is_empty());
    assert_eq!(store.has(d).await.unwrap(), None);
    assert!(fast.inner().is_empty() && slow.inner().is_empty());
}

#[tokio::test]
async fn mixed_key_sources_in_one_batch() {
    let fast = Memory::default();
    let slow = SlowCommit::new();
    let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
    let (in_slow, a) = blob(10, 19);
    let (committing, b) = blob(20, 19);
    let (in_fast, c) = blob(30, 19);
    let (absent, _) = blob(40, 19);
    let (stalled, d) = blob(50, 19);
    slow.inner.put_bytes(in_slow, a).await.unwrap();
    fast.put_bytes(in_fast, c).await.unwrap();
    let writer = tokio::spawn({
        let store = store.clone();
        async move { store.put_bytes(committing, b).await }
    });
    let staller = tokio::spawn({
        let store = store.clone();
        let body = stalled_body(d.slice(0..10));
        async move { store.put(stalled.into(), UploadSize::Exact(50), body).await }
    });
    while store.shared.write_state(&committing.into()) != Some(WriteState::Committing)
        || store.shared.write_state(&stalled.into()).is_none()
    {
        tokio::task::yield_now().await;
    }
    let checker = tokio::spawn({
        let store = store.clone();
        async move {
            let keys = [
                in_slow.into(),
                committing.into(),
                in_fast.into(),
                absent.into(),
                stalled.into(),
            ];
            let mut out = [None; 5];
            store.has_many(&keys, &mut out).await.map(|()| out)
        }
    });
    while store.shared.write_waiters(&committing.into()) == 0 {
        tokio::task::yield_now().await;
    }
    slow.gate.add_permits(1);
    writer.await.unwrap().unwrap();
    assert_eq!(
        checker.await.unwrap().unwrap(),
        [Some(10), Some(20), None, None, None]
    );
    staller.abort();
}

#[tokio::test]
async fn removals_of_both_tiers_reach_listeners() {
    let (fast, slow, store) = tiers(Default::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    store.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
    let (d, data) = blob(5, 20);
    store.put_bytes(d, data).await.unwrap();
    fast.inner().remove(&d.into());
    slow.inner().remove(&d.into());
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn empty_blob_is_read_from_fast() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_, slow, store) = tiers(Default::default());
        assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
        assert_eq!(store.has(Digest::EMPTY).await.unwrap(), Some(0));
        assert_eq!(slow.get_calls(), 0);
    });
}

#[tokio::test]
async fn a_body_the_slow_verify_refuses_is_kept_in_neither_tier() {
    use crate::wrappers::verify::{Verify, VerifyConfig};
    use StoreDirection::*;
    // Uploads write both tiers in these modes: the fast copy must wait for the slow verdict.
    for (i, (fd, sd)) in [
        (Both, Both),
        (Update, Both),
        (Both, Update),
        (Update, Update),
    ]
    .into_iter()
    .enumerate()
    {
        let fast = Memory::default();
        let slow = Verify::new(Memory::default(), VerifyConfig::default());
        let config = FastSlowConfig {
            fast_direction: fd,
            slow_direction: sd,
            ..Default::default()
        };
        let store = FastSlow::new(fast.clone(), slow.clone(), config);
        let (d, data) = blob(64, 40 + i as u8);
        let (_, wrong) = blob(64, 80 + i as u8);
        let err = store
            .put(d.into(), UploadSize::Exact(64), chunks(&wrong, 10))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{fd:?}/{sd:?}: {err}");
        assert!(
            fast.is_empty(),
            "{fd:?}/{sd:?}: the refused body is not in fast"
        );
        assert_eq!(
            store.get_bytes(d).await.unwrap_err().code(),
            Code::NotFound,
            "{fd:?}/{sd:?}"
        );
        // The right body goes to both.
        store.put_bytes(d, data.clone()).await.unwrap();
        assert_eq!(fast.get_bytes(d).await.unwrap(), data, "{fd:?}/{sd:?}");
        assert_eq!(slow.get_bytes(d).await.unwrap(), data, "{fd:?}/{sd:?}");
    }
    // A slow tier that uploads skip does not hold the fast tier back.
    let fast = Memory::default();
    let slow = Verify::new(Memory::default(), VerifyConfig::default());
    let config = FastSlowConfig {
        slow_direction: ReadOnly,
        ..Default::default()
    };
    let store = FastSlow::new(fast.clone(), slow, config);
    let (d, data) = blob(64, 50);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(fast.get_bytes(d).await.unwrap(), data);
}

/// A slow tier whose `put` reads the whole body, then waits for a permit of `gate` before it
/// stores the object (a slow commit: an S3 multipart completion, an fsync).
#[derive(Clone, Debug)]
struct SlowCommit {
    inner: Memory,
    gate: Arc<Semaphore>,
}

impl SlowCommit {
    fn new() -> Self {
        SlowCommit {
            inner: Memory::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Store for SlowCommit {
    type Reader = <Memory as Store>::Reader;

    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        self.inner.has_many(keys, out).await
    }

    async fn get(&self, key: Key, range: ByteRange) -> Result<Self::Reader> {
        self.inner.get(key, range).await
    }

    async fn put<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        let data = crate::body::collect_body(&key, size, body).await?;
        // Each permit lets one commit through, once.
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.put(key, size, OneChunk::new(data)).await
    }
}

/// A body that yields `first` and then never ends (a stalled uploader).
fn stalled_body(first: Bytes) -> impl Body + use<> {
    stream::iter([Ok(first)]).chain(stream::pending())
}

#[tokio::test(start_paused = true)]
async fn has_does_not_wait_for_a_write_whose_body_has_not_arrived() {
    for config in [
        FastSlowConfig::default(),
        FastSlowConfig {
            fast_direction: StoreDirection::ReadOnly,
            ..Default::default()
        },
    ] {
        let (_, _, store) = tiers(config);
        let (d, data) = blob(40, 21);
        let writer = tokio::spawn({
            let store = store.clone();
            let body = stalled_body(data.slice(0..20));
            async move { store.put(d.into(), UploadSize::Exact(40), body).await }
        });
        while store.shared.writes_for(&[d.into()]).is_empty() {
            tokio::task::yield_now().await;
        }
        let start = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(24 * 3600), store.has(d)).await;
        assert_eq!(
            answer
                .expect("has never waits for a stalled upload")
                .unwrap(),
            None
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "answered without waiting");
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        assert!(store.shared.writes_for(&[d.into()]).is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn has_waits_for_a_write_that_is_committing_but_not_forever() {
    for config in [
        FastSlowConfig::default(),
        FastSlowConfig {
            fast_direction: StoreDirection::ReadOnly,
            ..Default::default()
        },
    ] {
        let slow = SlowCommit::new();
        let store = FastSlow::new(Memory::default(), slow.clone(), config);
        let (d, data) = blob(40, 17);
        let writer = tokio::spawn({
            let store = store.clone();
            let body = chunks(&data, 20);
            async move { store.put(d.into(), UploadSize::Exact(40), body).await }
        });
        // The whole body arrives; the slow tier then waits at its gate.
        while store.shared.write_state(&d.into()) != Some(WriteState::Committing) {
            tokio::task::yield_now().await;
        }
        let checker = tokio::spawn({
            let store = store.clone();
            async move { store.has(d).await }
        });
        while store.shared.write_waiters(&d.into()) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!checker.is_finished(), "has waits for the committing write");
        slow.gate.add_permits(1);
        assert_eq!(checker.await.unwrap().unwrap(), Some(40));
        assert_eq!(writer.await.unwrap().unwrap(), 40);

        // A commit that never ends is waited for a bounded time only, then reported absent.
        let (d2, data2) = blob(40, 18);
        let writer = tokio::spawn({
            let store = store.clone();
            let body = chunks(&data2, 20);
            async move { store.put(d2.into(), UploadSize::Exact(40), body).await }
        });
        while store.shared.write_state(&d2.into()) != Some(WriteState::Committing) {
            tokio::task::yield_now().await;
        }
        let start = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(24 * 3600), store.has(d2)).await;
        assert_eq!(answer.expect("the wait is bounded").unwrap(), None);
        assert_eq!(start.elapsed(), flight::COMMIT_WAIT);
        writer.abort();
    }
}

#[tokio::test]
async fn concurrent_puts_of_one_digest_upload_once() {
    let (fast, slow, store) = tiers(Default::default());
    let (d, data) = blob(100, 22);
    let (mut body_tx, leader) = held_put(&store, &slow, d.into(), 100).await;
    let mut followers = Vec::new();
    for _ in 0..5 {
        let store = store.clone();
        let body = chunks(&data, 30);
        followers.push(tokio::spawn(async move {
            store.put(d.into(), UploadSize::Exact(100), body).await
        }));
    }
    while store.shared.write_waiters(&d.into()) < 5 {
        tokio::task::yield_now().await;
    }
    assert_eq!(slow.put_calls(), 1, "the followers wait for the leader");
    body_tx.try_send(Ok(data.clone())).unwrap();
    drop(body_tx);
    assert_eq!(leader.await.unwrap().unwrap(), 100);
    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap(), 100);
    }
    assert_eq!(
        slow.put_calls(),
        1,
        "one slow upload for six concurrent puts"
    );
    assert_eq!(fast.put_calls(), 1);
    assert_eq!(slow.inner().get_bytes(d).await.unwrap(), data);
}

#[tokio::test]
async fn a_follower_whose_body_is_wrong_fails_even_if_the_leader_succeeds() {
    let (_, slow, store) = tiers(Default::default());
    let (d, data) = blob(100, 23);
    let (mut body_tx, leader) = held_put(&store, &slow, d.into(), 100).await;
    let short = tokio::spawn({
        let store = store.clone();
        let body = chunks(&data.slice(0..60), 30);
        async move { store.put(d.into(), UploadSize::Exact(100), body).await }
    });
    let long = tokio::spawn({
        let store = store.clone();
        let body = chunks(&data, 30);
        async move { store.put(d.into(), UploadSize::AtMost(50), body).await }
    });
    while store.shared.write_waiters(&d.into()) < 2 {
        tokio::task::yield_now().await;
    }
    body_tx.try_send(Ok(data.clone())).unwrap();
    drop(body_tx);
    assert_eq!(leader.await.unwrap().unwrap(), 100);
    let short = short.await.unwrap().unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short}");
    let long = long.await.unwrap().unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument, "{long}");
    assert_eq!(slow.put_calls(), 1);
    assert_eq!(slow.inner().get_bytes(d).await.unwrap(), data);
}

#[tokio::test]
async fn a_failed_or_cancelled_leader_never_loses_a_followers_upload() {
    for cancel in [false, true] {
        let (fast, slow, store) = tiers(Default::default());
        let (d, data) = blob(100, 24);
        let (mut body_tx, leader) = held_put(&store, &slow, d.into(), 100).await;
        let follower = tokio::spawn({
            let store = store.clone();
            let body = chunks(&data, 30);
            async move { store.put(d.into(), UploadSize::Exact(100), body).await }
        });
        while store.shared.write_waiters(&d.into()) < 1 {
            tokio::task::yield_now().await;
        }
        body_tx.try_send(Ok(data.slice(0..10))).unwrap();
        if cancel {
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
        } else {
            body_tx
                .try_send(Err(Error::new(Code::Aborted, "client went away")))
                .unwrap();
            let err = leader.await.unwrap().unwrap_err();
            assert_eq!(err.code(), Code::Aborted);
        }
        assert_eq!(follower.await.unwrap().unwrap(), 100, "cancel={cancel}");
        assert_eq!(slow.put_calls(), 2, "the follower uploaded itself");
        assert_eq!(slow.inner().get_bytes(d).await.unwrap(), data);
        assert_eq!(fast.inner().get_bytes(d).await.unwrap(), data);
        assert_eq!(store.has(d).await.unwrap(), Some(100));
        assert!(store.shared.writes_for(&[d.into()]).is_empty());
    }
}

#[tokio::test]
async fn concurrent_puts_of_one_name_each_upload() {
    let (_, slow, store) = tiers(Default::default());
    let (mut body_tx, first) = held_put(&store, &slow, "ac/x".into(), 3).await;
    // A name's value may differ: the second put is not folded into the first.
    assert_eq!(store.put_bytes("ac/x", "new".into()).await.unwrap(), 3);
    assert_eq!(slow.put_calls(), 2);
    body_tx.try_send(Ok("old".into())).unwrap();
    drop(body_tx);
    assert_eq!(first.await.unwrap().unwrap(), 3);
}

async fn check_recognised_as_noop<S: Store>(slow: S) {
    let fast = Memory::default();
    let store = FastSlow::new(fast.clone(), slow, Default::default());
    let (d, data) = blob(10, 25);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(
        store.has(d).await.unwrap(),
        Some(10),
        "has asks the fast tier"
    );
    store.put_bytes("ac/n", "v".into()).await.unwrap();
    assert_eq!(
        store.get_bytes("ac/n").await.unwrap(),
        "v",
        "names live in fast"
    );
    assert_eq!(store.has("ac/n").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_wrapped_noop_slow_tier_is_recognised() {
    check_recognised_as_noop(crate::BoxStore::new(Noop)).await;
    check_recognised_as_noop(crate::Ref::new("nothing", Noop)).await;
    check_recognised_as_noop(crate::BoxStore::new(crate::Ref::new("n", Noop))).await;
    let spec = crate::StoreSpec::from_toml("noop = {}").unwrap();
    check_recognised_as_noop(crate::BoxStore::from_spec(&spec).await.unwrap()).await;
    #[cfg(feature = "metrics")]
    {
        check_recognised_as_noop(crate::Metrics::new(Noop, Default::default())).await;
        let boxed = crate::BoxStore::new(crate::Metrics::new(Noop, Default::default()));
        check_recognised_as_noop(boxed).await;
    }
    // Anything that keeps what it is given is not.
    let store = FastSlow::new(
        Memory::default(),
        crate::BoxStore::new(Memory::default()),
        Default::default(),
    );
    let (d, data) = blob(10, 26);
    store.fast().put_bytes(d, data).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), None);
}
