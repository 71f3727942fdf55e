//! End-to-end tests of the `casstack-serve` binary: a plain HTTP client for every status,
//! uploads cut short, restarts, graceful shutdown, and ccache as a real client.
//!
//! Each test starts its own server on a free loopback port (`--addr 127.0.0.1:0`, the bound
//! address read from its first line of output) with its own data directory. Waits for the
//! server are bounded reads of its output, never sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_casstack-serve");
/// The longest any wait for the server may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running server and the lines it prints.
struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every line seen so far, for failure messages.
    seen: Vec<String>,
}

fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Server {
    /// Starts the server on the built-in layout with `data` as its data directory.
    fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting casstack-serve");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout,
            stderr,
            seen: Vec::new(),
        };
        let line = server.wait_stdout("listening on http://");
        let addr = line.split("http://").nth(1).unwrap();
        server.addr = addr.parse().unwrap();
        server
    }

    fn wait_line(&mut self, from_stdout: bool, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rx = if from_stdout {
                &self.stdout
            } else {
                &self.stderr
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} from the server ({e}); it printed:\n{}\n{}",
                    self.seen.join("\n"),
                    self.stderr.try_iter().collect::<Vec<_>>().join("\n")
                ),
            }
        }
    }

    fn wait_stdout(&mut self, needle: &str) -> String {
        self.wait_line(true, needle)
    }

    /// Waits for the request log line that starts with `prefix` (`"PUT /ac/..."`).
    fn wait_log(&mut self, prefix: &str) -> String {
        self.wait_line(false, &format!("casstack_serve::server: {prefix}"))
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            // Bounded wait for the child's output to end (it closes when the process exits).
            let _ = self
                .stdout
                .recv_timeout(Duration::from_millis(50))
                .map(|l| self.seen.push(l));
        }
    }

    fn stop(mut self) {
        self.terminate();
        self.wait_stdout("shut down");
        assert!(self.wait_exit().success());
    }

    fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], None)
    }

    fn head(&self, path: &str) -> Reply {
        request(self.addr, "HEAD", path, &[], None)
    }

    fn put(&self, path: &str, body: &[u8]) -> Reply {
        request(self.addr, "PUT", path, &[], Some(body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| v.parse().unwrap())
    }
}

/// One request on a fresh connection (`Connection: close`), the whole reply read back.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&[u8]>,
) -> Reply {
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        conn.write_all(body).unwrap();
    }
    read_reply(&mut conn, method == "HEAD")
}

fn read_reply(conn: &mut TcpStream, head_only: bool) -> Reply {
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    parse_reply(&raw, head_only)
}

fn parse_reply(raw: &[u8], head_only: bool) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete reply: {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    if !head_only && let Some(len) = reply.content_length() {
        assert_eq!(
            reply.body.len() as u64,
            len,
            "body length vs Content-Length"
        );
    }
    reply
}

fn cas(hash: &str) -> String {
    format!("/cas/{hash}")
}

fn ac(hash: &str) -> String {
    format!("/ac/{hash}")
}

#[test]
fn every_status_on_the_default_layout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    check_statuses(&server);
    server.stop();
}

#[test]
fn every_status_on_a_split_layout_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = concat!(env!("CARGO_MANIFEST_DIR"), "/layouts/split.toml");
    let mut server = Server::start(dir.path(), &["--layout", layout]);
    let line = server.wait_stdout("layout: ");
    assert!(line.ends_with("split.toml"), "{line}");
    server.wait_stdout("cas: BoxStore");
    server.wait_stdout("ac: BoxStore");
    check_statuses(&server);
    server.stop();
    // Each store has its own directories under --data.
    for sub in ["cas/d", "ac/s"] {
        let n = std::fs::read_dir(dir.path().join(sub)).unwrap().count();
        assert!(n > 0, "{sub} is empty");
    }
}

