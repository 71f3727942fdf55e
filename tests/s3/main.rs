//! The S3 store against a real S3-compatible server (moto, started by the tests on a free
//! loopback port), with a fault proxy in between for the retry and resume rules.

mod proxy;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use casstack::testing::S3Server;
use casstack::{ByteRange, Code, Digest, Key, S3, S3Config, Store, StoreExt, UploadSize};
use futures_util::StreamExt as _;
use proxy::{Action, Proxy};

const MIB: usize = 1 << 20;

/// One moto per test binary (stopped when the process exits); a fresh bucket per test.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

async fn store() -> S3 {
    server().fresh_store(server().config()).await
}

/// A store whose requests go through a fault proxy; its bucket is created directly.
async fn proxied(tune: impl FnOnce(&mut S3Config)) -> (S3, Proxy) {
    let mut config = server().config();
    tune(&mut config);
    server().fresh_store(config.clone()).await;
    let proxy = Proxy::start(server().endpoint()).await;
    config.endpoint = Some(proxy.endpoint());
    (S3::new(config).unwrap(), proxy)
}

/// Deterministic bytes that differ at every offset of interest.
use casstack::testing::noise as blob;

fn chunked(data: &Bytes, chunk: usize) -> impl casstack::Body {
    let chunks: Vec<casstack::Result<Bytes>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    futures_util::stream::iter(chunks)
}

