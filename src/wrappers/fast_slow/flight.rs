//! Book-keeping shared by the clones of one `FastSlow`: slow-tier writes in flight (for
//! `has`) and fast-tier fills in flight (single flight for reads). Nothing here is generic,
//! so none of it is compiled again per store type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::watch;

use crate::key::Key;

/// How long a reader waits for another reader's fill of the same key before reading the slow
/// tier itself (NativeLink's `LEADER_WAIT_TIMEOUT`).
pub(crate) const LEADER_WAIT: Duration = Duration::from_secs(60);

/// The state of a slow-tier write: `None` while running, then its stored size (`None` inside
/// if it failed or was dropped).
type WriteState = Option<Option<u64>>;

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

/// A follower's ticket, or the leader's guard.
pub(crate) enum Role {
    Leader(FlightGuard),
    Follower(watch::Receiver<FlightState>),
}

impl Shared {
    /// Registers a slow-tier write of `key`; `has` waits for it until the guard finishes.
    pub(crate) fn begin_write(self: &Arc<Self>, key: &Key) -> WriteGuard {
        let tx = Arc::new(watch::Sender::new(None));
        let previous = lock(&self.writes).insert(key.clone(), tx.clone());
        if previous.is_none() {
            self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        }
        WriteGuard {
            shared: self.clone(),
            key: key.clone(),
            tx,
            done: false,
        }
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

    /// Number of fills in flight (for tests).
    #[cfg(test)]
    pub(crate) fn flights(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// Waits for a slow-tier write; its stored size, or `None` if it failed.
pub(crate) async fn wait_write(mut rx: watch::Receiver<WriteState>) -> Option<u64> {
    match rx.wait_for(Option::is_some).await {
        Ok(state) => state.flatten(),
        Err(_) => None,
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
    pub(crate) fn finish(mut self, stored: Option<u64>) {
        self.publish(stored);
    }

    fn publish(&mut self, stored: Option<u64>) {
        if self.done {
            return;
        }
        self.done = true;
        self.tx.send_replace(Some(stored));
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