#[test]
fn a_one_store_layout_file_needs_name_keys() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("memory.toml");
    std::fs::write(&layout, "[memory.eviction_policy]\nmax_bytes = \"1mib\"\n").unwrap();
    let mut server = Server::start(dir.path(), &["--layout", layout.to_str().unwrap()]);
    server.wait_stdout("store (CAS by digest, AC by name): BoxStore");
    let hash = sha256_hex(b"m");
    assert_eq!(server.put(&cas(&hash), b"m").status, 201);
    assert_eq!(server.put(&ac(&hash), b"result").status, 201);
    assert_eq!(server.get(&cas(&hash)).body, b"m");
    assert_eq!(server.get(&ac(&hash)).body, b"result");
    server.stop();

    // A root that takes digests only cannot hold the AC: refused at startup, with the fix.
    std::fs::write(&layout, "verify.backend.memory = {}\n").unwrap();
    let err = refused_at_startup(&layout, dir.path());
    assert!(
        err.contains("takes no name keys") && err.contains("[cas] and [ac]"),
        "{err}"
    );
}

#[test]
fn the_size_index_forgets_what_the_cas_store_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("small.toml");
    std::fs::write(
        &layout,
        "[memory.eviction_policy]\nmax_bytes = \"100kib\"\n",
    )
    .unwrap();
    let mut server = Server::start(dir.path(), &["--layout", layout.to_str().unwrap()]);
    let (a, b) = (vec![1u8; 60_000], vec![2u8; 60_000]);
    let (path_a, path_b) = (cas(&sha256_hex(&a)), cas(&sha256_hex(&b)));
    assert_eq!(server.put(&path_a, &a).status, 201);
    assert_eq!(server.get(&path_a).body, a);
    // No room for both: storing b evicts a, and the index's check confirms it is gone.
    assert_eq!(server.put(&path_b, &b).status, 201);
    server.wait_line(false, "the CAS store dropped 1 of 1 reported objects");
    assert_eq!(server.get(&path_a).status, 404);
    assert_eq!(server.head(&path_a).status, 404);
    assert_eq!(server.get(&path_b).body, b);
    // Uploaded again, a is served again (and b is evicted in turn).
    assert_eq!(server.put(&path_a, &a).status, 201);
    assert_eq!(server.get(&path_a).body, a);
    server.wait_line(false, "the CAS store dropped 1 of 1 reported objects");
    assert_eq!(server.head(&path_b).status, 404);
    assert_eq!(server.head(&path_a).status, 200);
    server.stop();
}

#[test]
fn metrics_and_health_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let r = server.get("/health");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "{r:?}");
    let blob = b"counted";
    let hash = sha256_hex(blob);
    assert_eq!(server.put(&cas(&hash), blob).status, 201);
    assert_eq!(server.get(&cas(&hash)).body, blob);
    assert_eq!(server.get(&cas(&sha256_hex(b"absent"))).status, 404);
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    let value = |needle: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        value(r#"casstack_operations_total{store="cas",op="put",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"casstack_operations_total{store="cas",op="get",outcome="hit"}"#),
        1.0
    );
    assert_eq!(
        value(r#"casstack_read_bytes_total{store="cas"}"#),
        blob.len() as f64
    );
    assert!(text.contains("casstack_operation_seconds"), "{text}");

    // The filesystem's temp directory replaced by a file: unhealthy, and says where.
    let temp = dir.path().join("tmp"); // layouts/local.toml's temp_path
    std::fs::remove_dir_all(&temp).unwrap();
    std::fs::write(&temp, b"not a directory").unwrap();
    let r = server.get("/health");
    assert_eq!(r.status, 503, "{r:?}");
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.starts_with("failed: Verify > Metrics[cas] > ") && text.contains("not a directory"),
        "{text}"
    );
    std::fs::remove_file(&temp).unwrap();
    std::fs::create_dir(&temp).unwrap();
    server.stop();
}

