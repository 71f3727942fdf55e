//! [`S3Server`]: a local S3-compatible server (moto) for tests, on a free loopback port.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::stores::redis::RetryConfig;
use crate::stores::s3::{S3, S3Config, S3Credentials};

/// How long moto may take to start (a cold start compiles its Python modules).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The command that installs moto where [`S3Server`] looks first.
pub const MOTO_INSTALL_HINT: &str = "python3 -m venv target/moto-venv && \
     target/moto-venv/bin/pip install 'moto[server]' (scripts/test does this)";

/// A moto S3 server on `127.0.0.1` and a free port, for tests; stopped when dropped, and also
/// when the test process dies (it watches its standard input).
///
/// moto accepts any credentials and keeps everything in memory. It is found, in order, at
/// `$CASSTACK_MOTO_SERVER`, in `moto-venv/bin/` under the cargo target directory of the running
/// test, or on `PATH`. Without it, [`start`](Self::start) panics with the command that installs
/// it: a test that needs S3 fails, it is never skipped.
///
/// ```no_run
/// use casstack::{StoreExt, testing::S3Server};
///
/// # #[tokio::main] async fn main() -> casstack::Result<()> {
/// let server = S3Server::start();
/// let store = server.fresh_store(server.config()).await;
/// store.put_bytes("k", "v".into()).await?;
/// # Ok(()) }
/// ```
pub struct S3Server {
    child: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
    log: Arc<Mutex<VecDeque<String>>>,
    buckets: AtomicU64,
}

impl fmt::Debug for S3Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts moto and waits (up to 90 s) until it listens. Panics, with an install hint, if
    /// moto is missing or does not start.
    ///
    /// ```no_run
    /// let server = casstack::testing::S3Server::start();
    /// assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    /// ```
    pub fn start() -> S3Server {
        let program = find_moto().unwrap_or_else(|| {
            panic!("moto_server was not found; install it with: {MOTO_INSTALL_HINT}")
        });
        if !program.is_file() {
            panic!(
                "moto_server is not at {}; install it with: {MOTO_INSTALL_HINT}",
                program.display()
            );
        }
        // The shell starts moto (which alone keeps the output pipe open, so its exit is seen
        // at once), then waits for its own stdin to close (this process dropped the server,
        // or died) and stops it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "\"$0\" -H 127.0.0.1 -p 0 2>&1 & pid=$!; exec >/dev/null; \
                 cat >/dev/null; kill $pid; wait $pid",
            )
            .arg(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &port_tx
                    && let Some(port) = line
                        .split("Running on http://127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                    port_tx = None;
                }
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if lines.len() == 50 {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let stdin = child.stdin.take();
        let port = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            // Timed out, or moto exited (its output closed) before listening.
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let output = log.lock().unwrap_or_else(PoisonError::into_inner);
                panic!(
                    "{} exited or did not listen within {START_TIMEOUT:?}; its output:\n{}\n\
                     (reinstall with: {MOTO_INSTALL_HINT})",
                    program.display(),
                    Vec::from(output.clone()).join("\n")
                );
            }
        };
        S3Server {
            child,
            stdin,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            buckets: AtomicU64::new(0),
        }
    }

    /// `http://127.0.0.1:{port}`.
    ///
    /// ```no_run
    /// println!("{}", casstack::testing::S3Server::start().endpoint());
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The last lines moto printed (its request log), for a failing test's report.
    ///
    /// ```no_run
    /// let server = casstack::testing::S3Server::start();
    /// println!("{}", server.log().join("\n"));
    /// ```
    pub fn log(&self) -> Vec<String> {
        let lines = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    /// A config for a new bucket name on this server (not yet created): static test
    /// credentials, 5 MiB parts, four parts in flight, retries from 10 ms, 10 s timeouts.
    ///
    /// ```no_run
    /// let server = casstack::testing::S3Server::start();
    /// assert_ne!(server.config().bucket, server.config().bucket);
    /// ```
    pub fn config(&self) -> S3Config {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            credentials: S3Credentials::Static {
                access_key: "testing".into(),
                secret_key: "testing".into(),
                session_token: None,
            },
            part_size: 5 << 20,
            multipart_max_concurrent_uploads: 4,
            retry: RetryConfig {
                max_retries: 4,
                delay: 0.01,
                jitter: 0.5,
            },
            request_timeout: 10.0,
            ..S3Config::new(format!("casstack-{}-{n}", std::process::id()))
        }
    }

    /// A store over `config` whose bucket has just been created. Panics if that fails.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() {
    /// let server = casstack::testing::S3Server::start();
    /// let store = server.fresh_store(server.config()).await;
    /// # let _ = store;
    /// # }
    /// ```
    pub async fn fresh_store(&self, config: S3Config) -> S3 {
        let store = S3::new(config).expect("a valid S3 config");
        if let Err(e) = store.create_bucket().await {
            panic!(
                "cannot create a bucket on {}: {e}\nmoto's log:\n{}",
                self.endpoint,
                self.log().join("\n")
            );
        }
        store
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Closing the shell's stdin makes it stop moto and exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn find_moto() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CASSTACK_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new("moto-venv").join("bin").join("moto_server");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/test-binary: the target directory is an ancestor.
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    if let Some(found) = roots.iter().map(|r| r.join(&venv)).find(|p| p.is_file()) {
        return Some(found);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
}
