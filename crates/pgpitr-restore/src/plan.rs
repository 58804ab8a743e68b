//! Planning a restore before anything is written: which backup, which
//! timelines, which WAL, and which recovery settings make Postgres stop
//! exactly where asked.
//!
//! Everything is decided from the repository listing (coverage, from keys
//! alone) and the commit-time index (object headers, read with ranged GETs):
//!
//! ```text
//! target timeline ──history──▶ path: [(tli 1, 0..S1), (tli 2, S1..S2), (tli 3, S2..)]
//! backups on the path, newest first ──▶ first whose stop point precedes the target
//! commit index along the path ──▶ where recovery will stop, and whether it can
//! coverage along the path ──▶ every byte from the backup's start to that stop
//! ```
//!
//! Postgres 14+ refuses to start when a recovery target is never reached, so
//! the plan only writes a target that exists in the stored WAL: a time target
//! for which no later commit is stored becomes an LSN target at the last
//! stored commit (the same data), and "latest" writes no target at all.
//!
//! The restorable window of a timeline: from the stop time of the oldest
//! backup on its history to its latest restorable time, the time of the
//! newest commit stored on that history (or the newest backup's stop time
//! when that is later). A target in a WAL gap is refused naming the gap.

use crate::target::{Target, TimelineTarget, format_time};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_repo::object::{self, RestorePoint, TimedLsn, WalSummary};
use pgpitr_repo::wal::{self, TimelineWal, WalObjectId, WalObjectKind};
use pgpitr_repo::{RepoError, Repository};
use pgpitr_storage::Storage;
use pgpitr_types::{Lsn, TimelineHistory, TimelineId, WalSegSize};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What planning needs to know about a complete backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupPoint {
    pub id: String,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    /// Recovery is consistent once WAL up to here is replayed.
    pub stop_lsn: Lsn,
    /// When the backup finished (Unix µs): every commit it contains is older.
    pub stop_time_us: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(
        "target {} is before the earliest restorable time {} (the end of the oldest backup on timeline {tli}'s history)",
        format_time(*.target),
        format_time(*.earliest)
    )]
    BeforeEarliest { target: i64, earliest: i64, tli: TimelineId },
    #[error(
        "target {} is after the latest restorable time {} (the newest commit stored on timeline {tli}'s history); \
         --target latest recovers everything stored",
        format_time(*.target),
        format_time(*.latest)
    )]
    AfterLatest { target: i64, latest: i64, tli: TimelineId },
    #[error(
        "target LSN {target} is before the earliest restorable LSN {earliest} (the end of the oldest backup on timeline {tli}'s history)"
    )]
    LsnBeforeEarliest { target: Lsn, earliest: Lsn, tli: TimelineId },
    #[error("target LSN {target} is after the end of the stored WAL {end} on timeline {tli}'s history")]
    LsnAfterLatest { target: Lsn, end: Lsn, tli: TimelineId },
    #[error("{0}")]
    Gap(String),
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<pgpitr_storage::StorageError> for PlanError {
    fn from(e: pgpitr_storage::StorageError) -> Self {
        PlanError::Repo(e.into())
    }
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// One timeline on a history: it holds the WAL of `begin..end` (`end` is
/// `None` for the target timeline itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathStep {
    pub timeline: TimelineId,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

impl PathStep {
    fn end_or_max(&self) -> Lsn {
        self.end.unwrap_or(Lsn::MAX)
    }
}

/// The timelines recovery to `target` walks through, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelinePath {
    pub target: TimelineId,
    pub steps: Vec<PathStep>,
}

impl TimelinePath {
    pub fn from_history(h: &TimelineHistory) -> Self {
        let mut steps = Vec::with_capacity(h.entries.len() + 1);
        let mut begin = Lsn(0);
        for e in &h.entries {
            steps.push(PathStep { timeline: e.parent, begin, end: Some(e.switchpoint) });
            begin = e.switchpoint;
        }
        steps.push(PathStep { timeline: h.tli, begin, end: None });
        TimelinePath { target: h.tli, steps }
    }

    /// True when recovery from `b` can follow this path: the backup's
    /// timeline is on it and the backup ended before that timeline did.
    pub fn holds_backup(&self, b: &BackupPoint) -> bool {
        self.steps.iter().any(|s| s.timeline == b.timeline && s.begin <= b.start_lsn && b.stop_lsn <= s.end_or_max())
    }

    /// The per-timeline LSN ranges whose segments recovery reads to replay
    /// `from..to`. Postgres reads the segment holding a switch point from the
    /// new timeline (which repeats the parent's bytes before the switch), so
    /// a timeline is needed up to the segment holding its end only.
    pub fn needed(&self, seg: WalSegSize, from: Lsn, to: Lsn) -> Vec<(TimelineId, Lsn, Lsn)> {
        // Postgres reads segment k from the newest timeline on the path that
        // began at or before k, and parts are stored from offset 0.
        let first = from.segment_floor(seg);
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let serves_from = if i == 0 { Lsn(0) } else { s.begin.segment_floor(seg) };
            let serves_to = self.steps.get(i + 1).map_or(Lsn::MAX, |n| n.begin.segment_floor(seg));
            let (lo, hi) = (first.max(serves_from), to.min(serves_to));
            if lo < hi {
                out.push((s.timeline, lo, hi));
            }
        }
        out
    }
}

