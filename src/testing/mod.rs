//! Test any store or composition against a reference model (feature `testing`).
//!
//! [`Conformance`] generates random sequences of `put`, ranged `get`, `has_many`, failing and
//! abandoned uploads, concurrent groups of those, and (optionally) restarts; it runs each
//! sequence on a fresh store on a two-thread tokio runtime, and compares every answer with a
//! model of what the store must hold. On a mismatch, proptest shrinks the sequence to a
//! minimal one and the report shows it step by step.
//!
//! The model allows only what a layout may legally do:
//! - a store built with [`may_forget`](Conformance::may_forget) (eviction, TTL, `Noop`) may
//!   answer "absent" for anything it was given, and refuse an upload as `ResourceExhausted`;
//! - no store may ever return bytes other than the last ones stored under the key, a partial
//!   object, a size other than the object's, or something it was never given;
//! - an upload whose body fails, ends short, runs long or is abandoned must fail and change
//!   nothing;
//! - the empty blob is always present and reads as empty.
//!
//! # Checking your own composition
//!
//! ```
//! use casstack::testing::Conformance;
//! use casstack::{EvictionPolicy, Memory, MemoryConfig};
//!
//! // In a #[test] function:
//! Conformance::new()
//!     .cases(8)
//!     .may_forget(true)
//!     .check(|| async {
//!         Memory::new(MemoryConfig {
//!             eviction_policy: EvictionPolicy { max_bytes: 4096, ..Default::default() },
//!         })
//!     });
//! ```
//!
//! # Fault injection
//!
//! [`Faulty`] wraps a store and fails, stalls or cuts the streams of chosen calls, and counts
//! calls: for testing what a composition does when one part misbehaves.
//!
//! # A local S3 server
//!
//! With the `s3` feature, [`S3Server`] starts moto on a free loopback port for tests of the
//! `S3` store and compositions over it.
//!
//! Stores that keep data across restarts add a reopen step with
//! [`check_with_reopen`](Conformance::check_with_reopen); stores that take only digest keys
//! turn names off with [`name_keys(false)`](Conformance::name_keys).

mod faulty;
mod model;
#[cfg(feature = "redis")]
mod redis_server;
#[cfg(feature = "s3")]
mod s3_server;
mod strategy;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use proptest::test_runner::{Config, TestError, TestRunner};

use crate::store::Store;

pub use crate::sample_data::{noise, text};
pub use faulty::{CutStream, Fault, Faulty, Operation};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_server::RedisServer;
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use s3_server::{MOTO_INSTALL_HINT, S3Server};
pub use strategy::{
    BlobSpec, BodyFault, Case, Content, Op, blob, byte_range, digest_key, name_key,
};

type Reopen<'a, S> = &'a (dyn Fn(S) -> Pin<Box<dyn Future<Output = S> + Send>> + Sync);

/// The model-based conformance checker. See the [module docs](self).
///
/// ```
/// casstack::testing::Conformance::new().cases(4).check(|| async { casstack::Memory::default() });
/// ```
#[derive(Clone, Debug)]
pub struct Conformance {
    cases: u32,
    may_forget: bool,
    name_keys: bool,
    concurrent: bool,
    max_blob_size: usize,
    max_ops: usize,
}

impl Default for Conformance {
    fn default() -> Self {
        Conformance::new()
    }
}

impl Conformance {
    /// 64 cases of up to 24 steps over blobs of up to 16 KiB, with name keys and concurrent
    /// groups; the store must keep everything.
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new();
    /// # let _ = checker;
    /// ```
    pub fn new() -> Self {
        Conformance {
            cases: 64,
            may_forget: false,
            name_keys: true,
            concurrent: true,
            max_blob_size: 16 << 10,
            max_ops: 24,
        }
    }

