//! [`TempFile`]: an upload in progress, deleted unless it was renamed into place; and
//! [`Unlink`]: files to delete away from the async workers.

use std::cell::Cell;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use bytes::Bytes;
use tokio::sync::Notify;

/// Process-wide counter that makes temp file names unique among this process's stores.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Deletions handed to tokio's blocking pool and not yet done (all stores of the process).
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Told when `PENDING` drops to zero.
static IDLE: Notify = Notify::const_new();

thread_local! {
    /// True while this thread runs the store's blocking work ([`on_blocking_thread`]): a
    /// deletion there may block, and handing it to another thread would only add latency.
    static BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as blocking work, where dropping a [`TempFile`] deletes it inline.
pub(crate) fn on_blocking_thread<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            BLOCKING.with(|b| b.set(self.0));
        }
    }
    let _reset = Reset(BLOCKING.with(|b| b.replace(true)));
    f()
}

/// Files to delete (best effort). Dropping it deletes them on the dropping thread, so a
/// batch handed to a blocking task that never runs (the runtime shut down) is still deleted
/// when tokio drops the task: nothing is ever leaked on purpose, and the startup wipe of
/// `temp_path` covers a crash.
#[derive(Debug, Default)]
pub(crate) struct Unlink {
    paths: Vec<PathBuf>,
    counted: bool,
}

impl Unlink {
    pub(crate) fn new(paths: Vec<PathBuf>) -> Self {
        Unlink {
            paths,
            counted: false,
        }
    }

    /// Deletes the files on tokio's blocking pool when a runtime is present (inline
    /// otherwise), even when called from blocking work: a caller that must not pay for the
    /// unlinks (an upload that evicted a hundred thousand files) uses this.
    pub(crate) fn in_background(self) {
        if self.paths.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let mut this = self;
                this.counted = true;
                PENDING.fetch_add(1, SeqCst);
                drop(runtime.spawn_blocking(move || drop(this)));
            }
            Err(_) => drop(self),
        }
    }

    /// Deletes the files now if this thread may block (blocking work, or no runtime), on
    /// tokio's blocking pool otherwise (an async worker must not wait on the disk).
    pub(crate) fn off_async_workers(self) {
        if BLOCKING.with(Cell::get) {
            drop(self);
        } else {
            self.in_background();
        }
    }
}

impl Drop for Unlink {
    fn drop(&mut self) {
        for path in self.paths.drain(..) {
            // Best effort: a file that cannot be deleted goes with the startup wipe.
            let _ = std::fs::remove_file(path);
        }
        if self.counted && PENDING.fetch_sub(1, SeqCst) == 1 {
            IDLE.notify_waiters();
        }
    }
}

/// Waits until every deletion handed to the blocking pool is done (for tests).
#[cfg(test)]
pub(crate) async fn settled() {
    loop {
        let idle = IDLE.notified();
        if PENDING.load(SeqCst) == 0 {
            return;
        }
        idle.await;
    }
}

/// A file under `temp_path` that is deleted when dropped, unless [`TempFile::disarm`] was
/// called after it was renamed into place. Dropping happens on every failure path (a body
/// error, a write error, a dropped `put` future), so no partial upload survives in `temp_path`
/// (the startup wipe covers a crash). Dropped on an async worker (a `put` future dropped
/// between two batches), the unlink runs on tokio's blocking pool; within the store's
/// blocking work ([`on_blocking_thread`]) it runs inline.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates a new, empty temp file in `dir`, named `{pid}-{counter}.upload`.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        let name = format!(
            "{}-{}.upload",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `chunks` in order.
    pub(crate) fn write_all(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        let file = self.file.as_mut().expect("open until disarmed");
        for chunk in chunks {
            file.write_all(chunk)?;
        }
        Ok(())
    }

    /// Flushes the data to stable storage.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("open until disarmed").sync_all()
    }

    /// Makes the file read-only (0444), as objects in `content_path` are: a hard link to an
    /// object (an action's input, say) can then never be used to modify the store.
    pub(crate) fn make_read_only(&self) -> io::Result<()> {
        self.file
            .as_ref()
            .expect("open until disarmed")
            .set_permissions(Permissions::from_mode(0o444))
    }

    /// Closes the file without deleting it: it now lives under another path.
    pub(crate) fn disarm(mut self) {
        self.file = None;
        self.path = PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            Unlink::new(vec![std::mem::take(&mut self.path)]).off_async_workers();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_temp_files_are_deleted_and_disarmed_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TempFile::create(dir.path()).unwrap();
        t.write_all(&[Bytes::from("abc")]).unwrap();
        let path = t.path().to_owned();
        assert!(path.exists());
        drop(t);
        assert!(!path.exists());

        let t = TempFile::create(dir.path()).unwrap();
        let kept = dir.path().join("kept");
        std::fs::rename(t.path(), &kept).unwrap();
        t.disarm();
        assert!(kept.exists());
        let second = TempFile::create(dir.path()).unwrap();
        assert_ne!(second.path(), path, "names are unique");
    }

    #[tokio::test]
    async fn a_temp_file_dropped_on_an_async_worker_is_deleted_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::create(dir.path()).unwrap();
        let path = t.path().to_owned();
        // The worker hands the unlink to the blocking pool; it is done once that ran it.
        drop(t);
        settled().await;
        assert!(!path.exists());

        // Within blocking work it is deleted before drop returns.
        let t = TempFile::create(dir.path()).unwrap();
        let path = t.path().to_owned();
        on_blocking_thread(|| drop(t));
        assert!(!path.exists());
        assert!(!BLOCKING.with(Cell::get), "the mark is reset");
    }

    #[test]
    fn an_unlink_batch_handed_to_a_runtime_that_shuts_down_is_still_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The runtime shuts down right after the hand-off: whether its blocking pool ran the
        // task or tokio dropped it unrun (dropping the batch deletes its files), the file is
        // gone.
        runtime.block_on(async { Unlink::new(vec![path.clone()]).in_background() });
        drop(runtime);
        assert!(!path.exists());
    }
}