fn check_statuses(server: &Server) {
    let blob = b"int main() { return 0; }\n".repeat(100);
    let hash = sha256_hex(&blob);

    // Misses.
    let r = server.get(&cas(&hash));
    assert_eq!(r.status, 404);
    assert_eq!(server.head(&cas(&hash)).status, 404);
    assert_eq!(server.get(&ac(&hash)).status, 404);
    assert_eq!(server.head(&ac(&hash)).status, 404);

    // Upload, then hits with Content-Length; HEAD has no body.
    let r = server.put(&cas(&hash), &blob);
    assert!(matches!(r.status, 200 | 201), "{r:?}");
    let r = server.get(&cas(&hash));
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(blob.len() as u64));
    assert_eq!(r.body, blob);
    let r = server.head(&cas(&hash));
    assert_eq!(
        (r.status, r.content_length()),
        (200, Some(blob.len() as u64))
    );
    assert!(r.body.is_empty());
    // Again (the memory tier and the size index answer now), and idempotent uploads.
    assert_eq!(server.get(&cas(&hash)).body, blob);
    assert_eq!(server.put(&cas(&hash), &blob).status, 201);

    // The empty blob is always there.
    let empty = sha256_hex(b"");
    let r = server.get(&cas(&empty));
    assert_eq!((r.status, r.content_length()), (200, Some(0)));
    assert_eq!(server.put(&cas(&empty), b"").status, 201);

    // Wrong content for the hash: 400, nothing stored.
    let other = sha256_hex(b"other content");
    let r = server.put(&cas(&other), b"not the other content");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("mismatch"));
    assert_eq!(server.head(&cas(&other)).status, 404);
    assert_eq!(server.get(&cas(&other)).status, 404);
    // Right content under the URL of a different hash (a claimed empty blob): 400.
    assert_eq!(server.put(&cas(&empty), b"x").status, 400);

    // Malformed hashes: 400 for every method that is allowed.
    for bad in [
        "abc",
        &hash[1..],
        &format!("{}g", &hash[1..]),
        &format!("{hash}0"),
    ] {
        assert_eq!(server.get(&cas(bad)).status, 400, "{bad}");
        assert_eq!(server.put(&ac(bad), b"x").status, 400, "{bad}");
    }
    // Not a cache path: 404. A bad instance name: 400.
    assert_eq!(server.get(&format!("/blobs/{hash}")).status, 404);
    assert_eq!(server.get("/").status, 404);
    assert_eq!(server.get(&format!("/../cas/{hash}")).status, 400);
    // Other methods: 405 with Allow.
    for method in ["DELETE", "POST", "PATCH", "OPTIONS"] {
        let r = request(server.addr, method, &cas(&hash), &[], Some(b""));
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    }
    assert_eq!(
        server.get(&cas(&hash)).status,
        200,
        "a DELETE removed nothing"
    );

    // A CAS upload needs a Content-Length; an AC upload may be chunked.
    let chunked = ["Transfer-Encoding: chunked"];
    let r = request(server.addr, "PUT", &cas(&other), &chunked, None);
    assert_eq!(r.status, 411);
    let key = sha256_hex(b"an action");
    let mut conn = TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "PUT /ac/{key} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_reply(&mut conn, false).status, 201);
    assert_eq!(server.get(&ac(&key)).body, b"hello world");

    // AC entries are not verified: any value under any hash, and replaceable.
    let value = b"an action result, not hashing to its key";
    assert_eq!(server.put(&ac(&hash), value).status, 201);
    let r = server.get(&ac(&hash));
    assert_eq!((r.status, r.body.as_slice()), (200, value.as_slice()));
    assert_eq!(
        server.head(&ac(&hash)).content_length(),
        Some(value.len() as u64)
    );
    assert_eq!(server.put(&ac(&hash), b"v2").status, 201);
    assert_eq!(server.get(&ac(&hash)).body, b"v2");
    // The AC and CAS are separate: the CAS object under the same hash is unchanged.
    assert_eq!(server.get(&cas(&hash)).body, blob);

    // Instance prefixes: the AC is per instance, the CAS shared (content is its own name).
    assert_eq!(
        server.put(&format!("/main/ac/{key}"), b"main's").status,
        201
    );
    assert_eq!(
        server.put(&format!("/team/x.y/ac/{key}"), b"team's").status,
        201
    );
    assert_eq!(server.get(&format!("/main/ac/{key}")).body, b"main's");
    assert_eq!(server.get(&format!("/team/x.y/ac/{key}")).body, b"team's");
    assert_eq!(server.get(&ac(&key)).body, b"hello world");
    assert_eq!(server.get(&format!("/other/ac/{key}")).status, 404);
    let blob2 = b"uploaded under an instance".to_vec();
    let hash2 = sha256_hex(&blob2);
    assert_eq!(
        server.put(&format!("/main/cas/{hash2}"), &blob2).status,
        201
    );
    assert_eq!(server.get(&format!("/main/cas/{hash2}")).body, blob2);
    assert_eq!(server.get(&cas(&hash2)).body, blob2);
    assert_eq!(server.head(&format!("/team/cas/{hash2}")).status, 200);

    // Keep-alive: several requests on one connection.
    let mut conn = TcpStream::connect(server.addr).unwrap();
    for _ in 0..3 {
        write!(conn, "HEAD /cas/{hash} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        while !raw.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            conn.read_exact(&mut byte).unwrap();
            raw.push(byte[0]);
        }
        let reply = parse_reply(&raw, true);
        assert_eq!(
            (reply.status, reply.content_length()),
            (200, Some(blob.len() as u64))
        );
    }
}

