//! Merging the unfinished segment's pieces while it fills, so that it stays
//! a handful of objects however it is written: a synchronous stream makes
//! a piece per group commit, a quiet server one per flush interval, and a
//! segment may take days to fill. Resume and `wal-fetch` read every object
//! of the segment, so they cost what this bounds.
//!
//! ```text
//!  offset 0 ─▶ [ anchor ][ anchor ][anchor][a][p][p][p][p][p][p][p] ◀─ newest
//!              each anchor ≥ RATIO × the next   └ staging: stored pieces ┘
//! ```
//!
//! A merge stores one piece covering a run of stored pieces (its key is an
//! ordinary piece key with the wider range), then deletes them: readers take
//! the widest object at each offset (`wal::split_cover`), so between the two
//! steps they take the merged one, and a crash between them leaves pieces
//! inside the merged one that the next start checks against it and deletes.
//! Merges run one at a time off the stream task; a flush report never waits
//! for one, because they only copy bytes that are already durable.
//!
//! The rule, applied when a piece is stored or a merge ends: once
//! [`STAGING`] stored pieces follow the anchors, they are merged, together
//! with every trailing anchor smaller than [`RATIO`] times the result (so
//! a byte is rewritten a few times, not once per piece), and with as many
//! more as keep the anchors at most [`MAX_ANCHORS`]. The stored cover of
//! the open segment is therefore at most `MAX_ANCHORS + STAGING - 1` = 15
//! objects once the merge in flight ends, plus the pieces made meanwhile.

use crate::StreamError;
use crate::upload::{self, Blocks, Buffers, WalUpload};
use bytes::Bytes;
use pgpitr_repo::object::{Chunk, WalSummary};
use pgpitr_repo::wal::WalObjectId;
use pgpitr_storage::Storage;
use pgpitr_types::{Lsn, WalSegSize};
use std::ops::Range;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Stored pieces after the anchors that trigger a merge.
pub const STAGING: usize = 8;
/// Most anchors (merged objects) kept.
pub const MAX_ANCHORS: usize = 8;
/// An anchor smaller than this many times the new merge joins it.
const RATIO: u64 = 4;
/// A piece this large is an anchor from the start: merging it with small
/// ones would rewrite much to save one object.
const ANCHOR_LEN: u64 = 64 * 1024;
/// Below this an anchor's compressed blocks are compressed again rather
/// than copied: small blocks compress poorly, and a merge exists to end up
/// with few large ones.
const MIN_REUSED_BLOCKS: u32 = 16 * 1024;

/// What the rule needs of one object of the cover, in offset order.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub len: u64,
    /// Made by a merge, or found stored at resume.
    pub anchor: bool,
    pub stored: bool,
}

/// The run of the cover to merge now, if any.
pub fn plan(cover: &[Entry]) -> Option<Range<usize>> {
    let anchor = |e: &Entry| e.stored && (e.anchor || e.len >= ANCHOR_LEN);
    let anchors = cover.iter().take_while(|e| anchor(e)).count();
    let staged = cover[anchors..].iter().take_while(|e| e.stored).count();
    let end = anchors + staged;
    let mut first = match () {
        _ if staged >= STAGING => anchors,
        // Too many anchors (large pieces, or many found at resume): merge
        // the newest, as few as keep the ratio.
        _ if anchors > MAX_ANCHORS => MAX_ANCHORS - 1,
        _ => return None,
    };
    let mut merged: u64 = cover[first..end].iter().map(|e| e.len).sum();
    while first > 0 && (cover[first - 1].len < RATIO * merged || first > MAX_ANCHORS - 1) {
        first -= 1;
        merged += cover[first].len;
    }
    Some(first..end)
}

/// The bytes of a merge: blocks an earlier merge compressed, copied; the
/// rest raw, compressed again.
#[derive(Debug, Clone)]
pub enum Source {
    Blocks { chunk: Chunk, crc: u32 },
    Raw(Bytes),
}

impl Source {
    /// Whether an anchor's blocks are worth copying as they are.
    pub fn reuse(chunk: &Chunk) -> bool {
        chunk.raw_len >= MIN_REUSED_BLOCKS
    }
}

/// One merge: the piece `id` from `start`, made of `sources`, replacing
/// `inputs`.
pub struct Merge {
    pub id: WalObjectId,
    pub start: Lsn,
    pub sources: Vec<Source>,
    pub summary: WalSummary,
    pub inputs: Vec<WalObjectId>,
}

/// A merge that ended: the piece stored (its blocks and CRC for the next
/// merge), or why not.
pub struct Merged {
    pub id: WalObjectId,
    pub inputs: Vec<WalObjectId>,
    pub result: Result<(Chunk, u32), StreamError>,
}

