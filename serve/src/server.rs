//! The bazel-remote HTTP cache protocol over two casstack stores.
//!
//! | request | answer |
//! |---|---|
//! | `GET /cas/{sha256}`, `GET /ac/{sha256}` | 200 with `Content-Length` and the object streamed; 404 on a miss; a CAS object whose bytes do not hash to its name (corrupted at rest) is cut short of its `Content-Length` and logged at warn level |
//! | `HEAD` of the same | 200 with `Content-Length`, or 404 |
//! | `PUT /cas/{sha256}` | 201 once stored; 400 (nothing stored) if the body's sha256 or length is not the URL's; 411 without `Content-Length` |
//! | `PUT /ac/{sha256}` | 201 once stored; the body is stored as is (not checked) |
//! | a `PUT` whose client sends no body byte for the idle timeout | 408 with `Connection: close`, nothing stored |
//! | any path under an instance prefix, `/{instance}/cas/...`, `/{instance}/ac/...` | the same |
//! | `GET /health` | 200 `ok`, or 503 with every failing part of both stores (their `check_health`, at most 10 s) |
//! | `GET /metrics` | 200 with every metric casstack recorded, in the Prometheus text format |
//! | a hash that is not 64 hex characters, a malformed instance name | 400 |
//! | another path | 404 |
//! | another method | 405 |
//!
//! CAS objects are digest keys (hash + size) in the CAS store, shared by every instance (their
//! content is their name). AC entries are name keys in the AC store: `ac/{hash}` or
//! `{instance}/ac/{hash}`, so instances do not see each other's action results. The AC store
//! also holds the CAS size index ([`SizeIndex`]), because the
//! protocol names a CAS object by its hash alone.
//!
//! A body cut short (the connection closes before `Content-Length` bytes arrived) fails the
//! store's atomic `put`, so nothing is stored (400). So does an upload whose client stalls: no
//! body byte for the idle timeout (`--upload-idle-timeout`, default 60 s) abandons it, logged
//! at warn level, answered 408 with `Connection: close`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use casstack::{
    ByteRange, Code, Digest, Either, Error, Key, Store, StoreExt, UploadSize, Verify, VerifyConfig,
};
use hyper::body::{Body as _, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::body::{IdleFlag, IncomingStream, ReaderBody, ResponseBody};
use crate::cli::DEFAULT_UPLOAD_IDLE_TIMEOUT;
use crate::sizes::SizeIndex;

/// How long `/health` waits for the stores' checks.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest instance prefix accepted, in bytes.
const MAX_INSTANCE_LEN: usize = 200;

/// Which of the two stores a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cas,
    Ac,
}

/// A parsed request path.
#[derive(Debug)]
struct Route<'a> {
    instance: &'a str,
    kind: Kind,
    hash: [u8; 32],
    hash_hex: String,
}

/// The reader of either store.
pub type AnyReader<C, A> = Either<<Verify<C> as Store>::Reader, <A as Store>::Reader>;

/// The response type of [`Server::handle`].
pub type HttpResponse<C, A> = Response<ResponseBody<AnyReader<C, A>>>;

/// The server's state: the CAS store (behind `Verify`), the AC store and the size index.
#[derive(Debug)]
pub struct Server<C, A> {
    cas: Verify<C>,
    ac: A,
    sizes: SizeIndex<A>,
    /// What `/metrics` renders.
    metrics: Option<PrometheusHandle>,
    /// How long an upload may go without a body byte.
    upload_idle: Duration,
}

impl<C: Store, A: Store> Server<C, A> {
    /// Serves CAS objects from `cas` (uploads are checked against their hash) and AC entries
    /// from `ac`. Needs a Tokio runtime (the size index follows the CAS store's removals).
    pub fn new(cas: C, ac: A) -> Self {
        // Reads are checked too: a corrupt copy (a flipped bit on disk) is cut short, never
        // served whole (bb-storage checks every read; bazel-remote, peers #9, does not).
        let cas = Verify::new(
            cas,
            VerifyConfig {
                verify_on_get: true,
                ..VerifyConfig::default()
            },
        );
        let sizes = SizeIndex::new(ac.clone());
        sizes.watch(cas.clone());
        Server {
            cas,
            sizes,
            ac,
            metrics: None,
            upload_idle: DEFAULT_UPLOAD_IDLE_TIMEOUT,
        }
    }

