//! What a repository holds, as `pgpitr list` reports it.

use crate::RepoError;
use crate::backup::{self, BackupSummary};
use crate::lease::{self, StreamSummary};
use crate::object::TimedLsn;
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

pub async fn status(repo: &Repository) -> Result<RepoStatus> {
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
        status_from_scan(repo, &timelines).await
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
    })
}