    /// How many random sequences to run.
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().cases(200);
    /// # let _ = checker;
    /// ```
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases;
        self
    }

    /// Whether the store may drop what it was given (an evicting or expiring tier, `Noop`).
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().may_forget(true);
    /// # let _ = checker;
    /// ```
    pub fn may_forget(mut self, yes: bool) -> Self {
        self.may_forget = yes;
        self
    }

    /// Whether to use name keys too (turn off for digest-only stores).
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().name_keys(false);
    /// # let _ = checker;
    /// ```
    pub fn name_keys(mut self, yes: bool) -> Self {
        self.name_keys = yes;
        self
    }

    /// Whether to run groups of steps concurrently.
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().concurrent(false);
    /// # let _ = checker;
    /// ```
    pub fn concurrent(mut self, yes: bool) -> Self {
        self.concurrent = yes;
        self
    }

    /// The largest blob to generate (chunked bodies use chunks up to this size too).
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().max_blob_size(1 << 20);
    /// # let _ = checker;
    /// ```
    pub fn max_blob_size(mut self, bytes: usize) -> Self {
        self.max_blob_size = bytes;
        self
    }

    /// The most steps in one sequence.
    ///
    /// ```
    /// let checker = casstack::testing::Conformance::new().max_ops(50);
    /// # let _ = checker;
    /// ```
    pub fn max_ops(mut self, steps: usize) -> Self {
        self.max_ops = steps.max(1);
        self
    }

    /// Runs the checker on stores made by `make` (one fresh store per case) and returns the
    /// minimal failing sequence, if any.
    ///
    /// ```
    /// let result = casstack::testing::Conformance::new()
    ///     .cases(4)
    ///     .run(|| async { casstack::Noop });
    /// assert!(result.is_err(), "Noop forgets, and may_forget is off");
    /// ```
    pub fn run<S, F, Fut>(&self, make: F) -> Result<(), Failure>
    where
        S: Store,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
    {
        self.run_inner(make, None)
    }

    /// As [`run`](Self::run), with restart steps: `reopen` gets the running store and returns
    /// it closed and opened again (for example over the same directory).
    ///
    /// ```
    /// let result = casstack::testing::Conformance::new()
    ///     .cases(4)
    ///     .run_with_reopen(|| async { casstack::Memory::default() }, |store| async move { store });
    /// assert!(result.is_ok());
    /// ```
    pub fn run_with_reopen<S, F, Fut, R, RFut>(&self, make: F, reopen: R) -> Result<(), Failure>
    where
        S: Store,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
        R: Fn(S) -> RFut + Sync,
        RFut: Future<Output = S> + Send + 'static,
    {
        let boxed =
            move |store: S| -> Pin<Box<dyn Future<Output = S> + Send>> { Box::pin(reopen(store)) };
        self.run_inner(make, Some(&boxed))
    }

    /// As [`run`](Self::run), panicking with the report on failure: call it from a `#[test]`.
    ///
    /// ```
    /// casstack::testing::Conformance::new().cases(4).check(|| async { casstack::Memory::default() });
    /// ```
    pub fn check<S, F, Fut>(&self, make: F)
    where
        S: Store,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
    {
        if let Err(failure) = self.run(make) {
            panic!("{failure}");
        }
    }

    /// As [`run_with_reopen`](Self::run_with_reopen), panicking with the report on failure.
    ///
    /// ```
    /// casstack::testing::Conformance::new()
    ///     .cases(4)
    ///     .check_with_reopen(|| async { casstack::Memory::default() }, |store| async move { store });
    /// ```
    pub fn check_with_reopen<S, F, Fut, R, RFut>(&self, make: F, reopen: R)
    where
        S: Store,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
        R: Fn(S) -> RFut + Sync,
        RFut: Future<Output = S> + Send + 'static,
    {
        if let Err(failure) = self.run_with_reopen(make, reopen) {
            panic!("{failure}");
        }
    }

    fn run_inner<S, F, Fut>(&self, make: F, reopen: Option<Reopen<'_, S>>) -> Result<(), Failure>
    where
        S: Store,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failure {
                message: format!("cannot start a tokio runtime: {e}"),
                case: String::new(),
            })?;
        let shape = strategy::Shape {
            max_blob: self.max_blob_size,
            name_keys: self.name_keys,
            reopen: reopen.is_some(),
            concurrent: self.concurrent,
            max_ops: self.max_ops,
        };
        let config = Config {
            cases: self.cases,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let may_forget = self.may_forget;
        let result = runner.run(&strategy::case(shape), |case| {
            runtime.block_on(async {
                let store = make().await;
                model::run_case(store, &case, may_forget, reopen).await
            })
        });
        match result {
            Ok(()) => Ok(()),
            Err(TestError::Fail(reason, case)) => Err(Failure {
                message: reason.message().to_string(),
                case: format!("{case:#?}"),
            }),
            Err(TestError::Abort(reason)) => Err(Failure {
                message: format!("the checker gave up: {reason}"),
                case: String::new(),
            }),
        }
    }
}

/// What the checker found: the first wrong answer in the minimal failing sequence.
///
/// ```
/// let failure = casstack::testing::Conformance::new().cases(4).run(|| async { casstack::Noop }).unwrap_err();
/// assert!(failure.message().contains("absent"), "Noop forgot an upload: {failure}");
/// ```
#[derive(Clone, Debug)]
pub struct Failure {
    message: String,
    case: String,
}

impl Failure {
    /// The wrong answer and the step that got it.
    ///
    /// ```
    /// # let failure = casstack::testing::Conformance::new().cases(4).run(|| async { casstack::Noop }).unwrap_err();
    /// println!("{}", failure.message());
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The minimal failing sequence, pretty-printed.
    ///
    /// ```
    /// # let failure = casstack::testing::Conformance::new().cases(4).run(|| async { casstack::Noop }).unwrap_err();
    /// assert!(failure.case().contains("ops"));
    /// ```
    pub fn case(&self) -> &str {
        &self.case
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance failure: {}\nminimal failing case:\n{}",
            self.message, self.case
        )
    }
}

impl std::error::Error for Failure {}
