//! `S3`: objects in an S3 bucket or an S3-compatible server (NativeLink's `aws` object store,
//! §5.16.1), through rusoto_s3 over rustls.
//!
//! # Objects
//!
//! The object of a key is `{key_prefix}{key}`: a digest key is `{64 hex}-{size}`, a name key
//! is the name itself, as in NativeLink (so a bucket written by one is read by the other; a
//! name equal to a digest's text is that digest's object). Object keys are at most 1024 bytes
//! and not empty; other keys are refused with `InvalidArgument`.
//!
//! # Semantics
//!
//! - **put**: an upload of an exactly known size below `multipart_threshold` is read into one
//!   buffer and sent as one `PutObject`, so every retry replays the same bytes. Anything else
//!   goes through a multipart upload of `part_size` parts, at most
//!   `multipart_max_concurrent_uploads` of them buffered or in flight at once (the memory one
//!   upload holds), each part retried on its own; an `AtMost` upload whose body turns out to
//!   fit in one part is sent as one `PutObject` instead. A body that fails, runs long or ends
//!   short, a part that cannot be uploaded, or a put future dropped midway aborts the upload
//!   (`AbortMultipartUpload`, spawned on the runtime when the future is dropped), so no
//!   object and no incomplete upload is left behind. Replacing an object is atomic (S3's own
//!   guarantee): readers see the old or the new one.
//! - **get**: one `GetObject` with an inclusive `Range: bytes={offset}-{offset + len - 1}`
//!   (NativeLink asks for one byte more), streamed by `S3Stream`, which resumes a broken,
//!   stalled or short response from the byte it stopped at, pinned to the same object version
//!   with `If-Match`. The empty blob reads as empty without a request.
//! - **has_many**: one `HeadObject` per key, at most `max_concurrent_heads` at once; a 404 is
//!   absent. With `consider_expired_after_s`, an object last modified at least that long ago is
//!   absent and its key is sent to removal listeners (a bucket lifecycle rule is expected to
//!   delete it; until then `get` still reads it).
//! - **Retries**: 5xx, `SlowDown` and other throttling, `RequestTimeout`, timeouts, refused or
//!   reset connections and truncated responses are retried with exponential backoff and jitter
//!   ([`RetryConfig`](crate::RetryConfig), shared with `Redis`); other 4xx are never retried. Each request is
//!   bounded by `request_timeout`.
//! - Credentials come from AWS's default chain, the environment, a profile, or the config;
//!   neither `Debug` nor any error prints a secret.
//!
//! # Consistency
//!
//! S3 is strongly consistent for reads after writes (since December 2020): once `put`
//! returns, `has` and `get` see the object. Concurrent puts of one key: the last one to
//! complete wins. `has` costs one request per key (S3 has no bulk existence query).
//!
//! # Layout (TOML)
//!
//! ```toml
//! [s3_store]
//! bucket = "build-cache"
//! region = "eu-west-1"
//! key_prefix = "cas/"
//! multipart_threshold = "5mib"
//! part_size = "8mib"
//! multipart_max_concurrent_uploads = 10
//! retry = { max_retries = 5, delay = 0.1, jitter = 0.5 }
//! consider_expired_after_s = 0
//! credentials = "default"
//! ```
//!
//! For an S3-compatible server, add `endpoint = "http://127.0.0.1:9000"` (path-style
//! addressing, plain http allowed).
//!
//! # Failure codes
//!
//! `NotFound` (absent), `Internal` (the bucket does not exist: `NoSuchBucket` from a `get`,
//! a `put` or the health check; a `has` cannot tell, since S3 answers a `HEAD` of an object
//! in a missing bucket with a bare 404, so it reports the object absent), `OutOfRange` (range
//! past the end),
//! `InvalidArgument` (body longer or shorter than declared, a key S3 cannot take, a bad
//! config, a request S3 refused as malformed), `PermissionDenied` (403, or no usable
//! credentials), `Unavailable` (a transient failure that outlasted its retries: 5xx,
//! throttling, timeouts, broken connections), `Aborted` (the object was replaced while it was
//! read), `ResourceExhausted` (an upload would need more than 10,000 parts), `DataLoss` (the
//! server sent other than what was asked for).

#[cfg(feature = "s3")]
mod client;
mod config;
#[cfg(feature = "s3")]
mod retry;
#[cfg(feature = "s3")]
mod store;
#[cfg(feature = "s3")]
mod stream;

pub use config::{MAX_SINGLE_PUT, MIN_PART_SIZE, S3Config, S3Credentials};
#[cfg(feature = "s3")]
pub use store::S3;
#[cfg(feature = "s3")]
pub use stream::S3Stream;
