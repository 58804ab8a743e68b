//! A fault-injecting wrapper around a real backend, so retry paths are
//! tested against real storage instead of a mock.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, Result, StorageError};
use crate::{Journal, JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Storage, Upload};

/// Which calls [`FaultyStorage`] fails, and how.
#[derive(Debug, Clone, Copy)]
pub enum FaultMode {
    /// Fail the first `n` attempts of each distinct (operation, key) with a
    /// transient error, without reaching the backend.
    FailFirst(u32),
    /// Run the first `n` attempts of each (operation, key) on the backend,
    /// then report a transient error anyway, as if the response was lost.
    /// `put_part` is failed before the backend instead, since a lost
    /// `put_part` response cannot happen in-process and would break the
    /// upload retry contract.
    LoseFirst(u32),
    /// Fail every call with a permanent error.
    FailAllPermanent,
    /// Fail each call with this probability (0.0 to 1.0), transiently.
    FailFraction(f64),
    /// Fail every call this picks (by operation and counting key),
    /// transiently: a step that never succeeds, as if killed before it.
    FailCalls(fn(Op, &str) -> bool),
}

/// Wraps a backend and injects failures according to a [`FaultMode`],
/// counting every attempt per (operation, key) so tests can assert that
/// retries happened. `FailFirst(0)` only counts.
///
/// Keys used for counting: the object key; the prefix for `list` and
/// `list_dirs`; `""` for `check` and `delete_many`; `"<key>#<n>"` for the
/// n-th (0-based) part of an upload.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    mode: FaultMode,
    location: String,
    state: Mutex<State>,
    /// Calls this picks wait this long before they run (a slow backend).
    slow: Option<(SlowCalls, Duration)>,
}

/// Picks calls by operation and counting key.
type SlowCalls = fn(Op, &str) -> bool;

#[derive(Debug)]
struct State {
    attempts: HashMap<(Op, String), u32>,
    injected: u64,
    rng: fastrand::Rng,
}

