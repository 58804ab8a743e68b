//! Backups and timeline histories as planning and windows see them.

use crate::backup::BackupInfo;
use crate::{RepoError, Result};
use pgpitr_types::{Lsn, TimelineHistory, TimelineId, WalSegSize};
use serde::Serialize;

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
    /// What it takes on disk once restored (its tar archives' bytes).
    pub size_bytes: u64,
    /// The backup it builds on, when incremental.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl BackupPoint {
    /// What planning needs of a complete backup's `backup.json`.
    pub fn of(info: &BackupInfo, location: &str) -> Result<BackupPoint> {
        let stop: jiff::Timestamp = info.stop_time.parse().map_err(|e| RepoError::Corrupt {
            location: location.to_string(),
            key: format!("backups/{}/backup.json", info.id),
            reason: format!("stop_time {:?} is not RFC 3339: {e}", info.stop_time),
        })?;
        Ok(BackupPoint {
            id: info.id.clone(),
            timeline: info.timeline,
            start_lsn: info.start_lsn,
            stop_lsn: info.stop_lsn,
            stop_time_us: stop.as_microsecond(),
            size_bytes: info.size_bytes,
            parent: info.parent().map(str::to_string),
        })
    }
}

/// One timeline on a history: it holds the WAL of `begin..end` (`end` is
/// `None` for the target timeline itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathStep {
    pub timeline: TimelineId,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

impl PathStep {
    pub fn end_or_max(&self) -> Lsn {
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
    /// The first timeline, which has no history.
    pub fn first() -> Self {
        let tli = TimelineId::FIRST;
        TimelinePath { target: tli, steps: vec![PathStep { timeline: tli, begin: Lsn(0), end: None }] }
    }

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
        // began at or before k, and pieces are stored from offset 0.
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

/// One stored object on a path, with the span of it that lies on the path.
#[derive(Debug, Clone, Copy)]
pub struct PathObject {
    pub id: crate::wal::WalObjectId,
    pub lo: Lsn,
    pub hi: Lsn,
}
