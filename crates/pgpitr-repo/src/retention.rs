//! Retention: which base backups a policy keeps, and deleting the backups
//! and WAL that nothing kept can use.
//!
//! Invariants:
//! - At least one complete backup is always kept, and every kept backup
//!   stays restorable: WAL is deleted only below the oldest kept backup's
//!   start LSN, where no restore from a kept backup ever reads. LSNs only
//!   grow across timelines (a timeline continues from its branch point), so
//!   one horizon serves every timeline. Timeline history files are kept.
//! - A WAL object goes only when its whole segment ends at or before the
//!   horizon, so a journal's end never has to be read to decide.
//! - A backup loses its `backup.json` first ([`backup::delete_backup`]):
//!   interrupted, it is left incomplete, never complete with pieces missing.
//!   Backups go before WAL, so an interruption never leaves a complete
//!   backup without its WAL. Running again finishes the job.
//! - Running backups are never touched; incomplete ones nobody works on
//!   are leftovers and go.

use crate::backup::{self, BackupEntry, BackupStatus, BackupSummary, STALE_AFTER};
use crate::catalog::Catalog;
use crate::drills;
use crate::wal::WalObjectId;
use crate::{Repository, Result};
use pgpitr_types::Lsn;
use serde::Serialize;
use std::time::Duration;

/// What to keep. At least one of the two must be set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// The newest N complete backups (N ≥ 1).
    pub keep_backups: Option<u32>,
    /// Every backup needed to restore to any time within this long before
    /// now: those that stopped in the window, and the newest one before it.
    pub keep_within: Option<Duration>,
}

/// What a policy keeps and deletes, computed before anything is deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub kept_backups: Vec<String>,
    /// Complete backups the policy does not keep.
    pub expired_backups: Vec<BackupSummary>,
    /// Incomplete backups nobody works on any more.
    pub leftover_backups: Vec<String>,
    /// WAL whose segment ends at or before this LSN is deleted; `None`
    /// when there is no complete backup (then nothing is deleted).
    pub wal_horizon: Option<Lsn>,
    pub wal_objects: usize,
    pub wal_bytes: u64,
    /// The earliest time a restore can reach once the plan is applied.
    pub earliest_restorable_time: Option<String>,
    /// Drill reports beyond the newest [`drills::KEEP_REPORTS`].
    pub old_drill_reports: usize,
    #[serde(skip)]
    wal_keys: Vec<String>,
    #[serde(skip)]
    drill_keys: Vec<String>,
    #[serde(skip)]
    delete_ids: Vec<backup::BackupId>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.delete_ids.is_empty() && self.wal_keys.is_empty() && self.drill_keys.is_empty()
    }
}

/// Decides, listing only the backups and the WAL below the horizon: the
/// cost follows what is deleted, not what the repository holds. Deletes
/// nothing.
pub async fn plan(repo: &Repository, policy: &Policy, now: jiff::Timestamp) -> Result<Plan> {
    let mut cat = Catalog::for_planning(repo).await?;
    let horizon = horizon(cat.backups(), policy, now);
    if let Some(h) = horizon {
        cat.list_before(h).await?;
    }
    let mut plan = plan_from(&cat, policy, now)?;
    let mut reports = repo.drill_keys().await?;
    reports.truncate(reports.len().saturating_sub(drills::KEEP_REPORTS));
    plan.old_drill_reports = reports.len();
    plan.drill_keys = reports;
    Ok(plan)
}

/// The start of the oldest backup the policy keeps.
fn horizon(entries: &[BackupEntry], policy: &Policy, now: jiff::Timestamp) -> Option<Lsn> {
    let complete: Vec<&BackupEntry> = entries.iter().filter(|e| e.info.is_some()).collect();
    let summaries: Vec<BackupSummary> = complete.iter().map(|e| e.summary(now, STALE_AFTER)).collect();
    let keep = select(&summaries, policy, now);
    complete.iter().zip(&keep).filter(|(_, k)| **k).filter_map(|(e, _)| e.info.as_ref().map(|i| i.start_lsn)).min()
}

/// [`plan`] from a catalog that holds the backups and at least the WAL below the horizon.
fn plan_from(cat: &Catalog, policy: &Policy, now: jiff::Timestamp) -> Result<Plan> {
    let entries = cat.backups();
    let complete: Vec<&BackupEntry> = entries.iter().filter(|e| e.info.is_some()).collect();
    let summaries: Vec<BackupSummary> = complete.iter().map(|e| e.summary(now, STALE_AFTER)).collect();
    let keep = select(&summaries, policy, now);
    let mut plan = Plan::default();
    for ((entry, summary), kept) in complete.iter().zip(summaries).zip(&keep) {
        if *kept {
            plan.kept_backups.push(summary.id.clone());
            plan.earliest_restorable_time.get_or_insert_with(|| summary.stop_time.clone().unwrap_or_default());
        } else {
            plan.delete_ids.push(entry.id.clone());
            plan.expired_backups.push(summary);
        }
    }
    for e in entries.iter().filter(|e| e.status(now, STALE_AFTER) == BackupStatus::Incomplete) {
        plan.leftover_backups.push(e.id.to_string());
        plan.delete_ids.push(e.id.clone());
    }
    // No complete backup: the WAL may be all there is until one is taken.
    plan.wal_horizon = horizon(entries, policy, now);
    let Some(horizon) = plan.wal_horizon else { return Ok(plan) };
    let seg = cat.seg();
    let below = |id: &WalObjectId| id.segno.end_lsn(seg).is_some_and(|end| end <= horizon);
    let listed = cat.timelines().values().flat_map(|t| t.objects.iter().chain(&t.covered));
    let mut doomed: Vec<(String, u64)> =
        listed.filter(|(id, _)| below(id)).map(|(_, m)| (m.key.clone(), m.size)).collect();
    // Pieces of complete segments, awaiting deletion.
    let leftovers = cat.leftovers().iter().filter(|m| WalObjectId::parse(&m.key, seg).is_some_and(|id| below(&id)));
    doomed.extend(leftovers.map(|m| (m.key.clone(), m.size)));
    // Key order is LSN order within a timeline: segment numbers are fixed-width hex.
    doomed.sort();
    for (key, size) in doomed {
        plan.wal_objects += 1;
        plan.wal_bytes += size;
        plan.wal_keys.push(key);
    }
    Ok(plan)
}

