//! `FastSlow`: a fast tier in front of a slow one (NativeLink's `fast_slow` store, §5.3).
//!
//! - **`has`** asks the slow tier only: the fast tier may hold what the slow one lost, and a
//!   blob only in fast must be uploaded again (§9 item 1; NativeLink #633, #2728). A key the
//!   slow tier does not have yet but that this process is writing to it is reported with the
//!   write's outcome if its body has fully arrived and it commits within 10 s (one deadline
//!   per `has_many`); a write whose body is still arriving is never waited for (a stalled
//!   uploader must not block `has`), and the key is reported absent, which is the truth.
//!   When the slow tier keeps nothing ([`Store::discards_writes`]: [`Noop`](crate::Noop),
//!   also behind `Metrics`, `Ref` or `BoxStore`), `has` asks the fast tier instead.
//! - **`get`** reads the fast tier when it has the object. A fast entry that turns out to be
//!   gone (`NotFound` from the fast `get`, before any byte was sent) falls through to the slow
//!   tier. On a miss, the object is streamed from the slow tier to the caller while it fills
//!   the fast tier ([`FillStream`]): the fast entry appears only once the whole object
//!   arrived complete, and a read the caller abandons leaves nothing in fast. Concurrent
//!   misses of one key share one slow read: the first reader leads, the others wait for it
//!   (at most 60 s) and then read the fast tier. A ranged read fills the whole object.
//! - **Name keys** live in the slow tier only (unless the slow tier keeps nothing): a name's value
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
//!   The fast tier commits only after the slow `put` succeeded: an object the slow tier
//!   refuses (a `Verify` hash mismatch, say) is stored in neither. The put fails if either
//!   tier fails, except that a fast tier refusing an object as too large
//!   (`ResourceExhausted`) is not an error: the object still reaches the slow tier.
//! - **Concurrent uploads of one digest** share one upload (write single flight): the first
//!   leads, the others wait for it (at most 60 s) without reading their bodies. When the
//!   leader stored the object, each follower reads its body to the end, checks its length
//!   against its declared size and the stored object, and succeeds without uploading. When
//!   the leader fails or is dropped, a follower uploads its own body (leading the next
//!   round); after a timeout it uploads on its own. Uploads of a name are never shared,
//!   since their values may differ.
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

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt as _;

pub use config::{FastSlowConfig, StoreDirection};
pub use stream::FillStream;

