//! Compile-fail tests of `casstack::layout!` live in `tests/`.
