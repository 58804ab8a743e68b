//! Making the WAL a backup needs (start..stop on its timeline) durable: a
//! running `pgpitr stream` stores it anyway; otherwise the backup fetches it
//! over its own connection, whose temporary slot has kept it on the server
//! since before the backup started.

use crate::{BackupError, BackupOptions, WalMode};
use pgpitr_pgwire::ReplicationConnection;
use pgpitr_repo::backup::WalSource;
use pgpitr_repo::wal::WalObjectId;
use pgpitr_repo::{Repository, wal};
use pgpitr_storage::PutOutcome;
use pgpitr_types::{Lsn, TimelineId};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(500);

/// The second connection, holding a temporary slot that keeps WAL from
/// before the backup's start on the server for as long as it lives.
pub(crate) struct WalFetcher {
    pub conn: ReplicationConnection,
    pub slot: String,
}

impl WalFetcher {
    pub async fn open(cfg: &pgpitr_pgwire::ConnConfig) -> Result<WalFetcher, BackupError> {
        let mut conn = ReplicationConnection::connect(cfg).await?;
        let slot = format!("pgpitr_backup_{}_{:08x}", std::process::id(), fastrand::u32(..));
        let kept_from = conn.create_temporary_physical_slot(&slot).await?;
        tracing::debug!(%slot, %kept_from, "temporary slot keeps WAL for the backup");
        Ok(WalFetcher { conn, slot })
    }
}

/// How long a stream that was seen storing WAL may pause before the backup
/// fetches the rest itself.
const STREAM_STALL: Duration = Duration::from_secs(30);

/// What the repository holds of `start..stop` on `tli`.
enum Coverage {
    Complete,
    /// Not yet: the stored run that contains `start` ends at `end` (`None`
    /// when `start` is not stored). Objects beyond a hole do not count: a
    /// running stream uploads segments in parallel, so holes come and go,
    /// and only this end moving shows that a stream is filling the range.
    Pending {
        end: Option<Lsn>,
    },
}

/// The stored ranges of `tli` near `start..stop`: only the keys of the
/// log IDs (4 GiB of WAL each) spanning it are listed, so polling stays
/// cheap however much WAL the repository holds.
async fn stored_ranges(
    repo: &Repository,
    tli: TimelineId,
    start: Lsn,
    stop: Lsn,
) -> Result<Vec<(Lsn, Lsn)>, BackupError> {
    let seg = repo.seg_size();
    let per = seg.segments_per_xlogid();
    let (first, last) = (start.segment_number(seg).0 / per, stop.segment_number(seg).0 / per);
    let mut found = Vec::new();
    for log in first..=last {
        let prefix = format!("{}{:08X}/{:08X}{:08X}", wal::PREFIX, tli.0, tli.0, log);
        for m in repo.storage().list(&prefix).await? {
            if let Some(id) = WalObjectId::parse(&m.key, seg).filter(|id| id.tli == tli) {
                found.push(id.range(seg));
            }
        }
    }
    found.sort();
    let mut ranges: Vec<(Lsn, Lsn)> = Vec::new();
    for (s, e) in found {
        match ranges.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => ranges.push((s, e)),
        }
    }
    Ok(ranges)
}

async fn coverage(repo: &Repository, tli: TimelineId, start: Lsn, stop: Lsn) -> Result<Coverage, BackupError> {
    let ranges = stored_ranges(repo, tli, start, stop).await?;
    if ranges.iter().any(|&(s, e)| s <= start && stop <= e) {
        return Ok(Coverage::Complete);
    }
    let end = ranges.iter().find(|&&(s, e)| s <= start && start < e).map(|r| r.1);
    Ok(Coverage::Pending { end })
}

/// The WAL a backup needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalNeed {
    pub tli: TimelineId,
    pub start: Lsn,
    pub stop: Lsn,
    /// When the server began the backup.
    pub started: Instant,
    /// The stored WAL end around the backup's start, seen before it began
    /// ([`stored_end`]): a stream shows itself by moving it.
    pub baseline: Option<Lsn>,
}

