casstack::layout!(type Cas = inline r#"
[fast_slow.fast.memory]
"#);

fn main() {}
