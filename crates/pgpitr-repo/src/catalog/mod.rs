//! The catalog: one reading of the repository, under every command.
//!
//! It holds the WAL listing (per timeline: the cover of each segment, the
//! covered ranges, leftovers), the timeline histories, the backups and a
//! cache of object summaries, and it is the one home of what is derived
//! from them:
//!
//! - the restorable window of a timeline ([`Catalog::window`]) and of the
//!   repository ([`Catalog::latest_restorable_time`]);
//! - the gaps along a history ([`Listing::first_gap`]);
//! - which WAL has an incomplete commit-time index ([`Catalog::unindexed`],
//!   by [`WalSummary::unindexed`](crate::object::WalSummary::unindexed));
//! - a segment rebuilt from its objects ([`Catalog::segment`]).
//!
//! `list`, `expire`, `restore` and the planner read the repository only
//! through it.

mod path;
mod summaries;

pub use path::{BackupPoint, PathObject, PathStep, TimelinePath};
pub use summaries::{SUMMARY_READ, Summaries};

use crate::backup::{self, BackupEntry, BackupInfo};
use crate::object::TimedLsn;
use crate::wal::{self, AssembledSegment, TimelineWal, WalObjectId};
use crate::{RepoError, Repository, Result};
use pgpitr_storage::ObjectMeta;
use pgpitr_types::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What was listed and read up front: everything but the summaries.
#[derive(Debug, Clone)]
pub struct Listing {
    repo: Repository,
    timelines: BTreeMap<TimelineId, TimelineWal>,
    /// Pieces and journals of segments that are stored complete.
    leftovers: Vec<ObjectMeta>,
    histories: BTreeMap<TimelineId, TimelineHistory>,
    /// Every backup directory, oldest first, unfinished ones included.
    backups: Vec<BackupEntry>,
    /// The complete backups, by stop LSN.
    points: Vec<BackupPoint>,
    /// The log directories listed so far, per timeline; `None` when all WAL
    /// was listed at once ([`Catalog::load`]).
    listed: Option<BTreeMap<TimelineId, BTreeSet<u64>>>,
    /// Per timeline, the first log ID from which on nothing is stored, once
    /// [`Catalog::list_path`] found it.
    ends: BTreeMap<TimelineId, u64>,
}

/// The log ID (4 GiB of WAL) an LSN is in.
fn log_of(l: Lsn) -> u64 {
    l.0 >> 32
}

/// One reading of a repository: the [`Listing`] and the summaries read
/// from it so far.
pub struct Catalog {
    listing: Listing,
    pub summaries: Summaries,
}

impl std::ops::Deref for Catalog {
    type Target = Listing;
    fn deref(&self) -> &Listing {
        &self.listing
    }
}

/// The restorable window of one timeline: from the stop of the oldest
/// complete backup on its history to its latest restorable time.
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

/// A stored WAL object whose commit-time index is incomplete: commits that
/// start in `start_lsn..end_lsn` may be missing from it. A restore to a time
/// after them lets PostgreSQL find the point (`recovery_target_time`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unindexed {
    pub object: String,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

impl Unindexed {
    /// What of the object (or journal frame) `h`, stored as `key`, is not indexed.
    pub fn of(key: &str, h: &crate::object::ObjectHeader) -> Option<Unindexed> {
        let (start_lsn, end_lsn) = h.summary.unindexed(h.start, h.end)?;
        Some(Unindexed { object: key.to_string(), timeline: h.tli, start_lsn, end_lsn })
    }
}

impl Catalog {
    /// Lists the WAL (twice where the first listing shows a gap: a listing
    /// is not a snapshot, and a piece merged during it looks like one), reads
    /// the history of every timeline with WAL and every backup's metadata,
    /// the two at once.
    pub async fn load(repo: &Repository) -> Result<Catalog> {
        Self::read(repo, true).await
    }

    /// [`Catalog::load`] without the backups, for the stream: what a
    /// backup's metadata holds never stops the archiver.
    pub async fn load_wal(repo: &Repository) -> Result<Catalog> {
        Self::read(repo, false).await
    }

