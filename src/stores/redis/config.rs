//! [`RedisConfig`] and [`RetryConfig`]: always compiled, so a layout that names a Redis store
//! parses even in a build without the `redis` feature.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest value Redis stores by default (`proto-max-bulk-len`, 512 MiB): the default and
/// the ceiling of [`RedisConfig::max_object_size`].
pub const REDIS_MAX_OBJECT_SIZE: u64 = 512 << 20;

/// Settings of a [`Redis`](crate::stores::redis) store.
///
/// Field names follow NativeLink's `redis_store`; durations are in milliseconds or seconds as
/// their names say, sizes take integers or strings such as `"64kib"`. `Debug` shows the
/// addresses with their passwords replaced by `***`.
///
/// ```
/// use casstack::RedisConfig;
///
/// let config: RedisConfig = toml::from_str(r#"
///     addresses = ["redis://:hunter2@127.0.0.1:6379/0"]
///     key_prefix = "cas:"
///     read_chunk_size = "256kib"
///     key_ttl_s = "7d"
/// "#).unwrap();
/// assert_eq!(config.read_chunk_size, 256 << 10);
/// assert_eq!(config.key_ttl_s, 7 * 86_400);
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// The server: exactly one `redis://[[user]:password@]host[:port][/db]` (or
    /// `redis+unix:///path/to/socket`) URL. Cluster and sentinel modes are not supported yet.
    /// Default: empty (required).
    pub addresses: Vec<String>,
    /// Prepended to every key, so several stores can share one server. Default: `""`.
    pub key_prefix: String,
    /// How many bytes one `GETRANGE` reads while streaming a `get`. Default: 64 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub read_chunk_size: u64,
    /// How many windows a reader requests ahead of the one its caller is handling, so the
    /// next ones are on their way meanwhile (pipelined on one connection); `0` requests one
    /// window at a time, when the caller asks for it. A reader buffers at most
    /// `1 + read_ahead` windows. Default: 4.
    pub read_ahead: usize,
    /// How many body chunks one `put` sends in one pipeline of `APPEND`s; the next batch is
    /// read from the body while this one is in flight. Default: 10.
    pub max_chunk_uploads_per_update: usize,
    /// How many connections the pool keeps (each one multiplexes many requests). Default: 8.
    pub connection_pool_size: usize,
    /// How long to wait for a new connection (and for a free pooled one). Default: 3000 ms.
    pub connection_timeout_ms: u64,
    /// How long to wait for the answer to one command or pipeline. Default: 10000 ms.
    pub command_timeout_ms: u64,
    /// Expiry of stored objects, in seconds; `0` keeps them until deleted or evicted.
    /// Default: 0.
    #[serde(deserialize_with = "crate::spec::seconds")]
    pub key_ttl_s: u64,
    /// Expiry of the temporary key an upload stages into, renewed with every batch of chunks:
    /// an upload that dies leaves a key that disappears after this long. Default: 600 s.
    #[serde(deserialize_with = "crate::spec::seconds")]
    pub temp_key_ttl_s: u64,
    /// Retries of idempotent operations (`has_many`, reads) on transient errors.
    pub retry: RetryConfig,
    /// The largest object accepted; at most [`REDIS_MAX_OBJECT_SIZE`] (Redis' own limit).
    /// Default: 512 MiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub max_object_size: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addresses: Vec::new(),
            key_prefix: String::new(),
            read_chunk_size: 64 << 10,
            read_ahead: 4,
            max_chunk_uploads_per_update: 10,
            connection_pool_size: 8,
            connection_timeout_ms: 3_000,
            command_timeout_ms: 10_000,
            key_ttl_s: 0,
            temp_key_ttl_s: 600,
            retry: RetryConfig::default(),
            max_object_size: REDIS_MAX_OBJECT_SIZE,
        }
    }
}