/// One stored object on a path, with the part of it that lies on the path.
#[derive(Debug, Clone, Copy)]
struct PathObject {
    id: WalObjectId,
    lo: Lsn,
    hi: Lsn,
}

/// What the repository holds, as far as planning cares.
#[derive(Debug, Clone)]
pub struct RepoIndex {
    pub seg: WalSegSize,
    /// How the repository's major writes WAL.
    pub wal_format: pgpitr_walscan::WalFormat,
    pub timelines: BTreeMap<TimelineId, TimelineWal>,
    pub histories: BTreeMap<TimelineId, TimelineHistory>,
    /// Complete backups, oldest first.
    pub backups: Vec<BackupPoint>,
    /// Object summaries read ahead of planning ([`RepoIndex::read_ahead`]).
    pub summaries: HashMap<WalObjectId, WalSummary>,
}

impl RepoIndex {
    /// Lists the WAL, reads the history files of every timeline that has
    /// WAL (all at once), and takes the complete backups the caller found
    /// (which it may look for at the same time, then hand over with
    /// [`RepoIndex::with_backups`]).
    pub async fn load(repo: &Repository, backups: Vec<BackupPoint>) -> Result<RepoIndex> {
        let storage = repo.storage().as_ref();
        let seg = repo.seg_size();
        let (timelines, _) = wal::scan(storage, seg).await?;
        let reads = timelines
            .keys()
            .filter(|t| t.0 > 1)
            .map(|&tli| async move { Ok::<_, PlanError>(read_history(storage, tli).await?.map(|h| (tli, h))) });
        let histories = futures_util::future::try_join_all(reads).await?.into_iter().flatten().collect();
        let wal_format = repo.major().wal_format();
        Ok(RepoIndex { seg, wal_format, timelines, histories, backups: Vec::new(), summaries: HashMap::new() }
            .with_backups(backups))
    }

    /// Reads the headers of the objects on the history of `tli` before
    /// planning, all at once, when there are few enough (the caller can do
    /// this while it looks for backups). Best effort: a header that cannot
    /// be read is left to planning, which reads it (and reports it) only if
    /// it needs it.
    pub async fn read_ahead(&mut self, storage: &dyn Storage, tli: TimelineId) {
        let Ok(path) = self.path(tli) else { return };
        let objs = self.objects_on(&path);
        let mut sums = Summaries::new(storage, self.seg);
        sums.cache = std::mem::take(&mut self.summaries);
        sums.read_ahead(&objs).await;
        self.summaries = sums.cache;
    }

    /// The index with these complete backups.
    pub fn with_backups(mut self, mut backups: Vec<BackupPoint>) -> RepoIndex {
        backups.sort_by(|a, b| (a.stop_lsn, &a.id).cmp(&(b.stop_lsn, &b.id)));
        self.backups = backups;
        self
    }

    /// The history recovery to `tli` follows.
    pub fn path(&self, tli: TimelineId) -> Result<TimelinePath> {
        if tli == TimelineId::FIRST {
            return Ok(TimelinePath { target: tli, steps: vec![PathStep { timeline: tli, begin: Lsn(0), end: None }] });
        }
        match self.histories.get(&tli) {
            Some(h) => Ok(TimelinePath::from_history(h)),
            None => Err(PlanError::Unreachable(format!(
                "timeline {tli} has no history file (wal/{:08X}.history) in the repository",
                tli.0
            ))),
        }
    }

    /// The newest timeline with stored WAL.
    pub fn latest_timeline(&self) -> Option<TimelineId> {
        self.timelines.keys().next_back().copied()
    }

    fn objects_on(&self, path: &TimelinePath) -> Vec<PathObject> {
        let mut out = Vec::new();
        for s in &path.steps {
            let Some(tl) = self.timelines.get(&s.timeline) else { continue };
            for (id, _) in &tl.objects {
                let (a, b) = id.range(self.seg);
                let (lo, hi) = (a.max(s.begin), b.min(s.end_or_max()));
                if lo < hi {
                    out.push(PathObject { id: *id, lo, hi });
                }
            }
        }
        out
    }

