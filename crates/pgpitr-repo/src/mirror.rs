//! `pgpitr stream --copy-to`: a second repository kept in step as the
//! first is written. [`Mirror`] is the raw storage a streaming repository
//! writes through (below encryption, so the copy holds the same sealed
//! objects and never needs the key): every read goes to the primary, every
//! write is made there first and then to the copy, by a worker in the
//! order the primary acknowledged them (asynchronously), or beside it,
//! both before the write returns (`--copy-sync`: the flush position then
//! depends on both repositories).
//!
//! Deletions reach the copy only where they keep it consistent: tail pieces
//! and journals that an object of the copy covers, in-progress markers,
//! and the objects of backups the copy holds no `backup.json` of. Expiry
//! (complete segments, complete backups, whose `backup.json` goes first,
//! drill reports) is each repository's own: the copy keeps what it
//! received until its own `pgpitr expire` runs. The stream's lease is not
//! copied: no stream writes the copy as its own.
//!
//! Writes made elsewhere (a `pgpitr backup` process, a key rotation) and
//! whatever the copy missed while this stream was down reach it through
//! [`crate::copy::copy`] passes, at start and periodically.

use crate::backup::{self, BackupId};
use crate::wal::{self, WalObjectId, WalObjectKind};
use async_trait::async_trait;
use bytes::Bytes;
use pgpitr_storage::{
    JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Result, Storage, Upload, validate_key,
};
use pgpitr_types::WalSegSize;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Bytes of objects the queue holds for the copy; beyond this, it keeps
/// their keys only and reads them back from the primary when their turn
/// comes (a copy that is down or slow costs requests, not memory).
pub const MAX_HELD: u64 = 64 << 20;

/// Puts to the copy in flight at once.
const PARALLEL: usize = 4;

/// The longest pause between two attempts at the same write to the copy.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How far the copy is behind, for metrics: read at each scrape.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Bytes stored in the primary and not yet in the copy (the queue).
    pub lag_bytes: AtomicU64,
    /// Unix µs at which the oldest write still queued was acknowledged by
    /// the primary; 0 when the copy is in step.
    pub oldest_pending_us: AtomicI64,
    pub copied_objects: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub deleted_objects: AtomicU64,
    /// Writes to the copy that failed (each is retried until it succeeds).
    pub failures: AtomicU64,
    /// Catch-up passes ([`crate::copy::copy`]) that completed.
    pub passes: AtomicU64,
    /// Unix µs at which the last catch-up pass completed; 0 before.
    pub last_pass_us: AtomicI64,
    /// True while a catch-up pass runs.
    pub catching_up: AtomicBool,
}

/// One write the copy has yet to receive.
#[derive(Debug)]
enum Pending {
    /// `data` is `None` once the queue held too much: read it back from
    /// the primary (it may be gone by then: merged away, then deleted).
    /// `held`: what its data counts toward [`MAX_HELD`].
    Put {
        key: String,
        data: Option<Bytes>,
        size: u64,
        held: u64,
        since_us: i64,
    },
    Delete {
        keys: Vec<String>,
        since_us: i64,
    },
}

impl Pending {
    fn since_us(&self) -> i64 {
        match self {
            Pending::Put { since_us, .. } | Pending::Delete { since_us, .. } => *since_us,
        }
    }

    /// Runs once the writes before it are done, and before any after it:
    /// a deletion follows what covers it; a data key or a timeline history
    /// is in the copy before any object that needs it, and a backup's
    /// `backup.json` after everything it names.
    fn alone(&self) -> bool {
        match self {
            Pending::Delete { .. } => true,
            Pending::Put { key, .. } => {
                key.starts_with(pgpitr_crypt::keyring::PREFIX)
                    || key.starts_with(wal::HISTORY_PREFIX)
                    || (key.starts_with(backup::PREFIX) && key.ends_with(&format!("/{}", backup::INFO)))
            }
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            Pending::Put { key, .. } => Some(key),
            Pending::Delete { .. } => None,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Pending::Put { size, .. } => *size,
            Pending::Delete { .. } => 0,
        }
    }
}

/// A write the worker took and has not finished.
#[derive(Debug)]
struct Running {
    ticket: u64,
    since_us: i64,
    size: u64,
    /// A put's key: another write of it waits (the copy keeps the last).
    key: Option<String>,
}

