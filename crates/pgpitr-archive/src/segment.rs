//! The segment being filled: its bytes so far, compressed as they arrive,
//! which of them have been handed to storage as pieces, and what the
//! scanner found in them.
//!
//! Arriving WAL gathers in a staging buffer of one block, which stays in
//! cache, and is compressed into framed lz4 blocks each time it fills. The
//! complete segment is those blocks behind a header written in place: its
//! raw bytes never pass through a segment-sized buffer, whose writes (cold)
//! and reads (to compress them) cost as much CPU as the compression itself.
//!
//! ```text
//!  framed: [head room][block][block]…[block]   staging: [ < 1 block ]
//!          0          HEAD_ROOM     framed_end          staged_from..len
//! ```

use crate::compact::{self, Merge, Source};
use crate::upload::{Blocks, WalUpload};
use bytes::Bytes;
use pgpitr_repo::object::{self, BLOCK_RAW, BufPool, Chunk, HEAD_ROOM, WalSummary};
use pgpitr_repo::wal::{WalObjectId, WalObjectKind};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

/// Where a piece's compressed blocks appear once its upload made them, so a
/// merge can copy them instead of compressing again.
pub type ChunkCell = Arc<OnceLock<Chunk>>;

/// A piece of at least this many bytes seals the staging block, so that it
/// is made of the segment's own blocks (at the cost of one short block per
/// piece). A shorter one, a synchronous stream's group commit, is
/// compressed on its own: sealing at each would leave the complete segment
/// in tiny blocks, which compress poorly.
const SEAL_MIN: usize = 16 * 1024;

/// A piece of the segment's cover (see [`compact`]): stored, or being stored.
#[derive(Debug, Clone)]
struct Held {
    id: WalObjectId,
    from: u32,
    to: u32,
    summary: WalSummary,
    /// Its compressed blocks, once its upload made them.
    cell: ChunkCell,
    stored: bool,
    /// Made by a merge, or found stored at resume.
    anchor: bool,
    /// CRC-32 of its raw bytes, where known.
    crc: Option<u32>,
}

#[derive(Debug)]
pub struct OpenSegment {
    pub tli: TimelineId,
    pub segno: SegNo,
    seg: WalSegSize,
    /// Where `framed` came from and returns to, once the complete segment's
    /// object is dropped.
    pool: BufPool,
    pooled: bool,
    /// Bytes `0..staged_from` as framed blocks, in `framed[HEAD_ROOM..framed_end]`.
    framed: Vec<u8>,
    framed_end: usize,
    /// Where each block ends: raw offset, framed offset.
    marks: Vec<(u32, usize)>,
    /// Bytes `staged_from..len`: less than a block.
    staging: Vec<u8>,
    /// The block just before `staged_from`, raw, when it was staged: a
    /// journal append that began in it copies it instead of decompressing.
    prev: Vec<u8>,
    staged_from: usize,
    len: usize,
    /// Offset up to which pieces have been submitted.
    cut: usize,
    /// Pieces covering `0..cut` in offset order, unless journals hold those
    /// bytes.
    held: Vec<Held>,
    /// Every other object of the segment (journals, pieces stored after a
    /// failed append, pieces past a hole, merges cut short), deleted with
    /// the pieces once the complete segment is stored.
    others: Vec<WalObjectId>,
    /// What the submitted pieces contain.
    pieces_summary: WalSummary,
    /// What the bytes past `cut` contain.
    pending_summary: WalSummary,
    /// When the oldest byte past `cut` arrived.
    pending_since: Option<Instant>,
    /// CRC-32 of bytes `0..cut`, and of `cut..len`: hashed as they arrive,
    /// while they are in cache.
    cut_crc: crc32fast::Hasher,
    pending_crc: crc32fast::Hasher,
}

impl OpenSegment {
    /// A segment whose first `prefix.len()` bytes are known: `stored` when
    /// they are this segment's stored pieces; otherwise (a prefix inherited
    /// from the parent timeline) they go into this segment's first piece, so
    /// that pieces always start at offset 0.
    pub fn new(tli: TimelineId, segno: SegNo, seg: WalSegSize, prefix: &[u8], stored: bool) -> Self {
        Self::new_in(&object::encode_pool(0, seg.bytes() as usize), tli, segno, seg, prefix, stored)
    }