    /// The first hole in `from..to` along `path`, as (timeline, start, end of
    /// the hole or `None` when nothing follows).
    pub fn first_gap(&self, path: &TimelinePath, from: Lsn, to: Lsn) -> Option<(TimelineId, Lsn, Option<Lsn>)> {
        for (tli, lo, hi) in path.needed(self.seg, from, to) {
            let empty = TimelineWal::default();
            let tl = self.timelines.get(&tli).unwrap_or(&empty);
            if tl.covers(lo, hi) {
                continue;
            }
            let start = tl.ranges.iter().find(|&&(s, e)| s <= lo && lo < e).map_or(lo, |&(_, e)| e);
            let end = tl.ranges.iter().find(|&&(s, _)| s > start).map(|&(s, _)| s);
            return Some((tli, start, end));
        }
        None
    }

    /// The end of the stored WAL on the path (of its newest timeline).
    pub fn path_end(&self, path: &TimelinePath) -> Option<Lsn> {
        let last = path.steps.last()?;
        self.timelines.get(&last.timeline).and_then(|t| t.end()).filter(|&e| e > last.begin)
    }
}

async fn read_history(storage: &dyn Storage, tli: TimelineId) -> Result<Option<TimelineHistory>> {
    let key = wal::history_key(tli);
    let raw = match storage.get(&key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&raw);
    TimelineHistory::parse(tli, &text)
        .map(Some)
        .map_err(|e| RepoError::Corrupt { location: storage.describe(), key, reason: e.to_string() }.into())
}

/// Bytes read from the start of an object for its header and summary.
const SUMMARY_READ: u64 = 4096;

/// An object's summary. One ranged read of its first [`SUMMARY_READ`] bytes
/// holds the header and the summary (a few hundred bytes) of nearly every
/// object, where [`wal::read_header`] reads the fixed header first and the
/// summary then: half the requests, and half the waits. That is the
/// fallback (a larger summary, a journal, or anything it should report).
async fn read_summary(storage: &dyn Storage, seg: WalSegSize, id: WalObjectId) -> Result<WalSummary, RepoError> {
    let key = id.key(seg);
    if !matches!(id.kind, WalObjectKind::Journal { .. }) {
        let buf = storage.get_range(&key, 0..SUMMARY_READ).await?;
        if object::header_len(&buf).is_ok_and(|need| need <= buf.len()) {
            return object::decode_header(&buf).map(|h| h.summary).map_err(|e| RepoError::Corrupt {
                location: storage.describe(),
                key,
                reason: e.0,
            });
        }
    }
    Ok(wal::read_header(storage, &key).await?.summary)
}

/// Object summaries, read once each with ranged GETs, many at a time.
struct Summaries<'a> {
    storage: &'a dyn Storage,
    seg: WalSegSize,
    cache: HashMap<WalObjectId, WalSummary>,
}

const PARALLEL_HEADERS: usize = 32;
/// Paths with at most this many objects have all their headers read up
/// front ([`Summaries::read_ahead`]).
const PRELOAD_HEADERS: usize = 8 * PARALLEL_HEADERS;

impl<'a> Summaries<'a> {
    fn new(storage: &'a dyn Storage, seg: WalSegSize) -> Self {
        Summaries { storage, seg, cache: HashMap::new() }
    }

    /// Reads every header of `objs` in one burst when there are at most
    /// [`PRELOAD_HEADERS`]: about as many requests as the searches make in
    /// all, but one round of waits instead of one per search step. Errors
    /// are left for the searches to meet.
    async fn read_ahead(&mut self, objs: &[PathObject]) {
        if objs.len() > PRELOAD_HEADERS {
            return;
        }
        let missing: Vec<WalObjectId> = objs.iter().map(|o| o.id).filter(|id| !self.cache.contains_key(id)).collect();
        let (storage, seg) = (self.storage, self.seg);
        let got: Vec<Option<(WalObjectId, WalSummary)>> = futures_util::stream::iter(missing)
            .map(|id| async move { read_summary(storage, seg, id).await.ok().map(|s| (id, s)) })
            .buffer_unordered(PARALLEL_HEADERS)
            .collect()
            .await;
        self.cache.extend(got.into_iter().flatten());
    }

    async fn load(&mut self, objs: &[PathObject]) -> Result<()> {
        let missing: Vec<WalObjectId> = objs.iter().map(|o| o.id).filter(|id| !self.cache.contains_key(id)).collect();
        let (storage, seg) = (self.storage, self.seg);
        let got: Vec<(WalObjectId, WalSummary)> = futures_util::stream::iter(missing)
            .map(|id| async move { Ok::<_, RepoError>((id, read_summary(storage, seg, id).await?)) })
            .buffer_unordered(PARALLEL_HEADERS)
            .try_collect()
            .await?;
        self.cache.extend(got);
        Ok(())
    }

    /// The commits of `o` known to the index (its first and last) that lie on the path.
    fn commits(&self, o: &PathObject) -> Vec<TimedLsn> {
        let Some(s) = self.cache.get(&o.id) else { return Vec::new() };
        let mut v: Vec<TimedLsn> =
            [s.first_commit, s.last_commit].into_iter().flatten().filter(|c| o.lo <= c.lsn && c.lsn < o.hi).collect();
        v.dedup();
        v
    }