/// Sends the head of a PUT with `Expect: 100-continue` and `first` bytes of a `len`-byte
/// body; returns once the server asked for the body (its handler is reading it).
fn start_upload(server: &Server, path: &str, len: usize, first: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 25];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(first).unwrap();
    conn
}

/// Like [`start_upload`], but `first` goes out in one write with the head, before the server
/// asks for the body, and nothing follows: however late this client is scheduled, the server
/// has every byte it will get before its idle clock starts, and the test never writes to a
/// connection the server may have closed.
fn stall_upload(server: &Server, path: &str, len: usize, first: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(server.addr).unwrap();
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    )
    .into_bytes();
    head.extend_from_slice(first);
    conn.write_all(&head).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 25];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn
}

#[test]
fn an_upload_cut_midway_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for path in [cas(&sha256_hex(&blob)), ac(&sha256_hex(b"cut"))] {
        let conn = start_upload(&server, &path, blob.len(), &blob[..40_000]);
        conn.shutdown(Shutdown::Both).unwrap();
        drop(conn);
        // The request's log line says how it ended.
        let line = server.wait_log(&format!("PUT {path} 400"));
        assert!(line.contains("cut short"), "{line}");
        assert_eq!(server.head(&path).status, 404, "{path}");
        assert_eq!(server.get(&path).status, 404, "{path}");
    }
    // Nothing was left in the temp directory either.
    assert_no_temp_files(dir.path());
    // The same upload, whole, works.
    let path = cas(&sha256_hex(&blob));
    assert_eq!(server.put(&path, &blob).status, 201);
    assert_eq!(server.get(&path).body, blob);
    server.stop();
}

/// Starts the server on `layout` and `data`, expects it to refuse to start (exit code 1),
/// and returns what it printed on stderr.
fn refused_at_startup(layout: &Path, data: &Path) -> String {
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--layout"])
        .arg(layout)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that no upload left a file in the data directory's temp path.
fn assert_no_temp_files(data: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(data.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".casstack-lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_stalled_upload_is_abandoned_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--upload-idle-timeout", "0.2"]);
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    for path in [cas(&sha256_hex(&blob)), ac(&sha256_hex(b"stalled"))] {
        // Half the body, then nothing more, with the connection left open.
        let mut conn = stall_upload(&server, &path, blob.len(), &blob[..25_000]);
        let r = read_reply(&mut conn, false);
        assert_eq!(r.status, 408, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(String::from_utf8_lossy(&r.body).contains("no body bytes for 200ms"));
        // Logged at warn level, naming the upload.
        let line = server.wait_line(false, "abandoned, the client sent no body bytes");
        assert!(line.contains(" WARN ") && line.contains(&path), "{line}");
        server.wait_log(&format!("PUT {path} 408"));
        assert_eq!(server.head(&path).status, 404, "{path}");
    }
    assert_no_temp_files(dir.path());
    // A client that keeps sending is not abandoned, however long the whole upload takes.
    let path = cas(&sha256_hex(&blob));
    assert_eq!(server.put(&path, &blob).status, 201);
    assert_eq!(server.get(&path).body, blob);
    server.stop();
}

#[test]
fn shutdown_completes_once_a_stalled_upload_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let blob = b"stalled at shutdown".repeat(500);
    let path = cas(&sha256_hex(&blob));
    // The grace period is far longer than the idle timeout: the upload ends first.
    let mut server = Server::start(
        dir.path(),
        &["--grace", "20", "--upload-idle-timeout", "0.2"],
    );
    let mut conn = stall_upload(&server, &path, blob.len(), &blob[..100]);
    server.terminate();
    server.wait_stdout("shutting down");
    assert_eq!(read_reply(&mut conn, false).status, 408);
    server.wait_stdout("shut down cleanly");
    assert!(server.wait_exit().success());

    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.head(&path).status, 404);
    server.stop();
}

