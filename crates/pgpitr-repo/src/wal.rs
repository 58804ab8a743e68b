//! Where WAL lives in the repository, and what ranges it covers.
//!
//! ```text
//! wal/<TLI>/<SEGMENT>                     a complete segment (one object)
//! wal/<TLI>/<SEGMENT>.<FROM>-<TO>.part    bytes FROM..TO (segment offsets,
//!                                         8 hex digits) of an unfinished one
//! wal/<TLI>.history                       timeline history file, verbatim
//! ```
//!
//! Parts exist so that WAL is durable within a second even when a segment
//! takes hours to fill. They always start at offset 0 of their segment and
//! follow each other without gaps; once the complete segment is stored its
//! parts are redundant and are deleted.

use crate::object::{self, ObjectHeader};
use crate::{RepoError, Result};
use bytes::{Bytes, BytesMut};
use pgpitr_storage::{ObjectMeta, Storage};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use std::collections::BTreeMap;

pub const PREFIX: &str = "wal/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalObjectKind {
    Segment,
    /// Offsets within the segment: `from..to`.
    Part {
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

    pub fn part(tli: TimelineId, segno: SegNo, from: u32, to: u32) -> Self {
        WalObjectId { tli, segno, kind: WalObjectKind::Part { from, to } }
    }

    pub fn key(&self, seg: WalSegSize) -> String {
        let name = WalFileName::segment(self.tli, self.segno).to_name(seg);
        match self.kind {
            WalObjectKind::Segment => format!("{PREFIX}{:08X}/{name}", self.tli.0),
            WalObjectKind::Part { from, to } => format!("{PREFIX}{:08X}/{name}.{from:08X}-{to:08X}.part", self.tli.0),
        }
    }

    /// Parses a key made by [`WalObjectId::key`]; anything else is `None`.
    pub fn parse(key: &str, seg: WalSegSize) -> Option<Self> {
        let rest = key.strip_prefix(PREFIX)?;
        let (dir, file) = rest.split_once('/')?;
        if dir.len() != 8 {
            return None;
        }
        let tli_dir = u32::from_str_radix(dir, 16).ok()?;
        let (name, kind) = match file.split_once('.') {
            None => (file, WalObjectKind::Segment),
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
                (name, WalObjectKind::Part { from, to })
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
            WalObjectKind::Part { from, to } => (Lsn(base + from as u64), Lsn(base + to as u64)),
        }
    }
}

pub fn history_key(tli: TimelineId) -> String {
    format!("{PREFIX}{:08X}.history", tli.0)
}

/// Everything stored for one timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineWal {
    /// Sorted by (segment, kind); parts of a segment in offset order.
    pub objects: Vec<(WalObjectId, ObjectMeta)>,
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
/// Parts made redundant by a complete segment are left out of `objects`
/// (they are leftovers awaiting deletion) and returned separately.
pub async fn scan(storage: &dyn Storage, seg: WalSegSize) -> Result<(BTreeMap<TimelineId, TimelineWal>, Vec<String>)> {
    let mut per_tli: BTreeMap<TimelineId, Vec<(WalObjectId, ObjectMeta)>> = BTreeMap::new();
    for meta in storage.list(PREFIX).await? {
        if let Some(id) = WalObjectId::parse(&meta.key, seg) {
            per_tli.entry(id.tli).or_default().push((id, meta));
        }
    }
    let mut leftovers = Vec::new();
    let mut out = BTreeMap::new();
    for (tli, mut objs) in per_tli {
        objs.sort_by_key(|(id, _)| (id.segno, id.kind));
        let complete: std::collections::HashSet<SegNo> =
            objs.iter().filter(|(id, _)| id.kind == WalObjectKind::Segment).map(|(id, _)| id.segno).collect();
        let mut kept = Vec::with_capacity(objs.len());
        for (id, meta) in objs {
            if id.kind != WalObjectKind::Segment && complete.contains(&id.segno) {
                leftovers.push(meta.key);
            } else {
                kept.push((id, meta));
            }
        }
        let mut ranges: Vec<(Lsn, Lsn)> = Vec::new();
        for (id, _) in &kept {
            let (s, e) = id.range(seg);
            match ranges.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => ranges.push((s, e)),
            }
        }
        out.insert(tli, TimelineWal { objects: kept, ranges });
    }
    Ok((out, leftovers))
}