enum Decision {
    Pass,
    FailBefore(StorageError),
    FailAfter(StorageError),
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, op: Op, key: &str) -> Decision {
        let mut st = self.state();
        let count = st.attempts.entry((op, key.to_owned())).or_insert(0);
        *count += 1;
        let attempt = *count;
        let transient = || {
            StorageError::transient(
                op,
                key,
                self.location.clone(),
                format!("injected fault: attempt {attempt} of {} fails", op.name()),
            )
        };
        let decision = match self.mode {
            FaultMode::FailFirst(n) if attempt <= n => Decision::FailBefore(transient()),
            FaultMode::LoseFirst(n) if attempt <= n && op == Op::PutPart => Decision::FailBefore(transient()),
            FaultMode::LoseFirst(n) if attempt <= n => Decision::FailAfter(transient()),
            FaultMode::FailAllPermanent => Decision::FailBefore(StorageError::permanent(
                op,
                key,
                self.location.clone(),
                "injected permanent fault",
            )),
            FaultMode::FailFraction(p) if st.rng.f64() < p => Decision::FailBefore(transient()),
            FaultMode::FailCalls(which) if which(op, key) => Decision::FailBefore(transient()),
            _ => Decision::Pass,
        };
        if !matches!(decision, Decision::Pass) {
            st.injected += 1;
        }
        decision
    }

    async fn run<T>(&self, op: Op, key: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        if let Some((which, delay)) = self.slow
            && which(op, key)
        {
            tokio::time::sleep(delay).await;
        }
        match self.decide(op, key) {
            Decision::Pass => call.await,
            Decision::FailBefore(e) => Err(e),
            // The backend's own error wins; success is "lost".
            Decision::FailAfter(e) => call.await.and(Err(e)),
        }
    }
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner`; `FailFraction` draws from a fixed seed so runs repeat.
    pub fn new(inner: S, mode: FaultMode) -> Self {
        Self::with_seed(inner, mode, 0x5eed)
    }

    /// Like [`FaultyStorage::new`] with an explicit random seed.
    pub fn with_seed(inner: S, mode: FaultMode, seed: u64) -> Self {
        let location = inner.describe();
        let state = State { attempts: HashMap::new(), injected: 0, rng: fastrand::Rng::with_seed(seed) };
        FaultyStorage { inner, shared: Arc::new(Shared { mode, location, state: Mutex::new(state), slow: None }) }
    }

    /// Delays the calls `which` picks (by operation and counting key) by
    /// `delay` each, as a slow or distant backend would. For a wrapper that
    /// has not been used yet.
    pub fn slowed(mut self, which: SlowCalls, delay: Duration) -> Self {
        Arc::get_mut(&mut self.shared).expect("slowed before any upload or journal shares the state").slow =
            Some((which, delay));
        self
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Attempts made so far of `op` on `key` (see the type docs for keys).
    pub fn attempts(&self, op: Op, key: &str) -> u32 {
        self.shared.state().attempts.get(&(op, key.to_owned())).copied().unwrap_or(0)
    }

    /// Attempts of `op` over all keys.
    pub fn total_attempts(&self, op: Op) -> u64 {
        self.shared.state().attempts.iter().filter(|((o, _), _)| *o == op).map(|(_, n)| u64::from(*n)).sum()
    }

    /// How many failures were injected in total.
    pub fn injected(&self) -> u64 {
        self.shared.state().injected
    }

    /// Forgets all counts, so `FailFirst` fails the next attempts again.
    pub fn reset(&self) {
        let mut st = self.shared.state();
        st.attempts.clear();
        st.injected = 0;
    }
}

#[async_trait]
impl<S: Storage> Storage for FaultyStorage<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.shared.run(Op::Put, key, self.inner.put(key, data)).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.shared.run(Op::PutIfAbsent, key, self.inner.put_if_absent(key, data)).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.shared.run(Op::Get, key, self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.shared.run(Op::GetRange, key, self.inner.get_range(key, range)).await
    }
    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        self.shared.run(Op::GetStream, key, self.inner.get_stream(key)).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.shared.run(Op::Head, key, self.inner.head(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.shared.run(Op::List, prefix, self.inner.list(prefix)).await
    }
    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        self.shared.run(Op::List, prefix, self.inner.list_page(prefix, start_after, max)).await
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.shared.run(Op::ListDirs, prefix, self.inner.list_dirs(prefix)).await
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.shared.run(Op::List, prefix, self.inner.list_shallow(prefix)).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.shared.run(Op::Delete, key, self.inner.delete(key)).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.shared.run(Op::DeleteMany, "", self.inner.delete_many(keys)).await
    }
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let inner = self.shared.run(Op::StartUpload, key, self.inner.start_upload(key)).await?;
        Ok(Box::new(FaultyUpload { inner, shared: self.shared.clone(), key: key.to_owned(), parts: 0 }))
    }
    async fn check(&self) -> Result<()> {
        self.shared.run(Op::Check, "", self.inner.check()).await
    }
    fn s3_site(&self) -> Option<crate::S3Site> {
        self.inner.s3_site()
    }
    async fn stored_checksum(&self, key: &str) -> Result<(u64, u32)> {
        self.shared.run(Op::Head, key, self.inner.stored_checksum(key)).await
    }
    async fn copy_object(&self, from: &crate::S3Site, key: &str) -> Result<Option<String>> {
        self.shared.run(Op::CopyObject, key, self.inner.copy_object(from, key)).await
    }
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        match self.shared.run(Op::CreateJournal, key, self.inner.create_journal(key, size_hint)).await? {
            JournalOpen::Created(inner) => Ok(JournalOpen::Created(Box::new(FaultyJournal {
                inner,
                shared: self.shared.clone(),
                key: key.to_owned(),
                appends: 0,
            }))),
            other => Ok(other),
        }
    }
}

struct FaultyJournal {
    inner: Box<dyn Journal>,
    shared: Arc<Shared>,
    key: String,
    /// Appends so far; names the next append's counter key.
    appends: u32,
}

#[async_trait]
impl Journal for FaultyJournal {
    async fn append(&mut self, data: Bytes) -> Result<()> {
        let counter = format!("{}#{}", self.key, self.appends);
        self.appends += 1;
        self.shared.run(Op::Append, &counter, self.inner.append(data)).await
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

struct FaultyUpload {
    inner: Box<dyn Upload>,
    shared: Arc<Shared>,
    key: String,
    /// Accepted `put_part` calls so far; names the next part's counter key.
    parts: u32,
}

#[async_trait]
impl Upload for FaultyUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let counter = format!("{}#{}", self.key, self.parts);
        self.shared.run(Op::PutPart, &counter, self.inner.put_part(data)).await?;
        self.parts += 1;
        Ok(())
    }
    async fn try_complete(&mut self) -> Result<u64> {
        self.shared.run(Op::CompleteUpload, &self.key, self.inner.try_complete()).await
    }
    async fn try_abort(&mut self) -> Result<()> {
        self.shared.run(Op::AbortUpload, &self.key, self.inner.try_abort()).await
    }
}
