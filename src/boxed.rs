//! `BoxStore`: the one opt-in point of type erasure.
//!
//! Two jobs: layouts known only at run time, and a compile-time firewall inside a very deep
//! static stack (every level above a `BoxStore` sees one small type instead of the whole
//! subtree). It costs one allocation per call for the future, one per `put` for the body, and
//! a virtual call per reader poll.
//!
//! The trait behind it is private: a blanket object-safe twin of [`Store`] (`put` is generic,
//! so `Store` itself cannot be a trait object), as OpenDAL's `AccessDyn` and rama's
//! `DynService` do.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::body::{Body, BoxStream};
use crate::error::Result;
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

trait DynStore: Send + Sync + 'static {
    fn has_many_dyn<'a>(&'a self, keys: &'a [Key], out: &'a mut [Option<u64>])
    -> BoxFuture<'a, ()>;
    fn get_dyn(&self, key: Key, range: ByteRange) -> BoxFuture<'_, BoxStream>;
    fn put_dyn(&self, key: Key, size: UploadSize, body: BoxStream) -> BoxFuture<'_, u64>;
    fn subscribe_removals_dyn(&self, listener: Arc<dyn RemovalListener>);
    fn reports_all_removals_dyn(&self) -> bool;
    fn check_health_dyn(&self) -> Pin<Box<dyn Future<Output = HealthStatus> + Send + '_>>;
    fn type_name(&self) -> &'static str;
    fn discards_writes_dyn(&self) -> bool;
}

impl<S: Store> DynStore for S {
    fn has_many_dyn<'a>(
        &'a self,
        keys: &'a [Key],
        out: &'a mut [Option<u64>],
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.has_many(keys, out))
    }

    fn get_dyn(&self, key: Key, range: ByteRange) -> BoxFuture<'_, BoxStream> {
        Box::pin(async move {
            let reader = self.get(key, range).await?;
            Ok(Box::pin(reader) as BoxStream)
        })
    }

    fn put_dyn(&self, key: Key, size: UploadSize, body: BoxStream) -> BoxFuture<'_, u64> {
        Box::pin(self.put(key, size, body))
    }

    fn subscribe_removals_dyn(&self, listener: Arc<dyn RemovalListener>) {
        self.subscribe_removals(listener);
    }

    fn reports_all_removals_dyn(&self) -> bool {
        self.reports_all_removals()
    }

    fn check_health_dyn(&self) -> Pin<Box<dyn Future<Output = HealthStatus> + Send + '_>> {
        Box::pin(self.check_health())
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<S>()
    }

    fn discards_writes_dyn(&self) -> bool {
        self.discards_writes()
    }
}

/// Any store behind one pointer; itself a [`Store`], so it can sit anywhere in a static stack.
///
/// ```
/// use casstack::{BoxStore, Memory, Noop, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// // Chosen at run time: both arms have the same type.
/// let in_memory = true;
/// let store = if in_memory { BoxStore::new(Memory::default()) } else { BoxStore::new(Noop) };
/// store.put_bytes("k", "v".into()).await?;
/// assert_eq!(store.get_bytes("k").await?, "v");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoxStore(Arc<dyn DynStore>);

impl BoxStore {
    /// Erases the type of `store`.
    ///
    /// ```
    /// let store = casstack::BoxStore::new(casstack::Noop);
    /// # let _ = store;
    /// ```
    pub fn new<S: Store>(store: S) -> Self {
        BoxStore(Arc::new(store))
    }
}

impl fmt::Debug for BoxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoxStore")
            .field(&self.0.type_name())
            .finish()
    }
}

impl Store for BoxStore {
    type Reader = BoxStream;

    // An `async fn`: the future captures the three borrows separately, while the boxed
    // future needs them under one lifetime.
    async fn has_many(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        self.0.has_many_dyn(keys, out).await
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<BoxStream>> + Send {
        self.0.get_dyn(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.0.put_dyn(key, size, Box::pin(body))
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.0.subscribe_removals_dyn(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.0.reports_all_removals_dyn()
    }

    fn check_health(&self) -> impl Future<Output = HealthStatus> + Send {
        self.0.check_health_dyn()
    }

    fn discards_writes(&self) -> bool {
        self.0.discards_writes_dyn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Digest, Memory, StoreExt};

    fn assert_send_sync<T: Send + Sync>(_: &T) {}

    #[tokio::test]
    async fn forwards_every_operation_and_is_send() {
        let store = BoxStore::new(Memory::default());
        assert_send_sync(&store);
        let d = Digest::of(b"boxed");
        let copy = store.clone();
        tokio::spawn(async move { copy.put_bytes(d, "boxed".into()).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.has(d).await.unwrap(), Some(5));
        assert_eq!(
            store
                .get_range_bytes(d, ByteRange::new(1, Some(3)))
                .await
                .unwrap(),
            "oxe"
        );
        assert!(format!("{store:?}").contains("Memory"));
    }
}
