//! Layouts: the serde model of a store stack ([`StoreSpec`]), read from TOML (or JSON, for
//! people coming from NativeLink), and [`FromSpec`], which builds a store from it.
//!
//! The shape and field names mirror NativeLink's store spec: one key per store
//! (`memory`, `fast_slow`, ...), children as nested tables. Sizes are written as integers or
//! human strings (`"1mib"` is binary, `"1mb"` decimal, as NativeLink), durations as seconds or
//! strings (`"90s"`, `"30m"`, `"12h"`, `"7d"`).
//!
//! ```
//! use casstack::{FromSpec, Memory, StoreSpec};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
//! let spec = StoreSpec::from_toml(r#"
//! [memory.eviction_policy]
//! max_bytes = "64mib"
//! max_seconds = "1h"
//! "#)?;
//! let store = Memory::from_spec(&spec).await?;
//! # let _ = store;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Deserializer, Serialize};

use crate::boxed::BoxStore;
use crate::error::{Code, Error, Result};
use crate::stores::memory::{Memory, MemoryConfig};
use crate::stores::noop::Noop;

/// One node of a layout: a store and, for wrappers, its children.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml("noop = {}").unwrap();
/// assert_eq!(spec.kind(), "noop");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreSpec {
    /// [`Memory`]: `memory = { eviction_policy = { max_bytes = "1gib" } }`.
    Memory(MemoryConfig),
    /// [`Noop`]: `noop = {}`.
    Noop(NoopSpec),
    /// [`BoxStore`] around the store inside: `boxed = { memory = {} }`. Cuts the static type
    /// of a deep subtree, at the cost of dynamic dispatch at this one level.
    Boxed(Box<StoreSpec>),
}

/// The (empty) settings of a [`Noop`] store.
///
/// ```
/// let spec = casstack::StoreSpec::from_toml("noop = {}").unwrap();
/// assert!(matches!(spec, casstack::StoreSpec::Noop(_)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopSpec {}

impl StoreSpec {
    /// Reads a layout from TOML text. Errors are `InvalidArgument` with the line and column.
    ///
    /// ```
    /// let err = casstack::StoreSpec::from_toml("[memroy]").unwrap_err();
    /// assert!(err.message().contains("memroy"));
    /// ```
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("invalid layout: {e}")))
    }

    /// Reads a layout from JSON text (NativeLink's format, one store node).
    ///
    /// ```
    /// let spec = casstack::StoreSpec::from_json(r#"{ "memory": {} }"#).unwrap();
    /// assert_eq!(spec.kind(), "memory");
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("invalid layout: {e}")))
    }

    /// The store key of this node (`"memory"`, `"fast_slow"`, ...).
    ///
    /// ```
    /// assert_eq!(casstack::StoreSpec::Noop(Default::default()).kind(), "noop");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Memory(_) => "memory",
            StoreSpec::Noop(_) => "noop",
            StoreSpec::Boxed(_) => "boxed",
        }
    }
}

/// Builds a store from its layout node.
///
/// Implemented structurally by every store and wrapper: a wrapper matches its own node and
/// recurses into its children's types. For a static type, a spec of another shape is an
/// `InvalidArgument` error that says where (`fast_slow.slow: expected memory, found noop`).
///
/// ```
/// use casstack::{FromSpec, Memory, StoreSpec};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let spec = StoreSpec::from_toml("noop = {}").unwrap();
/// let err = Memory::from_spec(&spec).await.unwrap_err();
/// assert_eq!(err.message(), "layout: expected `memory`, found `noop`");
/// # }
/// ```
pub trait FromSpec: Sized {
    /// Builds the store from `spec`, the node at `path` in the layout (for error messages;
    /// `""` at the root).
    fn from_spec_at(spec: &StoreSpec, path: &str) -> impl Future<Output = Result<Self>> + Send;

