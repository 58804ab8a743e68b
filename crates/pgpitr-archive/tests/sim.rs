//! Deterministic simulation of the durability core: a [`WalWriter`] fed by
//! a simulated server, storing into simulated storage that delays every
//! call by a seeded amount (so completions reorder), fails calls before
//! they apply, loses acknowledgements of calls that did apply, and tears
//! journal appends. Virtual time (tokio's paused clock) makes a schedule of
//! minutes run in milliseconds.
//!
//! The property: every position reported to the server is at or below the
//! end of the WAL that a fresh reader finds in the repository at that
//! moment and after every later deletion, and that WAL is byte for byte
//! what the server sent.
//!
//! `PGPITR_SIM_SCHEDULES=N` runs N seeds (default 2000);
//! `PGPITR_SIM_SEED=S` runs seed S alone, to replay a failure. A replay
//! usually takes the same path: segments are encoded on tokio's blocking
//! pool, whose timing against the writer's task is not simulated.

use async_trait::async_trait;
use bytes::Bytes;
use pgpitr_archive::{Flow, ResumePlan, StreamConfig, StreamError, StreamStats, WalSource, WalWriter};
use pgpitr_pgwire::StreamMessage;
use pgpitr_repo::{ClusterIdentity, Repository, wal};
use pgpitr_storage::{
    Journal, JournalOpen, ListPage, MemoryStorage, ObjectMeta, ObjectStream, Op, PutOutcome, Storage, StorageError,
    Upload,
};
use pgpitr_types::{Lsn, TimelineId, WalSegSize};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SEG: u64 = 1 << 20;
const START: Lsn = Lsn(16 << 20);
const TLI: TimelineId = TimelineId(1);

fn seg() -> WalSegSize {
    WalSegSize::new(SEG).unwrap()
}

/// What one schedule draws: the storage's behaviour and the stream's shape.
#[derive(Debug, Clone)]
struct Knobs {
    fail: f64,
    lose: f64,
    tear: f64,
    max_delay_ms: u64,
    journals: bool,
    synchronous: bool,
    flush_interval_ms: u64,
    segments_in_flight: usize,
    wal_len: usize,
    /// Shut down after this many messages (else after all of them).
    stop_after: Option<usize>,
}

impl Knobs {
    fn draw(rng: &mut fastrand::Rng) -> Knobs {
        Knobs {
            fail: [0.0, 0.05, 0.3][rng.usize(..3)],
            lose: [0.0, 0.05, 0.3][rng.usize(..3)],
            tear: [0.0, 0.2][rng.usize(..2)],
            max_delay_ms: [1, 20, 400][rng.usize(..3)],
            journals: rng.bool(),
            synchronous: rng.bool(),
            flush_interval_ms: [50, 200, 1000][rng.usize(..3)],
            segments_in_flight: rng.usize(1..=3),
            // Half within the first segment, half across segments.
            wal_len: match rng.bool() {
                true => rng.usize(1..SEG as usize / 4),
                false => rng.usize(1..(2 * SEG as usize + SEG as usize / 2)),
            },
            stop_after: rng.bool().then(|| rng.usize(0..400)),
        }
    }
}

enum Fate {
    Apply,
    /// Applied, but the caller hears a failure.
    LoseAck,
}

struct Faults {
    rng: Mutex<fastrand::Rng>,
    knobs: Knobs,
    on: AtomicBool,
}

impl Faults {
    fn draw<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap())
    }

    async fn delay(&self) {
        let ms = self.draw(|r| r.u64(0..=self.knobs.max_delay_ms));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Waits the call's latency, then fails it or lets it apply.
    async fn before(&self, op: Op, key: &str) -> Result<Fate, StorageError> {
        self.delay().await;
        if !self.on.load(Ordering::Relaxed) {
            return Ok(Fate::Apply);
        }
        let (fail, lose) = self.draw(|r| (r.f64() < self.knobs.fail, r.f64() < self.knobs.lose));
        if fail {
            return Err(StorageError::transient(op, key, "sim", "injected failure"));
        }
        Ok(if lose { Fate::LoseAck } else { Fate::Apply })
    }

    /// The acknowledgement travels back, or is lost.
    async fn after<T>(&self, fate: Fate, op: Op, key: &str, r: Result<T, StorageError>) -> Result<T, StorageError> {
        self.delay().await;
        match fate {
            Fate::LoseAck if r.is_ok() => Err(StorageError::transient(op, key, "sim", "acknowledgement lost")),
            _ => r,
        }
    }
}

