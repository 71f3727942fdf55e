//! The server's layout: a TOML document with two store nodes, `[cas]` and `[ac]`.
//!
//! ```toml
//! [cas.fast_slow.fast.memory.eviction_policy]
//! max_bytes = "256mib"
//! [cas.fast_slow.slow.filesystem]
//! content_path = "{data}/cas"
//! temp_path = "{data}/tmp/cas"
//!
//! [ac.filesystem]
//! content_path = "{data}/ac"
//! temp_path = "{data}/tmp/ac"
//! ```
//!
//! Each node is a casstack `StoreSpec`. `{data}` anywhere in the text stands for the `--data`
//! directory. The CAS store may be digest-only (`verify`, `size_partitioning`); the AC store
//! must take name keys. With no `--layout`, [`DEFAULT_LAYOUT`] is built with its static type
//! ([`DefaultCas`], [`DefaultAc`]); a layout file is built at run time as `BoxStore`s.

use std::path::Path;

use casstack::{FastSlow, Filesystem, Memory, StoreSpec};
use serde::Deserialize;

/// The built-in layout (`layouts/default.toml`).
pub const DEFAULT_LAYOUT: &str = include_str!("../layouts/default.toml");

/// The CAS store of the built-in layout.
pub type DefaultCas = FastSlow<Memory, Filesystem>;
/// The AC store of the built-in layout.
pub type DefaultAc = Filesystem;

/// The two store nodes of a layout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// The content-addressed store.
    pub cas: StoreSpec,
    /// The action cache (name keys).
    pub ac: StoreSpec,
}

impl Layout {
    /// Parses `text`, with `{data}` replaced by `data`. Errors name the line and column.
    pub fn parse(text: &str, data: &Path) -> Result<Layout, String> {
        let data = data
            .to_str()
            .ok_or_else(|| format!("the data directory {data:?} is not valid UTF-8"))?;
        // Escaped for a TOML basic string, where `{data}` is meant to appear.
        let escaped = data.replace('\\', "\\\\").replace('"', "\\\"");
        let text = text.replace("{data}", &escaped);
        toml::from_str(&text).map_err(|e| format!("invalid layout: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_parses_with_the_data_directory() {
        let layout = Layout::parse(DEFAULT_LAYOUT, Path::new("/srv/c\"a\\che")).unwrap();
        let text = format!("{layout:?}");
        assert!(text.contains(r#"/srv/c\"a\\che/cas"#), "{text}");
        assert_eq!(layout.cas.kind(), "fast_slow");
        assert_eq!(layout.ac.kind(), "filesystem");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = Layout::parse("[cas.memory]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("missing field `ac`"), "{err}");
        let err = Layout::parse("[cas.memroy]\n[ac.memory]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("memroy") && err.contains("line 1"), "{err}");
        let err = Layout::parse("[cas.memory]\n[ac.memory]\n[acc]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("acc"), "{err}");
    }
}

/// TEMP until main's StoreSpec has fast_slow and filesystem.
pub async fn open_default_by_hand(data: &Path) -> Result<(DefaultCas, DefaultAc), String> {
    use casstack::{EvictionPolicy, FilesystemConfig, MemoryConfig};
    let p = |s: &str| data.join(s).to_str().unwrap().to_owned();
    let fs = |c: &str, t: &str, max: u64| FilesystemConfig {
        eviction_policy: EvictionPolicy { max_bytes: max, ..Default::default() },
        ..FilesystemConfig::new(p(c), p(t))
    };
    let cas = FastSlow::new(
        Memory::new(MemoryConfig { eviction_policy: EvictionPolicy { max_bytes: 256 << 20, ..Default::default() } }),
        Filesystem::open(fs("cas", "tmp/cas", 10 << 30)).await.map_err(|e| e.to_string())?,
        Default::default(),
    );
    let ac = Filesystem::open(fs("ac", "tmp/ac", 1 << 30)).await.map_err(|e| e.to_string())?;
    Ok((cas, ac))
}
