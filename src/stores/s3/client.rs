//! The small S3 client interface the store is written against; the only file that knows rusoto.
//!
//! Every method is one request (no retries here: the store retries), bounded by the request
//! timeout, with rusoto's errors mapped onto casstack codes. Transient failures (5xx,
//! throttling, timeouts, broken connections, truncated responses) come out as `Unavailable` or
//! `DeadlineExceeded`; everything else as a code that is not retried. Error messages carry the
//! operation, the HTTP status and S3's own error code and message, never a request (so never a
//! signature or a key).
//!
//! Another S3 client can replace rusoto by reimplementing this file with the same methods.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;
use rusoto_core::credential::{
    DefaultCredentialsProvider, EnvironmentProvider, ProfileProvider, StaticProvider,
};
use rusoto_core::request::HttpClient;
use rusoto_core::{ByteStream, Region, RusotoError};
use rusoto_s3::{
    AbortMultipartUploadError, AbortMultipartUploadRequest, CompleteMultipartUploadRequest,
    CompletedMultipartUpload, CompletedPart, CreateBucketError, CreateBucketRequest,
    CreateMultipartUploadRequest, GetObjectError, GetObjectRequest, HeadBucketError,
    HeadBucketRequest, HeadObjectError, HeadObjectRequest, ListMultipartUploadsRequest,
    PutObjectRequest, S3 as _, S3Client, UploadPartRequest,
};

use crate::error::{Code, Error, Result};

use super::config::{S3Config, S3Credentials};

/// What `HeadObject` says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) size: u64,
    pub(crate) last_modified: Option<SystemTime>,
}

/// A `GetObject` response: the body and what the headers say about it.
pub(crate) struct Got {
    /// The bytes of the requested range.
    pub(crate) body: BodyStream,
    /// How many bytes the body will yield (`Content-Length`).
    pub(crate) len: u64,
    /// The object's ETag, to pin follow-up range requests to the same version.
    pub(crate) etag: Option<String>,
}

/// The body of a `GetObject` response.
pub(crate) type BodyStream = ByteStream;

