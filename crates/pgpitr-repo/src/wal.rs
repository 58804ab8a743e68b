//! Where WAL lives in the repository, and what ranges it covers.
//!
//! ```text
//! wal/<TLI>/<LOG>/<SEGMENT>                     a complete segment (one object)
//! wal/<TLI>/<LOG>/<SEGMENT>.<FROM>-<TO>.part    bytes FROM..TO (segment offsets,
//!                                               8 hex digits) of an unfinished one
//! wal/<TLI>/<LOG>/<SEGMENT>.<FROM>.journal      bytes from FROM on, as appended
//!                                               frames (synchronous mode, local)
//! timelines/<TLI>.history                       timeline history file, verbatim
//! ```
//!
//! `<LOG>` is the log ID, the middle 8 hex digits of the segment's name: a
//! directory per 4 GiB of WAL, so that a range of WAL is listed without the
//! rest, and a store that keeps keys in a tree (s3s-fs, a file system)
//! reads only that directory ([`Storage::list_shallow`]). Repositories of
//! format 1 kept every object of a timeline in one directory; they are read
//! and written through [`crate::flat`], which maps those keys to these.
//!
//! Pieces exist so that WAL is durable within a second even when a segment
//! takes hours to fill. Together they start at offset 0 of their segment
//! and follow each other without gaps; once the complete segment is stored
//! its pieces are redundant and are deleted. While the segment fills, the
//! stream merges stored pieces into larger ones (a merged piece is an
//! ordinary piece with a wider range), storing the merged one before
//! deleting what it replaces. Readers therefore take a segment's *cover*:
//! each object that reaches further than those before it. An object inside
//! the cover (what an interrupted merge left) is never used for its bytes,
//! only checked against them.
//!
//! A journal is a piece that grows: each frame is a complete object
//! ([`object::decode_journal`]), appended and synced before it is reported.
//! Its end is known only by reading it, so [`scan`] reads the journals of
//! unfinished segments (one per open segment, normally).

use crate::object::{self, JournalFrames, ObjectHeader, WalSummary};
use crate::{RepoError, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::{ObjectMeta, Storage};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use std::collections::BTreeMap;

pub const PREFIX: &str = "wal/";
/// Where timeline history files are kept.
pub const HISTORY_PREFIX: &str = "timelines/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalObjectKind {
    Segment,
    /// Offsets within the segment: `from..to`.
    Piece {
        from: u32,
        to: u32,
    },
    /// Offsets `from..to`; `to` is known once the journal was read
    /// ([`resolve_journal`]), and equals `from` until then.
    Journal {
        from: u32,
        to: u32,
    },
}

/// One stored WAL object, identified by its key alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalObjectId {
    pub tli: TimelineId,
    pub segno: SegNo,
    pub kind: WalObjectKind,
}

impl WalObjectId {
    pub fn segment(tli: TimelineId, segno: SegNo) -> Self {
        WalObjectId { tli, segno, kind: WalObjectKind::Segment }
    }

    pub fn piece(tli: TimelineId, segno: SegNo, from: u32, to: u32) -> Self {
        WalObjectId { tli, segno, kind: WalObjectKind::Piece { from, to } }
    }

    /// A journal starting at segment offset `from`, not yet read.
    pub fn journal(tli: TimelineId, segno: SegNo, from: u32) -> Self {
        WalObjectId { tli, segno, kind: WalObjectKind::Journal { from, to: from } }
    }

    pub fn key(&self, seg: WalSegSize) -> String {
        let dir = log_dir(self.tli, self.segno.0 / seg.segments_per_xlogid());
        let name = WalFileName::segment(self.tli, self.segno).to_name(seg);
        match self.kind {
            WalObjectKind::Segment => format!("{dir}{name}"),
            WalObjectKind::Piece { from, to } => format!("{dir}{name}.{from:08X}-{to:08X}.part"),
            WalObjectKind::Journal { from, .. } => format!("{dir}{name}.{from:08X}.journal"),
        }
    }

