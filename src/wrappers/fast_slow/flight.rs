//! Book-keeping shared by the clones of one `FastSlow`: slow-tier writes in flight (for
//! `has`, and single flight for uploads of one digest) and fast-tier fills in flight (single
//! flight for reads). Nothing here is generic, so none of it is compiled again per store
//! type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::watch;

use crate::key::Key;

/// How long a reader waits for another reader's fill of the same key before reading the slow
/// tier itself (NativeLink's `LEADER_WAIT_TIMEOUT`).
pub(crate) const LEADER_WAIT: Duration = Duration::from_secs(60);

/// How long a `has` waits for a write whose body has fully arrived to commit, before it
/// reports the key absent (it is not in the slow tier yet, so that is the truth). One deadline
/// for a whole `has_many`.
pub(crate) const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// The state of a slow-tier write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteState {
    /// The body is still arriving; it may never end (a stalled uploader), so `has` does not
    /// wait for it.
    Receiving,
    /// The whole body arrived; the tiers are committing it.
    Committing,
    /// Finished: the slow tier's stored size, `None` if the write failed or was dropped.
    Done(Option<u64>),
}

/// How a fill ended, as followers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlightState {
    Running,
    /// The fast tier has the object now.
    Filled,
    /// The slow read succeeded but the fast tier did not keep the object: read the slow tier.
    NotFilled,
    /// The leader's read failed or was dropped: try again (perhaps as the new leader).
    Abandoned,
}

/// What a follower should do after waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterWait {
    /// Read the fast tier again.
    Retry,
    /// Read the slow tier directly, without filling.
    ReadSlow,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    writes: Mutex<HashMap<Key, Arc<watch::Sender<WriteState>>>>,
    /// Number of entries in `writes`, read without the lock by every `has`.
    writes_in_flight: AtomicUsize,
    flights: Mutex<HashMap<Key, Arc<watch::Sender<FlightState>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation, so a poisoned map is consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An upload's place in the single flight of its key.
pub(crate) enum WriteRole {
    /// Nobody else is writing the key: upload, and publish the outcome through the guard.
    Leader(WriteGuard),
    /// Another upload of the same digest is in flight: wait for it.
    Follower(watch::Receiver<WriteState>),
}

/// How the upload a follower waited for ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaderOutcome {
    /// The slow tier stored the object, this many bytes.
    Stored(u64),
    /// It failed or was dropped: try again (perhaps as the new leader).
    Failed,
    /// It did not finish within [`LEADER_WAIT`]: upload on our own.
    TimedOut,
}

/// A follower's ticket, or the leader's guard.
pub(crate) enum Role {
    Leader(FlightGuard),
    Follower(watch::Receiver<FlightState>),
}

impl Shared {
    /// Registers a slow-tier write of `key` (`has` looks at it until the guard finishes), or,
    /// for a digest that another upload is writing, follows that upload.
    ///
    /// Only digests are shared: every upload of a digest stores the same bytes, while a
    /// name's value may differ between uploads. A later upload of a name replaces the earlier
    /// one's entry.
    pub(crate) fn begin_write(self: &Arc<Self>, key: &Key) -> WriteRole {
        let tx = Arc::new(watch::Sender::new(WriteState::Receiving));
        let mut writes = lock(&self.writes);
        if let Key::Digest(_) = key
            && let Some(leader) = writes.get(key)
        {
            return WriteRole::Follower(leader.subscribe());
        }
        let previous = writes.insert(key.clone(), tx.clone());
        drop(writes);
        if previous.is_none() {
            self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        }
        WriteRole::Leader(WriteGuard {
            shared: self.clone(),
            key: key.clone(),
            tx,
            done: false,
        })
    }

