//! [`RedisServer`]: a throwaway `redis-server` child process on a free loopback port.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How to install the server, for error messages.
const INSTALL_HINT: &str = "install it with `apt-get install -y redis-server` (Debian/Ubuntu; \
                            scripts/test does this when it runs as root), or set \
                            CASSTACK_REDIS_SERVER to its path";

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A `redis-server` started for a test, on a free port of 127.0.0.1, with no persistence
/// (`--save '' --appendonly no`) unless asked. It is killed (by pid) when dropped.
///
/// A missing binary is a panic that says how to install it: tests that need Redis fail,
/// they are never skipped. The binary is `redis-server` on `PATH`, or `$CASSTACK_REDIS_SERVER`.
///
/// ```no_run
/// use casstack::testing::RedisServer;
///
/// let mut server = RedisServer::start();
/// let url = server.url();               // redis://127.0.0.1:PORT
/// server.command(&["CONFIG", "SET", "notify-keyspace-events", "Exe"]);
/// server.kill();                        // SIGKILL, like a crash
/// server.restart();                     // same port, same extra arguments
/// # let _ = url;
/// ```
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence; panics with an install hint if the binary is
    /// missing, or with the server's output if it does not start.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// # let _ = server;
    /// ```
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (later ones win, e.g.
    /// `["--appendonly", "yes"]` for a server whose data survives [`kill`](Self::kill)).
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start_with(&["--maxmemory", "10mb"]);
    /// # let _ = server;
    /// ```
    pub fn start_with(extra: &[&str]) -> RedisServer {
        match RedisServer::try_start(binary(), extra) {
            Ok(server) => server,
            Err(message) => panic!("{message}"),
        }
    }

    /// As [`start_with`](Self::start_with) with a given binary, returning the reason on
    /// failure instead of panicking.
    ///
    /// ```
    /// let err = casstack::testing::RedisServer::try_start("/nonexistent/redis-server".into(), &[])
    ///     .err()
    ///     .unwrap();
    /// assert!(err.contains("apt-get install -y redis-server"), "{err}");
    /// ```
    pub fn try_start(binary: PathBuf, extra: &[&str]) -> Result<RedisServer, String> {
        if !runs(&binary) {
            return Err(format!(
                "cannot run `{}`: Redis tests need redis-server; {INSTALL_HINT}",
                binary.display()
            ));
        }
        let mut last = String::new();
        // A port picked by binding :0 can be taken again before redis binds it: retry.
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let dir = std::env::temp_dir().join(format!(
                "casstack-redis-{}-{port}-{:x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(output) => last = output,
            }
        }
        Err(format!("redis-server did not start:\n{last}"))
    }

    /// `redis://127.0.0.1:PORT`.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert!(server.url().starts_with("redis://127.0.0.1:"));
    /// ```
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert!(server.port() > 0);
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert!(server.pid().is_some());
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (a crash, no shutdown save) and waits for it to exit.
    ///
    /// ```no_run
    /// let mut server = casstack::testing::RedisServer::start();
    /// server.kill();
    /// assert!(server.pid().is_none());
    /// ```
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same arguments (and data directory,
    /// so an append-only file is replayed). Panics if it does not start.
    ///
    /// ```no_run
    /// let mut server = casstack::testing::RedisServer::start();
    /// server.kill();
    /// server.restart();
    /// ```
    pub fn restart(&mut self) {
        self.kill();
        if let Err(output) = self.launch() {
            panic!(
                "redis-server did not restart on port {}:\n{output}",
                self.port
            );
        }
    }

    /// Runs one command on a fresh connection and returns the reply; panics on an error.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert_eq!(server.command(&["PING"]), redis::Value::SimpleString("PONG".into()));
    /// ```
    pub fn command(&self, args: &[&str]) -> redis::Value {
        match self.try_command(args) {
            Ok(value) => value,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// Runs one command on a fresh connection.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert!(server.try_command(&["NOSUCHCOMMAND"]).is_err());
    /// ```
    pub fn try_command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
    }

    /// Every key matching `pattern` (SCAN), as raw bytes.
    ///
    /// ```no_run
    /// let server = casstack::testing::RedisServer::start();
    /// assert!(server.keys("*").is_empty());
    /// ```
    pub fn keys(&self, pattern: &str) -> Vec<Vec<u8>> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("redis connection");
        let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("redis KEYS");
        keys.sort();
        keys
    }

    /// Starts the child and waits for "Ready to accept connections" on its output; on
    /// failure, returns the output.
    fn launch(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--logfile", "", "--loglevel", "notice"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{}`: {e}; {INSTALL_HINT}",
                    self.binary.display()
                )
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log until the server is ready, then keeps draining it so the server never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &ready_tx {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains("Ready to accept connections") {
                        let _ = tx.send(Ok(()));
                        ready_tx = None;
                    }
                }
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(seen));
            }
        });
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(output)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(output)
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("not ready within {READY_TIMEOUT:?}"))
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

fn binary() -> PathBuf {
    std::env::var_os("CASSTACK_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn runs(binary: &PathBuf) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