    /// The same object, whatever a journal's end: what names it in storage.
    pub fn same_object(&self, other: &WalObjectId) -> bool {
        match (self.kind, other.kind) {
            (WalObjectKind::Journal { from: a, .. }, WalObjectKind::Journal { from: b, .. }) => {
                self.tli == other.tli && self.segno == other.segno && a == b
            }
            _ => self == other,
        }
    }

    /// Sort order within a timeline: segment by segment, a complete object
    /// first, then pieces and journals by offset.
    pub fn order(&self) -> (SegNo, bool, u32, u32) {
        match self.kind {
            WalObjectKind::Segment => (self.segno, false, 0, 0),
            WalObjectKind::Piece { from, to } | WalObjectKind::Journal { from, to } => (self.segno, true, from, to),
        }
    }

    /// Parses a key made by [`WalObjectId::key`]; anything else is `None`.
    pub fn parse(key: &str, seg: WalSegSize) -> Option<Self> {
        let rest = key.strip_prefix(PREFIX)?;
        let (dir, rest) = rest.split_once('/')?;
        let (log, file) = rest.split_once('/')?;
        if dir.len() != 8 || log.len() != 8 || file.get(8..16).is_none_or(|l| l != log) {
            return None;
        }
        let tli_dir = u32::from_str_radix(dir, 16).ok()?;
        let (name, kind) = match file.split_once('.') {
            None => (file, WalObjectKind::Segment),
            Some((name, suffix)) if suffix.ends_with(".journal") => {
                let f = suffix.strip_suffix(".journal")?;
                let from = u32::from_str_radix(f, 16).ok().filter(|_| f.len() == 8)?;
                if from as u64 >= seg.bytes() {
                    return None;
                }
                (name, WalObjectKind::Journal { from, to: from })
            }
            Some((name, suffix)) => {
                let range = suffix.strip_suffix(".part")?;
                let (f, t) = range.split_once('-')?;
                if f.len() != 8 || t.len() != 8 {
                    return None;
                }
                let (from, to) = (u32::from_str_radix(f, 16).ok()?, u32::from_str_radix(t, 16).ok()?);
                if from >= to || to as u64 > seg.bytes() {
                    return None;
                }
                (name, WalObjectKind::Piece { from, to })
            }
        };
        match WalFileName::parse(name, seg).ok()? {
            WalFileName::Segment { tli, segno } if tli.0 == tli_dir => Some(WalObjectId { tli, segno, kind }),
            _ => None,
        }
    }

    /// The LSN range the object holds.
    pub fn range(&self, seg: WalSegSize) -> (Lsn, Lsn) {
        let base = self.segno.0 * seg.bytes();
        match self.kind {
            WalObjectKind::Segment => (Lsn(base), Lsn(base + seg.bytes())),
            WalObjectKind::Piece { from, to } | WalObjectKind::Journal { from, to } => {
                (Lsn(base + from as u64), Lsn(base + to as u64))
            }
        }
    }
}

pub fn history_key(tli: TimelineId) -> String {
    format!("{HISTORY_PREFIX}{:08X}.history", tli.0)
}

/// The directory of one log ID (4 GiB of WAL) of a timeline.
pub fn log_dir(tli: TimelineId, log: u64) -> String {
    format!("{PREFIX}{:08X}/{log:08X}/", tli.0)
}

/// The directory of a timeline's log directories.
pub fn timeline_dir(tli: TimelineId) -> String {
    format!("{PREFIX}{:08X}/", tli.0)
}

/// Everything stored for one timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineWal {
    /// The cover, sorted by (segment, kind); pieces of a segment in offset
    /// order, each reaching further than the one before.
    pub objects: Vec<(WalObjectId, ObjectMeta)>,
    /// Pieces and journals wholly inside the cover of their segment: what an
    /// interrupted merge left, to check against the cover and delete.
    pub covered: Vec<(WalObjectId, ObjectMeta)>,
    /// Merged, sorted, non-overlapping covered ranges.
    pub ranges: Vec<(Lsn, Lsn)>,
}

impl TimelineWal {
    pub fn start(&self) -> Option<Lsn> {
        self.ranges.first().map(|r| r.0)
    }

    pub fn end(&self) -> Option<Lsn> {
        self.ranges.last().map(|r| r.1)
    }