/// Stores the merged piece (create-if-absent; the same key is accepted only
/// with the same WAL). The stream then deletes its inputs, beside the next
/// merge: a failed or interrupted delete leaves them inside the merged
/// piece, for the next start to check and delete.
pub async fn run(
    storage: Arc<dyn Storage>,
    seg: WalSegSize,
    merge: Merge,
    bufs: Buffers,
    cancel: CancellationToken,
) -> Merged {
    let Merge { id, start, sources, summary, inputs } = merge;
    let result = store(&storage, seg, id, start, sources, summary, bufs, &cancel).await;
    Merged { id, inputs, result }
}

#[allow(clippy::too_many_arguments)]
async fn store(
    storage: &Arc<dyn Storage>,
    seg: WalSegSize,
    id: WalObjectId,
    start: Lsn,
    sources: Vec<Source>,
    summary: WalSummary,
    bufs: Buffers,
    cancel: &CancellationToken,
) -> Result<(Chunk, u32), StreamError> {
    let cell = crate::segment::ChunkCell::default();
    let blocks = Blocks::Merge { sources, cell: cell.clone() };
    let up = WalUpload { id, start, summary, blocks };
    let crc = upload::store(storage, seg, up, bufs, cancel).await?.crc;
    let chunk = cell.get().cloned().ok_or_else(|| StreamError::Internal("a merge made no blocks".into()))?;
    Ok((chunk, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u64) -> Entry {
        Entry { len, anchor: false, stored: true }
    }

    /// Drives the rule as the stream does: a piece stored, then merges until
    /// none is due; returns the most objects ever held and the bytes
    /// written per byte of WAL.
    fn simulate(pieces: impl IntoIterator<Item = u64>) -> (usize, f64) {
        let (mut cover, mut most, mut written, mut wal) = (Vec::<Entry>::new(), 0, 0u64, 0u64);
        for len in pieces {
            cover.push(piece(len));
            (written, wal) = (written + len, wal + len);
            most = most.max(cover.len());
            while let Some(r) = plan(&cover) {
                let len = cover[r.clone()].iter().map(|e| e.len).sum();
                written += len;
                cover.splice(r, [Entry { len, anchor: true, stored: true }]);
            }
        }
        (most, written as f64 / wal as f64)
    }

    #[test]
    fn the_cover_stays_bounded_whatever_the_piece_sizes() {
        let seg = 16u64 << 20;
        for (name, size) in [("commit batches", 40u64), ("pgbench batches", 168), ("quiet", 8192), ("async", 1 << 20)] {
            let (most, amp) = simulate(std::iter::repeat_n(size, (seg / size) as usize));
            assert!(most <= MAX_ANCHORS + STAGING, "{name}: {most} objects");
            assert!(amp < 20.0, "{name}: each byte written {amp:.1} times");
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let (most, _) = simulate((0..20_000).map(|_| rng.u64(8..20_000)));
        assert!(most <= MAX_ANCHORS + STAGING, "random sizes: {most}");
    }

    #[test]
    fn waits_for_staging_and_never_merges_unstored_pieces() {
        let mut cover = vec![piece(10); STAGING - 1];
        assert_eq!(plan(&cover), None);
        cover.push(Entry { stored: false, ..piece(10) });
        assert_eq!(plan(&cover), None, "the piece in flight is not merged");
        cover.push(piece(10));
        assert_eq!(plan(&cover), None, "nor what follows it");
        cover[STAGING - 1].stored = true;
        assert_eq!(plan(&cover), Some(0..STAGING + 1));
    }

    #[test]
    fn a_large_anchor_stays_and_a_small_one_joins() {
        let big = Entry { len: 1 << 20, anchor: true, stored: true };
        let small = Entry { len: 100, anchor: true, stored: true };
        let mut cover = vec![big, small];
        cover.extend(std::iter::repeat_n(piece(100), STAGING));
        assert_eq!(plan(&cover), Some(1..STAGING + 2));
    }

    #[test]
    fn many_pieces_found_at_resume_are_merged_down() {
        let cover = vec![Entry { len: 100, anchor: true, stored: true }; 2000];
        assert_eq!(plan(&cover), Some(0..2000), "small ones all at once");
        let mut cover = vec![Entry { len: 1 << 20, anchor: true, stored: true }; 2];
        cover.extend(vec![Entry { len: 1000, anchor: true, stored: true }; 30]);
        assert_eq!(plan(&cover), Some(2..32), "the large ones stay");
    }

    #[test]
    fn a_large_piece_is_not_rewritten_with_small_ones() {
        let mut cover = vec![piece(8 << 20)];
        cover.extend(std::iter::repeat_n(piece(100), STAGING));
        assert_eq!(plan(&cover), Some(1..STAGING + 1));
    }
}
