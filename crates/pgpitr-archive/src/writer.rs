//! The WAL writer's loop: one task owns all state and `select!`s over the
//! replication stream, finished uploads, the flush deadline, the status
//! timer and shutdown.
//!
//! ```text
//!  Postgres ──XLogData──▶ OpenSegment ──piece / segment──▶ upload tasks ──▶ Storage
//!     ▲                      │ scanner (commit times)          │
//!     └──── status (flush = durable) ◀── DurableTracker ◀──────┘
//! ```

use crate::compact::Merged;
use crate::durable::DurableTracker;
use crate::freshness::Freshness;
use crate::index::CommitIndex;
use crate::journal::{AheadJournal, AppendJob, JournalSlot};
use crate::schedule::Mode;
use crate::segment::OpenSegment;
use crate::source::WalSource;
use crate::start::{self, ResumePlan};
use crate::tail::Tail;
use crate::upload::{Done, Uploads};
use crate::{StreamConfig, StreamError, StreamStats};
use bytes::Bytes;
use pgpitr_pgwire::{ReplicationConnection, StreamMessage};
use pgpitr_repo::Repository;
use pgpitr_repo::wal::{WalObjectId, WalObjectKind};
use pgpitr_types::{Lsn, TimelineHistory, TimelineId, WalSegSize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How [`WalWriter::stream`] ended without an error.
pub enum Flow {
    Shutdown,
    /// The stream ended at a timeline switch; the connection is idle again.
    NextTimeline {
        next_tli: TimelineId,
        next_start: Lsn,
    },
}

/// Everything one streaming session owns: the open segment, uploads in
/// flight, the durable position.
pub struct WalWriter {
    repo: Repository,
    seg: WalSegSize,
    cfg: StreamConfig,
    stats: Arc<StreamStats>,
    tli: TimelineId,
    /// Next LSN expected from the server.
    received: Lsn,
    cur: OpenSegment,
    index: CommitIndex,
    tracker: DurableTracker,
    /// Until something is stored, a new repository has nothing to report.
    report_floor: Lsn,
    /// For a bounded range: stop once WAL up to here is durable.
    stop_at: Option<Lsn>,
    uploads: Uploads,
    pieces: Tail,
    journal: JournalSlot,
    /// The append of a just-completed segment's last bytes to its journal,
    /// run once the message that completed it is taken in.
    last_append: Option<AppendJob>,
    fresh: Freshness,
    /// Storing what is pending before a shutdown or timeline switch: no
    /// new merges (they never make WAL durable, so none is waited for).
    draining: bool,
}

/// How long a shutdown waits for the last deletions of replaced pieces.
const CLEANUP_AT_EXIT: Duration = Duration::from_secs(2);

impl WalWriter {
    pub fn new(
        repo: &Repository,
        cfg: &StreamConfig,
        plan: ResumePlan,
        stats: Arc<StreamStats>,
        upload_cancel: CancellationToken,
    ) -> Self {
        let seg = repo.seg_size();
        let index = CommitIndex::resume(plan.segment.start_lsn(), seg, repo.major().wal_format(), &plan.scan_prefix);
        stats.durable_lsn.store(plan.start.0, Ordering::Relaxed);
        stats.unstored_since_us.store(0, Ordering::Relaxed);
        WalWriter {
            repo: repo.clone(),
            seg,
            cfg: cfg.clone(),
            stats,
            tli: plan.tli,
            received: plan.start,
            cur: plan.segment,
            index,
            tracker: DurableTracker::new(plan.start),
            report_floor: if plan.start_is_stored { Lsn::INVALID } else { plan.start },
            stop_at: None,
            uploads: Uploads::new(repo.storage().clone(), seg, upload_cancel),
            pieces: Tail::new(),
            journal: JournalSlot::default(),
            last_append: None,
            fresh: Freshness::default(),
            draining: false,
        }
    }

    /// Next LSN expected from the server.
    pub fn received(&self) -> Lsn {
        self.received
    }

    pub fn tli(&self) -> TimelineId {
        self.tli
    }

    fn durable(&self) -> Lsn {
        self.tracker.durable()
    }

    /// The position to report as written and flushed: the durable one, or
    /// "invalid" while nothing at all is stored yet.
    fn reportable(&self) -> Lsn {
        let d = self.tracker.durable();
        if d > self.report_floor { d } else { Lsn::INVALID }
    }

    /// Backpressure: stop reading while too many segments are in flight, so
    /// memory stays bounded whatever the WAL rate or storage latency.
    fn can_accept(&self) -> bool {
        self.uploads.segments < self.cfg.max_segments_in_flight && !self.received_enough()
    }

    fn received_enough(&self) -> bool {
        self.stop_at.is_some_and(|s| self.received >= s)
    }

    /// When the pending bytes must be handed to storage to be durable within
    /// the flush interval of their arrival.
    fn flush_deadline(&self) -> Option<Instant> {
        let since = self.cur.pending_since();
        let mode = if self.uses_journal() {
            Mode::Journal
        } else if self.stores_at_once() {
            Mode::AtOnce
        } else {
            Mode::Interval(self.cfg.flush_interval)
        };
        self.pieces.due(mode, since, self.journal.busy)
    }

    /// Streams until shutdown, the end of the timeline, or (with a range)
    /// until WAL up to its end is durable.
    pub async fn stream<S: WalSource>(
        &mut self,
        mut stream: S,
        cancel: &CancellationToken,
    ) -> Result<Flow, StreamError> {
        let mut status_tick = tokio::time::interval(self.cfg.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = Lsn::INVALID;
        // The server sends keepalives at least every wal_sender_timeout / 2;
        // silence much longer than that is a dead connection TCP did not notice.
        let silence_limit = (self.cfg.status_interval * 3).max(Duration::from_secs(90));
        let mut last_heard = Instant::now();
        // Timers are re-armed only when their instant changes: registering
        // new ones for every message was a measurable share of the CPU.
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        let flush_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush_timer);
        let mut armed: Option<Instant> = None;
        // The token's future locks two mutexes at every poll, and the loop
        // polls it at every wait for a message: a task waits on the token
        // instead and fires a oneshot, whose poll is an atomic load.
        let (cancel_tx, mut cancelled) = tokio::sync::oneshot::channel::<()>();
        let token = cancel.clone();
        let _watcher = AbortOnDrop(tokio::spawn(async move {
            token.cancelled().await;
            let _ = cancel_tx.send(());
        }));
        loop {
            // A new upload task runs only when this one yields, and reading
            // a busy socket yields only when tokio's budget runs out (every
            // ~2 segments on a bulk load): until then the upload has not
            // even started encoding, and its segment buffer is not free for
            // reuse. So yield once after handing work to an upload.
            if self.uploads.take_spawned() {
                tokio::task::yield_now().await;
            }
            // In the modes that store at once, what is pending is submitted
            // when the socket has nothing more to read, as pg_receivewal
            // syncs: one append then carries every message that arrived
            // while the last one was syncing, not just the first of them.
            // A piece still gathering commits is due on the timer instead.
            let due = self.flush_deadline();
            let (idle_due, deadline) = match due {
                _ if !self.stores_at_once() => (false, due),
                Some(d) if d > Instant::now() => (false, due),
                Some(_) => (true, None),
                None => (false, None),
            };
            if let Some(d) = deadline
                && armed != deadline
            {
                flush_timer.as_mut().reset(d);
                armed = deadline;
            }
            tokio::select! {
                biased;
                Some(done) = self.uploads.next(), if !self.uploads.is_empty() => {
                    let moved = self.finish_upload(done?)?;
                    if !self.stores_at_once() {
                        self.submit_if_due(Instant::now());
                    }
                    if moved {
                        report_advance(&mut stream, self.reportable(), &mut reported).await?;
                    }
                    if self.stop_at.is_some_and(|s| self.durable() >= s) {
                        self.drain(Some(&mut stream)).await?;
                        stream.end().await.ok();
                        return Ok(Flow::Shutdown);
                    }
                }
                _ = &mut flush_timer, if deadline.is_some() => {
                    armed = None;
                    self.submit_piece();
                }
                done = self.pieces.merge_done(), if self.pieces.merging() => self.finish_merge(done),
                msg = stream.recv(), if self.can_accept() => {
                    let now = Instant::now();
                    last_heard = now;
                    match msg? {
                        StreamMessage::XLogData { start, data, .. } => {
                            self.on_wal(start, data, now)?;
                            if !self.stores_at_once() {
                                self.submit_if_due(now);
                            }
                            if let Some(job) = self.last_append.take()
                                && self.append_now(job).await?
                            {
                                report_advance(&mut stream, self.reportable(), &mut reported).await?;
                            }
                        }
                        StreamMessage::Keepalive { reply_requested, end_of_wal, .. } => {
                            self.stats.server_lsn.store(end_of_wal.0, Ordering::Relaxed);
                            if reply_requested {
                                reported = self.reportable();
                                stream.report(reported, reported, reported).await?;
                            }
                        }
                        StreamMessage::EndOfTimeline { next_tli, next_tli_start } => {
                            return Ok(Flow::NextTimeline { next_tli, next_start: next_tli_start });
                        }
                    }
                }
                // Only reached when no message is ready (or reading is
                // paused): `biased` polls the branches in order.
                _ = std::future::ready(()), if idle_due => {
                    match self.append_inline().await? {
                        Some(true) => report_advance(&mut stream, self.reportable(), &mut reported).await?,
                        Some(false) => {}
                        None => self.submit_piece(),
                    }
                    self.create_next_journal_ahead();
                }
                // After the message branch: tokio's cooperative budget
                // still yields to it under constant load.
                _ = &mut cancelled => {
                    self.drain(Some(&mut stream)).await?;
                    stream.end().await.ok();
                    return Ok(Flow::Shutdown);
                }
                // After the message branch, so data already buffered wins.
                _ = &mut silence, if self.can_accept() => {
                    if last_heard.elapsed() < silence_limit {
                        silence.as_mut().reset(last_heard + silence_limit);
                        continue;
                    }
                    return Err(StreamError::Protocol(format!(
                        "nothing heard from the server for {} s; assuming the connection is dead",
                        silence_limit.as_secs()
                    )));
                }
                _ = status_tick.tick() => {
                    // Also keeps wal_sender_timeout from firing while storage is slow.
                    reported = self.reportable();
                    stream.report(reported, reported, reported).await?;
                }
            }
        }
    }

    fn on_wal(&mut self, start: Lsn, mut data: Bytes, now: Instant) -> Result<(), StreamError> {
        if start != self.received {
            return Err(StreamError::Protocol(format!(
                "server sent WAL at {start}, expected {} on timeline {}",
                self.received, self.tli
            )));
        }
        let received_us = jiff::Timestamp::now().as_microsecond();
        while !data.is_empty() {
            let take = data.len().min(self.cur.room());
            let chunk = data.split_to(take);
            self.cur.append(&chunk, now);
            self.scan(&chunk, received_us);
            self.received = Lsn(self.received.0 + take as u64);
            if self.cur.is_full() {
                self.submit_segment();
            }
        }
        self.fresh.received(self.received, received_us);
        self.stats.unstored_since_us.store(self.fresh.unstored_since(), Ordering::Relaxed);
        debug_assert_eq!(self.cur.end_lsn(), self.received);
        self.stats.received_lsn.store(self.received.0, Ordering::Relaxed);
        self.stats.received_bytes.fetch_add(start.distance_to(self.received), Ordering::Relaxed);
        Ok(())
    }

    /// Indexes commit records into the pending summary (see [`CommitIndex`]).
    fn scan(&mut self, chunk: &[u8], received_us: i64) {
        let seg_start = self.cur.start_lsn();
        let fresh = &mut self.fresh;
        let ok = self
            .index
            .scan(chunk, seg_start, self.cur.pending_summary_mut(), received_us, |end, us| fresh.commit(end, us));
        if !ok {
            self.stats.scan_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn submit_segment(&mut self) {
        let pool = &self.uploads.bufs.encode;
        let next = OpenSegment::new_in(pool, self.tli, self.cur.segno.next(), self.seg, &[], true);
        self.index.next_segment(next.start_lsn());
        // The segment's last commits go to its journal at once: waiting for
        // the complete segment to be stored would hold up every commit until
        // then.
        if self.uses_journal()
            && self.last_append.is_none()
            && self.journal.open.as_ref().is_some_and(|j| j.id.tli == self.cur.tli && j.id.segno == self.cur.segno)
        {
            self.last_append = self.prepare_append();
        }
        let full = std::mem::replace(&mut self.cur, next);
        self.journal.open = None;
        // The complete segment replaces whatever a merge would have made.
        let cut_short = self.pieces.segment_completed();
        let (up, superseded) = full.into_complete(cut_short);
        self.uploads.segments += 1;
        self.uploads.store(up, superseded);
    }

    /// Synchronous mode and a bounded range store what arrives as soon as
    /// the socket is drained, not on a timer.
    fn stores_at_once(&self) -> bool {
        self.cfg.synchronous || self.received_enough()
    }

    /// Submits now when the deadline has passed: a timer set for the past
    /// fires only at the next millisecond tick, and in synchronous mode every
    /// commit waits for that.
    fn submit_if_due(&mut self, now: Instant) {
        if self.flush_deadline().is_some_and(|d| d <= now) {
            self.submit_piece();
        }
    }

    fn uses_journal(&self) -> bool {
        self.cfg.synchronous && self.journal.supported != Some(false)
    }

    fn submit_piece(&mut self) {
        if self.uses_journal() {
            return self.submit_append();
        }
        if let Some(up) = self.cur.cut_piece() {
            self.stats.open_segment_objects.store(self.cur.cover_len() as u64, Ordering::Relaxed);
            self.pieces.in_flight += 1;
            self.uploads.store(up, Vec::new());
        }
    }

    /// Appends what is pending to the open segment's journal (creating it
    /// first); if the storage refuses, stores it as a piece instead.
    fn submit_append(&mut self) {
        if let Some(job) = self.prepare_append() {
            self.uploads.spawn(job.run());
        }
    }

    /// Cuts what is pending for the journal; `None` while an append is in
    /// flight or nothing is pending.
    fn prepare_append(&mut self) -> Option<AppendJob> {
        if self.journal.busy {
            return None;
        }
        let (tli, segno) = (self.cur.tli, self.cur.segno);
        let open = self.journal.open.take().filter(|j| j.id.tli == tli && j.id.segno == segno);
        let Some(cut) = self.cur.cut_pending() else {
            self.journal.open = open;
            return None;
        };
        let jfrom = open.as_ref().map_or(cut.from, |j| j.from);
        let jid = WalObjectId::journal(tli, segno, jfrom);
        self.cur.note_object(jid);
        let ahead = match self.journal.ahead.take() {
            Some(a) if open.is_none() && a.id.same_object(&jid) => Some(a),
            other => {
                self.journal.ahead = other;
                None
            }
        };
        self.journal.busy = true;
        Some(AppendJob {
            storage: self.repo.storage().clone(),
            seg: self.seg,
            cancel: self.uploads.cancel.clone(),
            bufs: self.uploads.bufs.clone(),
            jid,
            jfrom,
            cut,
            open,
            ahead,
            supported: true,
        })
    }

    /// Once the segment is half full, starts creating the next one's
    /// journal, where journals are known to work.
    fn create_next_journal_ahead(&mut self) {
        if self.journal.ahead.is_some()
            || self.journal.supported != Some(true)
            || !self.uses_journal()
            || self.cur.filled() < self.seg.bytes() as usize / 2
        {
            return;
        }
        let id = WalObjectId::journal(self.cur.tli, self.cur.segno.next(), 0);
        self.journal.ahead = Some(AheadJournal::spawn(self.repo.storage().clone(), self.seg, id));
    }

    /// Deletes a journal created ahead that will not be used (at shutdown
    /// or a timeline switch), so no empty journal is left behind.
    async fn discard_journal_ahead(&mut self) {
        if let Some(a) = self.journal.ahead.take() {
            a.discard(self.repo.storage().as_ref(), self.seg).await;
        }
    }

    /// Appends what is pending to the open journal on this task, when one
    /// is open: a spawned task per group commit (allocation, wake-up, a
    /// trip through the scheduler) cost more than the append's own work.
    /// Returns whether the durable position moved; `None` if it did not
    /// apply (no open journal: [`WalWriter::submit_piece`] handles it).
    async fn append_inline(&mut self) -> Result<Option<bool>, StreamError> {
        let (tli, segno) = (self.cur.tli, self.cur.segno);
        let open = self.journal.open.as_ref().is_some_and(|j| j.id.tli == tli && j.id.segno == segno);
        if !self.uses_journal() || !open {
            return Ok(None);
        }
        let Some(job) = self.prepare_append() else { return Ok(Some(false)) };
        self.append_now(job).await.map(Some)
    }

    /// Runs an append to an open journal on this task; returns whether the
    /// durable position moved.
    async fn append_now(&mut self, job: AppendJob) -> Result<bool, StreamError> {
        match job.try_append().await {
            Ok(done) => self.finish_upload(done),
            Err(job) => {
                // Storing a piece retries for as long as storage fails: not
                // on this task, which must keep the connection alive.
                self.uploads.spawn(job.store_piece());
                Ok(false)
            }
        }
    }

    /// Returns true when the durable position moved.
    fn finish_upload(&mut self, done: Done) -> Result<bool, StreamError> {
        match done.id.kind {
            WalObjectKind::Segment => self.uploads.segments -= 1,
            WalObjectKind::Piece { .. } => self.pieces.in_flight -= 1,
            WalObjectKind::Journal { .. } => self.journal.busy = false,
        }
        // A piece of a segment completed while the piece was in flight: not
        // in that segment's list of pieces to delete.
        let mut late = None;
        if let Some(end) = done.journal {
            self.journal.supported = Some(end.supported);
            let (tli, segno) = (self.cur.tli, self.cur.segno);
            let current = |id: &WalObjectId| id.tli == tli && id.segno == segno;
            match end.fallback {
                // Stored once `done.result` is Ok (else the session ends):
                // one of the segment's pieces, so merges see every byte.
                Some((piece, summary)) if current(&piece) && done.result.is_ok() => {
                    self.cur.hold_stored_piece(piece, summary)
                }
                Some((piece, _)) if current(&piece) => self.cur.note_object(piece),
                Some((piece, _)) => late = Some(piece),
                None => {}
            }
            self.journal.open = end.open.filter(|j| current(&j.id));
        }
        let took = done.result?;
        let mut superseded = done.superseded;
        match done.id.kind {
            WalObjectKind::Piece { .. } if self.cur.mark_stored(&done.id) => self.start_due_merge(),
            WalObjectKind::Piece { .. } => late = Some(done.id),
            WalObjectKind::Segment => superseded.extend(self.pieces.segment_stored(done.id)),
            _ => {}
        }
        // Deleted now if its segment is stored whole, else with it.
        superseded.extend(late.and_then(|piece| self.pieces.late_piece(piece)));
        self.pieces.uploaded(took);
        self.stats.uploads.fetch_add(1, Ordering::Relaxed);
        self.uploads.delete_later(&superseded, "pieces of a stored segment");
        let moved = self.tracker.complete(done.start, done.end);
        if moved {
            let durable = self.durable();
            self.stats.durable_lsn.store(durable.0, Ordering::Relaxed);
            if let Some(us) = self.fresh.durable(durable) {
                self.stats.durable_commit_us.fetch_max(us, Ordering::Relaxed);
            }
            self.stats.unstored_since_us.store(self.fresh.unstored_since(), Ordering::Relaxed);
            self.stats.durable_advanced_us.store(jiff::Timestamp::now().as_microsecond(), Ordering::Relaxed);
            tracing::debug!(%durable, "durable position advanced");
        }
        Ok(moved)
    }

    /// Starts merging the open segment's stored pieces when they are due.
    fn start_due_merge(&mut self) {
        // Where journals work, a segment is one journal but for failed
        // appends: nothing to merge.
        let journals = self.journal.supported == Some(true);
        if self.draining || self.stop_at.is_some() || journals {
            return;
        }
        let (storage, u) = (self.repo.storage(), &self.uploads);
        self.pieces.start_due_merge(&mut self.cur, storage, self.seg, &u.bufs, &u.cancel);
    }

    /// Takes in an ended merge and starts the next one that is due.
    fn finish_merge(&mut self, done: Result<Merged, tokio::task::JoinError>) {
        let Some((_, inputs, taken)) = self.pieces.merge_ended(&mut self.cur, self.seg, done) else { return };
        // Readers already take the merged piece; the next merge need not
        // wait for these deletes.
        self.uploads.delete_later(&inputs, "merged pieces");
        if taken {
            self.stats.merges.fetch_add(1, Ordering::Relaxed);
            self.stats.open_segment_objects.store(self.cur.cover_len() as u64, Ordering::Relaxed);
            self.start_due_merge();
        }
    }

    /// Hands everything received to storage and waits until it is durable,
    /// up to the shutdown timeout.
    async fn drain<S: WalSource>(&mut self, stream: Option<&mut S>) -> Result<(), StreamError> {
        if let Some(job) = self.last_append.take() {
            self.append_now(job).await?;
        }
        self.draining = true;
        self.pieces.stop_merging();
        self.submit_piece();
        let deadline = tokio::time::sleep(self.cfg.shutdown_timeout);
        tokio::pin!(deadline);
        while !self.uploads.is_empty() {
            tokio::select! {
                Some(done) = self.uploads.next() => {
                    self.finish_upload(done?)?;
                    // A journal takes one append at a time: the rest now.
                    self.submit_piece();
                }
                _ = &mut deadline => {
                    self.uploads.cancel.cancel();
                    return Err(StreamError::Definite(format!(
                        "storage did not accept the last {} bytes of WAL within {:?}; they stay on the server \
                         (the slot keeps them) and are streamed again at the next start",
                        self.durable().distance_to(self.received),
                        self.cfg.shutdown_timeout
                    )));
                }
            }
        }
        self.discard_journal_ahead().await;
        if let Some(stream) = stream {
            let d = self.reportable();
            stream.report(d, d, d).await?;
        }
        // Pieces a stored segment replaced: deleted now rather than left for
        // the next start, unless storage keeps the shutdown waiting.
        self.uploads.finish_cleanups(CLEANUP_AT_EXIT).await;
        self.draining = false;
        Ok(())
    }

    /// Stores the old timeline's tail, then follows the server onto the
    /// next timeline from where it starts.
    pub async fn switch_timeline(
        &mut self,
        conn: &mut ReplicationConnection,
        next_tli: TimelineId,
        next_start: Lsn,
    ) -> Result<(), StreamError> {
        if self.received != next_start {
            return Err(StreamError::Protocol(format!(
                "timeline {} ended at {next_start} but WAL was received up to {}",
                self.tli, self.received
            )));
        }
        // The old timeline's tail is stored as pieces before anything else.
        self.drain::<pgpitr_pgwire::ReplicationStream<'_>>(None).await?;
        let (name, content) = conn.timeline_history(next_tli).await?;
        TimelineHistory::parse(next_tli, &String::from_utf8_lossy(&content))
            .map_err(|e| StreamError::Definite(format!("server sent an unreadable {name}: {e}")))?;
        start::store_history(&self.repo, next_tli, &content).await?;
        let offset = next_start.segment_offset(self.seg) as usize;
        let prefix = self.cur.prefix(offset);
        self.cur = OpenSegment::new(next_tli, next_start.segment_number(self.seg), self.seg, &prefix, false);
        self.index = CommitIndex::resume(self.cur.start_lsn(), self.seg, self.repo.major().wal_format(), &prefix);
        tracing::info!(from = %self.tli, to = %next_tli, at = %next_start, "following timeline switch");
        self.tli = next_tli;
        self.stats.timeline.store(next_tli.0, Ordering::Relaxed);
        Ok(())
    }
}

/// Tells the server the durable position if it moved past what it was last
/// told.
async fn report_advance<S: WalSource>(stream: &mut S, durable: Lsn, reported: &mut Lsn) -> Result<(), StreamError> {
    if durable > *reported {
        *reported = durable;
        stream.report(durable, durable, durable).await?;
    }
    Ok(())
}

/// Stores WAL `from..to` of timeline `tli` in the repository, streaming
/// only what is not there yet, on a connection the caller owns (for example
/// one holding a temporary slot that keeps the range on the server).
/// Returns once all of it is durable.
pub async fn archive_range(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    slot: Option<&str>,
    tli: TimelineId,
    from: Lsn,
    to: Lsn,
    cancel: &CancellationToken,
) -> Result<(), StreamError> {
    let Some(plan) = start::plan_range(repo, tli, from, to).await? else {
        return Ok(());
    };
    let cfg = StreamConfig { flush_interval: Duration::from_millis(200), ..StreamConfig::default() };
    tracing::info!(%tli, start = %plan.start, %to, "fetching WAL range into the repository");
    let mut st = WalWriter::new(repo, &cfg, plan, Arc::new(StreamStats::default()), cancel.child_token());
    st.stop_at = Some(to);
    let stream = conn.start_physical(slot, st.received, tli).await?;
    match st.stream(stream, cancel).await? {
        Flow::Shutdown if st.durable() >= to => Ok(()),
        Flow::Shutdown => Err(StreamError::Cancelled),
        Flow::NextTimeline { next_start, .. } => Err(StreamError::Definite(format!(
            "timeline {tli} ended at {next_start}, before {to}: the server was promoted during the operation"
        ))),
    }
}

/// Aborts a helper task when the stream that spawned it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