/// The end of the newest stored range of `tli` in the log ID of `near`.
pub(crate) async fn stored_end(repo: &Repository, tli: TimelineId, near: Lsn) -> Result<Option<Lsn>, BackupError> {
    Ok(stored_ranges(repo, tli, near, near).await?.last().map(|r| r.1))
}

/// Returns once WAL `start..stop` of `tli` is durable in the repository,
/// within `opts.wal_timeout`. `started` is when the server began the backup:
/// a running stream stores the checkpoint WAL at `start` within its flush
/// interval, so the grace for the stored WAL to move counts from then.
pub(crate) async fn ensure_wal(
    repo: &Repository,
    need: WalNeed,
    mut fetcher: Option<&mut WalFetcher>,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<WalSource, BackupError> {
    let WalNeed { tli, start, stop, started, baseline } = need;
    let began = Instant::now();
    let deadline = began + opts.wal_timeout;
    let timeout =
        |detail: String| BackupError::WalTimeout { tli, start, stop, waited: began.elapsed(), detail: Some(detail) };
    let mut last_end = baseline;
    let mut moved_at = started;
    let mut seen_moving = false;
    loop {
        let cov = coverage(repo, tli, start, stop).await?;
        let end = match cov {
            Coverage::Complete => {
                tracing::info!(%tli, %start, %stop, "the WAL the backup needs is durable in the repository");
                return Ok(WalSource::Repository);
            }
            Coverage::Pending { end } => end,
        };
        // Only forward movement shows a stream: the baseline measures the
        // newest stored range, which need not be the run holding `start`.
        let forward = match (last_end, end) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b > a,
        };
        if forward {
            moved_at = Instant::now();
            seen_moving = true;
        }
        last_end = end;
        // Once a stream has shown itself, a slow upload (a loaded disk, an S3
        // hiccup) is no reason to stream the same WAL a second time.
        let grace = if seen_moving { opts.stream_grace.max(STREAM_STALL) } else { opts.stream_grace };
        let stalled = moved_at.elapsed() >= grace;
        if opts.wal_mode == WalMode::Auto
            && stalled
            && let Some(f) = fetcher.take()
        {
            tracing::info!(%tli, %start, %stop, "fetching the backup's WAL over its temporary slot: no stream is storing it");
            let left = deadline.saturating_duration_since(Instant::now());
            store_history(repo, &mut f.conn, tli).await?;
            let fetch = pgpitr_stream::archive_range(repo, &mut f.conn, Some(&f.slot), tli, start, stop, cancel);
            return match tokio::time::timeout(left, fetch).await {
                Ok(Ok(())) => Ok(WalSource::Fetched),
                Ok(Err(pgpitr_stream::StreamError::Cancelled)) => Err(BackupError::Cancelled),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(timeout("fetching it over the replication connection took too long".into())),
            };
        }
        if Instant::now() >= deadline {
            let seen = match last_end {
                Some(e) => format!("the repository holds it up to {e}"),
                None => "the repository holds none of it".to_string(),
            };
            let hint = match opts.wal_mode {
                WalMode::Stream => "; is the stream connected?",
                WalMode::Auto => "",
            };
            return Err(timeout(format!("{seen}{hint}")));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(BackupError::Cancelled),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// A restore on timeline > 1 needs its history file; a running stream
/// stores it, a backup fetching WAL alone must too.
async fn store_history(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    tli: TimelineId,
) -> Result<(), BackupError> {
    if tli.0 <= 1 {
        return Ok(());
    }
    let key = wal::history_key(tli);
    match repo.storage().head(&key).await {
        Ok(_) => return Ok(()),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let (_, content) = conn.timeline_history(tli).await?;
    if repo.storage().put_if_absent(&key, content).await? == PutOutcome::AlreadyExists {
        tracing::debug!(%key, "history file stored meanwhile by another writer");
    }
    Ok(())
}
