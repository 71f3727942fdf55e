//! Runs one generated case against a store and the reference model.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt as _;
use proptest::test_runner::TestCaseError;
use tokio::sync::Notify;

use super::Reopen;
use super::strategy::{BodyFault, Case, Op};
use crate::error::{Code, Error, Result};
use crate::key::Key;
use crate::store::{ByteRange, RemovalListener, Store, UploadSize};

/// No single step may take longer than this: a hang is a failure, not a stuck test run.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the model holds: `values[same[i]]` is the content the store must return for key `i`.
struct Model {
    keys: Vec<Key>,
    /// For each key index, the first index of an equal key: two generated blobs with the same
    /// bytes have the same digest key, and the model must treat them as one.
    same: Vec<usize>,
    blobs: Vec<Bytes>,
    values: Vec<Option<Bytes>>,
    may_forget: bool,
    /// Every removal notification of the store, in order (`None`: it may have missed some).
    heard: Arc<Mutex<Vec<Option<Key>>>>,
    /// Checked while the store says it reports every removal: for each key (by `same`), the
    /// step at which a sequential step last saw it present, and the length of `heard` then.
    /// A key seen present and later, sequentially, absent must have been announced since.
    seen_present: Vec<Option<(usize, usize)>>,
    check_removals: bool,
}

/// Records a store's removal notifications for the model.
struct Heard(Arc<Mutex<Vec<Option<Key>>>>);

impl RemovalListener for Heard {
    fn removed(&self, key: &Key) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Some(key.clone()));
    }

    fn removals_missed(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(None);
    }
}

/// The outcome of one step, kept for checking after a concurrent group ends.
enum Outcome {
    Put(Result<u64>),
    Get(Result<Bytes>),
    Has(Result<Vec<Option<u64>>>),
}

pub(super) async fn run_case<S: Store>(
    mut store: S,
    case: &Case,
    may_forget: bool,
    reopen: Option<Reopen<'_, S>>,
) -> std::result::Result<(), TestCaseError> {
    let blobs: Vec<Bytes> = case.blobs.iter().map(|b| b.bytes()).collect();
    let keys = case.keys();
    let values = keys
        .iter()
        .map(|k| k.is_empty_blob().then(Bytes::new))
        .collect();
    let same = keys
        .iter()
        .map(|k| keys.iter().position(|other| other == k).expect("present"))
        .collect();
    let heard = Arc::new(Mutex::new(Vec::new()));
    store.subscribe_removals(Arc::new(Heard(heard.clone())));
    let mut model = Model {
        seen_present: vec![None; keys.len()],
        keys,
        same,
        blobs,
        values,
        may_forget,
        heard,
        check_removals: may_forget && store.reports_all_removals(),
    };
    for (step, op) in case.ops.iter().enumerate() {
        let fail =
            |message: String| TestCaseError::fail(format!("step {step} ({op:?}): {message}"));
        match op {
            Op::Reopen => {
                let Some(reopen) = reopen else {
                    return Err(fail("reopen without a reopen function".into()));
                };
                store = timed(reopen(store)).await.map_err(fail)?;
                // A new instance: what the old one reported says nothing about it.
                store.subscribe_removals(Arc::new(Heard(model.heard.clone())));
                model.seen_present.fill(None);
                model.check_removals = may_forget && store.reports_all_removals();
            }
            Op::BadPut { key, blob, fault } => {
                let outcome = bad_put(&store, &model, *key, *blob, *fault)
                    .await
                    .map_err(fail)?;
                model.check_bad_put(*key, outcome).map_err(fail)?;
            }
            Op::Concurrent(group) => {
                let group = model.serializable(group);
                let before = model.values.clone();
                let mut tasks = Vec::with_capacity(group.len());
                for op in &group {
                    let store = store.clone();
                    let op = op.clone();
                    let (keys, blobs) = (model.keys.clone(), model.blobs.clone());
                    tasks.push(tokio::spawn(async move {
                        timed(run_simple(&store, &keys, &blobs, &op)).await
                    }));
                }
                let mut outcomes = Vec::with_capacity(tasks.len());
                for task in tasks {
                    let outcome = task
                        .await
                        .map_err(|e| fail(format!("a task panicked: {e}")))?
                        .map_err(fail)?;
                    outcomes.push(outcome);
                }
                for (op, outcome) in group.iter().zip(outcomes) {
                    model
                        .check_concurrent(&before, &group, op, outcome)
                        .map_err(|m| fail(format!("in the group, {op:?}: {m}")))?;
                }
                // Concurrent answers cannot be ordered against removals.
                model.seen_present.fill(None);
            }
            simple => {
                let outcome = timed(run_simple(&store, &model.keys, &model.blobs, simple))
                    .await
                    .map_err(fail)?;
                model
                    .check_announced(step, simple, &outcome)
                    .map_err(fail)?;
                let before = model.values.clone();
                model
                    .check_concurrent(&before, std::slice::from_ref(simple), simple, outcome)
                    .map_err(fail)?;
            }
        }
    }
    // Everything the model holds must still be there, whole.
    let all: Vec<usize> = (0..model.keys.len()).collect();
    let final_has = Op::Has { keys: all.clone() };
    let outcome = timed(run_simple(&store, &model.keys, &model.blobs, &final_has))
        .await
        .map_err(|m| TestCaseError::fail(format!("final check: {m}")))?;
    let last = case.ops.len();
    model
        .check_announced(last, &final_has, &outcome)
        .map_err(|m| TestCaseError::fail(format!("final check: {m}")))?;
    let before = model.values.clone();
    model
        .check_concurrent(&before, &[], &final_has, outcome)
        .map_err(|m| TestCaseError::fail(format!("final check, has of every key: {m}")))?;
    for key in all {
        let get = Op::Get {
            key,
            range: ByteRange::FULL,
        };
        let outcome = timed(run_simple(&store, &model.keys, &model.blobs, &get))
            .await
            .map_err(|m| TestCaseError::fail(format!("final check: {m}")))?;
        model
            .check_announced(last, &get, &outcome)
            .map_err(|m| TestCaseError::fail(format!("final check, {get:?}: {m}")))?;
        model
            .check_concurrent(&before, &[], &get, outcome)
            .map_err(|m| TestCaseError::fail(format!("final check, {get:?}: {m}")))?;
    }
    Ok(())
}

