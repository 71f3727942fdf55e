//! `Redis` against real `redis-server` processes that the tests start themselves: the
//! conformance checker, the data path, limits, password hygiene, faults (server killed
//! mid-upload, restarted between operations) and removal notifications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use casstack::testing::{Conformance, RedisServer};
use casstack::{
    ByteRange, Code, Digest, Error, Key, Redis, RedisConfig, RetryConfig, Store, StoreExt,
    UploadSize,
};
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;

/// A config for `server` with a fresh prefix and short retries.
fn config(server: &RedisServer, prefix: &str) -> RedisConfig {
    RedisConfig {
        key_prefix: prefix.into(),
        retry: RetryConfig {
            max_retries: 2,
            delay: 0.01,
            jitter: 0.5,
        },
        connection_timeout_ms: 1_000,
        ..RedisConfig::new(server.url())
    }
}

async fn connect(server: &RedisServer, prefix: &str) -> Redis {
    Redis::connect(config(server, prefix)).await.unwrap()
}

fn blob(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn is_int(value: redis::Value, expected: i64) -> bool {
    value == redis::Value::Int(expected)
}

/// Waits (bounded) for the next removal reported to `rx`.
async fn next_removal(rx: &mut mpsc::UnboundedReceiver<Key>) -> Key {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no removal notification within 10 s")
        .expect("listener dropped")
}

fn listener(store: &Redis) -> mpsc::UnboundedReceiver<Key> {
    let (tx, rx) = mpsc::unbounded_channel();
    store.subscribe_removals(Arc::new(move |k: &Key| {
        let _ = tx.send(k.clone());
    }));
    rx
}

#[test]
fn redis_conforms() {
    let server = RedisServer::start();
    let case = AtomicU64::new(0);
    Conformance::new().cases(48).check(|| {
        // A fresh prefix per case, so cases never see each other's data.
        let prefix = format!("case{}:", case.fetch_add(1, Ordering::SeqCst));
        let config = config(&server, &prefix);
        async move { Redis::connect(config).await.unwrap() }
    });
    // Failed and abandoned uploads of every case left no temporary key without an expiry.
    for key in server.keys("*:tmp:*") {
        let key = String::from_utf8(key).unwrap();
        let ttl = server.command(&["PTTL", &key]);
        assert!(
            matches!(ttl, redis::Value::Int(ms) if ms > 0),
            "{key}: {ttl:?}"
        );
    }
}

#[test]
fn redis_with_tiny_windows_and_batches_conforms() {
    // Every object spans many GETRANGE windows and APPEND batches.
    let server = RedisServer::start();
    let case = AtomicU64::new(0);
    Conformance::new().cases(24).check(|| {
        let mut config = config(
            &server,
            &format!("tiny{}:", case.fetch_add(1, Ordering::SeqCst)),
        );
        config.read_chunk_size = 7;
        config.max_chunk_uploads_per_update = 1;
        async move { Redis::connect(config).await.unwrap() }
    });
}

#[tokio::test]
async fn has_many_get_and_put_round_trip() {
    let server = RedisServer::start();
    let store = connect(&server, "p:").await;
    let data = blob(200_000, 1);
    let d = Digest::of(&data);
    let empty_name: Key = "empty".into();
    assert_eq!(store.put_bytes(d, data.clone()).await.unwrap(), 200_000);
    store
        .put_bytes(empty_name.clone(), Bytes::new())
        .await
        .unwrap();
    let keys = [
        Key::from(d),
        Digest::EMPTY.into(),
        Digest::of(b"absent").into(),
        empty_name.clone(),
        "absent".into(),
    ];
    let mut out = [Some(9); 5];
    store.has_many(&keys, &mut out).await.unwrap();
    assert_eq!(out, [Some(200_000), Some(0), None, Some(0), None]);
    // The object is stored under prefix + "{hash}-{size}", readable with a plain GET.
    assert_eq!(store.redis_key(&d.into()).unwrap(), format!("p:{d}"));
    let raw = server.command(&["GET", &format!("p:{d}")]);
    assert_eq!(raw, redis::Value::BulkString(data.to_vec()));
    assert!(
        is_int(server.command(&["PTTL", &format!("p:{d}")]), -1),
        "no expiry"
    );
    // Reads stream in windows and honor ranges.
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next().await {
        chunks.push(chunk.unwrap());
    }
    assert_eq!(chunks.len(), 4, "64 KiB windows");
    assert_eq!(chunks.concat(), data.to_vec());
    for (offset, len) in [
        (0, Some(1)),
        (65_535, Some(2)),
        (70_000, None),
        (200_000, None),
    ] {
        let got = store
            .get_range_bytes(d, ByteRange::new(offset, len))
            .await
            .unwrap();
        let end = len.map_or(200_000, |l| (offset + l).min(200_000)) as usize;
        assert_eq!(got, data.slice(offset as usize..end), "{offset} {len:?}");
    }
    let err = store
        .get_range_bytes(d, ByteRange::from_offset(200_001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(store.get_bytes(empty_name).await.unwrap(), "");
    assert_eq!(store.get_bytes(Digest::EMPTY).await.unwrap(), "");
    let err = store.get_bytes("absent").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.key(), Some(&Key::from("absent")));
    // Nothing but the two objects is left: no temporary keys, the empty blob not stored.
    assert_eq!(server.keys("*").len(), 2);
}

#[tokio::test]
async fn bad_uploads_leave_nothing_behind() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "p:");
    cfg.read_chunk_size = 4;
    cfg.max_chunk_uploads_per_update = 1;
    let store = Redis::connect(cfg).await.unwrap();
    let chunks = || (0..10).map(|i| Ok(blob(5_000, i))).collect::<Vec<_>>();
    // Longer, shorter than declared; a body that fails midway (after batches were sent).
    let long = store.put("k".into(), UploadSize::Exact(10), stream::iter(chunks()));
    assert_eq!(long.await.unwrap_err().code(), Code::InvalidArgument);
    let short = store.put(
        "k".into(),
        UploadSize::Exact(60_000),
        stream::iter(chunks()),
    );
    assert_eq!(short.await.unwrap_err().code(), Code::InvalidArgument);
    let mut failing = chunks();
    failing.push(Err(Error::new(Code::Aborted, "client went away")));
    let err = store
        .put(
            "k".into(),
            UploadSize::AtMost(1 << 20),
            stream::iter(failing),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.key(), Some(&Key::from("k")));
    assert!(server.keys("*").is_empty(), "{:?}", server.keys("*"));
    // The empty blob with a non-empty body is refused; a reserved name is refused.
    let err = store
        .put_bytes(Digest::EMPTY, "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let reserved = format!("a:tmp:{:032x}", 1);
    let err = store
        .put_bytes(reserved.as_str(), "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        store.has(reserved.as_str()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(server.keys("*").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_upload_leaves_no_temp_key_without_expiry() {
    let server = RedisServer::start();
    let store = connect(&server, "p:").await;
    // A body that sends one chunk, then never ends.
    let body = stream::iter(vec![Ok(blob(100_000, 3))]).chain(stream::pending());
    let mut put = Box::pin(store.put("k".into(), UploadSize::AtMost(1 << 20), body));
    // Drive the upload until its first chunk is staged.
    let staged = async {
        loop {
            if let Some(key) = server.keys("*:tmp:*").pop() {
                return String::from_utf8(key).unwrap();
            }
            tokio::task::yield_now().await;
        }
    };
    let temp = tokio::select! {
        done = &mut put => panic!("the upload cannot finish: {done:?}"),
        temp = staged => temp,
    };
    let ttl = server.command(&["PTTL", &temp]);
    assert!(
        matches!(ttl, redis::Value::Int(ms) if ms > 0 && ms <= 600_000),
        "a staged key always expires: {ttl:?}"
    );
    drop(put);
    // The temp key either is gone (the drop guard's DEL ran, possibly between KEYS and PTTL:
    // PTTL then answers -2) or still expires on its own; never -1, a key without expiry.
    for key in server.keys("*") {
        let key = String::from_utf8(key).unwrap();
        assert_eq!(key, temp);
        let ttl = server.command(&["PTTL", &key]);
        assert!(
            matches!(ttl, redis::Value::Int(ms) if ms > 0 || ms == -2),
            "{ttl:?}"
        );
    }
    assert_eq!(store.has("k").await.unwrap(), None);
}

#[tokio::test]
async fn size_limit_refuses_before_sending_or_as_soon_as_passed() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "p:");
    cfg.max_object_size = 1_000;
    let store = Redis::connect(cfg).await.unwrap();
    // Exact size over the limit: refused unread (a body that fails if polled proves it).
    let unread = stream::iter(vec![Err(Error::new(Code::Internal, "body was read"))]);
    let err = store
        .put("big".into(), UploadSize::Exact(1_001), unread)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // AtMost: refused when the body passes the limit, not later.
    let polled = Arc::new(AtomicU64::new(0));
    let count = polled.clone();
    let body = stream::iter(0..100).map(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from(vec![0u8; 600]))
    });
    let err = store
        .put("big".into(), UploadSize::AtMost(1 << 20), body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(polled.load(Ordering::SeqCst), 2);
    assert!(server.keys("*").is_empty());
    store
        .put_bytes("ok", Bytes::from(vec![1; 1_000]))
        .await
        .unwrap();
    // Configs over Redis' own limit are refused.
    let mut over = config(&server, "p:");
    over.max_object_size = (512 << 20) + 1;
    let err = Redis::connect(over).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_key_that_vanishes_mid_read_is_an_error_not_a_short_object() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "p:");
    cfg.read_chunk_size = 1_000;
    let store = Redis::connect(cfg).await.unwrap();
    let data = blob(10_000, 7);
    let d = Digest::of(&data);
    store.put_bytes(d, data.clone()).await.unwrap();
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap(), data.slice(..1_000));
    server.command(&["DEL", &format!("p:{d}")]);
    let err = read_until_error(&mut reader, &data).await;
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.key(), Some(&Key::from(d)));
    assert!(
        reader.next().await.is_none(),
        "the reader ends after the error"
    );
    // Bytes of another length under the same digest (a corrupt writer) are caught too.
    store.put_bytes(d, data.clone()).await.unwrap();
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    reader.next().await.unwrap().unwrap();
    server.command(&["APPEND", &format!("p:{d}"), "x"]);
    assert_eq!(
        read_until_error(&mut reader, &data).await.code(),
        Code::Aborted
    );
}

