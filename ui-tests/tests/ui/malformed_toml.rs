casstack::layout!(type Cas = inline "[memory\nmax_bytes = 1");

fn main() {}
