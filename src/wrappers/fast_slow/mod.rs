//! `FastSlow`: a fast tier in front of a slow one (NativeLink's `fast_slow` store, §5.3).
//!
//! - **`has`** asks the slow tier only: the fast tier may hold what the slow one lost, and a
//!   blob only in fast must be uploaded again (§9 item 1; NativeLink #633, #2728). A key the
//!   slow tier does not have yet but that this process is writing to it is waited for, and
//!   reported with the write's outcome. When the slow tier is [`Noop`], `has` asks the fast
//!   tier instead.
//! - **`get`** reads the fast tier when it has the object. A fast entry that turns out to be
//!   gone (`NotFound` from the fast `get`, before any byte was sent) falls through to the slow
//!   tier. On a miss, the object is streamed from the slow tier to the caller while it fills
//!   the fast tier ([`FillStream`]): the fast entry appears only once the whole object
//!   arrived complete, and a read the caller abandons leaves nothing in fast. Concurrent
//!   misses of one key share one slow read: the first reader leads, the others wait for it
//!   (at most 60 s) and then read the fast tier. A ranged read fills the whole object.
//! - **Name keys** live in the slow tier only (unless the slow tier is `Noop`): a name's value
//!   can be replaced, and a fast copy could go stale whenever the fast tier skips or refuses
//!   the replacement, or two uploads of one name interleave differently in the two tiers.
//!   Digests are immutable, so their fast copies are always right. (NativeLink caches names in
//!   fast too, and can serve a replaced action-cache entry.)
//! - **Directions** ([`StoreDirection`]): a fast tier in `update` or `read_only` is read but
//!   never filled; `get` or `read_only` tiers are not written by uploads. Digests of at least
//!   `bypass_dedup_threshold_bytes` are read straight from the slow tier, unshared and
//!   unfilled.
//! - **`put`** writes both tiers concurrently: the body is fanned out through two bounded
//!   channels to the two `put`s, so memory stays bounded and the slower tier sets the pace.
//!   The put fails if either tier fails, except that a fast tier refusing an object as too
//!   large (`ResourceExhausted`) is not an error: the object still reaches the slow tier.
//! - Removal notifications of both tiers reach the listeners.
//!
//! Consistency: the slow tier is the truth. The fast tier may hold objects the slow tier
//! dropped (they are still served), and briefly lacks objects just written to the slow tier.
//!
//! Layout (TOML):
//! ```toml
//! [fast_slow]
//! fast_direction = "both"
//! slow_direction = "both"
//! bypass_dedup_threshold_bytes = 0
//! fast.memory.eviction_policy = { max_bytes = 1073741824 }
//! slow.memory = {}
//! ```
//!
//! Failure codes: `NotFound` (in neither tier), `DataLoss` (the slow tier's copy has the wrong
//! length), `OutOfRange`, and the tiers' own errors.

mod config;
mod flight;
mod stream;

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt as _;

pub use config::{FastSlowConfig, StoreDirection};
pub use stream::FillStream;

use self::flight::{AfterWait, Role, Shared, wait_flight, wait_write};
use self::stream::{ChannelBody, ChunkSender, chunk_channel};
use crate::body::{Body, Either, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;
use crate::stores::noop::Noop;

/// Chunks buffered towards each tier during a fill or an upload.
const CHANNEL_CHUNKS: usize = 8;

/// How many times a read tries the fast tier and the single flight before it reads the slow
/// tier directly (each retry follows a leader that failed).
const MAX_ATTEMPTS: usize = 3;

/// A fast tier `F` in front of a slow tier `S`.
///
/// ```
/// use casstack::{Digest, FastSlow, Memory, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> casstack::Result<()> {
/// let (fast, slow) = (Memory::default(), Memory::default());
/// let store = FastSlow::new(fast.clone(), slow.clone(), Default::default());
/// let d = Digest::of(b"only in slow");
/// slow.put_bytes(d, "only in slow".into()).await?;
/// assert_eq!(store.get_bytes(d).await?, "only in slow");
/// assert_eq!(fast.has(d).await?, Some(12), "the read filled the fast tier");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FastSlow<F, S> {
    fast: F,
    slow: S,
    config: FastSlowConfig,
    shared: Arc<Shared>,
}

/// The reader of a [`FastSlow`]: the fast tier's, the slow tier's (bypass), or a fill.
pub type FastSlowReader<F, S> = Either<F, Either<S, FillStream<S>>>;

