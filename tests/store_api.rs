//! Properties of the store API itself: futures are `Send` and spawnable from generic code,
//! and small.

use std::mem::size_of_val;

use casstack::{BoxStore, ByteRange, Digest, Key, Memory, Noop, OneChunk, Store, UploadSize};

/// Generic code can move any store into a task and run every operation there.
/// Returns the size `has` saw and whether `get` found the blob.
async fn roundtrip_on_a_task<S: Store>(store: S) -> casstack::Result<(Option<u64>, bool)> {
    tokio::spawn(async move {
        let d = Digest::of(b"task");
        store
            .put(d.into(), UploadSize::Exact(4), OneChunk::new("task".into()))
            .await?;
        let mut out = [None];
        store.has_many(&[d.into()], &mut out).await?;
        let found = store.get(d.into(), ByteRange::FULL).await.is_ok();
        Ok((out[0], found))
    })
    .await
    .expect("task panicked")
}

#[tokio::test]
async fn operations_of_every_store_run_on_spawned_tasks() {
    let stored = (Some(4), true);
    assert_eq!(
        roundtrip_on_a_task(Memory::default()).await.unwrap(),
        stored
    );
    let boxed = BoxStore::new(Memory::default());
    assert_eq!(roundtrip_on_a_task(boxed).await.unwrap(), stored);
    assert_eq!(roundtrip_on_a_task(Noop).await.unwrap(), (None, false));
}

#[test]
fn get_futures_stay_small() {
    let key = || Key::from(Digest::EMPTY);
    let memory = Memory::default();
    let boxed = BoxStore::new(memory.clone());
    let memory_get = size_of_val(&memory.get(key(), ByteRange::FULL));
    let boxed_get = size_of_val(&boxed.get(key(), ByteRange::FULL));
    println!("get future: Memory {memory_get} bytes, BoxStore<Memory> {boxed_get} bytes");
    // Memory answers at once: its future is the ready result (a `Bytes` and two tags), no
    // state machine.
    assert!(
        memory_get <= 40,
        "Memory get future grew to {memory_get} bytes"
    );
    // BoxStore's is one boxed pointer.
    assert!(
        boxed_get <= 16,
        "BoxStore get future grew to {boxed_get} bytes"
    );
}