    async fn read(repo: &Repository, with_backups: bool) -> Result<Catalog> {
        crate::relisting(RepoError::is_not_found, || async {
            let backups =
                async { if with_backups { backup::scan(repo.storage().as_ref()).await } else { Ok(Vec::new()) } };
            let (wal, backups) = futures_util::future::try_join(read_wal(repo), backups).await?;
            let (timelines, leftovers, histories) = wal;
            Self::made(repo, backups, histories, Some((timelines, leftovers)))
        })
        .await
    }

    /// A catalog of `backups` and `histories`, with all WAL listed, or none yet.
    fn made(
        repo: &Repository,
        backups: Vec<BackupEntry>,
        histories: BTreeMap<TimelineId, TimelineHistory>,
        wal: Option<(BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>)>,
    ) -> Result<Catalog> {
        let location = repo.location();
        let mut points = backups
            .iter()
            .filter_map(|e| e.info.as_ref())
            .map(|i| BackupPoint::of(i, &location))
            .collect::<Result<Vec<_>>>()?;
        sort_points(&mut points);
        let listed = wal.is_none().then(BTreeMap::new);
        let (timelines, leftovers) = wal.unwrap_or_default();
        let listing = Listing {
            repo: repo.clone(),
            timelines,
            leftovers,
            histories,
            backups,
            points,
            listed,
            ends: BTreeMap::new(),
        };
        Ok(Catalog { summaries: Summaries::new(repo.storage().clone(), repo.seg_size()), listing })
    }

    /// The backups and the timeline histories, and no WAL yet: a restore
    /// lists the log directories its plan needs as it goes
    /// ([`Catalog::list_path`]), so its cost follows the WAL between the
    /// backup and the target, not what the repository holds.
    pub async fn for_planning(repo: &Repository) -> Result<Catalog> {
        let storage = repo.storage().as_ref();
        let (histories, backups) = futures_util::future::try_join(read_histories(repo), backup::scan(storage)).await?;
        Self::made(repo, backups, histories, None)
    }

    /// Lists what is not listed yet of the log directories of `tli` that
    /// hold `from..to`, all at once.
    async fn list_logs(&mut self, tli: TimelineId, logs: impl Iterator<Item = u64>) -> Result<()> {
        let (storage, seg) = (self.listing.repo.storage().clone(), self.listing.seg());
        let Some(listed) = self.listing.listed.as_mut() else { return Ok(()) };
        let done = listed.entry(tli).or_default();
        let want: Vec<u64> = logs.filter(|l| !done.contains(l)).collect();
        if want.is_empty() {
            return Ok(());
        }
        let prefixes: Vec<String> = want.iter().map(|&l| wal::log_dir(tli, l)).collect();
        let (mut tls, leftovers) = wal::scan_prefixes(storage.as_ref(), seg, &prefixes).await?;
        listed.entry(tli).or_default().extend(want);
        self.listing.leftovers.extend(leftovers);
        if let Some(tl) = tls.remove(&tli) {
            self.listing.timelines.entry(tli).or_default().merge(tl, seg);
        }
        Ok(())
    }

    /// Lists the WAL on `path` from `from` to its end: on each timeline of
    /// the path up to where the next one begins, and on the last one log
    /// directory after log directory until one is empty, then any that
    /// follow a hole (found with one listing of the timeline's directories).
    pub async fn list_path(&mut self, path: &TimelinePath, from: Lsn) -> Result<()> {
        if self.listing.listed.is_none() {
            return Ok(());
        }
        for step in &path.steps {
            let lo = step.begin.max(from);
            match step.end {
                Some(end) if lo < end => self.list_logs(step.timeline, log_of(lo)..=log_of(Lsn(end.0 - 1))).await?,
                Some(_) => {}
                None => self.list_to_end(step.timeline, log_of(lo)).await?,
            }
        }
        Ok(())
    }

    async fn list_to_end(&mut self, tli: TimelineId, from_log: u64) -> Result<()> {
        self.list_to_end_from(tli, from_log, true).await
    }

