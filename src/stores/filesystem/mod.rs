//! `Filesystem`: durable local storage that survives restarts and crashes (NativeLink's
//! `filesystem` store, §5.2, same options).
//!
//! # Layout
//!
//! - `{content_path}/d/{hash}-{size}`: digest keys (64 lower-case hex digits, decimal size).
//! - `{content_path}/s/{escaped name}`: name keys. Letters, digits, `_`, `-` and `.` (not
//!   leading) stay as they are; every other byte is written `%XX`, so a name can never leave
//!   `s/` (`../x` is the file `%2E.%2Fx`); the empty name is the file `%`. A name longer than
//!   255 bytes once escaped cannot be a file name and is refused with `InvalidArgument`.
//!   (NativeLink uses names verbatim.)
//! - `{temp_path}/{pid}-{n}.upload`: uploads in progress. `temp_path` must be on the same
//!   filesystem as `content_path` (checked at startup: a rename across filesystems is not
//!   atomic), and must not be `d/` or `s/`.
//! - `{temp_path}/trash/{n}`: evicted files between their rename out of `content_path` and
//!   their unlink in the background; wiped at startup.
//! - Objects are read-only files (mode 0444, set before the rename, as NativeLink does), so a
//!   hard link to one (an action's input, say) can never be used to change the store.
//! - `.casstack-lock` in both directories: an open store holds an exclusive lock on each, so
//!   a second store (in this process or another) cannot open the same directories and wipe
//!   the first one's uploads. Opening waits up to a second for a closing store to let go,
//!   then fails with `Unavailable`. The kernel releases the locks when a process dies.
//!
//! # Semantics
//!
//! - **put** streams the body into a new temp file (created only once the first bytes arrive),
//!   checks the declared size (and, for a digest, that the size is the digest's), flushes and
//!   fsyncs it (at most `max_concurrent_writes` uploads at once in that step), renames it into
//!   place, indexes it and fsyncs the directory. A body error, a size mismatch, a write error
//!   (`ENOSPC`, `EACCES`, ...) or a future dropped before the body ended deletes the temp file
//!   and changes nothing else. Once the body has ended the upload completes even if its future
//!   is dropped (as NativeLink does since its issue #495). The content is not hashed: wrap the
//!   store in `Verify` to check it.
//! - **get** streams the requested range in `read_buffer_size` chunks from a file opened once
//!   ([`FileStream`]); a read that has started keeps working when its object is evicted or
//!   replaced. It records the access in the file's access time, so the LRU order survives a
//!   restart.
//! - **has** answers from the index (no I/O) with the true object size, and marks the object
//!   used.
//! - The empty blob is always present, never stored, and reads as empty.
//!
//! # Eviction and accounting
//!
//! Per [`EvictionPolicy`](crate::EvictionPolicy). Each object counts as its size rounded up to
//! whole `block_size` blocks (a 1-byte object counts 4096 by default), which approximates the
//! disk space it uses; `has` still reports the true size. Evicting an object renames its file
//! into `temp_path/trash` and tells the removal listeners, after the file has left
//! `content_path`; a background task on tokio's blocking pool unlinks the trash, so neither
//! other uploads nor (mostly) the upload that crossed the watermark wait for a large eviction's
//! unlinks. An object that can never fit (`>= max_bytes` once rounded) is refused with
//! `ResourceExhausted` before its body is read when its exact size is declared.
//!
//! Uploads in progress count too: an upload of declared (`Exact`) size reserves its rounded
//! size before reading its body, one of unknown (`AtMost`) size reserves what it has written so
//! far, batch by batch, and the stored objects plus all reservations stay below `max_bytes`
//! (see [`Filesystem::in_flight_bytes`]). Making room evicts least recently used objects by
//! the usual rules (down to the low watermark); when the reservations alone would reach
//! `max_bytes` the new upload fails with `ResourceExhausted` (nothing is evicted for it).
//! A reservation ends when its upload is indexed (it becomes the object's size), fails, or
//! is dropped. So many concurrent large uploads cannot overrun `max_bytes` on disk, and the
//! newcomer is never evicted by its own insert.
//!
//! # Consistency
//!
//! The index and the disk never disagree in the harmful direction: **if the index holds a key,
//! its file is in place** (unless something outside the store deleted it; a read that finds
//! the file gone drops the key from the index and answers `NotFound`). Two rules keep it:
//! 1. Renaming an upload into place and indexing it happen together under the key's commit
//!    lock (one of 64, chosen by the key's hash).
//! 2. When the index drops a key (eviction, expiry, replacement, removal), the key is queued;
//!    the queue is drained key by key, each under its own commit lock, and a key's file is
//!    moved to the trash only if the index does not hold the key *at that moment*. So a
//!    delayed deletion can never remove a newer upload of the same key (NativeLink issues
//!    #2644, #2715, #2762), and no lock is ever taken twice (NativeLink #2024). Only what is
//!    in the trash is unlinked later, and nothing is ever renamed into the trash but a file
//!    its key no longer owns.
//!
//! The locks are `std::sync::Mutex`es held only on tokio's blocking pool, around one rename
//! and an index insert (or one rename into the trash): short system calls, never an
//! `.await`, and never across a batch of evicted files, so an eviction of a hundred thousand
//! files does not stall the commits of other uploads (peers.md item 22, sccache #629). The
//! fsyncs of the file (before) and of the directory (after) happen outside them. Reads take
//! no lock but the index's shared one.
//!
//! # Startup
//!
//! [`Filesystem::open`] creates the directories, checks the devices, takes the locks, deletes
//! every file in `temp_path` and the trash, then lists `d/` and `s/` and stats every entry on a pool of threads, never
//! reading a file's contents. Valid files are indexed oldest access time first (so the LRU
//! order and `max_seconds` follow the access times; NativeLink gets both backwards); files that
//! are not valid objects (a name that is not a key, a digest file whose length is not the
//! digest's size, the empty blob, a directory or symlink) are deleted. A file of the right
//! length whose bytes are wrong cannot be told apart without reading it: wrap the store in
//! `Verify` to catch it on read. Because every upload is fsynced before its rename, a crash
//! (even a power loss, thanks to the directory fsync) leaves only complete objects in place.
//!
//! # Layout (TOML)
//!
//! ```toml
//! [filesystem]
//! content_path = "~/.cache/casstack/cas"
//! temp_path = "~/.cache/casstack/tmp"
//! eviction_policy = { max_bytes = 10737418240, evict_bytes = 1073741824 }
//! read_buffer_size = 32768
//! block_size = 4096
//! max_concurrent_writes = 0
//! ```
//!
//! # Failure codes
//!
//! `NotFound` (absent), `OutOfRange` (range past the end), `Unavailable` (the directories
//! are open in another store), `InvalidArgument` (body longer or
//! shorter than declared, a size that is not the digest's, a name too long for a file name, a
//! bad config: missing path, unset variable, paths on two filesystems), `ResourceExhausted`
//! (can never fit under the policy, the uploads in progress hold too much of `max_bytes`, or
//! the disk is full), `PermissionDenied` (the process may
//! not write the directories), `DataLoss` (a file changed behind the store's back while being
//! read), `Internal` (other I/O errors).

mod config;
#[cfg(feature = "fs")]
mod names;
#[cfg(feature = "fs")]
mod scan;
#[cfg(feature = "fs")]
mod store;
#[cfg(feature = "fs")]
mod stream;
#[cfg(feature = "fs")]
mod temp;
#[cfg(all(test, feature = "fs"))]
mod tests;

pub use config::FilesystemConfig;
#[cfg(feature = "fs")]
pub use store::Filesystem;
#[cfg(feature = "fs")]
pub use stream::FileStream;