    /// Builds the store from the root of a layout.
    fn from_spec(spec: &StoreSpec) -> impl Future<Output = Result<Self>> + Send {
        Self::from_spec_at(spec, "")
    }
}

/// The error for a node whose store is not the one the static type expects.
pub(crate) fn shape_mismatch(path: &str, expected: &str, found: &StoreSpec) -> Error {
    let at = if path.is_empty() { "layout" } else { path };
    Error::new(
        Code::InvalidArgument,
        format!("{at}: expected `{expected}`, found `{}`", found.kind()),
    )
}

/// The path of a child node, for error messages.
pub(crate) fn child_path(path: &str, kind: &str, child: &str) -> String {
    if path.is_empty() {
        format!("{kind}.{child}")
    } else {
        format!("{path}.{kind}.{child}")
    }
}

impl FromSpec for Memory {
    async fn from_spec_at(spec: &StoreSpec, path: &str) -> Result<Self> {
        match spec {
            StoreSpec::Memory(config) => Ok(Memory::new(config.clone())),
            other => Err(shape_mismatch(path, "memory", other)),
        }
    }
}

impl FromSpec for Noop {
    async fn from_spec_at(spec: &StoreSpec, path: &str) -> Result<Self> {
        match spec {
            StoreSpec::Noop(_) => Ok(Noop),
            other => Err(shape_mismatch(path, "noop", other)),
        }
    }
}

impl FromSpec for BoxStore {
    /// A `boxed` node builds the store inside it; any other node is built as a `BoxStore` of
    /// its own type (the run-time factory for layouts known only at startup).
    async fn from_spec_at(spec: &StoreSpec, path: &str) -> Result<Self> {
        BoxStore::build(spec, path).await
    }
}

impl BoxStore {
    /// Builds any layout at run time.
    ///
    /// ```
    /// use casstack::{BoxStore, StoreExt, StoreSpec};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
    /// let store = BoxStore::from_spec(&StoreSpec::from_toml("memory = {}")?).await?;
    /// store.put_bytes("k", "v".into()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_spec(spec: &StoreSpec) -> Result<BoxStore> {
        BoxStore::build(spec, "").await
    }

    fn build<'a>(
        spec: &'a StoreSpec,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<BoxStore>> + Send + 'a>> {
        // Boxed because the factory recurses through layouts of any depth.
        Box::pin(async move {
            Ok(match spec {
                StoreSpec::Memory(_) => BoxStore::new(Memory::from_spec_at(spec, path).await?),
                StoreSpec::Noop(_) => BoxStore::new(Noop),
                StoreSpec::Boxed(inner) => {
                    BoxStore::build(inner, &child_path(path, "boxed", "")).await?
                }
            })
        })
    }
}

/// Deserializes a byte size: an integer, or a string with a unit (`"64kib"`, `"1.5gb"`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Limits { #[serde(deserialize_with = "casstack::spec::bytes")] max: u64 }
/// let limits: Limits = toml::from_str(r#"max = "2mib""#).unwrap();
/// assert_eq!(limits.max, 2 << 20);
/// ```
pub fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<u64, D::Error> {
    deserializer.deserialize_any(Quantity {
        parse: parse_bytes,
        what: "a byte size",
    })
}

/// Deserializes a duration in whole seconds: an integer, or a string (`"90s"`, `"7d"`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Ttl { #[serde(deserialize_with = "casstack::spec::seconds")] ttl: u64 }
/// let ttl: Ttl = toml::from_str(r#"ttl = "2h""#).unwrap();
/// assert_eq!(ttl.ttl, 7200);
/// ```
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<u64, D::Error> {
    deserializer.deserialize_any(Quantity {
        parse: parse_seconds,
        what: "a duration",
    })
}

