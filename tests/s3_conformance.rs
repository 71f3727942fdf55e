//! The conformance checker on `S3` and compositions over it, against moto (started by the
//! test on a free loopback port; a fresh bucket per generated case).

use std::sync::OnceLock;

use casstack::testing::{Conformance, S3Server};
use casstack::wrappers::compress::{Compress, CompressConfig};
use casstack::{FastSlow, Memory, S3};

fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

async fn fresh() -> S3 {
    server().fresh_store(server().config()).await
}

/// Every case is a new bucket and many HTTP round trips, so fewer cases than for `Memory`.
fn checker() -> Conformance {
    Conformance::new().cases(48)
}

#[test]
fn s3_conforms() {
    checker().check(fresh);
}

#[test]
fn compress_over_s3_conforms() {
    let frames = CompressConfig {
        block_size: 1024,
        ..Default::default()
    };
    checker().check(|| async move { Compress::new(fresh().await, frames).unwrap() });
}

#[test]
fn memory_over_s3_conforms() {
    checker()
        .check(|| async { FastSlow::new(Memory::default(), fresh().await, Default::default()) });
}
