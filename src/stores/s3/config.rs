//! [`S3Config`] and [`S3Credentials`].
//!
//! Compiled whatever the features, so a lean build still parses every layout.

use std::fmt;
#[cfg(feature = "s3")]
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result};
use crate::stores::redis::RetryConfig;

/// The smallest part S3 accepts in a multipart upload (all parts but the last): 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest object a single `PutObject` may write: 5 GiB.
pub const MAX_SINGLE_PUT: u64 = 5 << 30;
/// The largest part S3 accepts: 5 GiB.
pub(crate) const MAX_PART_SIZE: u64 = 5 << 30;
/// The most parts one multipart upload may have.
#[cfg(feature = "s3")]
pub(crate) const MAX_PARTS: u64 = 10_000;
/// The largest object S3 stores: 5 TiB.
#[cfg(feature = "s3")]
pub(crate) const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// Settings of an `S3` store.
///
/// Every field but `bucket` has a default. Sizes take NativeLink's units (`"8mib"`) as well as
/// integers.
///
/// ```
/// use casstack::{S3Config, S3Credentials};
///
/// let config = S3Config {
///     bucket: "build-cache".into(),
///     endpoint: Some("http://127.0.0.1:9000".into()),
///     credentials: S3Credentials::Static {
///         access_key: "AKIDEXAMPLE".into(),
///         secret_key: "wJalrXUtnFEMI".into(),
///         session_token: None,
///     },
///     ..Default::default()
/// };
/// assert_eq!(config.multipart_threshold, 5 << 20);
/// assert!(!format!("{config:?}").contains("wJalrXUtnFEMI"), "Debug hides the secret");
/// ```
///
/// Layout (TOML):
/// ```toml
/// [s3_store]
/// bucket = "build-cache"
/// region = "eu-west-1"
/// key_prefix = "cas/"
/// part_size = "16mib"
/// retry = { max_retries = 6, delay = 0.2, jitter = 0.5 }
/// consider_expired_after_s = "30d"
/// credentials = { profile = "ci" }
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket the objects live in. Required.
    pub bucket: String,
    /// The AWS region (`"eu-west-1"`), or the region name to sign with when `endpoint` is set.
    /// Default: `"us-east-1"`.
    pub region: String,
    /// A custom endpoint (`"http://127.0.0.1:9000"`) for S3-compatible servers (MinIO, Ceph,
    /// moto, ...). Requests then use path-style addressing (`/bucket/key`), and plain `http://`
    /// is allowed. Default: none (AWS's endpoint for `region`, over https).
    pub endpoint: Option<String>,
    /// Put in front of every object key (`"cas/"`). Default: `""`.
    pub key_prefix: String,
    /// An upload of an exactly known size below this is sent as one `PutObject`, buffered so a
    /// retry can replay it; anything else goes through a multipart upload. At most 5 GiB.
    /// Default: 5 MiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub multipart_threshold: u64,
    /// Size of each part of a multipart upload (S3's minimum is 5 MiB). Raised when an
    /// exactly known size would need more than 10,000 parts; an upload whose size is only
    /// bounded doubles it every 800 parts, so it can still reach S3's 5 TiB. Default: 8 MiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub part_size: u64,
    /// How many parts of one upload may be buffered or in flight at once; the memory one
    /// upload holds is at most this times `part_size`. Default: 10.
    pub multipart_max_concurrent_uploads: usize,
    /// How many `HeadObject` requests one `has_many` runs at once. Default: 16.
    pub max_concurrent_heads: usize,
    /// How transient failures (5xx, `SlowDown` and other throttling, timeouts, broken
    /// connections) are retried; other failures (4xx) never are. Each wait is at most 30 s.
    /// Default: [`RetryConfig::default`] (3 retries from 100 ms, jitter 0.5).
    pub retry: RetryConfig,
    /// An object last modified at least this many seconds ago counts as absent in `has`, and
    /// its key is reported to removal listeners (a bucket lifecycle rule deletes it soon).
    /// Default: 0 = never.
    #[serde(deserialize_with = "crate::spec::seconds")]
    pub consider_expired_after_s: u64,
    /// Seconds one request may take before it counts as failed (and is retried); for a
    /// streamed read, the longest wait for the next chunk. Default: 60.
    pub request_timeout: f64,
    /// Where the credentials come from. Default: AWS's default chain.
    pub credentials: S3Credentials,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            key_prefix: String::new(),
            multipart_threshold: MIN_PART_SIZE,
            part_size: 8 << 20,
            multipart_max_concurrent_uploads: 10,
            max_concurrent_heads: 16,
            retry: RetryConfig::default(),
            consider_expired_after_s: 0,
            request_timeout: 60.0,
            credentials: S3Credentials::default(),
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("key_prefix", &self.key_prefix)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field(
                "multipart_max_concurrent_uploads",
                &self.multipart_max_concurrent_uploads,
            )
            .field("max_concurrent_heads", &self.max_concurrent_heads)
            .field("retry", &self.retry)
            .field("consider_expired_after_s", &self.consider_expired_after_s)
            .field("request_timeout", &self.request_timeout)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl S3Config {
    /// A config for `bucket` with every other field at its default.
    ///
    /// ```
    /// let c = casstack::S3Config::new("cas");
    /// assert_eq!(c.region, "us-east-1");
    /// ```
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            ..Default::default()
        }
    }

    /// `InvalidArgument` naming the field if the config cannot work.
    ///
    /// ```
    /// let mut c = casstack::S3Config::new("cas");
    /// assert!(c.validate().is_ok());
    /// c.part_size = 1 << 20;
    /// assert!(c.validate().unwrap_err().message().contains("part_size"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::new(
                Code::InvalidArgument,
                format!("s3 config: {msg}"),
            ))
        };
        if self.bucket.is_empty() {
            return bad("`bucket` is required".into());
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return bad(format!(
                "`endpoint` must start with http:// or https://, got {endpoint:?}"
            ));
        }
        if self.multipart_threshold > MAX_SINGLE_PUT {
            return bad(format!(
                "`multipart_threshold` is {} but one PutObject takes at most 5 GiB",
                self.multipart_threshold
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return bad(format!(
                "`part_size` is {} but S3 parts are 5 MiB to 5 GiB",
                self.part_size
            ));
        }
        if self.multipart_max_concurrent_uploads == 0 {
            return bad("`multipart_max_concurrent_uploads` must be at least 1".into());
        }
        if self.max_concurrent_heads == 0 {
            return bad("`max_concurrent_heads` must be at least 1".into());
        }
        if !(self.request_timeout.is_finite() && self.request_timeout > 0.0) {
            return bad(format!(
                "`request_timeout` must be a positive number of seconds, got {}",
                self.request_timeout
            ));
        }
        let retry = &self.retry;
        if !(retry.delay.is_finite() && (0.0..=3600.0).contains(&retry.delay)) {
            return bad(format!(
                "`retry.delay` must be 0 to 3600 seconds, got {}",
                retry.delay
            ));
        }
        if !(0.0..=1.0).contains(&retry.jitter) {
            return bad(format!(
                "`retry.jitter` must be 0 to 1, got {}",
                retry.jitter
            ));
        }
        Ok(())
    }

    /// `request_timeout` as a `Duration`.
    #[cfg(feature = "s3")]
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }
}

