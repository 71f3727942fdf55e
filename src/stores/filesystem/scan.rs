//! The startup scan: list `d/` and `s/`, stat every file in parallel (never reading its
//! contents), and sort what is valid from what must be deleted.

use std::fs::{self, DirEntry};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Code, Error, Result, ResultExt as _};
use crate::key::Key;

use super::names::{DIGESTS, NAMES, parse_digest_file, unescape_name};

/// A valid object found on disk.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) key: Key,
    pub(crate) size: u64,
    /// Last access (modification time where the filesystem keeps no access time).
    pub(crate) used: SystemTime,
}

/// What the scan found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) found: Vec<Found>,
    /// Files that are not valid objects: bad names, wrong sizes, not regular files.
    pub(crate) invalid: Vec<PathBuf>,
}

/// Lists and stats every entry of `content/d` and `content/s`, using `threads` threads.
/// With `check_sizes`, a digest file whose size is not the digest's is invalid.
pub(crate) fn scan(content: &Path, threads: usize, check_sizes: bool) -> Result<Scan> {
    let (digests, names) = std::thread::scope(|s| {
        let digests = s.spawn(|| list(&content.join(DIGESTS)));
        let names = list(&content.join(NAMES));
        (digests.join().expect("listing does not panic"), names)
    });
    let mut work: Vec<(bool, DirEntry)> = Vec::new();
    work.extend(digests?.into_iter().map(|e| (true, e)));
    work.extend(names?.into_iter().map(|e| (false, e)));

    let threads = threads.clamp(1, 64).min(work.len().max(1));
    let per_thread = work.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Scan>> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(per_thread)
            .map(|part| s.spawn(move || classify_all(part, check_sizes)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("classifying does not panic"))
            .collect()
    });
    let mut all = Scan::default();
    for part in parts {
        let part = part?;
        all.found.extend(part.found);
        all.invalid.extend(part.invalid);
    }
    Ok(all)
}

fn list(dir: &Path) -> Result<Vec<DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .context(format_args!("listing {}", dir.display()))
}

fn classify_all(part: &[(bool, DirEntry)], check_sizes: bool) -> Result<Scan> {
    let mut scan = Scan::default();
    for (is_digest, entry) in part {
        match classify(*is_digest, entry, check_sizes) {
            Ok(Some(found)) => scan.found.push(found),
            Ok(None) => scan.invalid.push(entry.path()),
            // Gone since it was listed: nothing to index, nothing to delete.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::from(e).context(format_args!(
                    "reading the metadata of {}",
                    entry.path().display()
                )));
            }
        }
    }
    Ok(scan)
}

/// `Some` for a valid object, `None` for a file to delete.
fn classify(is_digest: bool, entry: &DirEntry, check_sizes: bool) -> io::Result<Option<Found>> {
    let file_name = entry.file_name();
    let Some(file_name) = file_name.to_str() else {
        return Ok(None);
    };
    let key: Key = if is_digest {
        match parse_digest_file(file_name) {
            Some(d) if !d.is_empty_blob() => d.into(),
            _ => return Ok(None),
        }
    } else {
        match unescape_name(file_name) {
            Some(name) => name.into(),
            None => return Ok(None),
        }
    };
    // `DirEntry::metadata` does not follow symlinks and stats relative to the open directory.
    let meta = entry.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let size = meta.len();
    if let Key::Digest(d) = &key
        && check_sizes
        && d.size() != size
    {
        return Ok(None);
    }
    let used = meta.accessed().or_else(|_| meta.modified())?;
    Ok(Some(Found { key, size, used }))
}

/// Deletes what the scan found invalid (directories with their contents).
pub(crate) fn delete_invalid(paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        let removed = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::from(e).context(format_args!(
                    "deleting {}, which is not a valid object of the store",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Name of the lock file in `content_path` and `temp_path`.
pub(crate) const LOCK_FILE: &str = ".casstack-lock";

/// Takes an exclusive lock on `dir` (a lock file in it). If another store holds it, waits up
/// to a second for it to close (a store of this process being reopened), then fails with
/// `Unavailable`.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .context(format_args!("creating {}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    Code::Unavailable,
                    format!(
                        "filesystem store: {} is in use by another open store (in this \
                         process or another); one directory serves one store at a time",
                        dir.display()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::from(e).context(format_args!("locking {}", path.display())));
            }
        }
    }
}

/// Deletes every file (not directory) directly in `temp`, except the lock file.
pub(crate) fn wipe_temp(temp: &Path) -> Result<usize> {
    let mut deleted = 0;
    for entry in list(temp)? {
        let file_type = entry
            .file_type()
            .context(format_args!("reading {}", entry.path().display()))?;
        if file_type.is_dir() || entry.file_name() == LOCK_FILE {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::from(e).context(format_args!(
                    "wiping {} from temp_path",
                    entry.path().display()
                )));
            }
        }
    }
    Ok(deleted)
}

/// Deletes `trash` (under `temp_path`) with whatever evicted files a previous run left in it.
pub(crate) fn wipe_trash(trash: &Path) -> Result<()> {
    match fs::remove_dir_all(trash) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::from(e).context(format_args!("wiping {}", trash.display())))
        }
        _ => Ok(()),
    }
}

/// The number of threads the scan uses: stat is mostly waiting on the disk when the metadata
/// is not cached, so more threads than cores help.
pub(crate) fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(4, 32)
}

/// `InvalidArgument` unless `a` and `b` are on the same filesystem (device).
pub(crate) fn check_same_device(content: &Path, temp: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .context(format_args!("reading the metadata of {}", p.display()))
    };
    let (content_dev, temp_dev) = (dev(content)?, dev(temp)?);
    if content_dev != temp_dev {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "filesystem store: temp_path {} (device {temp_dev:#x}) and content_path {} \
                 (device {content_dev:#x}) are on different filesystems, so an upload could \
                 not be renamed into place atomically; put both on the same filesystem",
                temp.display(),
                content.display()
            ),
        ));
    }
    Ok(())
}
