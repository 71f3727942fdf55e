casstack::layout!(pub type Cas = "no/such/layout.toml");

fn main() {}