/// Which of `backups` (complete, oldest first) the policy keeps. The
/// newest is always kept.
pub fn select(backups: &[BackupSummary], policy: &Policy, now: jiff::Timestamp) -> Vec<bool> {
    let n = backups.len();
    let mut keep = vec![false; n];
    if n == 0 {
        return keep;
    }
    keep[n - 1] = true;
    if let Some(k) = policy.keep_backups {
        for kept in keep.iter_mut().skip(n.saturating_sub(k as usize)) {
            *kept = true;
        }
    }
    if let Some(within) = policy.keep_within {
        let cutoff = jiff::SignedDuration::try_from(within).ok().and_then(|d| now.checked_sub(d).ok());
        let stop = |b: &BackupSummary| b.stop_time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        // A stop time that cannot be read counts as inside the window: keep rather than guess.
        let inside = |b: &BackupSummary| match (cutoff, stop(b)) {
            (Some(c), Some(t)) => t >= c,
            _ => true,
        };
        let mut newest_before = None;
        for (i, b) in backups.iter().enumerate() {
            if inside(b) {
                keep[i] = true;
            } else {
                newest_before = Some(i);
            }
        }
        // Restoring to the window's start needs the last backup before it.
        if let Some(i) = newest_before {
            keep[i] = true;
        }
    }
    keep
}

/// What [`apply`] deleted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Applied {
    pub backups: usize,
    pub backup_objects: usize,
    pub wal_objects: usize,
}

/// Deletes what `plan` names: backups first, then WAL, oldest first.
pub async fn apply(repo: &Repository, plan: &Plan) -> Result<Applied> {
    let storage = repo.storage().as_ref();
    let mut done = Applied::default();
    for id in &plan.delete_ids {
        done.backup_objects += backup::delete_backup(storage, id).await?;
        done.backups += 1;
        tracing::info!(backup = %id, "deleted backup");
    }
    for chunk in plan.wal_keys.chunks(1000) {
        storage.delete_many(chunk).await?;
        done.wal_objects += chunk.len();
    }
    storage.delete_many(&plan.drill_keys).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn backups(stops: &[&str]) -> Vec<BackupSummary> {
        stops
            .iter()
            .enumerate()
            .map(|(i, stop)| BackupSummary {
                id: format!("b{i}"),
                label: None,
                timeline: None,
                start_lsn: None,
                stop_lsn: None,
                start_time: None,
                stop_time: Some(stop.to_string()),
                size_bytes: None,
                stored_bytes: None,
                status: BackupStatus::Complete,
            })
            .collect()
    }

    #[test]
    fn keep_backups_keeps_the_newest_n() {
        let b = backups(&["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"]);
        let now = at("2026-12-04T00:00:00Z");
        let p = |n| Policy { keep_backups: Some(n), keep_within: None };
        assert_eq!(select(&b, &p(1), now), [false, false, true]);
        assert_eq!(select(&b, &p(2), now), [false, true, true]);
        assert_eq!(select(&b, &p(7), now), [true, true, true]);
        assert!(select(&[], &p(2), now).is_empty());
    }

    #[test]
    fn keep_within_keeps_the_window_and_the_backup_before_it() {
        let b = backups(&["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T12:00:00Z"]);
        let now = at("2026-12-04T00:00:00Z");
        let p = |h: u64| Policy { keep_backups: None, keep_within: Some(Duration::from_secs(h * 3600)) };
        // Window from 12-03 00:00: b2 is inside, b1 is needed to reach the window's start.
        assert_eq!(select(&b, &p(24), now), [false, true, true]);
        // Window from 12-03 18:00: only b2, which is also the one before it.
        assert_eq!(select(&b, &p(6), now), [false, false, true]);
        assert_eq!(select(&b, &p(24 * 30), now), [true, true, true]);
        // Both: what either keeps.
        let both = Policy { keep_backups: Some(3), keep_within: Some(Duration::from_secs(3600)) };
        assert_eq!(select(&b, &both, now), [true, true, true]);
        // An unreadable stop time is kept.
        let mut odd = b.clone();
        odd[0].stop_time = Some("yesterday".into());
        assert_eq!(select(&odd, &p(6), now), [true, false, true]);
    }
}
