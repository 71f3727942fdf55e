//! Stores and reads back a few blobs, then shows eviction at work.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;

use bytes::Bytes;
use casstack::{ByteRange, Digest, EvictionPolicy, Key, Memory, MemoryConfig, Store, StoreExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> casstack::Result<()> {
    // A 64 KiB memory cache that evicts its least recently used blobs down to 48 KiB.
    let cas = Memory::new(MemoryConfig {
        eviction_policy: EvictionPolicy {
            max_bytes: 64 << 10,
            evict_bytes: 16 << 10,
            ..Default::default()
        },
    });
    cas.subscribe_removals(Arc::new(|key: &Key| println!("  evicted {key}")));

    let sources = ["int main() { return 0; }", "fn main() {}", "print('hi')"];
    let mut digests = Vec::new();
    for source in sources {
        let digest = Digest::of(source.as_bytes());
        cas.put_bytes(digest, Bytes::from(source)).await?;
        println!("stored {digest}");
        digests.push(digest);
    }

    let keys: Vec<Key> = digests.iter().map(Key::from).collect();
    let mut sizes = vec![None; keys.len()];
    cas.has_many(&keys, &mut sizes).await?;
    println!("sizes in one call: {sizes:?}");

    let first = cas.get_bytes(digests[0]).await?;
    println!("read back: {:?}", String::from_utf8_lossy(&first));
    let word = cas
        .get_range_bytes(digests[0], ByteRange::new(4, Some(4)))
        .await?;
    println!("bytes 4..8: {:?}", String::from_utf8_lossy(&word));

    let missing = Digest::of(b"never stored");
    match cas.get_bytes(missing).await {
        Err(e) => println!("a miss is an error with a code: {e}"),
        Ok(_) => unreachable!("nothing was stored under it"),
    }

    println!("filling the cache with 8 KiB blobs:");
    for i in 0u8..8 {
        let blob = Bytes::from(vec![i; 8 << 10]);
        cas.put_bytes(Digest::of(&blob), blob).await?;
    }
    println!(
        "now holding {} blobs, {} bytes (limit {} bytes)",
        cas.len(),
        cas.total_bytes(),
        64 << 10
    );
    Ok(())
}