#[derive(Debug, Default)]
struct Queue {
    ops: VecDeque<Pending>,
    /// What the `Put::data` held count toward [`MAX_HELD`].
    held: u64,
    running: Vec<Running>,
    /// A write that runs alone is running (see [`Pending::alone`]).
    alone: bool,
    next_ticket: u64,
}

struct Shared {
    primary: Arc<dyn Storage>,
    copy: Arc<dyn Storage>,
    seg: WalSegSize,
    sync: bool,
    queue: Mutex<Queue>,
    wake: Arc<Notify>,
    idle: Notify,
    stats: Arc<MirrorStats>,
}

/// The primary's storage with every write also made to the copy's.
#[derive(Clone)]
pub struct Mirror {
    shared: Arc<Shared>,
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl Mirror {
    /// Writes through to `primary` and copies to `copy`: asynchronously, by
    /// a worker on the current runtime, or, with `sync`, before each write
    /// returns. `seg` tells tail pieces from complete segments.
    pub fn new(primary: Arc<dyn Storage>, copy: Arc<dyn Storage>, seg: WalSegSize, sync: bool) -> Mirror {
        let shared = Arc::new(Shared {
            primary,
            copy,
            seg,
            sync,
            queue: Mutex::new(Queue::default()),
            wake: Arc::new(Notify::new()),
            idle: Notify::new(),
            stats: Arc::new(MirrorStats::default()),
        });
        if !sync {
            tokio::spawn(worker(Arc::downgrade(&shared), shared.wake.clone()));
        }
        Mirror { shared }
    }

    pub fn stats(&self) -> Arc<MirrorStats> {
        self.shared.stats.clone()
    }

    pub fn copy(&self) -> Arc<dyn Storage> {
        self.shared.copy.clone()
    }

    pub fn primary(&self) -> Arc<dyn Storage> {
        self.shared.primary.clone()
    }

    /// Waits until every write queued so far has reached the copy, or
    /// `timeout` passed; `false` then.
    pub async fn drain(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let idle = self.shared.idle.notified();
                if self.shared.is_idle() {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }

    /// What the copy must receive after the primary stored `key`.
    async fn after_put(&self, key: &str, data: Option<Bytes>, size: u64) -> Result<()> {
        let s = &self.shared;
        if !copied(key) {
            return Ok(());
        }
        if s.sync {
            let data = match data {
                Some(d) => d,
                None => s.primary.get(key).await?,
            };
            return s.put_one(key, Some(data)).await;
        }
        // A large object is most likely a view of a pooled buffer of about
        // a segment: that is what holding it pins.
        let charge = |d: &Bytes| {
            let n = d.len() as u64;
            if d.len() >= pgpitr_storage::POOL_MIN { n.max(s.seg.bytes()) } else { n }
        };
        s.push(|q| {
            let data = data.filter(|d| q.held + charge(d) <= MAX_HELD);
            let held = data.as_ref().map_or(0, charge);
            q.held += held;
            Pending::Put { key: key.to_string(), data, size, held, since_us: now_us() }
        });
        Ok(())
    }

    async fn after_delete(&self, keys: &[String]) -> Result<()> {
        let keys: Vec<String> = keys.iter().filter(|k| copied(k) && follows(self.shared.seg, k)).cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        if s.sync {
            return s.delete_in_copy(&keys).await;
        }
        s.push(|_| Pending::Delete { keys, since_us: now_us() });
        Ok(())
    }
}

/// Whether the copy receives `key` at all: not the stream's lease.
fn copied(key: &str) -> bool {
    !key.starts_with(crate::lease::PREFIX)
}

/// Whether the primary's deletion of `key` may be the copy's (the copy
/// checks what it holds before it follows: [`Shared::delete_in_copy`]).
fn follows(seg: WalSegSize, key: &str) -> bool {
    if let Some(rest) = key.strip_prefix(backup::PREFIX) {
        return rest.split_once('/').is_some_and(|(id, name)| BackupId::parse(id).is_some() && name != backup::INFO);
    }
    if key.starts_with(wal::PREFIX) {
        return WalObjectId::parse(key, seg).is_some_and(|id| id.kind != WalObjectKind::Segment);
    }
    false
}

impl Shared {
    fn push(&self, make: impl FnOnce(&mut Queue) -> Pending) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let op = make(&mut q);
        self.stats.lag_bytes.fetch_add(op.size(), Ordering::Relaxed);
        if q.ops.is_empty() && q.running.is_empty() {
            self.stats.oldest_pending_us.store(op.since_us(), Ordering::Relaxed);
        }
        q.ops.push_back(op);
        drop(q);
        self.wake.notify_one();
    }

    fn is_idle(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.ops.is_empty() && q.running.is_empty()
    }

    /// Takes the next write, unless `PARALLEL` run, it or one running
    /// must run alone, or a write of its key runs.
    fn take(&self) -> Option<(u64, Pending)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.running.len() >= PARALLEL || q.alone {
            return None;
        }
        let front = q.ops.front()?;
        if front.alone() && !q.running.is_empty() {
            return None;
        }
        if front.key().is_some_and(|k| q.running.iter().any(|r| r.key.as_deref() == Some(k))) {
            return None;
        }
        let op = q.ops.pop_front()?;
        q.alone = op.alone();
        if let Pending::Put { held, .. } = &op {
            q.held -= held;
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        let entry = Running { ticket, since_us: op.since_us(), size: op.size(), key: op.key().map(str::to_owned) };
        q.running.push(entry);
        Some((ticket, op))
    }

    fn done(&self, ticket: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = q.running.iter().position(|r| r.ticket == ticket) {
            let r = q.running.swap_remove(i);
            self.stats.lag_bytes.fetch_sub(r.size, Ordering::Relaxed);
        }
        q.alone = false;
        let oldest =
            q.running.iter().map(|r| r.since_us).chain(q.ops.front().map(Pending::since_us)).min().unwrap_or(0);
        self.stats.oldest_pending_us.store(oldest, Ordering::Relaxed);
        let idle = q.ops.is_empty() && q.running.is_empty();
        drop(q);
        self.wake.notify_one();
        if idle {
            self.idle.notify_waiters();
        }
    }

    /// Applies one write to the copy, retrying until it succeeds.
    async fn apply(&self, op: Pending) {
        let mut attempt = 0u32;
        loop {
            let result = match &op {
                Pending::Put { key, data, .. } => self.put_one(key, data.clone()).await,
                Pending::Delete { keys, .. } => self.delete_in_copy(keys).await,
            };
            let Err(e) = result else { return };
            attempt += 1;
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let backoff = Duration::from_millis(200u64.saturating_mul(1 << (attempt - 1).min(8))).min(MAX_BACKOFF);
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(copy = %self.copy.describe(), attempt, retry_in = ?backoff, "writing to the copy failed, will retry: {e}");
            }
            tokio::time::sleep(backoff).await;
        }
    }

