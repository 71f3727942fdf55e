//! Compile errors of `layout!`: each case under tests/ui/ must fail with exactly the message
//! checked in next to it. The messages are ours, one line each; rustc only frames them, so a
//! compiler update rarely changes them. Re-bless after a toolchain update with
//! `TRYBUILD=overwrite cargo test -p casstack-ui-tests` and review the diff.

#[test]
fn layout_errors_are_one_line_with_the_toml_position() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
