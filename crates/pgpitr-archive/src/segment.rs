//! The segment being filled: its bytes so far, which of them have been
//! handed to storage as pieces, and what the scanner found in them.

use crate::compact::{self, Merge, Source};
use bytes::{Bytes, BytesMut};
use pgpitr_repo::object::{Chunk, Span, WalSummary};
use pgpitr_repo::wal::{WalObjectId, WalObjectKind};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

/// Where a piece's compressed block appears once its upload task made it, so
/// the complete segment can reuse it instead of compressing again.
pub type ChunkCell = Arc<OnceLock<Chunk>>;

/// A piece of the segment: its offsets and (maybe) its compressed block.
#[derive(Debug, Clone)]
pub struct PieceChunk {
    pub from: u32,
    pub to: u32,
    pub cell: ChunkCell,
}

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
    /// CRC-32 of its raw bytes, known for merged pieces.
    crc: Option<u32>,
}

#[derive(Debug)]
pub struct OpenSegment {
    pub tli: TimelineId,
    pub segno: SegNo,
    seg: WalSegSize,
    /// Bytes `0..buf.len()` of the segment.
    buf: BytesMut,
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
    /// CRC-32 of `buf`, hashed as bytes arrive, while they are in cache:
    /// hashing the complete segment later reads it back from memory.
    crc: crc32fast::Hasher,
}

impl OpenSegment {
    /// A segment whose first `prefix.len()` bytes are known: `stored` when
    /// they are this segment's stored pieces; otherwise (a prefix inherited
    /// from the parent timeline) they go into this segment's first piece, so
    /// that pieces always start at offset 0.
    pub fn new(tli: TimelineId, segno: SegNo, seg: WalSegSize, prefix: &[u8], stored: bool) -> Self {
        Self::new_in(BytesMut::with_capacity(seg.bytes() as usize), tli, segno, seg, prefix, stored)
    }

    /// Like [`OpenSegment::new`], reusing `buf` (cleared) so that a busy
    /// stream does not allocate and fault in a fresh segment buffer each time.
    pub fn new_in(
        mut buf: BytesMut,
        tli: TimelineId,
        segno: SegNo,
        seg: WalSegSize,
        prefix: &[u8],
        stored: bool,
    ) -> Self {
        buf.clear();
        buf.reserve(seg.bytes() as usize);
        buf.extend_from_slice(prefix);
        let mut crc = crc32fast::Hasher::new();
        crc.update(prefix);
        OpenSegment {
            tli,
            segno,
            seg,
            buf,
            cut: if stored { prefix.len() } else { 0 },
            held: Vec::new(),
            others: Vec::new(),
            pieces_summary: WalSummary::default(),
            pending_summary: WalSummary::default(),
            pending_since: (!stored && !prefix.is_empty()).then(Instant::now),
            crc,
        }
    }

    pub fn start_lsn(&self) -> Lsn {
        Lsn(self.segno.0 * self.seg.bytes())
    }

