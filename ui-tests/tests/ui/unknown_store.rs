casstack::layout!(type Cas = inline r#"
[fast_slow.fast.memroy]
[fast_slow.slow.memory]
"#);

fn main() {}
