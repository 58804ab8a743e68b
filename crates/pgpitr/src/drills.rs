//! `pgpitr stream --drill-every`: restore drills run from the daemon, one
//! at a time, each as a `pgpitr drill` child process at the lowest CPU
//! priority (its server inherits it), so a drill never competes with the
//! stream for more than idle time, and a crashed drill cannot take the
//! stream down.

use pgpitr_repo::Repository;
use pgpitr_repo::drills::DrillReport;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the metrics show of the drills.
#[derive(Debug, Default)]
pub struct DrillStats {
    /// When the newest passed drill finished (Unix µs; 0: none known).
    pub last_success_us: AtomicI64,
    /// The newest drill's RTO in ms (0: none known).
    pub last_rto_ms: AtomicU64,
    /// Drills run by this process that failed.
    pub failed: AtomicU64,
}

impl DrillStats {
    /// Takes in a drill newer than those recorded so far.
    fn record(&self, r: &DrillReport) {
        // A drill that stopped before its server promoted has no RTO: the
        // gauge is then absent rather than an older drill's.
        self.last_rto_ms.store(r.rto_seconds.map_or(0, |rto| (rto * 1e3) as u64), Ordering::Relaxed);
        if r.ok
            && let Ok(t) = r.finished_at.parse::<jiff::Timestamp>()
        {
            self.last_success_us.fetch_max(t.as_microsecond(), Ordering::Relaxed);
        }
    }
}

pub struct DrillSchedule {
    pub every: Duration,
    /// `drill` and its arguments.
    pub args: Vec<OsString>,
    /// The repository, passed as `PGPITR_REPO`.
    pub repo: String,
}

/// A drill that could not run (no backup yet, say) is tried again after
/// this long, or `every` if shorter.
const RETRY_REFUSED: Duration = Duration::from_secs(3600);

/// When the next drill is due: `every` after the newest stored one began.
fn next_due(newest: Option<&DrillReport>, every: Duration, now: jiff::Timestamp) -> Duration {
    let Some(started) = newest.and_then(|r| r.started_at.parse::<jiff::Timestamp>().ok()) else {
        return Duration::ZERO;
    };
    let due = started.as_microsecond().saturating_add(every.as_micros().min(i64::MAX as u128) as i64);
    Duration::from_micros(due.saturating_sub(now.as_microsecond()).max(0) as u64)
}

/// Runs drills every `schedule.every` until cancelled. The schedule lives in
/// the repository (the newest report's start), so restarts keep it.
pub async fn run_scheduled(
    repo: Repository,
    schedule: DrillSchedule,
    stats: Arc<DrillStats>,
    cancel: CancellationToken,
) {
    let mut wait = match repo.recent_drills(20).await {
        Ok(recent) => {
            // The metrics start from what the repository knows.
            for r in recent.iter().rev() {
                stats.record(r);
            }
            next_due(recent.first(), schedule.every, jiff::Timestamp::now())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the drill reports; drilling now");
            Duration::ZERO
        }
    };
    loop {
        if wait > Duration::ZERO {
            tracing::info!(in_secs = wait.as_secs(), "next restore drill");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match run_one(&schedule, &cancel).await {
            Some(report) => {
                stats.record(&report);
                if report.ok {
                    tracing::info!(drill = %report.id, rto_seconds = ?report.rto_seconds, "restore drill passed");
                } else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(drill = %report.id, error = ?report.error, failed = ?report.failed_checks(), "restore drill FAILED");
                }
                schedule.every
            }
            None if cancel.is_cancelled() => return,
            None => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                schedule.every.min(RETRY_REFUSED)
            }
        };
    }
}

/// One `nice -n 19 pgpitr drill ... --json`; its report, or `None` when it
/// wrote none (refused, killed).
async fn run_one(schedule: &DrillSchedule, cancel: &CancellationToken) -> Option<DrillReport> {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot find this program to run a drill");
            return None;
        }
    };
    let mut cmd = tokio::process::Command::new("nice");
    cmd.args(["-n", "19"]).arg(exe).args(&schedule.args).arg("--json").env("PGPITR_REPO", &schedule.repo);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    tracing::info!("restore drill starting");
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a restore drill");
            return None;
        }
    };
    let pid = child.id();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let out = tokio::select! {
        o = &mut output => o,
        _ = cancel.cancelled() => {
            // SIGTERM: the drill stops its server and removes its scratch.
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            match tokio::time::timeout(Duration::from_secs(20), &mut output).await {
                Ok(o) => o,
                Err(_) => {
                    tracing::warn!("the restore drill did not stop within 20 s");
                    return None;
                }
            }
        }
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "the restore drill could not be waited for");
            return None;
        }
    };
    match serde_json::from_slice::<DrillReport>(&out.stdout) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::error!(status = %out.status, "the restore drill did not run (its error is logged above)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_drill_is_due_every_after_the_newest_began() {
        let now: jiff::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(next_due(None, day, now), Duration::ZERO);
        let r = |started: &str| DrillReport { started_at: started.into(), ..Default::default() };
        assert_eq!(next_due(Some(&r("2026-12-06T06:00:00Z")), day, now), Duration::from_secs(18 * 3600));
        assert_eq!(next_due(Some(&r("2026-12-01T00:00:00Z")), day, now), Duration::ZERO);
        assert_eq!(next_due(Some(&r("garbage")), day, now), Duration::ZERO);
    }

    #[test]
    fn stats_keep_the_newest_success_and_the_last_rto() {
        let s = DrillStats::default();
        let report = |ok: bool, finished: &str, rto: f64| DrillReport {
            ok,
            finished_at: finished.into(),
            rto_seconds: Some(rto),
            ..Default::default()
        };
        s.record(&report(true, "2026-12-06T10:00:00Z", 12.5));
        s.record(&report(false, "2026-12-06T11:00:00Z", 30.0));
        assert_eq!(s.last_rto_ms.load(Ordering::Relaxed), 30_000);
        let t: jiff::Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        assert_eq!(s.last_success_us.load(Ordering::Relaxed), t.as_microsecond());
    }
}