    /// Like [`OpenSegment::new`], its blocks in a buffer from `pool`, so that
    /// a busy stream does not fault in a fresh one for each segment.
    pub fn new_in(pool: &BufPool, tli: TimelineId, segno: SegNo, seg: WalSegSize, prefix: &[u8], stored: bool) -> Self {
        let (framed, pooled) = pool.take_or_alloc(HEAD_ROOM + object::framed_bound(seg.bytes() as usize));
        let mut s = OpenSegment {
            tli,
            segno,
            seg,
            pool: pool.clone(),
            pooled,
            framed,
            framed_end: HEAD_ROOM,
            marks: Vec::with_capacity(seg.bytes() as usize / BLOCK_RAW + 1),
            staging: Vec::with_capacity(BLOCK_RAW),
            prev: Vec::with_capacity(BLOCK_RAW),
            staged_from: 0,
            len: 0,
            cut: 0,
            held: Vec::new(),
            others: Vec::new(),
            pieces_summary: WalSummary::default(),
            pending_summary: WalSummary::default(),
            pending_since: None,
            cut_crc: crc32fast::Hasher::new(),
            pending_crc: crc32fast::Hasher::new(),
        };
        s.append(prefix, Instant::now());
        if stored {
            s.cut = s.len;
            s.take_pending_crc();
            s.pending_since = None;
        }
        s
    }

    pub fn start_lsn(&self) -> Lsn {
        Lsn(self.segno.0 * self.seg.bytes())
    }

