//! `Ref` and `Registry`: one store instance shared by name between layouts (NativeLink's
//! `ref_store`, §5.10).
//!
//! Every casstack store is a cheap handle (an `Arc` inside), so in Rust code sharing is just
//! `clone()`: two stacks built with clones of one `Memory` see the same blobs. What a layout
//! file needs in addition is a **name**: the action cache's layout says "check the store
//! called `cas`" without repeating its definition. A [`Registry`] maps names to built stores;
//! [`Registry::get`] resolves a name into a [`Ref`] when the layout is built, so a name that
//! does not exist is an error at start-up, not at the first request (peers.md item 41; in
//! NativeLink a ref is resolved in a later `post_init` step and fails per request until then).
//!
//! A `Ref<S>` keeps the static type of the store it names (`registry.get::<Memory>("cas")`,
//! zero-cost: every operation forwards the inner future unchanged), or erases it with
//! `Ref<BoxStore>` ([`Registry::get_boxed`]) when the layout is only known at run time.
//!
//! Consistency: a `Ref` *is* the named store; it adds no state.
//!
//! Layout (TOML):
//! ```toml
//! ref_store = { name = "cas" }
//! ```
//!
//! Failure codes: `InvalidArgument` from [`Registry::get`] (unknown name, or a store of a
//! different type) and `AlreadyExists` from [`Registry::insert`] (duplicate name); the named
//! store's own codes otherwise.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashMap;

use crate::body::Body;
use crate::boxed::BoxStore;
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// Built stores by name, for layouts that refer to one another. Cloning shares the registry.
///
/// ```
/// use casstack::{Memory, Registry, StoreExt, BoxStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let registry = Registry::new();
/// registry.insert("cas", Memory::default())?;
/// let typed = registry.get::<Memory>("cas")?;
/// let boxed = registry.get_boxed("cas")?;
/// typed.put_bytes("k", "shared".into()).await?;
/// assert_eq!(boxed.get_bytes("k").await?, "shared");
/// assert!(registry.get::<Memory>("ac").is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<RwLock<HashMap<Arc<str>, Entry>>>,
}

struct Entry {
    typed: Arc<dyn Any + Send + Sync>,
    boxed: BoxStore,
    type_name: &'static str,
}

impl Registry {
    /// An empty registry.
    ///
    /// ```
    /// assert!(casstack::Registry::new().names().is_empty());
    /// ```
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `store` under `name`. `AlreadyExists` if the name is taken (the first store
    /// stays).
    ///
    /// ```
    /// let r = casstack::Registry::new();
    /// r.insert("a", casstack::Noop).unwrap();
    /// assert_eq!(r.insert("a", casstack::Noop).unwrap_err().code(), casstack::Code::AlreadyExists);
    /// ```
    pub fn insert<S: Store>(&self, name: &str, store: S) -> Result<()> {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(name) {
            return Err(Error::new(
                Code::AlreadyExists,
                format!("a store named {name:?} is already registered"),
            ));
        }
        let entry = Entry {
            boxed: BoxStore::new(store.clone()),
            typed: Arc::new(store),
            type_name: std::any::type_name::<S>(),
        };
        entries.insert(name.into(), entry);
        Ok(())
    }

    /// The store named `name`, with its static type `S`.
    ///
    /// `InvalidArgument` if no store has that name (the message lists the known names) or if
    /// it is not an `S`.
    ///
    /// ```
    /// let r = casstack::Registry::new();
    /// r.insert("a", casstack::Noop).unwrap();
    /// assert!(r.get::<casstack::Noop>("a").is_ok());
    /// assert!(r.get::<casstack::Memory>("a").is_err());
    /// ```
    pub fn get<S: Store>(&self, name: &str) -> Result<Ref<S>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = lookup(&entries, name)?;
        match entry.typed.downcast_ref::<S>() {
            Some(store) => Ok(Ref::new(name, store.clone())),
            None => Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "the store named {name:?} is a {}, not a {}",
                    entry.type_name,
                    std::any::type_name::<S>()
                ),
            )),
        }
    }

    /// The store named `name`, type-erased. `InvalidArgument` if no store has that name.
    ///
    /// ```
    /// let r = casstack::Registry::new();
    /// r.insert("a", casstack::Memory::default()).unwrap();
    /// assert_eq!(r.get_boxed("a").unwrap().name(), "a");
    /// ```
    pub fn get_boxed(&self, name: &str) -> Result<Ref<BoxStore>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        Ok(Ref::new(name, lookup(&entries, name)?.boxed.clone()))
    }

    /// The registered names, sorted.
    ///
    /// ```
    /// let r = casstack::Registry::new();
    /// r.insert("b", casstack::Noop).unwrap();
    /// r.insert("a", casstack::Noop).unwrap();
    /// assert_eq!(r.names(), ["a", "b"]);
    /// ```
    pub fn names(&self) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = entries.keys().map(|n| n.to_string()).collect();
        names.sort_unstable();
        names
    }
}