    /// The LSN just past the bytes held.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.start_lsn().0 + self.buf.len() as u64)
    }

    /// Bytes held, from the segment's start.
    pub fn filled(&self) -> usize {
        self.buf.len()
    }

    pub fn room(&self) -> usize {
        self.seg.bytes() as usize - self.buf.len()
    }

    pub fn is_full(&self) -> bool {
        self.room() == 0
    }

    pub fn append(&mut self, data: &[u8], now: Instant) {
        debug_assert!(data.len() <= self.room());
        if !data.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
        self.buf.extend_from_slice(data);
        self.crc.update(data);
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
        let raw =
            |r: std::ops::Range<u32>| Source::Raw(Bytes::copy_from_slice(&self.buf[r.start as usize..r.end as usize]));
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
        self.buf.len() - self.cut
    }

    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Everything past the last cut, as a piece to store, with the cell its
    /// upload fills with the compressed block. Its bytes are copied into the
    /// buffer `spare` gives, if any: a fresh allocation of megabytes is a
    /// fresh mapping whose pages fault in as they are written, every second
    /// under a steady load.
    pub fn cut_piece(
        &mut self,
        spare: impl FnOnce() -> Option<BytesMut>,
    ) -> Option<(WalObjectId, Lsn, Bytes, WalSummary, ChunkCell)> {
        let c = self.cut_pending_into(spare)?;
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
            crc: None,
        });
        Some((id, c.start, c.raw, c.summary, cell))
    }

    /// Everything past the last cut, for the caller to store and to record
    /// in [`OpenSegment::pieces`].
    pub fn cut_pending(&mut self) -> Option<Cut> {
        self.cut_pending_into(|| None)
    }

    fn cut_pending_into(&mut self, spare: impl FnOnce() -> Option<BytesMut>) -> Option<Cut> {
        if self.pending_bytes() == 0 {
            return None;
        }
        let (from, to) = (self.cut, self.buf.len());
        let raw = match spare() {
            Some(mut buf) => {
                buf.clear();
                buf.extend_from_slice(&self.buf[from..to]);
                buf.freeze()
            }
            None => Bytes::copy_from_slice(&self.buf[from..to]),
        };
        let summary = std::mem::take(&mut self.pending_summary);
        self.pieces_summary.merge(&summary);
        self.cut = to;
        self.pending_since = None;
        Some(Cut { from: from as u32, to: to as u32, start: Lsn(self.start_lsn().0 + from as u64), raw, summary })
    }

    /// The whole segment, once full, as one object; consumes the buffer.
    /// `merging` is the output of a merge cut short, deleted with the rest.
    pub fn into_complete(mut self, merging: Option<WalObjectId>) -> Complete {
        debug_assert!(self.is_full());
        let mut summary = std::mem::take(&mut self.pieces_summary);
        summary.merge(&self.pending_summary);
        let chunks = self.held.iter().map(|h| PieceChunk { from: h.from, to: h.to, cell: h.cell.clone() }).collect();
        let mut superseded: Vec<WalObjectId> = self.held.iter().map(|h| h.id).collect();
        superseded.extend(std::mem::take(&mut self.others));
        superseded.extend(merging);
        Complete {
            id: WalObjectId::segment(self.tli, self.segno),
            start: self.start_lsn(),
            raw: self.buf.freeze(),
            summary,
            superseded,
            chunks,
            crc: self.crc.finalize(),
        }
    }

    /// The bytes `0..offset` of this segment (the prefix a new timeline
    /// inherits at a switch point inside it).
    pub fn prefix(&self, offset: usize) -> &[u8] {
        &self.buf[..offset.min(self.buf.len())]
    }
}

/// Bytes `from..to` of the segment (offsets), the WAL from `start`.
pub struct Cut {
    pub from: u32,
    pub to: u32,
    pub start: Lsn,
    pub raw: Bytes,
    pub summary: WalSummary,
}

/// A full segment ready to store.
pub struct Complete {
    pub id: WalObjectId,
    pub start: Lsn,
    pub raw: Bytes,
    pub summary: WalSummary,
    /// Pieces made redundant once it is stored.
    pub superseded: Vec<WalObjectId>,
    pub chunks: Vec<PieceChunk>,
    /// CRC-32 of `raw`.
    pub crc: u32,
}