/// Reads `reader` (whose first 1000 bytes of `data` were taken) until it fails: windows
/// requested ahead before the object changed may still arrive, but only as correct bytes of
/// `data`, and the reader never ends short without an error.
async fn read_until_error(
    reader: &mut casstack::stores::redis::RedisStream,
    data: &Bytes,
) -> Error {
    let mut got = 1_000;
    loop {
        match reader.next().await {
            Some(Ok(chunk)) => {
                assert_eq!(chunk, data.slice(got..got + chunk.len()));
                got += chunk.len();
            }
            Some(Err(e)) => return e,
            None => panic!("the reader ended without an error after {got} bytes"),
        }
    }
}

/// `INFO <section>` as text.
fn info(server: &RedisServer, section: &str) -> String {
    match server.command(&["INFO", section]) {
        redis::Value::BulkString(text) => String::from_utf8(text).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO {section}: {other:?}"),
    }
}

/// How many times the server ran `command` (lower case), from `INFO commandstats`.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info(server, "commandstats")
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn connected_clients(server: &RedisServer) -> u64 {
    info(server, "clients")
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_reader_requests_a_bounded_number_of_windows_ahead_and_drops_them_cleanly() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "p:");
    cfg.read_chunk_size = 1_000;
    cfg.read_ahead = 3;
    let store = Redis::connect(cfg).await.unwrap();
    let data = blob(20_000, 3);
    let d = Digest::of(&data);
    store.put_bytes(d, data.clone()).await.unwrap();
    let before = calls(&server, "getrange");
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap(), data.slice(..1_000));
    // While the caller holds window 0, windows 1 to 3 are requested, and no more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while calls(&server, "getrange") < before + 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window requested ahead"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls(&server, "getrange"), before + 4, "at most 3 ahead");
    // Readers dropped mid-way leave no task and no connection behind, and the shared
    // connection stays in step (the discarded answers are not read by anyone else).
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let clients = connected_clients(&server);
    drop(reader);
    for _ in 0..20 {
        let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
        reader.next().await.unwrap().unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks
    );
    assert_eq!(connected_clients(&server), clients);
    // Without read-ahead, a window is requested only when the caller asks for it.
    let mut cfg = config(&server, "p:");
    cfg.read_chunk_size = 1_000;
    cfg.read_ahead = 0;
    let store = Redis::connect(cfg).await.unwrap();
    let before = calls(&server, "getrange");
    let mut reader = store.get(d.into(), ByteRange::FULL).await.unwrap();
    reader.next().await.unwrap().unwrap();
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls(&server, "getrange"), before + 1);
    drop(reader);
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
}

