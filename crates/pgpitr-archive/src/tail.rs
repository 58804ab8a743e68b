//! The open segment's tail pieces, around their uploads: when one is due
//! ([`PieceSchedule`]), how many are in flight, the merge of stored pieces
//! into wider ones (see [`crate::compact`]), and pieces stored after their
//! segment was completed, deleted once it is stored whole.
//!
//! A piece's bytes are cut from the [`OpenSegment`]; whether it counts
//! towards the durable position is the writer's business: this module
//! never moves it.

use crate::compact::{self, Merged};
use crate::schedule::{Mode, PieceSchedule};
use crate::segment::OpenSegment;
use crate::upload::Buffers;
use pgpitr_repo::wal::WalObjectId;
use pgpitr_storage::Storage;
use pgpitr_types::WalSegSize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Complete segments remembered for pieces that are stored after them (a
/// piece is in flight while at most `max_segments_in_flight` segments are).
const RECENT_COMPLETE: usize = 8;

pub(crate) struct Tail {
    schedule: PieceSchedule,
    /// Pieces being stored.
    pub(crate) in_flight: usize,
    /// The merge of the open segment's pieces in flight.
    merging: Option<Merging>,
    /// A merge of the open segment failed: no more until the next one.
    merge_failed: bool,
    /// The segments most recently stored whole, newest last.
    recent_complete: Vec<WalObjectId>,
    /// Pieces stored after their segment was completed, before it was
    /// stored: deleted once it is.
    late: Vec<WalObjectId>,
}

struct Merging {
    id: WalObjectId,
    task: tokio::task::JoinHandle<Merged>,
}

/// A merge ends with its session: it would otherwise store, beside the
/// next session, a piece that session's listing did not see.
impl Drop for Merging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tail {
    pub(crate) fn new() -> Tail {
        Tail {
            schedule: PieceSchedule::new(),
            in_flight: 0,
            merging: None,
            merge_failed: false,
            recent_complete: Vec::with_capacity(RECENT_COMPLETE),
            late: Vec::new(),
        }
    }

    /// When WAL pending since `since` is due, in `mode`; `busy`: a journal
    /// append is in flight.
    pub(crate) fn due(&self, mode: Mode, since: Option<Instant>, busy: bool) -> Option<Instant> {
        let in_flight = if mode == Mode::Journal { usize::from(busy) } else { self.in_flight };
        self.schedule.due(mode, since, in_flight)
    }

    /// An upload (of any kind) took `took`: the schedule learns from it.
    pub(crate) fn uploaded(&mut self, took: Duration) {
        self.schedule.uploaded(took);
    }

    /// The open segment was completed: its merge in flight is dropped (the
    /// complete segment replaces whatever it would have made). Returns
    /// that merge's piece, which may still appear.
    pub(crate) fn segment_completed(&mut self) -> Option<WalObjectId> {
        self.merge_failed = false;
        self.merging.take().map(|m| m.id)
    }

    /// Segment `id` is stored whole: returns its late pieces, now redundant.
    pub(crate) fn segment_stored(&mut self, id: WalObjectId) -> Vec<WalObjectId> {
        if self.recent_complete.len() == RECENT_COMPLETE {
            self.recent_complete.remove(0);
        }
        self.recent_complete.push(id);
        self.late.extract_if(.., |p| p.tli == id.tli && p.segno == id.segno).collect()
    }

    /// A piece of a segment that was completed while it was in flight:
    /// returned if that segment is stored whole already (delete it now),
    /// else kept until it is.
    pub(crate) fn late_piece(&mut self, piece: WalObjectId) -> Option<WalObjectId> {
        if self.recent_complete.contains(&WalObjectId::segment(piece.tli, piece.segno)) {
            return Some(piece);
        }
        self.late.push(piece);
        None
    }

    pub(crate) fn merging(&self) -> bool {
        self.merging.is_some()
    }

    /// Drops the merge in flight (a shutdown waits for no merge: merges
    /// never make WAL durable).
    pub(crate) fn stop_merging(&mut self) {
        self.merging = None;
    }

    /// Starts merging `cur`'s stored pieces when a merge is due and none
    /// runs or failed in this segment.
    pub(crate) fn start_due_merge(
        &mut self,
        cur: &mut OpenSegment,
        storage: &Arc<dyn Storage>,
        seg: WalSegSize,
        bufs: &Buffers,
        cancel: &CancellationToken,
    ) {
        if self.merging.is_some() || self.merge_failed {
            return;
        }
        let Some(merge) = cur.due_merge() else { return };
        tracing::debug!(merged = %merge.id.key(seg), inputs = merge.inputs.len(), "merging pieces");
        let id = merge.id;
        let task = tokio::spawn(compact::run(storage.clone(), seg, merge, bufs.clone(), cancel.clone()));
        self.merging = Some(Merging { id, task });
    }

    /// Waits for the merge in flight, if any.
    pub(crate) async fn merge_done(&mut self) -> Result<Merged, tokio::task::JoinError> {
        match &mut self.merging {
            Some(m) => (&mut m.task).await,
            None => std::future::pending().await,
        }
    }

    /// Takes in an ended merge. When it stored its piece, returns that
    /// piece, its inputs (now redundant: readers take the merged piece) and
    /// whether `cur` took it in as its cover. A merge that failed is not
    /// retried in this session: its pieces stay as they are, and are merged
    /// at the next start or deleted with the segment.
    pub(crate) fn merge_ended(
        &mut self,
        cur: &mut OpenSegment,
        seg: WalSegSize,
        done: Result<Merged, tokio::task::JoinError>,
    ) -> Option<(WalObjectId, Vec<WalObjectId>, bool)> {
        self.merging = None;
        match done {
            Ok(Merged { id, inputs, result: Ok((chunk, crc)) }) => {
                let taken = cur.merged(id, &inputs, chunk, crc);
                Some((id, inputs, taken))
            }
            Ok(Merged { id, result: Err(e), .. }) => {
                tracing::error!(merged = %id.key(seg), "merging pieces failed; they stay as they are: {e}");
                self.merge_failed = true;
                None
            }
            Err(e) if e.is_cancelled() => None,
            Err(e) => {
                tracing::error!("merge task failed: {e}");
                None
            }
        }
    }
}