/// Parses `"1mib"`, `"10 MB"`, `"512"`: `k`/`m`/`g`/`t` + `b` are powers of 1000, + `ib` of 1024.
///
/// ```
/// assert_eq!(casstack::spec::parse_bytes("1mib"), Some(1_048_576));
/// assert_eq!(casstack::spec::parse_bytes("10MB"), Some(10_000_000));
/// assert_eq!(casstack::spec::parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(text: &str) -> Option<u64> {
    let (number, unit) = split_unit(text)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    scaled(number, scale)
}

/// Parses `"90s"`, `"30m"`, `"12h"`, `"7d"`, `"2w"`, `"120"` into seconds.
///
/// ```
/// assert_eq!(casstack::spec::parse_seconds("7d"), Some(604_800));
/// assert_eq!(casstack::spec::parse_seconds("1h"), Some(3600));
/// assert_eq!(casstack::spec::parse_seconds("soon"), None);
/// ```
pub fn parse_seconds(text: &str) -> Option<u64> {
    let (number, unit) = split_unit(text)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return None,
    };
    scaled(number, scale)
}

fn split_unit(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    (!number.is_empty()).then_some((number, unit.trim()))
}

fn scaled(number: &str, scale: u64) -> Option<u64> {
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale);
    }
    let value = number.parse::<f64>().ok()? * scale as f64;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then_some(value as u64)
}

struct Quantity {
    parse: fn(&str) -> Option<u64>,
    what: &'static str,
}

impl serde::de::Visitor<'_> for Quantity {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (an integer or a string such as \"64mib\" or \"7d\")",
            self.what
        )
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{} cannot be negative: {v}", self.what)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<u64, E> {
        (self.parse)(v).ok_or_else(|| E::custom(format!("not {}: {v:?}", self.what)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::EvictionPolicy;

    #[test]
    fn sizes_follow_nativelink_units() {
        assert_eq!(parse_bytes("1kb"), Some(1000));
        assert_eq!(parse_bytes("2gb"), Some(2_000_000_000));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5 kib"), Some(1536));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("kb"), None);
        assert_eq!(
            parse_bytes("99999999999tb"),
            None,
            "overflow is an error, not a wrap"
        );
    }

    #[test]
    fn memory_layout_reads_human_units() {
        let spec = StoreSpec::from_toml(
            "[memory.eviction_policy]\nmax_bytes = \"2gb\"\nevict_bytes = \"200mb\"\nmax_seconds = \"7d\"\n",
        )
        .unwrap();
        let StoreSpec::Memory(config) = spec else {
            panic!("{spec:?}")
        };
        assert_eq!(
            config.eviction_policy,
            EvictionPolicy {
                max_bytes: 2_000_000_000,
                evict_bytes: 200_000_000,
                max_seconds: 604_800,
                max_count: 0
            }
        );
    }

    #[test]
    fn bad_layouts_are_clear_errors() {
        for (text, needle) in [
            ("[memroy]", "memroy"),
            (
                "memory = { eviction_policy = { max_bytes = \"lots\" } }",
                "not a byte size",
            ),
            (
                "memory = { eviction_policy = { max_bytes = -1 } }",
                "negative",
            ),
            ("memory = { colour = 3 }", "colour"),
            ("memory = {}\nnoop = {}", ""),
            ("[memory", "invalid layout"),
        ] {
            let err = StoreSpec::from_toml(text).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(needle), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn static_types_say_where_the_shape_differs() {
        let spec = StoreSpec::from_toml("noop = {}").unwrap();
        let err = Memory::from_spec(&spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("expected `memory`, found `noop`"));
    }

    #[tokio::test]
    async fn box_store_builds_any_layout() {
        use crate::store::StoreExt;
        let spec = StoreSpec::from_toml("boxed.boxed.memory = {}").unwrap();
        let store = BoxStore::from_spec(&spec).await.unwrap();
        store.put_bytes("k", "v".into()).await.unwrap();
        assert_eq!(store.get_bytes("k").await.unwrap(), "v");
        let json = StoreSpec::from_json(r#"{"noop": {}}"#).unwrap();
        assert_eq!(json.kind(), "noop");
    }
}
