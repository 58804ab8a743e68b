//! The segment being filled: its bytes so far, which of them have been
//! handed to storage as parts, and what the scanner found in them.

use bytes::{Bytes, BytesMut};
use pgpitr_repo::object::{Chunk, Piece, WalSummary};
use pgpitr_repo::wal::WalObjectId;
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Where a part's compressed block appears once its upload task made it, so
/// the complete segment can reuse it instead of compressing again.
pub type ChunkCell = Arc<OnceLock<Chunk>>;

/// A part of the segment: its offsets and (maybe) its compressed block.
#[derive(Debug, Clone)]
pub struct PartChunk {
    pub from: u32,
    pub to: u32,
    pub cell: ChunkCell,
}

#[derive(Debug)]
pub struct OpenSegment {
    pub tli: TimelineId,
    pub segno: SegNo,
    seg: WalSegSize,
    /// Bytes `0..buf.len()` of the segment.
    buf: BytesMut,
    /// Offset up to which parts have been submitted.
    cut: usize,
    /// Parts already submitted (or found stored at resume), for clean-up
    /// once the complete segment is stored.
    pub parts: Vec<WalObjectId>,
    /// Their ranges and compressed blocks, in offset order.
    chunks: Vec<PartChunk>,
    /// What the submitted parts contain.
    parts_summary: WalSummary,
    /// What the bytes past `cut` contain.
    pending_summary: WalSummary,
    /// When the oldest byte past `cut` arrived.
    pending_since: Option<Instant>,
}

impl OpenSegment {
    /// A segment whose first `prefix.len()` bytes are known: `stored` when
    /// they are this segment's stored parts; otherwise (a prefix inherited
    /// from the parent timeline) they go into this segment's first part, so
    /// that parts always start at offset 0.
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
        OpenSegment {
            tli,
            segno,
            seg,
            buf,
            cut: if stored { prefix.len() } else { 0 },
            parts: Vec::new(),
            chunks: Vec::new(),
            parts_summary: WalSummary::default(),
            pending_summary: WalSummary::default(),
            pending_since: (!stored && !prefix.is_empty()).then(Instant::now),
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
    }

    pub fn pending_summary_mut(&mut self) -> &mut WalSummary {
        &mut self.pending_summary
    }

    /// Records what already-stored parts contain (at resume).
    pub fn adopt_stored_part(&mut self, id: WalObjectId, summary: &WalSummary) {
        if let pgpitr_repo::wal::WalObjectKind::Part { from, to } = id.kind {
            self.chunks.push(PartChunk { from, to, cell: ChunkCell::default() });
        }
        self.parts.push(id);
        self.parts_summary.merge(summary);
    }

    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.cut
    }

    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Everything past the last cut, as a part to store, with the cell its
    /// upload fills with the compressed block.
    pub fn cut_part(&mut self) -> Option<(WalObjectId, Lsn, Bytes, WalSummary, ChunkCell)> {
        let c = self.cut_pending()?;
        let id = WalObjectId::part(self.tli, self.segno, c.from, c.to);
        self.parts.push(id);
        let cell = ChunkCell::default();
        self.chunks.push(PartChunk { from: c.from, to: c.to, cell: cell.clone() });
        Some((id, c.start, c.raw, c.summary, cell))
    }

    /// Everything past the last cut, for the caller to store and to record
    /// in [`OpenSegment::parts`].
    pub fn cut_pending(&mut self) -> Option<Cut> {
        if self.pending_bytes() == 0 {
            return None;
        }
        let (from, to) = (self.cut, self.buf.len());
        let raw = Bytes::copy_from_slice(&self.buf[from..to]);
        let summary = std::mem::take(&mut self.pending_summary);
        self.parts_summary.merge(&summary);
        self.cut = to;
        self.pending_since = None;
        Some(Cut { from: from as u32, to: to as u32, start: Lsn(self.start_lsn().0 + from as u64), raw, summary })
    }

    /// The whole segment, once full, as one object; consumes the buffer.
    pub fn into_complete(mut self) -> Complete {
        debug_assert!(self.is_full());
        let mut summary = std::mem::take(&mut self.parts_summary);
        summary.merge(&self.pending_summary);
        Complete {
            id: WalObjectId::segment(self.tli, self.segno),
            start: self.start_lsn(),
            raw: self.buf.freeze(),
            summary,
            superseded: self.parts,
            chunks: self.chunks,
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
    /// Parts made redundant once it is stored.
    pub superseded: Vec<WalObjectId>,
    pub chunks: Vec<PartChunk>,
}

/// What the segment's payload is made of: the parts' own blocks where their
/// uploads made them, raw bytes to compress for the rest (resumed parts,
/// races, the tail).
pub fn segment_pieces<'a>(raw: &'a [u8], parts: &'a [PartChunk]) -> Vec<Piece<'a>> {
    let mut out = Vec::with_capacity(parts.len() + 1);
    let mut at = 0usize;
    for p in parts {
        let (from, to) = (p.from as usize, p.to as usize);
        if from != at || to > raw.len() {
            continue; // not contiguous with what came before: recompress below
        }
        match (p.cell.get(), out.last_mut()) {
            (Some(c), _) if c.raw_len as usize == to - from => out.push(Piece::Stored(c)),
            // Neighbouring raw ranges compress as one run of blocks.
            (_, Some(Piece::Raw(prev))) => *prev = &raw[at - prev.len()..to],
            _ => out.push(Piece::Raw(&raw[from..to])),
        }
        at = to;
    }
    if at < raw.len() {
        match out.last_mut() {
            Some(Piece::Raw(prev)) => *prev = &raw[at - prev.len()..],
            _ => out.push(Piece::Raw(&raw[at..])),
        }
    }
    out
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn segment_reuses_part_blocks_and_compresses_the_rest() {
        let raw: Vec<u8> = (0..10_000u32).map(|i| (i % 97) as u8).collect();
        let made = pgpitr_repo::object::encode_pieces(
            TimelineId(1),
            Lsn(0),
            &[Piece::Raw(&raw[0..3000])],
            0,
            &WalSummary::default(),
            None,
        )
        .1
        .remove(0);
        let filled = ChunkCell::default();
        filled.set(made.clone()).unwrap();
        let parts = vec![
            PartChunk { from: 0, to: 3000, cell: filled },
            PartChunk { from: 3000, to: 5000, cell: ChunkCell::default() },
        ];
        let pieces = segment_pieces(&raw, &parts);
        assert_eq!(pieces.len(), 2, "the unfilled part and the tail compress as one run");
        assert!(matches!(pieces[0], Piece::Stored(c) if *c == made), "the part's own block is reused");
        assert!(matches!(pieces[1], Piece::Raw(r) if r == &raw[3000..]));
        let (obj, _) = pgpitr_repo::object::encode_pieces(
            TimelineId(1),
            Lsn(0),
            &pieces,
            crc32fast::hash(&raw),
            &WalSummary::default(),
            None,
        );
        assert_eq!(&pgpitr_repo::object::decode(&obj).unwrap().1[..], &raw[..]);
    }
}
