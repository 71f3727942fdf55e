//! Leaf stores: where the bytes live.

pub mod memory;
pub mod noop;
pub mod redis;
