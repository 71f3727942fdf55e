//! Exponential backoff with jitter, and the retry loop every S3 request goes through.
//!
//! A small loop rather than a retry crate: the rules (which failures are transient, the
//! NativeLink-compatible `delay`/`jitter` config shared with `Redis`, resuming a read stream)
//! are the store's own, and the loop is twenty lines.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::error::{Code, Error, Result};

use crate::stores::redis::RetryConfig;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// True for failures worth another attempt: 5xx, throttling, timeouts, broken connections.
/// The client maps exactly those to `Unavailable` or `DeadlineExceeded`.
pub(crate) fn is_transient(error: &Error) -> bool {
    matches!(error.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// The wait before retry number `retry` (1 = the first retry).
pub(crate) fn backoff(config: &RetryConfig, retry: u32) -> Duration {
    config.backoff(retry, unit_random()).min(MAX_BACKOFF)
}

/// A number in `[0, 1)`, from the standard library's per-instance random hash keys.
fn unit_random() -> f64 {
    let bits = RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or `max_retries`
/// retries are spent; then the last error, turned `Unavailable` and saying how many attempts
/// were made.
pub(crate) async fn retry<T, F, Fut>(config: &RetryConfig, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) && retries < config.max_retries => {
                retries += 1;
                tokio::time::sleep(backoff(config, retries)).await;
            }
            Err(e) if is_transient(&e) => return Err(gave_up(e, retries + 1)),
            Err(e) => return Err(e),
        }
    }
}

/// The error of a transient failure after the last attempt.
pub(crate) fn gave_up(error: Error, attempts: u32) -> Error {
    let message = format!("gave up after {attempts} attempt(s): {}", error.message());
    let mut out = Error::new(Code::Unavailable, message);
    if let Some(key) = error.key() {
        out = out.with_key(key.clone());
    }
    out.with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn config(max_retries: u32, jitter: f64) -> RetryConfig {
        RetryConfig {
            max_retries,
            delay: 1.0,
            jitter,
        }
    }

    #[test]
    fn backoff_doubles_from_delay_and_jitter_stays_in_its_band() {
        let c = config(5, 0.0);
        let waits: Vec<_> = (1..=4).map(|k| backoff(&c, k).as_secs_f64()).collect();
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0]);
        assert_eq!(backoff(&c, 60), MAX_BACKOFF);
        let jittered = config(5, 0.5);
        let samples: Vec<f64> = (0..200)
            .map(|_| backoff(&jittered, 2).as_secs_f64())
            .collect();
        assert!(
            samples.iter().all(|w| (1.5..2.5).contains(w)),
            "{samples:?}"
        );
        assert!(
            samples.iter().any(|w| *w < 1.9) && samples.iter().any(|w| *w > 2.1),
            "jitter spreads the waits: {samples:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_succeed() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out = retry(&config(3, 0.0), || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(Error::new(Code::Unavailable, "503")),
                1 => Err(Error::new(Code::DeadlineExceeded, "timeout")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "waited 1 s then 2 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = retry(&config(3, 0.0), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Error::new(Code::PermissionDenied, "403"))
        })
        .await;
        assert_eq!(out.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_are_unavailable_and_count_attempts() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = retry(&config(2, 0.0), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Error::new(Code::DeadlineExceeded, "timeout").with_key("k"))
        })
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("3 attempt"), "{err}");
        assert_eq!(err.key().and_then(|k| k.name()), Some("k"));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