#[tokio::test]
async fn lending_a_connection_costs_no_ping_and_a_closed_one_is_replaced() {
    let server = RedisServer::start();
    let store = connect(&server, "p:").await;
    store.put_bytes("a", "1".into()).await.unwrap();
    let pings = calls(&server, "ping");
    for _ in 0..10 {
        store.has("a").await.unwrap();
        store.get_bytes("a").await.unwrap();
        store.put_bytes("a", "1".into()).await.unwrap();
    }
    assert_eq!(calls(&server, "ping"), pings, "a PING per checkout");
    // The server closes the store's connections; the next upload (which is never retried)
    // still succeeds, on a fresh connection.
    server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    store.put_bytes("b", "2".into()).await.unwrap();
    assert_eq!(store.get_bytes("b").await.unwrap(), "2");
}

#[tokio::test]
async fn a_name_key_is_read_as_one_snapshot() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "p:");
    cfg.read_chunk_size = 1_000;
    let store = Redis::connect(cfg).await.unwrap();
    let old = blob(10_000, 1);
    store.put_bytes("ac/1", old.clone()).await.unwrap();
    let mut reader = store
        .get("ac/1".into(), ByteRange::new(10, None))
        .await
        .unwrap();
    // Replaced by a different value of the same length before the reader is drained: the
    // reader still yields exactly the old value, in one piece.
    store.put_bytes("ac/1", blob(10_000, 2)).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap(), old.slice(10..));
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn key_ttl_applies_to_stored_objects_and_expiry_is_reported() {
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Exe"]);
    let mut cfg = config(&server, "p:");
    cfg.key_ttl_s = 1;
    let store = Redis::connect(cfg).await.unwrap();
    assert!(store.notifies_removals());
    let mut removed = listener(&store);
    let d = Digest::of(b"short-lived");
    store.put_bytes(d, "short-lived".into()).await.unwrap();
    let ttl = server.command(&["PTTL", &format!("p:{d}")]);
    assert!(
        matches!(ttl, redis::Value::Int(ms) if ms > 0 && ms <= 1_000),
        "{ttl:?}"
    );
    // Redis expires it about a second later and tells us.
    assert_eq!(next_removal(&mut removed).await, Key::Digest(d));
    assert_eq!(store.has(d).await.unwrap(), None);
}

