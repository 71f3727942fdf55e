//! Procedural macros for [casstack](https://docs.rs/casstack).
//!
//! The `layout!` macro (a TOML layout file turned into the matching store type) lands with the
//! layouts issue; this crate is a placeholder so the workspace shape is fixed from the start.
#![forbid(unsafe_code)]
