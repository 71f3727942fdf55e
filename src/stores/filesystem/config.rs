//! [`FilesystemConfig`] and the shell-style expansion of its paths.
//!
//! Compiled whatever the features, so a lean build still parses every layout.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result};
use crate::eviction::EvictionPolicy;

/// Default chunk size of reads: 32 KiB.
pub(crate) const DEFAULT_READ_BUFFER_SIZE: usize = 32 * 1024;
/// Default unit of size accounting: 4096 bytes.
pub(crate) const DEFAULT_BLOCK_SIZE: u64 = 4096;

/// Settings of a `Filesystem` store (NativeLink's `filesystem` spec, same field names).
///
/// Both paths take a leading `~` (the `HOME` directory) and `$VAR` / `${VAR}` environment
/// variables; an unset variable is an error when the store opens, never an empty string.
///
/// ```
/// use casstack::{EvictionPolicy, FilesystemConfig};
///
/// let config = FilesystemConfig {
///     content_path: "~/.cache/casstack/content".into(),
///     temp_path: "~/.cache/casstack/tmp".into(),
///     eviction_policy: EvictionPolicy { max_bytes: 10 << 30, ..Default::default() },
///     ..Default::default()
/// };
/// assert_eq!(config.read_buffer_size, 32 * 1024);
/// assert_eq!(config.block_size, 4096);
/// ```
///
/// Layout (TOML):
/// ```toml
/// [filesystem]
/// content_path = "/var/cache/casstack/content"
/// temp_path = "/var/cache/casstack/tmp"
/// eviction_policy = { max_bytes = 10737418240 }
/// max_concurrent_writes = 64
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Where the objects live: `d/{hash}-{size}` for digests, `s/{escaped name}` for names.
    /// Required (there is no default directory).
    pub content_path: String,
    /// Where uploads are written before they are renamed into `content_path`. Must be on the
    /// same filesystem as `content_path`; every file directly in it is deleted when the store
    /// opens. Required.
    pub temp_path: String,
    /// When to drop least recently used objects (and delete their files). Default: never.
    pub eviction_policy: EvictionPolicy,
    /// Chunk size of reads, in bytes. Default (and when 0): 32 KiB.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub read_buffer_size: usize,
    /// Unit of size accounting: an object counts as its size rounded up to whole blocks.
    /// Default (and when 0): 4096.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub block_size: u64,
    /// How many uploads may be in their final write + fsync step at once. Default: 0 =
    /// unlimited.
    pub max_concurrent_writes: usize,
    /// Whether a digest key's object must be exactly the digest's size: an upload of another
    /// size is refused, and a file of another size is deleted by the startup scan. Default:
    /// true. Turn it off when a wrapper that changes the bytes (`Compress`, `Dedup`'s index
    /// store) sits above this store, since it stores other bytes under digest keys; left on,
    /// every upload through such a wrapper fails with an error that says so.
    pub check_digest_sizes: bool,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            content_path: String::new(),
            temp_path: String::new(),
            eviction_policy: EvictionPolicy::default(),
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            block_size: DEFAULT_BLOCK_SIZE,
            max_concurrent_writes: 0,
            check_digest_sizes: true,
        }
    }
}

impl FilesystemConfig {
    /// A config with the two paths and every other field at its default.
    ///
    /// ```
    /// let c = casstack::FilesystemConfig::new("/data/cas", "/data/tmp");
    /// assert_eq!(c.content_path, "/data/cas");
    /// ```
    pub fn new(content_path: impl Into<String>, temp_path: impl Into<String>) -> Self {
        FilesystemConfig {
            content_path: content_path.into(),
            temp_path: temp_path.into(),
            ..Default::default()
        }
    }

    /// The chunk size of reads, with 0 meaning the default.
    ///
    /// ```
    /// let c = casstack::FilesystemConfig { read_buffer_size: 0, ..Default::default() };
    /// assert_eq!(c.effective_read_buffer_size(), 32 * 1024);
    /// ```
    pub fn effective_read_buffer_size(&self) -> usize {
        if self.read_buffer_size == 0 {
            DEFAULT_READ_BUFFER_SIZE
        } else {
            self.read_buffer_size
        }
    }

    /// The accounting block size, with 0 meaning the default.
    ///
    /// ```
    /// let c = casstack::FilesystemConfig { block_size: 0, ..Default::default() };
    /// assert_eq!(c.effective_block_size(), 4096);
    /// ```
    pub fn effective_block_size(&self) -> u64 {
        if self.block_size == 0 {
            DEFAULT_BLOCK_SIZE
        } else {
            self.block_size
        }
    }

