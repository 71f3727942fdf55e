//! Health checks: [`HealthStatus`], what [`Store::check_health`] reports.
//!
//! Every store answers for itself and every wrapper for all its children (NativeLink checks
//! only the stores at the top of a layout, §9 item 16), so one call on the top of a stack
//! reports every failing part, each named by its path in the stack
//! (`FastSlow.slow > Filesystem`).
//!
//! | store | what its check does |
//! |---|---|
//! | any store without its own check (the default) | a round trip of a small fixed blob under its digest: `put`, `has`, `get`, compare (only `has` and `get` while the blob is there and intact) |
//! | `Memory`, `Noop` | nothing can fail: always ok |
//! | `Filesystem` | stats `content_path`, `d/`, `s/` and `temp_path`, and creates (then removes) a file in `temp_path` |
//! | `Redis` | a `PING` (with the store's retries) |
//! | `S3` | a `HEAD` of the bucket (with the store's retries) |
//! | wrappers | check every child; `Compress` and `Dedup` also round-trip through themselves |
//! | `BoxStore`, `Ref` | the store inside |
//!
//! A check has no time limit of its own: a server that must answer quickly wraps it in
//! `tokio::time::timeout` and reports a timeout as a failure.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::key::Digest;
use crate::store::{Store, StoreExt as _};

/// One failing part of a store stack.
///
/// ```
/// let failure = casstack::HealthFailure::new("Filesystem", "temp_path is not a directory");
/// assert_eq!(failure.to_string(), "Filesystem: temp_path is not a directory");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthFailure {
    /// Which store failed: its type or label, behind the path of wrappers above it
    /// (`Verify > FastSlow.slow > Filesystem`).
    pub store: Cow<'static, str>,
    /// What went wrong, in one line.
    pub message: String,
}

impl HealthFailure {
    /// A failure of `store`.
    ///
    /// ```
    /// let failure = casstack::HealthFailure::new("Memory", "out of space");
    /// assert_eq!(failure.store, "Memory");
    /// ```
    pub fn new(store: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        HealthFailure {
            store: store.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for HealthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.store, self.message)
    }
}

/// What a health check found: ok, or the list of parts that failed.
///
/// ```
/// use casstack::{HealthStatus, Memory, Store};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(Memory::default().check_health().await.is_ok());
/// let failed = HealthStatus::failed("S3", "bucket `cas` does not exist");
/// assert_eq!(failed.to_string(), "failed: S3: bucket `cas` does not exist");
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[must_use]
pub enum HealthStatus {
    /// Every part answered as it should.
    #[default]
    Ok,
    /// These parts did not (never empty).
    Failed(Vec<HealthFailure>),
}

impl HealthStatus {
    /// One failing store.
    ///
    /// ```
    /// assert!(!casstack::HealthStatus::failed("Redis", "PING: connection refused").is_ok());
    /// ```
    pub fn failed(store: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        HealthStatus::Failed(vec![HealthFailure::new(store, message)])
    }

    /// True if nothing failed.
    ///
    /// ```
    /// assert!(casstack::HealthStatus::Ok.is_ok());
    /// ```
    pub fn is_ok(&self) -> bool {
        matches!(self, HealthStatus::Ok)
    }

    /// The failures, empty when ok.
    ///
    /// ```
    /// assert!(casstack::HealthStatus::Ok.failures().is_empty());
    /// ```
    pub fn failures(&self) -> &[HealthFailure] {
        match self {
            HealthStatus::Ok => &[],
            HealthStatus::Failed(failures) => failures,
        }
    }