impl<F, S> FastSlow<F, S> {
    /// A fast tier in front of a slow one.
    ///
    /// ```
    /// let s = casstack::FastSlow::new(casstack::Memory::default(), casstack::Noop, Default::default());
    /// assert!(s.fast().is_empty());
    /// ```
    pub fn new(fast: F, slow: S, config: FastSlowConfig) -> Self {
        FastSlow {
            fast,
            slow,
            config,
            shared: Arc::default(),
        }
    }

    /// The fast tier.
    ///
    /// ```
    /// let s = casstack::FastSlow::new(casstack::Memory::default(), casstack::Noop, Default::default());
    /// assert_eq!(s.fast().len(), 0);
    /// ```
    pub fn fast(&self) -> &F {
        &self.fast
    }

    /// The slow tier.
    ///
    /// ```
    /// let s = casstack::FastSlow::new(casstack::Noop, casstack::Memory::default(), Default::default());
    /// assert_eq!(s.slow().len(), 0);
    /// ```
    pub fn slow(&self) -> &S {
        &self.slow
    }

    /// The settings.
    ///
    /// ```
    /// let s = casstack::FastSlow::new(casstack::Noop, casstack::Noop, Default::default());
    /// assert_eq!(s.config().bypass_dedup_threshold_bytes, 0);
    /// ```
    pub fn config(&self) -> &FastSlowConfig {
        &self.config
    }
}

impl<F: Store, S: Store> FastSlow<F, S> {
    fn slow_is_noop() -> bool {
        TypeId::of::<S>() == TypeId::of::<Noop>()
    }

    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        if Self::slow_is_noop() {
            return self.fast.has_many(keys, out).await;
        }
        // Taken before asking the slow tier, so a write finishing meanwhile is not missed.
        let writes = self.shared.writes_for(keys);
        self.slow.has_many(keys, out).await?;
        for (i, rx) in writes {
            if out[i].is_none() {
                out[i] = wait_write(rx).await;
            }
        }
        Ok(())
    }

    /// Digests live in both tiers. Names (whose value can change) live only in the slow tier,
    /// unless the slow tier is `Noop` and the fast one is all there is.
    fn in_both_tiers(key: &Key) -> bool {
        matches!(key, Key::Digest(_)) || Self::slow_is_noop()
    }

    async fn read(
        &self,
        key: Key,
        range: ByteRange,
    ) -> Result<FastSlowReader<F::Reader, S::Reader>> {
        let digest = match key {
            Key::Digest(d) => Some(d),
            Key::Name(_) if Self::slow_is_noop() => None,
            Key::Name(_) => {
                let reader = self.slow.get(key, range).await?;
                crate::observe::fast_slow_hit("slow");
                return Ok(Either::Right(Either::Left(reader)));
            }
        };
        let bypass = self.config.bypass_dedup_threshold_bytes;
        let fills = match digest {
            Some(d) => {
                self.config.fast_direction.takes_fills() && !(bypass != 0 && d.size() >= bypass)
            }
            None => false,
        };
        for _ in 0..MAX_ATTEMPTS {
            match self.fast.get(key.clone(), range).await {
                Ok(reader) => {
                    crate::observe::fast_slow_hit("fast");
                    return Ok(Either::Left(reader));
                }
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(e),
            }
            let Some(digest) = digest else {
                break;
            };
            if !fills {
                break;
            }
            match self.shared.join_or_lead(&key) {
                // Boxed: a fill already spawns a task and allocates a channel, and the
                // hit path's future stays small.
                Role::Leader(guard) => {
                    crate::observe::fast_slow_fill();
                    return Box::pin(self.fill(digest, range, guard)).await;
                }
                // Boxed: only readers that found a fill in flight pay for the timer's space.
                Role::Follower(rx) => {
                    crate::observe::fast_slow_join();
                    match Box::pin(wait_flight(rx)).await {
                        AfterWait::Retry => continue,
                        AfterWait::ReadSlow => break,
                    }
                }
            }
        }
        let reader = self.slow.get(key, range).await?;
        crate::observe::fast_slow_hit("slow");
        Ok(Either::Right(Either::Left(reader)))
    }

    async fn fill(
        &self,
        digest: Digest,
        range: ByteRange,
        guard: flight::FlightGuard,
    ) -> Result<FastSlowReader<F::Reader, S::Reader>> {
        let key = Key::Digest(digest);
        let size = digest.size();
        let want = match range.resolve(size) {
            Ok(want) => want,
            Err(e) => return Err(e.with_key(digest)),
        };
        let reader = match self.slow.get(key.clone(), ByteRange::FULL).await {
            Ok(reader) => reader,
            Err(e) if e.code() == Code::NotFound => return Err(not_in_either(key)),
            Err(e) => return Err(e),
        };
        crate::observe::fast_slow_hit("slow");
        let (tx, body) = chunk_channel(CHANNEL_CHUNKS);
        let task = tokio::spawn(put_owned(
            self.fast.clone(),
            key,
            UploadSize::Exact(size),
            body,
        ));
        let stream = FillStream::new(reader, tx, task, guard, want, size);
        Ok(Either::Right(Either::Right(stream)))
    }

    async fn write<B: Body>(&self, key: Key, size: UploadSize, body: B) -> Result<u64> {
        let to_fast = self.config.fast_direction.takes_updates() && Self::in_both_tiers(&key);
        let to_slow = self.config.slow_direction.takes_updates();
        match (to_fast, to_slow) {
            (false, false) => drain_body(&key, size, body).await,
            (true, false) => self.fast.put(key, size, body).await,
            (false, true) => {
                let guard = self.shared.begin_write(&key);
                let stored = self.slow.put(key, size, body).await;
                guard.finish(stored.as_ref().ok().copied());
                stored
            }
            (true, true) => {
                let guard = self.shared.begin_write(&key);
                let (fast_tx, fast_body) = chunk_channel(CHANNEL_CHUNKS);
                let (slow_tx, slow_body) = chunk_channel(CHANNEL_CHUNKS);
                let (sent, fast, slow) = tokio::join!(
                    fan_out(body, [fast_tx, slow_tx]),
                    self.fast.put(key.clone(), size, fast_body),
                    self.slow.put(key, size, slow_body),
                );
                guard.finish(slow.as_ref().ok().copied());
                sent?;
                let stored = slow?;
                match fast {
                    Err(e) if e.code() != Code::ResourceExhausted => Err(e),
                    _ => Ok(stored),
                }
            }
        }
    }
}

