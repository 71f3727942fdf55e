//! The `Filesystem` store itself: open, has, get, put, and the commit protocol that keeps the
//! index and the disk in agreement.

use std::fmt;
use std::fs::{self, File, FileTimes};
use std::future::{Future, ready};
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;

use crate::body::{Body, drain_body};
use crate::error::{Code, Error, Result, ResultExt as _};
use crate::eviction::EvictingMap;
use crate::health::HealthStatus;
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;

use super::config::FilesystemConfig;
use super::names::{self, DIGESTS, NAMES};
use super::scan;
use super::stream::{FileStream, read_chunk};
use super::temp::{TempFile, Unlink, on_blocking_thread};

/// Bytes of a body buffered before they are written to the temp file in one blocking call.
const WRITE_BATCH: usize = 256 * 1024;

/// Number of commit locks; a key always takes the same one (by its hash).
const COMMIT_LOCKS: usize = 64;

/// The directory under `temp_path` that evicted files are renamed into before they are
/// deleted in the background.
pub(crate) const TRASH: &str = "trash";

/// A store of files on a local disk. Cloning it shares the same store.
///
/// See the [module docs](crate::stores::filesystem) for the layout, the consistency rules and
/// the failure codes.
///
/// ```
/// use casstack::{Digest, Filesystem, FilesystemConfig, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let content = dir.path().join("content").to_str().unwrap().to_owned();
/// # let temp = dir.path().join("tmp").to_str().unwrap().to_owned();
/// let store = Filesystem::open(FilesystemConfig::new(content.clone(), temp.clone())).await?;
/// let d = Digest::of(b"durable");
/// store.put_bytes(d, "durable".into()).await?;
/// drop(store);
///
/// let reopened = Filesystem::open(FilesystemConfig::new(content, temp)).await?;
/// assert_eq!(reopened.get_bytes(d).await?, "durable");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Filesystem {
    inner: Arc<Inner>,
}

struct Inner {
    content: PathBuf,
    temp: PathBuf,
    /// Open handles of `d/` and `s/`, to fsync a rename into them.
    digest_dir: File,
    name_dir: File,
    /// Exclusive locks on `content_path` and `temp_path`, released when the store closes.
    _locks: Vec<File>,
    /// Key -> true object size; the index's own size is the block-rounded one.
    index: EvictingMap<u64>,
    /// Per-key locks (striped by hash), held while renaming a key's file into place together
    /// with its index insert, and while moving the file of a dropped key away: see
    /// "Consistency" in the module docs.
    commit: [Mutex<()>; COMMIT_LOCKS],
    dropped: Arc<Dropped>,
    /// `temp_path/trash`: evicted files wait here for the background unlink.
    trash: PathBuf,
    next_trash: AtomicU64,
    /// Accounted bytes promised to uploads in progress (see [`Reservation`]).
    reserved: Arc<Mutex<u64>>,
    listeners: RwLock<Vec<Arc<dyn RemovalListener>>>,
    writes: Option<Arc<Semaphore>>,
    read_buffer_size: usize,
    block_size: u64,
    /// `FilesystemConfig::check_digest_sizes`.
    check_digest_sizes: bool,
    #[cfg(test)]
    fault: Mutex<Option<(Fault, io::ErrorKind)>>,
}

/// Where a test can make the next upload fail with an injected I/O error.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Write,
    Sync,
    Rename,
}

/// Keys the index has dropped (evicted, expired, replaced, removed) whose files may have to
/// be deleted. The index tells it synchronously; it only queues, never takes another lock.
#[derive(Debug, Default)]
struct Dropped {
    keys: Mutex<Vec<Key>>,
    any: AtomicBool,
}

impl RemovalListener for Dropped {
    fn removed(&self, key: &Key) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key.clone());
        self.any.store(true, SeqCst);
    }
}

