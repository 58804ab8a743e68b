//! Making the WAL a backup needs (start..stop on its timeline) durable: a
//! running `pgpitr stream` stores it anyway, and says so with its lease
//! (`streams/<slot>.json`); otherwise the backup fetches it at once over its
//! own connection, whose temporary slot has kept it on the server since
//! before the backup started.

use crate::{BackupError, BackupOptions, WalMode};
use pgpitr_pgwire::ReplicationConnection;
use pgpitr_repo::backup::WalSource;
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::lease::{self, StreamLease};
use pgpitr_repo::{Repository, wal};
use pgpitr_storage::PutOutcome;
use pgpitr_types::{Lsn, TimelineId};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(250);

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

/// How long a live stream may store nothing of the backup's WAL before the
/// backup fetches the rest itself (a slow upload is no reason to stream the
/// same WAL twice; a stream reconnecting for this long is).
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
    let tl = Catalog::wal_range(repo, tli, start, stop).await?;
    Ok(tl.ranges)
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
    /// ([`stored_end`]): a stream shows it is alive by moving it.
    pub baseline: Option<Lsn>,
    /// The repository's cluster, which a lease must name.
    pub system_identifier: u64,
}

/// The live stream lease of `tli` with the furthest durable position.
/// Leases are hints: one that cannot be read counts as absent (the backup
/// then fetches its WAL itself, which is always safe).
async fn live_stream(repo: &Repository, sysid: u64, tli: TimelineId) -> Option<StreamLease> {
    let leases = match lease::read_all(repo.storage().as_ref()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the stream leases; taking it that no stream runs: {e}");
            return None;
        }
    };
    let now = jiff::Timestamp::now();
    leases
        .into_iter()
        .filter(|l| l.is_live(now) && l.timeline == tli && l.system_identifier == sysid)
        .max_by_key(|l| l.durable_lsn)
}

/// Why the backup should fetch its WAL itself now, or `None` to wait for
/// the stream. `end` is where the stored run holding `start` ends (`None`:
/// `start` is not stored), read after `stream`; `still` is how long that end
/// has not moved.
fn fetch_reason(
    stream: Option<&StreamLease>,
    tli: TimelineId,
    start: Lsn,
    end: Option<Lsn>,
    still: Duration,
) -> Option<String> {
    let Some(s) = stream else {
        return Some(format!("no pgpitr stream runs on timeline {tli} (no live lease under {})", lease::PREFIX));
    };
    // WAL below a lease's durable position was stored before the lease was
    // written, so before the listing: beyond the stored run means a hole
    // the stream resumed after and will never fill.
    let have = end.unwrap_or(start);
    if s.durable_lsn > have {
        return Some(format!(
            "stream {} is at {} but the repository lacks WAL from {have}: a hole it will not fill",
            s.slot, s.durable_lsn
        ));
    }
    (still >= STREAM_STALL).then(|| format!("stream {} stored none of it for {} s", s.slot, still.as_secs()))
}

/// The end of the newest stored range of `tli` in the log ID of `near`.
pub(crate) async fn stored_end(repo: &Repository, tli: TimelineId, near: Lsn) -> Result<Option<Lsn>, BackupError> {
    Ok(stored_ranges(repo, tli, near, near).await?.last().map(|r| r.1))
}