#[tokio::test]
async fn maxmemory_eviction_is_reported_so_an_existence_cache_above_forgets() {
    use casstack::{ExistenceCache, ExistenceCacheConfig};
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "notify-keyspace-events", "Exe"]);
    let redis = connect(&server, "cas:").await;
    assert!(redis.notifies_removals());
    // The cache subscribes first, so it has heard of a removal before the test's listener.
    let store = ExistenceCache::new(redis, ExistenceCacheConfig::default());
    let mut removed = listener(store.get_ref());
    let first = blob(256 << 10, 0);
    let first_digest = Digest::of(&first);
    store.put_bytes(first_digest, first).await.unwrap();
    let info = match server.command(&["INFO", "memory"]) {
        redis::Value::BulkString(text) => String::from_utf8(text).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO memory: {other:?}"),
    };
    let used: i64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory in INFO");
    let limit = (used + (1 << 20)).to_string();
    server.command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    server.command(&["CONFIG", "SET", "maxmemory", &limit]);
    // Fill past the limit: Redis evicts, the least recently used first.
    let mut stored = vec![first_digest];
    for seed in 1..16u8 {
        let data = blob(256 << 10, seed);
        let d = Digest::of(&data);
        match store.put_bytes(d, data).await {
            Ok(_) => stored.push(d),
            // Out of memory, or the staged key itself was evicted mid-upload.
            Err(e) => assert!(
                matches!(e.code(), Code::ResourceExhausted | Code::Aborted),
                "{e}"
            ),
        }
    }
    let gone = next_removal(&mut removed).await;
    let gone_digest = gone.digest().expect("a digest key");
    assert!(stored.contains(&gone_digest), "{gone:?}");
    // Every stored digest was cached as present by its put; the evicted one no longer is.
    assert_eq!(store.has(gone_digest).await.unwrap(), None);
    assert_eq!(store.get_ref().has(gone_digest).await.unwrap(), None);
    // Temporary keys evicted mid-upload are never reported.
    assert!(gone.name().is_none());
}