#[tokio::test]
async fn put_get_has_and_ranges() {
    let store = store().await;
    let data = blob(1000, 1);
    let d = Digest::of(&data);
    assert_eq!(store.has(d).await.unwrap(), None);
    assert_eq!(store.get_bytes(d).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(store.put_bytes(d, data.clone()).await.unwrap(), 1000);
    assert_eq!(store.has(d).await.unwrap(), Some(1000));
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    for (range, want) in [
        (ByteRange::new(10, Some(5)), data.slice(10..15)),
        (ByteRange::from_offset(990), data.slice(990..)),
        (ByteRange::new(995, Some(50)), data.slice(995..)),
        (ByteRange::new(0, Some(1)), data.slice(..1)),
        (ByteRange::from_offset(1000), Bytes::new()),
        (ByteRange::new(1000, Some(3)), Bytes::new()),
        (ByteRange::new(7, Some(0)), Bytes::new()),
    ] {
        assert_eq!(
            store.get_range_bytes(d, range).await.unwrap(),
            want,
            "{range:?}"
        );
    }
    for range in [ByteRange::from_offset(1001), ByteRange::new(1001, Some(0))] {
        let err = store.get_range_bytes(d, range).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{range:?}: {err}");
    }
    let err = store
        .get_range_bytes("missing", ByteRange::new(3, Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Name keys, including an empty value; replacing an object.
    store.put_bytes("ac/one", Bytes::new()).await.unwrap();
    assert_eq!(store.has("ac/one").await.unwrap(), Some(0));
    assert_eq!(store.get_bytes("ac/one").await.unwrap(), "");
    assert_eq!(
        store
            .get_range_bytes("ac/one", ByteRange::new(0, Some(4)))
            .await
            .unwrap(),
        ""
    );
    store.put_bytes("ac/one", "second".into()).await.unwrap();
    assert_eq!(store.get_bytes("ac/one").await.unwrap(), "second");
    // has_many keeps the input order; the empty blob is always there.
    let keys: Vec<Key> = vec![
        "nope".into(),
        d.into(),
        Digest::EMPTY.into(),
        "ac/one".into(),
    ];
    let mut out = vec![None; 4];
    store.has_many(&keys, &mut out).await.unwrap();
    assert_eq!(out, [None, Some(1000), Some(0), Some(6)]);
    let mut short = vec![None; 2];
    let err = store.has_many(&keys, &mut short).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn keys_live_under_the_prefix() {
    let mut config = server().config();
    config.key_prefix = "cas/".into();
    let prefixed = server().fresh_store(config.clone()).await;
    prefixed.put_bytes("k", "v".into()).await.unwrap();
    let bare = S3::new(S3Config {
        key_prefix: String::new(),
        ..config
    })
    .unwrap();
    assert_eq!(bare.get_bytes("cas/k").await.unwrap(), "v");
    assert_eq!(bare.has("k").await.unwrap(), None);
    let long = "x".repeat(1021);
    let err = prefixed
        .put_bytes(long.as_str(), "v".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let bare_empty = bare.put_bytes("", "v".into()).await.unwrap_err();
    assert_eq!(bare_empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn range_headers_are_inclusive_and_the_empty_blob_needs_no_request() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(1000, 2);
    store.put_bytes("k", data.clone()).await.unwrap();
    proxy.clear_log();
    store
        .get_range_bytes("k", ByteRange::new(10, Some(5)))
        .await
        .unwrap();
    store
        .get_range_bytes("k", ByteRange::from_offset(990))
        .await
        .unwrap();
    store.get_bytes("k").await.unwrap();
    let ranges: Vec<Option<String>> = proxy.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(
        ranges,
        [
            Some("bytes=10-14".to_string()),
            Some("bytes=990-".to_string()),
            None
        ]
    );
    proxy.clear_log();
    assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
    assert_eq!(store.has(Digest::EMPTY).await.unwrap(), Some(0));
    store.put_bytes(Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    let err = store
        .put_bytes(Digest::EMPTY, "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn multipart_uploads_and_single_puts_by_size() {
    let (store, proxy) = proxied(|_| {}).await;
    // Exact size at the threshold: multipart, 5 MiB + 5 MiB + the rest.
    let big = blob(12 * MIB + 123, 3);
    let n = store
        .put(
            "big".into(),
            UploadSize::Exact(big.len() as u64),
            chunked(&big, 300_000),
        )
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    assert_eq!(proxy.count("PUT", "partNumber="), 3);
    assert_eq!(proxy.count("POST", "uploads"), 1);
    assert_eq!(store.has("big").await.unwrap(), Some(big.len() as u64));
    assert_eq!(store.get_bytes("big").await.unwrap(), big);
    let middle = ByteRange::new(5 * MIB as u64 - 10, Some(20));
    assert_eq!(
        store.get_range_bytes("big", middle).await.unwrap(),
        big.slice(5 * MIB - 10..5 * MIB + 10)
    );
    // A bounded size that turns out small: one PutObject, no multipart upload.
    proxy.clear_log();
    let small = blob(70_000, 4);
    store
        .put(
            "small".into(),
            UploadSize::AtMost(1 << 30),
            chunked(&small, 10_000),
        )
        .await
        .unwrap();
    assert_eq!(proxy.count("POST", "uploads"), 0);
    assert_eq!(proxy.count("PUT", "/small"), 1);
    assert_eq!(store.get_bytes("small").await.unwrap(), small);
    // Lies about the size store nothing and leave no upload.
    let err = store
        .put(
            "liar".into(),
            UploadSize::Exact(12 * MIB as u64),
            chunked(&big, MIB),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = store
        .put(
            "liar".into(),
            UploadSize::AtMost(11 * MIB as u64),
            chunked(&big, MIB),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(store.has("liar").await.unwrap(), None);
    assert!(store.incomplete_uploads().await.unwrap().is_empty());
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let (store, proxy) = proxied(|_| {}).await;
    proxy.inject("PUT", "/k", 0, 2, Action::Status(503, "SlowDown"));
    store.put_bytes("k", "value".into()).await.unwrap();
    assert_eq!(proxy.count("PUT", "/k"), 3);
    proxy.inject("GET", "/k", 0, 1, Action::Status(500, "InternalError"));
    proxy.inject("GET", "/k", 0, 1, Action::Status(429, "TooManyRequests"));
    proxy.inject("GET", "/k", 0, 1, Action::Reset);
    proxy.inject("GET", "/k", 0, 1, Action::Status(400, "RequestTimeout"));
    assert_eq!(store.get_bytes("k").await.unwrap(), "value");
    assert_eq!(proxy.count("GET", "/k"), 5);
    // A HEAD error has no body: the status alone decides.
    proxy.inject("HEAD", "/k", 0, 1, Action::Status(502, ""));
    proxy.inject("HEAD", "/k", 0, 1, Action::Status(504, ""));
    assert_eq!(store.has("k").await.unwrap(), Some(5));
    assert_eq!(proxy.count("HEAD", "/k"), 3);
}

#[tokio::test]
async fn a_stalled_request_times_out_and_is_retried() {
    let (store, proxy) = proxied(|c| c.request_timeout = 0.5).await;
    store.put_bytes("k", "value".into()).await.unwrap();
    proxy.inject("HEAD", "/k", 0, 1, Action::Stall);
    let start = std::time::Instant::now();
    assert_eq!(store.has("k").await.unwrap(), Some(5));
    assert!(start.elapsed() >= std::time::Duration::from_millis(500));
    assert_eq!(proxy.count("HEAD", "/k"), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (store, proxy) = proxied(|_| {}).await;
    store.put_bytes("k", "value".into()).await.unwrap();
    proxy.inject("HEAD", "/k", 0, 1, Action::Status(403, "AccessDenied"));
    let err = store.has("k").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(proxy.count("HEAD", "/k"), 1);
    proxy.inject("PUT", "/k", 0, 1, Action::Status(400, "InvalidArgument"));
    let err = store.put_bytes("k", "other".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("HTTP 400 InvalidArgument"), "{err}");
    assert_eq!(
        proxy.count("PUT", "/k"),
        2,
        "the first put and the refused one"
    );
    assert_eq!(store.get_bytes("k").await.unwrap(), "value");
    // A missing bucket is a broken store, not a missing object, and is not retried.
    let gone = S3::new(S3Config {
        bucket: "no-such-bucket".into(),
        ..store.config().clone()
    })
    .unwrap();
    proxy.clear_log();
    let err = gone.put_bytes("k", "v".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.message().contains("NoSuchBucket"), "{err}");
    assert!(err.message().contains("bucket does not exist"), "{err}");
    assert_eq!(proxy.seen().len(), 1);
    for range in [ByteRange::FULL, ByteRange::new(1, Some(2))] {
        let err = gone.get_range_bytes("k", range).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err}");
        assert!(err.message().contains("NoSuchBucket"), "{err}");
    }
    // A HEAD of an object cannot tell (a bare 404): absent.
    assert_eq!(gone.has("k").await.unwrap(), None);
}

#[tokio::test]
async fn health_is_a_head_of_the_bucket() {
    let store = store().await;
    assert_eq!(store.check_health().await, casstack::HealthStatus::Ok);
    // A bucket that does not exist.
    let mut config = server().config();
    config.bucket = "no-such-bucket-for-health".into();
    let status = S3::new(config).unwrap().check_health().await;
    let failure = &status.failures()[0];
    assert_eq!(failure.store, "S3");
    assert!(
        failure
            .message
            .starts_with("HEAD of bucket `no-such-bucket-for-health` failed"),
        "{status}"
    );
    assert!(
        failure.message.contains("bucket does not exist"),
        "{status}"
    );
    // A server that answers every HEAD with 503, through the retries.
    let (store, proxy) = proxied(|c| c.retry.max_retries = 1).await;
    assert!(store.check_health().await.is_ok());
    proxy.inject("HEAD", "/", 0, 10, Action::Status(503, "SlowDown"));
    let status = store.check_health().await;
    assert!(!status.is_ok(), "{status}");
    assert!(status.to_string().contains("HeadBucket"), "{status}");
    // A stopped server: nothing listens at the endpoint.
    let mut config = server().config();
    config.endpoint = Some("http://127.0.0.1:1".into());
    config.retry.max_retries = 0;
    let status = S3::new(config).unwrap().check_health().await;
    assert_eq!(status.failures()[0].store, "S3", "{status}");
}

#[tokio::test]
async fn exhausted_retries_are_unavailable() {
    let (store, proxy) = proxied(|c| c.retry.max_retries = 2).await;
    store.put_bytes("k", "value".into()).await.unwrap();
    proxy.inject("GET", "/k", 0, 10, Action::Status(503, "SlowDown"));
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("3 attempt"), "{err}");
    assert_eq!(proxy.count("GET", "/k"), 3);
    assert_eq!(err.key(), Some(&Key::from("k")));
}

#[tokio::test]
async fn a_multipart_upload_failing_on_part_3_leaves_nothing() {
    for action in [
        Action::Status(400, "InvalidArgument"),
        Action::Status(503, "SlowDown"),
    ] {
        let (store, proxy) = proxied(|c| c.retry.max_retries = 1).await;
        let data = blob(16 * MIB, 5);
        proxy.inject("PUT", "partNumber=3&", 0, 10, action);
        let err = store
            .put(
                "k".into(),
                UploadSize::Exact(data.len() as u64),
                chunked(&data, MIB),
            )
            .await
            .unwrap_err();
        assert!(err.message().contains("part 3"), "{action:?}: {err}");
        assert!(
            !err.message().contains("aborting"),
            "the abort worked: {err}"
        );
        assert_eq!(store.has("k").await.unwrap(), None);
        // One abort, or a few when a transient failure made the store retry it.
        assert!(proxy.count("DELETE", "uploadId=") >= 1, "{action:?}");
        assert!(store.incomplete_uploads().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_failing_body_aborts_the_multipart_upload() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(12 * MIB, 6);
    let mut items: Vec<casstack::Result<Bytes>> = (0..12)
        .map(|i| Ok(data.slice(i * MIB..(i + 1) * MIB)))
        .collect();
    items.push(Err(casstack::Error::new(Code::Aborted, "client went away")));
    let err = store
        .put(
            "k".into(),
            UploadSize::AtMost(1 << 30),
            futures_util::stream::iter(items),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(proxy.count("POST", "uploads"), 1);
    assert!(proxy.count("DELETE", "uploadId=") >= 1);
    assert_eq!(store.has("k").await.unwrap(), None);
    assert!(store.incomplete_uploads().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dropped_put_aborts_its_multipart_upload() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(6 * MIB, 7);
    let stalled = Arc::new(tokio::sync::Notify::new());
    let body = StallAfter {
        chunks: (0..6).map(|i| data.slice(i * MIB..(i + 1) * MIB)).collect(),
        stalled: stalled.clone(),
    };
    let put = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .put("k".into(), UploadSize::AtMost(1 << 30), body)
                .await
        }
    });
    // The body stalls once the first part went out, so the upload exists by then.
    stalled.notified().await;
    put.abort();
    assert!(put.await.unwrap_err().is_cancelled());
    proxy.wait_for("DELETE", "uploadId=", 1).await;
    assert!(store.incomplete_uploads().await.unwrap().is_empty());
    assert_eq!(store.has("k").await.unwrap(), None);
}

/// Yields its chunks, then never ends (and says so once).
struct StallAfter {
    chunks: std::collections::VecDeque<Bytes>,
    stalled: Arc<tokio::sync::Notify>,
}

impl futures_core::Stream for StallAfter {
    type Item = casstack::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.chunks.pop_front() {
            Some(chunk) => std::task::Poll::Ready(Some(Ok(chunk))),
            None => {
                self.stalled.notify_one();
                std::task::Poll::Pending
            }
        }
    }
}

#[tokio::test]
async fn a_cut_stream_resumes_with_exactly_the_right_bytes() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(3 * MIB, 8);
    store.put_bytes("k", data.clone()).await.unwrap();
    proxy.clear_log();
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(MIB + 7));
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(100_000));
    proxy.inject("GET", "/k", 0, 1, Action::Reset);
    assert_eq!(store.get_bytes("k").await.unwrap(), data);
    let ranges: Vec<Option<String>> = proxy.seen().into_iter().map(|s| s.range).collect();
    let resumed = format!("bytes={}-{}", MIB + 7, 3 * MIB - 1);
    let resumed_again = format!("bytes={}-{}", MIB + 7 + 100_000, 3 * MIB - 1);
    assert_eq!(
        ranges,
        [
            None,
            Some(resumed),
            Some(resumed_again.clone()),
            Some(resumed_again)
        ]
    );
    // A ranged read resumes inside its range.
    proxy.clear_log();
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(1000));
    let range = ByteRange::new(100, Some(2 * MIB as u64));
    let got = store.get_range_bytes("k", range).await.unwrap();
    assert_eq!(got, data.slice(100..100 + 2 * MIB));
    let last = proxy.seen().pop().unwrap().range.unwrap();
    assert_eq!(last, format!("bytes=1100-{}", 100 + 2 * MIB - 1));
}

#[tokio::test]
async fn a_stalled_stream_resumes_after_the_timeout() {
    let (store, proxy) = proxied(|c| c.request_timeout = 0.5).await;
    let data = blob(MIB, 9);
    store.put_bytes("k", data.clone()).await.unwrap();
    proxy.inject("GET", "/k", 0, 1, Action::StallBody(300_000));
    assert_eq!(store.get_bytes("k").await.unwrap(), data);
    assert_eq!(proxy.count("GET", "/k"), 2);
}

#[tokio::test]
async fn a_stream_that_keeps_breaking_ends_with_an_error() {
    let (store, proxy) = proxied(|c| c.retry.max_retries = 2).await;
    let data = blob(MIB, 10);
    store.put_bytes("k", data.clone()).await.unwrap();
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(1000));
    proxy.inject("GET", "/k", 0, 10, Action::Status(503, "SlowDown"));
    let mut reader = store.get("k".into(), ByteRange::FULL).await.unwrap();
    let mut got = 0;
    let err = loop {
        match reader.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {got} bytes"),
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(got <= 1000);
    assert_eq!(proxy.count("GET", "/k"), 3, "the first GET and two resumes");
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn an_object_replaced_mid_read_is_aborted_not_mixed() {
    let (store, proxy) = proxied(|_| {}).await;
    let old = blob(2 * MIB, 11);
    store.put_bytes("k", old.clone()).await.unwrap();
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(MIB));
    let mut reader = store.get("k".into(), ByteRange::FULL).await.unwrap();
    let first = reader.next().await.unwrap().unwrap();
    assert_eq!(first, old.slice(..first.len()));
    store.put_bytes("k", blob(2 * MIB, 12)).await.unwrap();
    let mut got = first.len();
    let err = loop {
        match reader.next().await {
            Some(Ok(chunk)) => {
                assert_eq!(chunk, old.slice(got..got + chunk.len()));
                got += chunk.len();
            }
            Some(Err(e)) => break e,
            None => panic!("read {got} bytes of a replaced object without an error"),
        }
    };
    assert_eq!(err.code(), Code::Aborted, "{err}");
}

#[tokio::test]
async fn has_many_bounds_its_concurrency() {
    let (store, proxy) = proxied(|c| c.max_concurrent_heads = 4).await;
    let keys: Vec<Key> = (0..24).map(|i| Key::from(format!("k{i}"))).collect();
    for key in keys.iter().step_by(2) {
        store.put_bytes(key.clone(), "v".into()).await.unwrap();
    }
    let mut out = vec![None; keys.len()];
    store.has_many(&keys, &mut out).await.unwrap();
    let want: Vec<Option<u64>> = (0..24).map(|i| (i % 2 == 0).then_some(1)).collect();
    assert_eq!(out, want);
    let peak = proxy.peak_in_flight("HEAD");
    assert!((2..=4).contains(&peak), "peak concurrent HEADs: {peak}");
}

#[tokio::test]
async fn expired_objects_are_absent_and_reported() {
    let (store, proxy) = proxied(|c| c.consider_expired_after_s = 3600).await;
    store.put_bytes("old", "v".into()).await.unwrap();
    store.put_bytes("new", "v".into()).await.unwrap();
    let removed = Arc::new(Mutex::new(Vec::new()));
    let log = removed.clone();
    store.subscribe_removals(Arc::new(move |k: &Key| log.lock().unwrap().push(k.clone())));
    proxy.inject(
        "HEAD",
        "/old",
        0,
        1,
        Action::LastModified("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let mut out = [None, None];
    store
        .has_many(&["old".into(), "new".into()], &mut out)
        .await
        .unwrap();
    assert_eq!(out, [None, Some(1)]);
    assert_eq!(*removed.lock().unwrap(), vec![Key::from("old")]);
}

#[tokio::test]
async fn errors_and_debug_never_show_the_secret() {
    let mut config = server().config();
    config.credentials = casstack::S3Credentials::Static {
        access_key: "AKIDTEST".into(),
        secret_key: "SECRET-do-not-print".into(),
        session_token: Some("TOKEN-do-not-print".into()),
    };
    config.bucket = "never-created".into();
    let store = S3::new(config).unwrap();
    let err = store.put_bytes("k", "v".into()).await.unwrap_err();
    let get = store.get_bytes("k").await.unwrap_err();
    let shown = format!(
        "{err} {err:#?} {get} {get:#?} {store:?} {:?}",
        store.config()
    );
    assert!(!shown.contains("do-not-print"), "{shown}");
}

#[tokio::test]
async fn layouts_build_s3_stores() {
    let config = server().config();
    server().fresh_store(config.clone()).await;
    let toml = format!(
        "[s3_store]\nbucket = {:?}\nendpoint = {:?}\npart_size = \"5mib\"\n\
         retry = {{ max_retries = 2, delay = 0.01 }}\n\
         credentials = {{ static = {{ access_key = \"a\", secret_key = \"s\" }} }}\n",
        config.bucket,
        server().endpoint()
    );
    let spec = casstack::StoreSpec::from_toml(&toml).unwrap();
    assert_eq!(spec.kind(), "s3_store");
    let boxed = casstack::BoxStore::from_spec(&spec).await.unwrap();
    boxed.put_bytes("via-layout", "v".into()).await.unwrap();
    let typed = <S3 as casstack::FromSpec>::from_spec(&spec).await.unwrap();
    assert_eq!(typed.get_bytes("via-layout").await.unwrap(), "v");
    assert_eq!(typed.config().part_size, 5 << 20);
    let bad = casstack::StoreSpec::from_toml("s3_store = { region = \"us-east-1\" }").unwrap();
    let err = casstack::BoxStore::from_spec(&bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("bucket"), "{err}");
    assert!(casstack::StoreSpec::from_toml("s3_store = { bucket = \"b\", colour = 1 }").is_err());
}

#[tokio::test]
async fn a_lost_completion_answer_is_not_a_failure() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(11 * MIB, 13);
    // CompleteMultipartUpload reaches moto, but its answer is cut: the retry finds the upload
    // gone, and the store checks that the object is there with the right size.
    proxy.inject("POST", "uploadId=", 0, 1, Action::CutBody(0));
    let n = store
        .put(
            "k".into(),
            UploadSize::Exact(data.len() as u64),
            chunked(&data, MIB),
        )
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(proxy.count("POST", "uploadId="), 2);
    assert_eq!(store.get_bytes("k").await.unwrap(), data);
}

#[cfg(feature = "macros")]
#[test]
fn layout_macro_names_the_s3_type() {
    casstack::layout!(type Cas = inline "s3_store = { bucket = \"cas\" }");
    let _: Option<Cas> = None::<S3>;
}

#[tokio::test]
async fn a_range_refused_for_an_object_replaced_since_is_asked_again() {
    let (store, proxy) = proxied(|_| {}).await;
    let data = blob(5000, 14);
    store.put_bytes("k", data.clone()).await.unwrap();
    // As if the GET had seen an older, shorter object: S3 refuses the range, the HEAD then
    // finds it inside the (new) object, and the read asks again.
    proxy.inject("GET", "/k", 0, 1, Action::Status(416, "InvalidRange"));
    let range = ByteRange::new(4000, Some(100));
    let got = store.get_range_bytes("k", range).await.unwrap();
    assert_eq!(got, data.slice(4000..4100));
    assert_eq!(proxy.count("GET", "/k"), 2);
    assert_eq!(proxy.count("HEAD", "/k"), 1);
    proxy.inject("GET", "/k", 0, 3, Action::Status(416, "InvalidRange"));
    let err = store.get_range_bytes("k", range).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn an_existence_cache_above_never_hides_an_expired_object_or_skips_its_upload() {
    use casstack::{EvictionPolicy, ExistenceCache, ExistenceCacheConfig};
    let (s3, proxy) = proxied(|c| c.consider_expired_after_s = 3600).await;
    let store = ExistenceCache::new(s3, ExistenceCacheConfig::default());
    let data = blob(100, 21);
    let d = Digest::of(&data);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(100));
    // From now on S3 says the object is too old: it has expired.
    proxy.inject(
        "HEAD",
        &d.to_string(),
        0,
        100,
        Action::LastModified("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(store.has(d).await.unwrap(), None, "no stale positive");
    // The client uploads it again: the upload reaches S3.
    proxy.clear_log();
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(proxy.count("PUT", &d.to_string()), 1, "{:?}", proxy.seen());
    // With a time-to-live the cache answers for that long, but still never skips an upload.
    let ttl = ExistenceCacheConfig {
        eviction_policy: EvictionPolicy {
            max_seconds: 600,
            ..Default::default()
        },
    };
    let (s3, proxy) = proxied(|_| {}).await;
    let store = ExistenceCache::new(s3, ttl);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(100));
    assert_eq!(
        proxy.count("HEAD", &d.to_string()),
        0,
        "answered by the cache"
    );
    store.put_bytes(d, data).await.unwrap();
    assert_eq!(proxy.count("PUT", &d.to_string()), 2);
}

#[tokio::test]
async fn a_layout_refuses_an_existence_cache_over_s3_without_a_time_to_live() {
    let config = server().config();
    let s3 = format!(
        "bucket = {:?}, endpoint = {:?}, credentials = {{ static = {{ access_key = \"a\", \
         secret_key = \"s\" }} }}",
        config.bucket,
        server().endpoint()
    );
    let layout = format!("existence_cache.backend.s3_store = {{ {s3} }}");
    let spec = casstack::StoreSpec::from_toml(&layout).unwrap();
    let err = casstack::BoxStore::from_spec(&spec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("existence_cache: the backend (s3_store) does not report every removal")
            && err.message().contains("max_seconds"),
        "{err}"
    );
    let bounded = format!("{layout}\nexistence_cache.eviction_policy.max_seconds = \"10m\"");
    let spec = casstack::StoreSpec::from_toml(&bounded).unwrap();
    casstack::BoxStore::from_spec(&spec).await.unwrap();
}

#[tokio::test]
async fn a_server_ignoring_range_is_data_loss_never_wrong_bytes() {
    let (store, proxy) = proxied(|c| c.retry.max_retries = 1).await;
    let data = blob(1000, 22);
    store.put_bytes("k", data.clone()).await.unwrap();
    // The whole object comes back (200, no Content-Range) for a ranged read.
    proxy.inject("GET", "/k", 0, 1, Action::StripRange);
    let err = store
        .get_range_bytes("k", ByteRange::new(100, Some(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(err.message().contains("Content-Range"), "{err}");
    assert_eq!(err.key(), Some(&Key::from("k")));
    assert_eq!(proxy.count("GET", "/k"), 1, "not retried");
    // Same for a range to the end, and for the request that resumes a broken read.
    proxy.inject("GET", "/k", 0, 1, Action::StripRange);
    let err = store
        .get_range_bytes("k", ByteRange::from_offset(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    proxy.inject("GET", "/k", 0, 1, Action::CutBody(500));
    proxy.inject("GET", "/k", 0, 1, Action::StripRange);
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    // Honoured ranges still read.
    assert_eq!(
        store
            .get_range_bytes("k", ByteRange::new(100, Some(10)))
            .await
            .unwrap(),
        data.slice(100..110)
    );
}