    /// Lists log directory `from_log` of `tli`, and with `all` the ones
    /// after it too; once one is empty, makes sure of the end.
    async fn list_to_end_from(&mut self, tli: TimelineId, from_log: u64, all: bool) -> Result<()> {
        if self.listing.ends.get(&tli).is_some_and(|&e| e <= from_log) {
            return Ok(());
        }
        let mut log = from_log;
        loop {
            self.list_logs(tli, std::iter::once(log)).await?;
            let stored = self
                .listing
                .timelines
                .get(&tli)
                .is_some_and(|t| t.objects.iter().any(|(id, _)| log_of(id.range(self.listing.seg()).0) == log));
            if !stored {
                break;
            }
            if !all {
                return Ok(());
            }
            log += 1;
        }
        let dir = wal::timeline_dir(tli);
        let dirs = self.listing.repo.storage().list_dirs(&dir).await?;
        let later: Vec<u64> = log_ids(&dirs, &dir).into_iter().filter(|&l| l > log).collect();
        let end = later.iter().max().map_or(log, |&l| l + 1);
        self.list_logs(tli, later.into_iter()).await?;
        // Nothing between (empty) nor after.
        if let Some(done) = self.listing.listed.as_mut().map(|l| l.entry(tli).or_default()) {
            done.extend(log..end);
        }
        self.listing.ends.insert(tli, end);
        Ok(())
    }

    /// Lists, on every timeline, the log directories that begin before
    /// `lsn`: what retention may delete, without the rest.
    pub async fn list_before(&mut self, lsn: Lsn) -> Result<()> {
        if self.listing.listed.is_none() {
            return Ok(());
        }
        let storage = self.listing.repo.storage().clone();
        for tl_dir in storage.list_dirs(wal::PREFIX).await? {
            let Some(tli) = tl_dir.strip_prefix(wal::PREFIX).and_then(|d| hex8(d.strip_suffix('/')?)) else {
                continue;
            };
            let dirs = storage.list_dirs(&tl_dir).await?;
            let logs: Vec<u64> = log_ids(&dirs, &tl_dir).into_iter().filter(|&l| Lsn(l << 32) < lsn).collect();
            let tli = TimelineId(tli as u32);
            self.list_logs(tli, logs.into_iter()).await?;
        }
        Ok(())
    }

    /// Lists the log directory of `path` that holds `at`; on the path's
    /// last timeline, an empty one is its end, made sure of as
    /// [`Catalog::list_path`] does.
    pub async fn list_next(&mut self, path: &TimelinePath, at: Lsn) -> Result<()> {
        let Some(step) = path.steps.iter().find(|s| s.begin <= at && at < s.end_or_max()) else { return Ok(()) };
        if step.end.is_none() {
            return self.list_to_end_from(step.timeline, log_of(at), false).await;
        }
        self.list_logs(step.timeline, std::iter::once(log_of(at))).await
    }

    /// The stored WAL of `tli` around `from..to`, listing only the log IDs
    /// that span it.
    pub async fn wal_range(repo: &Repository, tli: TimelineId, from: Lsn, to: Lsn) -> Result<TimelineWal> {
        let prefixes = wal::range_prefixes(tli, repo.seg_size(), from, to);
        let (mut tls, _) = wal::scan_prefixes(repo.storage().as_ref(), repo.seg_size(), &prefixes).await?;
        Ok(tls.remove(&tli).unwrap_or_default())
    }

    /// Segment `segno` of `tli`, as every reader gets one: its complete
    /// object in one GET when it is stored complete, otherwise assembled
    /// from what a listing of its own keys finds. The listing is made beside
    /// the GET, so an unfinished segment costs one round trip more, not
    /// two; it is made again when a listed piece was merged away meanwhile.
    pub async fn stored_segment(repo: &Repository, tli: TimelineId, segno: SegNo) -> Result<Option<AssembledSegment>> {
        let (storage, seg) = (repo.storage().as_ref(), repo.seg_size());
        let own = [WalObjectId::segment(tli, segno).key(seg)];
        let listing = || async {
            let (mut tls, _) = wal::scan_prefixes(storage, seg, &own).await?;
            Ok::<_, RepoError>(tls.remove(&tli).unwrap_or_default())
        };
        let (whole, listed) =
            futures_util::future::join(wal::read_complete(storage, seg, tli, segno, None), listing()).await;
        if let Some(s) = whole? {
            return Ok(Some(s));
        }
        let mut first = Some(listed);
        crate::relisting(RepoError::is_not_found, || {
            let listed = first.take();
            async move {
                let tl = match listed {
                    Some(l) => l?,
                    None => listing().await?,
                };
                wal::assemble_segment(storage, seg, &tl, segno).await
            }
        })
        .await
    }

