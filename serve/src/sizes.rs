//! The size of each CAS object, by hash.
//!
//! The HTTP protocol names a CAS object by its sha256 alone (`GET /cas/{hash}`), while a
//! casstack digest key is the hash *and* the size. Every successful CAS upload therefore also
//! records its size in the AC store, under the name `cas/{hash}` (the decimal size as text),
//! and a read looks it up there first. The index lives in the AC store so that it survives a
//! restart whenever the AC does; a bounded in-process map in front of it saves the lookup on
//! repeated reads.
//!
//! Consistency: an index entry only says which digest to ask for. If the CAS store lost the
//! object (eviction), the read is a miss and the entry is forgotten here; if the index lost
//! the entry while the CAS store still holds the object, the object reads as a miss until it
//! is uploaded again. Neither can serve wrong bytes: the CAS store is read by exact digest.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use casstack::{Code, Key, Result, Store, StoreExt};

/// Entries the in-process map holds before it starts over (about 12 MiB when full).
const MAX_CACHED: usize = 256 * 1024;

/// Hash → size of CAS objects, persisted in a name-keyed store.
#[derive(Debug)]
pub struct SizeIndex<A> {
    store: A,
    cached: Mutex<HashMap<[u8; 32], u64>>,
}

/// The name under which the size of the CAS object `hash` is kept.
pub fn index_key(hash_hex: &str) -> Key {
    Key::from(format!("cas/{hash_hex}"))
}

impl<A: Store> SizeIndex<A> {
    /// An index kept in `store` (which must take name keys).
    pub fn new(store: A) -> Self {
        SizeIndex {
            store,
            cached: Mutex::new(HashMap::new()),
        }
    }

    /// The recorded size of the object `hash`, `None` if none is recorded.
    pub async fn lookup(&self, hash: &[u8; 32], hash_hex: &str) -> Result<Option<u64>> {
        if let Some(&size) = self.map().get(hash) {
            return Ok(Some(size));
        }
        let text = match self.store.get_bytes(index_key(hash_hex)).await {
            Ok(text) => text,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e.context("reading the CAS size index")),
        };
        let Some(size) = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            tracing::warn!(hash = hash_hex, "ignoring a corrupt CAS size index entry");
            return Ok(None);
        };
        self.remember(*hash, size);
        Ok(Some(size))
    }

    /// Records that the object `hash` has `size` bytes (after it was stored).
    pub async fn record(&self, hash: &[u8; 32], hash_hex: &str, size: u64) -> Result<()> {
        // Written every time, even when the map knows it: the store may have dropped it.
        self.store
            .put_bytes(index_key(hash_hex), Bytes::from(size.to_string()))
            .await
            .map_err(|e| e.context("recording the object's size in the CAS size index"))?;
        self.remember(*hash, size);
        Ok(())
    }

    /// Drops the in-process entry of `hash` (the CAS store no longer has the object).
    pub fn forget(&self, hash: &[u8; 32]) {
        self.map().remove(hash);
    }

    fn remember(&self, hash: [u8; 32], size: u64) {
        let mut map = self.map();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(hash, size);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], u64>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