#[tokio::test]
async fn without_keyspace_events_nothing_is_subscribed() {
    let server = RedisServer::start();
    let store = connect(&server, "p:").await;
    assert!(!store.notifies_removals());
}

#[tokio::test]
async fn the_notification_task_stops_with_the_last_handle() {
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Exe"]);
    let store = connect(&server, "p:").await;
    let numsub = || server.command(&["PUBSUB", "NUMSUB", "__keyevent@0__:evicted"]);
    let subscribed = |n: i64| matches!(numsub(), redis::Value::Array(v) if v.get(1) == Some(&redis::Value::Int(n)));
    assert!(subscribed(1));
    let clone = store.clone();
    drop(store);
    assert!(subscribed(1), "a clone keeps it");
    drop(clone);
    // The server sees the connection close shortly after the task is aborted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !subscribed(0) {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn passwords_never_show_in_debug_or_errors() {
    let server = RedisServer::start_with(&["--requirepass", "s3cr3t-pw"]);
    let good = RedisConfig::new(format!("redis://:s3cr3t-pw@127.0.0.1:{}", server.port()));
    assert!(!format!("{good:?}").contains("s3cr3t-pw"));
    let store = Redis::connect(good).await.unwrap();
    store.put_bytes("k", "v".into()).await.unwrap();
    assert!(!format!("{store:?}").contains("s3cr3t-pw"), "{store:?}");
    // A wrong password: PermissionDenied, and the message does not echo it.
    let mut wrong = config(&server, "");
    wrong.addresses = vec![format!("redis://:wr0ng-pw@127.0.0.1:{}", server.port())];
    let store = Redis::connect(wrong).await.unwrap();
    let err = store.has("k").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(!format!("{err} {err:#?}").contains("wr0ng-pw"), "{err}");
    // Nobody listening: Unavailable after retries, no password either.
    let port = server.port();
    drop(server);
    let mut down = config(&RedisServer::start(), "");
    down.addresses = vec![format!("redis://:s3cr3t-pw@127.0.0.1:{port}")];
    let store = Redis::connect(down).await.unwrap();
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(!format!("{err} {err:#?}").contains("s3cr3t-pw"), "{err}");
}

