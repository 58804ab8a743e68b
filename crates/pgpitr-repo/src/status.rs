//! What a repository holds, as `pgpitr list` reports it.

use crate::RepoError;
use crate::backup::{self, BackupSummary};
use crate::lease::{self, StreamSummary};
use crate::object::{ObjectHeader, TimedLsn};
use crate::wal::{self, TimelineWal};
use crate::{Repository, Result};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_types::{Lsn, TimelineId};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineStatus {
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub gaps: Vec<Gap>,
    pub objects: usize,
    pub stored_bytes: u64,
    /// The newest commit stored on this timeline, RFC 3339 UTC.
    pub latest_commit_time: Option<String>,
    pub latest_commit_lsn: Option<Lsn>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoStatus {
    /// A string: JSON readers lose precision above 2^53.
    pub system_identifier: String,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub timelines: Vec<TimelineStatus>,
    /// The newest commit durably stored, RFC 3339 UTC.
    pub latest_restorable_time: Option<String>,
    /// Base backups, oldest first, unfinished ones included (by status).
    pub backups: Vec<BackupSummary>,
    /// The stop time of the oldest complete backup, RFC 3339 UTC.
    pub earliest_restorable_time: Option<String>,
    /// `pgpitr stream` processes by their leases; `live: false` is what a
    /// killed stream left behind.
    pub streams: Vec<StreamSummary>,
    /// WAL objects whose commit-time index is incomplete; `None` when not
    /// looked for (`list --index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unindexed: Option<Vec<Unindexed>>,
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

/// Every WAL object of `timelines` whose summary says its index is
/// incomplete. Reads every object's header (a ranged GET each).
pub async fn unindexed(repo: &Repository, timelines: &BTreeMap<TimelineId, TimelineWal>) -> Result<Vec<Unindexed>> {
    const AT_ONCE: usize = 32;
    let (storage, seg) = (repo.storage().as_ref(), repo.seg_size());
    let keys = timelines.values().flat_map(|t| t.objects.iter().map(|(id, _)| id.key(seg)));
    let headers: Vec<_> = futures_util::stream::iter(keys)
        .map(|key| async move { wal::read_header(storage, &key).await.map(|h| (key, h)) })
        .buffered(AT_ONCE)
        .try_collect()
        .await?;
    Ok(headers.iter().filter_map(|(key, h)| Unindexed::of(key, h)).collect())
}

impl Unindexed {
    /// What of the object (or journal frame) `h`, stored as `key`, is not
    /// indexed, if anything.
    pub fn of(key: &str, h: &ObjectHeader) -> Option<Unindexed> {
        // Before the object's start: a record continued from the one
        // before, which a resume scans from its own start.
        let end = h.summary.unindexed_before?.min(h.end);
        (end > h.start).then(|| Unindexed {
            object: key.to_string(),
            timeline: h.tli,
            start_lsn: h.start,
            end_lsn: end,
        })
    }
}

/// Unix microseconds to RFC 3339 (UTC, microsecond precision).
pub fn format_time_us(us: i64) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(t) => format!("{t:.6}"),
        Err(_) => format!("(invalid time {us} µs)"),
    }
}

/// The newest commit stored on one timeline: reads object headers from the
/// newest object backwards, a few at a time, until one names a commit.
pub async fn latest_commit(repo: &Repository, tl: &TimelineWal) -> Result<Option<TimedLsn>> {
    const BATCH: usize = 8;
    let storage = repo.storage().as_ref();
    let seg = repo.seg_size();
    for chunk in tl.objects.iter().rev().collect::<Vec<_>>().chunks(BATCH) {
        let headers: Vec<_> = futures_util::stream::iter(chunk.iter().map(|(id, _)| id.key(seg)))
            .map(|key| async move { wal::read_header(storage, &key).await })
            .buffered(BATCH)
            .try_collect()
            .await?;
        if let Some(c) = headers.iter().find_map(|h| h.summary.last_commit) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// What `repo` holds; with `index`, also every object whose commit-time
/// index is incomplete (which reads every WAL object's header).
pub async fn status(repo: &Repository, index: bool) -> Result<RepoStatus> {
    crate::relisting(RepoError::is_not_found, || async {
        let (storage, seg) = (repo.storage().as_ref(), repo.seg_size());
        let (mut timelines, _leftovers) = wal::scan(storage, seg).await?;
        if timelines.values().any(|t| !t.gaps().is_empty()) {
            // A listing is not a snapshot: a part merged during it can
            // look like a gap. One that a second listing also shows is real.
            let (again, _) = wal::scan(storage, seg).await?;
            if again.values().map(|t| t.gaps().len()).sum::<usize>() < timelines.values().map(|t| t.gaps().len()).sum()
            {
                timelines = again;
            }
        }
        let mut st = status_from_scan(repo, &timelines).await?;
        if index {
            st.unindexed = Some(unindexed(repo, &timelines).await?);
        }
        Ok(st)
    })
    .await
}

pub async fn status_from_scan(repo: &Repository, timelines: &BTreeMap<TimelineId, TimelineWal>) -> Result<RepoStatus> {
    let mut out = Vec::new();
    let mut latest: Option<i64> = None;
    for (tli, tl) in timelines {
        let (Some(start), Some(end)) = (tl.start(), tl.end()) else { continue };
        let commit = latest_commit(repo, tl).await?;
        if let Some(c) = commit {
            latest = Some(latest.map_or(c.time_us, |l| l.max(c.time_us)));
        }
        out.push(TimelineStatus {
            timeline: *tli,
            start_lsn: start,
            end_lsn: end,
            gaps: tl.gaps().into_iter().map(|(s, e)| Gap { start_lsn: s, end_lsn: e }).collect(),
            objects: tl.objects.len(),
            stored_bytes: tl.objects.iter().map(|(_, m)| m.size).sum(),
            latest_commit_time: commit.map(|c| format_time_us(c.time_us)),
            latest_commit_lsn: commit.map(|c| c.end_lsn),
        });
    }
    let backups = backup::list_backups(repo.storage().as_ref()).await?;
    let now = jiff::Timestamp::now();
    let streams = lease::read_all(repo.storage().as_ref()).await?.iter().map(|l| StreamSummary::of(l, now)).collect();
    let b = repo.binding();
    Ok(RepoStatus {
        earliest_restorable_time: backup::earliest_restorable_time(&backups),
        backups,
        system_identifier: b.system_identifier.to_string(),
        pg_major: b.pg_major,
        wal_segment_size: b.wal_segment_size.bytes(),
        timelines: out,
        latest_restorable_time: latest.map(format_time_us),
        streams,
        unindexed: None,
    })
}
