//! Retention: which base backups a policy keeps, and deleting the backups
//! and WAL that nothing kept can use.
//!
//! Rules: the newest N backups, what restoring to any time in a window
//! needs, and calendar tiers (the newest backup of each of the last N days,
//! ISO weeks, months and years that hold one, in a time zone), plus held
//! backups. The union is kept. The newest backup and those kept by the
//! first two rules are *point-in-time capable*: all WAL from the oldest of
//! them on is kept. A backup kept only by a tier or a hold keeps just the
//! WAL from its start to its stop: restorable to its end.
//!
//! Invariants:
//! - At least one complete backup is always kept, and every kept backup
//!   stays restorable: WAL is deleted only below the oldest
//!   point-in-time-capable backup's start LSN, and never where a kept
//!   backup's own start..stop range lies. LSNs only grow across timelines
//!   (a timeline continues from its branch point), so one horizon serves
//!   every timeline. Timeline history files are kept.
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
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What to keep. At least one rule must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The newest N complete backups (N ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_backups: Option<u32>,
    /// Every backup needed to restore to any time within this long before
    /// now: those that stopped in the window, and the newest one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<Duration>,
    /// The newest backup of each of the last N days, ISO weeks (from
    /// Monday), months and years that hold a backup, by stop time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// The time zone (IANA name) of the tiers' calendar; `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl Policy {
    /// The tiers' time zone, checked.
    pub fn zone(&self) -> std::result::Result<jiff::tz::TimeZone, String> {
        match &self.time_zone {
            None => Ok(jiff::tz::TimeZone::UTC),
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}")),
        }
    }

    fn tiers(&self) -> [(Tier, Option<u32>); 4] {
        [
            (Tier::Daily, self.keep_daily),
            (Tier::Weekly, self.keep_weekly),
            (Tier::Monthly, self.keep_monthly),
            (Tier::Yearly, self.keep_yearly),
        ]
    }
}

/// A calendar tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Tier {
    /// The period `t` falls in, in `tz`: `2026-12-06`, `2026-W49`,
    /// `2026-12`, `2026`.
    pub fn period(self, t: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
        let d = t.to_zoned(tz.clone()).date();
        match self {
            Tier::Daily => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            Tier::Weekly => {
                let w = d.iso_week_date();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Tier::Monthly => format!("{:04}-{:02}", d.year(), d.month()),
            Tier::Yearly => format!("{:04}", d.year()),
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum KeptBy {
    /// The newest complete backup is always kept.
    Newest,
    KeepBackups,
    KeepWithin,
    /// The newest backup of `period` in `tier`.
    Tier {
        tier: Tier,
        period: String,
    },
    /// A legal hold.
    KeepForever,
    /// A kept incremental backup builds on it.
    Parent {
        of: String,
    },
}

impl KeptBy {
    /// Whether the rule keeps the WAL after the backup too.
    pub fn point_in_time(&self) -> bool {
        matches!(self, KeptBy::Newest | KeptBy::KeepBackups | KeptBy::KeepWithin)
    }

    pub fn describe(&self) -> String {
        match self {
            KeptBy::Newest => "newest".into(),
            KeptBy::KeepBackups => "keep-backups".into(),
            KeptBy::KeepWithin => "keep-within".into(),
            KeptBy::Tier { tier, period } => format!("{} {period}", format!("{tier:?}").to_lowercase()),
            KeptBy::KeepForever => "keep-forever".into(),
            KeptBy::Parent { of } => format!("parent of {of}"),
        }
    }
}

/// One kept backup and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptBackup {
    pub id: String,
    pub stop_time: Option<String>,
    pub kept_by: Vec<KeptBy>,
    /// Restorable to any time up to the end of the WAL, not only to its end.
    pub point_in_time: bool,
}

/// `retention.json`: the policy the last `expire` applied, so that `list`
/// can say why each backup is kept.
pub const RECORD_KEY: &str = "retention.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub policy: Policy,
    /// RFC 3339, UTC.
    pub applied_at: String,
}

/// The policy the last `expire` applied, if any.
pub async fn recorded(repo: &Repository) -> Result<Option<Recorded>> {
    let raw = match repo.storage().get(RECORD_KEY).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // A record this pgpitr cannot read only costs `list` its reasons.
    Ok(serde_json::from_slice(&raw).ok())
}

/// What a policy keeps and deletes, computed before anything is deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub kept_backups: Vec<String>,
    /// Each kept backup, why, and whether its WAL after it is kept.
    pub kept: Vec<KeptBackup>,
    /// Complete backups the policy does not keep.
    pub expired_backups: Vec<BackupSummary>,
    /// Incomplete backups nobody works on any more.
    pub leftover_backups: Vec<String>,
    /// WAL whose segment ends at or before this LSN is deleted; `None`
    /// when there is no complete backup (then nothing is deleted).
    pub wal_horizon: Option<Lsn>,
    pub wal_objects: usize,
    pub wal_bytes: u64,
    /// The earliest time of the point-in-time window once the plan is
    /// applied (older backups kept by tiers restore to their end only).
    pub earliest_restorable_time: Option<String>,
    /// Drill reports beyond the newest [`drills::KEEP_REPORTS`].
    pub old_drill_reports: usize,
    #[serde(skip)]
    wal_keys: Vec<String>,
    #[serde(skip)]
    drill_keys: Vec<String>,
    #[serde(skip)]
    policy: Policy,
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
    plan.policy = policy.clone();
    let mut reports = repo.drill_keys().await?;
    reports.truncate(reports.len().saturating_sub(drills::KEEP_REPORTS));
    plan.old_drill_reports = reports.len();
    plan.drill_keys = reports;
    Ok(plan)
}