    /// The first object whose index may lack a commit after `from` (its WAL
    /// was not all parsed), reading the headers of every object past it.
    async fn first_unindexed(&mut self, objs: &[PathObject], from: Lsn) -> Result<Option<WalObjectId>> {
        let after: Vec<PathObject> = objs.iter().filter(|o| o.hi > from).copied().collect();
        self.load(&after).await?;
        let gap = |o: &&PathObject| self.cache.get(&o.id).and_then(|s| s.unindexed_before).is_some_and(|u| u > from);
        Ok(after.iter().find(gap).map(|o| o.id))
    }

    /// When the newest WAL after `from` whose index is incomplete inside
    /// the object was received: commits the index lacks there came before.
    async fn unindexed_received(&mut self, objs: &[PathObject], from: Lsn) -> Result<Option<i64>> {
        let after: Vec<PathObject> = objs.iter().filter(|o| o.hi > from).copied().collect();
        self.load(&after).await?;
        let seg = self.seg;
        Ok(after
            .iter()
            .filter_map(|o| self.cache.get(&o.id).map(|s| (o.id.range(seg).0, s)))
            // Only from the object's start: a record continued from before
            // it, which a resume scans from its own start, is not a commit
            // of its own.
            .filter(|(start, s)| s.unindexed_before.is_some_and(|u| u > from && u > *start))
            .map(|(_, s)| s.received_us)
            .max())
    }

    /// The newest indexed commit, and the end of the restorable window: that
    /// commit, the newest backup's stop, or when WAL with an incomplete index
    /// after it was received, whichever is latest.
    async fn window_end(&mut self, objs: &[PathObject], newest: &BackupPoint) -> Result<(Option<TimedLsn>, i64)> {
        let last = self.last_commit(objs, Lsn::MAX).await?;
        let from = last.map_or(newest.stop_lsn, |c| c.lsn);
        let unindexed = self.unindexed_received(objs, from).await?;
        let latest = [last.map(|c| c.time_us), unindexed].into_iter().flatten().fold(newest.stop_time_us, i64::max);
        Ok((last, latest))
    }

    fn restore_points(&self, o: &PathObject) -> Vec<RestorePoint> {
        let Some(s) = self.cache.get(&o.id) else { return Vec::new() };
        s.restore_points.iter().filter(|r| o.lo <= r.lsn && r.lsn < o.hi).cloned().collect()
    }

    /// The newest indexed commit among `objs` with `lsn < before`, reading
    /// headers from the end backwards.
    async fn last_commit(&mut self, objs: &[PathObject], before: Lsn) -> Result<Option<TimedLsn>> {
        let upto = objs.partition_point(|o| o.lo < before);
        let mut end = upto;
        while end > 0 {
            let start = end.saturating_sub(8);
            self.load(&objs[start..end]).await?;
            for o in objs[start..end].iter().rev() {
                if let Some(c) = self.commits(o).into_iter().rev().find(|c| c.lsn < before) {
                    return Ok(Some(c));
                }
            }
            end = start;
        }
        Ok(None)
    }

    /// The first indexed commit with `lsn >= from` whose time passes `pred`,
    /// found by bisection over objects (commit times grow with LSN, so
    /// "some commit here passes" is monotone along the path).
    async fn first_commit_where(
        &mut self,
        objs: &[PathObject],
        from: Lsn,
        pred: impl Fn(i64) -> bool,
    ) -> Result<Option<TimedLsn>> {
        let passes =
            |s: &Self, o: &PathObject| s.commits(o).into_iter().filter(|c| c.lsn >= from).any(|c| pred(c.time_us));
        let (mut lo, mut hi) = (objs.partition_point(|o| o.hi <= from), objs.len());
        // The first passing object found so far; everything before `lo` fails.
        let mut best = objs.len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first object at or after `mid` that has a commit at all.
            let mut j = mid;
            let mut found = None;
            while j < hi {
                let end = (j + 8).min(hi);
                self.load(&objs[j..end]).await?;
                if let Some(k) = (j..end).find(|&k| self.commits(&objs[k]).iter().any(|c| c.lsn >= from)) {
                    found = Some(k);
                    break;
                }
                j = end;
            }
            match found {
                None => hi = mid,
                Some(k) if passes(self, &objs[k]) => {
                    best = k;
                    hi = mid.min(k);
                }
                Some(k) => lo = k + 1,
            }
        }
        let Some(o) = objs.get(best) else { return Ok(None) };
        self.load(std::slice::from_ref(o)).await?;
        Ok(self.commits(o).into_iter().find(|c| c.lsn >= from && pred(c.time_us)))
    }
}

/// What to ask of a restore.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub target: Target,
    /// `recovery_target_inclusive`; false for `--target-exclusive`.
    pub inclusive: bool,
    pub timeline: TimelineTarget,
    /// `--backup`: use this backup and no other.
    pub backup: Option<String>,
}