#[tokio::test]
async fn the_store_recovers_when_the_server_restarts_between_operations() {
    let mut server = RedisServer::start();
    let store = connect(&server, "p:").await;
    store.put_bytes("a", "1".into()).await.unwrap();
    store.get_bytes("a").await.unwrap();
    server.kill();
    let err = store.has("a").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let err = store.put_bytes("b", "2".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    server.restart();
    // The same store object works again (the restarted server has no data).
    assert_eq!(store.has("a").await.unwrap(), None);
    store.put_bytes("b", "2".into()).await.unwrap();
    assert_eq!(store.get_bytes("b").await.unwrap(), "2");
    store.ping().await.unwrap();
}

#[tokio::test]
async fn health_is_a_ping_and_a_stopped_server_is_failed() {
    let mut server = RedisServer::start();
    let store = connect(&server, "h:").await;
    assert_eq!(store.check_health().await, casstack::HealthStatus::Ok);
    server.kill();
    let status = store.check_health().await;
    let failure = &status.failures()[0];
    assert_eq!(failure.store, "Redis");
    assert!(failure.message.starts_with("PING redis://"), "{status}");
    // Through a wrapper, named by its place.
    let stack = casstack::ExistenceCache::new(store.clone(), Default::default());
    let status = stack.check_health().await;
    assert_eq!(status.failures()[0].store, "ExistenceCache > Redis");
    server.restart();
    assert!(store.check_health().await.is_ok());
}

#[tokio::test]
async fn server_killed_mid_upload_fails_cleanly_and_a_retry_succeeds() {
    // Append-only persistence, so what was staged before the kill survives the restart and
    // the test sees whether an orphan temporary key is left.
    let server = Arc::new(Mutex::new(RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])));
    let url = server.lock().unwrap().url();
    let mut cfg = RedisConfig::new(url);
    cfg.key_prefix = "p:".into();
    cfg.retry.delay = 0.01;
    let store = Redis::connect(cfg).await.unwrap();
    const SIZE: usize = 50 << 20;
    const CHUNK: usize = 1 << 20;
    let data = blob(SIZE, 9);
    let d = Digest::of(&data);
    // The body kills the server once 20 MiB have been handed over.
    let killer = server.clone();
    let chunks = data.clone();
    let body = stream::iter(0..SIZE / CHUNK).map(move |i| {
        if i == 20 {
            killer.lock().unwrap().kill();
        }
        Ok(chunks.slice(i * CHUNK..(i + 1) * CHUNK))
    });
    let err = store
        .put(d.into(), UploadSize::Exact(SIZE as u64), body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.key(), Some(&Key::from(d)));
    // The body (and its handle on the server) is gone with the failed upload.
    let mut server = Arc::into_inner(server).unwrap().into_inner().unwrap();
    server.restart();
    assert!(
        is_int(server.command(&["EXISTS", &format!("p:{d}")]), 0),
        "no final key"
    );
    let staged = server.keys("*:tmp:*");
    for key in &staged {
        let key = String::from_utf8(key.clone()).unwrap();
        let ttl = server.command(&["PTTL", &key]);
        assert!(
            matches!(ttl, redis::Value::Int(ms) if ms > 0),
            "orphan {key}: {ttl:?}"
        );
    }
    // Retry: the same store, the same upload.
    assert_eq!(store.put_bytes(d, data.clone()).await.unwrap(), SIZE as u64);
    assert_eq!(store.has(d).await.unwrap(), Some(SIZE as u64));
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
    let remaining = server.keys("*:tmp:*");
    assert!(
        remaining.len() <= staged.len(),
        "the retry left no new temp key"
    );
    for key in remaining {
        let key = String::from_utf8(key).unwrap();
        let ttl = server.command(&["PTTL", &key]);
        assert!(
            matches!(ttl, redis::Value::Int(ms) if ms > 0),
            "orphan {key}: {ttl:?}"
        );
    }
}

#[test]
fn missing_redis_server_is_a_failure_with_an_install_hint() {
    let err = RedisServer::try_start("/nonexistent/redis-server".into(), &[])
        .expect_err("a missing binary must not start");
    assert!(err.contains("apt-get install -y redis-server"), "{err}");
}

#[test]
fn size_partition_of_redis_and_memory_conforms() {
    use casstack::{Memory, SizePartition, SizePartitionConfig};
    let server = RedisServer::start();
    let case = AtomicU64::new(0);
    Conformance::new().cases(24).name_keys(false).check(|| {
        let config = config(
            &server,
            &format!("sp{}:", case.fetch_add(1, Ordering::SeqCst)),
        );
        async move {
            SizePartition::new(
                Redis::connect(config).await.unwrap(),
                Memory::default(),
                SizePartitionConfig { size: 4 << 10 },
            )
        }
    });
}

#[test]
fn fast_slow_of_memory_over_redis_conforms() {
    use casstack::{FastSlow, FastSlowConfig, Memory};
    let server = RedisServer::start();
    let case = AtomicU64::new(0);
    Conformance::new().cases(24).check(|| {
        let config = config(
            &server,
            &format!("fs{}:", case.fetch_add(1, Ordering::SeqCst)),
        );
        async move {
            FastSlow::new(
                Memory::default(),
                Redis::connect(config).await.unwrap(),
                FastSlowConfig::default(),
            )
        }
    });
}