impl Filesystem {
    /// Opens (creating if needed) the store at `config.content_path`.
    ///
    /// Creates the directories, refuses a `temp_path` on another filesystem than
    /// `content_path` (`InvalidArgument`), wipes `temp_path`, then scans `d/` and `s/` in
    /// parallel without reading file contents: every valid file is indexed, oldest access
    /// time first, and every invalid one (a name that is not a key, a digest file whose
    /// length is not the digest's size, anything that is not a regular file) is deleted.
    /// `Unavailable` if another open store holds the directories (after waiting a second for
    /// it to close).
    ///
    /// ```
    /// use casstack::{Code, Filesystem, FilesystemConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let err = Filesystem::open(FilesystemConfig::default()).await.unwrap_err();
    /// assert_eq!(err.code(), Code::InvalidArgument); // content_path is required
    /// # }
    /// ```
    pub async fn open(config: FilesystemConfig) -> Result<Self> {
        let (content, temp) = config.expanded_paths()?;
        tokio::task::spawn_blocking(move || Inner::open(&config, content, temp))
            .await
            .map_err(|e| {
                Error::new(Code::Internal, "opening the filesystem store failed").with_source(e)
            })?
            .map(|inner| Filesystem {
                inner: Arc::new(inner),
            })
    }

    /// Number of stored objects.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// assert_eq!(store.len(), 0);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.inner.index.len()
    }

    /// True when nothing is stored.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// assert!(store.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The accounted size of the stored objects: each rounded up to whole `block_size`
    /// blocks, which is what `eviction_policy.max_bytes` limits.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig, StoreExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// store.put_bytes("one byte", "x".into()).await?;
    /// assert_eq!(store.total_bytes(), 4096);
    /// assert_eq!(store.has("one byte").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn total_bytes(&self) -> u64 {
        self.inner.index.total_bytes()
    }

    /// The accounted bytes reserved by uploads in progress: the declared size of an upload of
    /// known size from its start, the bytes written so far of one of unknown size. The
    /// stored objects plus these stay below `eviction_policy.max_bytes`.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig, StoreExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// store.put_bytes("k", "v".into()).await?;
    /// assert_eq!(store.in_flight_bytes(), 0); // released when the upload ends
    /// # Ok(()) }
    /// ```
    pub fn in_flight_bytes(&self) -> u64 {
        *lock(&self.inner.reserved)
    }

    /// The stored keys, least recently used first.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig, StoreExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// store.put_bytes("a", "1".into()).await?;
    /// assert_eq!(store.keys(), vec!["a".into()]);
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> Vec<Key> {
        self.inner.index.keys_lru_first()
    }

    /// The directory objects live in (`content_path` after expansion).
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// assert!(store.content_path().join("d").is_dir());
    /// # Ok(()) }
    /// ```
    pub fn content_path(&self) -> &Path {
        &self.inner.content
    }

    /// The directory uploads are written in (`temp_path` after expansion).
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// assert!(store.temp_path().ends_with("t"));
    /// # Ok(()) }
    /// ```
    pub fn temp_path(&self) -> &Path {
        &self.inner.temp
    }

    /// Removes `key` and deletes its file, telling removal listeners; true if it was present.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig, StoreExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// store.put_bytes("k", "v".into()).await?;
    /// assert!(store.remove(&"k".into()).await?);
    /// assert_eq!(store.has("k").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, key: &Key) -> Result<bool> {
        let inner = self.inner.clone();
        let key = key.clone();
        blocking(move || Ok(inner.remove(&key))).await
    }

    /// Runs the eviction rules now and deletes the files of everything dropped. Expiry by
    /// `max_seconds` otherwise happens only on uploads and on reads of an expired key.
    /// Returns how many keys left.
    ///
    /// ```
    /// # use casstack::{Filesystem, FilesystemConfig};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    /// let store = Filesystem::open(FilesystemConfig::new(p("c"), p("t"))).await?;
    /// assert_eq!(store.evict_now().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn evict_now(&self) -> Result<usize> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.index.evict_now();
            Ok(inner.delete_dropped())
        })
        .await
    }

    /// The path a key is stored under (whether or not it is present).
    #[cfg(test)]
    pub(crate) fn path_of(&self, key: &Key) -> Result<PathBuf> {
        self.inner.path_of(key)
    }

    /// Makes the next upload step `at` fail with `kind`.
    #[cfg(test)]
    pub(crate) fn inject_fault(&self, at: Fault, kind: io::ErrorKind) {
        *self.inner.fault.lock().unwrap() = Some((at, kind));
    }

    fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            *slot = if key.is_empty_blob() {
                Some(0)
            } else {
                self.inner.index.get(key)
            };
        }
        self.after_read();
        Ok(())
    }

    async fn read(&self, key: Key, range: ByteRange) -> Result<FileStream> {
        if key.is_empty_blob() {
            range.resolve(0).map_err(|e| e.with_key(key.clone()))?;
            return Ok(FileStream::empty(key));
        }
        let path = self.inner.path_of(&key)?;
        if self.inner.index.get(&key).is_none() {
            self.after_read();
            return Err(Error::not_found(key));
        }
        let inner = self.inner.clone();
        blocking(move || inner.open_for_read(key, &path, range)).await
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        if key.is_empty_blob() {
            return drain_body(&key, UploadSize::Exact(0), body).await;
        }
        let path = self.inner.path_of(&key)?;
        if let Key::Digest(d) = &key
            && self.inner.check_digest_sizes
            && (size.limit() < d.size() || size.exact().is_some_and(|n| n != d.size()))
        {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "declared upload size {size:?} does not match the digest's size (a \
                     Filesystem under Compress or Dedup needs check_digest_sizes = false)"
                ),
            )
            .with_key(key));
        }
        let mut reservation = Reservation::new(&self.inner.reserved);
        if let Some(n) = size.exact() {
            self.inner.check_fits(&key, n)?;
            self.reserve(&key, &mut reservation, n).await?;
        }
        // The temp file is created only once there are bytes to write, so a slow client
        // holds no file while it has sent nothing.
        let mut temp: Option<TempFile> = None;
        match self
            .receive(&key, size, body, &mut temp, &mut reservation)
            .await
        {
            Ok((batch, received)) => {
                self.finish(key, path, temp, batch, received, reservation)
                    .await
            }
            Err(e) => {
                // Delete the partial upload on the blocking pool before answering, so the
                // caller finds nothing left (a dropped future leaves it to `TempFile::drop`).
                if let Some(temp) = temp {
                    blocking(move || {
                        drop(temp);
                        Ok(())
                    })
                    .await?;
                }
                Err(e)
            }
        }
    }

    /// Reads the body into `temp` (all but the last batch, returned with the size), checking
    /// the sizes and growing the reservation as bytes reach the disk.
    async fn receive<B: Body>(
        &self,
        key: &Key,
        size: UploadSize,
        mut body: B,
        temp: &mut Option<TempFile>,
        reservation: &mut Reservation,
    ) -> Result<(Vec<Bytes>, u64)> {
        let key = key.clone();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.context("reading the upload body"))?;
            received += chunk.len() as u64;
            size.check_progress(received)
                .map_err(|e| e.with_key(key.clone()))?;
            if chunk.is_empty() {
                continue;
            }
            batched += chunk.len();
            batch.push(chunk);
            if batched >= WRITE_BATCH {
                self.reserve(&key, reservation, received).await?;
                let inner = self.inner.clone();
                let chunks = std::mem::take(&mut batch);
                let open = temp.take();
                let k = key.clone();
                *temp = Some(blocking(move || inner.append(&k, open, &chunks)).await?);
                batched = 0;
            }
        }
        size.check_end(received)
            .map_err(|e| e.with_key(key.clone()))?;
        if let Key::Digest(d) = &key
            && self.inner.check_digest_sizes
            && received != d.size()
        {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "upload of {received} bytes for a digest of {} bytes (a Filesystem under \
                     Compress or Dedup needs check_digest_sizes = false)",
                    d.size()
                ),
            )
            .with_key(key));
        }
        self.inner.check_fits(&key, received)?;
        self.reserve(&key, reservation, received).await?;
        Ok((batch, received))
    }

    /// Writes the last batch, syncs the temp file and commits it.
    async fn finish(
        &self,
        key: Key,
        path: PathBuf,
        temp: Option<TempFile>,
        batch: Vec<Bytes>,
        received: u64,
        reservation: Reservation,
    ) -> Result<u64> {
        let permit = match &self.inner.writes {
            Some(writes) => Some(writes.clone().acquire_owned().await.map_err(|e| {
                Error::new(Code::Internal, "write semaphore closed").with_source(e)
            })?),
            None => None,
        };
        let inner = self.inner.clone();
        // From here on the upload completes even if this future is dropped: the blocking task
        // owns the temp file and either renames it into place or deletes it.
        blocking(move || {
            let mut file = inner.append(&key, temp, &batch)?;
            file.make_read_only()
                .map_err(|e| io_error(e, "making read-only", file.path(), &key))?;
            inner
                .inject(Fault::Sync)
                .and_then(|()| file.sync())
                .map_err(|e| io_error(e, "syncing", file.path(), &key))?;
            drop(permit);
            inner.commit(key, file, &path, received, reservation)
        })
        .await
    }

    /// Grows `reservation` to cover an upload of `size` bytes, evicting to make room (and
    /// deleting what it evicted on the blocking pool).
    async fn reserve(&self, key: &Key, reservation: &mut Reservation, size: u64) -> Result<()> {
        if self.inner.reserve(key, reservation, size)? {
            let inner = self.inner.clone();
            blocking(move || Ok(inner.delete_dropped())).await?;
        }
        Ok(())
    }

    /// After a read: if the index dropped keys on its own (expiry), delete their files in the
    /// background.
    fn after_read(&self) {
        if !self.inner.dropped.any.load(SeqCst) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && self.inner.dropped.any.swap(false, SeqCst)
        {
            let inner = self.inner.clone();
            drop(runtime.spawn_blocking(move || on_blocking_thread(|| inner.delete_dropped())));
        }
    }
}