    /// Abandons uploads whose client sends no body byte for `idle` (default 60 s).
    pub fn with_upload_idle_timeout(mut self, idle: Duration) -> Self {
        self.upload_idle = idle;
        self
    }

    /// Serves `/metrics` from `handle` (the installed Prometheus recorder).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Answers one request and logs it at debug level.
    pub async fn handle(&self, request: Request<Incoming>) -> HttpResponse<C, A> {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return self.route(request).await.unwrap_or_else(|f| f.response());
        }
        let start = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (response, failure) = match self.route(request).await {
            Ok(response) => (response, None),
            Err(failure) => (failure.response(), Some(failure)),
        };
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let status = response.status().as_u16();
        let elapsed = start.elapsed();
        match failure {
            None => tracing::debug!("{method} {path} {status} {length} {elapsed:.1?}"),
            Some(failure) => {
                tracing::debug!("{method} {path} {status} {length} {elapsed:.1?}: {failure}")
            }
        }
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Result<HttpResponse<C, A>, Failure> {
        let (parts, body) = request.into_parts();
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::PUT) {
            return Err(Failure::MethodNotAllowed);
        }
        match (&parts.method, parts.uri.path()) {
            (&Method::GET | &Method::HEAD, "/health") => return Ok(self.health().await),
            (&Method::GET | &Method::HEAD, "/metrics") => return self.metrics(),
            _ => {}
        }
        let route = parse_path(parts.uri.path())?;
        match (parts.method, route.kind) {
            (Method::PUT, Kind::Cas) => self.put_cas(&route, body).await,
            (Method::PUT, Kind::Ac) => self.put_ac(&route, body).await,
            (method, Kind::Cas) => self.get_cas(&route, method == Method::HEAD).await,
            (method, Kind::Ac) => self.get_ac(&route, method == Method::HEAD).await,
        }
    }

    /// Both stores' health checks: 200 `ok`, or 503 naming what failed.
    async fn health(&self) -> HttpResponse<C, A> {
        let checks = async {
            let cas = self.cas.check_health().await;
            cas.and(self.ac.check_health().await)
        };
        let (status, text) = match tokio::time::timeout(HEALTH_TIMEOUT, checks).await {
            Ok(status) if status.is_ok() => (StatusCode::OK, "ok\n".to_owned()),
            Ok(status) => (StatusCode::SERVICE_UNAVAILABLE, format!("{status}\n")),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failed: the health checks took more than {HEALTH_TIMEOUT:?}\n"),
            ),
        };
        if !status.is_success() {
            tracing::warn!("health check {}", text.trim_end());
        }
        text_response(status, "text/plain; charset=utf-8", text)
    }

    /// Everything recorded, in the Prometheus text format.
    fn metrics(&self) -> Result<HttpResponse<C, A>, Failure> {
        let handle = self.metrics.as_ref().ok_or(Failure::UnknownPath)?;
        Ok(text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ))
    }

    async fn get_cas(&self, route: &Route<'_>, head: bool) -> Result<HttpResponse<C, A>, Failure> {
        let size = if route.hash == *Digest::EMPTY.hash() {
            0
        } else {
            match self.sizes.lookup(&route.hash, &route.hash_hex).await? {
                Some(size) => size,
                None => return Err(Failure::Miss),
            }
        };
        let digest = Digest::new(route.hash, size);
        if head {
            return match self.cas.has(digest).await? {
                Some(size) => Ok(head_response(size)),
                None => {
                    self.sizes.forget(&route.hash);
                    Err(Failure::Miss)
                }
            };
        }
        match self.cas.get(digest.into(), ByteRange::FULL).await {
            Ok(reader) => Ok(object_response(Either::Left(reader), digest.into(), size)),
            Err(e) if e.code() == Code::NotFound => {
                self.sizes.forget(&route.hash);
                Err(Failure::Miss)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get_ac(&self, route: &Route<'_>, head: bool) -> Result<HttpResponse<C, A>, Failure> {
        let key = ac_key(route);
        let Some(size) = self.ac.has(key.clone()).await? else {
            return Err(Failure::Miss);
        };
        if head {
            return Ok(head_response(size));
        }
        match self.ac.get(key.clone(), ByteRange::FULL).await {
            Ok(reader) => Ok(object_response(Either::Right(reader), key, size)),
            Err(e) if e.code() == Code::NotFound => Err(Failure::Miss),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_cas(
        &self,
        route: &Route<'_>,
        body: Incoming,
    ) -> Result<HttpResponse<C, A>, Failure> {
        let Some(size) = body.size_hint().exact() else {
            return Err(Failure::LengthRequired);
        };
        let digest = Digest::new(route.hash, size);
        let (body, idle) = IncomingStream::new(body, self.upload_idle);
        let stored = self
            .cas
            .put(digest.into(), UploadSize::Exact(size), body)
            .await;
        self.check_upload(route, stored, &idle)?;
        if !digest.is_empty_blob() {
            self.sizes
                .record(&route.hash, &route.hash_hex, size)
                .await?;
        }
        Ok(created())
    }

    async fn put_ac(
        &self,
        route: &Route<'_>,
        body: Incoming,
    ) -> Result<HttpResponse<C, A>, Failure> {
        let size = match body.size_hint().exact() {
            Some(n) => UploadSize::Exact(n),
            None => UploadSize::AtMost(u64::MAX),
        };
        let (body, idle) = IncomingStream::new(body, self.upload_idle);
        let stored = self.ac.put(ac_key(route), size, body).await;
        self.check_upload(route, stored, &idle)?;
        Ok(created())
    }

    /// An upload's outcome, telling an abandoned (idle) upload from other failures.
    fn check_upload(
        &self,
        route: &Route<'_>,
        stored: casstack::Result<u64>,
        idle: &IdleFlag,
    ) -> Result<u64, Failure> {
        match stored {
            Ok(size) => Ok(size),
            Err(_) if idle.is_raised() => {
                let kind = match route.kind {
                    Kind::Cas => "cas",
                    Kind::Ac => "ac",
                };
                tracing::warn!(
                    instance = route.instance,
                    "PUT /{kind}/{}: abandoned, the client sent no body bytes for {:?}; nothing stored",
                    route.hash_hex,
                    self.upload_idle
                );
                Err(Failure::UploadIdle(self.upload_idle))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The AC store's key of a route.
fn ac_key(route: &Route<'_>) -> Key {
    if route.instance.is_empty() {
        Key::from(format!("ac/{}", route.hash_hex))
    } else {
        Key::from(format!("{}/ac/{}", route.instance, route.hash_hex))
    }
}

/// Splits `/{instance}/{cas|ac}/{hash}` (the instance is optional and may have slashes).
fn parse_path(path: &str) -> Result<Route<'_>, Failure> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (rest, hash) = path.rsplit_once('/').ok_or(Failure::UnknownPath)?;
    let (instance, kind) = match rest.rsplit_once('/') {
        Some((instance, kind)) => (Some(instance), kind),
        None => (None, rest),
    };
    let kind = match kind {
        "cas" => Kind::Cas,
        "ac" => Kind::Ac,
        _ => return Err(Failure::UnknownPath),
    };
    let digest = Digest::from_hex(hash, 0)
        .map_err(|e| Failure::BadRequest(format!("bad hash in the URL: {}", e.message())))?;
    if let Some(instance) = instance {
        check_instance(instance)?;
    }
    Ok(Route {
        instance: instance.unwrap_or(""),
        kind,
        hash: *digest.hash(),
        hash_hex: digest.hash_hex(),
    })
}

/// An instance name: non-empty `/`-separated segments of ASCII letters, digits, `_`, `-`, `.`
/// (no segment `.` or `..`).
fn check_instance(instance: &str) -> Result<(), Failure> {
    let valid = !instance.is_empty()
        && instance.len() <= MAX_INSTANCE_LEN
        && instance.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if valid {
        Ok(())
    } else {
        Err(Failure::BadRequest(format!(
            "bad instance name {instance:?}: use `/`-separated segments of letters, digits, `_`, `-`, `.` (at most {MAX_INSTANCE_LEN} bytes)"
        )))
    }
}

/// Why a request did not succeed.
#[derive(Debug)]
enum Failure {
    Miss,
    UnknownPath,
    MethodNotAllowed,
    LengthRequired,
    /// The upload's client sent nothing for this long.
    UploadIdle(Duration),
    BadRequest(String),
    Store(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Miss => f.write_str("not found"),
            Failure::UnknownPath => {
                f.write_str("not a cache path: use /cas/{sha256} or /ac/{sha256}, optionally under /{instance}/")
            }
            Failure::MethodNotAllowed => f.write_str("method not allowed: use GET, HEAD or PUT"),
            Failure::LengthRequired => {
                f.write_str("a CAS upload needs a Content-Length (its size is part of its digest)")
            }
            Failure::UploadIdle(idle) => write!(
                f,
                "upload abandoned: no body bytes for {idle:?}; nothing was stored"
            ),
            Failure::BadRequest(message) => f.write_str(message),
            Failure::Store(e) => write!(f, "{e}"),
        }
    }
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Miss | Failure::UnknownPath => StatusCode::NOT_FOUND,
            Failure::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Failure::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Failure::UploadIdle(_) => StatusCode::REQUEST_TIMEOUT,
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Store(e) => match e.code() {
                Code::NotFound => StatusCode::NOT_FOUND,
                // A hash or length mismatch, or a body cut short: the client sent bad data.
                Code::InvalidArgument | Code::Aborted => StatusCode::BAD_REQUEST,
                Code::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
                Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn response<R>(&self) -> Response<ResponseBody<R>> {
        let mut response = Response::new(ResponseBody::text(format!("{self}\n")));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Failure::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
        }
        if matches!(self, Failure::UploadIdle(_)) {
            // The rest of the body may still come: this connection is done.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn text_response<R>(
    status: StatusCode,
    content_type: &'static str,
    text: String,
) -> Response<ResponseBody<R>> {
    let mut response = Response::new(ResponseBody::text(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn object_response<R>(reader: R, key: Key, size: u64) -> Response<ResponseBody<R>> {
    let mut response = Response::new(if size == 0 {
        ResponseBody::empty()
    } else {
        ResponseBody::Object(ReaderBody::new(reader, key, size))
    });
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

fn head_response<R>(size: u64) -> Response<ResponseBody<R>> {
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

fn created<R>() -> Response<ResponseBody<R>> {
    let mut response = Response::new(ResponseBody::Text(None::<Bytes>));
    *response.status_mut() = StatusCode::CREATED;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let h = Digest::of(b"x").hash_hex();
        let path = format!("/cas/{h}");
        let r = parse_path(&path).unwrap();
        assert_eq!((r.instance, r.kind), ("", Kind::Cas));
        let path = format!("/ac/{}", h.to_uppercase());
        let r = parse_path(&path).unwrap();
        assert_eq!(
            (r.instance, r.kind, r.hash_hex.as_str()),
            ("", Kind::Ac, h.as_str())
        );
        let path = format!("/a/b.c/ac/{h}");
        let r = parse_path(&path).unwrap();
        assert_eq!((r.instance, r.kind), ("a/b.c", Kind::Ac));
        assert!(matches!(
            parse_path("/cas/abc"),
            Err(Failure::BadRequest(_))
        ));
        assert!(matches!(
            parse_path(&format!("/x/{h}")),
            Err(Failure::UnknownPath)
        ));
        assert!(matches!(parse_path("/"), Err(Failure::UnknownPath)));
        assert!(matches!(parse_path(""), Err(Failure::UnknownPath)));
        assert!(matches!(
            parse_path(&format!("/../cas/{h}")),
            Err(Failure::BadRequest(_))
        ));
        assert!(matches!(
            parse_path(&format!("//cas/{h}")),
            Err(Failure::BadRequest(_))
        ));
        assert!(matches!(
            parse_path(&format!("/a%2F/cas/{h}")),
            Err(Failure::BadRequest(_))
        ));
    }
}