/// What the segment's payload is made of: the pieces' own blocks where their
/// uploads made them, raw bytes to compress for the rest (resumed pieces,
/// races, the tail).
pub fn segment_spans<'a>(raw: &'a [u8], pieces: &'a [PieceChunk]) -> Vec<Span<'a>> {
    let mut out = Vec::with_capacity(pieces.len() + 1);
    let mut at = 0usize;
    for p in pieces {
        let (from, to) = (p.from as usize, p.to as usize);
        if from != at || to > raw.len() {
            continue; // not contiguous with what came before: recompress below
        }
        match (p.cell.get(), out.last_mut()) {
            (Some(c), _) if c.raw_len as usize == to - from => out.push(Span::Stored(c)),
            // Neighbouring raw ranges compress as one run of blocks.
            (_, Some(Span::Raw(prev))) => *prev = &raw[at - prev.len()..to],
            _ => out.push(Span::Raw(&raw[from..to])),
        }
        at = to;
    }
    if at < raw.len() {
        match out.last_mut() {
            Some(Span::Raw(prev)) => *prev = &raw[at - prev.len()..],
            _ => out.push(Span::Raw(&raw[at..])),
        }
    }
    out
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn segment_reuses_piece_blocks_and_compresses_the_rest() {
        let raw: Vec<u8> = (0..10_000u32).map(|i| (i % 97) as u8).collect();
        let made = pgpitr_repo::object::encode_spans(
            TimelineId(1),
            Lsn(0),
            &[Span::Raw(&raw[0..3000])],
            0,
            &WalSummary::default(),
            None,
        )
        .1
        .remove(0);
        let filled = ChunkCell::default();
        filled.set(made.clone()).unwrap();
        let pieces = vec![
            PieceChunk { from: 0, to: 3000, cell: filled },
            PieceChunk { from: 3000, to: 5000, cell: ChunkCell::default() },
        ];
        let spans = segment_spans(&raw, &pieces);
        assert_eq!(spans.len(), 2, "the unfilled piece and the tail compress as one run");
        assert!(matches!(spans[0], Span::Stored(c) if *c == made), "the piece's own block is reused");
        assert!(matches!(spans[1], Span::Raw(r) if r == &raw[3000..]));
        let (obj, _) = pgpitr_repo::object::encode_spans(
            TimelineId(1),
            Lsn(0),
            &spans,
            crc32fast::hash(&raw),
            &WalSummary::default(),
            None,
        );
        assert_eq!(&pgpitr_repo::object::decode(&obj).unwrap().1[..], &raw[..]);
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
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
            let (id, ..) = s.cut_piece(|| None).unwrap();
            assert!(s.mark_stored(&id));
        }
        assert!(s.due_merge().is_none_or(|m| m.id.range(seg()).0 > piece.range(seg()).0), "not across the hole");
        s.hold_stored_piece(piece, WalSummary { commits: 1, ..Default::default() });
        let m = s.due_merge().expect("a merge is due");
        assert_eq!(m.id, WalObjectId::piece(TimelineId(1), SegNo(3), 0, 1000 + 100 * compact::STAGING as u32));
        assert_eq!(m.sources.iter().map(Source::len).sum::<u64>(), u64::from(1000 + 100 * compact::STAGING as u32));
        assert_eq!(m.summary.commits, 1, "the held piece's commits are in the merged summary");
    }
}

#[cfg(test)]
mod crc_tests {
    use super::*;

    /// The CRC hashed as bytes arrive is the complete segment's, prefix
    /// included, also in a reused buffer that held another segment.
    #[test]
    fn the_running_crc_is_the_segments() {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let prefix: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut old = BytesMut::with_capacity(1 << 20);
        old.extend_from_slice(&[0xAA; 5000]);
        let mut s = OpenSegment::new_in(old, TimelineId(2), SegNo(9), seg, &prefix, false);
        let now = Instant::now();
        let mut i = 0u32;
        while !s.is_full() {
            let n = s.room().min(1 + (i as usize * 977) % 70_000);
            let chunk: Vec<u8> = (0..n as u32).map(|j| (j ^ i) as u8).collect();
            s.append(&chunk, now);
            if i.is_multiple_of(5) {
                s.cut_pending();
            }
            i += 1;
        }
        let c = s.into_complete(None);
        assert_eq!(c.raw.len(), 1 << 20);
        assert_eq!(&c.raw[..prefix.len()], &prefix[..]);
        assert_eq!(c.crc, crc32fast::hash(&c.raw));
    }
}