    /// The first WAL object of `tli` stored after segment `segno`, found
    /// with one short listing that starts there.
    pub async fn wal_after(repo: &Repository, tli: TimelineId, segno: SegNo) -> Result<Option<WalObjectId>> {
        let (storage, seg) = (repo.storage(), repo.seg_size());
        let prefix = wal::timeline_dir(tli);
        // '/' sorts after the '.' of every key of `segno` and before the
        // next segment's name.
        let mut after = Some(format!("{}/", WalObjectId::segment(tli, segno).key(seg)));
        while let Some(start) = after {
            let page = storage.list_page(&prefix, Some(&start), 16).await?;
            let later = page.objects.iter().filter_map(|m| WalObjectId::parse(&m.key, seg));
            if let Some(id) = later.into_iter().find(|id| id.segno > segno) {
                return Ok(Some(id));
            }
            // A page must move on: a server that ignored the start would loop.
            after = page.next.filter(|n| *n > start);
        }
        Ok(None)
    }

    /// The catalog with these complete backups instead of those stored.
    pub fn with_points(mut self, mut points: Vec<BackupPoint>) -> Catalog {
        sort_points(&mut points);
        self.listing.points = points;
        self
    }

    /// The listing and the summaries apart, to search the one while reading the other.
    pub fn split(&mut self) -> (&Listing, &mut Summaries) {
        (&self.listing, &mut self.summaries)
    }

    /// Reads the summaries of the objects on the history of `tli` ahead of
    /// planning when there are few ([`Summaries::read_ahead`]).
    pub async fn read_ahead(&mut self, tli: TimelineId) {
        let Some(path) = self.listing.path(tli) else { return };
        let objs = self.listing.objects_on(&path);
        self.summaries.read_ahead(&objs).await;
    }

    /// The restorable window of `tli`. The latest restorable time is the
    /// newest indexed commit on its history, the newest backup's stop when
    /// that is later, or, where WAL after that commit has an incomplete
    /// index, when that WAL was received (its commits came before).
    pub async fn window(&mut self, tli: TimelineId) -> Result<Option<Window>> {
        let Some(path) = self.listing.path(tli) else { return Ok(None) };
        let (listing, sums) = self.split();
        let cands: Vec<&BackupPoint> = listing.points.iter().filter(|b| path.holds_backup(b)).collect();
        let (earliest, latest) = match cands.last() {
            Some(n) => {
                // The window starts at the oldest backup from which the WAL
                // runs on without a gap: older ones (kept by a retention
                // tier with their own WAL only) restore to their end alone.
                let o = cands.iter().find(|o| listing.first_gap(&path, o.start_lsn, n.stop_lsn).is_none()).unwrap_or(n);
                let objs = listing.objects_on(&path);
                (Some(o.stop_time_us), Some(sums.window_end(&objs, n).await?.1))
            }
            None => (None, None),
        };
        Ok(Some(Window {
            timeline: tli,
            earliest_restorable_time: earliest.map(format_time_us),
            latest_restorable_time: latest.map(format_time_us),
            earliest_us: earliest,
            latest_us: latest,
        }))
    }

    /// The window of every timeline with WAL and a history.
    pub async fn windows(&mut self) -> Result<Vec<Window>> {
        let tlis: Vec<TimelineId> = self.listing.timelines.keys().copied().collect();
        let mut out = Vec::new();
        for tli in tlis {
            out.extend(self.window(tli).await?);
        }
        Ok(out)
    }

    /// The latest time any restore can reach: the end of the latest window.
    pub async fn latest_restorable_time(&mut self) -> Result<Option<i64>> {
        Ok(self.windows().await?.iter().filter_map(|w| w.latest_us).max())
    }

    /// The newest indexed commit stored on `tli` itself.
    pub async fn latest_commit(&mut self, tli: TimelineId) -> Result<Option<TimedLsn>> {
        let objs = self.listing.objects_of(tli);
        self.summaries.last_commit(&objs, Lsn::MAX).await
    }

