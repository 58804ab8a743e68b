//! The commit-time index: commit, abort and restore-point records found in
//! WAL as it arrives, summarised into the header of the object that stores
//! them, where planning reads them without reading the WAL.
//!
//! A WAL format surprise must not stop archiving: the bytes are stored
//! regardless, the summary says what was not indexed (so that no restore
//! trusts a missing commit), and the scanner resynchronises at the next
//! segment.

use pgpitr_repo::object::{RestorePoint, TimedLsn, WalSummary};
use pgpitr_types::{Lsn, WalSegSize};
use pgpitr_walscan::{WalEvent, WalFormat, WalScanner};

pub(crate) struct CommitIndex {
    /// `None` after a scan error until the next segment starts.
    scanner: Option<WalScanner>,
    events: Vec<WalEvent>,
    seg: WalSegSize,
    format: WalFormat,
}

impl CommitIndex {
    /// An index positioned at `seg_start` that has consumed `prefix`, whose
    /// events were recorded when those bytes were first stored.
    pub(crate) fn resume(seg_start: Lsn, seg: WalSegSize, format: WalFormat, prefix: &[u8]) -> CommitIndex {
        let mut scanner = WalScanner::new(seg_start, seg, format).verify_crc_of_decoded_only();
        let mut discard = Vec::new();
        let scanner = match scanner.feed(prefix, &mut discard) {
            Ok(()) => Some(scanner),
            Err(e) => {
                tracing::warn!("commit-time index: {e}; resynchronising at the next segment");
                None
            }
        };
        CommitIndex { scanner, events: Vec::new(), seg, format }
    }

    /// Whether a record began before `end` and is not whole there (it goes
    /// on past `end`). `false` after a scan error, which the summary says,
    /// and after the zeros of a switched segment's rest.
    pub(crate) fn record_open_at(&self, end: Lsn) -> bool {
        let Some(s) = &self.scanner else { return false };
        s.end_of_wal().is_none() && s.last_record_end().is_none_or(|e| e < end)
    }

    /// A new segment starts at `start`: an index stopped by an error
    /// resumes here.
    pub(crate) fn next_segment(&mut self, start: Lsn) {
        if self.scanner.is_none() {
            self.scanner = Some(WalScanner::new(start, self.seg, self.format).verify_crc_of_decoded_only());
        }
    }

    /// Indexes `chunk` (of the segment starting at `seg_start`) into
    /// `summary`, calling `commit(end LSN, commit time)` for each commit.
    /// Returns false when the scan failed here.
    pub(crate) fn scan(
        &mut self,
        chunk: &[u8],
        seg_start: Lsn,
        summary: &mut WalSummary,
        received_us: i64,
        mut commit: impl FnMut(Lsn, i64),
    ) -> bool {
        self.events.clear();
        let Some(scanner) = self.scanner.as_mut() else {
            summary.unindexed_before = Some(Lsn::MAX);
            return true;
        };
        let fed = scanner.feed(chunk, &mut self.events);
        // A record passed over at the scan's start may have been indexed
        // when stored (a resume mid-segment), or not (a crash before it
        // ended): said either way, the planner weighs it by its LSN.
        let mut unindexed = scanner.take_skipped_continuation().then_some(seg_start);
        let ok = match fed {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("commit-time index: {e}; resynchronising at the next segment");
                self.scanner = None;
                unindexed = Some(Lsn::MAX);
                false
            }
        };
        summary.unindexed_before = summary.unindexed_before.max(unindexed);
        summary.received_us = received_us;
        for ev in self.events.drain(..) {
            if let WalEvent::Commit { end_lsn, time, .. } = &ev
                && let Some(us) = time.to_unix_micros()
            {
                commit(*end_lsn, us);
            }
            add_event(summary, ev);
        }
        ok
    }
}

fn add_event(summary: &mut WalSummary, ev: WalEvent) {
    match ev {
        WalEvent::Commit { lsn, end_lsn, time, .. } => {
            if let Some(us) = time.to_unix_micros() {
                let t = TimedLsn { lsn, end_lsn, time_us: us };
                summary.first_commit.get_or_insert(t);
                summary.last_commit = Some(t);
            }
            summary.commits += 1;
        }
        WalEvent::Abort { .. } => summary.aborts += 1,
        WalEvent::RestorePoint { lsn, end_lsn, name, time } => {
            summary.restore_points.push(RestorePoint {
                name,
                lsn,
                end_lsn,
                time_us: time.to_unix_micros().unwrap_or_default(),
            });
        }
        _ => {}
    }
}