fn lookup<'a>(entries: &'a HashMap<Arc<str>, Entry>, name: &str) -> Result<&'a Entry> {
    entries.get(name).ok_or_else(|| {
        let mut known: Vec<&str> = entries.keys().map(|n| &**n).collect();
        known.sort_unstable();
        Error::new(
            Code::InvalidArgument,
            format!("no store named {name:?} is defined (known: {known:?})"),
        )
    })
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

/// A named handle on a shared store: forwards every operation to it unchanged.
///
/// ```
/// use casstack::{Memory, Ref, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let cas = Memory::default();
/// let shared = Ref::new("cas", cas.clone());
/// shared.put_bytes("k", "v".into()).await?;
/// assert_eq!(cas.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Ref<S> {
    name: Arc<str>,
    inner: S,
}

impl<S> Ref<S> {
    /// A handle named `name` on `inner`.
    ///
    /// ```
    /// let r = casstack::Ref::new("cas", casstack::Noop);
    /// assert_eq!(r.name(), "cas");
    /// ```
    pub fn new(name: &str, inner: S) -> Self {
        Ref {
            name: name.into(),
            inner,
        }
    }

    /// The name it was resolved from.
    ///
    /// ```
    /// assert_eq!(casstack::Ref::new("x", casstack::Noop).name(), "x");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The named store.
    ///
    /// ```
    /// let r = casstack::Ref::new("x", casstack::Memory::default());
    /// assert!(r.get_ref().is_empty());
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for Ref<S> {
    type Reader = S::Reader;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.has_many(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<S::Reader>> + Send {
        self.inner.get(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.inner.put(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner.subscribe_removals(listener);
    }

    fn reports_all_removals(&self) -> bool {
        self.inner.reports_all_removals()
    }

    /// The shared store's health.
    async fn check_health(&self) -> HealthStatus {
        self.inner.check_health().await.within("Ref")
    }

    /// The shared store's answer.
    fn discards_writes(&self) -> bool {
        self.inner.discards_writes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Digest;
    use crate::store::StoreExt;
    use crate::stores::memory::Memory;

    #[tokio::test]
    async fn has_get_update_forward_to_the_named_store() {
        let registry = Registry::new();
        let cas = Memory::default();
        registry.insert("cas", cas.clone()).unwrap();
        let typed = registry.get::<Memory>("cas").unwrap();
        let boxed = registry.get_boxed("cas").unwrap();
        let d = Digest::of(b"shared");
        typed.put_bytes(d, "shared".into()).await.unwrap();
        assert_eq!(cas.has(d).await.unwrap(), Some(6));
        assert_eq!(boxed.has(d).await.unwrap(), Some(6));
        assert_eq!(boxed.get_bytes(d).await.unwrap(), "shared");
        boxed.put_bytes("via box", "x".into()).await.unwrap();
        assert_eq!(typed.get_bytes("via box").await.unwrap(), "x");
        assert_eq!(typed.get_ref().len(), 2);
    }

    #[test]
    fn unknown_names_and_wrong_types_fail_when_resolved() {
        let registry = Registry::new();
        registry.insert("cas", Memory::default()).unwrap();
        let err = registry.get::<Memory>("ac").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("\"ac\"") && err.message().contains("\"cas\""),
            "{err}"
        );
        let err = registry.get::<crate::Noop>("cas").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("Memory"), "{err}");
        assert_eq!(
            registry.get_boxed("nope").unwrap_err().code(),
            Code::InvalidArgument
        );
        let dup = registry.insert("cas", Memory::default()).unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
    }

    #[tokio::test]
    async fn removals_reach_listeners_through_the_ref() {
        let registry = Registry::new();
        let cas = Memory::default();
        registry.insert("cas", cas.clone()).unwrap();
        let r = registry.get_boxed("cas").unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        r.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
        cas.put_bytes("k", "v".into()).await.unwrap();
        cas.remove(&"k".into());
        assert_eq!(*seen.lock().unwrap(), vec![Key::from("k")]);
    }
}