    /// Every stored WAL object whose commit-time index is incomplete. Reads
    /// every object's summary.
    pub async fn unindexed(&mut self) -> Result<Vec<Unindexed>> {
        let seg = self.listing.seg();
        let tlis: Vec<TimelineId> = self.listing.timelines.keys().copied().collect();
        let mut out = Vec::new();
        for tli in tlis {
            let objs = self.listing.objects_of(tli);
            self.summaries.load(&objs).await?;
            for o in &objs {
                let (start, end) = o.id.range(seg);
                if let Some((start_lsn, end_lsn)) = self.summaries.get(&o.id).and_then(|s| s.unindexed(start, end)) {
                    out.push(Unindexed { object: o.id.key(seg), timeline: tli, start_lsn, end_lsn });
                }
            }
        }
        Ok(out)
    }

    /// Segment `segno` of `tli`, rebuilt and verified from the objects listed
    /// ([`wal::assemble_segment`]); `None` when nothing of it is stored.
    pub async fn segment(&self, tli: TimelineId, segno: SegNo) -> Result<Option<AssembledSegment>> {
        let empty = TimelineWal::default();
        let tl = self.listing.timelines.get(&tli).unwrap_or(&empty);
        wal::assemble_segment(self.listing.repo.storage().as_ref(), self.listing.seg(), tl, segno).await
    }
}

impl Listing {
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    pub fn seg(&self) -> WalSegSize {
        self.repo.seg_size()
    }

    /// The stored WAL per timeline.
    pub fn timelines(&self) -> &BTreeMap<TimelineId, TimelineWal> {
        &self.timelines
    }

    pub fn leftovers(&self) -> &[ObjectMeta] {
        &self.leftovers
    }

    pub fn histories(&self) -> &BTreeMap<TimelineId, TimelineHistory> {
        &self.histories
    }

    /// Every backup directory, oldest first.
    pub fn backups(&self) -> &[BackupEntry] {
        &self.backups
    }

    /// The complete backups, oldest (by stop LSN) first.
    pub fn points(&self) -> &[BackupPoint] {
        &self.points
    }

    /// The `backup.json` of a complete backup.
    pub fn info(&self, id: &str) -> Option<&BackupInfo> {
        self.backups.iter().filter_map(|e| e.info.as_ref()).find(|i| i.id == id)
    }

    /// The newest timeline: with stored WAL or a stored history (timeline 1
    /// has none); `None` in an empty repository.
    pub fn latest_timeline(&self) -> Option<TimelineId> {
        let wal = self.timelines.keys().next_back().copied();
        let planning = self.listed.is_some().then_some(TimelineId::FIRST);
        [wal, self.histories.keys().next_back().copied(), planning].into_iter().flatten().max()
    }

    /// The history recovery to `tli` follows; `None` when its history file
    /// is not stored.
    pub fn path(&self, tli: TimelineId) -> Option<TimelinePath> {
        if tli == TimelineId::FIRST {
            return Some(TimelinePath::first());
        }
        self.histories.get(&tli).map(TimelinePath::from_history)
    }

    /// How far the WAL of `path` is listed from `from` on without a hole in
    /// the listing; `Lsn::MAX` when through its end.
    pub fn listed_to(&self, path: &TimelinePath, from: Lsn) -> Lsn {
        let Some(listed) = &self.listed else { return Lsn::MAX };
        for step in &path.steps {
            let (lo, hi) = (step.begin.max(from), step.end_or_max());
            if lo >= hi {
                continue;
            }
            let done = listed.get(&step.timeline);
            let end = self.ends.get(&step.timeline).copied();
            let mut log = log_of(lo);
            while Lsn(log << 32) < hi {
                if end.is_some_and(|e| log >= e) {
                    if step.end.is_none() {
                        return Lsn::MAX;
                    }
                } else if !done.is_some_and(|d| d.contains(&log)) {
                    return Lsn(log << 32).max(lo);
                }
                log += 1;
            }
        }
        Lsn::MAX
    }

    /// The objects of the cover that lie on `path`, in LSN order.
    pub fn objects_on(&self, path: &TimelinePath) -> Vec<PathObject> {
        let seg = self.seg();
        let mut out = Vec::new();
        for s in &path.steps {
            let Some(tl) = self.timelines.get(&s.timeline) else { continue };
            for (id, _) in &tl.objects {
                let (a, b) = id.range(seg);
                let (lo, hi) = (a.max(s.begin), b.min(s.end_or_max()));
                if lo < hi {
                    out.push(PathObject { id: *id, lo, hi });
                }
            }
        }
        out
    }