/// Fetches and verifies one WAL object.
pub async fn read_object(storage: &dyn Storage, key: &str) -> Result<(ObjectHeader, Bytes)> {
    let buf = storage.get(key).await?;
    object::decode(&buf).map_err(|e| RepoError::Corrupt {
        location: storage.describe(),
        key: key.to_string(),
        reason: e.0,
    })
}

/// Reads only the header (and summary) of a WAL object with ranged reads.
pub async fn read_header(storage: &dyn Storage, key: &str) -> Result<ObjectHeader> {
    let corrupt = |reason: String| RepoError::Corrupt { location: storage.describe(), key: key.to_string(), reason };
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
}

/// Rebuilds segment `segno` of `tli` byte for byte: from its complete object
/// if there is one, otherwise from its parts, zero-filled past the durable
/// end as Postgres expects of a partial segment. `None` when nothing of it is
/// stored.
pub async fn assemble_segment(
    storage: &dyn Storage,
    seg: WalSegSize,
    tl: &TimelineWal,
    segno: SegNo,
) -> Result<Option<AssembledSegment>> {
    let objs: Vec<&(WalObjectId, ObjectMeta)> = tl.objects.iter().filter(|(id, _)| id.segno == segno).collect();
    if let Some((id, _)) = objs.iter().find(|(id, _)| id.kind == WalObjectKind::Segment) {
        let key = id.key(seg);
        let (_, raw) = read_object(storage, &key).await?;
        if raw.len() as u64 != seg.bytes() {
            return Err(RepoError::Corrupt {
                location: storage.describe(),
                key,
                reason: format!("segment holds {} bytes, expected {}", raw.len(), seg.bytes()),
            });
        }
        return Ok(Some(AssembledSegment { data: raw, valid_len: seg.bytes(), complete: true }));
    }
    if objs.is_empty() {
        return Ok(None);
    }
    let mut buf = BytesMut::zeroed(seg.bytes() as usize);
    let mut valid = 0u64;
    for (id, _) in objs {
        let WalObjectKind::Part { from, to } = id.kind else { continue };
        if from as u64 > valid {
            // A hole inside the segment: only the contiguous prefix is usable.
            break;
        }
        if to as u64 <= valid {
            // Wholly inside what earlier parts gave (two writers cut differently).
            continue;
        }
        let key = id.key(seg);
        let (_, raw) = read_object(storage, &key).await?;
        if raw.len() as u64 != (to - from) as u64 {
            return Err(RepoError::Corrupt {
                location: storage.describe(),
                key,
                reason: format!("part holds {} bytes, its name says {}", raw.len(), to - from),
            });
        }
        let skip = (valid - from as u64) as usize;
        buf[valid as usize..to as usize].copy_from_slice(&raw[skip..]);
        valid = to as u64;
    }
    if valid == 0 {
        return Ok(None);
    }
    Ok(Some(AssembledSegment { data: buf.freeze(), valid_len: valid, complete: false }))
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
            WalObjectId::part(TimelineId(0xA), SegNo(3), 0, 0x2000),
            WalObjectId::part(TimelineId(2), SegNo(3), 0x2000, 0x100_0000),
        ];
        for id in ids {
            let k = id.key(seg());
            assert_eq!(WalObjectId::parse(&k, seg()), Some(id), "{k}");
        }
        assert_eq!(ids[0].key(seg()), "wal/00000001/0000000100000001000000FF");
        assert_eq!(ids[1].key(seg()), "wal/0000000A/0000000A0000000000000003.00000000-00002000.part");
        assert_eq!(ids[1].range(seg()), (Lsn(0x300_0000), Lsn(0x300_2000)));
    }

    #[test]
    fn foreign_keys_are_ignored() {
        for k in [
            "wal/00000001.history",
            "wal/00000001/000000020000000000000001",
            "wal/00000001/000000010000000000000001.00002000-00001000.part",
            "wal/00000001/000000010000000000000001.00000000-01000001.part",
            "wal/00000001/000000010000000000000001.tmp",
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
