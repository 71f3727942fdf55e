//! Leaf stores: where the bytes live.

pub mod filesystem;
pub mod memory;
pub mod noop;
pub mod redis;
pub mod s3;