fn not_in_either(key: Key) -> Error {
    Error::new(
        Code::NotFound,
        "not found in either the fast or the slow store",
    )
    .with_key(key)
}

/// `store.put` with everything owned, to run as its own task.
async fn put_owned<T: Store>(
    store: T,
    key: Key,
    size: UploadSize,
    body: ChannelBody,
) -> Result<u64> {
    store.put(key, size, body).await
}

/// Copies `body` into both channels, waiting for the slower one. A tier whose `put` ended
/// (its receiver is gone) is skipped from then on. An error of the body is returned, and the
/// channels are dropped without an end marker, so both `put`s abort.
async fn fan_out<B: Body>(mut body: B, tiers: [ChunkSender; 2]) -> Result<u64> {
    let mut tiers = tiers.map(Some);
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        if !send_all(&mut tiers, Some(chunk)).await {
            // Both puts ended early; their errors tell why.
            return Ok(sent);
        }
    }
    send_all(&mut tiers, None).await;
    Ok(sent)
}

/// Sends `item` to every open channel; false once none is open.
async fn send_all(tiers: &mut [Option<ChunkSender>; 2], item: Option<bytes::Bytes>) -> bool {
    for tier in tiers.iter_mut() {
        if let Some(tx) = tier {
            let ready = futures_util::future::poll_fn(|cx| tx.poll_ready(cx)).await;
            if ready.is_err() || tx.start_send(item.clone()).is_err() {
                *tier = None;
            }
        }
    }
    tiers.iter().any(Option::is_some)
}

impl<F: Store, S: Store> Store for FastSlow<F, S> {
    type Reader = FastSlowReader<F::Reader, S::Reader>;

    fn has_many(
        &self,
        keys: &[Key],
        out: &mut [Option<u64>],
    ) -> impl Future<Output = Result<()>> + Send {
        self.sizes(keys, out)
    }

    fn get(&self, key: Key, range: ByteRange) -> impl Future<Output = Result<Self::Reader>> + Send {
        self.read(key, range)
    }

    fn put<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.write(key, size, body)
    }

    fn subscribe_removals(&self, listener: Arc<dyn RemovalListener>) {
        self.fast.subscribe_removals(listener.clone());
        self.slow.subscribe_removals(listener);
    }

    /// The slow tier's answer (it decides what is present), or the fast tier's when the slow
    /// one is `Noop`.
    fn reports_all_removals(&self) -> bool {
        if Self::slow_is_noop() {
            self.fast.reports_all_removals()
        } else {
            self.slow.reports_all_removals()
        }
    }

    /// The health of both tiers.
    async fn check_health(&self) -> HealthStatus {
        let fast = self.fast.check_health().await;
        let slow = self.slow.check_health().await;
        fast.within("FastSlow.fast")
            .and(slow.within("FastSlow.slow"))
    }
}

impl<F: fmt::Debug, S: fmt::Debug> fmt::Debug for FastSlow<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSlow")
            .field("fast", &self.fast)
            .field("slow", &self.slow)
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests;