    /// Receivers for the writes in flight among `keys`, by position. Empty (no allocation)
    /// when no write is in flight.
    pub(crate) fn writes_for(&self, keys: &[Key]) -> Vec<(usize, watch::Receiver<WriteState>)> {
        if self.writes_in_flight.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        let writes = lock(&self.writes);
        let mut found = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(tx) = writes.get(key) {
                found.push((i, tx.subscribe()));
            }
        }
        found
    }

    /// Becomes the leader of the fill of `key`, or follows the current one.
    pub(crate) fn join_or_lead(self: &Arc<Self>, key: &Key) -> Role {
        let mut flights = lock(&self.flights);
        if let Some(tx) = flights.get(key) {
            return Role::Follower(tx.subscribe());
        }
        let tx = Arc::new(watch::Sender::new(FlightState::Running));
        flights.insert(key.clone(), tx.clone());
        Role::Leader(FlightGuard {
            shared: self.clone(),
            key: key.clone(),
            tx,
            done: false,
        })
    }

    /// Number of readers waiting on the fill of `key` (for tests).
    #[cfg(test)]
    pub(crate) fn followers(&self, key: &Key) -> usize {
        lock(&self.flights)
            .get(key)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// The state of the registered write of `key` (for tests).
    #[cfg(test)]
    pub(crate) fn write_state(&self, key: &Key) -> Option<WriteState> {
        lock(&self.writes).get(key).map(|tx| *tx.borrow())
    }

    /// Number of uploads and `has` calls waiting on the write of `key` (for tests).
    #[cfg(test)]
    pub(crate) fn write_waiters(&self, key: &Key) -> usize {
        lock(&self.writes)
            .get(key)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Number of fills in flight (for tests).
    #[cfg(test)]
    pub(crate) fn flights(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// The slow tier's stored size of a write, as `has` reports it: `None` at once while its
/// body is still arriving; for a write that is committing, its outcome if it comes before
/// `deadline`, else `None`.
pub(crate) async fn committed_size(
    mut rx: watch::Receiver<WriteState>,
    deadline: tokio::time::Instant,
) -> Option<u64> {
    match *rx.borrow_and_update() {
        WriteState::Receiving => return None,
        WriteState::Done(stored) => return stored,
        WriteState::Committing => {}
    }
    let done = rx.wait_for(|s| matches!(s, WriteState::Done(_)));
    match tokio::time::timeout_at(deadline, done).await {
        Ok(Ok(state)) => match *state {
            WriteState::Done(stored) => stored,
            _ => None,
        },
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Waits (at most [`LEADER_WAIT`]) for the upload of the same digest that this one follows.
pub(crate) async fn wait_leader(mut rx: watch::Receiver<WriteState>) -> LeaderOutcome {
    let done = rx.wait_for(|s| matches!(s, WriteState::Done(_)));
    match tokio::time::timeout(LEADER_WAIT, done).await {
        Ok(Ok(state)) => match *state {
            WriteState::Done(Some(stored)) => LeaderOutcome::Stored(stored),
            _ => LeaderOutcome::Failed,
        },
        Ok(Err(_)) => LeaderOutcome::Failed,
        Err(_) => LeaderOutcome::TimedOut,
    }
}

/// Waits (at most [`LEADER_WAIT`]) for another reader's fill.
pub(crate) async fn wait_flight(mut rx: watch::Receiver<FlightState>) -> AfterWait {
    let waited = tokio::time::timeout(LEADER_WAIT, rx.wait_for(|s| *s != FlightState::Running));
    match waited.await {
        Ok(Ok(state)) => match *state {
            FlightState::NotFilled => AfterWait::ReadSlow,
            _ => AfterWait::Retry,
        },
        Ok(Err(_)) => AfterWait::Retry,
        Err(_) => AfterWait::ReadSlow,
    }
}

/// Keeps a slow-tier write registered; publishes its outcome when finished or dropped.
#[derive(Debug)]
pub(crate) struct WriteGuard {
    shared: Arc<Shared>,
    key: Key,
    tx: Arc<watch::Sender<WriteState>>,
    done: bool,
}

impl WriteGuard {
    /// The handle an upload body uses to say it has fully arrived.
    pub(crate) fn arrival(&self) -> Arrival {
        Arrival(self.tx.clone())
    }

    /// Publishes the slow tier's stored size (`None`: the write failed) and unregisters.
    pub(crate) fn finish(mut self, stored: Option<u64>) {
        self.publish(stored);
    }

    fn publish(&mut self, stored: Option<u64>) {
        if self.done {
            return;
        }
        self.done = true;
        self.tx.send_replace(WriteState::Done(stored));
        let mut writes = lock(&self.shared.writes);
        if writes
            .get(&self.key)
            .is_some_and(|tx| Arc::ptr_eq(tx, &self.tx))
        {
            writes.remove(&self.key);
            self.shared.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.publish(None);
    }
}

/// Moves a write from `Receiving` to `Committing` once its body has fully arrived.
#[derive(Debug)]
pub(crate) struct Arrival(Arc<watch::Sender<WriteState>>);

impl Arrival {
    pub(crate) fn arrived(&self) {
        self.0.send_if_modified(|state| {
            let receiving = *state == WriteState::Receiving;
            if receiving {
                *state = WriteState::Committing;
            }
            receiving
        });
    }
}

/// The leader's hold on a fill; tells followers how it ended (`Abandoned` if dropped).
#[derive(Debug)]
pub(crate) struct FlightGuard {
    shared: Arc<Shared>,
    key: Key,
    tx: Arc<watch::Sender<FlightState>>,
    done: bool,
}

impl FlightGuard {
    /// The slow read completed; `filled` says whether the fast tier kept the object.
    pub(crate) fn finish(&mut self, filled: bool) {
        self.publish(if filled {
            FlightState::Filled
        } else {
            FlightState::NotFilled
        });
    }

    /// The read failed or was dropped.
    pub(crate) fn abandon(&mut self) {
        self.publish(FlightState::Abandoned);
    }

    fn publish(&mut self, state: FlightState) {
        if self.done {
            return;
        }
        self.done = true;
        {
            let mut flights = lock(&self.shared.flights);
            if flights
                .get(&self.key)
                .is_some_and(|tx| Arc::ptr_eq(tx, &self.tx))
            {
                flights.remove(&self.key);
            }
        }
        self.tx.send_replace(state);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.abandon();
    }
}