impl RedisConfig {
    /// Default settings for one server URL.
    ///
    /// ```
    /// let config = casstack::RedisConfig::new("redis://127.0.0.1:6379");
    /// assert_eq!(config.addresses.len(), 1);
    /// assert_eq!(config.read_chunk_size, 64 << 10);
    /// ```
    pub fn new(address: impl Into<String>) -> Self {
        RedisConfig {
            addresses: vec![address.into()],
            ..RedisConfig::default()
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(|a| redact_url(a)).collect();
        f.debug_struct("RedisConfig")
            .field("addresses", &addresses)
            .field("key_prefix", &self.key_prefix)
            .field("read_chunk_size", &self.read_chunk_size)
            .field("read_ahead", &self.read_ahead)
            .field(
                "max_chunk_uploads_per_update",
                &self.max_chunk_uploads_per_update,
            )
            .field("connection_pool_size", &self.connection_pool_size)
            .field("connection_timeout_ms", &self.connection_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("key_ttl_s", &self.key_ttl_s)
            .field("temp_key_ttl_s", &self.temp_key_ttl_s)
            .field("retry", &self.retry)
            .field("max_object_size", &self.max_object_size)
            .finish()
    }
}

/// Retries with exponential backoff and jitter, as NativeLink's `retry` setting.
///
/// Retry `k` (1, 2, ...) waits `delay × 2^(k−1) × (1 + jitter × (u − ½))` with `u` uniform in
/// `[0, 1)`: so the first retry waits about `delay` (NativeLink's code waits `2 × delay`).
///
/// ```
/// let retry: casstack::RetryConfig = toml::from_str("max_retries = 5\ndelay = 0.05").unwrap();
/// assert_eq!(retry.max_retries, 5);
/// assert_eq!(retry.jitter, 0.5);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts after the first one. Default: 3.
    pub max_retries: u32,
    /// Base delay in seconds. Default: 0.1.
    pub delay: f64,
    /// Relative spread of each delay, `0` (none) to `1` (±50 %). Default: 0.5.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            delay: 0.1,
            jitter: 0.5,
        }
    }
}

impl RetryConfig {
    /// The wait before retry number `attempt` (1 = the first retry), given `unit` uniform in
    /// `[0, 1)`.
    ///
    /// ```
    /// let retry = casstack::RetryConfig { max_retries: 3, delay: 0.1, jitter: 0.0 };
    /// assert_eq!(retry.backoff(1, 0.3).as_millis(), 100);
    /// assert_eq!(retry.backoff(3, 0.3).as_millis(), 400);
    /// ```
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay.max(0.0) * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let spread = 1.0 + self.jitter.clamp(0.0, 1.0) * (unit - 0.5);
        Duration::try_from_secs_f64(base * spread).unwrap_or(Duration::from_secs(3600))
    }
}

/// `url` with the password (if any) replaced by `***`, for logs and errors.
///
/// ```
/// use casstack::stores::redis::redact_url;
/// assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
/// assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
/// assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        // `redis://secret@host` is read as a password-only URL by some clients: hide it too.
        None => "",
    };
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

/// The password of `url`, if it has one (for scrubbing it out of error messages).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn url_secret(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let secret = match userinfo.find(':') {
        Some(colon) => &userinfo[colon + 1..],
        None => userinfo,
    };
    (!secret.is_empty()).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let config = RedisConfig::default();
        assert_eq!(config.read_chunk_size, 65_536);
        assert_eq!(config.read_ahead, 4);
        assert_eq!(config.max_chunk_uploads_per_update, 10);
        assert_eq!(config.connection_timeout_ms, 3_000);
        assert_eq!(config.command_timeout_ms, 10_000);
        assert_eq!(config.max_object_size, 512 << 20);
        assert_eq!(config.retry.max_retries, 3);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<RedisConfig>("adresses = []").unwrap_err();
        assert!(err.to_string().contains("adresses"), "{err}");
        let err = toml::from_str::<RedisConfig>("retry = { tries = 1 }").unwrap_err();
        assert!(err.to_string().contains("tries"), "{err}");
    }

    #[test]
    fn debug_and_redaction_hide_passwords() {
        let config = RedisConfig::new("redis://admin:p%40ss@10.0.0.1:6379/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(
            shown.contains("redis://admin:***@10.0.0.1:6379/2"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://only@h/0"), "redis://:***@h/0");
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(url_secret("redis://a:b@h"), Some("b"));
        assert_eq!(url_secret("redis://a:@h"), None);
        assert_eq!(url_secret("redis://h/0"), None);
    }

    #[test]
    fn backoff_doubles_and_jitters_within_bounds() {
        let retry = RetryConfig {
            max_retries: 5,
            delay: 0.1,
            jitter: 0.5,
        };
        assert_eq!(retry.backoff(2, 0.5), Duration::from_millis(200));
        let low = retry.backoff(1, 0.0);
        let high = retry.backoff(1, 0.999);
        assert!(low >= Duration::from_millis(74) && low <= Duration::from_millis(76));
        assert!(high > Duration::from_millis(124) && high <= Duration::from_millis(125));
        assert!(
            retry.backoff(200, 0.5) > Duration::from_secs(1),
            "no overflow"
        );
    }
}
