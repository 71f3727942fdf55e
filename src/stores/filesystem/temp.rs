//! [`TempFile`]: an upload in progress, deleted unless it was renamed into place.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

/// Process-wide counter that makes temp file names unique among this process's stores.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A file under `temp_path` that is deleted when dropped, unless [`TempFile::disarm`] was
/// called after it was renamed into place. Dropping happens on every failure path (a body
/// error, a write error, a dropped `put` future), so no partial upload survives in `temp_path`
/// (the startup wipe covers a crash).
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
            // Best effort: if this fails the startup wipe removes it.
            let _ = std::fs::remove_file(&self.path);
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
}