/// The recovery settings Postgres gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecoveryTarget {
    /// No target: replay all stored WAL on the timeline.
    None,
    Immediate,
    Time {
        time_us: i64,
        inclusive: bool,
    },
    Lsn {
        lsn: Lsn,
        inclusive: bool,
    },
    Xid {
        xid: u64,
        inclusive: bool,
    },
    Name {
        name: String,
    },
}

/// A restore that the repository can serve, decided before writing.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup: BackupPoint,
    /// `recovery_target_timeline`, always a number so Postgres follows
    /// exactly the history that was checked.
    pub timeline: TimelineId,
    pub path: TimelinePath,
    pub recovery: RecoveryTarget,
    /// WAL recovery will read: from the backup's start to here.
    pub wal_end: Lsn,
    /// The last commit the index says recovery replays, if known.
    pub last_commit: Option<TimedLsn>,
    /// The first commit it will not replay, when the target falls before it.
    pub first_excluded: Option<TimedLsn>,
    /// The restorable window of the timeline (Unix µs).
    pub earliest_us: i64,
    pub latest_us: i64,
    /// Why the recovery settings differ from the literal request, if they do.
    pub note: Option<String>,
}

/// Plans a restore. Fails, naming the window or the gap, when the target
/// cannot be reached exactly.
pub async fn plan(storage: &dyn Storage, index: &RepoIndex, req: &PlanRequest) -> Result<Plan> {
    let mut sums = Summaries::new(storage, index.seg);
    sums.cache = index.summaries.clone();
    let tlis: Vec<Option<TimelineId>> = match req.timeline {
        TimelineTarget::Latest => vec![index.latest_timeline()],
        TimelineTarget::Id(t) => vec![Some(t)],
        // The backup's own timeline: try each timeline a backup is on, newest backup first.
        TimelineTarget::Current => {
            let mut v: Vec<Option<TimelineId>> = Vec::new();
            for b in index.backups.iter().rev().filter(|b| req.backup.as_ref().is_none_or(|id| &b.id == id)) {
                if !v.contains(&Some(b.timeline)) {
                    v.push(Some(b.timeline));
                }
            }
            v
        }
    };
    let mut first_err = None;
    for tli in tlis {
        let Some(tli) = tli else { break };
        match plan_on(&mut sums, index, req, tli).await {
            Ok(p) => return Ok(p),
            Err(e) if matches!(req.timeline, TimelineTarget::Current) => {
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_err.unwrap_or_else(|| {
        PlanError::Unreachable(match &req.backup {
            Some(id) => format!("backup {id} is not a complete backup in the repository"),
            None => "the repository holds no complete backup (run pgpitr backup first)".to_string(),
        })
    }))
}

async fn plan_on(sums: &mut Summaries<'_>, index: &RepoIndex, req: &PlanRequest, tli: TimelineId) -> Result<Plan> {
    let path = index.path(tli)?;
    let mut cands: Vec<&BackupPoint> = index.backups.iter().filter(|b| path.holds_backup(b)).collect();
    if let Some(id) = &req.backup {
        let Some(b) = index.backups.iter().find(|b| &b.id == id) else {
            return Err(PlanError::Unreachable(format!("backup {id} is not a complete backup in the repository")));
        };
        if !path.holds_backup(b) {
            return Err(PlanError::Unreachable(format!(
                "backup {id} (timeline {}, {}..{}) is not on the history of timeline {tli}",
                b.timeline, b.start_lsn, b.stop_lsn
            )));
        }
        cands = vec![b];
    }
    let Some(&oldest) = cands.first() else {
        return Err(PlanError::Unreachable(format!(
            "no complete backup on the history of timeline {tli} (run pgpitr backup first)"
        )));
    };
    let newest = *cands.last().expect("non-empty");
    let objs = index.objects_on(&path);
    sums.read_ahead(&objs).await;
    let end = index.path_end(&path).unwrap_or(newest.stop_lsn);
    let (last, latest_us) = sums.window_end(&objs, newest).await?;
    let earliest_us = oldest.stop_time_us;
    let mut plan = Plan {
        backup: newest.clone(),
        timeline: tli,
        path: path.clone(),
        recovery: RecoveryTarget::None,
        wal_end: end,
        last_commit: None,
        first_excluded: None,
        earliest_us,
        latest_us,
        note: None,
    };
    match &req.target {
        Target::Latest => {
            plan.last_commit = last.filter(|c| c.lsn >= newest.stop_lsn);
            check_gaps(sums, index, &objs, &plan).await?;
            Ok(plan)
        }
        Target::Immediate => {
            plan.recovery = RecoveryTarget::Immediate;
            plan.wal_end = newest.stop_lsn;
            check_gaps(sums, index, &objs, &plan).await?;
            Ok(plan)
        }
        &Target::Time(t) => {
            if t < earliest_us {
                return Err(PlanError::BeforeEarliest { target: t, earliest: earliest_us, tli });
            }
            if t > latest_us {
                return Err(PlanError::AfterLatest { target: t, latest: latest_us, tli });
            }
            // Postgres stops before the first commit later than the target
            // (at or later with --target-exclusive).
            let after = |time: i64| if req.inclusive { time > t } else { time >= t };
            for b in cands.iter().rev().filter(|b| b.stop_time_us <= t) {
                // A stop before the backup is consistent would be fatal.
                let inside: Vec<PathObject> =
                    objs.iter().filter(|o| o.hi > b.start_lsn && o.lo < b.stop_lsn).copied().collect();
                sums.load(&inside).await?;
                if inside.iter().flat_map(|o| sums.commits(o)).any(|c| c.lsn < b.stop_lsn && after(c.time_us)) {
                    continue;
                }
                plan.backup = (*b).clone();
                let stop = sums.first_commit_where(&objs, b.stop_lsn, after).await?;
                let before = sums.last_commit(&objs, stop.map_or(Lsn::MAX, |c| c.lsn)).await?;
                plan.last_commit = before.filter(|c| c.lsn >= b.start_lsn);
                match stop {
                    Some(c) => {
                        plan.recovery = RecoveryTarget::Time { time_us: t, inclusive: req.inclusive };
                        plan.first_excluded = Some(c);
                        plan.wal_end = c.end_lsn;
                    }
                    None => match sums.first_unindexed(&objs, before.map_or(b.stop_lsn, |c| c.lsn)).await? {
                        // A commit after the target may be there unindexed:
                        // never stop at an earlier one on the index's word.
                        Some(id) => {
                            plan.recovery = RecoveryTarget::Time { time_us: t, inclusive: req.inclusive };
                            plan.note = Some(unindexed_note(id, index.seg));
                        }
                        None => {
                            fall_back_to_last_commit(&mut plan, before, &format!("no commit after {}", format_time(t)))
                        }
                    },
                }
                check_gaps(sums, index, &objs, &plan).await?;
                return Ok(plan);
            }
            Err(PlanError::BeforeEarliest {
                target: t,
                earliest: cands.iter().map(|b| b.stop_time_us).min().unwrap_or(earliest_us),
                tli,
            })
        }
        &Target::Lsn(l) => {
            let Some(b) = cands.iter().rev().find(|b| b.stop_lsn <= l) else {
                return Err(PlanError::LsnBeforeEarliest { target: l, earliest: oldest.stop_lsn, tli });
            };
            if l > end {
                return Err(PlanError::LsnAfterLatest { target: l, end, tli });
            }
            plan.backup = (*b).clone();
            // Postgres must read a whole record at or after the target LSN;
            // the first stored commit there is one.
            let at = sums.first_commit_where(&objs, l, |_| true).await?;
            plan.last_commit = sums.last_commit(&objs, l).await?.filter(|c| c.lsn >= b.start_lsn);
            match at {
                Some(c) => {
                    plan.recovery = RecoveryTarget::Lsn { lsn: l, inclusive: req.inclusive };
                    plan.wal_end = c.end_lsn;
                    if req.inclusive && c.lsn == l {
                        plan.last_commit = Some(c);
                    } else {
                        plan.first_excluded = Some(c);
                    }
                }
                None => {
                    let before = plan.last_commit;
                    match sums.first_unindexed(&objs, before.map_or(b.stop_lsn, |c| c.lsn)).await? {
                        Some(id) => {
                            plan.recovery = RecoveryTarget::Lsn { lsn: l, inclusive: req.inclusive };
                            plan.note = Some(unindexed_note(id, index.seg));
                        }
                        None => fall_back_to_last_commit(&mut plan, before, &format!("no commit at or after {l}")),
                    }
                }
            }
            check_gaps(sums, index, &objs, &plan).await?;
            Ok(plan)
        }
        &Target::Xid(xid) => {
            // The index holds no transaction ids: read the WAL, newest backup
            // first, for the record that ends the transaction.
            plan.recovery = RecoveryTarget::Xid { xid, inclusive: req.inclusive };
            let mut scan_to = end;
            let mut found = None;
            let mut unknown = None;
            for b in cands.iter().rev() {
                if b.start_lsn >= scan_to {
                    continue;
                }
                match find_xid_end(storage_of(sums), index, &path, b.start_lsn, scan_to, xid as u32).await? {
                    XidSearch::Found(ev) => {
                        found = Some(ev);
                        break;
                    }
                    XidSearch::NotFound => scan_to = b.start_lsn,
                    XidSearch::Unknown(why) => {
                        unknown = Some(why);
                        break;
                    }
                }
            }
            match (found, unknown) {
                (Some(ev), _) => {
                    let Some(b) = cands.iter().rev().find(|b| b.stop_lsn <= ev.lsn) else {
                        return Err(PlanError::Unreachable(format!(
                            "transaction {xid} ends at {}, before the end of the oldest backup on the history of \
                             timeline {tli} ({})",
                            ev.lsn, oldest.stop_lsn
                        )));
                    };
                    plan.backup = (*b).clone();
                    plan.wal_end = ev.end_lsn;
                    if req.inclusive && ev.commit {
                        plan.last_commit = Some(TimedLsn { lsn: ev.lsn, end_lsn: ev.end_lsn, time_us: ev.time_us });
                    } else {
                        plan.last_commit = sums.last_commit(&objs, ev.lsn).await?.filter(|c| c.lsn >= b.start_lsn);
                        if ev.commit {
                            plan.first_excluded =
                                Some(TimedLsn { lsn: ev.lsn, end_lsn: ev.end_lsn, time_us: ev.time_us });
                        }
                    }
                }
                (None, Some(why)) => {
                    // Postgres will look for it; every stored byte must be there.
                    plan.last_commit = last.filter(|c| c.lsn >= newest.stop_lsn);
                    plan.note = Some(format!("transaction {xid} could not be looked up in the WAL ({why})"));
                }
                (None, None) => {
                    return Err(PlanError::Unreachable(format!(
                        "transaction {xid} does not end (commit or abort) in the stored WAL on the history of \
                         timeline {tli} after backup {}",
                        oldest.id
                    )));
                }
            }
            check_gaps(sums, index, &objs, &plan).await?;
            Ok(plan)
        }
        Target::Name(name) => {
            sums.load(&objs).await?;
            let points: Vec<RestorePoint> =
                objs.iter().flat_map(|o| sums.restore_points(o)).filter(|r| &r.name == name).collect();
            // Postgres stops at the first one it replays, which must follow consistency.
            for b in cands.iter().rev() {
                let Some(p) = points.iter().find(|p| p.lsn >= b.start_lsn) else { continue };
                if p.lsn < b.stop_lsn {
                    continue;
                }
                plan.backup = (*b).clone();
                plan.recovery = RecoveryTarget::Name { name: name.clone() };
                plan.wal_end = p.end_lsn;
                plan.last_commit = sums.last_commit(&objs, p.lsn).await?.filter(|c| c.lsn >= b.start_lsn);
                check_gaps(sums, index, &objs, &plan).await?;
                return Ok(plan);
            }
            Err(PlanError::Unreachable(if points.is_empty() {
                format!("restore point {name:?} is not in the stored WAL on the history of timeline {tli}")
            } else {
                format!(
                    "restore point {name:?} (at {}) is not after the end of any backup on the history of timeline {tli}",
                    points[0].lsn
                )
            }))
        }
    }
}

fn storage_of<'a>(sums: &Summaries<'a>) -> &'a dyn Storage {
    sums.storage
}

