//! The server's layout, in one of two forms.
//!
//! - **One store node** (any casstack layout, such as those under the repository's
//!   `layouts/`): CAS objects under digest keys and AC entries under name keys, in the same
//!   store. Its root must take name keys (`memory`, `filesystem`, `fast_slow`, `shard`, ...;
//!   not `size_partitioning` or `verify`). The built-in default is this form:
//!   `layouts/local.toml`, `FastSlow<Memory, Filesystem>`.
//! - **Two store nodes**, `[cas]` and `[ac]` (`serve/layouts/split.toml`): the CAS may then
//!   be digest-only, and the AC gets an eviction budget of its own.
//!
//! ```toml
//! [cas.fast_slow.fast.memory.eviction_policy]
//! max_bytes = "256mib"
//! [cas.fast_slow.slow.filesystem]
//! content_path = "$CASSTACK_DATA/cas"
//! temp_path = "$CASSTACK_DATA/tmp/cas"
//!
//! [ac.filesystem]
//! content_path = "$CASSTACK_DATA/ac"
//! temp_path = "$CASSTACK_DATA/tmp/ac"
//! ```
//!
//! `$CASSTACK_DATA` (or `${CASSTACK_DATA}`) anywhere in the text is the `--data` directory;
//! other `$VARS` in filesystem paths are expanded by the store from the environment. The
//! built-in layout is built with its static type, [`DefaultStore`], which `casstack::layout!`
//! derives from the same file at build time; a layout file is built at run time as
//! `BoxStore`s.

use std::path::Path;

use casstack::StoreSpec;
use serde::Deserialize;

/// The built-in layout (the repository's `layouts/local.toml`).
pub const DEFAULT_LAYOUT: &str = include_str!("../../layouts/local.toml");

// The store type of the built-in layout, `FastSlow<Memory, Filesystem>`, read from the same
// file at build time.
casstack::layout!(pub(crate) type DefaultStore = "../layouts/local.toml");

/// A parsed layout.
#[derive(Debug)]
pub enum Layout {
    /// One store for both: CAS under digests, AC under names.
    Shared(StoreSpec),
    /// A store each.
    Split {
        /// The content-addressed store.
        cas: StoreSpec,
        /// The action cache (name keys).
        ac: StoreSpec,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitLayout {
    cas: StoreSpec,
    ac: StoreSpec,
}

impl Layout {
    /// Parses `text`, with `$CASSTACK_DATA` replaced by `data`. Errors name line and column.
    pub fn parse(text: &str, data: &Path) -> Result<Layout, String> {
        let data = data
            .to_str()
            .ok_or_else(|| format!("the data directory {data:?} is not valid UTF-8"))?;
        // Escaped for a TOML basic string, where the variable is meant to appear.
        let escaped = data.replace('\\', "\\\\").replace('"', "\\\"");
        let text = substitute_data(text, &escaped);
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("invalid layout: {e}"))?;
        if table.contains_key("cas") || table.contains_key("ac") {
            let split: SplitLayout =
                toml::from_str(&text).map_err(|e| format!("invalid layout: {e}"))?;
            Ok(Layout::Split {
                cas: split.cas,
                ac: split.ac,
            })
        } else {
            StoreSpec::from_toml(&text)
                .map(Layout::Shared)
                .map_err(|e| e.message().to_owned())
        }
    }
}

/// Replaces `$CASSTACK_DATA` and `${CASSTACK_DATA}` (not `$CASSTACK_DATA_X`) by `value`.
fn substitute_data(text: &str, value: &str) -> String {
    const NAME: &str = "CASSTACK_DATA";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after
            .strip_prefix('{')
            .and_then(|a| a.strip_prefix(NAME))
            .and_then(|a| a.strip_prefix('}'))
        {
            out.push_str(value);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix(NAME)
            && !tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push_str(value);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_parses_with_the_data_directory() {
        let Layout::Shared(spec) =
            Layout::parse(DEFAULT_LAYOUT, Path::new("/srv/c\"a\\che")).unwrap()
        else {
            panic!("the default layout is one store");
        };
        let text = format!("{spec:?}");
        assert!(text.contains(r#"/srv/c\"a\\che/content"#), "{text}");
        assert_eq!(spec.kind(), "fast_slow");
    }

    #[test]
    fn split_layout() {
        let text = include_str!("../layouts/split.toml");
        let Layout::Split { cas, ac } = Layout::parse(text, Path::new("/d")).unwrap() else {
            panic!("split.toml has [cas] and [ac]");
        };
        assert_eq!((cas.kind(), ac.kind()), ("fast_slow", "filesystem"));
        assert!(format!("{ac:?}").contains("\"/d/ac\""));
    }

    #[test]
    fn substitution() {
        let s = |t| substitute_data(t, "/x");
        assert_eq!(s("$CASSTACK_DATA/a ${CASSTACK_DATA}b"), "/x/a /xb");
        assert_eq!(
            s("$CASSTACK_DATA_X $HOME $ ${OTHER} $"),
            "$CASSTACK_DATA_X $HOME $ ${OTHER} $"
        );
        assert_eq!(s("$$CASSTACK_DATA"), "$/x");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = Layout::parse("[cas.memory]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("missing field `ac`"), "{err}");
        let err = Layout::parse("[cas.memroy]\n[ac.memory]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("memroy") && err.contains("line 1"), "{err}");
        let err = Layout::parse("[cas.memory]\n[ac.memory]\n[acc]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("acc"), "{err}");
        let err = Layout::parse("\n[memroy]\n", Path::new("/d")).unwrap_err();
        assert!(err.contains("memroy") && err.contains("line 2"), "{err}");
        let err = Layout::parse("memory = {", Path::new("/d")).unwrap_err();
        assert!(err.contains("invalid layout"), "{err}");
    }
}