struct SimStorage {
    inner: MemoryStorage,
    faults: Arc<Faults>,
    /// The highest flush position reported so far: no deletion may take
    /// the repository below it.
    reported: Arc<AtomicU64>,
    seed: u64,
}

impl SimStorage {
    async fn still_durable(&self, what: &str) {
        let reported = Lsn(self.reported.load(Ordering::Relaxed));
        let found = durable_end(&self.inner).await;
        assert!(
            reported <= found,
            "seed {}: after {what}, a fresh reader finds WAL only up to {found}, but {reported} was reported",
            self.seed
        );
    }
}

#[async_trait]
impl Storage for SimStorage {
    fn describe(&self) -> String {
        "sim".into()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let fate = self.faults.before(Op::Put, key).await?;
        let r = self.inner.put(key, data).await;
        self.faults.after(fate, Op::Put, key, r).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StorageError> {
        let fate = self.faults.before(Op::PutIfAbsent, key).await?;
        let r = self.inner.put_if_absent(key, data).await;
        self.faults.after(fate, Op::PutIfAbsent, key, r).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.faults.before(Op::Get, key).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.faults.before(Op::GetRange, key).await?;
        self.inner.get_range(key, range).await
    }
    async fn get_stream(&self, key: &str) -> Result<ObjectStream, StorageError> {
        self.faults.before(Op::GetStream, key).await?;
        self.inner.get_stream(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.faults.before(Op::Head, key).await?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.faults.before(Op::List, prefix).await?;
        self.inner.list(prefix).await
    }
    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<ListPage, StorageError> {
        self.faults.before(Op::List, prefix).await?;
        self.inner.list_page(prefix, after, max).await
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.faults.before(Op::ListDirs, prefix).await?;
        self.inner.list_dirs(prefix).await
    }
    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.faults.before(Op::List, prefix).await?;
        self.inner.list_shallow(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let fate = self.faults.before(Op::Delete, key).await?;
        let r = self.inner.delete(key).await;
        self.still_durable(&format!("deleting {key}")).await;
        self.faults.after(fate, Op::Delete, key, r).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let fate = self.faults.before(Op::DeleteMany, "").await?;
        let r = self.inner.delete_many(keys).await;
        self.still_durable(&format!("deleting {keys:?}")).await;
        self.faults.after(fate, Op::DeleteMany, "", r).await
    }
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        Err(StorageError::permanent(Op::StartUpload, key, "sim", "the writer stores WAL in one request"))
    }
    async fn check(&self) -> Result<(), StorageError> {
        Ok(())
    }
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen, StorageError> {
        if !self.faults.knobs.journals {
            return Ok(JournalOpen::Unsupported);
        }
        let fate = self.faults.before(Op::CreateJournal, key).await?;
        let r = match self.inner.create_journal(key, size_hint).await {
            Ok(JournalOpen::Created(j)) => Ok(JournalOpen::Created(Box::new(SimJournal {
                inner: j,
                faults: self.faults.clone(),
                key: key.into(),
            }))),
            other => other,
        };
        self.faults.after(fate, Op::CreateJournal, key, r).await
    }
}

struct SimJournal {
    inner: Box<dyn Journal>,
    faults: Arc<Faults>,
    key: String,
}

#[async_trait]
impl Journal for SimJournal {
    async fn append(&mut self, data: Bytes) -> Result<(), StorageError> {
        let fate = self.faults.before(Op::Append, &self.key).await?;
        let torn = self.faults.on.load(Ordering::Relaxed) && self.faults.draw(|r| r.f64() < self.faults.knobs.tear);
        if torn {
            // Part of the frame reached the disk before the failure.
            let cut = self.faults.draw(|r| r.usize(..data.len()));
            self.inner.append(data.slice(..cut)).await?;
            return Err(StorageError::transient(Op::Append, &self.key, "sim", "torn append"));
        }
        let r = self.inner.append(data).await;
        self.faults.after(fate, Op::Append, &self.key, r).await
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

/// The end of the WAL from [`START`] that a fresh reader finds, straight
/// from the memory under the faults.
async fn durable_end(store: &MemoryStorage) -> Lsn {
    let (tls, _) = wal::scan(store, seg()).await.expect("listing memory cannot fail");
    tls.get(&TLI).and_then(|t| t.ranges.iter().find(|r| r.0 <= START && START <= r.1)).map_or(START, |r| r.1)
}

/// Checks what a fresh reader assembles against what the server sent, in
/// the segments from the one holding `from` up to `end`.
async fn check_bytes(store: &MemoryStorage, sent: &[u8], from: Lsn, end: Lsn, seed: u64) {
    let (tls, _) = wal::scan(store, seg()).await.unwrap();
    let Some(tl) = tls.get(&TLI) else { return };
    let mut at = from.max(START).segment_floor(seg());
    while at < end {
        let segno = at.segment_number(seg());
        let a = wal::assemble_segment(store, seg(), tl, segno)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: segment {segno} does not assemble: {e}"))
            .unwrap_or_else(|| panic!("seed {seed}: segment {segno} is missing below {end}"));
        let from = (at.0 - START.0) as usize;
        let n = (SEG.min(end.0 - at.0) as usize).min(a.valid_len as usize);
        assert!(n as u64 == SEG.min(end.0 - at.0), "seed {seed}: segment {segno} holds {} bytes", a.valid_len);
        assert!(a.data[..n] == sent[from..from + n], "seed {seed}: segment {segno} holds other bytes than were sent");
        at = Lsn(at.0 + SEG);
    }
}

/// The server's side: WAL in messages at seeded intervals, and the check
/// of every flush position reported to it.
struct SimSource {
    msgs: VecDeque<StreamMessage>,
    rng: fastrand::Rng,
    next_at: Option<Instant>,
    shutdown: CancellationToken,
    store: MemoryStorage,
    sent: Arc<[u8]>,
    /// The highest flush position reported, shared with the storage.
    reported: Arc<AtomicU64>,
    /// Bytes up to here were found to be what was sent.
    checked: Lsn,
    seed: u64,
}

impl WalSource for SimSource {
    async fn recv(&mut self) -> Result<StreamMessage, StreamError> {
        if self.msgs.is_empty() {
            self.shutdown.cancel();
            std::future::pending::<()>().await;
        }
        let gap = match self.rng.u8(..100) {
            0..5 => self.rng.u64(100..1500), // quiet: the flush timer fires
            _ => self.rng.u64(0..4),
        };
        let at = *self.next_at.get_or_insert(Instant::now() + Duration::from_millis(gap));
        tokio::time::sleep_until(at).await;
        self.next_at = None;
        Ok(self.msgs.pop_front().expect("not empty"))
    }

    async fn report(&mut self, write: Lsn, flush: Lsn, apply: Lsn) -> Result<(), StreamError> {
        let found = durable_end(&self.store).await;
        for (what, lsn) in [("write", write), ("flush", flush), ("apply", apply)] {
            assert!(
                lsn == Lsn::INVALID || lsn <= found,
                "seed {}: {what} position {lsn} reported, but a fresh reader finds WAL only up to {found}",
                self.seed
            );
        }
        if flush > Lsn(self.reported.load(Ordering::Relaxed)) {
            self.reported.store(flush.0, Ordering::Relaxed);
        }
        // What reports added since the last check is the bytes that were
        // sent (checked at one report in 8: assembly is the costly part).
        if flush > self.checked && self.rng.u8(..8) == 0 {
            check_bytes(&self.store, &self.sent, self.checked, flush, self.seed).await;
            self.checked = flush;
        }
        Ok(())
    }

    async fn end(self) -> Result<(), StreamError> {
        Ok(())
    }
}

/// The messages a server sends for `sent`, from [`START`].
fn messages(rng: &mut fastrand::Rng, sent: &Bytes, stop_after: Option<usize>) -> VecDeque<StreamMessage> {
    let mut out = VecDeque::new();
    let mut at = 0usize;
    while at < sent.len() && stop_after.is_none_or(|n| out.len() < n) {
        if rng.u8(..100) < 3 {
            let end_of_wal = Lsn(START.0 + at as u64);
            out.push_back(StreamMessage::Keepalive { end_of_wal, send_time: 0, reply_requested: true });
            continue;
        }
        let len = match rng.u8(..10) {
            0..5 => rng.usize(1..512),
            5..9 => rng.usize(512..16384),
            _ => rng.usize(16384..131072),
        }
        .min(sent.len() - at);
        let start = Lsn(START.0 + at as u64);
        out.push_back(StreamMessage::XLogData {
            start,
            end_of_wal: Lsn(START.0 + sent.len() as u64),
            send_time: 0,
            data: sent.slice(at..at + len),
        });
        at += len;
    }
    out
}

async fn schedule(seed: u64) {
    fastrand::seed(seed); // the writer's own jitter
    let mut rng = fastrand::Rng::with_seed(seed);
    let knobs = Knobs::draw(&mut rng);
    let mut sent = vec![0u8; knobs.wal_len];
    (0..sent.len()).step_by(97).for_each(|i| sent[i] = rng.u8(..));
    let sent = Bytes::from(sent);
    let msgs = messages(&mut rng, &sent, knobs.stop_after);
    let received = msgs.iter().fold(START, |end, m| match m {
        StreamMessage::XLogData { start, data, .. } => Lsn(start.0 + data.len() as u64),
        _ => end,
    });

    let store = MemoryStorage::new();
    let identity = ClusterIdentity { system_identifier: 7, pg_version_num: 150000, wal_segment_size: seg() };
    Repository::init(Arc::new(store.clone()), &identity).await.unwrap();
    let faults = Arc::new(Faults {
        rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)),
        knobs: knobs.clone(),
        on: AtomicBool::new(false),
    });
    let reported = Arc::new(AtomicU64::new(0));
    let sim = SimStorage { inner: store.clone(), faults: faults.clone(), reported: reported.clone(), seed };
    let repo = Repository::open(Arc::new(sim)).await.unwrap();
    faults.on.store(true, Ordering::Relaxed);