use self::flight::{
    AfterWait, COMMIT_WAIT, LeaderOutcome, Role, Shared, WriteRole, committed_size, wait_flight,
    wait_leader,
};
use self::stream::{ArrivalBody, ChannelBody, ChunkSender, chunk_channel};
use crate::body::{Body, Either, drain_body};
use crate::error::{Code, Error, Result};
use crate::health::HealthStatus;
use crate::key::{Digest, Key};
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};
use crate::stores::memory::check_out_len;

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
    /// True if the slow tier keeps nothing (`Noop`, however wrapped): the fast tier is then
    /// the whole store.
    fn slow_keeps_nothing(&self) -> bool {
        self.slow.discards_writes()
    }

    async fn sizes(&self, keys: &[Key], out: &mut [Option<u64>]) -> Result<()> {
        check_out_len(keys, out)?;
        if self.slow_keeps_nothing() {
            return self.fast.has_many(keys, out).await;
        }
        // Taken before asking the slow tier, so a write finishing meanwhile is not missed.
        let writes = self.shared.writes_for(keys);
        self.slow.has_many(keys, out).await?;
        if writes.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        for (i, rx) in writes {
            if out[i].is_none() {
                out[i] = committed_size(rx, deadline).await;
            }
        }
        Ok(())
    }

    /// Digests live in both tiers. Names (whose value can change) live only in the slow tier,
    /// unless the slow tier keeps nothing and the fast one is all there is.
    fn in_both_tiers(&self, key: &Key) -> bool {
        matches!(key, Key::Digest(_)) || self.slow_keeps_nothing()
    }

    async fn read(
        &self,
        key: Key,
        range: ByteRange,
    ) -> Result<FastSlowReader<F::Reader, S::Reader>> {
        let digest = match key {
            Key::Digest(d) => Some(d),
            Key::Name(_) if self.slow_keeps_nothing() => None,
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
        let to_fast = self.config.fast_direction.takes_updates() && self.in_both_tiers(&key);
        if !self.config.slow_direction.takes_updates() {
            return match to_fast {
                false => drain_body(&key, size, body).await,
                true => self.fast.put(key, size, body).await,
            };
        }
        let mut attempts = 0;
        let guard = loop {
            match self.shared.begin_write(&key) {
                WriteRole::Leader(guard) => break Some(guard),
                WriteRole::Follower(rx) => {
                    attempts += 1;
                    // Boxed: only uploads that found another in flight pay for the timer.
                    match Box::pin(wait_leader(rx)).await {
                        LeaderOutcome::Stored(stored) => {
                            return follow(&key, size, body, stored).await;
                        }
                        LeaderOutcome::Failed if attempts < MAX_ATTEMPTS => {}
                        // Upload on our own, unregistered: never lose this body's data to
                        // a stalled or failing leader.
                        LeaderOutcome::Failed | LeaderOutcome::TimedOut => break None,
                    }
                }
            }
        };
        let body = ArrivalBody::new(body, guard.as_ref().map(|g| g.arrival()));
        let (stored, slow_stored) = if to_fast {
            self.write_both(key, size, body).await
        } else {
            let stored = self.slow.put(key, size, body).await;
            let slow_stored = stored.as_ref().ok().copied();
            (stored, slow_stored)
        };
        if let Some(guard) = guard {
            guard.finish(slow_stored);
        }
        stored
    }

    /// Writes both tiers from one body; the put's result and the slow tier's stored size.
    ///
    /// The fast tier gets every chunk as it arrives, but its end marker only once the slow
    /// `put` returned `Ok`: if the slow tier refuses the object, the fast `put` aborts and
    /// stores nothing, so the fast tier never serves what the slow tier (the truth) refused.
    async fn write_both<B: Body>(
        &self,
        key: Key,
        size: UploadSize,
        body: B,
    ) -> (Result<u64>, Option<u64>) {
        let (fast_tx, fast_body) = chunk_channel(CHANNEL_CHUNKS);
        let (slow_tx, slow_body) = chunk_channel(CHANNEL_CHUNKS);
        let slow_put = self.slow.put(key.clone(), size, slow_body);
        let slow_first = async {
            let (fanned, slow) = tokio::join!(fan_out(body, fast_tx, slow_tx), slow_put);
            let sent = match fanned {
                Ok(Some(fast_tx)) if slow.is_ok() => {
                    send_all(&mut [Some(fast_tx), None], None).await;
                    Ok(())
                }
                // The slow put failed: the fast sender is dropped here without the end
                // marker, so the fast put aborts.
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            (sent, slow)
        };
        let ((sent, slow), fast) = tokio::join!(slow_first, self.fast.put(key, size, fast_body));
        let slow_stored = slow.as_ref().ok().copied();
        let stored = sent.and(slow).and_then(|stored| match fast {
            Err(e) if e.code() != Code::ResourceExhausted => Err(e),
            _ => Ok(stored),
        });
        (stored, slow_stored)
    }
}

/// A follower's upload, once the leader stored the digest: reads the body to its end, checks
/// it against its declared size and the stored object's size, and stores nothing.
async fn follow<B: Body>(key: &Key, size: UploadSize, body: B, stored: u64) -> Result<u64> {
    let received = drain_body(key, size, body).await?;
    if received != stored {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "upload body has {received} bytes, but a concurrent upload of this digest \
                 stored {stored}"
            ),
        )
        .with_key(key.clone()));
    }
    Ok(received)
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

/// Copies `body` into both channels, waiting for the slower one, and sends the end marker to
/// the slow tier only. Returns the fast tier's sender, still without its end marker (`None`
/// if that `put` already ended). A tier whose `put` ended (its receiver is gone) is skipped
/// from then on. An error of the body is returned, and the channels are dropped without an
/// end marker, so both `put`s abort.
async fn fan_out<B: Body>(
    mut body: B,
    fast: ChunkSender,
    slow: ChunkSender,
) -> Result<Option<ChunkSender>> {
    let mut tiers = [Some(fast), Some(slow)];
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if !send_all(&mut tiers, Some(chunk)).await {
            // Both puts ended early; their errors tell why.
            return Ok(None);
        }
    }
    let [fast, slow] = tiers;
    send_all(&mut [None, slow], None).await;
    Ok(fast)
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
        if self.slow_keeps_nothing() {
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
