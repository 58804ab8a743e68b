//! What a repository holds, as `pgpitr list` shows it (the shape of its
//! JSON), from the catalog.

use pgpitr_repo::Result;
use pgpitr_repo::backup::{self, BackupSummary};
use pgpitr_repo::catalog::{Catalog, Unindexed, Window, format_time_us};
use pgpitr_repo::chain::Backups;
use pgpitr_repo::drills::DrillReport;
use pgpitr_repo::lease::{self, StreamSummary};
use pgpitr_repo::retention;
use pgpitr_types::{Lsn, TimelineId};
use serde::Serialize;

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
    /// The restorable window of the timeline ([`Catalog::window`]); both
    /// `None` without a complete backup on its history.
    pub earliest_restorable_time: Option<String>,
    pub latest_restorable_time: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoStatus {
    /// A string: JSON readers lose precision above 2^53.
    pub system_identifier: String,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub timelines: Vec<TimelineStatus>,
    /// The latest time a restore reaches: the end of the latest window
    /// ([`Catalog::latest_restorable_time`]); `None` without a complete backup.
    pub latest_restorable_time: Option<String>,
    /// The newest commit stored on any timeline, RFC 3339 UTC.
    pub latest_commit_time: Option<String>,
    /// Base backups, oldest first, unfinished ones included (by status).
    pub backups: Vec<BackupSummary>,
    /// The start of the earliest window ([`Catalog::window`]): the stop
    /// time of the oldest backup the WAL runs on from, RFC 3339 UTC.
    pub earliest_restorable_time: Option<String>,
    /// `pgpitr stream` processes by their leases; `live: false` is what a
    /// killed stream left behind.
    pub streams: Vec<StreamSummary>,
    /// WAL objects whose commit-time index is incomplete; `None` when not
    /// looked for (`list --index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unindexed: Option<Vec<Unindexed>>,
    /// The newest restore drills' reports, newest first.
    pub drills: Vec<DrillReport>,
    /// Per complete backup: how far it restores, from the WAL stored, and
    /// why the last applied retention policy keeps it.
    pub retention: Vec<BackupRetention>,
    /// The policy the last `expire` applied, if any.
    pub retention_policy: Option<retention::Recorded>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRetention {
    pub id: String,
    /// `point_in_time` (WAL stored from its start to the end of its
    /// timeline), `to_its_end` (its own WAL only: a later gap),
    /// `as_a_parent` (its own WAL is gone, but an incremental backup builds
    /// on it), or `not_restorable` (its own WAL is incomplete, or its chain
    /// broken).
    pub restorable: &'static str,
    /// Why the recorded policy keeps it; empty: the next `expire` deletes it.
    pub kept_by: Vec<retention::KeptBy>,
    /// The backups restoring it reads, full backup first (itself alone for
    /// a full backup); empty when its chain is broken.
    pub chain: Vec<String>,
    /// Why its chain is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_problem: Option<String>,
}

/// How many drills `list` shows.
const DRILLS_SHOWN: usize = 5;

/// What the catalog's repository holds; with `index`, also every object
/// whose commit-time index is incomplete (which reads every WAL object's
/// summary).
pub async fn status(cat: &mut Catalog, index: bool) -> Result<RepoStatus> {
    let windows = cat.windows().await?;
    let window = |tli: TimelineId| windows.iter().find(|w| w.timeline == tli);
    let tlis: Vec<TimelineId> = cat.timelines().keys().copied().collect();
    let mut out = Vec::new();
    let mut latest_commit: Option<i64> = None;
    for tli in tlis {
        let commit = cat.latest_commit(tli).await?;
        let tl = &cat.timelines()[&tli];
        let (Some(start), Some(end)) = (tl.start(), tl.end()) else { continue };
        if let Some(c) = commit {
            latest_commit = latest_commit.max(Some(c.time_us));
        }
        let w: Option<&Window> = window(tli);
        out.push(TimelineStatus {
            timeline: tli,
            start_lsn: start,
            end_lsn: end,
            gaps: tl.gaps().into_iter().map(|(s, e)| Gap { start_lsn: s, end_lsn: e }).collect(),
            objects: tl.objects.len(),
            stored_bytes: tl.objects.iter().map(|(_, m)| m.size).sum(),
            latest_commit_time: commit.map(|c| format_time_us(c.time_us)),
            latest_commit_lsn: commit.map(|c| c.end_lsn),
            earliest_restorable_time: w.and_then(|w| w.earliest_restorable_time.clone()),
            latest_restorable_time: w.and_then(|w| w.latest_restorable_time.clone()),
        });
    }
    let now = jiff::Timestamp::now();
    let backups: Vec<BackupSummary> = cat.backups().iter().map(|e| e.summary(now, backup::STALE_AFTER)).collect();
    let streams =
        lease::read_all(cat.repo().storage().as_ref()).await?.iter().map(|l| StreamSummary::of(l, now)).collect();
    let unindexed = if index { Some(cat.unindexed().await?) } else { None };
    let drills = cat.repo().recent_drills(DRILLS_SHOWN).await?;
    let retention_policy = retention::recorded(cat.repo()).await?;
    let complete: Vec<BackupSummary> =
        backups.iter().filter(|b| b.status == backup::BackupStatus::Complete).cloned().collect();
    let why = match &retention_policy {
        Some(r) => retention::reasons(&complete, &r.policy, now),
        None => vec![Vec::new(); complete.len()],
    };
    let (listing, _) = cat.split();
    let chains = Backups::new(listing.backups().iter().filter_map(|e| e.info.as_ref()));
    let retention = complete
        .iter()
        .zip(why)
        .map(|(b, kept_by)| {
            let chain = chains.get(&b.id).map(|i| chains.chain(i));
            let (chain, chain_problem) = match chain {
                Some(Ok(c)) => (c.iter().map(|m| m.id.clone()).collect(), None),
                Some(Err(e)) => (Vec::new(), Some(e.to_string())),
                None => (Vec::new(), None),
            };
            let child = complete.iter().any(|c| c.parent.as_deref() == Some(b.id.as_str()));
            let restorable = match (&chain_problem, reach(listing, b)) {
                (Some(_), _) => "not_restorable",
                // Expiry keeps a parent for its child, not its own WAL.
                (None, "not_restorable") if child => "as_a_parent",
                (None, r) => r,
            };
            BackupRetention { id: b.id.clone(), restorable, kept_by, chain, chain_problem }
        })
        .collect();
    let b = cat.repo().binding();
    Ok(RepoStatus {
        earliest_restorable_time: windows.iter().filter_map(|w| w.earliest_us).min().map(format_time_us),
        backups,
        system_identifier: b.system_identifier.to_string(),
        pg_major: b.pg_major,
        wal_segment_size: b.wal_segment_size.bytes(),
        timelines: out,
        latest_restorable_time: windows.iter().filter_map(|w| w.latest_us).max().map(format_time_us),
        latest_commit_time: latest_commit.map(format_time_us),
        streams,
        unindexed,
        drills,
        retention,
        retention_policy,
    })
}

/// How far a complete backup restores with the WAL stored.
fn reach(listing: &pgpitr_repo::catalog::Listing, b: &BackupSummary) -> &'static str {
    let (Some(tli), Some(start), Some(stop)) = (b.timeline, b.start_lsn, b.stop_lsn) else { return "not_restorable" };
    let Some(path) = listing.path(tli) else { return "not_restorable" };
    if listing.first_gap(&path, start, stop).is_some() {
        return "not_restorable";
    }
    match listing.path_end(&path) {
        Some(end) if listing.first_gap(&path, start, end).is_none() => "point_in_time",
        _ => "to_its_end",
    }
}