    /// Holes between covered ranges.
    pub fn gaps(&self) -> Vec<(Lsn, Lsn)> {
        self.ranges.windows(2).map(|w| (w[0].1, w[1].0)).collect()
    }

    /// True when every byte of `from..to` is stored.
    pub fn covers(&self, from: Lsn, to: Lsn) -> bool {
        from >= to || self.ranges.iter().any(|&(s, e)| s <= from && to <= e)
    }

    /// The newest object (by LSN) that is not redundant.
    pub fn last_object(&self) -> Option<&(WalObjectId, ObjectMeta)> {
        self.objects.last()
    }
}

/// Lists all WAL objects, grouped per timeline, with their coverage.
/// Pieces made redundant by a complete segment are left out of `objects`
/// (they are leftovers awaiting deletion) and returned separately.
pub async fn scan(
    storage: &dyn Storage,
    seg: WalSegSize,
) -> Result<(BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>)> {
    let mut logs = Vec::new();
    for tl in storage.list_dirs(PREFIX).await? {
        logs.extend(storage.list_dirs(&tl).await?);
    }
    scan_prefixes(storage, seg, &logs).await
}

/// The log directories that hold the WAL of `tli` in `from..to`, so a
/// range is listed without the rest.
pub fn range_prefixes(tli: TimelineId, seg: WalSegSize, from: Lsn, to: Lsn) -> Vec<String> {
    let per = seg.segments_per_xlogid();
    let last = Lsn(to.0.saturating_sub(1).max(from.0));
    let (first, last) = (from.segment_number(seg).0 / per, last.segment_number(seg).0 / per);
    (first..=last).map(|log| log_dir(tli, log)).collect()
}

/// [`scan`] of the keys under `prefixes` only, each within one log
/// directory (listed a few at a time, each without what lies beside it).
pub async fn scan_prefixes(
    storage: &dyn Storage,
    seg: WalSegSize,
    prefixes: &[String],
) -> Result<(BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>)> {
    const AT_ONCE: usize = 8;
    let mut listed = Vec::new();
    for chunk in prefixes.chunks(AT_ONCE) {
        listed.extend(futures_util::future::try_join_all(chunk.iter().map(|p| storage.list_shallow(p))).await?);
    }
    of_listing(storage, seg, listed.into_iter().flatten().collect()).await
}

/// [`scan`] with one listing of all WAL: for a repository of format 1,
/// whose timelines are each one directory ([`crate::flat`]).
pub async fn scan_whole(
    storage: &dyn Storage,
    seg: WalSegSize,
) -> Result<(BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>)> {
    of_listing(storage, seg, storage.list(PREFIX).await?).await
}

