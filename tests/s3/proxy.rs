//! A small HTTP/1.1 fault proxy between the S3 store and moto, on 127.0.0.1 only.
//!
//! It forwards every request on a new upstream connection (moto closes each one anyway) and
//! logs it. Rules pick requests by method and a substring of the path and query, let the
//! first `skip` matches through, then act on the next `times`: answer with an S3 error,
//! reset the connection, stall, or cut (or stall) the response body after some bytes.
#![allow(dead_code)] // each test uses its own subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with this status and S3 error code, without asking moto.
    Status(u16, &'static str),
    /// Close the client's connection with a TCP reset, without answering.
    Reset,
    /// Never answer (until the client gives up).
    Stall,
    /// Forward, but close the connection after this many bytes of the response body.
    CutBody(usize),
    /// Forward, with this `Last-Modified` header instead of the server's.
    LastModified(&'static str),
    /// Forward, but stop sending after this many bytes of the response body (hold the
    /// connection open).
    StallBody(usize),
    /// Forward without the request's `Range` header, as a server or proxy that ignores it.
    StripRange,
}

#[derive(Debug)]
struct Rule {
    method: &'static str,
    path_contains: String,
    skip: usize,
    times: usize,
    action: Action,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// The action taken, if a rule matched.
    pub action: Option<Action>,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests answered: (method, path).
    done: Mutex<Vec<(String, String)>>,
    answered: tokio::sync::Notify,
    /// Per method: requests being handled now, and the most at once.
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .expect("an http endpoint")
            .parse()
            .expect("a loopback address");
        assert!(upstream.ip().is_loopback());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(client, upstream, state.clone()));
            }
        });
        Proxy { addr, shared, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// After `skip` matching requests, applies `action` to the next `times`.
    pub fn inject(
        &self,
        method: &'static str,
        path_contains: &str,
        skip: usize,
        times: usize,
        action: Action,
    ) {
        self.shared.rules.lock().unwrap().push(Rule {
            method,
            path_contains: path_contains.to_string(),
            skip,
            times,
            action,
        });
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests matched `method` and `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path_contains))
            .count()
    }

    /// Waits (at most 10 s) until `count` requests matching `method` and `path_contains`
    /// have been answered.
    pub async fn wait_for(&self, method: &str, path_contains: &str, count: usize) {
        let answered = |shared: &Shared| {
            shared
                .done
                .lock()
                .unwrap()
                .iter()
                .filter(|(m, p)| m == method && p.contains(path_contains))
                .count()
        };
        let wait = async {
            loop {
                let notified = self.shared.answered.notified();
                if answered(&self.shared) >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no {count} answered {method} {path_contains} within 10 s"));
    }

    /// The most `method` requests handled at once.
    pub fn peak_in_flight(&self, method: &str) -> usize {
        self.shared
            .in_flight
            .lock()
            .unwrap()
            .get(method)
            .map_or(0, |(_, peak)| *peak)
    }

    pub fn clear_log(&self) {
        self.shared.seen.lock().unwrap().clear();
    }
}

fn choose(shared: &Shared, method: &str, path: &str) -> Option<Action> {
    let mut rules = shared.rules.lock().unwrap();
    for rule in rules.iter_mut() {
        if rule.method != method || !path.contains(&rule.path_contains) || rule.times == 0 {
            continue;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.times -= 1;
        return Some(rule.action);
    }
    None
}

/// Reads one request head; returns it and whatever body bytes came with it.
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let Some((head, mut body)) = read_head(&mut client).await else {
        return;
    };
    let text = String::from_utf8_lossy(&head).to_string();
    let mut request_line = text.lines().next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    assert!(
        header(&text, "transfer-encoding").is_none(),
        "the proxy handles only Content-Length bodies: {text}"
    );
    let len: usize = header(&text, "content-length").map_or(0, |v| v.parse().unwrap());
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(1 << 20)];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let action = choose(&shared, &method, &path);
    shared.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: header(&text, "range"),
        action,
    });
    {
        let mut in_flight = shared.in_flight.lock().unwrap();
        let (now, peak) = in_flight.entry(method.clone()).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
    }
    respond(client, upstream, &method, &head, &body, action).await;
    shared.in_flight.lock().unwrap().get_mut(&method).unwrap().0 -= 1;
    shared.done.lock().unwrap().push((method, path));
    shared.answered.notify_waiters();
}

async fn respond(
    mut client: TcpStream,
    upstream: SocketAddr,
    method: &str,
    head: &[u8],
    body: &[u8],
    action: Option<Action>,
) {
    match action {
        Some(Action::Status(status, code)) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message></Error>"
            );
            let body = if method == "HEAD" { "" } else { xml.as_str() };
            let response = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        Some(Action::Reset) => reset(client),
        Some(Action::Stall) => hold(client).await,
        other => forward(client, upstream, method, head, body, other).await,
    }
}

/// Closes with a TCP reset (linger 0) instead of a clean close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Keeps the connection open, answering nothing, until the client closes it.
async fn hold(mut stream: TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    method: &str,
    head: &[u8],
    body: &[u8],
    action: Option<Action>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let stripped;
    let head = if action == Some(Action::StripRange) {
        let text = String::from_utf8_lossy(head);
        stripped = text
            .split("\r\n")
            .filter(|line| !line.to_ascii_lowercase().starts_with("range:"))
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes();
        &stripped[..]
    } else {
        head
    };
    if server.write_all(head).await.is_err() || server.write_all(body).await.is_err() {
        return reset(client);
    }
    let Some((response_head, mut response_body)) = read_head(&mut server).await else {
        return reset(client);
    };
    let mut text = String::from_utf8_lossy(&response_head).to_string();
    let mut response_head = response_head;
    if let Some(Action::LastModified(date)) = action {
        text = text
            .split("\r\n")
            .map(|line| {
                if line.to_ascii_lowercase().starts_with("last-modified:") {
                    format!("Last-Modified: {date}")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        response_head = text.clone().into_bytes();
    }
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = if method == "HEAD" || status == 204 || status == 304 {
        Some(0)
    } else {
        header(&text, "content-length").map(|v| v.parse::<usize>().unwrap())
    };
    // Read the whole response body (responses in these tests are at most a few MiB).
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        if len.is_some_and(|len| response_body.len() >= len) {
            break;
        }
        match server.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response_body.extend_from_slice(&chunk[..n]),
        }
    }
    if client.write_all(&response_head).await.is_err() {
        return;
    }
    match action {
        Some(Action::CutBody(n)) => {
            let _ = client
                .write_all(&response_body[..n.min(response_body.len())])
                .await;
            let _ = client.shutdown().await;
        }
        Some(Action::StallBody(n)) => {
            let _ = client
                .write_all(&response_body[..n.min(response_body.len())])
                .await;
            let _ = client.flush().await;
            hold(client).await;
        }
        _ => {
            let _ = client.write_all(&response_body).await;
            let _ = client.shutdown().await;
        }
    }
}
