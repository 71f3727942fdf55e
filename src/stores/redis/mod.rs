//! `Redis`: blobs in a Redis server (NativeLink's `redis_store`, §5.15), through a
//! deadpool-redis connection pool. Needs the `redis` feature; [`RedisConfig`] is always
//! compiled, so layouts that name it parse in any build.
//!
//! - **Keys.** `key_prefix` + the key: a digest as `{hash}-{size}`, a name as it is
//!   (NativeLink's encoding, so both can share a server). A name spelled like a digest
//!   addresses the same Redis key as that digest. Names ending in `:tmp:` and 32 hex digits
//!   are refused (`InvalidArgument`): that shape is reserved for uploads in progress.
//! - **`has_many`** is one pipelined round trip for the whole batch: `STRLEN` per key, plus
//!   `EXISTS` for name keys (whose values may be empty). The empty blob is always present.
//! - **`get`** checks `EXISTS`/`STRLEN` and reads the first window in one atomic round trip.
//!   A digest key then streams `GETRANGE` windows of `read_chunk_size` ([`RedisStream`]),
//!   each checked against the object's length: an object that vanishes or changes length
//!   mid-read ends the reader with `Aborted`, never with a short object. While the caller
//!   handles one window, the next `read_ahead` (default 4) are already requested, pipelined
//!   on the same connection, so a large object streams at the server's pace; a reader holds
//!   at most `1 + read_ahead` windows. A name key's value
//!   can be replaced by a different one at any time, so the whole requested range is read in
//!   that one atomic round trip: a snapshot, never a mix of two values (action-cache entries
//!   are small).
//! - **`put`** stages the body with pipelined `APPEND`s under a temporary key
//!   (`<final key>:tmp:<random id>`, hash-tagged to the final key's cluster slot) that
//!   expires after `temp_key_ttl_s` without progress; the next batch of chunks is read from
//!   the body while one is in flight. A Lua script then checks the staged length against what
//!   was streamed and `RENAME`s the temporary key onto the final key, applying `key_ttl_s`
//!   (or removing the temporary expiry), atomically. A failed upload deletes its temporary
//!   key; one whose future is dropped deletes it from a spawned task, and if even that cannot
//!   run, the key expires. Objects larger than `max_object_size` (at most Redis' 512 MiB)
//!   are refused before a byte is sent when the size is exact, and as soon as the body passes
//!   the limit otherwise.
//! - **Transient errors** (connection refused or reset, timeouts, other I/O errors) are
//!   `Unavailable`. `has_many` and reads (the first round trip and each window) are retried
//!   with exponential backoff and jitter ([`RetryConfig`]); an upload is not, because its
//!   body cannot be replayed: it fails cleanly and the caller retries it. The pool notices
//!   without a round trip when a connection's socket has closed (the server was killed or
//!   restarted, or closed it) and opens a fresh one instead of lending it, so the store
//!   recovers by itself when the server comes back; only a connection idle for more than
//!   30 s is checked with a `PING` before it is lent. [`Redis::connect`] succeeds while the server is
//!   down; operations fail with `Unavailable` until it is up (sccache#1751).
//! - **Removal notifications.** If the server has `notify-keyspace-events` with `E` (or `K`)
//!   and `x`/`e` (for example `Exe`, or `KEA`), a background task subscribes and reports
//!   every `expired`, `evicted` (and, with `g`, `del`) key under the prefix to
//!   [`subscribe_removals`](crate::Store::subscribe_removals) listeners, so an existence
//!   cache above stays correct after `maxmemory` eviction (NativeLink#2436). The task
//!   resubscribes after a reconnect and stops when the last handle of the store is dropped.
//!   A server restart that loses its data is not reported key by key.
//!
//! Consistency: a reader sees a whole object or an error, never a mix of two values.
//! Concurrent uploads of one key race; the last `RENAME` wins.
//!
//! Layout (TOML):
//! ```toml
//! [redis_store]
//! addresses = ["redis://:password@127.0.0.1:6379/0"]
//! key_prefix = "cas:"
//! read_chunk_size = "64kib"
//! read_ahead = 4
//! key_ttl_s = "7d"
//! retry = { max_retries = 3, delay = 0.1, jitter = 0.5 }
//! ```
//!
//! Failure codes: `NotFound` (absent), `OutOfRange` (range past the end), `InvalidArgument`
//! (body longer or shorter than declared, bad config, reserved name), `ResourceExhausted`
//! (over `max_object_size`, or Redis out of memory), `Unavailable` (server unreachable after
//! retries), `Aborted` (object changed mid-read, or staged bytes lost mid-upload),
//! `PermissionDenied` (authentication), `Internal` (anything else Redis answers).

mod config;
#[cfg(feature = "redis")]
mod conn;
#[cfg(feature = "redis")]
mod keys;
#[cfg(feature = "redis")]
mod notify;
#[cfg(feature = "redis")]
mod stream;

pub use config::{REDIS_MAX_OBJECT_SIZE, RedisConfig, RetryConfig, redact_url};
#[cfg(feature = "redis")]
pub use stream::RedisStream;

#[cfg(feature = "redis")]
mod store;
#[cfg(feature = "redis")]
use store::Inner;
#[cfg(feature = "redis")]
pub use store::Redis;
