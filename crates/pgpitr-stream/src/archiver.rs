//! The sessions of `pgpitr stream`: connect, plan where to resume, stream
//! through a [`WalWriter`] until shutdown, follow timeline switches, and
//! reconnect after transient errors.

use crate::lease::LeaseTask;
use crate::resume;
use pgpitr_archive::{Flow, StreamConfig, StreamError, StreamStats, WalWriter};
use pgpitr_pgwire::{ConnConfig, ReplicationConnection};
use pgpitr_repo::Repository;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a busy slot at start-up may take to become free.
const SLOT_BUSY_AT_START: Duration = Duration::from_secs(10);

/// How a session ended without an error.
enum SessionEnd {
    Shutdown,
}

pub struct Archiver {
    repo: Repository,
    conn_cfg: ConnConfig,
    cfg: StreamConfig,
    cancel: CancellationToken,
    stats: Arc<StreamStats>,
    /// The last session found the server without the WAL where the
    /// repository ends, on a slot it had just created.
    accept_gap: bool,
}

impl Archiver {
    pub fn new(
        repo: Repository,
        conn_cfg: ConnConfig,
        cfg: StreamConfig,
        cancel: CancellationToken,
        stats: Arc<StreamStats>,
    ) -> Self {
        Archiver { repo, conn_cfg, cfg, cancel, stats, accept_gap: false }
    }

    /// Streams until cancelled (then flushes and returns Ok) or until an
    /// error that reconnecting cannot fix. Meanwhile the stream's lease
    /// tells backups that it stores WAL; it is deleted when this returns.
    pub async fn run(&mut self) -> Result<(), StreamError> {
        let lease =
            LeaseTask::start(&self.repo, &self.cfg.slot, self.stats.clone(), pgpitr_repo::lease::RENEW_INTERVAL);
        let result = self.run_sessions().await;
        lease.stop().await;
        result
    }

    async fn run_sessions(&mut self) -> Result<(), StreamError> {
        let mut backoff = Duration::from_secs(1);
        let mut first = true;
        let started = Instant::now();
        loop {
            let began = Instant::now();
            let result = self.session().await;
            self.stats.streaming.store(false, Ordering::Relaxed);
            // At start-up a busy slot means another pgpitr is streaming, or
            // the walsender of a predecessor that was killed (a restarted
            // container) and has not noticed yet: wait that out briefly.
            // After a disconnect it is usually our own old walsender.
            if first
                && let Err(e) = &result
                && e.is_slot_active()
            {
                if started.elapsed() >= SLOT_BUSY_AT_START || self.cancel.is_cancelled() {
                    return result.map(|_| ());
                }
                tracing::info!("replication slot is active; waiting for its holder to go away: {e}");
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            first = false;
            match result {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Err(StreamError::Cancelled) => return Ok(()),
                Err(e @ StreamError::WalGone { .. }) => {
                    tracing::warn!("{e}; continuing from what the new slot keeps");
                    self.accept_gap = true;
                }
                Err(e) if e.is_transient() && !self.cancel.is_cancelled() => {
                    if began.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_secs(1);
                    }
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(retry_in = ?backoff, "streaming interrupted, reconnecting: {e}");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn session(&mut self) -> Result<SessionEnd, StreamError> {
        // Nothing is received before streaming starts, so a shutdown
        // meanwhile has nothing to store and ends the session at once.
        let accept_gap = std::mem::take(&mut self.accept_gap);
        let (repo, conn_cfg, cfg) = (&self.repo, &self.conn_cfg, &self.cfg);
        let setup = async {
            let mut conn = ReplicationConnection::connect(conn_cfg).await?;
            let (sys, identity) = conn.cluster_identity().await?;
            repo.check_cluster(&identity)?;
            // A listing is not a snapshot: an object it named may be gone by
            // the time it is read (a previous session's last deletes).
            let mut attempt = 0;
            let plan = loop {
                match resume::plan(repo, &mut conn, cfg, &sys, accept_gap).await {
                    Err(e) if e.is_not_found() && attempt < 3 => attempt += 1,
                    r => break r?,
                }
            };
            Ok::<_, StreamError>((conn, plan))
        };
        let (mut conn, plan) = tokio::select! {
            r = setup => r?,
            _ = self.cancel.cancelled() => return Ok(SessionEnd::Shutdown),
        };
        let (from, created_slot) = (plan.start, plan.created_slot);
        // Uploads are cancelled only when a shutdown runs out of time, not
        // by the signal itself: until then they keep trying.
        let mut st = WalWriter::new(&self.repo, &self.cfg, plan, self.stats.clone(), CancellationToken::new());
        let wal_gone = |e: &StreamError, st: &WalWriter| created_slot && st.received() == from && e.is_wal_removed();
        loop {
            let stream = match conn
                .start_physical(Some(&self.cfg.slot), st.received(), st.tli())
                .await
                .map_err(StreamError::from)
            {
                Err(e) if wal_gone(&e, &st) => return Err(StreamError::WalGone { tli: st.tli(), from }),
                r => r?,
            };
            self.stats.timeline.store(st.tli().0, Ordering::Relaxed); // holds the slot: the lease may say so
            self.stats.streaming.store(true, Ordering::Relaxed);
            tracing::info!(tli = %st.tli(), start = %st.received(), slot = %self.cfg.slot, "streaming");
            let flow = match st.stream(stream, &self.cancel).await {
                Err(e) if wal_gone(&e, &st) => return Err(StreamError::WalGone { tli: st.tli(), from }),
                r => r?,
            };
            match flow {
                Flow::Shutdown => return Ok(SessionEnd::Shutdown),
                Flow::NextTimeline { next_tli, next_start } => {
                    st.switch_timeline(&mut conn, next_tli, next_start).await?;
                }
            }
        }
    }
}