#[tokio::test]
async fn an_existence_cache_above_redis_forgets_expired_keys() {
    use casstack::{ExistenceCache, ExistenceCacheConfig};
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Exe"]);
    let store = ExistenceCache::new(
        connect(&server, "cas:").await,
        ExistenceCacheConfig::default(),
    );
    let data = blob(1_000, 5);
    let d = Digest::of(&data);
    store.put_bytes(d, data).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(1_000));
    // The cache answers from memory: with the key moved away (no event for that under
    // `Exe`), it still claims it, which shows the cache is really consulted below.
    let redis_key = format!("cas:{d}");
    server.command(&["RENAME", &redis_key, "elsewhere"]);
    assert_eq!(store.get_ref().has(d).await.unwrap(), None);
    assert_eq!(
        store.has(d).await.unwrap(),
        Some(1_000),
        "cached as present"
    );
    server.command(&["RENAME", "elsewhere", &redis_key]);
    // Redis drops it behind the cache's back (it expires); the cache hears of it.
    let mut removed = listener(store.get_ref());
    server.command(&["PEXPIRE", &redis_key, "1"]);
    assert_eq!(next_removal(&mut removed).await, Key::Digest(d));
    assert_eq!(
        store.has(d).await.unwrap(),
        None,
        "the cache no longer claims it"
    );
}

#[tokio::test]
async fn an_existence_cache_over_redis_without_keyspace_events_never_hides_a_lost_blob() {
    use casstack::{ExistenceCache, ExistenceCacheConfig};
    let server = RedisServer::start();
    let store = ExistenceCache::new(
        connect(&server, "cas:").await,
        ExistenceCacheConfig::default(),
    );
    let data = blob(1_000, 7);
    let d = Digest::of(&data);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.has(d).await.unwrap(), Some(1_000));
    // Dropped behind the cache's back (evicted, expired or deleted: nobody says so).
    server.command(&["DEL", &format!("cas:{d}")]);
    assert_eq!(store.has(d).await.unwrap(), None, "no stale positive");
    // Uploading the digest again is not skipped: the blob is really stored again.
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.get_ref().get_bytes(d).await.unwrap(), data);
    // A layout refuses the combination unless cached answers expire.
    let layout = format!(
        "existence_cache.backend.redis_store = {{ addresses = [{:?}] }}",
        server.url()
    );
    let spec = casstack::StoreSpec::from_toml(&layout).unwrap();
    let err = casstack::BoxStore::from_spec(&spec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("redis_store")
            && err.message().contains("notify-keyspace-events")
            && err.message().contains("max_seconds"),
        "{err}"
    );
    let bounded = format!("{layout}\nexistence_cache.eviction_policy.max_seconds = 60");
    let spec = casstack::StoreSpec::from_toml(&bounded).unwrap();
    casstack::BoxStore::from_spec(&spec).await.unwrap();
    // With keyspace events on, the same layout needs no time-to-live.
    server.command(&["CONFIG", "SET", "notify-keyspace-events", "Exe"]);
    let spec = casstack::StoreSpec::from_toml(&layout).unwrap();
    casstack::BoxStore::from_spec(&spec).await.unwrap();
}

#[tokio::test]
async fn after_a_pub_sub_gap_an_existence_cache_above_forgets_what_it_knew() {
    use casstack::{ExistenceCache, ExistenceCacheConfig, RemovalListener};
    /// Counts "removals may have been missed" signals.
    struct Resets(mpsc::UnboundedSender<()>);
    impl RemovalListener for Resets {
        fn removed(&self, _: &Key) {}
        fn removals_missed(&self) {
            let _ = self.0.send(());
        }
    }
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Exe"]);
    let redis = connect(&server, "cas:").await;
    assert!(redis.reports_all_removals());
    let store = ExistenceCache::new(redis, ExistenceCacheConfig::default());
    // Registered after the cache's own listener, so it is called after the cache's.
    let (tx, mut resets) = mpsc::unbounded_channel();
    store.get_ref().subscribe_removals(Arc::new(Resets(tx)));
    let data = blob(1_000, 8);
    let d = Digest::of(&data);
    store.put_bytes(d, data.clone()).await.unwrap();
    // The key goes without an event (a DEL is not announced under `Exe`), standing for an
    // eviction while the subscription is down: only the reset can make the cache forget it.
    server.command(&["DEL", &format!("cas:{d}")]);
    assert!(store.is_cached(&d.into()));
    // The pub/sub connection breaks; the store resubscribes and says it may have missed
    // removals.
    server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    tokio::time::timeout(Duration::from_secs(10), resets.recv())
        .await
        .expect("no reset within 10 s after the pub/sub connection broke")
        .unwrap();
    assert!(!store.is_cached(&d.into()));
    assert_eq!(store.has(d).await.unwrap(), None);
    store.put_bytes(d, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes(d).await.unwrap(), data);
}
