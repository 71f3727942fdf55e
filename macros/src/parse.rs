//! TOML text -> a tree of store nodes, checked against the model, with line and column for
//! every error.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::model::{self, Children, Kind};

/// Deepest layout accepted: nested generic types beyond this overflow rustc's default
/// recursion limit in the crate that awaits the store's futures.
pub(crate) const MAX_DEPTH: usize = 16;

/// A store in the layout and its children.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: &'static Kind,
    pub(crate) children: Vec<Node>,
}

/// The Rust type of a node, relative to the casstack crate root (`FastSlow<Memory, Noop>`).
pub(crate) fn type_path(node: &Node) -> String {
    if node.children.is_empty() || node.kind.children == Children::Inline {
        return node.kind.type_name.to_string();
    }
    let children: Vec<String> = node.children.iter().map(type_path).collect();
    format!("{}<{}>", node.kind.type_name, children.join(", "))
}

/// An error at a place in the TOML text.
#[derive(Debug)]
pub(crate) struct LayoutError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

pub(crate) fn parse(text: &str) -> Result<Node, LayoutError> {
    parse_with(text, model::feature_enabled)
}

/// As [`parse`], with the test of whether a cargo feature is on given by the caller.
fn parse_with(text: &str, feature_enabled: fn(&str) -> bool) -> Result<Node, LayoutError> {
    let root = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().to_string();
        at(text, offset, format!("malformed TOML: {message}"))
    })?;
    let parser = Parser {
        text,
        feature_enabled,
    };
    parser.store(root.get_ref(), root.span().start, "the layout", 1)
}

struct Parser<'a> {
    text: &'a str,
    feature_enabled: fn(&str) -> bool,
}