/// Where an `S3` store gets its credentials.
///
/// TOML forms: `credentials = "default"`, `credentials = "environment"`,
/// `credentials = { profile = "ci" }`,
/// `credentials = { static = { access_key = "...", secret_key = "..." } }`.
/// `Debug` never prints the secret key or the session token.
///
/// ```
/// use casstack::S3Credentials;
///
/// let config: casstack::S3Config =
///     toml::from_str("bucket = \"b\"\ncredentials = { profile = \"ci\" }").unwrap();
/// assert_eq!(config.credentials, S3Credentials::Profile("ci".into()));
/// let secret = S3Credentials::Static {
///     access_key: "AKID".into(),
///     secret_key: "hunter2".into(),
///     session_token: Some("tok".into()),
/// };
/// let shown = format!("{secret:?}");
/// assert!(shown.contains("AKID") && !shown.contains("hunter2") && !shown.contains("tok\""));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum S3Credentials {
    /// AWS's default chain: the environment, then the profile file, then the container and
    /// instance metadata services.
    #[default]
    Default,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optionally) `AWS_SESSION_TOKEN`.
    Environment,
    /// A named profile of `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`).
    Profile(String),
    /// Keys written in the config.
    Static {
        /// The access key id.
        access_key: String,
        /// The secret access key. Never printed.
        secret_key: String,
        /// A session token for temporary credentials. Never printed.
        #[serde(default)]
        session_token: Option<String>,
    },
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Credentials::Default => f.write_str("Default"),
            S3Credentials::Environment => f.write_str("Environment"),
            S3Credentials::Profile(name) => f.debug_tuple("Profile").field(name).finish(),
            S3Credentials::Static {
                access_key,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key", access_key)
                .field("secret_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<S3Config, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn toml_fields_and_defaults() {
        let c = parse(
            r#"
            bucket = "b"
            endpoint = "http://127.0.0.1:9000"
            part_size = "16mib"
            consider_expired_after_s = "1d"
            retry = { max_retries = 2 }
            credentials = { static = { access_key = "a", secret_key = "s" } }
            "#,
        )
        .unwrap();
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(c.consider_expired_after_s, 86_400);
        assert_eq!(c.retry.max_retries, 2);
        assert_eq!(c.retry.delay, 0.1, "unset retry fields keep their defaults");
        assert_eq!(c.multipart_threshold, 5 << 20);
        assert!(matches!(c.credentials, S3Credentials::Static { .. }));
        c.validate().unwrap();
        let env: S3Config = parse("bucket = \"b\"\ncredentials = \"environment\"").unwrap();
        assert_eq!(env.credentials, S3Credentials::Environment);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(parse("bucket = \"b\"\ncolour = 1").is_err());
        assert!(parse("bucket = \"b\"\nretry = { tries = 1 }").is_err());
        assert!(
            parse("credentials = { static = { access_key = \"a\", secret_key = \"s\", x = 1 } }")
                .is_err()
        );
        assert!(parse("credentials = \"magic\"").is_err());
        for (config, field) in [
            (S3Config::default(), "bucket"),
            (
                S3Config {
                    endpoint: Some("127.0.0.1:9000".into()),
                    ..S3Config::new("b")
                },
                "endpoint",
            ),
            (
                S3Config {
                    multipart_threshold: 6 << 30,
                    ..S3Config::new("b")
                },
                "multipart_threshold",
            ),
            (
                S3Config {
                    multipart_max_concurrent_uploads: 0,
                    ..S3Config::new("b")
                },
                "multipart_max_concurrent_uploads",
            ),
            (
                S3Config {
                    max_concurrent_heads: 0,
                    ..S3Config::new("b")
                },
                "max_concurrent_heads",
            ),
            (
                S3Config {
                    request_timeout: 0.0,
                    ..S3Config::new("b")
                },
                "request_timeout",
            ),
            (
                S3Config {
                    retry: RetryConfig {
                        delay: -1.0,
                        ..Default::default()
                    },
                    ..S3Config::new("b")
                },
                "retry.delay",
            ),
            (
                S3Config {
                    retry: RetryConfig {
                        jitter: 1.5,
                        ..Default::default()
                    },
                    ..S3Config::new("b")
                },
                "retry.jitter",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = S3Config {
            credentials: S3Credentials::Static {
                access_key: "AKIDPUBLIC".into(),
                secret_key: "very-secret-key".into(),
                session_token: Some("very-secret-token".into()),
            },
            ..S3Config::new("b")
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(shown.contains("AKIDPUBLIC"));
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
