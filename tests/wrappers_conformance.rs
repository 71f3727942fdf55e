//! The conformance checker on every wrapper over `Memory`, and on the layouts of issue 4.
//! (`FastSlow<Memory, Filesystem>` waits for the Filesystem store.)
#![cfg(feature = "testing")]

use casstack::testing::Conformance;
use casstack::{
    EvictionPolicy, ExistenceCache, ExistenceCacheConfig, FastSlow, FastSlowConfig, Memory,
    MemoryConfig, Registry, Shard, SizePartition, SizePartitionConfig, StoreDirection, Verify,
    VerifyConfig,
};

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
fn fast_slow_memory_memory_conforms() {
    Conformance::new().check(|| async {
        FastSlow::new(Memory::default(), Memory::default(), Default::default())
    });
}

#[test]
fn fast_slow_with_a_small_evicting_fast_tier_conforms() {
    // The fast tier forgets and refuses large blobs; the slow tier keeps everything, so the
    // composition must still keep everything.
    Conformance::new().check(|| async {
        FastSlow::new(evicting(8 << 10, 3), Memory::default(), Default::default())
    });
}

#[test]
fn fast_slow_with_bypass_and_get_only_fast_tier_conforms() {
    Conformance::new().check(|| async {
        let config = FastSlowConfig {
            fast_direction: StoreDirection::Get,
            bypass_dedup_threshold_bytes: 4 << 10,
            ..Default::default()
        };
        FastSlow::new(Memory::default(), Memory::default(), config)
    });
}

#[test]
fn size_partition_memory_memory_conforms() {
    Conformance::new().name_keys(false).check(|| async {
        SizePartition::new(
            Memory::default(),
            Memory::default(),
            SizePartitionConfig { size: 1 << 10 },
        )
    });
}

#[test]
fn verify_memory_conforms() {
    Conformance::new().name_keys(false).check(|| async {
        Verify::new(
            Memory::default(),
            VerifyConfig {
                verify_on_get: true,
                ..Default::default()
            },
        )
    });
}

#[test]
fn verify_fast_slow_memory_memory_conforms() {
    Conformance::new().name_keys(false).check(|| async {
        Verify::new(
            FastSlow::new(Memory::default(), Memory::default(), Default::default()),
            VerifyConfig {
                verify_on_get: true,
                ..Default::default()
            },
        )
    });
}

#[test]
fn existence_cache_memory_conforms() {
    Conformance::new()
        .check(|| async { ExistenceCache::new(Memory::default(), Default::default()) });
}

#[test]
fn existence_cache_over_evicting_memory_conforms() {
    Conformance::new().may_forget(true).check(|| async {
        ExistenceCache::new(
            evicting(20 << 10, 4),
            ExistenceCacheConfig {
                eviction_policy: EvictionPolicy {
                    max_count: 3,
                    ..Default::default()
                },
            },
        )
    });
}

#[test]
fn shard_of_three_memories_conforms() {
    Conformance::new().check(|| async {
        Shard::new([
            (Memory::default(), 1),
            (Memory::default(), 2),
            (Memory::default(), 1),
        ])
        .unwrap()
    });
}

#[test]
fn ref_to_memory_conforms() {
    Conformance::new().check(|| async {
        let registry = Registry::new();
        registry.insert("cas", Memory::default()).unwrap();
        registry.get::<Memory>("cas").unwrap()
    });
}

#[test]
fn boxed_ref_to_memory_conforms() {
    Conformance::new().check(|| async {
        let registry = Registry::new();
        registry.insert("cas", Memory::default()).unwrap();
        registry.get_boxed("cas").unwrap()
    });
}

#[test]
fn deep_stack_conforms() {
    Conformance::new().name_keys(false).check(|| async {
        Verify::new(
            ExistenceCache::new(
                FastSlow::new(
                    evicting(8 << 10, 0),
                    SizePartition::new(
                        Memory::default(),
                        Shard::even([Memory::default(), Memory::default()]).unwrap(),
                        SizePartitionConfig { size: 512 },
                    ),
                    Default::default(),
                ),
                Default::default(),
            ),
            VerifyConfig {
                verify_on_get: true,
                ..Default::default()
            },
        )
    });
}

mod faults {
    use casstack::testing::{Fault, Faulty, Operation};
    use casstack::{Code, Digest, FastSlow, Memory, StoreExt};

    fn blob() -> (Digest, bytes::Bytes) {
        let data = bytes::Bytes::from(vec![5u8; 4096]);
        (Digest::of(&data), data)
    }

    #[tokio::test]
    async fn a_slow_read_cut_midway_fails_and_fills_nothing() {
        let fast = Memory::default();
        let slow = Faulty::new(Memory::default());
        let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
        let (d, data) = blob();
        slow.get_ref().put_bytes(d, data.clone()).await.unwrap();
        slow.inject(Operation::Get, Fault::CutAfter(1000), 1);
        let err = store.get_bytes(d).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            fast.is_empty(),
            "a cut read leaves no partial entry in fast"
        );
        // The next read succeeds and fills.
        assert_eq!(store.get_bytes(d).await.unwrap(), data);
        assert_eq!(fast.has(d).await.unwrap(), Some(4096));
    }

    #[tokio::test]
    async fn a_failing_tier_fails_the_put_and_the_other_tier_is_still_written() {
        let fast = Faulty::new(Memory::default());
        let slow = Memory::default();
        let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
        let (d, data) = blob();
        fast.inject(Operation::Put, Fault::Fail(Code::Unavailable), 1);
        let err = store.put_bytes(d, data.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            slow.has(d).await.unwrap(),
            Some(4096),
            "both writes were attempted"
        );
        assert_eq!(fast.get_ref().has(d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_slow_tier_that_stalls_does_not_block_a_fast_hit() {
        let fast = Memory::default();
        let slow = Faulty::new(Memory::default());
        let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
        let (d, data) = blob();
        fast.put_bytes(d, data.clone()).await.unwrap();
        slow.inject(Operation::Get, Fault::Stall, 1);
        assert_eq!(store.get_bytes(d).await.unwrap(), data);
        assert_eq!(slow.calls(Operation::Get), 0);
    }
}