    /// This status as seen from a wrapper: every failing store's name gets `part > ` in
    /// front (`FastSlow.slow > Filesystem`).
    ///
    /// ```
    /// let status = casstack::HealthStatus::failed("Memory", "x").within("Verify");
    /// assert_eq!(status.failures()[0].store, "Verify > Memory");
    /// ```
    pub fn within(self, part: &str) -> Self {
        match self {
            HealthStatus::Ok => HealthStatus::Ok,
            HealthStatus::Failed(failures) => HealthStatus::Failed(
                failures
                    .into_iter()
                    .map(|f| HealthFailure {
                        store: Cow::Owned(format!("{part} > {}", f.store)),
                        message: f.message,
                    })
                    .collect(),
            ),
        }
    }

    /// Both statuses together: ok only if both are.
    ///
    /// ```
    /// use casstack::HealthStatus;
    /// let both = HealthStatus::failed("a", "x").and(HealthStatus::failed("b", "y"));
    /// assert_eq!(both.failures().len(), 2);
    /// assert!(HealthStatus::Ok.and(HealthStatus::Ok).is_ok());
    /// ```
    pub fn and(self, other: HealthStatus) -> Self {
        match (self, other) {
            (HealthStatus::Ok, other) => other,
            (this, HealthStatus::Ok) => this,
            (HealthStatus::Failed(mut a), HealthStatus::Failed(b)) => {
                a.extend(b);
                HealthStatus::Failed(a)
            }
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthStatus::Ok => f.write_str("ok"),
            HealthStatus::Failed(failures) => {
                f.write_str("failed: ")?;
                for (i, failure) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{failure}")?;
                }
                Ok(())
            }
        }
    }
}

/// The blob the default check writes: fixed, so every check writes the same object, and
/// stored under its own digest, so it is right for every store (`Verify` included).
pub(crate) const PROBE: &[u8] = b"casstack health check probe v1\n";

/// The short name of `S` for health reports: its type path without modules or parameters
/// (`FastSlow`, not `casstack::wrappers::fast_slow::FastSlow<casstack::Memory, ..>`).
pub(crate) fn short_type_name<S: ?Sized>() -> &'static str {
    let full = std::any::type_name::<S>();
    let plain = full.split('<').next().unwrap_or(full);
    plain.rsplit("::").next().unwrap_or(plain)
}

/// The default check: put the probe under its digest, then `has` and `get` it back.
///
/// When the probe is already there and reads back intact, nothing is written: a health
/// endpoint polled every few seconds then costs a `has` and a small `get`, not a `put` each
/// time (sccache's check object drew S3 `SlowDown` errors that way, peers.md item 35).
pub(crate) async fn round_trip<S: Store>(store: &S) -> HealthStatus {
    let name = short_type_name::<S>();
    let data = Bytes::from_static(PROBE);
    let digest = Digest::of(PROBE);
    let size = PROBE.len() as u64;
    if let Ok(Some(n)) = store.has(digest).await
        && n == size
        && store.get_bytes(digest).await.is_ok_and(|read| read == data)
    {
        return HealthStatus::Ok;
    }
    // Missing, evicted, unreadable or wrong: write it (again) and check the whole way.
    if let Err(e) = store.put_bytes(digest, data.clone()).await {
        return HealthStatus::failed(name, format!("put of the probe blob failed: {e}"));
    }
    match store.has(digest).await {
        Ok(Some(n)) if n == size => {}
        Ok(found) => {
            return HealthStatus::failed(
                name,
                format!("has of the probe blob found {found:?}, expected Some({size})"),
            );
        }
        Err(e) => return HealthStatus::failed(name, format!("has of the probe blob failed: {e}")),
    }
    match store.get_bytes(digest).await {
        Ok(read) if read == data => HealthStatus::Ok,
        Ok(read) => HealthStatus::failed(
            name,
            format!(
                "get of the probe blob returned {} different bytes",
                read.len()
            ),
        ),
        Err(e) => HealthStatus::failed(name, format!("get of the probe blob failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_modules_and_parameters() {
        assert_eq!(
            short_type_name::<crate::FastSlow<crate::Memory, crate::Noop>>(),
            "FastSlow"
        );
        assert_eq!(short_type_name::<crate::Memory>(), "Memory");
    }
}