impl Parser<'_> {
    /// A table that must hold exactly one store key.
    fn store(
        &self,
        table: &DeTable<'_>,
        offset: usize,
        what: &str,
        depth: usize,
    ) -> Result<Node, LayoutError> {
        if depth > MAX_DEPTH {
            return Err(at(
                self.text,
                offset,
                format!(
                    "layout is deeper than {MAX_DEPTH} stores; wrap a subtree in a `boxed` node \
                     (it becomes a BoxStore) or split the layout"
                ),
            ));
        }
        let mut entries = table.iter();
        let Some((key, value)) = entries.next() else {
            return Err(at(self.text, offset, format!("{what} names no store")));
        };
        if let Some((extra, _)) = entries.next() {
            return Err(at(
                self.text,
                extra.span().start,
                format!(
                    "{what} names more than one store (`{}` and `{}`); a store node holds exactly one",
                    key.get_ref(),
                    extra.get_ref()
                ),
            ));
        }
        let name: &str = key.get_ref();
        let kind = model::kind(name).ok_or_else(|| {
            let hint = model::suggestion(name)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            at(
                self.text,
                key.span().start,
                format!("unknown store `{name}`{hint}"),
            )
        })?;
        if let Some(feature) = kind.feature
            && !(self.feature_enabled)(feature)
        {
            return Err(at(
                self.text,
                key.span().start,
                format!("layout uses `{name}` but feature `{feature}` of casstack is not enabled"),
            ));
        }
        let body = self.table(value, &format!("`{name}`"))?;
        let children = match kind.children {
            Children::None => Vec::new(),
            // A boxed subtree is a separate type: its depth starts again.
            Children::Inline => {
                vec![self.store(body, value.span().start, &format!("`{name}`"), 1)?]
            }
            Children::Fields(fields) => fields
                .iter()
                .map(|field| {
                    let child = body.get(*field).ok_or_else(|| {
                        at(
                            self.text,
                            key.span().start,
                            format!("`{name}` needs a `{field}` store"),
                        )
                    })?;
                    let child_table = self.table(child, &format!("`{name}.{field}`"))?;
                    self.store(
                        child_table,
                        child.span().start,
                        &format!("`{name}.{field}`"),
                        depth + 1,
                    )
                })
                .collect::<Result<_, _>>()?,
            Children::ShardList => self.shard(name, key, body, depth)?,
        };
        Ok(Node { kind, children })
    }

    fn shard(
        &self,
        name: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        body: &DeTable<'_>,
        depth: usize,
    ) -> Result<Vec<Node>, LayoutError> {
        let stores = body.get("stores").ok_or_else(|| {
            at(
                self.text,
                key.span().start,
                format!("`{name}` needs a `stores` list"),
            )
        })?;
        let DeValue::Array(items) = stores.get_ref() else {
            return Err(at(
                self.text,
                stores.span().start,
                format!("`{name}.stores` must be a list"),
            ));
        };
        if items.is_empty() {
            return Err(at(
                self.text,
                stores.span().start,
                format!("`{name}.stores` is empty"),
            ));
        }
        let mut children = Vec::with_capacity(items.len());
        for item in items {
            let entry = self.table(item, &format!("an element of `{name}.stores`"))?;
            let store = entry.get("store").ok_or_else(|| {
                at(
                    self.text,
                    item.span().start,
                    format!("each element of `{name}.stores` needs a `store`"),
                )
            })?;
            let table = self.table(store, &format!("`{name}.stores[].store`"))?;
            let child = self.store(
                table,
                store.span().start,
                &format!("`{name}.stores[].store`"),
                depth + 1,
            )?;
            if let Some(first) = children.first()
                && type_path(first) != type_path(&child)
            {
                return Err(at(
                    self.text,
                    store.span().start,
                    format!(
                        "every store of a `{name}` must have the same type; wrap the different \
                         ones in `boxed` nodes"
                    ),
                ));
            }
            children.push(child);
        }
        // `Shard<S>` has one type parameter: the (common) type of its stores.
        children.truncate(1);
        Ok(children)
    }

    fn table<'v, 'de>(
        &self,
        value: &'v Spanned<DeValue<'de>>,
        what: &str,
    ) -> Result<&'v DeTable<'de>, LayoutError> {
        match value.get_ref() {
            DeValue::Table(table) => Ok(table),
            other => Err(at(
                self.text,
                value.span().start,
                format!("{what} must be a table, found {}", type_name(other)),
            )),
        }
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// An error at byte `offset` of `text`, with its 1-based line and column.
fn at(text: &str, offset: usize, message: String) -> LayoutError {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    LayoutError {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(node: &Node) -> String {
        type_path(node)
    }

    #[test]
    fn nested_layout_parses_in_type_parameter_order() {
        let text = r#"
[fast_slow.fast.memory.eviction_policy]
max_bytes = "1gib"

[fast_slow.slow.size_partitioning]
size = "1mib"
upper_store.noop = {}
lower_store.memory = {}
"#;
        assert_eq!(
            names(&parse(text).unwrap()),
            "FastSlow<Memory, SizePartition<Memory, Noop>>"
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        let err = parse("[fast_slow.fast.memroy]\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 17));
        assert!(
            err.message.contains("did you mean `memory`"),
            "{}",
            err.message
        );

        let err = parse("[fast_slow.fast.memory]\n").unwrap_err();
        assert!(
            err.message.contains("needs a `slow` store"),
            "{}",
            err.message
        );

        let err = parse("memory = {}\nnoop = {}\n").unwrap_err();
        assert_eq!(err.line, 2);

        let err = parse("[memory\n").unwrap_err();
        assert!(err.message.starts_with("malformed TOML"), "{}", err.message);

        let err = parse("verify = { backend = 3 }").unwrap_err();
        assert!(
            err.message.contains("must be a table, found an integer"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_store_whose_feature_is_off_is_named_in_the_error() {
        let text = "[verify.backend.redis_store]\naddresses = []\n";
        let err = parse_with(text, |_| false).unwrap_err();
        assert_eq!((err.line, err.column), (1, 17));
        assert_eq!(
            err.message,
            "layout uses `redis_store` but feature `redis` of casstack is not enabled"
        );
        assert!(parse_with(text, |f| f == "redis").is_ok());
    }

    #[test]
    fn shard_children_must_share_one_type() {
        let same = "[[shard.stores]]\nstore.memory = {}\n[[shard.stores]]\nstore.memory = {}\n";
        assert_eq!(names(&parse(same).unwrap()), "Shard<Memory>");
        let mixed = "[[shard.stores]]\nstore.memory = {}\n[[shard.stores]]\nstore.noop = {}\n";
        let err = parse(mixed).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("same type"));
    }

    #[test]
    fn depth_is_limited_and_boxed_starts_it_again() {
        let mut text = String::from("memory = {}");
        for _ in 0..MAX_DEPTH {
            text = format!("verify = {{ backend = {{ {text} }} }}");
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("boxed"), "{}", err.message);
        let boxed = format!("verify = {{ backend = {{ boxed = {{ {text} }} }} }}");
        let err = parse(&boxed).unwrap_err();
        assert!(
            err.message.contains("deeper"),
            "the inside of a box is still checked"
        );
        let ok = "verify = { backend = { boxed = { verify = { backend = { memory = {} } } } } }";
        assert_eq!(names(&parse(ok).unwrap()), "Verify<BoxStore>");
        let mixed =
            "[[shard.stores]]\nstore.boxed.memory = {}\n[[shard.stores]]\nstore.boxed.noop = {}\n";
        assert_eq!(names(&parse(mixed).unwrap()), "Shard<BoxStore>");
    }
}