/// The record that ends a transaction.
#[derive(Debug, Clone, Copy)]
struct XidEnd {
    lsn: Lsn,
    end_lsn: Lsn,
    time_us: i64,
    commit: bool,
}

enum XidSearch {
    Found(XidEnd),
    NotFound,
    /// The WAL could not be read as records (a scanner limitation, not
    /// corruption: the objects' checksums held).
    Unknown(String),
}

/// Reads the stored WAL along `path` from `from` to `to` and finds the
/// commit or abort of `xid` (the low 32 bits, as Postgres compares them).
/// Segments are fetched a few at a time; stops at the first match.
async fn find_xid_end(
    storage: &dyn Storage,
    index: &RepoIndex,
    path: &TimelinePath,
    from: Lsn,
    to: Lsn,
    xid: u32,
) -> Result<XidSearch> {
    use pgpitr_walscan::{WalEvent, WalScanner};
    let (seg, format) = (index.seg, index.wal_format);
    let mut scanner = WalScanner::at_record(from, seg, format).unwrap_or_else(|_| WalScanner::new(from, seg, format));
    let mut segments = Vec::new();
    for (tli, lo, hi) in path.needed(seg, from, to) {
        let mut segno = lo.segment_number(seg);
        while segno.start_lsn(seg).is_some_and(|s| s < hi) {
            segments.push((tli, segno, hi));
            segno = segno.next();
        }
    }
    let empty = TimelineWal::default();
    let mut fetched = futures_util::stream::iter(segments)
        .map(|(tli, segno, hi)| {
            let tl = index.timelines.get(&tli).unwrap_or(&empty);
            async move { Ok::<_, RepoError>((segno, hi, wal::assemble_segment(storage, seg, tl, segno).await?)) }
        })
        .buffered(4);
    let mut events = Vec::new();
    while let Some(next) = fetched.next().await {
        let (segno, hi, got) = next?;
        // A hole: the coverage check will name it.
        let Some(s) = got else { return Ok(XidSearch::Unknown("WAL is missing (a gap)".into())) };
        let start = segno.start_lsn(seg).unwrap_or(Lsn(0));
        let a = from.max(start).0 - start.0;
        let b = hi.min(Lsn(start.0 + s.valid_len)).0.saturating_sub(start.0);
        if a >= b {
            continue;
        }
        if let Err(e) = scanner.feed(&s.data[a as usize..b as usize], &mut events) {
            return Ok(XidSearch::Unknown(e.to_string()));
        }
        for ev in events.drain(..) {
            let (lsn, end_lsn, x, time, commit) = match ev {
                WalEvent::Commit { lsn, end_lsn, xid, time, .. } => (lsn, end_lsn, xid, time, true),
                WalEvent::Abort { lsn, end_lsn, xid, time, .. } => (lsn, end_lsn, xid, time, false),
                _ => continue,
            };
            if x == xid {
                let time_us = time.to_unix_micros().unwrap_or_default();
                return Ok(XidSearch::Found(XidEnd { lsn, end_lsn, time_us, commit }));
            }
        }
        if scanner.end_of_wal().is_some() {
            break;
        }
    }
    Ok(XidSearch::NotFound)
}