/// The start of the oldest point-in-time-capable backup the policy keeps.
fn horizon(entries: &[BackupEntry], policy: &Policy, now: jiff::Timestamp) -> Option<Lsn> {
    let complete: Vec<&BackupEntry> = entries.iter().filter(|e| e.info.is_some()).collect();
    let summaries: Vec<BackupSummary> = complete.iter().map(|e| e.summary(now, STALE_AFTER)).collect();
    let why = reasons(&summaries, policy, now);
    complete
        .iter()
        .zip(&why)
        .filter(|(_, r)| r.iter().any(KeptBy::point_in_time))
        .filter_map(|(e, _)| e.info.as_ref().map(|i| i.start_lsn))
        .min()
}

/// [`plan`] from a catalog that holds the backups and at least the WAL below the horizon.
fn plan_from(cat: &Catalog, policy: &Policy, now: jiff::Timestamp) -> Result<Plan> {
    let entries = cat.backups();
    let complete: Vec<&BackupEntry> = entries.iter().filter(|e| e.info.is_some()).collect();
    let summaries: Vec<BackupSummary> = complete.iter().map(|e| e.summary(now, STALE_AFTER)).collect();
    let why = reasons(&summaries, policy, now);
    let mut plan = Plan::default();
    // The start..stop WAL of backups kept to their end only.
    let mut own_wal: Vec<(Lsn, Lsn)> = Vec::new();
    for ((entry, summary), kept_by) in complete.iter().zip(summaries).zip(why) {
        if kept_by.is_empty() {
            plan.delete_ids.push(entry.id.clone());
            plan.expired_backups.push(summary);
            continue;
        }
        let point_in_time = kept_by.iter().any(KeptBy::point_in_time);
        if point_in_time {
            plan.earliest_restorable_time.get_or_insert_with(|| summary.stop_time.clone().unwrap_or_default());
        } else if let Some(i) = &entry.info
            && !kept_by.iter().all(|k| matches!(k, KeptBy::Parent { .. }))
        {
            // (A parent only restores through its child, which has its own WAL.)
            // And the next segment: recovery reads the record after the
            // stop to see that it has reached its end.
            own_wal.push((i.start_lsn, Lsn(i.stop_lsn.0.saturating_add(cat.seg().bytes()))));
        }
        plan.kept_backups.push(summary.id.clone());
        plan.kept.push(KeptBackup { id: summary.id, stop_time: summary.stop_time, kept_by, point_in_time });
    }
    for e in entries.iter().filter(|e| e.status(now, STALE_AFTER) == BackupStatus::Incomplete) {
        plan.leftover_backups.push(e.id.to_string());
        plan.delete_ids.push(e.id.clone());
    }
    // No complete backup: the WAL may be all there is until one is taken.
    plan.wal_horizon = horizon(entries, policy, now);
    let Some(horizon) = plan.wal_horizon else { return Ok(plan) };
    let seg = cat.seg();
    let needed = |id: &WalObjectId| {
        let (start, end) = id.range(seg);
        own_wal.iter().any(|&(from, to)| start <= to && end > from)
    };
    let below = |id: &WalObjectId| id.segno.end_lsn(seg).is_some_and(|end| end <= horizon) && !needed(id);
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
#[cfg(test)]
fn select(backups: &[BackupSummary], policy: &Policy, now: jiff::Timestamp) -> Vec<bool> {
    reasons(backups, policy, now).iter().map(|r| !r.is_empty()).collect()
}

/// Why the policy keeps each of `backups` (complete, oldest first); empty:
/// not kept.
pub fn reasons(backups: &[BackupSummary], policy: &Policy, now: jiff::Timestamp) -> Vec<Vec<KeptBy>> {
    let n = backups.len();
    let mut why: Vec<Vec<KeptBy>> = vec![Vec::new(); n];
    if n == 0 {
        return why;
    }
    why[n - 1].push(KeptBy::Newest);
    if let Some(k) = policy.keep_backups {
        for r in why.iter_mut().skip(n.saturating_sub(k as usize)) {
            r.push(KeptBy::KeepBackups);
        }
    }
    let stop = |b: &BackupSummary| b.stop_time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    if let Some(within) = policy.keep_within {
        let cutoff = jiff::SignedDuration::try_from(within).ok().and_then(|d| now.checked_sub(d).ok());
        // A stop time that cannot be read counts as inside the window: keep rather than guess.
        let inside = |b: &BackupSummary| match (cutoff, stop(b)) {
            (Some(c), Some(t)) => t >= c,
            _ => true,
        };
        let mut newest_before = None;
        for (i, b) in backups.iter().enumerate() {
            if inside(b) {
                why[i].push(KeptBy::KeepWithin);
            } else {
                newest_before = Some(i);
            }
        }
        // Restoring to the window's start needs the last backup before it.
        if let Some(i) = newest_before {
            why[i].push(KeptBy::KeepWithin);
        }
    }
    // An unknown zone was refused when the policy was made; UTC otherwise.
    let tz = policy.zone().unwrap_or(jiff::tz::TimeZone::UTC);
    for (tier, count) in policy.tiers() {
        let Some(count) = count else { continue };
        let mut periods: Vec<String> = Vec::new();
        // Newest first: the first backup met in a period is its newest.
        for i in (0..n).rev() {
            let Some(t) = stop(&backups[i]) else { continue };
            let period = tier.period(t, &tz);
            if periods.contains(&period) {
                continue;
            }
            if periods.len() >= count as usize {
                break;
            }
            periods.push(period.clone());
            why[i].push(KeptBy::Tier { tier, period });
        }
    }
    for (i, b) in backups.iter().enumerate() {
        if b.keep_forever {
            why[i].push(KeptBy::KeepForever);
        }
    }
    // A kept incremental backup keeps its chain: parents are older, so one
    // pass from the newest reaches them all.
    for i in (0..n).rev() {
        let Some(parent) = backups[i].parent.as_deref() else { continue };
        if why[i].is_empty() {
            continue;
        }
        if let Some(j) = backups[..i].iter().rposition(|b| b.id == parent)
            && !why[j].iter().any(|k| matches!(k, KeptBy::Parent { .. }))
        {
            why[j].push(KeptBy::Parent { of: backups[i].id.clone() });
        }
    }
    why
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
    // Newest first: an interrupted run never leaves an incremental backup
    // whose parent is gone (parents are older).
    let mut ids: Vec<&backup::BackupId> = plan.delete_ids.iter().collect();
    ids.sort_by(|a, b| b.cmp(a));
    for id in ids {
        done.backup_objects += backup::delete_backup(storage, id).await?;
        done.backups += 1;
        tracing::info!(backup = %id, "deleted backup");
    }
    for chunk in plan.wal_keys.chunks(1000) {
        storage.delete_many(chunk).await?;
        done.wal_objects += chunk.len();
    }
    storage.delete_many(&plan.drill_keys).await?;
    let record = Recorded { policy: plan.policy.clone(), applied_at: jiff::Timestamp::now().to_string() };
    let body = serde_json::to_vec_pretty(&record).expect("a policy serialises");
    storage.put(RECORD_KEY, bytes::Bytes::from(body)).await?;
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
                keep_forever: false,
                parent: None,
            })
            .collect()
    }

    #[test]
    fn a_kept_incremental_keeps_its_whole_chain() {
        // b0 full, b1 <- b2 <- b3 incrementals on b0; b4 full.
        let mut b = backups(&[
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            "2026-01-03T00:00:00Z",
            "2026-01-04T00:00:00Z",
            "2026-01-05T00:00:00Z",
        ]);
        b[1].parent = Some("b0".into());
        b[2].parent = Some("b1".into());
        b[3].parent = Some("b2".into());
        let now = at("2026-01-06T00:00:00Z");
        let p = Policy { keep_backups: Some(2), ..Policy::default() };
        // b3 and b4 by the rule; b3's chain b2, b1, b0 as its parents.
        assert_eq!(select(&b, &p, now), [true, true, true, true, true]);
        let why = reasons(&b, &p, now);
        assert_eq!(why[0], [KeptBy::Parent { of: "b1".into() }]);
        assert!(!why[0][0].point_in_time());
        // Once the rule keeps only the full b4, the chain goes.
        let p = Policy { keep_backups: Some(1), ..Policy::default() };
        assert_eq!(select(&b, &p, now), [false, false, false, false, true]);
    }

    #[test]
    fn keep_backups_keeps_the_newest_n() {
        let b = backups(&["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"]);
        let now = at("2026-12-04T00:00:00Z");
        let p = |n| Policy { keep_backups: Some(n), ..Default::default() };
        assert_eq!(select(&b, &p(1), now), [false, false, true]);
        assert_eq!(select(&b, &p(2), now), [false, true, true]);
        assert_eq!(select(&b, &p(7), now), [true, true, true]);
        assert!(select(&[], &p(2), now).is_empty());
    }

    #[test]
    fn keep_within_keeps_the_window_and_the_backup_before_it() {
        let b = backups(&["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T12:00:00Z"]);
        let now = at("2026-12-04T00:00:00Z");
        let p = |h: u64| Policy { keep_within: Some(Duration::from_secs(h * 3600)), ..Default::default() };
        // Window from 12-03 00:00: b2 is inside, b1 is needed to reach the window's start.
        assert_eq!(select(&b, &p(24), now), [false, true, true]);
        // Window from 12-03 18:00: only b2, which is also the one before it.
        assert_eq!(select(&b, &p(6), now), [false, false, true]);
        assert_eq!(select(&b, &p(24 * 30), now), [true, true, true]);
        // Both: what either keeps.
        let both = Policy { keep_backups: Some(3), keep_within: Some(Duration::from_secs(3600)), ..Default::default() };
        assert_eq!(select(&b, &both, now), [true, true, true]);
        // An unreadable stop time is kept.
        let mut odd = b.clone();
        odd[0].stop_time = Some("yesterday".into());
        assert_eq!(select(&odd, &p(6), now), [true, false, true]);
    }

    /// Backups every day at `hour` UTC from `first` for `days` days.
    fn daily(first: &str, days: i64, hour: i8) -> Vec<BackupSummary> {
        let start: jiff::civil::Date = first.parse().unwrap();
        let stops: Vec<String> = (0..days)
            .map(|d| {
                let day = start.checked_add(jiff::Span::new().days(d)).unwrap();
                day.at(hour, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().to_string()
            })
            .collect();
        let refs: Vec<&str> = stops.iter().map(String::as_str).collect();
        backups(&refs)
    }

    fn kept_periods(b: &[BackupSummary], p: &Policy, now: jiff::Timestamp, tier: Tier) -> Vec<String> {
        let mut out: Vec<String> = reasons(b, p, now)
            .into_iter()
            .flatten()
            .filter_map(|k| match k {
                KeptBy::Tier { tier: t, period } if t == tier => Some(period),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn tiers_keep_the_newest_backup_of_each_of_their_last_periods() {
        // 400 days of daily backups across a leap day and two year ends.
        let b = daily("2023-11-20", 400, 23);
        let now = at("2024-12-24T00:00:00Z");
        let p = Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(12),
            keep_yearly: Some(3),
            ..Default::default()
        };
        let days = kept_periods(&b, &p, now, Tier::Daily);
        assert_eq!(days.first().map(String::as_str), Some("2024-12-17"));
        assert_eq!(days.len(), 7);
        // ISO weeks: 2024-12-23 (a Monday) opens W52.
        assert_eq!(kept_periods(&b, &p, now, Tier::Weekly), ["2024-W49", "2024-W50", "2024-W51", "2024-W52"]);
        let months = kept_periods(&b, &p, now, Tier::Monthly);
        assert_eq!(months.len(), 12);
        assert_eq!((months[0].as_str(), months[11].as_str()), ("2024-01", "2024-12"));
        assert_eq!(kept_periods(&b, &p, now, Tier::Yearly), ["2023", "2024"]);
        // Each period's backup is its newest: the month of February 2024
        // keeps the 29th.
        let why = reasons(&b, &p, now);
        let feb = b.iter().position(|x| x.stop_time.as_deref() == Some("2024-02-29T23:00:00Z")).unwrap();
        assert!(why[feb].contains(&KeptBy::Tier { tier: Tier::Monthly, period: "2024-02".into() }), "{:?}", why[feb]);
        // The year 2023 keeps its last backup, December 31st.
        let dec31 = b.iter().position(|x| x.stop_time.as_deref() == Some("2023-12-31T23:00:00Z")).unwrap();
        assert!(why[dec31].contains(&KeptBy::Tier { tier: Tier::Yearly, period: "2023".into() }));
        // The union: 7 days; weeks 52 and 51 end inside them, 50 and 49 add
        // two; December 2024 is kept already, January to November add 11;
        // 2024 is kept already, 2023 adds one. Tiers alone are not
        // point-in-time capable; the newest is.
        let kept = select(&b, &p, now).iter().filter(|k| **k).count();
        assert_eq!(kept, 7 + 2 + 11 + 1);
        assert!(why[b.len() - 1].iter().any(KeptBy::point_in_time));
        assert!(!why[dec31].iter().any(KeptBy::point_in_time));
    }

    #[test]
    fn tier_periods_follow_the_time_zone_and_its_daylight_saving() {
        // 23:30 UTC is already the next day in Berlin; the day the clocks
        // go back has 25 hours, so stops 24 hours apart share it.
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(Tier::Daily.period(at("2026-03-28T23:30:00Z"), &tz), "2026-03-29");
        assert_eq!(Tier::Daily.period(at("2026-03-28T23:30:00Z"), &jiff::tz::TimeZone::UTC), "2026-03-28");
        assert_eq!(Tier::Daily.period(at("2026-10-24T22:30:00Z"), &tz), "2026-10-25");
        assert_eq!(Tier::Daily.period(at("2026-10-25T22:30:00Z"), &tz), "2026-10-25");
        assert_eq!(Tier::Monthly.period(at("2026-12-31T23:30:00Z"), &tz), "2027-01");
        assert_eq!(Tier::Yearly.period(at("2026-12-31T23:30:00Z"), &tz), "2027");
        // ISO weeks cross year ends: 2026-12-31 is a Thursday of 2026-W53,
        // 2027-01-03 a Sunday of it, and 2027-01-04 opens 2027-W01.
        assert_eq!(Tier::Weekly.period(at("2027-01-03T12:00:00Z"), &tz), "2026-W53");
        assert_eq!(Tier::Weekly.period(at("2027-01-04T12:00:00Z"), &tz), "2027-W01");
        let b = backups(&["2026-10-24T22:30:00Z", "2026-10-25T22:30:00Z", "2026-10-26T12:00:00Z"]);
        let p = Policy { keep_daily: Some(3), time_zone: Some("Europe/Berlin".into()), ..Default::default() };
        // Two Berlin days only: 10-25 (the later of its two stops) and 10-26.
        assert_eq!(select(&b, &p, at("2026-10-27T00:00:00Z")), [false, true, true]);
        let utc = Policy { keep_daily: Some(3), ..Default::default() };
        assert_eq!(select(&b, &utc, at("2026-10-27T00:00:00Z")), [true, true, true]);
        assert!(Policy { time_zone: Some("Mars/Olympus".into()), ..Default::default() }.zone().is_err());
    }

    #[test]
    fn held_backups_are_kept_and_only_to_their_end() {
        let mut b = backups(&["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"]);
        b[0].keep_forever = true;
        let p = Policy { keep_backups: Some(1), ..Default::default() };
        let why = reasons(&b, &p, at("2026-12-04T00:00:00Z"));
        assert_eq!(why[0], [KeptBy::KeepForever]);
        assert!(why[1].is_empty());
        assert_eq!(why[2], [KeptBy::Newest, KeptBy::KeepBackups]);
    }
}
