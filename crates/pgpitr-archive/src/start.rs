//! Where a [`crate::WalWriter`] starts, from what the repository holds: the
//! unfinished segment rebuilt from its stored pieces, a range's first
//! missing byte, segments left whole in pieces stored as one object.

use crate::StreamError;
use crate::segment::OpenSegment;
use crate::upload::{self, Blocks, Buffers, WalUpload};
use bytes::Bytes;
use pgpitr_repo::Repository;
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::object::{self, WalSummary};
use pgpitr_repo::wal::{self, WalObjectId};
use pgpitr_storage::PutOutcome;
use pgpitr_types::{Lsn, SegNo, TimelineId};
use tokio_util::sync::CancellationToken;

pub struct ResumePlan {
    pub tli: TimelineId,
    pub start: Lsn,
    pub segment: OpenSegment,
    /// Bytes from the start of the segment up to `start`, for the scanner to
    /// resynchronise on (its events were recorded when they were stored).
    pub scan_prefix: Bytes,
    /// Whether WAL up to `start` is in the repository (false for a new one,
    /// where `start` is merely where streaming begins).
    pub start_is_stored: bool,
    /// The slot was created for this plan (after a failover).
    pub created_slot: bool,
}

impl ResumePlan {
    /// Streaming from `start` (a segment boundary), with nothing before it
    /// to carry on from.
    pub fn fresh(tli: TimelineId, start: Lsn, seg: pgpitr_types::WalSegSize) -> Self {
        let segment = OpenSegment::new(tli, start.segment_number(seg), seg, &[], true);
        ResumePlan { tli, start, segment, scan_prefix: Bytes::new(), start_is_stored: false, created_slot: false }
    }
}

/// Stores a segment that is whole in pieces and journals as one object, then
/// deletes them. A crash leaves such segments: in synchronous mode a
/// segment's last bytes go to its journal while its object is still being
/// compressed and stored. Runs beside the new session, which never touches
/// segments before the one it resumes in.
pub async fn compact_segment(
    repo: &Repository,
    tl: &wal::TimelineWal,
    tli: TimelineId,
    segno: SegNo,
) -> Result<(), StreamError> {
    let (storage, seg) = (repo.storage(), repo.seg_size());
    let Some(assembled) = wal::assemble_segment(storage.as_ref(), seg, tl, segno).await? else { return Ok(()) };
    if assembled.complete || assembled.valid_len != seg.bytes() {
        return Ok(());
    }
    let pieces: Vec<WalObjectId> =
        tl.objects.iter().chain(&tl.covered).map(|(id, _)| *id).filter(|id| id.segno == segno).collect();
    let mut summary = WalSummary::default();
    assembled.used.iter().for_each(|(_, s)| summary.merge(s));
    let id = WalObjectId::segment(tli, segno);
    let start = id.range(seg).0;
    let crc = crc32fast::hash(&assembled.data);
    let blocks = Blocks::Framed { head: assembled.data, tail: None, crc, cell: Default::default() };
    let up = WalUpload { id, start, summary, blocks };
    let bufs = Buffers { encode: object::encode_pool(1, seg.bytes() as usize) };
    upload::store(storage, seg, up, bufs, &CancellationToken::new()).await?;
    let keys: Vec<String> = pieces.iter().map(|p| p.key(seg)).collect();
    storage.delete_many(&keys).await?;
    tracing::info!(%segno, pieces = keys.len(), "stored a segment left in pieces as one object");
    Ok(())
}

/// The open segment for streaming `tli` from `start`, whose earlier bytes
/// come from what `tl` (timeline `from_tli`) holds.
pub async fn open_at(
    repo: &Repository,
    tl: &wal::TimelineWal,
    from_tli: TimelineId,
    tli: TimelineId,
    start: Lsn,
    inherited: bool,
) -> Result<ResumePlan, StreamError> {
    let storage = repo.storage();
    let seg = repo.seg_size();
    let segno = start.segment_number(seg);
    let offset = start.segment_offset(seg) as usize;
    let (prefix, used) = if offset == 0 {
        (Bytes::new(), Vec::new())
    } else {
        // Every object of the segment, read at once; those inside the cover
        // (an interrupted merge) are checked against it, then deleted.
        let assembled = wal::assemble_segment(storage.as_ref(), seg, tl, segno).await?.ok_or_else(|| {
            StreamError::Definite(format!("segment {segno} of timeline {from_tli} vanished from the repository"))
        })?;
        if (assembled.valid_len as usize) < offset {
            return Err(StreamError::Definite(format!(
                "repository coverage of timeline {from_tli} reaches {start} but its segment holds only {} bytes",
                assembled.valid_len
            )));
        }
        (assembled.data.slice(..offset), assembled.used)
    };
    let mut segment = OpenSegment::new(tli, segno, seg, &prefix, !inherited);
    if !inherited {
        for (id, summary) in &used {
            if id.range(seg).1 > start {
                // Past a hole: its bytes are streamed again. Only deleted
                // with the other pieces once the segment is stored.
                segment.note_object(*id);
            } else {
                segment.adopt_stored(*id, summary);
            }
        }
        // The cover's objects past the hole were not read as used.
        for (id, _) in tl.objects.iter().filter(|(id, _)| id.segno == segno && id.range(seg).0 >= start) {
            segment.note_object(*id);
        }
        // Only once assembly checked them against the cover.
        let covered: Vec<String> =
            tl.covered.iter().filter(|(id, _)| id.segno == segno).map(|(id, _)| id.key(seg)).collect();
        if !covered.is_empty() && !used.is_empty() {
            tracing::info!(segno = %segno, objects = covered.len(), "finishing a merge cut short: deleting the pieces inside it");
            let storage = storage.clone();
            tokio::spawn(async move {
                if let Err(e) = storage.delete_many(&covered).await {
                    tracing::warn!("deleting pieces inside a merged piece failed (retried at next start): {e}");
                }
            });
        }
    }
    Ok(ResumePlan { tli, start, segment, scan_prefix: prefix, start_is_stored: true, created_slot: false })
}

/// Where to stream so that `from..to` on `tli` ends up stored: `None` when
/// it already is; otherwise from the end of what is stored around `from`'s
/// segment, or from that segment's start.
pub async fn plan_range(
    repo: &Repository,
    tli: TimelineId,
    from: Lsn,
    to: Lsn,
) -> Result<Option<ResumePlan>, StreamError> {
    let seg = repo.seg_size();
    let floor = from.segment_floor(seg);
    let tl = Catalog::wal_range(repo, tli, floor, to).await?;
    match tl.ranges.iter().find(|&&(s, e)| s <= floor && floor <= e) {
        Some(&(_, e)) if e >= to => Ok(None),
        Some(&(_, e)) => open_at(repo, &tl, tli, tli, e, false).await.map(Some),
        None => Ok(Some(ResumePlan::fresh(tli, floor, seg))),
    }
}

/// Stores a `.history` file, accepting an identical copy already there.
pub async fn store_history(repo: &Repository, tli: TimelineId, content: &Bytes) -> Result<(), StreamError> {
    let key = wal::history_key(tli);
    let storage = repo.storage();
    if storage.put_if_absent(&key, content.clone()).await? == PutOutcome::AlreadyExists {
        let existing = storage.get(&key).await?;
        if existing != *content {
            return Err(StreamError::Conflict {
                key,
                detail: "the server's timeline history differs from the stored one".into(),
            });
        }
    }
    Ok(())
}
