//! A 200 MiB blob through the S3 store (moto) with bounded memory: the body is generated and
//! the read checked on the fly, so the test itself holds no copy, and the peak resident set
//! of this process is measured around the put and the get.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use casstack::testing::S3Server;
use casstack::{ByteRange, Store, StoreExt, UploadSize};
use futures_util::StreamExt as _;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 200 * MIB;

/// Byte `p` of the blob: eight bytes per splitmix64 step.
fn word(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn expected(offset: u64, len: usize) -> Vec<u8> {
    let first = offset / 8;
    let words = (offset % 8 + len as u64).div_ceil(8);
    let bytes: Vec<u8> = (first..first + words)
        .flat_map(|i| word(i).to_le_bytes())
        .collect();
    let skip = (offset % 8) as usize;
    bytes[skip..skip + len].to_vec()
}

/// The blob as 1 MiB chunks, made as they are polled.
struct Generated {
    pos: u64,
}

impl futures_core::Stream for Generated {
    type Item = casstack::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pos == SIZE {
            return Poll::Ready(None);
        }
        let chunk = expected(self.pos, MIB as usize);
        self.pos += MIB;
        Poll::Ready(Some(Ok(chunk.into())))
    }
}

/// Peak resident set of this process since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn current_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false if the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_blob_goes_through_with_bounded_memory() {
    let server = S3Server::start();
    let config = server.config(); // 5 MiB parts, at most 4 buffered or in flight
    let parts_budget = config.part_size * config.multipart_max_concurrent_uploads as u64;
    let store = server.fresh_store(config).await;
    store.put_bytes("warm-up", "x".into()).await.unwrap();

    let reset = reset_peak();
    let before = if reset {
        current_rss_kib()
    } else {
        peak_rss_kib()
    };
    let start = Instant::now();
    let n = store
        .put("big".into(), UploadSize::Exact(SIZE), Generated { pos: 0 })
        .await
        .unwrap();
    let put_time = start.elapsed();
    assert_eq!(n, SIZE);
    let put_peak = peak_rss_kib();

    assert_eq!(store.has("big").await.unwrap(), Some(SIZE));
    reset_peak();
    let start = Instant::now();
    let mut reader = store.get("big".into(), ByteRange::FULL).await.unwrap();
    let mut pos = 0u64;
    while let Some(chunk) = reader.next().await {
        let chunk = chunk.unwrap();
        assert!(
            chunk[..] == expected(pos, chunk.len())[..],
            "wrong bytes at {pos}"
        );
        pos += chunk.len() as u64;
    }
    let get_time = start.elapsed();
    assert_eq!(pos, SIZE);
    let get_peak = peak_rss_kib();

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "200 MiB: put {:.1} s ({:.0} MiB/s), get {:.1} s ({:.0} MiB/s); RSS before {:.1} MiB, \
         peak during put {:.1} MiB (+{:.1}), peak during get {:.1} MiB (+{:.1}); part budget {} MiB; \
         peak reset {}",
        put_time.as_secs_f64(),
        200.0 / put_time.as_secs_f64(),
        get_time.as_secs_f64(),
        200.0 / get_time.as_secs_f64(),
        mib(before),
        mib(put_peak),
        mib(put_peak.saturating_sub(before)),
        mib(get_peak),
        mib(get_peak.saturating_sub(before)),
        parts_budget / MIB,
        if reset { "used" } else { "unavailable" },
    );
    // The parts in flight plus connection buffers; far below the 200 MiB blob.
    let bound_kib = (parts_budget / 1024) * 3;
    assert!(
        put_peak - before < bound_kib,
        "put peak grew by {} KiB",
        put_peak - before
    );
    assert!(
        get_peak - before < bound_kib,
        "get peak grew by {} KiB",
        get_peak - before
    );
}