    /// The objects of the cover of `tli` itself.
    fn objects_of(&self, tli: TimelineId) -> Vec<PathObject> {
        let seg = self.seg();
        let objs = self.timelines.get(&tli).map_or(&[][..], |t| &t.objects[..]);
        objs.iter()
            .map(|(id, _)| {
                let (lo, hi) = id.range(seg);
                PathObject { id: *id, lo, hi }
            })
            .collect()
    }

    /// The first hole in `from..to` along `path`, as (timeline, start, end of
    /// the hole or `None` when nothing follows).
    pub fn first_gap(&self, path: &TimelinePath, from: Lsn, to: Lsn) -> Option<(TimelineId, Lsn, Option<Lsn>)> {
        for (tli, lo, hi) in path.needed(self.seg(), from, to) {
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
        // The newest timeline of the path may have no WAL yet (just after a
        // promotion): then the end is its parent's, up to the switch.
        path.steps.iter().rev().find_map(|s| {
            let end = self.timelines.get(&s.timeline)?.end()?.min(s.end_or_max());
            (end > s.begin).then_some(end)
        })
    }
}

fn sort_points(points: &mut [BackupPoint]) {
    points.sort_by(|a, b| (a.stop_lsn, &a.id).cmp(&(b.stop_lsn, &b.id)));
}

type WalListing = (BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>, BTreeMap<TimelineId, TimelineHistory>);

async fn read_wal(repo: &Repository) -> Result<WalListing> {
    let (storage, seg) = (repo.storage().as_ref(), repo.seg_size());
    // Format 1 keeps each timeline in one directory, which every listing of
    // one of its log IDs reads whole: one listing of everything is cheaper.
    let whole = repo.binding().format_version == 1;
    let scan =
        || async move { if whole { wal::scan_whole(storage, seg).await } else { wal::scan(storage, seg).await } };
    let (mut timelines, mut leftovers) = scan().await?;
    let gaps = |t: &BTreeMap<TimelineId, TimelineWal>| t.values().map(|t| t.gaps().len()).sum::<usize>();
    if gaps(&timelines) > 0 {
        // A gap that a second listing also shows is real.
        let (again, l) = scan().await?;
        if gaps(&again) < gaps(&timelines) {
            (timelines, leftovers) = (again, l);
        }
    }
    Ok((timelines, leftovers, read_histories(repo).await?))
}

/// Every stored timeline history, so that the full and the planning
/// catalog know the same timelines.
async fn read_histories(repo: &Repository) -> Result<BTreeMap<TimelineId, TimelineHistory>> {
    let names = repo.storage().list_shallow(wal::HISTORY_PREFIX).await?;
    let tlis = names.iter().filter_map(|m| {
        let name = m.key.strip_prefix(wal::HISTORY_PREFIX)?.strip_suffix(".history")?;
        hex8(name).map(|t| TimelineId(t as u32))
    });
    let reads = tlis.map(|tli| async move { Ok::<_, RepoError>(read_history(repo, tli).await?.map(|h| (tli, h))) });
    Ok(futures_util::future::try_join_all(reads).await?.into_iter().flatten().collect())
}

/// An 8-hex-digit name (a timeline or a log ID), as the keys spell them.
fn hex8(name: &str) -> Option<u64> {
    (name.len() == 8).then(|| u64::from_str_radix(name, 16).ok()).flatten()
}

/// The log IDs of a timeline's log directories, as listed under `dir`.
fn log_ids(dirs: &[String], dir: &str) -> Vec<u64> {
    dirs.iter().filter_map(|d| hex8(d.strip_prefix(dir)?.strip_suffix('/')?)).collect()
}

async fn read_history(repo: &Repository, tli: TimelineId) -> Result<Option<TimelineHistory>> {
    let storage = repo.storage();
    let key = wal::history_key(tli);
    let raw = match storage.get(&key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&raw);
    TimelineHistory::parse(tli, &text).map(Some).map_err(|e| RepoError::Corrupt {
        location: storage.describe(),
        key,
        reason: e.to_string(),
    })
}

/// Unix microseconds to RFC 3339 (UTC, microsecond precision).
pub fn format_time_us(us: i64) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(t) => format!("{t:.6}"),
        Err(_) => format!("(invalid time {us} µs)"),
    }
}