    let cfg = StreamConfig {
        synchronous: knobs.synchronous,
        flush_interval: Duration::from_millis(knobs.flush_interval_ms),
        max_segments_in_flight: knobs.segments_in_flight,
        shutdown_timeout: Duration::from_secs(24 * 3600),
        ..StreamConfig::default()
    };
    let plan = ResumePlan::fresh(TLI, START, seg());
    let mut writer = WalWriter::new(&repo, &cfg, plan, Arc::new(StreamStats::default()), CancellationToken::new());
    let shutdown = CancellationToken::new();
    let sent: Arc<[u8]> = Arc::from(&sent[..]);
    let mut source = SimSource {
        msgs,
        rng: fastrand::Rng::with_seed(seed ^ 0xa11),
        next_at: None,
        shutdown: shutdown.clone(),
        store: store.clone(),
        sent: sent.clone(),
        reported: reported.clone(),
        checked: START,
        seed,
    };
    // The writer consumes the source at its end; the checks happen as it reports.
    let flow = writer.stream(&mut source, &shutdown).await;
    assert!(matches!(flow, Ok(Flow::Shutdown)), "seed {seed} ({knobs:?}): the stream ended with {:?}", flow.err());
    // Shutdown stores everything received, and says so.
    let end = durable_end(&store).await;
    assert_eq!(end, received, "seed {seed} ({knobs:?}): after shutdown the repository ends at {end}");
    let reported = Lsn(reported.load(Ordering::Relaxed));
    assert_eq!(reported, if received > START { received } else { Lsn::INVALID }, "seed {seed} ({knobs:?})");
    check_bytes(&store, &sent, START, end, seed).await;
}

#[test]
fn the_flush_position_never_passes_what_a_fresh_reader_finds() {
    let seeds: Vec<u64> = match std::env::var("PGPITR_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PGPITR_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("PGPITR_SIM_SCHEDULES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000);
            (0..n).collect()
        }
    };
    let t0 = std::time::Instant::now();
    for &seed in &seeds {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(schedule(seed));
    }
    eprintln!("{} schedules in {:.1} s", seeds.len(), t0.elapsed().as_secs_f64());
}