/// The timelines' WAL from a listing of it (journals read for their ends).
async fn of_listing(
    storage: &dyn Storage,
    seg: WalSegSize,
    listed: Vec<ObjectMeta>,
) -> Result<(BTreeMap<TimelineId, TimelineWal>, Vec<ObjectMeta>)> {
    let mut per_tli: BTreeMap<TimelineId, Vec<(WalObjectId, ObjectMeta)>> = BTreeMap::new();
    for meta in listed {
        if let Some(id) = WalObjectId::parse(&meta.key, seg) {
            per_tli.entry(id.tli).or_default().push((id, meta));
        }
    }
    let mut leftovers = Vec::new();
    let mut out = BTreeMap::new();
    for (tli, objs) in per_tli {
        let complete: std::collections::HashSet<SegNo> =
            objs.iter().filter(|(id, _)| id.kind == WalObjectKind::Segment).map(|(id, _)| id.segno).collect();
        let mut kept = Vec::with_capacity(objs.len());
        for (mut id, meta) in objs {
            if id.kind != WalObjectKind::Segment && complete.contains(&id.segno) {
                leftovers.push(meta);
                continue;
            }
            if let WalObjectKind::Journal { .. } = id.kind {
                match resolve_journal(storage, seg, id).await {
                    Ok(Some((resolved, _))) => id = resolved,
                    // Empty (being created), or deleted since the listing
                    // because its segment was completed meanwhile.
                    Ok(None) => continue,
                    Err(RepoError::Storage(e)) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
            kept.push((id, meta));
        }
        let (kept, covered) = split_cover(kept);
        let ranges = ranges_of(&kept, seg);
        out.insert(tli, TimelineWal { objects: kept, covered, ranges });
    }
    Ok((out, leftovers))
}

/// The merged ranges a cover holds.
fn ranges_of(cover: &[(WalObjectId, ObjectMeta)], seg: WalSegSize) -> Vec<(Lsn, Lsn)> {
    let mut ranges: Vec<(Lsn, Lsn)> = Vec::new();
    for (id, _) in cover {
        let (s, e) = id.range(seg);
        match ranges.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => ranges.push((s, e)),
        }
    }
    ranges
}

impl TimelineWal {
    /// Adds the listing of other log directories of the same timeline.
    pub fn merge(&mut self, other: TimelineWal, seg: WalSegSize) {
        self.objects.extend(other.objects);
        self.objects.sort_by_key(|(id, _)| id.order());
        self.covered.extend(other.covered);
        self.covered.sort_by_key(|(id, _)| id.order());
        self.ranges = ranges_of(&self.objects, seg);
    }
}

/// Objects with what came with them (listing metadata, or what was read).
pub type Listed<M> = Vec<(WalObjectId, M)>;

/// Splits one timeline's objects into the cover and what lies wholly inside
/// it. Per segment, objects are taken by offset (the widest first at equal
/// offsets); one that ends no further than those before it is covered.
/// Both come back in [`WalObjectId::order`].
pub fn split_cover<M>(mut objs: Vec<(WalObjectId, M)>) -> (Listed<M>, Listed<M>) {
    objs.sort_by_key(|(id, _)| {
        let (segno, partial, from, to) = id.order();
        (segno, partial, from, std::cmp::Reverse(to))
    });
    let (mut cover, mut covered) = (Vec::with_capacity(objs.len()), Vec::new());
    // Only pieces and segments make others redundant: a journal's end is read
    // from its file, and a frame can be there, undurable, after its append
    // failed (its bytes then went into a piece, which must stay).
    let mut reach: Option<(SegNo, u32)> = None;
    for (id, meta) in objs {
        let (segno, partial, _, to) = id.order();
        let inside = partial && reach.is_some_and(|(s, r)| s == segno && to <= r);
        if inside {
            covered.push((id, meta));
            continue;
        }
        if !matches!(id.kind, WalObjectKind::Journal { .. }) {
            reach = Some((segno, if partial { to } else { u32::MAX }));
        }
        cover.push((id, meta));
    }
    covered.sort_by_key(|(id, _)| id.order());
    (cover, covered)
}

/// Reads a journal: its id with the end filled in and its valid frames,
/// or `None` when it holds no valid frame (yet).
pub async fn resolve_journal(
    storage: &dyn Storage,
    seg: WalSegSize,
    id: WalObjectId,
) -> Result<Option<(WalObjectId, JournalFrames)>> {
    let WalObjectKind::Journal { from, .. } = id.kind else {
        return Ok(None);
    };
    let buf = storage.get(&id.key(seg)).await?;
    let start = id.range(seg).0;
    let frames = object::decode_journal(&buf, id.tli, start);
    let end = frames.end(start);
    if end == start {
        return Ok(None);
    }
    let to = from as u64 + start.distance_to(end);
    if to > seg.bytes() {
        return Err(RepoError::Corrupt {
            location: storage.describe(),
            key: id.key(seg),
            reason: format!("journal runs past its segment to offset {to}"),
        });
    }
    let kind = WalObjectKind::Journal { from, to: to as u32 };
    Ok(Some((WalObjectId { kind, ..id }, frames)))
}

/// Fetches and verifies one WAL object.
pub async fn read_object(storage: &dyn Storage, key: &str) -> Result<(ObjectHeader, Bytes)> {
    read_object_pooled(storage, key, None).await
}

/// [`read_object`], decoding into a buffer from `pool` (see
/// [`object::decode_pooled`]).
pub async fn read_object_pooled(
    storage: &dyn Storage,
    key: &str,
    pool: Option<&object::BufPool>,
) -> Result<(ObjectHeader, Bytes)> {
    let buf = storage.get(key).await?;
    object::decode_pooled(&buf, pool).map_err(|e| RepoError::Corrupt {
        location: storage.describe(),
        key: key.to_string(),
        reason: e.0,
    })
}

/// Reads only the header (and summary) of a WAL object with ranged reads.
/// A journal is read whole: its header covers all its valid frames.
pub async fn read_header(storage: &dyn Storage, key: &str) -> Result<ObjectHeader> {
    let corrupt = |reason: String| RepoError::Corrupt { location: storage.describe(), key: key.to_string(), reason };
    if key.ends_with(".journal") {
        let buf = storage.get(key).await?;
        let first = object::decode_header(&buf).map_err(|e| corrupt(format!("journal holds no valid WAL: {}", e.0)))?;
        let frames = object::decode_journal(&buf, first.tli, first.start);
        let mut crc = crc32fast::Hasher::new();
        frames.frames.iter().for_each(|(_, raw)| crc.update(raw));
        return Ok(ObjectHeader {
            codec: object::Codec::None,
            tli: first.tli,
            start: first.start,
            end: frames.end(first.start),
            raw_crc: crc.finalize(),
            stored_len: frames.valid_len as u64,
            summary: frames.summary(),
            payload_offset: 0,
        });
    }
    let fixed = storage.get_range(key, 0..object::HEADER_LEN as u64).await?;
    let need = object::header_len(&fixed).map_err(|e| corrupt(e.0))?;
    let buf = if need > fixed.len() { storage.get_range(key, 0..need as u64).await? } else { fixed };
    object::decode_header(&buf).map_err(|e| corrupt(e.0))
}

/// A segment rebuilt from the repository.
#[derive(Debug, Clone)]
pub struct AssembledSegment {
    /// Exactly `wal_segment_size` bytes; zero past `valid_len`.
    pub data: Bytes,
    /// How many leading bytes are real WAL (the whole segment when complete).
    pub valid_len: u64,
    pub complete: bool,
    /// The objects whose bytes were used, in offset order, with their
    /// summaries (journals with their end as read).
    pub used: Vec<(WalObjectId, WalSummary)>,
    /// CRC-32 of `data`, when one stored segment held it (checked when it
    /// was decoded).
    pub raw_crc: Option<u32>,
}

/// Objects of one segment read at once.
const SEGMENT_READS: usize = 16;

/// One object of a segment, read and verified: its id (a journal's with
/// its end), summary and raw bytes; `None` for a journal with no frame.
async fn read_piece(
    storage: &dyn Storage,
    seg: WalSegSize,
    id: WalObjectId,
) -> Result<Option<(WalObjectId, WalSummary, Bytes)>> {
    let key = id.key(seg);
    if let WalObjectKind::Journal { .. } = id.kind {
        // Read now, not as listed: it may have grown since.
        return Ok(resolve_journal(storage, seg, id).await?.map(|(id, frames)| {
            let raw: Bytes = frames.frames.iter().map(|(_, r)| &r[..]).collect::<Vec<_>>().concat().into();
            (id, frames.summary(), raw)
        }));
    }
    let (header, raw) = read_object(storage, &key).await?;
    let (from, to) = id.range(seg);
    if raw.len() as u64 != from.distance_to(to) {
        return Err(RepoError::Corrupt {
            location: storage.describe(),
            key,
            reason: format!("object holds {} bytes, its name says {}", raw.len(), from.distance_to(to)),
        });
    }
    Ok(Some((id, header.summary, raw)))
}

/// Rebuilds segment `segno` of `tli` byte for byte: from its complete object
/// if there is one, otherwise from its cover (see [`split_cover`]),
/// zero-filled past the durable end as Postgres expects of a partial
/// segment. The objects are read in parallel, those inside the cover too:
/// where any two hold the same offset with different bytes, that is an
/// error naming both. `None` when nothing of it is stored.
pub async fn assemble_segment(
    storage: &dyn Storage,
    seg: WalSegSize,
    tl: &TimelineWal,
    segno: SegNo,
) -> Result<Option<AssembledSegment>> {
    let objs: Vec<WalObjectId> =
        tl.objects.iter().chain(&tl.covered).map(|(id, _)| *id).filter(|id| id.segno == segno).collect();
    if let Some(id) = objs.iter().find(|id| id.kind == WalObjectKind::Segment) {
        // Listed: gone since is an error (the caller may list again).
        return complete_object(storage, seg, *id, None).await.map(Some);
    }
    if objs.is_empty() {
        return Ok(None);
    }
    let pieces: Vec<(WalObjectId, WalSummary, Bytes)> = futures_util::stream::iter(objs)
        .map(|id| read_piece(storage, seg, id))
        .buffered(SEGMENT_READS)
        .try_filter_map(|p| async move { Ok(p) })
        .try_collect()
        .await?;
    // Journals are split by their ends as read just now.
    let (cover, others) = split_cover(pieces.into_iter().map(|(id, sum, raw)| (id, (sum, raw))).collect());
    let mut buf = BytesMut::zeroed(seg.bytes() as usize);
    let mut valid = 0u64;
    // Which object gave each run of bytes, to name it if another differs.
    let mut given: Vec<(u64, u64, WalObjectId)> = Vec::new();
    let mut used = Vec::new();
    for (id, (summary, raw)) in cover {
        let (from, to) = offsets(seg, &id);
        if from > valid {
            // A hole inside the segment: only the contiguous prefix is usable.
            break;
        }
        check_same(storage, seg, &buf, valid, &given, id, from, &raw)?;
        if to <= valid {
            // Inside a journal before it: its bytes are there already.
            continue;
        }
        buf[valid as usize..to as usize].copy_from_slice(&raw[(valid - from) as usize..]);
        given.push((valid, to, id));
        valid = to;
        used.push((id, summary));
    }
    for (id, (_, raw)) in &others {
        let (from, _) = offsets(seg, id);
        check_same(storage, seg, &buf, valid, &given, *id, from, raw)?;
    }
    if valid == 0 {
        return Ok(None);
    }
    Ok(Some(AssembledSegment { data: buf.freeze(), valid_len: valid, complete: false, used, raw_crc: None }))
}

/// Segment `segno` of `tli` from its complete object, verified; `None`
/// when it is not stored complete.
pub async fn read_complete(
    storage: &dyn Storage,
    seg: WalSegSize,
    tli: TimelineId,
    segno: SegNo,
    pool: Option<&object::BufPool>,
) -> Result<Option<AssembledSegment>> {
    match complete_object(storage, seg, WalObjectId::segment(tli, segno), pool).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn complete_object(
    storage: &dyn Storage,
    seg: WalSegSize,
    id: WalObjectId,
    pool: Option<&object::BufPool>,
) -> Result<AssembledSegment> {
    let key = id.key(seg);
    let (header, raw) = read_object_pooled(storage, &key, pool).await?;
    if raw.len() as u64 != seg.bytes() {
        return Err(RepoError::Corrupt {
            location: storage.describe(),
            key,
            reason: format!("segment holds {} bytes, expected {}", raw.len(), seg.bytes()),
        });
    }
    let used = vec![(id, header.summary)];
    Ok(AssembledSegment { data: raw, valid_len: seg.bytes(), complete: true, used, raw_crc: Some(header.raw_crc) })
}

/// Segment offsets of a piece or journal.
fn offsets(seg: WalSegSize, id: &WalObjectId) -> (u64, u64) {
    let base = id.segno.0 * seg.bytes();
    let (from, to) = id.range(seg);
    (from.0 - base, to.0 - base)
}

/// Checks that `raw`, at segment offset `from`, agrees with the bytes
/// already placed in `buf` (up to `valid`).
#[allow(clippy::too_many_arguments)]
fn check_same(
    storage: &dyn Storage,
    seg: WalSegSize,
    buf: &[u8],
    valid: u64,
    given: &[(u64, u64, WalObjectId)],
    id: WalObjectId,
    from: u64,
    raw: &[u8],
) -> Result<()> {
    let end = (from + raw.len() as u64).min(valid);
    if end <= from {
        return Ok(());
    }
    let (a, b) = (&buf[from as usize..end as usize], &raw[..(end - from) as usize]);
    let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) else { return Ok(()) };
    let at = from + at as u64;
    let other = given.iter().find(|(f, t, _)| *f <= at && at < *t).map_or_else(|| "?".into(), |(_, _, o)| o.key(seg));
    Err(RepoError::Corrupt {
        location: storage.describe(),
        key: id.key(seg),
        reason: format!("its bytes at segment offset {at:#X} differ from those of {other}, which covers the same WAL"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegSize {
        WalSegSize::new(16 << 20).unwrap()
    }

    #[test]
    fn keys_round_trip() {
        let ids = [
            WalObjectId::segment(TimelineId(1), SegNo(0x1FF)),
            WalObjectId::piece(TimelineId(0xA), SegNo(3), 0, 0x2000),
            WalObjectId::piece(TimelineId(2), SegNo(3), 0x2000, 0x100_0000),
        ];
        for id in ids {
            let k = id.key(seg());
            assert_eq!(WalObjectId::parse(&k, seg()), Some(id), "{k}");
        }
        assert_eq!(ids[0].key(seg()), "wal/00000001/00000001/0000000100000001000000FF");
        assert_eq!(ids[1].key(seg()), "wal/0000000A/00000000/0000000A0000000000000003.00000000-00002000.part");
        assert_eq!(ids[1].range(seg()), (Lsn(0x300_0000), Lsn(0x300_2000)));
        let j = WalObjectId::journal(TimelineId(3), SegNo(0x10), 0x2000);
        assert_eq!(j.key(seg()), "wal/00000003/00000000/000000030000000000000010.00002000.journal");
        assert_eq!(WalObjectId::parse(&j.key(seg()), seg()), Some(j));
        let grown = WalObjectId { kind: WalObjectKind::Journal { from: 0x2000, to: 0x5000 }, ..j };
        assert_eq!(grown.key(seg()), j.key(seg()), "the end is not in the key");
        assert!(grown.same_object(&j) && !grown.same_object(&WalObjectId::journal(TimelineId(3), SegNo(0x10), 0)));
        assert_eq!(grown.range(seg()).1.0 - grown.range(seg()).0.0, 0x3000);
        // 1 GiB segments: four to a log ID.
        let big = WalSegSize::new(1 << 30).unwrap();
        assert_eq!(
            WalObjectId::segment(TimelineId(1), SegNo(9)).key(big),
            "wal/00000001/00000002/000000010000000200000001"
        );
        assert_eq!(history_key(TimelineId(2)), "timelines/00000002.history");
        assert_eq!(
            range_prefixes(TimelineId(1), seg(), Lsn(0xFF00_0000), Lsn(0x1_0000_0001)),
            ["wal/00000001/00000000/", "wal/00000001/00000001/"]
        );
    }

    #[test]
    fn foreign_keys_are_ignored() {
        for k in [
            "wal/00000001.history",
            "timelines/00000001.history",
            "wal/00000001/000000010000000000000001",
            "wal/00000001/00000000/000000020000000000000001",
            "wal/00000001/00000001/000000010000000000000001",
            "wal/00000001/00000000/000000010000000000000001.00002000-00001000.part",
            "wal/00000001/00000000/000000010000000000000001.00000000-01000001.part",
            "wal/00000001/00000000/000000010000000000000001.tmp",
            "wal/00000001/00000000/000000010000000000000001.01000000.journal",
            "wal/00000001/00000000/000000010000000000000001.0000001.journal",
            "wal/00000001/00000000/000000010000000000000001.journal",
            "backups/x",
        ] {
            assert_eq!(WalObjectId::parse(k, seg()), None, "{k}");
        }
    }

    #[test]
    fn coverage_and_gaps() {
        let tl = TimelineWal { ranges: vec![(Lsn(0), Lsn(100)), (Lsn(200), Lsn(300))], ..Default::default() };
        assert_eq!(tl.gaps(), vec![(Lsn(100), Lsn(200))]);
        assert!(tl.covers(Lsn(10), Lsn(100)));
        assert!(!tl.covers(Lsn(10), Lsn(201)));
        assert_eq!(tl.end(), Some(Lsn(300)));
    }
}