async fn timed<T>(future: impl Future<Output = T>) -> std::result::Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| format!("no answer within {STEP_TIMEOUT:?}"))
}

use std::future::Future;

/// The content a put of `blob` under `key` sends: a digest key always gets its own blob.
fn content(keys: &[Key], blobs: &[Bytes], key: usize, blob: usize) -> Bytes {
    if key < blobs.len() && keys[key].digest().is_some() {
        blobs[key].clone()
    } else {
        blobs[blob].clone()
    }
}

fn chunks(data: &Bytes, chunk: usize) -> Vec<Result<Bytes>> {
    let chunk = chunk.max(1);
    (0..data.len())
        .step_by(chunk)
        .map(|start| Ok(data.slice(start..(start + chunk).min(data.len()))))
        .collect()
}

async fn run_simple<S: Store>(store: &S, keys: &[Key], blobs: &[Bytes], op: &Op) -> Outcome {
    match op {
        Op::Put {
            key,
            blob,
            chunk,
            exact,
        } => {
            let data = content(keys, blobs, *key, *blob);
            let len = data.len() as u64;
            let size = if *exact {
                UploadSize::Exact(len)
            } else {
                UploadSize::AtMost(len + 7)
            };
            let body = futures_util::stream::iter(chunks(&data, *chunk));
            Outcome::Put(store.put(keys[*key].clone(), size, body).await)
        }
        Op::Get { key, range } => Outcome::Get(read(store, keys[*key].clone(), *range).await),
        Op::Has { keys: indexes } => {
            let asked: Vec<Key> = indexes.iter().map(|i| keys[*i].clone()).collect();
            let mut out = vec![Some(u64::MAX); asked.len()];
            Outcome::Has(store.has_many(&asked, &mut out).await.map(|()| out))
        }
        Op::BadPut { .. } | Op::Concurrent(_) | Op::Reopen => {
            unreachable!("run_simple gets only put, get and has")
        }
    }
}

async fn read<S: Store>(store: &S, key: Key, range: ByteRange) -> Result<Bytes> {
    let mut reader = store.get(key, range).await?;
    let mut all = Vec::new();
    while let Some(chunk) = reader.next().await {
        all.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(all))
}