#[cfg(not(test))]
#[derive(Clone, Copy)]
enum Fault {
    Sync,
    Write,
    Rename,
}

impl Inner {
    fn open(config: &FilesystemConfig, content: PathBuf, temp: PathBuf) -> Result<Self> {
        let digests = content.join(DIGESTS);
        let names_dir = content.join(NAMES);
        for dir in [&digests, &names_dir, &temp] {
            fs::create_dir_all(dir)
                .context(format_args!("filesystem store: creating {}", dir.display()))?;
        }
        scan::check_same_device(&content, &temp)?;
        let canonical =
            |p: &Path| fs::canonicalize(p).context(format_args!("resolving {}", p.display()));
        let temp_real = canonical(&temp)?;
        for dir in [&digests, &names_dir] {
            if temp_real.starts_with(canonical(dir)?) {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!(
                        "filesystem store: temp_path {} is inside {}, where objects live; \
                         wiping it at startup would delete them",
                        temp.display(),
                        dir.display()
                    ),
                ));
            }
        }
        // One store per directory: a second one would wipe this one's uploads and disagree
        // with its index. The locks are held as long as the store is open.
        let mut locks = vec![scan::lock_dir(&content)?];
        if temp_real != canonical(&content)? {
            locks.push(scan::lock_dir(&temp)?);
        }
        scan::wipe_temp(&temp)?;
        let trash = temp.join(TRASH);
        scan::wipe_trash(&trash)?;
        let found = scan::scan(&content, scan::default_threads(), config.check_digest_sizes)?;
        scan::delete_invalid(&found.invalid)?;

        let open_dir = |p: &Path| File::open(p).context(format_args!("opening {}", p.display()));
        let dropped = Arc::new(Dropped::default());
        let index = EvictingMap::new(config.eviction_policy).labelled("filesystem");
        index.subscribe(dropped.clone());
        let inner = Inner {
            digest_dir: open_dir(&digests)?,
            name_dir: open_dir(&names_dir)?,
            content,
            temp,
            _locks: locks,
            index,
            commit: std::array::from_fn(|_| Mutex::new(())),
            dropped,
            trash,
            next_trash: AtomicU64::new(0),
            reserved: Arc::new(Mutex::new(0)),
            listeners: RwLock::new(Vec::new()),
            writes: (config.max_concurrent_writes > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent_writes))),
            read_buffer_size: config.effective_read_buffer_size(),
            block_size: config.effective_block_size(),
            check_digest_sizes: config.check_digest_sizes,
            #[cfg(test)]
            fault: Mutex::new(None),
        };

        // Oldest access first, so the LRU order follows the access times and `max_seconds`
        // sees each file's true age.
        let mut found = found.found;
        found.sort_unstable_by_key(|f| f.used);
        let now = SystemTime::now();
        for f in found {
            let ago = now.duration_since(f.used).unwrap_or_default();
            let accounted = inner.accounted(f.size);
            if inner
                .index
                .insert_used_ago(f.key.clone(), f.size, accounted, ago)
                .is_err()
            {
                // Can never fit under the policy: it would be evicted at once.
                let path = inner.path_of(&f.key)?;
                remove_if_exists(&path).context(format_args!("deleting {}", path.display()))?;
            }
        }
        // Whatever the policy evicted while loading.
        inner.delete_dropped();
        Ok(inner)
    }

    fn path_of(&self, key: &Key) -> Result<PathBuf> {
        let (dir, file) = names::file_name(key)?;
        Ok(self.content.join(dir).join(file))
    }

    /// The size `max_bytes` counts for an object of `size` bytes.
    fn accounted(&self, size: u64) -> u64 {
        size.div_ceil(self.block_size)
            .saturating_mul(self.block_size)
    }

    /// The commit lock of `key`.
    fn lock_key(&self, key: &Key) -> MutexGuard<'_, ()> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        lock(&self.commit[(hash % COMMIT_LOCKS as u64) as usize])
    }

    /// Grows `reservation` to the accounted size of `size` bytes. Refuses with
    /// `ResourceExhausted` when the uploads in progress, this one included, would reach
    /// `max_bytes` on their own; otherwise evicts as much as the stored objects plus the
    /// reservations need to stay below it (by the usual rules: once evicting, down to the
    /// low watermark). True if it evicted anything, whose files the caller must then delete.
    fn reserve(&self, key: &Key, reservation: &mut Reservation, size: u64) -> Result<bool> {
        let bytes = self.accounted(size);
        if bytes <= reservation.bytes {
            return Ok(false);
        }
        let max_bytes = self.index.policy().max_bytes;
        let mut reserved = lock(&self.reserved);
        let wanted = *reserved - reservation.bytes + bytes;
        let mut evicted = false;
        if max_bytes != 0 {
            if wanted >= max_bytes {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "no room for an upload of {bytes} bytes: uploads in progress already \
                         hold {} of max_bytes {max_bytes}; retry later",
                        *reserved - reservation.bytes
                    ),
                )
                .with_key(key.clone()));
            }
            if self.index.total_bytes().saturating_add(wanted) >= max_bytes {
                evicted = !self.index.evict_reserving(wanted).is_empty();
            }
        }
        *reserved = wanted;
        reservation.bytes = bytes;
        Ok(evicted)
    }

    fn check_fits(&self, key: &Key, size: u64) -> Result<()> {
        self.index
            .policy()
            .check_fits(self.accounted(size))
            .map_err(|e| e.with_key(key.clone()))
    }

    #[cfg(test)]
    fn inject(&self, at: Fault) -> io::Result<()> {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match *fault {
            Some((point, kind)) if point == at => {
                *fault = None;
                Err(io::Error::from(kind))
            }
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn inject(&self, _at: Fault) -> io::Result<()> {
        Ok(())
    }

    /// Writes `chunks` to the upload's temp file, creating it first if needed.
    fn append(&self, key: &Key, temp: Option<TempFile>, chunks: &[Bytes]) -> Result<TempFile> {
        let mut file = match temp {
            Some(file) => file,
            None => TempFile::create(&self.temp)
                .map_err(|e| io_error(e, "creating a temp file in", &self.temp, key))?,
        };
        self.inject(Fault::Write)
            .and_then(|()| file.write_all(chunks))
            .map_err(|e| io_error(e, "writing", file.path(), key))?;
        Ok(file)
    }

    /// Renames a complete, synced upload into place and indexes it under the key's commit
    /// lock, turning its reservation into the index entry; then moves away the files of
    /// whatever the insert evicted.
    fn commit(
        &self,
        key: Key,
        file: TempFile,
        path: &Path,
        size: u64,
        mut reservation: Reservation,
    ) -> Result<u64> {
        let accounted = self.accounted(size);
        let failed = {
            let _commit = self.lock_key(&key);
            self.inject(Fault::Rename)
                .and_then(|()| fs::rename(file.path(), path))
                .map_err(|e| io_error(e, "renaming an upload to", path, &key))?;
            file.disarm();
            // The entry replaces the reservation in one step, so the two are never both
            // missing from (nor, for long, both in) the total.
            let inserted = {
                let mut reserved = lock(&self.reserved);
                let inserted = self.index.insert(key.clone(), size, accounted);
                *reserved -= std::mem::take(&mut reservation.bytes);
                inserted
            };
            match inserted {
                Ok(_) => None,
                Err(e) => {
                    // Only refused if it can never fit, which was checked; should it happen,
                    // keep "indexed implies on disk" by dropping both.
                    self.index.remove(&key);
                    let _ = remove_if_exists(path);
                    Some(e)
                }
            }
        };
        self.delete_dropped();
        if let Some(e) = failed {
            return Err(e);
        }
        let dir = if key.digest().is_some() {
            &self.digest_dir
        } else {
            &self.name_dir
        };
        dir.sync_all()
            .map_err(|e| io_error(e, "syncing directory", path.parent().unwrap_or(path), &key))?;
        Ok(size)
    }

    /// Moves the files of the keys the index dropped and no longer holds out of
    /// `content_path` (a rename into the trash, each under its key's commit lock), tells the
    /// listeners, and leaves the unlinks to a background task. Returns how many keys it
    /// handled.
    fn delete_dropped(&self) -> usize {
        self.dropped.any.store(false, SeqCst);
        let keys = std::mem::take(&mut *lock(&self.dropped.keys));
        let mut trash = Vec::new();
        for key in &keys {
            let Ok(path) = self.path_of(key) else {
                continue;
            };
            let _commit = self.lock_key(key);
            // Under the key's commit lock nobody renames a file of it into place, so a key
            // absent from the index now has no newer file that this could move away.
            if self.index.peek(key).is_none() {
                // Best effort: a file that cannot be moved or deleted is unindexed and is
                // replaced by the next upload of its key or re-indexed at startup.
                if let Ok(Some(moved)) = self.move_to_trash(&path) {
                    trash.push(moved);
                }
            }
        }
        Unlink::new(trash).in_background();
        if !keys.is_empty() {
            let listeners = self
                .listeners
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for key in &keys {
                for listener in listeners.iter() {
                    listener.removed(key);
                }
            }
        }
        keys.len()
    }

    /// Renames `path` into the trash (creating it if needed); `None` if there is no such
    /// file. Falls back to deleting it in place if the rename fails otherwise.
    fn move_to_trash(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        let to = self
            .trash
            .join(self.next_trash.fetch_add(1, Relaxed).to_string());
        let moved = match fs::rename(path, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.trash.is_dir() => {
                fs::create_dir_all(&self.trash).and_then(|()| fs::rename(path, &to))
            }
            moved => moved,
        };
        match moved {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(_) => remove_if_exists(path).map(|()| None),
        }
    }

    fn remove(&self, key: &Key) -> bool {
        let present = {
            let _commit = self.lock_key(key);
            self.index.remove(key).is_some()
        };
        self.delete_dropped();
        present
    }

    fn open_for_read(&self, key: Key, path: &Path, range: ByteRange) -> Result<FileStream> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget_if_missing(&key, path);
                return Err(Error::not_found(key));
            }
            Err(e) => return Err(io_error(e, "opening", path, &key)),
        };
        // The open file's own length: the object may have been replaced since the index
        // lookup, and files never change once in place.
        let size = file
            .metadata()
            .map_err(|e| io_error(e, "reading the metadata of", path, &key))?
            .len();
        let span = range.resolve(size).map_err(|e| e.with_key(key.clone()))?;
        // Record the access in the file, so the LRU order survives a restart. Best effort.
        let _ = file.set_times(FileTimes::new().set_accessed(SystemTime::now()));
        let wanted = span.end - span.start;
        let first_len = wanted.min(self.read_buffer_size as u64);
        let first = read_chunk(&file, span.start, first_len as usize)
            .map_err(|e| io_error(e, "reading", path, &key))?;
        if (first.len() as u64) < first_len {
            return Err(Error::new(
                Code::DataLoss,
                "file is shorter than it was a moment ago: changed behind the store's back",
            )
            .with_key(key));
        }
        Ok(FileStream::new(
            key,
            file,
            first,
            span.start + first_len,
            wanted - first_len,
            self.read_buffer_size,
        ))
    }

    /// The index holds `key` but its file is gone (deleted behind the store's back): drop the
    /// entry, so `has` stops reporting it.
    fn forget_if_missing(&self, key: &Key, path: &Path) {
        {
            let _commit = self.lock_key(key);
            if fs::symlink_metadata(path).is_ok() {
                return;
            }
            self.index.remove(key);
        }
        self.delete_dropped();
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An I/O error with what was being done to which path, and the key.
fn io_error(e: io::Error, doing: &str, path: &Path, key: &Key) -> Error {
    Error::from(e)
        .context(format_args!("{doing} {}", path.display()))
        .with_key(key.clone())
}

/// Locks `mutex`, using it as is if poisoned: every update under these locks completes
/// before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Space promised to one upload in progress: its accounted bytes are in `Inner::reserved`
/// until the upload is indexed (the bytes move to the index), fails or is dropped.
struct Reservation {
    reserved: Arc<Mutex<u64>>,
    bytes: u64,
}

impl Reservation {
    fn new(reserved: &Arc<Mutex<u64>>) -> Self {
        Reservation {
            reserved: reserved.clone(),
            bytes: 0,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes != 0 {
            *lock(&self.reserved) -= self.bytes;
        }
    }
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(|| on_blocking_thread(f))
        .await
        .map_err(|e| {
            Error::new(Code::Internal, "a blocking filesystem task failed").with_source(e)
        })?
}

impl Filesystem {
    /// The health check: the directories are there and a file can be created in `temp_path`.
    async fn health(&self) -> HealthStatus {
        let inner = self.inner.clone();
        match blocking(move || Ok(inner.check_dirs())).await {
            Ok(Ok(())) => HealthStatus::Ok,
            Ok(Err(message)) => HealthStatus::failed("Filesystem", message),
            Err(e) => HealthStatus::failed("Filesystem", e.to_string()),
        }
    }
}

impl Inner {
    fn check_dirs(&self) -> std::result::Result<(), String> {
        let content = &self.content;
        for (what, dir) in [
            ("content_path", content.clone()),
            ("content_path/d", content.join(DIGESTS)),
            ("content_path/s", content.join(NAMES)),
            ("temp_path", self.temp.clone()),
        ] {
            match fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(format!("{what} {} is not a directory", dir.display())),
                Err(e) => return Err(format!("{what} {}: {e}", dir.display())),
            }
        }
        // Dropping the temp file deletes it.
        let mut probe = TempFile::create(&self.temp).map_err(|e| {
            format!(
                "cannot create a file in temp_path {}: {e}",
                self.temp.display()
            )
        })?;
        probe
            .write_all(&[Bytes::from_static(b"health")])
            .map_err(|e| format!("cannot write in temp_path {}: {e}", self.temp.display()))
    }
}

impl Store for Filesystem {
    type Reader = FileStream;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        ready(self.sizes(keys, out))
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<FileStream>> + Send {
        self.read(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.write(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Always: every eviction and removal is announced.
    fn reports_all_removals(&self) -> bool {
        true
    }

    /// Stats `content_path`, `d/`, `s/` and `temp_path`, and creates a file in `temp_path`.
    fn check_health(&self) -> impl Future<Output = HealthStatus> + Send {
        self.health()
    }
}

impl fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filesystem")
            .field("content_path", &self.inner.content)
            .field("temp_path", &self.inner.temp)
            .field("index", &self.inner.index)
            .field("block_size", &self.inner.block_size)
            .field("read_buffer_size", &self.inner.read_buffer_size)
            .finish_non_exhaustive()
    }
}
