//! Publishing this stream's lease (`streams/<slot>.json`, see
//! `pgpitr_repo::lease`) so that backups know a stream stores the WAL they
//! need instead of guessing. A side task of [`crate::Archiver::run`]: it
//! only reads the live counters, and a failed write is a warning, never a
//! reason to stop streaming.

use crate::StreamStats;
use pgpitr_repo::Repository;
use pgpitr_repo::backup::this_host;
use pgpitr_repo::lease::{self, LEASE_FORMAT_VERSION, StreamLease};
use pgpitr_types::{Lsn, TimelineId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the counters are looked at, so that the first lease (and one
/// after a timeline switch) appears promptly.
const CHECK: Duration = Duration::from_millis(200);
/// A lease write slower than this is abandoned until the next renewal.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running publisher.
pub(crate) struct LeaseTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<bool>,
    repo: Repository,
    slot: String,
}

impl LeaseTask {
    /// Publishes once the stream holds its slot (a timeline is known in
    /// `stats`), then renews every `every` and at every timeline switch.
    pub fn start(repo: &Repository, slot: &str, stats: Arc<StreamStats>, every: Duration) -> LeaseTask {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let storage = repo.storage().clone();
        let base = StreamLease {
            format_version: LEASE_FORMAT_VERSION,
            slot: slot.to_string(),
            system_identifier: repo.binding().system_identifier,
            timeline: TimelineId(1),
            durable_lsn: Lsn::INVALID,
            host: this_host(),
            pid: std::process::id(),
            started_at: jiff::Timestamp::now().to_string(),
            updated_at: String::new(),
            renew_interval_ms: every.as_millis().try_into().unwrap_or(u64::MAX),
            pgpitr_version: format!("pgpitr {}", env!("CARGO_PKG_VERSION")),
        };
        let task = tokio::spawn(async move {
            let mut written: Option<(Instant, u32)> = None;
            let mut ever = false;
            let mut failing = false;
            loop {
                let tli = stats.timeline.load(Ordering::Relaxed);
                let due = match written {
                    None => tli != 0,
                    Some((at, t)) => t != tli || at.elapsed() >= every,
                };
                if due && let Ok(timeline) = TimelineId::new(tli) {
                    let now = jiff::Timestamp::now().to_string();
                    let lease = StreamLease {
                        timeline,
                        durable_lsn: Lsn(stats.durable_lsn.load(Ordering::Relaxed)),
                        updated_at: now,
                        ..base.clone()
                    };
                    // Renewals keep their cadence even when a write fails.
                    written = Some((Instant::now(), tli));
                    ever = true;
                    let r = tokio::select! {
                        _ = token.cancelled() => break,
                        r = tokio::time::timeout(WRITE_TIMEOUT, lease::write(storage.as_ref(), &lease)) => r,
                    };
                    match r {
                        Ok(Ok(())) => {
                            if failing {
                                tracing::info!(key = %lease.key(), "stream lease written again");
                            }
                            failing = false;
                        }
                        Ok(Err(e)) => {
                            failing = true;
                            tracing::warn!(
                                key = %lease.key(),
                                "cannot write the stream lease (streaming goes on; backups fetch their own WAL \
                                 meanwhile): {e}"
                            );
                        }
                        Err(_) => {
                            failing = true;
                            tracing::warn!(key = %lease.key(), "writing the stream lease timed out (streaming goes on)");
                        }
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(CHECK) => {}
                }
            }
            ever
        });
        LeaseTask { stop, task, repo: repo.clone(), slot: slot.to_string() }
    }

    /// Stops renewing and deletes the lease, if this process wrote one (a
    /// stream that never held the slot leaves another's lease alone).
    pub async fn stop(self) {
        self.stop.cancel();
        let wrote = self.task.await.unwrap_or(true);
        if !wrote {
            return;
        }
        let storage = self.repo.storage().clone();
        // Shutdown waits for this: a lease left behind only goes stale.
        match tokio::time::timeout(DELETE_TIMEOUT, lease::delete(storage.as_ref(), &self.slot)).await {
            Ok(Ok(())) => tracing::debug!(slot = %self.slot, "stream lease deleted"),
            Ok(Err(e)) => tracing::warn!(slot = %self.slot, "cannot delete the stream lease (it goes stale): {e}"),
            Err(_) => tracing::warn!(slot = %self.slot, "deleting the stream lease timed out (it goes stale)"),
        }
    }
}
