//! Scheduled backups inside `pgpitr stream`: one at start when the
//! repository has no complete backup, then one every interval, measured
//! from the newest backup's start; with `full_every`, incremental ones
//! between full ones. They run on their own connections and
//! tasks, so WAL streaming never waits for them. With a retention policy,
//! each completed backup is followed by expiry, as `pgpitr expire` does.

use crate::{BackupError, BackupOptions, IncrementalMode, take_backup};
use pgpitr_pgwire::ConnConfig;
use pgpitr_repo::Repository;
use pgpitr_repo::backup::{self, BackupStatus};
use pgpitr_repo::retention::{self, Policy};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait before retrying a backup that failed for a passing reason.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// Outcomes of the scheduled backups, for metrics. Times are Unix µs, 0
/// for none.
#[derive(Debug, Default)]
pub struct ScheduleStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// When the last successful backup completed.
    pub last_success_us: AtomicI64,
    pub last_duration_ms: AtomicU64,
    /// Retention runs after a backup that failed.
    pub expire_failed: AtomicU64,
}

/// When the newest complete backup started, if there is one; only full
/// ones with `full`.
async fn newest_start(repo: &Repository, full: bool) -> Result<Option<jiff::Timestamp>, BackupError> {
    let now = jiff::Timestamp::now();
    let entries = backup::scan(repo.storage().as_ref()).await?;
    Ok(entries
        .iter()
        .rev()
        .filter(|e| e.status(now, backup::STALE_AFTER) == BackupStatus::Complete)
        .filter_map(|e| e.info.as_ref())
        .filter(|i| !full || i.incremental.is_none())
        .find_map(|i| i.start_time.parse().ok()))
}

/// How long ago `t` was (zero for the future).
fn age(t: jiff::Timestamp) -> Duration {
    Duration::try_from(jiff::Timestamp::now().duration_since(t)).unwrap_or_default()
}

/// Whether the next scheduled backup may be incremental: a full one is
/// taken when none is younger than `full_every`.
async fn incremental_due(repo: &Repository, full_every: Option<Duration>) -> IncrementalMode {
    let Some(full_every) = full_every else { return IncrementalMode::Off };
    match newest_start(repo, true).await {
        Ok(Some(t)) if age(t) < full_every => IncrementalMode::Prefer,
        Ok(_) => IncrementalMode::Off,
        Err(e) => {
            tracing::warn!("scheduled backups: cannot list backups, taking a full one: {e}");
            IncrementalMode::Off
        }
    }
}

/// When backups are taken, and what follows each.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub every: Duration,
    /// With this set, backups are incremental (where the server allows it)
    /// unless the newest full one is at least this old.
    pub full_every: Option<Duration>,
    /// Expiry after each backup.
    pub retention: Option<Policy>,
    /// Notified when a backup is needed at once (the stream found a gap
    /// in the WAL).
    pub now: Option<Arc<tokio::sync::Notify>>,
}

/// Takes backups on `schedule` until cancelled. Failures are logged and
/// retried: passing ones (network, storage, WAL not yet stored) after
/// `min(every, 5 min)`, others after a full interval.
pub async fn run_scheduled(
    repo: Repository,
    conn_cfg: ConnConfig,
    schedule: Schedule,
    opts: BackupOptions,
    stats: Arc<ScheduleStats>,
    cancel: CancellationToken,
) {
    let Schedule { every, full_every, retention, now } = schedule;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut force_full = false;
    loop {
        let due = match retry_at.take() {
            Some(at) => at,
            None => match newest_start(&repo, false).await {
                Ok(None) => tokio::time::Instant::now(),
                Ok(Some(t)) => tokio::time::Instant::now() + every.saturating_sub(age(t)),
                Err(e) => {
                    tracing::warn!("scheduled backups: cannot list backups, trying again in 1 min: {e}");
                    tokio::time::Instant::now() + Duration::from_secs(60)
                }
            },
        };
        let wanted = async {
            match &now {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
            _ = wanted => tracing::info!("a base backup is needed at once: the WAL has a gap"),
        }
        let incremental = if force_full { IncrementalMode::Off } else { incremental_due(&repo, full_every).await };
        force_full = false;
        let opts = BackupOptions { incremental, ..opts.clone() };
        tracing::info!(every = ?every, incremental = opts.incremental != IncrementalMode::Off, "scheduled base backup starting");
        let began = Instant::now();
        match take_backup(&repo, &conn_cfg, &opts, &cancel).await {
            Ok(info) => {
                tracing::info!(backup = %info.id, stop = %info.stop_lsn, "scheduled base backup complete");
                stats.succeeded.fetch_add(1, Ordering::Relaxed);
                stats.last_success_us.store(jiff::Timestamp::now().as_microsecond(), Ordering::Relaxed);
                stats.last_duration_ms.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Some(policy) = &retention
                    && !expire(&repo, policy).await
                {
                    stats.expire_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(BackupError::Cancelled) => return,
            Err(e @ BackupError::IncrementalUnusable(_)) => {
                tracing::warn!("scheduled incremental backup not kept ({e}): taking a full one now");
                force_full = true;
                retry_at = Some(tokio::time::Instant::now());
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let wait = if e.is_transient() { every.min(RETRY_CAP) } else { every };
                tracing::error!(retry_in = ?wait, "scheduled base backup failed: {e}");
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
}

/// Applies the retention policy after a backup. A failure is logged and
/// left for after the next backup: nothing depends on it meanwhile.
/// Returns whether it succeeded.
async fn expire(repo: &Repository, policy: &Policy) -> bool {
    let result = async {
        let plan = retention::plan(repo, policy, jiff::Timestamp::now()).await?;
        let done = retention::apply(repo, &plan).await?;
        Ok::<_, pgpitr_repo::RepoError>((plan, done))
    }
    .await;
    match result {
        Ok((plan, done)) => {
            if done.backups > 0 || done.wal_objects > 0 {
                tracing::info!(
                    backups = done.backups,
                    wal_objects = done.wal_objects,
                    earliest_restorable_time = plan.earliest_restorable_time.as_deref().unwrap_or(""),
                    "expired what the retention policy does not keep"
                );
            }
            true
        }
        Err(e) => {
            tracing::warn!("retention after the scheduled backup failed, trying after the next one: {e}");
            false
        }
    }
}
