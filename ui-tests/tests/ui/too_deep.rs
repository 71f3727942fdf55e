casstack::layout!(type Cas = inline r#"
verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.verify.backend.memory = {}
"#);

fn main() {}