    /// The LSN just past the bytes held.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.start_lsn().0 + self.len as u64)
    }

    /// Bytes held, from the segment's start.
    pub fn filled(&self) -> usize {
        self.len
    }

    pub fn room(&self) -> usize {
        self.seg.bytes() as usize - self.len
    }

    pub fn is_full(&self) -> bool {
        self.room() == 0
    }

    pub fn append(&mut self, mut data: &[u8], now: Instant) {
        debug_assert!(data.len() <= self.room());
        if data.is_empty() {
            return;
        }
        self.pending_since.get_or_insert(now);
        self.pending_crc.update(data);
        self.len += data.len();
        while !data.is_empty() {
            // A whole block at hand is compressed where it is.
            if self.staging.is_empty() && data.len() >= BLOCK_RAW {
                let (block, rest) = data.split_at(BLOCK_RAW);
                self.push_block(block);
                data = rest;
                continue;
            }
            let n = (BLOCK_RAW - self.staging.len()).min(data.len());
            self.staging.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.staging.len() == BLOCK_RAW {
                self.seal();
            }
        }
    }

    /// Compresses what is staged as a block of its own.
    fn seal(&mut self) {
        if self.staging.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staging);
        self.push_block(&staged);
        self.staging = std::mem::replace(&mut self.prev, staged);
        self.staging.clear();
    }

    fn push_block(&mut self, block: &[u8]) {
        // Short blocks (one per sealed piece) can outgrow the bound reserved.
        let need = self.framed_end + object::block_bound(block.len());
        if self.framed.len() < need {
            self.framed.resize(need, 0);
        }
        self.framed_end += object::compress_block(block, &mut self.framed[self.framed_end..]);
        self.staged_from += block.len();
        self.marks.push((self.staged_from as u32, self.framed_end));
        self.prev.clear();
    }

    /// The block boundary at or before raw offset `at`: the index of the
    /// block holding `at`, its raw start and framed start.
    fn block_at(&self, at: usize) -> (usize, usize, usize) {
        let i = self.marks.partition_point(|&(end, _)| end as usize <= at);
        match i.checked_sub(1) {
            Some(prev) => (i, self.marks[prev].0 as usize, self.marks[prev].1),
            None => (0, 0, HEAD_ROOM),
        }
    }

    /// Bytes `from..to` of the segment, decompressed from its blocks where
    /// they are no longer staged (journal appends, merges, short pieces, a
    /// timeline's prefix).
    fn raw_range(&self, from: usize, to: usize) -> Bytes {
        debug_assert!(from <= to && to <= self.len);
        if from == to {
            return Bytes::new();
        }
        let staged = |a: usize, b: usize| &self.staging[a - self.staged_from..b - self.staged_from];
        if from >= self.staged_from {
            return Bytes::copy_from_slice(staged(from, to));
        }
        let prev_from = self.staged_from - self.prev.len();
        if from >= prev_from {
            let mut out = Vec::with_capacity(to - from);
            out.extend_from_slice(&self.prev[from - prev_from..to.min(self.staged_from) - prev_from]);
            if to > self.staged_from {
                out.extend_from_slice(staged(self.staged_from, to));
            }
            return out.into();
        }
        let (_, raw_start, framed_start) = self.block_at(from);
        let upto = to.min(self.staged_from);
        let last = self.marks.partition_point(|&(end, _)| (end as usize) < upto);
        let (raw_end, framed_end) = self.marks[last];
        let (blocks, _) = object::decode_framed(&self.framed[framed_start..framed_end], raw_end as usize - raw_start)
            .expect("the segment's own blocks decode");
        if to <= self.staged_from {
            return blocks.slice(from - raw_start..to - raw_start);
        }
        let mut out = Vec::with_capacity(to - from);
        out.extend_from_slice(&blocks[from - raw_start..]);
        out.extend_from_slice(staged(self.staged_from, to));
        out.into()
    }

    /// The CRC-32 of the pending bytes, which become part of `0..cut`.
    fn take_pending_crc(&mut self) -> u32 {
        let pending = std::mem::replace(&mut self.pending_crc, crc32fast::Hasher::new());
        self.cut_crc.combine(&pending);
        pending.finalize()
    }

    pub fn pending_summary_mut(&mut self) -> &mut WalSummary {
        &mut self.pending_summary
    }

    /// Records an object found stored at resume, in offset order: a piece
    /// becomes an anchor of the cover, anything else is deleted with it.
    pub fn adopt_stored(&mut self, id: WalObjectId, summary: &WalSummary) {
        match id.kind {
            WalObjectKind::Piece { from, to } => self.held.push(Held {
                id,
                from,
                to,
                summary: summary.clone(),
                cell: ChunkCell::default(),
                stored: true,
                anchor: true,
                crc: None,
            }),
            _ => self.note_object(id),
        }
        self.pieces_summary.merge(summary);
    }

    /// Records a stored piece made outside [`OpenSegment::cut_piece`] (the
    /// bytes of a journal append that failed), in offset order.
    pub fn hold_stored_piece(&mut self, id: WalObjectId, summary: WalSummary) {
        let WalObjectKind::Piece { from, to } = id.kind else { return };
        let at = self.held.partition_point(|h| h.from < from);
        let held = Held { id, from, to, summary, cell: ChunkCell::default(), stored: true, anchor: false, crc: None };
        self.held.insert(at, held);
    }

    /// Records an object to delete once the complete segment is stored.
    pub fn note_object(&mut self, id: WalObjectId) {
        if !self.others.iter().any(|o| o.same_object(&id)) {
            self.others.push(id);
        }
    }

    /// Marks a piece of this segment stored; false if it is not one of its
    /// cover.
    pub fn mark_stored(&mut self, id: &WalObjectId) -> bool {
        match self.held.iter_mut().find(|h| h.id == *id) {
            Some(h) => {
                h.stored = true;
                true
            }
            None => false,
        }
    }

    /// The run of the cover that is due to be merged, as a merge to run.
    pub fn due_merge(&self) -> Option<Merge> {
        // Only a run without holes is merged: bytes between two pieces (in a
        // journal) are not the pieces' to merge.
        let mut prev_to = self.held.first().map_or(0, |h| h.from);
        let entries: Vec<compact::Entry> = self
            .held
            .iter()
            .map(|h| {
                let contiguous = std::mem::replace(&mut prev_to, h.to) == h.from;
                compact::Entry { len: u64::from(h.to - h.from), anchor: h.anchor, stored: h.stored && contiguous }
            })
            .collect();
        let run = compact::plan(&entries)?;
        let held = &self.held[run];
        let (from, to) = (held[0].from, held[held.len() - 1].to);
        if to as usize > self.len {
            tracing::error!(%from, %to, "a merge's pieces reach past the segment's bytes; not merging");
            return None;
        }
        let raw = |r: std::ops::Range<u32>| Source::Raw(self.raw_range(r.start as usize, r.end as usize));
        let mut sources: Vec<Source> = Vec::new();
        let mut summary = WalSummary::default();
        // Neighbouring pieces without reusable blocks compress as one run.
        let mut raw_from: Option<u32> = None;
        for h in held {
            summary.merge(&h.summary);
            match (h.cell.get(), h.crc) {
                (Some(chunk), Some(crc)) if Source::reuse(chunk) => {
                    sources.extend(raw_from.take().map(|f| raw(f..h.from)));
                    sources.push(Source::Blocks { chunk: chunk.clone(), crc });
                }
                _ => {
                    raw_from.get_or_insert(h.from);
                }
            }
        }
        sources.extend(raw_from.map(|f| raw(f..to)));
        // Its name must say what it holds; a hole would break that.
        if sources.iter().map(Source::len).sum::<u64>() != u64::from(to - from) {
            tracing::error!(%from, %to, "a merge's pieces do not cover its range; not merging");
            return None;
        }
        Some(Merge {
            id: WalObjectId::piece(self.tli, self.segno, from, to),
            start: Lsn(self.start_lsn().0 + u64::from(from)),
            sources,
            summary,
            inputs: held.iter().map(|h| h.id).collect(),
        })
    }

    /// Puts a stored merge in place of its inputs; false (nothing changed)
    /// when they are no longer a run of this segment's cover.
    pub fn merged(&mut self, id: WalObjectId, inputs: &[WalObjectId], chunk: Chunk, crc: u32) -> bool {
        let WalObjectKind::Piece { from, to } = id.kind else { return false };
        let Some(at) = self.held.iter().position(|h| Some(&h.id) == inputs.first()) else { return false };
        let run = at..at + inputs.len();
        if run.end > self.held.len() || self.held[run.clone()].iter().zip(inputs).any(|(h, i)| h.id != *i) {
            return false;
        }
        let mut summary = WalSummary::default();
        self.held[run.clone()].iter().for_each(|h| summary.merge(&h.summary));
        let cell = ChunkCell::default();
        let _ = cell.set(chunk);
        let merged = Held { id, from, to, summary, cell, stored: true, anchor: true, crc: Some(crc) };
        self.held.splice(run, [merged]);
        true
    }

    /// How many objects hold the segment's bytes now.
    pub fn cover_len(&self) -> usize {
        self.held.len()
    }

    pub fn pending_bytes(&self) -> usize {
        self.len - self.cut
    }

    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Everything past the last cut, as a piece to store. A long one is
    /// made of the segment's blocks (bytes before the first whole one, left
    /// by a short piece, are compressed anew); a short one of its raw bytes.
    pub fn cut_piece(&mut self) -> Option<WalUpload> {
        let (from, to) = (self.cut, self.len);
        if from == to {
            return None;
        }
        let (head, tail) = if to - from >= SEAL_MIN {
            self.seal();
            let (i, raw_start, framed_start) = self.block_at(from);
            let (blocks_from, framed_from) = match raw_start == from {
                true => (from, framed_start),
                false => (self.marks[i].0 as usize, self.marks[i].1),
            };
            let head = self.raw_range(from, blocks_from);
            let tail = (blocks_from < to).then(|| Chunk {
                raw_len: (to - blocks_from) as u32,
                framed: Bytes::copy_from_slice(&self.framed[framed_from..self.framed_end]),
            });
            (head, tail)
        } else {
            (self.raw_range(from, to), None)
        };
        let c = self.take_cut(from, to);
        let id = WalObjectId::piece(self.tli, self.segno, c.from, c.to);
        let cell = ChunkCell::default();
        self.held.push(Held {
            id,
            from: c.from,
            to: c.to,
            summary: c.summary.clone(),
            cell: cell.clone(),
            stored: false,
            anchor: false,
            crc: Some(c.crc),
        });
        Some(WalUpload {
            id,
            start: c.start,
            summary: c.summary,
            blocks: Blocks::Framed { head, tail, crc: c.crc, cell },
        })
    }

    /// Everything past the last cut, raw, for the caller to store (a journal
    /// append) and to record with [`OpenSegment::note_object`] or
    /// [`OpenSegment::hold_stored_piece`].
    pub fn cut_pending(&mut self) -> Option<Cut> {
        let (from, to) = (self.cut, self.len);
        if from == to {
            return None;
        }
        let raw = self.raw_range(from, to);
        let mut c = self.take_cut(from, to);
        c.raw = raw;
        Some(c)
    }

    /// Moves the cut to `to`, taking what the pending bytes contain.
    fn take_cut(&mut self, from: usize, to: usize) -> Cut {
        let crc = self.take_pending_crc();
        let summary = std::mem::take(&mut self.pending_summary);
        self.pieces_summary.merge(&summary);
        self.cut = to;
        self.pending_since = None;
        let start = Lsn(self.start_lsn().0 + from as u64);
        Cut { from: from as u32, to: to as u32, start, raw: Bytes::new(), crc, summary }
    }

    /// The whole segment, once full, as one object to store, and the objects
    /// it makes redundant. `merging` is the output of a merge cut short,
    /// deleted with the rest.
    pub fn into_complete(mut self, merging: Option<WalObjectId>) -> (WalUpload, Vec<WalObjectId>) {
        debug_assert!(self.is_full());
        self.seal();
        let mut summary = std::mem::take(&mut self.pieces_summary);
        summary.merge(&self.pending_summary);
        let mut crc = self.cut_crc.clone();
        crc.combine(&self.pending_crc);
        let crc = crc.finalize();
        let id = WalObjectId::segment(self.tli, self.segno);
        let (start, raw_len) = (self.start_lsn(), self.len as u64);
        let object = object::encode_framed_in_place(
            self.framed,
            &self.pool,
            self.pooled,
            HEAD_ROOM..self.framed_end,
            self.tli,
            start,
            raw_len,
            crc,
            &summary,
        );
        let mut superseded: Vec<WalObjectId> = self.held.iter().map(|h| h.id).collect();
        superseded.extend(self.others);
        superseded.extend(merging);
        (WalUpload { id, start, summary, blocks: Blocks::Encoded { object, raw_len, crc } }, superseded)
    }

    /// The bytes `0..offset` of this segment (the prefix a new timeline
    /// inherits at a switch point inside it).
    pub fn prefix(&self, offset: usize) -> Bytes {
        self.raw_range(0, offset.min(self.len))
    }
}