/// Runs a put whose body misbehaves; returns the store's answer (`None` if the put was
/// abandoned before it answered).
async fn bad_put<S: Store>(
    store: &S,
    model: &Model,
    key: usize,
    blob: usize,
    fault: BodyFault,
) -> std::result::Result<Option<Result<u64>>, String> {
    let data = content(&model.keys, &model.blobs, key, blob);
    let len = data.len();
    let store_key = model.keys[key].clone();
    let size = UploadSize::Exact(len as u64);
    let injected = || Err(Error::new(Code::Aborted, "injected body failure"));
    match fault {
        BodyFault::ErrorAfter(n) => {
            let mut items = chunks(&data.slice(..n.min(len)), 4096);
            items.push(injected());
            let body = futures_util::stream::iter(items);
            Ok(Some(timed(store.put(store_key, size, body)).await?))
        }
        BodyFault::EndsShort(n) if len > 0 => {
            let body = futures_util::stream::iter(chunks(&data.slice(..n.min(len - 1)), 4096));
            Ok(Some(timed(store.put(store_key, size, body)).await?))
        }
        BodyFault::EndsShort(_) => {
            let body = futures_util::stream::iter(vec![injected()]);
            Ok(Some(timed(store.put(store_key, size, body)).await?))
        }
        BodyFault::TooLong => {
            let mut items = chunks(&data, 4096);
            items.push(Ok(Bytes::from_static(b"extra")));
            let body = futures_util::stream::iter(items);
            Ok(Some(timed(store.put(store_key, size, body)).await?))
        }
        BodyFault::Abandoned(n) => {
            let drained = Arc::new(Notify::new());
            let body = StallingBody {
                chunks: chunks(&data.slice(..n.min(len)), 4096).into_iter(),
                drained: drained.clone(),
            };
            let put = store.put(store_key, size, body);
            let outcome = timed(async {
                tokio::select! {
                    result = put => Some(result),
                    () = drained.notified() => None,
                }
            })
            .await?;
            // Give cleanup spawned by the dropped put a moment to run before the next step.
            tokio::task::yield_now().await;
            Ok(outcome)
        }
    }
}

/// A body that yields its chunks, then never ends (and says so through `drained`).
struct StallingBody {
    chunks: std::vec::IntoIter<Result<Bytes>>,
    drained: Arc<Notify>,
}

impl Stream for StallingBody {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.chunks.next() {
            Some(chunk) => Poll::Ready(Some(chunk)),
            None => {
                self.drained.notify_one();
                Poll::Pending
            }
        }
    }
}

impl Model {
    /// Keeps at most one put per name key in a concurrent group (two concurrent writers of
    /// one name have no defined winner); later ones become reads.
    fn serializable(&self, group: &[Op]) -> Vec<Op> {
        let mut written = Vec::new();
        group
            .iter()
            .map(|op| match op {
                Op::Put { key, .. } if self.keys[*key].name().is_some() => {
                    if written.contains(key) {
                        Op::Get {
                            key: *key,
                            range: ByteRange::FULL,
                        }
                    } else {
                        written.push(*key);
                        op.clone()
                    }
                }
                other => other.clone(),
            })
            .collect()
    }

    /// Values a read of `key` may see during `group`, given the model `before` it.
    fn candidates(&self, before: &[Option<Bytes>], group: &[Op], key: usize) -> Vec<Bytes> {
        let key = self.same[key];
        let mut out: Vec<Bytes> = before[key].iter().cloned().collect();
        for op in group {
            if let Op::Put { key: k, blob, .. } = op
                && self.same[*k] == key
            {
                out.push(content(&self.keys, &self.blobs, *k, *blob));
            }
        }
        out
    }

    /// For a store that says it reports every removal: a key a sequential step saw present
    /// and a later one finds absent must have been announced in between (peers.md item 4:
    /// a cache above would otherwise keep claiming it). Then records what `op` saw.
    fn check_announced(
        &mut self,
        step: usize,
        op: &Op,
        outcome: &Outcome,
    ) -> std::result::Result<(), String> {
        if !self.check_removals {
            return Ok(());
        }
        let mut answers: Vec<(usize, bool)> = Vec::new();
        match (op, outcome) {
            (Op::Has { keys }, Outcome::Has(Ok(sizes))) => {
                answers.extend(keys.iter().zip(sizes).map(|(k, s)| (*k, s.is_some())));
            }
            (Op::Get { key, .. }, Outcome::Get(Ok(_))) => answers.push((*key, true)),
            (Op::Get { key, .. }, Outcome::Get(Err(e))) if e.code() == Code::NotFound => {
                answers.push((*key, false));
            }
            (Op::Put { key, .. }, Outcome::Put(Ok(_))) => answers.push((*key, true)),
            _ => return Ok(()),
        }
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (key, present) in answers {
            let slot = self.same[key];
            if self.keys[slot].is_empty_blob() {
                continue;
            }
            if present {
                self.seen_present[slot] = Some((step, heard.len()));
                continue;
            }
            let Some((seen_at, mark)) = self.seen_present[slot].take() else {
                continue;
            };
            let announced = heard[mark..]
                .iter()
                .any(|k| k.as_ref().is_none_or(|k| *k == self.keys[slot]));
            if !announced {
                return Err(format!(
                    "{:?} was present at step {seen_at} and is now absent, but the store, which \
                     says it reports every removal, announced none",
                    self.keys[slot]
                ));
            }
        }
        Ok(())
    }

