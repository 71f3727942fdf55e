casstack::layout!(type Cas = inline r#"
verify = { backend = "memory" }
"#);

fn main() {}
