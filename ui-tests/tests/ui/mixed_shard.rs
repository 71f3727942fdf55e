casstack::layout!(type Cas = inline r#"
[[shard.stores]]
store.memory = {}
[[shard.stores]]
store.noop = {}
"#);

fn main() {}