    fn may_be_absent(&self, before: &[Option<Bytes>], key: usize) -> bool {
        self.may_forget || before[self.same[key]].is_none()
    }

    fn check_concurrent(
        &mut self,
        before: &[Option<Bytes>],
        group: &[Op],
        op: &Op,
        outcome: Outcome,
    ) -> std::result::Result<(), String> {
        match (op, outcome) {
            (Op::Put { key, blob, .. }, Outcome::Put(result)) => {
                let data = content(&self.keys, &self.blobs, *key, *blob);
                match result {
                    Ok(n) if n == data.len() as u64 => {
                        self.values[self.same[*key]] = Some(data);
                        Ok(())
                    }
                    Ok(n) => Err(format!("put returned {n} for a {}-byte object", data.len())),
                    Err(e) if self.may_forget && e.code() == Code::ResourceExhausted => Ok(()),
                    Err(e) => Err(format!("put failed: {e}")),
                }
            }
            (Op::Get { key, range }, Outcome::Get(result)) => {
                let candidates = self.candidates(before, group, *key);
                match result {
                    Ok(got) => {
                        let matches = candidates.iter().any(|value| {
                            range
                                .resolve(value.len() as u64)
                                .is_ok_and(|r| value.slice(r.start as usize..r.end as usize) == got)
                        });
                        if matches {
                            Ok(())
                        } else {
                            Err(format!(
                                "get returned {} bytes that match no stored value of the range \
                                 (stored values: {:?} bytes)",
                                got.len(),
                                candidates.iter().map(Bytes::len).collect::<Vec<_>>()
                            ))
                        }
                    }
                    Err(e) if e.code() == Code::NotFound => {
                        if self.may_be_absent(before, *key) {
                            Ok(())
                        } else {
                            Err(format!("get says absent, but the object was stored: {e}"))
                        }
                    }
                    Err(e) if e.code() == Code::OutOfRange => {
                        let sizes = candidates.iter().map(|v| v.len() as u64);
                        let digest_size = self.keys[*key].digest().map(|d| d.size());
                        if sizes.chain(digest_size).any(|len| range.offset > len) {
                            Ok(())
                        } else {
                            Err(format!("get says out of range for a valid range: {e}"))
                        }
                    }
                    Err(e) => Err(format!("get failed: {e}")),
                }
            }
            (Op::Has { keys }, Outcome::Has(result)) => {
                let sizes = result.map_err(|e| format!("has_many failed: {e}"))?;
                for (key, size) in keys.iter().zip(sizes) {
                    let candidates = self.candidates(before, group, *key);
                    match size {
                        Some(n) if candidates.iter().any(|v| v.len() as u64 == n) => {}
                        Some(n) => {
                            return Err(format!(
                                "has says {:?} is {n} bytes; stored values are {:?} bytes",
                                self.keys[*key],
                                candidates.iter().map(Bytes::len).collect::<Vec<_>>()
                            ));
                        }
                        None if self.may_be_absent(before, *key) => {}
                        None => {
                            return Err(format!(
                                "has says {:?} is absent, but it was stored",
                                self.keys[*key]
                            ));
                        }
                    }
                }
                Ok(())
            }
            _ => Err("internal: step and outcome do not match".into()),
        }
    }

    fn check_bad_put(
        &mut self,
        key: usize,
        outcome: Option<Result<u64>>,
    ) -> std::result::Result<(), String> {
        match outcome {
            None | Some(Err(_)) => Ok(()),
            // A content-addressed object already held may be acknowledged without reading
            // the body (an existence cache does this): nothing wrong is stored.
            Some(Ok(_))
                if self.keys[key].digest().is_some() && self.values[self.same[key]].is_some() =>
            {
                Ok(())
            }
            Some(Ok(n)) => Err(format!(
                "a put whose body failed was acknowledged ({n} bytes)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{BlobSpec, Content};

    #[tokio::test]
    async fn equal_blobs_share_one_digest_key_in_the_model() {
        let same = BlobSpec {
            len: 1,
            content: Content::Repeated,
            seed: 7,
        };
        let case = Case {
            blobs: vec![same, same],
            names: 0,
            ops: vec![Op::Put {
                key: 1,
                blob: 1,
                chunk: 1,
                exact: true,
            }],
        };
        // Key 0 is the same digest as key 1: the final check must expect it present.
        run_case(crate::Memory::default(), &case, false, None)
            .await
            .unwrap();
    }
}