/// Returns once WAL `start..stop` of `tli` is durable in the repository,
/// within `opts.wal_timeout`. With [`WalMode::Auto`] and no live stream
/// lease for `tli`, the WAL is fetched at once over `fetcher`; with one, the
/// backup waits for the stream, and fetches only when the stream cannot
/// fill a hole, stores nothing for [`STREAM_STALL`] (counted from `started`,
/// when the server began the backup) or its lease goes stale.
pub(crate) async fn ensure_wal(
    repo: &Repository,
    need: WalNeed,
    mut fetcher: Option<&mut WalFetcher>,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<WalSource, BackupError> {
    let WalNeed { tli, start, stop, started, baseline, system_identifier } = need;
    let began = Instant::now();
    let deadline = began + opts.wal_timeout;
    let timeout =
        |detail: String| BackupError::WalTimeout { tli, start, stop, waited: began.elapsed(), detail: Some(detail) };
    let mut last_end = baseline;
    let mut moved_at = started;
    let mut waiting_for: Option<String> = None;
    loop {
        // The lease before the listing (see `fetch_reason`).
        let may_fetch = opts.wal_mode == WalMode::Auto && fetcher.is_some();
        let stream = if may_fetch { live_stream(repo, system_identifier, tli).await } else { None };
        let cov = coverage(repo, tli, start, stop).await?;
        let end = match cov {
            Coverage::Complete => {
                tracing::info!(%tli, %start, %stop, "the WAL the backup needs is durable in the repository");
                return Ok(WalSource::Repository);
            }
            Coverage::Pending { end } => end,
        };
        // Only forward movement shows a stream at work: the baseline measures
        // the newest stored range, which need not be the run holding `start`.
        let forward = match (last_end, end) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b > a,
        };
        if forward {
            moved_at = Instant::now();
        }
        last_end = end;
        if may_fetch
            && let Some(reason) = fetch_reason(stream.as_ref(), tli, start, end, moved_at.elapsed())
            && let Some(f) = fetcher.take()
        {
            tracing::info!(%tli, %start, %stop, "fetching the backup's WAL over its temporary slot: {reason}");
            let left = deadline.saturating_duration_since(Instant::now());
            store_history(repo, &mut f.conn, tli).await?;
            let fetch = pgpitr_archive::archive_range(repo, &mut f.conn, Some(&f.slot), tli, start, stop, cancel);
            return match tokio::time::timeout(left, fetch).await {
                Ok(Ok(())) => Ok(WalSource::Fetched),
                Ok(Err(pgpitr_archive::StreamError::Cancelled)) => Err(BackupError::Cancelled),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(timeout("fetching it over the replication connection took too long".into())),
            };
        }
        if let Some(s) = &stream
            && waiting_for.as_deref() != Some(s.slot.as_str())
        {
            tracing::info!(%tli, %start, %stop, slot = %s.slot, host = %s.host, "waiting for the running stream to store the backup's WAL");
            waiting_for = Some(s.slot.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(durable: u64) -> StreamLease {
        let now = jiff::Timestamp::now().to_string();
        StreamLease {
            format_version: 1,
            slot: "pgpitr".into(),
            system_identifier: 1,
            timeline: TimelineId(1),
            durable_lsn: Lsn(durable),
            host: "h".into(),
            pid: 1,
            started_at: now.clone(),
            updated_at: now,
            renew_interval_ms: 10_000,
            pgpitr_version: "pgpitr test".into(),
        }
    }

    #[test]
    fn fetches_at_once_without_a_stream_and_waits_for_one() {
        let (tli, start) = (TimelineId(1), Lsn(0x300_0028));
        let now = Duration::ZERO;
        // No lease: no grace, whatever the repository holds.
        assert!(fetch_reason(None, tli, start, None, now).unwrap().contains("no pgpitr stream runs on timeline 1"));
        assert!(fetch_reason(None, tli, start, Some(Lsn(0x300_1000)), now).is_some());
        // A live stream not yet at the backup's start, or storing it: wait.
        assert_eq!(fetch_reason(Some(&lease(0x200_0000)), tli, start, None, now), None);
        assert_eq!(fetch_reason(Some(&lease(0x300_0028)), tli, start, None, now), None);
        assert_eq!(fetch_reason(Some(&lease(0x300_1000)), tli, start, Some(Lsn(0x300_1000)), now), None);
        assert_eq!(fetch_reason(Some(&lease(0x300_1000)), tli, start, Some(Lsn(0x300_2000)), now), None);
        // ...until it has stored nothing for the stall limit.
        let r = fetch_reason(Some(&lease(0x300_1000)), tli, start, Some(Lsn(0x300_1000)), STREAM_STALL).unwrap();
        assert!(r.contains("stored none of it for 30 s"), "{r}");
        // A stream past a hole (it resumed after the backup's start) never fills it.
        let r = fetch_reason(Some(&lease(0x400_0000)), tli, start, None, now).unwrap();
        assert!(r.contains("hole"), "{r}");
        assert!(fetch_reason(Some(&lease(0x400_0000)), tli, start, Some(Lsn(0x300_1000)), now).is_some());
    }
}