#[test]
fn a_restart_keeps_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB: read back from disk after the restart in many chunks.
    let blob = b"kept across restarts".repeat(52_429);
    let hash = sha256_hex(&blob);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.put(&cas(&hash), &blob).status, 201);
    assert_eq!(server.put(&ac(&hash), b"result").status, 201);
    assert_eq!(
        server.put(&format!("/i/ac/{hash}"), b"i's result").status,
        201
    );
    server.stop();

    let server = Server::start(dir.path(), &[]);
    let r = server.get(&cas(&hash));
    assert_eq!(
        (r.status, r.content_length()),
        (200, Some(blob.len() as u64))
    );
    assert_eq!(r.body, blob);
    assert_eq!(server.head(&cas(&hash)).status, 200);
    assert_eq!(server.get(&ac(&hash)).body, b"result");
    assert_eq!(server.get(&format!("/i/ac/{hash}")).body, b"i's result");
    server.stop();
}

/// The file under `dir` (searched recursively) whose name starts with `prefix`.
fn find_file(dir: &Path, prefix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, prefix) {
                return Some(found);
            }
        } else if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(prefix)
        {
            return Some(path);
        }
    }
    None
}

#[test]
fn a_corrupt_cas_object_is_never_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    // Several read chunks from disk.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let hash = sha256_hex(&blob);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.put(&cas(&hash), &blob).status, 201);
    server.stop();
    // A bit flips on disk (same length, so only the hash can tell).
    let file = find_file(&dir.path().join("content"), &hash).expect("the object's file");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes, blob);
    bytes[123_456] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();

    let mut server = Server::start(dir.path(), &[]);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "GET /cas/{hash} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let r = parse_reply(&raw, true);
    assert_eq!(
        (r.status, r.content_length()),
        (200, Some(blob.len() as u64))
    );
    assert!(
        r.body.len() < blob.len(),
        "the corrupt object was sent whole"
    );
    // Logged, naming the object.
    let line = server.wait_line(false, "was cut short");
    assert!(
        line.contains(" WARN ") && line.contains(&hash) && line.contains("sha256 mismatch"),
        "{line}"
    );
    // Uploading it again repairs it.
    assert_eq!(server.put(&cas(&hash), &blob).status, 201);
    assert_eq!(server.get(&cas(&hash)).body, blob);
    server.stop();
    assert_eq!(std::fs::read(&file).unwrap(), blob);
}

/// bazel-remote#798 (peers.md #20): a blob larger than the fast tier is refused with 507
/// there. Here the fast tier declines it and the slow tier keeps it.
#[test]
fn a_blob_larger_than_the_fast_tier_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("tiny-fast.toml");
    std::fs::write(
        &layout,
        "[fast_slow.fast.memory.eviction_policy]\nmax_bytes = \"64kib\"\n\
         [fast_slow.slow.filesystem]\ncontent_path = \"$CASSTACK_DATA/content\"\n\
         temp_path = \"$CASSTACK_DATA/tmp\"\n",
    )
    .unwrap();
    let layout = layout.to_str().unwrap();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let path = cas(&sha256_hex(&blob));
    let server = Server::start(dir.path(), &["--layout", layout]);
    assert_eq!(server.put(&path, &blob).status, 201);
    assert_eq!(server.get(&path).body, blob);
    server.stop();
    let server = Server::start(dir.path(), &["--layout", layout]);
    assert_eq!(server.get(&path).body, blob);
    server.stop();
}

