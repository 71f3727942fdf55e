casstack::layout!(type Cas = inline r#"
[fast_slow]
fast = { memory = {}, noop = {} }
slow.memory = {}
"#);

fn main() {}