    /// `content_path` and `temp_path` with `~` and environment variables expanded.
    /// `InvalidArgument` if either is empty or names an unset variable.
    ///
    /// ```
    /// let c = casstack::FilesystemConfig::new("/x/${NOT_A_NAME:-default}", "/t");
    /// assert!(c.expanded_paths().is_err(), "`:-` defaults are not supported");
    /// let ok = casstack::FilesystemConfig::new("/srv/cas", "/srv/tmp");
    /// assert_eq!(ok.expanded_paths().unwrap().0, std::path::PathBuf::from("/srv/cas"));
    /// ```
    pub fn expanded_paths(&self) -> Result<(PathBuf, PathBuf)> {
        let content = expand_required("content_path", &self.content_path)?;
        let temp = expand_required("temp_path", &self.temp_path)?;
        Ok((content, temp))
    }
}

fn expand_required(field: &str, raw: &str) -> Result<PathBuf> {
    if raw.is_empty() {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("filesystem store: `{field}` is required"),
        ));
    }
    expand_path(raw, |name| std::env::var(name).ok())
        .map(PathBuf::from)
        .map_err(|e| e.context(format_args!("filesystem store `{field}` = {raw:?}")))
}

/// Expands a leading `~` (alone or followed by `/`) to `HOME`, and `$VAR` / `${VAR}` to the
/// variable's value, looked up with `lookup`. A `$` not followed by a name or `{` stays as is.
pub(crate) fn expand_path(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let unset = |name: &str| {
        Error::new(
            Code::InvalidArgument,
            format!("environment variable `{name}` is not set"),
        )
    };
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    if rest == "~" || rest.starts_with("~/") {
        out.push_str(&lookup("HOME").ok_or_else(|| unset("HOME"))?);
        rest = &rest[1..];
    }
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let Some(close) = braced.find('}') else {
                return Err(Error::new(
                    Code::InvalidArgument,
                    "`${` without a closing `}`",
                ));
            };
            (&braced[..close], close + 2)
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&after[..len], len)
        };
        if consumed == 0 {
            // A lone `$`: keep it.
            out.push('$');
            rest = after;
            continue;
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("`{name}` is not a variable name (only `$VAR` and `${{VAR}}` expand)"),
            ));
        }
        out.push_str(&lookup(name).ok_or_else(|| unset(name))?);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "CACHE" => Some("/var/cache".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn tilde_and_variables_expand() {
        assert_eq!(expand_path("~", env).unwrap(), "/home/me");
        assert_eq!(expand_path("~/cas", env).unwrap(), "/home/me/cas");
        assert_eq!(expand_path("$CACHE/cas", env).unwrap(), "/var/cache/cas");
        assert_eq!(expand_path("${CACHE}cas", env).unwrap(), "/var/cachecas");
        assert_eq!(expand_path("/a/$EMPTY/b", env).unwrap(), "/a//b");
        assert_eq!(expand_path("~/$CACHE", env).unwrap(), "/home/me//var/cache");
    }

    #[test]
    fn literal_text_is_kept() {
        assert_eq!(expand_path("/plain/path", env).unwrap(), "/plain/path");
        assert_eq!(
            expand_path("/a~b/~c", env).unwrap(),
            "/a~b/~c",
            "only a leading ~"
        );
        assert_eq!(expand_path("~user/x", env).unwrap(), "~user/x");
        assert_eq!(expand_path("/cost$/x$", env).unwrap(), "/cost$/x$");
    }

    #[test]
    fn unset_and_malformed_variables_are_errors() {
        for bad in ["$NOPE/x", "${NOPE}", "${CACHE", "${}", "${A-B}"] {
            let err = expand_path(bad, env).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
        let err = expand_path("$NOPE/x", env).unwrap_err();
        assert!(err.message().contains("NOPE"), "{err}");
        let no_home = expand_path("~/x", |_| None).unwrap_err();
        assert!(no_home.message().contains("HOME"), "{no_home}");
    }

    #[test]
    fn config_defaults_and_required_paths() {
        let c = FilesystemConfig::default();
        assert_eq!(c.read_buffer_size, 32 * 1024);
        assert_eq!(c.block_size, 4096);
        assert_eq!(c.max_concurrent_writes, 0);
        let err = c.expanded_paths().unwrap_err();
        assert!(err.message().contains("content_path"), "{err}");
        let err = FilesystemConfig::new("/a", "")
            .expanded_paths()
            .unwrap_err();
        assert!(err.message().contains("temp_path"), "{err}");
        let zeros = FilesystemConfig {
            read_buffer_size: 0,
            block_size: 0,
            ..Default::default()
        };
        assert_eq!(zeros.effective_read_buffer_size(), DEFAULT_READ_BUFFER_SIZE);
        assert_eq!(zeros.effective_block_size(), DEFAULT_BLOCK_SIZE);
    }
}
