//! The shape of a layout: which stores exist, their children, the cargo feature each needs
//! and the type it becomes. Only the shape: field values are checked at run time by serde.
//!
//! This table mirrors casstack's `StoreSpec`; a test in casstack expands every example layout
//! with this macro and also builds it from its spec, so the two cannot drift apart.

/// How a store's children are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Children {
    /// A leaf: no child stores.
    None,
    /// Named child fields, each holding one store, in type-parameter order.
    Fields(&'static [&'static str]),
    /// `stores = [{ store = {..}, weight = N }, ..]`: one type for every element.
    ShardList,
    /// The node's own table is one store (`boxed = { memory = {} }`).
    Inline,
}

/// One kind of store in a layout.
#[derive(Debug)]
pub(crate) struct Kind {
    /// The key in the layout (`fast_slow`).
    pub(crate) name: &'static str,
    /// The type, relative to the casstack crate root (`FastSlow`).
    pub(crate) type_name: &'static str,
    pub(crate) children: Children,
    /// The cargo feature of casstack it needs, if any.
    pub(crate) feature: Option<&'static str>,
}

/// Every store a layout may name.
pub(crate) const KINDS: &[Kind] = &[
    Kind {
        name: "memory",
        type_name: "Memory",
        children: Children::None,
        feature: None,
    },
    Kind {
        name: "noop",
        type_name: "Noop",
        children: Children::None,
        feature: None,
    },
    Kind {
        name: "filesystem",
        type_name: "Filesystem",
        children: Children::None,
        feature: Some("fs"),
    },
    Kind {
        name: "redis_store",
        type_name: "Redis",
        children: Children::None,
        feature: Some("redis"),
    },
    Kind {
        name: "s3_store",
        type_name: "S3",
        children: Children::None,
        feature: Some("s3"),
    },
    Kind {
        name: "fast_slow",
        type_name: "FastSlow",
        children: Children::Fields(&["fast", "slow"]),
        feature: None,
    },
    Kind {
        name: "size_partitioning",
        type_name: "SizePartition",
        children: Children::Fields(&["lower_store", "upper_store"]),
        feature: None,
    },
    Kind {
        name: "compression",
        type_name: "Compress",
        children: Children::Fields(&["backend"]),
        feature: Some("zstd"),
    },
    Kind {
        name: "dedup",
        type_name: "Dedup",
        children: Children::Fields(&["index_store", "content_store"]),
        feature: Some("dedup"),
    },
    Kind {
        name: "verify",
        type_name: "Verify",
        children: Children::Fields(&["backend"]),
        feature: None,
    },
    Kind {
        name: "existence_cache",
        type_name: "ExistenceCache",
        children: Children::Fields(&["backend"]),
        feature: None,
    },
    Kind {
        name: "shard",
        type_name: "Shard",
        children: Children::ShardList,
        feature: None,
    },
    Kind {
        name: "metrics",
        type_name: "Metrics",
        children: Children::Fields(&["backend"]),
        feature: Some("metrics"),
    },
    Kind {
        name: "boxed",
        type_name: "BoxStore",
        children: Children::Inline,
        feature: None,
    },
    // A store registered by name, type-erased: its type is not in the layout.
    Kind {
        name: "ref_store",
        type_name: "Ref<::casstack::BoxStore>",
        children: Children::None,
        feature: None,
    },
];

/// Whether the macro was built with the mirror of casstack's feature `name`.
// Each arm is a build-time constant, which is what makes clippy see a `matches!`.
#[allow(clippy::match_like_matches_macro)]
pub(crate) fn feature_enabled(name: &str) -> bool {
    match name {
        "fs" => cfg!(feature = "fs"),
        "redis" => cfg!(feature = "redis"),
        "s3" => cfg!(feature = "s3"),
        "zstd" => cfg!(feature = "zstd"),
        "dedup" => cfg!(feature = "dedup"),
        "metrics" => cfg!(feature = "metrics"),
        _ => false,
    }
}

pub(crate) fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The known store name closest to `name`, if it is close enough to be a typo.
pub(crate) fn suggestion(name: &str) -> Option<&'static str> {
    // `redis` for `redis_store`, `compress` for `compression`.
    if name.len() >= 2
        && let Some(kind) = KINDS.iter().find(|k| k.name.starts_with(name))
    {
        return Some(kind.name);
    }
    KINDS
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        assert_eq!(suggestion("memroy"), Some("memory"));
        assert_eq!(suggestion("fastslow"), Some("fast_slow"));
        assert_eq!(suggestion("redis"), Some("redis_store"));
        assert_eq!(suggestion("compress"), Some("compression"));
        assert_eq!(suggestion("zzzzzzzz"), None);
    }
}