/// Bytes `from..to` of the segment (offsets), the WAL from `start`.
pub struct Cut {
    pub from: u32,
    pub to: u32,
    pub start: Lsn,
    pub raw: Bytes,
    /// CRC-32 of `raw`.
    pub crc: u32,
    pub summary: WalSummary,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::encode;

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    /// Bytes that compress somewhat, different for each `seed`.
    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|j| ((j / 7) ^ seed.wrapping_mul(2_654_435_761) ^ (j % 13)) as u8).collect()
    }

    fn decoded(object: &Bytes) -> (object::ObjectHeader, Bytes) {
        object::decode(object).expect("the object decodes")
    }

    /// The first piece of a synchronous session on S3 is stored in place of
    /// a journal append; held like any other, so a merge covers its bytes
    /// and its commits.
    #[test]
    fn a_piece_stored_for_a_failed_append_is_merged_like_the_others() {
        let mut s = OpenSegment::new(TimelineId(1), SegNo(3), seg(), &[], true);
        let now = Instant::now();
        s.append(&[7u8; 1000], now);
        let first = s.cut_pending().unwrap();
        let piece = WalObjectId::piece(TimelineId(1), SegNo(3), first.from, first.to);
        for _ in 0..compact::STAGING {
            s.append(&[8u8; 100], now);
            let up = s.cut_piece().unwrap();
            assert!(s.mark_stored(&up.id));
        }
        assert!(s.due_merge().is_none_or(|m| m.id.range(seg()).0 > piece.range(seg()).0), "not across the hole");
        s.hold_stored_piece(piece, WalSummary { commits: 1, ..Default::default() });
        let m = s.due_merge().expect("a merge is due");
        assert_eq!(m.id, WalObjectId::piece(TimelineId(1), SegNo(3), 0, 1000 + 100 * compact::STAGING as u32));
        let mut merged = Vec::new();
        for src in &m.sources {
            match src {
                Source::Raw(raw) => merged.extend_from_slice(raw),
                Source::Blocks { .. } => panic!("short pieces are compressed again"),
            }
        }
        let mut want = vec![7u8; 1000];
        want.extend(std::iter::repeat_n(8u8, 100 * compact::STAGING));
        assert_eq!(merged, want, "the merge's sources are the pieces' bytes");
        assert_eq!(m.summary.commits, 1, "the held piece's commits are in the merged summary");
    }

    /// Whatever the mix of journal cuts, short pieces and long ones, each
    /// piece stores exactly its bytes, the complete segment (its header
    /// written in place) all of them with the CRC hashed on arrival, and a
    /// prefix reads back across blocks and the staging buffer.
    #[test]
    fn pieces_and_the_complete_segment_hold_exactly_the_bytes_appended() {
        let pool = object::encode_pool(1, seg().bytes() as usize);
        let prefix = bytes(100_000, 99);
        let mut s = OpenSegment::new_in(&pool, TimelineId(2), SegNo(9), seg(), &prefix, true);
        let mut all = prefix.clone();
        let now = Instant::now();
        let (mut long, mut short, mut whole_blocks_reused) = (0, 0, 0);
        let mut i = 0u32;
        while !s.is_full() {
            // Every fifth append is short, and so is the piece cut after it.
            let most = if i % 5 == 3 { 15_000 } else { 150_000 };
            let n = s.room().min(1 + (i as usize * 7_919) % most);
            let chunk = bytes(n, i);
            s.append(&chunk, now);
            all.extend_from_slice(&chunk);
            let at = s.filled();
            assert_eq!(&s.prefix(at)[..], &all[..], "a prefix reads back ({at} bytes)");
            match i % 5 {
                0 => {
                    let c = s.cut_pending().unwrap();
                    assert_eq!(&c.raw[..], &all[c.from as usize..c.to as usize]);
                    assert_eq!(c.crc, crc32fast::hash(&c.raw));
                }
                1..=3 => {
                    let up = s.cut_piece().unwrap();
                    let Blocks::Framed { head, tail, crc, cell } = &up.blocks else { panic!("a piece is framed") };
                    if tail.is_some() {
                        long += 1;
                        whole_blocks_reused += usize::from(head.is_empty());
                    } else {
                        short += 1;
                    }
                    let WalObjectKind::Piece { from, to } = up.id.kind else { panic!("a piece") };
                    let (start, end) = (up.start, up.end());
                    let (object, want_crc) = encode(&up, Some(&pool));
                    assert_eq!(want_crc, *crc);
                    let (h, raw) = decoded(&object);
                    assert_eq!((h.start, h.end), (start, end));
                    assert_eq!(&raw[..], &all[from as usize..to as usize], "piece {from}..{to}");
                    assert_eq!(cell.get().map(|c| c.raw_len), Some(to - from), "its blocks are published");
                }
                _ => {}
            }
            i += 1;
        }
        assert!(long > 2 && short > 2 && whole_blocks_reused > 0, "{long} long, {short} short, {whole_blocks_reused}");
        let (up, superseded) = s.into_complete(None);
        assert!(!superseded.is_empty(), "its pieces are replaced");
        let (object, crc) = encode(&up, Some(&pool));
        assert_eq!(crc, crc32fast::hash(&all));
        let (h, raw) = decoded(&object);
        assert_eq!(h.end.0 - h.start.0, seg().bytes());
        assert!(raw[..] == all[..], "the complete segment holds every byte");
        assert_eq!(pool.idle(), 0);
        drop((up, object));
        assert_eq!(pool.idle(), 1, "its buffer goes back to the pool with the last view of the object");
    }

    /// Journal appends of a synchronous stream: small cuts that often begin
    /// in the block just compressed, and sometimes in one before it.
    #[test]
    fn journal_cuts_read_back_across_compressed_and_staged_bytes() {
        let mut s = OpenSegment::new(TimelineId(1), SegNo(4), seg(), &[], true);
        let mut all = Vec::new();
        let now = Instant::now();
        let mut i = 0u32;
        while !s.is_full() {
            let n = s.room().min(1 + (i as usize * 4_241) % 30_000);
            let chunk = bytes(n, i);
            s.append(&chunk, now);
            all.extend_from_slice(&chunk);
            if i.is_multiple_of(3) || i.is_multiple_of(11) {
                let c = s.cut_pending().unwrap();
                assert_eq!(&c.raw[..], &all[c.from as usize..c.to as usize], "cut {}..{}", c.from, c.to);
                assert_eq!(c.crc, crc32fast::hash(&c.raw));
            }
            i += 1;
        }
        let (up, _) = s.into_complete(None);
        let (object, crc) = encode(&up, None);
        assert_eq!(crc, crc32fast::hash(&all));
        assert!(decoded(&object).1[..] == all[..]);
    }

    /// A summary too large for the room before the blocks costs a copy, not
    /// a wrong object.
    #[test]
    fn a_summary_larger_than_the_head_room_still_makes_a_whole_object() {
        let mut s = OpenSegment::new(TimelineId(1), SegNo(1), seg(), &[], true);
        let all = bytes(seg().bytes() as usize, 5);
        s.append(&all, Instant::now());
        let point = |k: usize| object::RestorePoint {
            name: format!("point-{k:0>40}"),
            lsn: Lsn(1),
            end_lsn: Lsn(2),
            time_us: 3,
        };
        s.pending_summary_mut().restore_points = (0..200).map(point).collect();
        let (up, _) = s.into_complete(None);
        let (object, _) = encode(&up, None);
        let (h, raw) = decoded(&object);
        assert_eq!(h.summary.restore_points.len(), 200);
        assert!(raw[..] == all[..]);
    }
}
