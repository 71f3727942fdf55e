//! Static properties of wrapper stacks: their futures are `Send` and can be spawned from
//! generic code, and the futures of `get` stay small.

use std::mem::size_of_val;

use bytes::Bytes;
use casstack::{
    BoxStore, ByteRange, Digest, ExistenceCache, FastSlow, Key, Memory, OneChunk, Ref, Shard,
    SizePartition, Store, StoreExt, UploadSize, Verify, VerifyConfig,
};

/// Five wrappers deep.
type Deep = Verify<ExistenceCache<FastSlow<Memory, SizePartition<Memory, Shard<Memory>>>>>;

fn deep() -> Deep {
    Verify::new(
        ExistenceCache::new(
            FastSlow::new(
                Memory::default(),
                SizePartition::new(
                    Memory::default(),
                    Shard::even([Memory::default(), Memory::default()]).unwrap(),
                    Default::default(),
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
}

fn assert_send<T: Send + 'static>(_: &T) {}

/// Generic code can spawn every operation of any store (clone-then-spawn).
async fn spawn_everything<S: Store>(store: S, key: Key, data: Bytes) {
    let s = store.clone();
    let k = key.clone();
    let d = data.clone();
    let put = tokio::spawn(async move {
        s.put(k, UploadSize::Exact(d.len() as u64), OneChunk::new(d))
            .await
    });
    assert_eq!(put.await.unwrap().unwrap(), data.len() as u64);
    let s = store.clone();
    let k = key.clone();
    let has = tokio::spawn(async move { s.has(k).await });
    assert_eq!(has.await.unwrap().unwrap(), Some(data.len() as u64));
    let s = store.clone();
    let get = tokio::spawn(async move { s.get_bytes(key).await });
    assert_eq!(get.await.unwrap().unwrap(), data);
}

#[tokio::test]
async fn futures_of_a_five_deep_stack_are_send_and_spawn() {
    let store = deep();
    let d = Digest::of(b"deep");
    // Compile-time: the futures themselves (borrowing the store) are Send.
    fn check_send<T: Send>(_: &T) {}
    check_send(&store.get(d.into(), ByteRange::FULL));
    check_send(&store.put(d.into(), UploadSize::Exact(4), OneChunk::new("deep".into())));
    let keys = [Key::from(d)];
    let mut out = [None];
    check_send(&store.has_many(&keys, &mut out));
    assert_send(&store);
    spawn_everything(store, d.into(), Bytes::from_static(b"deep")).await;
    let big = Bytes::from(vec![7u8; 100_000]);
    spawn_everything(deep(), Digest::of(&big).into(), big).await;
    spawn_everything(
        BoxStore::new(deep()),
        Digest::of(b"boxed").into(),
        "boxed".into(),
    )
    .await;
}

#[test]
fn get_futures_stay_small() {
    let d: Key = Digest::of(b"x").into();
    let memory = Memory::default();
    let sizes = [
        (
            "Memory",
            size_of_val(&memory.get(d.clone(), ByteRange::FULL)),
        ),
        (
            "Verify<Memory>",
            size_of_val(
                &Verify::new(memory.clone(), Default::default()).get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "Verify<Verify<Verify<Memory>>>",
            size_of_val(
                &Verify::new(
                    Verify::new(
                        Verify::new(memory.clone(), Default::default()),
                        Default::default(),
                    ),
                    Default::default(),
                )
                .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "ExistenceCache<Memory>",
            size_of_val(
                &ExistenceCache::new(memory.clone(), Default::default())
                    .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "SizePartition<Memory, Memory>",
            size_of_val(
                &SizePartition::new(memory.clone(), memory.clone(), Default::default())
                    .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "Shard<Memory>",
            size_of_val(
                &Shard::even([memory.clone()])
                    .unwrap()
                    .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "Ref<Memory>",
            size_of_val(&Ref::new("cas", memory.clone()).get(d.clone(), ByteRange::FULL)),
        ),
        (
            "FastSlow<Memory, Memory>",
            size_of_val(
                &FastSlow::new(memory.clone(), memory.clone(), Default::default())
                    .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "Verify<ExistenceCache<FastSlow<Memory, Memory>>>",
            size_of_val(
                &Verify::new(
                    ExistenceCache::new(
                        FastSlow::new(memory.clone(), memory.clone(), Default::default()),
                        Default::default(),
                    ),
                    VerifyConfig::OFF,
                )
                .get(d.clone(), ByteRange::FULL),
            ),
        ),
        (
            "Deep (5 wrappers)",
            size_of_val(&deep().get(d.clone(), ByteRange::FULL)),
        ),
    ];
    for (name, size) in sizes {
        eprintln!("{size:>5} bytes  {name}::get");
    }
    let memory_size = sizes[0].1;
    // Forwarding wrappers add at most one word per layer to the inner future (Verify: the
    // boxed digest of a checked read; SizePartition: the enum tag).
    let layers = [1, 3, 1, 1, 1, 1];
    for ((name, size), layers) in sizes[1..7].iter().zip(layers) {
        assert!(
            *size <= memory_size + 8 * layers,
            "{name}: {size} bytes vs Memory's {memory_size}"
        );
    }
    // FastSlow's get is a real state machine (fast get, single flight, slow get); its rare
    // paths (following another reader, filling) are boxed.
    for (name, size) in &sizes[7..] {
        assert!(*size <= 400, "{name}: {size} bytes");
    }
}