/// Why the target is left to PostgreSQL to find.
fn unindexed_note(id: WalObjectId, seg: WalSegSize) -> String {
    format!(
        "the commit-time index of {} is incomplete (its WAL could not all be parsed), so PostgreSQL finds the \
         stop point itself; recovery fails, saying so, if no record reaches the target",
        id.key(seg)
    )
}

/// No stored commit follows the target, so a time or LSN target would never
/// be reached: recover to the last stored commit instead, which leaves the
/// same data, or to the end of the backup when none follows it.
fn fall_back_to_last_commit(plan: &mut Plan, last: Option<TimedLsn>, why: &str) {
    match last.filter(|c| c.lsn >= plan.backup.stop_lsn) {
        Some(c) => {
            plan.recovery = RecoveryTarget::Lsn { lsn: c.lsn, inclusive: true };
            plan.wal_end = c.end_lsn;
            plan.last_commit = Some(c);
            plan.note = Some(format!(
                "{why} is stored, so recovery stops after the last stored commit ({}, LSN {}): the same data",
                format_time(c.time_us),
                c.lsn
            ));
        }
        None => {
            plan.recovery = RecoveryTarget::Immediate;
            plan.wal_end = plan.backup.stop_lsn;
            plan.note = Some(format!(
                "{why} is stored after backup {}, so recovery stops at its end: the same data",
                plan.backup.id
            ));
        }
    }
}