    /// Deletes from the copy what of `keys` it no longer needs: tail
    /// pieces and journals that another of its objects covers, and a
    /// backup's objects while the copy holds no `backup.json` of it (a
    /// failed backup's; expiry deletes `backup.json` first, and the copy's
    /// expiry is its own).
    async fn delete_in_copy(&self, keys: &[String]) -> Result<()> {
        let mut gone = Vec::new();
        let mut complete: HashMap<String, bool> = HashMap::new();
        let mut listed: HashMap<String, Vec<WalObjectId>> = HashMap::new();
        for key in keys {
            if let Some(rest) = key.strip_prefix(backup::PREFIX) {
                let Some((id, name)) = rest.split_once('/') else { continue };
                let info = format!("{}{id}/{}", backup::PREFIX, backup::INFO);
                let held = match complete.get(&info) {
                    Some(h) => *h,
                    None => {
                        let h = match self.copy.head(&info).await {
                            Ok(_) => true,
                            Err(e) if e.is_not_found() => false,
                            Err(e) => return Err(e),
                        };
                        *complete.entry(info).or_insert(h)
                    }
                };
                if name == backup::MARKER || !held {
                    gone.push(key.clone());
                }
                continue;
            }
            let Some(id) = WalObjectId::parse(key, self.seg) else { continue };
            let dir = WalObjectId::segment(id.tli, id.segno).key(self.seg);
            let others = match listed.get(&dir) {
                Some(o) => o,
                None => {
                    let objs = self.copy.list(&dir).await?;
                    let ids = objs.iter().filter_map(|m| WalObjectId::parse(&m.key, self.seg)).collect();
                    listed.entry(dir).or_insert(ids)
                }
            };
            if crate::copy::covered(others, &id, self.seg) {
                gone.push(key.clone());
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        self.copy.delete_many(&gone).await?;
        self.stats.deleted_objects.fetch_add(gone.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn put_one(&self, key: &str, data: Option<Bytes>) -> Result<()> {
        let data = match data {
            Some(d) => d,
            None => match self.primary.get(key).await {
                Ok(d) => d,
                // Deleted since (a merged piece): its deletion is queued.
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let n = data.len() as u64;
        self.copy.put(key, data).await?;
        self.stats.copied_objects.fetch_add(1, Ordering::Relaxed);
        self.stats.copied_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Marks a write done however its task ends (a panic included), so that
/// the queue moves on.
struct Done(Arc<Shared>, u64);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

/// Applies queued writes to the copy until the mirror is dropped.
async fn worker(shared: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        let woken = wake.notified();
        {
            let Some(s) = shared.upgrade() else { return };
            while let Some((ticket, op)) = s.take() {
                let done = Done(s.clone(), ticket);
                running.spawn(async move {
                    done.0.apply(op).await;
                    drop(done);
                });
            }
        }
        tokio::select! {
            _ = woken => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            // The mirror was dropped while idle: nothing wakes this task.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[async_trait]
impl Storage for Mirror {
    fn describe(&self) -> String {
        self.shared.primary.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let s = &self.shared;
        let size = data.len() as u64;
        if s.sync && copied(key) {
            let (p, c) = tokio::join!(s.primary.put(key, data.clone()), s.put_one(key, Some(data)));
            return p.and(c);
        }
        s.primary.put(key, data.clone()).await?;
        self.after_put(key, Some(data), size).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let s = &self.shared;
        let size = data.len() as u64;
        if s.sync && copied(key) {
            // The copy may hold an earlier attempt's object: as good (the
            // same bytes, or the same plaintext sealed again).
            let (p, c) = tokio::join!(s.primary.put_if_absent(key, data.clone()), s.copy.put_if_absent(key, data));
            c?;
            s.stats.copied_objects.fetch_add(1, Ordering::Relaxed);
            s.stats.copied_bytes.fetch_add(size, Ordering::Relaxed);
            return p;
        }
        let outcome = s.primary.put_if_absent(key, data.clone()).await?;
        // Already there: perhaps stored before the copy was set up; the
        // copy takes the primary's object.
        let data = (outcome == PutOutcome::Created).then_some(data);
        self.after_put(key, data, size).await?;
        Ok(outcome)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.shared.primary.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.shared.primary.get_range(key, range).await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        self.shared.primary.get_stream(key).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.shared.primary.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.shared.primary.list(prefix).await
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        self.shared.primary.list_page(prefix, start_after, max).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.shared.primary.list_dirs(prefix).await
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.shared.primary.list_shallow(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.shared.primary.delete(key).await?;
        self.after_delete(std::slice::from_ref(&key.to_string())).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.shared.primary.delete_many(keys).await?;
        self.after_delete(keys).await
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let inner = self.shared.primary.start_upload(key).await?;
        Ok(Box::new(MirroredUpload { inner, key: key.to_string(), mirror: self.clone(), copied: false }))
    }

    async fn check(&self) -> Result<()> {
        self.shared.primary.check().await
    }

    /// A journal grows in place on one repository only: a mirrored stream
    /// stores tail pieces instead, which both receive.
    async fn create_journal(&self, key: &str, _size_hint: u64) -> Result<JournalOpen> {
        validate_key(key)?;
        Ok(JournalOpen::Unsupported)
    }
}

/// An upload to the primary whose object the copy reads back once complete.
struct MirroredUpload {
    inner: Box<dyn Upload>,
    key: String,
    mirror: Mirror,
    copied: bool,
}

#[async_trait]
impl Upload for MirroredUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        self.inner.put_part(data).await
    }

    async fn try_complete(&mut self) -> Result<u64> {
        let size = self.inner.try_complete().await?;
        if !self.copied {
            self.mirror.after_put(&self.key, None, size).await?;
            self.copied = true;
        }
        Ok(size)
    }

    async fn try_abort(&mut self) -> Result<()> {
        self.inner.try_abort().await
    }
}

#[cfg(test)]
mod tests;
