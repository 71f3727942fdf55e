//! Command-line flags (a handful, parsed by hand).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What `--help` prints.
pub const USAGE: &str = "\
casstack-serve: an HTTP build cache (bazel-remote's protocol: GET/HEAD/PUT /cas/{sha256} and
/ac/{sha256}, optionally under /{instance}/) built from a casstack layout.

Usage: casstack-serve [OPTIONS]

Options:
  --addr HOST:PORT   where to listen (default 127.0.0.1:8080; port 0 picks a free port)
  --layout FILE      the layout: one store node (CAS by digest, AC by name in one store), or
                     [cas] and [ac] store nodes (default: built in, layouts/local.toml:
                     FastSlow<Memory, Filesystem> under --data)
  --data DIR         the data directory, $CASSTACK_DATA in a layout (default
                     $CASSTACK_DATA, else $XDG_CACHE_HOME/casstack or $HOME/.cache/casstack)
  --grace SECONDS    on Ctrl-C / SIGTERM, how long in-flight requests may take to finish
                     before they are aborted (default 10)
  --upload-idle-timeout SECONDS
                     abandon an upload (answered 408, nothing stored) when its client sends
                     no body bytes for this long (default 60)
  -h, --help         print this

Requests are logged at debug level: RUST_LOG=debug casstack-serve
";

/// The parsed flags.
#[derive(Debug)]
pub struct Args {
    /// `--addr`.
    pub addr: SocketAddr,
    /// `--layout`.
    pub layout: Option<PathBuf>,
    /// `--data` (or the default).
    pub data: PathBuf,
    /// `--grace`.
    pub grace: Duration,
    /// `--upload-idle-timeout`.
    pub upload_idle_timeout: Duration,
}

/// The default of `--upload-idle-timeout`: long enough for a client busy hashing or reading a
/// large file between writes, short enough that stalled clients do not pile up.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the flags did not give [`Args`].
#[derive(Debug)]
pub enum Exit {
    /// `--help`.
    Help,
    /// A usage error, with its message.
    Usage(String),
}

impl Args {
    /// Parses the flags (without the program name).
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, Exit> {
        let mut addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        let mut layout = None;
        let mut data = None;
        let mut grace = Duration::from_secs(10);
        let mut upload_idle_timeout = DEFAULT_UPLOAD_IDLE_TIMEOUT;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| Exit::Usage(format!("unexpected argument {a:?}")))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.into()))
                }
                _ => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Err(Exit::Help);
            }
            let mut value = || -> Result<OsString, Exit> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| Exit::Usage(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--addr" => {
                    let v = value()?;
                    let text = v.to_string_lossy();
                    addr = text.parse().map_err(|_| {
                        Exit::Usage(format!(
                            "--addr {text:?} is not HOST:PORT (e.g. 127.0.0.1:8080)"
                        ))
                    })?;
                }
                "--layout" => layout = Some(PathBuf::from(value()?)),
                "--data" => data = Some(PathBuf::from(value()?)),
                "--grace" => grace = seconds(&flag, &value()?)?,
                "--upload-idle-timeout" => {
                    upload_idle_timeout = seconds(&flag, &value()?)?;
                    if upload_idle_timeout.is_zero() {
                        return Err(Exit::Usage(
                            "--upload-idle-timeout must be more than 0 seconds".into(),
                        ));
                    }
                }
                other => {
                    return Err(Exit::Usage(format!(
                        "unknown option {other:?} (see --help)"
                    )));
                }
            }
        }
        let data = match data {
            Some(data) => data,
            None => default_data_dir().ok_or_else(|| {
                Exit::Usage("no cache directory: set HOME or XDG_CACHE_HOME, or pass --data".into())
            })?,
        };
        Ok(Args {
            addr,
            layout,
            data,
            grace,
            upload_idle_timeout,
        })
    }
}

/// A flag's value as a number of seconds (fractions allowed).
fn seconds(flag: &str, value: &OsString) -> Result<Duration, Exit> {
    let text = value.to_string_lossy();
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| Exit::Usage(format!("{flag} {text:?} is not a number of seconds")))
}

/// `$CASSTACK_DATA`, else `$XDG_CACHE_HOME/casstack`, else `$HOME/.cache/casstack`.
fn default_data_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("CASSTACK_DATA")
        .or_else(|| absolute("XDG_CACHE_HOME").map(|cache| cache.join("casstack")))
        .or_else(|| absolute("HOME").map(|home| home.join(".cache").join("casstack")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, Exit> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--addr",
            "127.0.0.1:0",
            "--layout=l.toml",
            "--data",
            "/d",
            "--grace",
            "0.5",
            "--upload-idle-timeout=0.25",
        ])
        .unwrap();
        assert_eq!(a.addr.port(), 0);
        assert_eq!(a.layout.unwrap(), PathBuf::from("l.toml"));
        assert_eq!(a.data, PathBuf::from("/d"));
        assert_eq!(a.grace, Duration::from_millis(500));
        assert_eq!(a.upload_idle_timeout, Duration::from_millis(250));
        let a = parse(&["--data", "/d"]).unwrap();
        assert_eq!(a.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(a.upload_idle_timeout, DEFAULT_UPLOAD_IDLE_TIMEOUT);
        assert!(a.layout.is_none());
    }

    #[test]
    fn usage_errors() {
        let msg = |args: &[&str]| match parse(args) {
            Err(Exit::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(&["--addr", "localhost"]).contains("HOST:PORT"));
        assert!(msg(&["--data"]).contains("needs a value"));
        assert!(msg(&["--grace", "-1", "--data", "/d"]).contains("seconds"));
        assert!(msg(&["--upload-idle-timeout", "soon"]).contains("not a number of seconds"));
        assert!(msg(&["--upload-idle-timeout", "0", "--data", "/d"]).contains("more than 0"));
        assert!(msg(&["--port", "1"]).contains("unknown option"));
        assert!(matches!(parse(&["-h"]), Err(Exit::Help)));
    }
}
