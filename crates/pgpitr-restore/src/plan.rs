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
use futures_util::StreamExt;
use pgpitr_repo::RepoError;
pub use pgpitr_repo::catalog::{BackupPoint, PathStep, TimelinePath};
use pgpitr_repo::catalog::{Catalog, Listing, PathObject, Summaries};
use pgpitr_repo::chain::Backups;
use pgpitr_repo::object::{RestorePoint, TimedLsn};
use pgpitr_repo::wal::{self, TimelineWal, WalObjectId};
use pgpitr_types::{Lsn, TimelineId, WalSegSize};
use serde::Serialize;

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
    /// The backups a restore of `backup` reads, full one first: `backup`
    /// alone, or its chain when it is incremental.
    pub chain: Vec<String>,
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
    /// The restorable window of the timeline (Unix µs); its end only when
    /// the plan read it (a target with a stored commit after it does not).
    pub earliest_us: i64,
    pub latest_us: Option<i64>,
    /// Why the recovery settings differ from the literal request, if they do.
    pub note: Option<String>,
}

/// Plans a restore. Fails, naming the window or the gap, when the target
/// cannot be reached exactly.
pub async fn plan(cat: &mut Catalog, req: &PlanRequest) -> Result<Plan> {
    let tlis: Vec<Option<TimelineId>> = match req.timeline {
        TimelineTarget::Latest => vec![cat.latest_timeline()],
        TimelineTarget::Id(t) => vec![Some(t)],
        // The backup's own timeline: try each timeline a backup is on, newest backup first.
        TimelineTarget::Current => {
            let mut v: Vec<Option<TimelineId>> = Vec::new();
            for b in cat.points().iter().rev().filter(|b| req.backup.as_ref().is_none_or(|id| &b.id == id)) {
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
        match plan_on(cat, req, tli).await {
            Ok(mut p) => {
                p.chain = match &p.backup.parent {
                    None => vec![p.backup.id.clone()],
                    Some(_) => chain_of(cat, &p.backup.id)?,
                };
                return Ok(p);
            }
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

/// The IDs of the backups restoring `id` reads, full backup first; refused,
/// naming the member, when a member is missing or a link does not hold.
fn chain_of(cat: &Catalog, id: &str) -> Result<Vec<String>> {
    let backups = Backups::new(cat.backups().iter().filter_map(|e| e.info.as_ref()));
    let info = backups
        .get(id)
        .ok_or_else(|| PlanError::Unreachable(format!("backup {id} is not a complete backup in the repository")))?;
    let chain = backups.chain(info).map_err(|e| PlanError::Unreachable(e.to_string()))?;
    Ok(chain.iter().map(|i| i.id.clone()).collect())
}

/// The first indexed commit on `path` from `from` on whose time passes
/// `pred`, listing log directory after log directory from `start` (the
/// chosen backup's start) until one is found or the WAL ends: what is read
/// follows the distance to the target, not the repository's size.
async fn first_commit_listing(
    cat: &mut Catalog,
    path: &TimelinePath,
    start: Lsn,
    from: Lsn,
    pred: impl Fn(i64) -> bool,
) -> Result<Option<TimedLsn>> {
    loop {
        let frontier = cat.listed_to(path, start);
        let (index, sums) = cat.split();
        let objs: Vec<PathObject> = index.objects_on(path).into_iter().filter(|o| o.lo < frontier).collect();
        let found = sums.first_commit_where(&objs, from, &pred).await?;
        if found.is_some() || frontier == Lsn::MAX {
            return Ok(found);
        }
        cat.list_next(path, frontier).await?;
    }
}

/// Lists the WAL of `path` from `from` up to `to`.
async fn list_through(cat: &mut Catalog, path: &TimelinePath, from: Lsn, to: Lsn) -> Result<()> {
    loop {
        let frontier = cat.listed_to(path, from);
        if frontier >= to {
            return Ok(());
        }
        cat.list_next(path, frontier).await?;
    }
}

/// Reads the end of the window: lists the WAL of `path` from the newest
/// backup on to its end, and sets the plan's WAL end, latest restorable
/// time and newest indexed commit (in `last_commit`, for the caller).
async fn window(cat: &mut Catalog, path: &TimelinePath, newest: &BackupPoint, plan: &mut Plan) -> Result<()> {
    cat.list_path(path, newest.start_lsn).await?;
    let (index, sums) = cat.split();
    let objs = index.objects_on(path);
    sums.read_ahead(&objs).await;
    let (last, latest_us) = sums.window_end(&objs, newest).await?;
    plan.wal_end = index.path_end(path).unwrap_or(newest.stop_lsn);
    plan.latest_us = Some(latest_us);
    plan.last_commit = last;
    Ok(())
}

async fn plan_on(cat: &mut Catalog, req: &PlanRequest, tli: TimelineId) -> Result<Plan> {
    let Some(path) = cat.path(tli) else {
        return Err(PlanError::Unreachable(format!(
            "timeline {tli} has no history file ({}) in the repository",
            wal::history_key(tli)
        )));
    };
    let mut cands: Vec<BackupPoint> = cat.points().iter().filter(|b| path.holds_backup(b)).cloned().collect();
    if let Some(id) = &req.backup {
        let Some(b) = cat.points().iter().find(|b| &b.id == id).cloned() else {
            return Err(PlanError::Unreachable(format!("backup {id} is not a complete backup in the repository")));
        };
        if !path.holds_backup(&b) {
            return Err(PlanError::Unreachable(format!(
                "backup {id} (timeline {}, {}..{}) is not on the history of timeline {tli}",
                b.timeline, b.start_lsn, b.stop_lsn
            )));
        }
        cands = vec![b];
    }
    let Some(oldest) = cands.first().cloned() else {
        return Err(PlanError::Unreachable(format!(
            "no complete backup on the history of timeline {tli} (run pgpitr backup first)"
        )));
    };
    let newest = cands.last().cloned().expect("non-empty");
    let earliest_us = oldest.stop_time_us;
    let mut plan = Plan {
        backup: newest.clone(),
        chain: Vec::new(),
        timeline: tli,
        path: path.clone(),
        recovery: RecoveryTarget::None,
        wal_end: newest.stop_lsn,
        last_commit: None,
        first_excluded: None,
        earliest_us,
        latest_us: None,
        note: None,
    };
    // A time or LSN target lists WAL from its backup only until its stop
    // commit; the others need the end of the WAL, and restore points and
    // transactions all of it from the oldest backup.
    if !matches!(req.target, Target::Time(_) | Target::Lsn(_)) {
        window(cat, &path, &newest, &mut plan).await?;
    }
    if matches!(req.target, Target::Xid(_) | Target::Name(_)) {
        cat.list_path(&path, oldest.start_lsn).await?;
    }
    let (index, sums) = cat.split();
    let objs = index.objects_on(&path);
    let end = plan.wal_end;
    let last = plan.last_commit.take();
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
            // Postgres stops before the first commit later than the target
            // (at or later with --target-exclusive).
            let after = |time: i64| if req.inclusive { time > t } else { time >= t };
            for b in cands.iter().rev().filter(|b| b.stop_time_us <= t) {
                // A stop before the backup is consistent would be fatal.
                list_through(cat, &path, b.start_lsn, b.stop_lsn).await?;
                let (index, sums) = cat.split();
                let inside: Vec<PathObject> =
                    index.objects_on(&path).into_iter().filter(|o| o.hi > b.start_lsn && o.lo < b.stop_lsn).collect();
                sums.load(&inside).await?;
                if inside.iter().flat_map(|o| sums.commits(o)).any(|c| c.lsn < b.stop_lsn && after(c.time_us)) {
                    continue;
                }
                plan.backup = b.clone();
                let stop = first_commit_listing(cat, &path, b.start_lsn, b.stop_lsn, after).await?;
                if stop.is_none() {
                    // No commit after the target: is it past the window?
                    window(cat, &path, &newest, &mut plan).await?;
                    let latest = plan.latest_us.unwrap_or(newest.stop_time_us);
                    if t > latest {
                        return Err(PlanError::AfterLatest { target: t, latest, tli });
                    }
                }
                let (index, sums) = cat.split();
                let objs = index.objects_on(&path);
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
                            plan.note = Some(unindexed_note(id, index.seg()));
                        }
                        None => {
                            fall_back_to_last_commit(&mut plan, before, &format!("no commit after {}", format_time(t)))
                        }
                    },
                }
                // The stop commit's record may end in the next log directory.
                list_through(cat, &path, b.start_lsn, plan.wal_end).await?;
                let (index, sums) = cat.split();
                check_gaps(sums, index, &index.objects_on(&path), &plan).await?;
                return Ok(plan);
            }
            Err(PlanError::BeforeEarliest {
                target: t,
                earliest: cands.iter().map(|b| b.stop_time_us).min().unwrap_or(earliest_us),
                tli,
            })
        }
        &Target::Lsn(l) => {
            let Some(b) = cands.iter().rev().find(|b| b.stop_lsn <= l).cloned() else {
                return Err(PlanError::LsnBeforeEarliest { target: l, earliest: oldest.stop_lsn, tli });
            };
            // Postgres must read a whole record at or after the target LSN;
            // the first stored commit there is one.
            let start = b.start_lsn;
            let at = first_commit_listing(cat, &path, start, l, |_| true).await?;
            if at.is_none() {
                window(cat, &path, &newest, &mut plan).await?;
                if l > plan.wal_end {
                    return Err(PlanError::LsnAfterLatest { target: l, end: plan.wal_end, tli });
                }
            }
            plan.backup = b.clone();
            let (index, sums) = cat.split();
            let objs = index.objects_on(&path);
            plan.last_commit = sums.last_commit(&objs, l).await?.filter(|c| c.lsn >= start);
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
                            plan.note = Some(unindexed_note(id, index.seg()));
                        }
                        None => fall_back_to_last_commit(&mut plan, before, &format!("no commit at or after {l}")),
                    }
                }
            }
            list_through(cat, &path, start, plan.wal_end).await?;
            let (index, sums) = cat.split();
            check_gaps(sums, index, &index.objects_on(&path), &plan).await?;
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
                match find_xid_end(index, &path, b.start_lsn, scan_to, xid as u32).await? {
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
                    plan.backup = b.clone();
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
                plan.backup = b.clone();
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
async fn find_xid_end(index: &Listing, path: &TimelinePath, from: Lsn, to: Lsn, xid: u32) -> Result<XidSearch> {
    use pgpitr_walscan::{WalEvent, WalScanner};
    let (seg, format) = (index.seg(), index.repo().major().wal_format());
    let storage = index.repo().storage().as_ref();
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
            let tl = index.timelines().get(&tli).unwrap_or(&empty);
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

async fn check_gaps(sums: &mut Summaries, index: &Listing, objs: &[PathObject], plan: &Plan) -> Result<()> {
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

#[cfg(test)]
mod tests;
