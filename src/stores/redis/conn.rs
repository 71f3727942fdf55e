//! The connection pool, error mapping (with passwords scrubbed) and the retry loop.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use deadpool_redis::Runtime;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError,
};

/// A pooled connection idle for longer than this is checked with a `PING` before it is lent
/// (a peer or a middlebox may have dropped it without a word); a busier one is lent as it is.
const IDLE_CHECK: Duration = Duration::from_secs(30);

type Pool = managed::Pool<ConnManager>;
type PoolError = managed::PoolError<RedisError>;

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
        let manager = ConnManager {
            info: client.get_connection_info().clone(),
            config: connection_config,
        };
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

    /// A connection from the pool. The pool replaces one whose socket has closed (the server
    /// went away or restarted), so a store recovers by itself once the server is back; see
    /// [`ConnManager`].
    pub(crate) async fn get(&self) -> Result<Object<ConnManager>> {
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

/// A pooled connection: a multiplexed connection whose driver task the pool spawned itself,
/// so it knows without a round trip when the socket has closed.
pub(crate) struct Conn {
    conn: MultiplexedConnection,
    closed: Arc<AtomicBool>,
}

impl Deref for Conn {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }
}

/// Opens and recycles [`Conn`]s.
///
/// deadpool-redis' own manager sends `UNWATCH` + `PING` every time a connection is lent: one
/// extra round trip per operation, which doubled the latency of small ones. This one opens the
/// socket itself and spawns the connection's driver, which ends as soon as the socket reports
/// an error or end of file (the server was killed or restarted); a connection whose driver
/// ended is dropped instead of lent, at the cost of one pass of the scheduler. Only a connection that sat idle for longer
/// than [`IDLE_CHECK`] is checked with a `PING`. The store never leaves per-connection state
/// behind (no `WATCH`, no `SELECT`, no subscriptions on pooled connections), so nothing else
/// needs resetting.
pub(crate) struct ConnManager {
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
}

impl ConnManager {
    async fn open(&self) -> redis::RedisResult<Conn> {
        let redis = self.info.redis_settings();
        let (conn, driver) = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // Small pipelines are latency-bound: never let Nagle hold a request back.
                stream.set_nodelay(true)?;
                let (conn, driver) =
                    MultiplexedConnection::new_with_config(redis, stream, self.config.clone())
                        .await?;
                (conn, futures_util::FutureExt::boxed(driver))
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                let (conn, driver) =
                    MultiplexedConnection::new_with_config(redis, stream, self.config.clone())
                        .await?;
                (conn, futures_util::FutureExt::boxed(driver))
            }
            other => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "unsupported address (TLS is not built in)",
                    format!("{other}"),
                )));
            }
        };
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        // The driver ends when the socket fails or closes, or when the last clone of the
        // connection is dropped: the task never outlives the connection.
        tokio::spawn(async move {
            driver.await;
            flag.store(true, Ordering::Release);
        });
        Ok(Conn { conn, closed })
    }
}

impl managed::Manager for ConnManager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> std::result::Result<Conn, RedisError> {
        self.open().await
    }

    async fn recycle(&self, conn: &mut Conn, metrics: &Metrics) -> RecycleResult<RedisError> {
        // Let the runtime poll for I/O events (first yield) and run the tasks they woke
        // (second yield: a `block_on` future is polled before them), so the driver of a socket
        // that has just been closed (the server was killed a moment ago) sees it and ends
        // before we look. This costs two passes of the scheduler, not a round trip.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        if conn.closed.load(Ordering::Acquire) {
            return Err(RecycleError::message("the connection was closed"));
        }
        if metrics.last_used() > IDLE_CHECK {
            redis::cmd("PING")
                .query_async::<()>(&mut conn.conn)
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
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