/// An S3 client bound to one bucket.
#[derive(Clone)]
pub(crate) struct Client {
    s3: S3Client,
    bucket: String,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("bucket", &self.bucket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config` (already validated). Makes no request.
    pub(crate) fn new(config: &S3Config) -> Result<Client> {
        let region = match &config.endpoint {
            // rusoto addresses a custom endpoint path-style: `{endpoint}/{bucket}/{key}`.
            Some(endpoint) => Region::Custom {
                name: config.region.clone(),
                endpoint: endpoint.trim_end_matches('/').to_string(),
            },
            None => config.region.parse::<Region>().map_err(|_| {
                Error::new(
                    Code::InvalidArgument,
                    format!(
                        "s3 config: unknown `region` {:?} (set `endpoint` for other servers)",
                        config.region
                    ),
                )
            })?,
        };
        // rusoto's own rustls client accepts only https; local servers speak plain http.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let http = HttpClient::from_connector(connector);
        let client = match &config.credentials {
            S3Credentials::Default => {
                let provider =
                    DefaultCredentialsProvider::new().map_err(|e| credentials_error(&e.message))?;
                rusoto_core::Client::new_with(provider, http)
            }
            S3Credentials::Environment => {
                rusoto_core::Client::new_with(EnvironmentProvider::default(), http)
            }
            S3Credentials::Profile(name) => {
                let provider = ProfileProvider::with_default_credentials(name.as_str())
                    .map_err(|e| credentials_error(&e.message))?;
                rusoto_core::Client::new_with(provider, http)
            }
            S3Credentials::Static {
                access_key,
                secret_key,
                session_token,
            } => {
                let provider = StaticProvider::new(
                    access_key.clone(),
                    secret_key.clone(),
                    session_token.clone(),
                    None,
                );
                rusoto_core::Client::new_with(provider, http)
            }
        };
        Ok(Client {
            s3: S3Client::new_with_client(client, region),
            bucket: config.bucket.clone(),
            timeout: config.timeout(),
        })
    }

    /// The per-request timeout (also the longest wait for the next chunk of a read).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Size and age of `key`; `None` if there is no such object.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<Head>> {
        let request = HeadObjectRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            ..Default::default()
        };
        let out = match self
            .call("HeadObject", self.s3.head_object(request), head_code)
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = match out.content_length {
            Some(n) => u64::try_from(n).map_err(|_| {
                Error::new(
                    Code::Internal,
                    format!("HeadObject: negative Content-Length {n}"),
                )
            })?,
            None => {
                return Err(Error::new(
                    Code::Unavailable,
                    "HeadObject: the response has no Content-Length",
                ));
            }
        };
        let last_modified = out
            .last_modified
            .as_deref()
            .and_then(|text| httpdate::parse_http_date(text).ok());
        Ok(Some(Head {
            size,
            last_modified,
        }))
    }

    /// Bytes `start..=last` of `key` (`last` None = to the end; both None = no Range header),
    /// only if its ETag is still `if_match` when given. `NotFound` if absent, `OutOfRange` if
    /// `start` is at or past the end, `Aborted` if the ETag changed, `DataLoss` if the answer
    /// to a ranged request does not say (in `Content-Range` and `Content-Length`) that it is
    /// exactly the bytes asked for (a server or proxy may ignore `Range` and send the whole
    /// object).
    pub(crate) async fn get(
        &self,
        key: &str,
        start: u64,
        last: Option<u64>,
        if_match: Option<&str>,
    ) -> Result<Got> {
        let range = match (start, last) {
            (0, None) => None,
            (start, None) => Some(format!("bytes={start}-")),
            (start, Some(last)) => Some(format!("bytes={start}-{last}")),
        };
        let ranged = range.is_some();
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            range,
            if_match: if_match.map(str::to_string),
            ..Default::default()
        };
        let out = self
            .call("GetObject", self.s3.get_object(request), get_code)
            .await?;
        let len = out
            .content_length
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                Error::new(
                    Code::Unavailable,
                    "GetObject: the response has no Content-Length",
                )
            })?;
        if ranged {
            check_content_range(out.content_range.as_deref(), start, last, len)?;
        }
        let body = out
            .body
            .unwrap_or_else(|| ByteStream::new(futures_util::stream::empty()));
        Ok(Got {
            body,
            len,
            etag: out.e_tag,
        })
    }

    /// Writes `data` as the whole object `key` in one request.
    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let request = PutObjectRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            content_length: Some(data.len() as i64),
            body: Some(byte_stream(data)),
            ..Default::default()
        };
        self.call("PutObject", self.s3.put_object(request), no_service_code)
            .await
            .map(drop)
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub(crate) async fn create_multipart(&self, key: &str) -> Result<String> {
        let request = CreateMultipartUploadRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            ..Default::default()
        };
        let out = self
            .call(
                "CreateMultipartUpload",
                self.s3.create_multipart_upload(request),
                no_service_code,
            )
            .await?;
        out.upload_id.ok_or_else(|| {
            Error::new(
                Code::Unavailable,
                "CreateMultipartUpload: the response has no UploadId",
            )
        })
    }

    /// Uploads part `number` (from 1) of an upload; returns its ETag.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<String> {
        let request = UploadPartRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            part_number: i64::from(number),
            content_length: Some(data.len() as i64),
            body: Some(byte_stream(data)),
            ..Default::default()
        };
        let out = self
            .call("UploadPart", self.s3.upload_part(request), no_service_code)
            .await?;
        out.e_tag
            .ok_or_else(|| Error::new(Code::Unavailable, "UploadPart: the response has no ETag"))
    }

    /// Completes an upload from its parts' (number, ETag), in order.
    pub(crate) async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        let parts = parts
            .iter()
            .map(|(number, etag)| CompletedPart {
                e_tag: Some(etag.clone()),
                part_number: Some(i64::from(*number)),
            })
            .collect();
        let request = CompleteMultipartUploadRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            multipart_upload: Some(CompletedMultipartUpload { parts: Some(parts) }),
            ..Default::default()
        };
        self.call(
            "CompleteMultipartUpload",
            self.s3.complete_multipart_upload(request),
            no_service_code,
        )
        .await
        .map(drop)
    }

    /// Aborts an upload, dropping its parts. An upload that is already gone is fine.
    pub(crate) async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let request = AbortMultipartUploadRequest {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            ..Default::default()
        };
        match self
            .call(
                "AbortMultipartUpload",
                self.s3.abort_multipart_upload(request),
                abort_code,
            )
            .await
        {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    /// Keys and upload ids of the multipart uploads in progress under `prefix` (first 1000).
    pub(crate) async fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>> {
        let request = ListMultipartUploadsRequest {
            bucket: self.bucket.clone(),
            prefix: Some(prefix.to_string()),
            ..Default::default()
        };
        let out = self
            .call(
                "ListMultipartUploads",
                self.s3.list_multipart_uploads(request),
                no_service_code,
            )
            .await?;
        Ok(out
            .uploads
            .unwrap_or_default()
            .into_iter()
            .map(|u| (u.key.unwrap_or_default(), u.upload_id.unwrap_or_default()))
            .collect())
    }

    /// Creates the bucket (fine if this account already owns it).
    pub(crate) async fn create_bucket(&self) -> Result<()> {
        let request = CreateBucketRequest {
            bucket: self.bucket.clone(),
            ..Default::default()
        };
        match self
            .call(
                "CreateBucket",
                self.s3.create_bucket(request),
                |e| match e {
                    CreateBucketError::BucketAlreadyOwnedByYou(_) => Code::AlreadyExists,
                    CreateBucketError::BucketAlreadyExists(_) => Code::PermissionDenied,
                },
            )
            .await
        {
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            other => other.map(drop),
        }
    }

    /// `HeadBucket`: the bucket exists and these credentials may use it.
    pub(crate) async fn head_bucket(&self) -> Result<()> {
        let request = HeadBucketRequest {
            bucket: self.bucket.clone(),
            ..Default::default()
        };
        self.call("HeadBucket", self.s3.head_bucket(request), |e| match e {
            HeadBucketError::NoSuchBucket(_) => Code::Internal,
        })
        .await
        .map_err(|e| match e.code() {
            // A HEAD has no error body: any 404 means the bucket.
            Code::NotFound | Code::Internal if !e.message().contains(NO_SUCH_BUCKET_HINT) => {
                Error::new(
                    Code::Internal,
                    format!("{}{NO_SUCH_BUCKET_HINT}", e.message()),
                )
            }
            _ => e,
        })
    }

    /// Runs one request under the timeout and maps its error.
    async fn call<T, E: fmt::Display>(
        &self,
        what: &'static str,
        request: impl Future<Output = std::result::Result<T, RusotoError<E>>>,
        service_code: impl FnOnce(&E) -> Code,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(map_error(what, e, service_code)),
            Err(_) => Err(Error::new(
                Code::DeadlineExceeded,
                format!("{what}: no answer within {:?}", self.timeout),
            )),
        }
    }
}

/// A body that yields `data` once, without copying it.
fn byte_stream(data: Bytes) -> ByteStream {
    let len = data.len();
    ByteStream::new_with_size(
        futures_util::stream::once(std::future::ready(Ok(data))),
        len,
    )
}

/// Reads the next chunk of a response body; `Unavailable` if the connection broke.
pub(crate) fn map_body_error(error: io::Error) -> Error {
    Error::new(
        Code::Unavailable,
        format!("GetObject: the response body broke off: {error}"),
    )
}

/// Polls a response body (named so the store's stream type stays free of rusoto).
pub(crate) fn poll_body(
    body: &mut BodyStream,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Option<std::result::Result<Bytes, io::Error>>> {
    std::pin::Pin::new(body).poll_next(cx)
}

/// `DataLoss` unless the answer to a request for bytes `start..=last` (`last` None = to the
/// end) is that range: `Content-Range: bytes {start}-{end}/{total}` with `end` the last byte
/// asked for or, past the end of the object, its last byte; and `len` (`Content-Length`)
/// equal to `end - start + 1`.
fn check_content_range(
    header: Option<&str>,
    start: u64,
    last: Option<u64>,
    len: u64,
) -> Result<()> {
    let wrong = |why: String| {
        Error::new(
            Code::DataLoss,
            format!(
                "GetObject: asked for bytes {start}-{}, {why}",
                last.map_or(String::new(), |l| l.to_string())
            ),
        )
    };
    let Some(header) = header else {
        return Err(wrong(
            "the answer has no Content-Range (the server ignored the Range header)".into(),
        ));
    };
    let parsed = header
        .trim()
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(span, total)| {
            let (first, end) = span.split_once('-')?;
            let total = if total == "*" {
                None
            } else {
                Some(total.parse::<u64>().ok()?)
            };
            Some((first.parse::<u64>().ok()?, end.parse::<u64>().ok()?, total))
        });
    let Some((first, end, total)) = parsed else {
        return Err(wrong(format!("the answer has Content-Range {header:?}")));
    };
    let expected_end = match (last, total) {
        (Some(last), Some(total)) => last.min(total.saturating_sub(1)),
        (Some(last), None) => last,
        (None, Some(total)) => total.saturating_sub(1),
        (None, None) => end,
    };
    if first != start || end != expected_end || end < first {
        return Err(wrong(format!("the answer has Content-Range {header:?}")));
    }
    if len != end - first + 1 {
        return Err(wrong(format!(
            "the answer has Content-Range {header:?} but Content-Length {len}"
        )));
    }
    Ok(())
}

fn head_code(e: &HeadObjectError) -> Code {
    match e {
        HeadObjectError::NoSuchKey(_) => Code::NotFound,
    }
}

fn get_code(e: &GetObjectError) -> Code {
    match e {
        GetObjectError::NoSuchKey(_) => Code::NotFound,
        GetObjectError::InvalidObjectState(_) => Code::InvalidArgument,
    }
}

fn abort_code(e: &AbortMultipartUploadError) -> Code {
    match e {
        AbortMultipartUploadError::NoSuchUpload(_) => Code::NotFound,
    }
}

fn no_service_code<E>(_: &E) -> Code {
    Code::Internal
}

fn credentials_error(message: &str) -> Error {
    Error::new(
        Code::PermissionDenied,
        format!("s3: no usable credentials: {message}"),
    )
}

/// Maps a rusoto error onto a code and a message without request details.
fn map_error<E: fmt::Display>(
    what: &'static str,
    error: RusotoError<E>,
    service_code: impl FnOnce(&E) -> Code,
) -> Error {
    match error {
        RusotoError::Service(e) => Error::new(service_code(&e), format!("{what}: {e}")),
        RusotoError::HttpDispatch(e) => Error::new(Code::Unavailable, format!("{what}: {e}")),
        RusotoError::Credentials(e) => credentials_error(&e.message),
        RusotoError::Validation(m) => Error::new(Code::InvalidArgument, format!("{what}: {m}")),
        // A response cut short parses badly: worth another attempt.
        RusotoError::ParseError(m) => Error::new(
            Code::Unavailable,
            format!("{what}: unreadable response: {m}"),
        ),
        RusotoError::Unknown(response) => {
            http_error(what, response.status.as_u16(), &response.body)
        }
        RusotoError::Blocking => {
            Error::new(Code::Internal, format!("{what}: blocking call failed"))
        }
    }
}

/// Appended to the message of a `NoSuchBucket` error.
const NO_SUCH_BUCKET_HINT: &str =
    " (the store's bucket does not exist: check `bucket`, `endpoint` and `region`)";

/// The code for an S3 error response: throttling, 5xx and request timeouts are transient;
/// other 4xx are not.
pub(crate) fn http_error(what: &str, status: u16, body: &[u8]) -> Error {
    let s3_code = xml_tag(body, "Code");
    let code = match (status, s3_code.as_deref()) {
        (
            _,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestThrottled"
                | "TooManyRequests"
                | "RequestLimitExceeded"
                | "InternalError"
                | "ServiceUnavailable",
            ),
        ) => Code::Unavailable,
        (_, Some("RequestTimeout")) => Code::DeadlineExceeded,
        // Not a missing object: the store itself is broken (a wrong or deleted bucket).
        (_, Some("NoSuchBucket")) => Code::Internal,
        (404, _) => Code::NotFound,
        (401 | 403, _) => Code::PermissionDenied,
        (412 | 409, _) => Code::Aborted,
        (416, _) => Code::OutOfRange,
        (429, _) => Code::Unavailable,
        (501, _) => Code::Unimplemented,
        (500..=599, _) => Code::Unavailable,
        _ => Code::InvalidArgument,
    };
    let mut message = format!("{what}: HTTP {status}");
    if let Some(s3_code) = &s3_code {
        message.push(' ');
        message.push_str(s3_code);
    }
    if let Some(detail) = xml_tag(body, "Message") {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if s3_code.as_deref() == Some("NoSuchBucket") {
        message.push_str(NO_SUCH_BUCKET_HINT);
    }
    Error::new(code, message)
}

/// The text of the first `<tag>...</tag>` of an XML error body, at most 300 characters.
fn xml_tag(body: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..end].chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_map_to_codes() {
        let body = |code: &str| {
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
        };
        let cases = [
            (503, body("SlowDown"), Code::Unavailable),
            (500, body("InternalError"), Code::Unavailable),
            (502, String::new(), Code::Unavailable),
            (429, String::new(), Code::Unavailable),
            (400, body("RequestTimeout"), Code::DeadlineExceeded),
            (400, body("InvalidArgument"), Code::InvalidArgument),
            (403, body("AccessDenied"), Code::PermissionDenied),
            (404, String::new(), Code::NotFound),
            (404, body("NoSuchBucket"), Code::Internal),
            (412, body("PreconditionFailed"), Code::Aborted),
            (416, body("InvalidRange"), Code::OutOfRange),
            (501, body("NotImplemented"), Code::Unimplemented),
        ];
        for (status, body, code) in cases {
            let e = http_error("GetObject", status, body.as_bytes());
            assert_eq!(e.code(), code, "{status} {body}");
            assert!(
                e.message()
                    .starts_with(&format!("GetObject: HTTP {status}"))
            );
        }
        let e = http_error("PutObject", 503, body("SlowDown").as_bytes());
        assert_eq!(e.message(), "PutObject: HTTP 503 SlowDown: m");
    }

    #[test]
    fn content_range_must_be_the_range_asked_for() {
        let ok = [
            (Some("bytes 100-109/1000"), 100, Some(109), 10),
            (Some("bytes 995-999/1000"), 995, Some(1044), 5),
            (Some("bytes 990-999/1000"), 990, None, 10),
            (Some("bytes 5-9/*"), 5, Some(9), 5),
        ];
        for (header, start, last, len) in ok {
            check_content_range(header, start, last, len).unwrap();
        }
        let wrong = [
            (None, 100, Some(109), 1000),
            (Some("bytes 0-999/1000"), 100, Some(109), 1000),
            (Some("bytes 100-199/1000"), 100, Some(109), 100),
            (Some("bytes 100-109/1000"), 100, Some(109), 1000),
            (Some("bytes 100-998/1000"), 100, None, 899),
            (Some("bytes */1000"), 100, None, 900),
            (Some("items 100-109/1000"), 100, Some(109), 10),
        ];
        for (header, start, last, len) in wrong {
            let err = check_content_range(header, start, last, len).unwrap_err();
            assert_eq!(err.code(), Code::DataLoss, "{header:?}");
            assert!(
                err.message().starts_with("GetObject: asked for bytes"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_regions_are_refused_and_custom_endpoints_accepted() {
        let mut config = S3Config::new("b");
        config.region = "mars-north-1".into();
        config.credentials = S3Credentials::Environment;
        let err = Client::new(&config).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("mars-north-1"));
        config.endpoint = Some("http://127.0.0.1:1".into());
        Client::new(&config).unwrap();
    }
}