#[test]
fn shutdown_lets_an_upload_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let blob = b"0123456789".repeat(2000);
    let path = cas(&sha256_hex(&blob));
    let mut server = Server::start(dir.path(), &[]);
    let mut conn = start_upload(&server, &path, blob.len(), &blob[..5000]);
    server.terminate();
    server.wait_stdout("shutting down");
    // No new connections once shutting down.
    assert!(TcpStream::connect(server.addr).is_err());
    conn.write_all(&blob[5000..]).unwrap();
    assert_eq!(read_reply(&mut conn, false).status, 201);
    server.wait_stdout("shut down cleanly");
    assert!(server.wait_exit().success());

    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.get(&path).body, blob);
    server.stop();
}

#[test]
fn shutdown_aborts_a_stalled_upload_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let blob = b"stalled".repeat(1000);
    let path = cas(&sha256_hex(&blob));
    let mut server = Server::start(dir.path(), &["--grace", "0.2"]);
    let _conn = start_upload(&server, &path, blob.len(), &blob[..10]);
    server.terminate();
    server.wait_stdout("aborted after");
    assert!(server.wait_exit().success());

    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.head(&path).status, 404);
    server.stop();
}

#[test]
fn bad_flags_and_layouts_are_clear_errors() {
    let out = Command::new(BIN).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option \"--frobnicate\""));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--layout FILE"));

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("bad.toml");
    std::fs::write(&layout, "[cas.memory]\n\n[ac.memroy]\n").unwrap();
    let err = refused_at_startup(&layout, dir.path());
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("memroy"),
        "{err}"
    );
}

/// ccache 4.7.5 with `remote_storage = http://...|layout=bazel` (its keys are input hashes,
/// stored under /ac/): the second compile, from an empty local cache, is a remote hit and
/// gives the same object file.
#[test]
fn ccache_gets_a_remote_hit() {
    let version = Command::new("ccache").arg("--version").output();
    let Ok(version) = version else {
        panic!("ccache is not installed: `apt-get install -y ccache` (scripts/test installs it)");
    };
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("http-storage"),
        "this ccache has no HTTP remote storage"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from ccache\"); return 0; }\n",
    )
    .unwrap();
    let config = dir.path().join("ccache.conf");
    std::fs::write(&config, "").unwrap();
    let remote = format!("http://{}|layout=bazel", server.addr);

    let ccache = |run: &str, args: &[&str]| {
        let mut cmd = Command::new("ccache");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CCACHE_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd
            .args(args)
            .current_dir(&src)
            .env("CCACHE_CONFIGPATH", &config)
            .env("CCACHE_DIR", dir.path().join(format!("ccache-{run}")))
            .env("CCACHE_REMOTE_STORAGE", &remote)
            .env("CCACHE_REMOTE_ONLY", "true")
            .output()
            .unwrap();
        assert!(out.status.success(), "ccache {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let stat = |stats: &str, name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('\t')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{stats}"))
    };
    let mut objects: Vec<PathBuf> = Vec::new();
    for run in ["first", "second"] {
        let object = dir.path().join(format!("{run}.o"));
        let start = Instant::now();
        ccache(
            run,
            &[
                "gcc",
                "-O2",
                "-c",
                "hello.c",
                "-o",
                object.to_str().unwrap(),
            ],
        );
        eprintln!("ccache {run} compile: {:?}", start.elapsed());
        let stats = ccache(run, &["--print-stats"]);
        if run == "first" {
            assert_eq!(stat(&stats, "remote_storage_miss"), 1, "{stats}");
            assert!(stat(&stats, "remote_storage_write") >= 1, "{stats}");
        } else {
            assert_eq!(stat(&stats, "remote_storage_hit"), 1, "{stats}");
            assert_eq!(stat(&stats, "remote_storage_error"), 0, "{stats}");
            assert_eq!(stat(&stats, "cache_miss"), 0, "{stats}");
        }
        objects.push(object);
    }
    let (a, b) = (
        std::fs::read(&objects[0]).unwrap(),
        std::fs::read(&objects[1]).unwrap(),
    );
    assert!(!a.is_empty());
    assert!(a == b, "the object files differ");
    server.stop();
}

fn sha256_hex(data: &[u8]) -> String {
    casstack::Digest::of(data).hash_hex()
}