async fn check_gaps(sums: &mut Summaries<'_>, index: &RepoIndex, objs: &[PathObject], plan: &Plan) -> Result<()> {
    let Some((tli, start, end)) = index.first_gap(&plan.path, plan.backup.start_lsn, plan.wal_end) else {
        return Ok(());
    };
    let hole = match end {
        Some(e) => format!("WAL {start}..{e} of timeline {tli} is missing from the repository (a gap)"),
        None => format!("WAL of timeline {tli} from {start} on is missing from the repository"),
    };
    let last = sums.last_commit(objs, start).await?.filter(|c| c.lsn >= plan.backup.stop_lsn);
    let reachable = match last {
        Some(c) => format!(
            "from backup {} the latest reachable time is {}, the last commit before the gap",
            plan.backup.id,
            format_time(c.time_us)
        ),
        None => format!("backup {} can be restored only to its end (--target immediate)", plan.backup.id),
    };
    Err(PlanError::Gap(format!("cannot reach the target: {hole}; {reachable}")))
}

/// The restorable window of one timeline, as `pgpitr list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub timeline: TimelineId,
    /// RFC 3339 UTC; `None` when no complete backup is on the timeline's history.
    pub earliest_restorable_time: Option<String>,
    pub latest_restorable_time: Option<String>,
    #[serde(skip)]
    pub earliest_us: Option<i64>,
    #[serde(skip)]
    pub latest_us: Option<i64>,
}

/// Per timeline: from the oldest backup on its history to its newest commit.
pub async fn windows(storage: &dyn Storage, index: &RepoIndex) -> Result<Vec<Window>> {
    let mut sums = Summaries::new(storage, index.seg);
    let mut out = Vec::new();
    for &tli in index.timelines.keys() {
        let Ok(path) = index.path(tli) else { continue };
        let cands: Vec<&BackupPoint> = index.backups.iter().filter(|b| path.holds_backup(b)).collect();
        let (earliest, latest) = match (cands.first(), cands.last()) {
            (Some(o), Some(n)) => {
                let objs = index.objects_on(&path);
                (Some(o.stop_time_us), Some(sums.window_end(&objs, n).await?.1))
            }
            _ => (None, None),
        };
        out.push(Window {
            timeline: tli,
            earliest_restorable_time: earliest.map(pgpitr_repo::status::format_time_us),
            latest_restorable_time: latest.map(pgpitr_repo::status::format_time_us),
            earliest_us: earliest,
            latest_us: latest,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
