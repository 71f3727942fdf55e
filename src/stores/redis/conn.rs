//! The connection pool, error mapping (with passwords scrubbed) and the retry loop.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError};
use deadpool_redis::{Manager, Pool, PoolError, Runtime};

use super::config::{RedisConfig, RetryConfig, redact_url, url_secret};
use crate::error::{Code, Error, Result};

/// Strings that must never appear in an error message: the password, as written in the URL
/// and as decoded.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    pub(crate) fn scrub(&self, text: String) -> String {
        self.0
            .iter()
            .fold(text, |text, secret| text.replace(secret.as_str(), "***"))
    }
}

/// The pool and what is needed to open pub/sub connections and to report errors.
pub(crate) struct Connector {
    pub(crate) pool: Pool,
    pub(crate) client: redis::Client,
    pub(crate) secrets: Secrets,
    pub(crate) retry: RetryConfig,
    pub(crate) connection_timeout: Duration,
}

impl Connector {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self> {
        let url = match config.addresses.as_slice() {
            [url] => url,
            [] => {
                return Err(Error::new(
                    Code::InvalidArgument,
                    "redis: `addresses` needs one server URL",
                ));
            }
            _ => {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!(
                        "redis: `addresses` has {} URLs; only one server (standard mode) is \
                         supported",
                        config.addresses.len()
                    ),
                ));
            }
        };
        let mut secrets = Secrets(url_secret(url).map(str::to_string).into_iter().collect());
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            Error::new(
                Code::InvalidArgument,
                secrets.scrub(format!("redis: bad address {}: {e}", redact_url(url))),
            )
        })?;
        if let Some(password) = client.get_connection_info().redis_settings().password() {
            secrets.0.push(password.to_string());
        }
        // Longest first, so a secret that contains another is replaced whole.
        secrets.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let connection_timeout = Duration::from_millis(config.connection_timeout_ms.max(1));
        let command_timeout = Duration::from_millis(config.command_timeout_ms.max(1));
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connection_timeout))
            .set_response_timeout(Some(command_timeout));
        let manager =
            Manager::new_with_config(client.get_connection_info().clone(), connection_config)
                .map_err(|e| map_error(e, &secrets, "redis: bad address"))?;
        let pool = Pool::builder(manager)
            .max_size(config.connection_pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connection_timeout))
            .create_timeout(Some(connection_timeout))
            .recycle_timeout(Some(command_timeout))
            .build()
            .map_err(|e| {
                Error::new(Code::Internal, format!("redis: cannot build the pool: {e}"))
            })?;
        Ok(Connector {
            pool,
            client,
            secrets,
            retry: config.retry.clone(),
            connection_timeout,
        })
    }

    /// A connection from the pool. The pool checks it with a `PING` and replaces it when the
    /// server went away, so a store recovers by itself once the server is back.
    pub(crate) async fn get(&self) -> Result<deadpool_redis::Connection> {
        self.pool
            .get()
            .await
            .map_err(|e| map_pool_error(e, &self.secrets))
    }

    /// A multiplexed connection that outlives the pool checkout (for long readers): the
    /// pooled object goes back at once, the clone shares its socket.
    pub(crate) async fn shared(&self) -> Result<MultiplexedConnection> {
        let pooled = self.get().await?;
        Ok(MultiplexedConnection::clone(&pooled))
    }

    pub(crate) fn error(&self, e: RedisError, what: &str) -> Error {
        map_error(e, &self.secrets, what)
    }

    /// Runs `op` until it succeeds, fails with something other than `Unavailable`, or runs out
    /// of retries; waits with exponential backoff and jitter in between.
    pub(crate) async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.code() == Code::Unavailable && attempt < self.retry.max_retries => {
                    attempt += 1;
                    tokio::time::sleep(self.retry.backoff(attempt, fastrand::f64())).await;
                }
                done => return done,
            }
        }
    }
}

/// Maps a Redis error onto a [`Code`]: connection trouble and timeouts are `Unavailable`
/// (worth a retry), `OOM` is `ResourceExhausted`, authentication failures are
/// `PermissionDenied`. The message never contains a password.
pub(crate) fn map_error(e: RedisError, secrets: &Secrets, what: &str) -> Error {
    let code = if e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.is_timeout()
    {
        Code::Unavailable
    } else {
        match e.code() {
            Some("OOM") => Code::ResourceExhausted,
            Some("LOADING" | "BUSY" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN") => {
                Code::Unavailable
            }
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => Code::PermissionDenied,
            _ if e.kind() == redis::ErrorKind::AuthenticationFailed => Code::PermissionDenied,
            _ => Code::Internal,
        }
    };
    Error::new(code, secrets.scrub(format!("{what}: {e}")))
}

fn map_pool_error(e: PoolError, secrets: &Secrets) -> Error {
    match e {
        PoolError::Backend(e) => map_error(e, secrets, "redis: connecting"),
        PoolError::Timeout(kind) => Error::new(
            Code::Unavailable,
            format!("redis: no connection in time ({kind:?})"),
        ),
        PoolError::Closed => Error::new(Code::Unavailable, "redis: the pool is closed"),
        other => Error::new(
            Code::Internal,
            secrets.scrub(format!("redis: connection pool: {other}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_secret() {
        let secrets = Secrets(vec!["p%40ss".into(), "p@ss".into()]);
        assert_eq!(
            secrets.scrub("auth p@ss failed for p%40ss".into()),
            "auth *** failed for ***"
        );
    }

    #[test]
    fn io_failures_are_unavailable() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = map_error(refused, &Secrets::default(), "redis: get");
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().starts_with("redis: get: "), "{e}");
    }

    #[test]
    fn bad_configs_are_invalid_arguments_without_secrets() {
        let none = Connector::new(&RedisConfig::default()).err().unwrap();
        assert_eq!(none.code(), Code::InvalidArgument);
        let two = RedisConfig {
            addresses: vec!["redis://a".into(), "redis://b".into()],
            ..RedisConfig::default()
        };
        assert_eq!(
            Connector::new(&two).err().unwrap().code(),
            Code::InvalidArgument
        );
        let bad = RedisConfig::new("redis://:topsecret@[::1");
        let err = Connector::new(&bad).err().unwrap();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }
}
